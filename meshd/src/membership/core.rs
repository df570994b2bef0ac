//! The sans-IO heart of membership: foca (SWIM) plus the custom broadcast that carries
//! store entries. Time, datagrams and timers go in; datagrams to send, timers to set and
//! membership changes come out. The driver (`driver.rs`) and the deterministic
//! simulation (`sim.rs`) both run exactly this.
//!
//! Must not: do I/O or read a clock; block inside foca's callbacks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use foca::{BroadcastHandler, Codec, Foca, Invalidates, Notification, PostcardCodec, Runtime, Timer};
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::store::entry::Entry;
use crate::store::hlc::Hlc;
use crate::store::View;

/// A member as SWIM knows it: its name (which must match its certificate), where to dial
/// it, and a bump that changes when it restarts, so a restarted node is a new identity
/// that supersedes its old one instead of being confused with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// Shared, not copied: foca asks for a member's [`foca::Identity::addr`] (its name)
    /// at every comparison, thousands of times per datagram in a large mesh.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub bump: u64,
}

impl foca::Identity for MemberId {
    type Addr = Arc<str>;

    /// None: foca does not pick the refuting identity itself (one more than the old bump,
    /// which an identity made up by another member within the bound would still beat);
    /// it notifies `Defunct`, and the driver refutes with [`refuting`].
    fn renew(&self) -> Option<Self> {
        None
    }

    fn addr(&self) -> Arc<str> {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// The identity with which a node declared down comes back: a bump above its own,
/// above the wall clock `now_ms` (so it beats any identity another member may have made
/// up for its name within the codec's bound), and above the highest bump anyone claimed
/// for its name (`claimed`).
pub fn refuting(current: &MemberId, claimed: u64, now_ms: u64) -> MemberId {
    let bump = current.bump.saturating_add(1).max(now_ms).max(claimed.saturating_add(1));
    MemberId { bump, ..current.clone() }
}

/// What gossip parameters the core runs with (see `config::GossipConfig` for defaults).
#[derive(Debug, Clone)]
pub struct Params {
    pub probe_period: Duration,
    pub probe_timeout: Duration,
    pub indirect_probes: usize,
    pub suspicion_mult: f64,
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    pub max_datagram: usize,
    pub retransmit_mult: f64,
    /// How long a down member is remembered before foca forgets it.
    pub remember_down: Duration,
}

impl Params {
    /// The foca configuration for a cluster of `n` members, with memberlist's formulas:
    /// updates are retransmitted `retransmit_mult * ceil(log10(n + 1))` times, and a
    /// suspect is declared dead after `suspicion_mult * max(1, log10(n))` probe periods.
    pub fn foca_config(&self, n: usize) -> foca::Config {
        let n = n.max(1) as f64;
        let retransmits = self.retransmit_mult * (n + 1.0).log10().ceil();
        let node_scale = n.log10().max(1.0);
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_timeout;
        c.num_indirect_probes =
            std::num::NonZeroUsize::new(self.indirect_probes.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        c.max_transmissions =
            std::num::NonZeroU8::new(retransmits.ceil().clamp(1.0, 255.0) as u8).unwrap_or(std::num::NonZeroU8::MIN);
        c.suspect_to_down_after = self.probe_period.mul_f64(self.suspicion_mult * node_scale);
        c.remove_down_after = Some(self.remember_down);
        c.max_packet_size = std::num::NonZeroUsize::new(self.max_datagram).unwrap_or(std::num::NonZeroUsize::MIN);
        c.notify_down_members = true;
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_interval,
            num_members: std::num::NonZeroUsize::new(self.gossip_fanout.max(1)).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        c.periodic_announce =
            Some(foca::PeriodicParams { frequency: Duration::from_secs(30), num_members: std::num::NonZeroUsize::MIN });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(15),
            num_members: std::num::NonZeroUsize::new(2).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        c
    }
}

/// A change in membership, for the driver to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Up(MemberId),
    Down(MemberId),
    /// A member restarted (same name, new bump).
    Renamed {
        old: MemberId,
        new: MemberId,
    },
    /// This node has no active member left (or has one again).
    Idle,
    Active,
    /// This node was declared down by the others; it rejoins with a new bump.
    Defunct,
}

/// What one call into the core produced.
#[derive(Debug, Default)]
pub struct Output {
    pub sends: Vec<(MemberId, Vec<u8>)>,
    pub timers: Vec<(Timer<MemberId>, Duration)>,
    pub changes: Vec<Change>,
}

impl Runtime<MemberId> for Output {
    fn notify(&mut self, n: Notification<'_, MemberId>) {
        let change = match n {
            Notification::MemberUp(m) => Change::Up(m.clone()),
            Notification::MemberDown(m) => Change::Down(m.clone()),
            Notification::Rename(old, new) => Change::Renamed { old: old.clone(), new: new.clone() },
            Notification::Active => Change::Active,
            Notification::Idle => Change::Idle,
            Notification::Defunct => Change::Defunct,
            _ => return,
        };
        self.changes.push(change);
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// What a broadcast item is: one store entry, or a member saying it is leaving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Item {
    Entry(Entry),
    /// Sent before `leave_cluster`, so the others record "left", not "dead".
    Left {
        name: String,
        bump: u64,
    },
}

/// Identifies a broadcast: a newer write of a key replaces an older one in the queue.
#[derive(Debug, Clone)]
pub enum ItemKey {
    Entry { key: String, version: Hlc, origin: String },
    Left { name: String, bump: u64 },
}

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (ItemKey::Entry { key, version, origin }, ItemKey::Entry { key: k2, version: v2, origin: o2 }) => {
                key == k2 && (version, origin) >= (v2, o2)
            }
            (ItemKey::Left { name, bump }, ItemKey::Left { name: n2, bump: b2 }) => name == n2 && bump >= b2,
            _ => false,
        }
    }
}

/// What the broadcast handler knows and collects; shared with the driver, because foca
/// owns the handler and does not hand it back.
#[derive(Default)]
pub struct Shared {
    /// The store as last published: what this node already holds.
    pub view: Arc<View>,
    /// News received since the driver last took it.
    pub received: Vec<Item>,
    /// Versions received but not yet in `view`, so a duplicate arriving before the merge
    /// is not passed on again.
    pending: std::collections::HashMap<String, (Hlc, String)>,
    left: std::collections::HashMap<String, u64>,
    /// Items that did not decode (a bad peer, or a newer version's broadcast).
    pub malformed: u64,
    /// Judges received entries before they are passed on (None: pass everything on, in
    /// the simulation): a forged entry still reaches the store, which refuses and counts
    /// it, but no honest node relays it.
    pub authority: Option<Arc<dyn crate::store::seal::Authority>>,
    /// The bound on a `left` announcement's bump (None: unbounded): the codec's bound on
    /// identities, so that a forged announcement cannot mark a member gone for good.
    pub max_bump: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Items refused for that: forged entries and implausible announcements.
    pub refused: u64,
}

impl Shared {
    /// Replaces the view (after a store publish), forgetting pending versions it covers.
    pub fn set_view(&mut self, view: Arc<View>) {
        self.pending
            .retain(|k, (v, o)| view.entry(k).is_none_or(|e| (e.version, e.origin.as_str()) < (*v, o.as_str())));
        self.view = view;
    }

    /// Whether `name` announced it left (with this bump or later).
    pub fn has_left(&self, name: &str, bump: u64) -> bool {
        self.left.get(name).is_some_and(|b| *b >= bump)
    }

    pub fn forget_left(&mut self, name: &str) {
        self.left.remove(name);
    }
}

/// Decides which received items are news (to apply and pass on) and collects them.
#[derive(Clone, Default)]
pub struct Handler(pub Arc<std::sync::Mutex<Shared>>);

impl Handler {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed broadcast item")]
pub struct BadItem;

impl BroadcastHandler<MemberId> for Handler {
    type Key = ItemKey;
    type Error = BadItem;

    fn receive_item(&mut self, data: &[u8], sender: Option<&MemberId>) -> Result<Option<ItemKey>, BadItem> {
        let mut shared = self.lock();
        let item: Item = match postcard::from_bytes(data) {
            Ok(item) => item,
            Err(_) => {
                shared.malformed += 1;
                return Err(BadItem);
            }
        };
        // Our own additions (sender None) are local writes, already in our store: always
        // disseminate them.
        if sender.is_none() {
            return Ok(Some(match &item {
                Item::Entry(e) => ItemKey::Entry { key: e.key.clone(), version: e.version, origin: e.origin.clone() },
                Item::Left { name, bump } => {
                    shared.left.insert(name.clone(), *bump);
                    ItemKey::Left { name: name.clone(), bump: *bump }
                }
            }));
        }
        let key = match &item {
            Item::Entry(e) => {
                let held = shared.view.entry(&e.key).map(|h| (h.version, h.origin.clone()));
                let pending = shared.pending.get(&e.key).cloned();
                let newest = held.into_iter().chain(pending).max();
                if newest.is_some_and(|(v, o)| (e.version, &e.origin) <= (v, &o)) {
                    return Ok(None);
                }
                let refused = shared.authority.as_ref().is_some_and(|a| a.judge(&shared.view, &[e])[0].is_err());
                if refused {
                    // To the store, which counts and logs the refusal; not passed on.
                    shared.refused += 1;
                    shared.received.push(item);
                    return Ok(None);
                }
                shared.pending.insert(e.key.clone(), (e.version, e.origin.clone()));
                ItemKey::Entry { key: e.key.clone(), version: e.version, origin: e.origin.clone() }
            }
            Item::Left { name, bump } => {
                let bound = shared.max_bump.as_ref().map_or(u64::MAX, |m| m.load(std::sync::atomic::Ordering::Relaxed));
                if *bump > bound {
                    shared.refused += 1;
                    return Ok(None);
                }
                if shared.has_left(name, *bump) {
                    return Ok(None);
                }
                shared.left.insert(name.clone(), *bump);
                ItemKey::Left { name: name.clone(), bump: *bump }
            }
        };
        shared.received.push(item);
        Ok(Some(key))
    }
}

pub type Swim = Foca<MemberId, MeshCodec, SmallRng, Handler>;

/// How far ahead of this node's clock a member's bump (its start time, in ms since the
/// epoch) may be: the store's tolerance for clock skew.
pub const BUMP_AHEAD_MS: u64 = 60_000;

/// foca's postcard codec, refusing identities no honest member has: an invalid name, or a
/// bump beyond `max_bump` (the driver keeps it at its clock plus [`BUMP_AHEAD_MS`]).
/// Without the bound, one forged `bump = u64::MAX` for a name would win every identity
/// conflict for it for good (it cannot be refuted: a bump only grows), evicting the real
/// member; within it, the real member refutes a forged identity by restarting its own
/// with a higher bump.
#[derive(Debug, Clone)]
pub struct MeshCodec {
    max_bump: Arc<std::sync::atomic::AtomicU64>,
    /// This node's name, and the highest bump anyone claimed for it: what a refutation
    /// must beat.
    own: Option<(Arc<str>, Arc<std::sync::atomic::AtomicU64>)>,
}

impl MeshCodec {
    /// A codec whose bound the caller keeps current.
    pub fn new(max_bump: Arc<std::sync::atomic::AtomicU64>) -> MeshCodec {
        MeshCodec { max_bump, own: None }
    }

    /// Also notes the highest bump claimed for `name` (this node) in `seen`.
    pub fn watching(mut self, name: Arc<str>, seen: Arc<std::sync::atomic::AtomicU64>) -> MeshCodec {
        self.own = Some((name, seen));
        self
    }

    /// Notes `id`'s bump if it names this node.
    pub fn note(&self, id: &MemberId) {
        if let Some((name, seen)) = &self.own {
            if id.name == *name {
                seen.fetch_max(id.bump, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// No bound (the simulation's virtual members, tests).
    pub fn unbounded() -> MeshCodec {
        MeshCodec::new(Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)))
    }

    /// Whether `id` is an identity an honest member could have.
    pub fn plausible(&self, id: &MemberId) -> bool {
        mesh_proto::is_dns_label(&id.name) && id.bump <= self.max_bump.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why the codec refused bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] postcard::Error),
    #[error("an identity no member can have: {0}")]
    Implausible(String),
}

impl Codec<MemberId> for MeshCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &foca::Header<MemberId>, buf: impl bytes::BufMut) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<foca::Header<MemberId>, CodecError> {
        let header: foca::Header<MemberId> = PostcardCodec.decode_header(buf)?;
        for id in [&header.src, &header.dst] {
            if !self.plausible(id) {
                return Err(CodecError::Implausible(format!("{} bump {}", id.name, id.bump)));
            }
            self.note(id);
        }
        Ok(header)
    }

    fn encode_member(&mut self, member: &foca::Member<MemberId>, buf: impl bytes::BufMut) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<foca::Member<MemberId>, CodecError> {
        let member: foca::Member<MemberId> = PostcardCodec.decode_member(buf)?;
        if !self.plausible(member.id()) {
            return Err(CodecError::Implausible(format!("{} bump {}", member.id().name, member.id().bump)));
        }
        self.note(member.id());
        Ok(member)
    }
}

/// Why a datagram was dropped before foca saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("does not decode")]
    Malformed,
    #[error("its sender {claimed} is not the certificate's {actual}")]
    Impostor { claimed: String, actual: String },
    #[error("too large ({0} bytes)")]
    TooLarge(usize),
}

/// Checks that a datagram's SWIM header names the peer that sent it (its verified
/// certificate name), before foca acts on it. Returns the sender's identity as it claims
/// it.
pub fn check_sender(data: &[u8], peer: &str, max: usize) -> Result<MemberId, Dropped> {
    if data.len() > max.max(64 * 1024) {
        return Err(Dropped::TooLarge(data.len()));
    }
    let mut buf = data;
    let header: foca::Header<MemberId> =
        Codec::<MemberId>::decode_header(&mut PostcardCodec, &mut buf).map_err(|_| Dropped::Malformed)?;
    let _ = buf.remaining();
    if *header.src.name != *peer {
        return Err(Dropped::Impostor { claimed: header.src.name.to_string(), actual: peer.to_owned() });
    }
    Ok(header.src)
}

/// Encodes an item for `Foca::add_broadcast`.
pub fn encode_item(item: &Item) -> Vec<u8> {
    postcard::to_stdvec(item).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn swim(name: &str, bump: u64, codec: MeshCodec) -> Swim {
        let id = MemberId { name: name.into(), addr: ([198, 18, 0, 1], 7946).into(), bump };
        let params = crate::config::GossipConfig::default().params();
        Foca::with_custom_broadcast(id, params.foca_config(3), SmallRng::seed_from_u64(1), codec, Handler::default())
    }

    /// The first datagram `from` sends when it announces itself to `to`.
    fn announce(from: &mut Swim, to: &Swim) -> Vec<u8> {
        let mut out = Output::default();
        from.announce(to.identity().clone(), &mut out).expect("announce");
        out.sends.pop().expect("a datagram").1
    }

    #[test]
    fn an_identity_with_a_bump_beyond_the_clock_is_refused() {
        let now = 1_800_000_000_000u64;
        let bound = Arc::new(std::sync::atomic::AtomicU64::new(now + BUMP_AHEAD_MS));
        let mut me = swim("me", now, MeshCodec::new(bound));
        let mut forever = swim("peer", u64::MAX, MeshCodec::unbounded());
        let data = announce(&mut forever, &me);
        assert!(check_sender(&data, "peer", 1150).is_ok(), "its header names the sender");
        assert!(me.handle_data(&data, &mut Output::default()).is_err(), "an unbeatable bump is refused");
        assert_eq!(me.num_members(), 0);

        let mut honest = swim("peer", now + 1_000, MeshCodec::unbounded());
        let data = announce(&mut honest, &me);
        assert!(me.handle_data(&data, &mut Output::default()).is_ok());
        assert_eq!(me.num_members(), 1, "an honest member's announce is taken");
    }

    /// Refuses every entry under `route/forged`: what is tested here is what the handler
    /// does with a verdict (the verdicts themselves are `identity::seal`'s tests).
    struct RefuseForged;

    impl crate::store::seal::Authority for RefuseForged {
        fn sealer(&self) -> Option<&dyn crate::store::entry::Sealer> {
            None
        }
        fn may_write(&self, _: &View, _: &str, _: bool) -> Result<(), crate::store::seal::Refusal> {
            Ok(())
        }
        fn judge(&self, _: &View, batch: &[&Entry]) -> Vec<Result<(), crate::store::seal::Refusal>> {
            let verdict = |e: &&Entry| {
                if e.key == "route/forged" {
                    Err(crate::store::seal::Refusal::Unsealed)
                } else {
                    Ok(())
                }
            };
            batch.iter().map(verdict).collect()
        }
    }

    #[test]
    fn a_refused_entry_goes_to_the_store_but_is_not_passed_on_and_a_left_beyond_the_clock_is_dropped() {
        let now = 1_800_000_000_000u64;
        let handler = Handler::default();
        let id = MemberId { name: "me".into(), addr: ([198, 18, 0, 1], 7946).into(), bump: now };
        let params = crate::config::GossipConfig::default().params();
        let mut me: Swim = Foca::with_custom_broadcast(
            id,
            params.foca_config(3),
            SmallRng::seed_from_u64(1),
            MeshCodec::unbounded(),
            handler.clone(),
        );
        handler.lock().authority = Some(Arc::new(RefuseForged));
        handler.lock().max_bump = Some(Arc::new(std::sync::atomic::AtomicU64::new(now + BUMP_AHEAD_MS)));
        let mut peer = swim("peer", now, MeshCodec::unbounded());
        let entry = |key: &str| Item::Entry(Entry::next(None, key, Some(vec![1]), Hlc::from_millis(now), "peer"));
        for item in [entry("route/forged"), entry("route/honest"), Item::Left { name: "other".into(), bump: u64::MAX }]
        {
            peer.add_broadcast(&encode_item(&item)).expect("broadcast");
        }
        // The two meet (announce, feed back), then the peer sends its broadcasts.
        let data = announce(&mut peer, &me);
        let mut out = Output::default();
        me.handle_data(&data, &mut out).expect("handled");
        for (_, feed) in std::mem::take(&mut out.sends) {
            peer.handle_data(&feed, &mut Output::default()).expect("feed");
        }
        assert!(handler.lock().received.is_empty(), "nothing broadcast yet");
        let mut out = Output::default();
        peer.broadcast(&mut out).expect("broadcast");
        for (_, data) in out.sends {
            me.handle_data(&data, &mut Output::default()).expect("handled");
        }
        let shared = handler.lock();
        let keys: Vec<&str> = shared
            .received
            .iter()
            .filter_map(|i| match i {
                Item::Entry(e) => Some(e.key.as_str()),
                Item::Left { .. } => None,
            })
            .collect();
        assert_eq!(keys.len(), 2, "both entries reach the store, which judges and counts: {keys:?}");
        assert_eq!(shared.refused, 2, "the forged entry and the implausible left");
        assert!(!shared.has_left("other", 1), "the implausible left is dropped");
        drop(shared);
        assert_eq!(me.custom_broadcast_backlog(), 1, "only the honest entry is passed on");
    }
}
