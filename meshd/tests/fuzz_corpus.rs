//! Replays the fuzz corpus and every saved crash input through the fuzz targets' bodies
//! (`meshd::fuzzing`), so what a fuzzer once found stays fixed. Fuzzing itself is run by
//! hand (`fuzz/README.md`); this runs in every CI.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            body(&data);
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no corpus for {target}: run the fuzzer (fuzz/README.md) and commit its corpus");
    eprintln!("{target}: {inputs} inputs replayed");
}

#[test]
fn wire_frame_corpus() {
    replay("wire_frame", meshd::fuzzing::wire_frame);
}

#[test]
fn token_corpus() {
    replay("token", meshd::fuzzing::token);
}

#[test]
fn store_entry_corpus() {
    replay("store_entry", meshd::fuzzing::store_entry);
}

#[test]
fn dns_query_corpus() {
    replay("dns_query", meshd::fuzzing::dns_query);
}

#[test]
fn gossip_datagram_corpus() {
    replay("gossip_datagram", meshd::fuzzing::gossip_datagram);
}

/// Writes seed inputs for the fuzzers (valid messages of each kind, so that fuzzing
/// starts from structure): `MESH_FUZZ_SEEDS=1 cargo test -p meshd --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus seeds; run by hand"]
fn write_seeds() {
    use foca::Foca;
    use mesh_proto::wire::*;
    use meshd::membership::core::{encode_item, Handler, Item, MemberId, Output, Swim};
    use meshd::store::entry::Entry;
    use meshd::store::hlc::Hlc;

    if std::env::var_os("MESH_FUZZ_SEEDS").is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("write");
    };

    let entry = Entry::next(
        None,
        "route/reviews",
        Some(b"name = \"reviews\"".to_vec()),
        Hlc::from_millis(1_700_000_000_000),
        "vm-1",
    );
    let entry2 = Entry::next(Some(&entry), "route/reviews", None, Hlc::from_millis(1_700_000_000_500), "vm-2");
    put("store_entry", "put", &entry.encode().expect("e"));
    put("store_entry", "tombstone", &entry2.encode().expect("e"));

    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "join",
            postcard::to_stdvec(&JoinRequest::V1 { secret: [7; 16], node: "vm-2".into(), csr: vec![48, 3, 2, 1, 0] })
                .expect("s"),
        ),
        (
            "granted",
            postcard::to_stdvec(&JoinResponse::Granted { cert: vec![1, 2], ca: vec![3], ca_key: Some(vec![4]) })
                .expect("s"),
        ),
        (
            "refused",
            postcard::to_stdvec(&JoinResponse::Refused(Refusal { reason: RefusalReason::Used, detail: "x".into() }))
                .expect("s"),
        ),
        (
            "sync",
            postcard::to_stdvec(&MeshRequest::Sync {
                buckets: vec![BucketDigest { count: 1, xor: 2 }; 4],
                members: vec![1, 2, 3],
            })
            .expect("s"),
        ),
        ("holds", postcard::to_stdvec(&MeshRequest::Holds { key: "route/reviews".into() }).expect("s")),
        ("push", postcard::to_stdvec(&MeshRequest::Push { entries: vec![entry.encode().expect("e")] }).expect("s")),
        (
            "summary",
            postcard::to_stdvec(&SyncSummary {
                buckets: vec![1, 2],
                keys: vec![KeyVersion { key: "k".into(), version: 9, origin: "o".into(), print: 7 }],
                members: vec![],
            })
            .expect("s"),
        ),
        ("renew", postcard::to_stdvec(&MeshRequest::Renew { csr: vec![48, 0] }).expect("s")),
        ("traffic", postcard::to_stdvec(&MeshRequest::Traffic).expect("s")),
        (
            "traffic-summary",
            postcard::to_stdvec(&mesh_proto::traffic::Summary {
                node: "n2".into(),
                admin_http: Some("127.0.0.1:9101".into()),
                window_secs: 30.0,
                edges: vec![mesh_proto::traffic::Edge {
                    source: "productpage".into(),
                    destination: "reviews".into(),
                    protocol: "http".into(),
                    requests: 10,
                    errors: 1,
                    latency: vec![1; mesh_proto::traffic::LATENCY_BOUNDS_MS.len() + 1],
                    ..Default::default()
                }],
                paths: vec![mesh_proto::traffic::PathStats {
                    service: "reviews".into(),
                    path: "GET /r".into(),
                    requests: 10,
                    errors: 1,
                }],
            })
            .expect("s"),
        ),
    ];
    for (name, body) in frames {
        put("wire_frame", name, &body);
    }

    let token = mesh_proto::token::Token {
        signer: "198.18.0.1:7946".parse().expect("addr"),
        ca_fingerprint: [9; 32],
        secret: [3; 16],
    };
    put("token", "token", token.encode().as_bytes());

    for (name, qtype) in [
        ("reviews.mesh.", hickory_proto::rr::RecordType::A),
        ("_http._tcp.reviews.mesh.", hickory_proto::rr::RecordType::SRV),
        ("node-1.node.mesh.", hickory_proto::rr::RecordType::AAAA),
        ("example.com.", hickory_proto::rr::RecordType::A),
    ] {
        let mut msg =
            hickory_proto::op::Message::new(0, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
        msg.add_query(hickory_proto::op::Query::query(hickory_proto::rr::Name::from_ascii(name).expect("name"), qtype));
        put("dns_query", name, &msg.to_vec().expect("encode"));
    }

    // Real SWIM datagrams from a member named "peer".
    let params = meshd::config::GossipConfig::default().params();
    let id = |name: &str| MemberId { name: name.into(), addr: ([198, 18, 0, 1], 7946).into(), bump: 1 };
    let mut peer: Swim = Foca::with_custom_broadcast(
        id("peer"),
        params.foca_config(3),
        rand::SeedableRng::seed_from_u64(1),
        meshd::membership::core::MeshCodec::unbounded(),
        Handler::default(),
    );
    let mut me: Swim = Foca::with_custom_broadcast(
        id("me"),
        params.foca_config(3),
        rand::SeedableRng::seed_from_u64(2),
        meshd::membership::core::MeshCodec::unbounded(),
        Handler::default(),
    );
    let mut out = Output::default();
    peer.announce(id("me"), &mut out).expect("announce");
    let announce = out.sends.remove(0).1;
    put("gossip_datagram", "announce", &announce);
    let mut reply = Output::default();
    me.handle_data(&announce, &mut reply).expect("handle");
    let mut out = Output::default();
    for (_, d) in reply.sends {
        let _ = peer.handle_data(&d, &mut out);
    }
    peer.add_broadcast(&encode_item(&Item::Entry(entry))).expect("broadcast");
    let mut out = Output::default();
    peer.broadcast(&mut out).expect("broadcast");
    peer.gossip(&mut out).expect("gossip");
    for (i, (_, d)) in out.sends.iter().enumerate() {
        put("gossip_datagram", &format!("peer-{i}"), d);
    }
}
