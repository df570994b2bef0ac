//! Virtual IPs: each service, and each `version` label value (`v1.reviews`), gets an
//! address from `proxy.vip_range` on this host, stable across restarts (kept in the
//! store's local, never replicated, part). The first choice is a hash of the name, so
//! hosts usually agree, which makes debugging easier; a collision probes onwards.
//!
//! Must not: replicate an allocation (each host owns its own range), or hand out an
//! address outside `proxy.vip_range`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

const PREFIX: &str = "vip/";

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("proxy.vip_range {0} has no free address left")]
    Exhausted(Ipv4Net),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Vips {
    range: Ipv4Net,
    store: Store,
    /// Copied on write and published, so readers take an `Arc` and hear of changes.
    map: watch::Sender<Arc<BTreeMap<String, Ipv4Addr>>>,
    /// Serialises allocations (a choice, its durable write, its publish).
    allocating: Mutex<()>,
    /// Names that wanted an address when the range was full.
    unallocated: Mutex<std::collections::BTreeSet<String>>,
}

impl Vips {
    /// Loads the allocations made before (those outside a changed range are dropped).
    pub fn load(store: Store, range: Ipv4Net) -> Result<Vips, StoreError> {
        let mut map = BTreeMap::new();
        for (key, value) in store.local_entries(PREFIX)? {
            let name = key.trim_start_matches(PREFIX).to_owned();
            if let Some(ip) = std::str::from_utf8(&value).ok().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                if range.contains(&ip) {
                    map.insert(name, ip);
                }
            }
        }
        Ok(Vips {
            range,
            store,
            map: watch::Sender::new(Arc::new(map)),
            allocating: Mutex::new(()),
            unallocated: Mutex::default(),
        })
    }

    /// Every allocation, as of now.
    pub fn all(&self) -> Arc<BTreeMap<String, Ipv4Addr>> {
        self.map.borrow().clone()
    }

    /// Every allocation, and every later change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeMap<String, Ipv4Addr>>> {
        self.map.subscribe()
    }

    /// The address of `name`, if allocated.
    pub fn get(&self, name: &str) -> Option<Ipv4Addr> {
        self.map.borrow().get(name).copied()
    }

    /// The address of `name`, allocated (durably) on first use. Blocking.
    pub fn ensure(&self, name: &str) -> Result<Ipv4Addr, VipError> {
        if let Some(ip) = self.get(name) {
            return Ok(ip);
        }
        let _allocating = self.allocating.lock().unwrap_or_else(|p| p.into_inner());
        let map = self.all();
        if let Some(ip) = map.get(name) {
            return Ok(*ip);
        }
        let taken: std::collections::HashSet<Ipv4Addr> = map.values().copied().collect();
        let Some(ip) = pick(self.range, name, &taken) else {
            let first = self.unallocated.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned());
            if first {
                tracing::error!(%name, range = %self.range, "proxy.vip_range is full: this name gets no virtual IP (and no DNS answer) until one is freed or the range is widened");
            }
            return Err(VipError::Exhausted(self.range));
        };
        self.store.local_put(&format!("{PREFIX}{name}"), ip.to_string().as_bytes())?;
        self.map.send_modify(|map| {
            Arc::make_mut(map).insert(name.to_owned(), ip);
        });
        self.unallocated.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(ip)
    }

    /// Names that want an address the full range could not give.
    pub fn unallocated(&self) -> Vec<String> {
        self.unallocated.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Forgets names no longer wanted (and frees `name`'s address, durably). Blocking.
    pub fn release(&self, name: &str) -> Result<(), StoreError> {
        let _allocating = self.allocating.lock().unwrap_or_else(|p| p.into_inner());
        self.store.local_delete(&format!("{PREFIX}{name}"))?;
        self.map.send_modify(|map| {
            Arc::make_mut(map).remove(name);
        });
        Ok(())
    }

    /// Drops `unallocated` names that are no longer wanted.
    pub fn still_wanted(&self, wanted: &std::collections::HashSet<String>) {
        self.unallocated.lock().unwrap_or_else(|p| p.into_inner()).retain(|n| wanted.contains(n));
    }
}

/// The first free host address at or after the name's hash, skipping the network and
/// broadcast addresses.
pub fn pick(range: Ipv4Net, name: &str, taken: &std::collections::HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let base = u32::from(range.network());
    let size = 1u64 << (32 - range.prefix_len());
    let hosts = size.saturating_sub(2);
    if hosts == 0 {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut h = [0u8; 8];
    h.copy_from_slice(&digest.as_ref()[..8]);
    let start = u64::from_be_bytes(h) % hosts;
    (0..hosts)
        .map(|i| Ipv4Addr::from(base + 1 + u32::try_from((start + i) % hosts).unwrap_or(0)))
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store under `dir` (VIPs live in its local tree; no trust is exercised).
    fn store(dir: &std::path::Path) -> Store {
        Store::open(&dir.join("s"), "a", std::sync::Arc::new(crate::store::seal::Unsealed), Default::default(), |_| {})
            .expect("store")
    }

    #[test]
    fn allocations_are_stable_distinct_and_survive_a_reopen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let range: Ipv4Net = "127.77.0.0/28".parse().expect("range");
        let open = || Vips::load(store(tmp.path()), range).expect("vips");
        let vips = open();
        let mut seen = std::collections::HashSet::new();
        for i in 0..14 {
            let ip = vips.ensure(&format!("svc{i}")).expect("room");
            assert!(range.contains(&ip) && ip != range.network() && ip != range.broadcast());
            assert!(seen.insert(ip), "distinct");
        }
        assert!(matches!(vips.ensure("one-too-many"), Err(VipError::Exhausted(_))));
        let first = vips.get("svc3").expect("allocated");
        drop(vips);
        let again = open();
        assert_eq!(again.get("svc3"), Some(first), "stable across a restart");
        assert_eq!(again.ensure("svc3").expect("held"), first);
    }

    #[test]
    fn a_full_range_names_who_waits_and_a_released_address_serves_the_next() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = store(tmp.path());
        let vips = Vips::load(store.clone(), "127.77.0.0/30".parse().expect("range")).expect("vips");
        vips.ensure("a").expect("room");
        vips.ensure("b").expect("room");
        assert!(matches!(vips.ensure("c"), Err(VipError::Exhausted(_))));
        assert_eq!(vips.unallocated(), vec!["c".to_owned()], "c waits, and says so");
        let b = vips.get("b").expect("b");
        vips.release("b").expect("release");
        assert_eq!(vips.get("b"), None);
        assert!(store.local_get("vip/b").expect("local").is_none(), "freed durably");
        assert_eq!(vips.ensure("c").expect("room again"), b);
        assert!(vips.unallocated().is_empty());
        vips.ensure("d").ok();
        vips.still_wanted(&std::collections::HashSet::new());
        assert!(vips.unallocated().is_empty(), "a name no longer wanted stops waiting");
    }
}
