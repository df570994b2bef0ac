//! What the bridge writes, the pure part: imported Services against the bridge node's
//! own declarations gives a diff (unchanged services are not written again, so a restart
//! of the bridge writes nothing), and the breaker holds a mass delete until a second full
//! list confirms it.
//!
//! Must not: write anything; the caller carries the plan out.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use mesh_proto::service::{Protocol, ServiceSpec};

use super::import::Imported;

/// The label every service a bridge declares carries: the cluster it comes from. It marks
/// the declarations the bridge owns (and may remove).
pub const CLUSTER_LABEL: &str = "k8s-cluster";

/// The mesh declaration of an imported Service. Its address is a placeholder (the bridge
/// connects to the endpoints it holds, never to it), so pod churn never rewrites it.
pub fn spec_of(imported: &Imported, cluster: &str) -> ServiceSpec {
    let mut labels = imported.labels.clone();
    labels.insert(CLUSTER_LABEL.to_owned(), cluster.to_owned());
    ServiceSpec {
        name: imported.name.clone(),
        address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: imported.port,
        protocol: if imported.http { Protocol::Http } else { Protocol::Tcp },
        labels,
        check: None,
        passthrough: false,
        external: true,
    }
}

/// Whether `spec` is one a bridge for `cluster` declared.
pub fn owned(spec: &ServiceSpec, cluster: &str) -> bool {
    spec.external && spec.labels.get(CLUSTER_LABEL).map(String::as_str) == Some(cluster)
}

/// Store writes, smallest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// New or changed declarations.
    pub declare: Vec<ServiceSpec>,
    /// Health to record (after `declare`): name and healthy.
    pub health: Vec<(String, bool)>,
    /// Declarations to remove.
    pub remove: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.declare.is_empty() && self.health.is_empty() && self.remove.is_empty()
    }
}

/// The writes that turn `current` (this bridge's declarations: spec and recorded health)
/// into `desired`. Nothing is removed until `listed` (the watchers' first full lists are
/// complete): a bridge that starts must not delete what it has not seen yet.
pub fn plan(
    desired: &BTreeMap<String, Imported>,
    current: &BTreeMap<String, (ServiceSpec, bool)>,
    cluster: &str,
    listed: bool,
) -> Plan {
    let mut p = Plan::default();
    for (name, imported) in desired {
        let spec = spec_of(imported, cluster);
        let healthy = imported.healthy();
        match current.get(name) {
            Some((old, was)) if *old == spec => {
                if *was != healthy {
                    p.health.push((name.clone(), healthy));
                }
            }
            _ => {
                p.declare.push(spec);
                // A declaration without a check starts healthy.
                if !healthy {
                    p.health.push((name.clone(), false));
                }
            }
        }
    }
    if listed {
        p.remove = current.keys().filter(|n| !desired.contains_key(*n)).cloned().collect();
    }
    p
}

/// Below this many imported endpoints, no change counts as a mass delete.
pub const BREAKER_MIN: usize = 4;

/// Holds a mass delete (more than half of the imported endpoints gone at once: an empty
/// list from a confused API server, a selector typo) until a full list that began after
/// it was held confirms it.
#[derive(Debug, Default)]
pub struct Breaker {
    /// The list generation at which a mass delete was held.
    held_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Not applied; the caller asks for a new full list.
    Hold,
}

impl Breaker {
    /// Whether to apply a change from `before` to `after` endpoints, seen at list
    /// generation `generation` (it grows with every completed full list).
    pub fn check(&mut self, before: usize, after: usize, generation: u64) -> Verdict {
        let mass = before >= BREAKER_MIN && after < before.div_ceil(2);
        if !mass {
            self.held_at = None;
            return Verdict::Apply;
        }
        match self.held_at {
            Some(at) if generation > at => {
                self.held_at = None;
                Verdict::Apply
            }
            Some(_) => Verdict::Hold,
            None => {
                self.held_at = Some(generation);
                Verdict::Hold
            }
        }
    }

    pub fn holding(&self) -> bool {
        self.held_at.is_some()
    }
}

/// Endpoints across every imported service.
pub fn endpoint_count(desired: &BTreeMap<String, Imported>) -> usize {
    desired.values().map(|i| i.endpoints.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::super::import::EndpointState;
    use super::*;

    fn imported(name: &str, ready: usize, draining: usize) -> Imported {
        let mut endpoints = Vec::new();
        for i in 0..ready + draining {
            let state = if i < ready { EndpointState::Ready } else { EndpointState::Draining };
            endpoints.push((format!("10.1.{}.{}:8080", i / 250, i % 250 + 1).parse().expect("addr"), state));
        }
        Imported {
            name: name.into(),
            origin: format!("ns/{name}"),
            port: 80,
            http: true,
            labels: BTreeMap::new(),
            endpoints,
        }
    }

    fn current_of(desired: &BTreeMap<String, Imported>) -> BTreeMap<String, (ServiceSpec, bool)> {
        desired.iter().map(|(n, i)| (n.clone(), (spec_of(i, "prod"), i.healthy()))).collect()
    }

    #[test]
    fn a_restart_is_a_no_op_and_churn_of_endpoints_writes_nothing_but_health_flips() {
        let desired: BTreeMap<_, _> = [("orders".to_owned(), imported("orders", 3, 0))].into();
        let current = current_of(&desired);
        assert!(plan(&desired, &current, "prod", true).is_empty(), "same services: nothing to write");
        // 900 pods replaced one by one: the declaration does not move.
        let churned: BTreeMap<_, _> = [("orders".to_owned(), imported("orders", 900, 12))].into();
        assert!(plan(&churned, &current, "prod", true).is_empty());
        // Every pod draining: one health write.
        let draining: BTreeMap<_, _> = [("orders".to_owned(), imported("orders", 0, 3))].into();
        assert_eq!(plan(&draining, &current, "prod", true).health, vec![("orders".to_owned(), false)]);
    }

    #[test]
    fn new_services_are_declared_with_their_health_and_gone_ones_removed_only_after_the_first_list() {
        let desired: BTreeMap<_, _> =
            [("a".to_owned(), imported("a", 1, 0)), ("b".to_owned(), imported("b", 0, 0))].into();
        let mut current = current_of(&[("old".to_owned(), imported("old", 1, 0))].into());
        let p = plan(&desired, &current, "prod", false);
        assert_eq!(p.declare.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(p.health, vec![("b".to_owned(), false)]);
        assert!(p.remove.is_empty(), "not before the first full list");
        assert_eq!(plan(&desired, &current, "prod", true).remove, vec!["old".to_owned()]);
        // A changed port or protocol is a new declaration.
        current = current_of(&desired);
        let mut moved = desired.clone();
        if let Some(a) = moved.get_mut("a") {
            a.port = 81;
        }
        assert_eq!(plan(&moved, &current, "prod", true).declare.len(), 1);
        let spec = spec_of(&desired["a"], "prod");
        assert!(owned(&spec, "prod") && !owned(&spec, "other"));
        assert!(spec.external && spec.check.is_none());
    }

    #[test]
    fn the_breaker_holds_a_mass_delete_until_a_later_full_list_confirms_it() {
        let mut b = Breaker::default();
        assert_eq!(b.check(10, 9, 1), Verdict::Apply, "a few gone");
        assert_eq!(b.check(10, 5, 1), Verdict::Apply, "exactly half is no mass delete");
        assert_eq!(b.check(10, 4, 1), Verdict::Hold);
        assert!(b.holding());
        assert_eq!(b.check(10, 0, 1), Verdict::Hold, "the same list again does not confirm");
        assert_eq!(b.check(10, 0, 2), Verdict::Apply, "a new full list says the same");
        assert!(!b.holding());
        // Held, then the endpoints come back: the hold ends without applying the delete.
        assert_eq!(b.check(10, 0, 3), Verdict::Hold);
        assert_eq!(b.check(10, 10, 3), Verdict::Apply);
        assert!(!b.holding());
        // Small services may empty out freely.
        assert_eq!(b.check(3, 0, 4), Verdict::Apply);
    }
}
