//! The responder on snapshots built here: the copied answers equal the decoded ones,
//! truncation, error codes. The process-level behaviour is in `tests/tests/dns.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData};
use mesh_proto::api::MemberState;
use mesh_proto::service::ServiceSpec;

use super::*;
use crate::state::model::{InstanceRecord, Source};
use crate::state::Member;
use crate::store::entry::Entry;
use crate::store::hlc::Hlc;
use crate::store::View;

/// A snapshot of `nodes` members, each hosting an instance of every service in `specs`
/// at the member's own address.
fn snapshot(nodes: usize, specs: &[&str]) -> Arc<Snapshot> {
    let (view, members) = store_of(nodes, specs);
    let mut snap = Snapshot::new("n0", members);
    snap.index = 1;
    snap.derive(&view);
    Arc::new(snap)
}

/// The store view and members behind [`snapshot`].
fn store_of(nodes: usize, specs: &[&str]) -> (View, Vec<Member>) {
    let mut view = View::default();
    let mut members = Vec::new();
    for n in 0..nodes {
        let node = format!("n{n}");
        let ip: IpAddr = format!("198.18.{}.{}", n / 200, n % 200 + 1).parse().expect("ip");
        members.push(Member {
            name: node.clone(),
            addr: SocketAddr::new(ip, 7946),
            state: MemberState::Alive,
            last_heard: SystemTime::now(),
        });
        for text in specs {
            let mut spec: ServiceSpec = toml::from_str(text).expect("spec");
            spec.address = ip;
            let instance = InstanceRecord { node: node.clone(), spec, healthy: true, source: Source::Api };
            let key = InstanceRecord::key(&node, &instance.spec.name);
            let value = instance.encode().expect("json");
            view.merge(Arc::new(Entry::next(None, &key, Some(value), Hlc::from_millis(1), &node)));
        }
    }
    (view, members)
}

fn responder(snap: Arc<Snapshot>, vips: &[(&str, [u8; 4])]) -> Responder {
    let vips: VipMap = Arc::new(vips.iter().map(|(n, ip)| ((*n).to_owned(), Ipv4Addr::from(*ip))).collect());
    Responder::new(Zone::new("mesh", 5).expect("zone"), Metrics::default(), snap, vips)
}

/// A query as resolvers send it: ID 7, RD set, optionally EDNS with `edns` bytes.
pub(super) fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(7, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

fn ask(r: &Responder, name: &str, qtype: RecordType, edns: Option<u16>, transport: Transport) -> Message {
    let mut out = Vec::new();
    assert!(r.respond(&query(name, qtype, edns), transport, &mut out), "an answer to {name} {qtype}");
    Message::from_vec(&out).expect("a DNS message")
}

const REVIEWS: &str = "name = \"reviews\"\nport = 9080\nprotocol = \"http\"\nlabels = { version = \"v1\" }\n";
const DB: &str = "name = \"db\"\nport = 5432\npassthrough = true\n";

#[test]
fn copied_answers_equal_the_decoded_ones_for_every_name_and_type() {
    let snap = snapshot(3, &[REVIEWS]);
    let r = responder(snap, &[("reviews", [127, 77, 0, 1]), ("v1.reviews", [127, 77, 0, 2])]);
    let answers = r.current.load();
    assert!(answers.encoded.len() >= 7 * 3, "{} encoded", answers.encoded.len());
    for name in ["mesh.", "reviews.mesh.", "v1.reviews.mesh.", "_http._tcp.reviews.mesh.", "n1.node.mesh."] {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
            for edns in [None, Some(1232)] {
                let q = query(&name.to_uppercase(), qtype, edns);
                assert!(Question::read(&q).is_some(), "{name} takes the fast path");
                let (mut fast, mut full) = (Vec::new(), Vec::new());
                assert!(r.respond(&q, Transport::Udp, &mut fast));
                assert!(r.respond_decoded(&answers, &q, Transport::Udp, &mut full));
                assert_eq!(
                    Message::from_vec(&fast).expect("fast"),
                    Message::from_vec(&full).expect("full"),
                    "{name} {qtype} edns={edns:?}"
                );
            }
        }
    }
    let m = ask(&r, "ReViEwS.mesh.", RecordType::A, None, Transport::Udp);
    assert_eq!((m.metadata.id, m.metadata.recursion_desired, m.metadata.authoritative), (7, true, true));
    assert_eq!(m.queries[0].name().to_ascii(), "ReViEwS.mesh.", "the case as asked");
    assert_eq!(Some(&m.answers[0].data), Some(&RData::A(hickory_proto::rr::rdata::A::new(127, 77, 0, 1))));
}

#[test]
fn passthrough_answers_rotate_through_every_instance() {
    let r = responder(snapshot(4, &[DB]), &[]);
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let m = ask(&r, "db.mesh.", RecordType::A, None, Transport::Udp);
        assert_eq!(m.answers.len(), 4);
        firsts.insert(Some(m.answers[0].data.to_string()));
    }
    assert_eq!(firsts.len(), 4, "each instance comes first in turn: {firsts:?}");
}

#[test]
fn an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
    // 100 instances: 100 A records (1,600+ bytes) and 100 SRV records with glue.
    let r = responder(snapshot(100, &[DB, REVIEWS]), &[]);
    for (name, qtype) in [("db.mesh.", RecordType::A), ("_http._tcp.reviews.mesh.", RecordType::SRV)] {
        for edns in [None, Some(1232), Some(4096)] {
            let mut out = Vec::new();
            assert!(r.respond(&query(name, qtype, edns), Transport::Udp, &mut out));
            assert!(out.len() <= packet::udp_limit(edns), "{name}: {} bytes", out.len());
            let m = Message::from_vec(&out).expect("message");
            assert!(m.metadata.truncation, "{name} edns={edns:?}: TC set");
            assert!(m.answers.is_empty() && m.additionals.is_empty());
            assert_eq!(m.edns.is_some(), edns.is_some(), "EDNS kept when asked");
        }
        let m = ask(&r, name, qtype, None, Transport::Tcp);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100, "{name}: every instance over TCP");
    }
    let srv = ask(&r, "_http._tcp.reviews.mesh.", RecordType::SRV, None, Transport::Tcp);
    assert_eq!(srv.additionals.len(), 100, "glue for each node");
}

#[test]
fn errors_have_their_codes_and_responses_are_never_answered() {
    let r = responder(snapshot(1, &[REVIEWS]), &[("reviews", [127, 77, 0, 1])]);
    let code = |packet: &[u8]| {
        let mut out = Vec::new();
        r.respond(packet, Transport::Udp, &mut out)
            .then(|| Message::from_vec(&out).expect("message").metadata.response_code)
    };
    assert_eq!(code(&query("nope.mesh.", RecordType::A, None)), Some(ResponseCode::NXDomain));
    assert_eq!(code(&query("example.com.", RecordType::A, None)), Some(ResponseCode::Refused));
    let mut chaos = query("version.bind.", RecordType::TXT, None);
    let n = chaos.len();
    chaos[n - 1] = 3;
    assert_eq!(code(&chaos), Some(ResponseCode::Refused), "CHAOS: not ours");
    let mut v1 = query("reviews.mesh.", RecordType::A, Some(1232));
    let n = v1.len();
    v1[n - 5] = 1;
    // BADVERS, 16 (hickory reads 16 as BADSIG, which shares the number).
    assert_eq!(code(&v1).map(u16::from), Some(16));
    let mut notify = query("reviews.mesh.", RecordType::A, None);
    notify[2] |= 4 << 3;
    assert_eq!(code(&notify), Some(ResponseCode::NotImp));
    let mut garbage = query("reviews.mesh.", RecordType::A, None);
    garbage.truncate(15);
    assert_eq!(code(&garbage), Some(ResponseCode::FormErr));
    let mut response = query("reviews.mesh.", RecordType::A, None);
    response[2] |= 0x80;
    assert_eq!(code(&response), None, "a response gets no answer");
    assert_eq!(code(&[0u8; 5]), None, "less than a header gets no answer");
    // A compression loop in the question: decoded, refused as malformed.
    let mut looped = query("reviews.mesh.", RecordType::A, None);
    looped.splice(12..26, [0xc0, 12]);
    assert_eq!(code(&looped), Some(ResponseCode::FormErr));
}

#[test]
fn an_update_swaps_in_the_new_names() {
    let r = responder(snapshot(1, &[]), &[]);
    assert_eq!(
        ask(&r, "reviews.mesh.", RecordType::A, None, Transport::Udp).metadata.response_code,
        ResponseCode::NXDomain
    );
    let vips: VipMap = Arc::new([("reviews".to_owned(), Ipv4Addr::new(127, 77, 0, 9))].into_iter().collect());
    r.update(snapshot(1, &[REVIEWS]), vips);
    let m = ask(&r, "reviews.mesh.", RecordType::A, None, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn an_incremental_build_equals_a_full_one_and_keeps_the_unchanged_names() {
    let specs = [
        "name = \"reviews\"\nport = 9080\nprotocol = \"http\"\nlabels = { version = \"v1\" }\n",
        "name = \"db\"\nport = 5432\npassthrough = true\n",
        "name = \"web\"\nport = 80\n",
    ];
    let (mut view, members) = store_of(3, &specs);
    let publisher = crate::state::Publisher::new(Snapshot::new("n0", members));
    publisher.publish_view(&view);
    let zone = Zone::new("mesh", 5).expect("zone");
    let metrics = Metrics::default();
    let vips: VipMap = Arc::new(
        [("reviews", [127, 77, 0, 1]), ("v1.reviews", [127, 77, 0, 2]), ("web", [127, 77, 0, 3])]
            .iter()
            .map(|(n, ip)| ((*n).to_owned(), Ipv4Addr::from(*ip)))
            .collect(),
    );
    let before = Answers::build(&zone, &metrics, publisher.current(), vips.clone(), None);

    // One instance of web turns unhealthy on n1.
    let key = InstanceRecord::key("n1", "web");
    let mut record = InstanceRecord::decode(view.get(&key).expect("held")).expect("record");
    record.healthy = false;
    let current = view.entry(&key).cloned();
    view.merge(Arc::new(Entry::next(
        current.as_deref(),
        &key,
        Some(record.encode().expect("json")),
        Hlc::from_millis(2),
        "n1",
    )));
    publisher.publish_view(&view);
    let snap = publisher.current();

    let incremental = Answers::build(&zone, &metrics, snap.clone(), vips.clone(), Some(&before));
    let full = Answers::build(&zone, &metrics, snap, vips, None);
    assert_eq!(incremental.encoded.len(), full.encoded.len());
    for (key, e) in &full.encoded {
        let got = incremental.encoded.get(key).unwrap_or_else(|| panic!("{key:?} missing"));
        assert_eq!(got.orders, e.orders, "{key:?}");
    }
    // reviews did not change: its bytes were taken over, not encoded again.
    let kept = &incremental.by_name["reviews"];
    assert!(kept.iter().all(|k| Arc::ptr_eq(&incremental.encoded[k], &before.encoded[k])));
    // web changed: encoded again.
    let web = &incremental.by_name["_tcp._tcp.web"];
    assert!(web.iter().any(|k| !Arc::ptr_eq(&incremental.encoded[k], &before.encoded[k])), "web's SRV is new");
}
