//! The data plane against its peers, one invocation: the direct path, a stunnel4
//! mutual-TLS pair, a haproxy mutual-TLS pair and two meshd nodes, each carrying
//! iperf3 (throughput), wrk against nginx (requests/s, p50, p99), a small echo at a low
//! fixed rate (added round-trip latency) and new connections per second; then the HTTP
//! path (haproxy and meshd each parsing every request) with the CPU each pair used per
//! 1,000 requests; then many concurrent echo connections through the meshd pair, RSS
//! per open connection and after they closed. Prints medians of `--runs` and each
//! figure's ratio to the direct path.
//!
//! `--cores` places the processes: `one` (the default: load generators and backends on
//! core 0, both ends of every pair on core 1), `apart` (each end of every pair on its own
//! core, load anywhere) or `all` (nothing pinned). `--streams N` runs N parallel iperf3
//! streams; `--connections N` the memory part's concurrent connections (2,000).
//! `BENCH_PERF=FILE` records CPU profiles of both meshd (iperf3 into FILE, HTTP into
//! FILE.http) and of the haproxy pair (FILE.haproxy, FILE.haproxy-http). `--paths
//! direct,meshd` and `--parts tcp,http,memory` run less.
//!
//! `cargo build --release --workspace --bins && target/release/bench-tunnel [SECONDS]
//! [--runs N] [--cores one|apart|all] [--streams N] [--connections N] [--paths LIST] [--parts LIST]`
//! (needs `apt-get install iperf3 stunnel4 haproxy wrk nginx-light`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_bench::{cpu_seconds, nginx, pin, poll, spawn_on, wrk, Cluster, Procs};

const SUBNET: u8 = 236;

/// Where each process runs (`taskset -c` lists).
#[derive(Clone, Copy)]
struct Layout {
    name: &'static str,
    /// Load generators, backends and this process.
    load: &'static str,
    /// The client end of each pair (meshd node 1, stunnel and haproxy clients).
    client: &'static str,
    /// The server end of each pair.
    server: &'static str,
}

const LAYOUTS: [Layout; 3] = [
    Layout { name: "one", load: "0", client: "1", server: "1" },
    Layout { name: "apart", load: "0,1", client: "0", server: "1" },
    Layout { name: "all", load: "0,1", client: "0,1", server: "0,1" },
];

struct Options {
    secs: u64,
    runs: usize,
    layout: Layout,
    streams: u32,
    connections: usize,
    /// The paths of the first table (`--paths direct,meshd`; all by default).
    paths: Option<Vec<String>>,
    /// The parts to run (`--parts tcp,http,memory`; all by default).
    parts: Vec<String>,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            secs: 5,
            runs: 1,
            layout: LAYOUTS[0],
            streams: 1,
            connections: 2000,
            paths: None,
            parts: ["tcp", "http", "memory"].map(String::from).to_vec(),
        };
        let list = |v: String| v.split(',').map(str::to_owned).collect::<Vec<_>>();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |what: &str| args.next().unwrap_or_else(|| panic!("{arg} needs {what}"));
            match arg.as_str() {
                "--runs" => o.runs = value("a count").parse().expect("--runs N"),
                "--streams" => o.streams = value("a count").parse().expect("--streams N"),
                "--connections" => o.connections = value("a count").parse().expect("--connections N"),
                "--paths" => o.paths = Some(list(value("a list"))),
                "--parts" => o.parts = list(value("a list")),
                "--cores" => {
                    let name = value("one, apart or all");
                    o.layout = *LAYOUTS.iter().find(|l| l.name == name).expect("--cores one|apart|all");
                }
                secs => o.secs = secs.parse().expect("SECONDS [--runs N] [--cores one|apart|all] [--streams N]"),
            }
        }
        o.runs = o.runs.max(1);
        o
    }
}

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, SUBNET, host)
}

fn wait_port(addr: SocketAddr) {
    poll(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()).unwrap_or_else(|| panic!("{addr} listens"));
}

// ---------- the backends (the load's cores) ----------

/// A thread-per-connection echo server (small stacks: it may hold 10,000), in a process
/// of its own (`--echo-server ADDR`).
fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("echo listen");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

// ---------- the peer pairs ----------

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    // Distinct subjects: OpenSSL takes a leaf whose subject is its issuer's for self-signed.
    ca.distinguished_name.push(DnType::CommonName, "bench ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let issue = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).expect("cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue("server");
    let (client_cert, client_key) = issue("client");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("pem");
        p.display().to_string()
    };
    let p = Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    };
    // haproxy wants certificate and key in one file.
    write("server.both", &format!("{server_cert}{server_key}"));
    write("client.both", &format!("{client_cert}{client_key}"));
    p
}

/// A stunnel client end on `front` and server end on `back`, leading to each backend.
fn stunnel(dir: &Path, pki: &Pki, routes: &[(SocketAddr, SocketAddr, SocketAddr)], at: Layout) -> Vec<Child> {
    let mut client = "foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n".to_owned();
    let mut server = client.clone();
    for (i, (front, back, backend)) in routes.iter().enumerate() {
        client += &format!(
            "[c{i}]\nclient = yes\naccept = {front}\nconnect = {back}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\n",
            pki.client_cert, pki.client_key, pki.ca
        );
        server += &format!(
            "[s{i}]\naccept = {back}\nconnect = {backend}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\n",
            pki.server_cert, pki.server_key, pki.ca
        );
    }
    std::fs::write(dir.join("stunnel-client.conf"), client).expect("conf");
    std::fs::write(dir.join("stunnel-server.conf"), server).expect("conf");
    vec![
        spawn_on(at.server, "stunnel4", &[&dir.join("stunnel-server.conf").display().to_string()]),
        spawn_on(at.client, "stunnel4", &[&dir.join("stunnel-client.conf").display().to_string()]),
    ]
}

/// A haproxy mutual-TLS pair; `http` runs both ends in `mode http` (each request parsed
/// and forwarded, keep-alive to the next hop), else `mode tcp`.
fn haproxy(
    dir: &Path,
    pki: &Pki,
    routes: &[(SocketAddr, SocketAddr, SocketAddr)],
    http: bool,
    at: Layout,
) -> Vec<Child> {
    let mode = if http { "http\n  option http-keep-alive" } else { "tcp" };
    let head = format!(
        "global\n  nbthread 1\n  maxconn 4000\n  tune.ssl.default-dh-param 2048\ndefaults\n  mode {mode}\n  \
         timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
    );
    let tag = if http { "-http" } else { "" };
    let (mut client, mut server) = (head.clone(), head);
    let both = |n: &str| dir.join(n).display().to_string();
    for (i, (front, back, backend)) in routes.iter().enumerate() {
        client += &format!(
            "listen c{i}\n  bind {front}\n  server s {back} ssl crt {} ca-file {} verify required\n",
            both("client.both"),
            pki.ca
        );
        server += &format!(
            "listen s{i}\n  bind {back} ssl crt {} ca-file {} verify required\n  server b {backend}\n",
            both("server.both"),
            pki.ca
        );
    }
    let (c, sv) = (format!("haproxy{tag}-client.cfg"), format!("haproxy{tag}-server.cfg"));
    std::fs::write(dir.join(&c), client).expect("cfg");
    std::fs::write(dir.join(&sv), server).expect("cfg");
    vec![
        spawn_on(at.server, "haproxy", &["-db", "-f", &both(&sv)]),
        spawn_on(at.client, "haproxy", &["-db", "-f", &both(&c)]),
    ]
}

// ---------- the measurements (the load's cores) ----------

fn iperf(addr: SocketAddr, secs: u64, streams: u32, cpus: &str) -> f64 {
    let out = Command::new("taskset")
        .args(["-c", cpus, "iperf3", "-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
        .output()
        .expect("iperf3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
}

/// wrk: requests/s, p50 and p99 in ms.
/// Round trips of 64 bytes on one connection at `rate` per second: p50 and p99 in µs.
fn echo_latency(addr: SocketAddr, samples: usize, rate: u32) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).expect("echo connect");
    s.set_nodelay(true).expect("nodelay");
    let msg = [42u8; 64];
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(samples);
    let gap = Duration::from_secs(1) / rate;
    for _ in 0..samples {
        let t = Instant::now();
        s.write_all(&msg).expect("echo send");
        s.read_exact(&mut buf).expect("echo receive");
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(gap);
    }
    rtts.sort_by(f64::total_cmp);
    (rtts[samples / 2], rtts[samples * 99 / 100])
}

/// New connections per second, 4 clients each connecting, one byte each way, closing.
fn conn_rate(addr: SocketAddr, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else { continue };
                    let _ = s.set_nodelay(true);
                    let mut b = [0u8; 1];
                    if s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

/// With `BENCH_PERF=FILE`: `perf record` of `pids` for `secs` into FILE`suffix`.
fn profile(pids: &[u32], secs: u64, suffix: &str) -> Option<Child> {
    let file = std::env::var("BENCH_PERF").ok()?;
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-g", "-o", &format!("{file}{suffix}"), "-p", &list.join(",")])
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Both nodes' QUIC connections: path MTU, datagrams per send (the GSO batch), packets
/// declared lost, congestion events, congestion window.
fn quic_stats(cluster: &Cluster) -> String {
    (1..=2).map(|i| format!("node {i}: {}", quic_stats_of(cluster, i))).collect::<Vec<_>>().join("; ")
}

fn quic_stats_of(cluster: &Cluster, node: usize) -> String {
    let list: Vec<String> = cluster
        .meshctl(node, &["connections"])
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .map(|c| {
                        let per = |k: &str| c[k].as_f64().unwrap_or(0.0);
                        format!(
                            "{} to {}: MTU {}, {} datagrams sent, {:.1} per send, {} received, {} lost, \
                             {} congestion events, cwnd {:.0} KiB",
                            c["direction"].as_str().unwrap_or("?"),
                            c["node"].as_str().unwrap_or("?"),
                            c["mtu"],
                            c["udp_datagrams_sent"],
                            per("udp_datagrams_sent") / per("udp_sends").max(1.0),
                            c["udp_datagrams_received"],
                            c["lost_packets"],
                            c["congestion_events"],
                            per("cwnd") / 1024.0
                        )
                    })
                    .collect()
            })
        })
        .unwrap_or_default();
    list.join("; ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}

/// One path's figures in one run.
#[derive(Clone, Copy, Default)]
struct Row {
    gbps: f64,
    rps: f64,
    p50: f64,
    p99: f64,
    echo50: f64,
    echo99: f64,
    cps: f64,
}

impl Row {
    /// The median of each figure over the runs.
    fn median(runs: &[Row]) -> Row {
        let m = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
        Row {
            gbps: m(|r| r.gbps),
            rps: m(|r| r.rps),
            p50: m(|r| r.p50),
            p99: m(|r| r.p99),
            echo50: m(|r| r.echo50),
            echo99: m(|r| r.echo99),
            cps: m(|r| r.cps),
        }
    }
}

/// One HTTP path's figures in one run.
#[derive(Clone, Copy, Default)]
struct HttpRow {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_per_1k: f64,
}

struct Path4 {
    name: &'static str,
    iperf: SocketAddr,
    web: SocketAddr,
    echo: SocketAddr,
}

fn main() {
    // The echo backend runs as a process of its own (this binary again): 10,000
    // connections are 20,000 descriptors on this side alone.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--echo-server") {
        let addr = args.next().and_then(|a| a.parse().ok()).expect("--echo-server ADDR");
        echo_server(addr);
        loop {
            std::thread::park();
        }
    }
    let o = Options::parse();
    let (secs, at) = (o.secs, o.layout);
    // Room for the memory part's connections (each meshd inherits the limit), as far as
    // the hard limit allows.
    let _ = Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), "--nofile=1048576:1048576"])
        .stderr(Stdio::null())
        .status();
    pin(std::process::id(), at.load);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut procs = Procs::default();

    let backend = |port: u16| SocketAddr::from((ip(1), port));
    let (iperf_b, web_b, echo_b) = (backend(5201), backend(8088), backend(7007));
    procs.0.push(spawn_on(at.load, "iperf3", &["-s", "-B", &ip(1).to_string(), "-p", "5201"]));
    procs.0.push(nginx(d, web_b, at.load));
    let me = std::env::current_exe().expect("own path");
    procs.0.push(spawn_on(at.load, &me.display().to_string(), &["--echo-server", &echo_b.to_string()]));
    for a in [iperf_b, web_b, echo_b] {
        wait_port(a);
    }

    let pki = pki(d);
    let route = |front: u8, back: u8, b: SocketAddr| {
        (SocketAddr::from((ip(front), b.port())), SocketAddr::from((ip(back), b.port())), b)
    };
    let st: Vec<_> = [iperf_b, web_b, echo_b].into_iter().map(|b| route(10, 11, b)).collect();
    let hp: Vec<_> = [iperf_b, web_b, echo_b].into_iter().map(|b| route(20, 21, b)).collect();
    procs.0.extend(stunnel(d, &pki, &st, at));
    let haproxies = haproxy(d, &pki, &hp, false, at);
    let haproxy_tcp_pids: Vec<u32> = haproxies.iter().map(Child::id).collect();
    procs.0.extend(haproxies);
    let hp_http = [route(22, 23, web_b)];
    let haproxies = haproxy(d, &pki, &hp_http, true, at);
    let haproxy_pids: Vec<u32> = haproxies.iter().map(Child::id).collect();
    let haproxy_web = hp_http[0].0;
    wait_port(haproxy_web);
    procs.0.extend(haproxies);
    for (front, _, _) in st.iter().chain(&hp) {
        wait_port(*front);
    }

    // Two meshd nodes; the services on node 2, the clients through node 1's VIPs. Each
    // listener admits the memory part's connections, and a peer as many tunnels.
    let cpus = [at.client.to_owned(), at.server.to_owned()];
    let extra = format!("max_connections = {}\n", o.connections.max(4096) + 100);
    let bins = mesh_bench::bin("meshd").parent().map(Path::to_owned).unwrap_or_default();
    let mut cluster = Cluster::prepare_with(SUBNET + 1, &cpus, &bins, &extra);
    cluster.start();
    cluster.converge(Duration::from_secs(30)).expect("two meshd nodes converge");
    for (name, b) in [("iperf", iperf_b), ("web", web_b), ("echo", echo_b)] {
        let file = d.join(format!("{name}.toml"));
        std::fs::write(&file, format!("name = \"{name}\"\naddress = \"{}\"\nport = {}\n", b.ip(), b.port()))
            .expect("service");
        let out = cluster.meshctl_raw(2, &["service", "register", "-f", &file.display().to_string()]).expect("meshctl");
        assert!(out.status.success(), "register {name}");
    }
    let vip = |name: &str| cluster.vip(1, name);
    let mesh = Path4 {
        name: "meshd",
        iperf: SocketAddr::from((vip("iperf"), iperf_b.port())),
        web: SocketAddr::from((vip("web"), web_b.port())),
        echo: SocketAddr::from((vip("echo"), echo_b.port())),
    };
    let pids: Vec<u32> = cluster.procs.0.iter().map(Child::id).collect();
    poll(Duration::from_secs(30), || TcpStream::connect(mesh.echo).is_ok()).expect("the tunnel answers");

    println!(
        "bench-tunnel: {secs} s per measurement, {} run(s), medians; cores {} (load {}, client ends {}, server ends {}); \
         {} iperf3 stream(s)",
        o.runs, at.name, at.load, at.client, at.server, o.streams
    );
    println!("meshd QUIC before the load: {}", quic_stats(&cluster));
    let paths = [
        Path4 { name: "direct", iperf: iperf_b, web: web_b, echo: echo_b },
        Path4 { name: "stunnel", iperf: st[0].0, web: st[1].0, echo: st[2].0 },
        Path4 { name: "haproxy", iperf: hp[0].0, web: hp[1].0, echo: hp[2].0 },
        mesh,
    ];
    let idle_rss: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pids) = (peak.clone(), sampling.clone(), pids.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let max = pids.iter().map(|p| (rss_mb(*p) * 1024.0) as u64).max().unwrap_or(0);
                peak.fetch_max(max, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Every path once per run, runs one after another: a slow minute of the machine's
    // hits all paths alike.
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); paths.len()];
    let mut after_iperf = String::new();
    let wanted = |name: &str| o.paths.as_ref().is_none_or(|p| p.iter().any(|p| p == name));
    let part = |name: &str| o.parts.iter().any(|p| p == name);
    for run in 0..o.runs {
        for (i, p) in paths.iter().enumerate() {
            if !part("tcp") || !wanted(p.name) {
                runs[i].push(Row::default());
                continue;
            }
            eprintln!("run {}/{}: measuring {}...", run + 1, o.runs, p.name);
            // BENCH_PERF=FILE: CPU profiles of both meshd (and both haproxy) during their
            // iperf3 run, the first run only.
            let profiled = match p.name {
                "meshd" => Some((&pids, "")),
                "haproxy" => Some((&haproxy_tcp_pids, ".haproxy")),
                _ => None,
            };
            let profile = profiled.filter(|_| run == 0).and_then(|(pids, suffix)| profile(pids, secs, suffix));
            let gbps = iperf(p.iperf, secs, o.streams, at.load);
            if let Some(mut perf) = profile {
                let _ = perf.wait();
            }
            if p.name == "meshd" {
                after_iperf = quic_stats(&cluster);
            }
            let (rps, p50, p99) = wrk(p.web, secs, at.load);
            let (echo50, echo99) = echo_latency(p.echo, 2000, 1000);
            let cps = conn_rate(p.echo, secs.min(3));
            runs[i].push(Row { gbps, rps, p50, p99, echo50, echo99, cps });
        }
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();

    if part("tcp") {
        tcp_table(&o, &paths, &runs, &idle_rss, &peak, &after_iperf);
    }

    if part("http") {
        http_table(&o, &cluster, d, web_b, haproxy_web, &haproxy_pids, &pids);
    }
    if part("memory") {
        memory(&o, paths[3].echo, &pids, &idle_rss);
    }
    drop(procs);
}

/// The first table: each path's medians, then meshd against haproxy.
fn tcp_table(o: &Options, paths: &[Path4], runs: &[Vec<Row>], idle_rss: &[f64], peak: &AtomicU64, after_iperf: &str) {
    let rows: Vec<Row> = runs.iter().map(|r| Row::median(r)).collect();
    let direct = rows[0];
    println!(
        "{:<9} {:>9} {:>7} {:>10} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7}",
        "path",
        "Gbit/s",
        "ratio",
        "wrk req/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "+echo p50",
        "+echo p99",
        "conn/s",
        "ratio"
    );
    for (p, r) in paths.iter().zip(&rows) {
        println!(
            "{:<9} {:>9.2} {:>6.2}x {:>10.0} {:>6.2}x {:>8.3} {:>8.3} {:>7.0}us {:>7.0}us {:>9.0} {:>6.2}x",
            p.name,
            r.gbps,
            r.gbps / direct.gbps,
            r.rps,
            r.rps / direct.rps,
            r.p50,
            r.p99,
            r.echo50 - direct.echo50,
            r.echo99 - direct.echo99,
            r.cps,
            r.cps / direct.cps
        );
    }
    let (st, hp, m) = (rows[1], rows[2], rows[3]);
    println!(
        "meshd vs haproxy: throughput {:.2}x, wrk {:.2}x, added echo p50 {:.0} vs {:.0} us, p99 {:.0} vs {:.0} us; \
     conn/s vs stunnel {:.2}x",
        m.gbps / hp.gbps,
        m.rps / hp.rps,
        m.echo50 - direct.echo50,
        hp.echo50 - direct.echo50,
        m.echo99 - direct.echo99,
        hp.echo99 - direct.echo99,
        m.cps / st.cps
    );
    if o.runs > 1 {
        for (i, name) in [(2, "haproxy"), (3, "meshd")] {
            let g: Vec<f64> = runs[i].iter().map(|r| r.gbps).collect();
            let w: Vec<f64> = runs[i].iter().map(|r| r.rps).collect();
            let ((g0, g1), (w0, w1)) = (spread(&g), spread(&w));
            println!("{name} over {} runs: {g0:.2}-{g1:.2} Gbit/s, {w0:.0}-{w1:.0} wrk req/s", o.runs);
        }
    }
    println!(
        "meshd RSS: idle {:.1} / {:.1} MB (node 1 / node 2), peak under load {:.1} MB",
        idle_rss.first().copied().unwrap_or(0.0),
        idle_rss.get(1).copied().unwrap_or(0.0),
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    println!("meshd QUIC after its last iperf3 run: {after_iperf}");
}

/// HTTP: the same nginx as a `protocol = "http"` service with a route loaded, so each
/// request is matched and routed; CPU seconds per 1,000 requests of each proxy pair.
fn http_table(
    o: &Options,
    cluster: &Cluster,
    d: &Path,
    web_b: SocketAddr,
    haproxy_web: SocketAddr,
    haproxy_pids: &[u32],
    pids: &[u32],
) {
    let (secs, at) = (o.secs, o.layout);
    let file = d.join("webh.toml");
    let text = format!("name = \"webh\"\naddress = \"{}\"\nport = {}\nprotocol = \"http\"\n", web_b.ip(), web_b.port());
    std::fs::write(&file, text).expect("service");
    let out = cluster.meshctl_raw(2, &["service", "register", "-f", &file.display().to_string()]).expect("meshctl");
    assert!(out.status.success(), "register webh");
    let route = d.join("webh-route.toml");
    std::fs::write(
        &route,
        "name = \"webh\"\nservice = \"webh\"\n[[http]]\nmatch = { headers = { \"x-canary\" = \"1\" } }\n\
         timeout = \"5s\"\n[[http]]\ntimeout = \"10s\"\nretries = { attempts = 2, on = [\"connect-failure\"] }\n",
    )
    .expect("route");
    let out =
        cluster.meshctl_raw(1, &["route", "apply", "-f", &route.display().to_string(), "--wait"]).expect("meshctl");
    assert!(out.status.success(), "route: {}", String::from_utf8_lossy(&out.stderr));
    let webh = SocketAddr::from((cluster.vip(1, "webh"), web_b.port()));
    poll(Duration::from_secs(30), || TcpStream::connect(webh).is_ok()).expect("webh answers");
    println!();
    println!(
        "{:<11} {:>10} {:>7} {:>8} {:>8} {:>16}",
        "HTTP path", "wrk req/s", "ratio", "p50 ms", "p99 ms", "CPU s/1k req"
    );
    let paths: [(&str, SocketAddr, &[u32]); 4] = [
        ("direct", web_b, &[]),
        ("haproxy http", haproxy_web, haproxy_pids),
        ("meshd http", webh, pids),
        ("+100 rules", webh, pids),
    ];
    let mut runs: Vec<Vec<HttpRow>> = vec![Vec::new(); paths.len()];
    for run in 0..o.runs {
        if run > 0 {
            // Each run starts without the policy the last one ended with, on both nodes.
            let out = cluster.meshctl_raw(1, &["policy", "delete", "webh"]).expect("meshctl");
            assert!(out.status.success(), "policy delete: {}", String::from_utf8_lossy(&out.stderr));
            poll(Duration::from_secs(30), || cluster.meshctl(2, &["policy", "get", "webh"]).is_none())
                .expect("the policy's deletion reaches node 2");
        }
        for (i, (name, addr, pids)) in paths.iter().enumerate() {
            eprintln!("run {}/{}: measuring {name}...", run + 1, o.runs);
            if *name == "+100 rules" {
                apply_hundred_rules(cluster, d);
            }
            let before = cpu_seconds(pids);
            // BENCH_PERF=FILE also profiles both meshd (FILE.http) and both haproxy
            // (FILE.haproxy-http) under HTTP load, the first run only.
            let suffix = match *name {
                "meshd http" => Some(".http"),
                "haproxy http" => Some(".haproxy-http"),
                _ => None,
            };
            let profile = suffix.filter(|_| run == 0).and_then(|s| profile(pids, secs, s));
            let (rps, p50, p99) = wrk(*addr, secs, at.load);
            if let Some(mut perf) = profile {
                let _ = perf.wait();
            }
            let used = cpu_seconds(pids) - before;
            let cpu_per_1k = if pids.is_empty() { 0.0 } else { used / (rps * secs as f64).max(1.0) * 1000.0 };
            runs[i].push(HttpRow { rps, p50, p99, cpu_per_1k });
        }
    }
    let rows: Vec<HttpRow> = runs
        .iter()
        .map(|r| {
            let m = |f: fn(&HttpRow) -> f64| median(r.iter().map(f).collect());
            HttpRow { rps: m(|r| r.rps), p50: m(|r| r.p50), p99: m(|r| r.p99), cpu_per_1k: m(|r| r.cpu_per_1k) }
        })
        .collect();
    for ((name, _, _), r) in paths.iter().zip(&rows) {
        println!(
            "{:<11} {:>10.0} {:>6.2}x {:>8.3} {:>8.3} {:>16.4}",
            name,
            r.rps,
            r.rps / rows[0].rps,
            r.p50,
            r.p99,
            r.cpu_per_1k
        );
    }
    let (h, m, hundred) = (rows[1], rows[2], rows[3]);
    println!(
        "an authorization policy of 100 rules: {:.2}x the requests/s of none, {:.4} vs {:.4} CPU s per 1,000 requests",
        hundred.rps / m.rps,
        hundred.cpu_per_1k,
        m.cpu_per_1k
    );
    println!(
        "meshd http vs haproxy http pair: {:.2}x the requests/s, p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms, \
         {:.4} vs {:.4} CPU s per 1,000 requests",
        m.rps / h.rps,
        m.p50,
        h.p50,
        m.p99,
        h.p99,
        m.cpu_per_1k,
        h.cpu_per_1k
    );
    if o.runs > 1 {
        for (i, name) in [(1, "haproxy http"), (2, "meshd http")] {
            let w: Vec<f64> = runs[i].iter().map(|r| r.rps).collect();
            let c: Vec<f64> = runs[i].iter().map(|r| r.cpu_per_1k).collect();
            let ((w0, w1), (c0, c1)) = (spread(&w), spread(&c));
            println!("{name} over {} runs: {w0:.0}-{w1:.0} req/s, {c0:.4}-{c1:.4} CPU s per 1,000", o.runs);
        }
    }
}

/// An authorization policy of 100 rules that each request is checked against (none
/// matches: the request goes by the default, after all of them).
fn apply_hundred_rules(cluster: &Cluster, d: &Path) {
    let mut text = String::from("service = \"webh\"\ndefault = \"allow\"\n");
    for i in 0..100 {
        text += &format!(
            "[[deny]]\nfrom = [\"*\"]\nhttp = {{ paths = [{{ prefix = \"/never-{i}\" }}], methods = [\"POST\"] }}\n"
        );
    }
    let policy = d.join("webh-policy.toml");
    std::fs::write(&policy, text).expect("policy");
    let out =
        cluster.meshctl_raw(1, &["policy", "apply", "-f", &policy.display().to_string(), "--wait"]).expect("meshctl");
    assert!(out.status.success(), "policy: {}", String::from_utf8_lossy(&out.stderr));
}

/// Memory per connection and memory coming back: `--connections` echo connections open
/// at once through the pair, 64 KiB each way on each, all closed; meshd's RSS with them
/// open, and 5 s and 20 s after they closed, against idle.
fn memory(o: &Options, echo: SocketAddr, pids: &[u32], idle_rss: &[f64]) {
    let n = o.connections;
    let started = Instant::now();
    let conns: Vec<TcpStream> = (0..n).filter_map(|_| TcpStream::connect(echo).ok()).collect();
    let opened = conns.len();
    let chunk = vec![7u8; 64 * 1024];
    let mut intact = 0;
    // Every connection carries its bytes before any reads its echo: all are open and
    // busy at once.
    let sent: Vec<bool> = conns.iter().map(|mut c| c.write_all(&chunk).is_ok()).collect();
    for (mut c, sent) in conns.iter().zip(sent) {
        let mut back = vec![0u8; chunk.len()];
        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
        if sent && c.read_exact(&mut back).is_ok() && back == chunk {
            intact += 1;
        }
    }
    let took = started.elapsed();
    let loaded: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    drop(conns);
    std::thread::sleep(Duration::from_secs(5));
    let after: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    std::thread::sleep(Duration::from_secs(15));
    let later: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    let at = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(0.0);
    println!();
    println!(
        "meshd RSS, {n} concurrent echo connections ({opened} opened, {intact} echoed 64 KiB intact, in {:.1} s): \
         idle {:.1} / {:.1} MB, all open {:.1} / {:.1} MB ({:.1} / {:.1} KiB per open connection), \
         5 s after they closed {:.1} / {:.1} MB, 20 s after {:.1} / {:.1} MB (node 1 / node 2)",
        took.as_secs_f64(),
        at(idle_rss, 0),
        at(idle_rss, 1),
        at(&loaded, 0),
        at(&loaded, 1),
        (at(&loaded, 0) - at(idle_rss, 0)) * 1024.0 / n.max(1) as f64,
        (at(&loaded, 1) - at(idle_rss, 1)) * 1024.0 / n.max(1) as f64,
        at(&after, 0),
        at(&after, 1),
        at(&later, 0),
        at(&later, 1),
    );
}
