//! The worst header regex a route may carry: the largest pattern of the report's family
//! (`(x|y)?` repeated; the report's 9,000 repeats took a host past 6 GB) that validation
//! accepts, compiled as the data plane compiles it (`mesh_proto::route::header_regex`),
//! matched on 8 threads at once against a 64 KB value, a 4,000-byte one (the report's)
//! and the longest value it can still match (the worst case). Peer, same run: the same
//! pattern compiled with the regex crate's defaults (capture groups, 10 MiB limits), as
//! routes were before, on one thread (on 8 it needs gigabytes).
//!
//! `cargo run --release -p mesh-bench --bin bench-regex [-- MATCHES]`

use std::time::Instant;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// Calls `is_match` `n` times on each of `threads` threads; mean µs per match.
fn run(is_match: &(dyn Fn(&str) -> bool + Sync), value: &str, n: usize, threads: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n {
                    std::hint::black_box(is_match(value));
                }
            });
        }
    });
    started.elapsed().as_secs_f64() * 1e6 / (threads * n) as f64
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let (mut lo, mut hi) = (1usize, 20_000usize);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if mesh_proto::route::header_regex(&"(x|y)?".repeat(mid)).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let pattern = "(x|y)?".repeat(lo);
    println!("largest accepted (x|y)? pattern: {lo} repeats, {} bytes (the report's: 9,000)", pattern.len());
    let values = [
        ("64 KB", "x".repeat(64 * 1024 - 1) + "z"),
        ("4,000 B", "x".repeat(3_999) + "z"),
        ("its longest", "x".repeat(lo - 1) + "z"),
    ];
    println!("{:<44} {:>12} {:>9}", "", "µs / match", "RSS MiB");
    let start = rss_mib();
    let bounded = mesh_proto::route::header_regex(&pattern).expect("accepted");
    let mut worst = 0.0f64;
    for (what, value) in &values {
        let us = run(&|v| bounded.is_match(v), value, n, 8);
        worst = worst.max(us);
        println!("{:<44} {us:>12.0} {:>9.0}", format!("mesh, 8 threads, {what}"), rss_mib());
    }
    let grew = rss_mib() - start;
    let defaults = regex::Regex::new(&format!("^(?:{pattern})$")).expect("the defaults take it");
    let before = rss_mib();
    let mut peer_worst = 0.0f64;
    for (what, value) in &values {
        let us = run(&|v| defaults.is_match(v), value, n.min(3), 1);
        peer_worst = peer_worst.max(us);
        println!("{:<44} {us:>12.0} {:>9.0}", format!("regex defaults, 1 thread, {what}"), rss_mib());
    }
    println!(
        "worst case: mesh {worst:.0} µs (8 threads), defaults {peer_worst:.0} µs (1 thread): {:.3}x; memory grown: mesh {grew:.0} MiB, defaults {:.0} MiB",
        worst / peer_worst,
        rss_mib() - before
    );
}
