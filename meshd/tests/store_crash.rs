//! kill -9 at random points: every write the store acknowledged is there after reopen.
//!
//! The child is this same test binary, run with `child_writer` selected and the store's
//! path in the environment: it writes keys as fast as it can and prints `ack N` after
//! each write returns. The parent kills it with SIGKILL at a random moment, reads every
//! `ack` line that reached the pipe, reopens the store and checks each of them.
//! `MESH_CRASH_ROUNDS` sets the number of rounds (default 20; `bench/store-crash-soak`
//! runs 100).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshd::store::{Metrics, Store};

const CHILD_DIR: &str = "MESH_STORE_CRASH_CHILD";
const CHILD_START: &str = "MESH_STORE_CRASH_START";
const COUNTER: &str = "crash/counter";

fn open(path: &Path) -> Store {
    Store::open(path, "crash", std::sync::Arc::new(meshd::store::seal::Unsealed), Metrics::new(), |_| {})
        .expect("open store")
}

fn key(i: u64) -> String {
    format!("crash/k{i:010}")
}

fn value(i: u64) -> Vec<u8> {
    format!("value of {i}: ").repeat(8).into_bytes()
}

/// The child's loop. Not a test on its own: without the environment it returns at once.
#[test]
#[ignore = "the child process of acknowledged_writes_survive_kill_9"]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let start: u64 = std::env::var(CHILD_START).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let store = open(Path::new(&dir));
    let mut out = std::io::stdout().lock();
    for i in start.. {
        store.put(&key(i), value(i)).expect("put");
        // Also overwrite one key again and again: its newest acknowledged value must survive.
        store.put(COUNTER, i.to_string().into_bytes()).expect("put counter");
        writeln!(out, "ack {i}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// xorshift64: enough randomness for kill times, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let rounds: u32 = std::env::var("MESH_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed = std::env::var("MESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1);
    eprintln!("MESH_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("store");
    let exe = std::env::current_exe().expect("own path");

    let mut acked_total = 0usize;
    let mut lost = Vec::new();
    let mut next = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &path)
            .env(CHILD_START, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                    let _ = tx.send(n);
                }
            }
        });

        // Kill at a random point once the writer is under way: 0 to 200 ms after its
        // first acknowledgement (liveness: it must acknowledge within 30 s).
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("the writer acknowledges a first write");
        let mut acked = BTreeSet::from([first]);
        let kill_at = Instant::now() + Duration::from_millis(rng.next() % 200);
        while Instant::now() < kill_at {
            if let Ok(n) = rx.recv_timeout(Duration::from_millis(1)) {
                acked.insert(n);
            }
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        reader.join().expect("reader");
        acked.extend(rx.try_iter());

        let store = open(&path);
        let view = store.view();
        for &i in &acked {
            if view.get(&key(i)) != Some(&value(i)[..]) {
                lost.push((round, i));
            }
        }
        let newest = acked.iter().next_back().copied().unwrap_or(0);
        let counter: u64 =
            view.get(COUNTER).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).expect("the counter is there");
        if counter < newest {
            lost.push((round, u64::MAX));
        }
        acked_total += acked.len();
        next = newest + 1_000;
    }
    eprintln!("rounds={rounds} acknowledged={acked_total} lost={} (seed {seed})", lost.len());
    assert!(lost.is_empty(), "acknowledged writes lost after kill -9 (round, key): {lost:?}");
}
