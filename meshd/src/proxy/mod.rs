//! The data plane: outbound listeners on every service's virtual IP (and on each
//! `[[upstream]]`), inbound tunnel streams, and the splice between them.
//!
//! The proxy reads routing tables, never the store: [`run`] rebuilds the tables on each
//! snapshot and swaps them in atomically, then opens and closes listeners to match, and
//! publishes which virtual IPs have every listener bound (DNS answers only those).
//! Connections hold the drain: a SIGTERM lets them finish within `drain_timeout`.
//!
//! Must not: read the store, or decide routing (it carries out `routing`'s tables and
//! plans).

pub mod authz;
pub mod http;
pub mod inbound;
mod meter;
pub mod outbound;
pub mod splice;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_proto::api::MemberState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::dns::VipMap;
use crate::drain::DrainWatcher;
use crate::routing::plan::InstanceKey;
use crate::routing::Tables;
use crate::state::SnapshotRx;
use crate::transport::Transport;

/// A request or response body as the proxy carries it.
pub(crate) type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

/// The time a client has to send a whole HTTP request head, and the longest a keep-alive
/// connection may idle between requests (service listeners and tunnelled requests alike).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(30);

/// Proxy metrics, under `mesh_proxy_`.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabel, Histogram>,
    connections: Family<ConnLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    active: Family<DirectionLabel, Gauge>,
    http_events: Family<EventLabels, Counter>,
    policy: Family<PolicyLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    /// `denied` or `rate_limited`.
    outcome: &'static str,
    service: String,
    /// The caller: its service, or `node:NAME`.
    source: String,
    /// `allow[0]`, `deny[1]`, `rate_limit[0]`, `default`, `mesh default`, `ambiguous_path`.
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    service: String,
    /// `retry`, `retry_budget_exhausted`, `mirror_sent`, `mirror_shed`, `ejection`.
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    direction: &'static str,
    /// `ok`, or why the connection was refused or failed.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: &'static str,
    /// `sent` (from the client towards the instance) or `received`.
    way: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    /// The index of the route rule that matched, or `-`.
    rule: String,
    subset: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            connections: Family::default(),
            bytes: Family::default(),
            active: Family::default(),
            http_events: Family::default(),
            policy: Family::default(),
        }
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("proxy");
        r.register("http_requests", "HTTP requests, by service, route rule, subset and status", m.requests.clone());
        r.register("http_request_duration_seconds", "HTTP request latency, by service", m.latency.clone());
        r.register("connections", "Proxied connections, by direction and result", m.connections.clone());
        r.register("bytes", "Bytes proxied, by direction and way", m.bytes.clone());
        r.register("active_connections", "Connections open now, by direction", m.active.clone());
        r.register(
            "http_events",
            "HTTP traffic control at work, by service: retries sent, retries refused by the budget, \
             mirror copies sent and shed, instances ejected",
            m.http_events.clone(),
        );
        r.register(
            "policy_refusals",
            "Connections and requests refused by authorization policies, by outcome (denied, rate_limited), service, source and rule",
            m.policy.clone(),
        );
        m
    }

    fn policy(&self, outcome: &'static str, service: &str, caller: &crate::policy::Caller<'_>, rule: &str) {
        let labels =
            PolicyLabels { outcome, service: service.to_owned(), source: caller.label(), rule: rule.to_owned() };
        self.policy.get_or_create(&labels).inc();
    }

    fn http_event(&self, service: &str, event: &'static str) {
        self.http_events.get_or_create(&EventLabels { service: service.to_owned(), event }).inc();
    }

    fn count(&self, direction: &'static str, result: &'static str) {
        self.connections.get_or_create(&ConnLabels { direction, result }).inc();
    }

    fn moved(&self, direction: &'static str, moved: splice::Moved) {
        self.bytes.get_or_create(&BytesLabels { direction, way: "sent" }).inc_by(moved.sent);
        self.bytes.get_or_create(&BytesLabels { direction, way: "received" }).inc_by(moved.received);
    }

    fn request(&self, service: &str, rule: Option<usize>, subset: Option<&str>, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            service: service.to_owned(),
            rule: rule.map_or("-".to_owned(), |r| r.to_string()),
            subset: subset.unwrap_or("-").to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&ServiceLabel { service: service.to_owned() }).observe(elapsed.as_secs_f64());
    }

    fn active(&self, direction: &'static str) -> ActiveGuard {
        let gauge = self.active.get_or_create(&DirectionLabel { direction }).clone();
        gauge.inc();
        ActiveGuard(gauge)
    }
}

struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What both directions share.
pub struct Proxy {
    node: String,
    transport: Arc<Transport>,
    tables: ArcSwap<Tables>,
    /// Open connections per instance, for the power-of-two choice.
    loads: Mutex<HashMap<InstanceKey, Arc<AtomicUsize>>>,
    metrics: Metrics,
    /// `[proxy]` limits, which a reload of the config may change.
    connect_timeout_ms: std::sync::atomic::AtomicU64,
    max_connections: AtomicUsize,
    rng: Mutex<rand::rngs::SmallRng>,
    budget: Mutex<crate::routing::plan::RetryBudget>,
    ejections: Mutex<crate::routing::plan::Ejections>,
    mirrors: Arc<tokio::sync::Semaphore>,
    pool: upstream::Pool,
    /// Authorization policies by service, from the last snapshot.
    policies: ArcSwap<authz::Policies>,
    /// Bumped whenever `policies` changes.
    policy_changes: watch::Sender<u64>,
    /// `[policy] default`.
    policy_default: crate::config::PolicyDefault,
    /// Rate-limit buckets of the services hosted here.
    limiter: Mutex<crate::policy::limits::Limiter>,
    /// `[proxy] source`: the local service that traffic through virtual IPs comes from.
    source: Option<String>,
    /// Where each call is reported at its end.
    telemetry: Arc<crate::telemetry::traffic::Telemetry>,
    /// A copy of each virtual IP listener's socket, for a successor (an upgrade).
    listener_fds: Mutex<HashMap<SocketAddr, std::os::fd::OwnedFd>>,
    /// Listeners a predecessor handed over, taken as the tables ask for them.
    inherited: Mutex<Option<Arc<crate::handover::Inherited>>>,
    /// Services whose instance here is a gateway to endpoints elsewhere (a Kubernetes
    /// bridge): connections go to these instead of the instance's address.
    gateways: ArcSwap<HashMap<String, Arc<Gateway>>>,
}

/// Where a gateway service's connections go: ready endpoints in turn, draining ones only
/// when none is ready.
#[derive(Debug, Default)]
pub struct Gateway {
    pub ready: Vec<SocketAddr>,
    pub draining: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Gateway {
    pub fn new(ready: Vec<SocketAddr>, draining: Vec<SocketAddr>) -> Gateway {
        Gateway { ready, draining, next: AtomicUsize::new(0) }
    }

    /// The next endpoint, if any.
    fn pick(&self) -> Option<SocketAddr> {
        let from = if self.ready.is_empty() { &self.draining } else { &self.ready };
        (!from.is_empty()).then(|| from[self.next.fetch_add(1, Ordering::Relaxed) % from.len()])
    }
}

/// How the proxy is set up, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub policy_default: crate::config::PolicyDefault,
    pub source: Option<String>,
}

impl Proxy {
    pub fn new(
        node: &str,
        transport: Arc<Transport>,
        metrics: Metrics,
        settings: Settings,
        telemetry: Arc<crate::telemetry::traffic::Telemetry>,
    ) -> Proxy {
        Proxy {
            node: node.to_owned(),
            transport,
            tables: ArcSwap::from_pointee(Tables::default()),
            loads: Mutex::new(HashMap::new()),
            metrics,
            connect_timeout_ms: std::sync::atomic::AtomicU64::new(millis(settings.connect_timeout)),
            max_connections: AtomicUsize::new(settings.max_connections),
            policies: ArcSwap::from_pointee(BTreeMap::new()),
            policy_changes: watch::channel(0).0,
            policy_default: settings.policy_default,
            limiter: Mutex::default(),
            source: settings.source,
            rng: Mutex::new(rand::make_rng()),
            budget: Mutex::default(),
            ejections: Mutex::default(),
            mirrors: Arc::new(tokio::sync::Semaphore::new(http::MIRRORS)),
            pool: upstream::Pool::default(),
            telemetry,
            listener_fds: Mutex::default(),
            inherited: Mutex::default(),
            gateways: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Replaces the gateway services' endpoints (`None` for a service: no longer one).
    pub fn set_gateways(&self, gateways: HashMap<String, Arc<Gateway>>) {
        self.gateways.store(Arc::new(gateways));
    }

    /// Where a connection to the local instance `target` goes: its address, or for a
    /// gateway service one of its endpoints (None: it has none).
    pub(crate) fn local_address(&self, target: &crate::routing::Target) -> Option<SocketAddr> {
        match self.gateways.load().get(&target.service) {
            Some(g) => g.pick(),
            // A gateway's placeholder address is never dialled.
            None if target.addr.is_unspecified() => None,
            None => Some(SocketAddr::new(target.addr, target.port)),
        }
    }

    /// Virtual IP listeners are taken from `inherited` where it has them (an upgrade).
    pub fn inherit(&self, inherited: Arc<crate::handover::Inherited>) {
        *self.inherited.lock().unwrap_or_else(|p| p.into_inner()) = Some(inherited);
    }

    /// Copies of every virtual IP listener's socket, for a successor.
    pub fn listener_copies(&self) -> Vec<(crate::handover::Slot, std::os::fd::OwnedFd)> {
        let fds = self.listener_fds.lock().unwrap_or_else(|p| p.into_inner());
        fds.iter()
            .filter_map(|(addr, fd)| {
                let slot = crate::handover::Slot { kind: crate::handover::Kind::Proxy, key: addr.to_string() };
                Some((slot, fd.try_clone().ok()?))
            })
            .collect()
    }

    /// A listener on `addr`: the predecessor's when it handed one over, else a new one.
    async fn listen_on(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let inherited = self.inherited.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let listener = match inherited.and_then(|i| i.tcp(crate::handover::Kind::Proxy, &addr.to_string())) {
            Some(l) => {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)?
            }
            None => TcpListener::bind(addr).await?,
        };
        let copy = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
        self.listener_fds.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, copy);
        Ok(listener)
    }

    /// After the first pass over the tables: inherited listeners nobody asked for close.
    fn inherited_taken(&self) {
        if let Some(i) = self.inherited.lock().unwrap_or_else(|p| p.into_inner()).take() {
            i.close_rest(crate::handover::Kind::Proxy);
        }
    }

    /// How long to wait for an instance to accept (`proxy.connect_timeout`).
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Connections each listener holds at once (`proxy.max_connections`).
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// New `[proxy]` limits from a reload of the config: connections accepted from now on
    /// follow them, open ones keep going.
    pub fn set_limits(&self, connect_timeout: Duration, max_connections: usize) {
        self.connect_timeout_ms.store(millis(connect_timeout), std::sync::atomic::Ordering::Relaxed);
        self.max_connections.store(max_connections, std::sync::atomic::Ordering::Relaxed);
    }

    /// The peer on `conn` handed over to a new process (an upgrade): nothing new goes on
    /// that connection, idle pooled HTTP connections on it are let go, and the next
    /// tunnel to that node dials it again.
    pub fn moved_away(&self, conn: &quinn::Connection) {
        self.transport.forget(conn);
        self.pool.forget_connection(conn.stable_id());
    }

    /// The recorder calls are reported to (the peer server and the admin API serve its
    /// summary).
    pub fn telemetry(&self) -> &Arc<crate::telemetry::traffic::Telemetry> {
        &self.telemetry
    }

    /// This hop's trace context: the incoming `traceparent` continued, or a new trace
    /// (sampled at `[tracing] sample_percent`); an `x-request-id` is added when absent.
    fn trace_context(&self, headers: &mut hyper::HeaderMap) -> crate::telemetry::trace::TraceContext {
        use crate::telemetry::trace::{parse, TraceContext};
        let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(parse);
        let roll = || {
            let r: u64 = rand::RngExt::random(&mut *self.rng.lock().unwrap_or_else(|p| p.into_inner()));
            self.telemetry.sample((r % 1_000_000) as f64 / 1_000_000.0)
        };
        let ctx = TraceContext::continue_or_start(incoming, |len| random_hex(self, len), roll);
        if !headers.contains_key("x-request-id") {
            if let Ok(v) = hyper::header::HeaderValue::from_str(&random_hex(self, 32)) {
                headers.insert(hyper::header::HeaderName::from_static("x-request-id"), v);
            }
        }
        ctx
    }

    /// Records an HTTP try's result for outlier ejection among the service's instances.
    fn eject(&self, tables: &Tables, service: &str, instance: &InstanceKey, failed: bool) {
        let peers: Vec<InstanceKey> = tables.healthy(service).into_iter().map(InstanceKey::of).collect();
        let mut ejections = self.ejections.lock().unwrap_or_else(|p| p.into_inner());
        if ejections.record(instance, failed, &peers, std::time::Instant::now()) {
            tracing::warn!(service, node = %instance.node, port = instance.port, "instance ejected after consecutive failures");
            self.metrics.http_event(service, "ejection");
        }
    }

    /// A counter of `target`'s open connections; the guard decrements it when dropped.
    fn load_of(&self, instance: &InstanceKey) -> Arc<AtomicUsize> {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(load) = loads.get(instance) {
            return load.clone();
        }
        loads.entry(instance.clone()).or_default().clone()
    }
}

/// Counts one open connection while it lives: against an instance's load, or among a
/// listener's connections.
struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    fn new(load: Arc<AtomicUsize>) -> LoadGuard {
        load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(load)
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's destination: a service or subset, and the local service that owns the
/// listener (for `[[upstream]]` entries that name one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub source_service: Option<String>,
}

/// Keeps tables and listeners current until the drain starts; publishes into `bound`
/// the virtual IPs whose every listener is bound. With `hold`, the first tables serve
/// inbound tunnels at once while listeners wait for `hold` (an upgrade's successor waits
/// for gossip to confirm its members, so that no connection meets stale tables).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    proxy: Arc<Proxy>,
    mut snapshots: SnapshotRx,
    mut vips: watch::Receiver<VipMap>,
    bound: watch::Sender<VipMap>,
    upstreams: Vec<(TcpListener, Destination)>,
    mut hold: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    drain: DrainWatcher,
) {
    let mut upstreams = Some(upstreams);
    let mut listening: HashMap<SocketAddr, (String, AbortHandle)> = HashMap::new();
    let mut failed_binds: HashMap<SocketAddr, String> = HashMap::new();
    let mut states: HashMap<String, MemberState> = HashMap::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let vip_map = vips.borrow_and_update().clone();
        let tables = Tables::build(&snap);
        let policies: authz::Policies =
            snap.policies().iter().map(|(service, p)| (service.clone(), Arc::new(p.spec.clone()))).collect();
        if **proxy.policies.load() != policies {
            proxy.policies.store(Arc::new(policies));
            proxy.policy_changes.send_modify(|n| *n += 1);
        }
        let wanted: BTreeMap<String, Vec<SocketAddr>> = tables
            .listeners()
            .into_iter()
            .filter_map(|(name, ports)| {
                let ip = *vip_map.get(&name)?;
                Some((name, ports.into_iter().map(|p| SocketAddr::from((ip, p))).collect()))
            })
            .collect();
        proxy.tables.store(Arc::new(tables));
        if let Some(hold) = hold.take() {
            tokio::select! {
                () = hold => {}
                _ = drain.signaled() => break,
            }
            // Tables from the snapshot as it is now, before any listener accepts.
            continue;
        }
        for (listener, dest) in upstreams.take().into_iter().flatten() {
            tokio::spawn(outbound::listen(proxy.clone(), listener, dest, drain.clone()));
        }

        // Close what is no longer wanted (open connections carry on), open what is new.
        let keep: HashMap<SocketAddr, &String> =
            wanted.iter().flat_map(|(name, addrs)| addrs.iter().map(move |a| (*a, name))).collect();
        listening.retain(|addr, (name, handle)| {
            let stay = keep.get(addr) == Some(&&*name);
            if !stay {
                handle.abort();
                proxy.listener_fds.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
                tracing::debug!(%addr, %name, "listener closed");
            }
            stay
        });
        for (addr, name) in &keep {
            if listening.contains_key(addr) {
                continue;
            }
            match proxy.listen_on(*addr).await {
                Ok(listener) => {
                    failed_binds.remove(addr);
                    let dest = Destination { name: (*name).clone(), source_service: proxy.source.clone() };
                    let task = tokio::spawn(outbound::listen(proxy.clone(), listener, dest, drain.clone()));
                    listening.insert(*addr, ((*name).clone(), task.abort_handle()));
                }
                Err(e) => {
                    if failed_binds.insert(*addr, e.to_string()).is_none() {
                        tracing::warn!(%addr, service = %name, error = %e, "cannot listen on a virtual IP");
                    }
                }
            }
        }
        let ready: BTreeMap<String, Ipv4Addr> = wanted
            .iter()
            .filter(|(_, addrs)| addrs.iter().all(|a| listening.contains_key(a)))
            .filter_map(|(name, _)| Some((name.clone(), *vip_map.get(name)?)))
            .collect();
        proxy.inherited_taken();
        bound.send_if_modified(|current| {
            let changed = **current != ready;
            if changed {
                *current = Arc::new(ready);
            }
            changed
        });

        // A node declared dead: its streams end now, not at the idle timeout. (One that
        // left is draining: its tunnels finish; a removed one's connections close on
        // revocation.)
        for m in &snap.members {
            let before = states.insert(m.name.clone(), m.state);
            if m.state == MemberState::Dead && before.is_some_and(|b| b != m.state) {
                proxy.transport.close_peer(&m.name, "declared dead");
            }
        }

        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            changed = vips.changed() => if changed.is_err() { break },
            // Retry failed binds now and then (an address may have been freed).
            _ = tokio::time::sleep(Duration::from_secs(5)), if !failed_binds.is_empty() => {}
            _ = drain.signaled() => break,
        }
    }
    for (_, (_, handle)) in listening {
        handle.abort();
    }
}

/// `len` random hex digits (a W3C trace id is 32, a span id 16), never all zeros.
fn random_hex(proxy: &Proxy, len: usize) -> String {
    use rand::RngExt;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rng = proxy.rng.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let s: String = (0..len).map(|_| char::from(HEX[usize::from(rng.random::<u8>() & 15)])).collect();
        if s.bytes().any(|b| b != b'0') {
            return s;
        }
    }
}

/// A random W3C trace id, for a TCP connection's log line and tunnel header.
fn trace_id(proxy: &Proxy) -> String {
    random_hex(proxy, 32)
}
