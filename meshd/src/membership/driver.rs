//! The SWIM driver: the one task that owns foca. It feeds foca datagrams, timers and
//! member lists, and carries out what foca asks for: datagrams to send (dialling first
//! when needed), timers to set, news to merge into the store, syncs with members that
//! come up. Every datagram's SWIM sender must be the name in the certificate of the
//! connection it came on, or it is dropped and counted.
//!
//! Must not: block inside the loop (dials, syncs, store merges and reaping run as tasks),
//! or decide anything foca or the sync session decides.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use foca::{Foca, Timer};
use mesh_proto::api::MemberState;
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::core::{self, encode_item, Change, Handler, Item, MemberId, MeshCodec, Output, Swim, BUMP_AHEAD_MS};
use super::reap::{self, Gone};
use super::sync::{self, MemberList};
use super::{alone_warning, Heard, Inputs};
use crate::drain::DrainWatcher;
use crate::peer::client;
use crate::state::{self, Snapshot};
use crate::store::entry::Entry;
use crate::store::wall_ms;
use crate::transport::Peer;

type Datagram = (String, Bytes);

/// A member list as published: name, state, address; sorted by name.
type List = Vec<(String, MemberState, SocketAddr)>;

/// The outcome of a background dial.
enum Dialled {
    /// A seed answered: announce to it.
    Seed(MemberId),
    /// Connected to the member: send the datagram that was waiting.
    Ready(MemberId, Vec<u8>),
    /// Could not reach it (or someone else answers there).
    Failed(String),
}

/// How often the alone warning repeats in the log.
const ALONE_WARNING_EVERY: Duration = Duration::from_secs(60);
/// How long a node with seeds may know nobody before the first warning: seeds that
/// answer do so within a dial timeout.
const ALONE_GRACE: Duration = Duration::from_secs(6);

/// Runs membership until the drain starts; then announces `left` and returns.
pub async fn run(
    inputs: Inputs,
    mut connections: mpsc::Receiver<Peer>,
    mut local_writes: mpsc::Receiver<Arc<Entry>>,
    mut member_lists: mpsc::Receiver<MemberList>,
    drain: DrainWatcher,
) {
    let (dgram_tx, mut dgrams) = mpsc::channel::<Datagram>(4096);
    let (dialled_tx, mut dialled) = mpsc::channel::<Dialled>(256);
    let mut d = Driver::new(inputs, dialled_tx);
    let mut sync_tick = tokio::time::interval(d.inputs.sync_interval);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view_tick = tokio::time::interval(d.inputs.params.probe_period);
    let reap_every = d.inputs.reap_after.min(Duration::from_secs(60)).max(Duration::from_millis(100));
    let mut reap_tick = tokio::time::interval(reap_every);
    let mut readers = JoinSet::new();
    d.dial_seeds();

    loop {
        let mut out = Output::default();
        let next_timer = d.timers.keys().next().map(|(t, _)| *t);
        tokio::select! {
            Some(peer) = connections.recv() => { readers.spawn(read_datagrams(peer, dgram_tx.clone())); }
            Some((name, data)) = dgrams.recv() => d.on_datagram(&name, &data, &mut out),
            Some(list) = member_lists.recv() => d.on_member_list(list, &mut out),
            Some(outcome) = dialled.recv() => d.on_dialled(outcome, &mut out),
            Some(entry) = local_writes.recv() => d.on_local_write(entry, &mut out),
            _ = async { tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)).await }, if next_timer.is_some() => {
                d.on_timers(&mut out);
            }
            changed = d.snapshots.changed() => {
                if changed.is_err() { break; }
                d.snapshots.borrow_and_update();
                // The store's own view: what this node holds (news is what it lacks).
                let view = d.inputs.store.view();
                d.handler.lock().set_view(view);
            }
            _ = sync_tick.tick() => d.sync_with_random_member(),
            _ = reap_tick.tick() => d.reap(),
            _ = view_tick.tick() => d.on_view_tick(&mut out),
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            Some(_) = d.work.join_next(), if !d.work.is_empty() => {}
            _ = drain.signaled() => break,
        }
        d.after(out);
    }

    // A handover is no leave: the successor is this node, already gossiping.
    if !drain.is_handover() {
        d.leave();
        // Give the last datagrams a moment before the endpoint closes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    readers.shutdown().await;
    d.work.shutdown().await;
    drop(drain);
}

/// The loop's state, and one method per kind of event.
struct Driver {
    inputs: Inputs,
    swim: Swim,
    handler: Handler,
    rng: rand::rngs::SmallRng,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    timers: BTreeMap<(Instant, u64), Timer<MemberId>>,
    seq: u64,
    dialled_tx: mpsc::Sender<Dialled>,
    /// Dials, syncs, pushes, merges and reaping.
    work: JoinSet<()>,
    dialling: HashSet<String>,
    seed_ids: Vec<MemberId>,
    published: List,
    gone: Gone,
    cluster_size: usize,
    started: Instant,
    warned_alone: Option<Instant>,
    /// The codec's bound on identities' bumps: this node's clock plus the tolerance.
    max_bump: Arc<AtomicU64>,
    /// When each peer's clock was last asked for.
    clock_asked: std::collections::HashMap<String, Instant>,
    /// Each member's address as it declared it itself, in its own datagrams on its own
    /// authenticated connection: what is published and dialled, whatever third parties
    /// say of it.
    own_addrs: std::collections::HashMap<String, SocketAddr>,
    /// Third-party address claims already reported, so each is logged once.
    overridden: HashSet<(String, SocketAddr)>,
    /// The highest bump any member claimed for this node's name (the codec notes it): a
    /// refutation beats it.
    claimed_own: Arc<AtomicU64>,
}

impl Driver {
    fn new(inputs: Inputs, dialled_tx: mpsc::Sender<Dialled>) -> Driver {
        let handler = Handler::default();
        let max_bump = Arc::new(AtomicU64::new(wall_ms() + BUMP_AHEAD_MS));
        let claimed_own = Arc::new(AtomicU64::new(0));
        {
            let mut shared = handler.lock();
            shared.authority = Some(inputs.store.authority());
            shared.max_bump = Some(max_bump.clone());
        }
        let swim: Swim = Foca::with_custom_broadcast(
            inputs.me.clone(),
            inputs.params.foca_config(1),
            rand::make_rng::<rand::rngs::SmallRng>(),
            MeshCodec::new(max_bump.clone()).watching(inputs.me.name.clone(), claimed_own.clone()),
            handler.clone(),
        );
        Driver {
            snapshots: inputs.publisher.subscribe(),
            inputs,
            swim,
            handler,
            rng: rand::make_rng::<rand::rngs::SmallRng>(),
            timers: BTreeMap::new(),
            seq: 0,
            dialled_tx,
            work: JoinSet::new(),
            dialling: HashSet::new(),
            seed_ids: Vec::new(),
            published: Vec::new(),
            gone: Gone::default(),
            cluster_size: 1,
            started: Instant::now(),
            warned_alone: None,
            max_bump,
            clock_asked: std::collections::HashMap::new(),
            own_addrs: std::collections::HashMap::new(),
            overridden: HashSet::new(),
            claimed_own,
        }
    }

    /// Seeds: dial, then announce to whoever answers (its certificate names it).
    fn dial_seeds(&mut self) {
        for seed in self.inputs.seeds.clone() {
            let transport = self.inputs.transport.clone();
            let tx = self.dialled_tx.clone();
            self.work.spawn(async move {
                let mut backoff = Duration::from_millis(100);
                for _ in 0..20 {
                    if let Ok(peer) = transport.dial(seed).await {
                        let id = MemberId { name: peer.name().into(), addr: seed, bump: 0 };
                        let _ = tx.send(Dialled::Seed(id)).await;
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                tracing::warn!(%seed, "seed unreachable; waiting for others to find this node");
            });
        }
    }

    fn on_datagram(&mut self, name: &str, data: &[u8], out: &mut Output) {
        let metrics = &self.inputs.metrics;
        metrics.datagram("in");
        match core::check_sender(data, name, self.inputs.params.max_datagram) {
            Ok(src) if !MeshCodec::new(self.max_bump.clone()).plausible(&src) => {
                // Its start time is beyond this node's clock: most likely its clock is
                // ahead (or it forges). Measure, so both ends can say so.
                metrics.drop("implausible_member");
                if let Some(peer) = self.inputs.transport.peer_named(name) {
                    let id = MemberId { name: name.into(), addr: peer.conn.remote_address(), bump: 0 };
                    self.measure_clock(&id);
                }
            }
            Ok(src) => {
                self.own_addrs.insert(name.to_owned(), src.addr);
                self.inputs.heard.set(name);
                if self.swim.handle_data(data, out).is_err() {
                    metrics.drop("rejected");
                }
            }
            Err(core::Dropped::Impostor { .. }) => metrics.drop("impostor"),
            Err(core::Dropped::TooLarge(_)) => metrics.drop("too_large"),
            Err(core::Dropped::Malformed) => metrics.drop("malformed"),
        }
    }

    /// A peer's member list from a sync exchange: what is news to SWIM is applied.
    fn on_member_list(&mut self, mut list: MemberList, out: &mut Output) {
        let codec =
            MeshCodec::new(self.max_bump.clone()).watching(self.inputs.me.name.clone(), self.claimed_own.clone());
        let before = list.len();
        list.retain(|m| codec.plausible(m.id()));
        list.iter().for_each(|m| codec.note(m.id()));
        if list.len() < before {
            self.inputs.metrics.drop("implausible_member");
        }
        let news = sync::news(&self.swim, list);
        if !news.is_empty() {
            let _ = self.swim.apply_many(news.into_iter(), true, &mut *out);
        }
    }

    fn on_dialled(&mut self, outcome: Dialled, out: &mut Output) {
        match outcome {
            Dialled::Seed(id) => {
                let _ = self.swim.announce(id.clone(), &mut *out);
                self.measure_clock(&id);
                self.seed_ids.push(id);
            }
            Dialled::Ready(id, data) => {
                self.dialling.remove(&*id.name);
                self.send(&id, data);
            }
            Dialled::Failed(name) => {
                self.dialling.remove(&name);
            }
        }
    }

    fn on_local_write(&mut self, entry: Arc<Entry>, out: &mut Output) {
        let item = encode_item(&Item::Entry((*entry).clone()));
        if item.len() + 64 < self.inputs.params.max_datagram {
            let _ = self.swim.add_broadcast(&item);
            // Send it now, on its own, rather than waiting for room on the next gossip
            // round (membership updates fill those first).
            let _ = self.swim.broadcast(out);
        } else {
            // Too large for a datagram: push it on streams to every active member.
            for m in self.active_members() {
                self.work.spawn(client::push(self.inputs.transport.clone(), m.addr, entry.clone()));
            }
        }
    }

    fn on_timers(&mut self, out: &mut Output) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            let _ = self.swim.handle_timer(timer, &mut *out);
        }
    }

    /// Members foca counts as active, less those removed from the mesh.
    fn active_members(&self) -> Vec<MemberId> {
        let parts = self.snapshots.borrow().parts.clone();
        self.swim.iter_members().map(|m| m.id().clone()).filter(|m| !parts.removed.contains(&*m.name)).collect()
    }

    /// Anti-entropy with one member, chosen among those foca holds alive (a suspect one,
    /// likely cut off, would waste the round: during a partition most of the mesh may be
    /// suspect), or among all active ones when none is.
    fn sync_with_random_member(&mut self) {
        let suspect: std::collections::HashSet<MemberId> = self
            .swim
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| m.id().clone())
            .collect();
        let all = self.active_members();
        let alive: Vec<MemberId> = all.iter().filter(|m| !suspect.contains(*m)).cloned().collect();
        let members = if alive.is_empty() { all } else { alive };
        if !members.is_empty() {
            let pick = members[self.rng.random_range(0..members.len())].clone();
            self.sync_with(pick.addr);
            self.measure_clock(&pick);
        }
    }

    /// Measures how far `member`'s clock is from this node's, as a task; warns when off.
    fn measure_clock(&mut self, member: &MemberId) {
        // Once per sync interval per member is plenty (and a flood of rejected datagrams
        // must not become a flood of measurements).
        let now = Instant::now();
        let asked =
            self.clock_asked.get(&*member.name).is_some_and(|t| now.duration_since(*t) < self.inputs.sync_interval);
        if asked {
            return;
        }
        self.clock_asked.insert(member.name.to_string(), now);
        let transport = self.inputs.transport.clone();
        let heard = self.inputs.heard.clone();
        let metrics = self.inputs.metrics.clone();
        let (name, addr) = (member.name.to_string(), member.addr);
        self.work.spawn(async move {
            let Ok((offset, rtt)) = client::clock_offset(&transport, addr).await else { return };
            // A slow round trip measures nothing useful.
            if rtt > Duration::from_secs(1) {
                return;
            }
            let before = heard.offset(&name);
            let max = heard.set_offset(&name, offset);
            metrics.clock_offset.set(max as f64 / 1000.0);
            let off = offset.abs() > super::CLOCK_WARN_MS;
            let was_off = before.is_some_and(|b| b.abs() > super::CLOCK_WARN_MS);
            if off && !was_off {
                tracing::warn!(member = %name, offset_ms = offset, "{}", super::clock_message(&name, offset));
            } else if !off && was_off {
                tracing::info!(member = %name, offset_ms = offset, "{name}'s clock agrees with this node's again");
            }
        });
    }

    /// One anti-entropy exchange with the member at `addr`, as a task.
    fn sync_with(&mut self, addr: SocketAddr) {
        let transport = self.inputs.transport.clone();
        let store = self.inputs.store.clone();
        let exchange = self.inputs.exchange.clone();
        let metrics = self.inputs.metrics.clone();
        self.work.spawn(async move {
            let result = client::sync(&transport, &store, &exchange, addr).await;
            metrics.synced(&result);
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "anti-entropy exchange failed");
            }
        });
    }

    fn reap(&mut self) {
        let roles = self.snapshots.borrow().parts.roles.clone();
        let is_signer = |name: &str| roles.get(name) == Some(&mesh_proto::role::Role::Signer);
        let doomed =
            self.gone.to_reap(&self.published, Instant::now(), self.inputs.reap_after, &self.inputs.me.name, is_signer);
        if !doomed.is_empty() {
            let store = self.inputs.store.clone();
            self.work.spawn(async move {
                let _ = tokio::task::spawn_blocking(move || reap::reap(&store, &doomed)).await;
            });
        }
    }

    fn on_view_tick(&mut self, out: &mut Output) {
        self.max_bump.store(wall_ms() + BUMP_AHEAD_MS, Ordering::Relaxed);
        self.inputs.exchange.set_ours(&self.swim);
        let now = Instant::now();
        match alone_warning(&self.snapshots.borrow(), &self.inputs.seeds) {
            Some(w)
                if now.duration_since(self.started) >= ALONE_GRACE
                    && self.warned_alone.is_none_or(|at| now.duration_since(at) >= ALONE_WARNING_EVERY) =>
            {
                tracing::warn!("{w}");
                self.warned_alone = Some(now);
            }
            Some(_) => {}
            None => {
                if self.warned_alone.take().is_some() {
                    tracing::info!("this node found the mesh: it knows other members again");
                }
            }
        }
        // Nobody knows us yet (our announce was lost, or every member went away):
        // announce to the seeds again.
        if self.swim.num_members() == 0 {
            for id in &self.seed_ids {
                let _ = self.swim.announce(id.clone(), &mut *out);
            }
        }
    }

    /// After every event: news to the store, membership changes acted on, foca's output
    /// carried out, the member list published when it changed.
    fn after(&mut self, mut out: Output) {
        let (received, refused) = {
            let mut shared = self.handler.lock();
            (std::mem::take(&mut shared.received), std::mem::take(&mut shared.refused))
        };
        for _ in 0..refused {
            self.inputs.metrics.drop("refused_item");
        }
        if !received.is_empty() {
            // Pass news on at once, not only when the next gossip round has room.
            let _ = self.swim.broadcast(&mut out);
        }
        let entries: Vec<Entry> = received
            .into_iter()
            .filter_map(|item| match item {
                Item::Entry(e) => Some(e),
                Item::Left { .. } => None,
            })
            .collect();
        if !entries.is_empty() {
            let store = self.inputs.store.clone();
            self.work.spawn(async move {
                let _ = tokio::task::spawn_blocking(move || store.merge(entries, wall_ms())).await;
            });
        }
        for change in std::mem::take(&mut out.changes) {
            match change {
                Change::Up(m) | Change::Renamed { new: m, .. } => {
                    self.handler.lock().forget_left(&m.name);
                    // A member that comes up (new, restarted or back from a partition)
                    // gets a full sync at once: broadcasts never reach a late joiner.
                    self.sync_with(m.addr);
                    self.measure_clock(&m);
                }
                Change::Defunct => {
                    // A bump from the clock, not one more: it beats any identity of this
                    // name that another member made up within the codec's bound.
                    let current = self.swim.identity().clone();
                    let renewed = core::refuting(&current, self.claimed_own.load(Ordering::Relaxed), wall_ms());
                    tracing::warn!(
                        old_bump = current.bump, new_bump = renewed.bump,
                        "the mesh declared this node down (or another member claimed its name with a newer identity); refuting it with a new identity"
                    );
                    self.inputs.me = renewed.clone();
                    if self.swim.change_identity(renewed, &mut out).is_err() {
                        let _ = self.swim.reuse_down_identity();
                    }
                }
                _ => {}
            }
        }
        let n = self.swim.num_members() + 1;
        if n != self.cluster_size {
            self.cluster_size = n;
            let _ = self.swim.set_config(self.inputs.params.foca_config(n));
        }
        let parts = self.snapshots.borrow().parts.clone();
        self.flush(&mut out, |name| parts.removed.contains(name));

        let mut list = member_list(&self.swim, &self.inputs.me, &self.handler);
        self.own_addresses(&mut list);
        if list != self.published {
            self.gone.observe(&list, Instant::now());
            publish(&self.inputs.publisher, &list, &self.inputs.heard);
            self.published = list;
        }
    }

    /// Leaving: tells the others this is on purpose, then leaves.
    fn leave(&mut self) {
        let mut out = Output::default();
        let me = &self.inputs.me;
        let _ = self.swim.add_broadcast(&encode_item(&Item::Left { name: me.name.to_string(), bump: me.bump }));
        let _ = self.swim.leave_cluster(&mut out);
        let _ = self.swim.broadcast(&mut out);
        self.flush(&mut out, |_| false);
    }

    /// Puts each member's own address in `list` where a third party's claim differs
    /// from it: an address is taken only from the member itself. Each differing claim is
    /// logged once and counted.
    fn own_addresses(&mut self, list: &mut [(String, MemberState, SocketAddr)]) {
        for (name, _, addr) in list.iter_mut() {
            let Some(own) = self.own_addrs.get(name.as_str()) else { continue };
            if own != addr {
                if self.overridden.insert((name.clone(), *addr)) {
                    self.inputs.metrics.drop("address_claim");
                    tracing::warn!(member = %name, claimed = %addr, own = %own, "a member's address claimed by another member is ignored: it says it is elsewhere");
                }
                *addr = *own;
            }
        }
    }

    /// Sets foca's timers and sends its datagrams, dialling members not yet connected.
    fn flush(&mut self, out: &mut Output, removed: impl Fn(&str) -> bool) {
        let now = Instant::now();
        for (timer, after) in out.timers.drain(..) {
            self.seq += 1;
            self.timers.insert((now + after, self.seq), timer);
        }
        for (to, data) in out.sends.drain(..) {
            if removed(&to.name) {
                // Its certificate is revoked: dialling it only makes refusals on both sides.
                self.inputs.metrics.drop("removed");
            } else if self.inputs.transport.peer_named(&to.name).is_some() {
                self.send(&to, data);
            } else if self.dialling.insert(to.name.to_string()) {
                // Dial in the background; the datagram goes once connected.
                let transport = self.inputs.transport.clone();
                let tx = self.dialled_tx.clone();
                let addr = self.own_addrs.get(&*to.name).copied().unwrap_or(to.addr);
                self.work.spawn(async move {
                    let outcome = match transport.dial(addr).await {
                        Ok(peer) if peer.name() == &*to.name => Dialled::Ready(to, data),
                        Ok(peer) => {
                            tracing::warn!(expected = %to.name, found = %peer.name(), addr = %to.addr, "another node answers at a member's address");
                            Dialled::Failed(to.name.to_string())
                        }
                        Err(_) => Dialled::Failed(to.name.to_string()),
                    };
                    let _ = tx.send(outcome).await;
                });
            } else {
                self.inputs.metrics.drop("dialling");
            }
        }
    }

    fn send(&self, to: &MemberId, data: Vec<u8>) {
        let metrics = &self.inputs.metrics;
        let Some(peer) = self.inputs.transport.peer_named(&to.name) else {
            metrics.drop("no_connection");
            return;
        };
        if peer.conn.max_datagram_size().is_none_or(|max| data.len() > max) {
            metrics.drop("too_large_for_path");
            return;
        }
        match peer.conn.send_datagram(Bytes::from(data)) {
            Ok(()) => metrics.datagram("out"),
            Err(_) => metrics.drop("send_failed"),
        }
    }
}

async fn read_datagrams(peer: Peer, tx: mpsc::Sender<Datagram>) {
    let name = peer.name().to_owned();
    while let Ok(data) = peer.conn.read_datagram().await {
        if tx.send((name.clone(), data)).await.is_err() {
            return;
        }
    }
}

/// Members as this node sees them: itself, then foca's view, sorted by name.
fn member_list(swim: &Swim, me: &MemberId, handler: &Handler) -> List {
    let shared = handler.lock();
    let mut list = vec![(me.name.to_string(), MemberState::Alive, me.addr)];
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for m in swim.iter_membership_state() {
        let id = m.id();
        if id.name == me.name {
            continue;
        }
        let state = match m.state() {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down if shared.has_left(&id.name, id.bump) => MemberState::Left,
            foca::State::Down => MemberState::Dead,
        };
        // A restarted member appears twice (old bump down, new alive): keep the newest.
        match seen.get(&*id.name) {
            Some(&i) if list[i].1 == MemberState::Alive => {}
            Some(&i) => list[i] = (id.name.to_string(), state, id.addr),
            None => {
                seen.insert(&id.name, list.len());
                list.push((id.name.to_string(), state, id.addr));
            }
        }
    }
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}

fn publish(publisher: &state::Publisher, list: &[(String, MemberState, SocketAddr)], heard: &Heard) {
    let members = list
        .iter()
        .map(|(name, st, addr)| state::Member {
            name: name.clone(),
            addr: *addr,
            state: *st,
            last_heard: heard.get(name).unwrap_or(SystemTime::UNIX_EPOCH),
        })
        .collect();
    publisher.update(|s| s.members = members);
}
