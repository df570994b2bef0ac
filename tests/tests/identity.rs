//! Identity with real meshd processes: init, tokens, joins, renewal and removal.

use std::time::{Duration, Instant};

use mesh_proto::token::Token;
use mesh_tests::{Block, Node};

/// Liveness bound for things that take well under a second.
const LIVENESS: Duration = Duration::from_secs(15);

#[test]
fn three_nodes_share_a_ca_and_each_holds_its_own_certificate() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let token = n1.token(&[]);
    let started = Instant::now();
    let n2 = Node::join(&block, 2, &token, &n1.seed(), "");
    eprintln!("join + start of node-2: {:?}", started.elapsed());
    let n3 = Node::join(&block, 3, &n1.token(&["--ttl", "5m"]), &n1.seed(), "");

    let fingerprint = n1.meshctl_json(&["status"])["ca_fingerprint"].clone();
    assert!(fingerprint.as_str().is_some_and(|f| f.starts_with("sha256:")));
    for (node, signer) in [(&n1, true), (&n2, false), (&n3, false)] {
        let status = node.meshctl_json(&["status"]);
        assert_eq!(status["identity"], format!("spiffe://mesh.local/node/{}", node.name));
        assert_eq!(status["ca_fingerprint"], fingerprint, "{}", node.name);
        assert_eq!(status["signer"], signer, "{}", node.name);
        assert!(status["cert_expires"].as_str().is_some());
    }
    // Both joiners dial their seed over mesh/1; node-1 sees them by their verified names.
    n1.eventually(LIVENESS, "node-1 connected to node-2 and node-3", || {
        let conns = n1.meshctl_json(&["members"]);
        let names: Vec<&str> = conns.as_array()?.iter().filter_map(|m| m["name"].as_str()).collect();
        (names == ["node-1", "node-2", "node-3"]).then_some(())
    });
}

#[test]
fn bad_tokens_are_refused_with_the_right_exit_status_and_reason() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let joiner = |i: u8| Node::prepare(&block, i, "");
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Malformed: exit 2, nothing dialled, nothing written.
    let good = n1.token(&[]);
    let n5 = joiner(5);
    for bad in ["garbage", &good[..good.len() - 3], "mesh1_AAAA"] {
        let out = n5.meshd(&["join", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("malformed token"), "{}", stderr(&out));
        assert!(!n5.dir.path().join("data").exists(), "nothing written");
    }

    // Used once, then replayed: refused with 1.
    let n2 = joiner(2);
    assert!(n2.meshd(&["join", &good]).status.success());
    let replay = n5.meshd(&["join", &good]);
    assert_eq!(replay.status.code(), Some(1));
    assert!(stderr(&replay).contains("already used"), "{}", stderr(&replay));

    // Expired.
    let short = n1.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let out = n5.meshd(&["join", &short]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Presented at a signer that did not issue it: node-3 is a signer too, but the token
    // (pointed at it) was made on node-1.
    let n3 = Node::join(&block, 3, &n1.token(&["--signer"]), "", "");
    assert_eq!(n3.meshctl_json(&["status"])["signer"], true);
    let mut elsewhere = Token::decode(&n1.token(&[])).expect("token");
    elsewhere.signer = n3.addr().parse().expect("addr");
    let out = n5.meshd(&["join", &elsewhere.encode()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("join refused"), "{}", stderr(&out));

    // Made for another name.
    let named = n1.token(&["--node", "node-9"]);
    let out = n5.meshd(&["join", &named]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("this token is for node node-9"), "{}", stderr(&out));

    // Asking for a name another node holds.
    let imposter = Node::prepare(&Block::take(), 2, "");
    let out = imposter.meshd(&["join", &n1.token(&[])]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("name taken"), "{}", stderr(&out));

    // TTL limits are checked before anything is stored.
    for ttl in ["0s", "8d"] {
        let out = n1.meshctl(&["token", "create", "--ttl", ttl]);
        assert_eq!(out.status.code(), Some(2), "{ttl}");
    }
}

#[test]
fn two_joins_racing_for_one_token_exactly_one_wins() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    for round in 0..5u8 {
        let token = n1.token(&[]);
        let a = Node::prepare(&block, 10 + 2 * round, "");
        let b = Node::prepare(&block, 11 + 2 * round, "");
        let (ra, rb) = std::thread::scope(|s| {
            let ja = s.spawn(|| a.meshd(&["join", &token]));
            let jb = s.spawn(|| b.meshd(&["join", &token]));
            (ja.join().expect("a"), jb.join().expect("b"))
        });
        let wins = [&ra, &rb].iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "round {round}: exactly one join wins");
        let loser = if ra.status.success() { &rb } else { &ra };
        assert_eq!(loser.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&loser.stderr).contains("already used"));
    }
}

fn metric(node: &Node, name: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let text = rt.block_on(node.client().get("/metrics")).expect("metrics").body;
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_removed_node_is_cut_off_and_its_name_can_join_again_with_a_new_key() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let mut n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    n1.eventually(LIVENESS, "node-2 connected", || {
        n1.meshctl_json(&["members"])
            .as_array()?
            .iter()
            .any(|m| m["name"] == "node-2" && m["state"] == "alive")
            .then_some(())
    });

    let out = n1.meshctl(&["node", "remove", "node-2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed node-2"));
    let state = |n: &Node| {
        n.meshctl_json(&["members"])
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "node-2").map(|m| m["state"].clone()))
    };
    assert_eq!(state(&n1), Some(serde_json::json!("left")));
    // node-2 hears why its connection closed (or its next handshake is refused), says so
    // and stops dialling: node-1 refuses it a few times at most, not once per probe.
    n2.eventually(LIVENESS, "node-2 logs its removal", || n2.logs().contains("REMOVED FROM THE MESH").then_some(()));
    let refused = "mesh_tls_peer_certs_refused_total{side=\"server\",reason=\"revoked\"}";
    let before = metric(&n1, refused);
    std::thread::sleep(Duration::from_secs(3));
    assert!(metric(&n1, refused) - before <= 1, "node-2 keeps dialling after it knew it was removed");
    assert!(
        n1.meshctl_json(&["connections"]).as_array().is_none_or(|c| c.iter().all(|c| c["node"] != "node-2")),
        "no live connection with node-2"
    );
    // Removing an unknown node fails (1); removing oneself is a usage error (2).
    assert_eq!(n1.meshctl(&["node", "remove", "node-7"]).status.code(), Some(1));
    let myself = n1.meshctl(&["node", "remove", "node-1"]);
    assert_eq!(myself.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&myself.stderr).contains("on another node"));

    // The name may come back with a new token and a new key.
    n2.signal(nix::sys::signal::Signal::SIGTERM);
    n2.wait_exit(LIVENESS);
    let again = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    n1.eventually(LIVENESS, "node-2 back", || (state(&n1) == Some(serde_json::json!("alive"))).then_some(()));
    drop(again);
}

#[test]
fn renewal_keeps_a_long_lived_connection_alive_across_three_renewals() {
    let block = Block::take();
    let ttl = "[identity]\ncert_ttl = \"20s\"\n";
    let n1 = Node::start(&block, 1, ttl);
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), ttl);
    let conn = |n: &Node| {
        let c = n.meshctl_json(&["connections"]);
        let c = c.as_array()?.iter().find(|c| c["node"] == "node-1")?.clone();
        Some((c["id"].as_u64()?, c["since"].as_str()?.to_owned()))
    };
    let first = n2.eventually(LIVENESS, "node-2 connected to node-1", || conn(&n2));
    let expiry = |n: &Node| n.meshctl_json(&["status"])["cert_expires"].as_str().map(str::to_owned);
    let mut seen = vec![expiry(&n2).expect("expiry")];
    let mut seen1 = vec![expiry(&n1).expect("expiry")];
    // Renewal is due every ~10 s; 90 s is the liveness bound for three.
    n2.eventually(Duration::from_secs(90), "three renewals of node-2", || {
        let now = expiry(&n2)?;
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        let now1 = expiry(&n1)?;
        if seen1.last() != Some(&now1) {
            seen1.push(now1);
        }
        assert_eq!(conn(&n2).as_ref(), Some(&first), "the connection was replaced during renewals");
        (seen.len() >= 4).then_some(())
    });
    assert!(seen1.len() >= 3, "the signer renewed itself too: {seen1:?}");
    assert_eq!(n2.meshctl_json(&["status"])["cert_warning"], serde_json::Value::Null);
}

#[test]
fn renewal_goes_to_another_signer_when_the_first_is_gone() {
    let block = Block::take();
    let ttl = "[identity]\ncert_ttl = \"20s\"\n";
    let mut n1 = Node::start(&block, 1, ttl);
    let n2 = Node::join(&block, 2, &n1.token(&["--signer"]), &n1.seed(), ttl);
    assert_eq!(n2.meshctl_json(&["status"])["signer"], true);
    // node-3 knows both signers as seeds; it joined through node-1.
    let seeds = format!("join = [\"{}\", \"{}\"]", n1.addr(), n2.addr());
    let n3 = Node::join(&block, 3, &n1.token(&[]), &seeds, ttl);
    let before = n3.meshctl_json(&["status"])["cert_expires"].clone();

    // Lose the signer node-3 joined through.
    n1.signal(nix::sys::signal::Signal::SIGKILL);
    n1.wait_exit(LIVENESS);

    // Renewal is due within ~10 s; node-2 must serve it.
    n3.eventually(Duration::from_secs(60), "node-3 renewed at node-2", || {
        let now = n3.meshctl_json(&["status"])["cert_expires"].clone();
        (now != before).then_some(())
    });
}

#[test]
fn a_join_token_in_the_config_joins_on_first_start() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let token = n1.token(&[]);
    let node = Node::prepare_with(&block, 2, &format!("join_token = \"{token}\"\n{}", n1.seed()), "");
    let node = node.run();
    let status = node.meshctl_json(&["status"]);
    assert_eq!(status["identity"], "spiffe://mesh.local/node/node-2");
    // A restart uses the identity it has; the used token is not presented again.
    let mut node = node;
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(node.wait_exit(LIVENESS).code(), Some(0));
    let node = node.run();
    assert_eq!(node.meshctl_json(&["status"])["identity"], "spiffe://mesh.local/node/node-2");
}

/// Roles come from the certificate the CA signed: the first node is a signer, a plain
/// token makes a member, `--role operator` an operator. Each sees the others' roles; a
/// member may not write routes, an operator may, and only a signer removes nodes or makes
/// tokens. Each refusal exits 1 naming the role needed.
#[test]
fn roles_are_signed_into_certificates_and_limit_what_a_node_may_change() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let member = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    let operator = Node::join(&block, 3, &n1.token(&["--role", "operator"]), &n1.seed(), "");
    for (node, role) in [(&n1, "signer"), (&member, "member"), (&operator, "operator")] {
        assert_eq!(node.meshctl_json(&["status"])["role"], role, "{}", node.name);
    }
    n1.eventually(LIVENESS, "node-1 lists each member's role", || {
        let members = n1.meshctl_json(&["members"]);
        let roles: Vec<(String, String)> = members
            .as_array()?
            .iter()
            .map(|m| (m["name"].as_str().unwrap_or("").to_owned(), m["role"].as_str().unwrap_or("").to_owned()))
            .collect();
        let want = [("node-1", "signer"), ("node-2", "member"), ("node-3", "operator")];
        (roles.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>() == want).then_some(())
    });

    let route = member.dir.path().join("web.route.toml");
    std::fs::write(&route, "service = \"web\"\n[[http]]\ntimeout = \"2s\"\n").expect("route file");
    let route = route.display().to_string();
    let refused = member.meshctl(&["route", "apply", "-f", &route]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "a member may not write routes: {stderr}");
    assert!(stderr.contains("needs role operator") && stderr.contains("is a member"), "{stderr}");
    let dry = member.meshctl(&["route", "apply", "-f", &route, "--dry-run"]);
    assert!(dry.status.success(), "a dry run only reads: {}", String::from_utf8_lossy(&dry.stderr));
    let applied = operator.meshctl(&["route", "apply", "-f", &route]);
    assert!(applied.status.success(), "an operator may: {}", String::from_utf8_lossy(&applied.stderr));

    for args in [&["node", "remove", "node-2"][..], &["token", "create"][..]] {
        let out = operator.meshctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} on an operator: {stderr}");
        assert!(stderr.contains("needs role signer"), "{args:?}: {stderr}");
    }
    assert!(n1.meshctl(&["node", "remove", "node-2"]).status.success(), "the signer may remove a node");

    // The operator leaves the mesh: the route it wrote stays in force, flagged for review.
    n1.eventually(LIVENESS, "node-1 holds the operator's route", || {
        (n1.meshctl_json(&["route", "list"]).as_array()?.len() == 1).then_some(())
    });
    assert!(n1.meshctl(&["node", "remove", "node-3"]).status.success());
    let routes = n1.meshctl_json(&["route", "list"]);
    assert_eq!(routes[0]["origin"], "node-3");
    assert_eq!(routes[0]["origin_removed"], true, "{routes}");
    let table = String::from_utf8(n1.meshctl(&["route", "list"]).stdout).expect("utf-8");
    assert!(table.contains("node-3 (removed)"), "{table}");
    let history = n1.meshctl_json(&["route", "history", "web"]);
    assert_eq!(history[0]["origin_removed"], true, "{history}");
    let table = String::from_utf8(n1.meshctl(&["route", "history", "web"]).stdout).expect("utf-8");
    assert!(table.contains("node-3 (removed)"), "{table}");
}
