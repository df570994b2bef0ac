//! The mesh's trust rules for replicated entries: every revision is signed by its
//! writer's node key, and a node's keys are known from its key records.
//!
//! A **key record**, `node/NAME/key/HASH`, holds a CA-issued certificate for the key
//! whose SHA-256 is HASH, written (and signed) by NAME itself. It proves itself: the
//! certificate chains to the mesh CA as it stood when it was issued, names NAME, and
//! carries HASH's key; the record's own signature verifies with that key. It is never
//! deleted, so a key stays known after its certificates expire and after its node has
//! left: signatures outlive certificates. A revocation (`revoked/SERIAL`, naming the key)
//! refuses what that key signs with a version after the revocation; what it signed before
//! stays.
//!
//! Who may write what, checked for every revision of every entry, whoever relayed it:
//!
//! | keys | writer |
//! |---|---|
//! | `node/NAME/key/HASH` | NAME, never deleted |
//! | `node/NAME/cert` | a signer |
//! | `node/NAME/...` (the rest) | NAME; a signer may delete (reaping a departed node) |
//! | `revoked/SERIAL` | a signer, once (no later revision, no tombstone) |
//! | `signer/NAME` | NAME, a signer |
//! | `ca/FINGERPRINT` | a signer (rotating the CA); never deleted |
//! | `route/`, `policy/`, `claim/`, anything else | an operator or a signer |
//!
//! A writer's role is the one its certificate in the key record carries (a certificate
//! from before roles counts as operator).
//!
//! Must not: trust an entry for where it came from (only its signature), or let a node's
//! key record be written by anyone but the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use mesh_proto::role::Role;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::cert::{self, hex};
use super::records::{self, Revocation};
use super::Identity;
use crate::store::entry::{Entry, Revision, Sealer, KEY_REF};
use crate::store::seal::{unchecked_revisions, Authority, Refusal};
use crate::store::view::View;
use crate::store::{Store, StoreError};

/// The key of `node`'s key record for the key whose SHA-256 is `key_hash` (hex).
pub fn key_record_key(node: &str, key_hash: &str) -> String {
    format!("node/{node}/key/{key_hash}")
}

/// Writes this node's key record when the store lacks it, or holds it with a certificate
/// of another role (a certificate from before roles, renewed since): what every other
/// node verifies this node's writes with. Returns whether it wrote.
pub fn record_own_key(store: &Store, identity: &Identity) -> Result<bool, StoreError> {
    let current = identity.current();
    let key = key_record_key(&identity.node, &current.info.key_hash);
    let held_role = store.view().get(&key).and_then(|der| cert::inspect(der).ok()).map(|info| info.role);
    if held_role == Some(current.info.role) {
        return Ok(false);
    }
    store.put(&key, current.der.to_vec())?;
    Ok(true)
}

/// The node and key hash a key record's key names.
fn parse_key_record(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("node/")?;
    let (node, hash) = rest.split_once("/key/")?;
    let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (mesh_proto::is_dns_label(node) && valid).then_some((node, hash))
}

/// Signs this node's writes with its node key.
pub struct NodeSealer {
    key: EcdsaKeyPair,
    key_ref: [u8; KEY_REF],
    rng: SystemRandom,
}

impl NodeSealer {
    /// `pkcs8`: the node key; `key_hash`: the SHA-256 of its public key, hex.
    pub fn new(pkcs8: &[u8], key_hash: &str) -> Result<NodeSealer, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| format!("the node key cannot sign: {e}"))?;
        Ok(NodeSealer { key, key_ref: key_ref_of(key_hash).ok_or("a malformed key hash")?, rng })
    }
}

impl Sealer for NodeSealer {
    fn key_ref(&self) -> [u8; KEY_REF] {
        self.key_ref
    }

    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        self.key.sign(&self.rng, message).ok().map(|s| s.as_ref().to_vec())
    }
}

/// The first [`KEY_REF`] bytes of a hex key hash.
fn key_ref_of(key_hash: &str) -> Option<[u8; KEY_REF]> {
    let mut out = [0u8; KEY_REF];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(key_hash.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A node key proven by a key record.
#[derive(Debug)]
struct NodeKey {
    node: String,
    key_hash: String,
    role: Role,
    /// The public key as ring verifies it (an uncompressed P-256 point).
    public: Vec<u8>,
}

/// What this node needs to know of itself to judge its own writes.
pub trait Me: Send + Sync {
    fn name(&self) -> &str;
    /// The role other nodes see in this node's key record.
    fn role(&self) -> Role;
}

/// The mesh's trust rules over the store (see the module's documentation).
pub struct EntryAuthority {
    me: Box<dyn Me>,
    trust_domain: String,
    /// The roots whose certificates vouch for keys: the CA this node trusts.
    roots: Vec<CertificateDer<'static>>,
    sealer: NodeSealer,
    /// Key records already proven, by the SHA-256 of the certificate they hold.
    proven: Mutex<HashMap<[u8; 32], Arc<NodeKey>>>,
}

/// Proven key records kept; past it the cache starts over (a mesh has far fewer keys).
const PROVEN_MAX: usize = 16_384;

impl EntryAuthority {
    pub fn new(
        me: Box<dyn Me>,
        trust_domain: &str,
        roots: Vec<CertificateDer<'static>>,
        sealer: NodeSealer,
    ) -> EntryAuthority {
        EntryAuthority { me, trust_domain: trust_domain.to_owned(), roots, sealer, proven: Mutex::default() }
    }

    /// Proves the certificate in a key record for `node`'s key `key_hash`.
    fn prove(
        &self,
        node: &str,
        key_hash: &str,
        der: &[u8],
        roots: &[CertificateDer<'static>],
    ) -> Result<Arc<NodeKey>, String> {
        let print = cert::fingerprint_bytes(der);
        let known = self.proven.lock().unwrap_or_else(|p| p.into_inner()).get(&print).cloned();
        let key = match known {
            Some(key) => key,
            None => {
                // Only what is proven is kept: a certificate refused now may chain to a
                // root this node learns later.
                let key = Arc::new(self.prove_uncached(der, roots)?);
                let mut proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
                if proven.len() >= PROVEN_MAX {
                    proven.clear();
                }
                proven.insert(print, key.clone());
                key
            }
        };
        if key.node != node || key.key_hash != key_hash {
            return Err(format!("its certificate is for {}'s key {}", key.node, &key.key_hash[..16]));
        }
        Ok(key)
    }

    fn prove_uncached(&self, der: &[u8], roots: &[CertificateDer<'static>]) -> Result<NodeKey, String> {
        let info = cert::inspect(der).map_err(|e| e.to_string())?;
        if info.id.trust_domain != self.trust_domain {
            return Err(format!("its certificate is of trust domain {:?}", info.id.trust_domain));
        }
        // The chain as it stood when the certificate was issued: a key record outlives
        // the certificate in it.
        let issued = info.not_before.duration_since(UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(1);
        let at = UnixTime::since_unix_epoch(issued);
        let ee = CertificateDer::from(der.to_vec());
        let chains = roots.iter().any(|root| {
            let Ok(anchor) = webpki::anchor_from_trusted_cert(root) else { return false };
            let Ok(ee) = webpki::EndEntityCert::try_from(&ee) else { return false };
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                at,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .is_ok()
        });
        if !chains {
            return Err("its certificate does not chain to this mesh's CA".to_owned());
        }
        let (_, parsed) = X509Certificate::from_der(der).map_err(|_| "its certificate does not parse".to_owned())?;
        let public = parsed.public_key().subject_public_key.data.to_vec();
        Ok(NodeKey { node: info.id.node, key_hash: info.key_hash, role: info.role.unwrap_or(Role::Operator), public })
    }

    /// Proves a key record entry: its key, its certificate, its own signature.
    fn prove_record(&self, entry: &Entry, roots: &[CertificateDer<'static>]) -> Result<Arc<NodeKey>, Refusal> {
        let bad = |why: String| Refusal::BadKeyRecord(format!("{}: {why}", entry.key));
        let (node, hash) = parse_key_record(&entry.key).ok_or_else(|| bad("not a key record's key".to_owned()))?;
        if entry.deleted {
            return Err(Refusal::NotAllowed(format!("{} is never deleted", entry.key)));
        }
        let key = self.prove(node, hash, &entry.value, roots).map_err(bad)?;
        if entry.origin != node {
            return Err(Refusal::NotAllowed(format!("{} is written by {node} alone, not {}", entry.key, entry.origin)));
        }
        Ok(key)
    }

    /// Checks one revision of `key`: its signature, its writer's right to write it, and
    /// that its key was not revoked before it was written.
    fn check(&self, key: &str, rev: &Revision, keys: &Keys<'_>) -> Result<(), Refusal> {
        let signer = keys.find(self, &rev.origin, &rev.seal.key)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &signer.public)
            .verify(&rev.message(key), &rev.seal.sig)
            .map_err(|_| Refusal::BadSignature(rev.origin.clone()))?;
        if let Some(at_ms) = keys.revoked.get(&signer.key_hash) {
            if rev.version.millis() > *at_ms {
                return Err(Refusal::Revoked(rev.origin.clone()));
            }
        }
        may_write(&rev.origin, signer.role, key, rev.deleted, rev.revision)
    }
}

/// The keys a batch is judged with: its own proven key records, then the view's.
struct Keys<'a> {
    view: &'a View,
    /// The roots a key record's certificate may chain to: this node's, and every root
    /// the store records (retired ones included: signatures outlive them).
    roots: Vec<CertificateDer<'static>>,
    batch: HashMap<(String, [u8; KEY_REF]), Arc<NodeKey>>,
    /// Revoked key hashes, with when.
    revoked: HashMap<String, u64>,
}

impl Keys<'_> {
    fn find(&self, auth: &EntryAuthority, origin: &str, key_ref: &[u8; KEY_REF]) -> Result<Arc<NodeKey>, Refusal> {
        if let Some(k) = self.batch.get(&(origin.to_owned(), *key_ref)) {
            return Ok(k.clone());
        }
        let unknown = || Refusal::UnknownKey(origin.to_owned());
        if !mesh_proto::is_dns_label(origin) {
            return Err(unknown());
        }
        let prefix = format!("node/{origin}/key/{}", hex(key_ref));
        let record = self.view.prefix(&prefix).next().ok_or_else(unknown)?;
        let (node, hash) = parse_key_record(&record.key).ok_or_else(unknown)?;
        auth.prove(node, hash, &record.value, &self.roots).map_err(|_| unknown())
    }
}

/// Whether `origin`, with `role`, may write revision `revision` of `key`.
pub fn may_write(origin: &str, role: Role, key: &str, deleted: bool, revision: u64) -> Result<(), Refusal> {
    let deny = |why: String| Err(Refusal::NotAllowed(why));
    let needs = |needed: Role, what: &str| {
        if role >= needed {
            Ok(())
        } else {
            deny(format!("{what} needs the {needed} role; {origin} is a {role}"))
        }
    };
    if let Some(rest) = key.strip_prefix("node/") {
        let owner = rest.split('/').next().unwrap_or_default();
        if parse_key_record(key).is_some() {
            if deleted {
                return deny(format!("{key} is never deleted"));
            }
            return if owner == origin { Ok(()) } else { deny(format!("{key} is written by {owner} alone")) };
        }
        if rest.strip_prefix(owner) == Some("/cert") {
            return needs(Role::Signer, "a node's certificate record");
        }
        if owner == origin || (deleted && role >= Role::Signer) {
            return Ok(());
        }
        return deny(format!("{key} belongs to node {owner}; {origin} may not write it"));
    }
    if key.starts_with("revoked/") {
        needs(Role::Signer, "a revocation")?;
        if deleted || revision != 1 {
            return deny(format!("{key} is a revocation: revocations are never changed or withdrawn"));
        }
        return Ok(());
    }
    if key.starts_with("ca/") {
        needs(Role::Signer, "a CA root")?;
        if deleted {
            return deny(format!("{key} is a CA root: roots are never withdrawn (they verify what they issued)"));
        }
        return Ok(());
    }
    if let Some(name) = key.strip_prefix("signer/") {
        needs(Role::Signer, "a signer announcement")?;
        return if name == origin { Ok(()) } else { deny(format!("{key} is announced by {name} alone")) };
    }
    needs(Role::Operator, "mesh-wide configuration")
}

impl Authority for EntryAuthority {
    fn sealer(&self) -> Option<&dyn Sealer> {
        Some(&self.sealer)
    }

    fn may_write(&self, view: &View, key: &str, deleted: bool) -> Result<(), Refusal> {
        let revision = view.entry(key).map_or(1, |e| e.next_revision());
        may_write(self.me.name(), self.me.role(), key, deleted, revision)
    }

    fn judge(&self, view: &View, batch: &[&Entry]) -> Vec<Result<(), Refusal>> {
        let revoked = view
            .prefix("revoked/")
            .filter_map(|e| serde_json::from_slice::<Revocation>(&e.value).ok())
            .map(|r| (r.key_hash, r.at_ms))
            .collect();
        let mut roots = self.roots.clone();
        roots.extend(records::roots(view).into_iter().map(|r| CertificateDer::from(r.cert)));
        let mut keys = Keys { view, roots, batch: HashMap::new(), revoked };
        // Key records first: the batch's other entries may be signed with them.
        let records: Vec<Option<Result<(), Refusal>>> = batch
            .iter()
            .map(|e| {
                parse_key_record(&e.key)?;
                Some(self.prove_record(e, &keys.roots).map(|k| {
                    if let Some(r) = key_ref_of(&k.key_hash) {
                        keys.batch.insert((k.node.clone(), r), k);
                    }
                }))
            })
            .collect();
        batch
            .iter()
            .zip(records)
            .map(|(e, record)| {
                record.unwrap_or(Ok(()))?;
                for rev in unchecked_revisions(view, e)? {
                    self.check(&e.key, &rev, &keys)?;
                }
                Ok(())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{issue_local, Ca};
    use crate::store::entry::Seal;
    use crate::store::hlc::Hlc;
    use crate::store::{wall_ms, Metrics};

    /// A node of a test mesh: its identity (from `ca`, with `role`) and its store.
    struct TestNode {
        identity: Arc<Identity>,
        store: Store,
    }

    fn node(dir: &std::path::Path, ca: &Ca, name: &str, role: Role, ttl: Duration) -> TestNode {
        let data = dir.join(name);
        let identity = Arc::new(issue_local(&data, ca, "mesh.local", name, role, ttl).expect("a node of the mesh"));
        let authority = Arc::new(identity.entry_authority().expect("authority"));
        let store = Store::open(&data.join("store"), name, authority, Metrics::new(), |_| {}).expect("store");
        record_own_key(&store, &identity).expect("key record");
        TestNode { identity, store }
    }

    /// Every entry `from` holds, as it would send them.
    fn all(from: &TestNode) -> Vec<Entry> {
        from.store.view().iter().map(|e| (**e).clone()).collect()
    }

    fn own_key_record(n: &TestNode) -> Entry {
        let key = key_record_key(&n.identity.node, &n.identity.key_hash());
        (**n.store.view().entry(&key).expect("a key record")).clone()
    }

    /// `entries` are refused by `by`, the first for `outcome`, and change nothing.
    fn refused(by: &TestNode, what: &str, outcome: &str, entries: Vec<Entry>) {
        let before = by.store.view();
        let authority = by.identity.entry_authority().expect("authority");
        let fresh: Vec<&Entry> = entries.iter().filter(|e| before.merged(Arc::new((*e).clone())).is_some()).collect();
        let verdicts = authority.judge(&before, &fresh);
        let first = verdicts.iter().find_map(|v| v.as_ref().err()).expect("a refusal");
        assert_eq!(first.outcome(), outcome, "{what}: {first}");
        let report = by.store.merge(entries, wall_ms()).expect("merge");
        assert_eq!(report.applied, 0, "{what}: {report:?}");
        assert!(report.refused_untrusted >= 1, "{what}: {report:?}");
        assert_eq!(by.store.view().digest(), before.digest(), "{what}: the view is unchanged");
    }

    #[test]
    fn signed_entries_merge_and_forgeries_of_every_kind_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let hour = Duration::from_secs(3600);
        let ca = Ca::create("mesh.local").expect("ca");
        let a = node(tmp.path(), &ca, "a", Role::Signer, hour);
        let m = node(tmp.path(), &ca, "m", Role::Member, hour);
        let o = node(tmp.path(), &ca, "o", Role::Operator, Duration::ZERO);

        // Honest writes, with the key records they need, merge; the operator's
        // certificate expired at once and its route still verifies.
        m.store.put("node/m/service/web", b"web".to_vec()).expect("put");
        o.store.put("route/web", b"v1".to_vec()).expect("put");
        o.store.put("route/web", b"v2".to_vec()).expect("put");
        let report = a.store.merge([all(&m), all(&o)].concat(), wall_ms()).expect("merge");
        assert_eq!((report.applied, report.refused_untrusted), (4, 0), "{report:?}");
        assert_eq!(a.store.view().get("route/web"), Some(&b"v2"[..]));

        // A member writing mesh-wide configuration, and for another node.
        assert!(matches!(m.store.put("route/web", b"evil".to_vec()), Err(StoreError::NotAllowed { .. })));
        let as_member = |key: &str, value: &[u8]| {
            let cur = a.store.view().entry(key).cloned();
            Entry::sealed(cur.as_deref(), key, Some(value.to_vec()), Hlc::from_millis(wall_ms()), "m", &signer(&m))
                .expect("sealed")
        };
        refused(&a, "a member's route", "refused_not_allowed", vec![as_member("route/web", b"evil")]);
        refused(&a, "another node's entry", "refused_not_allowed", vec![as_member("node/o/service/db", b"db")]);
        refused(&a, "a revocation by a member", "refused_not_allowed", vec![as_member("revoked/01", b"{}")]);

        // Claiming another origin: the signature is m's, the origin says o.
        let mut claimed = as_member("route/web", b"evil");
        claimed.origin = "o".to_owned();
        refused(&a, "a claimed origin", "refused_unknown_key", vec![claimed.clone()]);
        claimed.seal.key = key_ref_of(&o.identity.key_hash()).expect("ref");
        refused(&a, "a claimed origin and key", "refused_bad_signature", vec![claimed]);

        // An operator's route with its value changed after signing.
        o.store.put("route/web", b"v3".to_vec()).expect("put");
        let mut tampered = (**o.store.view().entry("route/web").expect("route")).clone();
        tampered.value = b"evil".to_vec();
        refused(&a, "a changed value", "refused_bad_signature", vec![tampered]);

        // A history rewritten: revision 1 of the route changed after its writer signed it
        // (each revision is checked on its own, the past ones too).
        let mut rewritten = (**o.store.view().entry("route/web").expect("route")).clone();
        rewritten.history[0].value = b"forged".to_vec();
        refused(&a, "a rewritten history", "refused_bad_signature", vec![rewritten]);

        // No signature at all.
        let mut bare = Entry::next(None, "route/bare", Some(b"x".to_vec()), Hlc::from_millis(wall_ms()), "o");
        bare.seal = Seal::default();
        refused(&a, "an unsealed entry", "refused_unsealed", vec![bare]);

        // A key record of m's key claimed by o, and a key record from another CA.
        let mut stolen = own_key_record(&m);
        stolen.key = key_record_key("o", &m.identity.key_hash());
        refused(&a, "another node's key record", "refused_bad_key_record", vec![stolen]);
        let other_ca = Ca::create("mesh.local").expect("ca");
        let x = node(tmp.path(), &other_ca, "x", Role::Signer, hour);
        x.store.put("route/web", b"other mesh".to_vec()).expect("put");
        refused(&a, "a key from another CA", "refused_bad_key_record", all(&x));
        assert!(a.store.view().prefix("node/x/").next().is_none());
    }

    #[test]
    fn a_revoked_key_writes_nothing_new_and_what_it_wrote_before_stays() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let hour = Duration::from_secs(3600);
        let ca = Ca::create("mesh.local").expect("ca");
        let a = node(tmp.path(), &ca, "a", Role::Signer, hour);
        let o = node(tmp.path(), &ca, "o", Role::Operator, hour);
        o.store.put("route/before", b"kept".to_vec()).expect("put");
        a.store.merge(all(&o), wall_ms()).expect("merge");
        let revocation = Revocation {
            node: "o".to_owned(),
            serial: o.identity.current().info.serial.clone(),
            key_hash: o.identity.key_hash(),
            at_ms: wall_ms(),
            by: "a".to_owned(),
        };
        a.store.put("revoked/01", serde_json::to_vec(&revocation).expect("json")).expect("put");
        std::thread::sleep(Duration::from_millis(5));
        o.store.put("route/after", b"refused".to_vec()).expect("put");
        let report = a.store.merge(all(&o), wall_ms()).expect("merge");
        assert_eq!(report.refused_untrusted, 1, "{report:?}");
        assert_eq!(a.store.view().get("route/before"), Some(&b"kept"[..]));
        assert!(a.store.view().get("route/after").is_none());
        // The revocation itself cannot be withdrawn or rewritten, even by a signer.
        assert!(matches!(a.store.delete("revoked/01"), Err(StoreError::NotAllowed { .. })));
        assert!(matches!(a.store.put("revoked/01", b"{}".to_vec()), Err(StoreError::NotAllowed { .. })));
    }

    fn signer(n: &TestNode) -> NodeSealer {
        n.identity.sealer().expect("sealer")
    }

    #[test]
    fn the_write_rules_per_key_class() {
        use Role::{Member, Operator, Signer};
        let ok = |origin, role, key, deleted, rev| may_write(origin, role, key, deleted, rev).is_ok();
        let h = "ab".repeat(32);
        let key_rec = format!("node/a/key/{h}");
        assert!(ok("a", Member, &key_rec, false, 1));
        assert!(!ok("b", Signer, &key_rec, false, 1), "another node's key record");
        assert!(!ok("a", Signer, &key_rec, true, 2), "key records are never deleted");
        assert!(ok("a", Member, "node/a/service/web", false, 1));
        assert!(!ok("b", Operator, "node/a/service/web", false, 1), "speaking for another node");
        assert!(ok("b", Signer, "node/a/service/web", true, 2), "a signer reaps");
        assert!(!ok("b", Operator, "node/a/service/web", true, 2));
        assert!(!ok("a", Operator, "node/a/cert", false, 1), "a node does not record its own certificate");
        assert!(ok("s", Signer, "node/a/cert", false, 1));
        assert!(ok("s", Signer, "revoked/01", false, 1));
        assert!(!ok("s", Signer, "revoked/01", true, 2), "un-revoking");
        assert!(!ok("s", Signer, "revoked/01", false, 2), "rewriting a revocation");
        assert!(!ok("o", Operator, "revoked/01", false, 1));
        assert!(ok("s", Signer, "ca/00", false, 2));
        assert!(!ok("o", Operator, "ca/00", false, 1), "adding a root");
        assert!(!ok("s", Signer, "ca/00", true, 3), "withdrawing a root");
        assert!(ok("s", Signer, "signer/s", false, 1));
        assert!(!ok("t", Signer, "signer/s", false, 1), "announcing another signer");
        assert!(!ok("m", Operator, "signer/m", false, 1));
        for key in ["route/web", "policy/web", "claim/web", "future/x"] {
            assert!(ok("o", Operator, key, false, 3) && ok("s", Signer, key, true, 3), "{key}");
            assert!(!ok("m", Member, key, false, 1), "{key} needs an operator");
        }
    }

    #[test]
    fn key_record_keys_name_a_node_and_a_full_hash() {
        let h = "0f".repeat(32);
        assert_eq!(parse_key_record(&format!("node/a-1/key/{h}")), Some(("a-1", h.as_str())));
        assert_eq!(parse_key_record(&format!("node/a/key/{}", &h[..62])), None);
        assert_eq!(parse_key_record(&format!("node/a/key/{}", h.to_uppercase())), None);
        assert_eq!(parse_key_record(&format!("node/A_/key/{h}")), None);
        assert_eq!(key_ref_of(&h), Some([0x0f; KEY_REF]));
    }
}
