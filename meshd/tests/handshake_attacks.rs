//! The attack matrix: certificates minted here (rcgen) that a mesh node must refuse
//! inside the QUIC handshake, each logged and counted by reason, and none of them ever
//! handed to the rest of meshd as a peer. A good certificate is accepted, to show the
//! refusals are not a closed door.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshd::config::Config;
use meshd::drain;
use meshd::identity::verify::{self, RevokedSet};
use meshd::identity::{ca::Ca, cert, Identity};
use meshd::transport::Transport;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::sync::mpsc;

const DAY: Duration = Duration::from_secs(86_400);

/// A mesh node serving on loopback, and its CA (with key) to mint certificates.
struct Server {
    transport: Arc<Transport>,
    identity: Arc<Identity>,
    metrics: verify::Metrics,
    /// Every peer that got in.
    accepted: mpsc::Receiver<meshd::transport::Peer>,
    /// The mesh CA as an rcgen issuer, to mint certificates the CA would never issue.
    ca: rcgen::Issuer<'static, KeyPair>,
    _trigger: drain::DrainTrigger,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let text =
        format!("node_name = \"server\"\ndata_dir = \"{}\"\nbind = \"127.0.0.1:0\"\n", dir.path().join("d").display());
    let config = Config::parse("meshd.toml", &text).expect("config");
    meshd::bootstrap::init(&config).expect("init");
    let metrics = verify::Metrics::default();
    let identity = Arc::new(Identity::load(&config.data_dir, "server", metrics.clone()).expect("identity"));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let (tx, accepted) = mpsc::channel(16);
    let transport = Arc::new(
        Transport::new(socket, identity.clone(), Default::default(), Some(tx), meshd::transport::MIN_STREAMS_PER_PEER)
            .expect("transport"),
    );
    let (joins, _) = mpsc::channel(16);
    let (trigger, watcher) = drain::new();
    tokio::spawn(transport.clone().serve(joins, watcher));
    let key_der = identity.ca().key_der().expect("the first node is a signer");
    let ca_key = KeyPair::try_from(key_der.as_slice()).expect("ca key");
    let ca = rcgen::Issuer::from_ca_cert_der(&identity.ca().der, ca_key).expect("ca");
    Server { transport, identity, metrics, accepted, ca, _trigger: trigger, _dir: dir }
}

/// Node-certificate parameters, for the tests to spoil one field at a time.
fn node_params(uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "attacker");
    p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + DAY).into();
    p
}

fn mint(params: CertificateParams, ca: &rcgen::Issuer<'static, KeyPair>) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.der().clone(), key)
}

/// Trusts any server: the attacker only wants to see whether the server lets it in.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects to `server` on mesh/1 presenting `cert` (or none); true if the server let
/// the connection live (it answered a stream or stayed open for a second).
async fn attempt(server: &Server, cert: Option<(CertificateDer<'static>, KeyPair)>) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut tls = match cert {
        Some((der, key)) => builder
            .with_client_auth_cert(vec![der], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"mesh/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = server.transport.local_addr().expect("addr");
    let connecting = endpoint.connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "mesh").expect("connect");
    let Ok(conn) = connecting.await else { return false };
    // TLS 1.3 lets the client finish before the server has judged its certificate:
    // the refusal then arrives as a close.
    let survived = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await.is_err();
    conn.close(0u32.into(), b"");
    endpoint.wait_idle().await;
    survived
}

fn refused(server: &Server, reason: &'static str) -> u64 {
    server.metrics.refused("server", reason)
}

#[tokio::test]
async fn every_bad_client_certificate_is_refused_in_the_handshake_and_counted() {
    let mut s = server().await;
    let td = |node: &str| format!("spiffe://mesh.local/node/{node}");

    // The control: a proper node certificate gets in.
    let good = mint(node_params(&td("good")), &s.ca);
    assert!(attempt(&s, Some(good)).await, "a good certificate must be accepted");
    match tokio::time::timeout(Duration::from_secs(5), s.accepted.recv()).await {
        Ok(Some(peer)) => assert_eq!(peer.name(), "good"),
        _ => panic!("the good peer was not handed on"),
    }

    let other_ca = Ca::create("mesh.local").expect("other ca");
    let other_key = KeyPair::try_from(other_ca.key_der().expect("key").as_slice()).expect("key");
    let other = rcgen::Issuer::from_ca_cert_der(&other_ca.der, other_key).expect("ca");

    let mut two_uris = node_params(&td("a"));
    two_uris.subject_alt_names.push(SanType::URI(td("b").as_str().try_into().expect("uri")));
    let mut dns_only = node_params(&td("a"));
    dns_only.subject_alt_names = vec![SanType::DnsName("a.mesh.local".try_into().expect("dns"))];
    let mut expired = node_params(&td("a"));
    expired.not_before = (SystemTime::now() - 3 * DAY).into();
    expired.not_after = (SystemTime::now() - DAY).into();
    let mut future = node_params(&td("a"));
    future.not_before = (SystemTime::now() + DAY).into();
    future.not_after = (SystemTime::now() + 3 * DAY).into();
    let mut server_only = node_params(&td("a"));
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let cases: Vec<(&str, (CertificateDer<'static>, KeyPair), &'static str)> = vec![
        ("signed by another CA", mint(node_params(&td("a")), &other), "unknown_issuer"),
        ("another trust domain", mint(node_params("spiffe://evil.local/node/a"), &s.ca), "trust_domain"),
        ("two URI SANs", mint(two_uris, &s.ca), "not_a_node_cert"),
        ("a DNS SAN instead of a URI SAN", mint(dns_only, &s.ca), "not_a_node_cert"),
        ("expired", mint(expired, &s.ca), "expired"),
        ("not yet valid", mint(future, &s.ca), "not_yet_valid"),
        ("without the client EKU", mint(server_only, &s.ca), "wrong_usage"),
    ];
    for (what, cert, reason) in cases {
        let before = refused(&s, reason);
        assert!(!attempt(&s, Some(cert)).await, "{what}: the connection must not survive");
        assert_eq!(refused(&s, reason), before + 1, "{what}: counted as {reason}");
    }

    // A revoked node's (otherwise perfect) certificate.
    let (der, key) = mint(node_params(&td("gone")), &s.ca);
    let info = cert::inspect(&der).expect("node cert");
    s.identity.revocations.replace(RevokedSet { serials: [info.serial].into(), keys: Default::default() });
    assert!(!attempt(&s, Some((der, key))).await, "revoked: refused");
    assert_eq!(refused(&s, "revoked"), 1);

    // No certificate at all on mesh/1: closed before anything is read.
    assert!(!attempt(&s, None).await, "mesh/1 without a client certificate is closed");

    // None of these reached meshd as a peer.
    assert!(s.accepted.try_recv().is_err(), "a refused peer was handed on");
    assert_eq!(s.transport.peers().iter().filter(|p| p.name() != "good").count(), 0);
}

#[tokio::test]
async fn a_node_refuses_a_server_from_another_mesh() {
    let s = server().await;
    // A rogue server presenting a certificate from another CA, and one from another
    // trust domain signed by ours.
    let other_ca = Ca::create("mesh.local").expect("other ca");
    let other_key = KeyPair::try_from(other_ca.key_der().expect("key").as_slice()).expect("key");
    let other = rcgen::Issuer::from_ca_cert_der(&other_ca.der, other_key).expect("ca");
    let rogues = [
        (mint(node_params("spiffe://mesh.local/node/rogue"), &other), "unknown_issuer"),
        (mint(node_params("spiffe://evil.local/node/rogue"), &s.ca), "trust_domain"),
    ];
    for ((der, key), reason) in rogues {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_single_cert(vec![der], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .expect("server cert");
        tls.alpn_protocols = vec![b"mesh/1".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).expect("quic");
        let rogue = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("rogue endpoint");
        let addr = rogue.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            if let Some(incoming) = rogue.accept().await {
                let _ = incoming.await;
            }
        });
        let before = s.metrics.refused("client", reason);
        let result = s.transport.dial(addr).await;
        assert!(result.is_err(), "{reason}: the dial must fail");
        assert_eq!(s.metrics.refused("client", reason), before + 1, "{reason}: counted");
        accept.abort();
    }
}
