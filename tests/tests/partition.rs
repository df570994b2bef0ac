//! A real partition: five meshd in their own network namespaces, split 2|3 with
//! nftables, written to on both sides (services, and revisions of one route), healed:
//! every node converges to the same store, sees all five alive, and holds every
//! revision of the route from both sides in its history. Needs root (CI is root); fails
//! loudly without it.

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

/// Revision `tag` of route `shared`: a split whose weights say which it is.
fn apply(n: &Node, weight: u32, extra: &[&str]) -> std::process::Output {
    let file = n.dir.path().join(format!("shared-{weight}.toml"));
    let text = format!(
        "name = \"shared\"\nservice = \"shared\"\n\n[subsets]\nv1 = {{ version = \"v1\" }}\nv2 = {{ version = \"v2\" }}\n\n\
         [[tcp]]\nto = [{{ subset = \"v1\", weight = {weight} }}, {{ subset = \"v2\", weight = 1 }}]\n"
    );
    std::fs::write(&file, text).expect("route file");
    n.meshctl(&[&["route", "apply", "-f", &file.display().to_string()], extra].concat())
}

fn applied(n: &Node, weight: u32) {
    let out = apply(n, weight, &[]);
    assert!(out.status.success(), "apply {weight}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `route history shared` as (id, superseded_by) pairs.
fn history(n: &Node) -> Vec<(String, String)> {
    n.meshctl_json(&["route", "history", "shared"])
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (r["id"].as_str().unwrap_or("").to_owned(), r["superseded_by"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The v1 weight of the route in force on `n`.
fn weight(n: &Node) -> u64 {
    n.meshctl_json(&["route", "get", "shared"])["spec"]["tcp"][0]["to"][0]["weight"].as_u64().unwrap_or(0)
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
    let out = apply(&nodes[0], 1, &["--wait"]);
    assert!(out.status.success(), "revision 1: {}", String::from_utf8_lossy(&out.stderr));

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
    // Both sides apply revisions of one route, acknowledged on each side; node-1 last,
    // so its revision 3 is the latest and wins. --wait with the other side cut off
    // exits 1 and names the members it could not confirm.
    let out = apply(&nodes[0], 2, &["--wait", "--timeout", "5s"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "--wait with members cut off: {said}");
    assert!(said.contains("node-3") && said.contains("node-4") && said.contains("node-5"), "{said}");
    applied(&nodes[2], 12);
    applied(&nodes[2], 13);
    applied(&nodes[0], 3);
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

    // Every revision of both sides, on every node, in time order; node-3's lost to
    // node-1's revision 3, which is in force everywhere.
    let lost = |id: &str| (id.to_owned(), "3@node-1".to_owned());
    let kept = |id: &str| (id.to_owned(), String::new());
    let want = vec![kept("1@node-1"), kept("2@node-1"), lost("2@node-3"), lost("3@node-3"), kept("3@node-1")];
    for n in &nodes {
        n.eventually(CONVERGE, "both sides' revisions in the history", || (history(n) == want).then_some(()));
        assert_eq!(weight(n), 3, "node-1's revision 3 is in force");
    }
    let table = String::from_utf8_lossy(&nodes[3].meshctl(&["route", "history", "shared"]).stdout).into_owned();
    assert!(table.contains("superseded by 3@node-1 at heal"), "{table}");

    // A bare number names two revisions now: refused, both named. The losing side's
    // revision comes back by its name, on every node.
    let out = nodes[0].meshctl(&["route", "rollback", "shared", "--to", "3"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("3@node-1") && said.contains("3@node-3"), "{said}");
    let out = nodes[0].meshctl(&["route", "rollback", "shared", "--to", "3@node-3", "--wait"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("to revision 3@node-3: now revision 4") && said.contains("every member (5)"), "{said}");
    for n in &nodes {
        assert_eq!(weight(n), 13, "node-3's revision 3 restored on {}", n.name);
    }
}
