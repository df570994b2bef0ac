//! Deterministic simulation of membership and replication: the same sans-IO core that
//! meshd runs (foca plus the store-entry broadcasts plus anti-entropy), hundreds of
//! members, a virtual clock, and a simulated network with latency, loss and partitions.
//! No sockets, no sleeping: a seed reproduces a run exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use foca::{Foca, PostcardCodec, Timer};
use meshd::config::GossipConfig;
use meshd::membership::core::{encode_item, Change, Handler, Item, MemberId, Output, Swim};
use meshd::membership::sync;
use meshd::store::entry::Entry;
use meshd::store::hlc::{Clock, Hlc};
use meshd::store::View;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MS: u64 = 1;
/// The simulated wall clock at virtual time 0, in ms since the epoch.
const WALL: u64 = 1_000_000;
const SEC: u64 = 1000;

enum Event {
    Datagram { from: usize, to: usize, data: Vec<u8> },
    Timer { node: usize, timer: Timer<MemberId> },
    Sync { node: usize },
}

struct SimNode {
    id: MemberId,
    swim: Swim,
    handler: Handler,
    view: View,
    clock: Clock,
    alive: bool,
    downs_seen: u64,
}

struct Sim {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<SimNode>,
    rng: SmallRng,
    loss: f64,
    /// Pairs that cannot talk (both directions), for partitions.
    cut: HashSet<(usize, usize)>,
    sync_every: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1), 7946))
}

impl Sim {
    fn new(n: usize, seed: u64, loss: f64) -> Sim {
        let params = GossipConfig::default().params();
        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            loss,
            cut: HashSet::new(),
            sync_every: GossipConfig::default().sync_interval.as_millis() as u64,
        };
        for i in 0..n {
            let id = MemberId { name: format!("n{i}"), addr: addr(i), bump: 1 };
            let handler = Handler::default();
            let swim = Foca::with_custom_broadcast(
                id.clone(),
                params.foca_config(n),
                SmallRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                PostcardCodec,
                handler.clone(),
            );
            sim.nodes.push(SimNode {
                id,
                swim,
                handler,
                view: View::default(),
                clock: Clock::new(Hlc::ZERO),
                alive: true,
                downs_seen: 0,
            });
            let first_sync = sim.rng.random_range(0..sim.sync_every);
            sim.schedule(first_sync, Event::Sync { node: i });
        }
        sim
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn blocked(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Applies what one call into a node's core produced.
    fn apply(&mut self, node: usize, mut out: Output) {
        for (timer, after) in out.timers.drain(..) {
            self.schedule(after.as_millis() as u64, Event::Timer { node, timer });
        }
        for (to, data) in out.sends.drain(..) {
            let Some(to) = self.index(&to) else { continue };
            if self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = self.rng.random_range(1..5) * MS;
            self.schedule(latency, Event::Datagram { from: node, to, data });
        }
        for change in out.changes.drain(..) {
            if let Change::Down(_) = change {
                self.nodes[node].downs_seen += 1;
            }
        }
        // Entries that arrived by broadcast go into the node's store.
        let received = std::mem::take(&mut self.nodes[node].handler.lock().received);
        if !received.is_empty() {
            // News is passed on at once, as meshd does, not only on the next gossip round.
            let mut more = Output::default();
            let _ = self.nodes[node].swim.broadcast(&mut more);
            self.apply(node, more);
        }
        let n = &mut self.nodes[node];
        let mut merged = false;
        for item in received {
            if let Item::Entry(e) = item {
                if n.clock.observe(e.version, WALL + self.now).is_ok() {
                    merged |= n.view.merge(Arc::new(e)) == meshd::store::Merge::Applied;
                }
            }
        }
        if merged {
            n.handler.lock().set_view(Arc::new(n.view.clone()));
        }
    }

    fn index(&self, id: &MemberId) -> Option<usize> {
        id.name.strip_prefix('n')?.parse().ok()
    }

    fn join(&mut self, node: usize, via: usize) {
        let mut out = Output::default();
        let dst = self.nodes[via].id.clone();
        let _ = self.nodes[node].swim.announce(dst, &mut out);
        self.apply(node, out);
    }

    fn write(&mut self, node: usize, key: &str, value: &[u8]) {
        let n = &mut self.nodes[node];
        let version = n.clock.now(WALL + self.now);
        let entry = Entry::next(n.view.entry(key).map(|e| e.as_ref()), key, Some(value.to_vec()), version, &n.id.name);
        n.view.merge(Arc::new(entry.clone()));
        n.handler.lock().set_view(Arc::new(n.view.clone()));
        let _ = n.swim.add_broadcast(&encode_item(&Item::Entry(entry)));
        let mut out = Output::default();
        let _ = self.nodes[node].swim.broadcast(&mut out);
        self.apply(node, out);
    }

    fn kill(&mut self, node: usize) {
        self.nodes[node].alive = false;
    }

    /// Runs the simulation until `until` (virtual ms).
    fn run_until(&mut self, until: u64) {
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

    /// One push-pull exchange with a random active member, as meshd does it.
    fn anti_entropy(&mut self, node: usize) {
        let members: Vec<usize> = self.nodes[node].swim.iter_members().filter_map(|m| self.index(m.id())).collect();
        if members.is_empty() {
            return;
        }
        let other = members[self.rng.random_range(0..members.len())];
        if !self.nodes[other].alive || self.blocked(node, other) {
            return;
        }
        // Membership push-pull: each side applies the other's member list.
        let theirs: Vec<_> = self.nodes[other].swim.iter_membership_state().cloned().collect();
        let ours: Vec<_> = self.nodes[node].swim.iter_membership_state().cloned().collect();
        let mut out = Output::default();
        let _ = self.nodes[node].swim.apply_many(theirs.into_iter(), true, &mut out);
        self.apply(node, out);
        let mut out = Output::default();
        let _ = self.nodes[other].swim.apply_many(ours.into_iter(), true, &mut out);
        self.apply(other, out);

        let mine = sync::digests(&self.nodes[node].view);
        let diff = sync::differing(&self.nodes[other].view, &mine);
        if diff.is_empty() {
            return;
        }
        let summary = sync::summary(&self.nodes[other].view, &diff);
        let (give, want) = sync::plan(&self.nodes[node].view, &diff, &summary);
        let take = sync::entries_for(&self.nodes[other].view, &want);
        for (to, entries) in [(other, give), (node, take)] {
            let n = &mut self.nodes[to];
            for e in entries {
                if n.clock.observe(e.version, WALL + self.now).is_ok() {
                    n.view.merge(e);
                }
            }
            n.handler.lock().set_view(Arc::new(n.view.clone()));
        }
    }

    /// Whether every live node knows every other live node as a member (alive, or
    /// suspected and not yet refuted: SWIM's normal churn under loss), and no dead one.
    fn converged(&self) -> bool {
        self.min_known() + 1 == self.nodes.iter().filter(|n| n.alive).count() && self.no_dead_member_active()
    }

    /// The fewest live members any live node knows as active.
    fn min_known(&self) -> usize {
        let live: HashSet<&str> = self.nodes.iter().filter(|n| n.alive).map(|n| n.id.name.as_str()).collect();
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.swim.iter_members().filter(|m| live.contains(m.id().name.as_str())).count())
            .min()
            .unwrap_or(0)
    }

    fn no_dead_member_active(&self) -> bool {
        let dead: HashSet<&str> = self.nodes.iter().filter(|n| !n.alive).map(|n| n.id.name.as_str()).collect();
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .all(|n| n.swim.iter_members().all(|m| !dead.contains(m.id().name.as_str())))
    }

    /// What meshd does for a node that knows nobody yet (its announce was lost): announce
    /// to its seed again.
    fn reannounce_isolated(&mut self) {
        for i in 1..self.nodes.len() {
            if self.nodes[i].alive && self.nodes[i].swim.num_members() == 0 {
                self.join(i, 0);
            }
        }
    }

    fn sees_down(&self, observer: usize, name: &str) -> bool {
        self.nodes[observer].swim.iter_membership_state().any(|m| m.id().name == name && m.state() == foca::State::Down)
    }

    /// Runs in steps of `step` until `done` holds, or panics after `limit`. Returns the
    /// virtual time it took.
    fn run_until_true(&mut self, step: u64, limit: u64, what: &str, done: impl Fn(&Sim) -> bool) -> u64 {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start < limit,
                "{what}: not within {} virtual s (fewest members known: {})",
                limit / SEC,
                self.min_known()
            );
            let next = self.now + step;
            self.run_until(next);
            if self.now % SEC < step {
                self.reannounce_isolated();
            }
        }
        self.now - start
    }
}

/// n members join through member 0, one every 10 ms.
fn joined(n: usize, seed: u64, loss: f64) -> (Sim, u64) {
    let mut sim = Sim::new(n, seed, loss);
    for i in 1..n {
        sim.join(i, 0);
        let next = sim.now + 10 * MS;
        sim.run_until(next);
    }
    let took = sim.run_until_true(100 * MS, 120 * SEC, "membership converges", Sim::converged);
    (sim, took)
}

#[test]
fn a_hundred_members_converge_and_a_killed_one_is_dead_everywhere() {
    let (mut sim, took) = joined(100, 1, 0.0);
    eprintln!("100 members: converged {:.1} virtual s after the last join", took as f64 / 1000.0);
    sim.kill(42);
    let detect = sim.run_until_true(100 * MS, 60 * SEC, "n42 declared down everywhere", |s| {
        (0..s.nodes.len()).filter(|&i| s.nodes[i].alive).all(|i| s.sees_down(i, "n42"))
    });
    eprintln!("100 members: a killed member down everywhere after {:.1} virtual s", detect as f64 / 1000.0);
}

#[test]
fn five_hundred_members_converge() {
    let (_sim, took) = joined(500, 7, 0.0);
    eprintln!("500 members: converged {:.1} virtual s after the last join", took as f64 / 1000.0);
}

#[test]
fn no_member_is_falsely_declared_dead_at_five_percent_loss() {
    let (mut sim, _) = joined(100, 3, 0.05);
    for n in &mut sim.nodes {
        n.downs_seen = 0;
    }
    let until = sim.now + 120 * SEC;
    sim.run_until(until);
    let false_downs: u64 = sim.nodes.iter().map(|n| n.downs_seen).sum();
    assert_eq!(false_downs, 0, "live members declared down at 5% loss");
    assert!(sim.converged());
}

#[test]
fn writes_reach_everyone_and_a_late_joiner_receives_the_whole_store() {
    let (mut sim, _) = joined(100, 5, 0.01);
    sim.write(3, "route/first", b"v");
    let one = sim.run_until_true(10 * MS, 60 * SEC, "one write everywhere", |s| {
        s.nodes.iter().all(|n| n.view.get("route/first").is_some())
    });
    eprintln!("100 members, 1% loss: one write everywhere after {:.2} virtual s", one as f64 / 1000.0);
    for i in 0..200 {
        sim.write(i % 97, &format!("route/r{i}"), format!("v{i}").as_bytes());
        let next = sim.now + 5 * MS;
        sim.run_until(next);
    }
    let spread = sim.run_until_true(100 * MS, 60 * SEC, "every store equal", |s| {
        let d = s.nodes[0].view.digest();
        s.nodes.iter().all(|n| n.view.digest() == d && n.view.len() == 201)
    });
    eprintln!("100 members, 1% loss: 200 writes everywhere {:.1} virtual s after the last", spread as f64 / 1000.0);

    // A late joiner: broadcasts are long over; anti-entropy brings it everything.
    let newcomer = sim.nodes.len() - 1;
    sim.kill(newcomer);
    let fresh = {
        let params = GossipConfig::default().params();
        let id = MemberId { name: format!("n{newcomer}"), addr: addr(newcomer), bump: 2 };
        let handler = Handler::default();
        let swim = Foca::with_custom_broadcast(
            id.clone(),
            params.foca_config(100),
            SmallRng::seed_from_u64(11),
            PostcardCodec,
            handler.clone(),
        );
        SimNode { id, swim, handler, view: View::default(), clock: Clock::new(Hlc::ZERO), alive: true, downs_seen: 0 }
    };
    sim.nodes[newcomer] = fresh;
    sim.join(newcomer, 0);
    let caught = sim.run_until_true(100 * MS, 60 * SEC, "the late joiner holds the whole store", |s| {
        s.nodes[newcomer].view.digest() == s.nodes[0].view.digest()
    });
    eprintln!("late joiner: whole store after {:.1} virtual s", caught as f64 / 1000.0);
}

#[test]
fn a_partition_heals_and_both_sides_converge() {
    let (mut sim, _) = joined(40, 9, 0.0);
    let n = sim.nodes.len();
    for a in 0..n / 2 {
        for b in n / 2..n {
            sim.cut.insert((a, b));
        }
    }
    let split = sim.now + 30 * SEC;
    // Writes on both sides, including the same key.
    sim.write(1, "route/shared", b"left");
    sim.write(30, "route/shared", b"right");
    sim.write(2, "route/left-only", b"l");
    sim.write(31, "route/right-only", b"r");
    sim.run_until(split);
    sim.cut.clear();
    sim.run_until_true(100 * MS, 120 * SEC, "members and stores converge after the heal", |s| {
        let d = s.nodes[0].view.digest();
        s.converged() && s.nodes.iter().all(|n| n.view.digest() == d && n.view.len() == 3)
    });
}
