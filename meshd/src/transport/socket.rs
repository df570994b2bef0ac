//! The QUIC endpoint's UDP socket, shareable between two meshd processes during an
//! upgrade ([`crate::handover`]).
//!
//! Every connection ID this endpoint issues starts with its process's *generation* byte
//! ([`Cids`]), so a datagram names the process it belongs to. Normally the socket is read
//! directly. During an upgrade both processes hold the same socket: the new one reads it
//! and passes every datagram that names the previous generation to the old process over
//! a Unix datagram socket ([`MeshSocket::route_previous`]); the old one stops reading the
//! UDP socket and takes its datagrams from there ([`MeshSocket::take_forwarded`]), while
//! it still sends on the UDP socket. New connections (Initial packets, whose destination
//! ID the client chose) always go to the new process. This is how the old process's
//! tunnels finish on it while new ones open on its successor, on one UDP port.
//!
//! Must not: look into a datagram beyond its header's destination connection ID.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The length of every connection ID meshd issues: a generation byte and seven random
/// bytes (quinn's default is eight random bytes).
pub const CID_LEN: usize = 8;

/// Issues connection IDs that start with this process's generation.
pub struct Cids {
    generation: u8,
}

impl Cids {
    pub fn new(generation: u8) -> Cids {
        Cids { generation }
    }
}

impl quinn::ConnectionIdGenerator for Cids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        rand::fill(&mut bytes[1..]);
        bytes[0] = self.generation;
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Whose a datagram is, by its destination connection ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This process's (or a new connection's, or one too short to tell).
    Mine,
    /// The previous process's: its connection IDs start with its generation.
    Previous,
}

/// Whose `datagram` is, when the previous process's connection IDs start with
/// `previous`. A long-header Initial or 0-RTT packet carries an ID the client chose, so
/// it starts a connection here; every other packet carries an ID an endpoint here issued.
pub fn owner(datagram: &[u8], previous: u8) -> Owner {
    let Some(&first) = datagram.first() else { return Owner::Mine };
    let dcid_first = if first & 0x80 == 0 {
        // Short header: the ID follows the first byte, at the length this side issues.
        datagram.get(1)
    } else {
        let version = datagram.get(1..5);
        let kind = (first >> 4) & 0x03;
        // Initial (0) and 0-RTT (1), unless version negotiation (version 0).
        if version != Some(&[0, 0, 0, 0]) && kind <= 1 {
            return Owner::Mine;
        }
        match datagram.get(5) {
            Some(&len) if len > 0 => datagram.get(6),
            _ => None,
        }
    };
    match dcid_first {
        Some(&g) if g == previous => Owner::Previous,
        _ => Owner::Mine,
    }
}

/// Where received datagrams come from.
enum Receive {
    /// The UDP socket, all of it.
    Direct,
    /// The UDP socket; the previous process's datagrams are passed on to it.
    Routing { previous: u8, to: std::os::unix::net::UnixDatagram },
    /// A Unix datagram socket that the next process fills: this one has handed over.
    Forwarded { from: tokio::net::UnixDatagram },
}

/// The endpoint's socket. See the module documentation.
pub struct MeshSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    generation: u8,
    /// Where datagrams come from, and the endpoint driver's waker (so that switching
    /// wakes it): one lock per receive.
    receive: Mutex<(Receive, Option<Waker>)>,
    /// Datagrams passed to the previous process, and those it could not take.
    passed: Counter,
    dropped: Counter,
}

impl fmt::Debug for MeshSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshSocket").field("generation", &self.generation).finish_non_exhaustive()
    }
}

/// A forwarded datagram's header: address family, ECN, port, address (16 bytes).
const HEADER: usize = 20;

impl MeshSocket {
    /// `passed` and `dropped` count the datagrams passed on to a previous process, and
    /// those it could not take.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, generation: u8, passed: Counter, dropped: Counter) -> MeshSocket {
        MeshSocket { inner, generation, receive: Mutex::new((Receive::Direct, None)), passed, dropped }
    }

    /// The generation byte this endpoint's connection IDs start with.
    pub fn generation(&self) -> u8 {
        self.generation
    }

    /// From now on, datagrams for connections whose IDs start with `previous` go to `to`.
    pub fn route_previous(&self, previous: u8, to: std::os::unix::net::UnixDatagram) -> io::Result<()> {
        to.set_nonblocking(true)?;
        self.switch(Receive::Routing { previous, to });
        Ok(())
    }

    /// From now on, datagrams come from `from` (the next process passes this one's on);
    /// the UDP socket is left to the next process. Sending is unchanged.
    pub fn take_forwarded(&self, from: std::os::unix::net::UnixDatagram) -> io::Result<()> {
        from.set_nonblocking(true)?;
        let from = tokio::net::UnixDatagram::from_std(from)?;
        self.switch(Receive::Forwarded { from });
        Ok(())
    }

    fn switch(&self, to: Receive) {
        let waker = {
            let mut receive = self.receive.lock().unwrap_or_else(|p| p.into_inner());
            receive.0 = to;
            receive.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Passes the previous process's segments of each batch to it, keeping the rest in
    /// place (a GRO batch may hold datagrams of both processes' connections from one
    /// peer).
    fn route(
        &self,
        previous: u8,
        to: &std::os::unix::net::UnixDatagram,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        n: usize,
    ) {
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            let stride = m.stride.max(1);
            let all_mine =
                (0..m.len).step_by(stride).all(|at| owner(&buf[at..m.len.min(at + stride)], previous) == Owner::Mine);
            if all_mine {
                continue;
            }
            let mut kept = 0;
            let mut at = 0;
            while at < m.len {
                let end = m.len.min(at + stride);
                if owner(&buf[at..end], previous) == Owner::Previous {
                    self.pass(to, m.addr, m.ecn, &buf[at..end]);
                } else {
                    buf.copy_within(at..end, kept);
                    kept += end - at;
                }
                at = end;
            }
            // A short last segment stays last, so every kept one but the last is `stride`.
            m.len = kept;
        }
    }

    fn pass(
        &self,
        to: &std::os::unix::net::UnixDatagram,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        datagram: &[u8],
    ) {
        let mut message = Vec::with_capacity(HEADER + datagram.len());
        message.extend_from_slice(&encode_header(from, ecn));
        message.extend_from_slice(datagram);
        match to.send(&message) {
            Ok(_) => self.passed.inc(),
            // Full or gone: the datagram is lost, as on a congested path; QUIC resends.
            Err(_) => self.dropped.inc(),
        };
    }
}

fn encode_header(from: SocketAddr, ecn: Option<EcnCodepoint>) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[1] = ecn.map_or(0, |e| e as u8);
    h[2..4].copy_from_slice(&from.port().to_be_bytes());
    match from.ip() {
        IpAddr::V4(ip) => {
            h[0] = 4;
            h[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            h[0] = 6;
            h[4..20].copy_from_slice(&ip.octets());
        }
    }
    h
}

fn decode_header(h: &[u8]) -> Option<(SocketAddr, Option<EcnCodepoint>)> {
    let h: &[u8; HEADER] = h.get(..HEADER)?.try_into().ok()?;
    let port = u16::from_be_bytes([h[2], h[3]]);
    let ip = match h[0] {
        4 => IpAddr::V4(Ipv4Addr::new(h[4], h[5], h[6], h[7])),
        6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[4..20]).ok()?)),
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), EcnCodepoint::from_bits(h[1])))
}

impl AsyncUdpSocket for MeshSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.receive.lock().unwrap_or_else(|p| p.into_inner());
        let (receive, waker) = &mut *guard;
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        match receive {
            Receive::Direct => self.inner.poll_recv(cx, bufs, meta),
            Receive::Routing { previous, to } => {
                let n = std::task::ready!(self.inner.poll_recv(cx, bufs, meta))?;
                self.route(*previous, to, bufs, meta, n);
                Poll::Ready(Ok(n))
            }
            Receive::Forwarded { from } => {
                let mut scratch = [0u8; HEADER + crate::transport::MAX_UDP_PAYLOAD as usize + 64];
                let mut n = 0;
                while n < bufs.len().min(meta.len()) {
                    let got = {
                        let mut rb = tokio::io::ReadBuf::new(&mut scratch);
                        match from.poll_recv(cx, &mut rb) {
                            Poll::Ready(Ok(())) => rb.filled().len(),
                            Poll::Ready(Err(e)) if n == 0 => return Poll::Ready(Err(e)),
                            Poll::Ready(Err(_)) | Poll::Pending => break,
                        }
                    };
                    let Some((addr, ecn)) = decode_header(&scratch[..got]) else { continue };
                    let datagram = &scratch[HEADER..got];
                    let len = datagram.len().min(bufs[n].len());
                    bufs[n][..len].copy_from_slice(&datagram[..len]);
                    meta[n] = RecvMeta { addr, len, stride: len, ecn, ..RecvMeta::default() };
                    n += 1;
                }
                if n == 0 {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(n))
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(dcid_first: u8) -> Vec<u8> {
        let mut d = vec![0x40, dcid_first];
        d.extend_from_slice(&[7; 30]);
        d
    }

    fn long(kind: u8, version: [u8; 4], dcid: &[u8]) -> Vec<u8> {
        let mut d = vec![0xc0 | (kind << 4)];
        d.extend_from_slice(&version);
        d.push(dcid.len() as u8);
        d.extend_from_slice(dcid);
        d.extend_from_slice(&[0; 20]);
        d
    }

    #[test]
    fn datagrams_go_to_the_process_whose_generation_their_connection_id_names() {
        let v1 = [0, 0, 0, 1];
        assert_eq!(owner(&short(9), 9), Owner::Previous);
        assert_eq!(owner(&short(10), 9), Owner::Mine);
        // Handshake packets carry an ID the server issued.
        assert_eq!(owner(&long(2, v1, &[9, 1, 2, 3, 4, 5, 6, 7]), 9), Owner::Previous);
        assert_eq!(owner(&long(2, v1, &[8, 1, 2, 3, 4, 5, 6, 7]), 9), Owner::Mine);
        // Initial and 0-RTT carry the client's choice: new connections stay here, even
        // when the random ID happens to start with the previous generation.
        assert_eq!(owner(&long(0, v1, &[9, 1, 2, 3, 4, 5, 6, 7]), 9), Owner::Mine);
        assert_eq!(owner(&long(1, v1, &[9, 1, 2, 3, 4, 5, 6, 7]), 9), Owner::Mine);
        // Version negotiation answers this side's ID.
        assert_eq!(owner(&long(0, [0; 4], &[9, 1]), 9), Owner::Previous);
        // Too short to tell, or empty: here.
        assert_eq!(owner(&[], 9), Owner::Mine);
        assert_eq!(owner(&[0x40], 9), Owner::Mine);
        assert_eq!(owner(&long(2, v1, &[]), 9), Owner::Mine);
        assert_eq!(owner(&[0xe0, 0, 0], 9), Owner::Mine);
    }

    #[test]
    fn a_forwarded_datagram_keeps_its_source_and_ecn() {
        for addr in ["198.18.0.7:4500", "[2001:db8::5]:61000"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            for ecn in [None, Some(EcnCodepoint::Ect0), Some(EcnCodepoint::Ce)] {
                assert_eq!(decode_header(&encode_header(addr, ecn)), Some((addr, ecn)));
            }
        }
        assert_eq!(decode_header(&[5; HEADER]), None);
        assert_eq!(decode_header(&[4; 3]), None);
    }

    #[test]
    fn issued_connection_ids_start_with_the_generation_and_differ() {
        use quinn::ConnectionIdGenerator;
        let mut g = Cids::new(0xab);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(a[0], 0xab);
        assert_eq!(b[0], 0xab);
        assert_ne!(a, b);
    }
}
