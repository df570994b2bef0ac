//! A real partition: five meshd in their own network namespaces, split 2|3 with
//! nftables, written to on both sides, healed: every node converges to the same store
//! and sees all five alive. Needs root (CI is root); fails loudly without it.

use std::time::Duration;

use mesh_tests::netns::Network;
use mesh_tests::{Block, Node};

const CONVERGE: Duration = Duration::from_secs(60);

fn alive(n: &Node) -> Vec<String> {
    n.meshctl_json(&["members"])
        .as_array()
        .map(|a| {
            a.iter().filter(|m| m["state"] == "alive").filter_map(|m| m["name"].as_str().map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

fn store(n: &Node) -> (u64, String) {
    let s = n.meshctl_json(&["status"]);
    (s["store"]["entries"].as_u64().unwrap_or(0), s["store"]["digest"].as_str().unwrap_or("").to_owned())
}

#[test]
fn a_split_mesh_written_on_both_sides_converges_after_the_heal() {
    let block = Block::take();
    let net = Network::new(block.n, 5);
    let n1 = {
        let node = net.node(&block, 1, "", "");
        let init = node.meshd(&["init"]);
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        node.run()
    };
    let mut nodes = vec![n1];
    for i in 2..=5 {
        // node-3 is a signer too, so that the other side of the split can write.
        let args: &[&str] = if i == 3 { &["--signer"] } else { &[] };
        let token = nodes[0].token(args);
        let node = net.node(&block, i, &net.seed(1), "");
        let out = node.meshd(&["join", &token]);
        assert!(out.status.success(), "join node-{i}: {}", String::from_utf8_lossy(&out.stderr));
        nodes.push(node.run());
    }
    for n in &nodes {
        n.eventually(CONVERGE, "five alive", || (alive(n).len() == 5).then_some(()));
    }

    net.partition(&[1, 2]);
    // Each side sees the other go.
    nodes[0].eventually(CONVERGE, "node-1 sees node-3 gone", || {
        (!alive(&nodes[0]).contains(&"node-3".to_owned())).then_some(())
    });
    nodes[2].eventually(CONVERGE, "node-3 sees node-1 gone", || {
        (!alive(&nodes[2]).contains(&"node-1".to_owned())).then_some(())
    });
    // Writes on both sides while split (a service registered on each side; join tokens
    // no longer replicate: they stay on the signer that made them).
    for (i, name) in [(0, "left"), (2, "right")] {
        let file = nodes[i].dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, format!("name = \"{name}\"\nport = 8080\n")).expect("service file");
        let out = nodes[i].meshctl(&["service", "register", "-f", &file.display().to_string()]);
        assert!(out.status.success(), "register {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    nodes[1].eventually(CONVERGE, "node-2 has node-1's write", || (store(&nodes[1]) == store(&nodes[0])).then_some(()));
    assert_ne!(store(&nodes[0]), store(&nodes[2]), "the sides differ while split");

    net.heal();
    for n in &nodes {
        n.eventually(CONVERGE, "five alive again", || (alive(n).len() == 5).then_some(()));
    }
    let want = store(&nodes[0]);
    for n in &nodes {
        n.eventually(CONVERGE, "the same store everywhere", || (store(n) == store(&nodes[0])).then_some(()));
    }
    assert!(want.0 > 0);
}
