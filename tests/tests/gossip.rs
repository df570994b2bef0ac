//! Gossip with real meshd processes on loopback: membership converges, a killed node is
//! declared dead everywhere, a node that stops is `left`, and store writes reach all.

use std::time::Duration;

use mesh_tests::{Block, Node};
use nix::sys::signal::Signal;

/// Liveness bounds, each ten times or more what the default gossip settings need.
const CONVERGE: Duration = Duration::from_secs(30);
const DETECT: Duration = Duration::from_secs(60);

fn states(n: &Node) -> Vec<(String, String)> {
    n.meshctl_json(&["members"])
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| (m["name"].as_str().unwrap_or("").to_owned(), m["state"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(n: &Node, name: &str) -> Option<String> {
    states(n).into_iter().find(|(m, _)| m == name).map(|(_, s)| s)
}

/// Five nodes: node-1 made the mesh; the others joined with node-1 as their only seed.
fn five(block: &Block) -> Vec<Node> {
    let n1 = Node::start(block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let mut nodes = vec![];
    for i in 2..=5 {
        let token = n1.token(&[]);
        nodes.push(Node::join(block, i, &token, &seed, ""));
    }
    nodes.insert(0, n1);
    for n in &nodes {
        n.eventually(CONVERGE, "all five alive", || {
            let s = states(n);
            (s.len() == 5 && s.iter().all(|(_, st)| st == "alive")).then_some(())
        });
    }
    nodes
}

#[test]
fn five_nodes_converge_a_write_reaches_all_and_a_killed_node_is_dead_everywhere() {
    let block = Block::take();
    let mut nodes = five(&block);

    // A store write on node-1 (a route) reaches every node.
    let route = nodes[0].dir.path().join("route.toml");
    std::fs::write(&route, "service = \"web\"\n").expect("route file");
    let out = nodes[0].meshctl(&["route", "apply", "-f", &route.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let catchup = |n: &Node| -> serde_json::Value {
        let body = rt.block_on(n.client().get("/v1/routes/web/catchup?revision=1")).expect("catchup").body;
        serde_json::from_slice(&body).expect("json")
    };
    nodes[0].eventually(CONVERGE, "the write held by all five", || {
        let c = catchup(&nodes[0]);
        (c["holding"].as_array()?.len() == 5).then_some(())
    });

    // kill -9: every other node lists it dead.
    nodes[4].signal(Signal::SIGKILL);
    nodes[4].wait_exit(Duration::from_secs(10));
    for n in &nodes[..4] {
        n.eventually(DETECT, "node-5 dead", || (state_of(n, "node-5").as_deref() == Some("dead")).then_some(()));
    }
    // The catch-up report skips the dead.
    let c = catchup(&nodes[1]);
    assert_eq!(c["holding"].as_array().map(Vec::len), Some(4), "{c}");

    // A graceful stop: `left`, not dead.
    nodes[3].signal(Signal::SIGTERM);
    assert_eq!(nodes[3].wait_exit(Duration::from_secs(10)).code(), Some(0));
    for n in &nodes[..3] {
        n.eventually(DETECT, "node-4 left", || (state_of(n, "node-4").as_deref() == Some("left")).then_some(()));
    }
}

#[test]
fn a_late_joiner_receives_the_whole_store() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, "");
    // Writes made before node-3 exists.
    for _ in 0..30 {
        n1.token(&[]);
    }
    let entries = |n: &Node| n.meshctl_json(&["status"])["store"]["entries"].as_u64();
    n2.eventually(CONVERGE, "node-2 has node-1's entries", || (entries(&n2) >= entries(&n1)).then_some(()));
    let n3 = Node::join(&block, 3, &n1.token(&[]), &seed, "");
    n3.eventually(CONVERGE, "node-3 caught up", || {
        let want = entries(&n1)?;
        (entries(&n3)? >= want && entries(&n2)? >= want).then_some(())
    });
}
