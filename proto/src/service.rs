//! A service instance as its host declares it: a `[[service]]` entry in meshd.toml, or
//! the top level of a file for `meshctl service register -f`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::input::{InputError, Source};

/// What a client asks for by name: a service (`reviews`), or one subset of it
/// (`v2.reviews`, `SUBSET.SERVICE`), as DNS names, virtual IPs and `[[upstream]]` spell
/// it. The one place that parses that spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceName<'a> {
    pub service: &'a str,
    pub subset: Option<&'a str>,
}

impl<'a> ServiceName<'a> {
    /// `SERVICE` or `SUBSET.SERVICE`, each a DNS label; None for anything else.
    pub fn parse(name: &'a str) -> Option<ServiceName<'a>> {
        let parsed = match name.split_once('.') {
            Some((subset, service)) => ServiceName { service, subset: Some(subset) },
            None => ServiceName { service: name, subset: None },
        };
        let labels_ok = crate::is_dns_label(parsed.service) && parsed.subset.is_none_or(crate::is_dns_label);
        labels_ok.then_some(parsed)
    }

    /// The service a possibly malformed name is about (its last label): for lookups that
    /// then fail by themselves.
    pub fn service_of(name: &'a str) -> &'a str {
        name.rsplit('.').next().unwrap_or(name)
    }
}

impl std::fmt::Display for ServiceName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.subset {
            Some(subset) => write!(f, "{subset}.{}", self.service),
            None => f.write_str(self.service),
        }
    }
}

/// One service on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name, a DNS label (`reviews` answers as `reviews.mesh`). Required.
    pub name: String,
    /// Where the service listens on this host. Default: `127.0.0.1`, so that services
    /// need not listen on a public address: the mesh carries their traffic.
    #[serde(default = "default_address")]
    pub address: IpAddr,
    /// The port it listens on. Required.
    pub port: u16,
    /// `tcp` (default: bytes only) or `http` (per-request routing).
    #[serde(default)]
    pub protocol: Protocol,
    /// Free-form labels; routes select subsets on them, and `version` also gets its own
    /// DNS name (`v1.reviews.mesh`). Default: none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A health check run by this host. Default: none (healthy while the node is alive).
    #[serde(default)]
    pub check: Option<Check>,
    /// Answer DNS with the healthy instances' own addresses instead of a virtual IP,
    /// for clients that must reach instances directly. Default: false.
    #[serde(default)]
    pub passthrough: bool,
    /// The service does not run on this host: `address` is elsewhere (a pod behind a
    /// Kubernetes bridge, an appliance this host fronts). Without it, `address` must be
    /// one of this host's own addresses, so that no entry can make meshd connect
    /// anywhere else. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

fn default_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// A health check: exactly one of `http` or `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// GET this URL; healthy on 2xx or 3xx within the timeout.
    #[serde(default)]
    pub http: Option<String>,
    /// Connect to this address; healthy when the connection opens within the timeout.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// Time between checks. Default: 10s, as Consul's examples use.
    #[serde(default = "default_interval", with = "crate::duration")]
    pub interval: Duration,
    /// How long one check may take. Default: the smaller of `interval` and 2s.
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Passes in a row before an unhealthy instance turns healthy. Default: 2.
    #[serde(default = "default_threshold")]
    pub rise: u32,
    /// Failures in a row before a healthy instance turns unhealthy. Default: 2.
    #[serde(default = "default_threshold")]
    pub fall: u32,
}

/// The shortest health-check interval.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_threshold() -> u32 {
    2
}

impl Check {
    /// The timeout in effect: the one set, or `min(interval, 2s)`.
    pub fn effective_timeout(&self) -> Duration {
        self.timeout.unwrap_or(self.interval.min(Duration::from_secs(2)))
    }
}

impl ServiceSpec {
    /// Checks what serde cannot; `path` is where this entry sits in `src`
    /// (`service[0]` in meshd.toml, empty in a service file).
    pub fn validate(&self, src: &Source<'_>, path: &str) -> Result<(), InputError> {
        let key = |k: &str| {
            if path.is_empty() {
                k.to_owned()
            } else {
                format!("{path}.{k}")
            }
        };
        if !crate::is_dns_label(&self.name) {
            return Err(src.error(
                &key("name"),
                format!("'{}' is not a valid service name: {}", self.name, crate::DNS_LABEL_RULE),
            ));
        }
        if self.port == 0 {
            return Err(src.error(&key("port"), "port must be between 1 and 65535"));
        }
        let a = self.address;
        if a.is_unspecified() || a.is_multicast() || a == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(src.error(
                &key("address"),
                format!(
                    "{a} is not an address a service listens on: give the service's own address (default 127.0.0.1)"
                ),
            ));
        }
        for (label, value) in &self.labels {
            if label.is_empty() || value.is_empty() {
                return Err(src.error(&key("labels"), "label names and values must not be empty"));
            }
        }
        if let Some(version) = self.labels.get("version") {
            if !crate::is_dns_label(version) {
                return Err(src.error(
                    &key("labels.version"),
                    format!("version '{version}' must be a DNS label ({version}.{}.mesh answers for it)", self.name),
                ));
            }
        }
        if let Some(check) = &self.check {
            let ck = |k: &str| key(&format!("check.{k}"));
            match (&check.http, &check.tcp) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(src.error(&key("check"), "a check has exactly one of 'http' or 'tcp'"));
                }
                (Some(url), None) if !url.starts_with("http://") => {
                    return Err(src.error(&ck("http"), format!("'{url}' is not an http:// URL")));
                }
                _ => {}
            }
            if check.interval < MIN_CHECK_INTERVAL {
                return Err(src.error(
                    &ck("interval"),
                    format!(
                        "interval must be at least {} (a check more often only loads the service)",
                        crate::duration::format(MIN_CHECK_INTERVAL)
                    ),
                ));
            }
            if let Some(timeout) = check.timeout {
                if timeout.is_zero() || timeout > check.interval {
                    return Err(src.error(&ck("timeout"), "timeout must be above zero and at most the interval"));
                }
            }
            if check.rise == 0 || check.fall == 0 {
                let which = if check.rise == 0 { "rise" } else { "fall" };
                return Err(src.error(&ck(which), format!("{which} must be at least 1")));
            }
        }
        Ok(())
    }

    /// Parses and validates a service file (`meshctl service register -f`).
    pub fn from_file(file: &str, text: &str) -> Result<ServiceSpec, InputError> {
        let src = Source::new(file, text);
        let spec: ServiceSpec = src.parse()?;
        spec.validate(&src, "")?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_a_service_or_a_subset_of_one() {
        assert_eq!(ServiceName::parse("reviews"), Some(ServiceName { service: "reviews", subset: None }));
        let v2 = ServiceName::parse("v2.reviews").expect("a subset");
        assert_eq!((v2.service, v2.subset), ("reviews", Some("v2")));
        assert_eq!(v2.to_string(), "v2.reviews");
        for bad in ["", ".reviews", "v2.", "a.b.c", "Reviews", "v_2.reviews"] {
            assert_eq!(ServiceName::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ServiceName::service_of("v2.reviews"), "reviews");
    }

    #[test]
    fn a_full_service_file() {
        let spec = ServiceSpec::from_file(
            "svc.toml",
            r#"
name = "reviews"
port = 9080
protocol = "http"
labels = { version = "v1" }
check = { http = "http://127.0.0.1:9080/health", interval = "5s" }
"#,
        )
        .expect("valid");
        assert_eq!(spec.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let check = spec.check.expect("check");
        assert_eq!(check.effective_timeout(), Duration::from_secs(2));
        assert_eq!((check.rise, check.fall), (2, 2));
    }

    #[test]
    fn bad_services_name_their_key() {
        for (text, key, line) in [
            ("name = \"Reviews\"\nport = 1\n", "name", 1),
            ("name = \"r\"\nport = 0\n", "port", 2),
            ("name = \"r\"\nport = 1\nprotocol = \"udp\"\n", "protocol", 3),
            ("name = \"r\"\nport = 1\ncheck = { interval = \"1s\" }\n", "check", 3),
            (
                "name = \"r\"\nport = 1\n\ncheck = { tcp = \"127.0.0.1:1\", timeout = \"9s\", interval = \"1s\" }\n",
                "check.timeout",
                4,
            ),
            ("name = \"r\"\nport = 1\nlabels = { version = \"V 1\" }\n", "labels.version", 3),
        ] {
            let err = ServiceSpec::from_file("svc.toml", text).expect_err(text);
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert_eq!(err.line, Some(line), "{text}: {err}");
        }
    }
}
