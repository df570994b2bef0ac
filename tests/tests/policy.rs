//! Authorization policies with real meshd processes: node-2 hosts `reviews` (HTTP) and
//! `db` (TCP); node-3 hosts `productpage` and calls as it (`[proxy] source`); node-1 is a
//! caller with no service. Policies are applied on node-1 and enforced by node-2.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mesh_tests::{Block, Node};

const CONVERGE: Duration = Duration::from_secs(30);

/// A keep-alive HTTP/1.1 server answering `ok METHOD PATH` as it received them.
fn http_backend(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("backend listen");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                        return;
                    }
                    let mut length = 0usize;
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
                    let mut words = line.split_whitespace();
                    let text = format!("ok {} {}", words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A TCP server that writes `db` to each connection and closes it.
fn tcp_backend(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("backend listen");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"db");
        }
    });
}

fn free_port(block: &Block, i: u8) -> u16 {
    let probe = TcpListener::bind((block.node_ip(i), 0)).expect("port");
    probe.local_addr().expect("addr").port()
}

fn register(node: &Node, name: &str, text: &str) {
    let path = node.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("file");
    let out = node.meshctl(&["service", "register", "-f", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `reviews` (HTTP) and `db` (TCP) backends on node-2's address, registered by `n2`.
fn reviews_and_db_on(block: &Block, n2: &Node, http_port: u16, tcp_port: u16) {
    let ip2 = block.node_ip(2);
    http_backend(SocketAddr::from((ip2, http_port)));
    tcp_backend(SocketAddr::from((ip2, tcp_port)));
    let reviews = format!("name = \"reviews\"\naddress = \"{ip2}\"\nport = {http_port}\nprotocol = \"http\"\n");
    register(n2, "reviews", &reviews);
    register(n2, "db", &format!("name = \"db\"\naddress = \"{ip2}\"\nport = {tcp_port}\n"));
}

fn apply(node: &Node, text: &str) -> String {
    let path = node.dir.path().join("policy.toml");
    std::fs::write(&path, text).expect("policy file");
    let out = node.meshctl(&["policy", "apply", "-f", &path.display().to_string(), "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One raw HTTP/1.1 request line and headers on a new connection: status, headers, body.
fn raw(addr: SocketAddr, request_line: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "{request_line}\r\nHost: reviews.mesh\r\nConnection: close\r\n{headers}\r\n").expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// One HTTP/2 (prior knowledge) GET of `path` as the `:path` pseudo-header: its status.
fn h2(addr: SocketAddr, path: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let io = hyper_util::rt::TokioIo::new(tcp);
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            io,
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let uri: hyper::Uri = format!("http://reviews.mesh{path}").parse().expect("uri");
        let req = hyper::Request::get(uri).body(http_body_util::Empty::new()).expect("request");
        sender.send_request(req).await.expect("an answer").status().as_u16()
    })
}

fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = raw(addr, &format!("{method} {path} HTTP/1.1"), "");
    (status, body)
}

#[test]
fn policies_allow_deny_and_rate_limit_callers_at_the_destination() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, "");
    let (http_port, tcp_port, page_port) = (free_port(&block, 2), free_port(&block, 2), free_port(&block, 3));
    let n3 = {
        let page = format!(
            "[[service]]\nname = \"productpage\"\naddress = \"{}\"\nport = {page_port}\nprotocol = \"http\"\n",
            block.node_ip(3)
        );
        let node = Node::prepare_full(&block, 3, &seed, "source = \"productpage\"", &page);
        let out = node.meshd(&["join", &n1.token(&[])]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        node.run()
    };
    reviews_and_db_on(&block, &n2, http_port, tcp_port);
    http_backend(SocketAddr::from((block.node_ip(3), page_port)));
    for n in [&n1, &n3] {
        for s in ["reviews", "db", "productpage"] {
            n.wait_healthy(s, 1, CONVERGE);
        }
    }
    let reviews_from = |n: &Node| SocketAddr::from((n.vip("reviews", CONVERGE), http_port));
    let db_from = |n: &Node| SocketAddr::from((n.vip("db", CONVERGE), tcp_port));
    let (page, plain) = (reviews_from(&n3), reviews_from(&n1));
    assert_eq!(get(plain, "GET", "/reviews/1").0, 200, "the mesh default is allow");

    // Deny by default, an allow for productpage's GETs, a deny that wins over it. Applied
    // on node-1 with --wait: node-2 enforces it at once.
    apply(
        &n1,
        "service = \"reviews\"\ndefault = \"deny\"\n[[allow]]\nfrom = [\"productpage\"]\nhttp = { methods = [\"GET\"] }\n\
         [[deny]]\nfrom = [\"*\"]\nhttp = { paths = [{ prefix = \"/admin\" }] }\n",
    );
    assert_eq!(get(page, "GET", "/reviews/1"), (200, "ok GET /reviews/1".to_owned()));
    let (status, body) = get(plain, "GET", "/reviews/1");
    assert_eq!(status, 403, "node-1 is not productpage: {body}");
    assert!(body.starts_with("deny") && body.contains("reviews"), "the body names the policy: {body}");
    assert_eq!(get(page, "POST", "/reviews/1").0, 403, "an L7 rule on the method");
    let (status, body) = get(page, "GET", "/admin/users");
    assert_eq!(status, 403, "the deny wins over the allow");
    assert!(body.contains("deny[0]"), "{body}");

    // Spellings of /admin, sent as written: each decided as its normalized form.
    for path in [
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/adm%69n/x",
        "/%2e%2e/admin",
        "/admin;x",
        "/admin/",
        "/admin?x=1",
        "/x/%2E%2E/admin",
        "///admin//",
        "/admin/.",
        "/admin",
        "/admin;jsessionid=1/x",
        "/%41%44%4d%49%4e/../admin",
        "/a/b/c/../../../admin",
        "/admin/x/..",
        "/.%2e/admin",
        "/admin#x",
        "/%2E/admin/",
    ] {
        assert_eq!(get(page, "GET", path).0, 403, "{path}");
    }
    for path in ["/admin%2f", "/admin%2Fx", "/x%5c..%5cadmin"] {
        assert_eq!(get(page, "GET", path).0, 400, "{path}: an encoded slash is refused");
    }
    for path in ["/administrator", "/ADMIN", "/x/admin"] {
        assert_eq!(get(page, "GET", path).0, 200, "{path} is not /admin");
    }
    assert_eq!(raw(page, "GET http://reviews.mesh/admin HTTP/1.1", "").0, 403, "an absolute-form target");
    assert_eq!(raw(page, "GET http://REVIEWS.MESH//admin HTTP/1.1", "").0, 403, "case of the host");
    for path in ["//admin", "/%61dmin/x", "/x/../admin"] {
        assert_eq!(h2(page, path), 403, "HTTP/2 :path {path}");
    }
    assert_eq!(h2(page, "/reviews"), 200, "HTTP/2 is served like HTTP/1.1");

    // Header rules see the combined value of a repeated header, by any name case.
    apply(
        &n1,
        "service = \"reviews\"\ndefault = \"deny\"\n[[allow]]\nfrom = [\"productpage\"]\n\
         http = { headers = { \"x-tenant\" = \"a\" } }\n",
    );
    assert_eq!(raw(page, "GET / HTTP/1.1", "X-TENANT: a\r\n").0, 200);
    assert_eq!(raw(page, "GET / HTTP/1.1", "x-tenant: a\r\nx-tenant: b\r\n").0, 403, "a, b is not a");
    assert_eq!(raw(page, "GET / HTTP/1.1", "").0, 403);

    // Explaining a decision.
    let check = |args: &[&str]| {
        let out = n1.meshctl(&[&["policy", "check"], args].concat());
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, line) = check(&["--from", "productpage", "--to", "reviews", "--header", "x-tenant=a"]);
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("allow") && line.contains("allow[0]"), "{line}");
    let (code, line) = check(&["--from", "node:node-1", "--to", "reviews", "--path", "/x"]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("deny") && line.contains("default"), "{line}");

    // TCP: the denied caller's connection is refused before the instance is connected.
    apply(&n1, "service = \"db\"\ndefault = \"deny\"\n[[allow]]\nfrom = [\"productpage\"]\n");
    let read_all = |addr: SocketAddr| {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    assert_eq!(read_all(db_from(&n3)), "db");
    assert_eq!(read_all(db_from(&n1)), "", "refused: nothing from the instance");
    let denied =
        "mesh_proxy_policy_refusals_total{outcome=\"denied\",service=\"db\",source=\"node:node-1\",rule=\"default\"}";
    assert!(n2.metric(denied) >= 1, "{}", n2.metrics());

    // A rate limit of 50/s (burst 50) under about 200/s for 2 s: the bucket's maths
    // says how many pass, whatever the exact pacing.
    apply(
        &n1,
        "service = \"reviews\"\n[[rate_limit]]\nfrom = [\"productpage\"]\nrequests_per_second = 50\nburst = 50\n",
    );
    let mut conn = TcpStream::connect(page).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let started = Instant::now();
    let (mut passed, mut limited, mut retry_after) = (0u32, 0u32, false);
    for i in 0..400u32 {
        let due = started + Duration::from_millis(u64::from(i) * 5);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        write!(conn, "GET /r HTTP/1.1\r\nHost: reviews.mesh\r\n\r\n").expect("send");
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header");
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            retry_after |= h.starts_with("retry-after:");
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("body");
        match status.split_whitespace().nth(1) {
            Some("200") => passed += 1,
            Some("429") => limited += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 50.0 + 50.0 * elapsed;
    assert!(
        (f64::from(passed) - expected).abs() <= expected * 0.1 + 2.0,
        "{passed} passed in {elapsed:.2}s; the bucket allows {expected:.0}"
    );
    assert_eq!(passed + limited, 400);
    assert!(retry_after, "a 429 says when to retry");

    // History and rollback: back to revision 1 (the first policy), then delete: the mesh
    // default allows node-1 again.
    let history = n1.meshctl_json(&["policy", "history", "reviews"]);
    assert_eq!(history.as_array().map_or(0, Vec::len), 3, "{history}");
    let out = n1.meshctl(&["policy", "rollback", "reviews", "--to", "1", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(page, "GET", "/admin").0, 403, "revision 1's deny is back");
    let out = n1.meshctl(&["policy", "delete", "reviews"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n1.eventually(CONVERGE, "the deletion reaches node-2", || (get(plain, "GET", "/x").0 == 200).then_some(()));
}

/// `[policy] default = "deny"` on the host of the services, no policy anywhere: every
/// connection and request to them is refused, with the reason in the log, while the
/// mesh's own traffic carries on (the nodes stay members, routes still apply).
#[test]
fn a_mesh_default_of_deny_refuses_every_caller_but_not_the_mesh_itself() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, "[policy]\ndefault = \"deny\"\n");
    let (http_port, tcp_port) = (free_port(&block, 2), free_port(&block, 2));
    reviews_and_db_on(&block, &n2, http_port, tcp_port);
    n1.wait_healthy("reviews", 1, CONVERGE);
    n1.wait_healthy("db", 1, CONVERGE);
    let (status, body) = get(SocketAddr::from((n1.vip("reviews", CONVERGE), http_port)), "GET", "/");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no policy") && body.contains("mesh default is deny"), "{body}");
    let mut s = TcpStream::connect(SocketAddr::from((n1.vip("db", CONVERGE), tcp_port))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "refused before the instance: {}", String::from_utf8_lossy(&got));
    let logs = n2.logs();
    assert!(logs.contains("tunnel refused") && logs.contains("mesh default is deny"), "the log says why");
    // The mesh itself: both members alive, and a route applied everywhere.
    let alive = |n: &Node| {
        n.meshctl_json(&["members"]).as_array().map_or(0, |a| a.iter().filter(|m| m["state"] == "alive").count())
    };
    assert_eq!((alive(&n1), alive(&n2)), (2, 2));
    let route = n1.dir.path().join("r.toml");
    std::fs::write(&route, "service = \"db\"\n[[tcp]]\n").expect("route");
    let out = n1.meshctl(&["route", "apply", "-f", &route.display().to_string(), "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
