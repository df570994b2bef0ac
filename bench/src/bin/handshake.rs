//! Handshakes per second on `mesh/1` (QUIC, TLS 1.3, mutual auth with mesh's own
//! verifiers: chain, SPIFFE ID, revocation list) against the same QUIC + mutual TLS with
//! rustls's stock webpki verifiers and a DNS-name certificate: the ratio is what our
//! checks cost. Both in this process, on loopback, one handshake after another and then
//! with 8 at a time.
//!
//! `cargo run --release -p mesh-bench --bin bench-handshake [-- SECONDS]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd::identity::{self, ca, Identity, SpiffeId};
use meshd::transport::Transport;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

fn node(dir: &std::path::Path, name: &str, signer: Option<&Identity>) -> Arc<Identity> {
    let data = dir.join(name);
    match signer {
        None => {
            let text = format!("node_name = \"{name}\"\ndata_dir = \"{}\"\nbind = \"127.0.0.1:0\"\n", data.display());
            let config = meshd::config::Config::parse("bench", &text).expect("config");
            meshd::bootstrap::init(&config).expect("init");
        }
        Some(s) => {
            let key = ca::new_node_key().expect("key");
            let csr = ca::csr_for(&key, name).expect("csr");
            let cert = s
                .ca()
                .issue(
                    &csr,
                    &SpiffeId::new("mesh.local", name),
                    mesh_proto::role::Role::Member,
                    Duration::from_secs(3600),
                )
                .expect("issue")
                .expect("signer");
            std::fs::create_dir_all(&data).expect("dir");
            identity::install(
                &data,
                &identity::Material { key: &key, cert: &cert, ca: &s.ca().der, ca_key: None, signers: &[] },
            )
            .expect("install");
        }
    }
    Arc::new(Identity::load(&data, name, Default::default()).expect("load"))
}

async fn run_for(
    seconds: f64,
    parallel: usize,
    dial: Arc<dyn Fn() -> tokio::task::JoinHandle<()> + Send + Sync>,
) -> f64 {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut done = 0u64;
    while Instant::now() < deadline {
        let batch: Vec<_> = (0..parallel).map(|_| dial()).collect();
        for h in batch {
            h.await.expect("handshake");
            done += 1;
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// The peer: quinn + rustls with stock verifiers, a DNS-name certificate from its own CA.
fn stock_pair() -> (quinn::Endpoint, quinn::Endpoint, SocketAddr) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).expect("leaf");
        (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let roots = Arc::new(roots);

    let (scert, skey) = leaf("server.bench");
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("client verifier");
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![scert, ca.der().clone()], skey)
        .expect("server");
    server.alpn_protocols = vec![b"bench".to_vec()];
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let (ccert, ckey) = leaf("client.bench");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![ccert, ca.der().clone()], ckey)
        .expect("client");
    client.alpn_protocols = vec![b"bench".to_vec()];
    client.resumption = rustls::client::Resumption::disabled();

    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(server)).expect("quic server"),
    ));
    let server = quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("server endpoint");
    let addr = server.local_addr().expect("addr");
    let mut client_ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    client_ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(client)).expect("quic client"),
    )));
    (server, client_ep, addr)
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let server_id = node(dir.path(), "server", None);
    let client_id = node(dir.path(), "client", Some(&server_id));
    let endpoint = |identity| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let streams = meshd::transport::MIN_STREAMS_PER_PEER;
        Arc::new(Transport::new(socket, identity, Default::default(), None, streams).expect("t"))
    };
    let (server, client) = (endpoint(server_id), endpoint(client_id));
    let addr = server.local_addr().expect("addr");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let (_trigger, watcher) = meshd::drain::new();
    tokio::spawn(server.clone().serve(tx, watcher));
    tokio::spawn(async move { while rx.recv().await.is_some() {} });

    let mesh_dial: Arc<dyn Fn() -> tokio::task::JoinHandle<()> + Send + Sync> = Arc::new(move || {
        let client = client.clone();
        tokio::spawn(async move {
            let peer = client.dial(addr).await.expect("mesh/1 handshake");
            peer.conn.close(0u32.into(), b"");
        })
    });

    let (stock_server, stock_client, stock_addr) = stock_pair();
    tokio::spawn(async move {
        while let Some(incoming) = stock_server.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = conn.closed().await;
                }
            });
        }
    });
    let stock_dial: Arc<dyn Fn() -> tokio::task::JoinHandle<()> + Send + Sync> = Arc::new(move || {
        let ep = stock_client.clone();
        tokio::spawn(async move {
            let conn = ep.connect(stock_addr, "server.bench").expect("connect").await.expect("stock handshake");
            conn.close(0u32.into(), b"");
        })
    });

    println!("handshakes per second, QUIC + TLS 1.3 with mutual auth, loopback, {seconds}s each");
    println!("{:<34} {:>12} {:>12}", "", "sequential", "8 parallel");
    let mesh_seq = run_for(seconds, 1, mesh_dial.clone()).await;
    let mesh_par = run_for(seconds, 8, mesh_dial).await;
    let stock_seq = run_for(seconds, 1, stock_dial.clone()).await;
    let stock_par = run_for(seconds, 8, stock_dial).await;
    println!("{:<34} {:>12.0} {:>12.0}", "mesh/1 (SPIFFE + revocation)", mesh_seq, mesh_par);
    println!("{:<34} {:>12.0} {:>12.0}", "quinn + rustls stock verifiers", stock_seq, stock_par);
    println!("{:<34} {:>11.2}x {:>11.2}x", "mesh / stock", mesh_seq / stock_seq, mesh_par / stock_par);
}
