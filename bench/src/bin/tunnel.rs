//! The data plane against its peers, one invocation: the direct path, a stunnel4
//! mutual-TLS pair, a haproxy mutual-TLS pair and two meshd nodes, each carrying
//! iperf3 (throughput), wrk against nginx (requests/s, p50, p99), a small echo at a low
//! fixed rate (added round-trip latency) and new connections per second; meshd's RSS
//! idle and under load. Load generators and backends run on core 0, the tunnel ends on
//! core 1. Prints each figure and its ratio to the direct path. `BENCH_PERF=FILE` records
//! CPU profiles of both meshd (iperf3 into FILE, HTTP into FILE.http). The HTTP path is
//! measured again with an authorization policy of 100 rules on the service.
//!
//! `cargo build --release --workspace --bins && target/release/bench-tunnel [SECONDS]`
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

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, SUBNET, host)
}

fn wait_port(addr: SocketAddr) {
    poll(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()).unwrap_or_else(|| panic!("{addr} listens"));
}

// ---------- the backends (core 0) ----------

/// A thread-per-connection echo server.
fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("echo listen");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
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

// ---------- the peer pairs (core 1) ----------

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
fn stunnel(dir: &Path, pki: &Pki, routes: &[(SocketAddr, SocketAddr, SocketAddr)]) -> Vec<Child> {
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
        spawn_on(1, "stunnel4", &[&dir.join("stunnel-server.conf").display().to_string()]),
        spawn_on(1, "stunnel4", &[&dir.join("stunnel-client.conf").display().to_string()]),
    ]
}

/// A haproxy mutual-TLS pair; `http` runs both ends in `mode http` (each request parsed
/// and forwarded, keep-alive to the next hop), else `mode tcp`.
fn haproxy(dir: &Path, pki: &Pki, routes: &[(SocketAddr, SocketAddr, SocketAddr)], http: bool) -> Vec<Child> {
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
    vec![spawn_on(1, "haproxy", &["-db", "-f", &both(&sv)]), spawn_on(1, "haproxy", &["-db", "-f", &both(&c)])]
}

// ---------- the measurements (core 0) ----------

fn iperf(addr: SocketAddr, secs: u64) -> f64 {
    let out = Command::new("taskset")
        .args(["-c", "0", "iperf3", "-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", &secs.to_string(), "-J"])
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

fn mtus(cluster: &Cluster) -> String {
    let list: Vec<String> = cluster
        .meshctl(1, &["connections"])
        .and_then(|v| v.as_array().map(|a| a.iter().map(|c| format!("{} {}", c["direction"], c["mtu"])).collect()))
        .unwrap_or_default();
    list.join(", ")
}

struct Path4 {
    name: &'static str,
    iperf: SocketAddr,
    web: SocketAddr,
    echo: SocketAddr,
}

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    pin(std::process::id(), 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut procs = Procs::default();

    let backend = |port: u16| SocketAddr::from((ip(1), port));
    let (iperf_b, web_b, echo_b) = (backend(5201), backend(8088), backend(7007));
    procs.0.push(spawn_on(0, "iperf3", &["-s", "-B", &ip(1).to_string(), "-p", "5201"]));
    procs.0.push(nginx(d, web_b));
    echo_server(echo_b);
    for a in [iperf_b, web_b, echo_b] {
        wait_port(a);
    }

    let pki = pki(d);
    let route = |front: u8, back: u8, b: SocketAddr| {
        (SocketAddr::from((ip(front), b.port())), SocketAddr::from((ip(back), b.port())), b)
    };
    let st: Vec<_> = [iperf_b, web_b, echo_b].into_iter().map(|b| route(10, 11, b)).collect();
    let hp: Vec<_> = [iperf_b, web_b, echo_b].into_iter().map(|b| route(20, 21, b)).collect();
    procs.0.extend(stunnel(d, &pki, &st));
    procs.0.extend(haproxy(d, &pki, &hp, false));
    let hp_http = [route(22, 23, web_b)];
    let haproxies = haproxy(d, &pki, &hp_http, true);
    let haproxy_pids: Vec<u32> = haproxies.iter().map(Child::id).collect();
    let haproxy_web = hp_http[0].0;
    wait_port(haproxy_web);
    procs.0.extend(haproxies);
    for (front, _, _) in st.iter().chain(&hp) {
        wait_port(*front);
    }

    // Two meshd nodes; the services on node 2, the clients through node 1's VIPs.
    let mut cluster = Cluster::prepare_on(SUBNET + 1, 2, Some(1));
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
    for pid in &pids {
        pin(*pid, 1);
    }
    poll(Duration::from_secs(30), || TcpStream::connect(mesh.echo).is_ok()).expect("the tunnel answers");

    eprintln!("path MTU before the load: {}", mtus(&cluster));
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

    let mut rows = Vec::new();
    for p in &paths {
        eprintln!("measuring {}...", p.name);
        // BENCH_PERF=FILE: a CPU profile of both meshd processes during their iperf3 run.
        let profile = if p.name == "meshd" { profile(&pids, secs, "") } else { None };
        let gbps = iperf(p.iperf, secs);
        if let Some(mut perf) = profile {
            let _ = perf.wait();
        }
        let (rps, p50, p99) = wrk(p.web, secs);
        let (e50, e99) = echo_latency(p.echo, 2000, 1000);
        let cps = conn_rate(p.echo, secs.min(3));
        rows.push((p.name, gbps, rps, p50, p99, e50, e99, cps));
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();

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
    for r in &rows {
        println!(
            "{:<9} {:>9.2} {:>6.2}x {:>10.0} {:>6.2}x {:>8.3} {:>8.3} {:>7.0}us {:>7.0}us {:>9.0} {:>6.2}x",
            r.0,
            r.1,
            r.1 / direct.1,
            r.2,
            r.2 / direct.2,
            r.3,
            r.4,
            r.5 - direct.5,
            r.6 - direct.6,
            r.7,
            r.7 / direct.7
        );
    }
    let (hp, m) = (rows[2], rows[3]);
    let st = rows[1];
    println!(
        "meshd vs haproxy: throughput {:.2}x, wrk {:.2}x, added echo p50 {:.0} vs {:.0} us; conn/s vs stunnel {:.2}x",
        m.1 / hp.1,
        m.2 / hp.2,
        m.5 - direct.5,
        hp.5 - direct.5,
        m.7 / st.7
    );
    println!(
        "meshd RSS: idle {:.1} / {:.1} MB (node 1 / node 2), peak under load {:.1} MB",
        idle_rss.first().copied().unwrap_or(0.0),
        idle_rss.get(1).copied().unwrap_or(0.0),
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    println!("meshd path MTU (node 1's connections): {}", mtus(&cluster));

    // Memory comes back: 2,000 echo connections open at once through the pair, 64 KiB
    // each way on each, all closed; meshd's RSS 5 s later against idle.
    let mesh_echo = paths[3].echo;
    let conns: Vec<TcpStream> = (0..2000).filter_map(|_| TcpStream::connect(mesh_echo).ok()).collect();
    let opened = conns.len();
    let chunk = vec![7u8; 64 * 1024];
    let mut intact = 0;
    for mut c in conns.iter() {
        if c.write_all(&chunk).is_err() {
            continue;
        }
        let mut back = vec![0u8; chunk.len()];
        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
        if c.read_exact(&mut back).is_ok() && back == chunk {
            intact += 1;
        }
    }
    let loaded: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    drop(conns);
    std::thread::sleep(Duration::from_secs(5));
    let after: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect();
    println!(
        "meshd RSS, 2,000 echo connections ({opened} opened, {intact} echoed 64 KiB intact): idle {:.1} / {:.1} MB, \
         all open {:.1} / {:.1} MB, 5 s after they closed {:.1} / {:.1} MB (node 1 / node 2)",
        idle_rss.first().copied().unwrap_or(0.0),
        idle_rss.get(1).copied().unwrap_or(0.0),
        loaded.first().copied().unwrap_or(0.0),
        loaded.get(1).copied().unwrap_or(0.0),
        after.first().copied().unwrap_or(0.0),
        after.get(1).copied().unwrap_or(0.0),
    );

    // HTTP: the same nginx as a `protocol = "http"` service with a route loaded, so each
    // request is matched and routed; CPU seconds per 1,000 requests of each proxy pair.
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
    let webh = SocketAddr::from((vip("webh"), web_b.port()));
    poll(Duration::from_secs(30), || TcpStream::connect(webh).is_ok()).expect("webh answers");
    let cpu = cpu_seconds;
    println!();
    println!(
        "{:<11} {:>10} {:>7} {:>8} {:>8} {:>16}",
        "HTTP path", "wrk req/s", "ratio", "p50 ms", "p99 ms", "CPU s/1k req"
    );
    let mut http_rows = Vec::new();
    for (name, addr, pids) in [
        ("direct", web_b, vec![]),
        ("haproxy http", haproxy_web, haproxy_pids.clone()),
        ("meshd http", webh, pids.clone()),
        ("+100 rules", webh, pids.clone()),
    ] {
        if name == "+100 rules" {
            // An authorization policy of 100 rules that each request is checked against
            // (none matches: the request goes by the default, after all of them).
            let mut text = String::from("service = \"webh\"\ndefault = \"allow\"\n");
            for i in 0..100 {
                text += &format!("[[deny]]\nfrom = [\"*\"]\nhttp = {{ paths = [{{ prefix = \"/never-{i}\" }}], methods = [\"POST\"] }}\n");
            }
            let policy = d.join("webh-policy.toml");
            std::fs::write(&policy, text).expect("policy");
            let out = cluster
                .meshctl_raw(1, &["policy", "apply", "-f", &policy.display().to_string(), "--wait"])
                .expect("meshctl");
            assert!(out.status.success(), "policy: {}", String::from_utf8_lossy(&out.stderr));
        }
        let before = cpu(&pids);
        // BENCH_PERF=FILE also profiles both meshd under HTTP load, into FILE.http.
        let profile = if name == "meshd http" { profile(&pids, secs, ".http") } else { None };
        let (rps, p50, p99) = wrk(addr, secs);
        if let Some(mut perf) = profile {
            let _ = perf.wait();
        }
        let used = cpu(&pids) - before;
        let per_1k = if pids.is_empty() { 0.0 } else { used / (rps * secs as f64).max(1.0) * 1000.0 };
        http_rows.push((name, rps, p50, p99, per_1k));
    }
    for r in &http_rows {
        println!("{:<11} {:>10.0} {:>6.2}x {:>8.3} {:>8.3} {:>16.4}", r.0, r.1, r.1 / http_rows[0].1, r.2, r.3, r.4);
    }
    let (none, hundred) = (http_rows[2], http_rows[3]);
    println!(
        "an authorization policy of 100 rules: {:.2}x the requests/s of none, {:.4} vs {:.4} CPU s per 1,000 requests",
        hundred.1 / none.1,
        hundred.4,
        none.4
    );
    let (h, m) = (http_rows[1], http_rows[2]);
    println!(
        "meshd http vs haproxy http pair: {:.2}x the requests/s, p50 {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms, {:.4} vs {:.4} CPU s per 1,000 requests",
        m.1 / h.1,
        m.2,
        h.2,
        m.3,
        h.3,
        m.4,
        h.4
    );
    drop(procs);
}
