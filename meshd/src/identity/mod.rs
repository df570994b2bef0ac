//! This node's identity: the mesh CA, its key and certificate, the TLS configurations
//! built from them, and the revocation list.
//!
//! Files under `data_dir/identity/`: `ca.pem`, `ca.key` (signers only, 0600),
//! `node.key` (0600, made here, never sent anywhere), `node.pem`, and `signers` (the
//! addresses this node renews at). The certificate is swapped in place on renewal: new
//! connections present the new one, live connections are not cut.
//!
//! Must not: trust a name that the handshake did not prove, or let a key leave the
//! node that made it (the CA key goes only to nodes joined as signers).

pub mod ca;
pub mod cert;
pub mod records;
pub mod renew;
pub mod seal;
pub mod signer;
pub mod verify;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mesh_proto::role::Role;
use rcgen::KeyPair;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

pub use self::ca::Ca;
pub use self::cert::{CertInfo, SpiffeId};
use self::verify::{ClientVerifier, PeerCheck, PinnedCaVerifier, Revocations, ServerVerifier};

/// Why an identity could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `data_dir` holds no identity.
    #[error("{} holds no identity: run `meshd init` on the first host of a mesh, or `meshd join TOKEN` on the others", dir.display())]
    Missing { dir: PathBuf },
    /// `meshd init` or `join` on a node that has one.
    #[error("{} already holds an identity", dir.display())]
    Exists { dir: PathBuf },
    /// A file is unreadable or does not hold what it should.
    #[error("{}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
    /// The certificate is not this node's.
    #[error("the certificate in {} is for {found}, but this node is {expected}", path.display())]
    Mismatch { path: PathBuf, found: String, expected: String },
    /// Key or certificate generation failed.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl IdentityError {
    /// Whether the operator must act (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, IdentityError::Missing { .. } | IdentityError::Exists { .. } | IdentityError::Mismatch { .. })
    }
}

/// The certificate in use.
pub struct Current {
    pub der: CertificateDer<'static>,
    pub info: CertInfo,
    pub certified: Arc<CertifiedKey>,
}

/// This node's identity, shared by the transport, the signer and the admin API.
pub struct Identity {
    pub node: String,
    pub trust_domain: String,
    /// The CA root this node issues under (a signer) or knows as the mesh's current one:
    /// swapped when the CA is rotated.
    ca: RwLock<Arc<Ca>>,
    /// The roots trusted for connections: the current one, and the others the store
    /// records until they retire ([`Identity::set_roots`]).
    pub anchors: Arc<verify::Anchors>,
    pub revocations: Arc<Revocations>,
    pub provider: Arc<CryptoProvider>,
    pub tls_metrics: verify::Metrics,
    key: KeyPair,
    current: RwLock<Arc<Current>>,
    dir: PathBuf,
    /// Set while renewal is failing: shown by `meshctl status`.
    warning: RwLock<Option<String>>,
    /// Wakes the renewal loop early: the CA was rotated.
    pub renew_soon: tokio::sync::Notify,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("node", &self.node).field("trust_domain", &self.trust_domain).finish()
    }
}

/// The `identity/` directory inside `data_dir`.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// The ring provider: the only one compiled in (two providers make rustls panic).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> IdentityError {
    IdentityError::File { path: path.to_owned(), detail: detail.to_string() }
}

/// Writes `bytes` to `path` with `mode`, durably (temporary file, fsync, rename).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| file_err(dir, e))?;
    }
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What a new node needs written: its key, its cert, the CA (and its key on a signer),
/// and where to renew.
pub struct Material<'a> {
    pub key: &'a KeyPair,
    pub cert: &'a CertificateDer<'static>,
    pub ca: &'a CertificateDer<'static>,
    pub ca_key: Option<&'a [u8]>,
    pub signers: &'a [String],
}

/// Writes a new identity under `data_dir`; refuses if one exists.
pub fn install(data_dir: &Path, m: &Material<'_>) -> Result<(), IdentityError> {
    let dir = dir_of(data_dir);
    if dir.join("node.pem").exists() {
        return Err(IdentityError::Exists { dir });
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| file_err(&dir, e))?;
    write_file(&dir.join("node.key"), m.key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join("ca.pem"), pem("CERTIFICATE", m.ca).as_bytes(), 0o644)?;
    if let Some(key) = m.ca_key {
        write_file(&dir.join("ca.key"), pem("PRIVATE KEY", key).as_bytes(), 0o600)?;
    }
    write_file(&dir.join("signers"), m.signers.join("\n").as_bytes(), 0o644)?;
    // The certificate last: its presence marks a complete identity.
    write_file(&dir.join("node.pem"), pem("CERTIFICATE", m.cert).as_bytes(), 0o644)?;
    Ok(())
}

/// The role a certificate grants. One issued before roles carries none: its node keeps
/// what every node could do then (operator), or signer when it holds the CA key; its
/// first renewal writes the role in.
pub fn effective_role(info: &CertInfo, holds_ca_key: bool) -> Role {
    match info.role {
        Some(r) => r,
        None if holds_ca_key => Role::Signer,
        None => Role::Operator,
    }
}

/// This node as the store's authority sees it. Its role is the effective one: a signer
/// whose certificate predates roles renews itself at start, and its key record then
/// shows others the same.
struct SealingAs(Arc<Identity>);

impl seal::Me for SealingAs {
    fn name(&self) -> &str {
        &self.0.node
    }

    fn role(&self) -> Role {
        self.0.role()
    }
}

/// A node identity issued by `ca` (which must hold its key) and written under `data_dir`,
/// as a join writes one, without the network: for benchmarks and tests that need several
/// nodes of one mesh.
pub fn issue_local(
    data_dir: &Path,
    ca: &Ca,
    trust_domain: &str,
    node: &str,
    role: Role,
    ttl: Duration,
) -> Result<Identity, IdentityError> {
    let key = ca::new_node_key()?;
    let csr = ca::csr_for(&key, node)?;
    let cert = ca
        .issue(&csr, &SpiffeId::new(trust_domain, node), role, ttl)?
        .ok_or_else(|| IdentityError::Tls("this CA holds no key: it cannot issue".to_owned()))?;
    install(data_dir, &Material { key: &key, cert: &cert, ca: &ca.der, ca_key: None, signers: &[] })?;
    Identity::load(data_dir, node, Default::default())
}

/// `meshd init`: a new CA and this node's first certificate, signed by it.
pub fn init(data_dir: &Path, node: &str, trust_domain: &str, ttl: Duration) -> Result<String, IdentityError> {
    if dir_of(data_dir).join("node.pem").exists() {
        return Err(IdentityError::Exists { dir: dir_of(data_dir) });
    }
    let ca = Ca::create(trust_domain)?;
    let key = ca::new_node_key()?;
    let csr = ca::csr_for(&key, node)?;
    let cert = ca
        .issue(&csr, &SpiffeId::new(trust_domain, node), Role::Signer, ttl)?
        .ok_or_else(|| IdentityError::Tls("a new CA cannot sign".to_owned()))?;
    let ca_key = ca.key_der();
    install(data_dir, &Material { key: &key, cert: &cert, ca: &ca.der, ca_key: ca_key.as_deref(), signers: &[] })?;
    Ok(cert::fingerprint(&ca.der))
}

impl Identity {
    /// Loads the identity `meshd init` or `meshd join` wrote.
    pub fn load(data_dir: &Path, node: &str, tls_metrics: verify::Metrics) -> Result<Identity, IdentityError> {
        let dir = dir_of(data_dir);
        let cert_path = dir.join("node.pem");
        if !cert_path.exists() {
            return Err(IdentityError::Missing { dir: data_dir.to_owned() });
        }
        let read_cert = |path: &Path| CertificateDer::from_pem_file(path).map_err(|e| file_err(path, e));
        let cert = read_cert(&cert_path)?;
        let ca_der = read_cert(&dir.join("ca.pem"))?;
        let key_path = dir.join("node.key");
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, e))?;
        let ca_key_path = dir.join("ca.key");
        let ca = if ca_key_path.exists() {
            let der = PrivatePkcs8KeyDer::from_pem_file(&ca_key_path).map_err(|e| file_err(&ca_key_path, e))?;
            Ca::with_key(ca_der.clone(), der.secret_pkcs8_der())?
        } else {
            Ca::verify_only(ca_der.clone())
        };
        let info = cert::inspect(&cert).map_err(|e| file_err(&cert_path, e))?;
        if info.id.node != node {
            return Err(IdentityError::Mismatch { path: cert_path, found: info.id.node, expected: node.to_owned() });
        }
        let provider = provider();
        let current = certified(&provider, cert, info, &key, &ca_der)?;
        Ok(Identity {
            node: node.to_owned(),
            trust_domain: current.info.id.trust_domain.clone(),
            anchors: Arc::new(verify::Anchors::new(vec![ca_der.clone()])),
            ca: RwLock::new(Arc::new(ca)),
            revocations: Arc::default(),
            provider,
            tls_metrics,
            key,
            current: RwLock::new(Arc::new(current)),
            dir,
            warning: RwLock::new(None),
            renew_soon: tokio::sync::Notify::new(),
        })
    }

    /// The mesh CA root this node knows as current (with its key, on a signer).
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current root's fingerprint: `sha256:` and hex.
    pub fn ca_fingerprint(&self) -> String {
        cert::fingerprint(&self.ca().der)
    }

    /// Makes `ca` this node's current root: writes `ca.pem` (and, with a key, `ca.key`)
    /// durably, then swaps it in. The roots trusted for connections follow the store
    /// ([`Identity::set_roots`]).
    pub fn replace_ca(&self, ca: Ca) -> Result<(), IdentityError> {
        if let Some(key) = ca.key_der() {
            write_file(&self.dir.join("ca.key"), pem("PRIVATE KEY", &key).as_bytes(), 0o600)?;
        }
        write_file(&self.dir.join("ca.pem"), pem("CERTIFICATE", &ca.der).as_bytes(), 0o644)?;
        *self.ca.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ca);
        Ok(())
    }

    /// The next root of a rotation staged on this signer (`ca-next.pem`, `ca-next.key`).
    pub fn staged_ca(&self) -> Result<Option<Ca>, IdentityError> {
        let (cert_path, key_path) = (self.dir.join("ca-next.pem"), self.dir.join("ca-next.key"));
        if !cert_path.exists() {
            return Ok(None);
        }
        let der = CertificateDer::from_pem_file(&cert_path).map_err(|e| file_err(&cert_path, e))?;
        let key = PrivatePkcs8KeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
        Ok(Some(Ca::with_key(der, key.secret_pkcs8_der())?))
    }

    /// Stages the next root of a rotation on disk (key first, 0600).
    pub fn stage_ca(&self, next: &Ca) -> Result<(), IdentityError> {
        let key = next.key_der().ok_or_else(|| IdentityError::Tls("a staged root needs its key".to_owned()))?;
        write_file(&self.dir.join("ca-next.key"), pem("PRIVATE KEY", &key).as_bytes(), 0o600)?;
        write_file(&self.dir.join("ca-next.pem"), pem("CERTIFICATE", &next.der).as_bytes(), 0o644)
    }

    /// Forgets the staged root (it became current).
    pub fn unstage_ca(&self) -> Result<(), IdentityError> {
        for name in ["ca-next.pem", "ca-next.key"] {
            let path = self.dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| file_err(&path, e))?;
            }
        }
        Ok(())
    }

    /// Trusts, for connections, the current root and every recorded root that has not
    /// retired by `now_ms`.
    pub fn set_roots(&self, records: &[records::CaRecord], now_ms: u64) {
        let retired = |r: &records::CaRecord| {
            r.state == records::CaState::Retiring && r.retire_at_ms.is_some_and(|t| t <= now_ms)
        };
        let current = self.ca().der.clone();
        let mut anchors: Vec<CertificateDer<'static>> = Vec::new();
        if !records.iter().any(|r| r.cert == current.as_ref() && retired(r)) {
            anchors.push(current);
        }
        for r in records.iter().filter(|r| !retired(r)) {
            if !anchors.iter().any(|a| a.as_ref() == r.cert.as_slice()) {
                anchors.push(CertificateDer::from(r.cert.clone()));
            }
        }
        self.anchors.replace(anchors);
    }

    /// The certificate in use now.
    pub fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's role: what its certificate says (see [`effective_role`]).
    pub fn role(&self) -> Role {
        effective_role(&self.current().info, self.ca().is_signer())
    }

    /// The store's authority: seals this node's writes with its key, judges other nodes'
    /// by theirs (see [`seal`]).
    pub fn entry_authority(self: &Arc<Self>) -> Result<seal::EntryAuthority, IdentityError> {
        let sealer = self.sealer()?;
        Ok(seal::EntryAuthority::new(
            Box::new(SealingAs(self.clone())),
            &self.trust_domain,
            vec![self.ca().der.clone()],
            sealer,
        ))
    }

    /// What signs store entries with this node's key.
    pub fn sealer(&self) -> Result<seal::NodeSealer, IdentityError> {
        seal::NodeSealer::new(&self.key.serialize_der(), &self.key_hash()).map_err(IdentityError::Tls)
    }

    /// A CSR for this node's key (for renewal).
    pub fn csr(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(ca::csr_for(&self.key, &self.node)?)
    }

    /// SHA-256 of this node's public key, hex (what revocations name).
    pub fn key_hash(&self) -> String {
        cert::hex(
            ring::digest::digest(&ring::digest::SHA256, &rcgen::PublicKeyData::subject_public_key_info(&self.key))
                .as_ref(),
        )
    }

    /// Installs a renewed certificate: checks it, writes it durably, then swaps it in.
    pub fn replace_cert(&self, der: CertificateDer<'static>) -> Result<CertInfo, IdentityError> {
        let path = self.dir.join("node.pem");
        let info = cert::inspect(&der).map_err(|e| file_err(&path, e))?;
        if info.id.node != self.node || info.key_hash != self.key_hash() {
            return Err(IdentityError::Mismatch { path, found: info.id.to_string(), expected: self.node.clone() });
        }
        // The chain carries the root that issued it (during a rotation, not always the
        // one this node knows as current yet).
        let issued = UnixTime::since_unix_epoch(
            info.not_before.duration_since(std::time::UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(1),
        );
        let root = self
            .anchors
            .get()
            .iter()
            .find(|r| verify::verify_chain(r, &der, &[], issued, webpki::KeyUsage::client_auth()).is_ok())
            .cloned()
            .unwrap_or_else(|| self.ca().der.clone());
        let current = certified(&self.provider, der.clone(), info.clone(), &self.key, &root)?;
        write_file(&path, pem("CERTIFICATE", &der).as_bytes(), 0o644)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(current);
        Ok(info)
    }

    /// The addresses this node renews at, as `meshd join` recorded them.
    pub fn signer_addrs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("signers"))
            .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub fn warning(&self) -> Option<String> {
        self.warning.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_warning(&self, w: Option<String>) {
        *self.warning.write().unwrap_or_else(|p| p.into_inner()) = w;
    }

    fn check(&self) -> PeerCheck {
        PeerCheck::new(
            self.anchors.clone(),
            &self.trust_domain,
            self.revocations.clone(),
            self.tls_metrics.clone(),
            self.provider.clone(),
        )
    }

    /// The server side of the one UDP port: `mesh/1` and `mesh-join/1`.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, IdentityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(ClientVerifier(self.check())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![mesh_proto::wire::ALPN_MESH.to_vec(), mesh_proto::wire::ALPN_JOIN.to_vec()];
        // No session resumption: a resumed session skips the client certificate check,
        // and a removed node must be refused at its next handshake, not at its ticket's
        // expiry. Full handshakes cost little next to long-lived pooled connections.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// The client side of `mesh/1`.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, IdentityError> {
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(self.check())))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![mesh_proto::wire::ALPN_MESH.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

/// The client side of `mesh-join/1`: no client certificate; the signer's CA is pinned.
pub fn join_client_config(fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, IdentityError> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier { fingerprint, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![mesh_proto::wire::ALPN_JOIN.to_vec()];
    Ok(config)
}

fn certified(
    provider: &CryptoProvider,
    der: CertificateDer<'static>,
    info: CertInfo,
    key: &KeyPair,
    ca: &CertificateDer<'static>,
) -> Result<Current, IdentityError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| IdentityError::Tls(e.to_string()))?;
    // The chain includes the CA so that a joining node can find the CA it pinned.
    let certified = Arc::new(CertifiedKey::new(vec![der.clone(), ca.clone()], signing));
    Ok(Current { der, info, certified })
}

/// Hands rustls whatever certificate is current, for both sides.
#[derive(Debug)]
struct Resolver(Arc<Identity>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Time left before `info` expires (zero if it has).
pub fn remaining(info: &CertInfo) -> Duration {
    info.not_after.duration_since(SystemTime::now()).unwrap_or_default()
}
