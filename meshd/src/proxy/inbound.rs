//! Inbound: a tunnel stream from a member. The header was read (within the frame size
//! limit and the read timeout) by the stream dispatcher; here it is checked against the
//! caller's certificate and the catalog, authorized ([`super::authz`]: the connection, or
//! each HTTP request), and the instance connected.
//!
//! Must not: connect to an instance this node does not host, or trust the header's source
//! beyond what the certificate proves.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mesh_proto::wire::{TunnelHeader, TunnelRefusal, TunnelReply};
use tokio::net::TcpStream;

use super::{splice, Proxy};
use crate::identity::cert::CertInfo;
use crate::routing::Target;
use crate::telemetry::traffic::{Parties, Reporter, TcpCall};
use crate::transport::frame;

/// Serves one tunnel stream to its end.
pub async fn serve(
    proxy: Arc<Proxy>,
    peer: &CertInfo,
    header: TunnelHeader,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = Instant::now();
    let start = SystemTime::now();
    let _active = proxy.metrics.active("inbound");
    let http = proxy.tables.load().services.get(&header.service).is_some_and(|s| s.protocol == "http");
    let mut parties = Parties {
        source_service: header.source_service.clone(),
        source_node: peer.id.node.clone(),
        destination_service: header.service.clone(),
        destination_node: Some(proxy.node.clone()),
        destination_version: None,
    };
    let report = |parties: Parties, flags: &'static str, moved: splice::Moved, host: Option<String>| TcpCall {
        reporter: Reporter::Destination,
        parties,
        flags,
        sent: moved.sent,
        received: moved.received,
        start,
        duration: started.elapsed(),
        trace_id: header.trace_id.clone(),
        upstream_host: host,
    };
    let instance = match check(&proxy, peer, &header, http) {
        Ok(t) => t,
        Err((reason, detail)) => {
            proxy.metrics.count("inbound", reason.as_str());
            tracing::debug!(
                peer = %peer.id.node,
                service = %header.service.chars().take(64).collect::<String>(),
                refused = reason.as_str(),
                %detail,
                "tunnel refused"
            );
            // Only a checked header names a service and a source worth a label.
            if reason == TunnelRefusal::Denied {
                proxy.telemetry.tcp_opened(Reporter::Destination, &parties);
                proxy.telemetry.tcp(report(parties, "RBAC", splice::Moved::default(), None));
            }
            let _ = frame::write_last(&mut send, &TunnelReply::Refused { reason, detail }).await;
            return;
        }
    };
    parties.destination_version = instance.labels.get("version").cloned();
    let host = format!("{}:{}", instance.addr, instance.port);
    if !http {
        proxy.telemetry.tcp_opened(Reporter::Destination, &parties);
    }
    let connected = match proxy.local_address(&instance) {
        Some(to) => tokio::time::timeout(proxy.connect_timeout(), TcpStream::connect(to)).await,
        None => Ok(Err(std::io::Error::other("no endpoint"))),
    };
    let mut tcp = match connected {
        Ok(Ok(s)) => s,
        _ => {
            proxy.metrics.count("inbound", TunnelRefusal::Unreachable.as_str());
            let detail = format!("{host} does not accept connections");
            if !http {
                proxy.telemetry.tcp(report(parties, "UF", splice::Moved::default(), Some(host)));
            }
            let reply = TunnelReply::Refused { reason: TunnelRefusal::Unreachable, detail };
            let _ = frame::write_last(&mut send, &reply).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if frame::write(&mut send, &TunnelReply::Accepted).await.is_err() {
        return;
    }
    proxy.metrics.count("inbound", "ok");
    if http {
        // Every request is seen (reported, traced, and decided when a policy applies).
        let stream = tokio::io::join(recv, send);
        super::authz::serve_http(proxy.clone(), parties, instance, tcp, stream).await;
        return;
    }
    let (moved, result) = splice::tcp_quic(&mut tcp, &mut send, &mut recv).await;
    // `mesh_proxy_bytes_total` counts what the caller sent as `sent`; Istio's `sent` is
    // what the instance sent (`moved.sent`, from the TCP side into the tunnel).
    proxy.metrics.moved("inbound", splice::Moved { sent: moved.received, received: moved.sent });
    let flags = if result.is_err() { "UC" } else { "-" };
    proxy.telemetry.tcp(report(parties, flags, moved, Some(host)));
}

/// The instance the header may reach, or why not (a `tcp` service's policy decides here;
/// an `http` service's requests are decided one by one when served).
fn check(proxy: &Proxy, peer: &CertInfo, h: &TunnelHeader, http: bool) -> Result<Target, (TunnelRefusal, String)> {
    if h.version != TunnelHeader::VERSION {
        return Err((TunnelRefusal::Malformed, format!("tunnel header version {} is not 1", h.version)));
    }
    let too_long = [&h.service, &h.source_node, &h.trace_id].iter().any(|s| s.len() > TunnelHeader::MAX_NAME)
        || h.source_service.as_ref().is_some_and(|s| s.len() > TunnelHeader::MAX_NAME);
    if too_long {
        return Err((TunnelRefusal::Malformed, "a header field is too long".to_owned()));
    }
    if h.source_node != peer.id.node {
        return Err((
            TunnelRefusal::Forged,
            format!("the header says it comes from {} but the certificate is {}'s", h.source_node, peer.id.node),
        ));
    }
    let tables = proxy.tables.load();
    if let Some(source) = &h.source_service {
        let whole_service = mesh_proto::service::ServiceName::parse(source).is_some_and(|n| n.subset.is_none());
        let hosts = whole_service && tables.targets(source).iter().any(|t| t.node == peer.id.node);
        if !hosts {
            return Err((TunnelRefusal::Forged, format!("{} does not host the service {source}", peer.id.node)));
        }
    }
    let Some(instance) =
        tables.targets(&h.service).into_iter().find(|t| t.node == proxy.node && t.port == h.port).cloned()
    else {
        return Err((TunnelRefusal::NoInstance, format!("no instance of {} on port {} here", h.service, h.port)));
    };
    let caller = crate::policy::Caller { node: &peer.id.node, service: h.source_service.as_deref() };
    proxy.admit(&h.service, http, &caller).map_err(|why| (TunnelRefusal::Denied, why))?;
    Ok(instance)
}
