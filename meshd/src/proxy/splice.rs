//! Moving bytes both ways between a TCP connection and a QUIC stream (or a second TCP
//! connection), carrying half-close through: a side that finishes writing is seen as
//! EOF by the other, which may go on sending. An error on either way ends both: the
//! QUIC stream is reset and the TCP connection closed with RST, so neither end takes a
//! broken connection for a finished one.
//!
//! One 64 KiB buffer per way for the connection's life; QUIC to TCP writes the chunks
//! quinn hands over, without copying them again. Flow control is QUIC's (per stream) and
//! the kernel's: nothing here buffers more than one read.
//!
//! Must not: buffer more than one read per way.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUF: usize = 64 * 1024;

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
    let (mut r, mut w) = tcp.split();
    let result = {
        let up = async {
            let mut buf = vec![0u8; BUF];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    send.finish().map_err(io::Error::other)?;
                    return Ok::<_, io::Error>(());
                }
                send.write_all(&buf[..n]).await.map_err(io::Error::other)?;
                moved.sent += n as u64;
            }
        };
        let down = async {
            let mut received = 0u64;
            let result = async {
                while let Some(chunk) = recv.read_chunk(BUF, true).await.map_err(io::Error::other)? {
                    w.write_all(&chunk.bytes).await?;
                    received += chunk.bytes.len() as u64;
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
