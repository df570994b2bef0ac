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

/// Reads one frame.
pub async fn read<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, FrameError> {
    let read = async {
        let mut header = [0u8; 4];
        recv.read_exact(&mut header).await?;
        let mut body = vec![0u8; wire::body_len(header)?];
        recv.read_exact(&mut body).await?;
        Ok(wire::decode(&body)?)
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| FrameError::Timeout(READ_TIMEOUT))?
}

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
