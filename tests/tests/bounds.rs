//! Bounds on what arrives from outside, against real meshd processes: each abuse is
//! refused and counted while meshd keeps serving everyone else, with memory flat.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::token::Token;
use mesh_tests::{Block, Node};

/// Liveness bound for what takes well under a second.
const LIVENESS: Duration = Duration::from_secs(15);

/// meshd's resident memory, in MiB.
fn rss_mib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// A `mesh-join/1` connection to the signer a token names, from `from`, as an
/// unauthenticated host would open one (the CA pinned, no client certificate).
async fn join_connection(token: &Token, from: std::net::Ipv4Addr) -> Option<(quinn::Endpoint, quinn::Connection)> {
    let tls = meshd::identity::join_client_config(token.ca_fingerprint).ok()?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).ok()?;
    let endpoint = quinn::Endpoint::client(SocketAddr::from((from, 0))).ok()?;
    let conn =
        endpoint.connect_with(quinn::ClientConfig::new(Arc::new(quic)), token.signer, "mesh").ok()?.await.ok()?;
    Some((endpoint, conn))
}

/// Whether the server closed `conn` within a second.
async fn closed_soon(conn: &quinn::Connection) -> bool {
    tokio::time::timeout(Duration::from_secs(1), conn.closed()).await.is_ok()
}

/// 200 join connections from one address, held open: at most 4 are kept, the rest are
/// closed at once and counted; each kept one is closed after its lifetime; a real join
/// from another host goes through meanwhile; a frame announcing 4 MiB on one of them is
/// refused without meshd allocating it; memory stays flat.
#[test]
fn join_connections_are_bounded_per_address_in_number_size_and_time() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let token = Token::decode(&n1.token(&[])).expect("token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let before = rss_mib(&n1);
    let (held, refused) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            let Some((endpoint, conn)) = join_connection(&token, block.node_ip(7)).await else {
                refused += 1;
                continue;
            };
            if closed_soon(&conn).await {
                refused += 1;
            } else {
                held.push((endpoint, conn));
            }
        }
        (held, refused)
    });
    assert_eq!(held.len(), meshd::transport::MAX_JOINS_PER_ADDRESS, "kept per address");
    assert_eq!(refused, 200 - held.len());
    assert!(n1.metric("mesh_transport_refused_connections_total{reason=\"joins_per_address\"}") >= 190);

    // A host elsewhere joins meanwhile.
    let n2 = Node::join(&block, 2, &n1.token(&[]), &n1.seed(), "");
    assert_eq!(n2.meshctl_json(&["status"])["node"], "node-2");

    // A frame announcing 4 MiB (the join limit is 16 KiB) is refused at its header.
    rt.block_on(async {
        let (_, conn) = &held[0];
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        send.write_all(&(4u32 * 1024 * 1024).to_be_bytes()).await.expect("header");
        // The node may stop the stream at the header, before the body is sent.
        let _ = send.write_all(&[0u8; 1000]).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
        assert!(!matches!(answer, Ok(Ok(ref a)) if !a.is_empty()), "no answer to an oversized join request");
    });

    // Every kept connection is closed after its lifetime.
    rt.block_on(async {
        for (_, conn) in &held {
            let lifetime = meshd::transport::JOIN_LIFETIME + Duration::from_secs(5);
            assert!(tokio::time::timeout(lifetime, conn.closed()).await.is_ok(), "closed after its lifetime");
        }
    });
    assert!(n1.metric("mesh_transport_refused_connections_total{reason=\"join_lifetime\"}") >= 1);
    let after = rss_mib(&n1);
    assert!(after < before + 32, "memory stays flat: {before} MiB before, {after} MiB after");
    // And join again from the flooding address now that its connections are gone.
    let again = rt.block_on(join_connection(&token, block.node_ip(7)));
    let (_, conn) = again.expect("a join connection again");
    assert!(!rt.block_on(closed_soon(&conn)), "the address may join again");
}

/// A member streams 64 MiB of pushes into one anti-entropy exchange: the receiver stops
/// reading at the exchange's limit, says so, and its memory does not follow the stream.
#[test]
fn one_anti_entropy_exchange_carries_a_bounded_amount() {
    use mesh_proto::wire::{BucketDigest, MeshRequest, SyncPush, SyncSummary};
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let member = Node::prepare(&block, 3, "");
    assert!(member.meshd(&["join", &n1.token(&[])]).status.success());
    let identity = meshd::identity::Identity::load(&member.dir.path().join("data"), "node-3", Default::default())
        .expect("the member's identity");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let socket = std::net::UdpSocket::bind((block.node_ip(3), 0)).expect("udp");
    let transport = rt.block_on(async {
        meshd::transport::Transport::new(
            socket,
            Arc::new(identity),
            Default::default(),
            None,
            meshd::transport::MIN_STREAMS_PER_PEER,
        )
        .expect("endpoint")
    });
    let before = rss_mib(&n1);
    let n1_addr: SocketAddr = n1.addr().parse().expect("address");
    let sent = rt.block_on(async {
        let peer = transport.dial(n1_addr).await.expect("a member connection");
        let (mut send, mut recv) = peer.conn.open_bi().await.expect("stream");
        let request = MeshRequest::Sync { buckets: vec![BucketDigest { count: 0, xor: 0 }; 256], members: Vec::new() };
        meshd::transport::frame::write(&mut send, &request).await.expect("request");
        let _: SyncSummary = meshd::transport::frame::read(&mut recv).await.expect("summary");
        // 1 MiB pushes of junk entries until the receiver stops reading.
        let junk = SyncPush { entries: vec![vec![0xAB; 64 * 1024]; 16], want: Vec::new() };
        let mut sent = 0usize;
        for _ in 0..64 {
            let write = meshd::transport::frame::write(&mut send, &junk);
            match tokio::time::timeout(Duration::from_secs(5), write).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        sent
    });
    assert!(sent < 64, "the receiver stopped reading before 64 MiB ({sent} MiB sent)");
    n1.eventually(LIVENESS, "the limit is logged", || {
        n1.logs().contains("an anti-entropy exchange reached its size limit").then_some(())
    });
    let after = rss_mib(&n1);
    assert!(after < before + 80, "memory bounded by the exchange limit: {before} MiB before, {after} MiB after");
    assert_eq!(n1.meshctl_json(&["status"])["node"], "node-1", "node-1 serves on");
}

/// Idle DNS TCP connections from one address: 16 are served, the rest closed at once and
/// counted; queries over UDP and over TCP from another address are answered meanwhile.
#[test]
fn dns_tcp_connections_are_bounded_per_address() {
    use std::io::{Read, Write};
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let dns = n1.dns_addr();
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..40 {
        let socket = std::net::TcpStream::connect(dns).expect("the kernel accepts");
        // Short: every probe must be done well within the server's 5 s idle timeout,
        // or the first connections close and make room for later ones.
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let mut probe = socket.try_clone().expect("clone");
        match probe.read(&mut [0u8; 1]) {
            // Closed at once: an orderly close or a reset.
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            _ => held.push(socket),
        }
    }
    assert_eq!(held.len(), meshd::dns::MAX_TCP_PER_ADDRESS, "served per address");
    assert_eq!(closed, 40 - held.len());
    assert_eq!(n1.metric("mesh_dns_refused_connections_total"), closed as u64);
    // UDP answers meanwhile.
    let answer = n1.dig("node-1.node.mesh", hickory_proto::rr::RecordType::A, false);
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    // Once the held ones close, TCP from that address is served again.
    drop(held);
    let query = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 4, b'm', b'e', b's', b'h', 0, 0, 6, 0, 1];
    n1.eventually(LIVENESS, "a TCP query is answered again", || {
        let mut socket = std::net::TcpStream::connect_timeout(&dns, Duration::from_secs(1)).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        socket.write_all(&framed).ok()?;
        let mut len = [0u8; 2];
        socket.read_exact(&mut len).ok()
    });
}

/// A request body over the admin API's limit is answered 413, not 400.
#[test]
fn an_admin_body_over_the_limit_is_413() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let body = n1.dir.path().join("big.json");
    std::fs::write(&body, format!("{{\"name\": \"web\", \"service\": \"{}\"}}", "x".repeat(3 * 1024 * 1024)))
        .expect("body");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
        .arg(&n1.socket)
        .args(["-X", "PUT", "-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg("http://meshd/v1/routes/web")
        .output()
        .expect("curl (apt-get install curl)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
}

/// A minimal HTTP/1.1 backend: every request gets `200 ok`.
fn http_backend(ip: std::net::Ipv4Addr) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).expect("backend");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    // Read one head, answer it.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Slowloris on an HTTP service's listener: 50 connections dribbling a request head, a
/// header line a second. Each is closed once its head has taken HEAD_DEADLINE, whatever
/// it dribbles; requests from a well-behaved client are answered throughout.
#[test]
fn a_dribbled_request_head_is_cut_at_its_deadline() {
    use std::io::{Read, Write};
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let backend = http_backend(block.node_ip(1));
    let service = n1.dir.path().join("web.toml");
    std::fs::write(
        &service,
        format!("name = \"web\"\naddress = \"{}\"\nport = {}\nprotocol = \"http\"\n", backend.ip(), backend.port()),
    )
    .expect("service file");
    assert!(n1.meshctl(&["service", "register", "-f", &service.display().to_string()]).status.success());
    let target = SocketAddr::from((n1.vip("web", LIVENESS), backend.port()));
    let request = || -> Option<()> {
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        answer.starts_with("HTTP/1.1 200").then_some(())
    };
    n1.eventually(LIVENESS, "the service answers", request);

    let started = std::time::Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(target).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n").expect("start a head");
            s
        })
        .collect();
    let deadline = meshd::proxy::http::HEAD_DEADLINE;
    let mut answered = 0;
    while started.elapsed() < deadline + Duration::from_secs(5) {
        slow.retain_mut(|s| s.write_all(b"x-slow: 1\r\n").is_ok());
        assert!(request().is_some(), "a well-behaved request is answered during the attack");
        answered += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    // Every slow connection was closed by the server (a read sees its end).
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut buf = [0u8; 256];
        let still_open = matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(!still_open, "a dribbling connection outlived the head deadline");
    }
    assert!(answered >= 30);
}

/// Slow clients on `admin.http`: each is cut once its request head has taken the
/// deadline, and `/metrics` answers again at once.
#[test]
fn admin_http_cuts_slow_clients() {
    use std::io::{Read, Write};
    let block = Block::take();
    let probe = std::net::TcpListener::bind((block.node_ip(1), 0)).expect("a free port");
    let http = probe.local_addr().expect("addr");
    drop(probe);
    let _n1 = Node::start(&block, 1, &format!("http = \"{http}\""));
    let scrape = || -> Option<String> {
        let mut s = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    assert!(scrape().is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    let started = std::time::Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(http).expect("connect");
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
            s
        })
        .collect();
    while started.elapsed() < meshd::app::ADMIN_HTTP_HEAD_DEADLINE + Duration::from_secs(3) {
        slow.retain_mut(|s| s.write_all(b"x-slow: 1\r\n").is_ok());
        std::thread::sleep(Duration::from_secs(1));
    }
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let still_open = matches!(s.read(&mut [0u8; 64]), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(!still_open, "a slow client outlived the head deadline");
    }
    assert!(scrape().is_some_and(|a| a.starts_with("HTTP/1.1 200")), "/metrics answers again");
}

/// A service's address must be this host's own (so no entry can make meshd connect
/// anywhere else) unless the service says `external = true`; an address no service
/// listens on is refused outright.
#[test]
fn a_service_address_must_be_this_hosts_unless_external() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let register = |name: &str, text: &str| {
        let path = n1.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("name = \"{name}\"\nport = 8080\n{text}")).expect("service file");
        n1.meshctl(&["service", "register", "-f", &path.display().to_string()])
    };
    let elsewhere = register("far", "address = \"198.18.0.5\"\n");
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert_eq!(elsewhere.status.code(), Some(2), "bad input: {stderr}");
    assert!(stderr.contains("not an address of this host") && stderr.contains("external = true"), "{stderr}");
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
        let out = register("bad", &format!("address = \"{bad}\"\n"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("bad.toml:3: address"), "{bad}: {stderr}");
    }
    let external = register("far", "address = \"198.18.0.5\"\nexternal = true\n");
    assert!(external.status.success(), "{}", String::from_utf8_lossy(&external.stderr));
    let local = register("near", &format!("address = \"{}\"\n", block.node_ip(1)));
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let names: Vec<String> = n1
        .meshctl_json(&["services"])
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"far".to_owned()) && names.contains(&"near".to_owned()) && !names.contains(&"bad".to_owned())
    );
}

/// Many handshakes at once: past RETRY_ABOVE in progress, a client whose address is not
/// validated is first sent a QUIC Retry (a spoofed source could not answer it), counted;
/// real clients answer it and get through.
#[test]
fn a_burst_of_handshakes_is_asked_to_validate_its_addresses() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let token = Token::decode(&n1.token(&[])).expect("token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let connected = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        // From many source addresses, so that the join limits per address do not apply.
        for i in 0..300u16 {
            let token = token.clone();
            let from = std::net::Ipv4Addr::new(127, 0, block.n, 150 + (i % 100) as u8);
            set.spawn(async move { join_connection(&token, from).await.is_some() });
        }
        let mut connected = 0;
        while let Some(ok) = set.join_next().await {
            connected += usize::from(ok.unwrap_or(false));
        }
        connected
    });
    assert!(connected >= 250, "real clients answer the Retry and connect: {connected} of 300");
    assert!(
        n1.metric("mesh_transport_refused_connections_total{reason=\"retry\"}") >= 1,
        "some were asked to validate"
    );
}
