//! Trace spans over OTLP/HTTP (protobuf, `POST /v1/traces`), exported by a task of its
//! own: the data path offers a span to a bounded queue and never waits; the exporter
//! sends batches of up to [`BATCH`] spans at least every [`FLUSH`], one request at a time
//! with a [`TIMEOUT`]. A full queue or a failed export drops spans, counted in
//! `mesh_telemetry_dropped_total{what="spans"}`. Plain `http://` only (a collector on
//! the host or next to it); no gRPC.
//!
//! The messages below are the subset of `opentelemetry/proto/trace/v1` and
//! `collector/trace/v1` that meshd sends, with the upstream field numbers.
//!
//! Must not: block or slow the data path, or retry without bound.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::record::{HttpCall, Metrics, Reporter};

/// Spans queued for export at most.
const QUEUE: usize = 4096;
/// Spans per export request at most.
const BATCH: usize = 512;
/// A partial batch waits this long at most.
const FLUSH: Duration = Duration::from_secs(1);
/// One export request's deadline (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A finished span, as the proxy reported it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The span's service (`service.name` of its resource): the caller's side reports
    /// for the calling service (or its node), the instance's side for the destination.
    pub service_name: String,
    pub name: String,
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// OTLP's span kinds.
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;

impl SpanRecord {
    pub(super) fn of(c: &HttpCall) -> SpanRecord {
        let p = &c.parties;
        let (service_name, kind) = match c.reporter {
            Reporter::Source => (p.source_name().to_owned(), KIND_CLIENT),
            Reporter::Destination => (p.destination_service.clone(), KIND_SERVER),
        };
        let peer = match c.reporter {
            Reporter::Source => p.destination_node.clone(),
            Reporter::Destination => Some(p.source_node.clone()),
        };
        let mut attributes = vec![
            ("mesh.reporter", Value::Str(c.reporter.as_str().to_owned())),
            ("mesh.service", Value::Str(p.destination_service.clone())),
            ("mesh.source", Value::Str(p.source_name().to_owned())),
            ("http.request.method", Value::Str(c.method.clone())),
            ("url.path", Value::Str(c.path.clone())),
            ("http.response.status_code", Value::Int(i64::from(c.code))),
            ("mesh.response_flags", Value::Str(c.flags.to_owned())),
            ("mesh.retries", Value::Int(i64::from(c.retries))),
        ];
        if let Some(subset) = &c.subset {
            attributes.push(("mesh.subset", Value::Str(subset.clone())));
        }
        if let Some((route, rule)) = &c.route_rule {
            attributes.push(("mesh.route_rule", Value::Str(format!("{route}[{rule}]"))));
        }
        if let Some(peer) = peer {
            attributes.push(("mesh.peer_node", Value::Str(peer)));
        }
        if let Some(host) = &c.upstream_host {
            attributes.push(("server.address", Value::Str(host.clone())));
        }
        SpanRecord {
            service_name,
            name: format!("{} {}", c.method, p.destination_service),
            kind,
            trace_id: c.trace.trace_id.clone(),
            span_id: c.trace.span_id.clone(),
            parent_span_id: c.trace.parent_span_id.clone(),
            start: c.start,
            end: c.start + c.duration,
            attributes,
            error: c.code >= 500 || c.code == 0,
        }
    }
}

/// The data path's end of the exporter.
#[derive(Clone)]
pub struct Spans {
    queue: mpsc::Sender<SpanRecord>,
}

impl Spans {
    /// The data path's end, and the exporter to run. `endpoint` is the collector's base
    /// URL (`http://127.0.0.1:4318`); spans go to its `/v1/traces`.
    pub fn new(
        endpoint: &str,
        node: &str,
        metrics: Metrics,
    ) -> Result<(Spans, impl std::future::Future<Output = ()>), String> {
        let url = traces_url(endpoint)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok((Spans { queue: tx }, export(url, node.to_owned(), rx, metrics)))
    }

    pub(super) fn offer(&self, span: SpanRecord, metrics: &Metrics) {
        if self.queue.try_send(span).is_err() {
            metrics.dropped("spans", "queue_full", 1);
        }
    }
}

/// The collector's `/v1/traces` as a URI, or why `endpoint` cannot be one.
pub fn traces_url(endpoint: &str) -> Result<hyper::Uri, String> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{endpoint:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "{endpoint:?}: use an http:// URL with a host and port (OTLP/HTTP without TLS, to a collector nearby)"
        ));
    }
    Ok(uri)
}

async fn export(url: hyper::Uri, node: String, mut rx: mpsc::Receiver<SpanRecord>, metrics: Metrics) {
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&node, &batch);
        match tokio::time::timeout(TIMEOUT, post(&url, body)).await {
            Ok(Ok(())) => {
                metrics.exported_spans.inc_by(n);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, spans = n, "OTLP export failed; spans dropped");
                metrics.dropped("spans", "export_failed", n);
            }
            Err(_) => {
                tracing::debug!(spans = n, "OTLP export timed out; spans dropped");
                metrics.dropped("spans", "export_failed", n);
            }
        }
    }
}

async fn post(url: &hyper::Uri, body: Vec<u8>) -> Result<(), String> {
    let authority = url.authority().ok_or("no host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port)).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Origin-form (`POST /v1/traces`), as a client speaks to a server, not to a proxy.
    let target = url.path_and_query().map_or("/v1/traces", |p| p.as_str());
    let request = hyper::Request::post(target)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the collector answered {}", response.status()));
    }
    Ok(())
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| s.get(2 * i..2 * i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: &Value) -> proto::KeyValue {
    let value = match value {
        Value::Str(s) => proto::any_value::Value::StringValue(s.clone()),
        Value::Int(i) => proto::any_value::Value::IntValue(*i),
    };
    proto::KeyValue { key: key.to_owned(), value: Some(proto::AnyValue { value: Some(value) }) }
}

/// The export request: one resource per service, its spans in one scope.
pub fn encode(node: &str, spans: &[SpanRecord]) -> Vec<u8> {
    use prost::Message;
    let mut by_service: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
    for s in spans {
        by_service.entry(&s.service_name).or_default().push(s);
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| proto::ResourceSpans {
            resource: Some(proto::Resource {
                attributes: vec![
                    kv("service.name", &Value::Str(service.to_owned())),
                    kv("host.name", &Value::Str(node.to_owned())),
                    kv("mesh.node", &Value::Str(node.to_owned())),
                ],
            }),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "meshd".to_owned(),
                    version: mesh_proto::VERSION.to_owned(),
                }),
                spans: spans
                    .into_iter()
                    .map(|s| proto::Span {
                        trace_id: unhex(&s.trace_id),
                        span_id: unhex(&s.span_id),
                        parent_span_id: s.parent_span_id.as_deref().map(unhex).unwrap_or_default(),
                        name: s.name.clone(),
                        kind: s.kind,
                        start_time_unix_nano: nanos(s.start),
                        end_time_unix_nano: nanos(s.end),
                        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                        status: Some(proto::Status { message: String::new(), code: if s.error { 2 } else { 0 } }),
                    })
                    .collect(),
            }],
        })
        .collect();
    proto::ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

/// OTLP's trace messages, the fields meshd fills (numbers as upstream).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 3")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(int64, tag = "3")]
            IntValue(i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_endpoints_are_taken() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").map(|u| u.to_string()),
            Ok("http://127.0.0.1:4318/v1/traces".into())
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces/").map(|u| u.to_string()),
            Ok("http://collector:4318/v1/traces".into())
        );
        assert!(traces_url("https://collector:4318").is_err());
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("http://").is_err());
    }
}
