//! What the proxy reports about each call, and where it goes: Istio's standard traffic
//! metrics (`istio_*`, both reporters), the half-minute window that the dashboard and
//! `meshctl top` read, the JSON access log and the trace spans. The proxy hands over one
//! record per HTTP request or TCP connection at its end; nothing here awaits, and the
//! log and span queues drop (and count) rather than wait.
//!
//! Must not: block or await on the data path, or put unbounded values (a Host header, a
//! path) in a metric label.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_proto::traffic::{self as summary, Edge, PathStats, Summary};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::access::AccessLog;
use super::otlp::{SpanRecord, Spans};
pub use super::record::{HttpCall, Metrics, Parties, Reporter, TcpCall};

/// Istio's standard label set. Workloads are services (a VM's instance of `reviews` is a
/// `reviews` workload), a caller that is not a service is its node, namespaces and
/// clusters are the trust domain, principals are the nodes' SPIFFE IDs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IstioLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: &'static str,
    source_canonical_service: String,
    source_canonical_revision: &'static str,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_cluster: String,
    request_protocol: &'static str,
    response_code: u16,
    grpc_response_status: &'static str,
    response_flags: &'static str,
    connection_security_policy: &'static str,
}

/// The exemplar on the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabel {
    trace_id: String,
}

/// Latency buckets (ms): 1 ms steps to 5 ms, 5 ms steps to 50 ms, then coarser.
const DURATION_BUCKETS_MS: [f64; 29] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0,
    300.0, 400.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

fn size_buckets() -> impl Iterator<Item = f64> {
    [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9].into_iter()
}

type DurationHistogram = HistogramWithExemplars<TraceLabel>;

/// The `istio_*` families, registered at the registry's root.
#[derive(Clone)]
struct IstioMetrics {
    requests: Family<IstioLabels, Counter>,
    duration: Family<IstioLabels, DurationHistogram, fn() -> DurationHistogram>,
    request_bytes: Family<IstioLabels, Histogram, fn() -> Histogram>,
    response_bytes: Family<IstioLabels, Histogram, fn() -> Histogram>,
    tcp_sent: Family<IstioLabels, Counter>,
    tcp_received: Family<IstioLabels, Counter>,
    tcp_opened: Family<IstioLabels, Counter>,
    tcp_closed: Family<IstioLabels, Counter>,
}

/// What a record's sinks need to know about this node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub trust_domain: String,
    pub dns_domain: String,
    pub admin_http: Option<String>,
    /// Percent of requests traced when no caller decided, 0 to 100.
    pub sample_percent: f64,
}

/// The recorder the proxy reports to; one per node.
pub struct Telemetry {
    settings: Settings,
    istio: IstioMetrics,
    metrics: Metrics,
    window: Mutex<Window>,
    access: Option<AccessLog>,
    spans: Option<Spans>,
    /// The HTTP series each label set was given, found again without building its 25
    /// labels (a request's record costs a hash of a few short strings).
    http_series: Mutex<HashMap<u64, Vec<(SeriesKey, HttpSeries)>>>,
}

/// What distinguishes one HTTP label set from another (the rest follows from it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeriesKey {
    reporter: Reporter,
    source_service: Option<String>,
    source_node: String,
    destination_service: String,
    destination_node: Option<String>,
    destination_version: Option<String>,
    protocol: &'static str,
    code: u16,
    flags: &'static str,
}

impl SeriesKey {
    fn hash_of(call: &HttpCall) -> u64 {
        let p = &call.parties;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (call.reporter.as_str(), &p.source_service, &p.source_node, &p.destination_service).hash(&mut h);
        (&p.destination_node, &p.destination_version, call.protocol, call.code, call.flags).hash(&mut h);
        h.finish()
    }

    fn is(&self, call: &HttpCall) -> bool {
        let p = &call.parties;
        self.reporter == call.reporter
            && self.code == call.code
            && self.flags == call.flags
            && self.protocol == call.protocol
            && self.source_node == p.source_node
            && self.destination_service == p.destination_service
            && self.source_service == p.source_service
            && self.destination_node == p.destination_node
            && self.destination_version == p.destination_version
    }

    fn of(call: &HttpCall) -> SeriesKey {
        let p = &call.parties;
        SeriesKey {
            reporter: call.reporter,
            source_service: p.source_service.clone(),
            source_node: p.source_node.clone(),
            destination_service: p.destination_service.clone(),
            destination_node: p.destination_node.clone(),
            destination_version: p.destination_version.clone(),
            protocol: call.protocol,
            code: call.code,
            flags: call.flags,
        }
    }
}

/// One HTTP label set's four series (handles: they share the registry's counts).
#[derive(Clone)]
struct HttpSeries {
    requests: Counter,
    duration: DurationHistogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Telemetry {
    /// Registers the `istio_*` families at `root` and meshd's own under `mesh_telemetry_`
    /// in `mesh`, the registry the other modules use.
    pub fn register(root: &mut Registry, settings: Settings) -> (Telemetry, Metrics) {
        let istio = IstioMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| HistogramWithExemplars::new(DURATION_BUCKETS_MS.into_iter())),
            request_bytes: Family::new_with_constructor(|| Histogram::new(size_buckets())),
            response_bytes: Family::new_with_constructor(|| Histogram::new(size_buckets())),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
        };
        let r = root.sub_registry_with_prefix("istio");
        r.register("requests", "HTTP requests, by reporter, source, destination and response", istio.requests.clone());
        r.register(
            "request_duration_milliseconds",
            "HTTP request duration in ms, to the response's last byte",
            istio.duration.clone(),
        );
        r.register("request_bytes", "HTTP request body sizes", istio.request_bytes.clone());
        r.register("response_bytes", "HTTP response body sizes", istio.response_bytes.clone());
        r.register("tcp_sent_bytes", "TCP bytes the server sent to the client", istio.tcp_sent.clone());
        r.register("tcp_received_bytes", "TCP bytes the server received from the client", istio.tcp_received.clone());
        r.register("tcp_connections_opened", "TCP connections opened", istio.tcp_opened.clone());
        r.register("tcp_connections_closed", "TCP connections closed", istio.tcp_closed.clone());
        let metrics = Metrics::default();
        let telemetry = Telemetry {
            settings,
            istio,
            metrics: metrics.clone(),
            window: Mutex::new(Window::new(Instant::now())),
            access: None,
            spans: None,
            http_series: Mutex::default(),
        };
        (telemetry, metrics)
    }

    /// Registers the `mesh_telemetry_*` counters.
    pub fn register_own(metrics: &Metrics, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("telemetry");
        r.register(
            "dropped",
            "Access log lines and trace spans dropped, by what and why (a full queue: the data path never waits)",
            metrics.dropped.clone(),
        );
        r.register("exported_spans", "Trace spans the OTLP collector accepted", metrics.exported_spans.clone());
    }

    pub fn with_access_log(mut self, access: AccessLog) -> Telemetry {
        self.access = Some(access);
        self
    }

    pub fn with_spans(mut self, spans: Spans) -> Telemetry {
        self.spans = Some(spans);
        self
    }

    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// Whether a new trace (no caller decided) is sampled: `sample_percent` of them.
    pub fn sample(&self, roll: f64) -> bool {
        self.spans.is_some() && roll * 100.0 < self.settings.sample_percent
    }

    fn labels(
        &self,
        reporter: Reporter,
        p: &Parties,
        protocol: &'static str,
        code: u16,
        flags: &'static str,
    ) -> IstioLabels {
        let td = &self.settings.trust_domain;
        let principal =
            |node: Option<&str>| node.map_or_else(|| "unknown".to_owned(), |n| format!("spiffe://{td}/node/{n}"));
        let source = p.source_name().to_owned();
        let version = p.destination_version.clone().unwrap_or_else(|| "unknown".to_owned());
        IstioLabels {
            reporter: reporter.as_str(),
            source_workload: source.clone(),
            source_workload_namespace: td.clone(),
            source_principal: principal(Some(&p.source_node)),
            source_app: source.clone(),
            source_version: "unknown",
            source_canonical_service: source,
            source_canonical_revision: "latest",
            source_cluster: td.clone(),
            destination_workload: p.destination_service.clone(),
            destination_workload_namespace: td.clone(),
            destination_principal: principal(p.destination_node.as_deref()),
            destination_app: p.destination_service.clone(),
            destination_version: version.clone(),
            destination_service: format!("{}.{}", p.destination_service, self.settings.dns_domain),
            destination_service_name: p.destination_service.clone(),
            destination_service_namespace: td.clone(),
            destination_canonical_service: p.destination_service.clone(),
            destination_canonical_revision: if version == "unknown" { "latest".to_owned() } else { version },
            destination_cluster: td.clone(),
            request_protocol: protocol,
            response_code: code,
            grpc_response_status: "",
            response_flags: flags,
            connection_security_policy: "mutual_tls",
        }
    }

    /// Records an HTTP request at its end.
    pub fn http(&self, call: HttpCall) {
        let series = self.http_series_of(&call);
        let ms = call.duration.as_secs_f64() * 1000.0;
        series.requests.inc();
        series.duration.observe(ms, Some(TraceLabel { trace_id: call.trace.trace_id.clone() }), None);
        series.request_bytes.observe(call.request_bytes as f64);
        series.response_bytes.observe(call.response_bytes as f64);
        if call.reporter == Reporter::Source {
            let failed = call.code >= 500 || call.code == 0;
            let path = format!("{} {}", call.method, call.path);
            self.window.lock().unwrap_or_else(|p| p.into_inner()).add(
                Instant::now(),
                EdgeKey { parties: &call.parties, protocol: "http" },
                Outcome { failed, ms, bytes: (call.request_bytes, call.response_bytes), retries: call.retries },
                Some(&path),
            );
        }
        if let Some(access) = &self.access {
            access.http(&call, &self.metrics);
        }
        if let (Some(spans), true) = (&self.spans, call.trace.sampled) {
            spans.offer(SpanRecord::of(&call), &self.metrics);
        }
    }

    /// The series of `call`'s label set, made the first time it is seen.
    fn http_series_of(&self, call: &HttpCall) -> HttpSeries {
        let hash = SeriesKey::hash_of(call);
        let mut cache = self.http_series.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = cache.entry(hash).or_default();
        if let Some((_, series)) = bucket.iter().find(|(k, _)| k.is(call)) {
            return series.clone();
        }
        let labels = self.labels(call.reporter, &call.parties, call.protocol, call.code, call.flags);
        let series = HttpSeries {
            requests: self.istio.requests.get_or_create(&labels).clone(),
            duration: self.istio.duration.get_or_create(&labels).clone(),
            request_bytes: self.istio.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.istio.response_bytes.get_or_create(&labels).clone(),
        };
        bucket.push((SeriesKey::of(call), series.clone()));
        series
    }

    /// Records that a TCP connection opened.
    pub fn tcp_opened(&self, reporter: Reporter, parties: &Parties) {
        let labels = self.labels(reporter, parties, "tcp", 0, "-");
        self.istio.tcp_opened.get_or_create(&labels).inc();
    }

    /// Records a TCP connection at its end (opened or not: a connection that reached no
    /// instance is only closed, with its flags).
    pub fn tcp(&self, call: TcpCall) {
        let labels = self.labels(call.reporter, &call.parties, "tcp", 0, call.flags);
        self.istio.tcp_closed.get_or_create(&labels).inc();
        // Both series exist once a connection closed, zero or not (as Istio's do).
        self.istio.tcp_sent.get_or_create(&labels).inc_by(call.sent);
        self.istio.tcp_received.get_or_create(&labels).inc_by(call.received);
        if call.reporter == Reporter::Source {
            self.window.lock().unwrap_or_else(|p| p.into_inner()).add(
                Instant::now(),
                EdgeKey { parties: &call.parties, protocol: "tcp" },
                Outcome {
                    failed: call.flags != "-",
                    ms: call.duration.as_secs_f64() * 1000.0,
                    bytes: (call.received, call.sent),
                    retries: 0,
                },
                None,
            );
        }
        if let Some(access) = &self.access {
            access.tcp(&call, &self.metrics);
        }
    }

    /// This node's summary of the last half minute.
    pub fn summary(&self) -> Summary {
        let mut s = self.window.lock().unwrap_or_else(|p| p.into_inner()).summary(Instant::now());
        s.node = self.settings.node.clone();
        s.admin_http = self.settings.admin_http.clone();
        s
    }
}

/// Slots of the window, and how many are kept.
const SLOT: Duration = Duration::from_secs(5);
const SLOTS: u64 = 6;
/// Paths tracked per slot; beyond it, a path is counted as `(other)`.
const MAX_TRACKED_PATHS: usize = 256;

/// How one call went, for the window.
struct Outcome {
    failed: bool,
    ms: f64,
    /// Bytes the caller sent, and received.
    bytes: (u64, u64),
    retries: u32,
}

struct EdgeKey<'a> {
    parties: &'a Parties,
    protocol: &'static str,
}

impl EdgeKey<'_> {
    fn hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.parties.source_name(),
            self.parties.source_service.is_none(),
            &self.parties.destination_service,
            self.protocol,
        )
            .hash(&mut h);
        h.finish()
    }

    fn is(&self, e: &Edge) -> bool {
        e.source == self.parties.source_name()
            && e.source_is_node == self.parties.source_service.is_none()
            && e.destination == self.parties.destination_service
            && e.protocol == self.protocol
    }
}

#[derive(Default)]
struct Slot {
    index: u64,
    edges: HashMap<u64, Vec<Edge>>,
    paths: HashMap<(String, String), PathStats>,
}

/// The last [`SLOTS`] slots of [`SLOT`] each.
struct Window {
    started: Instant,
    slots: std::collections::VecDeque<Slot>,
}

impl Window {
    fn new(started: Instant) -> Window {
        Window { started, slots: std::collections::VecDeque::new() }
    }

    fn slot_of(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.started).as_millis() / SLOT.as_millis()) as u64
    }

    fn add(&mut self, now: Instant, key: EdgeKey<'_>, outcome: Outcome, path: Option<&str>) {
        let Outcome { failed, ms, bytes: (sent, received), retries } = outcome;
        let index = self.slot_of(now);
        if self.slots.back().is_none_or(|s| s.index != index) {
            self.slots.push_back(Slot { index, ..Slot::default() });
            while self.slots.front().is_some_and(|s| s.index + SLOTS <= index) {
                self.slots.pop_front();
            }
        }
        let Some(slot) = self.slots.back_mut() else { return };
        let bucket = slot.edges.entry(key.hash()).or_default();
        let edge = match bucket.iter().position(|e| key.is(e)) {
            Some(i) => &mut bucket[i],
            None => {
                bucket.push(Edge {
                    source: key.parties.source_name().to_owned(),
                    source_is_node: key.parties.source_service.is_none(),
                    destination: key.parties.destination_service.clone(),
                    protocol: key.protocol.to_owned(),
                    latency: vec![0; summary::LATENCY_BOUNDS_MS.len() + 1],
                    ..Edge::default()
                });
                let last = bucket.len() - 1;
                &mut bucket[last]
            }
        };
        edge.requests += 1;
        edge.errors += u64::from(failed);
        edge.bytes_sent += sent;
        edge.bytes_received += received;
        edge.retries += u64::from(retries);
        edge.latency[summary::latency_bucket(ms)] += 1;
        if let Some(path) = path {
            let service = &key.parties.destination_service;
            let tracked = slot.paths.len() < MAX_TRACKED_PATHS;
            let path = if tracked || slot.paths.contains_key(&(service.clone(), path.to_owned())) {
                path.to_owned()
            } else {
                "(other)".to_owned()
            };
            let stats = slot.paths.entry((service.clone(), path.clone())).or_insert_with(|| PathStats {
                service: service.clone(),
                path,
                requests: 0,
                errors: 0,
            });
            stats.requests += 1;
            stats.errors += u64::from(failed);
        }
    }

    fn summary(&self, now: Instant) -> Summary {
        let index = self.slot_of(now);
        let first = (index + 1).saturating_sub(SLOTS);
        let mut edges: Vec<Edge> = Vec::new();
        let mut paths: Vec<PathStats> = Vec::new();
        for slot in self.slots.iter().filter(|s| s.index >= first) {
            for e in slot.edges.values().flatten() {
                match edges.iter_mut().find(|m| m.same(e)) {
                    Some(m) => m.absorb(e),
                    None => edges.push(e.clone()),
                }
            }
            for p in slot.paths.values() {
                match paths.iter_mut().find(|m| m.service == p.service && m.path == p.path) {
                    Some(m) => {
                        m.requests += p.requests;
                        m.errors += p.errors;
                    }
                    None => paths.push(p.clone()),
                }
            }
        }
        // The worst paths of each service, within the bound.
        let mut kept: Vec<PathStats> = Vec::new();
        let mut services: Vec<String> = paths.iter().map(|p| p.service.clone()).collect();
        services.sort();
        services.dedup();
        for service in services {
            let one = Summary {
                paths: paths.iter().filter(|p| p.service == service).cloned().collect(),
                ..Summary::default()
            };
            kept.extend(summary::top_paths(&[one], &service).into_iter().take(summary::MAX_PATHS));
        }
        let since_start = now.saturating_duration_since(self.started);
        let window_start = SLOT * u32::try_from(first).unwrap_or(u32::MAX);
        let covered = since_start.saturating_sub(window_start).as_secs_f64().max(1.0);
        Summary { node: String::new(), admin_http: None, window_secs: covered, edges, paths: kept }
    }
}

/// A stand-in for tests of the window: parties of a call.
#[cfg(test)]
fn parties(source: Option<&str>, node: &str, destination: &str) -> Parties {
    Parties {
        source_service: source.map(str::to_owned),
        source_node: node.to_owned(),
        destination_service: destination.to_owned(),
        destination_node: None,
        destination_version: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: f64) -> Outcome {
        Outcome { failed: false, ms, bytes: (0, 0), retries: 0 }
    }

    #[test]
    fn the_window_keeps_half_a_minute_and_merges_slots() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let pp = parties(Some("productpage"), "n1", "reviews");
        let client = parties(None, "n1", "productpage");
        for i in 0..10 {
            let outcome = Outcome { failed: i % 5 == 0, ms: 3.0, bytes: (10, 20), retries: 1 };
            w.add(t0 + Duration::from_secs(i), EdgeKey { parties: &pp, protocol: "http" }, outcome, Some("GET /r"));
        }
        w.add(t0, EdgeKey { parties: &client, protocol: "http" }, ok(1.0), Some("GET /"));
        let s = w.summary(t0 + Duration::from_secs(10));
        let e = s.edges.iter().find(|e| e.source == "productpage").expect("edge");
        assert_eq!((e.requests, e.errors, e.bytes_sent, e.bytes_received, e.retries), (10, 2, 100, 200, 10));
        assert!(!e.source_is_node);
        assert!(s.edges.iter().any(|e| e.source == "n1" && e.source_is_node && e.destination == "productpage"));
        assert_eq!(s.paths.iter().find(|p| p.path == "GET /r").map(|p| (p.requests, p.errors)), Some((10, 2)));
        // 40 s later the first slots are gone; only calls of the last 30 s count.
        w.add(t0 + Duration::from_secs(50), EdgeKey { parties: &pp, protocol: "http" }, ok(3.0), None);
        let s = w.summary(t0 + Duration::from_secs(50));
        assert_eq!(s.edges.iter().map(|e| e.requests).sum::<u64>(), 1);
        assert!(s.window_secs >= 25.0 && s.window_secs <= 30.0, "{}", s.window_secs);
    }

    fn call(code: u16, version: &str) -> HttpCall {
        let mut parties = parties(Some("productpage"), "n1", "reviews");
        parties.destination_node = Some("n2".into());
        parties.destination_version = Some(version.into());
        HttpCall {
            reporter: Reporter::Source,
            parties,
            protocol: "http",
            method: "GET".into(),
            path: "/".into(),
            authority: None,
            user_agent: None,
            request_id: None,
            code,
            flags: "-",
            request_bytes: 3,
            response_bytes: 5,
            start: std::time::SystemTime::now(),
            duration: Duration::from_millis(2),
            trace: super::super::trace::TraceContext { trace_id: "ab".repeat(16), ..Default::default() },
            subset: None,
            route_rule: None,
            retries: 0,
            upstream_host: None,
        }
    }

    #[test]
    fn calls_with_one_label_set_count_in_one_series_and_others_in_their_own() {
        let mut root = Registry::default();
        let settings = Settings {
            node: "n1".into(),
            trust_domain: "mesh.local".into(),
            dns_domain: "mesh".into(),
            admin_http: None,
            sample_percent: 0.0,
        };
        let (t, _) = Telemetry::register(&mut root, settings);
        for c in [call(200, "v1"), call(200, "v1"), call(503, "v1"), call(200, "v2")] {
            t.http(c);
        }
        let text = crate::metrics::encode(&root).expect("encode");
        let count = |code: &str, version: &str| {
            text.lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter(|l| {
                    l.contains(&format!("response_code=\"{code}\""))
                        && l.contains(&format!("destination_version=\"{version}\""))
                })
                .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
                .collect::<Vec<_>>()
        };
        assert_eq!(count("200", "v1"), [2]);
        assert_eq!(count("503", "v1"), [1]);
        assert_eq!(count("200", "v2"), [1]);
        assert!(
            text.contains("istio_request_bytes_sum{")
                && text.contains("destination_principal=\"spiffe://mesh.local/node/n2\"")
        );
        assert_eq!(t.http_series.lock().expect("lock").values().map(Vec::len).sum::<usize>(), 3);
    }

    #[test]
    fn paths_beyond_the_bound_are_counted_as_other() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let pp = parties(Some("productpage"), "n1", "reviews");
        for i in 0..(MAX_TRACKED_PATHS + 10) {
            let path = format!("GET /item/{i}");
            w.add(t0, EdgeKey { parties: &pp, protocol: "http" }, ok(1.0), Some(&path));
        }
        let slot = w.slots.back().expect("a slot");
        assert_eq!(slot.paths.len(), MAX_TRACKED_PATHS + 1);
        assert_eq!(slot.paths.get(&("reviews".to_owned(), "(other)".to_owned())).map(|p| p.requests), Some(10));
        assert!(w.summary(t0).paths.len() <= summary::MAX_PATHS);
    }
}
