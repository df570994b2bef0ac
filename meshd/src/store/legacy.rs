//! Stores written before entries were sealed (format `mesh-store-1`), and their upgrade.
//!
//! An unsealed entry cannot be proven to anyone, so the upgrade keeps what this node can
//! vouch for: its own entries, signed again with its key (their own revisions only, as
//! one chain), and drops the others, which anti-entropy fetches again, sealed, from the
//! nodes that wrote them. This node's local tree (declared services, VIPs, tokens) is
//! untouched.
//!
//! Must not: keep an unsealed entry in the replicated tree.

use serde::Deserialize;

use super::entry::{Entry, Sealer};
use super::hlc::Hlc;
use super::{FORMAT, FORMAT_KEY, META_TREE};

/// An entry as `mesh-store-1` encoded it.
#[derive(Deserialize)]
struct Unsealed {
    key: String,
    value: Vec<u8>,
    version: Hlc,
    origin: String,
    deleted: bool,
    revision: u64,
    history: Vec<UnsealedRevision>,
}

#[derive(Deserialize)]
struct UnsealedRevision {
    revision: u64,
    version: Hlc,
    origin: String,
    deleted: bool,
    value: Vec<u8>,
}

/// Upgrades the replicated tree in place and marks the store current; returns how many
/// entries were kept (signed again) and dropped.
pub(super) fn migrate(db: &sled::Db, me: &str, sealer: Option<&dyn Sealer>) -> Result<(usize, usize), String> {
    let (mut kept, mut dropped) = (0, 0);
    let mut batch = sled::Batch::default();
    for item in db.iter() {
        let (key, bytes) = item.map_err(|e| e.to_string())?;
        let old: Unsealed = postcard::from_bytes(&bytes)
            .map_err(|e| format!("entry {:?} does not decode: {e}", String::from_utf8_lossy(&key)))?;
        match resealed(old, me, sealer) {
            Some(entry) => {
                let bytes = entry.encode().map_err(|e| e.to_string())?;
                batch.insert(key, bytes);
                kept += 1;
            }
            None => {
                batch.remove(key);
                dropped += 1;
            }
        }
    }
    db.apply_batch(batch).map_err(|e| e.to_string())?;
    let meta = db.open_tree(META_TREE).map_err(|e| e.to_string())?;
    meta.insert(FORMAT_KEY, FORMAT).map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())?;
    Ok((kept, dropped))
}

/// `old` as a sealed entry of this node's own revisions, if its current one is its own.
fn resealed(old: Unsealed, me: &str, sealer: Option<&dyn Sealer>) -> Option<Entry> {
    if old.origin != me {
        return None;
    }
    let current = UnsealedRevision {
        revision: old.revision,
        version: old.version,
        origin: old.origin,
        deleted: old.deleted,
        value: old.value,
    };
    let mut entry: Option<Entry> = None;
    for r in old.history.into_iter().chain(std::iter::once(current)).filter(|r| r.origin == me) {
        let value = (!r.deleted).then_some(r.value);
        let mut next = Entry::next(entry.as_ref(), &old.key, value, r.version, me);
        next.revision = r.revision;
        if let Some(sealer) = sealer {
            next.seal.key = sealer.key_ref();
            next.seal.sig = sealer.sign(&next.as_revision().message(&old.key))?;
        }
        entry = Some(next);
    }
    entry
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    use serde::Serialize;

    use super::*;
    use crate::store::entry::KEY_REF;
    use crate::store::seal::{unchecked_revisions, Authority, Refusal};
    use crate::store::{Metrics, Store, View, LOCAL_TREE};

    /// A real P-256 key that signs; the authority admits everything (the upgrade is
    /// what is tested, not the trust rules).
    struct TestKey(EcdsaKeyPair, SystemRandom);

    impl Sealer for TestKey {
        fn key_ref(&self) -> [u8; KEY_REF] {
            [7; KEY_REF]
        }
        fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
            self.0.sign(&self.1, message).ok().map(|s| s.as_ref().to_vec())
        }
    }

    impl Authority for TestKey {
        fn sealer(&self) -> Option<&dyn Sealer> {
            Some(self)
        }
        fn may_write(&self, _: &View, _: &str, _: bool) -> Result<(), Refusal> {
            Ok(())
        }
        fn judge(&self, _: &View, batch: &[&Entry]) -> Vec<Result<(), Refusal>> {
            batch.iter().map(|_| Ok(())).collect()
        }
    }

    #[derive(Serialize)]
    struct Old<'a> {
        key: &'a str,
        value: &'a [u8],
        version: Hlc,
        origin: &'a str,
        deleted: bool,
        revision: u64,
        history: Vec<OldRevision<'a>>,
    }

    #[derive(Serialize)]
    struct OldRevision<'a> {
        revision: u64,
        version: Hlc,
        origin: &'a str,
        deleted: bool,
        value: &'a [u8],
    }

    #[test]
    fn an_unsealed_store_keeps_its_own_entries_signed_again_and_drops_the_rest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("store");
        {
            let db = sled::open(&path).expect("sled");
            let rev = |revision, origin, value| OldRevision {
                revision,
                version: Hlc(revision),
                origin,
                deleted: false,
                value,
            };
            let own = Old {
                key: "route/web",
                value: b"v3",
                version: Hlc(3),
                origin: "a",
                deleted: false,
                revision: 3,
                history: vec![rev(1, "a", b"v1"), rev(2, "b", b"v2")],
            };
            let theirs = Old {
                key: "route/db",
                value: b"x",
                version: Hlc(1),
                origin: "b",
                deleted: false,
                revision: 1,
                history: vec![],
            };
            for old in [&own, &theirs] {
                db.insert(old.key, postcard::to_stdvec(old).expect("encode")).expect("insert");
            }
            db.open_tree(LOCAL_TREE).expect("local").insert("declared/web", b"kept".as_slice()).expect("insert");
            db.open_tree(META_TREE).expect("meta").insert(FORMAT_KEY, super::super::FORMAT_UNSEALED).expect("meta");
            db.flush().expect("flush");
        }
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        let public = key.public_key().as_ref().to_vec();
        let store = Store::open(&path, "a", Arc::new(TestKey(key, rng)), Metrics::new(), |_| {}).expect("the upgrade");

        let view = store.view();
        assert!(view.entry("route/db").is_none(), "another node's entry is dropped, to be fetched again");
        let web = view.entry("route/web").expect("its own entry is kept");
        assert_eq!((web.revision, web.value.as_slice()), (3, &b"v3"[..]));
        let revisions: Vec<u64> = web.revisions().map(|r| r.revision).collect();
        assert_eq!(revisions, vec![1, 3], "its own revisions, as one chain");
        let checked = unchecked_revisions(&View::default(), web).expect("a sealed chain");
        for r in checked {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
                .verify(&r.message(&web.key), &r.seal.sig)
                .expect("signed again with the node key");
        }
        assert_eq!(store.local_get("declared/web").expect("local"), Some(b"kept".to_vec()), "the local tree stays");
        drop(store);
        // Opened again: current format, nothing to upgrade.
        let again =
            Store::open(&path, "a", Arc::new(crate::store::seal::Unsealed), Metrics::new(), |_| {}).expect("open");
        assert_eq!(again.view().len(), 1);
    }
}
