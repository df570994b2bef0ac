//! Digests for anti-entropy: an order-independent summary of a set of writes.
//!
//! A digest is the count of entries and the XOR of their 64-bit fingerprints
//! ([`Entry::fingerprint`](super::entry::Entry::fingerprint)). XOR makes it cheap to keep
//! up to date (add and remove are the same operation) and independent of the order in
//! which writes arrived. The map is also split into [`BUCKETS`] buckets by a hash of the
//! key, so two nodes find what differs by comparing 256 small digests, then listing only
//! the buckets that differ.
//!
//! Must not: depend on the order of writes.

use serde::{Deserialize, Serialize};

/// Number of key buckets.
pub const BUCKETS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Digest {
    pub count: u64,
    pub xor: u64,
}

impl Digest {
    pub const EMPTY: Digest = Digest { count: 0, xor: 0 };

    pub fn add(&mut self, fingerprint: u64) {
        self.count += 1;
        self.xor ^= fingerprint;
    }

    pub fn remove(&mut self, fingerprint: u64) {
        self.count = self.count.saturating_sub(1);
        self.xor ^= fingerprint;
    }
}

/// The bucket of a key: the first byte of its SHA-256, so keys spread evenly whatever
/// their prefixes.
pub fn bucket_of(key: &str) -> usize {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    usize::from(digest.as_ref()[0])
}
