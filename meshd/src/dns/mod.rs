//! DNS for the mesh: hickory-server on `dns.listen` (UDP and TCP), authoritative for
//! `dns.domain`, answering from the snapshot ([`answer`]). Never forwards or recurses:
//! a name outside the domain is REFUSED. Responses carry EDNS when the query does, and
//! hickory truncates (TC) what does not fit the client's UDP size.

pub mod answer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};

use self::answer::{Answer, Zone};
use crate::catalog::vip::Vips;
use crate::drain::DrainWatcher;
use crate::state::SnapshotRx;

/// DNS metrics, under `mesh_dns_`.
#[derive(Clone, Default)]
pub struct Metrics {
    queries: Family<QueryLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: String,
    rcode: String,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.sub_registry_with_prefix("dns").register(
            "queries",
            "DNS queries, by type and response code",
            m.queries.clone(),
        );
        m
    }
}

pub struct Handler {
    zone: Zone,
    snapshots: SnapshotRx,
    vips: Arc<Vips>,
    rotation: AtomicUsize,
    metrics: Metrics,
    /// The answer table of the latest snapshot, rebuilt when the snapshot changes.
    table: std::sync::Mutex<Arc<answer::Table>>,
}

impl Handler {
    pub fn new(zone: Zone, snapshots: SnapshotRx, vips: Arc<Vips>, metrics: Metrics) -> Handler {
        let table = Arc::new(answer::Table::build(&snapshots.borrow()));
        Handler { zone, snapshots, vips, rotation: AtomicUsize::new(0), metrics, table: std::sync::Mutex::new(table) }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let query = request.query();
        let qtype = query.query_type();
        let count = |rcode: ResponseCode| {
            self.metrics
                .queries
                .get_or_create(&QueryLabels { qtype: qtype.to_string(), rcode: rcode.to_string() })
                .inc();
        };
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            count(ResponseCode::NotImp);
            let msg = builder.error_msg(request.header(), ResponseCode::NotImp);
            return response.send_response(msg).await.unwrap_or_else(|_| header.into());
        }
        let snap = self.snapshots.borrow().clone();
        let table = {
            let mut cached = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if cached.index != snap.index {
                *cached = Arc::new(answer::Table::build(&snap));
            }
            cached.clone()
        };
        let vips = self.vips.all();
        let shuffle = self.rotation.fetch_add(1, Ordering::Relaxed);
        let decision = self.zone.answer(&snap, &table, &vips, query.name(), qtype, shuffle);
        let mut builder = builder;
        if request.edns().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            builder.edns(edns);
        }
        let soa = [self.zone.soa()];
        let sent = match decision {
            Answer::Refused => {
                count(ResponseCode::Refused);
                let msg = builder.error_msg(request.header(), ResponseCode::Refused);
                response.send_response(msg).await
            }
            Answer::NxDomain => {
                count(ResponseCode::NXDomain);
                header.set_response_code(ResponseCode::NXDomain);
                let msg = builder.build(header, [].iter(), [].iter(), soa.iter(), [].iter());
                response.send_response(msg).await
            }
            Answer::Records { answers, additionals } => {
                count(ResponseCode::NoError);
                let negative: &[hickory_proto::rr::Record] = if answers.is_empty() { &soa } else { &[] };
                let msg = builder.build(header, answers.iter(), [].iter(), negative.iter(), additionals.iter());
                response.send_response(msg).await
            }
        };
        sent.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot send a DNS response");
            header.into()
        })
    }
}

/// Serves DNS on the bound sockets until the drain starts.
pub async fn serve(handler: Handler, udp: UdpSocket, tcp: TcpListener, drain: DrainWatcher) {
    let mut server = ServerFuture::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    tokio::select! {
        result = server.block_until_done() => {
            if let Err(e) = result {
                tracing::error!(error = %e, "DNS server failed");
            }
        }
        _ = drain.signaled() => {
            let _ = server.shutdown_gracefully().await;
        }
    }
    drop(drain);
}
