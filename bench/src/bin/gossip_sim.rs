//! How far one gossip pool scales: the deterministic simulation (`meshd::membership::sim`,
//! meshd's own SWIM core and anti-entropy sessions on a simulated network with 1-4 ms
//! latency and 0.5% loss) at N members. Members join through one seed, one every 10
//! virtual ms. Reported, in virtual seconds: membership converged after the last join; a
//! route write on one member held by every member; a kill -9'd member seen down by every
//! other. And the bytes each member sends per second (SWIM datagrams plus its side of
//! sync exchanges) at rest and during churn (one member restarting with an empty store
//! every virtual second). The peer in the same run is the same simulation at 100
//! members, the size the test suite checks, so the ratios say what growth costs.
//!
//! `cargo run --release -p mesh-bench --bin bench-gossip-sim [-- N...]` (default 1000 5000)

use std::time::Instant;

use meshd::membership::sim::{joined, Sim, SEC};

struct Figures {
    n: usize,
    converge: Option<f64>,
    write: Option<f64>,
    dead: Option<f64>,
    rest: f64,
    churn: f64,
    wall: f64,
}

fn secs(ms: Option<u64>) -> Option<f64> {
    ms.map(|t| t as f64 / 1000.0)
}

/// Bytes per live member per virtual second over `span` ms of running.
fn rate(sim: &mut Sim, span: u64, mut each_second: impl FnMut(&mut Sim, u64)) -> f64 {
    let before = sim.bytes_sent();
    let start = sim.now;
    let mut second = 0;
    while sim.now < start + span {
        each_second(sim, second);
        second += 1;
        let next = sim.now + SEC;
        sim.run_until(next);
    }
    let live = sim.nodes.iter().filter(|n| n.alive).count().max(1);
    (sim.bytes_sent().saturating_sub(before)) as f64 / live as f64 / (span as f64 / 1000.0)
}

fn run(n: usize) -> Figures {
    let wall = Instant::now();
    let limit = 300 * SEC;
    let (mut sim, converge) = joined(n, 42, 0.005, 10, limit);
    let rest = rate(&mut sim, 30 * SEC, |_, _| {});
    sim.write(n / 3, "route/checkout", b"v2");
    let write =
        sim.run_until_true(10, limit, |s| s.nodes.iter().all(|m| !m.alive || m.view.get("route/checkout").is_some()));
    let victim = n - 1;
    let name = sim.nodes[victim].id.name.clone();
    sim.kill(victim);
    let dead =
        sim.run_until_true(100, limit, |s| (0..s.nodes.len()).all(|i| !s.nodes[i].alive || s.sees_down(i, &name)));
    // Churn: one member (never the seed) restarts with an empty store every second.
    let churn = rate(&mut sim, 30 * SEC, |s, second| {
        let i = 1 + (second as usize * 7919) % (n - 2);
        s.restart_empty(i);
        s.join(i, 0);
    });
    Figures {
        n,
        converge: secs(converge),
        write: secs(write),
        dead: secs(dead),
        rest,
        churn,
        wall: wall.elapsed().as_secs_f64(),
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |s| format!("{s:.2}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
        _ => "-".to_owned(),
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).filter(|&n| n >= 3).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 5_000] } else { sizes };
    println!("gossip simulation, 0.5% loss, virtual seconds; bytes per member per virtual second");
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>11} {:>11} {:>8}",
        "N", "converge", "write", "dead", "B/s rest", "B/s churn", "wall s"
    );
    let base = run(100);
    let mut rows = vec![base];
    for n in sizes {
        rows.push(run(n));
    }
    for f in &rows {
        println!(
            "{:>6} {:>9} {:>9} {:>9} {:>11.0} {:>11.0} {:>8.1}",
            f.n,
            show(f.converge),
            show(f.write),
            show(f.dead),
            f.rest,
            f.churn,
            f.wall
        );
    }
    let base = &rows[0];
    for f in &rows[1..] {
        println!(
            "{} vs {} members: converge {}, write {}, dead {}, bytes at rest {}, in churn {}",
            f.n,
            base.n,
            ratio(f.converge, base.converge),
            ratio(f.write, base.write),
            ratio(f.dead, base.dead),
            ratio(Some(f.rest), Some(base.rest)),
            ratio(Some(f.churn), Some(base.churn))
        );
    }
}
