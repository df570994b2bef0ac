//! What the benchmarks share: meshd clusters of real processes on loopback, polling,
//! medians.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Child processes, killed when dropped (a benchmark that fails leaves nothing behind).
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls `done` every 5 ms until it holds: the time that took, or None after `limit`.
pub fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A binary of this workspace, next to the running benchmark.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("dir").join(name)
}

/// N meshd nodes on `127.SUBNET.0.1..N`, gossip on port 7946, DNS on port 5300, each
/// with its admin socket in a temporary directory. Node 1 is initialised, the others
/// joined with its tokens; none runs until [`Cluster::start`].
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub subnet: u8,
    pub n: usize,
    pub procs: Procs,
    configs: Vec<PathBuf>,
    /// The CPUs each meshd runs on (`taskset -c` lists, one per node; empty: any), from
    /// its start: the runtime then sizes itself to the CPUs it has, as it would on a
    /// host with that many cores.
    cpus: Vec<String>,
    /// Where `meshd` and `meshctl` are: next to the bench, or another build's.
    bins: PathBuf,
    /// TOML appended to every node's config.
    extra: String,
}

pub const DNS_PORT: u16 = 5300;

impl Cluster {
    pub fn prepare(subnet: u8, n: usize) -> Cluster {
        Cluster::prepare_on(subnet, n, None)
    }

    /// Like [`Cluster::prepare`], every meshd pinned to `core`.
    pub fn prepare_on(subnet: u8, n: usize, core: Option<u32>) -> Cluster {
        let cpus: Vec<String> = (0..n).map(|_| core.map(|c| c.to_string()).unwrap_or_default()).collect();
        let bins = bin("meshd").parent().map(Path::to_owned).unwrap_or_default();
        Cluster::prepare_with(subnet, &cpus, &bins, "")
    }

    /// One meshd per entry of `cpus`, each on those CPUs (a `taskset -c` list; empty:
    /// any), with the binaries in `bins` and `extra` TOML at the end of every config.
    pub fn prepare_with(subnet: u8, cpus: &[String], bins: &Path, extra: &str) -> Cluster {
        let n = cpus.len();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            dir,
            subnet,
            n,
            procs: Procs::default(),
            configs: Vec::new(),
            cpus: cpus.to_vec(),
            bins: bins.to_owned(),
            extra: extra.to_owned(),
        };
        c.configs = (1..=n).map(|i| c.write_config(i)).collect();
        let init = Command::new(c.bin("meshd")).args(["init", "--config"]).arg(&c.configs[0]).output().expect("init");
        assert!(init.status.success(), "init: {}", String::from_utf8_lossy(&init.stderr));
        c.procs.0.push(c.run(1));
        poll(Duration::from_secs(10), || c.meshctl(1, &["status"]).is_some()).expect("node 1 up");
        for i in 2..=n {
            let token = c.meshctl(1, &["token", "create"]).expect("token")["token"].as_str().expect("token").to_owned();
            let out = Command::new(c.bin("meshd")).args(["join", &token, "--config"]).arg(&c.configs[i - 1]).output();
            let out = out.expect("join");
            assert!(out.status.success(), "join n{i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        c
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// The virtual IP node `i`'s DNS answers for `NAME.mesh`, once it answers (30 s).
    pub fn vip(&self, i: usize, name: &str) -> std::net::Ipv4Addr {
        let dns = std::net::UdpSocket::bind((self.ip(i).as_str(), 0)).expect("udp");
        dns.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut found = None;
        poll(Duration::from_secs(30), || {
            let mut buf = [0u8; 512];
            let _ = dns.send_to(&a_query(&format!("{name}.mesh")), self.dns(i));
            found = dns.recv(&mut buf).ok().and_then(|n| first_a(&buf[..n]));
            found.is_some()
        })
        .unwrap_or_else(|| panic!("{name}.mesh answers on node {i}"));
        found.expect("found")
    }

    /// Starts nodes 2..N (node 1 runs since `prepare`).
    pub fn start(&mut self) {
        for i in 2..=self.n {
            let child = self.run(i);
            self.procs.0.push(child);
        }
    }

    /// Until every node sees every node alive.
    pub fn converge(&self, limit: Duration) -> Option<Duration> {
        poll(limit, || {
            (1..=self.n).all(|i| {
                let s = self.states(i);
                s.len() == self.n && s.iter().all(|(_, st)| st == "alive")
            })
        })
    }

    pub fn ip(&self, i: usize) -> String {
        format!("127.{}.0.{i}", self.subnet)
    }

    pub fn dns(&self, i: usize) -> std::net::SocketAddr {
        format!("{}:{DNS_PORT}", self.ip(i)).parse().expect("dns address")
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.sock"))
    }

    fn write_config(&self, i: usize) -> PathBuf {
        let d = self.dir.path();
        let path = d.join(format!("n{i}.toml"));
        let join = if i == 1 { String::new() } else { format!("join = [\"{}:7946\"]\n", self.ip(1)) };
        let text = format!(
            "node_name = \"n{i}\"\ndata_dir = \"{d}/d{i}\"\nbind = \"{ip}:7946\"\n{join}log_level = \"warn\"\n\
             [dns]\nlisten = \"{ip}:{DNS_PORT}\"\n[admin]\nsocket = \"{sock}\"\n[proxy]\nvip_range = \"127.{v}.{r}.0/24\"\n",
            d = d.display(),
            ip = self.ip(i),
            sock = self.socket(i).display(),
            v = u16::from(self.subnet) + 1,
            // Nodes share this machine's loopback: each gets its own virtual IPs.
            r = i,
        );
        std::fs::write(&path, format!("{text}{}", self.extra)).expect("config");
        path
    }

    fn run(&self, i: usize) -> Child {
        let mut command = match self.cpus.get(i - 1).filter(|c| !c.is_empty()) {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(self.bin("meshd"));
                c
            }
            None => Command::new(self.bin("meshd")),
        };
        command
            .args(["run", "--config"])
            .arg(&self.configs[i - 1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("meshd")
    }

    /// `meshctl ARGS -o json` against node `i`.
    pub fn meshctl(&self, i: usize, args: &[&str]) -> Option<serde_json::Value> {
        let out = self.meshctl_raw(i, &[args, &["-o", "json"]].concat())?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn meshctl_raw(&self, i: usize, args: &[&str]) -> Option<std::process::Output> {
        Command::new(self.bin("meshctl")).arg("--socket").arg(self.socket(i)).args(args).output().ok()
    }

    /// Each member's name and state as node `i` sees them.
    pub fn states(&self, i: usize) -> Vec<(String, String)> {
        let members = self.meshctl(i, &["members"]).unwrap_or_default();
        let Some(members) = members.as_array() else { return vec![] };
        members
            .iter()
            .map(|m| (m["name"].as_str().unwrap_or("").to_owned(), m["state"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    /// kill -9 of the node started last.
    pub fn kill_last(&mut self) {
        if let Some(mut last) = self.procs.0.pop() {
            let _ = last.kill();
            let _ = last.wait();
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A DNS query for `name`'s A record, as bytes (a fixed ID; no EDNS).
pub fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).expect("a short label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The number of answers in a DNS response with RCODE NOERROR, or None.
pub fn answer_count(response: &[u8]) -> Option<u16> {
    let h = response.get(..12)?;
    (h[3] & 0x0f == 0).then(|| u16::from_be_bytes([h[6], h[7]]))
}

/// Pins `pid` (every thread) to `cpus` (a `taskset -c` list).
pub fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]).stdout(Stdio::null()).status();
}

/// Starts `program` on `cpus` (a `taskset -c` list: "0", "1", "0,1").
pub fn spawn_on(cpus: &str, program: &str, args: &[&str]) -> Child {
    Command::new("taskset")
        .args(["-c", cpus, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("BENCH_VERBOSE").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install iperf3 stunnel4 haproxy wrk nginx-light)"))
}

/// nginx serving a 612-byte `/small.html` on `addr` (on `cpus`), its files in `dir`.
pub fn nginx(dir: &Path, addr: SocketAddr, cpus: &str) -> Child {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).expect("www");
    std::fs::write(root.join("small.html"), "x".repeat(612)).expect("small file");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
             events {{ worker_connections 4096; }}\nhttp {{ access_log off; keepalive_requests 100000;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {addr}; root {root}; }} }}\n",
            d = dir.display(),
            root = root.display()
        ),
    )
    .expect("nginx.conf");
    spawn_on(cpus, "nginx", &["-c", &conf.display().to_string(), "-e", &dir.join("nginx.err").display().to_string()])
}

/// wrk against `addr`'s `/small.html` for `secs` (on `cpus`, one thread, 32
/// connections): requests/s, p50 and p99 in ms.
pub fn wrk(addr: SocketAddr, secs: u64, cpus: &str) -> (f64, f64, f64) {
    let out = Command::new("taskset")
        .args(["-c", cpus, "wrk", "-t1", "-c32", &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://{addr}/small.html"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned())).unwrap_or_default()
    };
    let ms = |s: String| {
        let s = s.trim();
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().unwrap_or(0.0) / 1e3
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().unwrap_or(0.0)
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().unwrap_or(0.0) * 1e3
        } else {
            0.0
        }
    };
    (field("Requests/sec:").parse().unwrap_or(0.0), ms(field("50%")), ms(field("99%")))
}

/// The first A record's address in a DNS response to [`a_query`] (one question).
pub fn first_a(r: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut i = 12;
    while *r.get(i)? != 0 {
        i += 1 + usize::from(r[i]);
    }
    i += 5; // root, type, class
    if u16::from_be_bytes([*r.get(6)?, *r.get(7)?]) == 0 {
        return None;
    }
    i += 2 + 2 + 2 + 4; // pointer, type, class, ttl
    let len = usize::from(u16::from_be_bytes([*r.get(i)?, *r.get(i + 1)?]));
    (len == 4).then(|| std::net::Ipv4Addr::new(r[i + 2], r[i + 3], r[i + 4], r[i + 5]))
}

/// The CPU seconds (user and system) the processes `pids` have used so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    pids.iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let after = stat.rsplit(')').next().unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / ticks
        })
        .sum()
}
