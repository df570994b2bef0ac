//! The replicated map in memory: every entry (tombstones included), with its digests
//! and size kept up to date on every merge. The store keeps one and publishes immutable
//! copies of it; the pure merge here is what the property tests check.
//!
//! Must not: do I/O: sled is `store/mod.rs`'s alone.

use std::ops::RangeBounds;
use std::sync::Arc;

use imbl::OrdMap;

use super::digest::{bucket_of, Digest, BUCKETS};
use super::entry::Entry;

/// What merging one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The entry was new, or brought revisions not held.
    Applied,
    /// The held entry holds every revision it brought (or later ones that bound them out).
    Stale,
}

/// Cloning is cheap (a persistent map shares its nodes), so publishing a snapshot after
/// each write costs O(log n), not a copy of the whole map.
#[derive(Debug, Clone)]
pub struct View {
    entries: OrdMap<String, Arc<Entry>>,
    digest: Digest,
    buckets: Box<[Digest; BUCKETS]>,
    bytes: u64,
    /// Entries and encoded bytes held per origin (the node whose write each is), for the
    /// store's per-origin quota.
    origins: imbl::HashMap<String, Usage>,
}

/// What one origin's entries take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

impl Default for View {
    fn default() -> Self {
        View {
            entries: OrdMap::new(),
            digest: Digest::EMPTY,
            buckets: Box::new([Digest::EMPTY; BUCKETS]),
            bytes: 0,
            origins: imbl::HashMap::new(),
        }
    }
}

impl View {
    /// What merging `entry` would hold for its key: `entry` itself for a new key, the
    /// held entry's merge with it ([`Entry::merged`]), or `None` when nothing would change.
    pub fn merged(&self, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        match self.entries.get(&entry.key) {
            None => Some(entry),
            Some(cur) if **cur == *entry => None,
            Some(cur) => cur.merged(&entry).map(Arc::new),
        }
    }

    /// Merges one entry: its revisions join the held ones, and the greatest is current.
    pub fn merge(&mut self, entry: Arc<Entry>) -> Merge {
        match self.merged(entry) {
            Some(merged) => {
                self.hold(merged);
                Merge::Applied
            }
            None => Merge::Stale,
        }
    }

    /// Holds `entry` for its key in place of what was held: an entry that is already
    /// the merge ([`View::merged`], or a local write over the held entry), so that the
    /// store does not merge the same pair twice.
    pub fn hold(&mut self, entry: Arc<Entry>) {
        let bucket = bucket_of(&entry.key);
        let print = entry.fingerprint();
        let size = entry.encoded_len() as u64;
        let origin = entry.origin.clone();
        if let Some(old) = self.entries.insert(entry.key.clone(), entry) {
            let old_print = old.fingerprint();
            self.digest.remove(old_print);
            self.buckets[bucket].remove(old_print);
            let old_size = old.encoded_len() as u64;
            self.bytes = self.bytes.saturating_sub(old_size);
            let gone = {
                let u = self.origins.entry(old.origin.clone()).or_default();
                u.entries = u.entries.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(old_size);
                u.entries == 0
            };
            if gone {
                self.origins.remove(&old.origin);
            }
        }
        self.digest.add(print);
        self.buckets[bucket].add(print);
        self.bytes += size;
        let u = self.origins.entry(origin).or_default();
        u.entries += 1;
        u.bytes += size;
    }

    /// What `origin`'s entries take in this view.
    pub fn usage(&self, origin: &str) -> Usage {
        self.origins.get(origin).copied().unwrap_or_default()
    }

    /// The entry for `key`, tombstones included.
    pub fn entry(&self, key: &str) -> Option<&Arc<Entry>> {
        self.entries.get(key)
    }

    /// The live value for `key` (None if absent or deleted).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).filter(|e| !e.deleted).map(|e| e.value.as_slice())
    }

    /// Live entries whose key starts with `prefix`, in key order.
    pub fn prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        self.entries
            .range::<_, str>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
            .filter(|e| !e.deleted)
    }

    /// Every entry, tombstones included, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes of every entry with its history.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of the whole map: equal on two nodes iff (with overwhelming
    /// probability) they hold the same writes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Digests of the [`BUCKETS`] key buckets (by hash of the key): two nodes exchange
    /// these, then the `(key, version, origin)` lists of the buckets that differ.
    pub fn bucket_digests(&self) -> &[Digest; BUCKETS] {
        &self.buckets
    }

    /// The entries in bucket `b`.
    pub fn bucket(&self, b: usize) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values().filter(move |e| bucket_of(&e.key) == b)
    }

    /// The digest of a key range, computed on demand.
    pub fn digest_range<R: RangeBounds<str>>(&self, range: R) -> Digest {
        let mut d = Digest::EMPTY;
        for (_, e) in self.entries.range::<R, str>(range) {
            d.add(e.fingerprint());
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hlc::Hlc;

    fn e(key: &str, t: u64, origin: &str, value: Option<&str>) -> Arc<Entry> {
        Arc::new(Entry::next(None, key, value.map(|v| v.as_bytes().to_vec()), Hlc(t), origin))
    }

    #[test]
    fn merge_keeps_the_winner_and_digests_track_it() {
        let mut a = View::default();
        let mut b = View::default();
        let w1 = e("route/x", 1, "a", Some("1"));
        let w2 = e("route/x", 2, "b", Some("2"));
        let other = e("policy/y", 5, "a", None);
        assert_eq!(a.merge(w1.clone()), Merge::Applied);
        assert_eq!(a.merge(w2.clone()), Merge::Applied);
        assert_eq!(a.merge(w1.clone()), Merge::Stale);
        a.merge(other.clone());
        // Another order, with duplicates.
        for x in [other, w2.clone(), w2, w1] {
            b.merge(x);
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.bucket_digests(), b.bucket_digests());
        assert_eq!(a.bytes(), b.bytes());
        assert_eq!(a.get("route/x"), Some(&b"2"[..]));
        assert_eq!(a.get("policy/y"), None, "a tombstone reads as absent");
        assert_eq!(a.len(), 2, "but is held");
        assert_eq!(
            a.digest_range::<(std::ops::Bound<&str>, std::ops::Bound<&str>)>((
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded
            )),
            a.digest()
        );
    }

    #[test]
    fn a_differing_entry_shows_in_exactly_one_bucket() {
        let mut a = View::default();
        let mut b = View::default();
        for i in 0..500 {
            let x = e(&format!("node/n{i}/service/s"), 10, "a", Some("v"));
            a.merge(x.clone());
            b.merge(x);
        }
        b.merge(e("node/n7/service/s", 11, "a", Some("w")));
        assert_ne!(a.digest(), b.digest());
        let differ: Vec<usize> = (0..BUCKETS).filter(|&i| a.bucket_digests()[i] != b.bucket_digests()[i]).collect();
        assert_eq!(differ, vec![bucket_of("node/n7/service/s")]);
        let in_bucket: Vec<&str> = b.bucket(differ[0]).map(|e| e.key.as_str()).collect();
        assert!(in_bucket.contains(&"node/n7/service/s"));
    }

    #[test]
    fn prefix_lists_live_entries_only() {
        let mut v = View::default();
        v.merge(e("route/a", 1, "n", Some("1")));
        v.merge(e("route/b", 1, "n", None));
        v.merge(e("routes", 1, "n", Some("x")));
        v.merge(e("policy/a", 1, "n", Some("1")));
        let keys: Vec<&str> = v.prefix("route/").map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["route/a"]);
    }
}
