//! Traffic summaries: what one node saw as the caller's side of its calls over the last
//! half minute, asked for on view (the dashboard, `meshctl top`, the service-discovery
//! list) over `mesh/1` and merged by the node that asked. Nothing here is gossiped.
//!
//! Latency is kept as counts per fixed bucket ([`LATENCY_BOUNDS_MS`]) so that summaries
//! from several nodes merge exactly before a percentile is read from them.

use serde::{Deserialize, Serialize};

/// The upper bounds (ms) of the latency buckets every summary uses; one more bucket
/// counts what is above the last bound.
pub const LATENCY_BOUNDS_MS: [f64; 24] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0,
    2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// The most paths a summary lists per destination service.
pub const MAX_PATHS: usize = 20;
/// The most edges, and paths, taken from one node's summary (more is a member lying:
/// the rest is left out, so that merging stays cheap).
pub const MAX_EDGES: usize = 4096;

impl Summary {
    /// Cuts a summary from another node down to what an honest one can hold.
    pub fn bounded(mut self) -> Summary {
        self.edges.truncate(MAX_EDGES);
        self.paths.truncate(MAX_EDGES);
        for e in &mut self.edges {
            e.latency.truncate(LATENCY_BOUNDS_MS.len() + 1);
        }
        if !self.window_secs.is_finite() || self.window_secs < 0.0 {
            self.window_secs = 0.0;
        }
        self.window_secs = self.window_secs.min(3600.0);
        self
    }
}

/// One node's summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub node: String,
    /// The node's `admin.http` address, when it set one (service discovery lists it).
    pub admin_http: Option<String>,
    /// The seconds the counts cover (less than the window just after a start).
    pub window_secs: f64,
    pub edges: Vec<Edge>,
    pub paths: Vec<PathStats>,
}

/// Calls from one source to one service, as their callers' node saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// The calling service, or the node when the caller is not a mesh service.
    pub source: String,
    pub source_is_node: bool,
    pub destination: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// HTTP requests, or TCP connections.
    pub requests: u64,
    /// 5xx answers and requests that got no answer; TCP connections that failed.
    pub errors: u64,
    /// Counts per bucket of [`LATENCY_BOUNDS_MS`], plus one above the last bound.
    pub latency: Vec<u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Tries beyond the first (HTTP).
    #[serde(default)]
    pub retries: u64,
}

/// One path of a destination service (HTTP only), for "top paths by error rate".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathStats {
    pub service: String,
    /// The method and path, query left off; `(other)` for paths beyond the bound.
    pub path: String,
    pub requests: u64,
    pub errors: u64,
}

impl Edge {
    /// Whether `other` is the same edge (to merge).
    pub fn same(&self, other: &Edge) -> bool {
        self.source == other.source
            && self.source_is_node == other.source_is_node
            && self.destination == other.destination
            && self.protocol == other.protocol
    }

    /// Adds `other`'s counts into this edge.
    pub fn absorb(&mut self, other: &Edge) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.bytes_sent = self.bytes_sent.saturating_add(other.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(other.bytes_received);
        self.retries = self.retries.saturating_add(other.retries);
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a = a.saturating_add(*b);
        }
    }

    /// The latency below which `q` (0 to 1) of the calls fell, in ms: the upper bound of
    /// the bucket that holds that rank (so an estimate, never an understatement).
    /// `None` without calls.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.latency.iter().fold(0u64, |a, n| a.saturating_add(*n));
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen: u64 = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }

    /// The share of calls that did not fail, 0 to 1; `None` without calls.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - (self.errors.min(self.requests) as f64 / self.requests as f64))
    }
}

/// The bucket of [`LATENCY_BOUNDS_MS`] that `ms` falls in.
pub fn latency_bucket(ms: f64) -> usize {
    LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The whole mesh's traffic, merged from every node that answered: what `/v1/traffic`
/// and the dashboard's graph serve, and `meshctl top` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshTraffic {
    /// The nodes whose summaries are in, and those asked that did not answer.
    pub answered: Vec<String>,
    pub missing: Vec<String>,
    pub window_secs: f64,
    pub edges: Vec<EdgeView>,
}

/// An edge as the dashboard and `meshctl top` show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    pub source: String,
    pub source_is_node: bool,
    pub destination: String,
    pub protocol: String,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    /// 0 to 1, or null without calls.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Tries beyond the first (HTTP): retries at work hide failures from the caller.
    pub retries: u64,
    /// Whether a node that hosts the destination is down (dead or suspect) and the edge
    /// still has calls: the dashboard draws it red.
    pub destination_down: bool,
}

impl MeshTraffic {
    /// Merges node summaries (edges reported by several nodes add up).
    pub fn merge(summaries: &[Summary], missing: Vec<String>) -> MeshTraffic {
        let mut merged: Vec<Edge> = Vec::new();
        let mut at: std::collections::HashMap<(&str, bool, &str, &str), usize> = std::collections::HashMap::new();
        for s in summaries {
            for e in &s.edges {
                let key = (e.source.as_str(), e.source_is_node, e.destination.as_str(), e.protocol.as_str());
                match at.get(&key) {
                    Some(&i) => merged[i].absorb(e),
                    None => {
                        at.insert(key, merged.len());
                        merged.push(e.clone());
                    }
                }
            }
        }
        let window = summaries.iter().map(|s| s.window_secs).fold(0.0, f64::max).max(1.0);
        let mut edges: Vec<EdgeView> = merged
            .iter()
            .map(|e| EdgeView {
                source: e.source.clone(),
                source_is_node: e.source_is_node,
                destination: e.destination.clone(),
                protocol: e.protocol.clone(),
                requests: e.requests,
                errors: e.errors,
                rps: e.requests as f64 / window,
                success_rate: e.success_rate(),
                p50_ms: e.quantile_ms(0.5),
                p99_ms: e.quantile_ms(0.99),
                bytes_sent: e.bytes_sent,
                bytes_received: e.bytes_received,
                retries: e.retries,
                destination_down: false,
            })
            .collect();
        edges.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
        let mut answered: Vec<String> = summaries.iter().map(|s| s.node.clone()).collect();
        answered.sort();
        MeshTraffic { answered, missing, window_secs: window, edges }
    }
}

/// Paths of `service` across summaries, worst error rate first (then most requests).
pub fn top_paths(summaries: &[Summary], service: &str) -> Vec<PathStats> {
    let mut paths: Vec<PathStats> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for p in summaries.iter().flat_map(|s| &s.paths).filter(|p| p.service == service) {
        match at.get(p.path.as_str()) {
            Some(&i) => {
                paths[i].requests = paths[i].requests.saturating_add(p.requests);
                paths[i].errors = paths[i].errors.saturating_add(p.errors);
            }
            None => {
                at.insert(&p.path, paths.len());
                paths.push(p.clone());
            }
        }
    }
    let rate = |p: &PathStats| if p.requests == 0 { 0.0 } else { p.errors as f64 / p.requests as f64 };
    paths.sort_by(|a, b| rate(b).total_cmp(&rate(a)).then(b.requests.cmp(&a.requests)).then(a.path.cmp(&b.path)));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(source: &str, requests: u64, errors: u64, latency_ms: &[f64]) -> Edge {
        let mut latency = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        for ms in latency_ms {
            latency[latency_bucket(*ms)] += 1;
        }
        Edge {
            source: source.into(),
            destination: "reviews".into(),
            protocol: "http".into(),
            requests,
            errors,
            latency,
            ..Edge::default()
        }
    }

    #[test]
    fn quantiles_come_from_the_merged_buckets() {
        let fast: Vec<f64> = vec![0.5; 98];
        let a = Summary {
            node: "n1".into(),
            window_secs: 10.0,
            edges: vec![edge("pp", 98, 0, &fast)],
            ..Default::default()
        };
        let b = Summary {
            node: "n2".into(),
            window_secs: 10.0,
            edges: vec![edge("pp", 2, 2, &[120.0, 130.0])],
            ..Default::default()
        };
        let merged = MeshTraffic::merge(&[a, b], vec![]);
        assert_eq!(merged.edges.len(), 1);
        let e = &merged.edges[0];
        assert_eq!((e.requests, e.errors), (100, 2));
        assert_eq!(e.rps, 10.0);
        assert_eq!(e.success_rate, Some(0.98));
        assert_eq!(e.p50_ms, Some(1.0));
        // The 99th of 100 calls is one of the slow two: in the (100, 150] bucket.
        assert_eq!(e.p99_ms, Some(150.0));
    }

    #[test]
    fn a_latency_above_every_bound_is_counted_as_unbounded() {
        let e = edge("pp", 1, 0, &[120_000.0]);
        assert_eq!(e.quantile_ms(0.5), Some(f64::INFINITY));
        assert_eq!(edge("pp", 0, 0, &[]).quantile_ms(0.5), None);
    }

    #[test]
    fn a_lying_summary_is_cut_down_and_adds_up_without_overflow() {
        let mut e = edge("pp", u64::MAX, u64::MAX, &[1.0]);
        e.latency = vec![u64::MAX; 1000];
        let liar =
            Summary { node: "x".into(), window_secs: f64::NAN, edges: vec![e; MAX_EDGES + 10], ..Default::default() }
                .bounded();
        assert_eq!(liar.edges.len(), MAX_EDGES);
        assert_eq!(liar.edges[0].latency.len(), LATENCY_BOUNDS_MS.len() + 1);
        assert_eq!(liar.window_secs, 0.0);
        let merged = MeshTraffic::merge(&[liar.clone(), liar], vec![]);
        assert_eq!(merged.edges.len(), 1);
        assert_eq!(merged.edges[0].requests, u64::MAX);
        assert_eq!(merged.edges[0].success_rate, Some(0.0));
    }

    #[test]
    fn top_paths_rank_by_error_rate_then_volume() {
        let p =
            |path: &str, requests, errors| PathStats { service: "reviews".into(), path: path.into(), requests, errors };
        let s =
            Summary { paths: vec![p("GET /a", 100, 1), p("GET /b", 10, 5), p("GET /c", 50, 0)], ..Default::default() };
        let t = Summary { paths: vec![p("GET /a", 100, 98)], ..Default::default() };
        let top = top_paths(&[s, t], "reviews");
        let order: Vec<&str> = top.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(order, ["GET /b", "GET /a", "GET /c"]);
        assert_eq!((top[1].requests, top[1].errors), (200, 99));
    }
}
