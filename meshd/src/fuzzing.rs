//! The bodies of the fuzz targets (`fuzz/`), here so that the ordinary test suite can
//! replay the saved corpus and crash inputs through exactly the same code
//! (`meshd/tests/fuzz_corpus.rs`). Each takes untrusted bytes and must never panic.
//!
//! Must not: hold logic of its own: each target calls the production decoder.

use mesh_proto::wire::{
    self, Holds, JoinRequest, JoinResponse, MeshRequest, RenewResponse, SyncEntries, SyncPush, SyncSummary,
};

use crate::membership::core::{self, Handler, MemberId, Output, Swim};

/// Every message decoder of the stream protocol.
pub fn wire_frame(data: &[u8]) {
    if data.len() >= 4 {
        let mut header = [0u8; 4];
        header.copy_from_slice(&data[..4]);
        let _ = wire::body_len(header);
    }
    let _ = wire::decode::<MeshRequest>(data);
    let _ = wire::decode::<JoinRequest>(data);
    let _ = wire::decode::<JoinResponse>(data);
    let _ = wire::decode::<RenewResponse>(data);
    let _ = wire::decode::<SyncSummary>(data);
    let _ = wire::decode::<SyncPush>(data);
    let _ = wire::decode::<SyncEntries>(data);
    let _ = wire::decode::<Holds>(data);
    let _ = wire::decode::<mesh_proto::wire::ClockReply>(data);
    // A member's traffic summary: decoded, cut down and merged as the dashboard does.
    if let Ok(summary) = wire::decode::<mesh_proto::traffic::Summary>(data) {
        let s = summary.bounded();
        let merged = mesh_proto::traffic::MeshTraffic::merge(&[s.clone(), s.clone()], vec![]);
        for e in &merged.edges {
            assert!(e.success_rate.is_none_or(|r| (0.0..=1.0).contains(&r)), "{e:?}");
        }
        let _ = mesh_proto::traffic::top_paths(&[s], "reviews");
    }
}

/// The join token's text form.
pub fn token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = mesh_proto::token::Token::decode(text) {
            assert_eq!(mesh_proto::token::Token::decode(&t.encode()), Ok(t), "a decoded token re-encodes");
        }
    }
}

/// Store entries as they arrive from peers: the decoder, the trust rules (key records
/// and their certificates, signatures, history chains, write rules) against a view that
/// holds one real node's key record, and the merge.
pub fn store_entry(data: &[u8]) {
    if let Ok(e) = crate::store::entry::Entry::decode(data) {
        let (authority, view) = trust_fixture();
        let _ = crate::store::seal::Authority::judge(authority, view, &[&e]);
        let mut view = view.clone();
        view.merge(std::sync::Arc::new(e.clone()));
        let _ = e.encoded_len();
        let _ = crate::membership::sync::decode(vec![data.to_vec()]);
    }
}

/// One mesh CA, a member node "a" of it, and a view holding a's key record: made once.
fn trust_fixture() -> &'static (crate::identity::seal::EntryAuthority, crate::store::View) {
    use crate::identity::{ca, seal, Ca, SpiffeId};
    use crate::store::entry::Entry;
    use crate::store::hlc::Hlc;
    use mesh_proto::role::Role;

    struct A;
    impl seal::Me for A {
        fn name(&self) -> &str {
            "a"
        }
        fn role(&self) -> Role {
            Role::Member
        }
    }
    static FIXTURE: std::sync::OnceLock<(seal::EntryAuthority, crate::store::View)> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = Ca::create("mesh.local").expect("a CA");
        let key = ca::new_node_key().expect("a key");
        let csr = ca::csr_for(&key, "a").expect("a CSR");
        let ttl = std::time::Duration::from_secs(3600);
        let cert =
            ca.issue(&csr, &SpiffeId::new("mesh.local", "a"), Role::Member, ttl).expect("issue").expect("signer");
        let key_hash = crate::identity::cert::inspect(&cert).expect("a node certificate").key_hash;
        let sealer = seal::NodeSealer::new(&key.serialize_der(), &key_hash).expect("a sealer");
        let record = Entry::sealed(
            None,
            &seal::key_record_key("a", &key_hash),
            Some(cert.to_vec()),
            Hlc::from_millis(1),
            "a",
            &sealer,
        )
        .expect("sealed");
        let mut view = crate::store::View::default();
        view.merge(std::sync::Arc::new(record));
        (seal::EntryAuthority::new(Box::new(A), "mesh.local", vec![ca.der.clone()], sealer), view)
    })
}

/// A gossip datagram from an authenticated peer named "peer": the sender check, then
/// foca itself with our codec and broadcast handler.
pub fn gossip_datagram(data: &[u8]) {
    let me = MemberId { name: "me".into(), addr: ([198, 18, 0, 1], 7946).into(), bump: 1 };
    if core::check_sender(data, "peer", 1150).is_err() {
        return;
    }
    let params = crate::config::GossipConfig::default().params();
    let mut swim: Swim = foca::Foca::with_custom_broadcast(
        me,
        params.foca_config(3),
        rand::SeedableRng::seed_from_u64(1),
        // Bumps up to 2033, as a driver's clock would bound them.
        core::MeshCodec::new(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(2_000_000_000_000))),
        Handler::default(),
    );
    let mut out = Output::default();
    let _ = swim.handle_data(data, &mut out);
}

/// A DNS packet, over UDP and over TCP: no panic, and no UDP answer larger than the
/// query allows (512 bytes, or its EDNS size up to meshd's 1,232).
pub fn dns_query(data: &[u8]) {
    use std::sync::{Arc, OnceLock};
    static RESPONDER: OnceLock<crate::dns::Responder> = OnceLock::new();
    let responder = RESPONDER.get_or_init(|| {
        let zone = crate::dns::answer::Zone::new("mesh", 5).expect("zone");
        let snap = Arc::new(crate::state::Snapshot::empty("me"));
        let vips = Arc::new([("reviews".to_owned(), std::net::Ipv4Addr::new(127, 77, 0, 1))].into_iter().collect());
        crate::dns::Responder::new(zone, Default::default(), snap, vips)
    });
    let mut out = Vec::new();
    if responder.respond(data, crate::dns::Transport::Udp, &mut out) {
        let edns =
            hickory_proto::op::Message::from_vec(data).ok().and_then(|m| m.edns.as_ref().map(|e| e.max_payload()));
        let limit = crate::dns::packet::udp_limit(edns);
        assert!(out.len() <= limit.max(crate::dns::packet::UDP_PLAIN), "{} bytes for a limit of {limit}", out.len());
    }
    let _ = responder.respond(data, crate::dns::Transport::Tcp, &mut out);
}
