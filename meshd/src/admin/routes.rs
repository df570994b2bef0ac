//! `/v1/routes`: apply, read, delete, history and rollback of routes. Writes are
//! acknowledged once durable here; gossip spreads them (`/v1/catchup` tells who holds a
//! revision, which is how `meshctl route apply --wait` knows every node has it).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use mesh_proto::api;
use mesh_proto::route::RouteSpec;
use serde::Deserialize;

use super::{rfc3339, AdminState, Error};
use crate::routes::{self, RouteError, Stored};

fn body(s: Stored) -> api::Route {
    api::Route {
        name: s.spec.name.clone(),
        service: s.spec.service.clone(),
        revision: s.revision,
        applied_at: rfc3339(s.applied_at),
        origin: s.origin,
        spec: s.spec,
    }
}

fn error(e: RouteError) -> Error {
    let status = match &e {
        RouteError::Unknown(_) | RouteError::NoRevision { .. } => StatusCode::NOT_FOUND,
        RouteError::NothingEarlier(_) => StatusCode::CONFLICT,
        RouteError::Store(s) if s.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        RouteError::Store(_) | RouteError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    let mut all: Vec<api::Route> = routes::all(&snap).into_iter().map(body).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Json(all)
}

#[derive(Debug, Deserialize)]
pub struct RevisionQuery {
    revision: Option<u64>,
}

/// `GET /v1/routes/NAME[?revision=N]`
pub async fn get(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<RevisionQuery>, QueryRejection>,
) -> Result<Json<api::Route>, Error> {
    let Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    routes::get(&state.store, &name, q.revision).map(body).map(Json).map_err(error)
}

/// `PUT /v1/routes/NAME`: validates the whole route (and its rules against the
/// service's protocol, when the service is known), then stores a new revision.
pub async fn apply(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    spec: Result<Json<RouteSpec>, JsonRejection>,
) -> Result<Json<api::Route>, Error> {
    let Json(spec) = spec.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if spec.name != name {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            format!("the path names route {name} but the body is route {}", spec.name),
        ));
    }
    RouteSpec::from_file("request", &spec.to_toml()).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let snap = state.snapshot.borrow().clone();
    let protocol = crate::catalog::services(&snap)
        .into_iter()
        .find(|s| s.name == spec.service)
        .and_then(|s| s.instances.first().map(|i| i.protocol.clone()));
    if let Some(p) = protocol {
        spec.check_protocol(&p).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e))?;
    }
    let store = state.store.clone();
    blocking(move || routes::apply(&store, &spec)).await.map(body).map(Json)
}

/// `DELETE /v1/routes/NAME`
pub async fn delete(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let store = state.store.clone();
    let n = name.clone();
    blocking(move || routes::delete(&store, &n)).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

/// `GET /v1/routes/NAME/history`, oldest first.
pub async fn history(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<api::RouteRevision>>, Error> {
    let revs = routes::history(&state.store, &name).map_err(error)?;
    Ok(Json(
        revs.into_iter()
            .map(|r| api::RouteRevision {
                revision: r.revision,
                applied_at: rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.version.millis())),
                origin: r.origin,
                deleted: r.deleted,
            })
            .collect(),
    ))
}

/// `POST /v1/routes/NAME/rollback`: a new revision with an old revision's content.
pub async fn rollback(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    req: Result<Json<api::RollbackRequest>, JsonRejection>,
) -> Result<Json<api::Route>, Error> {
    let Json(req) = req.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let store = state.store.clone();
    blocking(move || routes::rollback(&store, &name, req.to)).await.map(body).map(Json)
}
