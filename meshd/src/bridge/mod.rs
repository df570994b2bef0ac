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

pub mod import;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
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
    let mut dirty_since: Option<tokio::time::Instant> = None;
    let mut last_event = tokio::time::Instant::now();
    tracing::info!(%cluster, %selector, "bridge: watching Services and EndpointSlices");
    loop {
        let write_at = dirty_since.map(|first| (last_event + QUIET).min(first + MAX_DELAY));
        tokio::select! {
            event = services_events.next() => match event {
                Some(Ok(e)) => if services.apply(e, &metrics) { (dirty_since, last_event) = (dirty_since.or(Some(tokio::time::Instant::now())), tokio::time::Instant::now()) },
                Some(Err(e)) => tracing::warn!(error = %e, "bridge: watching Services (retrying with backoff)"),
                None => return,
            },
            event = slices_events.next() => match event {
                Some(Ok(e)) => if slices.apply(e, &metrics) { (dirty_since, last_event) = (dirty_since.or(Some(tokio::time::Instant::now())), tokio::time::Instant::now()) },
                Some(Err(e)) => tracing::warn!(error = %e, "bridge: watching EndpointSlices (retrying with backoff)"),
                None => return,
            },
            () = sleep_until(write_at) => {
                dirty_since = None;
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
