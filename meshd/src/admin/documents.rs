//! `/v1/routes` and `/v1/policies`: apply, read, delete, history and rollback of routes
//! and authorization policies, alike ([`Served`] says what differs), and `/v1/lint`.
//! Writes are acknowledged once durable here; gossip spreads them
//! (`/v1/routes/NAME/catchup` tells who holds a revision, which is how `meshctl route
//! apply --wait` knows every node has it). An apply or rollback that changes nothing
//! stores nothing and says so.
//!
//! Must not: take store keys from clients (names only), or decide anything `documents`,
//! `routing::lint` and `policy` decide.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use mesh_proto::api::{self, RevisionRef};
use mesh_proto::policy::PolicySpec;
use mesh_proto::role::Role;
use mesh_proto::route::RouteSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{rfc3339, AdminState, Error};
use crate::documents::{self, Applied, DocError, Document, Spec};
use crate::state::Snapshot;

/// What the API does differently for routes and policies.
pub trait Served: Spec + Serialize + DeserializeOwned {
    /// The service it is about.
    fn service(&self) -> &str;
    /// Validates a body as a file would be (the same errors, with `request` as the file).
    fn validate(&self) -> Result<(), String>;
    /// Whether its rules fit the service's protocol (`http` or `tcp`).
    fn fits(&self, protocol: &str) -> Result<(), String>;
    /// Why it may not work as written in this node's view.
    fn warnings(&self, snap: &Snapshot) -> Vec<String>;
    /// Every live one in the snapshot.
    fn all(snap: &Snapshot) -> Vec<Document<Self>>;
}

impl Served for RouteSpec {
    fn service(&self) -> &str {
        &self.service
    }

    fn validate(&self) -> Result<(), String> {
        RouteSpec::from_file("request", &self.to_toml()).map(drop).map_err(|e| e.to_string())
    }

    fn fits(&self, protocol: &str) -> Result<(), String> {
        self.check_protocol(protocol)
    }

    fn warnings(&self, snap: &Snapshot) -> Vec<String> {
        crate::routing::lint::lint(self, snap)
    }

    fn all(snap: &Snapshot) -> Vec<Document<Self>> {
        snap.routes().values().map(|r| Document::clone(r)).collect()
    }
}

impl Served for PolicySpec {
    fn service(&self) -> &str {
        &self.service
    }

    fn validate(&self) -> Result<(), String> {
        PolicySpec::from_file("request", &self.to_toml()).map(drop).map_err(|e| e.to_string())
    }

    fn fits(&self, protocol: &str) -> Result<(), String> {
        self.check_protocol(protocol)
    }

    fn warnings(&self, snap: &Snapshot) -> Vec<String> {
        crate::policy::lint(self, snap)
    }

    fn all(snap: &Snapshot) -> Vec<Document<Self>> {
        snap.policies().values().map(|p| Document::clone(p)).collect()
    }
}

fn body<S: Served>(s: Document<S>) -> api::Document<S> {
    api::Document {
        name: s.spec.name().to_owned(),
        service: s.spec.service().to_owned(),
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

/// The answer to an apply or rollback: the revision, whether it was unchanged, and its
/// problems in this node's view.
fn applied<S: Served>(state: &AdminState, a: Applied<S>) -> api::Document<S> {
    let warnings = a.stored.spec.warnings(&state.snapshot.borrow());
    api::Document { unchanged: a.unchanged, warnings, ..body(a.stored) }
}

fn error(e: DocError) -> Error {
    let status = match &e {
        DocError::Unknown { .. } | DocError::NoRevision { .. } => StatusCode::NOT_FOUND,
        DocError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
        DocError::NothingEarlier { .. } => StatusCode::CONFLICT,
        DocError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DocError::Store(s) => super::store_status(s),
        DocError::Encode { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Error::new(status, e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DocError> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(error)
}

/// `GET /v1/routes`, `GET /v1/policies`
pub async fn list<S: Served>(State(state): State<Arc<AdminState>>) -> Json<Vec<api::Document<S>>> {
    let snap = state.snapshot.borrow().clone();
    let mut all: Vec<api::Document<S>> = S::all(&snap).into_iter().map(|s| flagged(&snap, body(s))).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Json(all)
}

#[derive(Debug, Deserialize)]
pub struct RevisionQuery {
    revision: Option<RevisionRef>,
}

/// `GET /v1/routes/NAME[?revision=N|N@ORIGIN]` (and policies)
pub async fn get<S: Served>(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<RevisionQuery>, QueryRejection>,
) -> Result<Json<api::Document<S>>, Error> {
    let Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let snap = state.snapshot.borrow().clone();
    documents::get::<S>(&state.store, &name, q.revision.as_ref()).map(|s| Json(flagged(&snap, body(s)))).map_err(error)
}

/// It, with its origin flagged if that node was removed since.
fn flagged<S>(snap: &Snapshot, doc: api::Document<S>) -> api::Document<S> {
    api::Document { origin_removed: snap.is_removed(&doc.origin), ..doc }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    /// Validate and report what would happen; store nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `PUT /v1/routes/NAME[?dry_run=true]` (and policies): validates the whole spec (and
/// its rules against the service's protocol, when the service is known), then stores a
/// new revision, unless the content is the current one already. The answer carries its
/// warnings. A dry run answers the same without storing: the revision it would become,
/// or the current one when unchanged.
pub async fn apply<S: Served>(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    spec: Result<Json<S>, JsonRejection>,
) -> Result<Json<api::Document<S>>, Error> {
    let Query(query) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Json(spec) = spec.map_err(super::rejected)?;
    if !query.dry_run {
        super::need(&state, Role::Operator, &format!("applying a {}", S::NOUN))?;
    }
    if spec.name() != name {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            format!("the path names {} {name} but the body is {} {}", S::NOUN, S::NOUN, spec.name()),
        ));
    }
    spec.validate().map_err(|e| Error::new(StatusCode::BAD_REQUEST, e))?;
    let protocol = state.snapshot.borrow().services.get(spec.service()).map(|s| s.protocol);
    if let Some(p) = protocol {
        spec.fits(p.as_str()).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e))?;
    }
    let (store, mode) = (state.store.clone(), mode(query.dry_run));
    let done = blocking(move || documents::apply(&store, &spec, mode)).await?;
    Ok(Json(applied(&state, done)))
}

fn mode(dry_run: bool) -> documents::Mode {
    if dry_run {
        documents::Mode::DryRun
    } else {
        documents::Mode::Store
    }
}

/// `DELETE /v1/routes/NAME` (and policies)
pub async fn delete<S: Served>(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    super::need(&state, Role::Operator, &format!("deleting a {}", S::NOUN))?;
    let store = state.store.clone();
    let n = name.clone();
    blocking(move || documents::delete::<S>(&store, &n)).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

/// `GET /v1/routes/NAME/history` (and policies), oldest first (by time, then writer),
/// revisions that lost to a concurrent write marked with the one that won.
pub async fn history<S: Served>(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<api::Revision>>, Error> {
    let history = documents::history::<S>(&state.store, &name).map_err(error)?;
    let snap = state.snapshot.borrow().clone();
    Ok(Json(
        history
            .revisions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let restored = documents::rollback_of::<S>(r);
                api::Revision {
                    revision: r.revision,
                    id: documents::id(r),
                    applied_at: rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.version.millis())),
                    rollback_of: restored.as_ref().map(|r| r.number),
                    rollback_of_id: restored.filter(|r| r.origin.is_some()).map(|r| r.to_string()),
                    superseded_by: history.superseded_by(i).map(documents::id),
                    origin_removed: snap.is_removed(&r.origin),
                    origin: r.origin.clone(),
                    deleted: r.deleted,
                }
            })
            .collect(),
    ))
}

/// `POST /v1/routes/NAME/rollback[?dry_run=true]` (and policies): a new revision with an
/// old revision's content; answered like an apply.
pub async fn rollback<S: Served>(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<ApplyQuery>, QueryRejection>,
    req: Result<Json<api::RollbackRequest>, JsonRejection>,
) -> Result<Json<api::Document<S>>, Error> {
    let Query(query) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Json(req) = req.map_err(super::rejected)?;
    if !query.dry_run {
        super::need(&state, Role::Operator, &format!("rolling a {} back", S::NOUN))?;
    }
    let (store, mode) = (state.store.clone(), mode(query.dry_run));
    let done = blocking(move || documents::rollback::<S>(&store, &name, req.to.as_ref(), mode)).await?;
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
    let mut all: Vec<api::RouteLint> = RouteSpec::all(&snap)
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

/// `GET /v1/routes/NAME/catchup?revision=N|N@ORIGIN` (and policies): which members hold
/// revision N or one that supersedes it (its deletion counts as a revision too).
pub async fn catchup<S: Served>(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<CatchupQuery>, QueryRejection>,
) -> Result<Json<api::Catchup>, Error> {
    let Query(q) = query.map_err(|e| Error::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(Json(super::catchup(&state, S::key(&name), q.revision).await))
}
