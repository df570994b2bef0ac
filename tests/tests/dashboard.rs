//! The dashboard in headless Chromium, and the Grafana dashboard's queries in a real
//! Prometheus: against `meshd dev` (its demo and load), and against real meshd
//! processes of which one is killed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::browser::Browser;
use mesh_tests::{binaries, Block, Node};
use nix::sys::signal::Signal;
use serde_json::Value;

const LIVENESS: Duration = Duration::from_secs(60);

/// A GET over plain HTTP: the body.
fn get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    // HTTP/1.0: the answer is never chunked.
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

fn json(addr: &str, path: &str) -> Value {
    serde_json::from_str(&get(addr, path)).unwrap_or(Value::Null)
}

/// Where screenshots go: `MESH_SCREENSHOTS`, else the test's temporary directory.
fn screenshot_dir(fallback: &std::path::Path) -> PathBuf {
    std::env::var_os("MESH_SCREENSHOTS").map_or_else(|| fallback.to_owned(), PathBuf::from)
}

/// The graph's edges as the page drew them: (source, destination, rps, class).
fn drawn_edges(browser: &mut Browser) -> Vec<(String, String, f64, String)> {
    let v = browser.eval(
        "[...document.querySelectorAll('#graph .edge')].map(e => [e.dataset.source, e.dataset.destination, Number(e.dataset.rps), e.getAttribute('class')])",
    );
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e[0].as_str().unwrap_or("").to_owned(),
                        e[1].as_str().unwrap_or("").to_owned(),
                        e[2].as_f64().unwrap_or(0.0),
                        e[3].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every page of the dashboard loads, with no console error and no request that leaves
/// `origin`.
fn visit_every_page(browser: &mut Browser, origin: &str, shots: &std::path::Path) {
    let pages = [
        ("", "document.querySelectorAll('#members tr[data-member]').length", "overview"),
        ("#/graph", "document.querySelectorAll('#graph .edge').length", "topology"),
        (
            "#/service/reviews",
            "document.querySelectorAll('#paths tr').length > 1 && document.getElementById('diff') !== undefined",
            "service",
        ),
        ("#/routes", "document.querySelectorAll('#routes tr').length > 1", "routes"),
        ("#/policies", "document.getElementById('policies') !== null", "policies"),
    ];
    for (hash, ready, name) in pages {
        browser.navigate(&format!("{origin}/ui{hash}"));
        browser.wait_for(ready, LIVENESS, &format!("the {name} page"));
        browser.screenshot(&shots.join(format!("dashboard-{name}.png")));
    }
    assert!(browser.errors.is_empty(), "console errors: {:#?}", browser.errors);
    let outside: Vec<&String> = browser
        .requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")) && !u.starts_with("data:") && *u != "about:blank")
        .collect();
    assert!(outside.is_empty(), "requests that left the origin: {outside:?}");
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// The process, and its data directory (removed after it).
struct Prometheus(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus that finds every demo node through `sd` and scrapes each second.
fn prometheus(sd: &str) -> (Prometheus, String) {
    assert!(
        std::path::Path::new("/usr/bin/prometheus").exists(),
        "/usr/bin/prometheus is missing: this test needs Debian's prometheus (apt-get install prometheus)"
    );
    let dir = tempfile::Builder::new().prefix("mesh-prometheus-").tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: meshd\n    \
             http_sd_configs:\n      - url: http://{sd}/ui/sd\n        refresh_interval: 2s\n"
        ),
    )
    .expect("config");
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    (Prometheus(child, dir), listen)
}

fn promql(prom: &str, query: &str) -> Value {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    json(prom, &format!("/api/v1/query?query={q}"))
}

#[test]
fn meshd_dev_dashboard_shows_the_demo_and_the_grafana_queries_return_data() {
    let stderr = tempfile::NamedTempFile::new().expect("a file");
    let mut demo = Command::new(&binaries().meshd)
        .arg("dev")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr.reopen().expect("reopen")))
        .spawn()
        .expect("meshd dev");
    struct Stop(Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = demo.stdout.take().expect("stdout");
    let demo = Stop(demo);
    let mut printed = String::new();
    let mut dashboard = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.expect("line");
        printed.push_str(&line);
        printed.push('\n');
        if let Some(rest) = line.strip_prefix("Dashboard: http://") {
            dashboard = rest.split('/').next().map(str::to_owned);
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let addr = dashboard.unwrap_or_else(|| {
        let log = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        panic!(
            "the demo prints its dashboard:\n{printed}\n{}",
            log.lines().filter(|l| !l.contains(" DEBUG ")).collect::<Vec<_>>().join("\n")
        )
    });
    let origin = format!("http://{addr}");

    // The demo's calls, with non-zero rates, within seconds.
    let want =
        [("dev-1", "productpage"), ("productpage", "reviews"), ("productpage", "ratings"), ("ratings", "mysqldb")];
    let deadline = Instant::now() + LIVENESS;
    loop {
        let traffic = json(&addr, "/ui/api/traffic");
        let edges = traffic["edges"].as_array().cloned().unwrap_or_default();
        let has = |s: &str, d: &str| {
            edges.iter().any(|e| e["source"] == s && e["destination"] == d && e["rps"].as_f64() > Some(0.0))
        };
        if want.iter().all(|(s, d)| has(s, d)) {
            break;
        }
        assert!(Instant::now() < deadline, "the demo's edges: {traffic}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let shots_tmp = tempfile::tempdir().expect("dir");
    let shots = screenshot_dir(shots_tmp.path());
    let mut browser = Browser::launch();
    visit_every_page(&mut browser, &origin, &shots);
    browser.navigate(&format!("{origin}/ui#/graph"));
    browser.wait_for("document.querySelectorAll('#graph .edge').length >= 4", LIVENESS, "the graph's edges");
    let edges = drawn_edges(&mut browser);
    for (s, d) in want {
        let e = edges.iter().find(|e| e.0 == s && e.1 == d).unwrap_or_else(|| panic!("no edge {s} -> {d}: {edges:?}"));
        assert!(e.2 > 0.0, "{s} -> {d} has a rate: {e:?}");
    }
    browser.screenshot(&shots.join("dashboard-topology.png"));

    // A second revision of the route: the service page diffs the two.
    let socket = printed.lines().find_map(|l| l.trim().strip_prefix("export MESHD_SOCKET=")).expect("the socket");
    let route_file = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("meshctl route apply -f ").or_else(|| l.split("route apply -f ").nth(1)))
        .and_then(|r| r.split_whitespace().next())
        .expect("the route file");
    let text = std::fs::read_to_string(route_file).expect("the route");
    std::fs::write(
        route_file,
        text.replace("weight = 40", "weight = 50")
            .replace("subset = \"v3\", weight = 30", "subset = \"v3\", weight = 20"),
    )
    .expect("edit");
    let out = Command::new(&binaries().meshctl)
        .args(["--socket", socket, "route", "apply", "-f", route_file])
        .output()
        .expect("meshctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    browser.navigate(&format!("{origin}/ui#/service/reviews"));
    let diff = browser.wait_for(
        "(() => { const d = document.getElementById('diff'); return d && d.querySelector('.add') ? d.textContent : ''; })()",
        LIVENESS,
        "the diff of the route's two revisions",
    );
    let diff = diff.as_str().unwrap_or("");
    assert!(diff.contains("- ") && diff.contains("\"weight\": 40") && diff.contains("\"weight\": 50"), "{diff}");
    browser.screenshot(&shots.join("dashboard-service-diff.png"));
    assert!(browser.errors.is_empty(), "console errors: {:#?}", browser.errors);

    // Prometheus finds all four nodes through one /ui/sd and every Grafana query answers.
    let sd = json(&addr, "/ui/sd");
    let nodes: Vec<&str> = sd.as_array().expect("a list").iter().filter_map(|t| t["labels"]["node"].as_str()).collect();
    assert_eq!(nodes, ["dev-1", "dev-2", "dev-3", "dev-4"], "{sd}");
    let (_prometheus, prom) = prometheus(&addr);
    let deadline = Instant::now() + LIVENESS;
    loop {
        let up = promql(&prom, "sum(up)");
        if up["data"]["result"][0]["value"][1] == "4" {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus scrapes four nodes: {up}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana/mesh-traffic.json"))
            .expect("the Grafana dashboard"),
    )
    .expect("valid JSON");
    let mut queries = Vec::new();
    for panel in grafana["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((panel["title"].as_str().unwrap_or("").to_owned(), expr.to_owned()));
        }
    }
    assert!(queries.len() >= 15, "{queries:?}");
    for (title, expr) in &queries {
        let q = expr.replace("$__rate_interval", "20s").replace("$service", ".*");
        let deadline = Instant::now() + LIVENESS;
        loop {
            let answer = promql(&prom, &q);
            assert_eq!(answer["status"], "success", "{title}: {q}: {answer}");
            let result = answer["data"]["result"].as_array().cloned().unwrap_or_default();
            let real = result.iter().any(|r| r["value"][1].as_str().is_some_and(|v| v != "NaN"));
            if real {
                break;
            }
            assert!(Instant::now() < deadline, "{title}: {q} returns no data: {answer}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The latency histogram carries trace ids as exemplars.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let exemplars = json(
        &prom,
        &format!(
            "/api/v1/query_exemplars?query=istio_request_duration_milliseconds_bucket&start={}&end={}",
            now - 120,
            now + 5
        ),
    );
    let trace = exemplars["data"][0]["exemplars"][0]["labels"]["trace_id"].as_str().map(str::len);
    assert_eq!(trace, Some(32), "an exemplar with a trace id: {exemplars}");
    drop(demo);
}

/// One request through `addr` on a new connection: its status.
fn call(addr: SocketAddr) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: reviews.mesh\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn the_topology_drops_a_dead_nodes_calls_and_turns_calls_to_it_red() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, &format!("http = \"{}:0\"", block.node_ip(1)));
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, "");
    let mut n3 = Node::join(&block, 3, &n1.token(&[]), &seed, "");
    // reviews on node-2 and node-3: each answers 200.
    for (node, i) in [(&n2, 2u8), (&n3, 3)] {
        let listener = TcpListener::bind((block.node_ip(i), 0)).expect("backend");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                });
            }
        });
        let path = node.dir.path().join("reviews.toml");
        let ip = block.node_ip(i);
        std::fs::write(&path, format!("name = \"reviews\"\naddress = \"{ip}\"\nport = {port}\nprotocol = \"http\"\n"))
            .expect("file");
        let out = node.meshctl(&["service", "register", "-f", &path.display().to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let _ = port;
    }
    n1.wait_healthy("reviews", 2, LIVENESS);
    n3.wait_healthy("reviews", 2, LIVENESS);
    let ports: Vec<u16> = n1.meshctl_json(&["services"])[0]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    // Both instances listen on their own ports; the VIP serves each port.
    let (from1, from3) = (n1.vip("reviews", LIVENESS), n3.vip("reviews", LIVENESS));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for vip in [from1, from3] {
        for port in ports.clone() {
            let stop = stop.clone();
            load.push(std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    call(SocketAddr::from((vip, port)));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
    }
    let http = n1
        .logs()
        .lines()
        .find_map(|l| l.split("admin_http=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_owned))
        .expect("node-1 logs its admin.http address");
    let origin = format!("http://{http}");
    let mut browser = Browser::launch();
    browser.navigate(&format!("{origin}/ui#/graph"));
    browser.wait_for(
        "['node-1','node-3'].every(s => [...document.querySelectorAll('#graph .edge')].some(e => e.dataset.source === s && Number(e.dataset.rps) > 0))",
        LIVENESS,
        "edges from node-1 and node-3 to reviews",
    );
    let before = drawn_edges(&mut browser);
    assert!(before.iter().all(|e| e.3.contains("ok")), "all green while both instances answer: {before:?}");

    // node-3 dies: its own calls vanish (nobody can ask it), node-1's calls to reviews
    // turn red while a node hosting reviews is down.
    n3.signal(Signal::SIGKILL);
    let _ = n3.wait_exit(LIVENESS);
    browser.wait_for(
        "(() => { const e = [...document.querySelectorAll('#graph .edge')]; \
          return !e.some(x => x.dataset.source === 'node-3') && \
                 e.some(x => x.dataset.source === 'node-1' && x.classList.contains('bad')); })()",
        LIVENESS,
        "node-3's edges gone and node-1's to reviews red",
    );
    let shots_tmp = tempfile::tempdir().expect("dir");
    browser.screenshot(&screenshot_dir(shots_tmp.path()).join("dashboard-node-down.png"));
    assert!(browser.errors.is_empty(), "console errors: {:#?}", browser.errors);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    drop((n1, n2));
}
