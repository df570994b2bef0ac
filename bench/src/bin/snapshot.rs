//! Publish-to-visible time: one instance's health changes in a mesh of N services; how
//! long until the new snapshot is published (the store view decoded into typed services,
//! health resolved) and its readers have rebuilt what they serve from (routing tables,
//! the DNS answers). At 100, 1,000 and 10,000 services, 10 nodes. The peer in the same
//! run is the full rebuild (decoding every record, encoding every DNS answer, as before
//! the read model kept what did not change).
//!
//! `cargo run --release -p mesh-bench --bin bench-snapshot [-- ROUNDS]`

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshd::state::model::{InstanceRecord, Source};
use meshd::state::{Member, Publisher, Snapshot};
use meshd::store::entry::Entry;
use meshd::store::hlc::Hlc;
use meshd::store::View;

const NODES: usize = 10;

fn record(service: usize, healthy: bool) -> (String, Vec<u8>) {
    let node = format!("n{}", service % NODES);
    let text = format!("name = \"s{service}\"\nport = 8080\nprotocol = \"http\"\nlabels = {{ version = \"v1\" }}\n");
    let spec = mesh_proto::service::ServiceSpec::from_file("s.toml", &text).expect("spec");
    let key = InstanceRecord::key(&node, &spec.name);
    let value = InstanceRecord { node, spec, healthy, source: Source::Api }.encode().expect("encode");
    (key, value)
}

fn per(took: Duration, rounds: u32) -> f64 {
    took.as_secs_f64() * 1e3 / f64::from(rounds)
}

fn main() {
    let rounds: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let members: Vec<Member> = (0..NODES)
        .map(|n| Member {
            name: format!("n{n}"),
            addr: SocketAddr::from((Ipv4Addr::new(198, 18, 0, n as u8 + 1), 7946)),
            state: mesh_proto::api::MemberState::Alive,
            last_heard: SystemTime::now(),
        })
        .collect();
    println!("one health change among N services on {NODES} nodes, ms per change (mean of {rounds})");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "N", "publish", "routing", "dns", "visible", "full rebuild", "speedup"
    );
    for n in [100usize, 1_000, 10_000] {
        let mut view = View::default();
        let mut clock = 1u64;
        for s in 0..n {
            let (key, value) = record(s, true);
            view.merge(Arc::new(Entry::next(None, &key, Some(value), Hlc::from_millis(clock), "w")));
            clock += 1;
        }
        let publisher = Publisher::new(Snapshot::new("n0", members.clone()));
        publisher.publish_view(&view);
        let zone = meshd::dns::answer::Zone::new("mesh", 5).expect("zone");
        let vips: meshd::dns::VipMap = Arc::new(
            (0..n)
                .map(|s| (format!("s{s}"), Ipv4Addr::new(127, 77, (s / 250) as u8, (s % 250) as u8 + 1)))
                .collect::<BTreeMap<_, _>>(),
        );

        let (mut full, mut publishing, mut routing, mut dns) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let metrics = meshd::dns::Metrics::default();
        let mut answers = meshd::dns::Answers::build(&zone, &metrics, publisher.current(), vips.clone(), None);
        for round in 0..rounds {
            let (key, value) = record(round as usize % n, round % 2 == 1);
            let current = view.entry(&key).cloned();
            clock += 1;
            view.merge(Arc::new(Entry::next(current.as_deref(), &key, Some(value), Hlc::from_millis(clock), "w")));

            let copy = view.clone();
            let t = Instant::now();
            publisher.publish_view(&copy);
            publishing += t.elapsed();
            let snap = publisher.current();

            let t = Instant::now();
            let tables = meshd::routing::Tables::build(&snap);
            routing += t.elapsed();
            assert_eq!(tables.services.len(), n);

            let t = Instant::now();
            answers = meshd::dns::Answers::build(&zone, &metrics, snap.clone(), vips.clone(), Some(&answers));
            dns += t.elapsed();

            // The peer: everything from scratch.
            let t = Instant::now();
            let mut fresh = Snapshot::new("n0", members.clone());
            fresh.derive(&copy);
            let fresh = Arc::new(fresh);
            let _ = meshd::routing::Tables::build(&fresh);
            let _ = meshd::dns::Answers::build(&zone, &metrics, fresh, vips.clone(), None);
            full += t.elapsed();
        }
        let visible = publishing + routing + dns;
        println!(
            "{n:>8} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>12.3} {:>9.1}x",
            per(publishing, rounds),
            per(routing, rounds),
            per(dns, rounds),
            per(visible, rounds),
            per(full, rounds),
            full.as_secs_f64() / visible.as_secs_f64().max(1e-9)
        );
    }
}
