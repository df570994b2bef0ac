//! Membership and replication: SWIM (foca) over QUIC datagrams on the `mesh/1`
//! connections, store entries spread as foca custom broadcasts (pushed on streams when
//! too large for a datagram), and push-pull anti-entropy with a random member every
//! `sync_interval` and at once with every member that comes up.
//!
//! The loop owns foca and never blocks inside it: datagrams to send, dials and store
//! merges are handed to tasks. Every datagram's SWIM sender must be the name in the
//! certificate of the connection it came on, or it is dropped and counted.

pub mod core;
pub mod sync;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use foca::{Foca, PostcardCodec, Timer};
use mesh_proto::api::MemberState;
use mesh_proto::wire::{Holds, MeshRequest, SyncEntries, SyncPush, SyncSummary};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::core::{encode_item, Change, Handler, Item, MemberId, Output, Params, Swim};
use crate::drain::DrainWatcher;
use crate::state::{self, Publisher};
use crate::store::entry::Entry;
use crate::store::{wall_ms, Store};
use crate::transport::{frame, Peer, Transport};

/// Membership metrics, under `mesh_gossip_`.
#[derive(Clone, Default)]
pub struct Metrics {
    dropped: Family<ReasonLabel, Counter>,
    datagrams: Family<DirLabel, Counter>,
    syncs: Family<ResultLabel, Counter>,
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
        m
    }

    fn drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// What the admin API reads: when each member was last heard from.
#[derive(Default)]
pub struct Heard {
    last: Mutex<HashMap<String, SystemTime>>,
}

impl Heard {
    pub fn get(&self, name: &str) -> Option<SystemTime> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied()
    }

    fn set(&self, name: &str) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), SystemTime::now());
    }
}

/// What sync exchanges (which run outside the loop) share with the loop: this node's
/// member list to send, and a way to hand the loop the lists received.
pub struct Exchange {
    members: Mutex<Vec<u8>>,
    updates: mpsc::Sender<Vec<foca::Member<MemberId>>>,
}

impl Exchange {
    pub fn new() -> (Arc<Exchange>, mpsc::Receiver<Vec<foca::Member<MemberId>>>) {
        let (tx, rx) = mpsc::channel(64);
        (Arc::new(Exchange { members: Mutex::default(), updates: tx }), rx)
    }

    fn ours(&self) -> Vec<u8> {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_ours(&self, swim: &Swim) {
        let list: Vec<&foca::Member<MemberId>> = swim.iter_membership_state().collect();
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = postcard::to_stdvec(&list).unwrap_or_default();
    }

    /// Hands a peer's member list to the loop; malformed lists and invalid names are
    /// dropped.
    fn received(&self, bytes: &[u8]) {
        let Ok(list) = postcard::from_bytes::<Vec<foca::Member<MemberId>>>(bytes) else { return };
        let list: Vec<_> = list.into_iter().filter(|m| mesh_proto::is_dns_label(&m.id().name)).collect();
        if !list.is_empty() {
            let _ = self.updates.try_send(list);
        }
    }
}

/// Everything the loop needs.
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

type Datagram = (String, Bytes);

/// The outcome of a background dial.
enum Dialled {
    /// A seed answered: announce to it.
    Seed(MemberId),
    /// Connected to the member: send the datagram that was waiting.
    Ready(MemberId, Vec<u8>),
    /// Could not reach it (or someone else answers there).
    Failed(String),
}

/// Runs membership until the drain starts; then announces `left` and returns.
pub async fn run(
    inputs: Inputs,
    mut connections: mpsc::Receiver<Peer>,
    mut local_writes: mpsc::Receiver<Arc<Entry>>,
    mut member_lists: mpsc::Receiver<Vec<foca::Member<MemberId>>>,
    drain: DrainWatcher,
) {
    let Inputs { me, params, sync_interval, reap_after, transport, store, publisher, seeds, metrics, heard, exchange } =
        inputs;
    let mut gone_since: HashMap<String, Instant> = HashMap::new();
    let mut reap_tick = tokio::time::interval(reap_after.min(Duration::from_secs(60)).max(Duration::from_millis(100)));
    let mut seed_ids: Vec<MemberId> = Vec::new();
    let handler = Handler::default();
    let mut swim: Swim = Foca::with_custom_broadcast(
        me.clone(),
        params.foca_config(1),
        rand::rngs::SmallRng::from_os_rng(),
        PostcardCodec,
        handler.clone(),
    );
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut snapshots = publisher.subscribe();
    let mut timers: BTreeMap<(Instant, u64), Timer<MemberId>> = BTreeMap::new();
    let mut seq = 0u64;
    let (dgram_tx, mut dgrams) = mpsc::channel::<Datagram>(4096);
    let (dialled_tx, mut dialled) = mpsc::channel::<Dialled>(256);
    let mut readers = JoinSet::new();
    let mut work = JoinSet::new();
    let mut dialling: HashSet<String> = HashSet::new();
    let mut sync_tick = tokio::time::interval(sync_interval);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view_tick = tokio::time::interval(params.probe_period);
    let mut published: Vec<(String, MemberState, SocketAddr)> = Vec::new();
    let mut cluster_size = 1usize;
    let started = Instant::now();
    let mut warned_alone: Option<Instant> = None;
    let seed_addrs = seeds.clone();

    // Seeds: dial, then announce to whoever answers (its certificate names it).
    for seed in seeds {
        let transport = transport.clone();
        let tx = dialled_tx.clone();
        work.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            for _ in 0..20 {
                if let Ok(peer) = transport.dial(seed).await {
                    let id = MemberId { name: peer.name().to_owned(), addr: seed, bump: 0 };
                    let _ = tx.send(Dialled::Seed(id)).await;
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            tracing::warn!(%seed, "seed unreachable; waiting for others to find this node");
        });
    }

    loop {
        let mut out = Output::default();
        let next_timer = timers.keys().next().map(|(t, _)| *t);
        tokio::select! {
            Some(peer) = connections.recv() => {
                let tx = dgram_tx.clone();
                readers.spawn(read_datagrams(peer, tx));
            }
            Some((name, data)) = dgrams.recv() => {
                metrics.datagrams.get_or_create(&DirLabel { direction: "in" }).inc();
                match core::check_sender(&data, &name, params.max_datagram) {
                    Ok(()) => {
                        heard.set(&name);
                        if swim.handle_data(&data, &mut out).is_err() {
                            metrics.drop("rejected");
                        }
                    }
                    Err(core::Dropped::Impostor { .. }) => metrics.drop("impostor"),
                    Err(core::Dropped::TooLarge(_)) => metrics.drop("too_large"),
                    Err(core::Dropped::Malformed) => metrics.drop("malformed"),
                }
            }
            Some(list) = member_lists.recv() => {
                let _ = swim.apply_many(list.into_iter(), true, &mut out);
            }
            Some(d) = dialled.recv() => match d {
                Dialled::Seed(id) => {
                    let _ = swim.announce(id.clone(), &mut out);
                    seed_ids.push(id);
                }
                Dialled::Ready(id, data) => {
                    dialling.remove(&id.name);
                    send(&transport, &metrics, &id, data);
                }
                Dialled::Failed(name) => { dialling.remove(&name); }
            },
            Some(entry) = local_writes.recv() => {
                let item = encode_item(&Item::Entry((*entry).clone()));
                if item.len() + 64 < params.max_datagram {
                    let _ = swim.add_broadcast(&item);
                    // Send it now, on its own, rather than waiting for room on the next
                    // gossip round (membership updates fill those first).
                    let _ = swim.broadcast(&mut out);
                } else {
                    // Too large for a datagram: push it on streams to every active member.
                    let parts = snapshots.borrow().parts.clone();
                    for m in swim.iter_members().map(|m| m.id().clone()).filter(|m| !parts.removed.contains(&m.name)).collect::<Vec<_>>() {
                        work.spawn(push_large(transport.clone(), m.addr, entry.clone()));
                    }
                }
            }
            _ = async { tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)).await }, if next_timer.is_some() => {
                let now = Instant::now();
                while let Some(entry) = timers.first_entry() {
                    if entry.key().0 > now { break; }
                    let timer = entry.remove();
                    let _ = swim.handle_timer(timer, &mut out);
                }
            }
            changed = snapshots.changed() => {
                if changed.is_err() { break; }
                let view = snapshots.borrow_and_update().store.clone();
                handler.lock().set_view(view);
            }
            _ = sync_tick.tick() => {
                let parts = snapshots.borrow().parts.clone();
                let members: Vec<MemberId> =
                    swim.iter_members().map(|m| m.id().clone()).filter(|m| !parts.removed.contains(&m.name)).collect();
                if !members.is_empty() {
                    let pick = members[rng.random_range(0..members.len())].clone();
                    work.spawn(sync_with(transport.clone(), store.clone(), exchange.clone(), pick.addr, metrics.clone()));
                }
            }
            _ = reap_tick.tick() => {
                let now = Instant::now();
                let doomed = to_reap(&published, &gone_since, now, reap_after, &me.name);
                if !doomed.is_empty() {
                    let store = store.clone();
                    work.spawn(async move {
                        let _ = tokio::task::spawn_blocking(move || reap(&store, &doomed)).await;
                    });
                }
            }
            _ = view_tick.tick() => {
                exchange.set_ours(&swim);
                let now = Instant::now();
                match alone_warning(&snapshots.borrow(), &seed_addrs) {
                    Some(w) if now.duration_since(started) >= ALONE_GRACE
                        && warned_alone.is_none_or(|at| now.duration_since(at) >= ALONE_WARNING_EVERY) =>
                    {
                        tracing::warn!("{w}");
                        warned_alone = Some(now);
                    }
                    Some(_) => {}
                    None => {
                        if warned_alone.take().is_some() {
                            tracing::info!("this node found the mesh: it knows other members again");
                        }
                    }
                }
                // Nobody knows us yet (our announce was lost, or every member went
                // away): announce to the seeds again.
                if swim.num_members() == 0 {
                    for id in &seed_ids {
                        let _ = swim.announce(id.clone(), &mut out);
                    }
                }
            }
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            Some(_) = work.join_next(), if !work.is_empty() => {}
            _ = drain.signaled() => break,
        }

        // Hand news from broadcasts to the store.
        let received = std::mem::take(&mut handler.lock().received);
        if !received.is_empty() {
            // Pass news on at once, not only when the next gossip round has room.
            let _ = swim.broadcast(&mut out);
        }
        let entries: Vec<Entry> = received
            .into_iter()
            .filter_map(|item| match item {
                Item::Entry(e) => Some(e),
                Item::Left { .. } => None,
            })
            .collect();
        if !entries.is_empty() {
            let store = store.clone();
            work.spawn(async move {
                let _ = tokio::task::spawn_blocking(move || store.merge(entries, wall_ms())).await;
            });
        }
        for change in &out.changes {
            match change {
                Change::Up(m) | Change::Renamed { new: m, .. } => {
                    handler.lock().forget_left(&m.name);
                    // A member that comes up (new, restarted or back from a partition)
                    // gets a full sync at once: broadcasts never reach a late joiner.
                    work.spawn(sync_with(transport.clone(), store.clone(), exchange.clone(), m.addr, metrics.clone()));
                }
                Change::Defunct => {
                    tracing::warn!("the mesh declared this node down; rejoining with a new identity");
                    let _ = swim.reuse_down_identity();
                }
                _ => {}
            }
        }
        let n = swim.num_members() + 1;
        if n != cluster_size {
            cluster_size = n;
            let _ = swim.set_config(params.foca_config(n));
        }
        let parts = snapshots.borrow().parts.clone();
        flush(
            &mut out,
            &mut timers,
            &mut seq,
            &transport,
            &metrics,
            &mut dialling,
            &dialled_tx,
            &mut work,
            &parts.removed,
        );

        let list = member_list(&swim, &me, &handler);
        if list != published {
            let now = Instant::now();
            for (name, state, _) in &list {
                if matches!(state, MemberState::Dead | MemberState::Left) {
                    gone_since.entry(name.clone()).or_insert(now);
                } else {
                    gone_since.remove(name);
                }
            }
            publish(&publisher, &list, &heard);
            published = list;
        }
    }

    // Leaving: tell the others this is on purpose, then leave, and give the datagrams a
    // moment before the endpoint closes.
    let mut out = Output::default();
    let _ = swim.add_broadcast(&encode_item(&Item::Left { name: me.name.clone(), bump: me.bump }));
    let _ = swim.leave_cluster(&mut out);
    let _ = swim.broadcast(&mut out);
    flush(
        &mut out,
        &mut timers,
        &mut seq,
        &transport,
        &metrics,
        &mut dialling,
        &dialled_tx,
        &mut work,
        &Default::default(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    readers.shutdown().await;
    work.shutdown().await;
    drop(drain);
}

#[allow(clippy::too_many_arguments)]
fn flush(
    out: &mut Output,
    timers: &mut BTreeMap<(Instant, u64), Timer<MemberId>>,
    seq: &mut u64,
    transport: &Arc<Transport>,
    metrics: &Metrics,
    dialling: &mut HashSet<String>,
    dialled: &mpsc::Sender<Dialled>,
    work: &mut JoinSet<()>,
    removed: &BTreeSet<String>,
) {
    let now = Instant::now();
    for (timer, after) in out.timers.drain(..) {
        *seq += 1;
        timers.insert((now + after, *seq), timer);
    }
    for (to, data) in out.sends.drain(..) {
        if removed.contains(&to.name) {
            // Its certificate is revoked: dialling it only makes refusals on both sides.
            metrics.drop("removed");
        } else if transport.peer_named(&to.name).is_some() {
            send(transport, metrics, &to, data);
        } else if dialling.insert(to.name.clone()) {
            // Dial in the background; the datagram goes once connected.
            let transport = transport.clone();
            let tx = dialled.clone();
            work.spawn(async move {
                let outcome = match transport.dial(to.addr).await {
                    Ok(peer) if peer.name() == to.name => Dialled::Ready(to, data),
                    Ok(peer) => {
                        tracing::warn!(expected = %to.name, found = %peer.name(), addr = %to.addr, "another node answers at a member's address");
                        Dialled::Failed(to.name)
                    }
                    Err(_) => Dialled::Failed(to.name),
                };
                let _ = tx.send(outcome).await;
            });
        } else {
            metrics.drop("dialling");
        }
    }
}

fn send(transport: &Transport, metrics: &Metrics, to: &MemberId, data: Vec<u8>) {
    let Some(peer) = transport.peer_named(&to.name) else {
        metrics.drop("no_connection");
        return;
    };
    if peer.conn.max_datagram_size().is_none_or(|max| data.len() > max) {
        metrics.drop("too_large_for_path");
        return;
    }
    match peer.conn.send_datagram(Bytes::from(data)) {
        Ok(()) => {
            metrics.datagrams.get_or_create(&DirLabel { direction: "out" }).inc();
        }
        Err(_) => metrics.drop("send_failed"),
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

/// The members whose own entries (`node/NAME/...`) are due for removal: dead or gone
/// for `reap_after`. Only the alive member with the smallest name reaps, so that one
/// node writes the tombstones (any other would do the same; this only saves churn).
pub fn to_reap(
    members: &[(String, MemberState, SocketAddr)],
    gone_since: &HashMap<String, Instant>,
    now: Instant,
    reap_after: Duration,
    me: &str,
) -> Vec<String> {
    let reaper = members.iter().filter(|(_, s, _)| *s == MemberState::Alive).map(|(n, _, _)| n.as_str()).min();
    if reaper != Some(me) {
        return Vec::new();
    }
    members
        .iter()
        .filter(|(name, state, _)| {
            matches!(state, MemberState::Dead | MemberState::Left)
                && gone_since.get(name).is_some_and(|t| now.duration_since(*t) >= reap_after)
        })
        .map(|(name, _, _)| name.clone())
        .collect()
}

/// Deletes every entry a departed member owned.
fn reap(store: &Store, members: &[String]) {
    let view = store.view();
    for name in members {
        let prefix = format!("node/{name}/");
        let keys: Vec<String> = view.prefix(&prefix).map(|e| e.key.clone()).collect();
        if !keys.is_empty() {
            tracing::info!(node = %name, entries = keys.len(), "reaping a departed member's entries");
        }
        for key in keys {
            if let Err(e) = store.delete(&key) {
                tracing::warn!(%key, error = %e, "cannot reap");
            }
        }
    }
}

/// Members as this node sees them: itself, then foca's view, sorted by name.
fn member_list(swim: &Swim, me: &MemberId, handler: &Handler) -> Vec<(String, MemberState, SocketAddr)> {
    let shared = handler.lock();
    let mut list = vec![(me.name.clone(), MemberState::Alive, me.addr)];
    let mut seen: HashMap<String, usize> = HashMap::new();
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
        match seen.get(&id.name) {
            Some(&i) if list[i].1 == MemberState::Alive => {}
            Some(&i) => list[i] = (id.name.clone(), state, id.addr),
            None => {
                seen.insert(id.name.clone(), list.len());
                list.push((id.name.clone(), state, id.addr));
            }
        }
    }
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
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

/// How often the alone warning repeats in the log.
const ALONE_WARNING_EVERY: Duration = Duration::from_secs(60);
/// How long a node with seeds may know nobody before the first warning: seeds that
/// answer do so within a dial timeout.
const ALONE_GRACE: Duration = Duration::from_secs(6);

fn publish(publisher: &Publisher, list: &[(String, MemberState, SocketAddr)], heard: &Heard) {
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

/// One push-pull exchange with the member at `addr`, as the caller.
async fn sync_with(
    transport: Arc<Transport>,
    store: Store,
    exchange: Arc<Exchange>,
    addr: SocketAddr,
    metrics: Metrics,
) {
    let result = async {
        let peer = transport.connection_to(addr).await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = peer.conn.open_bi().await.map_err(|e| e.to_string())?;
        let view = store.view();
        let request = MeshRequest::Sync { buckets: sync::digests(&view), members: exchange.ours() };
        frame::write(&mut send, &request).await.map_err(|e| e.to_string())?;
        let summary: SyncSummary = frame::read(&mut recv).await.map_err(|e| e.to_string())?;
        exchange.received(&summary.members);
        let view = store.view();
        let (give, want) = sync::plan(&view, &summary.buckets, &summary.keys);
        let mut batches = sync::batches(&give);
        let last = batches.pop().unwrap_or_default();
        for batch in batches {
            frame::write(&mut send, &SyncPush { entries: batch, want: Vec::new() }).await.map_err(|e| e.to_string())?;
        }
        frame::write_last(&mut send, &SyncPush { entries: last, want }).await.map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        while let Ok(chunk) = frame::read::<SyncEntries>(&mut recv).await {
            got.extend(chunk.entries);
        }
        let (entries, bad) = sync::decode(got);
        if bad > 0 {
            metrics.drop("malformed_entry");
        }
        if !entries.is_empty() {
            tokio::task::spawn_blocking(move || store.merge(entries, wall_ms()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    }
    .await;
    let label = if result.is_ok() { "ok" } else { "failed" };
    metrics.syncs.get_or_create(&ResultLabel { result: label }).inc();
    if let Err(e) = result {
        tracing::debug!(%addr, error = %e, "anti-entropy exchange failed");
    }
}

/// The callee's side of a sync, after the request frame.
pub async fn serve_sync(
    store: &Store,
    exchange: &Exchange,
    buckets: Vec<mesh_proto::wire::BucketDigest>,
    members: Vec<u8>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    exchange.received(&members);
    let view = store.view();
    let diff = sync::differing(&view, &buckets);
    let keys = sync::summary(&view, &diff);
    frame::write(send, &SyncSummary { buckets: diff, keys, members: exchange.ours() })
        .await
        .map_err(|e| e.to_string())?;
    let mut incoming = Vec::new();
    let mut want = Vec::new();
    while let Ok(push) = frame::read::<SyncPush>(recv).await {
        incoming.extend(push.entries);
        want.extend(push.want);
    }
    let give = sync::entries_for(&store.view(), &want);
    for batch in sync::batches(&give) {
        frame::write(send, &SyncEntries { entries: batch }).await.map_err(|e| e.to_string())?;
    }
    let _ = send.finish();
    let (entries, _) = sync::decode(incoming);
    if !entries.is_empty() {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.merge(entries, wall_ms()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The answer to `Holds { key }`.
pub fn holds(store: &Store, key: &str) -> Holds {
    match store.view().entry(key) {
        Some(e) => Holds { revision: Some(e.revision), version: e.version.0, deleted: e.deleted },
        None => Holds { revision: None, version: 0, deleted: false },
    }
}

/// Pushes one large entry to a member on a stream.
async fn push_large(transport: Arc<Transport>, addr: SocketAddr, entry: Arc<Entry>) {
    let Ok(peer) = transport.connection_to(addr).await else { return };
    let Ok((mut send, _recv)) = peer.conn.open_bi().await else { return };
    let Ok(bytes) = entry.encode() else { return };
    let _ = frame::write_last(&mut send, &MeshRequest::Push { entries: vec![bytes] }).await;
}

/// Asks every member in `members` which revision of `key` it holds (2 s each, in
/// parallel). None for a member that did not answer.
pub async fn ask_holds(
    transport: &Arc<Transport>,
    members: Vec<(String, SocketAddr)>,
    key: &str,
) -> Vec<(String, Option<Holds>)> {
    let mut asks = JoinSet::new();
    for (name, addr) in members {
        let transport = transport.clone();
        let key = key.to_owned();
        asks.spawn(async move {
            // A member answers within milliseconds; one that cannot in a second is
            // reported unreachable (`route apply --wait` polls again).
            let answer = tokio::time::timeout(Duration::from_secs(1), async {
                let peer = transport.connection_to(addr).await.ok()?;
                let (mut send, mut recv) = peer.conn.open_bi().await.ok()?;
                frame::write_last(&mut send, &MeshRequest::Holds { key }).await.ok()?;
                frame::read::<Holds>(&mut recv).await.ok()
            })
            .await
            .ok()
            .flatten();
            (name, answer)
        });
    }
    let mut out = Vec::new();
    while let Some(Ok(answer)) = asks.join_next().await {
        out.push(answer);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_smallest_alive_member_reaps_and_only_after_the_timeout() {
        let addr: SocketAddr = "198.18.0.1:7946".parse().expect("addr");
        let members = vec![
            ("a".to_owned(), MemberState::Alive, addr),
            ("b".to_owned(), MemberState::Alive, addr),
            ("c".to_owned(), MemberState::Dead, addr),
            ("d".to_owned(), MemberState::Left, addr),
            ("e".to_owned(), MemberState::Dead, addr),
        ];
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let gone: HashMap<String, Instant> =
            [("c".to_owned(), t0), ("d".to_owned(), t0), ("e".to_owned(), t0 + hour)].into_iter().collect();
        let later = t0 + 72 * hour;
        assert_eq!(to_reap(&members, &gone, later, 72 * hour, "a"), vec!["c", "d"]);
        assert!(to_reap(&members, &gone, later, 72 * hour, "b").is_empty(), "b is not the reaper");
        assert!(to_reap(&members, &gone, t0 + hour, 72 * hour, "a").is_empty(), "too early");
    }
}
