//! The Prometheus registry. Every module adds its metrics under the `mesh_` prefix
//! ([`mesh`]); the traffic metrics that Istio has names for (`istio_*`) sit at the root,
//! so that Istio's dashboards and queries work unchanged. Each module defines one metrics
//! struct and registers it once at start (`Registry::sub_registry_with_prefix`);
//! `/metrics` encodes the whole registry.
//!
//! Must not: hold metrics of its own beyond the build info: each module owns its series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A new root registry with `mesh_build_info` in it.
pub fn registry() -> Registry {
    let mut root = Registry::default();
    let registry = mesh(&mut root);
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info.get_or_create(&BuildLabels { version: mesh_proto::VERSION.to_owned() }).set(1);
    registry.register("build_info", "meshd's version, as a label; always 1", build_info);
    root
}

/// The part of `root` under the `mesh_` prefix, where modules register their metrics.
pub fn mesh(root: &mut Registry) -> &mut Registry {
    root.sub_registry_with_prefix("mesh")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
