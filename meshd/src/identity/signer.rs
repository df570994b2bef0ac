//! What a signer does: issue join tokens, redeem them, renew certificates, and (on any
//! node) remove nodes. Decisions read the store's snapshot and write through the store,
//! so every grant and revocation is durable before it is answered.
//!
//! The methods block on store writes: call them from `spawn_blocking`.
//!
//! Must not: answer a grant or revocation before it is durable in the store, or issue a
//! certificate for a name the request does not prove.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_proto::role::Role;
use mesh_proto::token::Token;
use mesh_proto::wire::{JoinRequest, JoinResponse, Refusal, RefusalReason, RenewResponse};
use serde::{Deserialize, Serialize};

use super::cert::{self, CertInfo, SpiffeId};
pub use super::records::{node_cert_key, revoked_set, NodeCertRecord, Revocation};
use super::Identity;
use crate::store::{wall_ms, Store, StoreError};

/// Shortest and longest token lifetime.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// `token/ID`: what a signer keeps of a token: its hash, never the secret. Kept in the
/// signer's local tree: a token record never leaves the signer that issued it, so no
/// member can plant one (`store::LOCAL_ONLY` refuses any that arrives by gossip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// The signer that issued it, the only one that redeems it.
    pub signer: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The joining node also becomes a signer (records from before roles).
    pub grant_signer: bool,
    /// The joining node's role.
    #[serde(default)]
    pub role: Option<Role>,
    /// The name the joining node must have, if the token was made for one.
    pub node: Option<String>,
    /// The node that redeemed it.
    pub used_by: Option<String>,
}

impl TokenRecord {
    /// The role a node joining with this token gets.
    pub fn role(&self) -> Role {
        self.role.unwrap_or(if self.grant_signer { Role::Signer } else { Role::Member })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("this node is not a signer: create tokens on a signer (meshd init made the first one)")]
    NotSigner,
    #[error("ttl must be between 1s and 7d")]
    BadTtl,
    #[error("{0:?} is not a valid node name: {rule}", rule = mesh_proto::DNS_LABEL_RULE)]
    BadName(String),
    #[error("no node {0} is known to this node")]
    UnknownNode(String),
    #[error("a node cannot remove itself: run `meshctl node remove {0}` on another node")]
    RemoveSelf(String),
    #[error("the system random number generator failed")]
    Rng,
    #[error("cannot rotate the CA: {0}")]
    Rotate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token as created: the text to hand over and what was stored.
pub struct Issued {
    pub token: String,
    pub id: String,
    pub record: TokenRecord,
}

pub struct Signer {
    identity: Arc<Identity>,
    store: Store,
    advertise: SocketAddr,
    cert_ttl: Duration,
    /// Redemptions one at a time, so that of two joins racing for one token exactly one
    /// wins.
    redeem: Mutex<()>,
}

/// How long after the last certificate it issued could expire a rotated-out root is
/// still trusted: time for every signer to learn of the rotation.
pub const RETIRE_MARGIN_MS: u64 = 30_000;

pub fn token_key(id: &str) -> String {
    format!("token/{id}")
}

fn secret_hash(secret: &[u8]) -> String {
    cert::hex(ring::digest::digest(&ring::digest::SHA256, secret).as_ref())
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn refuse(reason: RefusalReason, detail: impl Into<String>) -> Refusal {
    Refusal { reason, detail: detail.into() }
}

impl Signer {
    pub fn new(identity: Arc<Identity>, store: Store, advertise: SocketAddr, cert_ttl: Duration) -> Signer {
        Signer { identity, store, advertise, cert_ttl, redeem: Mutex::new(()) }
    }

    pub fn is_signer(&self) -> bool {
        self.identity.ca().is_signer()
    }

    /// On a signer: records `signer/NODE` = its address in the store, so that every
    /// node (once gossip spreads it) can renew at any signer, not only the one it
    /// joined through.
    pub fn announce(&self) -> Result<(), StoreError> {
        if !self.is_signer() {
            return Ok(());
        }
        let key = format!("signer/{}", self.identity.node);
        let addr = self.advertise.to_string();
        if self.store.view().get(&key) != Some(addr.as_bytes()) {
            self.store.put(&key, addr.into_bytes())?;
        }
        Ok(())
    }

    /// Signer `name`'s address, as its announcement records it.
    pub fn signer_addr(&self, name: &str) -> Option<SocketAddr> {
        std::str::from_utf8(self.store.view().get(&format!("signer/{name}"))?).ok()?.parse().ok()
    }

    /// Refuses to issue when the mesh's CA was rotated at another signer and this one
    /// has not got the new root's key yet: a certificate under the retiring root could
    /// outlive its retirement.
    fn check_issuing_root(&self) -> Result<(), Refusal> {
        let view = self.store.view();
        let current = self.identity.ca();
        let active = super::records::roots(&view)
            .into_iter()
            .filter(|r| r.state == super::records::CaState::Active)
            .max_by_key(|r| r.since_ms);
        match active {
            Some(r) if r.cert != current.der.as_ref() => Err(refuse(
                RefusalReason::NotSigner,
                format!(
                    "the CA was rotated at {}; this signer is fetching the new root's key: ask another signer",
                    r.by
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The signers' addresses recorded in the store, other than this node.
    pub fn known_signers(&self) -> Vec<SocketAddr> {
        let view = self.store.view();
        view.prefix("signer/")
            .filter(|e| e.key != format!("signer/{}", self.identity.node))
            .filter_map(|e| std::str::from_utf8(&e.value).ok()?.parse().ok())
            .collect()
    }

    /// Makes a token valid for `ttl`, redeemable here once.
    pub fn create_token(&self, ttl: Duration, role: Role, node: Option<String>) -> Result<Issued, SignerError> {
        if !self.is_signer() {
            return Err(SignerError::NotSigner);
        }
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
            return Err(SignerError::BadTtl);
        }
        if let Some(n) = &node {
            if !mesh_proto::is_dns_label(n) {
                return Err(SignerError::BadName(n.clone()));
            }
        }
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(|_| SignerError::Rng)?;
        let hash = secret_hash(&secret);
        let id = hash[..16].to_owned();
        let now = wall_ms();
        let record = TokenRecord {
            hash,
            signer: self.identity.node.clone(),
            created_ms: now,
            expires_ms: now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            grant_signer: role == Role::Signer,
            role: Some(role),
            node,
            used_by: None,
        };
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Write {
            path: self.store.path().to_owned(),
            detail: format!("encoding the token record: {e}"),
        })?;
        self.store.local_put(&token_key(&id), &value)?;
        let fingerprint = cert::fingerprint_bytes(&self.identity.ca().der);
        let token = Token { signer: self.advertise, ca_fingerprint: fingerprint, secret }.encode();
        Ok(Issued { token, id, record })
    }

    /// Answers a join: checks the token, issues the certificate, marks the token used.
    pub fn join(&self, request: JoinRequest) -> JoinResponse {
        match self.try_join(request) {
            Ok(granted) => granted,
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason.as_str(), detail = %refusal.detail, "join refused");
                JoinResponse::Refused(refusal)
            }
        }
    }

    fn try_join(&self, request: JoinRequest) -> Result<JoinResponse, Refusal> {
        let JoinRequest::V1 { secret, node, csr } = request;
        if !self.is_signer() {
            return Err(refuse(RefusalReason::NotSigner, "this node cannot sign"));
        }
        if !mesh_proto::is_dns_label(&node) {
            return Err(refuse(RefusalReason::BadRequest, format!("{node:?} is not a valid node name")));
        }
        let _one_at_a_time = self.redeem.lock().unwrap_or_else(|p| p.into_inner());
        let hash = secret_hash(&secret);
        let key = token_key(&hash[..16]);
        let view = self.store.view();
        let held = self.store.local_get(&key).map_err(|e| refuse(RefusalReason::Internal, e.to_string()))?;
        let record: TokenRecord = held
            .and_then(|v| serde_json::from_slice(&v).ok())
            // Compares hashes, not secrets: timing reveals nothing an attacker can steer.
            .filter(|r: &TokenRecord| r.hash == hash)
            .ok_or_else(|| refuse(RefusalReason::UnknownToken, "no such token here"))?;
        if record.signer != self.identity.node {
            return Err(refuse(RefusalReason::OtherSigner, format!("redeem it at {}", record.signer)));
        }
        if let Some(by) = &record.used_by {
            return Err(refuse(RefusalReason::Used, format!("already redeemed by {by}")));
        }
        if record.expires_ms <= wall_ms() {
            return Err(refuse(RefusalReason::Expired, "create a new one with `meshctl token create`"));
        }
        if let Some(bound) = &record.node {
            if *bound != node {
                return Err(refuse(RefusalReason::BadRequest, format!("this token is for node {bound}")));
            }
        }
        if let Some(held) =
            view.get(&node_cert_key(&node)).and_then(|v| serde_json::from_slice::<NodeCertRecord>(v).ok())
        {
            let revoked = self.identity.revocations.is_revoked_key(&held.key_hash);
            if !revoked && held.not_after_ms > wall_ms() {
                return Err(refuse(
                    RefusalReason::NameTaken,
                    format!("node {node} is in the mesh; remove it first (meshctl node remove {node})"),
                ));
            }
        }
        self.check_issuing_root()?;
        let id = SpiffeId::new(&self.identity.trust_domain, &node);
        let cert = self
            .identity
            .ca()
            .issue(&csr, &id, record.role(), self.cert_ttl)
            .map_err(|e| refuse(RefusalReason::BadRequest, e.to_string()))?
            .ok_or_else(|| refuse(RefusalReason::NotSigner, "this node cannot sign"))?;
        let info = cert::inspect(&cert).map_err(|e| refuse(RefusalReason::Internal, e.to_string()))?;
        if self.identity.revocations.is_revoked_key(&info.key_hash) {
            return Err(refuse(RefusalReason::Revoked, "this key was removed from the mesh"));
        }
        let used = TokenRecord { used_by: Some(node.clone()), ..record.clone() };
        let cannot_store = |e: String| refuse(RefusalReason::Internal, format!("the signer cannot store: {e}"));
        let used = serde_json::to_vec(&used).map_err(|e| cannot_store(e.to_string()))?;
        self.store.local_put(&key, &used).map_err(|e| cannot_store(e.to_string()))?;
        let cert_record = serde_json::to_vec(&self.record_for(&info)).map_err(|e| cannot_store(e.to_string()))?;
        self.store.put(&node_cert_key(&node), cert_record).map_err(|e| cannot_store(e.to_string()))?;
        tracing::info!(%node, serial = %info.serial, role = %record.role(), "node joined");
        Ok(JoinResponse::Granted {
            cert: cert.to_vec(),
            ca: self.identity.ca().der.to_vec(),
            ca_key: if record.role() == Role::Signer { self.identity.ca().key_der() } else { None },
        })
    }

    fn record_for(&self, info: &CertInfo) -> NodeCertRecord {
        NodeCertRecord {
            serial: info.serial.clone(),
            key_hash: info.key_hash.clone(),
            not_after_ms: ms(info.not_after),
            issued_by: self.identity.node.clone(),
            role: info.role,
        }
    }

    /// Renews `peer`'s certificate (the peer proved it holds it in the handshake) for the
    /// same name, key and role.
    pub fn renew(&self, peer: &CertInfo, csr: &[u8]) -> RenewResponse {
        self.renew_as(peer, csr, crate::identity::effective_role(peer, false))
    }

    fn renew_as(&self, peer: &CertInfo, csr: &[u8], role: Role) -> RenewResponse {
        let result = (|| {
            if !self.is_signer() {
                return Err(refuse(RefusalReason::NotSigner, "this node cannot sign"));
            }
            if self.identity.revocations.is_revoked(peer) {
                return Err(refuse(RefusalReason::Revoked, "this node was removed from the mesh"));
            }
            self.check_issuing_root()?;
            let cert = self
                .identity
                .ca()
                .issue(csr, &peer.id, role, self.cert_ttl)
                .map_err(|e| refuse(RefusalReason::BadRequest, e.to_string()))?
                .ok_or_else(|| refuse(RefusalReason::NotSigner, "this node cannot sign"))?;
            let info = cert::inspect(&cert).map_err(|e| refuse(RefusalReason::Internal, e.to_string()))?;
            if info.key_hash != peer.key_hash {
                return Err(refuse(RefusalReason::BadRequest, "renewal keeps the node's key"));
            }
            self.store
                .put(&node_cert_key(&peer.id.node), serde_json::to_vec(&self.record_for(&info)).unwrap_or_default())
                .map_err(|e| refuse(RefusalReason::Internal, format!("the signer cannot store: {e}")))?;
            Ok(RenewResponse::Renewed { cert: cert.to_vec() })
        })();
        result.unwrap_or_else(|refusal| {
            tracing::warn!(peer = %peer.id, reason = refusal.reason.as_str(), "renewal refused");
            RenewResponse::Refused(refusal)
        })
    }

    /// Renews this node's own certificate, when it is a signer.
    pub fn renew_self(&self) -> Result<CertInfo, String> {
        let csr = self.identity.csr().map_err(|e| e.to_string())?;
        match self.renew_as(&self.identity.current().info, &csr, self.identity.role()) {
            RenewResponse::Renewed { cert } => self.identity.replace_cert(cert.into()).map_err(|e| e.to_string()),
            RenewResponse::Refused(r) => Err(r.to_string()),
        }
    }

    /// The key of the CA root `fingerprint`, for `peer` (another signer, by the role its
    /// certificate carries) that has not got it since a rotation here.
    pub fn ca_key_for(&self, peer: &CertInfo, fingerprint: [u8; 32]) -> Result<Vec<u8>, String> {
        if peer.role != Some(Role::Signer) {
            return Err(format!("{} is not a signer", peer.id.node));
        }
        let ca = self.identity.ca();
        if cert::fingerprint_bytes(&ca.der) != fingerprint {
            return Err("this signer does not issue under that root".to_owned());
        }
        ca.key_der().ok_or_else(|| "this node holds no CA key".to_owned())
    }

    /// `meshctl ca rotate`, first step: a new root, recorded in the store as added
    /// (every node trusts it once gossip brings it; nothing is issued under it yet) and
    /// staged on this signer's disk. A rotation already staged is continued, not begun
    /// again. Returns the new root's store key.
    pub fn stage_rotation(&self) -> Result<String, SignerError> {
        let ca = self.identity.ca();
        if !ca.is_signer() {
            return Err(SignerError::NotSigner);
        }
        let next = match self.identity.staged_ca().map_err(|e| SignerError::Rotate(e.to_string()))? {
            Some(next) => next,
            None => {
                let next =
                    super::Ca::create(&self.identity.trust_domain).map_err(|e| SignerError::Rotate(e.to_string()))?;
                self.identity.stage_ca(&next).map_err(|e| SignerError::Rotate(e.to_string()))?;
                next
            }
        };
        let key = super::records::ca_key(&cert::hex(&cert::fingerprint_bytes(&next.der)));
        if self.store.view().get(&key).is_none() {
            let record = super::records::CaRecord {
                cert: next.der.to_vec(),
                state: super::records::CaState::Added,
                since_ms: wall_ms(),
                retire_at_ms: None,
                by: self.identity.node.clone(),
            };
            self.store.put(&key, serde_json::to_vec(&record).unwrap_or_default())?;
            tracing::warn!(root = %cert::fingerprint(&next.der), "CA rotation: a new root is added; every node trusts it as gossip brings it");
        }
        Ok(key)
    }

    /// `meshctl ca rotate`, second step (once every member holds the new root): this
    /// signer issues under the new root from now on, renews its own certificate under it,
    /// and records the new root active and the old one retiring once the last
    /// certificate it issued has expired. Every node renews under the new root soon
    /// after it learns of it.
    pub fn activate_rotation(&self) -> Result<(), SignerError> {
        use super::records::{ca_key, CaRecord, CaState};
        let old = self.identity.ca();
        let next = self
            .identity
            .staged_ca()
            .map_err(|e| SignerError::Rotate(e.to_string()))?
            .ok_or_else(|| SignerError::Rotate("no rotation is staged".to_owned()))?;
        let now = wall_ms();
        // Every certificate issued under the old root expires by then: those this signer
        // issued within one lifetime, those of the other signers, which stop issuing
        // under it once gossip brings them the new root active, within the margin.
        let retire_at = now + ms(UNIX_EPOCH + self.cert_ttl) + RETIRE_MARGIN_MS;
        let hex = |der: &[u8]| cert::hex(&cert::fingerprint_bytes(der));
        let me = self.identity.node.clone();
        let active = CaRecord {
            cert: next.der.to_vec(),
            state: CaState::Active,
            since_ms: now,
            retire_at_ms: None,
            by: me.clone(),
        };
        let retiring = CaRecord {
            cert: old.der.to_vec(),
            state: CaState::Retiring,
            since_ms: now,
            retire_at_ms: Some(retire_at),
            by: me,
        };
        let fingerprint = cert::fingerprint(&next.der);
        self.identity.replace_ca(next).map_err(|e| SignerError::Rotate(e.to_string()))?;
        self.identity.unstage_ca().map_err(|e| SignerError::Rotate(e.to_string()))?;
        self.store.put(&ca_key(&hex(&old.der)), serde_json::to_vec(&retiring).unwrap_or_default())?;
        self.store.put(&ca_key(&hex(&active.cert)), serde_json::to_vec(&active).unwrap_or_default())?;
        tracing::warn!(root = %fingerprint, "CA rotation: the new root is active; nodes renew under it");
        if let Err(e) = self.renew_self() {
            tracing::warn!(error = %e, "cannot renew this signer's certificate under the new root yet");
        }
        Ok(())
    }

    /// `meshctl node remove NAME`: revokes the node's certificate and key.
    pub fn remove(&self, node: &str) -> Result<Revocation, SignerError> {
        if node == self.identity.node {
            return Err(SignerError::RemoveSelf(node.to_owned()));
        }
        if !mesh_proto::is_dns_label(node) {
            return Err(SignerError::BadName(node.to_owned()));
        }
        let view = self.store.view();
        let held: NodeCertRecord = view
            .get(&node_cert_key(node))
            .and_then(|v| serde_json::from_slice(v).ok())
            .ok_or_else(|| SignerError::UnknownNode(node.to_owned()))?;
        let revocation = Revocation {
            node: node.to_owned(),
            serial: held.serial.clone(),
            key_hash: held.key_hash,
            at_ms: wall_ms(),
            by: self.identity.node.clone(),
        };
        self.store.put(&format!("revoked/{}", held.serial), serde_json::to_vec(&revocation).unwrap_or_default())?;
        tracing::warn!(%node, serial = %held.serial, "node removed from the mesh");
        Ok(revocation)
    }
}
