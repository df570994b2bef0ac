//! The store's write rate with a flush per write, against its peers on the same disk in
//! the same run: sled alone (insert + flush, what the store adds its merge, history and
//! snapshot to) and a plain file (append + fdatasync, the floor of any durable write).
//! Then the time to publish a snapshot of 10,000 entries.
//!
//! `cargo run --release -p mesh-bench --bin bench-store [-- WRITES]`

use std::io::Write;
use std::time::{Duration, Instant};

use std::sync::Arc;

use meshd::identity::Identity;
use meshd::state::{Publisher, Snapshot};
use meshd::store::seal::Unsealed;
use meshd::store::{Metrics, Store};

const VALUE: usize = 200;

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn main() {
    let writes: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let dir = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).expect("tempdir");
    println!("durable writes of {VALUE} B values, {writes} each, in {}", dir.path().display());

    // The floor: append and fdatasync.
    let mut file = std::fs::File::create(dir.path().join("plain")).expect("file");
    let buf = vec![b'x'; VALUE];
    let started = Instant::now();
    for _ in 0..writes {
        file.write_all(&buf).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let plain = rate(writes, started.elapsed());

    // sled alone.
    let db = sled::open(dir.path().join("sled")).expect("sled");
    let started = Instant::now();
    for i in 0..writes {
        db.insert(format!("route/r{i}"), buf.clone()).expect("insert");
        db.flush().expect("flush");
    }
    let sled_rate = rate(writes, started.elapsed());
    drop(db);

    // The store, sealing each write with a node key (what meshd runs), and unsealed (the
    // store's own cost without signatures).
    let publisher = Publisher::new(Snapshot::empty("bench"));
    let sealed_dir = dir.path().join("sealed");
    let (identity, peer) = two_nodes(&sealed_dir);
    let authority = Arc::new(identity.entry_authority().expect("authority"));
    let store = Store::open(&sealed_dir.join("store"), "bench", authority, Metrics::new(), publisher.store_sink())
        .expect("store");
    // Both publish their snapshots to a read model, as meshd does.
    let unsealed_publisher = Publisher::new(Snapshot::empty("bench"));
    let unsealed = Store::open(
        &dir.path().join("unsealed"),
        "bench",
        Arc::new(Unsealed),
        Metrics::new(),
        unsealed_publisher.store_sink(),
    )
    .expect("store");
    // Alternating rounds, so that the disk's moods fall on both alike.
    let (mut sealed_time, mut unsealed_time) = (Duration::ZERO, Duration::ZERO);
    let round = (writes / 8).max(1);
    for r in 0..writes.div_ceil(round) {
        let keys = r * round..((r + 1) * round).min(writes);
        let started = Instant::now();
        for i in keys.clone() {
            store.put(&format!("route/r{i}"), buf.clone()).expect("put");
        }
        sealed_time += started.elapsed();
        let started = Instant::now();
        for i in keys {
            unsealed.put(&format!("route/r{i}"), buf.clone()).expect("put");
        }
        unsealed_time += started.elapsed();
    }
    let store_rate = rate(writes, sealed_time);
    let unsealed_rate = rate(writes, unsealed_time);

    println!("{:<28} {:>10}  {:>8}", "", "writes/s", "vs plain");
    for (name, r) in [
        ("plain file + fdatasync", plain),
        ("sled insert + flush", sled_rate),
        ("mesh store put, unsealed", unsealed_rate),
        ("mesh store put (signed)", store_rate),
    ] {
        println!("{name:<28} {r:>10.0}  {:>7.2}x", r / plain);
    }
    println!(
        "mesh store / sled: {:.2}x; signed / unsealed: {:.2}x",
        store_rate / sled_rate,
        store_rate / unsealed_rate
    );
    let sealer = identity.sealer().expect("sealer");
    let started = Instant::now();
    for i in 0..writes {
        let e = meshd::store::entry::Entry::sealed(
            None,
            &format!("route/s{i}"),
            Some(buf.clone()),
            meshd::store::hlc::Hlc::from_millis(1),
            "bench",
            &sealer,
        );
        std::hint::black_box(e);
    }
    println!("signing alone: {:.1} µs per entry", started.elapsed().as_secs_f64() * 1e6 / writes as f64);

    // Merging a peer's signed entries (each signature verified) against the same entries
    // unsealed: the cost of verification on the receiving side.
    let n = writes.min(2_000);
    let peer_store = Store::open(
        &sealed_dir.join("peer"),
        "peer",
        Arc::new(peer.entry_authority().expect("authority")),
        Metrics::new(),
        |_| {},
    )
    .expect("store");
    meshd::identity::seal::record_own_key(&peer_store, &peer).expect("key record");
    for i in 0..n {
        peer_store.put(&format!("route/p{i}"), buf.clone()).expect("put");
    }
    let signed: Vec<_> = peer_store.view().iter().map(|e| (**e).clone()).collect();
    let started = Instant::now();
    let report = store.merge(signed.clone(), meshd::store::wall_ms()).expect("merge");
    let verified = rate(signed.len(), started.elapsed());
    assert_eq!(report.applied, signed.len(), "every signed entry merges: {report:?}");
    let started = Instant::now();
    unsealed.merge(signed.clone(), meshd::store::wall_ms()).expect("merge");
    let unverified = rate(signed.len(), started.elapsed());
    println!(
        "merge of {} signed entries in one batch: {verified:.0} entries/s verified, {unverified:.0} unverified ({:.2}x)",
        signed.len(),
        verified / unverified
    );

    // Snapshot publish at 10,000 entries: grow the (unsealed) store with merged batches,
    // then time what each write does after its flush (copy the map, publish it).
    let mut batch = Vec::new();
    let base = meshd::store::wall_ms();
    for i in 0..10_000u64 {
        let e = meshd::store::entry::Entry::next(
            None,
            &format!("node/n{}/service/s{i}", i % 100),
            Some(buf.clone()),
            meshd::store::hlc::Hlc::from_millis(base),
            "peer",
        );
        batch.push(e);
        if batch.len() == 1_000 {
            unsealed.merge(std::mem::take(&mut batch), base).expect("merge");
        }
    }
    let view = unsealed.view();
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        let copy = meshd::store::View::clone(&view);
        publisher.publish_view(&copy);
    }
    let publish = started.elapsed() / rounds;
    println!("snapshot publish with {} entries: {:.3} ms", view.len(), publish.as_secs_f64() * 1e3);

    let started = Instant::now();
    let n = writes.min(500);
    for i in 0..n {
        unsealed.put(&format!("route/again{i}"), buf.clone()).expect("put");
    }
    println!(
        "mesh store put with {} entries held: {:.0} writes/s ({:.2}x the empty store)",
        view.len(),
        rate(n, started.elapsed()),
        rate(n, started.elapsed()) / unsealed_rate
    );
}

/// Two nodes of one new mesh under `dir`: "bench" (a signer) and "peer".
fn two_nodes(dir: &std::path::Path) -> (Arc<Identity>, Arc<Identity>) {
    let ca = meshd::identity::Ca::create("bench.mesh").expect("ca");
    let node = |name: &str| {
        let role = mesh_proto::role::Role::Operator;
        let id =
            meshd::identity::issue_local(&dir.join(name), &ca, "bench.mesh", name, role, Duration::from_secs(3600));
        Arc::new(id.expect("a node of the mesh"))
    };
    (node("bench"), node("peer"))
}
