//! `meshd upgrade` with real processes: under HTTP and TCP load through the upgraded
//! node, both ways (its local clients calling a service on another node, and the other
//! node's clients calling services on it), the new process takes every socket over and
//! not one request fails or is reset. Each service has one instance, so no failover can
//! hide a failure. (No systemd runs as PID 1 here: the test plays the service manager,
//! and `MAINPID=` goes nowhere.)

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_tests::{echo_once, echo_server, read_head, Block, Node};

const CONVERGE: Duration = Duration::from_secs(30);

/// A keep-alive HTTP/1.1 backend answering `name`.
fn http_backend(ip: std::net::Ipv4Addr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("backend listen");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                while read_head(&mut reader).is_some() {
                    let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn register(node: &Node, name: &str, addr: SocketAddr, protocol: &str) {
    let path = node.dir.path().join(format!("{name}.toml"));
    let text =
        format!("name = \"{name}\"\naddress = \"{}\"\nport = {}\nprotocol = \"{protocol}\"\n", addr.ip(), addr.port());
    std::fs::write(&path, text).expect("service file");
    let out = node.meshctl(&["service", "register", "-f", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What a load loop saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    /// Connections the client opened (HTTP: keep-alive ones, renewed at `Connection: close`).
    connections: u64,
}

/// Short TCP connections, one after another: connect, read the name, echo a line, close.
fn tcp_load(addr: SocketAddr, want: &'static str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut t = Tally::default();
        while !stop.load(Ordering::Relaxed) {
            t.connections += 1;
            match echo_once(addr) {
                Ok((name, _)) if name == want => t.ok += 1,
                Ok((name, _)) => t.failed.push(format!("tcp {addr}: reached {name}")),
                Err(e) => t.failed.push(format!("tcp {e}")),
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        t
    })
}

/// HTTP/1.1 requests on a keep-alive connection, a new one whenever a response says
/// `Connection: close` (or the previous one ended cleanly after its response).
fn http_load(addr: SocketAddr, want: &'static str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut t = Tally::default();
        let mut conn: Option<BufReader<TcpStream>> = None;
        while !stop.load(Ordering::Relaxed) {
            let attempt = (|| {
                if conn.is_none() {
                    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                    s.set_read_timeout(Some(Duration::from_secs(20)))?;
                    conn = Some(BufReader::new(s));
                    t.connections += 1;
                }
                let reader = conn.as_mut().ok_or_else(|| std::io::Error::other("no connection"))?;
                reader.get_mut().write_all(b"GET /upgrade HTTP/1.1\r\nHost: svc.mesh\r\n\r\n")?;
                let head = read_head(reader).ok_or_else(|| std::io::Error::other("the connection ended"))?;
                let mut body = vec![0u8; head.content_length()];
                reader.read_exact(&mut body)?;
                if !head.line.starts_with("HTTP/1.1 200") || body != want.as_bytes() {
                    return Err(std::io::Error::other(format!("{} {:?}", head.line, String::from_utf8_lossy(&body))));
                }
                if head.get("connection") == Some("close") {
                    conn = None;
                }
                Ok::<_, std::io::Error>(())
            })();
            match attempt {
                Ok(()) => t.ok += 1,
                Err(e) => {
                    t.failed.push(format!("http {addr}: {e}"));
                    conn = None;
                }
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        t
    })
}

#[test]
fn an_upgrade_under_load_both_ways_fails_no_request_and_resets_no_connection() {
    let block = Block::take();
    let mut n1 = Node::start(&block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, "");
    // One instance each: on node-1 (called from node-2), on node-2 (called from node-1).
    register(&n1, "tcp-on-1", echo_server((block.node_ip(1), 0).into(), "tcp-on-1"), "tcp");
    register(&n1, "http-on-1", http_backend(block.node_ip(1), "http-on-1"), "http");
    register(&n2, "tcp-on-2", echo_server((block.node_ip(2), 0).into(), "tcp-on-2"), "tcp");
    register(&n2, "http-on-2", http_backend(block.node_ip(2), "http-on-2"), "http");
    let port = |node: &Node, name: &str| -> u16 {
        let services = node.meshctl_json(&["services"]);
        services
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .and_then(|s| s["instances"].as_array()?.first()?["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{name} listed with a port: {services}"))
    };
    for name in ["tcp-on-1", "http-on-1", "tcp-on-2", "http-on-2"] {
        n1.wait_healthy(name, 1, CONVERGE);
        n2.wait_healthy(name, 1, CONVERGE);
    }
    let at = |node: &Node, name: &str| SocketAddr::from((node.vip(name, CONVERGE), port(node, name)));
    let stop = Arc::new(AtomicBool::new(false));
    let loads = vec![
        ("node-1 -> tcp-on-2", tcp_load(at(&n1, "tcp-on-2"), "tcp-on-2", stop.clone())),
        ("node-1 -> http-on-2", http_load(at(&n1, "http-on-2"), "http-on-2", stop.clone())),
        ("node-2 -> tcp-on-1", tcp_load(at(&n2, "tcp-on-1"), "tcp-on-1", stop.clone())),
        ("node-2 -> http-on-1", http_load(at(&n2, "http-on-1"), "http-on-1", stop.clone())),
    ];
    std::thread::sleep(Duration::from_secs(2));

    let old = n1.pid();
    let started = Instant::now();
    let new = n1.upgrade();
    let took = started.elapsed();
    // The old process drains and exits by itself (0: a clean handover).
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        if let Some(status) = n1.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process still runs 60 s after the upgrade:\n{}", n1.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    let drained = started.elapsed();
    assert_eq!(exited.code(), Some(0), "{}", n1.logs());
    // Load through the new process alone for a while.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for (what, load) in loads {
        let t = load.join().expect("load thread");
        eprintln!("{what}: {} ok, {} failed, {} connections", t.ok, t.failed.len(), t.connections);
        assert!(t.ok > 100, "{what} ran: {t:?}");
        failed.extend(t.failed);
    }
    eprintln!("upgrade {old} -> {new}: `meshd upgrade` returned after {took:?}; the old process exited {drained:?} after it began");
    assert!(failed.is_empty(), "{} requests failed across the upgrade: {failed:?}\n{}", failed.len(), n1.logs());
    let log = n1.logs();
    assert!(log.contains("upgrade: sockets handed over"), "{log}");
    assert!(log.contains("took over from the previous meshd process"), "{log}");
    // The old process's connections kept working through the new one, which read the
    // shared UDP port and passed their datagrams on.
    let passed = n1.metric("mesh_transport_handover_datagrams_total{reason=\"passed\"}");
    eprintln!("datagrams passed to the old process: {passed}");
    assert!(passed > 0, "the successor passed the old process's datagrams on");
    // The new process is the node: it still answers, with the same services.
    let status = n1.meshctl_json(&["status"]);
    assert_eq!(status["pid"].as_i64(), Some(i64::from(new.as_raw())));
    assert_eq!(status["node"], "node-1");
}
