//! Outbound: accept an application's connection on a virtual IP (or an upstream), pick a
//! healthy instance, reach it (through a new stream on the pooled `mesh/1` connection to
//! its node, or directly when it runs on this host), splice. An instance that refuses
//! or cannot be reached is skipped for another, up to [`ATTEMPTS`] in all; then the
//! client's connection is closed.
//!
//! Must not: choose an instance itself (routing does), or read the store.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::upstream::{reach, Upstream};
use super::{splice, Destination, LoadGuard, Proxy};
use crate::drain::DrainWatcher;
use crate::routing::pick_p2c;
use crate::routing::plan::InstanceKey;

/// Instances tried per connection before giving up.
pub const ATTEMPTS: usize = 3;

/// Accepts until the drain starts (or the listener's service goes away: the task is
/// aborted, and the connections it started carry on).
pub async fn listen(proxy: Arc<Proxy>, listener: TcpListener, dest: Destination, drain: DrainWatcher) {
    let limit = Arc::new(Semaphore::new(proxy.max_connections));
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            proxy.metrics.count("outbound", "over_limit");
            splice::abort(&stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (proxy, dest, drain) = (proxy.clone(), dest.clone(), drain.clone());
        tokio::spawn(async move {
            let service = mesh_proto::service::ServiceName::service_of(&dest.name);
            let http = proxy.tables.load().services.get(service).map(|t| t.protocol == "http");
            if http == Some(true) {
                super::http::serve(proxy.clone(), stream, dest).await;
            } else {
                connection(&proxy, stream, &dest).await;
            }
            drop((permit, drain));
        });
    }
}

async fn connection(proxy: &Proxy, mut client: TcpStream, dest: &Destination) {
    let started = Instant::now();
    let _active = proxy.metrics.active("outbound");
    let source = client.peer_addr().map_or_else(|_| "-".to_owned(), |a| a.to_string());
    let trace_id = super::trace_id(proxy);
    let tables = proxy.tables.load_full();
    let roll: u64 = rand::RngExt::random(&mut *proxy.rng.lock().unwrap_or_else(|p| p.into_inner()));
    let (candidates, subset) = tables.route_tcp(&dest.name, roll);
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
        match reach(proxy, target, dest, &trace_id).await {
            Ok(upstream) => break Some((target, upstream, guard)),
            Err(reason) => {
                tracing::debug!(service = %dest.name, node = %target.node, reason, "instance not reached; trying another");
                proxy.metrics.count("outbound", reason);
                last_error = reason;
            }
        }
    };
    let Some((target, upstream, _guard)) = reached else {
        proxy.metrics.count("outbound", "failed");
        tracing::info!(
            target: "access",
            direction = "outbound",
            service = %dest.name,
            %source,
            %trace_id,
            error = last_error,
            attempts = tried.len(),
            "connection failed"
        );
        splice::abort(&client);
        return;
    };
    proxy.metrics.count("outbound", "ok");
    let (moved, result) = match upstream {
        Upstream::Local(mut server) => splice::tcp_tcp(&mut client, &mut server).await,
        Upstream::Tunnel(mut send, mut recv) => splice::tcp_quic(&mut client, &mut send, &mut recv).await,
    };
    proxy.metrics.moved("outbound", moved);
    tracing::info!(
        target: "access",
        direction = "outbound",
        service = %dest.name,
        %source,
        node = %target.node,
        instance = %format!("{}:{}", target.addr, target.port),
        subset = subset.as_deref().unwrap_or("-"),
        %trace_id,
        sent = moved.sent,
        received = moved.received,
        duration_ms = started.elapsed().as_millis() as u64,
        error = result.as_ref().err().map(|e| e.to_string()),
        "connection"
    );
}
