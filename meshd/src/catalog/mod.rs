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

use std::collections::HashMap;
use std::sync::Arc;

use mesh_proto::api;
use mesh_proto::service::ServiceSpec;
use tokio::task::JoinSet;

use crate::drain::DrainWatcher;
pub use crate::state::model::{InstanceRecord, Source};
use crate::state::{Snapshot, SnapshotRx};
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

    fn own(&self) -> Vec<InstanceRecord> {
        let prefix = InstanceRecord::key(&self.node, "");
        self.store.view().prefix(&prefix).filter_map(|e| InstanceRecord::decode(&e.value)).collect()
    }

    fn write(&self, spec: ServiceSpec, source: Source, healthy: bool) -> Result<(), StoreError> {
        let record = InstanceRecord { node: self.node.clone(), healthy, spec, source };
        let value = record.encode().map_err(|e| StoreError::Encode(e.to_string()))?;
        self.store.put(&InstanceRecord::key(&self.node, &record.spec.name), value)?;
        Ok(())
    }

    /// At start: declares the config's services (replacing what they were) and removes
    /// config services that are no longer in the config. Registered ones stay.
    pub fn declare_config(&self, services: &[ServiceSpec]) -> Result<(), StoreError> {
        for old in self.own() {
            if old.source == Source::Config && !services.iter().any(|s| s.name == old.spec.name) {
                self.store.delete(&InstanceRecord::key(&self.node, &old.spec.name))?;
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
                self.store.delete(&InstanceRecord::key(&self.node, name))?;
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
    for s in snap.services.values() {
        names.push(s.name.clone());
        names.extend(s.instances.iter().filter_map(|i| i.labels.get("version")).map(|v| format!("{v}.{}", s.name)));
    }
    for route in snap.routes().values() {
        names.extend(route.spec.subsets.keys().map(|s| format!("{s}.{}", route.spec.service)));
    }
    names.sort();
    names.dedup();
    names
}

/// The number of services known, for `/v1/status`.
pub fn count(snap: &Snapshot) -> u64 {
    snap.services.len() as u64
}

/// Shared by the admin API.
pub type Handle = Arc<Catalog>;
