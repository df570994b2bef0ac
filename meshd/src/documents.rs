//! Routes and policies in the replicated store: `route/NAME` and `policy/NAME` hold a
//! spec as JSON ([`Spec`]). Each apply that changes the content is a new revision of that
//! entry, and the entry carries its last revisions with it, so the history (and a
//! rollback to any revision in it) is on every node. Revisions written on both sides of
//! a partition all stay in the history; the latest is in force, and the others are
//! marked as superseded ([`History::superseded_by`]). (`routing::lint` says why a route
//! may not work as written.)
//!
//! Must not: decide where traffic goes or who may call whom (`routing`, `policy`), or
//! store a spec that did not validate whole.

use std::collections::HashMap;

use mesh_proto::api::RevisionRef;

pub use crate::state::model::{Document, Spec};
use crate::store::entry::{Entry, Revision};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("no {noun} named {name}")]
    Unknown { noun: &'static str, name: String },
    #[error("{noun} {name} has no revision {revision} (its history holds {held})")]
    NoRevision { noun: &'static str, name: String, revision: RevisionRef, held: String },
    #[error("{noun} {name} has more than one revision {revision} ({ids}): name one of them")]
    Ambiguous { noun: &'static str, name: String, revision: u64, ids: String },
    #[error("{noun} {name} has no earlier revision to roll back to")]
    NothingEarlier { noun: &'static str, name: String },
    #[error("cannot encode the {noun}: {detail}")]
    Encode { noun: &'static str, detail: String },
    #[error("{noun} {name} is {size} bytes stored, over the {limit} bytes (64 KiB) it may take: split its rules")]
    TooLarge { noun: &'static str, name: String, size: usize, limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn unknown<S: Spec>(name: &str) -> DocError {
    DocError::Unknown { noun: S::NOUN, name: name.to_owned() }
}

/// What an apply or a rollback did.
pub struct Applied<S> {
    pub stored: Document<S>,
    /// The content was already current: nothing was stored.
    pub unchanged: bool,
}

/// The name of revision `r`: `3@node-1`.
pub fn id(r: &Revision) -> String {
    RevisionRef::id(r.revision, &r.origin)
}

/// Whether a revision restored another one, and which.
pub fn rollback_of<S: Spec>(r: &Revision) -> Option<RevisionRef> {
    Document::<S>::from_revision(r)?.rollback_of
}

fn entry<S: Spec>(store: &Store, name: &str) -> Option<std::sync::Arc<Entry>> {
    store.view().entry(&S::key(name)).cloned()
}

/// The revision of `e` that `wanted` names: by number alone while one revision has it.
fn find<S: Spec>(e: &Entry, name: &str, wanted: &RevisionRef) -> Result<Revision, DocError> {
    let mut matching: Vec<Revision> = e.revisions().filter(|r| wanted.names(r.revision, &r.origin)).collect();
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => {
            Err(DocError::NoRevision { noun: S::NOUN, name: name.to_owned(), revision: wanted.clone(), held: held(e) })
        }
        _ => Err(DocError::Ambiguous {
            noun: S::NOUN,
            name: name.to_owned(),
            revision: wanted.number,
            ids: matching.iter().map(id).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// The current revision, or `revision` from the history.
pub fn get<S: Spec>(store: &Store, name: &str, revision: Option<&RevisionRef>) -> Result<Document<S>, DocError> {
    let e = entry::<S>(store, name).ok_or_else(|| unknown::<S>(name))?;
    let r = match revision {
        None => e.as_revision(),
        Some(wanted) => find::<S>(&e, name, wanted)?,
    };
    match Document::from_revision(&r) {
        Some(stored) => Ok(stored),
        None if revision.is_none() => Err(unknown::<S>(name)),
        // A deletion: there is no content at that revision.
        None => Err(DocError::NoRevision {
            noun: S::NOUN,
            name: name.to_owned(),
            revision: RevisionRef { number: r.revision, origin: Some(r.origin) },
            held: held(&e),
        }),
    }
}

fn held(e: &Entry) -> String {
    let revs: Vec<String> = e.revisions().filter(|r| !r.deleted).map(|r| id(&r)).collect();
    if revs.is_empty() {
        "none".to_owned()
    } else {
        revs.join(", ")
    }
}

/// A route's history: every revision held, oldest first (by time, then writer).
pub struct History {
    pub revisions: Vec<Revision>,
    /// For each revision that lost to a concurrent write, the index of the revision that
    /// superseded it.
    superseded: HashMap<usize, usize>,
}

impl History {
    /// Lineage: the current revision and every revision it was written over, following
    /// each seal's parent digest, are in force in turn. Any other revision held was
    /// written on a branch that lost (the other side of a partition); it was superseded
    /// by the first revision of the current line written after the branch's last
    /// revision, which is what won over it when the histories merged.
    fn of(key: &str, revisions: Vec<Revision>) -> History {
        let digests: Vec<[u8; 32]> = revisions.iter().map(|r| r.digest(key)).collect();
        let index: HashMap<[u8; 32], usize> = digests.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        let parent = |i: usize| index.get(&revisions[i].seal.prev).copied();
        let mut line = vec![false; revisions.len()];
        let mut at = revisions.len().checked_sub(1);
        while let Some(i) = at {
            if line[i] {
                break;
            }
            line[i] = true;
            at = parent(i);
        }
        // A lost revision's branch ends at the newest lost revision written over it
        // (revisions are in time order, so a later `j` overwrites an earlier tip). At
        // most `HISTORY` revisions: quadratic is nothing.
        let mut tip: Vec<usize> = (0..revisions.len()).collect();
        for j in (0..revisions.len()).filter(|&j| !line[j]) {
            let mut at = parent(j);
            let mut steps = 0;
            while let Some(p) = at.filter(|&p| !line[p] && steps < revisions.len()) {
                tip[p] = j;
                at = parent(p);
                steps += 1;
            }
        }
        let mut superseded = HashMap::new();
        for i in (0..revisions.len()).filter(|&i| !line[i]) {
            let t = tip[i];
            if let Some(w) = (t + 1..revisions.len()).find(|&w| line[w]) {
                superseded.insert(i, w);
            }
        }
        History { revisions, superseded }
    }

    /// The revision that won over revision `i`, if it lost to a concurrent write.
    pub fn superseded_by(&self, i: usize) -> Option<&Revision> {
        self.superseded.get(&i).map(|&w| &self.revisions[w])
    }
}

/// Every revision still held, oldest first, with which lost to concurrent writes.
pub fn history<S: Spec>(store: &Store, name: &str) -> Result<History, DocError> {
    let e = entry::<S>(store, name).ok_or_else(|| unknown::<S>(name))?;
    Ok(History::of(&e.key, e.revisions().collect()))
}

/// Whether a write goes to the store or only says what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Store,
    DryRun,
}

/// Stores `spec` as its new revision (acknowledged once durable), unless it is the
/// current content already: then nothing is stored. A dry run answers the revision it
/// would become. Blocking.
pub fn apply<S: Spec>(store: &Store, spec: &S, mode: Mode) -> Result<Applied<S>, DocError> {
    write(store, spec, None, mode)
}

fn write<S: Spec>(
    store: &Store,
    spec: &S,
    rollback_of: Option<RevisionRef>,
    mode: Mode,
) -> Result<Applied<S>, DocError> {
    let name = spec.name();
    let held = entry::<S>(store, name);
    if let Some(current) = held.as_ref().and_then(|e| Document::<S>::from_revision(&e.as_revision())) {
        if current.spec == *spec {
            return Ok(Applied { stored: current, unchanged: true });
        }
    }
    if mode == Mode::DryRun {
        let stored = Document {
            spec: spec.clone(),
            revision: held.map_or(1, |e| e.next_revision()),
            applied_at: std::time::SystemTime::now(),
            origin: store.origin().to_owned(),
            rollback_of,
        };
        return Ok(Applied { stored, unchanged: false });
    }
    let value =
        spec.encode(rollback_of.as_ref()).map_err(|e| DocError::Encode { noun: S::NOUN, detail: e.to_string() })?;
    let e = store.put(&S::key(name), value).map_err(|e| match e {
        StoreError::TooLarge { size, limit, .. } => {
            DocError::TooLarge { noun: S::NOUN, name: name.to_owned(), size, limit }
        }
        e => DocError::Store(e),
    })?;
    let stored = Document::from_revision(&e.as_revision()).ok_or_else(|| unknown::<S>(name))?;
    Ok(Applied { stored, unchanged: false })
}

/// Deletes it (a tombstone revision: the history stays). Blocking.
pub fn delete<S: Spec>(store: &Store, name: &str) -> Result<(), DocError> {
    get::<S>(store, name, None)?;
    store.delete(&S::key(name))?;
    Ok(())
}

/// The revision a rollback restores: `to`, or the newest live revision before the
/// current one (by time, whichever side of a partition wrote it).
fn rollback_target<S: Spec>(store: &Store, name: &str, to: Option<&RevisionRef>) -> Result<Document<S>, DocError> {
    let e = entry::<S>(store, name).ok_or_else(|| unknown::<S>(name))?;
    match to {
        Some(wanted) => get(store, name, Some(wanted)),
        None => e
            .history
            .iter()
            .rev()
            .filter(|r| !r.deleted)
            .find_map(Document::from_revision)
            .ok_or_else(|| DocError::NothingEarlier { noun: S::NOUN, name: name.to_owned() }),
    }
}

/// A new revision with the content of revision `to`, or of the newest live revision
/// before the current one (nothing stored when that is the current content, or in a dry
/// run). Blocking.
pub fn rollback<S: Spec>(
    store: &Store,
    name: &str,
    to: Option<&RevisionRef>,
    mode: Mode,
) -> Result<Applied<S>, DocError> {
    let target = rollback_target::<S>(store, name, to)?;
    let restored = RevisionRef { number: target.revision, origin: Some(target.origin.clone()) };
    write(store, &target.spec, Some(restored), mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hlc::Hlc;

    fn write(cur: Option<&Entry>, t: u64, origin: &str) -> Entry {
        Entry::next(cur, "route/r", Some(format!("{t}").into_bytes()), Hlc(t), origin)
    }

    #[test]
    fn revisions_of_the_losing_side_are_superseded_by_the_first_winner_written_after_them() {
        // 1@a, then a partition: a writes 2@a (t=10) and 3@a (t=20); c writes 2@c (t=12)
        // and 3@c (t=18). After the heal, 3@a is current; c's branch lost to it. Then c
        // writes 4@c over the merged history.
        let r1 = write(None, 1, "a");
        let a2 = write(Some(&r1), 10, "a");
        let a3 = write(Some(&a2), 20, "a");
        let c2 = write(Some(&r1), 12, "c");
        let c3 = write(Some(&c2), 18, "c");
        let healed = a3.merged(&c3).expect("c's revisions join");
        assert_eq!(healed.next_revision(), 4, "one above every revision held");
        let after = write(Some(&healed), 30, "c");
        let h = History::of(&after.key, after.revisions().collect());
        let ids: Vec<String> = h.revisions.iter().map(id).collect();
        assert_eq!(ids, ["1@a", "2@a", "2@c", "3@c", "3@a", "4@c"], "by time");
        let lost: Vec<(String, String)> =
            (0..ids.len()).filter_map(|i| h.superseded_by(i).map(|w| (ids[i].clone(), id(w)))).collect();
        assert_eq!(lost, [("2@c".to_owned(), "3@a".to_owned()), ("3@c".to_owned(), "3@a".to_owned())]);
    }

    #[test]
    fn a_revision_is_found_by_number_while_unique_and_by_id_always() {
        let r1 = write(None, 1, "a");
        let a2 = write(Some(&r1), 10, "a");
        let c2 = write(Some(&r1), 12, "c");
        let e = a2.merged(&c2).expect("merged");
        let by = |s: &str| find::<mesh_proto::route::RouteSpec>(&e, "r", &s.parse().expect("a revision"));
        assert_eq!(by("1").expect("unique").origin, "a");
        assert_eq!(by("2@c").expect("named").origin, "c");
        assert!(matches!(by("2"), Err(DocError::Ambiguous { .. })));
        assert!(matches!(by("3"), Err(DocError::NoRevision { .. })));
        assert!(matches!(by("2@b"), Err(DocError::NoRevision { .. })));
    }
}
