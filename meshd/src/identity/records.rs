//! The identity facts kept in the replicated store, and what follows from them alone:
//! which certificate each node holds, which are revoked, which nodes are removed. Pure
//! over a store view, so the read model can use it without the signer's machinery.
//!
//! Must not: write, or need a signer: it reads a store view and nothing else.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::verify::RevokedSet;
use crate::store::view::View;

/// `node/NAME/cert`: the certificate a signer last issued to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertRecord {
    pub serial: String,
    pub key_hash: String,
    pub not_after_ms: u64,
    pub issued_by: String,
    /// The role the certificate carries (None: issued before roles).
    #[serde(default)]
    pub role: Option<mesh_proto::role::Role>,
}

/// `revoked/SERIAL`: a removed node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub node: String,
    pub serial: String,
    pub key_hash: String,
    pub at_ms: u64,
    pub by: String,
}

pub fn node_cert_key(node: &str) -> String {
    format!("node/{node}/cert")
}

/// The nodes of `list` still removed in `view`: those whose current certificate record
/// names a revoked key (`set`). A name that joined again with a new key is not removed.
pub fn removed_among(view: &View, set: &RevokedSet, list: &[Revocation]) -> BTreeSet<String> {
    list.iter()
        .map(|r| r.node.clone())
        .filter(|node| {
            view.get(&node_cert_key(node))
                .and_then(|v| serde_json::from_slice::<NodeCertRecord>(v).ok())
                .is_none_or(|held| set.keys.contains(&held.key_hash))
        })
        .collect()
}

/// Each node's role, as the certificate record its signer wrote says (records from before
/// roles carry none).
pub fn roles(view: &View) -> std::collections::BTreeMap<String, mesh_proto::role::Role> {
    view.prefix("node/")
        .filter(|e| !e.deleted && e.key.ends_with("/cert"))
        .filter_map(|e| {
            let node = e.key.strip_prefix("node/")?.strip_suffix("/cert")?;
            let record: NodeCertRecord = serde_json::from_slice(&e.value).ok()?;
            Some((node.to_owned(), record.role?))
        })
        .collect()
}

/// The revocation list in a store view.
pub fn revoked_set(view: &View) -> (RevokedSet, Vec<Revocation>) {
    let mut set = RevokedSet::default();
    let mut list = Vec::new();
    for e in view.prefix("revoked/") {
        if let Ok(r) = serde_json::from_slice::<Revocation>(&e.value) {
            set.serials.insert(r.serial.clone());
            set.keys.insert(r.key_hash.clone());
            list.push(r);
        }
    }
    (set, list)
}

/// `ca/FINGERPRINT` (hex SHA-256 of the certificate): a root of the mesh CA, written by
/// the signer that rotated to it. Never deleted: a retired root still proves the key
/// records it issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// The root's certificate, DER.
    pub cert: Vec<u8>,
    pub state: CaState,
    /// When this state began (ms since the epoch).
    pub since_ms: u64,
    /// A retiring root stops being trusted for connections at this time (ms): when the
    /// last certificate it issued has expired.
    #[serde(default)]
    pub retire_at_ms: Option<u64>,
    /// The signer that wrote it.
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaState {
    /// Trusted everywhere, not yet issuing: nodes learn it before anyone presents a
    /// certificate it issued.
    Added,
    /// Issuing: nodes renew under it.
    Active,
    /// Trusted for connections until `retire_at_ms`, then only for key records.
    Retiring,
}

pub fn ca_key(fingerprint_hex: &str) -> String {
    format!("ca/{fingerprint_hex}")
}

/// The roots recorded in a view, each checked against its key (a record whose
/// certificate is not the one its key names is left out).
pub fn roots(view: &View) -> Vec<CaRecord> {
    view.prefix("ca/")
        .filter_map(|e| {
            let record: CaRecord = serde_json::from_slice(&e.value).ok()?;
            let fp = super::cert::hex(&super::cert::fingerprint_bytes(&record.cert));
            (e.key.strip_prefix("ca/") == Some(fp.as_str())).then_some(record)
        })
        .collect()
}
