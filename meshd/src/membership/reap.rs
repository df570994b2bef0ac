//! Reaping: when a member has been dead or gone for `reap_after`, the entries it owned
//! (`node/NAME/...`) are deleted, by one signer only: only a signer may delete another
//! node's entries (every node refuses the tombstones of anyone else). Its key records
//! stay: they verify what it wrote.
//!
//! Must not: reap a member that is alive or suspect, or write anything but tombstones
//! of a departed member's own keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_proto::api::MemberState;
use tokio::time::Instant;

use crate::store::Store;

/// How long each member has been dead or gone, as this node saw it.
#[derive(Debug, Default)]
pub struct Gone {
    since: HashMap<String, Instant>,
}

impl Gone {
    /// Notes the states of a new member list at `now`.
    pub fn observe(&mut self, list: &[(String, MemberState, SocketAddr)], now: Instant) {
        for (name, state, _) in list {
            if matches!(state, MemberState::Dead | MemberState::Left) {
                self.since.entry(name.clone()).or_insert(now);
            } else {
                self.since.remove(name);
            }
        }
    }

    /// The members whose own entries are due for removal: dead or gone for `reap_after`.
    /// Only the alive signer (`is_signer`) with the smallest name reaps, so that one node
    /// writes the tombstones (any other signer would do the same; this saves churn).
    pub fn to_reap(
        &self,
        members: &[(String, MemberState, SocketAddr)],
        now: Instant,
        reap_after: Duration,
        me: &str,
        is_signer: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let reaper = members
            .iter()
            .filter(|(n, s, _)| *s == MemberState::Alive && is_signer(n))
            .map(|(n, _, _)| n.as_str())
            .min();
        if reaper != Some(me) {
            return Vec::new();
        }
        members
            .iter()
            .filter(|(name, state, _)| {
                matches!(state, MemberState::Dead | MemberState::Left)
                    && self.since.get(name).is_some_and(|t| now.duration_since(*t) >= reap_after)
            })
            .map(|(name, _, _)| name.clone())
            .collect()
    }
}

/// Deletes every entry a departed member owned. Blocking: run it off the runtime.
pub fn reap(store: &Store, members: &[String]) {
    let view = store.view();
    for name in members {
        let prefix = format!("node/{name}/");
        let keys: Vec<String> =
            view.prefix(&prefix).filter(|e| !e.key.contains("/key/")).map(|e| e.key.clone()).collect();
        if !keys.is_empty() {
            tracing::info!(node = %name, entries = keys.len(), "reaping a departed member's entries");
        }
        for key in keys {
            if let Err(e) = store.delete(&key) {
                tracing::warn!(%key, error = %e, "cannot reap");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_smallest_alive_signer_reaps_and_only_after_the_timeout() {
        let addr: SocketAddr = "198.18.0.1:7946".parse().expect("addr");
        let hour = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut members = vec![
            ("a".to_owned(), MemberState::Alive, addr),
            ("b".to_owned(), MemberState::Alive, addr),
            ("c".to_owned(), MemberState::Dead, addr),
            ("d".to_owned(), MemberState::Left, addr),
            ("e".to_owned(), MemberState::Alive, addr),
        ];
        let mut gone = Gone::default();
        gone.observe(&members, t0);
        members[4].1 = MemberState::Dead;
        gone.observe(&members, t0 + hour);
        let later = t0 + 72 * hour;
        let all = |_: &str| true;
        assert_eq!(gone.to_reap(&members, later, 72 * hour, "a", all), vec!["c", "d"]);
        assert!(gone.to_reap(&members, later, 72 * hour, "b", all).is_empty(), "b is not the reaper");
        assert!(gone.to_reap(&members, t0 + hour, 72 * hour, "a", all).is_empty(), "too early");
        let not_a = |n: &str| n != "a";
        assert!(gone.to_reap(&members, later, 72 * hour, "a", not_a).is_empty(), "a is no signer");
        assert_eq!(gone.to_reap(&members, later, 72 * hour, "b", not_a), vec!["c", "d"], "b is the first signer");
        members[2].1 = MemberState::Alive;
        gone.observe(&members, later);
        assert_eq!(gone.to_reap(&members, later, 72 * hour, "a", all), vec!["d"], "c came back: its clock resets");
    }
}
