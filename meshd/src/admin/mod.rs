//! The admin API: JSON under `/v1/` on the Unix socket that meshctl talks to, and
//! `/metrics` (also, alone, on `admin.http` when that is set).
//!
//! Handlers read the latest [`Snapshot`](crate::state::Snapshot) and never lock the
//! store. Errors are `{error, detail}` with a 4xx/5xx status. Reads support Consul-style
//! blocking queries: `?index=N&wait=30s` returns once the state index passes N, when the
//! wait ends, or at once when meshd starts draining.
//!
//! Must not: serve anything but `/metrics` on TCP, take store keys from clients, or hold
//! a lock across a wait.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mesh_proto::api::{self, ApiError, RevisionRef, INDEX_HEADER};
use mesh_proto::policy::PolicySpec;
use mesh_proto::role::Role;
use mesh_proto::route::RouteSpec;
use mesh_proto::wire::Holds;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::drain::DrainSignal;
use crate::identity::signer::{Signer, SignerError};
use crate::identity::Identity;
use crate::state::{Snapshot, SnapshotRx};
use crate::transport::Transport;

/// The longest a blocking query may wait (Consul's limit too).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// The wait when a blocking query names an index but no `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// What the handlers read.
pub struct AdminState {
    pub snapshot: SnapshotRx,
    pub registry: Arc<Registry>,
    pub draining: DrainSignal,
    pub metrics: Metrics,
    pub identity: Arc<Identity>,
    pub transport: Arc<Transport>,
    pub signer: Arc<Signer>,
    pub heard: Arc<crate::membership::Heard>,
    pub store: crate::store::Store,
    pub catalog: crate::catalog::Catalog,
    pub vips: Arc<crate::catalog::vip::Vips>,
    /// The `join` seeds from the config (without this node's own address).
    pub seeds: Vec<std::net::SocketAddr>,
    /// Places for blocking queries parked at once ([`MAX_BLOCKING`]).
    pub blocking: Arc<tokio::sync::Semaphore>,
    /// `[policy] default`: what a service without a policy does with callers.
    pub policy_default: crate::config::PolicyDefault,
    /// This node's traffic summaries (`/v1/traffic` merges every node's).
    pub telemetry: Arc<crate::telemetry::traffic::Telemetry>,
}

/// Blocking queries parked at once; one more is answered 429 at once (and counted),
/// while those parked keep waiting.
pub const MAX_BLOCKING: usize = 512;

/// The admin API's own metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    refused_blocking: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    path: String,
    code: u16,
}

impl Metrics {
    /// Registers under `mesh_admin_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.sub_registry_with_prefix("admin").register(
            "requests",
            "Admin API requests, by route and HTTP status",
            m.requests.clone(),
        );
        registry.sub_registry_with_prefix("admin").register(
            "refused_blocking_queries",
            "Blocking queries answered 429 because MAX_BLOCKING were parked already",
            m.refused_blocking.clone(),
        );
        m
    }
}

/// Everything, for the Unix socket.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/connections", get(connections))
        .route("/v1/services", get(services).post(register_service))
        .route("/v1/services/{name}", axum::routing::delete(deregister_service))
        .route("/v1/routes", get(documents::list::<RouteSpec>))
        .route(
            "/v1/routes/{name}",
            get(documents::get::<RouteSpec>).put(documents::apply::<RouteSpec>).delete(documents::delete::<RouteSpec>),
        )
        .route("/v1/routes/{name}/history", get(documents::history::<RouteSpec>))
        .route("/v1/routes/{name}/rollback", axum::routing::post(documents::rollback::<RouteSpec>))
        .route("/v1/routes/{name}/catchup", get(documents::catchup::<RouteSpec>))
        .route("/v1/lint", get(documents::lint))
        .route("/v1/policies", get(documents::list::<PolicySpec>))
        .route(
            "/v1/policies/{name}",
            get(documents::get::<PolicySpec>)
                .put(documents::apply::<PolicySpec>)
                .delete(documents::delete::<PolicySpec>),
        )
        .route("/v1/policies/{name}/history", get(documents::history::<PolicySpec>))
        .route("/v1/policies/{name}/rollback", axum::routing::post(documents::rollback::<PolicySpec>))
        .route("/v1/policies/{name}/catchup", get(documents::catchup::<PolicySpec>))
        .route("/v1/policy-check", get(policy_check))
        .route("/v1/tokens", axum::routing::post(create_token))
        .route("/v1/claims", get(list_claims))
        .route("/v1/claims/{name}", axum::routing::put(put_claim).delete(delete_claim))
        .route("/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route("/v1/ca/rotate", axum::routing::post(rotate_ca))
        .route("/v1/traffic", get(traffic::traffic))
        .route("/v1/traffic/paths/{service}", get(traffic::paths))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(access::guard))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// `/metrics`, the dashboard (`/ui`, read-only) and the service-discovery list, for
/// `admin.http`: a TCP port must not expose the API that changes the mesh.
pub fn http_router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ui/sd", get(traffic::sd))
        .route("/ui/api/status", get(status))
        .route("/ui/api/members", get(members))
        .route("/ui/api/services", get(services))
        .route("/ui/api/routes", get(documents::list::<RouteSpec>))
        .route("/ui/api/routes/{name}", get(documents::get::<RouteSpec>))
        .route("/ui/api/routes/{name}/history", get(documents::history::<RouteSpec>))
        .route("/ui/api/routes/{name}/catchup", get(documents::catchup::<RouteSpec>))
        .route("/ui/api/policies/{name}/catchup", get(documents::catchup::<PolicySpec>))
        .route("/ui/api/policies", get(documents::list::<PolicySpec>))
        .route("/ui/api/policies/{name}", get(documents::get::<PolicySpec>))
        .route("/ui/api/traffic", get(traffic::traffic))
        .route("/ui/api/traffic/paths/{service}", get(traffic::paths))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/{file}", get(ui::file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// An error response: `{error, detail}` with its status.
#[derive(Debug)]
pub struct Error {
    status: StatusCode,
    body: ApiError,
}

impl Error {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Error {
        let error = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        };
        Error { status, body: ApiError { error: error.to_owned(), detail: detail.into() } }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// A request body that is not what the endpoint takes: 413 when it is over the size
/// limit, 415 without a JSON content type, 400 otherwise.
pub(crate) fn rejected(e: axum::extract::rejection::JsonRejection) -> Error {
    Error::new(e.status(), e.body_text())
}

async fn not_found(req: Request) -> Error {
    Error::new(StatusCode::NOT_FOUND, format!("no such endpoint: {}", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Error {
    Error::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

async fn count_requests(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let path =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    state.metrics.requests.get_or_create(&RequestLabels { path, code: response.status().as_u16() }).inc();
    response
}

/// `?index=N&wait=DURATION`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blocking {
    index: Option<u64>,
    wait: Option<String>,
}

impl Blocking {
    fn wait(&self) -> Result<Duration, Error> {
        match &self.wait {
            None => Ok(DEFAULT_WAIT),
            Some(w) => mesh_proto::duration::parse(w)
                .map(|d| d.min(MAX_WAIT))
                .map_err(|e| Error::new(StatusCode::BAD_REQUEST, format!("wait: {e}"))),
        }
    }
}

/// The snapshot to answer with: the current one, or for a blocking query the first one
/// whose `modified` index (the index at which what the endpoint shows last changed)
/// passes `index`, or the current one when the wait ends or meshd drains. As in Consul,
/// each endpoint has its own index: a store write does not wake every watcher of the
/// member list.
async fn snapshot_for(
    state: &AdminState,
    query: Result<Query<Blocking>, QueryRejection>,
    modified: fn(&Snapshot) -> u64,
) -> Result<Arc<Snapshot>, Error> {
    let Query(query) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let wait = query.wait()?;
    let mut rx = state.snapshot.clone();
    let Some(index) = query.index else {
        return Ok(rx.borrow().clone());
    };
    let Ok(_place) = state.blocking.clone().try_acquire_owned() else {
        state.metrics.refused_blocking.inc();
        return Err(Error::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_BLOCKING} blocking queries are parked already: retry, or poll without index"),
        ));
    };
    let newer = rx.wait_for(|s| modified(s) > index);
    tokio::select! {
        _ = newer => {}
        _ = tokio::time::sleep(wait) => {}
        _ = state.draining.signaled() => {}
    }
    let current = state.snapshot.borrow().clone();
    Ok(current)
}

/// The whole snapshot's index: status and services change with any publish.
fn any_change(snap: &Snapshot) -> u64 {
    snap.index
}

fn members_changed(snap: &Snapshot) -> u64 {
    snap.members_index
}

fn with_index<T: IntoResponse>(index: u64, body: T) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

async fn status(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<Blocking>, QueryRejection>,
) -> Result<Response, Error> {
    let snap = snapshot_for(&state, query, any_change).await?;
    // The store's own view: at least as new as the snapshot (a write is published before
    // it is acknowledged).
    let view = state.store.view();
    let cert = state.identity.current();
    let body = api::Status {
        node: snap.node.clone(),
        version: mesh_proto::VERSION.to_owned(),
        identity: Some(cert.info.id.to_string()),
        cert_expires: Some(rfc3339(cert.info.not_after)),
        ca_fingerprint: Some(state.identity.ca_fingerprint()),
        signer: Some(state.identity.ca().is_signer()),
        role: Some(state.identity.role()),
        clock_warning: state.heard.clock_warning(),
        cert_warning: if state.transport.is_removed() {
            Some(
                "this node was removed from the mesh: members refuse its certificate; join again with a new token"
                    .to_owned(),
            )
        } else {
            state.identity.warning()
        },
        membership_warning: crate::membership::alone_warning(&snap, &state.seeds),
        vip_warning: {
            let waiting = state.vips.unallocated();
            (!waiting.is_empty()).then(|| {
                let shown: Vec<&str> = waiting.iter().take(5).map(String::as_str).collect();
                format!(
                    "proxy.vip_range is full: {} name(s) have no virtual IP and no DNS answer ({}{}); widen the range",
                    waiting.len(),
                    shown.join(", "),
                    if waiting.len() > shown.len() { ", ..." } else { "" }
                )
            })
        },
        store: Some(api::StoreStatus {
            entries: view.len() as u64,
            bytes: view.bytes(),
            digest: format!("{:016x}", view.digest().xor),
            health: state.store.health().to_string(),
        }),
        members: Some(count_members(&member_list(&state, &snap))),
        services: Some(crate::catalog::count(&snap)),
        routes: Some(snap.routes().len() as u64),
        pid: Some(std::process::id()),
    };
    Ok(with_index(snap.index, Json(body)))
}

async fn members(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<Blocking>, QueryRejection>,
) -> Result<Response, Error> {
    let snap = snapshot_for(&state, query, members_changed).await?;
    let body = member_list(&state, &snap);
    Ok(with_index(snap.members_index, Json(body)))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Result<Response, Error> {
    let text = crate::metrics::encode(&state.registry)
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

/// `GET /v1/services`: every service in the mesh, with its instances.
async fn services(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<Blocking>, QueryRejection>,
) -> Result<Response, Error> {
    let snap = snapshot_for(&state, query, any_change).await?;
    let mut list = crate::catalog::services(&snap);
    for s in &mut list {
        s.vip = state.vips.get(&s.name).map(|ip| ip.to_string());
    }
    Ok(with_index(snap.index, Json(list)))
}

/// `POST /v1/services`: registers (or replaces) a service on this node. The body is the
/// service's keys as JSON (meshctl parses and validates the TOML file first); validated
/// again here.
async fn register_service(
    State(state): State<Arc<AdminState>>,
    body: Result<Json<mesh_proto::service::ServiceSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Error> {
    let Json(spec) = body.map_err(rejected)?;
    let text = toml::to_string(&spec).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    mesh_proto::service::ServiceSpec::from_file("request", &text)
        .map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    crate::config::check_service_address(&spec)
        .map_err(|why| Error::new(StatusCode::BAD_REQUEST, format!("address: {why}")))?;
    let snap = state.snapshot.borrow().clone();
    if let Some(claim) = snap.parts.claims.get(&spec.name).filter(|c| !c.allows(&snap.node)) {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            format!(
                "service {} is claimed for nodes {} (meshctl service allow): this node, {}, may not register it",
                spec.name,
                claim.nodes.join(","),
                snap.node
            ),
        ));
    }
    let catalog = state.catalog.clone();
    let name = spec.name.clone();
    tokio::task::spawn_blocking(move || catalog.register(spec))
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(catalog_error)?;
    Ok((StatusCode::OK, Json(serde_json::json!({ "registered": name }))).into_response())
}

/// `DELETE /v1/services/NAME`: deregisters a service of this node.
async fn deregister_service(
    State(state): State<Arc<AdminState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Error> {
    let catalog = state.catalog.clone();
    let n = name.clone();
    tokio::task::spawn_blocking(move || catalog.deregister(&n))
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(catalog_error)?;
    Ok(Json(serde_json::json!({ "deregistered": name })).into_response())
}

/// The status a store error is answered with.
pub(crate) fn store_status(e: &crate::store::StoreError) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn catalog_error(e: crate::catalog::CatalogError) -> Error {
    use crate::catalog::CatalogError;
    let status = match &e {
        CatalogError::Unknown(_) => StatusCode::NOT_FOUND,
        CatalogError::FromConfig(_) => StatusCode::CONFLICT,
        CatalogError::Store(s) => store_status(s),
    };
    Error::new(status, e.to_string())
}

/// Which alive members hold revision `revision` of store key `key`, or a revision that
/// supersedes it (a later one by time: the mesh moved past it). Members answer over
/// `mesh/1`; one that does not answer within 2 s is listed as unreachable. The admin API
/// names things (`/v1/routes/NAME/catchup`); the key stays in here.
pub(crate) async fn catchup(state: &AdminState, key: String, revision: RevisionRef) -> api::Catchup {
    let snap = state.snapshot.borrow().clone();
    let others: Vec<(String, std::net::SocketAddr)> = snap
        .members
        .iter()
        .filter(|m| m.name != snap.node && snap.is_serving(&m.name))
        .map(|m| (m.name.clone(), m.addr))
        .collect();
    // The revision's time, from this node's copy (the newest by that number when no
    // writer is named); without it, revision numbers are compared.
    let target = state.store.view().entry(&key).and_then(|e| {
        e.revisions()
            .filter(|r| revision.names(r.revision, &r.origin))
            .map(|r| (r.version.0, r.revision, r.origin))
            .last()
    });
    let holds = |h: &Holds| match &target {
        Some((version, number, _)) => h.version > *version || (h.version == *version && h.revision == Some(*number)),
        None => h.revision.is_some_and(|r| r >= revision.number),
    };
    let mut answers = crate::peer::client::holds(&state.transport, others, &key).await;
    answers.push((snap.node.clone(), Some(crate::peer::server::holds(&state.store, &key))));
    let mut unconfirmed: Vec<String> = snap
        .members
        .iter()
        .filter(|m| m.state == api::MemberState::Dead && !snap.is_removed(&m.name))
        .map(|m| m.name.clone())
        .collect();
    unconfirmed.sort();
    let id = match &target {
        Some((_, number, origin)) => RevisionRef::id(*number, origin),
        None => revision.to_string(),
    };
    let mut body = api::Catchup {
        key,
        revision: revision.number,
        id,
        holding: vec![],
        lagging: vec![],
        unreachable: vec![],
        unconfirmed,
    };
    for (name, answer) in answers {
        match answer {
            Some(h) if holds(&h) => body.holding.push(name),
            Some(_) => body.lagging.push(name),
            None => body.unreachable.push(name),
        }
    }
    body.holding.sort();
    body.lagging.sort();
    body.unreachable.sort();
    body
}

/// `GET /v1/connections`: the live `mesh/1` connections, with their verified peers.
async fn connections(State(state): State<Arc<AdminState>>) -> Json<Vec<api::Connection>> {
    let list = state
        .transport
        .peers()
        .into_iter()
        .map(|p| (p.conn.stats(), p))
        .map(|(stats, p)| api::Connection {
            node: p.name().to_owned(),
            identity: p.info.id.to_string(),
            addr: p.conn.remote_address().to_string(),
            direction: if p.outbound { "outbound" } else { "inbound" }.to_owned(),
            since: rfc3339(p.since),
            id: p.conn.stable_id() as u64,
            rtt_ms: p.conn.rtt().as_secs_f64() * 1e3,
            mtu: stats.path.current_mtu,
            udp_datagrams_sent: stats.udp_tx.datagrams,
            udp_sends: stats.udp_tx.ios,
            udp_datagrams_received: stats.udp_rx.datagrams,
            lost_packets: stats.path.lost_packets,
            congestion_events: stats.path.congestion_events,
            cwnd: stats.path.cwnd,
        })
        .collect();
    Json(list)
}

/// `GET /v1/claims`: every claimed service name and the nodes it allows.
async fn list_claims(State(state): State<Arc<AdminState>>) -> Json<Vec<api::ServiceClaim>> {
    let snap = state.snapshot.borrow().clone();
    Json(
        snap.parts
            .claims
            .iter()
            .map(|(name, c)| api::ServiceClaim { name: name.clone(), nodes: c.nodes.clone() })
            .collect(),
    )
}

/// `PUT /v1/claims/NAME`: only nodes matching the globs may register service NAME from
/// now on, mesh-wide. Needs role operator.
async fn put_claim(
    State(state): State<Arc<AdminState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Result<Json<api::ServiceClaim>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<api::ServiceClaim>, Error> {
    let Json(claim) = body.map_err(rejected)?;
    need(&state, Role::Operator, "claiming a service name")?;
    let bad = |detail: String| Error::new(StatusCode::BAD_REQUEST, detail);
    if claim.name != name || !mesh_proto::is_dns_label(&name) {
        return Err(bad(format!("{name:?} is not a service name, or not the body's")));
    }
    let record = crate::state::model::ClaimRecord { nodes: claim.nodes.clone() };
    if !record.is_valid() {
        return Err(bad("--nodes takes 1 to 64 node name globs (lower-case letters, digits, -, * and ?)".to_owned()));
    }
    let value = record.encode().map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let store = state.store.clone();
    let key = crate::state::model::ClaimRecord::key(&name);
    tokio::task::spawn_blocking(move || store.put(&key, value))
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Error::new(store_status(&e), e.to_string()))?;
    Ok(Json(claim))
}

/// `DELETE /v1/claims/NAME`: the name is open to every member again. Needs role operator.
async fn delete_claim(
    State(state): State<Arc<AdminState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    need(&state, Role::Operator, "releasing a service name")?;
    let store = state.store.clone();
    let key = crate::state::model::ClaimRecord::key(&name);
    let deleted = tokio::task::spawn_blocking(move || store.delete(&key))
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Error::new(store_status(&e), e.to_string()))?;
    if deleted.is_none() {
        return Err(Error::new(StatusCode::NOT_FOUND, format!("service {name} is not claimed")));
    }
    Ok(Json(serde_json::json!({ "released": name })))
}

/// `POST /v1/tokens`.
async fn create_token(
    State(state): State<Arc<AdminState>>,
    body: Result<Json<api::TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Error> {
    let Json(req) = body.map_err(rejected)?;
    need(&state, Role::Signer, "creating a join token")?;
    let role = match (req.role, req.signer) {
        (Some(r), false) => r,
        (Some(Role::Signer) | None, true) => Role::Signer,
        (None, false) => Role::Member,
        (Some(r), true) => {
            return Err(Error::new(StatusCode::BAD_REQUEST, format!("--signer means role signer, not {r}")));
        }
    };
    let ttl = match &req.ttl {
        Some(t) => {
            mesh_proto::duration::parse(t).map_err(|e| Error::new(StatusCode::BAD_REQUEST, format!("ttl: {e}")))?
        }
        None => Duration::from_secs(3600),
    };
    let signer = state.signer.clone();
    let issued = tokio::task::spawn_blocking(move || signer.create_token(ttl, role, req.node))
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(signer_error)?;
    let body = api::TokenCreated {
        token: issued.token,
        id: issued.id,
        expires: rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(issued.record.expires_ms)),
        signer: issued.record.role() == Role::Signer,
        role: issued.record.role(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /v1/ca/rotate[?timeout=DURATION]`: a new CA root, added to every node's trust
/// bundle first; once every alive member holds it (within the timeout, default 2 min),
/// this signer issues under it and the old root retires once its last certificate has
/// expired. When the wait times out the new root stays added (trusted, not issuing) and
/// the same request continues the rotation.
async fn rotate_ca(
    State(state): State<Arc<AdminState>>,
    query: Result<axum::extract::Query<RotateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::CaRotated>, Error> {
    let axum::extract::Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let timeout = match q.timeout.as_deref() {
        None => Duration::from_secs(120),
        Some(t) => {
            humantime::parse_duration(t).map_err(|e| Error::new(StatusCode::BAD_REQUEST, format!("timeout: {e}")))?
        }
    };
    need(&state, Role::Signer, "rotating the CA")?;
    let previous = state.identity.ca_fingerprint();
    let signer = state.signer.clone();
    let key = tokio::task::spawn_blocking(move || signer.stage_rotation())
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(signer_error)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let members = loop {
        let c = catchup(&state, key.clone(), RevisionRef { number: 1, origin: None }).await;
        if c.lagging.is_empty() && c.unreachable.is_empty() {
            break c.holding;
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting: Vec<String> = c.lagging.into_iter().chain(c.unreachable).collect();
            return Err(Error::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the new root is added but {} do not hold it yet ({}); nothing is issued under it: run the rotation again to continue",
                    waiting.len(),
                    waiting.join(", ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let signer = state.signer.clone();
    tokio::task::spawn_blocking(move || signer.activate_rotation())
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(signer_error)?;
    let retires = state
        .store
        .view()
        .get(&crate::identity::records::ca_key(previous.trim_start_matches("sha256:")))
        .and_then(|v| serde_json::from_slice::<crate::identity::records::CaRecord>(v).ok())
        .and_then(|r| r.retire_at_ms)
        .unwrap_or(0);
    Ok(Json(api::CaRotated {
        root: state.identity.ca_fingerprint(),
        previous,
        retires_at: rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(retires)),
        members,
    }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateQuery {
    timeout: Option<String>,
}

/// `DELETE /v1/nodes/NAME`.
async fn remove_node(
    State(state): State<Arc<AdminState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<api::NodeRemoved>, Error> {
    need(&state, Role::Signer, "removing a node")?;
    let signer = state.signer.clone();
    let revocation = tokio::task::spawn_blocking(move || signer.remove(&name))
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(signer_error)?;
    Ok(Json(api::NodeRemoved { node: revocation.node, serial: revocation.serial, key: revocation.key_hash }))
}

/// Refuses what this node's role does not allow (its certificate says its role), naming
/// the role needed.
pub(crate) fn need(state: &AdminState, needed: Role, what: &str) -> Result<(), Error> {
    let have = state.identity.role();
    if have.allows(needed) {
        return Ok(());
    }
    Err(Error::new(
        StatusCode::FORBIDDEN,
        format!(
            "{what} needs role {needed} and this node is a {have}: run it on a node with that role, \
             or join one with `meshctl token create --role {needed}` on a signer"
        ),
    ))
}

fn signer_error(e: SignerError) -> Error {
    let status = match &e {
        SignerError::NotSigner | SignerError::RemoveSelf(_) => StatusCode::CONFLICT,
        SignerError::BadTtl | SignerError::BadName(_) => StatusCode::BAD_REQUEST,
        SignerError::UnknownNode(_) => StatusCode::NOT_FOUND,
        SignerError::Store(s) if s.http_status() != 500 => store_status(s),
        SignerError::Store(_) | SignerError::Rng | SignerError::Rotate(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Error::new(status, e.to_string())
}

/// The members as this node sees them: the snapshot's, the peers it is connected to
/// (alive, until gossip says more), and the removed nodes (left).
fn member_list(state: &AdminState, snap: &Snapshot) -> Vec<api::Member> {
    let now = SystemTime::now();
    let mut body: Vec<api::Member> = snap
        .members
        .iter()
        .map(|m| {
            // A node always hears itself; others when their last datagram came.
            let heard = if m.name == snap.node { Some(now) } else { state.heard.get(&m.name) };
            api::Member {
                name: m.name.clone(),
                addr: m.addr.to_string(),
                state: m.state,
                last_heard: heard.map_or_else(|| "never".to_owned(), rfc3339),
                role: if m.name == snap.node {
                    Some(state.identity.role())
                } else {
                    snap.parts.roles.get(&m.name).copied()
                },
                clock_offset_ms: if m.name == snap.node { None } else { state.heard.offset(&m.name) },
            }
        })
        .collect();
    // The snapshot shows removed members `left`; removed nodes it never knew are added.
    for removed in &snap.parts.revocations {
        if snap.is_removed(&removed.node) && !body.iter().any(|m| m.name == removed.node) {
            body.push(api::Member {
                name: removed.node.clone(),
                addr: String::new(),
                state: api::MemberState::Left,
                last_heard: rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(removed.at_ms)),
                role: snap.parts.roles.get(&removed.node).copied(),
                clock_offset_ms: None,
            });
        }
    }
    body.sort_by(|a, b| a.name.cmp(&b.name));
    body
}

fn count_members(members: &[api::Member]) -> api::MemberCounts {
    let mut counts = api::MemberCounts::default();
    for m in members {
        match m.state {
            api::MemberState::Alive => counts.alive += 1,
            api::MemberState::Suspect => counts.suspect += 1,
            api::MemberState::Dead => counts.dead += 1,
            api::MemberState::Left => counts.left += 1,
        }
    }
    counts
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub mod access;
mod traffic;
mod ui;
/// `GET /v1/policy-check?from=SRC&to=SERVICE[&method=M&path=P&header=K=V...]`: what
/// the destination's policy decides for that caller and request, and why. `from` is a
/// service (`productpage`, on the first node that hosts it, or `productpage@NODE`) or a
/// node (`node:NAME`).
async fn policy_check(
    State(state): State<Arc<AdminState>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<api::PolicyCheck>, Error> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let one = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let bad = |why: String| Error::new(StatusCode::BAD_REQUEST, why);
    let from = one("from").ok_or_else(|| bad("from= is required: a service, SERVICE@NODE or node:NAME".to_owned()))?;
    let to = one("to").ok_or_else(|| bad("to= is required: the destination service".to_owned()))?;
    let snap = state.snapshot.borrow().clone();
    let (node, service) = match from.strip_prefix("node:") {
        Some(node) => (node.to_owned(), None),
        None => {
            let (service, node) = match from.split_once('@') {
                Some((s, n)) => (s.to_owned(), Some(n.to_owned())),
                None => (from.clone(), None),
            };
            let hosted_on = snap.services.get(&service).and_then(|s| s.instances.first()).map(|i| i.node.clone());
            (node.or(hosted_on).unwrap_or_default(), Some(service))
        }
    };
    for (what, name) in [("from", service.as_deref().unwrap_or("x")), ("to", to.as_str())] {
        if !mesh_proto::is_dns_label(name) {
            return Err(bad(format!("{what}: '{name}' is not a service name")));
        }
    }
    let method = one("method");
    let path = one("path").map(|p| crate::routing::http::normalize_path(&p));
    let headers: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k == "header")
        .map(|(_, v)| v.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("header= takes NAME=VALUE".to_owned()))?;
    let lookup = |name: &str| {
        let vals: Vec<&str> =
            headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    };
    let request =
        (method.is_some() || path.is_some() || !headers.is_empty()).then(|| crate::routing::http::RequestView {
            method: method.as_deref().unwrap_or("GET"),
            path: path.as_deref().unwrap_or("/"),
            header: &lookup,
        });
    let policy = snap.policies().get(&to).map(|p| p.spec.clone());
    let caller = crate::policy::Caller { node: &node, service: service.as_deref() };
    let decision = crate::policy::decide(policy.as_ref(), state.policy_default, &caller, request.as_ref());
    let limits = policy
        .iter()
        .flat_map(|p| p.rate_limit.iter().enumerate())
        .filter(|(_, r)| crate::policy::names(&r.from, &caller))
        .map(|(i, r)| format!("rate_limit[{i}] ({}/s, burst {})", r.requests_per_second, r.burst()))
        .collect();
    Ok(Json(api::PolicyCheck {
        allow: decision.allow,
        line: decision.explain(&to, policy.is_some()),
        rule: decision.by.to_string(),
        caller: caller.label(),
        rate_limits: limits,
    }))
}

mod documents;

#[cfg(test)]
mod tests;
