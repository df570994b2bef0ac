//! meshctl against a real meshd over its admin socket, and the metrics port.

use std::io::{Read, Write};
use std::net::TcpStream;

use mesh_tests::{binaries, Block, Node};

#[test]
fn meshctl_status_as_a_table_and_as_the_api_body() {
    let block = Block::take();
    let node = Node::start(&block, 1, "");

    let out = node.meshctl(&["status"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert!(table.lines().any(|l| l.starts_with("node") && l.ends_with(" node-1")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("version") && l.ends_with(mesh_proto::VERSION)), "{table}");
    assert!(table.contains("1 alive, 0 suspect, 0 dead, 0 left"), "{table}");
    // The store holds three entries from the start: the records of this node's
    // certificate and of its key and, the first node being a signer, its address for
    // renewals.
    assert!(table.lines().any(|l| l.starts_with("store") && l.contains(" 3 entries, ")), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("identity") && l.ends_with(" spiffe://mesh.local/node/node-1")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("signer") && l.ends_with(" yes")), "{table}");

    let json = node.meshctl_json(&["status"]);
    assert_eq!(json["node"], "node-1");
    assert_eq!(json["version"], mesh_proto::VERSION);
    assert_eq!(json["store"]["entries"], 3);
    assert!(json["store"]["bytes"].as_u64().is_some_and(|b| b > 0));
    // -o json is the API body unchanged.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let api = rt.block_on(node.client().get("/v1/status")).expect("GET /v1/status");
    let api: serde_json::Value = serde_json::from_slice(&api.body).expect("json");
    assert_eq!(json, api);
}

#[test]
fn meshctl_members_lists_this_node() {
    let block = Block::take();
    let node = Node::start(&block, 1, "");

    let out = node.meshctl(&["members"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[0], "node-1");
    assert!(cells[1].starts_with(&format!("{}:", block.node_ip(1))), "{table}");
    assert_eq!(cells[2], "alive");

    let json = node.meshctl_json(&["members"]);
    let members = json.as_array().expect("a top-level array");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["name"], "node-1");
    assert_eq!(members[0]["state"], "alive");
}

#[test]
fn meshctl_against_a_missing_socket_exits_1_and_says_what_to_try() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody.sock");
    for args in [&["status"][..], &["members", "-o", "json"][..]] {
        let out = std::process::Command::new(&binaries().meshctl)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("meshctl");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&socket.display().to_string()), "names the socket: {err}");
        assert!(err.contains("is meshd running?"), "says what to try: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn meshctl_finds_the_socket_through_the_environment() {
    let block = Block::take();
    let node = Node::start(&block, 1, "");
    let out = std::process::Command::new(&binaries().meshctl)
        .env("MESHD_SOCKET", &node.socket)
        .args(["status", "-o", "json"])
        .output()
        .expect("meshctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn meshctl_usage_errors_exit_2() {
    for args in [&["frobnicate"][..], &["status", "-o", "yaml"][..], &["completions", "tcsh"][..]] {
        let out = std::process::Command::new(&binaries().meshctl).args(args).output().expect("meshctl");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn meshctl_completions_for_each_shell() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef meshctl"), ("fish", "complete -c meshctl")] {
        let out =
            std::process::Command::new(&binaries().meshctl).args(["completions", shell]).output().expect("meshctl");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell} completions lack {marker:?}");
        assert!(text.contains("members"), "{shell} completions lack the verbs");
    }
}

#[test]
fn metrics_are_served_on_admin_http_and_the_api_is_not() {
    let block = Block::take();
    let node = Node::start(&block, 1, &format!("http = \"{}:0\"\n", block.node_ip(1)));
    // meshd logs the bound address; read it back rather than guessing a free port.
    let logs = node.logs();
    let addr = logs
        .split("admin_http=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin_http in the log:\n{logs}"))
        .to_owned();

    let get = |path: &str| {
        let mut conn = TcpStream::connect(&addr).expect("connect admin.http");
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        text
    };
    let metrics = get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("mesh_build_info{version="), "{metrics}");
    let status = get("/v1/status");
    assert!(status.starts_with("HTTP/1.1 404"), "the TCP port must not serve the API: {status}");
}

/// The admin socket's privilege levels, judged by the kernel's view of the caller
/// (SO_PEERCRED): another user may read but not change the mesh; in group `meshd-admin`
/// it may. Needs root (to run meshctl as another user and to create the group): CI is
/// root; elsewhere the test fails saying so.
#[test]
fn another_user_may_read_but_only_root_meshd_or_meshd_admin_may_change() {
    use std::process::Command;
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (to run meshctl as another user)");
    let block = Block::take();
    let node = Node::start(&block, 1, "");
    // A copy of meshctl and a path to the socket that uid 65534 can reach.
    let _ = Command::new("chmod").arg("0711").arg(node.dir.path()).status();
    let _ = Command::new("chmod").arg("0666").arg(&node.socket).status();
    let tools = tempfile::tempdir().expect("tempdir");
    let _ = Command::new("chmod").arg("0755").arg(tools.path()).status();
    let meshctl = tools.path().join("meshctl");
    std::fs::copy(&binaries().meshctl, &meshctl).expect("copy meshctl");
    let _ = Command::new("groupadd").args(["--system", "meshd-admin"]).status();
    let admin_gid = nix::unistd::Group::from_name("meshd-admin")
        .expect("group lookup")
        .expect("group meshd-admin exists (groupadd)")
        .gid
        .as_raw();
    let as_nobody = |groups: &str, args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(if groups.is_empty() { "--clear-groups".to_owned() } else { format!("--groups={groups}") })
            .arg(&meshctl)
            .arg("--socket")
            .arg(&node.socket)
            .args(args)
            .output()
            .expect("setpriv meshctl")
    };

    let read = as_nobody("", &["status"]);
    assert!(read.status.success(), "reading: {}", String::from_utf8_lossy(&read.stderr));
    let change = as_nobody("", &["token", "create"]);
    let stderr = String::from_utf8_lossy(&change.stderr);
    assert_eq!(change.status.code(), Some(1), "changing is refused with 1: {stderr}");
    assert!(stderr.contains("meshd-admin") && stderr.contains("uid 65534"), "the error says what is needed: {stderr}");
    assert!(node.logs().contains("refused a change from an admin client without the right"));
    let dry = as_nobody("", &["route", "lint"]);
    assert!(dry.status.success(), "lint only reads: {}", String::from_utf8_lossy(&dry.stderr));

    let admin = as_nobody(&admin_gid.to_string(), &["token", "create"]);
    assert!(admin.status.success(), "in group meshd-admin: {}", String::from_utf8_lossy(&admin.stderr));
    let own = node.meshctl(&["token", "create"]);
    assert!(own.status.success(), "as root: {}", String::from_utf8_lossy(&own.stderr));
}
