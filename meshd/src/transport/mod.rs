//! The one UDP port: a quinn endpoint serving `mesh/1` between members and
//! `mesh-join/1` for bootstrap, and dialling members with one pooled connection per peer.
//!
//! The peer's identity always comes from its verified certificate
//! ([`Peer::info`]), never from anything it says. A `mesh/1` connection without a client
//! certificate is closed before any stream is read. This module knows nothing of
//! services or routes: every member connection, dialled or accepted, goes to the
//! `new_conns` channel given to [`Transport::new`]; joins to the one given to
//! [`Transport::serve`].
//!
//! Must not: know about services or routes, or read a stream of a peer whose certificate
//! failed.

pub mod frame;
pub mod socket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::drain::DrainWatcher;
use crate::identity::{cert, CertInfo, Identity, IdentityError};

/// QUIC application error codes when meshd closes a connection.
pub mod close {
    /// Draining: reconnect elsewhere.
    pub const SHUTDOWN: u32 = 0x100;
    /// `mesh/1` without a client certificate.
    pub const NO_CLIENT_CERT: u32 = 0x101;
    /// The peer was removed from the mesh.
    pub const REVOKED: u32 = 0x102;
    /// Done (a join, an RPC client).
    pub const DONE: u32 = 0x103;
    /// Gossip says the peer died or left.
    pub const GONE: u32 = 0x104;
    /// Over a connection limit: try again shortly.
    pub const BUSY: u32 = 0x105;
    /// This process handed over to its successor (an upgrade): open the stream again on a
    /// new connection to the same address, which reaches the successor.
    pub const MOVED: u32 = 0x106;
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("QUIC endpoint: {0}")]
    Endpoint(#[from] std::io::Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("QUIC configuration: {0}")]
    Config(String),
    #[error("cannot dial {addr}: {detail}")]
    Dial { addr: SocketAddr, detail: String },
    #[error("{addr} presented no usable certificate: {detail}")]
    NoPeerCert { addr: SocketAddr, detail: String },
    /// A member refused this node's certificate as revoked: it was removed from the mesh
    /// and dials nobody any more.
    #[error("this node was removed from the mesh: it no longer connects to members")]
    Removed,
}

/// A connected, authenticated member.
#[derive(Clone)]
pub struct Peer {
    pub info: CertInfo,
    pub conn: quinn::Connection,
    pub since: SystemTime,
    pub outbound: bool,
}

impl Peer {
    pub fn name(&self) -> &str {
        &self.info.id.node
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    alpn: &'static str,
    direction: &'static str,
    result: &'static str,
}

/// Transport metrics, under `mesh_transport_`.
#[derive(Clone, Default)]
pub struct Metrics {
    handshakes: Family<HandshakeLabels, Counter>,
    refused: Family<ReasonLabel, Counter>,
    handover: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.sub_registry_with_prefix("transport").register(
            "handshakes",
            "QUIC handshakes, by ALPN, direction and result",
            m.handshakes.clone(),
        );
        registry.sub_registry_with_prefix("transport").register(
            "refused_connections",
            "Inbound connections refused or retried before any work, by reason: handshakes (too many at once), retry (an address validation asked for under load), joins or joins_per_address (mesh-join/1 limits), join_lifetime (a join connection held too long)",
            m.refused.clone(),
        );
        registry.sub_registry_with_prefix("transport").register(
            "handover_datagrams",
            "During an upgrade, datagrams of the previous process's connections that this one passed on to it (passed), or could not (dropped: QUIC resends them)",
            m.handover.clone(),
        );
        m
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    fn count(&self, alpn: &'static str, direction: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.handshakes.get_or_create(&HandshakeLabels { alpn, direction, result }).inc();
    }
}

/// Handshakes in progress beyond which a client whose address is not validated is sent
/// a QUIC Retry first (a spoofed source cannot answer it), and beyond which new ones are
/// refused outright.
pub const RETRY_ABOVE: usize = 64;
pub const MAX_HANDSHAKES: usize = 1024;
/// `mesh-join/1` connections (no client certificate: anyone may open one) open at once,
/// in all and per source address, and how long one may stay open.
pub const MAX_JOINS: usize = 64;
pub const MAX_JOINS_PER_ADDRESS: usize = 4;
pub const JOIN_LIFETIME: Duration = Duration::from_secs(10);

/// The join connections open now, in all and per source address.
#[derive(Default)]
struct Joins {
    open: Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
}

impl Joins {
    /// A place for one more join connection from `ip`, or the reason there is none.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<JoinTicket, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= MAX_JOINS {
            return Err("joins");
        }
        let from = open.1.entry(ip).or_insert(0);
        if *from >= MAX_JOINS_PER_ADDRESS {
            return Err("joins_per_address");
        }
        *from += 1;
        open.0 += 1;
        Ok(JoinTicket { joins: self.clone(), ip })
    }
}

/// Held while a join connection is open.
struct JoinTicket {
    joins: Arc<Joins>,
    ip: std::net::IpAddr,
}

impl Drop for JoinTicket {
    fn drop(&mut self) {
        let mut open = self.joins.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

pub struct Transport {
    joins: Arc<Joins>,
    endpoint: quinn::Endpoint,
    socket: Arc<socket::MeshSocket>,
    identity: Arc<Identity>,
    pool: Mutex<HashMap<String, Peer>>,
    metrics: Metrics,
    /// Every new connection, inbound or outbound, for membership to read its datagrams.
    connections: Option<mpsc::Sender<Peer>>,
    /// Set once a member refuses this node's certificate as revoked.
    removed: std::sync::OnceLock<SocketAddr>,
}

/// How long a dial may take before the peer counts as unreachable: a lost peer must not
/// hold a caller for the 30 s idle timeout.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The UDP socket buffers meshd asks for: a burst of tunnel traffic must not overflow
/// the kernel's default (about 200 KiB, three 64 KiB datagrams), or loss shrinks the
/// congestion window and the path MTU.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Sizes the UDP socket's buffers: beyond `net.core.rmem_max` when allowed to
/// (CAP_NET_ADMIN), else as far as that limit.
pub fn size_socket_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    let got = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0);
    if got < SOCKET_BUFFER {
        tracing::info!(
            receive_buffer = got,
            wanted = SOCKET_BUFFER,
            "the UDP receive buffer is smaller than wanted; raise net.core.rmem_max for bulk tunnel traffic"
        );
    }
}

/// Applies the mesh's revocation list as snapshots bring it: new handshakes refuse
/// removed nodes, and their live connections close. Until the drain starts.
pub async fn apply_revocations(
    mut snapshots: crate::state::SnapshotRx,
    transport: Arc<Transport>,
    drain: DrainWatcher,
) {
    let mut applied = None;
    loop {
        let parts = snapshots.borrow_and_update().parts.clone();
        if applied.as_ref() != Some(&parts.revoked) {
            transport.identity().revocations.replace(parts.revoked.clone());
            transport.close_revoked();
            applied = Some(parts.revoked.clone());
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = drain.signaled() => return,
        }
    }
}

/// Whether the peer closed a connection because this node's certificate is revoked: in
/// the handshake (TLS alert certificate_revoked, carried as QUIC CRYPTO_ERROR 0x100 + 44)
/// or later, when the revocation reached it ([`close::REVOKED`]).
fn refused_as_revoked(e: &quinn::ConnectionError) -> bool {
    const CERTIFICATE_REVOKED: u8 = 44;
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn::TransportErrorCode::crypto(CERTIFICATE_REVOKED)
        }
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code == quinn::VarInt::from_u32(close::REVOKED),
        _ => false,
    }
}

/// The largest UDP payload meshd sends or accepts, and where path MTU discovery stops:
/// as large as a jumbo-frame network allows, less what one GSO send must fit. quinn
/// sends up to 10 datagrams in one `sendmsg`, the kernel refuses a batch over 64 KiB,
/// and quinn takes that refusal for a lost MTU probe: with 8,952-byte datagrams every
/// full batch was dropped (`bench-tunnel`: 99 of 1.47M datagrams lost, MTU knocked down
/// to 1,200 by black-hole detection). 10 x 6,500 fits.
pub const MAX_UDP_PAYLOAD: u16 = 6500;

/// Tunnels a peer may have open to this node at once when the proxy's limit is lower.
pub const MIN_STREAMS_PER_PEER: u32 = 4096;

/// Keepalives keep NAT bindings and idle pooled connections open; a peer silent for the
/// idle timeout is gone. A peer may open `streams` tunnels at once; more wait for one to
/// end.
pub fn transport_config(streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))));
    // Tunnels: one bidirectional stream per proxied connection, as many as a listener
    // admits (proxy.max_connections). Each stream may have 2 MiB in flight and the
    // connection 64 MiB in all: bounded memory per peer, and enough window for a
    // 10 Gbit/s path at 50 ms.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams.max(MIN_STREAMS_PER_PEER)));
    t.stream_receive_window(quinn::VarInt::from_u32(2 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    // Path MTU discovery searches past Ethernet's 1500: a jumbo-frame network (9000,
    // as in most clouds' VPCs) carries four times fewer packets, each sealed, sent and
    // acknowledged, for the same bytes; on a 1500-byte network the lost probes cost
    // nothing and it settles near 1452.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // Gossip rides QUIC datagrams.
    t.datagram_receive_buffer_size(Some(1024 * 1024));
    t.datagram_send_buffer_size(1024 * 1024);
    t
}

impl Transport {
    /// Starts the endpoint on `socket` (already bound by `app`). Every new connection is
    /// also sent to `new_conns`, when given. Each peer may open `streams` tunnels at once
    /// (see [`transport_config`]).
    pub fn new(
        socket: std::net::UdpSocket,
        identity: Arc<Identity>,
        metrics: Metrics,
        new_conns: Option<mpsc::Sender<Peer>>,
        streams: u32,
    ) -> Result<Transport, TransportError> {
        Transport::with_generation(socket, rand::random(), None, identity, metrics, new_conns, streams)
    }

    /// [`Transport::new`], issuing connection IDs that start with `generation` (see
    /// [`socket`]): an upgrade's new process picks one its predecessor does not use, and
    /// passes the predecessor's datagrams on to it (`previous`: its generation and where
    /// to) from the first one it reads.
    pub fn with_generation(
        socket: std::net::UdpSocket,
        generation: u8,
        previous: Option<(u8, std::os::unix::net::UnixDatagram)>,
        identity: Arc<Identity>,
        metrics: Metrics,
        new_conns: Option<mpsc::Sender<Peer>>,
        streams: u32,
    ) -> Result<Transport, TransportError> {
        let server_tls = identity.server_config()?;
        let quic_server =
            QuicServerConfig::try_from(Arc::new(server_tls)).map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(Arc::new(transport_config(streams)));
        let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Config("no async runtime".to_owned()))?;
        let mut config = quinn::EndpointConfig::default();
        config.max_udp_payload_size(MAX_UDP_PAYLOAD).map_err(|e| TransportError::Config(e.to_string()))?;
        config.cid_generator(move || Box::new(socket::Cids::new(generation)));
        let count = |reason| metrics.handover.get_or_create(&ReasonLabel { reason }).clone();
        let socket = Arc::new(socket::MeshSocket::new(
            runtime.wrap_udp_socket(socket)?,
            generation,
            count("passed"),
            count("dropped"),
        ));
        if let Some((previous, to)) = previous {
            socket.route_previous(previous, to)?;
        }
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(config, Some(server), socket.clone(), runtime)?;
        endpoint.set_default_client_config(mesh_client(&identity, streams)?);
        Ok(Transport {
            joins: Arc::default(),
            endpoint,
            socket,
            identity,
            pool: Mutex::new(HashMap::new()),
            metrics,
            connections: new_conns,
            removed: std::sync::OnceLock::new(),
        })
    }

    /// The endpoint's socket, which an upgrade shares between two processes.
    pub fn socket(&self) -> &Arc<socket::MeshSocket> {
        &self.socket
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// Dials `addr` on `mesh/1` and keeps the connection in the pool under the peer's
    /// verified name.
    pub async fn dial(&self, addr: SocketAddr) -> Result<Peer, TransportError> {
        if self.is_removed() {
            return Err(TransportError::Removed);
        }
        let dial_err = |detail: String| TransportError::Dial { addr, detail };
        let connecting = self.endpoint.connect(addr, "mesh").map_err(|e| dial_err(e.to_string()))?;
        let conn = match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.metrics.count("mesh/1", "outbound", false);
                if refused_as_revoked(&e) {
                    self.note_removed(addr);
                    return Err(TransportError::Removed);
                }
                return Err(dial_err(e.to_string()));
            }
            Err(_) => {
                self.metrics.count("mesh/1", "outbound", false);
                return Err(dial_err(format!("no answer within {DIAL_TIMEOUT:?}")));
            }
        };
        self.metrics.count("mesh/1", "outbound", true);
        let info = peer_info(&conn).map_err(|detail| TransportError::NoPeerCert { addr, detail })?;
        let peer = Peer { info, conn, since: SystemTime::now(), outbound: true };
        self.remember(&peer);
        Ok(peer)
    }

    /// Whether a member has refused this node's certificate as revoked.
    pub fn is_removed(&self) -> bool {
        self.removed.get().is_some()
    }

    /// Whether a pooled connection is open. One that a member closed because this node's
    /// certificate is revoked tells this node it was removed: in QUIC the client's
    /// handshake completes before the server has checked the client's certificate, so
    /// the refusal arrives as the close of a connection that `dial` returned.
    fn is_live(&self, p: &Peer) -> bool {
        match p.conn.close_reason() {
            None => true,
            Some(reason) => {
                if refused_as_revoked(&reason) {
                    self.note_removed(p.conn.remote_address());
                }
                false
            }
        }
    }

    /// A member at `by` refused this node's certificate as revoked: say so once, loudly,
    /// and dial nobody from now on (every member would refuse it the same way).
    fn note_removed(&self, by: SocketAddr) {
        if self.removed.set(by).is_ok() {
            tracing::error!(
                refused_by = %by,
                node = %self.identity.node,
                "THIS NODE WAS REMOVED FROM THE MESH (meshctl node remove): members refuse its certificate \
                 as revoked. It no longer connects to anyone. To bring it back, stop meshd, empty its \
                 data_dir, and join again with a new token (meshctl token create on a signer, then meshd join)"
            );
        }
    }

    /// A live pooled connection to the member at `addr`, or a new one.
    pub async fn connection_to(&self, addr: SocketAddr) -> Result<Peer, TransportError> {
        let pooled = self.lock().values().find(|p| p.conn.remote_address() == addr && self.is_live(p)).cloned();
        match pooled {
            Some(p) => Ok(p),
            None => self.dial(addr).await,
        }
    }

    /// The live pooled connection to the member named `name`.
    pub fn peer_named(&self, name: &str) -> Option<Peer> {
        self.lock().get(name).filter(|p| self.is_live(p)).cloned()
    }

    /// Every live pooled connection.
    pub fn peers(&self) -> Vec<Peer> {
        let mut pool = self.lock();
        pool.retain(|_, p| self.is_live(p));
        let mut peers: Vec<Peer> = pool.values().cloned().collect();
        peers.sort_by(|a, b| a.name().cmp(b.name()));
        peers
    }

    /// Closes every connection with a peer whose certificate is now revoked.
    pub fn close_revoked(&self) {
        let mut pool = self.lock();
        pool.retain(|_, p| {
            if self.identity.revocations.is_revoked(&p.info) {
                tracing::warn!(peer = %p.name(), "closing the connection of a removed node");
                p.conn.close(quinn::VarInt::from_u32(close::REVOKED), b"removed from the mesh");
                false
            } else {
                true
            }
        });
    }

    /// Closes every connection with the member `name` (it died or was removed): the
    /// streams on it end now rather than at the idle timeout.
    pub fn close_peer(&self, name: &str, why: &str) {
        let peer = self.lock().remove(name);
        if let Some(p) = peer {
            tracing::info!(peer = %name, why, "closing the connection");
            p.conn.close(quinn::VarInt::from_u32(close::GONE), why.as_bytes());
        }
    }

    /// Stops offering `conn` for new work (its peer's process handed over to a
    /// successor): the next [`Transport::connection_to`] dials again. Open streams on it
    /// finish; the peer closes it.
    pub fn forget(&self, conn: &quinn::Connection) {
        self.lock().retain(|_, p| p.conn.stable_id() != conn.stable_id());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, peer: &Peer) {
        if let Some(tx) = &self.connections {
            if tx.try_send(peer.clone()).is_err() {
                tracing::warn!(peer = %peer.name(), "connection queue full: its gossip datagrams are not read");
            }
        }
        let mut pool = self.lock();
        let replace =
            pool.get(peer.name()).is_none_or(|old| old.conn.close_reason().is_some() || !old.outbound || peer.outbound);
        if replace {
            pool.insert(peer.name().to_owned(), peer.clone());
        }
    }

    /// Accepts connections until the drain starts. Members on `mesh/1` join the pool
    /// (and go to `new_conns`, like the connections this node dials); joining nodes on
    /// `mesh-join/1` go to `joins`.
    pub async fn serve(self: Arc<Self>, joins: mpsc::Sender<quinn::Connection>, drain: DrainWatcher) {
        let mut handshakes = JoinSet::new();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => incoming,
                _ = drain.signaled() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            };
            let Some(incoming) = incoming else { break };
            if handshakes.len() >= MAX_HANDSHAKES {
                self.metrics.refuse("handshakes");
                incoming.refuse();
                continue;
            }
            if handshakes.len() >= RETRY_ABOVE && !incoming.remote_address_validated() && incoming.may_retry() {
                self.metrics.refuse("retry");
                let _ = incoming.retry();
                continue;
            }
            let this = self.clone();
            let joins = joins.clone();
            handshakes.spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        this.metrics.count("unknown", "inbound", false);
                        tracing::debug!(%remote, error = %e, "inbound handshake failed");
                        return;
                    }
                };
                match alpn(&conn).as_deref() {
                    Some(mesh_proto::wire::ALPN_MESH) => match peer_info(&conn) {
                        // The verifier refused revoked peers already; this catches a
                        // revocation that landed during the handshake.
                        Ok(info) if this.identity.revocations.is_revoked(&info) => {
                            this.metrics.count("mesh/1", "inbound", false);
                            conn.close(quinn::VarInt::from_u32(close::REVOKED), b"removed from the mesh");
                        }
                        Ok(info) => {
                            this.metrics.count("mesh/1", "inbound", true);
                            let peer = Peer { info, conn, since: SystemTime::now(), outbound: false };
                            this.remember(&peer);
                        }
                        Err(detail) => {
                            this.metrics.count("mesh/1", "inbound", false);
                            tracing::warn!(%remote, %detail, "mesh/1 without a client certificate: closed");
                            conn.close(quinn::VarInt::from_u32(close::NO_CLIENT_CERT), b"client certificate required");
                        }
                    },
                    Some(mesh_proto::wire::ALPN_JOIN) => match this.joins.admit(remote.ip()) {
                        Err(reason) => {
                            this.metrics.count("mesh-join/1", "inbound", false);
                            this.metrics.refuse(reason);
                            conn.close(quinn::VarInt::from_u32(close::BUSY), b"too many joins: try again shortly");
                        }
                        Ok(ticket) => {
                            this.metrics.count("mesh-join/1", "inbound", true);
                            // A join is one request and one answer: the connection is
                            // closed after JOIN_LIFETIME whatever the client does.
                            let (c, metrics) = (conn.clone(), this.metrics.clone());
                            tokio::spawn(async move {
                                tokio::select! {
                                    _ = c.closed() => {}
                                    _ = tokio::time::sleep(JOIN_LIFETIME) => {
                                        metrics.refuse("join_lifetime");
                                        c.close(quinn::VarInt::from_u32(close::DONE), b"join took too long");
                                    }
                                }
                                drop(ticket);
                            });
                            let _ = joins.send(conn).await;
                        }
                    },
                    _ => conn.close(quinn::VarInt::from_u32(close::DONE), b"unknown protocol"),
                }
            });
        }
        handshakes.shutdown().await;
        // No new connections; the open ones carry the tunnels that are finishing (and
        // membership's `left` announcement). [`Transport::close`] ends them.
        self.endpoint.set_server_config(None);
        drop(drain);
    }

    /// Tells every peer this node is going (so none waits for the idle timeout) and
    /// gives the close a moment to leave.
    pub async fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(close::SHUTDOWN), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_millis(300), self.endpoint.wait_idle()).await;
    }
}

fn mesh_client(identity: &Arc<Identity>, streams: u32) -> Result<quinn::ClientConfig, TransportError> {
    let tls = identity.client_config()?;
    let quic = QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport_config(streams)));
    Ok(client)
}

/// The ALPN a connection agreed on.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<HandshakeData>().ok()?.protocol
}

/// The verified identity of the peer on `conn`.
pub fn peer_info(conn: &quinn::Connection) -> Result<CertInfo, String> {
    let certs = conn
        .peer_identity()
        .ok_or_else(|| "no certificate".to_owned())?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "no certificate".to_owned())?;
    let first = certs.first().ok_or_else(|| "empty certificate chain".to_owned())?;
    cert::inspect(first).map_err(|e| e.to_string())
}
