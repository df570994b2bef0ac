//! Renewal timing: at half the certificate's lifetime (counted from issuance, minus up to a
//! tenth for jitter, so a fleet does not renew at once) ask a signer for a new
//! certificate for the same key; a signer renews its own. When no signer answers, retry
//! with backoff, warn in the log at every failure and in `meshctl status`, and shout once
//! less than a fifth of the lifetime is left. The loop that asks is `peer::renew`.
//!
//! Must not: talk to the network (this module only says when, and how urgent).

use std::time::{Duration, SystemTime};

use super::ca::BACKDATE;
use super::CertInfo;

/// When to renew `info`: half its lifetime after issuance, less a jitter of up to a
/// tenth of that half. `jitter` is in [0, 1).
pub fn due(info: &CertInfo, jitter: f64) -> SystemTime {
    let issued = info.not_before + BACKDATE;
    let life = info.not_after.duration_since(issued).unwrap_or_default();
    let half = life / 2;
    issued + half - half.mul_f64(jitter.clamp(0.0, 1.0) / 10.0)
}

/// A random jitter in [0, 1).
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u16::from_be_bytes(b)) / 65536.0
}

/// Whether a failing renewal is urgent: less than a fifth of the lifetime is left.
pub fn urgent(info: &CertInfo, left: Duration) -> bool {
    let life = info.not_after.duration_since(info.not_before).unwrap_or_default();
    left < life / 5
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
            role: None,
        };
        assert_eq!(due(&info, 0.0), issued + Duration::from_secs(43_200));
        let early = due(&info, 0.999_999);
        assert!(early >= issued + Duration::from_secs(43_200 - 4_320) && early < issued + Duration::from_secs(43_200));
    }
}
