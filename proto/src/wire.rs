//! Messages between daemons on QUIC streams, and their framing.
//!
//! A frame is a 4-byte big-endian length and that many bytes of postcard. Every message
//! is an enum, so a later version adds variants without breaking older peers' decoding
//! of the ones they know. Decoding is sans-IO ([`decode`]) and fuzzed.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest frame accepted: a batch of store entries during a sync (one entry with its
/// history can reach ~1.3 MiB; batches are cut at 1 MiB otherwise).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// The ALPN between members.
pub const ALPN_MESH: &[u8] = b"mesh/1";
/// The ALPN for joining: the joining node has no certificate yet.
pub const ALPN_JOIN: &[u8] = b"mesh-join/1";

/// Why bytes from a peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

/// The frame for `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The body length a frame header announces, checked against the limit.
pub fn body_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body (without its length header). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// The first frame on a `mesh-join/1` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRequest {
    V1 {
        /// The token's secret.
        secret: [u8; 16],
        /// The name this node asks for (its `node_name`).
        node: String,
        /// A PKCS#10 request for this node's key. Only its key is used: the signer sets
        /// every other field itself.
        csr: Vec<u8>,
    },
}

/// The signer's answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    Granted {
        /// The node certificate (DER).
        cert: Vec<u8>,
        /// The mesh CA certificate (DER).
        ca: Vec<u8>,
        /// The CA's private key (PKCS#8 DER), only for a `--signer` token.
        ca_key: Option<Vec<u8>>,
    },
    Refused(Refusal),
}

/// A request on a `mesh/1` stream, from an authenticated member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshRequest {
    /// A new certificate for the caller's own name, for the key in the CSR.
    Renew { csr: Vec<u8> },
    /// Anti-entropy, push-pull: the caller's bucket digests. The answer is a
    /// [`SyncSummary`]; then the caller sends [`SyncPush`] and reads [`SyncEntries`].
    Sync {
        buckets: Vec<BucketDigest>,
        /// The caller's SWIM member list (encoded by the membership module), so that
        /// membership converges by push-pull too, as memberlist's does.
        members: Vec<u8>,
    },
    /// Which revision of `key` does the callee hold? Answered with [`Holds`].
    Holds { key: String },
    /// Store entries pushed to the callee (too large for a gossip datagram). No answer.
    Push { entries: Vec<Vec<u8>> },
    /// A tunnelled TCP connection to one of the callee's instances. Answered with a
    /// [`TunnelReply`]; after `Accepted` the stream carries the connection's bytes.
    Tunnel(TunnelHeader),
    /// What time is it on the callee? Answered with [`ClockReply`]; the caller estimates
    /// the offset between their clocks from it and the round trip. (Added last: the
    /// variants before it keep their encoding.)
    Clock,
    /// A signer asks another for the key of the CA root with this SHA-256 fingerprint
    /// (after a rotation there). Answered with [`CaKeyReply`]: the key only to a caller
    /// whose certificate carries the signer role.
    CaKey { fingerprint: [u8; 32] },
    /// The callee's traffic summary (the dashboard, `meshctl top` and service discovery
    /// ask on view). Answered with a [`crate::traffic::Summary`].
    Traffic,
    /// The caller's process handed over to its successor (an upgrade): open nothing new
    /// on this connection (its open streams finish); the next connection to the same
    /// address reaches the successor. No answer.
    GoAway,
}

/// The answer to [`MeshRequest::CaKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaKeyReply {
    /// The root's private key, PKCS#8 DER.
    Key(Vec<u8>),
    /// Not a signer's request, or the callee does not hold that root's key.
    Refused(String),
}

/// The answer to [`MeshRequest::Clock`]: the callee's wall clock when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReply {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// The first frame of a tunnel stream. `version` lets a later meshd add fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelHeader {
    pub version: u16,
    /// The service to reach, and the port of its instance on the callee.
    pub service: String,
    pub port: u16,
    /// The calling node, as its certificate names it (the callee checks).
    pub source_node: String,
    /// The caller's local service that opened the connection, when known: the callee
    /// checks that the calling node hosts it.
    pub source_service: Option<String>,
    /// A W3C trace id, hex, for the access logs of both ends.
    pub trace_id: String,
}

impl TunnelHeader {
    pub const VERSION: u16 = 1;
    /// A header with strings longer than this is refused (they are names).
    pub const MAX_NAME: usize = 253;
}

/// The callee's answer to a [`TunnelHeader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelReply {
    /// Connected to the instance: bytes follow.
    Accepted,
    /// Not connected; the caller may try another instance.
    Refused { reason: TunnelRefusal, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelRefusal {
    /// No instance of that service on that port here.
    NoInstance,
    /// The header names a source node or service the caller does not own.
    Forged,
    /// Policy says no.
    Denied,
    /// The instance did not accept the connection.
    Unreachable,
    /// A header version or field this node does not understand.
    Malformed,
}

impl TunnelRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelRefusal::NoInstance => "no_instance",
            TunnelRefusal::Forged => "forged",
            TunnelRefusal::Denied => "denied",
            TunnelRefusal::Unreachable => "unreachable",
            TunnelRefusal::Malformed => "malformed",
        }
    }
}

/// One key bucket's digest: the number of entries and the XOR of their fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    pub count: u64,
    pub xor: u64,
}

/// What identifies an entry: its current write (enough to tell who holds the newer one)
/// and a fingerprint of every revision it holds (two holders of the same current write
/// with different histories exchange theirs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub key: String,
    pub version: u64,
    pub origin: String,
    pub print: u64,
}

/// The callee's writes in the buckets whose digests differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    pub buckets: Vec<u16>,
    pub keys: Vec<KeyVersion>,
    /// The callee's SWIM member list.
    pub members: Vec<u8>,
}

/// The caller's entries the callee lacks (encoded store entries), and the keys it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPush {
    pub entries: Vec<Vec<u8>>,
    pub want: Vec<String>,
}

/// The entries the caller wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEntries {
    pub entries: Vec<Vec<u8>>,
}

/// The answer to [`MeshRequest::Holds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// The revision held, None if the key is unknown.
    pub revision: Option<u64>,
    pub version: u64,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenewResponse {
    Renewed { cert: Vec<u8> },
    Refused(Refusal),
}

/// Why a signer said no.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// No such token here.
    UnknownToken,
    /// The token expired.
    Expired,
    /// The token was redeemed already.
    Used,
    /// Another signer issued the token: redeem it there.
    OtherSigner,
    /// The name is held by another node.
    NameTaken,
    /// The key or node was removed from the mesh.
    Revoked,
    /// This node cannot sign.
    NotSigner,
    /// The request is malformed (a bad CSR, a bad name).
    BadRequest,
    /// The signer failed (its store could not write).
    Internal,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownToken => "unknown token",
            RefusalReason::Expired => "expired",
            RefusalReason::Used => "already used",
            RefusalReason::OtherSigner => "issued by another signer",
            RefusalReason::NameTaken => "name taken",
            RefusalReason::Revoked => "revoked",
            RefusalReason::NotSigner => "not a signer",
            RefusalReason::BadRequest => "bad request",
            RefusalReason::Internal => "signer failure",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let req = JoinRequest::V1 { secret: [1; 16], node: "vm-2".into(), csr: vec![1, 2, 3] };
        let frame = encode(&req);
        let len = body_len(frame[..4].try_into().expect("header")).expect("len");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<JoinRequest>(&frame[4..]), Ok(req));
        assert!(decode::<JoinRequest>(&frame[4..frame.len() - 1]).is_err(), "truncated");
        let mut long = frame[4..].to_vec();
        long.push(0);
        assert!(decode::<JoinRequest>(&long).is_err(), "trailing bytes");
        assert!(decode::<JoinRequest>(&[9, 9, 9]).is_err(), "unknown variant");
        assert_eq!(body_len((MAX_FRAME as u32 + 1).to_be_bytes()), Err(WireError::TooLarge(MAX_FRAME + 1)));
    }
}
