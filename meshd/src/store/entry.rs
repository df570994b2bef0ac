//! One entry of the replicated map, its revision history, and the last-writer-wins rule.
//!
//! An entry carries its own recent history, so that history replicates with the entry.
//! History is a merge, not a winner: when two nodes hold different revisions of a key
//! (writes on both sides of a partition), merging keeps every revision of both, ordered
//! by `(version, origin)`, the newest [`HISTORY`] of them; the entry's current content
//! is the greatest revision in that order (last-writer-wins decides what is in effect,
//! not what is remembered). Merging is a set union followed by a bound that depends only
//! on the set, so replicas converge whatever the order of delivery.
//!
//! A revision is named by its number and its writer (`3@node-1`): a new write takes the
//! number one above every revision its writer holds, so two writers that did not see
//! each other may both write a revision 3, and the writer tells them apart.
//!
//! Every revision is sealed by the node that wrote it ([`Seal`]): a signature by its node
//! key over the revision's fields and the digest of its parent (the revision that was
//! current where it was written), so nobody but its writer could have made it, and a
//! history records which revision each one was written over (a revision that is not an
//! ancestor of the current one lost to a concurrent write). What the seal is checked
//! against (certificates, roles) is the store's [`super::seal::Authority`]; this file
//! only says which bytes are signed.
//!
//! Must not: decode an entry's value (the read model's codecs do), or trust an entry from
//! the wire beyond its size limits.

use std::collections::{btree_map, BTreeMap};

use serde::{Deserialize, Serialize};

use super::hlc::Hlc;

/// Revisions each key keeps, the current one included.
pub const HISTORY: usize = 20;
/// The largest key, in bytes.
pub const MAX_KEY: usize = 512;
/// The largest value, in bytes. A whole entry with its history stays under ~1.3 MiB.
pub const MAX_VALUE: usize = 64 * 1024;

/// The current state of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Namespaced: `route/NAME`, `policy/NAME`, `revoked/SERIAL`,
    /// `node/NODE/service/NAME`, ...
    pub key: String,
    /// The value; empty for a tombstone.
    pub value: Vec<u8>,
    /// When it was written, in hybrid logical time.
    pub version: Hlc,
    /// The node that wrote it.
    pub origin: String,
    /// A tombstone: the key was deleted (tombstones replicate like writes).
    pub deleted: bool,
    /// 1 for the first write of a key, then one above every revision its writer held.
    pub revision: u64,
    /// Earlier revisions, in `(version, origin)` order, at most `HISTORY - 1`: those this
    /// one was written over and those it won over.
    pub history: Vec<Revision>,
    /// The writer's signature over this revision.
    pub seal: Seal,
}

/// A past revision of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    pub version: Hlc,
    pub origin: String,
    pub deleted: bool,
    pub value: Vec<u8>,
    pub seal: Seal,
}

/// A revision's signature, and what it chains to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The first bytes of the SHA-256 of the writer's public key: which of the origin's
    /// keys signed (a node that was removed and joined again has had two).
    pub key: [u8; KEY_REF],
    /// The digest of the revision this one was written over, its parent
    /// ([`Revision::digest`]); zeros for the first revision of a key.
    pub prev: [u8; 32],
    /// ECDSA P-256 with SHA-256, r and s fixed-width (64 bytes); empty when unsealed.
    pub sig: Vec<u8>,
}

/// The bytes of a key hash that name it in a seal.
pub const KEY_REF: usize = 8;
/// The length of a signature.
pub const SIG_LEN: usize = 64;

/// What signs local writes: the node's key, behind the store's authority.
pub trait Sealer {
    /// The seal's key reference for this node's current key.
    fn key_ref(&self) -> [u8; KEY_REF];
    /// Signs `message`; `None` when the key cannot sign (a bug or a broken key file).
    fn sign(&self, message: &[u8]) -> Option<Vec<u8>>;
}

impl Revision {
    /// The bytes the seal signs: a domain tag, the key, this revision's fields, a digest
    /// of the value, and the seal's key reference and previous digest. Lengths are
    /// explicit, so no two different revisions share a message.
    pub fn message(&self, key: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(160 + key.len() + self.origin.len());
        m.extend_from_slice(SEAL_DOMAIN);
        m.extend_from_slice(&(key.len() as u64).to_be_bytes());
        m.extend_from_slice(key.as_bytes());
        m.extend_from_slice(&self.revision.to_be_bytes());
        m.extend_from_slice(&self.version.0.to_be_bytes());
        m.extend_from_slice(&(self.origin.len() as u64).to_be_bytes());
        m.extend_from_slice(self.origin.as_bytes());
        m.push(u8::from(self.deleted));
        m.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.value).as_ref());
        m.extend_from_slice(&self.seal.key);
        m.extend_from_slice(&self.seal.prev);
        m
    }

    /// The SHA-256 of [`Revision::message`]: what the next revision's seal chains to.
    pub fn digest(&self, key: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.message(key)).as_ref());
        out
    }
}

/// Tags what a seal signs, so a signature made for anything else never verifies here.
const SEAL_DOMAIN: &[u8] = b"mesh store entry v1\0";

impl Entry {
    /// The entry that replaces `current` (None: the key is new) with `value` (None: a
    /// delete), written by `origin` at `version`, sealed by `sealer`.
    pub fn sealed(
        current: Option<&Entry>,
        key: &str,
        value: Option<Vec<u8>>,
        version: Hlc,
        origin: &str,
        sealer: &dyn Sealer,
    ) -> Option<Entry> {
        let mut entry = Entry::next(current, key, value, version, origin);
        entry.seal.key = sealer.key_ref();
        entry.seal.sig = sealer.sign(&entry.as_revision().message(key))?;
        Some(entry)
    }

    /// [`Entry::sealed`] without the signature (its previous digest is set): what a
    /// sealer signs, and the unsigned entries of tests that exercise merging alone.
    pub fn next(current: Option<&Entry>, key: &str, value: Option<Vec<u8>>, version: Hlc, origin: &str) -> Entry {
        let (revision, history) = match current {
            None => (1, Vec::new()),
            Some(cur) => {
                let mut history = cur.history.clone();
                history.push(cur.as_revision());
                let excess = history.len().saturating_sub(HISTORY - 1);
                history.drain(..excess);
                (cur.next_revision(), history)
            }
        };
        Entry {
            key: key.to_owned(),
            deleted: value.is_none(),
            value: value.unwrap_or_default(),
            version,
            origin: origin.to_owned(),
            revision,
            seal: Seal { prev: current.map_or([0; 32], |c| c.as_revision().digest(key)), ..Seal::default() },
            history,
        }
    }

    /// The number a write over this entry takes: one above every revision held.
    pub fn next_revision(&self) -> u64 {
        self.revisions().map(|r| r.revision).max().unwrap_or(0).saturating_add(1)
    }

    /// This entry as a past revision.
    pub fn as_revision(&self) -> Revision {
        Revision {
            revision: self.revision,
            version: self.version,
            origin: self.origin.clone(),
            deleted: self.deleted,
            value: self.value.clone(),
            seal: self.seal.clone(),
        }
    }

    /// Every revision held, oldest first, this one last.
    pub fn revisions(&self) -> impl Iterator<Item = Revision> + '_ {
        self.history.iter().cloned().chain(std::iter::once(self.as_revision()))
    }

    /// Whether this entry's current revision replaces `current`'s under
    /// last-writer-wins: the greater `(version, origin)` wins; an equal pair is the same
    /// write.
    pub fn supersedes(&self, current: &Entry) -> bool {
        (self.version, self.origin.as_str()) > (current.version, current.origin.as_str())
    }

    /// This entry merged with `other` (the same key): every revision of both, the newest
    /// [`HISTORY`] by `(version, origin)`, the greatest current. `None` when that is
    /// exactly what this entry holds already. Two revisions with the same version and
    /// origin are one write; should they differ (only their writer could have signed
    /// both), the one with the smaller digest is kept, on every node alike.
    pub fn merged(&self, other: &Entry) -> Option<Entry> {
        let mut all: BTreeMap<(Hlc, String), Revision> = BTreeMap::new();
        let key = self.key.as_str();
        for r in self.revisions().chain(other.revisions()) {
            match all.entry((r.version, r.origin.clone())) {
                btree_map::Entry::Vacant(v) => {
                    v.insert(r);
                }
                btree_map::Entry::Occupied(mut o) => {
                    if r.digest(key) < o.get().digest(key) {
                        o.insert(r);
                    }
                }
            }
        }
        let mut kept: Vec<Revision> = all.into_values().collect();
        let excess = kept.len().saturating_sub(HISTORY);
        kept.drain(..excess);
        let merged = Entry::from_revisions(key, kept)?;
        (merged != *self).then_some(merged)
    }

    /// The entry whose revisions are `revisions` (in `(version, origin)` order, not
    /// empty): the last is the current one.
    fn from_revisions(key: &str, mut revisions: Vec<Revision>) -> Option<Entry> {
        let current = revisions.pop()?;
        Some(Entry {
            key: key.to_owned(),
            value: current.value,
            version: current.version,
            origin: current.origin,
            deleted: current.deleted,
            revision: current.revision,
            history: revisions,
            seal: current.seal,
        })
    }

    /// Whether the history is in strict `(version, origin)` order below the current
    /// revision: the shape merging keeps, which a remote entry must have.
    pub fn ordered(&self) -> bool {
        let ids: Vec<(Hlc, &str)> = self
            .history
            .iter()
            .map(|r| (r.version, r.origin.as_str()))
            .chain(std::iter::once((self.version, self.origin.as_str())))
            .collect();
        ids.windows(2).all(|w| w[0] < w[1])
    }

    /// The bytes this entry takes encoded (the store's size accounting).
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }

    /// A 64-bit hash of what identifies this entry: its key and every revision it holds
    /// (version, origin, deleted), so two nodes with the same current write but different
    /// histories differ, and anti-entropy merges their histories. SHA-256, so that it
    /// does not depend on the Rust version or build.
    pub fn fingerprint(&self) -> u64 {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&(self.key.len() as u64).to_be_bytes());
        ctx.update(self.key.as_bytes());
        for r in self.history.iter().map(|r| (r.version, &r.origin, r.deleted)).chain(std::iter::once((
            self.version,
            &self.origin,
            self.deleted,
        ))) {
            ctx.update(&r.0 .0.to_be_bytes());
            ctx.update(&(r.1.len() as u64).to_be_bytes());
            ctx.update(r.1.as_bytes());
            ctx.update(&[u8::from(r.2)]);
        }
        let digest = ctx.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_be_bytes(first)
    }

    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cur: Option<&Entry>, v: &str, t: u64) -> Entry {
        Entry::next(cur, "route/reviews", Some(v.as_bytes().to_vec()), Hlc::from_millis(t), "a")
    }

    #[test]
    fn revisions_count_up_and_history_keeps_the_last_twenty() {
        let mut e = put(None, "v1", 1);
        assert_eq!((e.revision, e.history.len()), (1, 0));
        for i in 2..=30u64 {
            e = put(Some(&e), &format!("v{i}"), i);
        }
        assert_eq!(e.revision, 30);
        let revs: Vec<u64> = e.revisions().map(|r| r.revision).collect();
        assert_eq!(revs, (11..=30).collect::<Vec<_>>());
        assert_eq!(e.history[0].value, b"v11");
    }

    #[test]
    fn a_tombstone_keeps_its_history_and_a_new_write_continues_it() {
        let a = put(None, "v1", 1);
        let dead = Entry::next(Some(&a), "route/reviews", None, Hlc::from_millis(2), "b");
        assert!(dead.deleted && dead.value.is_empty());
        assert_eq!((dead.revision, dead.history.len()), (2, 1));
        let again = put(Some(&dead), "v3", 3);
        assert_eq!(again.revision, 3);
        assert!(again.history[1].deleted);
    }

    #[test]
    fn merging_keeps_both_sides_newest_twenty_whatever_the_order() {
        // Two writers, each 15 revisions over the same first one, interleaved in time.
        let first = put(None, "v0", 1);
        let (mut a, mut b) = (first.clone(), first.clone());
        for i in 1..=15u64 {
            a = Entry::next(Some(&a), "route/reviews", Some(vec![1]), Hlc::from_millis(10 * i), "a");
            b = Entry::next(Some(&b), "route/reviews", Some(vec![2]), Hlc::from_millis(10 * i + 5), "b");
        }
        let ab = a.merged(&b).expect("b brings revisions");
        let ba = b.merged(&a).expect("a brings revisions");
        assert_eq!(ab, ba, "the same entry whichever side merges");
        assert_eq!(ab.revisions().count(), HISTORY, "bounded");
        assert!(ab.ordered());
        assert_eq!((ab.origin.as_str(), ab.version), ("b", Hlc::from_millis(155)), "the latest is current");
        let oldest = &ab.history[0];
        assert_eq!(oldest.version, Hlc::from_millis(60), "the oldest by time went first");
        assert_eq!(ab.merged(&a), None, "merging what it holds changes nothing");
        assert_eq!(ab.next_revision(), 17, "one above every revision held (each writer reached 16)");
    }

    #[test]
    fn last_writer_wins_by_version_then_origin() {
        let a = Entry::next(None, "k", Some(vec![1]), Hlc(10), "a");
        let b = Entry::next(None, "k", Some(vec![2]), Hlc(10), "b");
        let later = Entry::next(None, "k", Some(vec![3]), Hlc(11), "a");
        assert!(b.supersedes(&a) && !a.supersedes(&b), "ties go to the greater origin");
        assert!(later.supersedes(&b));
        assert!(!a.supersedes(&a), "the same write does not replace itself");
    }

    #[test]
    fn encoding_round_trips_and_fingerprints_ignore_the_value() {
        let a = put(None, "v1", 1);
        let b = put(Some(&a), "v2", 2);
        assert_eq!(Entry::decode(&b.encode().expect("encode")).expect("decode"), b);
        assert_eq!(b.encoded_len(), b.encode().expect("encode").len());
        let mut same_write = b.clone();
        same_write.value = b"other".to_vec();
        assert_eq!(same_write.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
