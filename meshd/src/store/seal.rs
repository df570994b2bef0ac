//! Who may write what: the store seals every local write and asks an [`Authority`] about
//! every remote one before it reaches the view.
//!
//! The store knows the shape of a seal and of a history chain ([`entry::Seal`]); what a
//! signature is checked against (node keys, certificates, roles, revocations) is the
//! authority's, which meshd's identity provides. A refused entry is counted by reason and
//! never stored; the rest of its batch merges as usual.
//!
//! Must not: know about certificates or roles (the authority does), or check a revision
//! twice: revisions already held were admitted when they arrived.

use std::collections::HashSet;

use super::entry::{Entry, Revision, Sealer, SIG_LEN};
use super::view::View;

/// Why a remote entry, or a local write, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature, or one of the wrong length.
    #[error("the revision is not signed")]
    Unsealed,
    /// No key of the origin that this node knows signed it (yet: the key record may
    /// arrive later, and anti-entropy brings the entry again).
    #[error("signed by a key of {0} that this node does not know")]
    UnknownKey(String),
    /// The signature does not verify with the origin's key.
    #[error("its signature does not verify with {0}'s key")]
    BadSignature(String),
    /// A key record whose certificate does not prove the key is the node's.
    #[error("a key record that does not verify: {0}")]
    BadKeyRecord(String),
    /// The writer's role or name does not allow writing this key.
    #[error("{0}")]
    NotAllowed(String),
    /// Written with a key after it was revoked.
    #[error("written by {0} after its key was revoked")]
    Revoked(String),
}

impl Refusal {
    /// The store's merge outcome for it: `refused_` and the reason.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::Unsealed => "refused_unsealed",
            Refusal::UnknownKey(_) => "refused_unknown_key",
            Refusal::BadSignature(_) => "refused_bad_signature",
            Refusal::BadKeyRecord(_) => "refused_bad_key_record",
            Refusal::NotAllowed(_) => "refused_not_allowed",
            Refusal::Revoked(_) => "refused_revoked",
        }
    }
}

/// Seals local writes and judges remote entries.
pub trait Authority: Send + Sync {
    /// What signs this node's writes (`None`: writes are not sealed, see [`Unsealed`]).
    fn sealer(&self) -> Option<&dyn Sealer>;

    /// Whether this node may write (`deleted`: delete) `key`, so that a write every other
    /// node would refuse fails here, at once, with the reason.
    fn may_write(&self, view: &View, key: &str, deleted: bool) -> Result<(), Refusal>;

    /// Judges a batch of remote entries, each new or newer than what `view` holds: one
    /// verdict per entry, in order. The batch may carry the key records its other
    /// entries are signed with.
    fn judge(&self, view: &View, batch: &[&Entry]) -> Vec<Result<(), Refusal>>;
}

/// The revisions of `entry` that need checking, oldest first: those `view` does not hold
/// already under the same key. Each revision is signed on its own (a history is a merge
/// of revisions from several writers, not one chain): whoever relays an entry can leave
/// revisions out, never make one up or change one.
pub fn unchecked_revisions(view: &View, entry: &Entry) -> Result<Vec<Revision>, Refusal> {
    if entry.revisions().any(|r| r.seal.sig.len() != SIG_LEN) {
        return Err(Refusal::Unsealed);
    }
    let held: HashSet<[u8; 32]> =
        view.entry(&entry.key).map(|e| e.revisions().map(|r| r.digest(&entry.key)).collect()).unwrap_or_default();
    Ok(entry.revisions().filter(|r| !held.contains(&r.digest(&entry.key))).collect())
}

/// An authority that seals nothing and admits everything: for the tests of merging and
/// persistence alone, and the gossip simulation, where trust is not what is exercised.
/// meshd itself never runs with it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unsealed;

impl Authority for Unsealed {
    fn sealer(&self) -> Option<&dyn Sealer> {
        None
    }

    fn may_write(&self, _: &View, _: &str, _: bool) -> Result<(), Refusal> {
        Ok(())
    }

    fn judge(&self, _: &View, batch: &[&Entry]) -> Vec<Result<(), Refusal>> {
        batch.iter().map(|_| Ok(())).collect()
    }
}
