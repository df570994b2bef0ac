//! The store's sled files: the one handle writes go through, what a failed write does to
//! it, and the rebuild that makes the store writable again, without a restart, once the
//! cause (a full disk, most often) is gone.
//!
//! sled cannot be trusted after a write fails: once the disk has room again, its next
//! flush can wait forever for the failed write's log position (measured: every later
//! write hung, and so did the drain, which flushes when the handle is dropped). So the
//! first failure **poisons** the handle: the store turns read-only, refuses writes at once
//! with the reason, and never calls into that handle again, not even to drop it (it is
//! leaked: a few MiB, once per failure). Nothing is lost: every acknowledged write is in
//! the in-memory view, which is what the rebuild writes to a fresh sled directory beside
//! the store before swapping the two directories atomically (`renameat2` with
//! `RENAME_EXCHANGE`), so the data_dir holds a complete store at every instant.
//!
//! Must not: decide what is written (the store does), or call into a poisoned handle.

use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// How long after a failure the first rebuild is tried, and the longest wait between
/// tries (doubling after each failed one).
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Free space a rebuild needs beyond the store's files (the fresh copy is at most their
/// size, as it holds only what is current; sled's next segments and snapshot need room).
const REBUILD_HEADROOM: u64 = 8 * 1024 * 1024;

/// One open sled database. Dropped normally while healthy; leaked once poisoned.
pub(super) struct Handle {
    db: Option<sled::Db>,
    poisoned: AtomicBool,
}

impl Deref for Handle {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        // Only `Drop` takes it out.
        self.db.as_ref().expect("a live handle holds its database")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if *self.poisoned.get_mut() {
            // sled flushes when dropped, and a poisoned sled's flush may never return.
            std::mem::forget(self.db.take());
        }
    }
}

/// Whether the store takes writes, and if not why and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Writes are refused: why, since when, and the free space (bytes) the file system
    /// needs before the store can be rewritten (0 until first checked).
    ReadOnly {
        reason: String,
        since: SystemTime,
        needs_free: u64,
    },
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Ok => f.write_str("ok"),
            Health::ReadOnly { reason, since, needs_free } => {
                write!(f, "read-only: {reason} (since {}", humantime::format_rfc3339_seconds(*since))?;
                if *needs_free > 0 {
                    write!(f, "; writable again once {} MiB are free", needs_free.div_ceil(1024 * 1024))?;
                }
                f.write_str(")")
            }
        }
    }
}

struct State {
    health: Health,
    /// When the next rebuild may be tried, and how long to wait after it fails.
    retry_at: Instant,
    backoff: Duration,
}

/// The store's directory and its current sled handle.
pub(super) struct Disk {
    path: PathBuf,
    current: arc_swap::ArcSwap<Handle>,
    state: Mutex<State>,
}

/// Why a write failed, as operators read it: `disk full`, `file system read-only`, or
/// the I/O error.
pub(super) fn reason(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => match io.raw_os_error() {
            Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => "disk full".to_owned(),
            Some(nix::libc::EROFS) => "file system read-only".to_owned(),
            _ => format!("I/O error: {io}"),
        },
        other => other.to_string(),
    }
}

/// Opens sled at `path`: no background flusher (every write is flushed before it is
/// acknowledged, and a flusher thread would be one more caller into a poisoned handle).
/// sled's file lock outlives a dropped handle for a moment: when this process just closed
/// the store, wait for it briefly. A store held by another process stays an error after
/// that. sled can panic on damaged files instead of returning an error: that is
/// [`Opened::Panicked`], never a panic here.
pub(super) fn open_sled(path: &Path) -> Result<sled::Db, Opened> {
    let config = sled::Config::new().path(path).cache_capacity(64 * 1024 * 1024).flush_every_ms(None);
    let open = || {
        let mut tries = 0;
        loop {
            match config.open() {
                // sled rewraps the OS error: its kind is lost, its message says it.
                Err(sled::Error::Io(e))
                    if tries < 40
                        && (e.kind() == std::io::ErrorKind::WouldBlock
                            || e.to_string().contains("could not acquire lock")) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    };
    match catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(Opened::Failed(e)),
        Err(panic) => Err(Opened::Panicked(super::panic_message(&panic))),
    }
}

/// Why sled did not open.
pub(super) enum Opened {
    Failed(sled::Error),
    Panicked(String),
}

/// The bytes of the files under `dir` (sled's log, snapshots and blobs).
fn du(dir: &Path) -> u64 {
    let Ok(items) = std::fs::read_dir(dir) else { return 0 };
    items
        .flatten()
        .map(|item| match item.metadata() {
            Ok(m) if m.is_dir() => du(&item.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The directory a rebuild writes into, beside the store.
fn rebuild_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".rebuild");
    path.with_file_name(name)
}

impl Disk {
    /// The store at `path`, open in `db`. Removes what an interrupted rebuild left.
    pub(super) fn new(path: &Path, db: sled::Db) -> Disk {
        let _ = std::fs::remove_dir_all(rebuild_path(path));
        Disk {
            path: path.to_owned(),
            current: arc_swap::ArcSwap::from_pointee(Handle { db: Some(db), poisoned: AtomicBool::new(false) }),
            state: Mutex::new(State { health: Health::Ok, retry_at: Instant::now(), backoff: RETRY_FIRST }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The handle writes and local reads go through.
    pub(super) fn handle(&self) -> Arc<Handle> {
        self.current.load_full()
    }

    pub(super) fn health(&self) -> Health {
        self.state().health.clone()
    }

    /// Why writes are refused now, if they are.
    pub(super) fn read_only(&self) -> Option<String> {
        match &self.state().health {
            Health::Ok => None,
            Health::ReadOnly { reason, .. } => Some(reason.clone()),
        }
    }

    /// A write through `handle` failed for `reason`: it is poisoned, and the store is
    /// read-only until a rebuild succeeds. Returns whether the store was writable until
    /// now (the first failure is the one worth an ERROR).
    pub(super) fn failed(&self, handle: &Handle, reason: String) -> bool {
        handle.poisoned.store(true, Ordering::SeqCst);
        let mut s = self.state();
        if s.health != Health::Ok {
            return false;
        }
        s.health = Health::ReadOnly { reason, since: SystemTime::now(), needs_free: 0 };
        s.retry_at = Instant::now() + RETRY_FIRST;
        s.backoff = RETRY_FIRST;
        true
    }

    /// Whether a rebuild should be tried now: the store is read-only, its retry time has
    /// come, and the file system has room for a fresh copy beside the store's files.
    pub(super) fn rebuild_due(&self) -> bool {
        {
            let s = self.state();
            if s.health == Health::Ok || Instant::now() < s.retry_at {
                return false;
            }
        }
        let needs = du(&self.path).saturating_add(REBUILD_HEADROOM);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = match nix::sys::statvfs::statvfs(dir) {
            // Both are u64 on Linux x86-64, not on every target.
            #[allow(clippy::useless_conversion)]
            Ok(fs) => u64::from(fs.blocks_available()).saturating_mul(u64::from(fs.fragment_size())),
            Err(_) => 0,
        };
        let mut s = self.state();
        if let Health::ReadOnly { needs_free, .. } = &mut s.health {
            *needs_free = needs;
        }
        free >= needs
    }

    /// Writes `entries` (the replicated map, as the view holds it) and the local tree (as
    /// the store holds it in memory: nothing is read from the poisoned handle, whose
    /// reads fail too) into a fresh sled directory, swaps it with the store's, and makes
    /// it the handle. On failure the store stays read-only and the next try waits twice
    /// as long.
    pub(super) fn rebuild<'a>(
        &self,
        entries: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
        local: (&str, impl Iterator<Item = (&'a [u8], &'a [u8])>),
        meta: (&str, &str, &[u8]),
    ) -> Result<(), String> {
        let result = self.try_rebuild(entries, local, meta);
        let mut s = self.state();
        match &result {
            Ok(()) => {
                s.health = Health::Ok;
                s.backoff = RETRY_FIRST;
            }
            Err(_) => {
                s.retry_at = Instant::now() + s.backoff;
                s.backoff = (s.backoff * 2).min(RETRY_MAX);
            }
        }
        result
    }

    fn try_rebuild<'a>(
        &self,
        entries: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
        (local_tree, local): (&str, impl Iterator<Item = (&'a [u8], &'a [u8])>),
        (meta_tree, format_key, format): (&str, &str, &[u8]),
    ) -> Result<(), String> {
        let fresh = rebuild_path(&self.path);
        let _ = std::fs::remove_dir_all(&fresh);
        let written = match open_sled(&fresh) {
            Ok(db) => {
                let handle = Handle { db: Some(db), poisoned: AtomicBool::new(false) };
                let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), sled::Error> {
                    handle.open_tree(meta_tree)?.insert(format_key, format)?;
                    let tree = handle.open_tree(local_tree)?;
                    for (k, v) in local {
                        tree.insert(k, v)?;
                    }
                    for (k, v) in entries {
                        handle.insert(k, v)?;
                    }
                    handle.flush().map(drop)
                }));
                let result = match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(reason(&e)),
                    Err(p) => Err(super::panic_message(&p)),
                };
                if result.is_err() {
                    handle.poisoned.store(true, Ordering::SeqCst);
                }
                // Dropped here: flushed and closed when healthy, leaked when not.
                drop(handle);
                result
            }
            Err(Opened::Failed(e)) => Err(reason(&e)),
            Err(Opened::Panicked(p)) => Err(p),
        };
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(format!("writing a fresh copy at {}: {e}", fresh.display()));
        }
        nix::fcntl::renameat2(None, &self.path, None, &fresh, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
            .map_err(|e| format!("swapping {} into place: {e}", fresh.display()))?;
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        let db = match open_sled(&self.path) {
            Ok(db) => db,
            Err(Opened::Failed(e)) => return Err(format!("opening the fresh copy: {e}")),
            Err(Opened::Panicked(p)) => return Err(format!("opening the fresh copy: {p}")),
        };
        self.current.store(Arc::new(Handle { db: Some(db), poisoned: AtomicBool::new(false) }));
        // The poisoned handle's files now sit in `fresh`; it still holds them open.
        let _ = std::fs::remove_dir_all(&fresh);
        Ok(())
    }
}
