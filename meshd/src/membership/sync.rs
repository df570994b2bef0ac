//! Anti-entropy, the pure part: which buckets differ, what each side lacks. Gossip
//! broadcasts reach members that are up when a write happens; this repairs everything
//! else (a late joiner, a healed partition, a lost datagram), one random member at a time.
//!
//! The exchange on one stream: the caller sends its 256 bucket digests; the callee
//! answers with the `(key, version, origin)` of its entries in the buckets that differ;
//! the caller sends the entries the callee lacks or has older, and names the keys it
//! wants; the callee sends those. Two round trips, and only differing buckets travel.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::wire::{BucketDigest, KeyVersion};

use crate::store::digest::{bucket_of, Digest, BUCKETS};
use crate::store::entry::Entry;
use crate::store::hlc::Hlc;
use crate::store::View;

pub fn digests(view: &View) -> Vec<BucketDigest> {
    view.bucket_digests().iter().map(|d| BucketDigest { count: d.count, xor: d.xor }).collect()
}

/// The buckets where `theirs` differs from `view` (all of them if `theirs` is malformed).
pub fn differing(view: &View, theirs: &[BucketDigest]) -> Vec<u16> {
    let mine = view.bucket_digests();
    (0..BUCKETS)
        .filter(|&b| theirs.get(b).is_none_or(|t| Digest { count: t.count, xor: t.xor } != mine[b]))
        .filter_map(|b| u16::try_from(b).ok())
        .collect()
}

/// This node's writes in `buckets`.
pub fn summary(view: &View, buckets: &[u16]) -> Vec<KeyVersion> {
    let wanted: std::collections::HashSet<usize> = buckets.iter().map(|b| usize::from(*b)).collect();
    view.iter()
        .filter(|e| wanted.contains(&bucket_of(&e.key)))
        .map(|e| KeyVersion { key: e.key.clone(), version: e.version.0, origin: e.origin.clone() })
        .collect()
}

/// Given the other side's summary of `buckets`: the entries to send it (it lacks them or
/// holds older ones) and the keys to ask for (it holds newer ones, or ones this node
/// lacks).
pub fn plan(view: &View, buckets: &[u16], theirs: &[KeyVersion]) -> (Vec<Arc<Entry>>, Vec<String>) {
    let theirs: BTreeMap<&str, (Hlc, &str)> =
        theirs.iter().map(|k| (k.key.as_str(), (Hlc(k.version), k.origin.as_str()))).collect();
    let wanted: std::collections::HashSet<usize> = buckets.iter().map(|b| usize::from(*b)).collect();
    let mut send = Vec::new();
    for e in view.iter().filter(|e| wanted.contains(&bucket_of(&e.key))) {
        match theirs.get(e.key.as_str()) {
            Some(&(v, o)) if (v, o) >= (e.version, e.origin.as_str()) => {}
            _ => send.push(e.clone()),
        }
    }
    let want = theirs
        .iter()
        .filter(|(k, (v, o))| view.entry(k).is_none_or(|e| (e.version, e.origin.as_str()) < (*v, *o)))
        .map(|(k, _)| (*k).to_owned())
        .collect();
    (send, want)
}

/// The entries for `keys` that this node holds.
pub fn entries_for(view: &View, keys: &[String]) -> Vec<Arc<Entry>> {
    keys.iter().filter_map(|k| view.entry(k).cloned()).collect()
}

/// Encodes entries for the wire, in batches of about 1 MiB.
pub fn batches(entries: &[Arc<Entry>]) -> Vec<Vec<Vec<u8>>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for e in entries {
        let Ok(bytes) = e.encode() else { continue };
        if size + bytes.len() > 1024 * 1024 && !out.last().is_none_or(|b: &Vec<Vec<u8>>| b.is_empty()) {
            out.push(Vec::new());
            size = 0;
        }
        size += bytes.len();
        if let Some(last) = out.last_mut() {
            last.push(bytes);
        }
    }
    out
}

/// Decodes entries from the wire; returns them and the number that did not decode.
pub fn decode(encoded: Vec<Vec<u8>>) -> (Vec<Entry>, usize) {
    let mut bad = 0;
    let entries = encoded.iter().filter_map(|b| Entry::decode(b).map_err(|_| bad += 1).ok()).collect();
    (entries, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, t: u64, origin: &str) -> Arc<Entry> {
        Arc::new(Entry::next(None, key, Some(b"v".to_vec()), Hlc(t), origin))
    }

    #[test]
    fn one_exchange_makes_two_views_equal() {
        let mut a = View::default();
        let mut b = View::default();
        for i in 0..300 {
            let x = e(&format!("route/r{i}"), 10, "a");
            a.merge(x.clone());
            b.merge(x);
        }
        a.merge(e("route/only-a", 1, "a"));
        b.merge(e("route/only-b", 1, "b"));
        a.merge(e("route/r7", 20, "a")); // a is newer
        b.merge(e("route/r8", 30, "b")); // b is newer

        // a calls b.
        let diff = differing(&b, &digests(&a));
        assert!(diff.len() <= 4, "only the buckets with differences: {diff:?}");
        let theirs = summary(&b, &diff);
        let (send, want) = plan(&a, &diff, &theirs);
        let mut sent: Vec<&str> = send.iter().map(|e| e.key.as_str()).collect();
        sent.sort();
        assert_eq!(sent, ["route/only-a", "route/r7"]);
        let mut want = want;
        want.sort();
        assert_eq!(want, ["route/only-b", "route/r8"]);
        for x in send {
            b.merge(x);
        }
        for x in entries_for(&b, &want) {
            a.merge(x);
        }
        assert_eq!(a.digest(), b.digest());
    }
}
