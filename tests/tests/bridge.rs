//! The Kubernetes bridge with real meshd processes and a FAKE API server (a test double:
//! no real Kubernetes API server can run here; `mesh_tests::kube` speaks the real
//! list/watch protocol). The "pods" are TCP servers on loopback addresses.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use mesh_tests::kube::{self, FakeApi, Kind};
use mesh_tests::{echo_once, echo_server, Block, Node};
use nix::sys::signal::Signal;

const CONVERGE: Duration = Duration::from_secs(30);
/// The mesh port of the imported services.
const PORT: u16 = 7000;

/// A "pod": answers its name, then echoes.
fn pod(ip: Ipv4Addr, port: u16, name: &'static str) {
    echo_server((ip, port).into(), name);
}

/// One call: the name of the pod (or VM service) that answered.
fn call(addr: SocketAddr) -> Result<String, String> {
    echo_once(addr).map(|(name, _)| name)
}

/// A service `reviews` on the VM (an echo server), registered there; its service file.
fn reviews_on(vm: &Node, block: &Block) -> std::path::PathBuf {
    pod(block.node_ip(2), 9080, "reviews-on-vm");
    let file = vm.dir.path().join("reviews.toml");
    std::fs::write(&file, format!("name = \"reviews\"\naddress = \"{}\"\nport = 9080\n", block.node_ip(2)))
        .expect("file");
    let out = vm.meshctl(&["service", "register", "-f", &file.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    file
}

/// Whether `node` lists `service` with a healthy instance (None: not listed at all).
fn healthy(node: &Node, service: &str) -> Option<bool> {
    let s = node.meshctl_json(&["services"]);
    let svc = s.as_array()?.iter().find(|s| s["name"] == service)?.clone();
    let instances = svc["instances"].as_array()?.clone();
    if instances.is_empty() {
        return None;
    }
    Some(instances.iter().any(|i| i["healthy"] == true))
}

fn writes(node: &Node) -> u64 {
    ["declare", "health", "remove"]
        .iter()
        .map(|k| node.metric(&format!("mesh_bridge_writes_total{{kind=\"{k}\"}}")))
        .sum()
}

struct Setup {
    api: FakeApi,
    bridge: Node,
    vm: Node,
    pod_ips: Vec<Ipv4Addr>,
    /// The port the pods listen on.
    target: u16,
}

fn setup(block: &Block) -> Setup {
    let api = FakeApi::start();
    let pod_ips: Vec<Ipv4Addr> = (40..42).map(|i| block.node_ip(i)).collect();
    let target = {
        let probe = TcpListener::bind((pod_ips[0], 0)).expect("port");
        probe.local_addr().expect("addr").port()
    };
    pod(pod_ips[0], target, "pod-a");
    pod(pod_ips[1], target, "pod-b");
    api.apply(Kind::Service, kube::service("shop", "orders", "tcp", PORT, &[("meshd.io/import", "true")]));
    // Not selected: never imported.
    api.apply(Kind::Service, kube::service("shop", "internal", "tcp", PORT, &[]));
    let eps: Vec<(String, bool, bool)> = pod_ips.iter().map(|ip| (ip.to_string(), true, false)).collect();
    api.apply(Kind::EndpointSlice, kube::slice("shop", "orders-1", "orders", "tcp", target, &eps));

    let prepared = Node::prepare(block, 1, "");
    let kubeconfig = prepared.dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    let text = std::fs::read_to_string(&prepared.config).expect("config");
    std::fs::write(
        &prepared.config,
        format!("{text}\n[bridge]\ncluster = \"test\"\nkubeconfig = \"{}\"\n", kubeconfig.display()),
    )
    .expect("config");
    let init = prepared.meshd(&["init"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let bridge = prepared.run();
    let seed = format!("join = [\"{}\"]", bridge.addr());
    let vm = Node::join(block, 2, &bridge.token(&[]), &seed, "");
    Setup { api, bridge, vm, pod_ips, target }
}

#[test]
fn a_vm_calls_an_imported_service_through_the_bridge_and_a_410_relists_without_a_delete() {
    let block = Block::take();
    let Setup { api, bridge, vm, pod_ips, target } = setup(&block);
    vm.wait_healthy("orders", 1, CONVERGE);
    assert_eq!(healthy(&vm, "internal"), None, "an unselected Service is not imported");
    let addr = SocketAddr::from((vm.vip("orders", CONVERGE), PORT));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(call(addr).expect("a VM reaches a pod through the bridge"));
    }
    assert_eq!(seen, ["pod-a".to_owned(), "pod-b".to_owned()].into(), "both pods take connections");

    // 410 Gone mid-watch: the watchers list again; nothing is deleted or written.
    let before = writes(&bridge);
    let (lists, _) = api.requests(Kind::Service);
    api.expire();
    bridge.eventually(CONVERGE, "a relist after 410 Gone", || (api.requests(Kind::Service).0 > lists).then_some(()));
    api.bookmark();
    for _ in 0..20 {
        assert_eq!(healthy(&vm, "orders"), Some(true), "orders stays through the relist");
        assert!(call(addr).is_ok());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(writes(&bridge), before, "a relist that changes nothing writes nothing");

    // A pod terminating drains: not chosen while another is ready.
    let eps = vec![(pod_ips[0].to_string(), false, true), (pod_ips[1].to_string(), true, false)];
    api.apply(Kind::EndpointSlice, kube::slice("shop", "orders-1", "orders", "tcp", target, &eps));
    bridge.eventually(CONVERGE, "new connections avoid the terminating pod", || {
        (0..10).all(|_| call(addr).as_deref() == Ok("pod-b")).then_some(())
    });
    assert_eq!(healthy(&vm, "orders"), Some(true));
}

#[test]
fn churn_is_coalesced_a_mass_delete_is_held_until_a_relist_confirms_it_and_a_restart_writes_nothing() {
    let block = Block::take();
    let Setup { api, mut bridge, vm, .. } = setup(&block);
    vm.wait_healthy("orders", 1, CONVERGE);

    // A rolling update of 300 pods: 900 slice updates (each pod replaced and made ready).
    api.apply(Kind::Service, kube::service("shop", "batch", "tcp", PORT, &[("meshd.io/import", "true")]));
    let ip = |g: u32, i: u32| format!("10.{g}.{}.{}", i / 250, i % 250 + 1);
    // The slice exists before its endpoints and ports are filled in, as the endpoint
    // controller creates it: imported, with no endpoint yet.
    api.apply(
        Kind::EndpointSlice,
        serde_json::json!({
            "metadata": {"namespace": "shop", "name": "batch-1", "labels": {"kubernetes.io/service-name": "batch"}},
            "addressType": "IPv4",
            "endpoints": null
        }),
    );
    bridge.eventually(CONVERGE, "batch imported, without endpoints", || {
        (healthy(&vm, "batch") == Some(false)).then_some(())
    });
    let mut eps: Vec<(String, bool, bool)> = (0..300).map(|i| (ip(1, i), true, false)).collect();
    api.apply(Kind::EndpointSlice, kube::slice("shop", "batch-1", "batch", "tcp", 9000, &eps));
    vm.wait_healthy("batch", 1, CONVERGE);
    let before = writes(&bridge);
    let started = Instant::now();
    for i in 0..300u32 {
        if let Some(e) = eps.iter_mut().find(|(a, _, _)| *a == ip(1, i)) {
            *e = (ip(1, i), false, true);
        }
        api.apply(Kind::EndpointSlice, kube::slice("shop", "batch-1", "batch", "tcp", 9000, &eps));
        eps.push((ip(2, i), false, false));
        api.apply(Kind::EndpointSlice, kube::slice("shop", "batch-1", "batch", "tcp", 9000, &eps));
        eps.retain(|(a, _, _)| *a != ip(1, i));
        if let Some(e) = eps.iter_mut().find(|(a, _, _)| *a == ip(2, i)) {
            e.1 = true;
        }
        api.apply(Kind::EndpointSlice, kube::slice("shop", "batch-1", "batch", "tcp", 9000, &eps));
    }
    eprintln!("900 slice updates sent in {:?}", started.elapsed());
    std::thread::sleep(bridge_settle());
    let churn = writes(&bridge) - before;
    eprintln!("a 900-update rolling update: {churn} store writes");
    assert!(churn <= 2, "the rolling update is coalesced: {churn} writes");
    assert_eq!(healthy(&vm, "batch"), Some(true));

    // Every endpoint gone at once: held, logged, and applied once a new full list says so.
    let held = bridge.metric("mesh_bridge_held_deletes_total");
    api.delete(Kind::EndpointSlice, "shop", "batch-1");
    bridge.eventually(CONVERGE, "the mass delete held", || {
        (bridge.metric("mesh_bridge_held_deletes_total") > held).then_some(())
    });
    bridge.eventually(CONVERGE, "the delete confirmed by a relist", || {
        (healthy(&vm, "batch") == Some(false)).then_some(())
    });
    assert!(bridge.logs().contains("held until a new full list"));

    // A restart of the bridge: nothing disappears from the VM, and the new process
    // writes nothing.
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(CONVERGE).code(), Some(0), "{}", bridge.logs());
    assert!(healthy(&vm, "orders").is_some(), "the instance stays while the bridge is down");
    let bridge = bridge.run();
    vm.wait_healthy("orders", 1, CONVERGE);
    std::thread::sleep(bridge_settle());
    assert_eq!(writes(&bridge), 0, "a restarted bridge finds everything as it left it:\n{}", bridge.logs());
    assert_eq!(healthy(&vm, "batch"), Some(false));
}

/// Longer than the bridge's coalescing limit (5 s), ten times over is too long for CI:
/// twice its quiet-or-max window.
fn bridge_settle() -> Duration {
    Duration::from_secs(7)
}

#[test]
fn a_pod_calls_a_mesh_service_through_the_bridges_listener_and_purge_removes_only_the_bridges_objects() {
    let block = Block::take();
    let Setup { api, mut bridge, vm, .. } = setup(&block);
    // A service on the VM, exported into the cluster by the bridge.
    let file = reviews_on(&vm, &block);
    // Someone else's object in the export namespace: never touched.
    api.apply(Kind::Service, kube::service("mesh", "not-ours", "tcp", 80, &[]));

    let slice = bridge.eventually(CONVERGE, "the bridge's EndpointSlice for reviews", || {
        api.list(Kind::EndpointSlice, "mesh", "kubernetes.io/service-name=reviews").into_iter().next()
    });
    let services = api.list(Kind::Service, "mesh", "meshd.io/bridge=test");
    let names: Vec<&str> = services.iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
    assert!(names.contains(&"reviews"), "{names:?}");
    assert!(!names.contains(&"orders"), "a service imported from this cluster is not exported back: {names:?}");
    let reviews = services.iter().find(|s| s["metadata"]["name"] == "reviews").expect("reviews");
    assert_eq!(reviews["spec"]["ports"][0]["port"], 9080);
    assert!(reviews["spec"]["selector"].is_null(), "no selector: the bridges' slices are its endpoints");

    // What kube-proxy would do for a pod calling reviews.mesh.svc.cluster.local:9080.
    let ip = slice["endpoints"][0]["addresses"][0].as_str().unwrap_or_else(|| panic!("an address in {slice}"));
    let port = slice["ports"][0]["port"].as_u64().unwrap_or_else(|| panic!("a port in {slice}"));
    let to: SocketAddr = format!("{ip}:{port}").parse().expect("endpoint");
    assert_eq!(slice["ports"][0]["name"], "p9080");
    assert_eq!(call(to).as_deref(), Ok("reviews-on-vm"), "a pod reaches the VM's service through the bridge");

    // The service leaves the mesh: its objects go.
    let out = vm.meshctl(&["service", "deregister", "reviews"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bridge.eventually(CONVERGE, "reviews unexported", || {
        api.list(Kind::Service, "mesh", "meshd.io/bridge=test")
            .iter()
            .all(|s| s["metadata"]["name"] != "reviews")
            .then_some(())
    });
    assert!(api.list(Kind::EndpointSlice, "mesh", "kubernetes.io/service-name=reviews").is_empty());

    // Purge, once the bridge is gone: only the bridge's objects.
    let out = vm.meshctl(&["service", "register", "-f", &file.display().to_string()]);
    assert!(out.status.success());
    bridge.eventually(CONVERGE, "reviews exported again", || {
        (!api.list(Kind::EndpointSlice, "mesh", "kubernetes.io/service-name=reviews").is_empty()).then_some(())
    });
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(CONVERGE).code(), Some(0), "{}", bridge.logs());
    let out = bridge.meshd(&["bridge", "purge", "--cluster", "test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 1 Service(s) and 1 EndpointSlice(s)"));
    assert!(api.list(Kind::Service, "mesh", "meshd.io/bridge=test").is_empty());
    assert!(api.list(Kind::EndpointSlice, "mesh", "meshd.io/bridge=test").is_empty());
    assert_eq!(api.list(Kind::Service, "mesh", "").len(), 1, "not-ours stays");
}

#[test]
fn two_bridge_replicas_both_import_and_export_and_one_may_die() {
    let block = Block::take();
    let Setup { api, bridge, vm, .. } = setup(&block);
    let kubeconfig = bridge.dir.path().join("kubeconfig");
    let seed = format!("join = [\"{}\"]", bridge.addr());
    let extra = format!("[bridge]\ncluster = \"test\"\nkubeconfig = \"{}\"\n", kubeconfig.display());
    let mut second = Node::join(&block, 3, &bridge.token(&[]), &seed, &extra);
    vm.wait_healthy("orders", 2, CONVERGE);

    // Export: one Service, one EndpointSlice per replica.
    reviews_on(&vm, &block);
    let slices = bridge.eventually(CONVERGE, "a slice from each replica", || {
        let s = api.list(Kind::EndpointSlice, "mesh", "kubernetes.io/service-name=reviews");
        (s.len() == 2).then_some(s)
    });
    let mut writers: Vec<&str> =
        slices.iter().filter_map(|s| s["metadata"]["labels"]["meshd.io/node"].as_str()).collect();
    writers.sort_unstable();
    assert_eq!(writers, ["node-1", "node-3"]);
    assert_eq!(api.list(Kind::Service, "mesh", "meshd.io/bridge=test").len(), 1, "one Service, written alike by both");
    for s in &slices {
        let to: SocketAddr = format!(
            "{}:{}",
            s["endpoints"][0]["addresses"][0].as_str().unwrap_or_else(|| panic!("an address in {s}")),
            s["ports"][0]["port"].as_u64().unwrap_or_else(|| panic!("a port in {s}"))
        )
        .parse()
        .expect("endpoint");
        assert_eq!(call(to).as_deref(), Ok("reviews-on-vm"), "through either replica");
    }

    // One replica dies (kill -9): the VM's calls go on through the other.
    let addr = SocketAddr::from((vm.vip("orders", CONVERGE), PORT));
    let killed_at = Instant::now();
    second.signal(Signal::SIGKILL);
    let _ = second.wait_exit(CONVERGE);
    let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    while killed_at.elapsed() < Duration::from_secs(8) {
        let started = Instant::now();
        match call(addr) {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e),
        }
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("one bridge killed: {ok} calls ok, {} failed, slowest {slowest:?}", failed.len());
    assert!(failed.is_empty(), "calls failed while a bridge died: {failed:?}");
    vm.eventually(CONVERGE, "the dead bridge's instance out of routing", || {
        let s = vm.meshctl_json(&["services"]);
        let orders = s.as_array()?.iter().find(|s| s["name"] == "orders")?.clone();
        (orders["instances"].as_array()?.iter().filter(|i| i["healthy"] == true).count() == 1).then_some(())
    });
}
