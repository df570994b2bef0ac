//! The proxy's side of authorization: it carries out `policy`'s decisions where the
//! destination is hosted. A tunnel to a `tcp` service is refused before the instance is
//! connected (a policy applies to new connections; open ones carry on). The requests of
//! an `http` service with a policy (or of every `http` service when the mesh default is
//! deny) are decided one by one: 400 for a path no rule could be sure about, 403 naming
//! the policy, 429 with `retry-after` for a rate limit. Every tunnel stream to an `http`
//! service is served as HTTP here, policy or not, so that each request is reported from
//! the destination's side too (and traced): a policy that appears applies to the next
//! request on a stream already open. A caller on this very host goes through the same decisions (`upstream::reach` and the
//! outbound HTTP engine ask here before reaching a local instance).
//!
//! Must not: decide (that is `policy`), or trust a source service the caller's node does
//! not host.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proto::policy::PolicySpec;
use tokio::net::TcpStream;

use super::meter::{Metered, OnEnd};
use super::{Body, Proxy};
use crate::policy::{self, Caller};
use crate::routing::http::{ambiguous_path, normalize_path, RequestView};
use crate::routing::Target;
use crate::telemetry::record::clipped;
use crate::telemetry::traffic::{HttpCall, Parties, Reporter};

/// Policies by service, as the last snapshot had them.
pub type Policies = BTreeMap<String, Arc<PolicySpec>>;

impl Proxy {
    /// Whether a connection from `caller` to `service` is admitted, or why not. An
    /// `http` service's connections always are: each of their requests is decided when
    /// it is served ([`serve_http`]).
    pub(super) fn admit(&self, service: &str, http: bool, caller: &Caller<'_>) -> Result<(), String> {
        if http {
            return Ok(());
        }
        let policies = self.policies.load();
        let policy = policies.get(service);
        let decision = policy::decide(policy.map(|p| &**p), self.policy_default, caller, None);
        if decision.allow {
            return Ok(());
        }
        self.metrics.policy("denied", service, caller, &decision.by.to_string());
        Err(decision.explain(service, policy.is_some()))
    }

    /// The answer to a request that the policy refuses, or `None` to forward it.
    pub(super) fn refuse_request(
        &self,
        service: &str,
        caller: &Caller<'_>,
        parts: &hyper::http::request::Parts,
    ) -> Option<Response<Body>> {
        let policies = self.policies.load();
        let policy = policies.get(service);
        // No policy looks at this service's requests (as for a spliced stream).
        if policy.is_none() && self.policy_default == crate::config::PolicyDefault::Allow {
            return None;
        }
        if ambiguous_path(parts.uri.path()) {
            self.metrics.policy("denied", service, caller, "ambiguous_path");
            return Some(text(StatusCode::BAD_REQUEST, "an encoded / or \\ in the path is refused\n"));
        }
        let path = normalize_path(parts.uri.path());
        let headers = &parts.headers;
        let lookup = move |name: &str| {
            let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        let view = RequestView { method: parts.method.as_str(), path: &path, header: &lookup };
        let decision = policy::decide(policy.map(|p| &**p), self.policy_default, caller, Some(&view));
        if !decision.allow {
            let rule = decision.by.to_string();
            self.metrics.policy("denied", service, caller, &rule);
            tracing::info!(target: "access", service, source = %caller.label(), rule, method = %parts.method, path = %path, "request denied by policy");
            let line = decision.explain(service, policy.is_some());
            return Some(text(StatusCode::FORBIDDEN, &format!("{line}\n")));
        }
        let policy = policy?;
        let limited = self.limiter.lock().unwrap_or_else(|p| p.into_inner()).take(policy, caller, Instant::now());
        if let Err(l) = limited {
            let rule = format!("rate_limit[{}]", l.rule);
            self.metrics.policy("rate_limited", service, caller, &rule);
            tracing::info!(target: "access", service, source = %caller.label(), rule, method = %parts.method, path = %path, "request rate-limited by policy");
            let mut resp = text(StatusCode::TOO_MANY_REQUESTS, &format!("rate limit: policy {service} {rule}\n"));
            let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return Some(resp);
        }
        None
    }
}

/// Envoy's flag for an answer that a policy gave.
pub(super) fn refusal_flags(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "RBAC",
        StatusCode::TOO_MANY_REQUESTS => "RL",
        _ => "-",
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// Serves a tunnel stream as HTTP/1.1 (what the outbound side speaks on it): each
/// request is decided, forwarded on one connection to the instance, and reported when
/// its response ends.
pub(super) async fn serve_http(
    proxy: Arc<Proxy>,
    parties: Parties,
    instance: Target,
    tcp: TcpStream,
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
) {
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp)).await else {
        return;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let parties = Arc::new(parties);
    let host = Arc::new(format!("{}:{}", instance.addr, instance.port));
    let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (proxy, sender, parties, host) = (proxy.clone(), sender.clone(), parties.clone(), host.clone());
        async move {
            let started = Instant::now();
            let (mut parts, body) = req.into_parts();
            let trace = proxy.trace_context(&mut parts.headers);
            if let Ok(v) = hyper::header::HeaderValue::from_str(&trace.traceparent()) {
                parts.headers.insert(hyper::header::HeaderName::from_static("traceparent"), v);
            }
            let call = HttpCall {
                reporter: Reporter::Destination,
                parties: (*parties).clone(),
                protocol: "http",
                method: parts.method.as_str().to_owned(),
                path: clipped(parts.uri.path(), 1024),
                authority: short(parts.headers.get(hyper::header::HOST)),
                user_agent: short(parts.headers.get(hyper::header::USER_AGENT)),
                request_id: short(parts.headers.get("x-request-id")),
                code: 0,
                flags: "-",
                request_bytes: 0,
                response_bytes: 0,
                start: SystemTime::now(),
                duration: Duration::ZERO,
                trace,
                subset: None,
                route_rule: None,
                retries: 0,
                upstream_host: Some((*host).clone()),
            };
            let caller = Caller { node: &parties.source_node, service: parties.source_service.as_deref() };
            let request_bytes = Arc::new(AtomicU64::new(0));
            let (resp, flags) = match proxy.refuse_request(&parties.destination_service, &caller, &parts) {
                Some(refused) => {
                    let flags = refusal_flags(refused.status());
                    (refused, flags)
                }
                None => {
                    let body = Metered::counting(body, request_bytes.clone()).boxed();
                    let forwarded = sender.lock().await.send_request(Request::from_parts(parts, body)).await;
                    match forwarded {
                        Ok(resp) => (resp.map(|b| b.boxed()), "-"),
                        Err(_) => (text(StatusCode::BAD_GATEWAY, "the instance closed the connection\n"), "UC"),
                    }
                }
            };
            Ok::<_, std::convert::Infallible>(report(proxy, call, resp, flags, started, request_bytes))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(super::HEAD_DEADLINE);
    let _ = builder.serve_connection(TokioIo::new(stream), handler).await;
}

/// A header's value for the access log and spans: text, at most 256 bytes.
fn short(value: Option<&hyper::header::HeaderValue>) -> Option<String> {
    value.and_then(|v| v.to_str().ok()).map(|v| clipped(v, 256))
}

/// `resp`, its body wrapped so that `call` is reported when it ends.
fn report(
    proxy: Arc<Proxy>,
    mut call: HttpCall,
    resp: Response<Body>,
    flags: &'static str,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
) -> Response<Body> {
    call.code = resp.status().as_u16();
    call.flags = flags;
    let on_end: OnEnd = Box::new(move |bytes, ok| {
        call.response_bytes = bytes;
        call.request_bytes = request_bytes.load(Ordering::Relaxed);
        call.duration = started.elapsed();
        if !ok && call.flags == "-" {
            call.flags = "DC";
        }
        proxy.telemetry.http(call);
    });
    resp.map(|b| Metered::reporting(b, on_end).boxed())
}
