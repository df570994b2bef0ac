//! Rate limits: one token bucket per `[[rate_limit]]` rule on each destination node,
//! shared by every caller the rule names, or one per source with `per_source = true`.
//! A request takes a token from every rule that names its caller; when one bucket is
//! empty the request is refused with how long until a token is back (`retry-after`).
//!
//! Must not: read the clock (the caller passes `now`), or grow without bound: buckets of
//! sources idle for a minute are dropped past [`MAX_BUCKETS`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_proto::policy::PolicySpec;

use super::{names, Caller};

/// Buckets held at most; past it, those untouched for [`IDLE`] are dropped (a full
/// bucket is what a new one would be, so nothing is lost but memory).
pub const MAX_BUCKETS: usize = 10_000;
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Which bucket: the service, the rule's index, and the source with `per_source`.
type Key = (String, usize, Option<String>);

/// The buckets of one node.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<Key, Bucket>,
}

/// A request refused by rule `rule` of `service`'s policy; a token is back after `retry_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub rule: usize,
    pub retry_after: Duration,
}

impl Limiter {
    /// Takes a token for `caller` from each of `policy`'s rate limits that names it, at
    /// `now`; the first empty bucket refuses (and no token is taken from any).
    pub fn take(&mut self, policy: &PolicySpec, caller: &Caller<'_>, now: Instant) -> Result<(), Limited> {
        let matching: Vec<(usize, &mesh_proto::policy::RateLimit)> =
            policy.rate_limit.iter().enumerate().filter(|(_, r)| names(&r.from, caller)).collect();
        if matching.is_empty() {
            return Ok(());
        }
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, b| now.saturating_duration_since(b.at) < IDLE);
        }
        let keys: Vec<Key> =
            matching.iter().map(|(i, r)| (policy.service.clone(), *i, r.per_source.then(|| caller.label()))).collect();
        // Refill every bucket first, then check all, then take: all or nothing.
        for ((_, r), key) in matching.iter().zip(&keys) {
            let burst = f64::from(r.burst());
            let rate = f64::from(r.requests_per_second);
            let b = self.buckets.entry(key.clone()).or_insert(Bucket { tokens: burst, at: now });
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate).min(burst);
            b.at = now;
        }
        for ((i, r), key) in matching.iter().zip(&keys) {
            let tokens = self.buckets.get(key).map_or(0.0, |b| b.tokens);
            if tokens < 1.0 {
                let rate = f64::from(r.requests_per_second);
                let retry_after = Duration::from_secs_f64(((1.0 - tokens) / rate).max(0.001));
                return Err(Limited { rule: *i, retry_after });
            }
        }
        for key in &keys {
            if let Some(b) = self.buckets.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
