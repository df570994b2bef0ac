//! The multi-node harness: real `meshd` processes, each in its own temporary directory,
//! on a loopback block that belongs to one test at a time.
//!
//! The binaries are the workspace's own build: a separate crate cannot use
//! `CARGO_BIN_EXE_*`, so the README's test command builds them first
//! (`cargo build --workspace --bins`), and [`binaries`] finds them next to the test
//! executable (`target/debug/deps/..` → `target/debug/`), or where `MESHD_BIN` and
//! `MESHCTL_BIN` say.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod browser;
pub mod kube;
pub mod netns;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Paths of the binaries under test.
pub struct Binaries {
    pub meshd: PathBuf,
    pub meshctl: PathBuf,
}

/// The built `meshd` and `meshctl`. Panics with what to do when they are missing.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let find = |name: &str, var: &str| -> PathBuf {
            if let Some(p) = std::env::var_os(var) {
                return PathBuf::from(p);
            }
            let exe = std::env::current_exe().expect("the test's own path");
            let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{} not found: build the binaries first (cargo build --workspace --bins), or set {var}",
                path.display()
            );
            path
        };
        Binaries { meshd: find("meshd", "MESHD_BIN"), meshctl: find("meshctl", "MESHCTL_BIN") }
    })
}

/// A loopback block that belongs to this test alone, across processes (nextest runs
/// each test in its own): nodes on `127.0.N.x`, virtual IPs in `127.N.0.0/16`.
/// Held through a lock file; released when dropped.
pub struct Block {
    pub n: u8,
    _lock: Flock<File>,
}

impl Block {
    pub fn take() -> Block {
        let dir = std::env::temp_dir().join("mesh-tests-blocks");
        std::fs::create_dir_all(&dir).expect("lock directory");
        // 127.77/16 is meshd's default virtual IP range, 127.78/16 `meshd dev`'s and
        // 127.79/16 the getting-started guide's: leave them out.
        for n in (10u8..=250).filter(|n| !(77..=79).contains(n)) {
            let file = File::create(dir.join(format!("{n}.lock"))).expect("lock file");
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Block { n, _lock: lock };
            }
        }
        panic!("every loopback block is taken: are hundreds of tests running?");
    }

    /// The address of node `i` (1-based).
    pub fn node_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.n, i)
    }

    /// Node `i`'s virtual IP range, inside this block's 127.N.0.0/16: nodes that share
    /// this machine's loopback must not listen on the same virtual IPs (on a fleet, each
    /// host has its own).
    pub fn vip_range(&self, i: u8) -> String {
        format!("127.{}.{}.0/20", self.n, u16::from(i % 16) * 16)
    }

    /// The DNS address of node `i`.
    pub fn dns_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.n, 100 + i)
    }
}

/// A `meshd` process and its files. Killed (SIGKILL) when dropped if still running; its
/// log is printed when the test is failing.
pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// The network namespace meshd runs in, if any.
    netns: Option<String>,
    /// A command meshd runs under (`strace ...`, `setpriv ...`), if any.
    wrapper: Vec<String>,
    /// The process that took over at `meshd upgrade` (not this test's child: its
    /// predecessor started it). Killed with the node.
    successor: Option<Pid>,
}

impl Node {
    /// Writes a config for node `i` of `block` (plus `extra` TOML at the end), runs
    /// `meshd init`, starts `meshd run` and waits until its admin socket answers.
    pub fn start(block: &Block, i: u8, extra: &str) -> Node {
        let node = Node::prepare(block, i, extra);
        let init = node.meshd(&["init"]);
        assert!(init.status.success(), "meshd init failed: {}", String::from_utf8_lossy(&init.stderr));
        node.run()
    }

    /// Writes the config and nothing else. `extra` is appended after the `[admin]`
    /// table: bare keys there set admin keys (`http = ...`); anything else opens its own
    /// table (`[[service]]`, `[identity]`).
    pub fn prepare(block: &Block, i: u8, extra: &str) -> Node {
        Node::prepare_with(block, i, "", extra)
    }

    /// Like [`Node::prepare`], with `top` added to the top-level keys (`join = [...]`,
    /// `[identity]` tables go in `extra`).
    pub fn prepare_with(block: &Block, i: u8, top: &str, extra: &str) -> Node {
        Node::prepare_full(block, i, top, "", extra)
    }

    /// Like [`Node::prepare_with`], with `proxy` added to the `[proxy]` table.
    pub fn prepare_full(block: &Block, i: u8, top: &str, proxy: &str, extra: &str) -> Node {
        let name = format!("node-{i}");
        let dir = tempfile::Builder::new().prefix("mesh-test-").tempdir().expect("tempdir");
        let socket = dir.path().join("meshd.sock");
        let config = dir.path().join("meshd.toml");
        let text = format!(
            r#"node_name = "{name}"
{top}
data_dir = "{data}"
bind = "{ip}:0"
drain_timeout = "5s"
log_level = "debug,sled=info"

[dns]
listen = "{dns}:0"

[proxy]
vip_range = "{vips}"
{proxy}

[admin]
socket = "{socket}"
{extra}
"#,
            data = dir.path().join("data").display(),
            ip = block.node_ip(i),
            dns = block.dns_ip(i),
            vips = block.vip_range(i),
            socket = socket.display(),
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("meshd.log");
        Node {
            name,
            dir,
            config,
            socket,
            child: None,
            log,
            env: Vec::new(),
            netns: None,
            wrapper: Vec::new(),
            successor: None,
        }
    }

    /// Prepares node `i` with `top` and `extra`, joins it with `token` (which must
    /// succeed) and starts it.
    pub fn join(block: &Block, i: u8, token: &str, top: &str, extra: &str) -> Node {
        let node = Node::prepare_with(block, i, top, extra);
        let out = node.meshd(&["join", token]);
        assert!(out.status.success(), "meshd join failed: {}", String::from_utf8_lossy(&out.stderr));
        node.run()
    }

    /// The address this node advertises, as its own member entry says.
    pub fn addr(&self) -> String {
        let members = self.meshctl_json(&["members"]);
        members
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == self.name.as_str()))
            .and_then(|m| m["addr"].as_str())
            .expect("this node's member entry")
            .to_owned()
    }

    /// The top-level config line that makes another node join through this one.
    pub fn seed(&self) -> String {
        format!("join = [\"{}\"]", self.addr())
    }

    /// `meshctl token create ARGS`, which must succeed: the token.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend(args);
        let out = self.meshctl(&all);
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    }

    /// Polls `check` every 50 ms until it returns Some, panicking with `what` and this
    /// node's log after `limit`.
    pub fn eventually<T>(&self, limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs this node's meshd commands inside network namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Node {
        self.netns = Some(ns.to_owned());
        self
    }

    /// `meshd` itself, or `ip netns exec NS meshd` (which execs meshd: same PID).
    /// Runs every later `meshd` of this node as `command` (`strace ... /path/to/meshd`):
    /// meshd's arguments follow it.
    pub fn wrapped(mut self, command: &[&str]) -> Node {
        self.wrapper = command.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn meshd_command(&self) -> Command {
        if let Some((program, args)) = self.wrapper.split_first() {
            let mut c = Command::new(program);
            c.args(args);
            return c;
        }
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&binaries().meshd);
                c
            }
            None => Command::new(&binaries().meshd),
        }
    }

    /// The DNS address meshd logged when it started serving.
    pub fn dns_addr(&self) -> std::net::SocketAddr {
        let logs = self.logs();
        logs.split(" dns=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no dns= in the log:\n{logs}"))
    }

    /// One DNS question to this node over UDP (with EDNS when `edns`), and its answer.
    pub fn dig(&self, name: &str, qtype: hickory_proto::rr::RecordType, edns: bool) -> hickory_proto::op::Message {
        self.try_dig(name, qtype, edns, Duration::from_secs(5)).expect("a DNS answer within 5s")
    }

    /// One query over UDP; its answer, or None when none comes within `wait`.
    pub fn try_dig(
        &self,
        name: &str,
        qtype: hickory_proto::rr::RecordType,
        edns: bool,
        wait: Duration,
    ) -> Option<hickory_proto::op::Message> {
        use hickory_proto::op::{Message, Query};
        use hickory_proto::rr::Name;
        let mut msg = Message::new(4242, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        if edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(1232);
            msg.set_edns(e);
        }
        let bytes = msg.to_vec().expect("encode");
        let sock = std::net::UdpSocket::bind((self.dns_addr().ip(), 0)).expect("udp");
        sock.set_read_timeout(Some(wait)).expect("timeout");
        sock.send_to(&bytes, self.dns_addr()).expect("send");
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).ok()?;
        Some(Message::from_vec(&buf[..n]).expect("a DNS message"))
    }

    /// The virtual IP this node's DNS answers for `NAME.mesh`, once it answers one (a
    /// VIP is answered once its listeners are bound).
    pub fn vip(&self, name: &str, limit: Duration) -> Ipv4Addr {
        self.eventually(limit, &format!("{name}.mesh answers with a virtual IP"), || {
            let m = self.dig(&format!("{name}.mesh."), hickory_proto::rr::RecordType::A, false);
            m.answers.iter().find_map(|r| match &r.data {
                hickory_proto::rr::RData::A(a) => Some(a.0),
                _ => None,
            })
        })
    }

    /// Waits until this node sees `count` healthy instances of `service`.
    pub fn wait_healthy(&self, service: &str, count: usize, limit: Duration) {
        self.eventually(limit, &format!("{count} healthy instances of {service}"), || {
            let s = self.meshctl_json(&["services"]);
            let svc = s.as_array()?.iter().find(|s| s["name"] == service)?.clone();
            (svc["instances"].as_array()?.iter().filter(|i| i["healthy"] == true).count() == count).then_some(())
        });
    }

    /// Sets an environment variable for `meshd run`.
    pub fn env(mut self, key: &str, value: &str) -> Node {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs `meshd ARGS --config CONFIG` to completion.
    pub fn meshd(&self, args: &[&str]) -> Output {
        self.meshd_with_config(args, &self.config)
    }

    /// Runs `meshd ARGS --config PATH` to completion.
    pub fn meshd_with_config(&self, args: &[&str], config: &Path) -> Output {
        self.meshd_command().args(args).arg("--config").arg(config).output().expect("run meshd")
    }

    /// Starts `meshd run` and waits (up to 20 s, far above the usual ~50 ms) for the
    /// admin socket to answer.
    pub fn run(mut self) -> Node {
        let log = File::create(&self.log).expect("log file");
        let child = self
            .meshd_command()
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn meshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_wait() {
                panic!("meshd exited at start with {status}:\n{}", self.logs());
            }
            let out = self.meshctl(&["status", "-o", "json"]);
            if out.status.success() {
                return self;
            }
            assert!(Instant::now() < deadline, "meshd did not answer within 20s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `meshctl --socket SOCKET ARGS`.
    pub fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(&binaries().meshctl).arg("--socket").arg(&self.socket).args(args).output().expect("run meshctl")
    }

    /// `meshctl ARGS -o json`, which must succeed, parsed.
    pub fn meshctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.meshctl(&all);
        assert!(out.status.success(), "meshctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("meshctl -o json prints JSON")
    }

    /// An admin API client for this node.
    pub fn client(&self) -> meshctl::Client {
        meshctl::Client::new(&self.socket)
    }

    /// This node's `/metrics` text, from the admin socket.
    pub fn metrics(&self) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let response = rt.block_on(self.client().get("/metrics")).expect("GET /metrics");
        String::from_utf8(response.body.to_vec()).expect("utf-8 metrics")
    }

    /// The value of one sample of this node's metrics (`name{labels}` exactly as
    /// exposed), 0 when absent.
    pub fn metric(&self, sample: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .map_or(0, |v| v as u64)
    }

    /// Runs `meshd upgrade` (which must succeed) and returns the new process's ID, read
    /// back from the admin API; from then on that process is this node.
    pub fn upgrade(&mut self) -> Pid {
        let out = self.meshd(&["upgrade"]);
        assert!(
            out.status.success(),
            "meshd upgrade failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let status = self.meshctl_json(&["status"]);
        let pid = status["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("status names the pid");
        let pid = Pid::from_raw(pid);
        assert_ne!(pid, self.pid(), "a new process serves");
        self.successor = Some(pid);
        pid
    }

    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("running");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits"))
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal meshd");
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("wait meshd"))
    }

    /// Waits for the process to exit; panics (with the log) after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "meshd still running after {limit:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything meshd logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(pid) = self.successor.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.logs());
        }
    }
}

/// One call to an echo backend through `addr`, as the tests' backends answer: it sends
/// its name and a newline, then echoes. Sends `ping`, checks the echo; the backend's
/// name and how long the call took, or why it failed.
pub fn echo_once(addr: std::net::SocketAddr) -> Result<(String, Duration), String> {
    use std::io::{BufRead, Write};
    let started = Instant::now();
    let attempt = (|| {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut reader = std::io::BufReader::new(stream);
        let mut name = String::new();
        reader.read_line(&mut name)?;
        reader.get_mut().write_all(b"ping\n")?;
        let mut echo = String::new();
        reader.read_line(&mut echo)?;
        if echo != "ping\n" {
            return Err(std::io::Error::other(format!("echo {echo:?} from {name:?}")));
        }
        Ok::<_, std::io::Error>(name.trim_end().to_owned())
    })();
    attempt.map(|name| (name, started.elapsed())).map_err(|e| format!("{addr}: {e}"))
}

/// An HTTP/1.1 message head: its first line and its headers (names lower-cased).
pub struct Head {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The value of header `name` (lower-case), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// `content-length`, 0 when absent or unreadable.
    pub fn content_length(&self) -> usize {
        self.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// Reads one HTTP/1.1 head; None at the end of the stream (or a cut head).
pub fn read_head(reader: &mut impl std::io::BufRead) -> Option<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Some(Head { line: line.trim_end().to_owned(), headers });
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

/// An echo backend on `addr` (port 0: any) for as long as the test runs: each connection
/// gets `name` and a newline, then an echo of what it sends. Its address.
pub fn echo_server(addr: std::net::SocketAddr, name: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("echo server on {addr}: {e}"));
    let bound = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.write_all(format!("{name}\n").as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    bound
}
