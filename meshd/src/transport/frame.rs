//! Reading and writing [`mesh_proto::wire`] frames on QUIC streams, with a size limit and
//! a deadline so a slow or hostile peer cannot hold a task or memory.
//!
//! Must not: read a frame without its size limit and deadline.

use std::time::Duration;

use mesh_proto::wire::{self, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long a peer may take to send one request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the peer sent nothing within {0:?}")]
    Timeout(Duration),
}

/// The largest join request: a CSR and a name, from a host that is not a member yet.
pub const JOIN_MAX: usize = 16 * 1024;
/// The largest small answer (holds, clock, tunnel verdict, a renewed certificate).
pub const SMALL_MAX: usize = 64 * 1024;
/// What one frame may announce at most (store batches, pushes): [`wire::MAX_FRAME`].
pub const LARGE_MAX: usize = wire::MAX_FRAME;

/// Reads one frame of any size up to [`LARGE_MAX`].
pub async fn read<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, FrameError> {
    read_sized(recv, LARGE_MAX).await.map(|(t, _)| t)
}

/// Reads one frame of at most `max` bytes; also returns its size. The buffer grows with
/// the bytes that actually arrive, never to the length a peer merely announces.
pub async fn read_sized<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<(T, usize), FrameError> {
    let read = async {
        let mut header = [0u8; 4];
        recv.read_exact(&mut header).await?;
        let len = wire::body_len(header)?;
        if len > max {
            return Err(FrameError::Wire(WireError::TooLarge(len)));
        }
        let mut body = Vec::with_capacity(len.min(CHUNK));
        let mut chunk = vec![0u8; len.min(CHUNK)];
        while body.len() < len {
            let want = (len - body.len()).min(CHUNK);
            recv.read_exact(&mut chunk[..want]).await?;
            body.extend_from_slice(&chunk[..want]);
        }
        Ok((wire::decode(&body)?, len))
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| FrameError::Timeout(READ_TIMEOUT))?
}

/// How much of a frame is read at a time.
const CHUNK: usize = 64 * 1024;

/// Writes one frame.
pub async fn write<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), FrameError> {
    send.write_all(&wire::encode(msg)).await?;
    Ok(())
}

/// Writes one frame and finishes the stream.
pub async fn write_last<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), FrameError> {
    send.write_all(&wire::encode(msg)).await?;
    send.finish()?;
    Ok(())
}
