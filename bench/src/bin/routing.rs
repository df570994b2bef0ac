//! The time from `meshctl route apply` on one node until every node holds (and so
//! enforces: the proxy's tables are rebuilt with the snapshot that brings it) the new
//! revision, at 3 and 10 nodes: the wall time of `meshctl route apply --wait`, which
//! returns once `/v1/routes/NAME/catchup` finds every member holding it. Median of RUNS
//! applies. Goal: under 1 s at 10 nodes.
//!
//! `cargo build --release --workspace --bins && target/release/bench-routing [RUNS]`

use std::time::{Duration, Instant};

use mesh_bench::{median, Cluster};

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    for (n, subnet) in [(3usize, 238u8), (10, 240)] {
        let mut c = Cluster::prepare(subnet, n);
        c.start();
        c.converge(Duration::from_secs(60)).expect("the cluster converges");
        let mut walls = Vec::new();
        for r in 0..runs {
            let file = c.path().join("route.toml");
            let w = r % 10;
            std::fs::write(
                &file,
                format!(
                    "name = \"reviews\"\nservice = \"reviews\"\n[subsets]\nv1 = {{ version = \"v1\" }}\nv2 = {{ version = \"v2\" }}\n\
                     [[tcp]]\nto = [{{ subset = \"v1\", weight = {} }}, {{ subset = \"v2\", weight = {w} }}]\n",
                    10 - w
                ),
            )
            .expect("route file");
            let started = Instant::now();
            let out = c
                .meshctl_raw(1, &["route", "apply", "-f", &file.display().to_string(), "--wait", "--timeout", "30s"])
                .expect("meshctl");
            let wall = started.elapsed();
            assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
            walls.push(wall);
        }
        let worst = walls.iter().max().copied().unwrap_or_default();
        println!(
            "{n:>2} nodes: route apply -> every node holds it: median {:.0} ms, worst {:.0} ms ({runs} applies)",
            median(walls).as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3
        );
    }
}
