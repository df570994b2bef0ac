//! Keeping this node's certificate fresh: when `identity::renew` says it is due, ask a
//! signer (the ones the identity knows, the seeds, the signers the store announces) for
//! a new certificate for the same key; a signer renews its own. On failure: retry with
//! backoff, warn in the log and in `meshctl status`, and shout when it is urgent.
//!
//! Must not: make a key or a certificate itself (identity and the signer do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::wire::RenewResponse;

use super::client;
use crate::drain::DrainWatcher;
use crate::identity::signer::Signer;
use crate::identity::{self, renew, CertInfo, Identity};
use crate::transport::Transport;

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
        let wait = renew::due(&current.info, renew::jitter()).duration_since(SystemTime::now()).unwrap_or_default();
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
                    let left = identity::remaining(&identity.current().info);
                    let msg = format!(
                        "certificate renewal failing ({e}); it expires in {}",
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    );
                    if renew::urgent(&current.info, left) {
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
        match client::renew(transport, addr, csr.clone()).await {
            Ok(RenewResponse::Renewed { cert }) => {
                return identity.replace_cert(cert.into()).map_err(|e| e.to_string());
            }
            Ok(RenewResponse::Refused(r)) => errors.push(format!("{addr}: {r}")),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}
