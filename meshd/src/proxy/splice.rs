//! Moving bytes both ways between a TCP connection and a QUIC stream (or a second TCP
//! connection), carrying half-close through: a side that finishes writing is seen as
//! EOF by the other, which may go on sending. An error on either way ends both: the
//! QUIC stream is reset and the TCP connection closed with RST, so neither end takes a
//! broken connection for a finished one.
//!
//! TCP to QUIC reads into a buffer of up to 64 KiB that is taken only once the socket
//! has bytes and let go when it has none, and hands what it read to quinn as owned
//! `Bytes` (no second copy); an idle connection holds no buffer. QUIC to TCP takes
//! every chunk quinn holds for the stream (up to [`CHUNKS`]) and writes them in one
//! `writev`: one write per packet would cost a system call and a wake-up of the reader
//! for every 1.4 KB. Flow control is QUIC's (per stream) and the kernel's: nothing here
//! buffers more than one read.
//!
//! Must not: buffer more than one read per way.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most one read from a TCP connection takes.
const BUF: usize = 64 * 1024;
/// A buffer with less room than this left is replaced before the next read.
const MIN_READ: usize = 4 * 1024;
/// The most chunks taken from a QUIC stream for one write.
const CHUNKS: usize = 32;

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the TCP side into the tunnel (or the second connection).
    pub sent: u64,
    /// From the tunnel (or the second connection) out to the TCP side.
    pub received: u64,
}

/// Splices `tcp` with a QUIC stream until both ways are done or one fails.
pub async fn tcp_quic(
    tcp: &mut TcpStream,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> (Moved, io::Result<()>) {
    let mut moved = Moved::default();
    let (r, mut w) = tcp.split();
    let result = {
        let up = async {
            let mut buf = BytesMut::new();
            loop {
                if buf.capacity() < MIN_READ {
                    r.readable().await?;
                    buf = BytesMut::with_capacity(BUF);
                }
                match r.try_read_buf(&mut buf) {
                    Ok(0) => {
                        send.finish().map_err(io::Error::other)?;
                        return Ok::<_, io::Error>(());
                    }
                    Ok(n) => {
                        // The rest of the buffer takes the next read; quinn keeps this
                        // part until the peer acknowledges it.
                        send.write_chunk(buf.split().freeze()).await.map_err(io::Error::other)?;
                        moved.sent += n as u64;
                    }
                    // Nothing to read: let the buffer go until there is.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = BytesMut::new(),
                    Err(e) => return Err(e),
                }
            }
        };
        let down = async {
            let mut received = 0u64;
            let result = async {
                let mut chunks: [Bytes; CHUNKS] = Default::default();
                while let Some(n) = recv.read_chunks(&mut chunks).await.map_err(io::Error::other)? {
                    received += chunks[..n].iter().map(|c| c.len() as u64).sum::<u64>();
                    write_all_chunks(&mut w, &mut chunks[..n]).await?;
                }
                w.shutdown().await
            }
            .await;
            (received, result)
        };
        tokio::pin!(down);
        // Both ways to the end; the first failure ends both.
        let mut up_done = None;
        let mut down_done = None;
        tokio::pin!(up);
        while up_done.is_none() || down_done.is_none() {
            tokio::select! {
                r = &mut up, if up_done.is_none() => {
                    let failed = r.is_err();
                    up_done = Some(r);
                    if failed { break; }
                }
                (n, r) = &mut down, if down_done.is_none() => {
                    moved.received = n;
                    let failed = r.is_err();
                    down_done = Some(r);
                    if failed { break; }
                }
            }
        }
        match (up_done, down_done) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
            _ => Ok(()),
        }
    };
    if result.is_err() {
        abort(tcp);
        let _ = send.reset(quinn::VarInt::from_u32(0));
        let _ = recv.stop(quinn::VarInt::from_u32(0));
    }
    (moved, result)
}

/// Writes every chunk, as few `writev` calls as the socket allows; leaves them empty.
async fn write_all_chunks<W: AsyncWrite + Unpin>(w: &mut W, chunks: &mut [Bytes]) -> io::Result<()> {
    let mut first = 0;
    loop {
        while chunks.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(());
        }
        let mut n = {
            let mut slices = [IoSlice::new(&[]); CHUNKS];
            let count = slices.iter_mut().zip(&chunks[first..]).map(|(s, c)| *s = IoSlice::new(c)).count();
            w.write_vectored(&slices[..count]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for chunk in &mut chunks[first..] {
            let take = n.min(chunk.len());
            chunk.advance(take);
            n -= take;
            if n == 0 {
                break;
            }
        }
    }
}

/// Splices two TCP connections (an instance on this host).
pub async fn tcp_tcp(client: &mut TcpStream, server: &mut TcpStream) -> (Moved, io::Result<()>) {
    match tokio::io::copy_bidirectional_with_sizes(client, server, BUF, BUF).await {
        Ok((sent, received)) => (Moved { sent, received }, Ok(())),
        Err(e) => {
            abort(client);
            abort(server);
            (Moved::default(), Err(e))
        }
    }
}

/// Makes the coming close of `tcp` an RST.
pub fn abort(tcp: &TcpStream) {
    let _ = socket_linger_zero(tcp);
}

fn socket_linger_zero(tcp: &TcpStream) -> io::Result<()> {
    #[allow(deprecated)] // tokio deprecates set_linger because it blocks on close; zero never blocks.
    tcp.set_linger(Some(Duration::ZERO))
}
