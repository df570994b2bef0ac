//! The time from `meshctl service register` on node 1 until node N's DNS answers the
//! new name with an address: what an operator waits before clients elsewhere find a
//! new service. N real meshd processes on loopback, RUNS services, median and worst.
//!
//! `cargo build --release --workspace --bins && target/release/bench-dns-register [N RUNS]`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use mesh_bench::{a_query, answer_count, median, poll, Cluster};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut c = Cluster::prepare(233, n);
    c.start();
    c.converge(Duration::from_secs(60)).expect("the cluster converges");
    let sock = UdpSocket::bind((c.ip(n).as_str(), 0)).expect("udp");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let dns = c.dns(n);
    let resolves = |name: &str| {
        let mut buf = [0u8; 512];
        sock.send_to(&a_query(name), dns).is_ok()
            && sock.recv(&mut buf).ok().and_then(|len| answer_count(&buf[..len])).unwrap_or(0) > 0
    };
    let mut times = Vec::new();
    for r in 0..runs {
        let name = format!("svc{r}");
        let file = c.path().join(format!("{name}.toml"));
        std::fs::write(&file, format!("name = \"{name}\"\nport = {}\n", 10_000 + r)).expect("service file");
        let file = file.display().to_string();
        let started = Instant::now();
        let out = c.meshctl_raw(1, &["service", "register", "-f", &file]).expect("meshctl");
        assert!(out.status.success(), "register: {}", String::from_utf8_lossy(&out.stderr));
        poll(Duration::from_secs(30), || resolves(&format!("{name}.mesh"))).expect("node N answers");
        times.push(started.elapsed());
    }
    let worst = times.iter().max().copied().unwrap_or_default();
    println!(
        "register on n1 -> first A answer on n{n}: median {:.1} ms, worst {:.1} ms ({runs} services, {n} nodes)",
        median(times).as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
}
