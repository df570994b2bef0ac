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
    identity: Arc<meshd::identity::Identity>,
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
        let identity = Arc::new(identity);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let socket = std::net::UdpSocket::bind((block.node_ip(i), 0)).expect("udp");
        let transport = rt.block_on(async {
            meshd::transport::Transport::new(
                socket,
                identity.clone(),
                Default::default(),
                None,
                meshd::transport::MIN_STREAMS_PER_PEER,
            )
            .expect("endpoint")
        });
        Hostile { _node: node, identity, rt, transport: Arc::new(transport) }
    }

    /// A write of `key` signed with the hostile member's own key, in `origin`'s name.
    fn signed(&self, key: &str, value: Option<Vec<u8>>, origin: &str) -> Entry {
        let sealer = self.identity.sealer().expect("sealer");
        Entry::sealed(None, key, value, Hlc::from_millis(now_ms()), origin, &sealer).expect("signed")
    }

    /// Its own key record, signed by itself: what lets others verify what it signs.
    fn key_record(&self) -> Entry {
        let id = &self.identity;
        let key = meshd::identity::seal::key_record_key(&id.node, &id.key_hash());
        self.signed(&key, Some(id.current().der.to_vec()), &id.node)
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

/// The attack that took the CA key: a forged `token/ID` record, in the signer's name and
/// granting the signer role, spread by a member; a fresh host then joins with the
/// matching secret. Token records never replicate now: the record is refused on merge,
/// and the join is refused for an unknown token.
#[test]
fn a_forged_token_record_is_refused_and_hands_out_nothing() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
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

/// `node`'s counts of refused replicated entries: not_allowed, bad_key_record,
/// unknown_key, unsealed, bad_signature.
fn refusals(node: &Node) -> Vec<u64> {
    ["not_allowed", "bad_key_record", "unknown_key", "unsealed", "bad_signature"]
        .iter()
        .map(|r| node.metric(&format!("mesh_store_merged_entries_total{{outcome=\"refused_{r}\"}}")))
        .collect()
}

/// The services `node` lists, as `(service, node, port)`.
fn listed(node: &Node) -> Vec<(String, String, u64)> {
    let services = node.meshctl_json(&["services"]);
    let mut out = Vec::new();
    for s in services.as_array().into_iter().flatten() {
        for i in s["instances"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or_default().to_owned();
            let at = i["node"].as_str().unwrap_or_default().to_owned();
            out.push((name, at, i["port"].as_u64().unwrap_or(0)));
        }
    }
    out
}

/// A member writes in another node's name: an instance of `vault` on node-2, at a local
/// port node-2 never registered, with a health check; and a tombstone over the service
/// node-2 did register. Unsigned, signed with its own key in its own name, and signed with
/// its own key in node-2's name: every node refuses each and counts it by reason; node-2
/// never connects to or checks the forged instance, and every node keeps listing what
/// node-2 declared.
#[test]
fn entries_in_another_nodes_name_are_refused_and_never_acted_on() {
    use mesh_proto::wire::{TunnelHeader, TunnelRefusal, TunnelReply};

    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    let web = n2.dir.path().join("web.toml");
    std::fs::write(&web, format!("name = \"web\"\naddress = \"{}\"\nport = 8080\n", block.node_ip(2)))
        .expect("service file");
    let out = n2.meshctl(&["service", "register", "-f", &web.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let web_on_n2 = ("web".to_owned(), "node-2".to_owned(), 8080);
    n1.eventually(LIVENESS, "node-1 lists node-2's web", || listed(&n1).contains(&web_on_n2).then_some(()));
    let hostile = Hostile::join(&block, 3, &n1);

    // Something listens on node-2's host that node-2 never registered.
    let secret = std::net::TcpListener::bind((block.node_ip(2), 0)).expect("a local listener");
    secret.set_nonblocking(true).expect("nonblocking");
    let port = secret.local_addr().expect("addr").port();
    let vault = serde_json::json!({
        "node": "node-2",
        "spec": {
            "name": "vault",
            "address": block.node_ip(2).to_string(),
            "port": port,
            "check": { "tcp": format!("{}:{port}", block.node_ip(2)), "interval": "1s" },
        },
        "healthy": true,
        "source": "api",
    });
    let unsigned_vault = forged("node/node-2/service/vault", serde_json::to_vec(&vault).expect("json"), "node-2");
    let mut unsigned_delete = forged("node/node-2/service/web", Vec::new(), "node-2");
    unsigned_delete.deleted = true;
    // Signed with its own key: in its own name, and in node-2's.
    let signed_vault =
        hostile.signed("node/node-2/service/vault", Some(serde_json::to_vec(&vault).expect("json")), "node-3");
    let claimed_delete = hostile.signed("node/node-2/service/web", None, "node-2");
    for victim in [&n1, &n2] {
        let before = refusals(victim);
        // One write per key and push: two of the same key in one batch merge as one.
        hostile.push(victim, &[hostile.key_record(), unsigned_vault.clone(), unsigned_delete.clone()]);
        hostile.push(victim, &[signed_vault.clone(), claimed_delete.clone()]);
        victim.eventually(LIVENESS, "every forgery is refused and counted by reason", || {
            let counts: Vec<u64> = refusals(victim).iter().zip(&before).map(|(now, then)| now - then).collect();
            // not_allowed, bad_key_record, unknown_key, unsealed, bad_signature
            (counts == [1, 0, 1, 2, 0]).then_some(())
        });
        assert!(victim.logs().contains("refused replicated entries"), "{}: logged", victim.name);
    }
    for node in [&n1, &n2] {
        let list = listed(node);
        assert!(list.contains(&web_on_n2) && !list.iter().any(|(s, _, _)| s == "vault"), "{}: {list:?}", node.name);
    }

    // A tunnel to the forged instance is refused: node-2 connects only to what it declared.
    let n2_addr: SocketAddr = n2.addr().parse().expect("address");
    let reply = hostile.rt.block_on(async {
        let peer = hostile.transport.dial(n2_addr).await.expect("connection");
        let (mut send, mut recv) = peer.conn.open_bi().await.expect("stream");
        let header = TunnelHeader {
            version: TunnelHeader::VERSION,
            service: "vault".into(),
            port,
            source_node: "node-3".into(),
            source_service: None,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        };
        meshd::transport::frame::write(&mut send, &MeshRequest::Tunnel(header)).await.expect("header");
        meshd::transport::frame::read::<TunnelReply>(&mut recv).await.expect("reply")
    });
    assert!(
        matches!(reply, TunnelReply::Refused { reason: TunnelRefusal::NoInstance, .. }),
        "the forged instance is not reachable: {reply:?}"
    );
    // Nothing ever connected to the unregistered port: no check, no tunnel.
    assert!(secret.accept().is_err(), "node-2 never connected to a port it did not register");
    assert_eq!(n2.metric("mesh_health_checks_total{service=\"vault\",result=\"pass\"}"), 0);
    assert_eq!(n2.metric("mesh_health_checks_total{service=\"vault\",result=\"fail\"}"), 0);
    assert_eq!(n2.metric("mesh_catalog_corrections_total{kind=\"foreign\"}"), 0, "nothing foreign got in to correct");
}

/// A forged member list: node-2 down, at another address, with a bump no restart can
/// beat. It arrives in a sync exchange; node-1 drops it and counts it, and node-2 stays
/// alive everywhere. Then a plausible one: node-2 alive elsewhere with a newer identity;
/// node-1 keeps node-2's own address, and node-2 refutes the claim.
#[test]
fn a_forged_member_list_cannot_evict_a_node() {
    use mesh_proto::wire::{BucketDigest, SyncPush, SyncSummary};
    use meshd::membership::core::MemberId;

    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    let alive = |n: &Node, name: &str| {
        n.meshctl_json(&["members"])
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == name && m["state"] == "alive"))
    };
    n1.eventually(LIVENESS, "node-1 sees node-2 alive", || alive(&n1, "node-2").then_some(()));
    let hostile = Hostile::join(&block, 3, &n1);

    let elsewhere: SocketAddr = (block.node_ip(9), 7946).into();
    let evict = foca::Member::new(
        MemberId { name: "node-2".into(), addr: elsewhere, bump: u64::MAX },
        u16::MAX,
        foca::State::Down,
    );
    let n1_addr: SocketAddr = n1.addr().parse().expect("address");
    let send_list = |members: Vec<foca::Member<MemberId>>| {
        let list = postcard::to_stdvec(&members).expect("encode");
        hostile.rt.block_on(async {
            let peer = hostile.transport.dial(n1_addr).await.expect("connection");
            let (mut send, mut recv) = peer.conn.open_bi().await.expect("stream");
            let buckets = vec![BucketDigest { count: 0, xor: 0 }; 256];
            let request = MeshRequest::Sync { buckets, members: list };
            meshd::transport::frame::write(&mut send, &request).await.expect("request");
            let _: SyncSummary = meshd::transport::frame::read(&mut recv).await.expect("summary");
            let done = SyncPush { entries: Vec::new(), want: Vec::new() };
            meshd::transport::frame::write_last(&mut send, &done).await.expect("push");
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
    };
    send_list(vec![evict]);
    n1.eventually(LIVENESS, "node-1 drops the implausible member and counts it", || {
        (n1.metric("mesh_gossip_dropped_datagrams_total{reason=\"implausible_member\"}") >= 1).then_some(())
    });
    // Within the bound: node-2 alive at another address, with a newer identity. Node-1
    // keeps node-2's own address (a member's address comes from the member alone) and
    // node-2, told of it, refutes it with a newer identity of its own.
    let newer = foca::Member::new(
        MemberId { name: "node-2".into(), addr: elsewhere, bump: now_ms() + 30_000 },
        0,
        foca::State::Alive,
    );
    send_list(vec![newer]);
    n1.eventually(LIVENESS, "node-1 ignores the third party's address for node-2 and counts it", || {
        (n1.metric("mesh_gossip_dropped_datagrams_total{reason=\"address_claim\"}") >= 1).then_some(())
    });
    n2.eventually(LIVENESS, "node-2 refutes the claim with a newer identity", || {
        n2.logs().contains("refuting it with a new identity").then_some(())
    });
    // Several probe periods later, node-2 is still alive on both.
    std::thread::sleep(Duration::from_secs(3));
    for n in [&n1, &n2] {
        assert!(alive(n, "node-2"), "{} still sees node-2 alive: {}", n.name, n.meshctl_json(&["members"]));
    }
    let addr_on_n1 = n1
        .meshctl_json(&["members"])
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "node-2").map(|m| m["addr"].clone()));
    assert_eq!(addr_on_n1.and_then(|a| a.as_str().map(str::to_owned)), Some(n2.addr()), "its address unchanged");
}

/// libfaketime, which shifts the wall clock of a process it is preloaded into (the
/// `faketime` package; CI installs it).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Clock skew is measured over the mesh and reported on both sides. A node 30 s ahead is
/// a member with a warning: both list the offset in `members`, warn in `status` and the
/// log, and set the metric. A node 10 minutes ahead cannot be a member (its identity and
/// writes are beyond the others' clocks), and both sides say why in `status` and the log
/// instead of failing silently.
#[test]
fn a_member_whose_clock_is_off_is_reported_on_both_sides() {
    assert!(std::path::Path::new(FAKETIME).exists(), "{FAKETIME} is missing: apt-get install faketime");
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let skewed = |i: u8, by: &str| {
        let node = Node::prepare_with(&block, i, &n1.seed(), "")
            .env("LD_PRELOAD", FAKETIME)
            .env("FAKETIME", by)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let out = node.meshd(&["join", &n1.token(&[])]);
        assert!(out.status.success(), "join {by}: {}", String::from_utf8_lossy(&out.stderr));
        node.run()
    };
    let offset = |n: &Node, of: &str| -> Option<i64> {
        n.meshctl_json(&["members"]).as_array()?.iter().find(|m| m["name"] == of)?["clock_offset_ms"].as_i64()
    };
    let warning = |n: &Node| n.meshctl_json(&["status"])["clock_warning"].as_str().map(str::to_owned);

    // 30 s ahead: a member, with its offset shown and warned about.
    let n2 = skewed(2, "+30s");
    let seen = n1.eventually(LIVENESS, "node-1 measures node-2's clock", || offset(&n1, "node-2"));
    assert!((seen - 30_000).abs() < 3_000, "node-2 is about 30 s ahead: {seen} ms");
    let seen = n2.eventually(LIVENESS, "node-2 measures node-1's clock", || offset(&n2, "node-1"));
    assert!((seen + 30_000).abs() < 3_000, "node-1 is about 30 s behind: {seen} ms");
    let w = n1.eventually(LIVENESS, "node-1's status warns", || warning(&n1));
    assert!(w.contains("node-2's clock is 30s ahead of this node's"), "{w}");
    let table = String::from_utf8_lossy(&n1.meshctl(&["members"]).stdout).into_owned();
    assert!(table.contains("CLOCK") && table.contains("+30."), "{table}");
    assert!(n1.logs().contains("node-2's clock is 30s ahead"), "a WARN in node-1's log");
    assert!(n1.metric("mesh_gossip_clock_offset_max_seconds") >= 27, "the metric");

    // 10 minutes ahead: refused, and both sides say why.
    let n3 = skewed(3, "+10m");
    let w =
        n1.eventually(LIVENESS, "node-1 says why node-3 is refused", || warning(&n1).filter(|w| w.contains("node-3")));
    assert!(w.contains("node-3's clock is 10m ahead of this node's") && w.contains("refused"), "{w}");
    let w = n3.eventually(LIVENESS, "node-3 says its clock is off", || warning(&n3));
    assert!(w.contains("node-1's clock is 10m behind this node's") && w.contains("refused"), "{w}");
    assert!(n1.metric("mesh_gossip_dropped_datagrams_total{reason=\"implausible_member\"}") >= 1);
}

/// A service name is open to any member until an operator claims it: then only the
/// allowed nodes' instances count anywhere (a hijacker's leave routing at once) and a
/// registration from another node is refused.
#[test]
fn a_claimed_service_name_cannot_be_hijacked() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    let n3 = Node::join(&block, 3, &n1.token(&[]), &n1.seed(), "");
    let register = |n: &Node| {
        let file = n.dir.path().join("reviews.toml");
        std::fs::write(&file, format!("name = \"reviews\"\naddress = \"{}\"\nport = 9080\n", block.node_ip(1)))
            .expect("service file");
        n.meshctl(&["service", "register", "-f", &file.display().to_string()])
    };
    let hosts = |n: &Node| -> Vec<String> {
        listed(n).into_iter().filter(|(s, _, _)| s == "reviews").map(|(_, at, _)| at).collect()
    };
    // Open: scaling out by registering the same name on more hosts works.
    for n in [&n2, &n3] {
        assert!(register(n).status.success(), "{} registers reviews", n.name);
    }
    n1.eventually(LIVENESS, "both instances count", || (hosts(&n1) == ["node-2", "node-3"]).then_some(()));

    let refused = n2.meshctl(&["service", "allow", "reviews", "--nodes", "node-2"]);
    assert_eq!(refused.status.code(), Some(1), "a member may not claim names");
    let out = n1.meshctl(&["service", "allow", "reviews", "--nodes", "node-2,web-*"]);
    assert!(out.status.success(), "the signer claims it: {}", String::from_utf8_lossy(&out.stderr));
    for n in [&n1, &n2, &n3] {
        n.eventually(LIVENESS, "only node-2's instance counts, everywhere", || (hosts(n) == ["node-2"]).then_some(()));
    }
    let again = register(&n3);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "node-3 may not register reviews now: {stderr}");
    assert!(stderr.contains("claimed for nodes node-2,web-*"), "{stderr}");
    let list = String::from_utf8_lossy(&n3.meshctl(&["service", "allow"]).stdout).into_owned();
    assert!(list.contains("reviews  node-2,web-*"), "{list}");

    // Released: open again.
    assert!(n1.meshctl(&["service", "allow", "reviews", "--release"]).status.success());
    n1.eventually(LIVENESS, "both count again", || (hosts(&n1) == ["node-2", "node-3"]).then_some(()));
}

/// A member tries every key class it may not write, signed with its own valid key:
/// mesh-wide configuration (routes, policies, service claims), revocations (a new one of
/// the signer, and a tombstone over a real one: un-revocation), signer announcements,
/// another node's certificate record and key record; and the same writes unsigned or in
/// the signer's name. Every node refuses each, counts it by reason, and keeps its view:
/// no route, no claim, the removed node stays removed. Its own entries still go through.
#[test]
fn writes_beyond_a_members_role_are_refused_for_every_key_class() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    let hostile = Hostile::join(&block, 3, &n1);
    // A node that joined and was removed: its revocation is what un-revocation targets.
    let removed = Node::prepare(&block, 4, "");
    assert!(removed.meshd(&["join", &n1.token(&[])]).status.success());
    let removal = n1.meshctl_json(&["node", "remove", "node-4"]);
    let revocation_key = format!("revoked/{}", removal["serial"].as_str().expect("the revoked serial"));
    let still_removed = |node: &Node| {
        let members = node.meshctl_json(&["members"]);
        members.as_array().into_iter().flatten().any(|m| m["name"] == "node-4" && m["state"] == "left")
    };
    n2.eventually(LIVENESS, "node-2 knows node-4 is removed", || still_removed(&n2).then_some(()));

    let me = "node-3";
    let json = |v: serde_json::Value| Some(serde_json::to_vec(&v).expect("json"));
    let route = json(serde_json::json!({"name": "web", "service": "web"}));
    let fake_revocation = json(serde_json::json!({
        "node": "node-1", "serial": "01", "key_hash": "00", "at_ms": now_ms(), "by": me,
    }));
    let n1_cert = json(serde_json::json!({
        "serial": "01", "key_hash": "00", "not_after_ms": now_ms(), "issued_by": me, "role": "signer",
    }));
    let own_key = hostile.key_record();
    let mut stolen_key = own_key.clone();
    stolen_key.key = meshd::identity::seal::key_record_key("node-2", &hostile.identity.key_hash());
    let batch = vec![
        own_key,
        hostile.signed("route/web", route.clone(), me),
        hostile.signed("policy/web", route.clone(), me),
        hostile.signed("claim/web", json(serde_json::json!({"nodes": ["node-3"]})), me),
        hostile.signed(&revocation_key, None, me),
        hostile.signed("revoked/01", fake_revocation, me),
        hostile.signed("signer/node-3", Some(b"127.0.0.1:1".to_vec()), me),
        hostile.signed("node/node-1/cert", n1_cert, me),
        stolen_key,
        hostile.signed("route/web", route.clone(), "node-1"),
        forged("route/web", route.clone().unwrap_or_default(), "node-1"),
        {
            let mut unrevoke = forged(&revocation_key, Vec::new(), "node-1");
            unrevoke.deleted = true;
            unrevoke
        },
        // What a member may write: its own entries.
        hostile.signed("node/node-3/service/own", json(serde_json::json!({"node": "node-3"})), me),
    ];
    for victim in [&n1, &n2] {
        let before = refusals(victim);
        // One write per key and push: two of the same key in one batch merge as one.
        let mut seen = std::collections::HashSet::new();
        let (first, second): (Vec<Entry>, Vec<Entry>) = batch.iter().cloned().partition(|e| seen.insert(e.key.clone()));
        hostile.push(victim, &first);
        let mut seen = std::collections::HashSet::new();
        let (second, third): (Vec<Entry>, Vec<Entry>) = second.into_iter().partition(|e| seen.insert(e.key.clone()));
        hostile.push(victim, &second);
        hostile.push(victim, &third);
        victim.eventually(LIVENESS, "every write beyond the role is refused, by reason", || {
            let counts: Vec<u64> = refusals(victim).iter().zip(&before).map(|(now, then)| now - then).collect();
            // not_allowed, bad_key_record, unknown_key, unsealed, bad_signature
            (counts == [7, 1, 1, 2, 0]).then_some(())
        });
    }
    for node in [&n1, &n2] {
        let routes = node.meshctl_json(&["route", "list"]);
        assert_eq!(routes.as_array().map(Vec::len), Some(0), "{}: no route: {routes}", node.name);
        let claims = node.meshctl_json(&["service", "allow"]);
        assert_eq!(claims.as_array().map(Vec::len), Some(0), "{}: no claim: {claims}", node.name);
        assert!(still_removed(node), "{}: node-4 stays removed", node.name);
        let members = node.meshctl_json(&["members"]);
        let n1_role =
            members.as_array().into_iter().flatten().find(|m| m["name"] == "node-1").map(|m| m["role"].clone());
        assert_eq!(n1_role, Some(serde_json::json!("signer")), "{}: node-1's record is the signer's", node.name);
    }
    // Its own entry went through (merged, not refused).
    n2.eventually(LIVENESS, "the member's own entry merges", || {
        (n2.metric("mesh_store_merged_entries_total{outcome=\"applied\"}") >= 1).then_some(())
    });
    drop(removed);
}

/// A TCP echo backend in this process: each connection gets its name and a newline,
/// then an echo of what it sends.
fn echo_backend(ip: std::net::Ipv4Addr) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).expect("backend listen");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.write_all(b"echo\n");
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One request through the mesh: connect, read the greeting, echo a line.
fn one_request(stream: &mut std::io::BufReader<std::net::TcpStream>, fresh: bool) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let mut line = String::new();
    if fresh {
        stream.read_line(&mut line).map_err(|e| e.to_string())?;
        if line != "echo\n" {
            return Err(format!("greeting {line:?}"));
        }
        line.clear();
    }
    stream.get_mut().write_all(b"ping\n").map_err(|e| e.to_string())?;
    stream.read_line(&mut line).map_err(|e| e.to_string())?;
    (line == "ping\n").then_some(()).ok_or_else(|| format!("echo {line:?}"))
}

/// `meshctl ca rotate` with traffic running: a new root reaches every node before
/// anything is issued under it, every node renews under it, a node that joins afterwards
/// uses it, and not one request fails, on new connections or on one held open across the
/// rotation. Once the old root retires, a certificate it issued is refused.
#[test]
fn the_ca_rotates_under_load_without_a_failed_request() {
    let block = Block::take();
    let ttl = "[identity]\ncert_ttl = \"10s\"\n";
    let n1 = Node::start(&block, 1, ttl);
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), ttl);
    let n3 = Node::join(&block, 3, &n1.token(&[]), &n1.seed(), ttl);
    // A member that joined under the old root and never renews: it proves retirement.
    let stale = Hostile::join(&block, 4, &n1);
    let backend = echo_backend(block.node_ip(3));
    let service = n3.dir.path().join("echo.toml");
    std::fs::write(&service, format!("name = \"echo\"\naddress = \"{}\"\nport = {}\n", backend.ip(), backend.port()))
        .expect("service file");
    assert!(n3.meshctl(&["service", "register", "-f", &service.display().to_string()]).status.success());
    let target = SocketAddr::from((n2.vip("echo", LIVENESS), backend.port()));
    let connect = move || -> Result<std::io::BufReader<std::net::TcpStream>, String> {
        let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        Ok(std::io::BufReader::new(s))
    };
    n2.eventually(LIVENESS, "a first request through the mesh", || {
        let mut s = connect().ok()?;
        one_request(&mut s, true).ok()
    });
    let old_root = n1.meshctl_json(&["status"])["ca_fingerprint"].as_str().expect("fingerprint").to_owned();
    // The old root with its key, as node-1 holds it before the rotation.
    let old_ca = meshd::identity::Identity::load(&n1.dir.path().join("data"), "node-1", Default::default())
        .expect("node-1's identity")
        .ca();

    // Load: new connections back to back, and one connection held open throughout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = connect().expect("the held connection");
            one_request(&mut held, true).expect("the held connection's first request");
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match connect().and_then(|mut s| one_request(&mut s, true)) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                match one_request(&mut held, false) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(format!("held: {e}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };

    std::thread::sleep(Duration::from_secs(1));
    let rotated = n1.meshctl_json(&["ca", "rotate"]);
    let new_root = rotated["root"].as_str().expect("the new root").to_owned();
    assert_ne!(new_root, old_root);
    assert_eq!(rotated["previous"], old_root.as_str());
    assert_eq!(rotated["members"].as_array().map(Vec::len), Some(3), "every member held the new root first: {rotated}");
    for node in [&n1, &n2, &n3] {
        // Renewals are spread over 10 s after a node learns of the new root.
        node.eventually(2 * LIVENESS, "the node adopts the new root and renews under it", || {
            let adopted = node.meshctl_json(&["status"])["ca_fingerprint"] == new_root.as_str();
            let renewed = node
                .logs()
                .lines()
                .rev()
                .take_while(|l| !l.contains("new CA root"))
                .any(|l| l.contains("certificate renewed"));
            (adopted && (renewed || node.name == "node-1")).then_some(())
        });
    }
    // A node joining now pins and gets the new root.
    let n5 = Node::join(&block, 5, &n1.token(&[]), &n1.seed(), ttl);
    assert_eq!(n5.meshctl_json(&["status"])["ca_fingerprint"], new_root.as_str());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("the load thread");
    assert!(ok > 20, "the load ran: {ok} requests");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );

    // Before retirement a certificate from the old root still connects; after it, it is
    // refused. (An hour's certificate for the stale member, minted with the old root's
    // key: one that outlives the retirement, which no signer issues after a rotation.)
    let csr = stale.identity.csr().expect("csr");
    let id = meshd::identity::SpiffeId::new("mesh.local", "node-4");
    let hour = Duration::from_secs(3600);
    let minted = old_ca.issue(&csr, &id, mesh_proto::role::Role::Member, hour).expect("issue").expect("the old key");
    stale.identity.replace_cert(minted).expect("installed");
    // It trusts both roots itself: what is tested is whether node-1 still trusts the old.
    let new_ca = meshd::identity::Identity::load(&n1.dir.path().join("data"), "node-1", Default::default())
        .expect("node-1's identity")
        .ca();
    stale.identity.anchors.replace(vec![old_ca.der.clone(), new_ca.der.clone()]);
    let n1_addr: SocketAddr = n1.addr().parse().expect("address");
    // A request answered, not only a handshake (the server judges the client's
    // certificate after the client's side of the handshake is done).
    let dial = |h: &Hostile| {
        h.rt.block_on(async {
            let asked = async {
                let peer = h.transport.dial(n1_addr).await.ok()?;
                let (mut send, mut recv) = peer.conn.open_bi().await.ok()?;
                meshd::transport::frame::write_last(&mut send, &MeshRequest::Clock).await.ok()?;
                meshd::transport::frame::read::<mesh_proto::wire::ClockReply>(&mut recv).await.ok()
            };
            tokio::time::timeout(Duration::from_secs(5), asked).await.ok().flatten().is_some()
        })
    };
    assert!(dial(&stale), "the old root is trusted until it retires");
    let retires = humantime::parse_rfc3339(rotated["retires_at"].as_str().expect("retires_at")).expect("a time");
    let wait = retires.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(wait < Duration::from_secs(41), "retirement is one certificate lifetime and 30 s away: {wait:?}");
    // Each node applies retirements within 5 s of their time.
    std::thread::sleep(wait + Duration::from_secs(8));
    assert!(!dial(&stale), "a certificate from the retired root is refused");
    assert!(n1.metric("mesh_tls_peer_certs_refused_total{side=\"server\",reason=\"unknown_issuer\"}") >= 1);
    // Every node still talks to every other.
    for node in [&n1, &n2, &n3, &n5] {
        let members = node.meshctl_json(&["members"]);
        let alive = members.as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
        assert_eq!(alive, 4, "{}: {members}", node.name);
    }
}
