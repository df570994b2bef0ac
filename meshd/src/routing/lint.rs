//! Why a route may not work as written, in one node's view of the mesh: pure over the
//! route and a snapshot (`meshctl route apply` prints it, `meshctl route lint` lists it).
//!
//! Must not: refuse a route (lint only warns: a route may be written before its service
//! exists).

use mesh_proto::route::RouteSpec;

use crate::state::Snapshot;

/// Why `spec` may not work as written in this snapshot: a service with no instance yet,
/// subsets that select no instance, rules of the other protocol. A route may come before
/// its service, so these are warnings, not errors.
pub fn lint(spec: &RouteSpec, snap: &Snapshot) -> Vec<String> {
    let instances = snap.services.get(&spec.service).map_or(&[][..], |s| &s.instances[..]);
    if instances.is_empty() {
        return vec![format!(
            "service {} has no instance in the mesh: the route does nothing until one registers",
            spec.service
        )];
    }
    let mut problems = Vec::new();
    let protocols: std::collections::BTreeSet<&str> =
        instances.iter().map(|i| i.record.spec.protocol.as_str()).collect();
    for p in &protocols {
        if let Err(e) = spec.check_protocol(p) {
            problems.push(e);
        }
    }
    let used: std::collections::BTreeSet<&str> = spec.used_subsets().collect();
    for (name, labels) in &spec.subsets {
        let selected = instances.iter().filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v))).count();
        if selected == 0 {
            let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let effect = if used.contains(name.as_str()) { "traffic sent to it fails" } else { "no rule sends to it" };
            problems.push(format!(
                "subset {name} ({}) selects no instance of {}: {effect}",
                selector.join(", "),
                spec.service
            ));
        }
    }
    problems
}
