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
//! Must not: act for a service another node declared (check it, write its health).

pub mod health;
pub mod vip;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_proto::api::{self, MemberState};
use mesh_proto::service::ServiceSpec;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::drain::DrainWatcher;
use crate::state::{Snapshot, SnapshotRx};
use crate::store::{Store, StoreError};

/// Where a local service came from: config services are re-declared at every start
/// (and removed when gone from the config); registered ones persist until deregistered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Api,
}

/// `node/NODE/service/NAME`: one instance, owned by its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub node: String,
    pub spec: ServiceSpec,
    /// The owner's view of its health (checks run there only).
    pub healthy: bool,
    pub source: Source,
}

pub fn key(node: &str, service: &str) -> String {
    format!("node/{node}/service/{service}")
}

/// Every instance in a snapshot, but those of removed nodes: a removed node leaves
/// listings, routing and DNS at once.
pub fn instances(snap: &Snapshot) -> Vec<Instance> {
    snap.store
        .prefix("node/")
        .filter(|e| e.key.contains("/service/"))
        .filter_map(|e| serde_json::from_slice::<Instance>(&e.value).ok())
        .filter(|i| !snap.removed.contains(&i.node))
        .collect()
}

/// `GET /v1/services`: services by name, each with its instances across the mesh.
pub fn services(snap: &Snapshot) -> Vec<api::Service> {
    let alive: HashMap<&str, MemberState> = snap.members.iter().map(|m| (m.name.as_str(), m.state)).collect();
    let mut by_name: BTreeMap<String, Vec<api::Instance>> = BTreeMap::new();
    for i in instances(snap) {
        let node_alive = matches!(alive.get(i.node.as_str()), Some(MemberState::Alive | MemberState::Suspect));
        by_name.entry(i.spec.name.clone()).or_default().push(api::Instance {
            node: i.node.clone(),
            addr: i.spec.address.to_string(),
            port: i.spec.port,
            protocol: i.spec.protocol.as_str().to_owned(),
            labels: i.spec.labels.clone(),
            healthy: i.healthy && node_alive,
        });
    }
    by_name
        .into_iter()
        .map(|(name, mut instances)| {
            instances.sort_by(|a, b| (&a.node, a.port).cmp(&(&b.node, b.port)));
            api::Service { name, vip: None, instances }
        })
        .collect()
}

/// Health check metrics, under `mesh_health_`.
#[derive(Clone, Default)]
pub struct Metrics {
    checks: prometheus_client::metrics::family::Family<CheckLabels, prometheus_client::metrics::counter::Counter>,
    transitions: prometheus_client::metrics::family::Family<CheckLabels, prometheus_client::metrics::counter::Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CheckLabels {
    service: String,
    result: &'static str,
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
        m
    }
}

/// Registering and deregistering this node's services. Blocking (store writes).
#[derive(Clone)]
pub struct Catalog {
    store: Store,
    node: String,
    metrics: Metrics,
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
        Catalog { store, node: node.to_owned(), metrics: Metrics::default() }
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Catalog {
        self.metrics = metrics;
        self
    }

    fn own(&self) -> Vec<Instance> {
        let prefix = format!("node/{}/service/", self.node);
        self.store.view().prefix(&prefix).filter_map(|e| serde_json::from_slice(&e.value).ok()).collect()
    }

    fn write(&self, spec: ServiceSpec, source: Source, healthy: bool) -> Result<(), StoreError> {
        let record = Instance { node: self.node.clone(), healthy, spec, source };
        self.store.put(&key(&self.node, &record.spec.name), serde_json::to_vec(&record).unwrap_or_default())?;
        Ok(())
    }

    /// At start: declares the config's services (replacing what they were) and removes
    /// config services that are no longer in the config. Registered ones stay.
    pub fn declare_config(&self, services: &[ServiceSpec]) -> Result<(), StoreError> {
        for old in self.own() {
            if old.source == Source::Config && !services.iter().any(|s| s.name == old.spec.name) {
                self.store.delete(&key(&self.node, &old.spec.name))?;
            }
        }
        for spec in services {
            let current = self.own().into_iter().find(|i| i.spec.name == spec.name);
            // Unchanged: keep its health rather than restart from unhealthy.
            if current.as_ref().is_some_and(|c| c.spec == *spec && c.source == Source::Config) {
                continue;
            }
            self.write(spec.clone(), Source::Config, spec.check.is_none())?;
        }
        Ok(())
    }

    /// `meshctl service register`: a name that exists is replaced.
    pub fn register(&self, spec: ServiceSpec) -> Result<(), CatalogError> {
        if let Some(c) = self.own().into_iter().find(|i| i.spec.name == spec.name) {
            if c.source == Source::Config {
                return Err(CatalogError::FromConfig(spec.name));
            }
        }
        let healthy = spec.check.is_none();
        Ok(self.write(spec, Source::Api, healthy)?)
    }

    /// `meshctl service deregister NAME`.
    pub fn deregister(&self, name: &str) -> Result<(), CatalogError> {
        match self.own().into_iter().find(|i| i.spec.name == name) {
            None => Err(CatalogError::Unknown(name.to_owned())),
            Some(i) if i.source == Source::Config => Err(CatalogError::FromConfig(name.to_owned())),
            Some(_) => {
                self.store.delete(&key(&self.node, name))?;
                Ok(())
            }
        }
    }

    /// Records a health change of a local instance (if it still is the same instance).
    fn set_health(&self, spec: &ServiceSpec, healthy: bool) -> Result<(), StoreError> {
        match self.own().into_iter().find(|i| i.spec == *spec) {
            Some(i) if i.healthy != healthy => self.write(i.spec, i.source, healthy),
            _ => Ok(()),
        }
    }
}

/// Keeps one check task per local instance with a check, following the snapshots,
/// until the drain starts.
pub async fn run(catalog: Catalog, vips: Arc<vip::Vips>, mut snapshots: SnapshotRx, drain: DrainWatcher) {
    let mut running: HashMap<String, (ServiceSpec, tokio::task::AbortHandle)> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let missing: Vec<String> = vip_names(&snap).into_iter().filter(|n| vips.get(n).is_none()).collect();
        if !missing.is_empty() {
            let vips = vips.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for name in missing {
                    if let Err(e) = vips.ensure(&name) {
                        tracing::error!(%name, error = %e, "cannot allocate a virtual IP");
                    }
                }
            })
            .await;
        }
        let wanted: HashMap<String, ServiceSpec> = instances(&snap)
            .into_iter()
            .filter(|i| i.node == catalog.node && i.spec.check.is_some())
            .map(|i| (i.spec.name.clone(), i.spec))
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
            _ = drain.signaled() => break,
        }
    }
    tasks.shutdown().await;
}

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

/// The names that get a virtual IP: every service, and `VERSION.SERVICE` for each value
/// of its instances' `version` label.
pub fn vip_names(snap: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for i in instances(snap) {
        names.push(i.spec.name.clone());
        if let Some(v) = i.spec.labels.get("version") {
            names.push(format!("{v}.{}", i.spec.name));
        }
    }
    for route in crate::routes::specs(snap) {
        names.extend(route.subsets.keys().map(|s| format!("{s}.{}", route.service)));
    }
    names.sort();
    names.dedup();
    names
}

/// The number of services known, for `/v1/status`.
pub fn count(snap: &Snapshot) -> u64 {
    let mut names: Vec<String> = instances(snap).into_iter().map(|i| i.spec.name).collect();
    names.sort();
    names.dedup();
    names.len() as u64
}

/// Shared by the admin API.
pub type Handle = Arc<Catalog>;
