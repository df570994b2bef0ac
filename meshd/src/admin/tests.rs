//! The admin router in-process, through `tower::ServiceExt::oneshot`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use mesh_proto::api::{ApiError, Member, MemberState, Status, INDEX_HEADER};
use tower::ServiceExt;

use super::*;
use crate::drain;
use crate::state::{self, Publisher};

struct Fixture {
    publisher: Publisher,
    state: Arc<AdminState>,
    trigger: Option<drain::DrainTrigger>,
    _watcher: drain::DrainWatcher,
    _dir: tempfile::TempDir,
}

/// A real identity, store and QUIC endpoint in a temporary directory; must run inside
/// a runtime.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::config::Config::parse(
        "meshd.toml",
        &format!(
            "node_name = \"vm-1\"\ndata_dir = \"{}\"\nbind = \"127.0.5.1:0\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    crate::bootstrap::init(&config).expect("init");
    let addr: SocketAddr = "127.0.5.1:7946".parse().expect("addr");
    let publisher = Publisher::new(Snapshot::new(
        "vm-1",
        vec![state::Member { name: "vm-1".into(), addr, state: MemberState::Alive, last_heard: SystemTime::now() }],
    ));
    let mut registry = crate::metrics::registry();
    let metrics = Metrics::register(crate::metrics::mesh(&mut registry));
    let identity = Arc::new(Identity::load(&config.data_dir, "vm-1", Default::default()).expect("identity"));
    let store = crate::store::Store::open(
        &crate::datadir::store_path(&config.data_dir),
        "vm-1",
        Arc::new(identity.entry_authority().expect("authority")),
        crate::store::Metrics::new(),
        publisher.store_sink(),
    )
    .expect("store");
    let socket = std::net::UdpSocket::bind("127.0.5.1:0").expect("udp");
    let transport = Arc::new(
        Transport::new(socket, identity.clone(), Default::default(), None, crate::transport::MIN_STREAMS_PER_PEER)
            .expect("transport"),
    );
    let signer = Arc::new(Signer::new(identity.clone(), store.clone(), addr, Duration::from_secs(3600)));
    let (trigger, watcher) = drain::new();
    let state = Arc::new(AdminState {
        snapshot: publisher.subscribe(),
        registry: Arc::new(registry),
        draining: watcher.signal(),
        metrics,
        identity,
        transport,
        signer,
        heard: Arc::default(),
        store: store.clone(),
        catalog: crate::catalog::Catalog::new(store.clone(), "vm-1"),
        vips: Arc::new(crate::catalog::vip::Vips::load(store, "127.77.0.0/16".parse().expect("range")).expect("vips")),
        seeds: Vec::new(),
        // Two places, so that the test of the limit need not park 512 queries.
        blocking: Arc::new(tokio::sync::Semaphore::new(2)),
        policy_default: crate::config::PolicyDefault::Allow,
        telemetry: Arc::new(
            crate::telemetry::traffic::Telemetry::register(
                &mut prometheus_client::registry::Registry::default(),
                crate::telemetry::traffic::Settings {
                    node: "vm-1".into(),
                    trust_domain: "mesh.local".into(),
                    dns_domain: "mesh".into(),
                    admin_http: None,
                    sample_percent: 0.0,
                },
            )
            .0,
        ),
    });
    Fixture { publisher, state, trigger: Some(trigger), _watcher: watcher, _dir: dir }
}

/// One request through the router. The request is built before the future, so the
/// future borrows nothing and can be spawned.
fn call(
    router: Router,
    method: Method,
    uri: &str,
) -> impl std::future::Future<Output = (StatusCode, axum::http::HeaderMap, Vec<u8>)> + 'static {
    let req = Request::builder().method(method).uri(uri).body(Body::empty()).expect("request");
    async move {
        let resp = router.oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }
}

#[tokio::test]
async fn status_names_the_node_its_identity_and_store_and_nulls_what_is_not_there_yet() {
    let f = fixture();
    let (code, _, body) = call(router(f.state.clone()), Method::GET, "/v1/status").await;
    assert_eq!(code, StatusCode::OK);
    let status: Status = serde_json::from_slice(&body).expect("status JSON");
    assert_eq!(status.node, "vm-1");
    assert_eq!(status.version, mesh_proto::VERSION);
    assert_eq!(status.members.expect("members").alive, 1);
    let raw: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(raw["store"]["entries"], 2, "its own certificate and key records: {raw}");
    assert_eq!(status.identity.as_deref(), Some("spiffe://mesh.local/node/vm-1"));
    assert!(status.ca_fingerprint.as_deref().is_some_and(|f| f.starts_with("sha256:") && f.len() == 71));
    assert_eq!(status.signer, Some(true));
    assert!(humantime::parse_rfc3339(status.cert_expires.as_deref().expect("expiry")).is_ok());
    assert_eq!(raw["services"], 0);
    assert_eq!(raw["routes"], 0);
    assert!(raw.get("cert_warning").is_some_and(|v| v.is_null()), "cert_warning is present and null: {raw}");
}

#[tokio::test]
async fn status_counts_the_routes() {
    let f = fixture();
    let spec = mesh_proto::route::RouteSpec::from_file("r.toml", "name = \"reviews\"\nservice = \"reviews\"\n")
        .expect("route");
    crate::documents::apply(&f.state.store, &spec, crate::documents::Mode::Store).expect("apply");
    let (_, _, body) = call(router(f.state.clone()), Method::GET, "/v1/status").await;
    let raw: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(raw["routes"], 1, "{raw}");
}

#[tokio::test]
async fn a_blocking_query_waits_for_its_own_data_not_any_publish() {
    let f = fixture();
    let index = f.publisher.current().index;
    let pending =
        tokio::spawn(call(router(f.state.clone()), Method::GET, &format!("/v1/members?index={index}&wait=60s")));
    // A publish that changes no member (a store write, a heartbeat) leaves it parked.
    f.publisher.update(|s| s.members[0].last_heard = SystemTime::now());
    f.publisher.update(|s| s.node = "vm-1".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "members did not change: the query must wait");
    f.publisher.update(|s| s.members[0].state = MemberState::Suspect);
    let (code, _, body) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("answered once members change")
        .expect("task");
    assert_eq!(code, StatusCode::OK);
    let members: Vec<Member> = serde_json::from_slice(&body).expect("json");
    assert_eq!(members[0].state, MemberState::Suspect);
}

#[tokio::test]
async fn members_lists_this_node_alive() {
    let f = fixture();
    let (code, headers, body) = call(router(f.state.clone()), Method::GET, "/v1/members").await;
    assert_eq!(code, StatusCode::OK);
    let index = f.publisher.current().members_index.to_string();
    assert_eq!(headers.get(INDEX_HEADER).and_then(|v| v.to_str().ok()), Some(index.as_str()));
    let members: Vec<Member> = serde_json::from_slice(&body).expect("members JSON");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "vm-1");
    assert_eq!(members[0].addr, "127.0.5.1:7946");
    assert_eq!(members[0].state, MemberState::Alive);
    assert!(humantime::parse_rfc3339(&members[0].last_heard).is_ok(), "{}", members[0].last_heard);
}

#[tokio::test]
async fn errors_are_json_with_a_proper_status() {
    let f = fixture();
    for (method, uri, code, error) in [
        (Method::GET, "/v1/nope", StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, "/v1/status", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::GET, "/v1/members?index=x", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/members?index=1&wait=soon", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/members?colour=red", StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        let (got, _, body) = call(router(f.state.clone()), method.clone(), uri).await;
        assert_eq!(got, code, "{method} {uri}");
        let err: ApiError = serde_json::from_slice(&body).expect("error JSON");
        assert_eq!(err.error, error, "{method} {uri}");
        assert!(!err.detail.is_empty());
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests() {
    let f = fixture();
    let _ = call(router(f.state.clone()), Method::GET, "/v1/status").await;
    let (code, headers, body) = call(router(f.state.clone()), Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert!(headers[axum::http::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(body).expect("utf-8");
    assert!(text.contains(&format!("mesh_build_info{{version=\"{}\"}} 1", mesh_proto::VERSION)), "{text}");
    assert!(text.contains("mesh_admin_requests_total{path=\"/v1/status\",code=\"200\"} 1"), "{text}");
}

#[tokio::test]
async fn the_http_router_serves_metrics_and_nothing_else() {
    let f = fixture();
    let (code, _, _) = call(http_router(f.state.clone()), Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = call(http_router(f.state.clone()), Method::GET, "/v1/status").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_blocking_query_returns_when_the_index_passes() {
    let f = fixture();
    let router = router(f.state.clone());
    let index = f.publisher.current().index;
    let pending = tokio::spawn(call(router, Method::GET, &format!("/v1/members?index={index}&wait=60s")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished(), "index {index} is current: the query must wait");
    f.publisher.update(|s| s.members[0].state = MemberState::Suspect);
    let (code, headers, body) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("answered after the publish")
        .expect("task");
    assert_eq!(code, StatusCode::OK);
    let next = (index + 1).to_string();
    assert_eq!(headers.get(INDEX_HEADER).and_then(|v| v.to_str().ok()), Some(next.as_str()));
    let members: Vec<Member> = serde_json::from_slice(&body).expect("json");
    assert_eq!(members[0].state, MemberState::Suspect);
}

#[tokio::test]
async fn a_blocking_query_returns_at_once_when_the_drain_starts() {
    let mut f = fixture();
    let uri = format!("/v1/status?index={}&wait=10m", f.publisher.current().index);
    let pending = tokio::spawn(call(router(f.state.clone()), Method::GET, &uri));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished());
    let trigger = f.trigger.take().expect("trigger");
    // The fixture holds the only watcher, so the drain itself would wait: only the signal matters.
    let drain = tokio::spawn(trigger.start_drain_and_wait(Duration::from_millis(10)));
    let (code, _, _) =
        tokio::time::timeout(Duration::from_secs(10), pending).await.expect("answered at drain").expect("task");
    assert_eq!(code, StatusCode::OK);
    drain.await.expect("drain task");
}

#[tokio::test]
async fn blocking_queries_beyond_the_limit_get_429_and_the_parked_ones_keep_waiting() {
    let f = fixture();
    let index = f.publisher.current().index;
    let uri = format!("/v1/members?index={index}&wait=60s");
    let parked: Vec<_> = (0..2).map(|_| tokio::spawn(call(router(f.state.clone()), Method::GET, &uri))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, _, body) = call(router(f.state.clone()), Method::GET, &uri).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    let err: ApiError = serde_json::from_slice(&body).expect("error body");
    assert_eq!(err.error, "too_many_requests");
    // A plain read is never refused.
    assert_eq!(call(router(f.state.clone()), Method::GET, "/v1/members").await.0, StatusCode::OK);
    assert!(parked.iter().all(|p| !p.is_finished()), "the parked queries are not cut");
    f.publisher.update(|s| s.members[0].state = MemberState::Suspect);
    for p in parked {
        let (code, _, _) = tokio::time::timeout(Duration::from_secs(10), p).await.expect("answered").expect("task");
        assert_eq!(code, StatusCode::OK);
    }
    // Their places are free again.
    let index = f.publisher.current().index;
    let again =
        tokio::spawn(call(router(f.state.clone()), Method::GET, &format!("/v1/members?index={index}&wait=50ms")));
    assert_eq!(again.await.expect("task").0, StatusCode::OK);
    let metrics = String::from_utf8(call(router(f.state.clone()), Method::GET, "/metrics").await.2).expect("utf-8");
    assert!(metrics.contains("mesh_admin_refused_blocking_queries_total 1"), "{metrics}");
}
