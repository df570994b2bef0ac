//! The access log: one JSON line per HTTP request and per TCP connection, with Envoy's
//! (Istio's) field names where they have one, written by a task of its own to meshd's
//! standard output or to a file. The data path hands a line to a bounded queue and never
//! waits: when the writer falls behind, lines are dropped and counted
//! (`mesh_telemetry_dropped_total{what="access_log"}`).
//!
//! A file is reopened when it is moved or removed (logrotate without `copytruncate`).
//!
//! Must not: block the data path, or lose a line silently.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::record::{HttpCall, Metrics, Parties, TcpCall};

/// Lines queued for the writer at most.
const QUEUE: usize = 8192;

/// The data path's end of the access log.
#[derive(Clone)]
pub struct AccessLog {
    lines: mpsc::Sender<String>,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is standard output; anything else a file.
    pub fn parse(path: &str) -> Target {
        if path == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(path))
        }
    }
}

/// One line. Field names follow Envoy's access log (as Istio's JSON format has them);
/// the mesh's own fields say what Envoy has no name for.
#[derive(Serialize)]
struct Line<'a> {
    start_time: String,
    /// `source` (the caller's node) or `destination` (the instance's node).
    reporter: &'static str,
    protocol: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_code: Option<u16>,
    response_flags: &'a str,
    /// Bytes from the client (the request), and to it (the response).
    bytes_received: u64,
    bytes_sent: u64,
    /// Milliseconds.
    duration: u64,
    trace_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<&'a str>,
    #[serde(flatten)]
    who: Who<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<&'a str>,
    /// `ROUTE[RULE]`: the route and its rule that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    route_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    connection_security_policy: &'static str,
}

/// Who called whom, as every line says it.
#[derive(Serialize)]
struct Who<'a> {
    source_workload: &'a str,
    source_node: &'a str,
    destination_service: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_version: Option<&'a str>,
}

impl<'a> Who<'a> {
    fn of(p: &'a Parties) -> Who<'a> {
        Who {
            source_workload: p.source_name(),
            source_node: &p.source_node,
            destination_service: &p.destination_service,
            destination_node: p.destination_node.as_deref(),
            destination_version: p.destination_version.as_deref(),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl AccessLog {
    /// The data path's end, and the writer to run until the drain.
    pub fn new(target: Target, metrics: Metrics) -> (AccessLog, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (AccessLog { lines: tx }, write(target, rx, metrics))
    }

    fn offer(&self, line: &Line<'_>, metrics: &Metrics) {
        let Ok(mut text) = serde_json::to_string(line) else { return };
        text.push('\n');
        if self.lines.try_send(text).is_err() {
            metrics.dropped("access_log", "queue_full", 1);
        }
    }

    pub(super) fn http(&self, c: &HttpCall, metrics: &Metrics) {
        let line = Line {
            start_time: rfc3339(c.start),
            reporter: c.reporter.as_str(),
            protocol: if c.protocol == "http2" { "HTTP/2" } else { "HTTP/1.1" },
            method: Some(&c.method),
            path: Some(&c.path),
            authority: c.authority.as_deref(),
            user_agent: c.user_agent.as_deref(),
            request_id: c.request_id.as_deref(),
            response_code: Some(c.code),
            response_flags: c.flags,
            bytes_received: c.request_bytes,
            bytes_sent: c.response_bytes,
            duration: c.duration.as_millis() as u64,
            trace_id: &c.trace.trace_id,
            span_id: Some(&c.trace.span_id),
            who: Who::of(&c.parties),
            upstream_host: c.upstream_host.as_deref(),
            subset: c.subset.as_deref(),
            route_name: c.route_rule.as_ref().map(|(route, rule)| format!("{route}[{rule}]")),
            retries: Some(c.retries),
            connection_security_policy: "mutual_tls",
        };
        self.offer(&line, metrics);
    }

    pub(super) fn tcp(&self, c: &TcpCall, metrics: &Metrics) {
        let line = Line {
            start_time: rfc3339(c.start),
            reporter: c.reporter.as_str(),
            protocol: "TCP",
            method: None,
            path: None,
            authority: None,
            user_agent: None,
            request_id: None,
            response_code: None,
            response_flags: c.flags,
            bytes_received: c.received,
            bytes_sent: c.sent,
            duration: c.duration.as_millis() as u64,
            trace_id: &c.trace_id,
            span_id: None,
            who: Who::of(&c.parties),
            upstream_host: c.upstream_host.as_deref(),
            subset: None,
            route_name: None,
            retries: None,
            connection_security_policy: "mutual_tls",
        };
        self.offer(&line, metrics);
    }
}

/// Writes queued lines until every sender is gone; a failed write drops the line
/// (counted) and the file is opened again on the next one.
async fn write(target: Target, mut rx: mpsc::Receiver<String>, metrics: Metrics) {
    let mut out: Option<(Box<dyn tokio::io::AsyncWrite + Unpin + Send>, Option<u64>)> = None;
    let mut checked = std::time::Instant::now();
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.push_str(&more),
                Err(_) => break,
            }
        }
        // A file moved away (rotated) is let go, and the path opened anew.
        if let (Target::File(path), Some((_, inode))) = (&target, &out) {
            if checked.elapsed() > Duration::from_secs(1) {
                checked = std::time::Instant::now();
                let now = std::fs::metadata(path).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                if now != *inode {
                    out = None;
                }
            }
        }
        if out.is_none() {
            out = open(&target).await;
        }
        let lines = batch.matches('\n').count() as u64;
        let Some((w, _)) = out.as_mut() else {
            metrics.dropped("access_log", "write_failed", lines);
            continue;
        };
        if w.write_all(batch.as_bytes()).await.is_err() || w.flush().await.is_err() {
            metrics.dropped("access_log", "write_failed", lines);
            out = None;
        }
    }
}

async fn open(target: &Target) -> Option<(Box<dyn tokio::io::AsyncWrite + Unpin + Send>, Option<u64>)> {
    match target {
        Target::Stdout => Some((Box::new(tokio::io::stdout()), None)),
        Target::File(path) => {
            let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await;
            match file {
                Ok(f) => {
                    let inode = f.metadata().await.ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                    Some((Box::new(f), inode))
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open the access log");
                    None
                }
            }
        }
    }
}
