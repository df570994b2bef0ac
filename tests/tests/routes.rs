//! Routes with real meshd processes: a TCP split enforced by another node's outbound,
//! `--wait`, invalid files, rollback, history across a restart.
//!
//! Backends are TCP servers in this process that send their name and close.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use mesh_tests::{Block, Node};
use nix::sys::signal::Signal;

const CONVERGE: Duration = Duration::from_secs(30);

/// A server that writes `name` to every connection and closes it.
fn namer(addr: SocketAddr, name: &'static str) {
    let listener = TcpListener::bind(addr).expect("backend listen");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut conn, name.as_bytes());
        }
    });
}

fn write(node: &Node, file: &str, text: &str) -> String {
    let path = node.dir.path().join(file);
    std::fs::write(&path, text).expect("file");
    path.display().to_string()
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three nodes; `echo` v1 on node-2 and v2 on node-3, at the same port.
fn mesh(block: &Block) -> (Node, Node, Node, u16) {
    let n1 = Node::start(block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(block, 2, &n1.token(&[]), &seed, "");
    let n3 = Node::join(block, 3, &n1.token(&[]), &seed, "");
    let probe = TcpListener::bind((block.node_ip(2), 0)).expect("port");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    namer(SocketAddr::from((block.node_ip(2), port)), "v1");
    namer(SocketAddr::from((block.node_ip(3), port)), "v2");
    for (node, version) in [(&n2, "v1"), (&n3, "v2")] {
        let ip = block.node_ip(if version == "v1" { 2 } else { 3 });
        let file = write(
            node,
            "echo.toml",
            &format!("name = \"echo\"\naddress = \"{ip}\"\nport = {port}\nlabels = {{ version = \"{version}\" }}\n"),
        );
        ok(node.meshctl(&["service", "register", "-f", &file]));
    }
    for n in [&n1, &n2, &n3] {
        n.wait_healthy("echo", 2, CONVERGE);
    }
    (n1, n2, n3, port)
}

fn vip(node: &Node, name: &str) -> Ipv4Addr {
    node.vip(name, CONVERGE)
}

/// Which version answers one new connection.
fn ask(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut name = String::new();
    s.read_to_string(&mut name).expect("a name");
    name
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "name = \"echo\"\nservice = \"echo\"\n\n[subsets]\nv1 = {{ version = \"v1\" }}\nv2 = {{ version = \"v2\" }}\n\n\
         [[tcp]]\nto = [{{ subset = \"v1\", weight = {v1} }}, {{ subset = \"v2\", weight = {v2} }}]\n"
    )
}

#[test]
fn a_split_applied_on_one_node_is_enforced_by_anothers_outbound() {
    let block = Block::take();
    let (n1, _n2, n3, port) = mesh(&block);
    let file = write(&n1, "route.toml", &split(80, 20));
    let out = ok(n1.meshctl(&["route", "apply", "-f", &file, "--wait"]));
    assert!(out.contains("applied route echo revision 1"), "{out}");
    assert!(out.contains("every member (3) holds revision 1"), "{out}");

    // Node-3's outbound, 1,000 connections: 80/20 within 5 standard deviations (±63).
    let addr = SocketAddr::from((vip(&n3, "echo"), port));
    let v1 = (0..1000).filter(|_| ask(addr) == "v1").count();
    assert!((737..=863).contains(&v1), "{v1} of 1000 to v1 for a weight of 80");

    // HTTP rules for a TCP service: refused by meshd, which knows the protocol.
    let http = write(&n1, "http.toml", &split(1, 1).replace("[[tcp]]", "[[http]]"));
    let out = n1.meshctl(&["route", "apply", "-f", &http]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("speaks tcp"));

    // A pinned subset name reaches only its subset.
    let v2 = SocketAddr::from((vip(&n3, "v2.echo"), port));
    assert!((0..20).all(|_| ask(v2) == "v2"));
}

#[test]
fn an_invalid_file_changes_nothing_and_names_the_key_and_line() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let good = write(&n1, "route.toml", &split(1, 0));
    ok(n1.meshctl(&["route", "apply", "-f", &good]));
    let bad = write(&n1, "bad.toml", &split(1, 0).replace("weight = 0", "weight = -5"));
    let out = n1.meshctl(&["route", "apply", "-f", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:9") && err.contains("weight"), "{err}");
    let undefined = write(&n1, "undef.toml", &split(1, 1).replace("subset = \"v2\"", "subset = \"v3\""));
    let out = n1.meshctl(&["route", "apply", "-f", &undefined]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp[0].to[1].subset"));
    let route = n1.meshctl_json(&["route", "get", "echo"]);
    assert_eq!(route["revision"], 1, "still the first revision");
    // A dry run prints the diff and stores nothing.
    let other = write(&n1, "other.toml", &split(1, 1));
    let out = ok(n1.meshctl(&["route", "apply", "--dry-run", "-f", &other]));
    assert!(out.contains("revision 1 would become 2") && out.contains("~ tcp[0].to[v2].weight: 0 -> 1"), "{out}");
    assert_eq!(n1.meshctl_json(&["route", "get", "echo"])["revision"], 1);
}

#[test]
fn rollback_restores_the_previous_content_everywhere_and_history_survives_a_restart() {
    let block = Block::take();
    let (mut n1, _n2, n3, _port) = mesh(&block);
    let first = write(&n1, "one.toml", &split(1, 0));
    let second = write(&n1, "two.toml", &split(0, 1));
    ok(n1.meshctl(&["route", "apply", "-f", &first]));
    ok(n1.meshctl(&["route", "apply", "-f", &second, "--wait"]));
    // A dry run shows what the rollback would change and stores nothing.
    let out = ok(n1.meshctl(&["route", "rollback", "echo", "--dry-run"]));
    assert!(out.contains("revision 2 would become 3"), "{out}");
    assert!(out.contains("~ tcp[0].to[v1].weight: 0 -> 1"), "which rule and subset: {out}");
    assert_eq!(n1.meshctl_json(&["route", "get", "echo"])["revision"], 2);
    let out = ok(n1.meshctl(&["route", "rollback", "echo", "--wait"]));
    assert!(out.contains("now revision 3") && out.contains("tcp[0].to[v2].weight: 1 -> 0"), "{out}");
    assert!(out.contains("every member (3) holds revision 3"), "{out}");
    let want = n1.meshctl_json(&["route", "get", "echo", "--revision", "1"])["spec"].clone();
    n3.eventually(CONVERGE, "node-3 holds the rolled-back content", || {
        let r = n3.meshctl_json(&["route", "get", "echo"]);
        (r["revision"] == 3 && r["spec"] == want).then_some(())
    });

    n1.signal(Signal::SIGTERM);
    assert_eq!(n1.wait_exit(CONVERGE).code(), Some(0));
    let n1 = n1.run();
    let history = n1.meshctl_json(&["route", "history", "echo"]);
    let revisions: Vec<u64> =
        history.as_array().expect("a list").iter().filter_map(|r| r["revision"].as_u64()).collect();
    assert_eq!(revisions, vec![1, 2, 3], "the history survives a restart");
    let table = ok(n1.meshctl(&["route", "history", "echo"]));
    assert!(table.contains("node-1"), "the origin is named: {table}");
    assert!(table.contains("rollback to 1"), "a rollback says so: {table}");
    assert_eq!(history[2]["rollback_of"], 1, "{history}");
}

#[test]
fn reapplying_the_same_route_stores_nothing_and_a_change_names_its_rule_and_subset() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let file = write(&n1, "route.toml", &split(80, 20));
    ok(n1.meshctl(&["route", "apply", "-f", &file]));
    let out = ok(n1.meshctl(&["route", "apply", "-f", &file]));
    assert!(out.contains("unchanged, still revision 1"), "{out}");
    let history = n1.meshctl_json(&["route", "history", "echo"]);
    assert_eq!(history.as_array().map(Vec::len), Some(1), "nothing stored: {history}");
    let out = ok(n1.meshctl(&["route", "apply", "--dry-run", "-f", &file]));
    assert!(out.contains("unchanged, still revision 1"), "{out}");

    let changed = write(&n1, "changed.toml", &split(50, 50));
    let out = ok(n1.meshctl(&["route", "apply", "-f", &changed]));
    assert!(out.contains("~ tcp[0].to[v1].weight: 80 -> 50"), "{out}");
    assert!(out.contains("~ tcp[0].to[v2].weight: 20 -> 50"), "{out}");
}

#[test]
fn routes_that_cannot_work_are_applied_with_warnings_and_linted() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    // No service echo yet: a route may come first, with a warning.
    let file = write(&n1, "route.toml", &split(1, 1));
    let out = ok(n1.meshctl(&["route", "apply", "-f", &file]));
    assert!(out.contains("warning: service echo has no instance"), "{out}");
    let lint = n1.meshctl(&["route", "lint"]);
    assert_eq!(lint.status.code(), Some(1), "problems found: exit 1");
    assert!(String::from_utf8_lossy(&lint.stdout).contains("route echo: service echo has no instance"));

    // Once v1 registers, subset v2 still selects nothing.
    let port = TcpListener::bind((block.node_ip(1), 0)).expect("port").local_addr().expect("addr").port();
    let svc = write(
        &n1,
        "echo.toml",
        &format!(
            "name = \"echo\"\naddress = \"{}\"\nport = {port}\nlabels = {{ version = \"v1\" }}\n",
            block.node_ip(1)
        ),
    );
    ok(n1.meshctl(&["service", "register", "-f", &svc]));
    let lint = n1.meshctl(&["route", "lint", "echo"]);
    let text = String::from_utf8_lossy(&lint.stdout);
    assert_eq!(lint.status.code(), Some(1), "{text}");
    assert!(text.contains("subset v2 (version=v2) selects no instance of echo"), "{text}");
    assert!(!text.contains("subset v1"), "{text}");

    // Fixed: no problems, exit 0.
    let fixed = write(
        &n1,
        "fixed.toml",
        &split(1, 0).replace("v2 = { version = \"v2\" }\n", "").replace(", { subset = \"v2\", weight = 0 }", ""),
    );
    ok(n1.meshctl(&["route", "apply", "-f", &fixed]));
    let out = ok(n1.meshctl(&["route", "lint"]));
    assert!(out.contains("no problems in 1 route"), "{out}");
    assert_eq!(n1.meshctl(&["route", "lint", "nope"]).status.code(), Some(1));
}

#[test]
fn routes_that_break_the_model_or_the_bounds_are_refused_and_change_nothing() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    ok(n1.meshctl(&["route", "apply", "-f", &write(&n1, "route.toml", &split(1, 1))]));

    // A second route for the same service.
    let other = write(&n1, "other.toml", &split(1, 0).replace("name = \"echo\"", "name = \"other\""));
    let out = n1.meshctl(&["route", "apply", "-f", &other]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("other.toml:1") && err.contains("name = \"echo\""), "{err}");

    // Over the 64 KiB a route may take: 413, exit 2, the limit named.
    let subsets: String = (0..3000).map(|i| format!("s{i} = {{ version = \"v{i}\" }}\n")).collect();
    let big = format!("service = \"echo\"\n[subsets]\n{subsets}[[tcp]]\nto = [{{ subset = \"s1\" }}]\n");
    let big = write(&n1, "big.toml", &big);
    let out = n1.meshctl(&["route", "apply", "-f", &big]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("65536") && err.contains("413"), "{err}");

    // An endless file is not read to the end.
    let out = n1.meshctl(&["route", "apply", "-f", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 1024 KiB"));
    let out = n1.meshctl(&["service", "register", "-f", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2));

    let history = n1.meshctl_json(&["route", "history", "echo"]);
    assert_eq!(history.as_array().map(Vec::len), Some(1), "nothing changed: {history}");
    assert_eq!(n1.meshctl_json(&["route", "list"]).as_array().map(Vec::len), Some(1));
}

#[test]
fn wait_names_a_node_that_is_down() {
    let block = Block::take();
    let (n1, _n2, mut n3, _port) = mesh(&block);
    n3.signal(Signal::SIGKILL);
    let _ = n3.wait_exit(CONVERGE);
    let file = write(&n1, "route.toml", &split(1, 1));
    let out = n1.meshctl(&["route", "apply", "-f", &file, "--wait", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node-3"), "names the lagging node: {err}");
}

/// `--wait` with a member dead: it was not asked, so the command does not claim it holds
/// the revision: exit 1 naming it; `--alive-only` succeeds and names it as unconfirmed.
#[test]
fn wait_names_a_dead_member_as_unconfirmed_and_fails_unless_alive_only() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    let mut n3 = Node::join(&block, 3, &n1.token(&[]), &n1.seed(), "");
    let dead = |n: &Node| {
        n.meshctl_json(&["members"])
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "node-3" && m["state"] == "dead"))
    };
    n1.eventually(CONVERGE, "node-1 sees node-3", || {
        n1.meshctl_json(&["members"]).as_array().is_some_and(|m| m.len() == 3).then_some(())
    });
    n3.signal(Signal::SIGKILL);
    let _ = n3.wait_exit(CONVERGE);
    n1.eventually(CONVERGE, "node-1 holds node-3 dead", || dead(&n1).then_some(()));
    let route = write(&n1, "web.route.toml", "service = \"web\"\n[[http]]\ntimeout = \"2s\"\n");
    let out = n1.meshctl(&["route", "apply", "-f", &route, "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not confirmed by node-3") && stderr.contains("every alive member (2)"), "{stderr}");
    let route = write(&n1, "web.route.toml", "service = \"web\"\n[[http]]\ntimeout = \"3s\"\n");
    let out = n1.meshctl(&["route", "apply", "-f", &route, "--wait", "--alive-only"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("every alive member (2) holds revision 2") && stdout.contains("not confirmed (dead): node-3"),
        "{stdout}"
    );
    drop(n2);
}
