//! A deterministic simulation of membership and replication: the production sans-IO
//! parts ([`super::core`]: foca and the store-entry broadcasts; [`super::sync`]: the
//! anti-entropy session) on many members, with a virtual clock and a simulated network
//! (latency, loss, partitions). No sockets, no sleeping: a seed reproduces a run exactly.
//! The tests (`meshd/tests/gossip_sim.rs`) and the scale benchmark (`bench-gossip-sim`)
//! drive it.
//!
//! What stands in for IO, and only that: datagrams are delivered after 1-4 virtual ms
//! unless lost or cut; a sync exchange's messages are handed across in memory; a node's
//! store is a `View` that merges what arrives, as `Store::merge` does.
//!
//! Must not: carry its own copy of any membership or anti-entropy decision; a fix in
//! `core` or `sync` is a fix here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use foca::{Foca, Timer};
use mesh_proto::wire::{self, MeshRequest};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::core::{encode_item, Change, Handler, Item, MemberId, MeshCodec, Output, Params, Swim};
use super::sync::{self, Callee, Caller};
use crate::store::entry::Entry;
use crate::store::hlc::{Clock, Hlc};
use crate::store::{Merge, View};

/// One virtual second, in virtual ms.
pub const SEC: u64 = 1000;
/// The simulated wall clock at virtual time 0, in ms since the epoch.
const WALL: u64 = 1_000_000;

enum Event {
    Datagram { from: usize, to: usize, data: Vec<u8> },
    Timer { node: usize, timer: Timer<MemberId> },
    Sync { node: usize },
}

/// One simulated member.
pub struct SimNode {
    pub id: MemberId,
    pub swim: Swim,
    pub handler: Handler,
    /// Its store.
    pub view: View,
    clock: Clock,
    pub alive: bool,
    /// How many `Down` notifications it has had.
    pub downs_seen: u64,
    /// Bytes it has sent: datagrams and its side of sync exchanges.
    pub bytes_sent: u64,
    /// Its member list as sync exchanges send it, and when it was encoded: the driver
    /// re-encodes it once per probe period, and so does the simulation.
    members: (Vec<u8>, Option<u64>),
}

/// The simulated network and its members.
pub struct Sim {
    /// Virtual time, in ms.
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    pub nodes: Vec<SimNode>,
    rng: SmallRng,
    params: Params,
    seed: u64,
    /// The chance that a datagram is lost.
    pub loss: f64,
    /// Pairs that cannot talk (both directions, smaller index first), for partitions.
    pub cut: HashSet<(usize, usize)>,
    sync_every: u64,
}

/// The simulated address of member `i` (in 198.18.0.0/15; nothing is ever sent to it).
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 18 + (i / 62_500) as u8, (i / 250 % 250) as u8, (i % 250) as u8 + 1), 7946))
}

impl Sim {
    /// `n` members that know nobody yet, with meshd's default gossip settings.
    pub fn new(n: usize, seed: u64, loss: f64) -> Sim {
        let gossip = crate::config::GossipConfig::default();
        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes: Vec::with_capacity(n),
            rng: SmallRng::seed_from_u64(seed),
            params: gossip.params(),
            seed,
            loss,
            cut: HashSet::new(),
            sync_every: gossip.sync_interval.as_millis() as u64,
        };
        for i in 0..n {
            let node = sim.fresh_node(i, 1, n);
            sim.nodes.push(node);
            let first_sync = sim.rng.random_range(0..sim.sync_every);
            sim.schedule(first_sync, Event::Sync { node: i });
        }
        sim
    }

    fn fresh_node(&self, i: usize, bump: u64, cluster: usize) -> SimNode {
        let id = MemberId { name: format!("n{i}").into(), addr: addr(i), bump };
        let handler = Handler::default();
        let rng = SmallRng::seed_from_u64(self.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ bump);
        let swim = Foca::with_custom_broadcast(
            id.clone(),
            self.params.foca_config(cluster),
            rng,
            MeshCodec::unbounded(),
            handler.clone(),
        );
        SimNode {
            id,
            swim,
            handler,
            view: View::default(),
            clock: Clock::new(Hlc::ZERO),
            alive: true,
            downs_seen: 0,
            bytes_sent: 0,
            members: (Vec::new(), None),
        }
    }

    /// Member `i` restarts with an empty store and a new identity (the next bump); it
    /// knows nobody until it joins.
    pub fn restart_empty(&mut self, i: usize) {
        let bump = self.nodes[i].id.bump + 1;
        let cluster = self.nodes.len();
        self.nodes[i] = self.fresh_node(i, bump, cluster);
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn blocked(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn index(&self, id: &MemberId) -> Option<usize> {
        id.name.strip_prefix('n')?.parse().ok().filter(|&i| i < self.nodes.len())
    }

    /// Applies what one call into a node's core produced, as the driver does.
    fn apply(&mut self, node: usize, mut out: Output) {
        for (timer, after) in out.timers.drain(..) {
            self.schedule(after.as_millis() as u64, Event::Timer { node, timer });
        }
        for (to, data) in out.sends.drain(..) {
            let Some(to) = self.index(&to) else { continue };
            self.nodes[node].bytes_sent += data.len() as u64;
            if self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = self.rng.random_range(1..5);
            self.schedule(latency, Event::Datagram { from: node, to, data });
        }
        let mut refuted = false;
        for change in out.changes.drain(..) {
            match change {
                Change::Down(_) => self.nodes[node].downs_seen += 1,
                Change::Defunct => refuted = true,
                _ => {}
            }
        }
        if refuted {
            // Declared down: back with a newer identity, as the driver does.
            let current = self.nodes[node].swim.identity().clone();
            let renewed = super::core::refuting(&current, 0, 0);
            let mut more = Output::default();
            let _ = self.nodes[node].swim.change_identity(renewed, &mut more);
            self.apply(node, more);
        }
        // Entries that arrived by broadcast go into the node's store.
        let received = std::mem::take(&mut self.nodes[node].handler.lock().received);
        if !received.is_empty() {
            // News is passed on at once, as the driver does.
            let mut more = Output::default();
            let _ = self.nodes[node].swim.broadcast(&mut more);
            self.apply(node, more);
        }
        let entries = received.into_iter().filter_map(|item| match item {
            Item::Entry(e) => Some(e),
            Item::Left { .. } => None,
        });
        self.merge(node, entries.collect());
    }

    /// Merges entries into a node's store, as `Store::merge` does (the clock first).
    fn merge(&mut self, node: usize, entries: Vec<Entry>) {
        let now = WALL + self.now;
        let n = &mut self.nodes[node];
        let mut merged = false;
        for e in entries {
            if n.clock.observe(e.version, now).is_ok() {
                merged |= n.view.merge(Arc::new(e)) == Merge::Applied;
            }
        }
        if merged {
            n.handler.lock().set_view(Arc::new(n.view.clone()));
        }
    }

    /// Member `node` announces itself to member `via`.
    pub fn join(&mut self, node: usize, via: usize) {
        let mut out = Output::default();
        let dst = self.nodes[via].id.clone();
        let _ = self.nodes[node].swim.announce(dst, &mut out);
        self.apply(node, out);
    }

    /// A local write on `node`, broadcast as the driver does.
    pub fn write(&mut self, node: usize, key: &str, value: &[u8]) {
        let now = WALL + self.now;
        let n = &mut self.nodes[node];
        let version = n.clock.now(now);
        let entry = Entry::next(n.view.entry(key).map(|e| e.as_ref()), key, Some(value.to_vec()), version, &n.id.name);
        n.view.merge(Arc::new(entry.clone()));
        n.handler.lock().set_view(Arc::new(n.view.clone()));
        let _ = n.swim.add_broadcast(&encode_item(&Item::Entry(entry)));
        let mut out = Output::default();
        let _ = n.swim.broadcast(&mut out);
        self.apply(node, out);
    }

    /// Member `node` stops: it sends and receives nothing from now on.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].alive = false;
    }

    /// Runs the simulation until `until` (virtual ms).
    pub fn run_until(&mut self, until: u64) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(event) = self.events.remove(&seq) else { continue };
            match event {
                Event::Datagram { from, to, data } => {
                    if !self.nodes[to].alive || self.blocked(from, to) {
                        continue;
                    }
                    let mut out = Output::default();
                    let _ = self.nodes[to].swim.handle_data(&data, &mut out);
                    self.apply(to, out);
                }
                Event::Timer { node, timer } => {
                    if !self.nodes[node].alive {
                        continue;
                    }
                    let mut out = Output::default();
                    let _ = self.nodes[node].swim.handle_timer(timer, &mut out);
                    self.apply(node, out);
                }
                Event::Sync { node } => {
                    let every = self.sync_every;
                    self.schedule(every, Event::Sync { node });
                    if self.nodes[node].alive {
                        self.anti_entropy(node);
                    }
                }
            }
        }
        self.now = until;
    }

    /// One push-pull exchange with a random active member: the production sessions, the
    /// messages handed across in memory.
    fn anti_entropy(&mut self, node: usize) {
        let members: Vec<usize> = self.nodes[node].swim.iter_members().filter_map(|m| self.index(m.id())).collect();
        if members.is_empty() {
            return;
        }
        let other = members[self.rng.random_range(0..members.len())];
        if !self.nodes[other].alive || self.blocked(node, other) {
            return;
        }
        let ours = self.members_of(node);
        let (mut caller, request) = Caller::open(&self.nodes[node].view, ours);
        self.nodes[node].bytes_sent += wire_len(&request);
        let MeshRequest::Sync { buckets, members } = request else { return };
        let ours = self.members_of(other);
        let (mut callee, summary, theirs) = Callee::on_request(&self.nodes[other].view, &buckets, &members, ours);
        self.nodes[other].bytes_sent += wire_len(&summary);
        self.apply_members(other, theirs);
        let (pushes, theirs) = caller.on_summary(&self.nodes[node].view, summary);
        self.apply_members(node, theirs);
        for push in pushes {
            self.nodes[node].bytes_sent += wire_len(&push);
            callee.on_push(push);
        }
        let (back, got) = callee.finish(&self.nodes[other].view);
        for chunk in back {
            self.nodes[other].bytes_sent += wire_len(&chunk);
            caller.on_entries(chunk);
        }
        let (mine, _) = caller.finish();
        self.merge(other, got.entries);
        self.merge(node, mine.entries);
    }

    /// A node's member list as its driver would send it: encoded at most one probe
    /// period ago.
    fn members_of(&mut self, node: usize) -> Vec<u8> {
        let (now, period) = (self.now, self.params.probe_period.as_millis() as u64);
        let n = &mut self.nodes[node];
        if n.members.1.is_none_or(|at| now - at >= period) {
            n.members = (sync::encode_members(&n.swim), Some(now));
        }
        n.members.0.clone()
    }

    /// A peer's member list arrived at `node`: what is news is applied, as the driver does.
    fn apply_members(&mut self, node: usize, list: sync::MemberList) {
        let list = sync::news(&self.nodes[node].swim, list);
        if list.is_empty() {
            return;
        }
        let mut out = Output::default();
        let _ = self.nodes[node].swim.apply_many(list.into_iter(), true, &mut out);
        self.apply(node, out);
    }

    /// Whether every live member knows every other live member as active (alive, or
    /// suspected and not yet refuted: SWIM's normal churn under loss), and no dead one.
    pub fn converged(&self) -> bool {
        self.min_known() + 1 == self.nodes.iter().filter(|n| n.alive).count() && self.no_dead_member_active()
    }

    /// The fewest live members any live member knows as active.
    pub fn min_known(&self) -> usize {
        let live: HashSet<&str> = self.nodes.iter().filter(|n| n.alive).map(|n| &*n.id.name).collect();
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.swim.iter_members().filter(|m| live.contains(&*m.id().name)).count())
            .min()
            .unwrap_or(0)
    }

    fn no_dead_member_active(&self) -> bool {
        let dead: HashSet<&str> = self.nodes.iter().filter(|n| !n.alive).map(|n| &*n.id.name).collect();
        self.nodes.iter().filter(|n| n.alive).all(|n| n.swim.iter_members().all(|m| !dead.contains(&*m.id().name)))
    }

    /// What the driver does for a node that knows nobody (its announce was lost):
    /// announce to its seed (member 0) again.
    fn reannounce_isolated(&mut self) {
        for i in 1..self.nodes.len() {
            if self.nodes[i].alive && self.nodes[i].swim.num_members() == 0 {
                self.join(i, 0);
            }
        }
    }

    /// Whether `observer` holds `name` as down.
    pub fn sees_down(&self, observer: usize, name: &str) -> bool {
        self.nodes[observer]
            .swim
            .iter_membership_state()
            .any(|m| &*m.id().name == name && m.state() == foca::State::Down)
    }

    /// Runs in steps of `step` until `done` holds: the virtual time it took, or None
    /// after `limit`.
    pub fn run_until_true(&mut self, step: u64, limit: u64, done: impl Fn(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while !done(self) {
            if self.now - start >= limit {
                return None;
            }
            let next = self.now + step;
            self.run_until(next);
            if self.now % SEC < step {
                self.reannounce_isolated();
            }
        }
        Some(self.now - start)
    }

    /// Bytes sent by all live members so far.
    pub fn bytes_sent(&self) -> u64 {
        self.nodes.iter().filter(|n| n.alive).map(|n| n.bytes_sent).sum()
    }
}

/// `n` members joining through member 0, one every `every` virtual ms; returns the
/// simulation when the last has joined and the virtual time membership then took to
/// converge (None if not within `limit`).
pub fn joined(n: usize, seed: u64, loss: f64, every: u64, limit: u64) -> (Sim, Option<u64>) {
    let mut sim = Sim::new(n, seed, loss);
    for i in 1..n {
        sim.join(i, 0);
        let next = sim.now + every;
        sim.run_until(next);
    }
    let took = sim.run_until_true(100, limit, Sim::converged);
    (sim, took)
}

/// The size of a message on the wire.
fn wire_len<T: serde::Serialize>(msg: &T) -> u64 {
    wire::encode(msg).len() as u64
}
