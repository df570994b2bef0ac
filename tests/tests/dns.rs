//! DNS with real meshd processes and real DNS packets: every record docs/dns.md lists,
//! NXDOMAIN and REFUSED, EDNS, and passthrough answers following health.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use mesh_tests::{Block, Node};

const CONVERGE: Duration = Duration::from_secs(30);

fn register(node: &Node, file: &str, text: &str) {
    let path = node.dir.path().join(file);
    std::fs::write(&path, text).expect("service file");
    let out = node.meshctl(&["service", "register", "-f", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn a_records(msg: &hickory_proto::op::Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn vip(n: &Node, name: &str) -> Option<String> {
    let s = n.meshctl_json(&["services"]);
    s.as_array()?.iter().find(|s| s["name"] == name)?["vip"].as_str().map(str::to_owned)
}

#[test]
fn every_record_answers_as_designed() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let seed = format!("join = [\"{}\"]", n1.addr());
    let n2 = Node::join(&block, 2, &n1.token(&[]), &seed, "");
    register(
        &n2,
        "reviews.toml",
        "name = \"reviews\"\nport = 9080\nprotocol = \"http\"\nlabels = { version = \"v1\" }\n",
    );
    let db_ip = block.node_ip(2);
    register(&n2, "db.toml", &format!("name = \"db\"\naddress = \"{db_ip}\"\nport = 5432\npassthrough = true\n"));

    // A service on node-2 answers on node-1 within seconds.
    let reviews_vip = n1.eventually(CONVERGE, "reviews.mesh answers on node-1", || {
        let v = vip(&n1, "reviews")?;
        let answer = n1.dig("reviews.mesh.", RecordType::A, false);
        (a_records(&answer) == vec![v.clone()]).then_some(v)
    });
    assert!(reviews_vip.starts_with(&format!("127.{}.", block.n)), "{reviews_vip}");
    let answer = n1.dig("reviews.mesh.", RecordType::A, false);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.answers[0].ttl, 5);

    // The subset named by the version label.
    let v1 = n1.eventually(CONVERGE, "v1.reviews has a VIP", || {
        vip(&n1, "v1.reviews").or_else(|| {
            let a = a_records(&n1.dig("v1.reviews.mesh.", RecordType::A, false));
            a.first().cloned()
        })
    });
    let subset = n1.dig("v1.reviews.mesh.", RecordType::A, false);
    assert_eq!(a_records(&subset), vec![v1.clone()]);
    assert_ne!(v1, reviews_vip, "the subset has its own address");

    // AAAA for an IPv4-only service: an empty answer, not an error.
    let aaaa = n1.dig("reviews.mesh.", RecordType::AAAA, false);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());

    // SRV with the target's A record in the additional section.
    let srv = n1.dig("_http._tcp.reviews.mesh.", RecordType::SRV, false);
    assert_eq!(srv.metadata.response_code, ResponseCode::NoError);
    let Some(RData::SRV(record)) = srv.answers.first().map(|r| &r.data) else { panic!("an SRV answer: {srv:?}") };
    assert_eq!(record.port, 9080);
    assert_eq!(record.target.to_ascii(), "node-2.node.mesh.");
    let glue: Vec<String> = srv
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) if r.name.to_ascii() == "node-2.node.mesh." => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(glue, vec![block.node_ip(2).to_string()], "the target's A in the additional section");

    // NODE.node.mesh
    let node = n1.dig("node-2.node.mesh.", RecordType::A, false);
    assert_eq!(a_records(&node), vec![block.node_ip(2).to_string()]);

    // Passthrough: the instance's own address.
    n1.eventually(CONVERGE, "db.mesh passthrough", || {
        (a_records(&n1.dig("db.mesh.", RecordType::A, false)) == vec![db_ip.to_string()]).then_some(())
    });

    // Unknown in the domain: NXDOMAIN with the SOA; outside: REFUSED; EDNS answered.
    let nx = n1.dig("nope.mesh.", RecordType::A, false);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.first().map(|r| r.record_type()), Some(RecordType::SOA));
    let refused = n1.dig("example.com.", RecordType::A, false);
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(refused.answers.is_empty());
    let with_edns = n1.dig("reviews.mesh.", RecordType::A, true);
    assert!(with_edns.edns.is_some(), "EDNS in, EDNS out");

    // TCP: the same answers, two queries on one connection, case as asked.
    let tcp = dig_tcp(&n1, &["REVIEWS.mesh.", "_http._tcp.reviews.mesh."], RecordType::SRV);
    assert_eq!(tcp[0].queries[0].name().to_ascii(), "REVIEWS.mesh.");
    assert!(
        tcp[0].answers.is_empty() && tcp[0].metadata.response_code == ResponseCode::NoError,
        "no SRV at the A name"
    );
    assert_eq!(tcp[1].answers, srv.answers);
}

/// Queries over one TCP connection (RFC 7766 framing), answered in order.
fn dig_tcp(node: &Node, names: &[&str], qtype: RecordType) -> Vec<hickory_proto::op::Message> {
    use hickory_proto::op::{Message, Query};
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(node.dns_addr()).expect("DNS over TCP");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    names
        .iter()
        .map(|name| {
            let mut msg = Message::new(99, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
            msg.add_query(Query::query(hickory_proto::rr::Name::from_ascii(name).expect("name"), qtype));
            let bytes = msg.to_vec().expect("encode");
            let len = u16::try_from(bytes.len()).expect("short").to_be_bytes();
            stream.write_all(&[&len[..], &bytes].concat()).expect("send");
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).expect("a length within 5s");
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut body).expect("a response");
            Message::from_vec(&body).expect("a DNS message")
        })
        .collect()
}

#[test]
fn a_passthrough_service_leaves_the_answers_when_its_check_fails_and_returns() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let listener = std::net::TcpListener::bind((block.node_ip(1), 0)).expect("listen");
    let addr = listener.local_addr().expect("addr");
    register(
        &n1,
        "db.toml",
        &format!(
            "name = \"db\"\naddress = \"{}\"\nport = {}\npassthrough = true\ncheck = {{ tcp = \"{addr}\", interval = \"200ms\" }}\n",
            addr.ip(),
            addr.port()
        ),
    );
    let ip = addr.ip().to_string();
    n1.eventually(CONVERGE, "db answers once healthy", || {
        (a_records(&n1.dig("db.mesh.", RecordType::A, false)) == vec![ip.clone()]).then_some(())
    });
    drop(listener);
    n1.eventually(CONVERGE, "db leaves the answers", || {
        a_records(&n1.dig("db.mesh.", RecordType::A, false)).is_empty().then_some(())
    });
    let _listener = std::net::TcpListener::bind(addr).expect("listen again");
    n1.eventually(CONVERGE, "db returns", || {
        (a_records(&n1.dig("db.mesh.", RecordType::A, false)) == vec![ip.clone()]).then_some(())
    });
    // The log says why a check failed, and nothing empty when it passes.
    let logs = n1.logs();
    assert!(logs.contains("health changed: healthy") && logs.contains("health changed: unhealthy"), "{logs}");
    assert!(!logs.contains("reason=None"), "no empty reasons in the log: {logs}");
}

/// A query for a name of `len` wire bytes (root label included), over raw UDP.
fn query_with_name_of(len: usize) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let mut left = len - 1;
    while left > 0 {
        let mut label = (left - 1).min(63);
        if left - 1 - label == 1 {
            label -= 1;
        }
        p.push(u8::try_from(label).expect("label"));
        p.extend(std::iter::repeat_n(b'a', label));
        left -= 1 + label;
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

#[test]
fn names_of_250_to_260_bytes_get_answers_and_dns_keeps_serving() {
    let block = Block::take();
    let n1 = Node::start(&block, 1, "");
    let sock = std::net::UdpSocket::bind((n1.dns_addr().ip(), 0)).expect("udp");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    for len in 250..=260 {
        sock.send_to(&query_with_name_of(len), n1.dns_addr()).expect("send");
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("an answer to a {len}-byte name: {e}"));
        let rcode = buf[3] & 0x0f;
        // REFUSED (outside the zone) up to 255 bytes, FORMERR (not a legal name) beyond.
        let expected = if len <= 255 { 5 } else { 1 };
        assert_eq!(rcode, expected, "a {len}-byte name, {n} bytes back");
    }
    // And a plain query still gets its answer: the server did not die.
    let answer = n1.dig("node-1.node.mesh.", RecordType::A, false);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let metrics = n1.metrics();
    assert!(metrics.contains("mesh_dns_restarts_total 0"), "no restart was needed: {metrics}");
}
