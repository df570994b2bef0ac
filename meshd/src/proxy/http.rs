//! Outbound HTTP: for services with `protocol = "http"`, the application's connection is
//! served as HTTP/1.1 or HTTP/2 (prior knowledge), and each request is routed on its own:
//! the route's first matching rule, its fault, a weighted subset, an instance by power
//! of two choices over requests in flight (ejected outliers left out), the rule's
//! timeout over all tries, retries within the budget, a mirror copy. Each try goes
//! through its own tunnel stream (or straight to an instance on this host) as HTTP/1.1.
//!
//! Must not: decide a try's instance or whether to retry (`routing::plan` does), or
//! forward a request hyper found ambiguous.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proto::route::HttpRule;
use tokio::net::TcpStream;

use super::meter::{Metered, OnEnd};
use super::upstream::send;
use super::Body;
use super::{Destination, LoadGuard, Proxy};
use crate::routing::http::{match_rule, normalize_path, RequestView};
use crate::routing::plan::{self, exhausted, Failure, InstanceKey, Outcome, Tries, Verdict};
use crate::routing::{Tables, Target};
use crate::telemetry::record::clipped;
use crate::telemetry::trace::TraceContext;
use crate::telemetry::traffic::{HttpCall, Parties, Reporter};

/// Request bodies up to this size are buffered, so the request can be retried and
/// mirrored; larger or unsized ones stream through once.
const REPLAYABLE: u64 = 64 * 1024;
/// Mirror copies in flight at once; more are shed.
pub(super) const MIRRORS: usize = 64;
pub use super::HEAD_DEADLINE;
/// How long after a drain starts an application's idle keep-alive connection is closed.
pub const IDLE_GRACE: Duration = Duration::from_secs(2);

/// The largest request head (hyper answers 431 beyond it).
pub const MAX_HEAD: usize = 64 * 1024;

/// A body held whole in memory.
fn whole(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn full(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(whole(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}

/// Serves one application connection until it closes; counted like a TCP connection
/// (`mesh_proxy_connections_total`, `mesh_proxy_bytes_total`, active connections). Once
/// a drain starts, every response says `Connection: close` (the client's next request
/// opens a new connection: to the successor, after an upgrade), and after
/// [`IDLE_GRACE`] a connection still idle is closed.
pub async fn serve(proxy: Arc<Proxy>, client: TcpStream, dest: Arc<Destination>, draining: crate::drain::DrainSignal) {
    let _active = proxy.metrics.active("outbound");
    proxy.metrics.count("outbound", "ok");
    let counted = Arc::new(ByteCounts::default());
    let guard = HeadGuard::new(client, counted.clone());
    let p = proxy.clone();
    let closing = draining.clone();
    let service = hyper::service::service_fn(move |req| {
        let (proxy, dest, closing) = (p.clone(), dest.clone(), closing.clone());
        async move {
            let mut response = handle(&proxy, &dest, req).await;
            if closing.is_draining() {
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A whole request head within HEAD_DEADLINE (the clock runs from the first byte
    // awaited, so dribbling does not extend it, and an idle keep-alive connection is
    // closed after as long); an HTTP/2 connection that stops answering pings is closed.
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEAD_DEADLINE).max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(HEAD_DEADLINE))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(guard), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = draining.signaled() => {
            // A client that keeps sending learns `Connection: close` from its next
            // response; closing a connection between requests races the client's next
            // one, so only a connection idle for the grace is closed.
            tokio::select! {
                ended = conn.as_mut() => ended,
                _ = tokio::time::sleep(IDLE_GRACE) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
    proxy.metrics.moved("outbound", counted.moved());
}

/// Bytes read from and written to an application connection.
#[derive(Default)]
struct ByteCounts {
    read: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

impl ByteCounts {
    fn moved(&self) -> super::splice::Moved {
        use std::sync::atomic::Ordering::Relaxed;
        super::splice::Moved { sent: self.read.load(Relaxed), received: self.written.load(Relaxed) }
    }
}

/// The header name a conflicting `Content-Length` is renamed to (same length) by
/// [`HeadGuard`], so that the handler can refuse the request.
const SMUGGLED: &str = "x-mesh-smuggle";

/// Watches the first request head of a connection for `Transfer-Encoding` together
/// with `Content-Length`. hyper reads such a request by its coding and drops the
/// length (RFC 9112 6.3), so the handler would not see the conflict; renaming the
/// length header lets it refuse the request (400, connection closed).
///
/// Limitation: only the first head is watched (later heads on a keep-alive connection
/// would need a body parser here); meshd re-frames every request it forwards, so a
/// backend never sees the conflicting headers either way.
struct HeadGuard {
    inner: TcpStream,
    head: Vec<u8>,
    done: bool,
    counted: Arc<ByteCounts>,
}

impl HeadGuard {
    fn new(inner: TcpStream, counted: Arc<ByteCounts>) -> HeadGuard {
        HeadGuard { inner, head: Vec::new(), done: false, counted }
    }
}

/// In `buf`, the byte ranges of header names `name` (case-insensitive, at line start).
fn header_lines(head: &[u8], name: &[u8]) -> Vec<usize> {
    let mut at = Vec::new();
    for (i, w) in head.windows(name.len() + 2).enumerate() {
        if w[..2] == *b"\r\n" && w[2..].eq_ignore_ascii_case(name) {
            at.push(i + 2);
        }
    }
    at
}

impl tokio::io::AsyncRead for HeadGuard {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let start = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) {
            let n = (buf.filled().len() - start) as u64;
            self.counted.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        if self.done || !matches!(polled, std::task::Poll::Ready(Ok(()))) {
            return polled;
        }
        let offset = self.head.len();
        let new = buf.filled()[start..].to_vec();
        self.head.extend_from_slice(&new);
        // Only the new bytes (and the three before them) can complete the head: a client
        // dribbling its head costs a scan of each byte once, not of the whole head per read.
        let from = offset.saturating_sub(3);
        let end = self.head[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + from);
        if end.is_some() || self.head.len() > 64 * 1024 {
            self.done = true;
            let head = &self.head[..end.unwrap_or(self.head.len())];
            let te = !header_lines(head, b"transfer-encoding").is_empty();
            let cl = header_lines(head, b"content-length");
            if te {
                for at in cl {
                    // Rename in the bytes being handed to hyper, where they lie.
                    if let Some(local) = at.checked_sub(offset) {
                        let filled = &mut buf.filled_mut()[start..];
                        if local + SMUGGLED.len() <= filled.len() {
                            filled[local..local + SMUGGLED.len()].copy_from_slice(SMUGGLED.as_bytes());
                        }
                    }
                }
            }
            self.head = Vec::new();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for HeadGuard {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.counted.written.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn handle(proxy: &Arc<Proxy>, dest: &Destination, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (service, pinned) = match mesh_proto::service::ServiceName::parse(&dest.name) {
        Some(n) => (n.service.to_owned(), n.subset.map(str::to_owned)),
        None => (dest.name.clone(), None),
    };
    let tables = proxy.tables.load_full();
    let (mut parts, body) = req.into_parts();
    let trace = proxy.trace_context(&mut parts.headers);
    let local_source = dest.source_service.clone().filter(|s| tables.targets(s).iter().any(|t| t.node == proxy.node));
    let mut report = Report::new(proxy, &parts, &service, local_source.clone(), trace, started);
    // hyper refuses conflicting lengths and unknown codings itself; a request with both
    // Transfer-Encoding and Content-Length it reads by the coding (RFC 9112 6.3), but a
    // server behind another proxy may not: refuse it, and close the connection.
    if parts.headers.contains_key(SMUGGLED) {
        proxy.metrics.count("outbound", "http_smuggling_refused");
        let mut resp = full(StatusCode::BAD_REQUEST, "Transfer-Encoding with Content-Length is refused\n");
        resp.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        return report.finish(proxy, resp, "-");
    }
    strip_hop_by_hop(&mut parts.headers);
    let path = normalize_path(parts.uri.path());
    let route = tables.services.get(&service).and_then(|t| t.route.as_ref());
    let matched = if pinned.is_none() {
        let headers = &parts.headers;
        let lookup = move |name: &str| {
            let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        let view = RequestView { method: parts.method.as_str(), path: &path, header: &lookup };
        route.and_then(|r| match_rule(r, &view))
    } else {
        None
    };
    let (rule_index, rule) = match matched {
        Some((i, r)) => (Some(i), Some(r)),
        None => (None, None),
    };
    report.rule = rule_index;
    report.call.route_rule =
        rule_index.zip(route).map(|(i, r)| (if r.name.is_empty() { service.clone() } else { r.name.clone() }, i));
    proxy.budget.lock().unwrap_or_else(|p| p.into_inner()).request(&service, started);

    // Faults first: they stand for the upstream misbehaving.
    if let Some(fault) = rule.and_then(|r| r.fault.as_ref()) {
        if let Some(delay) = &fault.delay {
            if roll(proxy, 100) < u64::from(delay.percent) {
                tokio::time::sleep(delay.fixed).await;
            }
        }
        if let Some(abort) = &fault.abort {
            if roll(proxy, 100) < u64::from(abort.percent) {
                let status = StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return report.finish(proxy, full(status, "fault injected by the route\n"), "FI");
            }
        }
    }

    // The body: buffered when small and sized, so it can be sent again.
    let replayable = body.size_hint().upper().is_some_and(|n| n <= REPLAYABLE);
    let (buffered, mut streamed) = if replayable {
        match body.collect().await {
            Ok(b) => (Some(b.to_bytes()), None),
            Err(_) => {
                return report.finish(
                    proxy,
                    full(StatusCode::BAD_REQUEST, "the request body could not be read\n"),
                    "DC",
                )
            }
        }
    } else {
        (None, Some(Metered::counting(body, report.request_bytes.clone())))
    };
    if let Some(b) = &buffered {
        report.request_bytes.store(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    if let (Some(mirror), Some(bytes)) = (rule.and_then(|r| r.mirror.as_ref()), &buffered) {
        if roll(proxy, 100) < u64::from(mirror.percent) {
            send_mirror(proxy, &tables, &service, &mirror.subset, dest, &parts, bytes.clone());
        }
    }

    let mut plan = Tries::new(rule, buffered.is_some());
    let per_try = plan.per_try_timeout();
    // A try to an instance on this host is decided here by its policy (a remote one is
    // decided by its own host): the refusal is the answer.
    let mut refused: Option<Response<Body>> = None;
    let mut tried: Vec<InstanceKey> = Vec::new();
    let mut reached: Option<Target> = None;
    let tries = async {
        let mut last = None;
        loop {
            if plan.next_is_retry() {
                let budget = plan.budget();
                let granted =
                    proxy.budget.lock().unwrap_or_else(|p| p.into_inner()).try_retry(&service, &budget, Instant::now());
                if !granted {
                    proxy.metrics.http_event(&service, "retry_budget_exhausted");
                    break;
                }
                proxy.metrics.http_event(&service, "retry");
            }
            let Some((target, subset)) = choose(proxy, &tables, &service, pinned.as_deref(), rule, &tried) else {
                return Err((StatusCode::SERVICE_UNAVAILABLE, "no healthy instance\n", "UH"));
            };
            let instance = InstanceKey::of(&target);
            if target.node == proxy.node {
                let caller = crate::policy::Caller { node: &proxy.node, service: local_source.as_deref() };
                if let Some(r) = proxy.refuse_request(&service, &caller, &parts) {
                    refused = Some(r);
                    reached = Some(target);
                    break;
                }
            }
            let body: Body = match (&buffered, streamed.take()) {
                (Some(b), _) => whole(b.clone()),
                (None, Some(s)) => s.boxed(),
                (None, None) => break,
            };
            let mut request = build(&parts, body, &service);
            if let Ok(v) = HeaderValue::from_str(&report.call.trace.traceparent()) {
                request.headers_mut().insert(HeaderName::from_static("traceparent"), v);
            }
            let _guard = LoadGuard::new(proxy.load_of(&instance));
            let sent = send(proxy, &target, &instance, dest, request, &report.call.trace.trace_id);
            let result = match per_try {
                Some(t) => tokio::time::timeout(t, sent).await.unwrap_or(Err(Failure::Timeout)),
                None => sent.await,
            };
            let outcome = match &result {
                Ok(r) => Outcome::Status(r.status().as_u16()),
                Err(f) => Outcome::Failed(*f),
            };
            proxy.eject(&tables, &service, &instance, outcome.failed());
            tried.push(instance);
            reached = Some(target);
            last = Some(result.map(|r| (r, subset)));
            if plan.after(outcome) != Verdict::Retry {
                break;
            }
        }
        match last {
            Some(Ok(r)) => Ok(r),
            Some(Err(f)) => {
                let flags = match f {
                    Failure::Connect => "UF",
                    Failure::Reset => "UC",
                    Failure::Timeout => "UT",
                };
                let (status, text) = exhausted(Some(f));
                Err((StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), text, flags))
            }
            None => {
                let (status, text) = exhausted(None);
                Err((StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), text, "URX"))
            }
        }
    };
    let outcome = match rule.and_then(|r| r.timeout) {
        Some(t) => tokio::time::timeout(t, tries).await.unwrap_or(Err((
            StatusCode::GATEWAY_TIMEOUT,
            "the route's timeout passed\n",
            "UT",
        ))),
        None => tries.await,
    };
    report.reached(reached.as_ref(), tried.len());
    if let Some(r) = refused {
        let flags = super::authz::refusal_flags(r.status());
        return report.finish(proxy, r, flags);
    }
    match outcome {
        Ok((resp, subset)) => {
            let (mut rparts, rbody) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            report.call.subset = subset;
            let flags = if report.call.retries > 0 && rparts.status.is_server_error() { "URX" } else { "-" };
            report.finish(proxy, Response::from_parts(rparts, rbody.boxed()), flags)
        }
        Err((status, text, flags)) => report.finish(proxy, full(status, text), flags),
    }
}

/// What is known of a request as it goes, reported when its response ends.
struct Report {
    call: HttpCall,
    started: Instant,
    rule: Option<usize>,
    request_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// The instance reached runs on this host: no other meshd reports the destination's
    /// side, so this one does.
    local: bool,
}

impl Report {
    fn new(
        proxy: &Proxy,
        parts: &hyper::http::request::Parts,
        service: &str,
        source_service: Option<String>,
        trace: TraceContext,
        started: Instant,
    ) -> Report {
        let header = |name: hyper::header::HeaderName| {
            parts.headers.get(name).and_then(|v| v.to_str().ok()).map(|v| clipped(v, 256))
        };
        let call = HttpCall {
            reporter: Reporter::Source,
            parties: Parties {
                source_service,
                source_node: proxy.node.clone(),
                destination_service: service.to_owned(),
                destination_node: None,
                destination_version: None,
            },
            protocol: if parts.version == hyper::Version::HTTP_2 { "http2" } else { "http" },
            method: parts.method.as_str().to_owned(),
            path: clipped(parts.uri.path(), 1024),
            authority: parts.uri.authority().map(|a| clipped(a.as_str(), 256)).or_else(|| header(hyper::header::HOST)),
            user_agent: header(hyper::header::USER_AGENT),
            request_id: header(HeaderName::from_static("x-request-id")),
            code: 0,
            flags: "-",
            request_bytes: 0,
            response_bytes: 0,
            start: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            trace,
            subset: None,
            route_rule: None,
            retries: 0,
            upstream_host: None,
        };
        Report { call, started, rule: None, request_bytes: Arc::default(), local: false }
    }

    fn reached(&mut self, target: Option<&Target>, tries: usize) {
        self.call.retries = u32::try_from(tries.saturating_sub(1)).unwrap_or(u32::MAX);
        if let Some(t) = target {
            self.call.parties.destination_node = Some(t.node.clone());
            self.call.parties.destination_version = t.labels.get("version").cloned();
            self.call.upstream_host = Some(format!("{}:{}", t.addr, t.port));
            self.local = t.node == self.call.parties.source_node;
        }
    }

    /// The response, its body wrapped so that the request is reported when it ends.
    fn finish(self, proxy: &Arc<Proxy>, resp: Response<Body>, flags: &'static str) -> Response<Body> {
        let Report { mut call, started, rule, request_bytes, local } = self;
        call.code = resp.status().as_u16();
        call.flags = flags;
        proxy.metrics.request(
            &call.parties.destination_service,
            rule,
            call.subset.as_deref(),
            call.code,
            started.elapsed(),
        );
        let proxy = proxy.clone();
        let on_end: OnEnd = Box::new(move |bytes, ok| {
            call.response_bytes = bytes;
            call.request_bytes = request_bytes.load(std::sync::atomic::Ordering::Relaxed);
            call.duration = started.elapsed();
            if !ok && call.flags == "-" {
                call.flags = "DC";
            }
            if local {
                let mut inbound = call.clone();
                inbound.reporter = Reporter::Destination;
                proxy.telemetry.http(inbound);
            }
            proxy.telemetry.http(call);
        });
        resp.map(|b| Metered::reporting(b, on_end).boxed())
    }
}

fn roll(proxy: &Proxy, n: u64) -> u64 {
    let r: u64 = rand::RngExt::random(&mut *proxy.rng.lock().unwrap_or_else(|p| p.into_inner()));
    r % n
}

/// The planner's choice of the next instance, with the proxy's shared ejections, loads
/// and random numbers.
fn choose(
    proxy: &Proxy,
    tables: &Tables,
    service: &str,
    pinned: Option<&str>,
    rule: Option<&HttpRule>,
    tried: &[InstanceKey],
) -> Option<(Target, Option<String>)> {
    let ejections = proxy.ejections.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = proxy.rng.lock().unwrap_or_else(|p| p.into_inner());
    let load = |t: &Target| proxy.load_of(&InstanceKey::of(t)).load(std::sync::atomic::Ordering::Relaxed);
    let (target, subset) =
        plan::choose(tables, service, pinned, rule, tried, &ejections, Instant::now(), load, &mut *rng)?;
    Some((target.clone(), subset))
}

/// The request as sent upstream: HTTP/1.1, origin-form target, a Host header.
fn build(parts: &hyper::http::request::Parts, body: Body, service: &str) -> Request<Body> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = target.parse().unwrap_or_default();
    *req.headers_mut() = parts.headers.clone();
    if !req.headers().contains_key(hyper::header::HOST) {
        let host = parts.uri.authority().map_or_else(|| service.to_owned(), |a| a.to_string());
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    req
}

/// A copy of the request to one instance of `subset`; its answer is dropped. Shed
/// (not sent) when [`MIRRORS`] copies are in flight already.
fn send_mirror(
    proxy: &Arc<Proxy>,
    tables: &Tables,
    service: &str,
    subset: &str,
    dest: &Destination,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) {
    let Ok(permit) = proxy.mirrors.clone().try_acquire_owned() else {
        proxy.metrics.http_event(service, "mirror_shed");
        return;
    };
    let Some((target, _)) = choose(proxy, tables, service, Some(subset), None, &[]) else { return };
    proxy.metrics.http_event(service, "mirror_sent");
    let mut request = build(parts, whole(body), service);
    request.headers_mut().insert(HeaderName::from_static("x-mesh-mirror"), HeaderValue::from_static("1"));
    let (proxy, dest) = (proxy.clone(), dest.clone());
    tokio::spawn(async move {
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            send(&proxy, &target, &InstanceKey::of(&target), &dest, request, ""),
        )
        .await;
        if let Ok(Ok(resp)) = sent {
            let _ = resp.into_body().collect().await;
        }
        drop(permit);
    });
}

/// Hop-by-hop headers (RFC 9110 7.6.1): those the Connection header names, and the
/// standard ones. hyper frames each hop itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for h in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        headers.remove(h);
    }
}
