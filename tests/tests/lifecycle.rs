//! meshd's life as systemd and operators see it: start, signals, drain, exit codes.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use mesh_tests::{binaries, Block, Node};
use nix::sys::signal::Signal;

/// Liveness bound for things that take milliseconds.
const LIVENESS: Duration = Duration::from_secs(10);

#[test]
fn an_idle_meshd_exits_0_at_once_on_sigterm_and_removes_its_socket() {
    let block = Block::take();
    let mut node = Node::start(&block, 1, "");
    assert!(node.socket.exists());
    let sent = Instant::now();
    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(LIVENESS);
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", node.logs());
    // drain_timeout is 5s in the harness: an idle node must not wait for it.
    assert!(took < Duration::from_secs(4), "idle exit took {took:?}");
    assert!(!node.socket.exists(), "the admin socket is removed at exit");
    let logs = node.logs();
    assert!(logs.contains("draining") && logs.contains("drained"), "{logs}");
}

#[test]
fn sigint_drains_like_sigterm() {
    let block = Block::take();
    let mut node = Node::start(&block, 1, "");
    node.signal(Signal::SIGINT);
    assert_eq!(node.wait_exit(LIVENESS).code(), Some(0), "{}", node.logs());
}

#[test]
fn a_request_in_flight_at_sigterm_completes_and_meshd_exits_0() {
    let block = Block::take();
    let mut node = Node::start(&block, 1, "");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = node.client();
    let current = rt.block_on(client.get("/v1/members")).expect("members");
    let index = current.headers[mesh_proto::api::INDEX_HEADER].to_str().expect("ascii").to_owned();
    // A blocking query: meshd holds it open until the member list changes (it does not,
    // on one idle node) or the wait ends.
    let index_sent = index.clone();
    let in_flight = rt.spawn(async move { client.get(&format!("/v1/members?index={index}&wait=60s")).await });
    rt.block_on(async {
        // Let the request reach meshd and park there.
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    assert!(!in_flight.is_finished(), "the query should be parked in meshd");
    node.signal(Signal::SIGTERM);
    let response = rt
        .block_on(async { tokio::time::timeout(LIVENESS, in_flight).await })
        .expect("the request completes during the drain")
        .expect("task")
        .expect("a full response, not a cut connection");
    assert!(response.status.is_success());
    // The member list did not change: the query ended because of the drain, not a change.
    assert_eq!(response.headers[mesh_proto::api::INDEX_HEADER].to_str().ok(), Some(index_sent.as_str()));
    let members: serde_json::Value = serde_json::from_slice(&response.body).expect("a whole JSON body");
    assert_eq!(members[0]["name"], "node-1");
    assert_eq!(node.wait_exit(LIVENESS).code(), Some(0), "{}", node.logs());
}

#[test]
fn systemd_hears_ready_then_stopping() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    let notify_path = node.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(LIVENESS)).expect("timeout");
    let init = node.meshd(&["init"]);
    assert!(init.status.success());
    let mut node = node.env("NOTIFY_SOCKET", &notify_path.display().to_string()).run();

    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY within the liveness bound");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.lines().any(|l| l == "READY=1"), "first notification: {first:?}");

    node.signal(Signal::SIGTERM);
    let n = notify.recv(&mut buf).expect("STOPPING at drain");
    let second = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(second.lines().any(|l| l == "STOPPING=1"), "second notification: {second:?}");
    assert_eq!(node.wait_exit(LIVENESS).code(), Some(0));
}

#[test]
fn an_invalid_config_exits_2_naming_line_and_key_and_starts_nothing() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    let good = std::fs::read_to_string(&node.config).expect("config");
    let cases = [
        (format!("bnid = \"127.0.0.1:1\"\n{good}"), "meshd.toml:1: unknown key 'bnid'"),
        (good.replace("drain_timeout = \"5s\"", "drain_timeout = \"5 parsecs\""), "drain_timeout"),
        (format!("{good}\n[[service]]\nname = \"web\"\nport = \"eighty\"\n"), "service[0].port"),
    ];
    for (text, expected) in cases {
        std::fs::write(&node.config, &text).expect("write");
        for verb in ["run", "init"] {
            let out = node.meshd(&[verb]);
            assert_eq!(out.status.code(), Some(2), "{verb}: {text}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(expected), "{verb}: expected {expected:?} in {err:?}");
            let line_named = err.contains("meshd.toml:");
            assert!(line_named, "{verb}: the file and line are named: {err}");
            assert!(!node.socket.exists(), "nothing started");
            assert!(!node.dir.path().join("data").exists(), "nothing created");
        }
    }
}

#[test]
fn init_without_a_config_says_what_to_write_and_where_the_example_is() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    std::fs::remove_file(&node.config).expect("no config");
    let out = node.meshd(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for said in ["no such file", "node_name = ", "bind = ", "packaging/examples/meshd.toml", "docs/configuration.md"] {
        assert!(err.contains(said), "says {said:?}: {err}");
    }
    // The example it points at works as it is.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples/meshd.toml");
    let check = node.meshd_with_config(&["check-config"], &example);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn a_bad_node_name_is_refused_with_the_rule() {
    let block = Block::take();
    let node = Node::start(&block, 1, "");
    for args in [&["token", "create", "--node", "Web_1"][..], &["node", "remove", "Web_1"][..]] {
        let out = node.meshctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("lower-case letters, digits and '-'"), "{args:?}: {err}");
    }
}

#[test]
fn run_without_init_exits_2_and_says_what_to_do() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    let out = node.meshd(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("meshd init") && err.contains("meshd join"), "{err}");
}

#[test]
fn init_twice_is_refused_with_2() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    assert!(node.meshd(&["init"]).status.success());
    let out = node.meshd(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds node 'node-1'"));
}

#[test]
fn a_second_meshd_on_the_same_socket_is_refused_and_the_first_keeps_serving() {
    let block = Block::take();
    let node = Node::start(&block, 1, "");
    let out = node.meshd(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    assert!(node.meshctl(&["status"]).status.success(), "the first meshd still answers");
}

/// The A record of `name` at `dns`.
fn dig_a(dns: std::net::SocketAddr, name: &str) -> std::net::Ipv4Addr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut q =
        hickory_proto::op::Message::new(7, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
    q.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii(name).expect("name"),
        hickory_proto::rr::RecordType::A,
    ));
    sock.send_to(&q.to_vec().expect("encode"), dns).expect("send");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a DNS answer");
    let answer = hickory_proto::op::Message::from_vec(&buf[..n]).expect("message");
    answer
        .answers
        .iter()
        .find_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name} has its virtual IP: {answer:?}"))
}

#[test]
fn meshd_dev_starts_prints_what_to_try_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    // Killed if the test fails half-way: a demo left running would hold its addresses.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = KillOnDrop(
        std::process::Command::new(&binaries().meshd)
            .arg("dev")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("meshd dev"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut socket = None;
    let mut printed = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        printed.push_str(&line);
        printed.push('\n');
        if let Some(s) = line.trim().strip_prefix("export MESHD_SOCKET=") {
            socket = Some(s.to_owned());
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let socket = socket.unwrap_or_else(|| panic!("no socket printed:\n{printed}"));
    for command in ["meshctl members", "meshctl services", "meshctl route get reviews", "dig @", "curl http://"] {
        assert!(printed.contains(command), "prints {command}:\n{printed}");
    }
    let meshctl = |args: &[&str]| {
        std::process::Command::new(&binaries().meshctl)
            .args(["--socket", &socket])
            .args(args)
            .output()
            .expect("meshctl")
    };
    // The commands it prints answer: four members alive, the route, DNS, productpage.
    let deadline = Instant::now() + LIVENESS;
    loop {
        let out = meshctl(&["members", "-o", "json"]);
        let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let alive = members.as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
        if alive == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "four members alive:\n{}", String::from_utf8_lossy(&out.stdout));
        std::thread::sleep(Duration::from_millis(50));
    }
    let route = meshctl(&["route", "get", "reviews"]);
    assert!(String::from_utf8_lossy(&route.stdout).contains("weight = 40"), "{route:?}");
    let dig = printed.lines().find_map(|l| l.trim().strip_prefix("dig @")).expect("a dig line");
    let mut words = dig.split_whitespace();
    let (ip, port) = (words.next().expect("ip"), words.nth(1).expect("port"));
    let dns: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("DNS address");
    let productpage = printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("curl http://"))
        .find(|l| !l.starts_with('$'))
        .and_then(|l| l.split('/').next())
        .expect("productpage's address")
        .to_owned();
    let deadline = Instant::now() + LIVENESS;
    let body = loop {
        let answer = std::panic::catch_unwind(|| {
            let mut s = std::net::TcpStream::connect(&productpage).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            let mut reply = String::new();
            std::io::Read::read_to_string(&mut s, &mut reply).ok()?;
            reply.contains("-> reviews v").then_some(reply)
        });
        if let Ok(Some(reply)) = answer {
            break reply;
        }
        assert!(Instant::now() < deadline, "productpage reaches reviews through the mesh");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // The route's header rule, request by request through dev-1's reviews VIP.
    let reviews = dig_a(dns, "reviews.mesh.");
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect((reviews, 9080)).expect("reviews through the mesh");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        std::io::Write::write_all(
            &mut s,
            b"GET / HTTP/1.1\r\nHost: reviews.mesh\r\nend-user: jason\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
        let mut reply = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut reply);
        assert!(reply.contains("reviews v2"), "end-user jason goes to v2: {reply}");
    }

    // Its metrics are where it says.
    let metrics = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("curl http://")?.split_once("/metrics").map(|(a, _)| a.to_owned()))
        .expect("the demo prints where /metrics is");
    let mut s = std::net::TcpStream::connect(&metrics).expect("the metrics address");
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut reply);
    assert!(reply.contains("mesh_build_info"), "{reply}");

    // A second demo cannot bind: it says so once, and that another meshd may be running.
    let second = std::process::Command::new(&binaries().meshd).arg("dev").output().expect("a second meshd dev");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(err.matches("in use").count(), 1, "the bind error is said once: {err}");
    assert!(err.contains("another meshd"), "the hint: {err}");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, Signal::SIGINT).expect("ctrl-c");
    let deadline = Instant::now() + LIVENESS;
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            panic!("meshd dev did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let dir = std::path::Path::new(&socket).parent().expect("dir");
    assert!(!dir.exists(), "the temporary directory is removed: {}", dir.display());
}

#[test]
fn a_node_whose_seeds_are_unreachable_says_it_is_alone() {
    let block = Block::take();
    // A seed where nothing listens.
    let dead = std::net::UdpSocket::bind((block.node_ip(9), 0)).expect("a free port");
    let seed = dead.local_addr().expect("addr");
    drop(dead);
    let node = Node::prepare_with(&block, 1, &format!("join = [\"{seed}\"]"), "");
    assert!(node.meshd(&["init"]).status.success());
    let node = node.run();
    let status = node.meshctl_json(&["status"]);
    let warning = status["membership_warning"].as_str().unwrap_or_default().to_owned();
    assert!(warning.contains("knows no other member") && warning.contains(&seed.to_string()), "{status}");
    let table = String::from_utf8_lossy(&node.meshctl(&["status"]).stdout).into_owned();
    assert!(table.contains("WARNING") && table.contains("no other member"), "{table}");
    node.eventually(Duration::from_secs(30), "the log says it is alone", || {
        node.logs().contains("knows no other member").then_some(())
    });

    // A node without seeds (the first of a mesh) is alone by design: no warning.
    let first = Node::start(&block, 2, "");
    assert!(first.meshctl_json(&["status"])["membership_warning"].is_null());
}

/// One DNS query for `web.mesh` to `node`, answered or not within `wait`.
fn query_once(node: &Node, wait: Duration) -> bool {
    node.try_dig("web.mesh", hickory_proto::rr::RecordType::A, false, wait).is_some()
}

/// A part that fails once (the DNS server panics on a query: a failpoint, in debug
/// builds only) is logged, counted and restarted, and serves the next query; meshd
/// carries on.
#[test]
fn a_part_that_fails_once_is_restarted_and_counted() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    assert!(node.meshd(&["init"]).status.success());
    let mut node = node.env("MESHD_FAILPOINT", "dns:1").run();
    assert!(!query_once(&node, Duration::from_millis(500)), "the first query meets the failpoint");
    node.eventually(LIVENESS, "DNS answers again", || query_once(&node, Duration::from_millis(500)).then_some(()));
    assert_eq!(node.metric("mesh_dns_restarts_total"), 1);
    let logs = node.logs();
    assert!(logs.contains("task panicked; restarting it") && logs.contains("failpoint dns hit"), "{logs}");
    assert!(node.try_wait().is_none(), "meshd carries on");
}

/// A part that keeps failing is given up on, and meshd then drains and exits 1 naming
/// it, so that systemd restarts the whole daemon instead of it running without DNS.
#[test]
fn a_part_that_keeps_failing_makes_meshd_exit_1_naming_it() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    assert!(node.meshd(&["init"]).status.success());
    let mut node = node.env("MESHD_FAILPOINT", "dns").run();
    let deadline = Instant::now() + LIVENESS;
    while node.try_wait().is_none() && Instant::now() < deadline {
        query_once(&node, Duration::from_millis(200));
    }
    let status = node.wait_exit(LIVENESS);
    assert_eq!(status.code(), Some(1), "{}", node.logs());
    let logs = node.logs();
    assert!(logs.contains("task keeps failing; giving up on it"), "{logs}");
    assert!(logs.contains("a part of meshd failed"), "{logs}");
    assert!(logs.contains("part=\"dns\"") || logs.contains("part=dns"), "the log names the part: {logs}");
    assert!(logs.contains("dns failed"), "the exit names the part: {logs}");
}

/// The data_dir deleted under a running meshd: the next write is refused with the reason
/// (not acknowledged and lost), the log says so at ERROR at once, and meshd exits 1 after
/// a short grace so that systemd restarts it.
#[test]
fn a_deleted_data_dir_refuses_writes_and_makes_meshd_exit_1() {
    let block = Block::take();
    let mut node = Node::start(&block, 1, "");
    let route = node.dir.path().join("web.route.toml");
    std::fs::write(&route, "service = \"web\"\n[[http]]\ntimeout = \"2s\"\n").expect("route file");
    let route = route.display().to_string();
    assert!(node.meshctl(&["route", "apply", "-f", &route]).status.success());
    std::fs::remove_dir_all(node.dir.path().join("data")).expect("rm -rf data_dir");
    std::fs::write(node.dir.path().join("web.route.toml"), "service = \"web\"\n[[http]]\ntimeout = \"3s\"\n")
        .expect("route file");
    let refused = node.meshctl(&["route", "apply", "-f", &route]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "the write is refused: {stderr}");
    assert!(stderr.contains("was the data_dir deleted?"), "{stderr}");
    let status = node.wait_exit(LIVENESS);
    assert_eq!(status.code(), Some(1), "{}", node.logs());
    let logs = node.logs();
    assert!(logs.contains("ERROR") && logs.contains("the data_dir is broken under a running meshd"), "{logs}");
}

/// A tmpfs mounted at a path for one test, unmounted (lazily: meshd may still hold it)
/// when dropped, even when the test fails. Needs root (CI is root): fails loudly without.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_owned())
    }

    /// Fills the file system but for `keep_kib`, in a file `fill` removes.
    fn fill(&self, keep_kib: u64) {
        let stat = nix::sys::statvfs::statvfs(&self.0).expect("statvfs");
        // Both are u64 on Linux x86-64, not on every target.
        #[allow(clippy::useless_conversion)]
        let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
        let size = free.saturating_sub(keep_kib * 1024);
        let f = std::fs::File::create(self.0.join("filler")).expect("filler");
        // Written, not sparse: tmpfs counts written pages.
        let chunk = vec![0xA5u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut &f, &chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    }

    fn free_up(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A route of about 47 KB whose content depends on `v`: a few of them fill a small disk.
fn big_route(node: &Node, v: u32) -> String {
    let mut text = String::from("name = \"big\"\nservice = \"big\"\n");
    for i in 0..50 {
        text += &format!("[[http]]\nmatch = {{ path_prefix = \"/{}{v}-{i}\" }}\n", "x".repeat(900));
    }
    let path = node.dir.path().join(format!("big{v}.toml"));
    std::fs::write(&path, text).expect("route file");
    path.display().to_string()
}

/// A full disk under a running meshd: the write that hits it is refused with the reason,
/// the store turns read-only (status and metric say so) and refuses the next writes at
/// once instead of hanging; once there is room again it takes writes with no restart.
/// Full again, SIGTERM still ends meshd within its drain_timeout, and every acknowledged
/// revision is there after a restart.
#[test]
fn a_full_disk_makes_the_store_read_only_until_there_is_room_and_never_hangs() {
    let block = Block::take();
    let node = Node::prepare(&block, 1, "");
    let disk = Tmpfs::mount(&node.dir.path().join("data"), "24m");
    assert!(node.meshd(&["init"]).status.success());
    let mut node = node.run();
    let apply = |node: &Node, v: u32| node.meshctl(&["--timeout", "10s", "route", "apply", "-f", &big_route(node, v)]);
    let mut acknowledged = Vec::new();
    assert!(apply(&node, 0).status.success());
    acknowledged.push(0);

    disk.fill(300);
    let mut v = 1;
    let refusal = loop {
        let out = apply(&node, v);
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        acknowledged.push(v);
        v += 1;
        assert!(v < 40, "300 KiB filled up");
    };
    assert!(refusal.contains("No space left on device"), "{refusal}");
    let started = Instant::now();
    let out = apply(&node, 100);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("read-only") && said.contains("disk full"), "refused with the reason, not hanging: {said}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused, not timed out");
    let health = node.meshctl_json(&["status"])["store"]["health"].as_str().unwrap_or("").to_owned();
    assert!(health.starts_with("read-only: disk full"), "{health}");
    assert_eq!(node.metric("mesh_store_read_only"), 1);

    disk.free_up();
    node.eventually(Duration::from_secs(60), "writes are taken again", || {
        apply(&node, 101).status.success().then_some(())
    });
    acknowledged.push(101);
    assert_eq!(node.meshctl_json(&["status"])["store"]["health"], "ok");
    assert_eq!(node.metric("mesh_store_read_only"), 0);
    assert_eq!(node.metric("mesh_store_recoveries_total"), 1);
    assert!(node.logs().contains("ERROR") && node.logs().contains("the store takes writes again"));

    disk.fill(300);
    let mut v = 200;
    while apply(&node, v).status.success() {
        acknowledged.push(v);
        v += 1;
        assert!(v < 240, "300 KiB filled up");
    }
    node.signal(Signal::SIGTERM);
    // drain_timeout is 5s in the test config: meshd must be gone by then.
    let status = node.wait_exit(Duration::from_secs(7));
    assert!(status.code().is_some(), "exited, not killed: {status:?}");

    disk.free_up();
    let node = node.run();
    let history = node.meshctl_json(&["route", "history", "big"]);
    let held = history.as_array().map_or(0, Vec::len);
    assert_eq!(held, acknowledged.len().min(20), "every acknowledged revision: {history}");
    let current = node.meshctl_json(&["route", "get", "big"]);
    let last = *acknowledged.last().expect("some");
    let prefix = current["spec"]["http"][0]["match"]["path_prefix"].as_str().unwrap_or("").to_owned();
    assert!(prefix.ends_with(&format!("{last}-0")), "the last acknowledged revision is current: {prefix}");
    drop(node);
    drop(disk);
}

/// `systemctl reload meshd` sends SIGHUP: meshd reads meshd.toml again, applies the
/// services, the DNS TTL and the proxy's limits, names the keys that wait for a
/// restart, and refuses a file that does not load (file:line:key) without changing
/// anything.
#[test]
fn sighup_applies_an_added_service_and_a_new_ttl_and_a_bad_file_changes_nothing() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    let block = Block::take();
    let node = Node::start(&block, 1, "");
    let original = std::fs::read_to_string(&node.config).expect("config");
    let with_ttl = original.replace("[dns]\n", "[dns]\nttl = \"30s\"\n");
    assert_ne!(with_ttl, original, "the harness's config has a [dns] table");
    let service = "\n[[service]]\nname = \"web\"\nport = 8080\n";
    // Added: a service, a TTL, and a key that only a restart applies.
    let added = format!("{}{service}", with_ttl.replace("drain_timeout = \"5s\"", "drain_timeout = \"7s\""));
    std::fs::write(&node.config, &added).expect("write config");
    node.signal(Signal::SIGHUP);
    let ttl = node.eventually(LIVENESS, "web.mesh answers after the reload", || {
        let answer = node.dig("web.mesh.", RecordType::A, false);
        answer.answers.first().map(|r| r.ttl)
    });
    assert_eq!(ttl, 30, "the new TTL");
    node.eventually(LIVENESS, "the reload is logged", || node.logs().contains("meshd.toml reloaded").then_some(()));
    let logs = node.logs();
    assert!(
        logs.lines().any(|l| l.contains("take effect when meshd restarts") && l.contains("drain_timeout")),
        "the key waiting for a restart is named: {logs}"
    );

    // A file that does not load: the error names line and key; nothing changes.
    let bad = format!("{added}\n[[service]]\nname = \"api\"\nport = \"eighty\"\n");
    std::fs::write(&node.config, bad).expect("write config");
    node.signal(Signal::SIGHUP);
    node.eventually(LIVENESS, "the refused reload is logged", || {
        node.logs().lines().find(|l| l.contains("was not reloaded")).map(str::to_owned)
    });
    let refused = node.logs().lines().find(|l| l.contains("was not reloaded")).map(str::to_owned).unwrap_or_default();
    assert!(refused.contains("service[1].port") && refused.contains("meshd.toml:"), "{refused}");
    let answer = node.dig("web.mesh.", RecordType::A, false);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError, "web.mesh still answers");
    assert_eq!(answer.answers.first().map(|r| r.ttl), Some(30));
    assert_eq!(node.dig("api.mesh.", RecordType::A, false).metadata.response_code, ResponseCode::NXDomain);

    // The service removed from the file leaves the mesh at the next reload.
    std::fs::write(&node.config, &with_ttl).expect("write config");
    node.signal(Signal::SIGHUP);
    node.eventually(LIVENESS, "web.mesh is gone after the reload", || {
        (node.dig("web.mesh.", RecordType::A, false).metadata.response_code == ResponseCode::NXDomain).then_some(())
    });
}
