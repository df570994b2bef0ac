//! Health checks: the pure rise/fall state machine, and the probes (HTTP GET, TCP
//! connect) that feed it. Only the node that owns an instance runs its checks.
//!
//! Must not: check an instance another node declared, or write anything but this node's
//! own instance records.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use mesh_proto::service::Check;
use tokio::net::TcpStream;

/// Health with hysteresis: `rise` passes in a row turn an unhealthy instance healthy,
/// `fall` failures in a row turn a healthy one unhealthy, so one slow answer does not
/// flap a service. An instance with a check starts unhealthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    streak: u32,
}

impl Health {
    /// Records one result; returns the new state when it changed.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if passed { rise } else { fall };
        if self.streak >= needed.max(1) {
            self.healthy = passed;
            self.streak = 0;
            return Some(passed);
        }
        None
    }
}

/// Runs one check; Ok(()) if it passed, else why not.
pub async fn probe(check: &Check) -> Result<(), String> {
    let timeout = check.effective_timeout();
    let result = tokio::time::timeout(timeout, async {
        match (&check.http, &check.tcp) {
            (Some(url), _) => http_get(url).await,
            (None, Some(addr)) => TcpStream::connect(addr).await.map(drop).map_err(|e| e.to_string()),
            (None, None) => Err("no check".to_owned()),
        }
    })
    .await;
    result.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// GET `url` (http:// only); 2xx and 3xx pass.
async fn http_get(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "meshd-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string());
    drop(sender);
    conn.abort();
    let status = response?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// The time between checks.
pub fn interval(check: &Check) -> Duration {
    check.interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_streaks() {
        let mut h = Health::default();
        assert!(!h.healthy, "an instance with a check starts unhealthy");
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
        // One failure, then a pass: no flap.
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert!(!h.healthy);
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let status = if req.starts_with("GET /ok") { "200 OK" } else { "503 Service Unavailable" };
                    let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
                });
            }
        });
        let check = |http: Option<String>, tcp: Option<std::net::SocketAddr>| Check {
            http,
            tcp,
            interval: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(2)),
            rise: 1,
            fall: 1,
        };
        assert_eq!(probe(&check(None, Some(addr))).await, Ok(()));
        assert_eq!(probe(&check(Some(format!("http://{addr}/ok")), None)).await, Ok(()));
        let err = probe(&check(Some(format!("http://{addr}/bad")), None)).await.expect_err("503");
        assert!(err.contains("503"), "{err}");
        server.abort();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        assert!(probe(&check(None, Some(gone))).await.is_err());
    }
}
