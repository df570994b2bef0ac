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
            _ = identity.renew_soon.notified() => {
                // The CA was rotated: renew under the new root within a few seconds
                // (spread, so a fleet does not ask at once).
                let spread = ROTATION_SPREAD.mul_f64(renew::jitter());
                tracing::info!(in_ms = spread.as_millis() as u64, "renewing under the mesh's new CA root");
                tokio::select! {
                    _ = tokio::time::sleep(spread) => {}
                    _ = drain.signaled() => return,
                }
            }
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

/// How far apart nodes renew after a CA rotation.
const ROTATION_SPREAD: Duration = Duration::from_secs(10);

/// Follows the mesh's CA roots as snapshots bring them (and every few seconds, for
/// retirement times): trusts the recorded roots until they retire, adopts a new active
/// root (a signer fetches its key from the signer that rotated) and then renews under it.
pub async fn follow_roots(
    mut snapshots: crate::state::SnapshotRx,
    identity: Arc<Identity>,
    transport: Arc<Transport>,
    signer: Arc<Signer>,
    drain: DrainWatcher,
) {
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let parts = snapshots.borrow_and_update().parts.clone();
        let now = crate::store::wall_ms();
        identity.set_roots(&parts.roots, now);
        let active =
            parts.roots.iter().filter(|r| r.state == identity::records::CaState::Active).max_by_key(|r| r.since_ms);
        if let Some(active) = active.filter(|r| r.cert != identity.ca().der.as_ref()) {
            match adopt(&identity, &transport, &signer, active).await {
                Ok(()) => {
                    identity.set_roots(&parts.roots, now);
                    tracing::warn!(root = %identity.ca_fingerprint(), by = %active.by, "the mesh's CA was rotated: this node trusts the new root and renews under it");
                    identity.renew_soon.notify_one();
                }
                Err(e) => {
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "cannot adopt the mesh's new CA root yet");
                        warned = Some(std::time::Instant::now());
                    }
                }
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = drain.signaled() => return,
        }
    }
}

/// Makes `active` this node's current root; a signer also needs its key.
async fn adopt(
    identity: &Arc<Identity>,
    transport: &Arc<Transport>,
    signer: &Arc<Signer>,
    active: &identity::records::CaRecord,
) -> Result<(), String> {
    let der = rustls_pki_types::CertificateDer::from(active.cert.clone());
    let ca = if signer.is_signer() {
        let addr =
            signer.signer_addr(&active.by).ok_or_else(|| format!("no address known for signer {}", active.by))?;
        let key = client::ca_key(transport, addr, identity::cert::fingerprint_bytes(&der)).await?;
        identity::Ca::with_key(der, &key).map_err(|e| e.to_string())?
    } else {
        identity::Ca::verify_only(der)
    };
    let identity = identity.clone();
    tokio::task::spawn_blocking(move || identity.replace_ca(ca))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
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
