//! Authorization: pure decisions, taken by the node that hosts the destination after it
//! has checked who the caller is (its certificate) and what it may speak for (the
//! services it hosts). A service's policy ([`PolicySpec`]) allows and denies callers, and
//! for HTTP services requests by method, path and headers; deny rules win over allow
//! rules; what no rule decides goes by the policy's `default`, else the mesh-wide
//! `[policy] default`. Rate limits are token buckets ([`limits`]) on each destination
//! node.
//!
//! Must not: do I/O, read the clock (time is passed in), or decide on a name the
//! handshake did not prove.

pub mod limits;

use mesh_proto::api::glob_matches;
use mesh_proto::policy::{self as spec, PolicySpec, Rule};
use mesh_proto::route::HeaderMatch;

use crate::config::PolicyDefault;
use crate::routing::http::{header_matches, path_prefix_matches, RequestView};
use crate::state::Snapshot;

/// Who calls, every part already verified: its node always, its service when the
/// connection says so and the node hosts it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub node: &'a str,
    pub service: Option<&'a str>,
}

impl Caller<'_> {
    /// How logs, metrics and per-source buckets name it: its service, else `node:NAME`.
    pub fn label(&self) -> String {
        match self.service {
            Some(s) => s.to_owned(),
            None => format!("node:{}", self.node),
        }
    }
}

/// What decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By {
    /// `allow[i]` or `deny[i]` of the service's policy.
    Rule { kind: &'static str, index: usize },
    /// The policy's own `default`.
    PolicyDefault,
    /// The mesh-wide `[policy] default` (the service has no policy, or one without a
    /// default).
    MeshDefault,
}

impl std::fmt::Display for By {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            By::Rule { kind, index } => write!(f, "{kind}[{index}]"),
            By::PolicyDefault => f.write_str("default"),
            By::MeshDefault => f.write_str("mesh default"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub by: By,
}

impl Decision {
    /// One line for people and logs: `allow` or `deny`, then what decided.
    pub fn explain(&self, service: &str, has_policy: bool) -> String {
        let verdict = if self.allow { "allow" } else { "deny" };
        match (&self.by, has_policy) {
            (By::MeshDefault, false) => format!("{verdict}: {service} has no policy; the mesh default is {verdict}"),
            (By::MeshDefault, true) => {
                format!("{verdict}: no rule of policy {service} matches; the mesh default is {verdict}")
            }
            (By::PolicyDefault, _) => {
                format!("{verdict}: no rule of policy {service} matches; its default is {verdict}")
            }
            (by, _) => format!("{verdict}: policy {service} rule {by}"),
        }
    }
}

/// Whether `caller` is one that `from` names: `*`, its service, or `node:GLOB` of its node.
pub fn names(from: &[String], caller: &Caller<'_>) -> bool {
    from.iter().any(|who| match who.strip_prefix("node:") {
        Some(glob) => glob_matches(glob, caller.node),
        None => who == "*" || caller.service == Some(who.as_str()),
    })
}

/// Whether a rule matches: its callers, and when it has request conditions, the request
/// (`None`: a connection, which request conditions never match).
fn matches(rule: &Rule, caller: &Caller<'_>, request: Option<&RequestView<'_>>) -> bool {
    if !names(&rule.from, caller) {
        return false;
    }
    let Some(h) = &rule.http else { return true };
    let Some(req) = request else { return false };
    http_matches(h, req)
}

fn http_matches(h: &spec::HttpConditions, req: &RequestView<'_>) -> bool {
    if !h.methods.is_empty() && !h.methods.iter().any(|m| m == req.method) {
        return false;
    }
    let path_ok = h.paths.is_empty()
        || h.paths.iter().any(|p| match (&p.prefix, &p.exact) {
            (Some(prefix), _) => path_prefix_matches(prefix, req.path),
            (None, Some(exact)) => exact == req.path,
            (None, None) => false,
        });
    path_ok && h.headers.iter().all(|(name, want): (&String, &HeaderMatch)| header_matches(name, want, req))
}

/// The decision for `caller` on `service` (a connection when `request` is `None`).
/// `policy` is the service's, if it has one.
pub fn decide(
    policy: Option<&PolicySpec>,
    mesh_default: PolicyDefault,
    caller: &Caller<'_>,
    request: Option<&RequestView<'_>>,
) -> Decision {
    if let Some(p) = policy {
        if let Some(index) = p.deny.iter().position(|r| matches(r, caller, request)) {
            return Decision { allow: false, by: By::Rule { kind: "deny", index } };
        }
        if let Some(index) = p.allow.iter().position(|r| matches(r, caller, request)) {
            return Decision { allow: true, by: By::Rule { kind: "allow", index } };
        }
        if let Some(d) = p.default {
            return Decision { allow: d == spec::Default::Allow, by: By::PolicyDefault };
        }
    }
    Decision { allow: mesh_default == PolicyDefault::Allow, by: By::MeshDefault }
}

/// Why a policy may not work as written in this node's view (apply prints these).
pub fn lint(policy: &PolicySpec, snap: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    if !snap.services.contains_key(&policy.service) {
        out.push(format!("service {} has no instance in the mesh yet", policy.service));
    }
    let rules =
        policy.allow.iter().chain(&policy.deny).map(|r| &r.from).chain(policy.rate_limit.iter().map(|r| &r.from));
    for from in rules {
        for who in from.iter().filter(|w| *w != "*" && !w.starts_with("node:")) {
            if !snap.services.contains_key(who.as_str()) {
                out.push(format!("caller {who} is not a service in the mesh (yet): use node:NAME for a node"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
