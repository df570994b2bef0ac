//! The Prometheus registry every module adds its metrics to, under the `mesh_` prefix.
//! Each module defines one metrics struct and registers it once at start
//! (`Registry::sub_registry_with_prefix`); `/metrics` encodes the whole registry.
//!
//! Must not: hold metrics of its own beyond the build info: each module owns its series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A new registry with `mesh_build_info` in it.
pub fn registry() -> Registry {
    let mut registry = Registry::with_prefix("mesh");
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info.get_or_create(&BuildLabels { version: mesh_proto::VERSION.to_owned() }).set(1);
    registry.register("build_info", "meshd's version, as a label; always 1", build_info);
    registry
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
