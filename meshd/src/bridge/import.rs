//! Import, the pure part: Kubernetes Services and their EndpointSlices as the mesh
//! services a bridge node offers. No I/O: the watcher feeds it what the API server said.
//!
//! A bridge node is the mesh's gateway into the cluster: each imported Service is one
//! instance on the bridge node (so pod churn stays inside the bridge instead of being
//! replicated to every host), and the bridge spreads the connections it receives over
//! the Service's endpoints ([`Imported::endpoints`]).
//!
//! Must not: talk to the API server or the store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotations on a Service: its name in the mesh, and which of its ports to import.
pub const NAME_ANNOTATION: &str = "meshd.io/name";
pub const PORT_ANNOTATION: &str = "meshd.io/port";

/// An endpoint's state, from its slice's conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Ready: takes new connections.
    Ready,
    /// Terminating but still serving: finishes what it has, takes new connections only
    /// when no endpoint is ready.
    Draining,
    /// Neither: never chosen.
    Down,
}

/// One imported Service, as the bridge serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Its mesh name (`orders` answers as `orders.mesh`).
    pub name: String,
    /// Where the Service came from, for the log: `namespace/name`.
    pub origin: String,
    /// The port mesh clients call (the Service's port).
    pub port: u16,
    /// `http` when the port says so (appProtocol, or a name starting `http`), else `tcp`.
    pub http: bool,
    /// `app` and `version` from the Service's selector.
    pub labels: BTreeMap<String, String>,
    /// The pods behind it: address (pod IP and target port) and state. Sorted.
    pub endpoints: Vec<(SocketAddr, EndpointState)>,
}

impl Imported {
    /// Healthy in the mesh while one endpoint is ready.
    pub fn healthy(&self) -> bool {
        self.endpoints.iter().any(|(_, s)| *s == EndpointState::Ready)
    }
}

/// A Service's mesh name: its `meshd.io/name` annotation or its own name, when that is a
/// DNS label.
fn mesh_name(svc: &Service) -> Option<String> {
    let meta = &svc.metadata;
    let name = meta.annotations.as_ref().and_then(|a| a.get(NAME_ANNOTATION)).or(meta.name.as_ref())?;
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    valid.then(|| name.clone())
}

/// The Services as mesh services: each selected Service with a usable port, with the
/// endpoints of every slice that names it (a Service with several slices is one
/// service). A Service whose mesh name another already took (in an earlier namespace,
/// by name) is left out, with the reason in `skipped`.
pub fn import(services: &[Service], slices: &[EndpointSlice]) -> (BTreeMap<String, Imported>, Vec<String>) {
    let mut out: BTreeMap<String, Imported> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for svc in sorted {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let kname = svc.metadata.name.clone().unwrap_or_default();
        let origin = format!("{ns}/{kname}");
        let Some(name) = mesh_name(svc) else {
            skipped.push(format!("{origin}: its name is not a DNS label (set {NAME_ANNOTATION})"));
            continue;
        };
        if let Some(taken) = out.get(&name) {
            skipped.push(format!("{origin}: the mesh name {name} is taken by {}", taken.origin));
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        let ports = spec.ports.clone().unwrap_or_default();
        let wanted = svc.metadata.annotations.as_ref().and_then(|a| a.get(PORT_ANNOTATION));
        let port = match wanted {
            Some(w) => ports.iter().find(|p| p.name.as_deref() == Some(w.as_str()) || p.port.to_string() == *w),
            None => ports.first(),
        };
        let Some(port) = port else {
            skipped.push(format!("{origin}: no port to import"));
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            skipped.push(format!("{origin}: port {} is out of range", port.port));
            continue;
        };
        let http = port.app_protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("http"))
            || port.name.as_deref().is_some_and(|n| n == "http" || n.starts_with("http-"));
        let labels: BTreeMap<String, String> = spec
            .selector
            .iter()
            .flatten()
            .filter(|(k, _)| *k == "app" || *k == "version")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut endpoints: BTreeSet<(SocketAddr, EndpointState)> = BTreeSet::new();
        for slice in slices {
            let same_ns = slice.metadata.namespace.as_deref().unwrap_or_default() == ns;
            let names = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&kname);
            if !same_ns || !names || !(slice.address_type == "IPv4" || slice.address_type == "IPv6") {
                continue;
            }
            // The slice's port for the Service's port, by name (unnamed: the only one).
            let slice_ports = slice.ports.clone().unwrap_or_default();
            let target = slice_ports.iter().find(|p| p.name == port.name).or_else(|| {
                (slice_ports.len() == 1 && port.name.as_deref().unwrap_or_default().is_empty()).then(|| &slice_ports[0])
            });
            // A slice created before its endpoints and ports are filled in has none yet.
            let Some(target) = target.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
            for ep in slice.endpoints.iter().flatten() {
                let c = ep.conditions.clone().unwrap_or_default();
                // Unset `ready` means ready (the API's rule); `serving` defaults to `ready`.
                let ready = c.ready.unwrap_or(true);
                let serving = c.serving.unwrap_or(ready);
                let terminating = c.terminating.unwrap_or(false);
                let state = if ready && !terminating {
                    EndpointState::Ready
                } else if serving && terminating {
                    EndpointState::Draining
                } else {
                    EndpointState::Down
                };
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        endpoints.insert((SocketAddr::new(ip, target), state));
                    }
                }
            }
        }
        // One state per address: the best any slice gives it (a pod moving between
        // slices is briefly in two).
        let mut best: BTreeMap<SocketAddr, EndpointState> = BTreeMap::new();
        for (addr, state) in endpoints {
            best.entry(addr).and_modify(|s| *s = (*s).min(state)).or_insert(state);
        }
        out.insert(
            name.clone(),
            Imported { name, origin, port: number, http, labels, endpoints: best.into_iter().collect() },
        );
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn service(ns: &str, name: &str, ports: &[(&str, i32)], selector: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: (!n.is_empty()).then(|| (*n).to_owned()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                selector: Some(selector.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An endpoint: its address, then `ready`, `serving` and `terminating` as the slice says.
    pub(crate) type Conditions<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

    /// A slice of `service` with endpoints on `port`.
    pub(crate) fn slice(
        ns: &str,
        name: &str,
        service: &str,
        port: (&str, i32),
        eps: &[Conditions<'_>],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.iter()
                    .map(|(ip, ready, serving, terminating)| Endpoint {
                        addresses: vec![(*ip).to_owned()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            serving: *serving,
                            terminating: *terminating,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: (!port.0.is_empty()).then(|| port.0.to_owned()),
                port: Some(port.1),
                ..Default::default()
            }]),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_service_with_several_slices_is_one_service_and_conditions_map_to_states() {
        let svcs = [service("shop", "orders", &[("http", 80)], &[("app", "orders"), ("version", "v2"), ("tier", "x")])];
        let slices = [
            slice(
                "shop",
                "orders-a",
                "orders",
                ("http", 8080),
                &[("10.0.0.1", Some(true), None, None), ("10.0.0.2", None, None, None)],
            ),
            slice(
                "shop",
                "orders-b",
                "orders",
                ("http", 8080),
                &[
                    ("10.0.0.3", Some(false), Some(true), Some(true)),
                    ("10.0.0.4", Some(false), Some(false), Some(true)),
                    ("10.0.0.5", Some(false), None, None),
                ],
            ),
            // Another namespace's slice of a same-named Service: not this one's.
            slice("other", "orders-c", "orders", ("http", 8080), &[("10.9.9.9", Some(true), None, None)]),
        ];
        let (got, skipped) = import(&svcs, &slices);
        assert!(skipped.is_empty(), "{skipped:?}");
        let o = &got["orders"];
        assert_eq!((o.port, o.http, o.origin.as_str()), (80, true, "shop/orders"));
        assert_eq!(o.labels, [("app".to_owned(), "orders".to_owned()), ("version".to_owned(), "v2".to_owned())].into());
        assert_eq!(
            o.endpoints,
            vec![
                (addr("10.0.0.1:8080"), EndpointState::Ready),
                (addr("10.0.0.2:8080"), EndpointState::Ready),
                (addr("10.0.0.3:8080"), EndpointState::Draining),
                (addr("10.0.0.4:8080"), EndpointState::Down),
                (addr("10.0.0.5:8080"), EndpointState::Down),
            ]
        );
        assert!(o.healthy());
    }

    #[test]
    fn a_slice_before_its_ports_and_endpoints_fill_in_adds_nothing_and_terminating_only_is_unhealthy() {
        let svcs = [service("shop", "cart", &[("", 6379)], &[])];
        let mut empty = slice("shop", "cart-a", "cart", ("", 6379), &[]);
        empty.ports = None;
        let (got, _) = import(&svcs, &[empty]);
        assert!(got["cart"].endpoints.is_empty());
        assert!(!got["cart"].healthy());
        let draining =
            slice("shop", "cart-a", "cart", ("", 6379), &[("10.0.0.7", Some(false), Some(true), Some(true))]);
        let (got, _) = import(&svcs, &[draining]);
        assert_eq!(got["cart"].endpoints, vec![(addr("10.0.0.7:6379"), EndpointState::Draining)]);
        assert!(!got["cart"].healthy(), "draining pods finish their connections but do not make it healthy");
        assert!(!got["cart"].http);
    }

    #[test]
    fn names_ports_and_collisions_follow_the_annotations_and_namespace_order() {
        let mut a = service("a-ns", "web", &[("metrics", 9090), ("http-main", 80)], &[]);
        a.metadata.annotations = Some([(PORT_ANNOTATION.to_owned(), "http-main".to_owned())].into());
        let b = service("b-ns", "web", &[("", 80)], &[]);
        let mut c = service("c-ns", "Bad_Name", &[("", 80)], &[]);
        let d = service("d-ns", "Bad_Name", &[("", 80)], &[]);
        c.metadata.annotations = Some([(NAME_ANNOTATION.to_owned(), "good-name".to_owned())].into());
        let e = service("e-ns", "noports", &[], &[]);
        let (got, skipped) = import(&[b, e, d, c, a], &[]);
        assert_eq!(got["web"].origin, "a-ns/web", "the first namespace by name wins a name");
        assert_eq!((got["web"].port, got["web"].http), (80, true));
        assert!(got.contains_key("good-name"));
        assert_eq!(got.len(), 2);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.starts_with("b-ns/web: the mesh name web is taken by a-ns/web")));
        assert!(skipped.iter().any(|s| s.starts_with("d-ns/Bad_Name: its name is not a DNS label")));
        assert!(skipped.iter().any(|s| s.starts_with("e-ns/noports: no port")));
    }
}
