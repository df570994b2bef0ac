//! Anti-entropy as a sans-IO session: which buckets differ, what each side lacks, and
//! the messages of one exchange, with no sockets and no clock. Gossip broadcasts reach
//! members that are up when a write happens; this repairs everything else (a late
//! joiner, a healed partition, a lost datagram), one random member at a time.
//!
//! The exchange on one stream: the [`Caller`] sends its 256 bucket digests and its SWIM
//! member list; the [`Callee`] answers with the `(key, version, origin)` and fingerprint of
//! its entries in the buckets that differ, and its member list; the caller sends the
//! entries the callee lacks, has older, or holds with another history, and names the keys
//! it wants; the callee sends those. Two round
//! trips, and only differing buckets travel. meshd drives these sessions over QUIC
//! streams (`peer`); the deterministic simulation (`membership::sim`) drives the very
//! same ones in memory.
//!
//! Must not: touch the network or the disk, or merge anything itself (the driver merges
//! what a session hands back into the store, through its one write path).

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::wire::{BucketDigest, KeyVersion, MeshRequest, SyncEntries, SyncPush, SyncSummary};

use super::core::{MemberId, Swim};
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
        .map(|e| KeyVersion {
            key: e.key.clone(),
            version: e.version.0,
            origin: e.origin.clone(),
            print: e.fingerprint(),
        })
        .collect()
}

/// Given the other side's summary of `buckets`: the entries to send it and the keys to
/// ask for. Whatever differs goes both ways (an older entry may hold revisions the newer
/// one lacks: the other side of a partition), so one exchange merges both histories.
pub fn plan(view: &View, buckets: &[u16], theirs: &[KeyVersion]) -> (Vec<Arc<Entry>>, Vec<String>) {
    let theirs: BTreeMap<&str, (Hlc, &str, u64)> =
        theirs.iter().map(|k| (k.key.as_str(), (Hlc(k.version), k.origin.as_str(), k.print))).collect();
    let wanted: std::collections::HashSet<usize> = buckets.iter().map(|b| usize::from(*b)).collect();
    let mut send = Vec::new();
    for e in view.iter().filter(|e| wanted.contains(&bucket_of(&e.key))) {
        match theirs.get(e.key.as_str()) {
            Some(&(v, o, print)) if (v, o) == (e.version, e.origin.as_str()) && print == e.fingerprint() => {}
            _ => send.push(e.clone()),
        }
    }
    let want = theirs
        .iter()
        .filter(|(k, (v, o, print))| {
            view.entry(k).is_none_or(|e| (e.version, e.origin.as_str()) != (*v, *o) || e.fingerprint() != *print)
        })
        .map(|(k, _)| (*k).to_owned())
        .collect();
    (send, want)
}

/// The entries for `keys` that this node holds.
pub fn entries_for(view: &View, keys: &[String]) -> Vec<Arc<Entry>> {
    keys.iter().filter_map(|k| view.entry(k).cloned()).collect()
}

/// Encodes entries for the wire, in batches of about 1 MiB, nodes' key records first:
/// the receiver verifies the other entries with them.
pub fn batches(entries: &[Arc<Entry>]) -> Vec<Vec<Vec<u8>>> {
    let is_key_record = |e: &&Arc<Entry>| e.key.starts_with("node/") && e.key.contains("/key/");
    let ordered = entries.iter().filter(is_key_record).chain(entries.iter().filter(|e| !is_key_record(e)));
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for e in ordered {
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

/// A SWIM member list as it travels in a sync exchange.
pub type MemberList = Vec<foca::Member<MemberId>>;

/// Encodes this node's SWIM member list for a sync exchange.
pub fn encode_members(swim: &Swim) -> Vec<u8> {
    let list: Vec<&foca::Member<MemberId>> = swim.iter_membership_state().collect();
    postcard::to_stdvec(&list).unwrap_or_default()
}

/// Decodes a peer's member list; a malformed list is empty, and members with invalid
/// names are left out.
pub fn decode_members(bytes: &[u8]) -> MemberList {
    let Ok(list) = postcard::from_bytes::<MemberList>(bytes) else { return Vec::new() };
    list.into_iter().filter(|m| mesh_proto::is_dns_label(&m.id().name)).collect()
}

/// The members of a peer's list that would change what `swim` knows: those it holds
/// with another incarnation or state, or not at all. Applying a member exactly as SWIM
/// already holds it changes nothing, but costs foca a scan of its whole member list, so
/// a full list applied as is costs O(N^2) at N members (measured: most of a 1,000-member
/// simulation's time); this filter makes a list that brings no news O(N).
pub fn news(swim: &Swim, list: MemberList) -> MemberList {
    let known: std::collections::HashMap<&MemberId, &foca::Member<MemberId>> =
        swim.iter_membership_state().map(|m| (m.id(), m)).collect();
    list.into_iter().filter(|m| known.get(m.id()).is_none_or(|k| *k != m)).collect()
}

/// What one side of an exchange received: entries to merge, and how many did not decode.
#[derive(Debug, Default)]
pub struct Received {
    pub entries: Vec<Entry>,
    pub malformed: usize,
}

/// What one exchange moved, as the side that started it counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub sent: usize,
    pub received: usize,
    pub malformed: usize,
}

/// The caller's side of one exchange.
#[derive(Debug, Default)]
pub struct Caller {
    sent: usize,
    got: Vec<Vec<u8>>,
}

impl Caller {
    /// Opens an exchange: the request to send, with this side's member list `ours`.
    pub fn open(view: &View, ours: Vec<u8>) -> (Caller, MeshRequest) {
        (Caller::default(), MeshRequest::Sync { buckets: digests(view), members: ours })
    }

    /// The callee's summary arrived: the pushes to send, in order (the last one names the
    /// keys this side wants; the stream is finished after it), and the callee's member
    /// list (to apply to SWIM at once).
    pub fn on_summary(&mut self, view: &View, summary: SyncSummary) -> (Vec<SyncPush>, MemberList) {
        let members = decode_members(&summary.members);
        let (give, want) = plan(view, &summary.buckets, &summary.keys);
        self.sent = give.len();
        let mut pushes: Vec<SyncPush> =
            batches(&give).into_iter().map(|entries| SyncPush { entries, want: Vec::new() }).collect();
        match pushes.last_mut() {
            Some(last) => last.want = want,
            None => pushes.push(SyncPush { entries: Vec::new(), want }),
        }
        (pushes, members)
    }

    /// One batch of the entries this side asked for.
    pub fn on_entries(&mut self, chunk: SyncEntries) {
        self.got.extend(chunk.entries);
    }

    /// The callee finished its stream: what this side received, and the exchange's counts.
    pub fn finish(self) -> (Received, Stats) {
        let (entries, malformed) = decode(self.got);
        let stats = Stats { sent: self.sent, received: entries.len(), malformed };
        (Received { entries, malformed }, stats)
    }
}

/// The callee's side of one exchange.
#[derive(Debug, Default)]
pub struct Callee {
    incoming: Vec<Vec<u8>>,
    want: Vec<String>,
}

impl Callee {
    /// The caller's request arrived (its digests and member list): the summary to answer
    /// with, carrying this side's member list `ours`, and the caller's member list (to
    /// apply to SWIM at once).
    pub fn on_request(
        view: &View,
        buckets: &[BucketDigest],
        members: &[u8],
        ours: Vec<u8>,
    ) -> (Callee, SyncSummary, MemberList) {
        let diff = differing(view, buckets);
        let keys = summary(view, &diff);
        (Callee::default(), SyncSummary { buckets: diff, keys, members: ours }, decode_members(members))
    }

    /// One push from the caller.
    pub fn on_push(&mut self, push: SyncPush) {
        self.incoming.extend(push.entries);
        self.want.extend(push.want);
    }

    /// The caller finished its stream: the batches to send back (the stream is finished
    /// after them), and what this side received.
    pub fn finish(self, view: &View) -> (Vec<SyncEntries>, Received) {
        let give = entries_for(view, &self.want);
        let out = batches(&give).into_iter().filter(|b| !b.is_empty()).map(|entries| SyncEntries { entries }).collect();
        let (entries, malformed) = decode(self.incoming);
        (out, Received { entries, malformed })
    }
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
        // What differs goes both ways: the older side may hold revisions the newer lacks.
        assert_eq!(sent, ["route/only-a", "route/r7", "route/r8"]);
        let mut want = want;
        want.sort();
        assert_eq!(want, ["route/only-b", "route/r7", "route/r8"]);
        for x in send {
            b.merge(x);
        }
        for x in entries_for(&b, &want) {
            a.merge(x);
        }
        assert_eq!(a.digest(), b.digest());
        let r8: Vec<(u64, String)> =
            a.entry("route/r8").expect("r8").revisions().map(|r| (r.version.0, r.origin)).collect();
        assert_eq!(r8, [(10, "a".to_owned()), (30, "b".to_owned())], "both writes of r8, in order");
    }

    #[test]
    fn a_session_moves_what_each_side_lacks_both_ways() {
        let mut a = View::default();
        let mut b = View::default();
        for i in 0..50 {
            let x = e(&format!("route/r{i}"), 10, "a");
            a.merge(x.clone());
            b.merge(x);
        }
        a.merge(e("route/only-a", 1, "a"));
        b.merge(e("route/only-b", 1, "b"));

        let (mut caller, request) = Caller::open(&a, b"not a member list".to_vec());
        let MeshRequest::Sync { buckets, members } = request else { panic!("a sync request") };
        let (mut callee, summary, theirs) = Callee::on_request(&b, &buckets, &members, Vec::new());
        assert!(theirs.is_empty(), "a malformed member list is empty");
        let (pushes, _) = caller.on_summary(&a, summary);
        assert_eq!(pushes.last().map(|p| p.want.clone()), Some(vec!["route/only-b".to_owned()]));
        for p in pushes {
            callee.on_push(p);
        }
        let (back, got_b) = callee.finish(&b);
        for chunk in back {
            caller.on_entries(chunk);
        }
        let (got_a, stats) = caller.finish();
        assert_eq!(stats, Stats { sent: 1, received: 1, malformed: 0 });
        for x in got_a.entries {
            a.merge(Arc::new(x));
        }
        for x in got_b.entries {
            b.merge(Arc::new(x));
        }
        assert_eq!(a.digest(), b.digest());
    }
}
