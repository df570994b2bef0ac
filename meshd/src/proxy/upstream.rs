//! The upstream side of the proxy: reaching one instance (through a new stream on the
//! pooled `mesh/1` connection to its node, or directly when it runs on this host) and,
//! for HTTP, the pooled HTTP/1.1 connections to instances that requests are sent on.
//! Both the TCP splice (`outbound`) and the HTTP engine (`http`) go through here; this
//! file decides nothing about routing.
//!
//! Must not: decide where a request goes.

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_proto::wire::TunnelHeader;
use tokio::net::TcpStream;

use super::{Destination, Proxy};
use crate::peer::{client, PeerError};
use crate::routing::plan::{Failure, InstanceKey};
use crate::routing::Target;

use super::Body;

/// Where a connection went.
pub(super) enum Upstream {
    Local(TcpStream),
    /// A tunnel stream, and the connection it rides (its `stable_id`).
    Tunnel(quinn::SendStream, quinn::RecvStream, usize),
}

/// Connects to one instance; the error is the metric's reason.
pub(super) async fn reach(
    proxy: &Proxy,
    target: &Target,
    dest: &Destination,
    trace_id: &str,
) -> Result<Upstream, &'static str> {
    let timeout = proxy.connect_timeout();
    let tables = proxy.tables.load();
    // The source service is claimed only while this node hosts it (the destination
    // checks, and would refuse the tunnel as forged).
    let source = dest.source_service.clone().filter(|s| tables.targets(s).iter().any(|t| t.node == proxy.node));
    if target.node == proxy.node {
        // The destination is this host: its policy is decided here.
        let caller = crate::policy::Caller { node: &proxy.node, service: source.as_deref() };
        let http = tables.services.get(&target.service).is_some_and(|s| s.protocol == "http");
        if proxy.admit(&target.service, http, &caller).is_err() {
            return Err("refused_denied");
        }
        let Some(to) = proxy.local_address(target) else { return Err("local_refused") };
        return match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(Upstream::Local(s))
            }
            Ok(Err(_)) => Err("local_refused"),
            Err(_) => Err("local_timeout"),
        };
    }
    let peer = match proxy.transport.peer_named(&target.node) {
        Some(p) => p,
        None => {
            let Some(addr) = tables.nodes.get(&target.node) else { return Err("node_unknown") };
            match tokio::time::timeout(timeout, proxy.transport.connection_to(*addr)).await {
                Ok(Ok(p)) if p.name() == target.node => p,
                Ok(Ok(_)) => return Err("node_mismatch"),
                Ok(Err(_)) | Err(_) => return Err("node_unreachable"),
            }
        }
    };
    let header = TunnelHeader {
        version: TunnelHeader::VERSION,
        service: target.service.clone(),
        port: target.port,
        source_node: proxy.node.clone(),
        source_service: source,
        trace_id: trace_id.to_owned(),
    };
    let mut peer = peer;
    let mut opened = tokio::time::timeout(timeout, client::open_tunnel(&peer, header.clone())).await;
    if let Ok(Err(e)) = &opened {
        if client::moved(e) {
            // The node's process handed over to its successor (an upgrade): the same
            // request on a new connection to the same address reaches the successor.
            proxy.transport.forget(&peer.conn);
            let Some(addr) = tables.nodes.get(&target.node) else { return Err("node_unknown") };
            peer = match tokio::time::timeout(timeout, proxy.transport.connection_to(*addr)).await {
                Ok(Ok(p)) if p.name() == target.node => p,
                Ok(Ok(_)) => return Err("node_mismatch"),
                Ok(Err(_)) | Err(_) => return Err("node_unreachable"),
            };
            opened = tokio::time::timeout(timeout, client::open_tunnel(&peer, header)).await;
        }
    }
    match opened {
        Ok(Ok((send, recv))) => Ok(Upstream::Tunnel(send, recv, peer.conn.stable_id())),
        Ok(Err(PeerError::Refused(reason))) => Err(refused(reason)),
        Ok(Err(PeerError::Send(_))) => Err("tunnel_write"),
        Ok(Err(PeerError::Receive(_))) => Err("tunnel_reply"),
        Ok(Err(_)) => Err("tunnel_open"),
        Err(_) => Err("tunnel_timeout"),
    }
}

fn refused(reason: mesh_proto::wire::TunnelRefusal) -> &'static str {
    use mesh_proto::wire::TunnelRefusal::*;
    match reason {
        NoInstance => "refused_no_instance",
        Forged => "refused_forged",
        Denied => "refused_denied",
        Unreachable => "refused_unreachable",
        Malformed => "refused_malformed",
    }
}

/// Idle HTTP/1.1 connections to instances (over tunnel streams, or local TCP), kept for
/// later requests: a pooled request pays no tunnel header round trip and no connect.
#[derive(Default)]
pub struct Pool {
    /// Each with the tunnel connection it rides (`None`: a local connection).
    idle: std::sync::Mutex<Idle>,
    /// Tunnel connections whose peer handed over: a connection busy then is not kept
    /// when its response ends. The last few only.
    moved: std::sync::Mutex<std::collections::VecDeque<usize>>,
}

/// Moved-away connections remembered.
const MOVED_KEPT: usize = 64;

/// Idle connections by instance, each with the tunnel connection it rides.
type Idle = std::collections::HashMap<InstanceKey, Vec<(Option<usize>, SendRequest<Body>)>>;

/// Connections kept per instance.
const POOLED: usize = 64;

impl Pool {
    /// A ready connection to `key`; closed ones are dropped, busy ones stay.
    fn take(&self, key: &InstanceKey) -> Option<(Option<usize>, SendRequest<Body>)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        list.retain(|(_, s)| !s.is_closed());
        let ready = list.iter().position(|(_, s)| s.is_ready())?;
        Some(list.swap_remove(ready))
    }

    /// Keeps `sender` (it becomes ready again once its response body has been read).
    fn put(&self, key: &InstanceKey, conn: Option<usize>, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_some_and(|c| self.moved.lock().unwrap_or_else(|p| p.into_inner()).contains(&c)) {
            return;
        }
        let list = idle.entry(key.clone()).or_default();
        if list.len() < POOLED && !sender.is_closed() {
            list.push((conn, sender));
        }
    }

    /// Drops the idle connections that ride tunnels on the connection `conn` (its peer's
    /// process handed over): each ends its stream, and the old process's drain ends.
    pub(super) fn forget_connection(&self, conn: usize) {
        {
            let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
            if moved.len() >= MOVED_KEPT {
                moved.pop_front();
            }
            moved.push_back(conn);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in idle.values_mut() {
            list.retain(|(c, _)| *c != Some(conn));
        }
    }
}

/// One try: on a pooled connection to the instance when one is ready, else on a new
/// stream (or local connection) with HTTP/1.1 over it.
pub(super) async fn send(
    proxy: &Proxy,
    target: &Target,
    instance: &InstanceKey,
    dest: &Destination,
    mut request: Request<Body>,
    trace: &str,
) -> Result<Response<Incoming>, Failure> {
    while let Some((conn, mut sender)) = proxy.pool.take(instance) {
        match sender.try_send_request(request).await {
            Ok(resp) => {
                proxy.pool.put(instance, conn, sender);
                return Ok(resp);
            }
            // Closed before the request went out (the instance dropped an idle
            // connection): the request comes back; try the next, or a new one.
            Err(mut e) => match e.take_message() {
                Some(r) => request = r,
                None => return Err(Failure::Reset),
            },
        }
    }
    let (io, tunnel): (Box<dyn Io>, _) = match reach(proxy, target, dest, trace).await {
        Ok(Upstream::Local(tcp)) => (Box::new(tcp), None),
        Ok(Upstream::Tunnel(send, recv, conn)) => (Box::new(tokio::io::join(recv, send)), Some(conn)),
        Err(_) => return Err(Failure::Connect),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await.map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(request).await.map_err(|_| Failure::Reset)?;
    proxy.pool.put(instance, tunnel, sender);
    Ok(resp)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
