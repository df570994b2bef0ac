//! Gossip against serf (its default `lan` profile), N real processes of each on loopback,
//! same run: time until every node sees every other alive after they start, time until
//! every node sees a kill -9'd node dead (serf: failed), and time until a store write on
//! one node reaches all (serf: a user event). Median of RUNS runs each, and the ratio.
//!
//! `cargo build --release --workspace --bins && cargo run --release -p mesh-bench --bin bench-gossip [-- N RUNS]`
//! (needs `serf` on PATH: `apt-get install serf`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_bench::{median, poll, Cluster, Procs};

const SUBNET: u8 = 231;

fn ip(i: usize) -> String {
    format!("127.{SUBNET}.0.{i}")
}

// ---------- meshd ----------

fn mesh_round(n: usize) -> [Duration; 3] {
    let mut c = Cluster::prepare(SUBNET, n);

    // 1. All start: until everyone sees everyone alive.
    let started = Instant::now();
    c.start();
    c.converge(Duration::from_secs(60)).expect("meshd converges");
    let converge = started.elapsed();

    // 2. A store write on node 1 (a service registration) reaches everyone.
    let digest = |i: usize| c.meshctl(i, &["status"]).map(|s| s["store"]["digest"].clone());
    let file = c.dir.path().join("bench-write.toml");
    std::fs::write(&file, "name = \"bench-write\"\nport = 8080\n").expect("service file");
    let started = Instant::now();
    let out = c.meshctl_raw(1, &["service", "register", "-f", &file.display().to_string()]).expect("meshctl");
    assert!(out.status.success(), "write: {}", String::from_utf8_lossy(&out.stderr));
    let want = digest(1).expect("digest");
    poll(Duration::from_secs(60), || (2..=n).all(|i| digest(i).as_ref() == Some(&want))).expect("write spreads");
    let write = started.elapsed();

    // 3. kill -9 the last node: until everyone else sees it dead.
    let victim = format!("n{n}");
    let started = Instant::now();
    c.kill_last();
    poll(Duration::from_secs(120), || (1..n).all(|i| c.states(i).iter().any(|(m, st)| *m == victim && st == "dead")))
        .expect("meshd detects the kill");
    let detect = started.elapsed();
    [converge, write, detect]
}

// ---------- serf ----------

fn serf(i: usize, args: &[&str]) -> String {
    // Flags go before positional arguments (`serf event -rpc-addr=.. NAME PAYLOAD`).
    let (verb, rest) = args.split_first().expect("a serf verb");
    let out =
        Command::new("serf").arg(verb).arg(format!("-rpc-addr={}:7373", ip(i))).args(rest).output().expect("serf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serf_states(i: usize) -> Vec<(String, String)> {
    serf(i, &["members"])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_owned();
            let _addr = w.next()?;
            Some((name, w.next()?.to_owned()))
        })
        .collect()
}

fn run_serf(dir: &Path, i: usize, join: bool) -> Child {
    let marker = dir.join(format!("event-s{i}"));
    let mut c = Command::new("serf");
    c.arg("agent")
        .arg(format!("-node=s{i}"))
        .arg(format!("-bind={}:7946", ip(i)))
        .arg(format!("-rpc-addr={}:7373", ip(i)))
        .arg(format!("-event-handler=user:bench=touch {}", marker.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if join {
        c.arg(format!("-join={}:7946", ip(1)));
    }
    c.spawn().expect("serf agent (apt-get install serf)")
}

fn serf_round(n: usize) -> [Duration; 3] {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut procs = Procs(vec![run_serf(d, 1, false)]);
    poll(Duration::from_secs(10), || !serf_states(1).is_empty()).expect("serf 1 up");
    let started = Instant::now();
    for i in 2..=n {
        procs.0.push(run_serf(d, i, true));
    }
    poll(Duration::from_secs(60), || {
        (1..=n).all(|i| {
            let s = serf_states(i);
            s.len() == n && s.iter().all(|(_, st)| st == "alive")
        })
    })
    .expect("serf converges");
    let converge = started.elapsed();

    let started = Instant::now();
    serf(1, &["event", "bench", "x"]);
    poll(Duration::from_secs(60), || (1..=n).all(|i| d.join(format!("event-s{i}")).exists())).expect("event spreads");
    let event = started.elapsed();

    let victim = format!("s{n}");
    let started = Instant::now();
    let mut last = procs.0.pop().expect("victim");
    let _ = last.kill();
    let _ = last.wait();
    poll(Duration::from_secs(120), || {
        (1..n).all(|i| serf_states(i).iter().any(|(m, st)| *m == victim && st == "failed"))
    })
    .expect("serf detects the kill");
    [converge, event, started.elapsed()]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut mesh = vec![Vec::new(); 3];
    let mut serf = vec![Vec::new(); 3];
    for r in 0..runs {
        for (k, t) in mesh_round(n).into_iter().enumerate() {
            mesh[k].push(t);
        }
        for (k, t) in serf_round(n).into_iter().enumerate() {
            serf[k].push(t);
        }
        eprintln!("run {} of {runs} done", r + 1);
    }
    println!("N = {n}, median of {runs} runs, loopback");
    println!("{:<40} {:>10} {:>10} {:>8}", "", "meshd", "serf", "ratio");
    let names =
        ["all see all alive after start", "a write / user event reaches all", "a kill -9 seen dead (failed) by all"];
    for (k, name) in names.iter().enumerate() {
        let (m, s) = (median(mesh[k].clone()), median(serf[k].clone()));
        println!(
            "{name:<40} {:>9.2}s {:>9.2}s {:>7.2}x",
            m.as_secs_f64(),
            s.as_secs_f64(),
            m.as_secs_f64() / s.as_secs_f64()
        );
    }
}
