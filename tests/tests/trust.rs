//! Trust between members: a hostile member, holding a valid node certificate of the mesh
//! (it joined with a real token), speaks `mesh/1` itself and tries to do more than a
//! member may. Each attack must be refused, counted and leave the other nodes' views
//! unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::token::Token;
use mesh_proto::wire::MeshRequest;
use mesh_tests::{Block, Node};
use meshd::store::entry::Entry;
use meshd::store::hlc::Hlc;

/// Liveness bound for what takes well under a second.
const LIVENESS: Duration = Duration::from_secs(15);

/// A member that joined the mesh with a real token and runs no meshd: the test speaks
/// for it, with its own certificate and key.
struct Hostile {
    /// Its data directory (certificate and key), kept while the test runs.
    _node: Node,
    rt: tokio::runtime::Runtime,
    transport: Arc<meshd::transport::Transport>,
}

impl Hostile {
    /// Joins as node `i` of `block` with a token from `signer`.
    fn join(block: &Block, i: u8, signer: &Node) -> Hostile {
        let node = Node::prepare(block, i, "");
        let out = node.meshd(&["join", &signer.token(&[])]);
        assert!(out.status.success(), "the hostile member joins: {}", String::from_utf8_lossy(&out.stderr));
        let identity = meshd::identity::Identity::load(&node.dir.path().join("data"), &node.name, Default::default())
            .expect("the hostile member's identity");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let socket = std::net::UdpSocket::bind((block.node_ip(i), 0)).expect("udp");
        let transport = rt.block_on(async {
            meshd::transport::Transport::new(socket, Arc::new(identity), Default::default(), None).expect("endpoint")
        });
        Hostile { _node: node, rt, transport: Arc::new(transport) }
    }

    /// Pushes entries to the member at `to`, as gossip pushes a large entry.
    fn push(&self, to: &Node, entries: &[Entry]) {
        let addr: SocketAddr = to.addr().parse().expect("address");
        let encoded: Vec<Vec<u8>> = entries.iter().map(|e| e.encode().expect("encode")).collect();
        self.rt.block_on(async {
            let peer = self.transport.dial(addr).await.expect("a mesh/1 connection with a valid certificate");
            let (mut send, _recv) = peer.conn.open_bi().await.expect("a stream");
            meshd::transport::frame::write_last(&mut send, &MeshRequest::Push { entries: encoded })
                .await
                .expect("the push is sent");
            // Let the stream's bytes leave before the connection is used again or dropped.
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// A write as `origin` would make it (the hostile member claims any origin it likes).
fn forged(key: &str, value: Vec<u8>, origin: &str) -> Entry {
    Entry::next(None, key, Some(value), Hlc::from_millis(now_ms()), origin)
}

fn seed(n: &Node) -> String {
    format!("join = [\"{}\"]", n.addr())
}

/// The attack that took the CA key: a forged `token/ID` record, in the signer's name and
/// granting the signer role, spread by a member; a fresh host then joins with the
/// matching secret. Token records never replicate now: the record is refused on merge,
/// and the join is refused for an unknown token.
#[test]
fn a_forged_token_record_is_refused_and_hands_out_nothing() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed(&n1), "");
    let hostile = Hostile::join(&block, 3, &n1);

    let real = Token::decode(&n1.token(&[])).expect("a token");
    let secret = [7u8; 16];
    let hash: String =
        ring::digest::digest(&ring::digest::SHA256, &secret).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let record = serde_json::json!({
        "hash": hash,
        "signer": "node-1",
        "created_ms": now_ms(),
        "expires_ms": now_ms() + 3_600_000,
        "grant_signer": true,
        "node": null,
        "used_by": null,
    });
    let entry = forged(&format!("token/{}", &hash[..16]), serde_json::to_vec(&record).expect("json"), "node-1");
    let refused = "mesh_store_merged_entries_total{outcome=\"refused_local_only\"}";
    for victim in [&n1, &n2] {
        hostile.push(victim, std::slice::from_ref(&entry));
        victim.eventually(LIVENESS, "the forged token record is refused and counted", || {
            (victim.metric(refused) >= 1).then_some(())
        });
        assert!(victim.logs().contains("refused a replicated entry under a local-only key"), "{}", victim.name);
    }

    // A fresh host with the forged token's secret: refused, and no CA key on its disk.
    let token = Token { signer: real.signer, ca_fingerprint: real.ca_fingerprint, secret }.encode();
    let fresh = Node::prepare(&block, 4, "");
    let out = fresh.meshd(&["join", &token]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the join is refused: {stderr}");
    assert!(stderr.contains("no such token"), "{stderr}");
    assert!(!fresh.dir.path().join("data").join("identity").join("ca.key").exists(), "no CA key handed out");
    drop(hostile);
}
