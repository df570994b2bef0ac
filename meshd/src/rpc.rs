//! Requests on QUIC streams: serving `mesh/1` members' requests and `mesh-join/1` joins,
//! and calling other members. One bidirectional stream per request: one frame each way.
//!
//! Must not: decide policy (who may join, renew or open a tunnel is the signer's and the
//! proxy's call), or trust a name the handshake did not prove.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::wire::{JoinRequest, JoinResponse, MeshRequest, RenewResponse};
use tokio::task::JoinSet;

use crate::identity::signer::Signer;
use crate::store::Store;
use crate::transport::{close, frame, Peer, Transport, TransportError};

/// What serving a member's requests needs besides the connection.
#[derive(Clone)]
pub struct Services {
    pub signer: Arc<Signer>,
    pub store: Store,
    pub exchange: Arc<crate::membership::Exchange>,
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Held by each tunnel: a drain waits for them (up to `drain_timeout`).
    pub drain: crate::drain::DrainWatcher,
}

/// Serves every member connection (dialled or accepted: requests flow both ways) and
/// hands it to membership for its datagrams; serves joins. Until the drain starts.
pub async fn dispatch(
    mut joins: tokio::sync::mpsc::Receiver<quinn::Connection>,
    mut conns: tokio::sync::mpsc::Receiver<crate::transport::Peer>,
    members: tokio::sync::mpsc::Sender<crate::transport::Peer>,
    services: Services,
    drain: crate::drain::DrainWatcher,
) {
    let mut handlers = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(peer) = conns.recv() => {
                handlers.spawn(serve_peer(peer.clone(), services.clone()));
                if members.send(peer).await.is_err() {
                    break;
                }
            }
            Some(conn) = joins.recv() => { handlers.spawn(serve_join(conn, services.signer.clone())); }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            _ = drain.signaled() => break,
            else => break,
        }
    }
    // Each connection's server refuses new work once the drain starts and ends with its
    // connection; the tunnels it started hold the drain themselves.
    handlers.detach_all();
}

/// Serves a member's requests until the connection closes. Once a drain starts, new
/// streams are reset at once (the caller tries another node without waiting), while the
/// tunnels already running hold the drain open until they end.
pub async fn serve_peer(peer: Peer, services: Services) {
    let draining = services.drain.signal();
    let mut services = Some(services);
    let mut requests = JoinSet::new();
    loop {
        let (mut send, mut recv) = tokio::select! {
            stream = peer.conn.accept_bi() => match stream {
                Ok(s) => s,
                Err(_) => break,
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => continue,
            _ = draining.signaled(), if services.is_some() => {
                services = None;
                continue;
            }
        };
        let Some(services) = &services else {
            let _ = send.reset(quinn::VarInt::from_u32(crate::transport::close::SHUTDOWN));
            let _ = recv.stop(quinn::VarInt::from_u32(crate::transport::close::SHUTDOWN));
            continue;
        };
        let info = peer.info.clone();
        let Services { signer, store, exchange, proxy, drain } = services.clone();
        requests.spawn(async move {
            let request: MeshRequest = match frame::read(&mut recv).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer = %info.id, error = %e, "dropped a malformed request");
                    let _ = send.reset(quinn::VarInt::from_u32(1));
                    return;
                }
            };
            match request {
                MeshRequest::Renew { csr } => {
                    let answer = tokio::task::spawn_blocking(move || signer.renew(&info, &csr)).await;
                    if let Ok(answer) = answer {
                        let _ = frame::write_last(&mut send, &answer).await;
                    }
                }
                MeshRequest::Sync { buckets, members } => {
                    if let Err(e) =
                        crate::membership::serve_sync(&store, &exchange, buckets, members, &mut send, &mut recv).await
                    {
                        tracing::debug!(peer = %info.id, error = %e, "anti-entropy exchange failed");
                    }
                }
                MeshRequest::Holds { key } => {
                    let _ = frame::write_last(&mut send, &crate::membership::holds(&store, &key)).await;
                }
                MeshRequest::Push { entries } => {
                    let (entries, _) = crate::membership::sync::decode(entries);
                    let _ = tokio::task::spawn_blocking(move || store.merge(entries, crate::store::wall_ms())).await;
                }
                MeshRequest::Tunnel(header) => {
                    // Its own task, holding the drain: the tunnel outlives this
                    // dispatcher when a drain starts, until it ends or the deadline.
                    tokio::spawn(async move {
                        crate::proxy::inbound::serve(proxy, &info, header, send, recv).await;
                        drop(drain);
                    });
                }
            }
        });
    }
    requests.shutdown().await;
}

/// Serves one joining node: one request, one answer.
pub async fn serve_join(conn: quinn::Connection, signer: Arc<Signer>) {
    let remote = conn.remote_address();
    let served = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let request: JoinRequest = frame::read(&mut recv).await.map_err(|e| e.to_string())?;
        let answer = tokio::task::spawn_blocking(move || signer.join(request)).await.map_err(|e| e.to_string())?;
        frame::write_last(&mut send, &answer).await.map_err(|e| e.to_string())?;
        // Let the joiner read the answer and close.
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        Ok::<(), String>(())
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(30), served).await.unwrap_or(Err("timed out".to_owned())) {
        tracing::warn!(%remote, error = %e, "join connection failed");
    }
}

/// Asks the signer at `addr` to renew this node's certificate.
pub async fn renew_at(transport: &Transport, addr: SocketAddr, csr: Vec<u8>) -> Result<RenewResponse, String> {
    let peer = transport.connection_to(addr).await.map_err(|e: TransportError| e.to_string())?;
    let (mut send, mut recv) = peer.conn.open_bi().await.map_err(|e| e.to_string())?;
    frame::write_last(&mut send, &MeshRequest::Renew { csr }).await.map_err(|e| e.to_string())?;
    frame::read(&mut recv).await.map_err(|e| e.to_string())
}

/// `meshd join`: dials the signer on `mesh-join/1` with its CA pinned, sends the request
/// and returns the answer.
pub async fn join(signer: SocketAddr, tls: rustls::ClientConfig, request: JoinRequest) -> Result<JoinResponse, String> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(crate::transport::transport_config()));
    let bind: SocketAddr =
        if signer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| "bind".to_owned())?;
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect_with(client, signer, "mesh")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("cannot reach the signer at {signer}: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    frame::write_last(&mut send, &request).await.map_err(|e| e.to_string())?;
    let answer = frame::read(&mut recv).await.map_err(|e| e.to_string());
    conn.close(quinn::VarInt::from_u32(close::DONE), b"joined");
    endpoint.wait_idle().await;
    answer
}
