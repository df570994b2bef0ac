//! Export, the pure part: mesh services as the Kubernetes objects that let pods call them
//! by name. Each exported service is a selector-less ClusterIP Service in the export
//! namespace (`reviews.mesh.svc.cluster.local`, or `reviews.mesh` through a CoreDNS stub
//! domain), and each bridge replica adds an EndpointSlice of its own that points at its
//! listener for that service. The replicas never write the same slice, and they write
//! identical Services, so two of them do not fight (no lease needed).
//!
//! Must not: write anything; the caller applies the objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::plan::CLUSTER_LABEL;

/// The label on every object a bridge writes: its cluster name. Only objects with it are
/// ever changed or deleted.
pub const OWNER_LABEL: &str = "meshd.io/bridge";
/// The replica (mesh node) that wrote an EndpointSlice.
pub const NODE_LABEL: &str = "meshd.io/node";
const MANAGED_BY: &str = "meshd.io/bridge";

/// A mesh service to export, and the ports it is called on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub name: String,
    pub ports: BTreeSet<u16>,
    pub http: bool,
}

/// The mesh services to export: every service with a healthy instance, except those
/// this cluster's bridges imported (no loop back into the cluster).
pub fn exported(services: &[mesh_proto::api::Service], cluster: &str) -> BTreeMap<String, Exported> {
    let mut out = BTreeMap::new();
    for s in services {
        let from_here = s.instances.iter().any(|i| i.labels.get(CLUSTER_LABEL).map(String::as_str) == Some(cluster));
        if from_here || !s.instances.iter().any(|i| i.healthy) {
            continue;
        }
        let ports: BTreeSet<u16> = s.instances.iter().map(|i| i.port).collect();
        let http = s.instances.iter().any(|i| i.protocol == "http");
        out.insert(s.name.clone(), Exported { name: s.name.clone(), ports, http });
    }
    out
}

fn port_name(port: u16) -> String {
    format!("p{port}")
}

fn labels(cluster: &str) -> BTreeMap<String, String> {
    [(OWNER_LABEL.to_owned(), cluster.to_owned()), ("app.kubernetes.io/managed-by".to_owned(), "meshd".to_owned())]
        .into()
}

/// The Service for `e`: ClusterIP, no selector (its endpoints are the bridges' slices).
pub fn service(e: &Exported, cluster: &str, namespace: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(e.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(cluster)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            ports: Some(
                e.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(port_name(*p)),
                        port: i32::from(*p),
                        protocol: Some("TCP".to_owned()),
                        app_protocol: e.http.then(|| "http".to_owned()),
                        target_port: Some(IntOrString::String(port_name(*p))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The name of `node`'s slice for the service `name` (at most 63 characters).
pub fn slice_name(name: &str, node: &str) -> String {
    let mut n = format!("{name}-{node}");
    n.truncate(63);
    n.trim_end_matches('-').to_owned()
}

/// This replica's EndpointSlice for `e`: its own address, with each mesh port mapped to
/// the local listener in `listeners`.
pub fn slice(
    e: &Exported,
    cluster: &str,
    namespace: &str,
    node: &str,
    address: IpAddr,
    listeners: &BTreeMap<(String, u16), u16>,
) -> EndpointSlice {
    let mut l = labels(cluster);
    l.insert("kubernetes.io/service-name".to_owned(), e.name.clone());
    l.insert("endpointslice.kubernetes.io/managed-by".to_owned(), MANAGED_BY.to_owned());
    l.insert(NODE_LABEL.to_owned(), node.to_owned());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(&e.name, node)),
            namespace: Some(namespace.to_owned()),
            labels: Some(l),
            ..Default::default()
        },
        address_type: if address.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![address.to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }]),
        ports: Some(
            e.ports
                .iter()
                .filter_map(|p| {
                    let local = listeners.get(&(e.name.clone(), *p))?;
                    Some(EndpointPort {
                        name: Some(port_name(*p)),
                        port: Some(i32::from(*local)),
                        protocol: Some("TCP".to_owned()),
                        app_protocol: e.http.then(|| "http".to_owned()),
                    })
                })
                .collect(),
        ),
    }
}

/// Listener ports for every exported (service, port): those already given keep theirs;
/// new ones take the lowest free port of `range`. Ports of services gone are freed.
pub fn allocate(
    exported: &BTreeMap<String, Exported>,
    given: &BTreeMap<(String, u16), u16>,
    range: std::ops::RangeInclusive<u16>,
) -> BTreeMap<(String, u16), u16> {
    let wanted: BTreeSet<(String, u16)> =
        exported.values().flat_map(|e| e.ports.iter().map(|p| (e.name.clone(), *p))).collect();
    let mut out: BTreeMap<(String, u16), u16> =
        given.iter().filter(|(k, _)| wanted.contains(*k)).map(|(k, v)| (k.clone(), *v)).collect();
    let mut taken: BTreeSet<u16> = out.values().copied().collect();
    let mut free = range.filter(|p| !taken.contains(p)).collect::<Vec<_>>().into_iter();
    for key in wanted {
        if out.contains_key(&key) {
            continue;
        }
        match free.next() {
            Some(p) => {
                taken.insert(p);
                out.insert(key, p);
            }
            None => tracing::warn!(service = %key.0, port = key.1, "bridge: the export port range is full"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::api::{Instance, Service as MeshService};

    fn mesh(name: &str, port: u16, healthy: bool, labels: &[(&str, &str)], protocol: &str) -> MeshService {
        MeshService {
            name: name.into(),
            vip: None,
            instances: vec![Instance {
                node: "vm-1".into(),
                addr: "10.0.0.1".into(),
                port,
                protocol: protocol.into(),
                labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                healthy,
            }],
        }
    }

    #[test]
    fn healthy_mesh_services_are_exported_but_not_those_imported_from_this_cluster() {
        let services = [
            mesh("reviews", 9080, true, &[], "http"),
            mesh("down", 80, false, &[], "tcp"),
            mesh("orders", 7000, true, &[(CLUSTER_LABEL, "prod")], "tcp"),
            mesh("billing", 7000, true, &[(CLUSTER_LABEL, "other")], "tcp"),
        ];
        let got = exported(&services, "prod");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["billing", "reviews"]);
        assert!(got["reviews"].http && !got["billing"].http);
    }

    #[test]
    fn objects_carry_the_owner_label_and_each_replica_its_own_slice_and_ports() {
        let e = Exported { name: "reviews".into(), ports: [9080].into(), http: true };
        let svc = service(&e, "prod", "mesh");
        assert_eq!(svc.metadata.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)).map(String::as_str), Some("prod"));
        let spec = svc.spec.expect("spec");
        assert!(spec.selector.is_none(), "the bridges' slices are its endpoints");
        let port = &spec.ports.expect("ports")[0];
        assert_eq!((port.port, port.target_port.clone()), (9080, Some(IntOrString::String("p9080".into()))));
        let listeners: BTreeMap<(String, u16), u16> = [(("reviews".to_owned(), 9080), 20001)].into();
        let a = slice(&e, "prod", "mesh", "bridge-0", "10.1.0.5".parse().expect("ip"), &listeners);
        let b = slice(&e, "prod", "mesh", "bridge-1", "10.1.0.6".parse().expect("ip"), &listeners);
        assert_ne!(a.metadata.name, b.metadata.name, "replicas never write the same slice");
        assert_eq!(a.endpoints.as_ref().expect("endpoints")[0].addresses, vec!["10.1.0.5".to_owned()]);
        let p = &a.ports.as_ref().expect("ports")[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("p9080"), Some(20001)));
        assert_eq!(slice_name(&"x".repeat(60), "bridge-0").len(), 63);
    }

    #[test]
    fn listener_ports_are_stable_and_freed_with_their_service() {
        let ex = |names: &[&str]| -> BTreeMap<String, Exported> {
            names
                .iter()
                .map(|n| ((*n).to_owned(), Exported { name: (*n).into(), ports: [80].into(), http: false }))
                .collect()
        };
        let first = allocate(&ex(&["b", "a"]), &BTreeMap::new(), 20000..=20002);
        assert_eq!(first[&("a".to_owned(), 80)], 20000);
        assert_eq!(first[&("b".to_owned(), 80)], 20001);
        // "0" sorts first but does not move the others; "a" gone frees its port.
        let second = allocate(&ex(&["0", "b"]), &first, 20000..=20002);
        assert_eq!(second[&("b".to_owned(), 80)], 20001);
        assert_eq!(second[&("0".to_owned(), 80)], 20000);
        assert!(!second.contains_key(&("a".to_owned(), 80)));
        // A full range leaves the newcomer out.
        let full = allocate(&ex(&["0", "b", "c", "d"]), &second, 20000..=20002);
        assert_eq!(full.len(), 3);
    }
}
