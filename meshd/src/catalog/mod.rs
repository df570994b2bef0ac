//! The service catalog: this node's services (from `[[service]]` in meshd.toml and from
//! `meshctl service register`), stored as `node/NODE/service/NAME` entries that gossip
//! spreads, and their health checks, run here only.
//!
//! Data flows one way: registering writes the store; the catalog task watches the
//! snapshots and keeps one check task per local instance that has a check; a check
//! writes the store only when its instance's health changes. Listing is a pure function
//! of a snapshot (`services`): an instance is healthy when its own node says so and that
//! node is alive, so a dead node's instances are unhealthy everywhere.
//!
//! What this node declared is kept in the store's local tree (`declared/NAME`), not read
//! back from the replicated entries: an entry in this node's name that it did not
//! declare is someone else's forgery, left out of this node's read model and deleted.
//!
//! Must not: act for a service another node declared (check it, write its health), or
//! for an entry in this node's name that this node did not declare.

pub mod health;
pub mod vip;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_proto::api;
use mesh_proto::service::ServiceSpec;
use tokio::task::JoinSet;

use crate::drain::DrainWatcher;
pub use crate::state::model::{InstanceRecord, Source};
use crate::state::{Publisher, Snapshot, SnapshotRx};
use crate::store::{Store, StoreError};

/// `GET /v1/services`: services by name, each with its instances across the mesh.
pub fn services(snap: &Snapshot) -> Vec<api::Service> {
    snap.services
        .values()
        .map(|s| api::Service {
            name: s.name.clone(),
            vip: None,
            instances: s
                .instances
                .iter()
                .map(|i| api::Instance {
                    node: i.node.clone(),
                    addr: i.address.to_string(),
                    port: i.port,
                    protocol: s.protocol.as_str().to_owned(),
                    labels: i.labels.clone(),
                    healthy: i.healthy,
                })
                .collect(),
        })
        .collect()
}

/// Health check metrics, under `mesh_health_`, and the catalog's corrections of entries
/// in this node's name, under `mesh_catalog_`.
#[derive(Clone, Default)]
pub struct Metrics {
    checks: prometheus_client::metrics::family::Family<CheckLabels, prometheus_client::metrics::counter::Counter>,
    transitions: prometheus_client::metrics::family::Family<CheckLabels, prometheus_client::metrics::counter::Counter>,
    corrections: prometheus_client::metrics::family::Family<KindLabel, prometheus_client::metrics::counter::Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CheckLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Metrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("health");
        r.register("checks", "Health checks run here, by service and result (pass, fail)", m.checks.clone());
        r.register(
            "transitions",
            "Health changes of local instances, by service and new state (healthy, unhealthy)",
            m.transitions.clone(),
        );
        registry.sub_registry_with_prefix("catalog").register(
            "corrections",
            "Instance entries in this node's name that it did not write as they stand, put right: \
             foreign (deleted), altered (rewritten), missing (written again)",
            m.corrections.clone(),
        );
        m
    }
}

/// `declared/NAME` in the store's local, never replicated, tree: a service this node
/// declared and where from. The authority on what this node serves: the replicated
/// `node/NODE/service/NAME` entries are what the others are told, and an entry there in
/// this node's name that it did not declare is someone else's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Declared {
    spec: ServiceSpec,
    source: Source,
}

const DECLARED: &str = "declared/";
/// Set once the declarations of a store from before local declarations were adopted.
const ADOPTED: &str = "declared-adopted";

/// Registering and deregistering this node's services. Blocking (store writes).
#[derive(Clone)]
pub struct Catalog {
    store: Store,
    node: String,
    metrics: Metrics,
    publisher: Option<Publisher>,
    /// Held while declarations and this node's entries change together (declaring,
    /// undeclaring, health, reconciling): a reconcile must not see a declaration's entry
    /// without the declaration.
    writing: Arc<std::sync::Mutex<()>>,
    /// Each checked instance's health as its check last found it: what a rewritten entry
    /// carries (the check reports only changes).
    health: Arc<std::sync::Mutex<HashMap<String, bool>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no service {0} on this node")]
    Unknown(String),
    #[error("service {0} is declared in meshd.toml: remove it there (and restart) to remove it")]
    FromConfig(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Catalog {
    pub fn new(store: Store, node: &str) -> Catalog {
        Catalog {
            store,
            node: node.to_owned(),
            metrics: Metrics::default(),
            publisher: None,
            writing: Arc::default(),
            health: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Catalog {
        self.metrics = metrics;
        self
    }

    /// Publishes this node's declarations in every snapshot from now on.
    pub fn with_publisher(mut self, publisher: Publisher) -> Result<Catalog, StoreError> {
        self.publisher = Some(publisher);
        self.adopt()?;
        self.publish()?;
        Ok(self)
    }

    /// This node's declarations, by name.
    fn declared(&self) -> Result<BTreeMap<String, Declared>, StoreError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.store.local_entries(DECLARED)? {
            match serde_json::from_slice::<Declared>(&value) {
                Ok(d) => {
                    out.insert(d.spec.name.clone(), d);
                }
                Err(e) => tracing::warn!(%key, error = %e, "ignoring an unreadable local declaration"),
            }
        }
        Ok(out)
    }

    fn set_declared(&self, d: &Declared) -> Result<(), StoreError> {
        let value = serde_json::to_vec(d).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.store.local_put(&format!("{DECLARED}{}", d.spec.name), &value)
    }

    /// A store written before declarations were kept locally: its own entries (written by
    /// this node) are its declarations. Once.
    fn adopt(&self) -> Result<(), StoreError> {
        if self.store.local_get(ADOPTED)?.is_some() {
            return Ok(());
        }
        let prefix = InstanceRecord::key(&self.node, "");
        for e in self.store.view().prefix(&prefix).filter(|e| !e.deleted && e.origin == self.node) {
            if let Some(r) = InstanceRecord::decode(&e.value) {
                self.set_declared(&Declared { spec: r.spec, source: r.source })?;
            }
        }
        self.store.local_put(ADOPTED, b"1")
    }

    /// Hands the declarations to the read model.
    fn publish(&self) -> Result<(), StoreError> {
        if let Some(p) = &self.publisher {
            let map: BTreeMap<String, ServiceSpec> =
                self.declared()?.into_iter().map(|(name, d)| (name, d.spec)).collect();
            let map = Arc::new(map);
            p.update(|s| s.declared = Some(map));
        }
        Ok(())
    }

    /// This node's record of `name` in the replicated store, if any.
    fn record(&self, name: &str) -> Option<InstanceRecord> {
        let view = self.store.view();
        view.entry(&InstanceRecord::key(&self.node, name))
            .filter(|e| !e.deleted)
            .and_then(|e| InstanceRecord::decode(&e.value))
    }

    fn write(&self, spec: ServiceSpec, source: Source, healthy: bool) -> Result<(), StoreError> {
        let record = InstanceRecord { node: self.node.clone(), healthy, spec, source };
        let value = record.encode().map_err(|e| StoreError::Encode(e.to_string()))?;
        self.store.put(&InstanceRecord::key(&self.node, &record.spec.name), value)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The health an entry of `spec` carries when written: its check's last finding, or
    /// healthy when it has no check, unhealthy until the check passes.
    fn health_of(&self, spec: &ServiceSpec) -> bool {
        let known = self.health.lock().unwrap_or_else(|p| p.into_inner()).get(&spec.name).copied();
        known.unwrap_or(spec.check.is_none())
    }

    /// Declares `spec` (locally first, then to the mesh).
    fn declare(&self, spec: ServiceSpec, source: Source) -> Result<(), StoreError> {
        let _writing = self.lock();
        // A new or changed declaration starts over: its check has not run yet.
        self.health.lock().unwrap_or_else(|p| p.into_inner()).remove(&spec.name);
        let healthy = spec.check.is_none();
        self.set_declared(&Declared { spec: spec.clone(), source })?;
        self.publish()?;
        self.write(spec, source, healthy)
    }

    fn undeclare(&self, name: &str) -> Result<(), StoreError> {
        let _writing = self.lock();
        self.health.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.store.local_delete(&format!("{DECLARED}{name}"))?;
        self.publish()?;
        self.store.delete(&InstanceRecord::key(&self.node, name))?;
        Ok(())
    }

    /// At start: declares the config's services (replacing what they were) and removes
    /// config services that are no longer in the config. Registered ones stay.
    pub fn declare_config(&self, services: &[ServiceSpec]) -> Result<(), StoreError> {
        let declared = self.declared()?;
        for old in declared.values() {
            if old.source == Source::Config && !services.iter().any(|s| s.name == old.spec.name) {
                self.undeclare(&old.spec.name)?;
            }
        }
        for spec in services {
            // Unchanged: keep its health rather than restart from unhealthy.
            let unchanged = declared.get(&spec.name).is_some_and(|d| d.spec == *spec && d.source == Source::Config)
                && self.record(&spec.name).is_some_and(|r| r.spec == *spec);
            if !unchanged {
                self.declare(spec.clone(), Source::Config)?;
            }
        }
        self.publish()
    }

    /// `meshctl service register`: a name that exists is replaced.
    pub fn register(&self, spec: ServiceSpec) -> Result<(), CatalogError> {
        if self.declared()?.get(&spec.name).is_some_and(|d| d.source == Source::Config) {
            return Err(CatalogError::FromConfig(spec.name));
        }
        Ok(self.declare(spec, Source::Api)?)
    }

    /// `meshctl service deregister NAME`.
    pub fn deregister(&self, name: &str) -> Result<(), CatalogError> {
        match self.declared()?.get(name) {
            None => Err(CatalogError::Unknown(name.to_owned())),
            Some(d) if d.source == Source::Config => Err(CatalogError::FromConfig(name.to_owned())),
            Some(_) => Ok(self.undeclare(name)?),
        }
    }

    /// This node's declarations that `keep` selects, with their recorded health.
    pub fn declarations(
        &self,
        keep: impl Fn(&ServiceSpec) -> bool,
    ) -> Result<BTreeMap<String, (ServiceSpec, bool)>, StoreError> {
        Ok(self
            .declared()?
            .into_values()
            .filter(|d| keep(&d.spec))
            .map(|d| {
                let healthy = self.record(&d.spec.name).is_none_or(|r| r.healthy);
                (d.spec.name.clone(), (d.spec, healthy))
            })
            .collect())
    }

    /// Records the health of an instance without a check whose owner knows it otherwise
    /// (a bridge: whether its Service has a ready endpoint).
    pub fn set_reported_health(&self, name: &str, healthy: bool) -> Result<(), StoreError> {
        let Some(d) = self.declared()?.remove(name) else { return Ok(()) };
        self.set_health(&d.spec, healthy)
    }

    /// Records a health change of a local instance (if it still is the same instance).
    fn set_health(&self, spec: &ServiceSpec, healthy: bool) -> Result<(), StoreError> {
        let _writing = self.lock();
        let Some(d) = self.declared()?.remove(&spec.name).filter(|d| d.spec == *spec) else { return Ok(()) };
        self.health.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.name.clone(), healthy);
        match self.record(&spec.name) {
            Some(r) if r.spec == *spec && r.healthy == healthy => Ok(()),
            _ => self.write(d.spec, d.source, healthy),
        }
    }

    /// Puts right the replicated entries in this node's name: one it did not declare is
    /// deleted, one that differs from its declaration is written again (with its health
    /// as recorded), a declaration with no entry is written. Until entries are signed,
    /// this is how a node answers a member that writes in its name.
    pub fn reconcile(&self) -> Result<(), StoreError> {
        let _writing = self.lock();
        let declared = self.declared()?;
        let prefix = InstanceRecord::key(&self.node, "");
        let view = self.store.view();
        let mut seen = std::collections::BTreeSet::new();
        for e in view.prefix(&prefix).filter(|e| !e.deleted) {
            let record = InstanceRecord::decode(&e.value);
            let name = record.as_ref().map_or_else(|| e.key[prefix.len()..].to_owned(), |r| r.spec.name.clone());
            seen.insert(name.clone());
            match (declared.get(&name), record) {
                (Some(d), Some(r)) if r.spec == d.spec && r.source == d.source && r.node == self.node => {}
                (Some(d), _) => {
                    tracing::warn!(service = %name, origin = %e.origin, "an entry in this node's name differs from what it declared: writing it again");
                    self.count("altered");
                    self.write(d.spec.clone(), d.source, self.health_of(&d.spec))?;
                }
                (None, _) => {
                    tracing::warn!(service = %name, origin = %e.origin, key = %e.key, "an entry in this node's name that it never declared: deleting it");
                    self.count("foreign");
                    self.store.delete(&e.key)?;
                }
            }
        }
        for d in declared.values().filter(|d| !seen.contains(&d.spec.name)) {
            tracing::warn!(service = %d.spec.name, "this node's declaration is missing from the store: writing it again");
            self.count("missing");
            self.write(d.spec.clone(), d.source, self.health_of(&d.spec))?;
        }
        Ok(())
    }

    fn count(&self, kind: &'static str) {
        self.metrics.corrections.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Keeps one check task per local instance with a check, following the snapshots,
/// until the drain starts.
pub async fn run(catalog: Catalog, vips: Arc<vip::Vips>, mut snapshots: SnapshotRx, drain: DrainWatcher) {
    let mut running: HashMap<String, (ServiceSpec, tokio::task::AbortHandle)> = HashMap::new();
    let mut tasks = JoinSet::new();
    // Allocated names no longer wanted, since when: freed after VIP_GRACE.
    let mut unused_since: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut warned_over: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let (names, over) = vip_names(&snap, MAX_VIP_NAMES_PER_NODE);
        for node in over {
            if warned_over.insert(node.clone()) {
                tracing::warn!(%node, limit = MAX_VIP_NAMES_PER_NODE, "a node's services alone want more virtual IPs than one node may take; the rest get none");
            }
        }
        let wanted: std::collections::HashSet<String> = names.iter().cloned().collect();
        let now = tokio::time::Instant::now();
        unused_since.retain(|n, _| !wanted.contains(n));
        let mut free = Vec::new();
        for name in vips.all().keys().filter(|n| !wanted.contains(*n)) {
            let since = *unused_since.entry(name.clone()).or_insert(now);
            if now.duration_since(since) >= VIP_GRACE {
                free.push(name.clone());
            }
        }
        vips.still_wanted(&wanted);
        if !free.is_empty() {
            let v = vips.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for name in free {
                    match v.release(&name) {
                        Ok(()) => tracing::info!(%name, "virtual IP freed: the name is gone from the mesh"),
                        Err(e) => tracing::warn!(%name, error = %e, "cannot free a virtual IP"),
                    }
                }
            })
            .await;
        }
        let missing: Vec<String> = names.into_iter().filter(|n| vips.get(n).is_none()).collect();
        if !missing.is_empty() {
            let vips = vips.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for name in missing {
                    match vips.ensure(&name) {
                        // Logged once per name by the allocator, and shown in status.
                        Ok(_) | Err(vip::VipError::Exhausted(_)) => {}
                        Err(e) => tracing::error!(%name, error = %e, "cannot allocate a virtual IP"),
                    }
                }
            })
            .await;
        }
        // Entries in this node's name that it did not write as they stand: put right.
        let fix = catalog.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || fix.reconcile()).await {
            tracing::warn!(error = %e, "cannot put this node's entries right");
        }
        let wanted: HashMap<String, ServiceSpec> = snap
            .services
            .values()
            .flat_map(|s| &s.instances)
            .filter(|i| i.node == catalog.node && i.record.spec.check.is_some())
            .map(|i| (i.record.spec.name.clone(), i.record.spec.clone()))
            .collect();
        running.retain(|name, (spec, handle)| {
            let keep = wanted.get(name) == Some(spec);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (name, spec) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(name) {
                let handle = tasks.spawn(check_loop(catalog.clone(), spec.clone()));
                slot.insert((spec, handle));
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            // Grace periods end without a snapshot change.
            _ = tokio::time::sleep(VIP_GRACE / 10), if !unused_since.is_empty() => {}
            _ = drain.signaled() => break,
        }
    }
    tasks.shutdown().await;
}

/// How long a virtual IP is kept after its name left the mesh (a service that comes
/// back within it, after a restart or a redeploy, keeps its address).
pub const VIP_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

async fn check_loop(catalog: Catalog, spec: ServiceSpec) {
    let Some(check) = spec.check.clone() else { return };
    let mut state = health::Health::default();
    let mut tick = tokio::time::interval(health::interval(&check));
    loop {
        tick.tick().await;
        let result = health::probe(&check).await;
        let label = if result.is_ok() { "pass" } else { "fail" };
        catalog.metrics.checks.get_or_create(&CheckLabels { service: spec.name.clone(), result: label }).inc();
        if let Some(healthy) = state.observe(result.is_ok(), check.rise, check.fall) {
            let to = if healthy { "healthy" } else { "unhealthy" };
            catalog.metrics.transitions.get_or_create(&CheckLabels { service: spec.name.clone(), result: to }).inc();
            match &result {
                Ok(()) => tracing::info!(service = %spec.name, "health changed: healthy"),
                Err(why) => tracing::warn!(service = %spec.name, reason = %why, "health changed: unhealthy"),
            }
            let catalog = catalog.clone();
            let spec = spec.clone();
            let _ = tokio::task::spawn_blocking(move || catalog.set_health(&spec, healthy)).await;
        }
    }
}

/// The most virtual IP names one node's services alone may take on every host (a name
/// that other nodes' instances share is not counted against it): one member that
/// registers without end must not fill every host's `vip_range`.
pub const MAX_VIP_NAMES_PER_NODE: usize = 1024;

/// The names that get a virtual IP: every service, `VERSION.SERVICE` for each value of
/// its instances' `version` label, and each route subset; at most `per_node` of them
/// provided by one node alone. Also the nodes that were over that.
pub fn vip_names(snap: &Snapshot, per_node: usize) -> (Vec<String>, Vec<String>) {
    let mut by_name: std::collections::BTreeMap<String, std::collections::BTreeSet<&str>> = Default::default();
    for s in snap.services.values() {
        for i in &s.instances {
            by_name.entry(s.name.clone()).or_default().insert(i.node.as_str());
            if let Some(v) = i.labels.get("version") {
                by_name.entry(format!("{v}.{}", s.name)).or_default().insert(i.node.as_str());
            }
        }
    }
    let mut alone: HashMap<&str, usize> = HashMap::new();
    let mut over: std::collections::BTreeSet<String> = Default::default();
    let mut names: Vec<String> = Vec::new();
    for (name, nodes) in &by_name {
        if let (1, Some(node)) = (nodes.len(), nodes.first()) {
            let n = alone.entry(node).or_insert(0);
            *n += 1;
            if *n > per_node {
                over.insert((*node).to_owned());
                continue;
            }
        }
        names.push(name.clone());
    }
    for route in snap.routes().values() {
        names.extend(route.spec.subsets.keys().map(|s| format!("{s}.{}", route.spec.service)));
    }
    names.sort();
    names.dedup();
    (names, over.into_iter().collect())
}

/// The number of services known, for `/v1/status`.
pub fn count(snap: &Snapshot) -> u64 {
    snap.services.len() as u64
}

/// Shared by the admin API.
pub type Handle = Arc<Catalog>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Snapshot;
    use crate::store::Metrics as StoreMetrics;

    fn catalog(dir: &std::path::Path) -> (Catalog, Publisher) {
        let publisher = Publisher::new(Snapshot::empty("a"));
        let store = Store::open(
            &dir.join("store"),
            "a",
            std::sync::Arc::new(crate::store::seal::Unsealed),
            StoreMetrics::new(),
            publisher.store_sink(),
        )
        .expect("store");
        let catalog = Catalog::new(store, "a").with_publisher(publisher.clone()).expect("catalog");
        (catalog, publisher)
    }

    fn spec(text: &str) -> ServiceSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn entries_in_this_nodes_name_are_put_back_as_declared_with_their_checks_health() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (catalog, publisher) = catalog(tmp.path());
        let web = spec("name = \"web\"\nport = 80\ncheck = { tcp = \"127.0.0.1:80\" }\n");
        catalog.register(web.clone()).expect("register");
        catalog.set_health(&web, true).expect("health");
        let key = InstanceRecord::key("a", "web");

        // Someone deletes it, and someone plants another in this node's name.
        catalog.store.delete(&key).expect("delete");
        let forged = InstanceRecord {
            node: "a".into(),
            spec: spec("name = \"db\"\nport = 5432\n"),
            healthy: true,
            source: Source::Api,
        };
        catalog.store.put(&InstanceRecord::key("a", "db"), forged.encode().expect("encode")).expect("put");
        assert!(!publisher.current().services.contains_key("db"), "the read model leaves out what it did not declare");

        catalog.reconcile().expect("reconcile");
        let back = catalog.record("web").expect("web is written again");
        assert!(back.healthy && back.spec == web, "with its check's last health, not reset to unhealthy");
        assert!(catalog.record("db").is_none(), "the foreign entry is deleted");
        assert_eq!(publisher.current().services.keys().collect::<Vec<_>>(), ["web"]);
        catalog.reconcile().expect("again");
        assert_eq!(catalog.metrics.corrections.get_or_create(&KindLabel { kind: "missing" }).get(), 1, "once");
    }

    #[test]
    fn one_nodes_own_names_take_a_bounded_share_of_virtual_ips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (catalog, publisher) = catalog(tmp.path());
        let put = |node: &str, name: &str| {
            let record = InstanceRecord {
                node: node.into(),
                spec: spec(&format!("name = \"{name}\"\nport = 80\n")),
                healthy: true,
                source: Source::Api,
            };
            catalog.store.put(&InstanceRecord::key(node, name), record.encode().expect("encode")).expect("put");
        };
        for i in 0..5 {
            put("x", &format!("x{i}"));
        }
        put("x", "web");
        put("y", "web");
        put("y", "db");
        let (names, over) = vip_names(&publisher.current(), 3);
        assert_eq!(over, vec!["x".to_owned()], "x alone wants 5");
        assert_eq!(names, vec!["db", "web", "x0", "x1", "x2"], "x gets 3 of its own; the shared name is not counted");
    }
}
