//! DNS for the mesh on `dns.listen` (UDP and TCP), authoritative for `dns.domain`,
//! answering from the snapshot ([`answer`] decides). Never forwards or recurses: a name
//! outside the domain is REFUSED. Responses carry EDNS when the query does; a UDP
//! response that does not fit the client's size is cut to its header and question with
//! TC set, so the client retries over TCP.
//!
//! Every answer the zone can give for its names (A, AAAA and SRV of each service,
//! subset, SRV name and node) is encoded once per snapshot, off the query path, and
//! published with an atomic pointer swap. A query of the common shape ([`packet`]) is
//! answered by copying those bytes: no lock, no allocation, no decoding. Everything else
//! (other types, unknown names, EDNS versions, malformed packets) takes hickory-proto's
//! full decoder and the same [`answer`] decision.
//!
//! Why not hickory-server: its per-query decode, builder and encode cost 2.4x unbound's
//! CPU per query; meshd keeps hickory-proto for everything but the copy and runs its own
//! socket loops.
//!
//! Must not: forward or recurse, block the socket loops on a snapshot build, or let one
//! packet stop the server.

pub mod answer;
pub mod packet;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RecordType};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use self::answer::{Answer, Zone};
use self::packet::Question;
use crate::drain::DrainWatcher;
use crate::state::{Snapshot, SnapshotRx};

/// This host's virtual IPs by name (`reviews`, `v1.reviews`).
pub type VipMap = Arc<BTreeMap<String, Ipv4Addr>>;

/// Passthrough answers rotate among at most this many orders, encoded in advance.
const ROTATIONS: usize = 16;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// TCP connections served at once, in all and per client address; one over either is
/// closed at once and counted (`mesh_dns_refused_connections_total`). UDP is unaffected.
pub const MAX_TCP_CONNECTIONS: usize = 256;
pub const MAX_TCP_PER_ADDRESS: usize = 16;

/// DNS metrics, under `mesh_dns_`.
#[derive(Clone, Default)]
pub struct Metrics {
    queries: Family<QueryLabels, Counter>,
    dropped: Counter,
    restarts: Counter,
    tcp_refused: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: String,
    rcode: String,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("dns");
        r.register("queries", "DNS queries answered, by type and response code", m.queries.clone());
        r.register("dropped", "DNS packets dropped unanswered (responses, undecodable headers)", m.dropped.clone());
        r.register("restarts", "Times the DNS server ended unexpectedly and was started again", m.restarts.clone());
        r.register(
            "refused_connections",
            "DNS TCP connections closed at once: over the limit in all or for their address",
            m.tcp_refused.clone(),
        );
        m
    }

    fn counter(&self, qtype: RecordType, rcode: ResponseCode) -> Counter {
        self.queries.get_or_create(&QueryLabels { qtype: qtype.to_string(), rcode: rcode.to_string() }).clone()
    }
}

/// A response encoded in advance, in each of its orders, and its query counter.
struct Encoded {
    orders: Vec<Vec<u8>>,
    counter: Counter,
}

/// One snapshot's worth of answers: what [`Zone::answer`] needs, and every response of
/// the common names encoded in advance.
pub struct Answers {
    snap: Arc<Snapshot>,
    vips: VipMap,
    encoded: HashMap<Arc<[u8]>, Arc<Encoded>>,
    /// The keys of `encoded` by relative name, so that the next build can take over a
    /// name whose inputs did not change without encoding it again.
    by_name: HashMap<String, Arc<[Arc<[u8]>]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Answers DNS packets from the latest published [`Answers`].
pub struct Responder {
    /// Swapped only by a reload of the config (`dns.ttl`).
    zone: ArcSwap<Zone>,
    current: ArcSwap<Answers>,
    /// Held while answers are built and swapped in, so that a build from the old zone
    /// never lands after one from the new.
    building: std::sync::Mutex<()>,
    rotation: AtomicUsize,
    metrics: Metrics,
}

impl Responder {
    pub fn new(zone: Zone, metrics: Metrics, snap: Arc<Snapshot>, vips: VipMap) -> Responder {
        let answers = Answers::build(&zone, &metrics, snap, vips, None);
        Responder {
            zone: ArcSwap::from_pointee(zone),
            current: ArcSwap::from_pointee(answers),
            building: std::sync::Mutex::new(()),
            rotation: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Encodes the answers of a new snapshot (or new virtual IPs) and swaps them in.
    pub fn update(&self, snap: Arc<Snapshot>, vips: VipMap) {
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let prev = self.current.load_full();
        let answers = Answers::build(&self.zone.load(), &self.metrics, snap, vips, Some(&prev));
        self.current.store(Arc::new(answers));
    }

    /// Answers with `ttl` from now on: every answer is encoded again (blocking: call it
    /// off the runtime's threads).
    pub fn set_ttl(&self, ttl: u32) {
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let zone = Zone { ttl, ..Zone::clone(&self.zone.load()) };
        let current = self.current.load_full();
        let answers = Answers::build(&zone, &self.metrics, current.snap.clone(), current.vips.clone(), None);
        self.zone.store(Arc::new(zone));
        self.current.store(Arc::new(answers));
    }

    /// Writes the response to `query` into `out`; false when the packet gets none.
    pub fn respond(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        crate::failpoint::hit("dns");
        let answers = self.current.load();
        if let Some(q) = Question::read(query) {
            let mut key = [0u8; packet::KEY_MAX];
            if let Some(e) = q.key(query, &mut key).and_then(|k| answers.encoded.get(k)) {
                let order = match e.orders.len() {
                    0 | 1 => 0,
                    n => self.rotation.fetch_add(1, Ordering::Relaxed) % n,
                };
                let template = &e.orders[order];
                if transport == Transport::Tcp || packet::copy_len(template, &q) <= q.udp_limit() {
                    packet::copy_response(template, query, &q, out);
                    e.counter.inc();
                    return true;
                }
            }
        }
        self.respond_decoded(&answers, query, transport, out)
    }

    /// The full path: hickory-proto's decoder, the zone's decision, its encoder.
    fn respond_decoded(&self, answers: &Answers, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        let request = match Message::from_vec(query) {
            Ok(m) if m.metadata.message_type == MessageType::Query => m,
            // Never answer a response: two servers would bounce errors forever.
            Ok(_) => {
                self.metrics.dropped.inc();
                return false;
            }
            Err(_) => return self.format_error(query, out),
        };
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        let limit = match transport {
            Transport::Udp => packet::udp_limit(request.edns.as_ref().map(|e| e.max_payload())),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if let Some(theirs) = &request.edns {
            response.set_edns(our_edns());
            if theirs.version() > 0 {
                response.metadata.response_code = ResponseCode::BADVERS;
                return self.finish(&mut response, RecordType::OPT, limit, out);
            }
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return self.finish(&mut response, RecordType::Unknown(0), limit, out);
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return self.finish(&mut response, RecordType::Unknown(0), limit, out);
        };
        response.add_query(query.clone());
        let zone = self.zone.load();
        let decision = if query.query_class() == DNSClass::IN {
            let shuffle = self.rotation.fetch_add(1, Ordering::Relaxed);
            let name = LowerName::new(query.name());
            zone.answer(&answers.snap, &answers.vips, &name, query.query_type(), shuffle)
        } else {
            Answer::Refused
        };
        fill(&zone, &mut response, decision);
        self.finish(&mut response, query.query_type(), limit, out)
    }

    /// Encodes `response` into `out`, cut to header and question (TC) if larger than
    /// `limit`, and counts it.
    fn finish(&self, response: &mut Message, qtype: RecordType, limit: usize, out: &mut Vec<u8>) -> bool {
        let mut bytes = match response.to_vec() {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "cannot encode a DNS response");
                self.metrics.dropped.inc();
                return false;
            }
        };
        if bytes.len() > limit {
            response.answers.clear();
            response.authorities.clear();
            response.additionals.clear();
            response.metadata.truncation = true;
            match response.to_vec() {
                Ok(b) if b.len() <= limit => bytes = b,
                _ => {
                    self.metrics.dropped.inc();
                    return false;
                }
            }
        }
        self.metrics.counter(qtype, response.metadata.response_code).inc();
        out.clear();
        out.extend_from_slice(&bytes);
        true
    }

    /// A packet whose header reads but whose body does not: FORMERR, so the client stops
    /// waiting. Less than a header, or a response: dropped.
    fn format_error(&self, query: &[u8], out: &mut Vec<u8>) -> bool {
        match query.get(..packet::HEADER) {
            Some(h) if h[2] & 0x80 == 0 => {
                out.clear();
                // The query's ID and opcode, QR set, RCODE 1, every count 0.
                out.extend_from_slice(&[h[0], h[1], 0x80 | (h[2] & 0x78), 1, 0, 0, 0, 0, 0, 0, 0, 0]);
                self.metrics.counter(RecordType::Unknown(0), ResponseCode::FormErr).inc();
                true
            }
            _ => {
                self.metrics.dropped.inc();
                false
            }
        }
    }
}

/// Sets the response code and sections of a decision.
fn fill(zone: &Zone, response: &mut Message, decision: Answer) {
    match decision {
        Answer::Refused => {
            response.metadata.response_code = ResponseCode::Refused;
        }
        Answer::NxDomain => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(zone.soa());
        }
        Answer::Records { answers, additionals } => {
            if answers.is_empty() {
                // NODATA: the SOA tells caches how long to remember the absence.
                response.add_authority(zone.soa());
            }
            response.add_answers(answers).add_additionals(additionals);
        }
    }
}

fn our_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(packet::UDP_EDNS);
    edns
}

impl Answers {
    /// Encodes the response for every (name, type) the zone answers positively: A, AAAA
    /// and SRV of each service, subset, SRV name, node and the apex. A name whose inputs
    /// are the same as in `prev` (the same service `Arc`, virtual IP and member list)
    /// keeps `prev`'s bytes: one change among 10,000 services re-encodes its own names.
    pub fn build(zone: &Zone, metrics: &Metrics, snap: Arc<Snapshot>, vips: VipMap, prev: Option<&Answers>) -> Answers {
        let mut names: Vec<String> = vec![String::new()];
        for s in snap.services.values() {
            names.push(s.name.clone());
            names.push(format!("_{}._tcp.{}", s.protocol.as_str(), s.name));
        }
        names.extend(vips.keys().cloned());
        names.extend(snap.members.iter().map(|m| format!("{}.node", m.name)));
        names.sort();
        names.dedup();

        let Some(prev) = prev else {
            let mut answers = Answers { snap, vips, encoded: HashMap::new(), by_name: HashMap::new() };
            for relative in names {
                answers.encode_name(zone, metrics, relative);
            }
            return answers;
        };
        // Start from the previous answers and patch what changed: an unchanged name costs
        // a lookup and a pointer comparison, not an encoding.
        let mut answers =
            Answers { snap, vips, encoded: prev.encoded.clone(), by_name: HashMap::with_capacity(names.len()) };
        for relative in names {
            let held = prev.by_name.get(&relative);
            if let Some(keys) = held.filter(|_| answers.same_inputs(prev, &relative)) {
                answers.by_name.insert(relative, keys.clone());
                continue;
            }
            for key in held.into_iter().flat_map(|k| k.iter()) {
                answers.encoded.remove(key);
            }
            answers.encode_name(zone, metrics, relative);
        }
        for (name, keys) in &prev.by_name {
            if !answers.by_name.contains_key(name) {
                for key in keys.iter() {
                    answers.encoded.remove(key);
                }
            }
        }
        answers
    }

    /// Whether `relative`'s answers depend on nothing that differs from `prev`: the cases
    /// follow [`Zone::answer`]'s, in its order.
    fn same_inputs(&self, prev: &Answers, relative: &str) -> bool {
        let members = prev.snap.members_index == self.snap.members_index;
        let service = |name: &str| match (prev.snap.services.get(name), self.snap.services.get(name)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if relative.is_empty() {
            return true;
        }
        let mut labels = relative.split('.');
        match (labels.next(), labels.next(), labels.next(), labels.next()) {
            (Some(_), Some("node"), None, _) => members,
            (Some(_), Some("_tcp"), Some(name), None) => service(name) && members,
            (Some(name), None, _, _) => service(name) && prev.vips.get(name) == self.vips.get(name),
            (Some(_), Some(_), None, _) => prev.vips.get(relative) == self.vips.get(relative),
            _ => false,
        }
    }

    fn encode_name(&mut self, zone: &Zone, metrics: &Metrics, relative: String) {
        let Some(name) = zone.absolute(&relative) else { return };
        let lower = LowerName::new(&name);
        let mut keys = Vec::new();
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
            let first = zone.answer(&self.snap, &self.vips, &lower, qtype, 0);
            let orders = match &first {
                Answer::Records { answers: rs, .. }
                    if qtype == RecordType::A && self.snap.services.get(&relative).is_some_and(|s| s.passthrough) =>
                {
                    rs.len().clamp(1, ROTATIONS)
                }
                _ => 1,
            };
            let mut encoded = Vec::with_capacity(orders);
            let mut rcode = ResponseCode::NoError;
            for k in 0..orders {
                let decision = match k {
                    0 => first.clone(),
                    k => zone.answer(&self.snap, &self.vips, &lower, qtype, k),
                };
                let mut response = Message::response(0, OpCode::Query);
                response.metadata.authoritative = true;
                response.add_query(Query::query(name.clone(), qtype));
                fill(zone, &mut response, decision);
                rcode = response.metadata.response_code;
                match response.to_vec() {
                    Ok(bytes) => encoded.push(bytes),
                    Err(_) => break,
                }
            }
            let Some(key) = encoded.first().and_then(|b| packet::key_of(b)) else { continue };
            if encoded.len() == orders {
                let counter = metrics.counter(qtype, rcode);
                let key: Arc<[u8]> = key.into();
                self.encoded.insert(key.clone(), Arc::new(Encoded { orders: encoded, counter }));
                keys.push(key);
            }
        }
        self.by_name.insert(relative, keys.into());
    }
}

/// Keeps the responder's answers current: re-encodes on every new snapshot or virtual
/// IP, off the runtime's threads (thousands of names take milliseconds).
pub async fn keep_current(
    responder: Arc<Responder>,
    mut snapshots: SnapshotRx,
    mut vips: watch::Receiver<VipMap>,
    drain: DrainWatcher,
) {
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            changed = vips.changed() => if changed.is_err() { break },
            _ = drain.signaled() => break,
        }
        let snap = snapshots.borrow_and_update().clone();
        let v = vips.borrow_and_update().clone();
        let r = responder.clone();
        if tokio::task::spawn_blocking(move || r.update(snap, v)).await.is_err() {
            tracing::error!("encoding DNS answers panicked; keeping the previous answers");
        }
    }
}

/// Serves DNS on the bound sockets until the drain starts. Should the server ever end
/// before that (a panic on some packet), it is logged, counted in
/// `mesh_dns_restarts_total` and started again on the same sockets: one packet must not
/// stop DNS for good.
pub async fn serve(responder: Arc<Responder>, udp: UdpSocket, tcp: TcpListener, drain: DrainWatcher) {
    let (udp, tcp) = (Arc::new(udp), Arc::new(tcp));
    let restarts = responder.metrics.restarts.clone();
    let watcher = drain.clone();
    crate::supervisor::supervise("dns", restarts, drain, move || {
        let (responder, udp, tcp, drain) = (responder.clone(), udp.clone(), tcp.clone(), watcher.clone());
        async move {
            tokio::join!(serve_udp(responder.clone(), &udp, &drain), serve_tcp(responder, &tcp, &drain));
        }
    })
    .await;
}

async fn serve_udp(responder: Arc<Responder>, sock: &UdpSocket, drain: &DrainWatcher) {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(usize::from(packet::UDP_EDNS));
    let mut served = 0u32;
    loop {
        match sock.try_recv_from(&mut buf) {
            Ok((n, peer)) => {
                if responder.respond(&buf[..n], Transport::Udp, &mut out) {
                    if let Err(e) = sock.try_send_to(&out, peer) {
                        if e.kind() == std::io::ErrorKind::WouldBlock {
                            let _ = sock.send_to(&out, peer).await;
                        }
                    }
                }
                // try_recv never yields: let the other tasks on this thread run, and see
                // a drain, even under a flood.
                served = served.wrapping_add(1);
                if served.is_multiple_of(64) {
                    if drain.is_draining() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::select! {
                    ready = sock.readable() => if let Err(e) = ready {
                        tracing::error!(error = %e, "DNS UDP socket failed");
                        break;
                    },
                    _ = drain.signaled() => break,
                }
            }
            // An ICMP error from an earlier send surfaces here; the next packet is fine.
            Err(e) => tracing::debug!(error = %e, "DNS UDP receive"),
        }
    }
}

async fn serve_tcp(responder: Arc<Responder>, listener: &TcpListener, drain: &DrainWatcher) {
    let mut conns = tokio::task::JoinSet::new();
    let per_address: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let from = {
                        let mut open = per_address.lock().unwrap_or_else(|p| p.into_inner());
                        let n = open.entry(peer.ip()).or_insert(0);
                        if conns.len() >= MAX_TCP_CONNECTIONS || *n >= MAX_TCP_PER_ADDRESS {
                            None
                        } else {
                            *n += 1;
                            Some(peer.ip())
                        }
                    };
                    let Some(ip) = from else {
                        responder.metrics.tcp_refused.inc();
                        drop(stream);
                        continue;
                    };
                    let responder = responder.clone();
                    let signal = drain.signal();
                    let open = per_address.clone();
                    conns.spawn(async move {
                        tokio::select! {
                            _ = serve_tcp_conn(&responder, stream) => {}
                            _ = signal.signaled() => {}
                        }
                        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(n) = open.get_mut(&ip) {
                            *n -= 1;
                            if *n == 0 {
                                open.remove(&ip);
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next() => {}
            _ = drain.signaled() => break,
        }
    }
    conns.shutdown().await;
}

/// Length-prefixed queries (RFC 1035 4.2.2, RFC 7766), answered in order until the
/// client closes or idles.
async fn serve_tcp_conn(responder: &Responder, mut stream: TcpStream) {
    let mut query = Vec::new();
    let mut out = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        query.resize(len, 0);
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        if !responder.respond(&query, Transport::Tcp, &mut out) {
            continue;
        }
        let Ok(n) = u16::try_from(out.len()) else { continue };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&out);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

impl Zone {
    /// `relative` (`reviews`, `v1.reviews`, `` for the apex) under the zone's domain.
    pub fn absolute(&self, relative: &str) -> Option<Name> {
        if relative.is_empty() {
            return Some(self.domain.clone());
        }
        Name::from_ascii(relative).ok()?.append_domain(&self.domain).ok()
    }
}

#[cfg(test)]
mod tests;
