//! What telemetry costs the data path, in one invocation: the same HTTP load (wrk against
//! nginx) through three meshd pairs: a baseline build from before per-request telemetry
//! (`BENCH_BASELINE=DIR` holds its `meshd` and `meshctl`; skipped when unset), this build
//! (the `istio_*` metrics from both sides and the traffic summaries, always on), and this
//! build with traces sampled at 1% and exported over OTLP/HTTP to a collector that
//! accepts everything; then the first setup again, to show the drift between the first
//! and the last pair (the noise of the run). Requests/s, p50/p99 and meshd's CPU seconds per 1,000 requests;
//! load and backends on core 0, every meshd on core 1.
//!
//! `cargo build --release --workspace --bins && BENCH_BASELINE=/path/to/old/release \
//!  target/release/bench-telemetry [SECONDS]` (needs `apt-get install wrk nginx-light`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use mesh_bench::{bin, cpu_seconds, nginx, pin, poll, wrk, Cluster, Procs};

const SUBNET: u8 = 240;

/// An OTLP/HTTP collector that reads each export and answers 200 (core 0): spans seen.
fn collector(listener: TcpListener) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).map_or(true, |n| n == 0) {
                            return;
                        }
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    requests
}

/// A pair of meshd from `bins` with `extra` config, an http service on node 2 in front
/// of `web`: the address to load through node 1, and the pids.
fn pair(subnet: u8, bins: &std::path::Path, extra: &str, web: SocketAddr) -> (Cluster, SocketAddr, Vec<u32>) {
    let mut cluster = Cluster::prepare_with(subnet, &["1".to_owned(), "1".to_owned()], bins, extra);
    cluster.start();
    cluster.converge(Duration::from_secs(30)).expect("two meshd converge");
    let file = cluster.path().join("web.toml");
    std::fs::write(
        &file,
        format!("name = \"web\"\naddress = \"{}\"\nport = {}\nprotocol = \"http\"\n", web.ip(), web.port()),
    )
    .expect("service");
    let out = cluster.meshctl_raw(2, &["service", "register", "-f", &file.display().to_string()]).expect("meshctl");
    assert!(out.status.success(), "register web: {}", String::from_utf8_lossy(&out.stderr));
    let addr = SocketAddr::from((cluster.vip(1, "web"), web.port()));
    poll(Duration::from_secs(30), || TcpStream::connect(addr).is_ok()).expect("the VIP answers");
    let pids = cluster.procs.0.iter().map(Child::id).collect();
    (cluster, addr, pids)
}

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    pin(std::process::id(), "0");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs::default();
    let web = SocketAddr::from(([127, 0, SUBNET, 1], 8089));
    procs.0.push(nginx(dir.path(), web, "0"));
    poll(Duration::from_secs(10), || TcpStream::connect(web).is_ok()).expect("nginx listens");
    let otlp = TcpListener::bind((std::net::Ipv4Addr::new(127, 0, SUBNET, 1), 0)).expect("collector");
    let endpoint = format!("http://{}", otlp.local_addr().expect("addr"));
    let exports = collector(otlp);

    let this = bin("meshd").parent().map(PathBuf::from).unwrap_or_default();
    let mut setups: Vec<(String, PathBuf, String)> = Vec::new();
    if let Some(base) = std::env::var_os("BENCH_BASELINE") {
        setups.push(("before".into(), PathBuf::from(base), String::new()));
    }
    setups.push(("metrics".into(), this.clone(), String::new()));
    setups.push((
        "+1% traces".into(),
        this.clone(),
        format!("[tracing]\notlp_endpoint = \"{endpoint}\"\nsample_percent = 1\n"),
    ));
    // The first setup again, last: how far the machine drifted during the run.
    if let Some((name, bins, extra)) = setups.first().cloned() {
        setups.push((format!("{name} again"), bins, extra));
    }
    println!(
        "{:<12} {:>10} {:>7} {:>8} {:>8} {:>14}",
        "meshd", "wrk req/s", "ratio", "p50 ms", "p99 ms", "CPU s/1k req"
    );
    let mut first = None;
    for (i, (name, bins, extra)) in setups.iter().enumerate() {
        let subnet = SUBNET + 1 + u8::try_from(i).expect("few") * 2;
        let (cluster, addr, pids) = pair(subnet, bins, extra, web);
        let _ = wrk(addr, 1, "0"); // warm the pools
        let before = cpu_seconds(&pids);
        let (rps, p50, p99) = wrk(addr, secs, "0");
        let per_1k = (cpu_seconds(&pids) - before) / (rps * secs as f64).max(1.0) * 1000.0;
        let base = *first.get_or_insert(rps);
        println!("{name:<12} {rps:>10.0} {:>6.2}x {p50:>8.3} {p99:>8.3} {per_1k:>14.4}", rps / base);
        drop(cluster);
    }
    println!("OTLP export requests the collector received: {}", exports.load(std::sync::atomic::Ordering::Relaxed));
    drop(procs);
}
