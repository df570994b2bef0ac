//! HTTP traffic control with real meshd processes: three nodes, `web` v1 on node-2 and v2
//! on node-3 (HTTP servers in this process), clients on node-1's virtual IP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_tests::{Block, Node};

const CONVERGE: Duration = Duration::from_secs(30);

/// How a backend behaves; shared with the test so it can change at run time.
#[derive(Default)]
struct Behaviour {
    /// Every Nth request (N > 0) answers 503... as a share in percent.
    fail_percent: AtomicU64,
    /// Answer after this many milliseconds.
    delay_ms: AtomicU64,
    /// Answer 500 to everything.
    broken: AtomicBool,
    seen: AtomicU64,
    mirrored: AtomicU64,
    /// Requests that arrived with both `x-request-id` and a W3C `traceparent`.
    traced: AtomicU64,
}

/// A keep-alive HTTP/1.1 server answering its `name`.
fn backend(addr: SocketAddr, name: &'static str) -> Arc<Behaviour> {
    let b = Arc::new(Behaviour::default());
    let listener = TcpListener::bind(addr).expect("backend listen");
    let shared = b.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let b = shared.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut length = 0usize;
                    let mut mirror = false;
                    let (mut request_id, mut traceparent) = (false, false);
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
                        mirror |= h.starts_with("x-mesh-mirror:");
                        request_id |= h.starts_with("x-request-id:");
                        traceparent |= h.starts_with("traceparent: 00-") && h.len() == "traceparent: ".len() + 55;
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = b.seen.fetch_add(1, Ordering::Relaxed);
                    if request_id && traceparent {
                        b.traced.fetch_add(1, Ordering::Relaxed);
                    }
                    if mirror {
                        b.mirrored.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(b.delay_ms.load(Ordering::Relaxed)));
                    let fail = b.fail_percent.load(Ordering::Relaxed);
                    let status = if b.broken.load(Ordering::Relaxed) {
                        "500 Internal Server Error"
                    } else if fail > 0 && (n * 7919) % 100 < fail {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    b
}

struct Mesh {
    n1: Node,
    _n2: Node,
    _n3: Node,
    addr: SocketAddr,
    v1: Arc<Behaviour>,
    v2: Arc<Behaviour>,
}

fn mesh(block: &Block) -> Mesh {
    let n1 = Node::start(block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(block, 2, &n1.token(&[]), &seed, "");
    let n3 = Node::join(block, 3, &n1.token(&[]), &seed, "");
    let probe = TcpListener::bind((block.node_ip(2), 0)).expect("port");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let v1 = backend(SocketAddr::from((block.node_ip(2), port)), "v1");
    let v2 = backend(SocketAddr::from((block.node_ip(3), port)), "v2");
    for (node, i, version) in [(&n2, 2, "v1"), (&n3, 3, "v2")] {
        let path = node.dir.path().join("web.toml");
        let text = format!(
            "name = \"web\"\naddress = \"{}\"\nport = {port}\nprotocol = \"http\"\nlabels = {{ version = \"{version}\" }}\n",
            block.node_ip(i)
        );
        std::fs::write(&path, text).expect("file");
        let out = node.meshctl(&["service", "register", "-f", &path.display().to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    n1.wait_healthy("web", 2, CONVERGE);
    let ip = n1.vip("web", CONVERGE);
    Mesh { n1, _n2: n2, _n3: n3, addr: SocketAddr::from((ip, port)), v1, v2 }
}

fn apply(m: &Mesh, rules: &str) {
    let text = format!(
        "name = \"web\"\nservice = \"web\"\n[subsets]\nv1 = {{ version = \"v1\" }}\nv2 = {{ version = \"v2\" }}\n{rules}"
    );
    let path = m.n1.dir.path().join("route.toml");
    std::fs::write(&path, text).expect("route");
    let out = m.n1.meshctl(&["route", "apply", "-f", &path.display().to_string(), "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// One HTTP/1.1 request on a new connection: status and body.
fn get(addr: SocketAddr, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "GET /page HTTP/1.1\r\nHost: web.mesh\r\nConnection: close\r\n{headers}\r\n").expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, reply.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

#[test]
fn a_split_and_a_header_match_route_each_request() {
    let block = Block::take();
    let m = mesh(&block);
    apply(
        &m,
        "[[http]]\nmatch = { headers = { \"end-user\" = \"jason\" } }\nto = [{ subset = \"v2\" }]\n\
         [[http]]\nto = [{ subset = \"v1\", weight = 80 }, { subset = \"v2\", weight = 20 }]\n",
    );
    let v1 = (0..1000).filter(|_| get(m.addr, "").1 == "v1").count();
    assert!((737..=863).contains(&v1), "{v1} of 1000 requests to v1 for a weight of 80");
    assert!((0..50).all(|_| get(m.addr, "end-user: jason\r\n").1 == "v2"), "the header match goes to v2");
    let (seen, traced) = (
        m.v1.seen.load(Ordering::Relaxed) + m.v2.seen.load(Ordering::Relaxed),
        m.v1.traced.load(Ordering::Relaxed) + m.v2.traced.load(Ordering::Relaxed),
    );
    assert_eq!(traced, seen, "every request arrives with x-request-id and traceparent made by meshd");
    // Several requests on one keep-alive connection are routed one by one.
    let mut s = TcpStream::connect(m.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for _ in 0..3 {
        write!(s, "GET / HTTP/1.1\r\nHost: web.mesh\r\nend-user: jason\r\n\r\n").expect("send");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("a response");
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("v2"));
    }
}

#[test]
fn the_mirror_copies_every_request_and_the_client_sees_only_the_primary() {
    let block = Block::take();
    let m = mesh(&block);
    apply(&m, "[[http]]\nto = [{ subset = \"v1\" }]\nmirror = { subset = \"v2\", percent = 100 }\n");
    for _ in 0..100 {
        assert_eq!(get(m.addr, ""), (200, "v1".to_owned()));
    }
    let deadline = Instant::now() + CONVERGE;
    while m.v2.mirrored.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "v2 got {} mirrored copies", m.v2.mirrored.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.v2.seen.load(Ordering::Relaxed), 100, "v2 sees the copies and nothing else");
    let metrics = m.n1.metrics();
    assert_eq!(
        metric(&metrics, "mesh_proxy_http_events_total{service=\"web\",event=\"mirror_sent\"}"),
        100,
        "{metrics}"
    );
    // HTTP connections count like TCP ones: 100 and more (the waits), with their bytes.
    assert!(metric(&metrics, "mesh_proxy_connections_total{direction=\"outbound\",result=\"ok\"}") >= 100, "{metrics}");
    let sent = metric(&metrics, "mesh_proxy_bytes_total{direction=\"outbound\",way=\"sent\"}");
    let received = metric(&metrics, "mesh_proxy_bytes_total{direction=\"outbound\",way=\"received\"}");
    assert!(sent >= 100 * 50 && received >= 100 * 40, "bytes of 100 requests and responses: {sent} / {received}");
}

/// The value of the sample `name` (with its labels) in Prometheus text, 0 if absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

#[test]
fn a_rules_retry_budget_caps_retries_and_refusals_are_counted() {
    let block = Block::take();
    let m = mesh(&block);
    m.v1.broken.store(true, Ordering::Relaxed);
    // A budget of 0% with no floor: not one retry, however many attempts the rule allows.
    apply(
        &m,
        "[[http]]\nto = [{ subset = \"v1\" }]\nretries = { attempts = 3, on = [\"5xx\"], budget = { percent = 0, min_per_second = 0 } }\n",
    );
    for _ in 0..20 {
        assert_eq!(get(m.addr, "").0, 500);
    }
    assert_eq!(m.v1.seen.load(Ordering::Relaxed), 20, "one try per request");
    let metrics = m.n1.metrics();
    assert_eq!(
        metric(&metrics, "mesh_proxy_http_events_total{service=\"web\",event=\"retry_budget_exhausted\"}"),
        20,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "mesh_proxy_http_events_total{service=\"web\",event=\"retry\"}"), 0);

    // The default budget lets the floor of 10 a second through.
    apply(&m, "[[http]]\nto = [{ subset = \"v1\" }]\nretries = { attempts = 3, on = [\"5xx\"] }\n");
    get(m.addr, "");
    let metrics = m.n1.metrics();
    assert_eq!(metric(&metrics, "mesh_proxy_http_events_total{service=\"web\",event=\"retry\"}"), 3, "{metrics}");
}

#[test]
fn retries_turn_a_30_percent_failure_rate_into_at_least_98_percent_success() {
    let block = Block::take();
    let m = mesh(&block);
    m.v1.fail_percent.store(30, Ordering::Relaxed);
    apply(&m, "[[http]]\nto = [{ subset = \"v1\" }]\nretries = { attempts = 3, on = [\"5xx\"] }\n");
    // The retry budget allows 10 retries a second at least, or 20% of requests: at 20
    // requests a second the ~42% extra tries this failure rate needs fit in it.
    let started = Instant::now();
    let mut ok = 0;
    for i in 0..1000u32 {
        if get(m.addr, "").0 == 200 {
            ok += 1;
        }
        let due = started + Duration::from_millis(50) * (i + 1);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    assert!(ok >= 980, "{ok} of 1000 succeeded");
}

#[test]
fn timeouts_faults_and_ejection() {
    let block = Block::take();
    let m = mesh(&block);
    // A slow backend is cut by the rule's timeout with 504.
    m.v1.delay_ms.store(3000, Ordering::Relaxed);
    apply(&m, "[[http]]\nto = [{ subset = \"v1\" }]\ntimeout = \"300ms\"\n");
    assert_eq!(get(m.addr, "").0, 504, "the backend would answer 200 after 3 s: 504 is the rule's timeout");
    m.v1.delay_ms.store(0, Ordering::Relaxed);

    // An abort fault at 50%: its status at about its rate.
    apply(&m, "[[http]]\nfault = { abort = { status = 418, percent = 50 } }\n");
    let aborted = (0..400).filter(|_| get(m.addr, "").0 == 418).count();
    assert!((150..=250).contains(&aborted), "{aborted} of 400 aborted at 50%");

    // No route: v1 breaks; after 5 failures in a row it is ejected and v2 takes all.
    let out = m.n1.meshctl(&["route", "delete", "web"]);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    m.v1.broken.store(true, Ordering::Relaxed);
    for _ in 0..40 {
        get(m.addr, "");
    }
    assert!((0..20).all(|_| get(m.addr, "") == (200, "v2".to_owned())), "the broken instance is ejected");
    let metrics = m.n1.metrics();
    assert!(metric(&metrics, "mesh_proxy_http_events_total{service=\"web\",event=\"ejection\"}") >= 1, "{metrics}");
    // It comes back after the ejection time (5 s the first time).
    m.v1.broken.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(6));
    assert!((0..40).any(|_| get(m.addr, "").1 == "v1"), "the instance is back in rotation");
}

#[test]
fn request_smuggling_is_refused() {
    let block = Block::take();
    let m = mesh(&block);
    let corpus = [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for raw in corpus {
        let mut s = TcpStream::connect(m.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(raw.as_bytes()).expect("send");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply); // read to EOF: the connection is closed
        assert!(reply.starts_with("HTTP/1.1 400"), "{raw:?} -> {reply:?}");
    }
    assert_eq!(m.v1.seen.load(Ordering::Relaxed) + m.v2.seen.load(Ordering::Relaxed), 0, "nothing reached a backend");
}

#[test]
fn http2_requests_are_routed_like_http1_ones() {
    use http_body_util::{BodyExt, Empty};
    let block = Block::take();
    let m = mesh(&block);
    apply(&m, "[[http]]\nmatch = { headers = { \"end-user\" = \"jason\" } }\nto = [{ subset = \"v2\" }]\n[[http]]\nto = [{ subset = \"v1\" }]\n");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(m.addr).await.expect("connect");
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("HTTP/2 with prior knowledge");
        tokio::spawn(conn);
        for (user, want) in [("jason", "v2"), ("ann", "v1"), ("jason", "v2")] {
            let req = hyper::Request::builder()
                .uri(format!("http://web.mesh:{}/page", m.addr.port()))
                .header("end-user", user)
                .body(Empty::<bytes::Bytes>::new())
                .expect("request");
            let resp = h2.send_request(req).await.expect("a response over HTTP/2");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, want.as_bytes(), "end-user {user}");
        }
    });
}

#[test]
fn removing_a_node_takes_its_instances_out_of_routing_with_no_failed_request() {
    let block = Block::take();
    let m = mesh(&block);
    m.n1.eventually(CONVERGE, "both versions answer", || {
        let seen: Vec<String> = (0..20).map(|_| get(m.addr, "").1).collect();
        (seen.iter().any(|b| b == "v1") && seen.iter().any(|b| b == "v2")).then_some(())
    });
    let out = m.n1.meshctl(&["node", "remove", "node-3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<(u16, String)> = (0..20).map(|_| get(m.addr, "")).collect();
    assert!(answers.iter().all(|(status, body)| *status == 200 && body == "v1"), "{answers:?}");
    let services = m.n1.meshctl_json(&["services"]);
    let web = services.as_array().and_then(|a| a.iter().find(|s| s["name"] == "web")).expect("web listed");
    assert_eq!(web["instances"].as_array().map(Vec::len), Some(1), "only node-2's instance is left: {web}");
}
