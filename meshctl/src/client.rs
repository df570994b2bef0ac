//! An HTTP/1.1 client for meshd's admin API over its Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proto::api::ApiError;
use tokio::net::UnixStream;

/// Talks to one meshd.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// Why a request failed. All are runtime failures (exit 1) unless the daemon said the
/// request itself was bad ([`ClientError::is_usage`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach meshd at {}: {source}\n  {hint}", socket.display())]
    Unreachable { socket: PathBuf, source: std::io::Error, hint: &'static str },
    /// The connection broke or the answer was not HTTP.
    #[error("talking to meshd at {}: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
    /// meshd did not answer within the timeout.
    #[error("meshd at {} did not answer within {}", socket.display(), humantime::format_duration(*timeout))]
    Timeout { socket: PathBuf, timeout: Duration },
    /// meshd answered with an error.
    #[error("meshd refused: {} ({status})", body.detail)]
    Api { status: StatusCode, body: ApiError },
    /// An input file is missing or invalid (its error names the file, line and key).
    #[error("{0}")]
    Input(String),
    /// The request was carried out but its goal was not met (a `--wait` timed out).
    #[error("{0}")]
    Failed(String),
    /// meshd answered with a body this meshctl cannot read (a version mismatch).
    #[error("unexpected answer from meshd: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether the request was at fault (exit 2) rather than the daemon or the machine.
    pub fn is_usage(&self) -> bool {
        match self {
            ClientError::Input(_) => true,
            ClientError::Api { status, .. } => {
                status.is_client_error() && *status != StatusCode::NOT_FOUND && *status != StatusCode::FORBIDDEN
            }
            _ => false,
        }
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into(), timeout: Duration::from_secs(30) }
    }

    /// How long a whole request may take. Default: 30s.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`; a non-2xx answer is returned as [`ClientError::Api`].
    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// `GET path` decoded as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.get(path).await?;
        serde_json::from_slice(&response.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// One request on a fresh connection.
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Response, ClientError> {
        match tokio::time::timeout(self.timeout, self.request_inner(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { socket: self.socket.clone(), timeout: self.timeout }),
        }
    }

    async fn request_inner(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Response, ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            let hint = match source.kind() {
                std::io::ErrorKind::PermissionDenied => "is your user in the meshd group? (or run meshctl with sudo)",
                _ => {
                    "is meshd running? (systemctl status meshd); point meshctl elsewhere with --socket or MESHD_SOCKET"
                }
            };
            ClientError::Unreachable { socket: self.socket.clone(), source, hint }
        })?;
        let protocol = |detail: String| ClientError::Protocol { socket: self.socket.clone(), detail };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| protocol(e.to_string()))?;
        // The connection task ends with the request: it is awaited below, never left behind.
        let conn = tokio::spawn(conn);

        let mut builder = Request::builder().method(method).uri(path).header(hyper::header::HOST, "meshd");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request =
            builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| protocol(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| protocol(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| protocol(e.to_string()))?.to_bytes();
        drop(sender);
        let _ = conn.await;

        if !parts.status.is_success() {
            let api = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| ApiError {
                error: "unknown".to_owned(),
                detail: String::from_utf8_lossy(&body).into_owned(),
            });
            return Err(ClientError::Api { status: parts.status, body: api });
        }
        Ok(Response { status: parts.status, headers: parts.headers, body })
    }
}
