//! The record of one call, as the proxy hands it over at the call's end, and the
//! counters of what telemetry itself dropped. Every sink (`traffic`, `access`, `otlp`)
//! reads these; none of them reads another sink.
//!
//! Must not: hold behaviour beyond naming what a record says.

use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::trace::TraceContext;

/// Which side of a call reports it (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's node (outbound).
    Source,
    /// The node that hosts the instance (inbound).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Who called whom.
#[derive(Debug, Clone, Default)]
pub struct Parties {
    /// The calling service, when the caller's node vouches for one.
    pub source_service: Option<String>,
    pub source_node: String,
    pub destination_service: String,
    /// The node that hosts the instance reached, once one was.
    pub destination_node: Option<String>,
    /// That instance's `version` label.
    pub destination_version: Option<String>,
}

impl Parties {
    /// The calling service, else its node's name.
    pub fn source_name(&self) -> &str {
        self.source_service.as_deref().unwrap_or(&self.source_node)
    }
}

/// At most `max` bytes of `s`, cut at a character boundary: what the records keep of a
/// path or a header (both ASCII in practice, so this is a plain slice, not a walk over
/// characters).
pub fn clipped(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// One HTTP request, at its end.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub reporter: Reporter,
    pub parties: Parties,
    /// `http` or `http2` (how the application spoke).
    pub protocol: &'static str,
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub code: u16,
    /// Envoy's response flags: `-`, or `UH` (no healthy instance), `UF` (connect failed),
    /// `UT` (timed out), `URX` (retries exhausted), `UC` (upstream reset), `DC` (the
    /// client went away), `FI` (fault injected), `RBAC` (denied by policy), `RL` (rate
    /// limited).
    pub flags: &'static str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub start: SystemTime,
    pub duration: Duration,
    pub trace: TraceContext,
    pub subset: Option<String>,
    /// The route and the index of its rule that matched.
    pub route_rule: Option<(String, usize)>,
    pub retries: u32,
    /// The instance reached (`addr:port`).
    pub upstream_host: Option<String>,
}

/// One TCP connection, at its end. `sent` and `received` are Istio's: seen from the
/// server, `sent` went to the client and `received` came from it.
#[derive(Debug, Clone)]
pub struct TcpCall {
    pub reporter: Reporter,
    pub parties: Parties,
    pub flags: &'static str,
    pub sent: u64,
    pub received: u64,
    pub start: SystemTime,
    pub duration: Duration,
    pub trace_id: String,
    pub upstream_host: Option<String>,
}

/// Meshd's own telemetry counters, under `mesh_telemetry_`.
#[derive(Clone, Default)]
pub struct Metrics {
    pub(super) dropped: Family<DropLabels, Counter>,
    pub(super) exported_spans: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DropLabels {
    /// `access_log` or `spans`.
    pub(super) what: &'static str,
    /// `queue_full`, `write_failed`, `export_failed`.
    pub(super) reason: &'static str,
}

impl Metrics {
    pub(super) fn dropped(&self, what: &'static str, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&DropLabels { what, reason }).inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::clipped;

    #[test]
    fn clipped_keeps_at_most_max_bytes_and_never_splits_a_character() {
        assert_eq!(clipped("/reviews/1", 1024), "/reviews/1");
        assert_eq!(clipped("/reviews/1", 4), "/rev");
        // "é" is two bytes: a cut through it steps back to before it.
        assert_eq!(clipped("abé", 3), "ab");
        assert_eq!(clipped("abé", 4), "abé");
        assert_eq!(clipped("", 0), "");
    }
}
