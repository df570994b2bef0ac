//! The store: the replicated map on sled. Nothing else in meshd touches sled.
//!
//! Routes, policies, revocations and the service catalog live here, on every host, so a
//! host cut off from the rest keeps working with what it knows and restarts with it.
//! Entries merge last-writer-wins by `(version, origin)` with hybrid logical clock
//! versions ([`hlc`]); deletes are tombstones; every key carries its recent revisions
//! ([`entry`]). Local writes and merges of remote entries take the same path: decide
//! against the in-memory [`View`], persist to sled, `flush()`, and only then apply to the
//! view, publish a snapshot and acknowledge. A write that cannot be flushed is refused
//! and leaves the view untouched; reads come from published snapshots and so keep working
//! whatever the disk does.
//!
//! The methods block on disk I/O (an fsync per write): call them from
//! `tokio::task::spawn_blocking` in async code.
//!
//! Must not: know who reads (it tells one callback of each view), or acknowledge a write
//! before it is flushed.

pub mod digest;
mod disk;
pub mod entry;
pub mod hlc;
mod legacy;
pub mod seal;
pub mod view;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use self::disk::Health;
use self::entry::{Entry, MAX_KEY, MAX_VALUE};
use self::hlc::{Clock, Hlc};
use self::seal::{Authority, Refusal};
pub use self::view::{Merge, View};

/// Why the store refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A value could not be encoded (a bug, not the data's fault): nothing was written.
    #[error("cannot encode a value for the store: {0}")]
    Encode(String),
    /// sled could not open the store (permissions, another process holds it...).
    #[error("cannot open the store at {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    /// The files are damaged: sled reported corruption, panicked reading them, or an
    /// entry does not decode.
    #[error("the store at {} is corrupt: {detail}. Move it aside and restart: this node will fetch the mesh's state from its peers", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The write could not be made durable (disk full, I/O error). It was not
    /// acknowledged and is not visible; earlier writes are intact.
    #[error("write refused: the store at {} cannot write to disk: {detail}", path.display())]
    Write { path: PathBuf, detail: String },
    /// A key or value over the size limits.
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    /// A key that is empty or not valid.
    #[error("invalid key {key:?}: keys are 1 to {MAX_KEY} bytes of namespaced text (route/NAME)")]
    InvalidKey { key: String },
    /// This node may not write the key (its role or name does not allow it): every other
    /// node would refuse the entry.
    #[error("this node may not write {key}: {refusal}")]
    NotAllowed { key: String, refusal: Refusal },
    /// This node's entries would pass the per-origin quota ([`QUOTA_ENTRIES`],
    /// [`QUOTA_BYTES`]).
    #[error("this node's entries would pass the store's per-node quota ({what}): delete some first")]
    Quota { what: String },
    /// The node key could not sign (an unreadable or broken key: a bug or a damaged
    /// file). Nothing was written.
    #[error("cannot sign the write of {key} with this node's key")]
    Sign { key: String },
}

impl StoreError {
    /// Whether trying again later may succeed (the disk may have room then).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Write { .. })
    }

    /// The HTTP status an API answers this with: 503 for what may pass later, 403 for a
    /// write this node's role does not allow, 409 over the quota, 413 too large, 500 for
    /// the rest.
    pub fn http_status(&self) -> u16 {
        match self {
            e if e.is_retryable() => 503,
            StoreError::NotAllowed { .. } => 403,
            StoreError::Quota { .. } => 409,
            StoreError::TooLarge { .. } => 413,
            StoreError::InvalidKey { .. } => 400,
            _ => 500,
        }
    }
}

/// The store's metrics, under `mesh_store_`.
#[derive(Clone)]
pub struct Metrics {
    writes: Family<ResultLabel, Counter>,
    merged: Family<MergeLabel, Counter>,
    entries: Gauge,
    bytes: Gauge,
    flush_seconds: Histogram,
    read_only: Gauge,
    recoveries: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MergeLabel {
    outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            writes: Family::default(),
            merged: Family::default(),
            entries: Gauge::default(),
            bytes: Gauge::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.000_1, 4.0, 10)),
            read_only: Gauge::default(),
            recoveries: Counter::default(),
        }
    }

    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::new();
        let r = registry.sub_registry_with_prefix("store");
        r.register("writes", "Local writes, by result (ok, refused)", m.writes.clone());
        r.register(
            "merged_entries",
            "Remote entries merged, by outcome (applied, stale, refused_clock, refused_invalid, refused_local_only, refused_REASON for an entry the mesh's trust rules refuse)",
            m.merged.clone(),
        );
        r.register("entries", "Entries held, tombstones included", m.entries.clone());
        r.register("bytes", "Encoded bytes of the entries held", m.bytes.clone());
        r.register("flush_seconds", "Time to make a write durable", m.flush_seconds.clone());
        r.register(
            "read_only",
            "1 while the store refuses writes after a failed one (disk full, I/O error; the reason is in meshctl status), 0 while it takes them",
            m.read_only.clone(),
        );
        r.register(
            "recoveries",
            "Times the store became writable again by itself after a failed write",
            m.recoveries.clone(),
        );
        m
    }
}

/// What a [`Store::merge`] did with a batch of remote entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Entries that were new or newer, now stored.
    pub applied: usize,
    /// Entries already held, or older than what is held.
    pub stale: usize,
    /// Entries refused because their version is too far ahead of this node's clock.
    pub refused_clock: usize,
    /// Entries refused as malformed (size limits, bad key, history too long).
    pub refused_invalid: usize,
    /// Entries under a key that never replicates ([`LOCAL_ONLY`]): whoever sent one is
    /// forging it.
    pub refused_local_only: usize,
    /// Entries the authority refused (unsigned, forged, not the writer's to write,
    /// revoked), counted by reason in `mesh_store_merged_entries`.
    pub refused_untrusted: usize,
}

/// The most entries (tombstones included) and encoded bytes the store holds from one
/// origin node: a member that writes without end fills its own quota, not every host's
/// memory and disk. Far above what a node writes (its services, and on a signer a
/// certificate record per node).
pub const QUOTA_ENTRIES: u64 = 100_000;
pub const QUOTA_BYTES: u64 = 64 * 1024 * 1024;

/// Whether `origin`, now at `usage`, may hold one more entry of `size` bytes in place of
/// one of `replaced` bytes (None: a new key).
fn within_quota(usage: view::Usage, size: u64, replaced: Option<u64>) -> Result<(), String> {
    let entries = usage.entries + u64::from(replaced.is_none());
    let bytes = (usage.bytes + size).saturating_sub(replaced.unwrap_or(0));
    if entries > QUOTA_ENTRIES {
        return Err(format!("{entries} entries, the quota is {QUOTA_ENTRIES}"));
    }
    if bytes > QUOTA_BYTES {
        return Err(format!("{bytes} bytes, the quota is {QUOTA_BYTES}"));
    }
    Ok(())
}

/// Key prefixes that live only on the node that writes them and never replicate: a
/// signer's join tokens. A remote entry under one is refused on merge, and the writers
/// of these keys keep them in the local tree ([`Store::local_put`]).
pub const LOCAL_ONLY: &[&str] = &["token/"];

/// Whether `key` never replicates.
pub fn is_local_only(key: &str) -> bool {
    LOCAL_ONLY.iter().any(|p| key.starts_with(p))
}

/// A handle to the store; clones share it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    origin: String,
    /// sled, behind the handle that a failed write poisons ([`disk`]).
    disk: disk::Disk,
    writer: Mutex<Writer>,
    /// The latest view, for [`Store::view`]: readers never take the writer's lock.
    current: arc_swap::ArcSwap<View>,
    /// Told of every new view, in order, before the write that made it returns (the read
    /// model publishes it): the store knows nothing of who reads.
    on_publish: Box<dyn Fn(Arc<View>) + Send + Sync>,
    /// Seals local writes, judges remote ones.
    authority: Arc<dyn Authority>,
    /// The local tree as written: its reads come from here (never waiting for a write
    /// or a rebuild), and a rebuild writes it. Changed under the writer's lock.
    local: std::sync::RwLock<BTreeMap<String, Vec<u8>>>,
    metrics: Metrics,
    /// Where local writes go to be gossiped (set once membership runs).
    broadcast: std::sync::OnceLock<tokio::sync::mpsc::Sender<Arc<Entry>>>,
}

/// What a write needs, behind one lock: writes are serialized, reads never wait.
struct Writer {
    clock: Clock,
    view: View,
}

/// Milliseconds since the Unix epoch by the wall clock (0 before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Opens (creating if needed) the store at `path` for node `origin`, loads every
    /// entry and hands the first view to `on_publish`, then every later one. `authority`
    /// seals this node's writes and judges everyone else's.
    pub fn open(
        path: &Path,
        origin: &str,
        authority: Arc<dyn Authority>,
        metrics: Metrics,
        on_publish: impl Fn(Arc<View>) + Send + Sync + 'static,
    ) -> Result<Store, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { path: path.to_owned(), detail };
        // sled writes `conf` when it creates a store; a store without it is new.
        let existed = path.join("conf").exists();
        let db = match disk::open_sled(path) {
            Ok(db) => db,
            Err(disk::Opened::Failed(sled::Error::Corruption { at, .. })) => {
                return Err(corrupt(format!("sled reports corruption at {at:?}")))
            }
            Err(disk::Opened::Failed(e)) => return Err(open_error(path, e)),
            Err(disk::Opened::Panicked(p)) => return Err(corrupt(format!("sled failed reading it ({p})"))),
        };

        match check_format(&db, existed).map_err(corrupt)? {
            Format::Current => {}
            Format::Unsealed => {
                let (kept, dropped) = legacy::migrate(&db, origin, authority.sealer()).map_err(corrupt)?;
                tracing::warn!(
                    path = %path.display(), kept, dropped,
                    "store upgraded to signed entries: this node's own entries were signed again; the others are fetched again from their writers"
                );
            }
        }

        let mut view = View::default();
        let mut newest = Hlc::ZERO;
        let loaded = catch_unwind(AssertUnwindSafe(|| -> Result<(), StoreError> {
            for item in db.iter() {
                let (key, bytes) = item.map_err(|e| corrupt(e.to_string()))?;
                let entry = Entry::decode(&bytes)
                    .map_err(|e| corrupt(format!("entry {:?} does not decode: {e}", String::from_utf8_lossy(&key))))?;
                if entry.key.as_bytes() != &key[..] {
                    return Err(corrupt(format!("entry {:?} is stored under another key", entry.key)));
                }
                newest = newest.max(entry.version);
                view.merge(Arc::new(entry));
            }
            Ok(())
        }));
        match loaded {
            Ok(result) => result?,
            Err(panic) => return Err(corrupt(format!("sled failed reading it ({})", panic_message(&panic)))),
        }

        let local = catch_unwind(AssertUnwindSafe(|| -> Result<BTreeMap<String, Vec<u8>>, sled::Error> {
            db.open_tree(LOCAL_TREE)?
                .iter()
                .map(|item| item.map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.to_vec())))
                .collect()
        }));
        let local = match local {
            Ok(result) => result.map_err(|e| corrupt(format!("its local tree: {e}")))?,
            Err(panic) => return Err(corrupt(format!("sled failed reading it ({})", panic_message(&panic)))),
        };

        metrics.entries.set(view.len() as i64);
        metrics.bytes.set(view.bytes() as i64);
        let snapshot = Arc::new(view.clone());
        on_publish(snapshot.clone());
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                origin: origin.to_owned(),
                disk: disk::Disk::new(path, db),
                writer: Mutex::new(Writer { clock: Clock::new(newest), view }),
                local: std::sync::RwLock::new(local),
                current: arc_swap::ArcSwap::new(snapshot),
                on_publish: Box::new(on_publish),
                authority,
                metrics,
                broadcast: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Sends every later local write to `tx` (membership gossips them). A full queue
    /// drops the broadcast, not the write: anti-entropy repairs what gossip missed.
    pub fn broadcast_to(&self, tx: tokio::sync::mpsc::Sender<Arc<Entry>>) {
        let _ = self.inner.broadcast.set(tx);
    }

    /// What seals this store's writes and judges remote entries (gossip asks it before
    /// passing an entry on).
    pub fn authority(&self) -> Arc<dyn Authority> {
        self.inner.authority.clone()
    }

    /// This node's name, the origin of its writes.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This host's own state that is never replicated (its virtual IP allocations):
    /// every `local/` key with its value.
    pub fn local_entries(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let local = self.inner.local.read().unwrap_or_else(|p| p.into_inner());
        Ok(local
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// One local, never replicated, key's value.
    pub fn local_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.local.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned())
    }

    /// Deletes a local, never replicated, key durably.
    pub fn local_delete(&self, key: &str) -> Result<(), StoreError> {
        self.local_write(key, None)
    }

    /// Writes a local, never replicated, key durably.
    pub fn local_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.local_write(key, Some(value))
    }

    /// Writes (None: deletes) a local key under the writer's lock, flushed, through the
    /// same failure handling as replicated writes; the in-memory copy changes only once it
    /// is durable.
    fn local_write(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        self.check_writable()?;
        let _w = self.lock();
        let handle = self.inner.disk.handle();
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), sled::Error> {
            let tree = handle.open_tree(LOCAL_TREE)?;
            match value {
                Some(v) => tree.insert(key.as_bytes(), v).map(drop)?,
                None => tree.remove(key.as_bytes()).map(drop)?,
            }
            handle.flush().map(drop)
        }));
        self.written(&handle, result)?;
        let mut local = self.inner.local.write().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => local.insert(key.to_owned(), v.to_vec()),
            None => local.remove(key),
        };
        Ok(())
    }

    /// The latest view. Readers normally use the snapshot instead; this is the same data.
    pub fn view(&self) -> Arc<View> {
        self.inner.current.load_full()
    }

    /// Writes `value` under `key`; returns the stored entry once it is durable.
    pub fn put(&self, key: &str, value: Vec<u8>) -> Result<Arc<Entry>, StoreError> {
        self.write_at(key, Some(value), wall_ms()).map(|e| e.expect("a put always writes"))
    }

    /// Deletes `key` (a tombstone, which replicates); `None` if there was nothing to
    /// delete.
    pub fn delete(&self, key: &str) -> Result<Option<Arc<Entry>>, StoreError> {
        self.write_at(key, None, wall_ms())
    }

    /// Refuses a write at once when the store is read-only after a failed write, or its
    /// directory is gone (its data_dir deleted under a running meshd: sled would write to
    /// deleted files and the write would be lost).
    fn check_writable(&self) -> Result<(), StoreError> {
        let refused = |detail: String| Err(StoreError::Write { path: self.inner.path.clone(), detail });
        if let Some(reason) = self.inner.disk.read_only() {
            return refused(format!(
                "the store is read-only since a write failed ({reason}); it takes writes again by itself once the cause is gone"
            ));
        }
        if !self.inner.path.join("conf").exists() {
            return refused("the store's directory is gone (was the data_dir deleted?)".to_owned());
        }
        Ok(())
    }

    /// Whether the store takes writes: `ok`, or read-only with the reason.
    pub fn health(&self) -> Health {
        match self.inner.disk.health() {
            Health::Ok if !self.inner.path.join("conf").exists() => Health::ReadOnly {
                reason: "the store's directory is gone (was the data_dir deleted?)".to_owned(),
                since: std::time::SystemTime::now(),
                needs_free: 0,
            },
            health => health,
        }
    }

    /// Makes a read-only store writable again once its cause is gone: when a retry is
    /// due and the file system has room, writes what the view holds (every acknowledged
    /// write) into a fresh copy and swaps it in. Call it every few seconds (blocking);
    /// `None` when there was nothing to try.
    pub fn recover(&self) -> Option<Result<(), String>> {
        if !self.inner.disk.rebuild_due() {
            return None;
        }
        let w = self.lock();
        let entries = w.view.iter().filter_map(|e| Some((e.key.as_bytes().to_vec(), e.encode().ok()?)));
        let local = self.inner.local.read().unwrap_or_else(|p| p.into_inner());
        let local = local.iter().map(|(k, v)| (k.as_bytes(), v.as_slice()));
        let result = self.inner.disk.rebuild(entries, (LOCAL_TREE, local), (META_TREE, FORMAT_KEY, FORMAT));
        drop(w);
        match &result {
            Ok(()) => {
                self.inner.metrics.read_only.set(0);
                self.inner.metrics.recoveries.inc();
                tracing::warn!(path = %self.inner.path.display(), entries = self.view().len(), "the store takes writes again: every acknowledged write was rewritten to a fresh copy");
            }
            Err(e) => {
                tracing::warn!(path = %self.inner.path.display(), error = %e, "the store is still read-only: a fresh copy could not be written; trying again later");
            }
        }
        Some(result)
    }

    /// What a write through `handle` came to: on failure the handle is poisoned and the
    /// store read-only (logged at ERROR once), and the error says why.
    fn written(
        &self,
        handle: &disk::Handle,
        result: Result<Result<(), sled::Error>, Box<dyn std::any::Any + Send>>,
    ) -> Result<(), StoreError> {
        let (reason, detail) = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => (disk::reason(&e), e.to_string()),
            Err(panic) => {
                let p = panic_message(&panic);
                (format!("sled panicked: {p}"), format!("sled panicked: {p}"))
            }
        };
        if self.inner.disk.failed(handle, reason.clone()) {
            self.inner.metrics.read_only.set(1);
            tracing::error!(path = %self.inner.path.display(), error = %detail, "a store write failed: the store is read-only (writes are refused at once) until it can write again, which it checks every few seconds; reads, DNS and traffic carry on");
        }
        Err(StoreError::Write { path: self.inner.path.clone(), detail })
    }

    /// A local write at wall time `wall_ms` (tests pass their own clock).
    pub fn write_at(&self, key: &str, value: Option<Vec<u8>>, wall_ms: u64) -> Result<Option<Arc<Entry>>, StoreError> {
        check_key(key)?;
        self.check_writable()?;
        if let Some(v) = &value {
            if v.len() > MAX_VALUE {
                return Err(StoreError::TooLarge { what: "the value", size: v.len(), limit: MAX_VALUE });
            }
        }
        let mut w = self.lock();
        let current = w.view.entry(key).cloned();
        if value.is_none() && current.as_ref().is_none_or(|c| c.deleted) {
            return Ok(None);
        }
        let authority = &self.inner.authority;
        authority
            .may_write(&w.view, key, value.is_none())
            .map_err(|refusal| StoreError::NotAllowed { key: key.to_owned(), refusal })?;
        let version = w.clock.now(wall_ms);
        let origin = &self.inner.origin;
        let entry = match authority.sealer() {
            Some(sealer) => Entry::sealed(current.as_deref(), key, value, version, origin, sealer)
                .ok_or_else(|| StoreError::Sign { key: key.to_owned() })?,
            None => Entry::next(current.as_deref(), key, value, version, origin),
        };
        let replaced = current.as_ref().filter(|c| c.origin == *origin).map(|c| c.encoded_len() as u64);
        within_quota(w.view.usage(origin), entry.encoded_len() as u64, replaced)
            .map_err(|what| StoreError::Quota { what })?;
        let entry = Arc::new(entry);
        let result = self.persist(&w, std::slice::from_ref(&entry));
        let label = if result.is_ok() { "ok" } else { "refused" };
        self.inner.metrics.writes.get_or_create(&ResultLabel { result: label }).inc();
        result?;
        w.view.hold(entry.clone());
        self.publish(&w);
        if let Some(tx) = self.inner.broadcast.get() {
            let _ = tx.try_send(entry.clone());
        }
        Ok(Some(entry))
    }

    /// Merges entries from other nodes (last-writer-wins), durably, publishing one
    /// snapshot for the whole batch. Order and duplicates do not matter.
    pub fn merge(&self, entries: Vec<Entry>, wall_ms: u64) -> Result<MergeReport, StoreError> {
        self.check_writable()?;
        let mut report = MergeReport::default();
        let mut w = self.lock();
        // Per key, the batch's entries merged into one, then only what changes the view.
        let mut incoming: BTreeMap<String, Entry> = BTreeMap::new();
        for entry in entries {
            if !valid_remote(&entry) {
                report.refused_invalid += 1;
                continue;
            }
            if is_local_only(&entry.key) {
                report.refused_local_only += 1;
                tracing::warn!(key = %entry.key, origin = %entry.origin, "refused a replicated entry under a local-only key (a forgery)");
                continue;
            }
            if w.clock.observe(entry.version, wall_ms).is_err() {
                report.refused_clock += 1;
                continue;
            }
            match incoming.get_mut(&entry.key) {
                Some(held) => match held.merged(&entry) {
                    Some(both) => *held = both,
                    None => report.stale += 1,
                },
                None => {
                    incoming.insert(entry.key.clone(), entry);
                }
            }
        }
        // Each entry with what it makes of the one held (the merge of both), computed
        // once; only those that change the view go on.
        let fresh: Vec<(Arc<Entry>, Arc<Entry>)> = incoming
            .into_values()
            .filter_map(|e| {
                let e = Arc::new(e);
                let merged = w.view.merged(e.clone());
                if merged.is_none() {
                    report.stale += 1;
                }
                Some((e, merged?))
            })
            .collect();
        let m = &self.inner.metrics.merged;
        let verdicts = self.inner.authority.judge(&w.view, &fresh.iter().map(|(e, _)| &**e).collect::<Vec<_>>());
        // Per outcome: how many, and the first, for the log.
        let mut refused: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
        let fresh: Vec<Arc<Entry>> = fresh
            .into_iter()
            .zip(verdicts)
            .filter_map(|((e, merged), verdict)| match verdict {
                Ok(()) => Some(merged),
                Err(refusal) => {
                    report.refused_untrusted += 1;
                    let first = refused
                        .entry(refusal.outcome())
                        .or_insert_with(|| (0, format!("{} (origin {}): {refusal}", e.key, e.origin)));
                    first.0 += 1;
                    None
                }
            })
            .collect();
        // Per-origin quota, counting this batch as it is admitted.
        let mut usage: std::collections::HashMap<String, view::Usage> = std::collections::HashMap::new();
        let fresh: Vec<Arc<Entry>> = fresh
            .into_iter()
            .filter(|e| {
                let u = usage.entry(e.origin.clone()).or_insert_with(|| w.view.usage(&e.origin));
                let replaced =
                    w.view.entry(&e.key).filter(|old| old.origin == e.origin).map(|old| old.encoded_len() as u64);
                let size = e.encoded_len() as u64;
                match within_quota(*u, size, replaced) {
                    Ok(()) => {
                        u.entries += u64::from(replaced.is_none());
                        u.bytes = (u.bytes + size).saturating_sub(replaced.unwrap_or(0));
                        true
                    }
                    Err(what) => {
                        report.refused_untrusted += 1;
                        let first = refused
                            .entry("refused_quota")
                            .or_insert_with(|| (0, format!("{} (origin {}): {what}", e.key, e.origin)));
                        first.0 += 1;
                        false
                    }
                }
            })
            .collect();
        for (outcome, (count, example)) in refused {
            m.get_or_create(&MergeLabel { outcome }).inc_by(count as u64);
            if outcome == "refused_unknown_key" {
                // Usually an entry that came before its writer's key record (gossip runs
                // ahead of anti-entropy when a node joins): it comes again with the key.
                tracing::debug!(outcome, count, first = %example, "refused replicated entries");
            } else {
                tracing::warn!(outcome, count, first = %example, "refused replicated entries");
            }
        }
        if !fresh.is_empty() {
            self.persist(&w, &fresh)?;
            for e in fresh {
                w.view.hold(e);
                report.applied += 1;
            }
            self.publish(&w);
        }
        m.get_or_create(&MergeLabel { outcome: "applied" }).inc_by(report.applied as u64);
        m.get_or_create(&MergeLabel { outcome: "stale" }).inc_by(report.stale as u64);
        m.get_or_create(&MergeLabel { outcome: "refused_clock" }).inc_by(report.refused_clock as u64);
        m.get_or_create(&MergeLabel { outcome: "refused_invalid" }).inc_by(report.refused_invalid as u64);
        m.get_or_create(&MergeLabel { outcome: "refused_local_only" }).inc_by(report.refused_local_only as u64);
        Ok(report)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave the view half-changed: it is only
        // changed after a successful persist, in one merge per entry.
        self.inner.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `entries` to sled in one atomic batch and flushes. On failure the handle is
    /// poisoned ([`disk`]) and nothing of the batch reaches the view; the rebuild writes
    /// the view, so what sled kept of a refused write in its memory never reaches disk.
    fn persist(&self, _: &Writer, entries: &[Arc<Entry>]) -> Result<(), StoreError> {
        let mut encoded = Vec::with_capacity(entries.len());
        for e in entries {
            let bytes = e.encode().map_err(|err| StoreError::Encode(format!("{}: {err}", e.key)))?;
            encoded.push((e.key.as_bytes(), bytes));
        }
        // A failure between the check at the top of the write and here (another thread's
        // write failed) must not reach the poisoned handle.
        self.check_writable()?;
        let handle = self.inner.disk.handle();
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), sled::Error> {
            if let [(key, bytes)] = encoded.as_slice() {
                // One key: a plain insert is atomic already, and cheaper than a batch.
                handle.insert(key, bytes.as_slice())?;
            } else {
                let mut batch = sled::Batch::default();
                for (key, bytes) in encoded {
                    batch.insert(key, bytes);
                }
                handle.apply_batch(batch)?;
            }
            handle.flush().map(drop)
        }));
        self.inner.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        self.written(&handle, result)
    }

    fn publish(&self, w: &Writer) {
        self.inner.metrics.entries.set(w.view.len() as i64);
        self.inner.metrics.bytes.set(w.view.bytes() as i64);
        let snapshot = Arc::new(w.view.clone());
        self.inner.current.store(snapshot.clone());
        (self.inner.on_publish)(snapshot);
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY {
        return Err(StoreError::TooLarge { what: "the key", size: key.len(), limit: MAX_KEY });
    }
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(StoreError::InvalidKey { key: key.to_owned() });
    }
    Ok(())
}

/// A remote entry must respect the same limits as a local write, and have the shape
/// merging keeps (its history in order below the current revision).
fn valid_remote(e: &Entry) -> bool {
    check_key(&e.key).is_ok()
        && e.history.len() < entry::HISTORY
        && e.history
            .iter()
            .map(|r| (&r.value, r.revision, r.deleted))
            .chain(std::iter::once((&e.value, e.revision, e.deleted)))
            .all(|(value, revision, deleted)| {
                value.len() <= MAX_VALUE && revision > 0 && (!deleted || value.is_empty())
            })
        && e.ordered()
}

/// The tree of this host's own, never replicated, state.
const LOCAL_TREE: &str = "local";

/// The tree and key of the format marker, written when the store is created.
const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format";
const FORMAT: &[u8] = b"mesh-store-2";
/// Entries before seals ([`legacy`]): migrated on open.
const FORMAT_UNSEALED: &[u8] = b"mesh-store-1";

/// What an existing store holds.
enum Format {
    Current,
    Unsealed,
}

/// sled reads a damaged log as a torn tail and opens what precedes the damage, down to
/// an empty store, without an error. The format marker, written first, catches the worst
/// of it: an existing store that opens without its marker lost everything and is
/// reported as corrupt rather than served empty. (Damage after the marker still reads as
/// a shorter log; anti-entropy then refetches the mesh's entries from peers.)
fn check_format(db: &sled::Db, existed: bool) -> Result<Format, String> {
    let meta = db.open_tree(META_TREE).map_err(|e| e.to_string())?;
    match meta.get(FORMAT_KEY).map_err(|e| e.to_string())? {
        Some(v) if v.as_ref() == FORMAT => Ok(Format::Current),
        Some(v) if v.as_ref() == FORMAT_UNSEALED => Ok(Format::Unsealed),
        Some(v) => Err(format!("unknown store format {:?}", String::from_utf8_lossy(&v))),
        None if existed => Err("its format marker is missing: the files are damaged or not a mesh store".to_owned()),
        None => {
            meta.insert(FORMAT_KEY, FORMAT).map_err(|e| e.to_string())?;
            db.flush().map_err(|e| e.to_string())?;
            Ok(Format::Current)
        }
    }
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    StoreError::Open { path: path.to_owned(), detail: e.to_string() }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

#[cfg(test)]
mod tests;
