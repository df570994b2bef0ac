//! The asking side of peer RPC: join a mesh, renew a certificate, run an anti-entropy
//! exchange, ask which revision a member holds, push a large entry, open a tunnel.
//!
//! Must not: act on an answer beyond handing it back (the caller decides), or wait
//! without a deadline (every read has `frame::READ_TIMEOUT`, and callers bound the rest).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::wire::{
    ClockReply, Holds, JoinRequest, JoinResponse, MeshRequest, RenewResponse, SyncEntries, SyncSummary, TunnelHeader,
    TunnelReply,
};
use tokio::task::JoinSet;

use super::server::merge;
use super::PeerError;
use crate::membership::sync::{Caller, Stats};
use crate::membership::Exchange;
use crate::store::entry::Entry;
use crate::store::Store;
use crate::transport::frame::FrameError;
use crate::transport::{close, frame, Peer, Transport};

/// One request, one answer, on a new stream to the member at `addr`.
async fn ask<T: serde::de::DeserializeOwned>(
    transport: &Transport,
    addr: SocketAddr,
    request: &MeshRequest,
) -> Result<T, PeerError> {
    let peer = transport.connection_to(addr).await?;
    let (mut send, mut recv) = peer.conn.open_bi().await?;
    frame::write_last(&mut send, request).await.map_err(PeerError::Send)?;
    // Every answer asked for this way is small (holds, clock, a certificate, a key).
    frame::read_sized(&mut recv, frame::SMALL_MAX).await.map(|(t, _)| t).map_err(PeerError::Receive)
}

/// Asks the signer at `addr` to renew this node's certificate.
pub async fn renew(transport: &Transport, addr: SocketAddr, csr: Vec<u8>) -> Result<RenewResponse, PeerError> {
    ask(transport, addr, &MeshRequest::Renew { csr }).await
}

/// `meshd join`: dials the signer on `mesh-join/1` with its CA pinned, sends the request
/// and returns the answer.
pub async fn join(
    signer: SocketAddr,
    tls: rustls::ClientConfig,
    request: JoinRequest,
) -> Result<JoinResponse, PeerError> {
    let setup = |detail: String| PeerError::Signer { addr: signer, detail };
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| setup(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(crate::transport::transport_config(crate::transport::MIN_STREAMS_PER_PEER)));
    let bind: SocketAddr = if signer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| setup(e.to_string()))?;
    let conn = endpoint
        .connect_with(client, signer, "mesh")
        .map_err(|e| setup(e.to_string()))?
        .await
        .map_err(|e| setup(e.to_string()))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_last(&mut send, &request).await.map_err(PeerError::Send)?;
    let answer = frame::read_sized(&mut recv, frame::SMALL_MAX).await.map(|(t, _)| t).map_err(PeerError::Receive);
    conn.close(quinn::VarInt::from_u32(close::DONE), b"joined");
    endpoint.wait_idle().await;
    answer
}

/// One anti-entropy exchange with the member at `addr`, as the caller: the sync session
/// over one stream, then what arrived merged into the store.
pub async fn sync(
    transport: &Transport,
    store: &Store,
    exchange: &Exchange,
    addr: SocketAddr,
) -> Result<Stats, PeerError> {
    let peer = transport.connection_to(addr).await?;
    let (mut send, mut recv) = peer.conn.open_bi().await?;
    let (mut session, request) = Caller::open(&store.view(), exchange.ours());
    frame::write(&mut send, &request).await.map_err(PeerError::Send)?;
    let summary: SyncSummary = frame::read(&mut recv).await.map_err(PeerError::Receive)?;
    let (pushes, theirs) = session.on_summary(&store.view(), summary);
    exchange.received(theirs);
    let last = pushes.len().saturating_sub(1);
    for (i, push) in pushes.iter().enumerate() {
        let written =
            if i == last { frame::write_last(&mut send, push).await } else { frame::write(&mut send, push).await };
        written.map_err(PeerError::Send)?;
    }
    // The callee finishes its stream after the entries asked for; one exchange carries
    // at most SYNC_MAX_BYTES (the next one brings the rest).
    let mut total = 0;
    while let Ok((chunk, size)) = frame::read_sized::<SyncEntries>(&mut recv, frame::LARGE_MAX).await {
        session.on_entries(chunk);
        total += size;
        if total >= super::SYNC_MAX_BYTES {
            tracing::debug!(%addr, total, "anti-entropy exchange at its size limit; the rest comes next time");
            break;
        }
    }
    let (received, stats) = session.finish();
    merge(store, received.entries).await?;
    Ok(stats)
}

/// Pushes one entry too large for a datagram to the member at `addr`, on a stream.
/// Best effort: anti-entropy repairs a push that does not arrive.
pub async fn push(transport: Arc<Transport>, addr: SocketAddr, entry: Arc<Entry>) {
    let Ok(peer) = transport.connection_to(addr).await else { return };
    let Ok((mut send, _recv)) = peer.conn.open_bi().await else { return };
    let Ok(bytes) = entry.encode() else { return };
    let _ = frame::write_last(&mut send, &MeshRequest::Push { entries: vec![bytes] }).await;
}

/// Asks every member in `members` which revision of `key` it holds (1 s each, in
/// parallel). None for a member that did not answer.
pub async fn holds(
    transport: &Arc<Transport>,
    members: Vec<(String, SocketAddr)>,
    key: &str,
) -> Vec<(String, Option<Holds>)> {
    // A member answers within milliseconds; one that cannot in a second is reported
    // unreachable (`route apply --wait` polls again).
    const DEADLINE: Duration = Duration::from_secs(1);
    let mut asks = JoinSet::new();
    for (name, addr) in members {
        let transport = transport.clone();
        let request = MeshRequest::Holds { key: key.to_owned() };
        asks.spawn(async move {
            let answer = tokio::time::timeout(DEADLINE, ask::<Holds>(&transport, addr, &request)).await;
            (name, answer.ok().and_then(Result::ok))
        });
    }
    let mut out = Vec::new();
    while let Some(Ok(answer)) = asks.join_next().await {
        out.push(answer);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The offset of the member at `addr`'s clock from this node's, in ms (positive: it is
/// ahead), estimated as NTP does from one round trip: its time against the middle of
/// the round trip. Also the round trip, which bounds the estimate's error.
pub async fn clock_offset(transport: &Transport, addr: SocketAddr) -> Result<(i64, Duration), PeerError> {
    let sent = crate::store::wall_ms();
    let started = std::time::Instant::now();
    let reply: ClockReply = ask(transport, addr, &MeshRequest::Clock).await?;
    let rtt = started.elapsed();
    let middle = sent as i128 + rtt.as_millis() as i128 / 2;
    let offset = (i128::from(reply.wall_ms) - middle).clamp(i64::MIN.into(), i64::MAX.into()) as i64;
    Ok((offset, rtt))
}

/// Asks the signer at `addr` for the key of the CA root with `fingerprint` (this node
/// must be a signer).
pub async fn ca_key(transport: &Transport, addr: SocketAddr, fingerprint: [u8; 32]) -> Result<Vec<u8>, String> {
    match ask::<mesh_proto::wire::CaKeyReply>(transport, addr, &MeshRequest::CaKey { fingerprint }).await {
        Ok(mesh_proto::wire::CaKeyReply::Key(key)) => Ok(key),
        Ok(mesh_proto::wire::CaKeyReply::Refused(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}

/// Opens a tunnel on `peer`'s connection: the header, then the peer's verdict. On
/// success the streams carry the connection's bytes.
pub async fn open_tunnel(
    peer: &Peer,
    header: TunnelHeader,
) -> Result<(quinn::SendStream, quinn::RecvStream), PeerError> {
    let (mut send, mut recv) = peer.conn.open_bi().await?;
    frame::write(&mut send, &MeshRequest::Tunnel(header)).await.map_err(PeerError::Send)?;
    match frame::read::<TunnelReply>(&mut recv).await.map_err(PeerError::Receive)? {
        TunnelReply::Accepted => Ok((send, recv)),
        TunnelReply::Refused { reason, .. } => Err(PeerError::Refused(reason)),
    }
}

/// Tells the member on `peer` that this process handed over to its successor.
pub async fn go_away(peer: &Peer) -> Result<(), PeerError> {
    let (mut send, _recv) = peer.conn.open_bi().await?;
    frame::write_last(&mut send, &MeshRequest::GoAway).await.map_err(PeerError::Send)
}

/// Whether a request failed because the member's process handed over to its successor
/// ([`close::MOVED`]): it may be sent again on a new connection to the same address.
pub fn moved(e: &PeerError) -> bool {
    let code = quinn::VarInt::from_u32(close::MOVED);
    match e {
        PeerError::Send(FrameError::Write(quinn::WriteError::Stopped(c))) => *c == code,
        PeerError::Receive(FrameError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c)))) => {
            *c == code
        }
        _ => false,
    }
}

/// The largest traffic summary accepted from a member.
const SUMMARY_MAX: usize = 1024 * 1024;

/// Asks the member at `addr` for its traffic summary.
pub async fn traffic(transport: &Transport, addr: SocketAddr) -> Result<mesh_proto::traffic::Summary, PeerError> {
    let peer = transport.connection_to(addr).await?;
    let (mut send, mut recv) = peer.conn.open_bi().await?;
    frame::write_last(&mut send, &MeshRequest::Traffic).await.map_err(PeerError::Send)?;
    frame::read_sized(&mut recv, SUMMARY_MAX).await.map(|(t, _)| t).map_err(PeerError::Receive)
}
