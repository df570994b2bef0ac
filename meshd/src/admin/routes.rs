//! `/v1/routes`: apply, read, delete, history and rollback of routes, and `/v1/lint`.
//! Writes are acknowledged once durable here; gossip spreads them
//! (`/v1/routes/NAME/catchup` tells who holds a revision, which is how `meshctl route
//! apply --wait` knows every node has it). An apply or rollback that changes nothing
//! stores nothing and says so.
//!
//! Must not: take store keys from clients (names only), or decide anything `routes` and
//! `routing::lint` decide.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use mesh_proto::api::{self, RevisionRef};
use mesh_proto::role::Role;
use mesh_proto::route::RouteSpec;
use serde::Deserialize;

use super::{rfc3339, AdminState, Error};
use crate::routes::{self, Applied, RouteError, Stored};

fn body(s: Stored) -> api::Route {
    api::Route {
        name: s.spec.name.clone(),
        service: s.spec.service.clone(),
        revision: s.revision,
        id: RevisionRef::id(s.revision, &s.origin),
        applied_at: rfc3339(s.applied_at),
        origin_removed: false,
        origin: s.origin,
        spec: s.spec,
        rollback_of: s.rollback_of.as_ref().map(|r| r.number),
        rollback_of_id: s.rollback_of.filter(|r| r.origin.is_some()).map(|r| r.to_string()),
        unchanged: false,
        warnings: Vec::new(),
    }
}

/// The answer to an apply or rollback: the revision, whether it was unchanged, and the
/// route's problems in this node's view.
fn applied(state: &AdminState, a: Applied) -> api::Route {
    let warnings = crate::routing::lint::lint(&a.stored.spec, &state.snapshot.borrow());
    api::Route { unchanged: a.unchanged, warnings, ..body(a.stored) }
}

fn error(e: RouteError) -> Error {
    let status = match &e {
        RouteError::Unknown(_) | RouteError::NoRevision { .. } => StatusCode::NOT_FOUND,
        RouteError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
        RouteError::NothingEarlier(_) => StatusCode::CONFLICT,
        RouteError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        RouteError::Store(s) => super::store_status(s),
        RouteError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Error::new(status, e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RouteError> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(error)
}

/// `GET /v1/routes`
pub async fn list(State(state): State<Arc<AdminState>>) -> Json<Vec<api::Route>> {
    let snap = state.snapshot.borrow().clone();
    let mut all: Vec<api::Route> = routes::all(&snap).into_iter().map(|s| flagged(&snap, body(s))).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Json(all)
}

#[derive(Debug, Deserialize)]
pub struct RevisionQuery {
    revision: Option<RevisionRef>,
}

/// `GET /v1/routes/NAME[?revision=N|N@ORIGIN]`
pub async fn get(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<RevisionQuery>, QueryRejection>,
) -> Result<Json<api::Route>, Error> {
    let Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let snap = state.snapshot.borrow().clone();
    routes::get(&state.store, &name, q.revision.as_ref()).map(|s| Json(flagged(&snap, body(s)))).map_err(error)
}

/// `route` with its origin flagged if that node was removed since.
fn flagged(snap: &crate::state::Snapshot, route: api::Route) -> api::Route {
    api::Route { origin_removed: snap.is_removed(&route.origin), ..route }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    /// Validate and report what would happen; store nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `PUT /v1/routes/NAME[?dry_run=true]`: validates the whole route (and its rules
/// against the service's protocol, when the service is known), then stores a new
/// revision, unless the content is the current one already. The answer carries the
/// route's warnings ([`routes::lint`]). A dry run answers the same without storing: the
/// revision it would become, or the current one when unchanged.
pub async fn apply(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    spec: Result<Json<RouteSpec>, JsonRejection>,
) -> Result<Json<api::Route>, Error> {
    let Query(query) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Json(spec) = spec.map_err(super::rejected)?;
    if !query.dry_run {
        super::need(&state, Role::Operator, "applying a route")?;
    }
    if spec.name != name {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            format!("the path names route {name} but the body is route {}", spec.name),
        ));
    }
    RouteSpec::from_file("request", &spec.to_toml()).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let protocol = state.snapshot.borrow().services.get(&spec.service).map(|s| s.protocol);
    if let Some(p) = protocol {
        spec.check_protocol(p.as_str()).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e))?;
    }
    let (store, mode) = (state.store.clone(), mode(query.dry_run));
    let done = blocking(move || routes::apply(&store, &spec, mode)).await?;
    Ok(Json(applied(&state, done)))
}

fn mode(dry_run: bool) -> routes::Mode {
    if dry_run {
        routes::Mode::DryRun
    } else {
        routes::Mode::Store
    }
}

/// `DELETE /v1/routes/NAME`
pub async fn delete(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    super::need(&state, Role::Operator, "deleting a route")?;
    let store = state.store.clone();
    let n = name.clone();
    blocking(move || routes::delete(&store, &n)).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

/// `GET /v1/routes/NAME/history`, oldest first (by time, then writer), revisions that
/// lost to a concurrent write marked with the one that won.
pub async fn history(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<api::RouteRevision>>, Error> {
    let history = routes::history(&state.store, &name).map_err(error)?;
    let snap = state.snapshot.borrow().clone();
    Ok(Json(
        history
            .revisions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let restored = routes::rollback_of(r);
                api::RouteRevision {
                    revision: r.revision,
                    id: routes::id(r),
                    applied_at: rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.version.millis())),
                    rollback_of: restored.as_ref().map(|r| r.number),
                    rollback_of_id: restored.filter(|r| r.origin.is_some()).map(|r| r.to_string()),
                    superseded_by: history.superseded_by(i).map(routes::id),
                    origin_removed: snap.is_removed(&r.origin),
                    origin: r.origin.clone(),
                    deleted: r.deleted,
                }
            })
            .collect(),
    ))
}

/// `POST /v1/routes/NAME/rollback[?dry_run=true]`: a new revision with an old
/// revision's content; answered like an apply.
pub async fn rollback(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    req: Result<Json<api::RollbackRequest>, JsonRejection>,
) -> Result<Json<api::Route>, Error> {
    let Query(query) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Json(req) = req.map_err(super::rejected)?;
    if !query.dry_run {
        super::need(&state, Role::Operator, "rolling a route back")?;
    }
    let (store, mode) = (state.store.clone(), mode(query.dry_run));
    let done = blocking(move || routes::rollback(&store, &name, req.to.as_ref(), mode)).await?;
    Ok(Json(applied(&state, done)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintQuery {
    route: Option<String>,
}

/// `GET /v1/lint[?route=NAME]`: every route (or one) with its problems in this node's
/// view of the mesh; routes without problems are listed with none.
pub async fn lint(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<LintQuery>, QueryRejection>,
) -> Result<Json<Vec<api::RouteLint>>, Error> {
    let Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let snap = state.snapshot.borrow().clone();
    let mut all: Vec<api::RouteLint> = routes::all(&snap)
        .into_iter()
        .filter(|r| q.route.as_ref().is_none_or(|n| *n == r.spec.name))
        .map(|r| api::RouteLint {
            problems: crate::routing::lint::lint(&r.spec, &snap),
            route: r.spec.name,
            service: r.spec.service,
        })
        .collect();
    if let Some(name) = &q.route {
        if all.is_empty() {
            return Err(Error::new(StatusCode::NOT_FOUND, format!("no route named {name}")));
        }
    }
    all.sort_by(|a, b| a.route.cmp(&b.route));
    Ok(Json(all))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchupQuery {
    revision: RevisionRef,
}

/// `GET /v1/routes/NAME/catchup?revision=N|N@ORIGIN`: which members hold revision N of
/// the route or one that supersedes it (its deletion counts as a revision too).
pub async fn catchup(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<CatchupQuery>, QueryRejection>,
) -> Result<Json<api::Catchup>, Error> {
    let Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(Json(super::catchup(&state, routes::key(&name), q.revision).await))
}
