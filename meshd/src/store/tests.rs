//! The store on real sled files in temporary directories.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::state::{Publisher, Snapshot};

fn open(dir: &Path, origin: &str) -> (Store, Publisher) {
    let publisher = Publisher::new(Snapshot::empty(origin));
    let store = Store::open(
        &dir.join("store"),
        origin,
        std::sync::Arc::new(super::seal::Unsealed),
        Metrics::new(),
        publisher.store_sink(),
    )
    .expect("open store");
    (store, publisher)
}

#[test]
fn put_get_delete_and_history_survive_a_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(tmp.path(), "a");
        store.put("route/reviews", b"one".to_vec()).expect("put");
        store.put("route/reviews", b"two".to_vec()).expect("put");
        store.put("policy/p", b"x".to_vec()).expect("put");
        let gone = store.delete("policy/p").expect("delete").expect("there was something to delete");
        assert!(gone.deleted);
        assert!(store.delete("policy/never").expect("delete").is_none());
        assert_eq!(store.view().get("route/reviews"), Some(&b"two"[..]));
    }
    let (store, _) = open(tmp.path(), "a");
    let view = store.view();
    assert_eq!(view.get("route/reviews"), Some(&b"two"[..]));
    assert_eq!(view.get("policy/p"), None);
    let route = view.entry("route/reviews").expect("held");
    assert_eq!(route.revision, 2);
    let history: Vec<(u64, Vec<u8>)> = route.revisions().map(|r| (r.revision, r.value)).collect();
    assert_eq!(history, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    let tomb = view.entry("policy/p").expect("the tombstone is kept");
    assert_eq!((tomb.revision, tomb.deleted), (2, true));
    // A write after reopening continues the clock: it supersedes what was there.
    let next = store.put("route/reviews", b"three".to_vec()).expect("put");
    assert!(next.version > route.version);
    assert_eq!(next.revision, 3);
}

#[tokio::test]
async fn each_write_reaches_snapshot_readers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, publisher) = open(tmp.path(), "a");
    let mut rx = publisher.subscribe();
    let before = rx.borrow_and_update().clone();
    let writer = store.clone();
    let spec: mesh_proto::service::ServiceSpec = toml::from_str("name = \"web\"\nport = 80\n").expect("spec");
    let record = crate::state::model::InstanceRecord {
        node: "a".to_owned(),
        spec,
        healthy: true,
        source: crate::state::model::Source::Api,
    };
    let key = crate::state::model::InstanceRecord::key("a", "web");
    let value = record.encode().expect("encode");
    tokio::task::spawn_blocking(move || writer.put(&key, value)).await.expect("join").expect("put");
    rx.changed().await.expect("a new snapshot");
    let after = rx.borrow().clone();
    assert!(after.parts.records.iter().any(|r| r.spec.name == "web"), "the write is in the next snapshot");
    assert!(after.index > before.index);
    assert!(before.parts.records.is_empty(), "an old snapshot never changes under its reader");
}

#[test]
fn merges_converge_whatever_the_order_and_refuse_clocks_far_ahead() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, _) = open(&tmp.path().join("a"), "a");
    let (b, _) = open(&tmp.path().join("b"), "b");
    let now = wall_ms();
    let e1 = a.write_at("route/x", Some(b"a1".to_vec()), now).expect("w").expect("e");
    let e2 = b.write_at("route/x", Some(b"b1".to_vec()), now + 5).expect("w").expect("e");
    let e3 = a.write_at("route/y", Some(b"a2".to_vec()), now + 6).expect("w").expect("e");
    // e1 is older than b's own write of route/x but joins its history; the duplicate of
    // e3 changes nothing.
    let r = b.merge(vec![(*e3).clone(), (*e1).clone(), (*e3).clone()], now).expect("merge");
    assert_eq!((r.applied, r.stale), (2, 1), "{r:?}");
    let r = a.merge(vec![(*e2).clone()], now).expect("merge");
    assert_eq!(r.applied, 1);
    let r = a.merge(vec![(*e2).clone(), (*e1).clone()], now).expect("merge");
    assert_eq!((r.applied, r.stale), (0, 1), "{r:?}");
    assert_eq!(a.view().digest(), b.view().digest());
    assert_eq!(a.view().get("route/x"), Some(&b"b1"[..]), "the later write is current");
    let x = a.view().entry("route/x").cloned().expect("route/x");
    let ids: Vec<(u64, String)> = x.revisions().map(|r| (r.revision, r.origin)).collect();
    assert_eq!(ids, [(1, "a".to_owned()), (1, "b".to_owned())], "both concurrent writes are history");

    let mut future = (*e3).clone();
    future.version = hlc::Hlc::from_millis(now + 3_600_000);
    future.value = b"from the future".to_vec();
    let r = b.merge(vec![future], now).expect("merge");
    assert_eq!(r.refused_clock, 1);
    assert_eq!(b.view().get("route/y"), Some(&b"a2"[..]));
}

#[test]
fn malformed_remote_entries_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, _) = open(tmp.path(), "a");
    let good = Entry::next(None, "route/x", Some(b"v".to_vec()), hlc::Hlc::from_millis(wall_ms()), "b");
    let mut huge = good.clone();
    huge.value = vec![0; MAX_VALUE + 1];
    let mut zero_rev = good.clone();
    zero_rev.revision = 0;
    let mut dead_with_value = good.clone();
    dead_with_value.deleted = true;
    let mut bad_key = good.clone();
    bad_key.key = String::new();
    let r = a.merge(vec![huge, zero_rev, dead_with_value, bad_key], wall_ms()).expect("merge");
    assert_eq!(r.refused_invalid, 4);
    assert!(a.view().is_empty());
}

#[test]
fn local_only_keys_never_merge_from_a_peer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, _) = open(tmp.path(), "a");
    let token =
        Entry::next(None, "token/0123456789abcdef", Some(b"{}".to_vec()), hlc::Hlc::from_millis(wall_ms()), "a");
    let r = a.merge(vec![token], wall_ms()).expect("merge");
    assert_eq!(r.refused_local_only, 1, "even in this node's own name");
    assert!(a.view().is_empty());
    a.local_put("token/0123456789abcdef", b"{}").expect("local put");
    assert_eq!(a.local_get("token/0123456789abcdef").expect("read").as_deref(), Some(&b"{}"[..]));
    assert!(a.view().is_empty(), "a local key is not in the replicated view");
}

#[test]
fn oversized_local_writes_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, _) = open(tmp.path(), "a");
    assert!(matches!(a.put("k", vec![0; MAX_VALUE + 1]), Err(StoreError::TooLarge { .. })));
    assert!(matches!(a.put(&"k".repeat(MAX_KEY + 1), vec![]), Err(StoreError::TooLarge { .. })));
    assert!(matches!(a.put("", vec![]), Err(StoreError::InvalidKey { .. })));
    assert!(a.view().is_empty());
}

#[test]
fn a_corrupt_store_fails_to_open_with_its_path_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("store");
    {
        let (store, _) = open(tmp.path(), "a");
        for i in 0..200 {
            store.put(&format!("route/{i}"), vec![7; 100]).expect("put");
        }
    }
    // Overwrite the whole data file with garbage of the same length.
    let db = path.join("db");
    let len = std::fs::metadata(&db).expect("db file").len();
    std::fs::write(&db, vec![0xA5u8; usize::try_from(len).expect("fits")]).expect("corrupt");
    let publisher = Publisher::new(Snapshot::empty("a"));
    match Store::open(&path, "a", std::sync::Arc::new(super::seal::Unsealed), Metrics::new(), publisher.store_sink()) {
        Err(err @ StoreError::Corrupt { .. }) => {
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(store) => panic!("a store of garbage opened with {} entries", store.view().len()),
    }
}

/// One step of the replication property test.
#[derive(Debug, Clone)]
enum Op {
    /// A local write at replica `origin`, its wall clock moved by `dt` ms first.
    Write { origin: usize, key: usize, value: Option<u8>, dt: i64 },
    /// Deliver the `pick`th entry produced so far (modulo) to replica `to`.
    Deliver { to: usize, pick: usize },
    /// Close and reopen replica `at` from its files.
    Reopen { at: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..4usize, proptest::option::weighted(0.8, any::<u8>()), -500i64..1000)
            .prop_map(|(origin, key, value, dt)| Op::Write { origin, key, value, dt }),
        4 => (0..3usize, any::<usize>()).prop_map(|(to, pick)| Op::Deliver { to, pick }),
        1 => (0..3usize).prop_map(|at| Op::Reopen { at }),
    ]
}

const ORIGINS: [&str; 3] = ["a", "b", "c"];

/// A key and its revisions' (version, origin, value), as the property test compares them.
type KeyRevisions = (String, Vec<(hlc::Hlc, String, Vec<u8>)>);

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Puts, deletes and merges from three origins, delivered in random order and
    /// duplicated, with reopens in between: every replica ends with the same map, and
    /// it is the model's: per key, every revision ever written (the newest `HISTORY` of
    /// them by (version, origin)), the greatest current.
    #[test]
    fn replicas_converge_to_the_model(ops in proptest::collection::vec(op(), 1..40), order in any::<u64>()) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs: Vec<_> = ORIGINS.iter().map(|o| tmp.path().join(o)).collect();
        let mut stores: Vec<Store> = ORIGINS.iter().zip(&dirs).map(|(o, d)| open(d, o).0).collect();
        let mut walls = [1_000_000i64; 3];
        let mut produced: Vec<Entry> = Vec::new();
        // Per key, every revision written, by (version, origin).
        let mut model: BTreeMap<String, BTreeMap<(hlc::Hlc, String), entry::Revision>> = BTreeMap::new();

        for op in ops {
            match op {
                Op::Write { origin, key, value, dt } => {
                    walls[origin] += dt;
                    let key = format!("route/k{key}");
                    let wall = u64::try_from(walls[origin]).expect("positive");
                    if let Some(e) = stores[origin].write_at(&key, value.map(|v| vec![v]), wall).expect("write") {
                        let e = (*e).clone();
                        let revs = model.entry(key).or_default();
                        for r in e.revisions() {
                            revs.insert((r.version, r.origin.clone()), r);
                        }
                        produced.push(e);
                    }
                }
                Op::Deliver { to, pick } if !produced.is_empty() => {
                    let e = produced[pick % produced.len()].clone();
                    let wall = u64::try_from(walls[to]).expect("positive");
                    stores[to].merge(vec![e], wall).expect("merge");
                }
                Op::Deliver { .. } => {}
                Op::Reopen { at } => {
                    drop(std::mem::replace(&mut stores[at], open(&tmp.path().join("spare"), "spare").0));
                    stores[at] = open(&dirs[at], ORIGINS[at]).0;
                }
            }
        }

        // Deliver everything to everyone, shuffled, twice over.
        let mut all: Vec<Entry> = produced.iter().chain(produced.iter()).cloned().collect();
        let mut seed = order | 1;
        for i in (1..all.len()).rev() {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            all.swap(i, usize::try_from(seed % (i as u64 + 1)).expect("fits"));
        }
        for (i, store) in stores.iter().enumerate() {
            let wall = u64::try_from(walls[i]).expect("positive") + 100_000;
            store.merge(all.clone(), wall).expect("merge");
        }

        let want: Vec<KeyRevisions> = model
            .iter()
            .map(|(key, revs)| {
                let all: Vec<_> = revs.values().map(|r| (r.version, r.origin.clone(), r.value.clone())).collect();
                (key.clone(), all[all.len().saturating_sub(entry::HISTORY)..].to_vec())
            })
            .collect();
        let views: Vec<Arc<View>> = stores.iter().map(Store::view).collect();
        for v in &views {
            let got: Vec<KeyRevisions> = v
                .iter()
                .map(|e| (e.key.clone(), e.revisions().map(|r| (r.version, r.origin, r.value)).collect()))
                .collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(v.digest(), views[0].digest());
        }
    }
}

#[test]
fn one_origin_cannot_pass_its_quota_and_others_are_unaffected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(tmp.path(), "a");
    let now = wall_ms();
    let batch = |from: u64, to: u64, origin: &str| -> Vec<Entry> {
        (from..to)
            .map(|i| Entry::next(None, &format!("node/{origin}/k{i}"), Some(vec![1]), Hlc::from_millis(now), origin))
            .collect()
    };
    let report = store.merge(batch(0, QUOTA_ENTRIES, "x"), now).expect("merge");
    assert_eq!(report.applied as u64, QUOTA_ENTRIES);
    let report = store.merge(batch(QUOTA_ENTRIES, QUOTA_ENTRIES + 10, "x"), now).expect("merge");
    assert_eq!((report.applied, report.refused_untrusted), (0, 10), "x is at its quota");
    assert_eq!(store.view().usage("x").entries, QUOTA_ENTRIES);
    // Rewriting one of its own keys takes no more entries: allowed.
    let mut again = batch(0, 1, "x");
    again[0].version = Hlc::from_millis(now + 1);
    assert_eq!(store.merge(again, now + 1).expect("merge").applied, 1);
    // Another origin writes as before.
    assert_eq!(store.merge(batch(0, 5, "y"), now).expect("merge").applied, 5);
}
