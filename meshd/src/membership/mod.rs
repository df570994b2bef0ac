//! Membership and replication: SWIM (foca) over QUIC datagrams on the `mesh/1`
//! connections, store entries spread as foca custom broadcasts (pushed on streams when
//! too large for a datagram), and push-pull anti-entropy with a random member every
//! `sync_interval` and at once with every member that comes up.
//!
//! The parts: [`core`] is foca plus the broadcast handler, sans IO; [`sync`] is the
//! anti-entropy session, sans IO; [`driver`] is the one task that owns foca and carries
//! out what it asks; [`reap`] deletes a departed member's entries; [`sim`] runs the same
//! core and sessions on a simulated network. The streams of a sync exchange are driven
//! by `peer`.
//!
//! Must not: write the store except through `Store::merge` (news) and reaping, or trust a
//! SWIM sender name that the connection's certificate does not carry.

pub mod core;
pub mod driver;
pub mod reap;
pub mod sim;
pub mod sync;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use self::core::{MemberId, Params, Swim};
use self::sync::MemberList;
use crate::state::{self, Publisher};
use crate::store::Store;
use crate::transport::Transport;

/// Membership metrics, under `mesh_gossip_`.
#[derive(Clone, Default)]
pub struct Metrics {
    dropped: Family<ReasonLabel, Counter>,
    datagrams: Family<DirLabel, Counter>,
    syncs: Family<ResultLabel, Counter>,
    clock_offset: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabel {
    direction: &'static str,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("gossip");
        r.register("dropped_datagrams", "Gossip datagrams dropped, by reason", m.dropped.clone());
        r.register("datagrams", "Gossip datagrams, by direction", m.datagrams.clone());
        r.register("syncs", "Anti-entropy exchanges started here, by result", m.syncs.clone());
        r.register(
            "clock_offset_max_seconds",
            "The largest offset of a member's clock from this node's, as last measured (absolute)",
            m.clock_offset.clone(),
        );
        m
    }

    fn drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    fn datagram(&self, direction: &'static str) {
        self.datagrams.get_or_create(&DirLabel { direction }).inc();
    }

    /// Counts one exchange this node started (and entries in it that did not decode).
    fn synced<E>(&self, result: &Result<sync::Stats, E>) {
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.syncs.get_or_create(&ResultLabel { result: label }).inc();
        if result.as_ref().is_ok_and(|s| s.malformed > 0) {
            self.drop("malformed_entry");
        }
    }
}

/// Beyond this offset between two members' clocks, both are told (log, status, metric):
/// NTP keeps clocks within milliseconds, and at 60 s the store refuses the ahead node's
/// writes.
pub const CLOCK_WARN_MS: i64 = 5_000;

/// What the admin API reads: when each member was last heard from, and how far its clock
/// is from this node's.
#[derive(Default)]
pub struct Heard {
    last: Mutex<HashMap<String, SystemTime>>,
    /// Each peer's clock offset in ms, and when it was measured.
    offsets: Mutex<HashMap<String, (i64, std::time::Instant)>>,
}

/// How long a clock measurement counts for the warning.
const CLOCK_FRESH: Duration = Duration::from_secs(600);

impl Heard {
    pub fn get(&self, name: &str) -> Option<SystemTime> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied()
    }

    /// The offset of `name`'s clock from this node's, in ms (positive: ahead), as last
    /// measured.
    pub fn offset(&self, name: &str) -> Option<i64> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|(o, _)| *o)
    }

    /// Records a measured offset; the largest recent one now held, in ms.
    fn set_offset(&self, name: &str, ms: i64) -> i64 {
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        offsets.insert(name.to_owned(), (ms, std::time::Instant::now()));
        offsets.values().filter(|(_, at)| at.elapsed() < CLOCK_FRESH).map(|(o, _)| o.abs()).max().unwrap_or(0)
    }

    /// What to tell the operator about clocks, if a peer's (measured in the last ten
    /// minutes; a member, or a node that could not join for it) is off by more than
    /// [`CLOCK_WARN_MS`].
    pub fn clock_warning(&self) -> Option<String> {
        let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let (name, (ms, _)) = offsets
            .iter()
            .filter(|(_, (o, at))| o.abs() > CLOCK_WARN_MS && at.elapsed() < CLOCK_FRESH)
            .max_by_key(|(_, (o, _))| o.abs())?;
        Some(clock_message(name, *ms))
    }

    fn set(&self, name: &str) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), SystemTime::now());
    }
}

/// The warning about one member's clock offset.
fn clock_message(name: &str, ms: i64) -> String {
    let (who, by) = if ms > 0 { ("ahead of", ms) } else { ("behind", -ms) };
    // To the nearest second: the estimate is only as good as half a round trip.
    let by = humantime::format_duration(std::time::Duration::from_secs((by.unsigned_abs() + 500) / 1000));
    let effect = if ms.abs() > 60_000 {
        "beyond 60 s the node ahead is refused by the others (its membership and its writes): fix the clocks (NTP)"
    } else {
        "the store refuses writes from a clock more than 60 s ahead: fix the clocks (NTP) before it is"
    };
    format!("{name}'s clock is {by} {who} this node's; {effect}")
}

/// What sync exchanges (which run outside the driver) share with it: this node's member
/// list to send, and a way to hand the driver the lists received.
pub struct Exchange {
    members: Mutex<Vec<u8>>,
    updates: mpsc::Sender<MemberList>,
}

impl Exchange {
    pub fn new() -> (Arc<Exchange>, mpsc::Receiver<MemberList>) {
        let (tx, rx) = mpsc::channel(64);
        (Arc::new(Exchange { members: Mutex::default(), updates: tx }), rx)
    }

    /// This node's member list, encoded for a sync exchange.
    pub fn ours(&self) -> Vec<u8> {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_ours(&self, swim: &Swim) {
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = sync::encode_members(swim);
    }

    /// Hands a peer's member list (from a finished session) to the driver.
    pub fn received(&self, list: MemberList) {
        if !list.is_empty() {
            let _ = self.updates.try_send(list);
        }
    }
}

/// Everything the driver needs.
pub struct Inputs {
    pub me: MemberId,
    pub params: Params,
    pub sync_interval: Duration,
    /// How long a dead or departed member's own entries are kept.
    pub reap_after: Duration,
    pub transport: Arc<Transport>,
    pub store: Store,
    pub publisher: Publisher,
    pub seeds: Vec<SocketAddr>,
    pub metrics: Metrics,
    pub heard: Arc<Heard>,
    pub exchange: Arc<Exchange>,
}

/// While this node knows no other member that is alive (or suspect) although it has
/// join seeds: what to tell the operator. None when it has company, or no seeds (the
/// first node of a mesh is alone by design).
pub fn alone_warning(snap: &state::Snapshot, seeds: &[SocketAddr]) -> Option<String> {
    if seeds.is_empty() || snap.members.iter().any(|m| m.name != snap.node && snap.is_serving(&m.name)) {
        return None;
    }
    let list: Vec<String> = seeds.iter().map(ToString::to_string).collect();
    Some(format!(
        "this node knows no other member: none of its join seeds ({}) answers; it serves alone until one does",
        list.join(", ")
    ))
}
