//! The serving side of peer RPC: every member connection (dialled or accepted; requests
//! flow both ways) is served here and handed to membership for its datagrams; joins are
//! served here.
//!
//! Must not: decide who may join or renew (the signer does) or which tunnel may open (the
//! proxy does).

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::wire::{BucketDigest, CaKeyReply, ClockReply, Holds, JoinRequest, MeshRequest, SyncPush};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::PeerError;
use crate::drain::DrainWatcher;
use crate::identity::signer::Signer;
use crate::membership::sync::{self, Callee};
use crate::membership::Exchange;
use crate::proxy::Proxy;
use crate::store::{wall_ms, Store};
use crate::transport::{close, frame, Peer};

/// What serving a member's requests needs besides the connection.
#[derive(Clone)]
pub struct Services {
    pub signer: Arc<Signer>,
    pub store: Store,
    pub exchange: Arc<Exchange>,
    pub proxy: Arc<Proxy>,
    /// Held by each tunnel: a drain waits for them (up to `drain_timeout`).
    pub drain: DrainWatcher,
}

/// Serves every member connection and hands it to membership; serves joins. Until the
/// drain starts.
pub async fn dispatch(
    mut joins: mpsc::Receiver<quinn::Connection>,
    mut conns: mpsc::Receiver<Peer>,
    members: mpsc::Sender<Peer>,
    services: Services,
    drain: DrainWatcher,
) {
    let mut handlers = JoinSet::new();
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
            // After a handover the successor serves this node: the caller opens the
            // stream again on a new connection. Otherwise it tries another node.
            let code = if draining.is_handover() { close::MOVED } else { close::SHUTDOWN };
            let _ = send.reset(quinn::VarInt::from_u32(code));
            let _ = recv.stop(quinn::VarInt::from_u32(code));
            continue;
        };
        let info = peer.info.clone();
        let conn = peer.conn.clone();
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
                    let served = serve_sync(&store, &exchange, &buckets, &members, &mut send, &mut recv).await;
                    if let Err(e) = served {
                        tracing::debug!(peer = %info.id, error = %e, "anti-entropy exchange failed");
                    }
                }
                MeshRequest::Holds { key } => {
                    let _ = frame::write_last(&mut send, &holds(&store, &key)).await;
                }
                MeshRequest::Push { entries } => {
                    let (entries, _) = sync::decode(entries);
                    let _ = tokio::task::spawn_blocking(move || store.merge(entries, wall_ms())).await;
                }
                MeshRequest::Clock => {
                    let _ = frame::write_last(&mut send, &ClockReply { wall_ms: wall_ms() }).await;
                }
                MeshRequest::CaKey { fingerprint } => {
                    let reply = match signer.ca_key_for(&info, fingerprint) {
                        Ok(key) => CaKeyReply::Key(key),
                        Err(why) => {
                            tracing::warn!(peer = %info.id, %why, "refused a request for a CA key");
                            CaKeyReply::Refused(why)
                        }
                    };
                    let _ = frame::write_last(&mut send, &reply).await;
                }
                MeshRequest::GoAway => {
                    tracing::info!(peer = %info.id, "the peer handed over to a new process: reconnecting to it");
                    proxy.moved_away(&conn);
                }
                MeshRequest::Traffic => {
                    let _ = frame::write_last(&mut send, &proxy.telemetry().summary()).await;
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

/// The callee's side of a sync, after the request frame: the session over the stream.
async fn serve_sync(
    store: &Store,
    exchange: &Exchange,
    buckets: &[BucketDigest],
    members: &[u8],
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), PeerError> {
    let (mut session, summary, theirs) = Callee::on_request(&store.view(), buckets, members, exchange.ours());
    exchange.received(theirs);
    frame::write(send, &summary).await.map_err(PeerError::Send)?;
    // The caller finishes its stream after its last push; one exchange brings at most
    // SYNC_MAX_BYTES (the rest comes next time, once this part is merged).
    let mut total = 0;
    while let Ok((push, size)) = frame::read_sized::<SyncPush>(recv, frame::LARGE_MAX).await {
        session.on_push(push);
        total += size;
        if total >= super::SYNC_MAX_BYTES {
            tracing::warn!(total, "an anti-entropy exchange reached its size limit; the rest is left for the next");
            let _ = recv.stop(quinn::VarInt::from_u32(close::DONE));
            break;
        }
    }
    let (batches, received) = session.finish(&store.view());
    for batch in &batches {
        frame::write(send, batch).await.map_err(PeerError::Send)?;
    }
    let _ = send.finish();
    merge(store, received.entries).await
}

/// Merges entries that arrived from a peer, off the runtime.
pub(super) async fn merge(store: &Store, entries: Vec<crate::store::entry::Entry>) -> Result<(), PeerError> {
    if entries.is_empty() {
        return Ok(());
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.merge(entries, wall_ms()))
        .await
        .map_err(|e| PeerError::Task(e.to_string()))?
        .map_err(|e| PeerError::Store(e.to_string()))?;
    Ok(())
}

/// The answer to `Holds { key }`: which revision of `key` this node holds.
pub fn holds(store: &Store, key: &str) -> Holds {
    match store.view().entry(key) {
        Some(e) => Holds { revision: Some(e.revision), version: e.version.0, deleted: e.deleted },
        None => Holds { revision: None, version: 0, deleted: false },
    }
}

/// Serves one joining node: one request, one answer.
pub async fn serve_join(conn: quinn::Connection, signer: Arc<Signer>) {
    let remote = conn.remote_address();
    let served = async {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let (request, _) =
            frame::read_sized::<JoinRequest>(&mut recv, frame::JOIN_MAX).await.map_err(PeerError::Receive)?;
        let answer = tokio::task::spawn_blocking(move || signer.join(request))
            .await
            .map_err(|e| PeerError::Task(e.to_string()))?;
        frame::write_last(&mut send, &answer).await.map_err(PeerError::Send)?;
        // Let the joiner read the answer and close.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        Ok::<(), PeerError>(())
    };
    let deadline = crate::transport::JOIN_LIFETIME;
    let result = tokio::time::timeout(deadline, served).await.unwrap_or(Err(PeerError::Timeout(deadline)));
    if let Err(e) = result {
        tracing::warn!(%remote, error = %e, "join connection failed");
    }
}
