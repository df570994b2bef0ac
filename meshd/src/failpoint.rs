//! Failure injection for the tests of supervision: `MESHD_FAILPOINT=NAME[:COUNT]` makes
//! [`hit`]`(NAME)` panic (the first COUNT times; every time without a count), so a test
//! can make one part of a real meshd process fail and watch what the rest does.
//!
//! Compiled into debug builds only: in a release build [`hit`] is empty and the variable
//! is ignored.
//!
//! Must not: do anything in a release build.

/// Panics here if the failpoint `name` is armed.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(armed) = std::env::var("MESHD_FAILPOINT") else { return };
    let (point, count) = match armed.split_once(':') {
        Some((p, c)) => (p.to_owned(), c.parse::<u64>().unwrap_or(u64::MAX)),
        None => (armed.clone(), u64::MAX),
    };
    if point == name && HITS.fetch_add(1, Ordering::Relaxed) < count {
        panic!("failpoint {name} hit (MESHD_FAILPOINT)");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
