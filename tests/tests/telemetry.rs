//! Traffic telemetry with three real meshd: node-1 calls as a plain node, node-2 hosts
//! `reviews` (HTTP) and `db` (TCP), node-3 hosts `productpage`, which calls `reviews` on
//! to a second hop. After a known load: exact `istio_*` counts from both reporters,
//! bytes and histogram counts; the JSON access log; OTLP spans received by a collector
//! in this test (decoded with OpenTelemetry's own protobuf types) and parented across
//! both hops; the traffic summary that `/v1/traffic` merges from every node.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::{Block, Node};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const CONVERGE: Duration = Duration::from_secs(30);

/// Reads one HTTP/1.1 request: request line, headers (lower-cased), body.
fn read_request(reader: &mut impl BufRead) -> Option<(String, BTreeMap<String, String>, Vec<u8>)> {
    let head = mesh_tests::read_head(reader)?;
    let mut body = vec![0u8; head.content_length()];
    reader.read_exact(&mut body).ok()?;
    Some((head.line, head.headers.into_iter().collect(), body))
}

/// A keep-alive HTTP server; `answer(request line, headers)` gives the status and body.
fn http_server(
    listener: TcpListener,
    answer: impl Fn(&str, &BTreeMap<String, String>) -> (u16, String) + Send + Sync + 'static,
) {
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                while let Some((line, headers, _)) = read_request(&mut reader) {
                    let (status, body) = answer(&line, &headers);
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// An OTLP/HTTP collector: every span of every export request it got.
fn collector(listener: TcpListener) -> Arc<Mutex<Vec<(String, Span)>>> {
    let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
    let got = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let got = got.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                while let Some((line, headers, body)) = read_request(&mut reader) {
                    assert!(line.starts_with("POST /v1/traces "), "{line}");
                    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/x-protobuf"));
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP export request");
                    for rs in request.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                got.lock().expect("lock").push((service.clone(), span));
                            }
                        }
                    }
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

/// A sample's labels and value, for every sample of `name` (`name{...} v` lines).
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let Some(rest) = rest.strip_prefix('{') else { continue };
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let value = value.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let map = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
            .collect();
        out.push((map, value));
    }
    out
}

/// The sum of `name`'s samples whose labels include all of `want`.
fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(labels, _)| want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, v)| v)
        .sum()
}

/// One request on a new connection: the status and body.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: svc.mesh\r\nConnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[test]
fn a_known_load_is_counted_by_both_reporters_logged_and_traced_across_two_hops() {
    let block = Block::take();
    let otlp = TcpListener::bind((block.node_ip(1), 0)).expect("collector port");
    let endpoint = format!("http://{}", otlp.local_addr().expect("addr"));
    let spans = collector(otlp);
    let telemetry = |node: &str| {
        format!(
            "[tracing]\notlp_endpoint = \"{endpoint}\"\nsample_percent = 0\n\n[access_log]\npath = \"{}\"\n",
            std::env::temp_dir().join(format!("mesh-access-{}-{node}.log", std::process::id())).display()
        )
    };
    let n1 = Node::start(&block, 1, &telemetry("node-1"));
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, &telemetry("node-2"));
    let ip3 = block.node_ip(3);
    let page = TcpListener::bind((ip3, 0)).expect("productpage");
    let page_port = page.local_addr().expect("addr").port();
    let n3 = {
        let extra = format!(
            "{}\n[[service]]\nname = \"productpage\"\naddress = \"{ip3}\"\nport = {page_port}\nprotocol = \"http\"\n",
            telemetry("node-3")
        );
        let node = Node::prepare_full(&block, 3, &seed, "source = \"productpage\"", &extra);
        let out = node.meshd(&["join", &n1.token(&[])]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        node.run()
    };
    let access_log = |node: &str| std::env::temp_dir().join(format!("mesh-access-{}-{node}.log", std::process::id()));

    // reviews: 200 for /ok, 503 for /fail. db: reads 5 bytes, answers 9, closes.
    let ip2 = block.node_ip(2);
    let reviews = TcpListener::bind((ip2, 0)).expect("reviews");
    let reviews_port = reviews.local_addr().expect("addr").port();
    http_server(
        reviews,
        |line, _| if line.contains("/fail") { (503, "down".into()) } else { (200, "ok reviews".into()) },
    );
    let db = TcpListener::bind((ip2, 0)).expect("db");
    let db_port = db.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in db.incoming().flatten() {
            let mut hello = [0u8; 5];
            if conn.read_exact(&mut hello).is_ok() {
                let _ = conn.write_all(b"db:hello!");
            }
        }
    });
    for (name, text) in [
        ("reviews", format!("name = \"reviews\"\naddress = \"{ip2}\"\nport = {reviews_port}\nprotocol = \"http\"\nlabels = {{ version = \"v2\" }}\n")),
        ("db", format!("name = \"db\"\naddress = \"{ip2}\"\nport = {db_port}\n")),
    ] {
        let path = n2.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("file");
        let out = n2.meshctl(&["service", "register", "-f", &path.display().to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // productpage on node-3 calls reviews through node-3's virtual IP, passing the
    // traceparent it got on, as an instrumented application does.
    n3.wait_healthy("reviews", 1, CONVERGE);
    let reviews_from_3 = SocketAddr::from((n3.vip("reviews", CONVERGE), reviews_port));
    http_server(page, move |_, headers| {
        let tp = headers.get("traceparent").cloned().unwrap_or_default();
        let (status, body) = request(reviews_from_3, "GET", "/ok", &format!("traceparent: {tp}\r\n"), "");
        (status, format!("productpage saw {tp} and reviews said {body}"))
    });
    for s in ["reviews", "db", "productpage"] {
        n1.wait_healthy(s, 1, CONVERGE);
    }

    // The load, from node-1: 10 GET and 10 POST (7-byte body) that succeed, 5 that fail,
    // 3 TCP connections, and one traced request to productpage.
    let reviews_from_1 = SocketAddr::from((n1.vip("reviews", CONVERGE), reviews_port));
    for _ in 0..10 {
        assert_eq!(request(reviews_from_1, "GET", "/ok", "", ""), (200, "ok reviews".into()));
        assert_eq!(request(reviews_from_1, "POST", "/ok", "", "payload"), (200, "ok reviews".into()));
    }
    for _ in 0..5 {
        assert_eq!(request(reviews_from_1, "GET", "/fail?x=1", "", "").0, 503);
    }
    let db_from_1 = SocketAddr::from((n1.vip("db", CONVERGE), db_port));
    for _ in 0..3 {
        let mut s = TcpStream::connect(db_from_1).expect("db connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        s.write_all(b"hello").expect("send");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert_eq!(answer, b"db:hello!");
    }
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let page_from_1 = SocketAddr::from((n1.vip("productpage", CONVERGE), page_port));
    let (status, body) =
        request(page_from_1, "GET", "/product/1", &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01\r\n"), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(trace) && body.ends_with("ok reviews"), "{body}");

    // Both reporters count exactly the same calls.
    for (node, reporter) in [(&n1, "source"), (&n2, "destination")] {
        let want = |code: &'static str| {
            [
                ("reporter", reporter),
                ("source_workload", "node-1"),
                ("destination_service_name", "reviews"),
                ("destination_version", "v2"),
                ("response_code", code),
                ("connection_security_policy", "mutual_tls"),
            ]
        };
        let text = node.eventually(Duration::from_secs(10), "the counts", || {
            let text = node.metrics();
            let done = sum(&text, "istio_requests_total", &want("200")) == 20.0
                && sum(&text, "istio_requests_total", &want("503")) == 5.0
                && sum(
                    &text,
                    "istio_tcp_connections_closed_total",
                    &[("reporter", reporter), ("destination_service_name", "db")],
                ) == 3.0;
            done.then_some(text)
        });
        assert_eq!(sum(&text, "istio_request_duration_milliseconds_count", &want("200")), 20.0, "{reporter}");
        assert_eq!(sum(&text, "istio_request_bytes_sum", &want("200")), 70.0, "{reporter}: 10 bodies of 7 bytes");
        assert_eq!(sum(&text, "istio_response_bytes_sum", &want("200")), 200.0, "{reporter}: 20 x 'ok reviews'");
        assert_eq!(sum(&text, "istio_response_bytes_sum", &want("503")), 20.0, "{reporter}: 5 x 'down'");
        let principal = format!("spiffe://{}/node/node-1", "mesh.local");
        let by_principal =
            sum(&text, "istio_requests_total", &[("reporter", reporter), ("source_principal", &principal)]);
        assert!(by_principal >= 25.0, "{reporter}: source_principal is node-1's SPIFFE ID ({by_principal})");
        let db = |name: &str| {
            sum(
                &text,
                name,
                &[("reporter", reporter), ("source_workload", "node-1"), ("destination_service_name", "db")],
            )
        };
        assert_eq!(db("istio_tcp_connections_opened_total"), 3.0, "{reporter}");
        assert_eq!(db("istio_tcp_received_bytes_total"), 15.0, "{reporter}: the server received 3 x 'hello'");
        assert_eq!(db("istio_tcp_sent_bytes_total"), 27.0, "{reporter}: the server sent 3 x 'db:hello!'");
        // An exemplar (the trace id) on the latency histogram; no path or host in a label.
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_request_duration_milliseconds_bucket") && l.contains("# {trace_id=\"")),
            "{reporter}: no exemplar"
        );
        assert!(!text.contains("/fail") && !text.contains("svc.mesh"), "{reporter}: a path or Host in a label");
    }
    // productpage's call to reviews carries productpage as its source, on both sides.
    let from_page = |node: &Node, reporter: &str| {
        sum(
            &node.metrics(),
            "istio_requests_total",
            &[("reporter", reporter), ("source_workload", "productpage"), ("destination_service_name", "reviews")],
        )
    };
    n3.eventually(Duration::from_secs(10), "productpage's call", || (from_page(&n3, "source") == 1.0).then_some(()));
    n2.eventually(Duration::from_secs(10), "productpage's call", || {
        (from_page(&n2, "destination") == 1.0).then_some(())
    });

    // The access log: JSON lines with the trace id.
    let lines = n2.eventually(Duration::from_secs(10), "node-2's access log", || {
        let text = std::fs::read_to_string(access_log("node-2")).ok()?;
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        (lines.len() >= 29).then_some(lines)
    });
    let reviews_lines: Vec<_> = lines.iter().filter(|l| l["destination_service"] == "reviews").collect();
    assert_eq!(reviews_lines.len(), 26, "25 from node-1, 1 from productpage");
    for l in &reviews_lines {
        assert_eq!(l["reporter"], "destination");
        assert_eq!(l["trace_id"].as_str().map(str::len), Some(32), "{l}");
        assert!(l["response_code"] == 200 || l["response_code"] == 503, "{l}");
        assert_eq!(l["upstream_host"], format!("{ip2}:{reviews_port}"));
    }
    let traced: Vec<_> = reviews_lines.iter().filter(|l| l["trace_id"] == trace).collect();
    assert_eq!(traced.len(), 1, "the traced call's line carries its trace id");
    assert_eq!(traced[0]["source_workload"], "productpage");
    let failed = reviews_lines.iter().filter(|l| l["response_code"] == 503).count();
    assert_eq!(failed, 5);
    assert!(reviews_lines.iter().any(|l| l["path"] == "/fail" && l["method"] == "GET"));
    let db_lines = lines.iter().filter(|l| l["destination_service"] == "db").count();
    assert_eq!(db_lines, 3);

    // Spans: exactly four, one trace, each parented by the hop before it.
    let got = n1.eventually(Duration::from_secs(15), "four spans at the collector", || {
        let got = spans.lock().expect("lock").clone();
        (got.len() >= 4).then_some(got)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let got = {
        let now = spans.lock().expect("lock").clone();
        if now.len() > got.len() {
            now
        } else {
            got
        }
    };
    assert_eq!(got.len(), 4, "only the sampled request is traced: {got:#?}");
    assert!(got.iter().all(|(_, s)| hex(&s.trace_id) == trace));
    let find = |kind: i32, service: &str| {
        got.iter()
            .find(|(_, s)| s.kind == kind && attr(s, "mesh.service").contains(service))
            .map(|(svc, s)| (svc.clone(), s.clone()))
            .unwrap_or_else(|| panic!("no span of kind {kind} for {service}: {got:#?}"))
    };
    let (client_svc, out1) = find(3, "productpage");
    let (server_svc, in1) = find(2, "productpage");
    let (_, out2) = find(3, "reviews");
    let (_, in2) = find(2, "reviews");
    assert_eq!(hex(&out1.parent_span_id), "00f067aa0ba902b7", "the first hop continues the caller's span");
    assert_eq!(in1.parent_span_id, out1.span_id);
    assert_eq!(out2.parent_span_id, in1.span_id, "productpage passed on the span meshd gave it");
    assert_eq!(in2.parent_span_id, out2.span_id);
    assert!(client_svc.contains("node-1"), "{client_svc}");
    assert!(server_svc.contains("productpage"), "{server_svc}");
    assert!(attr(&in2, "http.response.status_code").contains("200"), "{in2:?}");
    assert!(attr(&in2, "mesh.peer_node").contains("node-3"), "{in2:?}");
    assert!(attr(&out2, "mesh.peer_node").contains("node-2"), "{out2:?}");

    // The whole mesh's traffic, merged from every node on request.
    let traffic = n1.meshctl_json(&["top", "--once"]);
    let edge = |source: &str, destination: &str| {
        traffic["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| e["source"] == source && e["destination"] == destination)
            .cloned()
            .unwrap_or_else(|| panic!("no edge {source} -> {destination}: {traffic}"))
    };
    let e = edge("node-1", "reviews");
    assert_eq!((e["requests"].as_u64(), e["errors"].as_u64()), (Some(25), Some(5)), "{e}");
    assert_eq!(e["success_rate"].as_f64(), Some(0.8));
    assert_eq!(edge("productpage", "reviews")["requests"], 1);
    assert_eq!(edge("node-1", "db")["protocol"], "tcp");
    assert_eq!(traffic["answered"], serde_json::json!(["node-1", "node-2", "node-3"]));
    for node in ["node-1", "node-2", "node-3"] {
        let _ = std::fs::remove_file(access_log(node));
    }
}
