//! Routes in the replicated store: `route/NAME` holds a route's spec as JSON. Each apply
//! that changes the content is a new revision of that entry, and the entry carries its
//! last revisions with it, so the history (and a rollback to any revision in it) is on
//! every node. (`routing::lint` says why a route may not work as written.)
//!
//! Must not: decide where traffic goes (that is `routing`), or store a route that did
//! not validate whole.

use mesh_proto::route::RouteSpec;

pub use crate::state::model::Route as Stored;
use crate::state::model::RouteRecord;
use crate::state::Snapshot;
use crate::store::entry::{Entry, Revision};
use crate::store::{Store, StoreError};

/// The store key of route `name`.
pub fn key(name: &str) -> String {
    RouteRecord::key(name)
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
    #[error("route {name} is {size} bytes stored, over the {limit} bytes (64 KiB) a route may take: split its subsets or rules")]
    TooLarge { name: String, size: usize, limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an apply or a rollback did.
pub struct Applied {
    pub stored: Stored,
    /// The content was already current: nothing was stored.
    pub unchanged: bool,
}

/// Whether a revision restored another one, and which.
pub fn rollback_of(r: &Revision) -> Option<u64> {
    Stored::from_revision(r)?.rollback_of
}

/// Every live route of the snapshot, by name.
pub fn all(snap: &Snapshot) -> Vec<Stored> {
    snap.routes().values().map(|r| Stored::clone(r)).collect()
}

fn entry(store: &Store, name: &str) -> Option<std::sync::Arc<Entry>> {
    store.view().entry(&key(name)).cloned()
}

/// The current revision, or `revision` from the history.
pub fn get(store: &Store, name: &str, revision: Option<u64>) -> Result<Stored, RouteError> {
    let e = entry(store, name).ok_or_else(|| RouteError::Unknown(name.to_owned()))?;
    match revision {
        None => Stored::from_revision(&e.as_revision()).ok_or_else(|| RouteError::Unknown(name.to_owned())),
        Some(n) => e
            .revisions()
            .find(|r| r.revision == n)
            .and_then(|r| Stored::from_revision(&r))
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

/// Whether a write goes to the store or only says what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Store,
    DryRun,
}

/// Stores `spec` as the route's new revision (acknowledged once durable), unless it is
/// the current content already: then nothing is stored. A dry run answers the revision
/// it would become. Blocking.
pub fn apply(store: &Store, spec: &RouteSpec, mode: Mode) -> Result<Applied, RouteError> {
    write(store, spec, None, mode)
}

fn write(store: &Store, spec: &RouteSpec, rollback_of: Option<u64>, mode: Mode) -> Result<Applied, RouteError> {
    let held = entry(store, &spec.name);
    if let Some(current) = held.as_ref().and_then(|e| Stored::from_revision(&e.as_revision())) {
        if current.spec == *spec {
            return Ok(Applied { stored: current, unchanged: true });
        }
    }
    if mode == Mode::DryRun {
        let stored = Stored {
            spec: spec.clone(),
            revision: held.map_or(1, |e| e.revision + 1),
            applied_at: std::time::SystemTime::now(),
            origin: store.origin().to_owned(),
            rollback_of,
        };
        return Ok(Applied { stored, unchanged: false });
    }
    let value =
        RouteRecord { route: spec.clone(), rollback_of }.encode().map_err(|e| RouteError::Encode(e.to_string()))?;
    let e = store.put(&key(&spec.name), value).map_err(|e| match e {
        StoreError::TooLarge { size, limit, .. } => RouteError::TooLarge { name: spec.name.clone(), size, limit },
        e => RouteError::Store(e),
    })?;
    let stored = Stored::from_revision(&e.as_revision()).ok_or_else(|| RouteError::Unknown(spec.name.clone()))?;
    Ok(Applied { stored, unchanged: false })
}

/// Deletes the route (a tombstone revision: the history stays). Blocking.
pub fn delete(store: &Store, name: &str) -> Result<(), RouteError> {
    get(store, name, None)?;
    store.delete(&key(name))?;
    Ok(())
}

/// The revision a rollback restores: `to`, or the newest live revision before the
/// current one.
fn rollback_target(store: &Store, name: &str, to: Option<u64>) -> Result<Stored, RouteError> {
    let e = entry(store, name).ok_or_else(|| RouteError::Unknown(name.to_owned()))?;
    match to {
        Some(n) => get(store, name, Some(n)),
        None => {
            let mut earlier: Vec<Revision> = e.revisions().filter(|r| r.revision < e.revision && !r.deleted).collect();
            earlier.sort_by_key(|r| r.revision);
            earlier.last().and_then(Stored::from_revision).ok_or_else(|| RouteError::NothingEarlier(name.to_owned()))
        }
    }
}

/// A new revision with the content of revision `to`, or of the newest live revision
/// before the current one (nothing stored when that is the current content, or in a dry
/// run). Blocking.
pub fn rollback(store: &Store, name: &str, to: Option<u64>, mode: Mode) -> Result<Applied, RouteError> {
    let target = rollback_target(store, name, to)?;
    write(store, &target.spec, Some(target.revision), mode)
}
