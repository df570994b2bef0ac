//! Outbound: accept an application's connection on a virtual IP (or an upstream), pick a
//! healthy instance, reach it (through a new stream on the pooled `mesh/1` connection to
//! its node, or directly when it runs on this host), splice. An instance that refuses
//! or cannot be reached is skipped for another, up to [`ATTEMPTS`] in all; then the
//! client's connection is closed.
//!
//! Must not: choose an instance itself (routing does), or read the store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};

use super::upstream::{reach, Upstream};
use super::{splice, Destination, LoadGuard, Proxy};
use crate::drain::DrainWatcher;
use crate::routing::pick_p2c;
use crate::routing::plan::InstanceKey;
use crate::telemetry::traffic::{Parties, Reporter, TcpCall};

/// Instances tried per connection before giving up.
pub const ATTEMPTS: usize = 3;

/// While another instance is left to try, a tunnel whose node has not answered within
/// this long is given up for it (a node that just died answers nothing, and the client
/// would wait out the whole `connect_timeout`: measured 5.0 s after a kill -9). The last
/// try waits the whole `connect_timeout`.
pub const FIRST_ANSWER: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts until the drain starts (or the listener's service goes away: the task is
/// aborted, and the connections it started carry on).
pub async fn listen(proxy: Arc<Proxy>, listener: TcpListener, dest: Destination, drain: DrainWatcher) {
    let open = Arc::new(AtomicUsize::new(0));
    let dest = Arc::new(dest);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.signaled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, service = %dest.name, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // The limit as it is now: a reload of the config may have changed it.
        if open.load(Ordering::Relaxed) >= proxy.max_connections() {
            proxy.metrics.count("outbound", "over_limit");
            splice::abort(&stream);
            continue;
        }
        let permit = LoadGuard::new(open.clone());
        let _ = stream.set_nodelay(true);
        let (proxy, dest, drain) = (proxy.clone(), dest.clone(), drain.clone());
        tokio::spawn(async move {
            let service = mesh_proto::service::ServiceName::service_of(&dest.name);
            let http = proxy.tables.load().services.get(service).map(|t| t.protocol == "http");
            if http == Some(true) {
                super::http::serve(proxy.clone(), stream, dest, drain.signal()).await;
            } else {
                connection(&proxy, stream, &dest).await;
            }
            drop((permit, drain));
        });
    }
}

async fn connection(proxy: &Proxy, mut client: TcpStream, dest: &Destination) {
    let started = Instant::now();
    let start = SystemTime::now();
    let _active = proxy.metrics.active("outbound");
    let trace_id = super::trace_id(proxy);
    let tables = proxy.tables.load_full();
    let service = mesh_proto::service::ServiceName::service_of(&dest.name).to_owned();
    let source_service = dest.source_service.clone().filter(|s| tables.targets(s).iter().any(|t| t.node == proxy.node));
    let mut parties = Parties {
        source_service,
        source_node: proxy.node.clone(),
        destination_service: service,
        destination_node: None,
        destination_version: None,
    };
    proxy.telemetry.tcp_opened(Reporter::Source, &parties);
    let roll: u64 = rand::RngExt::random(&mut *proxy.rng.lock().unwrap_or_else(|p| p.into_inner()));
    let (candidates, _subset) = tables.route_tcp(&dest.name, roll);
    let loads: Vec<_> = candidates.iter().map(|t| proxy.load_of(&InstanceKey::of(t))).collect();
    let mut tried = Vec::new();
    let mut last_error = "no_healthy_instance";
    let reached = loop {
        let choice = {
            let mut rng = proxy.rng.lock().unwrap_or_else(|p| p.into_inner());
            pick_p2c(candidates.len(), &tried, |i| loads[i].load(std::sync::atomic::Ordering::Relaxed), &mut *rng)
        };
        let Some(i) = choice.filter(|_| tried.len() < ATTEMPTS) else { break None };
        tried.push(i);
        let target = candidates[i];
        let guard = LoadGuard::new(loads[i].clone());
        let another_left = tried.len() < ATTEMPTS && tried.len() < candidates.len();
        let attempt = reach(proxy, target, dest, &trace_id);
        let reached = if another_left && target.node != proxy.node {
            let first = FIRST_ANSWER.min(proxy.connect_timeout());
            tokio::time::timeout(first, attempt).await.unwrap_or(Err("tunnel_slow"))
        } else {
            attempt.await
        };
        match reached {
            Ok(upstream) => break Some((target, upstream, guard)),
            Err(reason) => {
                tracing::debug!(service = %dest.name, node = %target.node, reason, "instance not reached; trying another");
                proxy.metrics.count("outbound", reason);
                last_error = reason;
            }
        }
    };
    let report = |parties: Parties, flags: &'static str, moved: splice::Moved, host: Option<String>| TcpCall {
        reporter: Reporter::Source,
        parties,
        flags,
        // Istio's direction: seen from the server.
        sent: moved.received,
        received: moved.sent,
        start,
        duration: started.elapsed(),
        trace_id: trace_id.clone(),
        upstream_host: host,
    };
    let Some((target, upstream, _guard)) = reached else {
        proxy.metrics.count("outbound", "failed");
        let flags = match last_error {
            "no_healthy_instance" => "UH",
            "refused_denied" => "RBAC",
            _ => "UF",
        };
        proxy.telemetry.tcp(report(parties, flags, splice::Moved::default(), None));
        splice::abort(&client);
        return;
    };
    proxy.metrics.count("outbound", "ok");
    parties.destination_node = Some(target.node.clone());
    parties.destination_version = target.labels.get("version").cloned();
    let local = matches!(upstream, Upstream::Local(_));
    if local {
        proxy.telemetry.tcp_opened(Reporter::Destination, &parties);
    }
    let (moved, result) = match upstream {
        Upstream::Local(mut server) => splice::tcp_tcp(&mut client, &mut server).await,
        Upstream::Tunnel(mut send, mut recv, _) => splice::tcp_quic(&mut client, &mut send, &mut recv).await,
    };
    proxy.metrics.moved("outbound", moved);
    let flags = if result.is_err() { "UC" } else { "-" };
    let host = Some(format!("{}:{}", target.addr, target.port));
    let call = report(parties, flags, moved, host);
    if local {
        // No other meshd sees this connection: this one reports the instance's side too.
        proxy.telemetry.tcp(TcpCall { reporter: Reporter::Destination, ..call.clone() });
    }
    proxy.telemetry.tcp(call);
}
