//! Deterministic simulation of membership and replication (`meshd::membership::sim`):
//! the same sans-IO core and anti-entropy sessions that meshd runs, hundreds of members,
//! a virtual clock, and a simulated network with latency, loss and partitions. No
//! sockets, no sleeping: a seed reproduces a run exactly.

use meshd::membership::sim::{joined, Sim, SEC};

/// n members join through member 0, one every 10 ms; membership must converge within
/// 120 virtual s of the last join.
fn converged(n: usize, seed: u64, loss: f64) -> (Sim, u64) {
    let (sim, took) = joined(n, seed, loss, 10, 120 * SEC);
    let took =
        took.unwrap_or_else(|| panic!("membership does not converge (fewest members known: {})", sim.min_known()));
    (sim, took)
}

fn within(sim: &mut Sim, step: u64, limit: u64, what: &str, done: impl Fn(&Sim) -> bool) -> u64 {
    sim.run_until_true(step, limit, done).unwrap_or_else(|| {
        panic!("{what}: not within {} virtual s (fewest members known: {})", limit / SEC, sim.min_known())
    })
}

#[test]
fn a_hundred_members_converge_and_a_killed_one_is_dead_everywhere() {
    let (mut sim, took) = converged(100, 1, 0.0);
    eprintln!("100 members: converged {:.1} virtual s after the last join", took as f64 / 1000.0);
    sim.kill(42);
    let detect = within(&mut sim, 100, 60 * SEC, "n42 declared down everywhere", |s| {
        (0..s.nodes.len()).filter(|&i| s.nodes[i].alive).all(|i| s.sees_down(i, "n42"))
    });
    eprintln!("100 members: a killed member down everywhere after {:.1} virtual s", detect as f64 / 1000.0);
}

#[test]
fn five_hundred_members_converge() {
    let (_sim, took) = converged(500, 7, 0.0);
    eprintln!("500 members: converged {:.1} virtual s after the last join", took as f64 / 1000.0);
}

#[test]
fn no_member_is_falsely_declared_dead_at_five_percent_loss() {
    let (mut sim, _) = converged(100, 3, 0.05);
    for n in &mut sim.nodes {
        n.downs_seen = 0;
    }
    let until = sim.now + 120 * SEC;
    sim.run_until(until);
    let false_downs: u64 = sim.nodes.iter().map(|n| n.downs_seen).sum();
    assert_eq!(false_downs, 0, "live members declared down at 5% loss");
    assert!(sim.converged());
}

#[test]
fn writes_reach_everyone_and_a_late_joiner_receives_the_whole_store() {
    let (mut sim, _) = converged(100, 5, 0.01);
    sim.write(3, "route/first", b"v");
    let one = within(&mut sim, 10, 60 * SEC, "one write everywhere", |s| {
        s.nodes.iter().all(|n| n.view.get("route/first").is_some())
    });
    eprintln!("100 members, 1% loss: one write everywhere after {:.2} virtual s", one as f64 / 1000.0);
    for i in 0..200 {
        sim.write(i % 97, &format!("route/r{i}"), format!("v{i}").as_bytes());
        let next = sim.now + 5;
        sim.run_until(next);
    }
    let spread = within(&mut sim, 100, 60 * SEC, "every store equal", |s| {
        let d = s.nodes[0].view.digest();
        s.nodes.iter().all(|n| n.view.digest() == d && n.view.len() == 201)
    });
    eprintln!("100 members, 1% loss: 200 writes everywhere {:.1} virtual s after the last", spread as f64 / 1000.0);

    // A late joiner: broadcasts are long over; anti-entropy brings it everything.
    let newcomer = sim.nodes.len() - 1;
    sim.restart_empty(newcomer);
    assert!(sim.nodes[newcomer].view.is_empty(), "the newcomer starts with nothing");
    sim.join(newcomer, 0);
    let caught = within(&mut sim, 100, 60 * SEC, "the late joiner holds the whole store", |s| {
        s.nodes[newcomer].view.digest() == s.nodes[0].view.digest()
    });
    eprintln!("late joiner: whole store after {:.1} virtual s", caught as f64 / 1000.0);
}

#[test]
fn a_partition_heals_and_both_sides_converge() {
    let (mut sim, _) = converged(40, 9, 0.0);
    let n = sim.nodes.len();
    for a in 0..n / 2 {
        for b in n / 2..n {
            sim.cut.insert((a, b));
        }
    }
    let split = sim.now + 30 * SEC;
    // Writes on both sides, including the same key.
    sim.write(1, "route/shared", b"left");
    sim.write(30, "route/shared", b"right");
    sim.write(2, "route/left-only", b"l");
    sim.write(31, "route/right-only", b"r");
    sim.run_until(split);
    sim.cut.clear();
    within(&mut sim, 100, 120 * SEC, "members and stores converge after the heal", |s| {
        let d = s.nodes[0].view.digest();
        s.converged() && s.nodes.iter().all(|n| n.view.digest() == d && n.view.len() == 3)
    });
}
