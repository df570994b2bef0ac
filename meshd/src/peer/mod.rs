//! Peer RPC, both sides: requests between members on `mesh/1` connections and joins on
//! `mesh-join/1`. One bidirectional stream per request; frames from `transport::frame`.
//! [`server`] answers what members and joiners ask (renewals, syncs, holds, pushes,
//! tunnels, joins); [`client`] asks it (join, renew, sync, holds, push, tunnel open);
//! [`renew`] keeps this node's certificate fresh through the client.
//!
//! Must not: decide policy (who may join, renew or open a tunnel is the signer's and the
//! proxy's call), or trust a name the handshake did not prove.

pub mod client;
pub mod renew;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::wire::TunnelRefusal;

use crate::transport::frame::FrameError;
use crate::transport::TransportError;

/// The most one anti-entropy exchange carries each way; what differs beyond it comes in
/// the next exchange (the buckets merged in this one agree by then).
pub const SYNC_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Why a request to a peer, or the serving of one, failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection to the peer.
    #[error(transparent)]
    Connect(#[from] TransportError),
    /// The connection would not open a stream.
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// Writing a frame failed.
    #[error("cannot send: {0}")]
    Send(FrameError),
    /// Reading a frame failed (or it did not decode).
    #[error("no answer: {0}")]
    Receive(FrameError),
    /// The peer refused a tunnel.
    #[error("the peer refused the tunnel: {0:?}")]
    Refused(TunnelRefusal),
    /// A join's signer could not be reached.
    #[error("cannot reach the signer at {addr}: {detail}")]
    Signer { addr: SocketAddr, detail: String },
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Merging what arrived into the store failed.
    #[error("store: {0}")]
    Store(String),
    /// A task this request ran on failed (it panicked or was cancelled).
    #[error("internal: {0}")]
    Task(String),
}
