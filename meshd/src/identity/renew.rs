//! Renewal: at half the certificate's lifetime (counted from issuance, minus up to a
//! tenth for jitter, so a fleet does not renew at once) ask a signer for a new
//! certificate for the same key; a signer renews its own. When no signer answers, retry
//! with backoff, warn in the log at every failure and in `meshctl status`, and shout once
//! less than a fifth of the lifetime is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::wire::RenewResponse;

use super::ca::BACKDATE;
use super::signer::Signer;
use super::{CertInfo, Identity};
use crate::drain::DrainWatcher;
use crate::transport::Transport;

/// When to renew `info`: half its lifetime after issuance, less a jitter of up to a
/// tenth of that half. `jitter` is in [0, 1).
pub fn due(info: &CertInfo, jitter: f64) -> SystemTime {
    let issued = info.not_before + BACKDATE;
    let life = info.not_after.duration_since(issued).unwrap_or_default();
    let half = life / 2;
    issued + half - half.mul_f64(jitter.clamp(0.0, 1.0) / 10.0)
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u16::from_be_bytes(b)) / 65536.0
}

/// Runs until the drain starts.
pub async fn run(
    identity: Arc<Identity>,
    transport: Arc<Transport>,
    signer: Arc<Signer>,
    seeds: Vec<SocketAddr>,
    drain: DrainWatcher,
) {
    loop {
        let current = identity.current();
        let wait = due(&current.info, jitter()).duration_since(SystemTime::now()).unwrap_or_default();
        tracing::debug!(in_secs = wait.as_secs(), "next certificate renewal");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = drain.signaled() => return,
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            match renew_once(&identity, &transport, &signer, &seeds).await {
                Ok(info) => {
                    identity.set_warning(None);
                    tracing::info!(serial = %info.serial, expires = %humantime::format_rfc3339_seconds(info.not_after), "certificate renewed");
                    break;
                }
                Err(e) => {
                    let left = super::remaining(&identity.current().info);
                    let msg = format!(
                        "certificate renewal failing ({e}); it expires in {}",
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    );
                    let life = current.info.not_after.duration_since(current.info.not_before).unwrap_or_default();
                    if left < life / 5 {
                        tracing::error!("{msg}: this node drops out of the mesh when it does");
                    } else {
                        tracing::warn!("{msg}");
                    }
                    identity.set_warning(Some(msg));
                    // Retry at least every minute, and often enough before expiry.
                    let pause = backoff.min(left / 4).max(Duration::from_millis(500));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = drain.signaled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

async fn renew_once(
    identity: &Arc<Identity>,
    transport: &Arc<Transport>,
    signer: &Arc<Signer>,
    seeds: &[SocketAddr],
) -> Result<CertInfo, String> {
    if signer.is_signer() {
        let signer = signer.clone();
        return tokio::task::spawn_blocking(move || signer.renew_self()).await.map_err(|e| e.to_string())?;
    }
    let csr = identity.csr().map_err(|e| e.to_string())?;
    let mut addrs: Vec<SocketAddr> = identity.signer_addrs().iter().filter_map(|a| a.parse().ok()).collect();
    for addr in seeds.iter().copied().chain(signer.known_signers()) {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err("no signer known".to_owned());
    }
    let mut errors = Vec::new();
    for addr in addrs {
        match crate::rpc::renew_at(transport, addr, csr.clone()).await {
            Ok(RenewResponse::Renewed { cert }) => {
                return identity.replace_cert(cert.into()).map_err(|e| e.to_string());
            }
            Ok(RenewResponse::Refused(r)) => errors.push(format!("{addr}: {r}")),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;

    #[test]
    fn due_at_half_life_less_jitter() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            id: SpiffeId::new("d", "n"),
            serial: String::new(),
            key_hash: String::new(),
            not_before: issued - BACKDATE,
            not_after: issued + Duration::from_secs(86_400),
        };
        assert_eq!(due(&info, 0.0), issued + Duration::from_secs(43_200));
        let early = due(&info, 0.999_999);
        assert!(early >= issued + Duration::from_secs(43_200 - 4_320) && early < issued + Duration::from_secs(43_200));
    }
}
