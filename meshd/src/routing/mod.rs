//! Routing tables: pure functions from a snapshot to what the proxy reads per
//! connection (the instances of each service and subset, the nodes' addresses, the
//! ports each virtual IP listens on), and the choice of an instance. Rebuilt whole on
//! every snapshot and swapped in atomically by the proxy, so a connection never sees a
//! half-applied change. No I/O.
//!
//! Must not: do I/O, read the store, or keep state between snapshots (the proxy keeps
//! loads, ejections and budgets).

pub mod http;
pub mod lint;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use mesh_proto::route::{Destination, RouteSpec};
use mesh_proto::service::ServiceName;
use rand::RngExt;

use crate::state::Snapshot;

/// One instance, as the proxy reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: String,
    pub node: String,
    /// The instance's address and port on its own node.
    pub addr: IpAddr,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    /// Its node's checks pass and the node is alive.
    pub healthy: bool,
}

/// One service's instances across the mesh, and its route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceTable {
    pub passthrough: bool,
    /// `http` or `tcp`, as its instances declare.
    pub protocol: String,
    pub targets: Vec<Target>,
    pub route: Option<RouteSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub index: u64,
    pub services: BTreeMap<String, ServiceTable>,
    /// Each alive (or suspect) member's mesh address.
    pub nodes: HashMap<String, SocketAddr>,
}

impl Tables {
    pub fn build(snap: &Snapshot) -> Tables {
        let nodes: HashMap<String, SocketAddr> =
            snap.members.iter().filter(|m| m.is_serving()).map(|m| (m.name.clone(), m.addr)).collect();
        let mut services: BTreeMap<String, ServiceTable> = BTreeMap::new();
        for s in snap.services.values() {
            let targets = s
                .instances
                .iter()
                .map(|i| Target {
                    service: s.name.clone(),
                    healthy: i.healthy,
                    node: i.node.clone(),
                    addr: i.address,
                    port: i.port,
                    labels: i.labels.clone(),
                })
                .collect();
            let route = snap.routes().values().find(|r| r.spec.service == s.name).map(|r| r.spec.clone());
            let table =
                ServiceTable { protocol: s.protocol.as_str().to_owned(), passthrough: s.passthrough, targets, route };
            services.insert(s.name.clone(), table);
        }
        Tables { index: snap.index, services, nodes }
    }

    /// The healthy instances a connection to `name` may go to, after the route's TCP
    /// split: `name` is a service (its first `[[tcp]]` rule with `to` picks a subset by
    /// weight) or a pinned `SUBSET.SERVICE`. `roll` is a uniform random number. Also
    /// returns the subset chosen.
    pub fn route_tcp(&self, name: &str, roll: u64) -> (Vec<&Target>, Option<String>) {
        let split = self.services.get(name).and_then(|t| t.route.as_ref()).and_then(|r| r.tcp.first()?.to.as_ref());
        match split {
            Some(to) if ServiceName::parse(name).is_some_and(|n| n.subset.is_none()) => {
                match self.split(name, to, roll, |sub| self.healthy(sub)) {
                    Some((subset, targets)) => (targets, Some(subset.to_owned())),
                    None => (vec![], None),
                }
            }
            _ => (self.healthy(name), None),
        }
    }

    /// A weighted choice among the subsets of `to` that `available` finds instances
    /// in (it is given `SUBSET.SERVICE`), and those instances; each subset is looked up
    /// once.
    pub fn split<'a, 's>(
        &'a self,
        service: &str,
        to: &'s [Destination],
        roll: u64,
        available: impl Fn(&str) -> Vec<&'a Target>,
    ) -> Option<(&'s str, Vec<&'a Target>)> {
        let mut options: Vec<(&'s str, u64, Vec<&'a Target>)> = to
            .iter()
            .filter(|d| d.weight > 0)
            .map(|d| (d.subset.as_str(), u64::from(d.weight), available(&format!("{}.{service}", d.subset))))
            .filter(|(_, _, targets)| !targets.is_empty())
            .collect();
        let weights: Vec<(&str, u64)> = options.iter().map(|(s, w, _)| (*s, *w)).collect();
        let chosen = weighted(&weights, roll)?;
        let i = options.iter().position(|(s, _, _)| *s == chosen)?;
        let (subset, _, targets) = options.swap_remove(i);
        Some((subset, targets))
    }

    /// The instances a name leads to: `SERVICE` (all of them) or `SUBSET.SERVICE` (those
    /// the route's subset of that name selects, else those whose `version` label is
    /// SUBSET), healthy or not.
    pub fn targets(&self, name: &str) -> Vec<&Target> {
        let Some(ServiceName { service, subset }) = ServiceName::parse(name) else { return vec![] };
        let Some(table) = self.services.get(service) else { return vec![] };
        let defined = subset.and_then(|s| table.route.as_ref()?.subsets.get(s));
        let selects = |t: &Target| match (subset, defined) {
            (None, _) => true,
            (Some(_), Some(labels)) => labels.iter().all(|(k, v)| t.labels.get(k) == Some(v)),
            (Some(s), None) => t.labels.get("version").map(String::as_str) == Some(s),
        };
        table.targets.iter().filter(|t| selects(t)).collect()
    }

    /// The healthy instances a name leads to.
    pub fn healthy(&self, name: &str) -> Vec<&Target> {
        self.targets(name).into_iter().filter(|t| t.healthy).collect()
    }

    /// The names that get listeners on their virtual IP, and the ports of each: every
    /// service that is not passthrough, and each of its `version` subsets, on every port
    /// any of their instances declares.
    pub fn listeners(&self) -> BTreeMap<String, BTreeSet<u16>> {
        let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for (name, table) in &self.services {
            if table.passthrough {
                continue;
            }
            for t in &table.targets {
                out.entry(name.clone()).or_default().insert(t.port);
                if let Some(v) = t.labels.get("version") {
                    out.entry(format!("{v}.{name}")).or_default().insert(t.port);
                }
            }
            for subset in table.route.iter().flat_map(|r| r.subsets.keys()) {
                let pinned = format!("{subset}.{name}");
                for t in self.targets(&pinned) {
                    out.entry(pinned.clone()).or_default().insert(t.port);
                }
            }
        }
        out
    }
}

/// A weighted choice: `roll` (uniform) lands in one item's share of the total weight.
pub fn weighted<'a>(items: &[(&'a str, u64)], roll: u64) -> Option<&'a str> {
    let total: u64 = items.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let mut at = roll % total;
    for (item, w) in items {
        if at < *w {
            return Some(item);
        }
        at -= w;
    }
    None
}

/// Power of two choices: two candidates at random (not in `tried`), the one with fewer
/// open connections. `load` gives a candidate's open connections. None when every
/// candidate has been tried.
pub fn pick_p2c<R: RngExt>(count: usize, tried: &[usize], load: impl Fn(usize) -> usize, rng: &mut R) -> Option<usize> {
    let left: Vec<usize> = (0..count).filter(|i| !tried.contains(i)).collect();
    match left.len() {
        0 => None,
        1 => Some(left[0]),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (left[a], left[b]);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn p2c_prefers_the_less_loaded_and_skips_the_tried() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let loads = [10, 0, 10];
        let mut wins = [0usize; 3];
        for _ in 0..3000 {
            let i = pick_p2c(3, &[], |i| loads[i], &mut rng).expect("a choice");
            wins[i] += 1;
        }
        // The idle one wins every pair it is in: 2 of the 3 pairs.
        assert!(wins[1] > 1800 && wins[1] < 2200, "{wins:?}");
        assert!(wins[0] > 0 && wins[2] > 0, "{wins:?}");
        assert_eq!(pick_p2c(3, &[0, 1], |_| 0, &mut rng), Some(2));
        assert_eq!(pick_p2c(3, &[0, 1, 2], |_| 0, &mut rng), None);
        assert_eq!(pick_p2c(0, &[], |_| 0, &mut rng), None);
    }

    #[test]
    fn weighted_choice_follows_the_weights() {
        let items = [("v1", 80), ("v2", 20), ("v3", 0)];
        let mut counts = BTreeMap::new();
        for roll in 0..1000u64 {
            *counts.entry(weighted(&items, roll).expect("a choice")).or_insert(0) += 1;
        }
        assert_eq!(counts.get("v1"), Some(&800));
        assert_eq!(counts.get("v2"), Some(&200));
        assert_eq!(counts.get("v3"), None);
        assert_eq!(weighted(&[("a", 0)], 5), None);
    }

    #[test]
    fn p2c_spreads_evenly_when_loads_are_equal() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut wins = [0usize; 4];
        for _ in 0..4000 {
            wins[pick_p2c(4, &[], |_| 0, &mut rng).expect("a choice")] += 1;
        }
        assert!(wins.iter().all(|w| (850..1150).contains(w)), "{wins:?}");
    }
}
