//! The typed read model's contents, and the codecs of the store entries they come from.
//!
//! Each store prefix that readers care about has one codec here (`node/N/service/S`
//! instance records, `route/NAME` values); [`StoreParts::decode`] reads a store view
//! into typed values once per publish, and [`resolve`] joins them with the member list
//! (health, removals). Readers take typed fields: no reader sees a store key or JSON.
//!
//! Must not: do I/O, or hold anything a reader does not need.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::api::RevisionRef;
use mesh_proto::policy::PolicySpec;
use mesh_proto::route::RouteSpec;
use mesh_proto::service::{Protocol, ServiceSpec};
use serde::{Deserialize, Serialize};

use super::Member;
use crate::store::view::View;

/// The store prefix of instance records.
const INSTANCES: &str = "node/";
/// The store prefix of routes.
const ROUTES: &str = "route/";
/// The store prefix of authorization policies.
const POLICIES: &str = "policy/";
/// The store prefix of service name claims.
const CLAIMS: &str = "claim/";

/// `claim/NAME`: the nodes that may register service NAME (`meshctl service allow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// Node name globs.
    pub nodes: Vec<String>,
}

impl ClaimRecord {
    pub fn key(service: &str) -> String {
        format!("{CLAIMS}{service}")
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// A claim as stored; an invalid one (see [`ClaimRecord::is_valid`]) is ignored.
    pub fn decode(bytes: &[u8]) -> Option<ClaimRecord> {
        serde_json::from_slice(bytes).ok().filter(ClaimRecord::is_valid)
    }

    /// One to 64 globs, each 1 to 63 bytes of lower-case letters, digits, `-`, `*`, `?`.
    pub fn is_valid(&self) -> bool {
        let glob = |g: &String| {
            !g.is_empty()
                && g.len() <= 63
                && g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b))
        };
        !self.nodes.is_empty() && self.nodes.len() <= 64 && self.nodes.iter().all(glob)
    }

    /// Whether `node` may register the claimed service.
    pub fn allows(&self, node: &str) -> bool {
        self.nodes.iter().any(|g| mesh_proto::api::glob_matches(g, node))
    }
}

/// Where a local service came from: config services are re-declared at every start (and
/// removed when gone from the config); registered ones persist until deregistered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Api,
}

/// `node/NODE/service/NAME`: one instance, as its node declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub node: String,
    pub spec: ServiceSpec,
    /// The owner's view of its health (checks run there only).
    pub healthy: bool,
    pub source: Source,
}

impl InstanceRecord {
    /// The store key of `node`'s instance of `service`.
    pub fn key(node: &str, service: &str) -> String {
        format!("{INSTANCES}{node}/service/{service}")
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Option<InstanceRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The value of `route/NAME`: the spec, and for a rollback the revision it restores.
/// Values written before rollbacks were recorded are a bare spec, still read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRecord {
    pub route: RouteSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// The writer of the revision `rollback_of` restored (absent in records written
    /// before revisions were named by writer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of_origin: Option<String>,
}

impl RouteRecord {
    /// The store key of route `name`.
    pub fn key(name: &str) -> String {
        format!("{ROUTES}{name}")
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Option<RouteRecord> {
        serde_json::from_slice::<RouteRecord>(bytes)
            .or_else(|_| {
                serde_json::from_slice::<RouteSpec>(bytes).map(|route| RouteRecord {
                    route,
                    rollback_of: None,
                    rollback_of_origin: None,
                })
            })
            .ok()
    }
}

/// The value of `policy/NAME`: the spec, and for a rollback the revision it restores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    pub policy: PolicySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of_origin: Option<String>,
}

/// What is stored with revisions, history and rollback: routes and policies. Each is a
/// spec named after its service, under a key prefix, encoded with the revision it
/// restored when it is a rollback.
pub trait Spec: Clone + PartialEq + Send + Sync + 'static {
    /// `route`, `policy`: what messages call it.
    const NOUN: &'static str;
    /// Its store key prefix.
    const PREFIX: &'static str;
    fn name(&self) -> &str;
    fn encode(&self, rollback_of: Option<&RevisionRef>) -> Result<Vec<u8>, serde_json::Error>;
    fn decode(bytes: &[u8]) -> Option<(Self, Option<RevisionRef>)>;

    /// The store key of the document `name`.
    fn key(name: &str) -> String {
        format!("{}{name}", Self::PREFIX)
    }
}

fn restored(number: Option<u64>, origin: Option<String>) -> Option<RevisionRef> {
    number.map(|number| RevisionRef { number, origin })
}

impl Spec for RouteSpec {
    const NOUN: &'static str = "route";
    const PREFIX: &'static str = ROUTES;

    fn name(&self) -> &str {
        &self.name
    }

    fn encode(&self, rollback_of: Option<&RevisionRef>) -> Result<Vec<u8>, serde_json::Error> {
        RouteRecord {
            route: self.clone(),
            rollback_of: rollback_of.map(|r| r.number),
            rollback_of_origin: rollback_of.and_then(|r| r.origin.clone()),
        }
        .encode()
    }

    fn decode(bytes: &[u8]) -> Option<(Self, Option<RevisionRef>)> {
        let r = RouteRecord::decode(bytes)?;
        Some((r.route, restored(r.rollback_of, r.rollback_of_origin)))
    }
}

impl Spec for PolicySpec {
    const NOUN: &'static str = "policy";
    const PREFIX: &'static str = POLICIES;

    fn name(&self) -> &str {
        &self.name
    }

    fn encode(&self, rollback_of: Option<&RevisionRef>) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&PolicyRecord {
            policy: self.clone(),
            rollback_of: rollback_of.map(|r| r.number),
            rollback_of_origin: rollback_of.and_then(|r| r.origin.clone()),
        })
    }

    fn decode(bytes: &[u8]) -> Option<(Self, Option<RevisionRef>)> {
        let r: PolicyRecord = serde_json::from_slice(bytes).ok()?;
        Some((r.policy, restored(r.rollback_of, r.rollback_of_origin)))
    }
}

/// One revision of a route or a policy, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<S> {
    pub spec: S,
    pub revision: u64,
    pub applied_at: SystemTime,
    pub origin: String,
    /// The revision whose content this one restored.
    pub rollback_of: Option<RevisionRef>,
}

/// A route's revision.
pub type Route = Document<RouteSpec>;
/// An authorization policy's revision.
pub type Policy = Document<PolicySpec>;

impl<S: Spec> Document<S> {
    /// A stored revision as a document; None for a deletion or a value that does not
    /// decode.
    pub fn from_revision(r: &crate::store::entry::Revision) -> Option<Document<S>> {
        if r.deleted {
            return None;
        }
        let (spec, rollback_of) = S::decode(&r.value)?;
        Some(Document {
            spec,
            revision: r.revision,
            applied_at: SystemTime::UNIX_EPOCH + Duration::from_millis(r.version.millis()),
            origin: r.origin.clone(),
            rollback_of,
        })
    }
}

/// One instance as readers see it: typed, with its health resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub node: String,
    pub address: IpAddr,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    /// Its own node says it is healthy, and that node is alive (or suspect).
    pub healthy: bool,
    /// The record as stored, for what only its owner needs (its check, its source).
    pub record: Arc<InstanceRecord>,
}

/// A service across the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// As its first instance declares it.
    pub protocol: Protocol,
    /// Some instance asks for passthrough DNS answers.
    pub passthrough: bool,
    /// By node, then port.
    pub instances: Vec<Instance>,
}

impl Service {
    pub fn healthy(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.healthy)
    }
}

/// What the snapshot takes from a store view, decoded once per view: incrementally,
/// since an entry that did not change (the same `Arc` in the persistent map) keeps its
/// decoded record.
#[derive(Debug, Default)]
pub struct StoreParts {
    /// Every instance record, but those of removed nodes.
    pub records: Vec<Arc<InstanceRecord>>,
    /// Every decodable instance record by store key, with the entry it came from.
    decoded: BTreeMap<String, (Arc<crate::store::entry::Entry>, Arc<InstanceRecord>)>,
    /// Live routes by name.
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Live authorization policies by service.
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// Revoked serials and keys (what handshakes refuse).
    pub revoked: crate::identity::verify::RevokedSet,
    /// Every revocation, as recorded.
    pub revocations: Vec<crate::identity::records::Revocation>,
    /// Nodes whose current key is revoked.
    pub removed: BTreeSet<String>,
    /// Each node's role, from its certificate record.
    pub roles: BTreeMap<String, mesh_proto::role::Role>,
    /// Claimed service names: who may register each.
    pub claims: BTreeMap<String, ClaimRecord>,
    /// The mesh CA's roots recorded since a rotation (none before the first).
    pub roots: Vec<crate::identity::records::CaRecord>,
}

impl StoreParts {
    pub fn decode(view: &View) -> StoreParts {
        StoreParts::decode_after(view, &StoreParts::default())
    }

    /// Decodes `view`, reusing what `prev` decoded of entries that did not change.
    pub fn decode_after(view: &View, prev: &StoreParts) -> StoreParts {
        let (revoked, revocations) = crate::identity::records::revoked_set(view);
        let removed = crate::identity::records::removed_among(view, &revoked, &revocations);
        let mut decoded = BTreeMap::new();
        for e in view.prefix(INSTANCES).filter(|e| e.key.contains("/service/")) {
            let record = match prev.decoded.get(&e.key) {
                Some((entry, record)) if Arc::ptr_eq(entry, e) => record.clone(),
                _ => match InstanceRecord::decode(&e.value) {
                    Some(r) => Arc::new(r),
                    None => continue,
                },
            };
            decoded.insert(e.key.clone(), (e.clone(), record));
        }
        let records = decoded.values().map(|(_, r)| r.clone()).filter(|r| !removed.contains(&r.node)).collect();
        let routes = view
            .prefix(ROUTES)
            .filter_map(|e| Route::from_revision(&e.as_revision()))
            .map(|r| (r.spec.name.clone(), Arc::new(r)))
            .collect();
        let policies = view
            .prefix(POLICIES)
            .filter_map(|e| Policy::from_revision(&e.as_revision()))
            .map(|p| (p.spec.service.clone(), Arc::new(p)))
            .collect();
        let roles = crate::identity::records::roles(view);
        let claims = view
            .prefix(CLAIMS)
            .filter(|e| !e.deleted)
            .filter_map(|e| Some((e.key[CLAIMS.len()..].to_owned(), ClaimRecord::decode(&e.value)?)))
            .collect();
        let roots = crate::identity::records::roots(view);
        StoreParts { records, decoded, routes, policies, revoked, revocations, removed, roles, claims, roots }
    }
}

/// The services of `records`, with each instance's health resolved against `members`. A
/// service equal to its value in `prev` keeps `prev`'s `Arc`, so readers can tell what
/// changed by pointer (DNS re-encodes only those). When the members are those `prev` was
/// resolved with (`same_members`), a service whose records are `prev`'s own is taken
/// over without being built again.
pub fn resolve(
    records: &[Arc<InstanceRecord>],
    members: &[Member],
    prev: &BTreeMap<String, Arc<Service>>,
    same_members: bool,
) -> BTreeMap<String, Arc<Service>> {
    let serving: BTreeSet<&str> = members.iter().filter(|m| m.is_serving()).map(|m| m.name.as_str()).collect();
    let mut by_service: BTreeMap<&str, Vec<&Arc<InstanceRecord>>> = BTreeMap::new();
    for r in records {
        by_service.entry(r.spec.name.as_str()).or_default().push(r);
    }
    let mut services = BTreeMap::new();
    for (name, mut group) in by_service {
        group.sort_by(|a, b| (&a.node, a.spec.port).cmp(&(&b.node, b.spec.port)));
        let old = prev.get(name);
        let taken_over = old.filter(|o| {
            same_members
                && o.instances.len() == group.len()
                && o.instances.iter().zip(&group).all(|(i, r)| Arc::ptr_eq(&i.record, r))
        });
        if let Some(o) = taken_over {
            services.insert(name.to_owned(), o.clone());
            continue;
        }
        let first = group[0];
        let service = Service {
            name: name.to_owned(),
            protocol: first.spec.protocol,
            passthrough: group.iter().any(|r| r.spec.passthrough),
            instances: group
                .iter()
                .map(|r| Instance {
                    node: r.node.clone(),
                    address: r.spec.address,
                    port: r.spec.port,
                    labels: r.spec.labels.clone(),
                    healthy: r.healthy && serving.contains(r.node.as_str()),
                    record: (*r).clone(),
                })
                .collect(),
        };
        let kept = old.filter(|o| ***o == service).cloned();
        services.insert(name.to_owned(), kept.unwrap_or_else(|| Arc::new(service)));
    }
    services
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use mesh_proto::api::MemberState;

    use super::*;
    use crate::identity::records::{node_cert_key, NodeCertRecord, Revocation};
    use crate::store::entry::Entry;
    use crate::store::hlc::Hlc;

    fn put(view: &mut View, key: &str, value: Vec<u8>) {
        view.merge(Arc::new(Entry::next(None, key, Some(value), Hlc::from_millis(1), "w")));
    }

    fn instance(node: &str, healthy: bool) -> Vec<u8> {
        record_of(node, "web", healthy)
    }

    fn record_of(node: &str, service: &str, healthy: bool) -> Vec<u8> {
        let text = format!("name = \"{service}\"\nport = 80\nprotocol = \"http\"\n");
        let spec = ServiceSpec::from_file("s.toml", &text).expect("spec");
        InstanceRecord { node: node.into(), spec, healthy, source: Source::Api }.encode().expect("encode")
    }

    fn member(name: &str, state: MemberState) -> Member {
        let addr: SocketAddr = "198.18.0.1:7946".parse().expect("addr");
        Member { name: name.into(), addr, state, last_heard: SystemTime::now() }
    }

    #[test]
    fn a_view_decodes_once_into_typed_services_routes_and_removals() {
        let mut view = View::default();
        for (node, healthy) in [("a", true), ("b", true), ("c", false), ("gone", true)] {
            put(&mut view, &InstanceRecord::key(node, "web"), instance(node, healthy));
        }
        let route = RouteSpec::from_file("r.toml", "service = \"web\"\n").expect("route");
        put(
            &mut view,
            &RouteRecord::key("web"),
            RouteRecord { route, rollback_of: Some(3), rollback_of_origin: Some("b".into()) }.encode().expect("encode"),
        );
        let cert = NodeCertRecord {
            serial: "s1".into(),
            key_hash: "k1".into(),
            not_after_ms: 0,
            issued_by: "a".into(),
            role: None,
        };
        put(&mut view, &node_cert_key("gone"), serde_json::to_vec(&cert).expect("json"));
        let revoked =
            Revocation { node: "gone".into(), serial: "s1".into(), key_hash: "k1".into(), at_ms: 1, by: "a".into() };
        put(&mut view, "revoked/s1", serde_json::to_vec(&revoked).expect("json"));
        put(&mut view, "node/a/service/broken", b"not json".to_vec());

        let parts = StoreParts::decode(&view);
        assert_eq!(parts.removed.iter().collect::<Vec<_>>(), ["gone"]);
        assert_eq!(parts.records.len(), 3, "the removed node's and the undecodable record are left out");
        assert_eq!(parts.routes["web"].rollback_of, Some(RevisionRef { number: 3, origin: Some("b".into()) }));
        assert!(parts.revoked.keys.contains("k1"));

        // b is dead: its instance is unhealthy; c says it is unhealthy itself.
        let members =
            [member("a", MemberState::Alive), member("b", MemberState::Dead), member("c", MemberState::Alive)];
        let services = resolve(&parts.records, &members, &BTreeMap::new(), false);
        let web = &services["web"];
        assert_eq!(web.protocol, Protocol::Http);
        let health: Vec<(&str, bool)> = web.instances.iter().map(|i| (i.node.as_str(), i.healthy)).collect();
        assert_eq!(health, [("a", true), ("b", false), ("c", false)]);
        assert_eq!(web.instances[0].address, "127.0.0.1".parse::<IpAddr>().expect("ip"), "typed, not a string");

        // Decoding again after one change reuses every unchanged record, and an equal
        // service keeps its Arc.
        put(&mut view, &InstanceRecord::key("zz", "db"), record_of("zz", "db", true));
        let again = StoreParts::decode_after(&view, &parts);
        assert_eq!(again.records.len(), 4);
        assert!(again
            .records
            .iter()
            .filter(|r| r.node != "zz")
            .all(|r| parts.records.iter().any(|p| Arc::ptr_eq(p, r))));
        let after = resolve(&again.records, &members, &services, true);
        assert!(Arc::ptr_eq(&after["web"], &services["web"]), "web did not change");
    }
}
