//! meshd under abuse: each attack from the bounds issue runs for SECONDS against node 1
//! of a real two-node mesh (release binaries) while a steady trickle of legitimate work
//! continues (a DNS query and an HTTP request through the mesh to a service on node 2,
//! every 20 ms). Reports, per attack, the trickle's success rate (goal: 100%) and node
//! 1's peak resident memory (goal: under 64 MiB). The peer is the same trickle with no
//! attack, in the same run.
//!
//! `cargo build --release --workspace --bins && target/release/bench-abuse [SECONDS]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_bench::{a_query, answer_count, poll, Cluster};

const SUBNET: u8 = 233;

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
        / 1024
}

/// An HTTP/1.1 backend answering `200 ok` to every request.
fn backend(ip: &str) -> SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("backend");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        if conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The legitimate trickle's counts: ok and failed.
#[derive(Default)]
struct Trickle {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn trickle(dns: SocketAddr, target: SocketAddr, counts: Arc<Trickle>, stop: Arc<AtomicBool>) {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let query = a_query("web.mesh");
    while !stop.load(Ordering::Relaxed) {
        let dns_ok = udp.send_to(&query, dns).is_ok() && {
            let mut buf = [0u8; 512];
            udp.recv(&mut buf).ok().and_then(|n| answer_count(&buf[..n])).is_some_and(|c| c >= 1)
        };
        let http_ok = (|| {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            answer.starts_with("HTTP/1.1 200").then_some(())
        })()
        .is_some();
        for ok in [dns_ok, http_ok] {
            let c = if ok { &counts.ok } else { &counts.failed };
            c.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let phase = Duration::from_secs(seconds);
    let mut c = Cluster::prepare(SUBNET, 2);
    c.start();
    c.converge(Duration::from_secs(30)).expect("the mesh converges");
    let backend = backend(&c.ip(2));
    let svc = c.path().join("web.toml");
    std::fs::write(
        &svc,
        format!("name = \"web\"\naddress = \"{}\"\nport = {}\nprotocol = \"http\"\n", backend.ip(), backend.port()),
    )
    .expect("service file");
    let out = c.meshctl_raw(2, &["service", "register", "-f", &svc.display().to_string()]).expect("meshctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dns = c.dns(1);
    let vip = poll(Duration::from_secs(30), || {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let _ = udp.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = udp.send_to(&a_query("web.mesh"), dns);
        let mut buf = [0u8; 512];
        udp.recv(&mut buf).ok().and_then(|n| answer_count(&buf[..n])).is_some_and(|n| n >= 1)
    });
    vip.expect("node 1 answers web.mesh");
    let services = c.meshctl(1, &["services"]).expect("services");
    let vip: std::net::Ipv4Addr = services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "web"))
        .and_then(|s| s["vip"].as_str()?.parse().ok())
        .expect("web's virtual IP");
    let target = SocketAddr::from((vip, backend.port()));
    let pid = c.procs.0[0].id();
    let token_text = c.meshctl(1, &["token", "create"]).expect("token")["token"].as_str().expect("token").to_owned();
    let token = mesh_proto::token::Token::decode(&token_text).expect("a token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    type Attack = Box<dyn Fn(Arc<AtomicBool>) + Send>;
    let attacker_ip = format!("127.{SUBNET}.0.200");
    let join_flood: Attack = {
        let (token, ip, handle) = (token.clone(), attacker_ip.clone(), rt.handle().clone());
        Box::new(move |stop| {
            handle.block_on(async {
                let mut held: Vec<(quinn::Endpoint, quinn::Connection)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pair) = join_connection(&token, &ip).await {
                        // Announce a 4 MiB frame on it, send a little, and hold it.
                        if let Ok((mut send, _recv)) = pair.1.open_bi().await {
                            let _ = send.write_all(&(4u32 << 20).to_be_bytes()).await;
                            let _ = send.write_all(&[0u8; 1024]).await;
                        }
                        held.push(pair);
                    }
                    if held.len() > 2_000 {
                        held.drain(..1_000);
                    }
                }
            });
        })
    };
    let dns_tcp: Attack = Box::new(move |stop| {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = TcpStream::connect_timeout(&dns, Duration::from_millis(200)) {
                held.push(s);
            }
            if held.len() > 8_000 {
                held.drain(..4_000);
            }
        }
    });
    let slowloris: Attack = Box::new(move |stop| {
        let mut held: Vec<TcpStream> = Vec::new();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if held.len() < 500 {
                if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n");
                    held.push(s);
                }
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
            if last.elapsed() > Duration::from_secs(1) {
                held.retain_mut(|s| s.write_all(b"x-slow: 1\r\n").is_ok());
                last = Instant::now();
            }
        }
    });
    let socket = c.socket(1);
    let blocking: Attack = Box::new(move |stop| {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if held.len() < 3_000 {
                if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket) {
                    let _ = s.write_all(b"GET /v1/members?index=999999999&wait=600s HTTP/1.1\r\nhost: meshd\r\n\r\n");
                    held.push(s);
                }
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let attacks: Vec<(&str, Option<Attack>)> = vec![
        ("none (the peer)", None),
        ("join connections with 4 MiB frames", Some(join_flood)),
        ("DNS TCP connections held idle", Some(dns_tcp)),
        ("slowloris on an HTTP service", Some(slowloris)),
        ("blocking queries parked", Some(blocking)),
    ];
    println!("{seconds} s per attack; trickle: a DNS query and an HTTP request through the mesh every 20 ms");
    println!("{:<40} {:>10} {:>10} {:>14}", "attack", "trickle ok", "failed", "peak RSS MiB");
    for (name, attack) in attacks {
        let counts = Arc::new(Trickle::default());
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || trickle(dns, target, counts, stop))
        };
        let attacker = attack.map(|a| {
            let stop = stop.clone();
            std::thread::spawn(move || a(stop))
        });
        let started = Instant::now();
        let mut peak = 0;
        while started.elapsed() < phase {
            peak = peak.max(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = t.join();
        if let Some(a) = attacker {
            let _ = a.join();
        }
        let (ok, failed) = (counts.ok.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
        let rate = 100.0 * ok as f64 / (ok + failed).max(1) as f64;
        println!("{name:<40} {rate:>9.2}% {failed:>10} {peak:>14}");
        // Let what the attack left behind close before the next one.
        std::thread::sleep(Duration::from_secs(12));
    }
}

async fn join_connection(token: &mesh_proto::token::Token, ip: &str) -> Option<(quinn::Endpoint, quinn::Connection)> {
    let tls = meshd::identity::join_client_config(token.ca_fingerprint).ok()?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).ok()?;
    let endpoint = quinn::Endpoint::client(SocketAddr::new(ip.parse().ok()?, 0)).ok()?;
    let connecting = endpoint.connect_with(quinn::ClientConfig::new(Arc::new(quic)), token.signer, "mesh").ok()?;
    let conn = tokio::time::timeout(Duration::from_secs(1), connecting).await.ok()?.ok()?;
    Some((endpoint, conn))
}
