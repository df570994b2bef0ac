//! The certificate verifiers, inside the TLS handshake. rustls's stock verifiers match DNS
//! names only; ours check the chain against the mesh CA (webpki: signature, validity,
//! usage), then the SPIFFE ID (one URI SAN, our trust domain, a node name), then the
//! revocation list. A peer that fails any check never gets a connection; each refusal is
//! logged and counted by reason.
//!
//! Must not: accept a peer on any ground but the chain, the SPIFFE ID and the revocation
//! list, or do I/O inside the handshake.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::cert::{self, CertError, CertInfo};

/// Why a peer's certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// webpki refused the chain: another CA, a bad signature, expired, not yet valid,
    /// or without the usage this side needs.
    #[error("certificate chain refused: {0:?}")]
    Chain(webpki::Error),
    /// Not a node certificate (names).
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A node of another mesh.
    #[error("trust domain {0:?} is not this mesh's")]
    TrustDomain(String),
    /// Removed with `meshctl node remove`.
    #[error("node {0} was removed from the mesh (its certificate is revoked)")]
    Revoked(String),
    /// The CA pinned by a join token was not presented.
    #[error("the signer did not present the CA pinned by the token")]
    PinMismatch,
}

impl Refused {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Chain(e) => match e {
                webpki::Error::CertExpired { .. } => "expired",
                webpki::Error::CertNotValidYet { .. } => "not_yet_valid",
                // Another CA: unknown by name, or (same name) its signature does not verify.
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => "unknown_issuer",
                webpki::Error::RequiredEkuNotFoundContext(_) => "wrong_usage",
                #[allow(deprecated)]
                webpki::Error::RequiredEkuNotFound => "wrong_usage",
                _ => "invalid_chain",
            },
            Refused::Cert(_) => "not_a_node_cert",
            Refused::TrustDomain(_) => "trust_domain",
            Refused::Revoked(_) => "revoked",
            Refused::PinMismatch => "pin_mismatch",
        }
    }
}

/// Revoked serials and keys, rebuilt from the store's `revoked/` entries.
#[derive(Debug, Default)]
pub struct Revocations {
    set: RwLock<RevokedSet>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevokedSet {
    pub serials: HashSet<String>,
    pub keys: HashSet<String>,
}

impl Revocations {
    pub fn replace(&self, set: RevokedSet) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    pub fn is_revoked_key(&self, key_hash: &str) -> bool {
        self.set.read().unwrap_or_else(|p| p.into_inner()).keys.contains(key_hash)
    }

    pub fn is_revoked(&self, info: &CertInfo) -> bool {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        set.serials.contains(&info.serial) || set.keys.contains(&info.key_hash)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    /// `server` when refusing a client's cert, `client` when refusing a server's.
    side: &'static str,
    reason: &'static str,
}

/// Handshake refusals, under `mesh_tls_`.
#[derive(Clone, Default)]
pub struct Metrics {
    refused: Family<RefusedLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.sub_registry_with_prefix("tls").register(
            "peer_certs_refused",
            "Peer certificates refused in the handshake, by side and reason",
            m.refused.clone(),
        );
        m
    }

    /// The count for one side and reason (tests read it).
    pub fn refused(&self, side: &'static str, reason: &'static str) -> u64 {
        self.refused.get_or_create(&RefusedLabels { side, reason }).get()
    }
}

/// A refusal is logged at WARN once per side and cause in this long; repeats are counted
/// and logged at DEBUG, so a peer that keeps dialling cannot flood the journal.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Causes remembered for that; past it the memory starts again.
const REFUSAL_LOG_KEYS: usize = 256;

/// The CA roots a handshake accepts: during a rotation, the old and the new.
#[derive(Debug)]
pub struct Anchors {
    roots: RwLock<Arc<Vec<CertificateDer<'static>>>>,
}

impl Anchors {
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Anchors {
        Anchors { roots: RwLock::new(Arc::new(roots)) }
    }

    pub fn replace(&self, roots: Vec<CertificateDer<'static>>) {
        *self.roots.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(roots);
    }

    pub fn get(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The checks both sides of `mesh/1` make.
pub struct PeerCheck {
    anchors: Arc<Anchors>,
    trust_domain: String,
    revocations: Arc<Revocations>,
    metrics: Metrics,
    provider: Arc<CryptoProvider>,
    logged: Mutex<HashMap<(&'static str, String), Instant>>,
}

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCheck").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl PeerCheck {
    pub fn new(
        anchors: Arc<Anchors>,
        trust_domain: &str,
        revocations: Arc<Revocations>,
        metrics: Metrics,
        provider: Arc<CryptoProvider>,
    ) -> PeerCheck {
        PeerCheck {
            anchors,
            trust_domain: trust_domain.to_owned(),
            revocations,
            metrics,
            provider,
            logged: Mutex::default(),
        }
    }

    /// Checks a peer's certificate for `usage` at `now`.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<CertInfo, Refused> {
        let roots = self.anchors.get();
        let mut result = Err(Refused::Chain(webpki::Error::UnknownIssuer));
        for root in roots.iter() {
            result = verify_chain(root, end_entity, intermediates, now, usage);
            if result.is_ok() {
                break;
            }
        }
        result?;
        let info = cert::inspect(end_entity)?;
        if info.id.trust_domain != self.trust_domain {
            return Err(Refused::TrustDomain(info.id.trust_domain));
        }
        if self.revocations.is_revoked(&info) {
            return Err(Refused::Revoked(info.id.node));
        }
        Ok(info)
    }

    fn refuse(&self, side: &'static str, refused: Refused) -> rustls::Error {
        self.metrics.refused.get_or_create(&RefusedLabels { side, reason: refused.reason() }).inc();
        if self.first_in_a_while(side, &refused) {
            tracing::warn!(side, reason = refused.reason(), error = %refused, "refused a peer certificate");
        } else {
            tracing::debug!(side, reason = refused.reason(), error = %refused, "refused a peer certificate again");
        }
        match refused {
            // The certificate_revoked alert tells a removed node why, so it stops dialling.
            Refused::Revoked(_) => rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked),
            other => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(other))))
            }
        }
    }

    /// Whether this refusal's cause was not logged at WARN within [`REFUSAL_LOG_EVERY`].
    fn first_in_a_while(&self, side: &'static str, refused: &Refused) -> bool {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= REFUSAL_LOG_KEYS {
            logged.clear();
        }
        match logged.get(&(side, refused.to_string())) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_EVERY => false,
            _ => {
                logged.insert((side, refused.to_string()), now);
                true
            }
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

pub(crate) fn verify_chain(
    anchor_der: &CertificateDer<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), Refused> {
    let anchor = webpki::anchor_from_trusted_cert(anchor_der).map_err(Refused::Chain)?;
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(Refused::Chain)?;
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], intermediates, now, usage, None, None)
        .map(drop)
        .map_err(Refused::Chain)
}

/// The server side of `mesh/1` (and `mesh-join/1`): checks a client certificate when one
/// is presented. rustls cannot require client auth per ALPN, and a joining node has no
/// certificate yet, so it is optional in the handshake; a `mesh/1` connection without one
/// is closed right after the handshake, before any stream is read (see `transport`).
#[derive(Debug)]
pub struct ClientVerifier(pub PeerCheck);

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.check(end_entity, intermediates, now, webpki::KeyUsage::client_auth()) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refused) => Err(self.0.refuse("server", refused)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The client side of `mesh/1`: the server must be a node of this mesh. The name the
/// client dialled is not checked here (members are dialled by address); the caller
/// compares the verified identity with the member it meant to reach.
#[derive(Debug)]
pub struct ServerVerifier(pub PeerCheck);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.check(end_entity, intermediates, now, webpki::KeyUsage::server_auth()) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(refused) => Err(self.0.refuse("client", refused)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The joining node's check of the signer: the signer's chain must lead to a CA whose
/// SHA-256 is the one in the token. The joining node has no CA of its own yet.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pub fingerprint: [u8; 32],
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates.iter().find(|c| cert::fingerprint_bytes(c) == self.fingerprint);
        let result = match pinned {
            None => Err(Refused::PinMismatch),
            Some(ca) => verify_chain(ca, end_entity, &[], now, webpki::KeyUsage::server_auth())
                .and_then(|()| cert::inspect(end_entity).map(drop).map_err(Refused::from)),
        };
        result.map(|()| ServerCertVerified::assertion()).map_err(|refused| {
            tracing::warn!(error = %refused, "refused the signer's certificate");
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(refused))))
        })
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
