//! The store's write rate with a flush per write, against its peers on the same disk in
//! the same run: sled alone (insert + flush, what the store adds its merge, history and
//! snapshot to) and a plain file (append + fdatasync, the floor of any durable write).
//! Then the time to publish a snapshot of 10,000 entries.
//!
//! `cargo run --release -p mesh-bench --bin bench-store [-- WRITES]`

use std::io::Write;
use std::time::{Duration, Instant};

use meshd::state::{Publisher, Snapshot};
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

    // The store.
    let publisher = Publisher::new(Snapshot::empty("bench"));
    let store = Store::open(&dir.path().join("store"), "bench", Metrics::new(), publisher.store_sink()).expect("store");
    let started = Instant::now();
    for i in 0..writes {
        store.put(&format!("route/r{i}"), buf.clone()).expect("put");
    }
    let store_rate = rate(writes, started.elapsed());

    println!("{:<28} {:>10}  {:>8}", "", "writes/s", "vs plain");
    for (name, r) in
        [("plain file + fdatasync", plain), ("sled insert + flush", sled_rate), ("mesh store put", store_rate)]
    {
        println!("{name:<28} {r:>10.0}  {:>7.2}x", r / plain);
    }
    println!("mesh store / sled: {:.2}x", store_rate / sled_rate);

    // Snapshot publish at 10,000 entries: grow the store with merged batches, then time
    // what each write does after its flush (copy the map, publish it).
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
            store.merge(std::mem::take(&mut batch), base).expect("merge");
        }
    }
    let view = store.view();
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
        store.put(&format!("route/again{i}"), buf.clone()).expect("put");
    }
    println!(
        "mesh store put with {} entries held: {:.0} writes/s ({:.2}x the empty store)",
        view.len(),
        rate(n, started.elapsed()),
        rate(n, started.elapsed()) / store_rate
    );
}
