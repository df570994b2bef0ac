//! The systemd unit against what meshd really does: every system call meshd makes in a
//! scenario that runs each path (init, join, run, tunnels, DNS, the admin socket with
//! group `meshd` present, drain), recorded with `strace -f` while meshd runs as the unit
//! runs it (user and group `meshd`), must be one that the unit's `SystemCallFilter`
//! allows; otherwise systemd kills meshd with SIGSYS ("Bad system call").
//!
//! Needs root (to add the `meshd` user and switch to it), `strace` and
//! `systemd-analyze`; `.ci/run` installs them. Fails loudly where it cannot run.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use mesh_tests::{Block, Node};
use nix::sys::signal::Signal;

const LIVENESS: Duration = Duration::from_secs(30);

/// The system calls a group or name in a `SystemCallFilter` line stands for.
fn expand(item: &str, out: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_owned());
        return;
    }
    let listed = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .expect("systemd-analyze (package systemd) is needed: .ci/run installs it");
    assert!(
        listed.status.success(),
        "systemd-analyze syscall-filter {item}: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for line in String::from_utf8_lossy(&listed.stdout).lines().skip(1) {
        let name = line.trim();
        if !name.is_empty() && !name.starts_with('#') {
            expand(name, out);
        }
    }
}

/// What the unit's `SystemCallFilter=` lines allow: the first line is an allow list
/// (this unit's is), later `~` lines take calls away and plain lines add them.
fn allowed_by_unit(unit: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut lines = 0;
    for value in unit.lines().filter_map(|l| l.trim().strip_prefix("SystemCallFilter=")) {
        lines += 1;
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        assert!(lines > 1 || !deny, "the first SystemCallFilter line is an allow list");
        let mut set = BTreeSet::new();
        for item in list.split_whitespace() {
            expand(item, &mut set);
        }
        if deny {
            allowed.retain(|c| !set.contains(c));
        } else {
            allowed.extend(set);
        }
    }
    assert!(lines > 0, "the unit has a SystemCallFilter");
    allowed
}

/// The system calls in `strace -c` summaries (the last column of each table row).
fn calls_in(summary: &str) -> BTreeSet<String> {
    summary
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|f| f.parse::<f64>().is_ok()))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| *name != "total")
        .map(str::to_owned)
        .collect()
}

/// The user and group `meshd`, as `meshd.sysusers` makes them; removed at the end if
/// this test added them.
struct MeshdUser {
    added: bool,
}

impl MeshdUser {
    fn ensure() -> MeshdUser {
        assert!(nix::unistd::geteuid().is_root(), "this test runs meshd as user meshd: it needs root (CI is root)");
        if nix::unistd::User::from_name("meshd").ok().flatten().is_some() {
            return MeshdUser { added: false };
        }
        let _ = Command::new("groupadd").args(["--system", "meshd"]).status();
        let status = Command::new("useradd")
            .args(["--system", "--gid", "meshd", "--no-create-home", "--shell", "/usr/sbin/nologin", "meshd"])
            .status()
            .expect("useradd");
        assert!(status.success(), "cannot add user meshd");
        MeshdUser { added: true }
    }
}

impl Drop for MeshdUser {
    fn drop(&mut self) {
        if self.added {
            let _ = Command::new("userdel").arg("meshd").status();
            let _ = Command::new("groupdel").arg("meshd").status();
        }
    }
}

/// A node whose every meshd (the copy at `meshd`, which user meshd can reach wherever
/// the checkout is) runs as user `meshd` under `strace -f -c`, the summaries appended to
/// `trace`.
fn traced(node: Node, meshd: &Path, trace: &Path) -> Node {
    let chown = Command::new("chown").args(["-R", "meshd:meshd"]).arg(node.dir.path()).status().expect("chown");
    assert!(chown.success());
    let trace = trace.display().to_string();
    let meshd = meshd.display().to_string();
    let command = [
        "setpriv",
        "--reuid=meshd",
        "--regid=meshd",
        "--init-groups",
        "strace",
        "-f",
        "-c",
        "-A",
        "-o",
        trace.as_str(),
        meshd.as_str(),
    ];
    node.wrapped(&command)
}

/// The pid of `parent`'s child process (meshd under strace).
fn child_of(parent: nix::unistd::Pid) -> nix::unistd::Pid {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
        if ppid == Some(parent.as_raw().to_string().as_str()) {
            if let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) {
                return nix::unistd::Pid::from_raw(pid);
            }
        }
    }
    panic!("no child of {parent}");
}

/// SIGTERM to meshd itself (not strace, which would detach), then its exit status.
fn drain(node: &mut Node) -> i32 {
    let meshd = child_of(node.pid());
    nix::sys::signal::kill(meshd, Signal::SIGTERM).expect("SIGTERM meshd");
    node.wait_exit(LIVENESS).code().unwrap_or(-1)
}

#[test]
fn every_system_call_meshd_makes_is_allowed_by_the_units_filter() {
    // The unit in the tree, or the one a package installed (`packaging/deb/check.sh`
    // points MESH_UNIT_FILE at /usr/lib/systemd/system/meshd.service).
    let unit_path = std::env::var_os("MESH_UNIT_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/meshd.service"));
    let unit = std::fs::read_to_string(&unit_path).unwrap_or_else(|e| panic!("{}: {e}", unit_path.display()));
    eprintln!("checking meshd's system calls against {}", unit_path.display());
    let allowed = allowed_by_unit(&unit);
    assert!(allowed.contains("read") && !allowed.contains("fchownat"), "the filter reads as expected");
    let _user = MeshdUser::ensure();
    let traces = tempfile::tempdir().expect("tempdir");
    let _ = Command::new("chmod").arg("0777").arg(traces.path()).status();
    // The checkout may sit in a directory user meshd cannot enter: run a copy.
    let meshd = traces.path().join("meshd");
    std::fs::copy(&mesh_tests::binaries().meshd, &meshd).expect("copy meshd");

    // init and run on node-1, join and run on node-2.
    let block = Block::take();
    let trace1 = traces.path().join("node-1.strace");
    let n1 = traced(Node::prepare(&block, 1, ""), &meshd, &trace1);
    let init = n1.meshd(&["init"]);
    assert!(init.status.success(), "meshd init as user meshd: {}", String::from_utf8_lossy(&init.stderr));
    let mut n1 = n1.run();
    let seed = format!("join = [\"{}\"]", n1.addr());
    let token = n1.token(&[]);
    let trace2 = traces.path().join("node-2.strace");
    let n2 = traced(Node::prepare_with(&block, 2, &seed, ""), &meshd, &trace2);
    let join = n2.meshd(&["join", &token]);
    assert!(join.status.success(), "meshd join as user meshd: {}", String::from_utf8_lossy(&join.stderr));
    let mut n2 = n2.run();

    // The admin socket is group meshd, as the unit gives it, without a chown.
    let group = nix::unistd::Group::from_name("meshd").ok().flatten().expect("group meshd");
    let socket = std::fs::metadata(&n1.socket).expect("admin socket");
    assert_eq!(socket.gid(), group.gid.as_raw(), "the admin socket belongs to group meshd");

    // A service on node-2 with a health check, reached from node-1 through a tunnel.
    let backend = TcpListener::bind((block.node_ip(2), 0)).expect("backend");
    let addr = backend.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut conn in backend.incoming().flatten() {
            let _ = conn.write_all(b"hello\n");
        }
    });
    let file = n2.dir.path().join("echo.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"echo\"\naddress = \"{}\"\nport = {}\ncheck = {{ tcp = \"{addr}\", interval = \"200ms\" }}\n",
            addr.ip(),
            addr.port()
        ),
    )
    .expect("service file");
    let out = n2.meshctl(&["service", "register", "-f", &file.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    n1.wait_healthy("echo", 1, LIVENESS);
    let vip = n1.vip("echo", LIVENESS);
    let mut stream = TcpStream::connect(SocketAddr::from((vip, addr.port()))).expect("through the tunnel");
    stream.set_read_timeout(Some(LIVENESS)).expect("timeout");
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).expect("a line through the tunnel");
    assert_eq!(line, "hello\n");

    // DNS over UDP and TCP, an admin write, then the drain.
    assert_eq!(n2.dig("echo.mesh.", RecordType::A, true).metadata.response_code, ResponseCode::NoError);
    let mut tcp = TcpStream::connect(n1.dns_addr()).expect("DNS over TCP");
    let query = [
        0u8, 17, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b'e', b'c', b'h', b'o', 4, b'm', b'e', b's', b'h', 0, 0, 1, 0,
        1,
    ];
    tcp.write_all(&query).expect("send");
    tcp.set_read_timeout(Some(LIVENESS)).expect("timeout");
    let mut len = [0u8; 2];
    std::io::Read::read_exact(&mut tcp, &mut len).expect("a TCP answer");
    let route = n1.dir.path().join("route.toml");
    std::fs::write(&route, "name = \"echo\"\nservice = \"echo\"\n").expect("route file");
    let out = n1.meshctl(&["route", "apply", "-f", &route.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(stream);
    // An upgrade: node-1 starts its successor (strace -f follows it) and hands it every
    // socket; the successor then drains like any meshd.
    let successor = n1.upgrade();
    assert_eq!(n1.vip("echo", LIVENESS), vip, "the successor serves the same virtual IP");
    assert_eq!(drain(&mut n2), 0, "node-2 drains and exits 0 under the filter's calls:\n{}", n2.logs());
    nix::sys::signal::kill(successor, Signal::SIGTERM).expect("SIGTERM the successor");
    assert_eq!(n1.wait_exit(LIVENESS).code(), Some(0), "node-1's processes exit 0:\n{}", n1.logs());

    let mut made = BTreeSet::new();
    for trace in [&trace1, &trace2] {
        let summary = std::fs::read_to_string(trace).expect("strace summary");
        made.extend(calls_in(&summary));
    }
    assert!(
        made.contains("bind") && (made.contains("recvmsg") || made.contains("recvfrom")),
        "strace saw the daemon: {made:?}"
    );
    let forbidden: Vec<&String> = made.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        forbidden.is_empty(),
        "meshd makes system calls that systemd/meshd.service forbids (it would die with SIGSYS): {forbidden:?}"
    );
}
