//! A hybrid logical clock: versions that follow wall time closely but never go
//! backwards, even when the wall clock does, and that move past every version this node
//! has seen from others, so a local write always supersedes what it replaced.
//!
//! Sans-IO: the wall time (milliseconds since the Unix epoch) is passed in. A version is
//! one `u64`: the upper 48 bits are milliseconds, the lower 16 a counter for events in
//! the same millisecond (a counter overflow carries into the milliseconds, which keeps
//! the order).
//!
//! Must not: read a clock (the time is passed in), or accept a remote clock far ahead.

use serde::{Deserialize, Serialize};

const LOGICAL_BITS: u32 = 16;

/// A point in hybrid logical time. Ordered; `Hlc::ZERO` precedes every real version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    /// The first version at wall time `millis`.
    pub fn from_millis(millis: u64) -> Hlc {
        Hlc(millis << LOGICAL_BITS)
    }

    /// The wall-clock part, in milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The counter within one millisecond.
    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.millis(), self.logical())
    }
}

/// A remote version too far ahead of this node's wall clock to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a version {ahead_ms} ms ahead of this node's clock (limit {limit_ms} ms): is a clock wrong?")]
pub struct TooFarAhead {
    pub ahead_ms: u64,
    pub limit_ms: u64,
}

/// The clock of one node.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Hlc,
    max_ahead_ms: u64,
}

impl Clock {
    /// How far ahead of the local wall clock a remote version may be. A host whose clock
    /// runs further ahead would win every last-writer-wins race for as long as its lead
    /// lasts, so its writes are refused (and counted) instead. NTP keeps real hosts
    /// within milliseconds.
    pub const DEFAULT_MAX_AHEAD_MS: u64 = 60_000;

    /// A clock that has issued or seen nothing later than `last` (0 for a new store;
    /// the newest stored version on reopen).
    pub fn new(last: Hlc) -> Clock {
        Clock { last, max_ahead_ms: Self::DEFAULT_MAX_AHEAD_MS }
    }

    pub fn with_max_ahead(mut self, ms: u64) -> Clock {
        self.max_ahead_ms = ms;
        self
    }

    /// A new version for a local event at wall time `wall_ms`: later than every version
    /// issued or observed before.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let next = Hlc::from_millis(wall_ms).max(Hlc(self.last.0.saturating_add(1)));
        self.last = next;
        next
    }

    /// Takes note of a version seen from another node, so that later local versions
    /// follow it. Refuses one too far ahead of `wall_ms`.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Result<(), TooFarAhead> {
        let ahead_ms = remote.millis().saturating_sub(wall_ms);
        if ahead_ms > self.max_ahead_ms {
            return Err(TooFarAhead { ahead_ms, limit_ms: self.max_ahead_ms });
        }
        self.last = self.last.max(remote);
        Ok(())
    }

    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_the_wall_clock_when_it_moves_forward() {
        let mut c = Clock::new(Hlc::ZERO);
        assert_eq!(c.now(1000), Hlc::from_millis(1000));
        assert_eq!(c.now(2000), Hlc::from_millis(2000));
    }

    #[test]
    fn never_goes_backwards_when_the_wall_clock_does() {
        let mut c = Clock::new(Hlc::ZERO);
        let a = c.now(5_000);
        let b = c.now(1_000); // the wall clock jumped back 4 s
        let d = c.now(1_001);
        assert!(a < b && b < d);
        assert_eq!(b.millis(), 5_000, "stays on the highest time seen, counting events");
        assert_eq!((b.logical(), d.logical()), (1, 2));
    }

    #[test]
    fn a_remote_clock_ahead_pulls_local_versions_past_it() {
        let mut c = Clock::new(Hlc::ZERO);
        let remote = Hlc(Hlc::from_millis(10_500).0 + 7);
        c.observe(remote, 10_000).expect("500 ms ahead is fine");
        let next = c.now(10_001);
        assert!(next > remote, "{next} must follow {remote}");
        assert_eq!(next.millis(), 10_500);
    }

    #[test]
    fn a_remote_clock_far_ahead_is_refused_and_does_not_move_the_clock() {
        let mut c = Clock::new(Hlc::ZERO).with_max_ahead(1_000);
        let err = c.observe(Hlc::from_millis(100_000), 10_000).expect_err("90 s ahead");
        assert_eq!(err.ahead_ms, 90_000);
        assert_eq!(c.now(10_000), Hlc::from_millis(10_000));
    }

    #[test]
    fn counter_overflow_carries_into_the_milliseconds() {
        let mut c = Clock::new(Hlc(Hlc::from_millis(7).0 + 0xffff));
        let next = c.now(7);
        assert_eq!(next, Hlc::from_millis(8));
    }

    proptest! {
        /// Whatever the wall clock and remote versions do, local versions strictly grow
        /// and follow every accepted remote version.
        #[test]
        fn monotonic_under_any_wall_clock(steps in proptest::collection::vec((0u64..1_000_000, proptest::option::of(0u64..1_100_000)), 1..200)) {
            let mut c = Clock::new(Hlc::ZERO);
            let mut prev = Hlc::ZERO;
            let mut seen = Hlc::ZERO;
            for (wall, remote) in steps {
                if let Some(r) = remote {
                    if c.observe(Hlc::from_millis(r), wall).is_ok() {
                        seen = seen.max(Hlc::from_millis(r));
                    }
                }
                let v = c.now(wall);
                prop_assert!(v > prev);
                prop_assert!(v > seen);
                prev = v;
            }
        }
    }
}
