//! The service catalog with real meshd processes: registration spreads by gossip,
//! survives restarts, health checks decide health on the owning node, a dead node's
//! instances are unhealthy everywhere.

use std::time::Duration;

use mesh_tests::{Block, Node};
use nix::sys::signal::Signal;

const CONVERGE: Duration = Duration::from_secs(30);

fn two(block: &Block) -> (Node, Node) {
    let n1 = Node::start(block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(block, 2, &n1.token(&[]), &seed, "");
    n1.eventually(CONVERGE, "two alive", || {
        let m = n1.meshctl_json(&["members"]);
        (m.as_array()?.iter().filter(|m| m["state"] == "alive").count() == 2).then_some(())
    });
    (n1, n2)
}

/// The instance of `service` on `node`, as `observer` lists it.
fn instance(observer: &Node, service: &str, node: &str) -> Option<serde_json::Value> {
    let s = observer.meshctl_json(&["services"]);
    s.as_array()?.iter().find(|s| s["name"] == service)?["instances"]
        .as_array()?
        .iter()
        .find(|i| i["node"] == node)
        .cloned()
}

fn register(node: &Node, text: &str) -> std::process::Output {
    let file = node.dir.path().join("svc.toml");
    std::fs::write(&file, text).expect("service file");
    node.meshctl(&["service", "register", "-f", &file.display().to_string()])
}

#[test]
fn a_registered_service_spreads_survives_a_restart_and_deregisters_everywhere() {
    let block = Block::take();
    let (n1, mut n2) = two(&block);
    let out = register(&n2, "name = \"reviews\"\nport = 9080\nprotocol = \"http\"\nlabels = { version = \"v1\" }\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let seen = n1.eventually(CONVERGE, "node-1 lists reviews on node-2", || instance(&n1, "reviews", "node-2"));
    assert_eq!(seen["port"], 9080);
    assert_eq!(seen["healthy"], true, "no check: healthy while its node is alive");
    assert_eq!(seen["labels"]["version"], "v1");
    let table = String::from_utf8(n1.meshctl(&["services"]).stdout).expect("utf-8");
    assert!(
        table.lines().any(|l| l.starts_with("reviews") && l.contains("node-2") && l.contains("healthy")),
        "{table}"
    );

    // Each host gives the service a virtual IP from its range.
    let vip = |n: &Node| -> Option<String> {
        let s = n.meshctl_json(&["services"]);
        s.as_array()?.iter().find(|s| s["name"] == "reviews")?["vip"].as_str().map(str::to_owned)
    };
    let prefix = format!("127.{}.", block.n);
    let v1 = n1.eventually(CONVERGE, "node-1 allocates a VIP", || vip(&n1));
    assert!(v1.starts_with(&prefix), "{v1} in {prefix}0.0/16");
    let before = n2.eventually(CONVERGE, "node-2 allocates a VIP", || vip(&n2));

    // A restart keeps the service and its virtual IP.
    n2.signal(Signal::SIGTERM);
    assert_eq!(n2.wait_exit(CONVERGE).code(), Some(0));
    let n2 = n2.run();
    assert!(instance(&n2, "reviews", "node-2").is_some(), "registered services survive a restart");
    assert_eq!(n2.eventually(CONVERGE, "VIP after restart", || vip(&n2)), before, "stable across restarts");

    // Deregistered: gone everywhere.
    let out = n2.meshctl(&["service", "deregister", "reviews"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n1.eventually(CONVERGE, "reviews gone from node-1", || instance(&n1, "reviews", "node-2").is_none().then_some(()));
    assert_eq!(n2.meshctl(&["service", "deregister", "reviews"]).status.code(), Some(1), "unknown now");
}

#[test]
fn a_bad_service_file_names_its_key_and_line_and_changes_nothing() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    for (text, expect) in [
        ("name = \"web\"\nport = 0\n", "svc.toml:2: port"),
        ("name = \"web\"\nport = 80\ncolour = \"red\"\n", "svc.toml:3: unknown key 'colour'"),
        ("name = \"web\"\nport = 80\ncheck = { interval = \"1s\" }\n", "svc.toml:3: check"),
    ] {
        let out = register(&n1, text);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{expect:?} in {err}");
    }
    assert_eq!(n1.meshctl_json(&["services"]), serde_json::json!([]));
}

#[test]
fn health_follows_the_check_and_a_killed_node_is_unhealthy_everywhere() {
    let block = Block::take();
    let (n1, mut n2) = two(&block);
    // A service that listens, checked by TCP every 200 ms.
    let listener = std::net::TcpListener::bind((block.node_ip(2), 0)).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let text = format!(
        "name = \"db\"\naddress = \"{}\"\nport = {}\ncheck = {{ tcp = \"{addr}\", interval = \"200ms\" }}\n",
        addr.ip(),
        addr.port()
    );
    assert!(register(&n2, &text).status.success());
    n1.eventually(CONVERGE, "db healthy on node-1's view", || {
        (instance(&n1, "db", "node-2")?["healthy"] == true).then_some(())
    });

    // The owning node counts its checks and the transition.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let metrics =
        String::from_utf8(rt.block_on(n2.client().get("/metrics")).expect("metrics").body.to_vec()).expect("utf-8");
    assert!(metrics.contains("mesh_health_transitions_total{service=\"db\",result=\"healthy\"} 1"), "{metrics}");
    assert!(metrics.contains("mesh_health_checks_total{service=\"db\",result=\"pass\"}"), "{metrics}");

    // The service goes away: unhealthy after `fall` failures, everywhere.
    drop(listener);
    n1.eventually(CONVERGE, "db unhealthy once its port is closed", || {
        (instance(&n1, "db", "node-2")?["healthy"] == false).then_some(())
    });

    // Back, then the whole node dies: its instances are unhealthy on every other node.
    let listener = std::net::TcpListener::bind(addr).expect("listen again");
    n1.eventually(CONVERGE, "db healthy again", || (instance(&n1, "db", "node-2")?["healthy"] == true).then_some(()));
    n2.signal(Signal::SIGKILL);
    n2.wait_exit(CONVERGE);
    n1.eventually(Duration::from_secs(60), "a dead node's instance is unhealthy", || {
        (instance(&n1, "db", "node-2")?["healthy"] == false).then_some(())
    });
    drop(listener);
}

#[test]
fn config_services_are_declared_at_start_and_cannot_be_deregistered() {
    let block = Block::take();
    let extra = "[[service]]\nname = \"web\"\nport = 8080\n";
    let n1 = Node::start(&block, 1, extra);
    let web = instance(&n1, "web", "node-1").expect("declared by the config");
    assert_eq!(web["port"], 8080);
    let out = n1.meshctl(&["service", "deregister", "web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("meshd.toml"));
    assert_eq!(n1.meshctl_json(&["status"])["services"], 1);
}
