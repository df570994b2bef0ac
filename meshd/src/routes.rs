//! Routes in the replicated store: `route/NAME` holds a route's spec as JSON. Each apply
//! is a new revision of that entry, and the entry carries its last revisions with it, so
//! the history (and a rollback to any revision in it) is on every node.

use std::time::{Duration, SystemTime};

use mesh_proto::route::RouteSpec;

use crate::state::Snapshot;
use crate::store::entry::{Entry, Revision};
use crate::store::{Store, StoreError};

const PREFIX: &str = "route/";

pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no route named {0}")]
    Unknown(String),
    #[error("route {name} has no revision {revision} (its history holds {held})")]
    NoRevision { name: String, revision: u64, held: String },
    #[error("route {0} has no earlier revision to roll back to")]
    NothingEarlier(String),
    #[error("cannot encode the route: {0}")]
    Encode(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored revision, decoded.
pub struct Stored {
    pub spec: RouteSpec,
    pub revision: u64,
    pub applied_at: SystemTime,
    pub origin: String,
}

fn decode(r: &Revision) -> Option<RouteSpec> {
    if r.deleted {
        return None;
    }
    serde_json::from_slice(&r.value).ok()
}

fn stored(r: &Revision) -> Option<Stored> {
    Some(Stored {
        spec: decode(r)?,
        revision: r.revision,
        applied_at: SystemTime::UNIX_EPOCH + Duration::from_millis(r.version.millis()),
        origin: r.origin.clone(),
    })
}

/// Every live route of the snapshot, by name.
pub fn all(snap: &Snapshot) -> Vec<Stored> {
    snap.store.prefix(PREFIX).filter_map(|e| stored(&e.as_revision())).collect()
}

/// The live routes' specs, for routing tables.
pub fn specs(snap: &Snapshot) -> Vec<RouteSpec> {
    all(snap).into_iter().map(|s| s.spec).collect()
}

fn entry(store: &Store, name: &str) -> Option<std::sync::Arc<Entry>> {
    store.view().entry(&key(name)).cloned()
}

/// The current revision, or `revision` from the history.
pub fn get(store: &Store, name: &str, revision: Option<u64>) -> Result<Stored, RouteError> {
    let e = entry(store, name).ok_or_else(|| RouteError::Unknown(name.to_owned()))?;
    match revision {
        None => stored(&e.as_revision()).ok_or_else(|| RouteError::Unknown(name.to_owned())),
        Some(n) => e
            .revisions()
            .find(|r| r.revision == n)
            .and_then(|r| stored(&r))
            .ok_or_else(|| RouteError::NoRevision { name: name.to_owned(), revision: n, held: held(&e) }),
    }
}

fn held(e: &Entry) -> String {
    let mut revs: Vec<u64> = e.revisions().filter(|r| !r.deleted).map(|r| r.revision).collect();
    revs.sort_unstable();
    match (revs.first(), revs.last()) {
        (Some(a), Some(b)) if a != b => format!("{a} to {b}"),
        (Some(a), _) => a.to_string(),
        _ => "none".to_owned(),
    }
}

/// Every revision still held, oldest first.
pub fn history(store: &Store, name: &str) -> Result<Vec<Revision>, RouteError> {
    let e = entry(store, name).ok_or_else(|| RouteError::Unknown(name.to_owned()))?;
    let mut revs: Vec<Revision> = e.revisions().collect();
    revs.sort_by_key(|r| r.revision);
    Ok(revs)
}

/// Stores `spec` as the route's new revision (acknowledged once durable). Blocking.
pub fn apply(store: &Store, spec: &RouteSpec) -> Result<Stored, RouteError> {
    let value = serde_json::to_vec(spec).map_err(|e| RouteError::Encode(e.to_string()))?;
    let e = store.put(&key(&spec.name), value)?;
    stored(&e.as_revision()).ok_or_else(|| RouteError::Unknown(spec.name.clone()))
}

/// Deletes the route (a tombstone revision: the history stays). Blocking.
pub fn delete(store: &Store, name: &str) -> Result<(), RouteError> {
    get(store, name, None)?;
    store.delete(&key(name))?;
    Ok(())
}

/// A new revision with the content of revision `to`, or of the newest live revision
/// before the current one. Blocking.
pub fn rollback(store: &Store, name: &str, to: Option<u64>) -> Result<Stored, RouteError> {
    let e = entry(store, name).ok_or_else(|| RouteError::Unknown(name.to_owned()))?;
    let target = match to {
        Some(n) => get(store, name, Some(n))?,
        None => {
            let mut earlier: Vec<Revision> = e.revisions().filter(|r| r.revision < e.revision && !r.deleted).collect();
            earlier.sort_by_key(|r| r.revision);
            earlier.last().and_then(stored).ok_or_else(|| RouteError::NothingEarlier(name.to_owned()))?
        }
    };
    apply(store, &target.spec)
}
