//! The Kubernetes bridge (`[bridge]` in meshd.toml): this node imports a cluster's
//! Services into the mesh. Nothing else in meshd depends on this module; it runs only
//! when `[bridge]` is set.
//!
//! Import: Services selected by `import_selector` (and their EndpointSlices) are watched
//! with kube-rs's watcher (relists on 410 Gone and errors, with backoff). Each becomes a
//! mesh service with one instance on this node, a gateway: the proxy spreads the
//! connections that reach it over the Service's ready endpoints (draining ones when no
//! endpoint is ready). Changes are coalesced ([`QUIET`] of calm, at most [`MAX_DELAY`])
//! and written as a diff ([`plan`]); a restart writes nothing; nothing is removed before
//! both watchers finished their first full list; a mass delete is held and logged until
//! a new full list confirms it ([`plan::Breaker`]).
//!
//! Must not: write anything but this node's own declarations (those labelled with the
//! cluster) and the proxy's gateway table.

pub mod export;
pub mod import;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::catalog::Catalog;
use crate::config::BridgeConfig;
use crate::drain::DrainWatcher;
use crate::proxy::{Gateway, Proxy};

use import::{EndpointState, Imported};
use plan::{Breaker, Verdict};

/// Changes are written once the watchers have been calm this long...
pub const QUIET: Duration = Duration::from_secs(1);
/// ...or this long after the first unwritten change, whichever comes first.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Bridge metrics, under `mesh_bridge_`.
#[derive(Clone, Default)]
pub struct Metrics {
    writes: Family<KindLabel, Counter>,
    events: Family<KindLabel, Counter>,
    imported: Gauge,
    endpoints: Gauge,
    held: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Metrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("bridge");
        r.register("writes", "Store writes by the bridge, by kind (declare, health, remove)", m.writes.clone());
        r.register("watch_events", "Watch events from the API server, by kind", m.events.clone());
        r.register("imported_services", "Kubernetes Services imported into the mesh", m.imported.clone());
        r.register("endpoints", "Endpoints behind the imported Services", m.endpoints.clone());
        r.register("held_deletes", "Mass deletes held until a new full list confirmed them", m.held.clone());
        m
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("kubeconfig {path}: {detail}")]
    Kubeconfig { path: String, detail: String },
    #[error("no kubeconfig set and no in-cluster credentials: {0}")]
    InCluster(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// A client for the cluster: from `kubeconfig` when set, else in-cluster credentials.
pub async fn client(config: &BridgeConfig) -> Result<Client, BridgeError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let err = |detail: String| BridgeError::Kubeconfig { path: path.display().to_string(), detail };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| BridgeError::InCluster(e.to_string()))?,
    };
    Client::try_from(kube_config).map_err(|e| BridgeError::Client(e.to_string()))
}

/// What one watcher knows: the objects of its last full list and the events since, and
/// a full list in progress.
struct Listing<K> {
    objects: BTreeMap<(String, String), K>,
    relisting: Option<BTreeMap<(String, String), K>>,
    /// Full lists completed.
    lists: u64,
}

impl<K: kube::Resource> Listing<K> {
    fn new() -> Listing<K> {
        Listing { objects: BTreeMap::new(), relisting: None, lists: 0 }
    }

    fn key(k: &K) -> (String, String) {
        let m = k.meta();
        (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
    }

    /// Applies one event; whether the view changed.
    fn apply(&mut self, event: watcher::Event<K>, metrics: &Metrics) -> bool {
        let count = |kind| metrics.events.get_or_create(&KindLabel { kind }).inc();
        match event {
            watcher::Event::Init => {
                count("init");
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(k) => {
                count("init_apply");
                self.relisting.get_or_insert_with(BTreeMap::new).insert(Self::key(&k), k);
                false
            }
            watcher::Event::InitDone => {
                count("init_done");
                // Objects missing from the new list were deleted while nobody watched.
                self.objects = self.relisting.take().unwrap_or_default();
                self.lists += 1;
                true
            }
            watcher::Event::Apply(k) => {
                count("apply");
                self.objects.insert(Self::key(&k), k);
                true
            }
            watcher::Event::Delete(k) => {
                count("delete");
                self.objects.remove(&Self::key(&k));
                true
            }
        }
    }
}

type Events<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

fn watch<K>(api: Api<K>, labels: &str) -> Events<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    // Bookmarks keep the resume point fresh; a 410 Gone relists; errors back off.
    watcher(api, watcher::Config::default().labels(labels)).default_backoff().boxed()
}

/// Runs the import until the drain.
pub async fn run(
    config: BridgeConfig,
    client: Client,
    catalog: Catalog,
    proxy: Arc<Proxy>,
    metrics: Metrics,
    drain: DrainWatcher,
) {
    let services_api: Api<Service> = Api::all(client.clone());
    let slices_api: Api<EndpointSlice> = Api::all(client);
    let (selector, cluster) = (config.import_selector.clone(), config.cluster.clone());
    let slice_selector = import::SERVICE_NAME_LABEL;
    let mut services_events = watch(services_api.clone(), &selector);
    let mut slices_events = watch(slices_api.clone(), slice_selector);
    let mut services = Listing::<Service>::new();
    let mut slices = Listing::<EndpointSlice>::new();
    let mut breaker = Breaker::default();
    let mut applied: Option<BTreeMap<String, Imported>> = None;
    // Full lists of both watchers completed when the breaker last held.
    let mut pending = Coalesce::default();
    tracing::info!(%cluster, %selector, "bridge: watching Services and EndpointSlices");
    loop {
        tokio::select! {
            event = services_events.next() => match event {
                Some(Ok(e)) => if services.apply(e, &metrics) { pending.touch(tokio::time::Instant::now()) },
                Some(Err(e)) => tracing::warn!(error = %e, "bridge: watching Services (retrying with backoff)"),
                None => return,
            },
            event = slices_events.next() => match event {
                Some(Ok(e)) => if slices.apply(e, &metrics) { pending.touch(tokio::time::Instant::now()) },
                Some(Err(e)) => tracing::warn!(error = %e, "bridge: watching EndpointSlices (retrying with backoff)"),
                None => return,
            },
            () = sleep_until(pending.due()) => {
                pending = Coalesce::default();
                let listed = services.lists > 0 && slices.lists > 0;
                let svcs: Vec<Service> = services.objects.values().cloned().collect();
                let sls: Vec<EndpointSlice> = slices.objects.values().cloned().collect();
                let (desired, skipped) = import::import(&svcs, &sls);
                for s in &skipped {
                    tracing::warn!(service = %s, "bridge: not imported");
                }
                let before = applied.as_ref().map_or(0, plan::endpoint_count);
                let after = plan::endpoint_count(&desired);
                let generation = services.lists.min(slices.lists);
                if breaker.check(before, after, generation) == Verdict::Hold {
                    metrics.held.inc();
                    tracing::warn!(before, after, "bridge: more than half of the imported endpoints would go at once; held until a new full list from the API server confirms it");
                    // A fresh list from both watchers.
                    services_events = watch(services_api.clone(), &selector);
                    slices_events = watch(slices_api.clone(), slice_selector);
                    continue;
                }
                apply(&catalog, &proxy, &cluster, &desired, listed, &metrics).await;
                applied = Some(desired);
            }
            _ = drain.signaled() => return,
        }
    }
}

/// When to write a burst of changes: after [`QUIET`] without another, at most
/// [`MAX_DELAY`] after the first.
#[derive(Debug, Default, Clone, Copy)]
struct Coalesce {
    /// The first unwritten change and the last one.
    changes: Option<(tokio::time::Instant, tokio::time::Instant)>,
}

impl Coalesce {
    fn touch(&mut self, now: tokio::time::Instant) {
        let first = self.changes.map_or(now, |(first, _)| first);
        self.changes = Some((first, now));
    }

    /// When to write, if anything waits.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.changes.map(|(first, last)| (last + QUIET).min(first + MAX_DELAY))
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes the diff between `desired` and this node's bridged declarations, and gives the
/// proxy the endpoints.
async fn apply(
    catalog: &Catalog,
    proxy: &Proxy,
    cluster: &str,
    desired: &BTreeMap<String, Imported>,
    listed: bool,
    metrics: &Metrics,
) {
    // Endpoints first: a newly declared service has somewhere to go once routed to.
    let gateways: HashMap<String, Arc<Gateway>> = desired
        .iter()
        .map(|(name, i)| {
            let pick = |want| i.endpoints.iter().filter(|(_, s)| *s == want).map(|(a, _)| *a).collect();
            (name.clone(), Arc::new(Gateway::new(pick(EndpointState::Ready), pick(EndpointState::Draining))))
        })
        .collect();
    proxy.set_gateways(gateways);
    metrics.imported.set(desired.len() as i64);
    metrics.endpoints.set(plan::endpoint_count(desired) as i64);

    let (catalog, cluster, desired) = (catalog.clone(), cluster.to_owned(), desired.clone());
    let metrics = metrics.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<plan::Plan, String> {
        let current = catalog.declarations(|s| plan::owned(s, &cluster)).map_err(|e| e.to_string())?;
        let p = plan::plan(&desired, &current, &cluster, listed);
        for spec in &p.declare {
            let name = spec.name.clone();
            catalog.register(spec.clone()).map_err(|e| format!("{name}: {e}"))?;
            metrics.writes.get_or_create(&KindLabel { kind: "declare" }).inc();
        }
        for (name, healthy) in &p.health {
            catalog.set_reported_health(name, *healthy).map_err(|e| format!("{name}: {e}"))?;
            metrics.writes.get_or_create(&KindLabel { kind: "health" }).inc();
        }
        for name in &p.remove {
            catalog.deregister(name).map_err(|e| format!("{name}: {e}"))?;
            metrics.writes.get_or_create(&KindLabel { kind: "remove" }).inc();
        }
        Ok(p)
    })
    .await;
    match written {
        Ok(Ok(p)) if p.is_empty() => tracing::debug!("bridge: nothing to write"),
        Ok(Ok(p)) => tracing::info!(
            declared = p.declare.len(),
            health = p.health.len(),
            removed = p.remove.len(),
            "bridge: wrote the changes"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "bridge: cannot write the changes (tried again at the next change)"),
        Err(e) => tracing::error!(error = %e, "bridge: cannot write the changes"),
    }
}

/// The listener ports exported services get on a bridge, by default.
pub const EXPORT_PORTS: std::ops::RangeInclusive<u16> = 20000..=20999;

/// What export needs.
pub struct ExportInputs {
    pub config: BridgeConfig,
    pub client: Client,
    /// This bridge's mesh node name (it names its EndpointSlices).
    pub node: String,
    /// The address pods reach this bridge on (its advertise address: with host networking,
    /// the node's).
    pub address: std::net::IpAddr,
    pub proxy: Arc<Proxy>,
    pub snapshots: crate::state::SnapshotRx,
    pub metrics: Metrics,
}

/// The objects of one kind that export keeps in the cluster: what it applied, and what
/// an earlier run left (deleted once no longer wanted).
struct Synced<K> {
    api: Api<K>,
    /// For the log: `Service`, `EndpointSlice`.
    what: &'static str,
    applied: BTreeMap<String, K>,
    left: BTreeSet<String>,
}

impl<K> Synced<K>
where
    K: kube::Resource + Clone + PartialEq + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    fn new(api: Api<K>, what: &'static str) -> Synced<K> {
        Synced { api, what, applied: BTreeMap::new(), left: BTreeSet::new() }
    }

    /// Learns what an earlier run left (objects with `labels`).
    async fn list(&mut self, labels: &str) -> Result<(), kube::Error> {
        let found = self.api.list(&kube::api::ListParams::default().labels(labels)).await?;
        self.left = found.items.iter().filter_map(|o| o.meta().name.clone()).collect();
        Ok(())
    }

    /// Applies `object` unless it is what was applied last; whether it is in place.
    async fn apply(&mut self, name: String, object: K, metrics: &Metrics) -> bool {
        if self.applied.get(&name) == Some(&object) {
            return true;
        }
        let params = kube::api::PatchParams::apply("meshd-bridge").force();
        match self.api.patch(&name, &params, &kube::api::Patch::Apply(&object)).await {
            Ok(_) => {
                metrics.writes.get_or_create(&KindLabel { kind: "export" }).inc();
                self.applied.insert(name, object);
                true
            }
            Err(e) => {
                tracing::warn!(kind = self.what, %name, error = %e, "bridge: cannot write an exported object");
                false
            }
        }
    }

    /// Deletes what was applied or left and is not in `wanted`; whether all went.
    async fn delete_unwanted(&mut self, wanted: &BTreeSet<String>, metrics: &Metrics) -> bool {
        let gone: BTreeSet<String> =
            self.applied.keys().chain(self.left.iter()).filter(|n| !wanted.contains(*n)).cloned().collect();
        let mut all = true;
        for name in gone {
            match self.api.delete(&name, &kube::api::DeleteParams::default()).await {
                Err(e) if !not_found(&e) => {
                    tracing::warn!(kind = self.what, %name, error = %e, "bridge: cannot delete an exported object");
                    all = false;
                }
                _ => {
                    self.applied.remove(&name);
                    self.left.remove(&name);
                    metrics.writes.get_or_create(&KindLabel { kind: "unexport" }).inc();
                }
            }
        }
        all
    }
}

/// Runs the export until the drain: a listener per exported service and port (which
/// leads into the mesh like a virtual IP), the Services and this replica's
/// EndpointSlices in `export_namespace`, stale ones (carrying this cluster's label)
/// deleted. Failed writes are tried again after [`MAX_DELAY`].
pub async fn export(inputs: ExportInputs, drain: DrainWatcher) {
    let ExportInputs { config, client, node, address, proxy, mut snapshots, metrics } = inputs;
    let ns = config.export_namespace.clone();
    let cluster = config.cluster.clone();
    let mut services = Synced::<Service>::new(Api::namespaced(client.clone(), &ns), "Service");
    let mut slices = Synced::<EndpointSlice>::new(Api::namespaced(client, &ns), "EndpointSlice");
    let mut listeners: BTreeMap<(String, u16), (u16, tokio::task::AbortHandle)> = BTreeMap::new();
    let mut given: BTreeMap<(String, u16), u16> = BTreeMap::new();
    let mut listed = false;
    loop {
        if !listed {
            let owner = format!("{}={cluster}", export::OWNER_LABEL);
            let mine = format!("{owner},{}={node}", export::NODE_LABEL);
            match (services.list(&owner).await, slices.list(&mine).await) {
                (Ok(()), Ok(())) => listed = true,
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, namespace = %ns, "bridge: cannot list the exported objects (trying again)")
                }
            }
        }
        let desired = export::exported(&crate::catalog::services(&snapshots.borrow_and_update()), &cluster);
        given = export::allocate(&desired, &given, EXPORT_PORTS);
        // Listeners: one per exported (service, port), leading into the mesh.
        listeners.retain(|key, (port, handle)| {
            let keep = given.get(key) == Some(port);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, port) in &given {
            if listeners.contains_key(key) {
                continue;
            }
            match tokio::net::TcpListener::bind((address, *port)).await {
                Ok(l) => {
                    let dest = crate::proxy::Destination { name: key.0.clone(), source_service: None };
                    let task = tokio::spawn(crate::proxy::outbound::listen(proxy.clone(), l, dest, drain.clone()));
                    listeners.insert(key.clone(), (*port, task.abort_handle()));
                }
                Err(e) => {
                    tracing::warn!(service = %key.0, port, error = %e, "bridge: cannot listen for an exported service")
                }
            }
        }
        let mut in_place = listed;
        if listed {
            for e in desired.values() {
                in_place &= services.apply(e.name.clone(), export::service(e, &cluster, &ns), &metrics).await;
                let slice = export::slice(e, &cluster, &ns, &node, address, &given);
                in_place &= slices.apply(export::slice_name(&e.name, &node), slice, &metrics).await;
            }
            let wanted: BTreeSet<String> = desired.keys().cloned().collect();
            in_place &= services.delete_unwanted(&wanted, &metrics).await;
            let wanted: BTreeSet<String> = desired.keys().map(|n| export::slice_name(n, &node)).collect();
            in_place &= slices.delete_unwanted(&wanted, &metrics).await;
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { return }
                // Coalesce a burst of changes.
                tokio::select! {
                    _ = tokio::time::sleep(QUIET) => {}
                    _ = drain.signaled() => return,
                }
            }
            _ = tokio::time::sleep(MAX_DELAY), if !in_place => {}
            _ = drain.signaled() => return,
        }
    }
}

/// Whether the API server answered 404 (already gone).
fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// `meshd bridge purge --cluster X`: deletes every Service and EndpointSlice in
/// `namespace` that a bridge of cluster X wrote (and nothing else). How many of each.
pub async fn purge(client: Client, namespace: &str, cluster: &str) -> Result<(usize, usize), kube::Error> {
    use kube::api::{DeleteParams, ListParams};
    let owner = format!("{}={cluster}", export::OWNER_LABEL);
    let services_api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let slices_api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let mut counts = (0, 0);
    for s in services_api.list(&ListParams::default().labels(&owner)).await?.items {
        if let Some(name) = s.metadata.name {
            services_api.delete(&name, &DeleteParams::default()).await?;
            counts.0 += 1;
        }
    }
    for s in slices_api.list(&ListParams::default().labels(&owner)).await?.items {
        if let Some(name) = s.metadata.name {
            slices_api.delete(&name, &DeleteParams::default()).await?;
            counts.1 += 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_written_after_a_quiet_second_or_five_seconds_after_the_first() {
        let t0 = tokio::time::Instant::now();
        let mut c = Coalesce::default();
        assert_eq!(c.due(), None, "nothing waits");
        c.touch(t0);
        assert_eq!(c.due(), Some(t0 + QUIET));
        // A change every half second keeps it waiting, but not past MAX_DELAY.
        for i in 1..=20u32 {
            c.touch(t0 + Duration::from_millis(500) * i);
        }
        assert_eq!(c.due(), Some(t0 + MAX_DELAY));
    }
}
