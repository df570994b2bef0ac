//! meshd.toml: every key, its default, and validation that names the file, line and key.
//!
//! Every key of the configuration reference (docs/configuration.md) is accepted from the first release on, even where the
//! feature behind it lands later, so one config file serves every version. Unknown keys
//! are errors. This module is the only place that decides a default; the rest of meshd
//! reads the resolved [`Config`], which is `Serialize` so the admin API can show it.
//!
//! Must not: be bypassed: no module reads the environment or decides a default itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use mesh_proto::duration;
use mesh_proto::input::{InputError, Source};
use mesh_proto::service::ServiceSpec;
use serde::{Deserialize, Serialize};

/// Where meshd looks for its config without `--config`.
pub const DEFAULT_PATH: &str = "/etc/meshd/meshd.toml";

/// The resolved contents of meshd.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name in the mesh, a DNS label (`NAME.node.mesh`). Default: the
    /// hostname's first label, lower-cased.
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Certificates, keys and the store. Default: `/var/lib/meshd` (systemd's
    /// `StateDirectory=meshd`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The one UDP port: gossip, tunnels and joins. Default: `0.0.0.0:7946`, the port
    /// Serf and Consul use for LAN gossip.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// What peers dial. Default: `bind`'s address, or with `0.0.0.0` the host's one
    /// private IPv4 (meshd refuses to guess between several).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Members to gossip with once this node has a certificate. Default: none.
    #[serde(default)]
    pub join: Vec<SocketAddr>,
    /// A join token redeemed on first start, for unattended installs. Default: none.
    #[serde(default, skip_serializing)]
    pub join_token: Option<String>,
    /// The SPIFFE trust domain `meshd init` puts in the CA. Default: `mesh.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// How long a busy meshd drains on SIGTERM before it stops anyway; an idle one exits
    /// at once. Default: 5s. Keep systemd's `TimeoutStopSec` above it.
    #[serde(default = "default_drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
    /// Log filter (`info`, `debug`, `meshd=debug,warn`); `RUST_LOG` overrides it.
    /// Default: `info`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub gossip: GossipConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Off unless the section is there.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// Only on a node that bridges a Kubernetes cluster. Default: none.
    #[serde(default)]
    pub bridge: Option<BridgeConfig>,
    /// Services on this host.
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
    /// Fixed local listeners for applications that cannot use DNS. Default: none.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
}

/// `[policy]`: authorization when a service has no policy of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `allow` or `deny`: what a service without a policy does with a caller. Default:
    /// `allow`, so that a new mesh carries traffic before anyone writes a policy.
    #[serde(default = "default_policy")]
    pub default: PolicyDefault,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDefault {
    #[default]
    Allow,
    Deny,
}

fn default_policy() -> PolicyDefault {
    PolicyDefault::Allow
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { default: default_policy() }
    }
}

/// `[tracing]`: spans exported over OTLP/HTTP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// An OTLP/HTTP collector (`http://127.0.0.1:4318`). Default: off.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Percent of requests traced, 0 to 100, when no caller decided. Default: 1.
    #[serde(default = "default_sample_percent")]
    pub sample_percent: f64,
}

fn default_sample_percent() -> f64 {
    1.0
}

/// `[access_log]`: one JSON line per connection or request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `-` for meshd's own output (the journal under systemd), or a file. Default: `-`.
    #[serde(default = "default_access_log_path")]
    pub path: String,
}

fn default_access_log_path() -> String {
    "-".to_owned()
}

/// `[bridge]`: this node bridges a Kubernetes cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The cluster's name in the mesh. Required.
    pub cluster: String,
    /// Kubernetes services with these labels are imported into the mesh. Default:
    /// `meshd.io/import=true`.
    #[serde(default = "default_import_selector")]
    pub import_selector: String,
    /// Mesh services appear in this namespace of the cluster. Default: `mesh`.
    #[serde(default = "default_export_namespace")]
    pub export_namespace: String,
    /// Whether mesh services are exported into the cluster. Default: true.
    #[serde(default = "default_true")]
    pub export: bool,
    /// A kubeconfig file to reach the API server with. Default: none, the in-cluster
    /// credentials of the pod meshd runs in.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

fn default_import_selector() -> String {
    "meshd.io/import=true".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_export_namespace() -> String {
    "mesh".to_owned()
}

/// `[[upstream]]`: a local address that leads to a mesh service, as its virtual IP does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The mesh service (or `SUBSET.SERVICE`) to reach. Required.
    pub service: String,
    /// Where this host listens for it, e.g. `127.0.0.1:5432`. Required.
    pub listen: SocketAddr,
    /// The local service whose connections these are (carried to the other end, which
    /// checks that this node hosts it). Default: none (the node alone).
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address of the DNS server. Default: `127.0.0.153:53`, where the
    /// systemd-resolved drop-in sends `~mesh`.
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// The domain meshd is authoritative for. Default: `mesh`.
    #[serde(default = "default_dns_domain")]
    pub domain: String,
    /// TTL of every answer, whole seconds. Default: 5s: short, because health changes
    /// must reach clients quickly, and the answers are local and cheap.
    #[serde(default = "default_dns_ttl", with = "duration")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Virtual IPs handed out by DNS, one per service and subset. Default:
    /// `127.77.0.0/16`: loopback, so nothing outside the host can reach them.
    #[serde(default = "default_vip_range")]
    pub vip_range: Ipv4Net,
    /// Connections each listener (a virtual IP's port, an upstream) holds at once; more
    /// are closed at accept. Default: 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long to wait for an instance (through its host's tunnel, or directly on this
    /// host) to accept before trying another. Default: 5s.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// The local service that traffic from this host through virtual IPs comes from (a
    /// host with one service). Default: none: the node alone is the caller.
    #[serde(default)]
    pub source: Option<String>,
}

fn default_max_connections() -> usize {
    4096
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The Unix socket meshctl talks to; mode 0660, group `meshd` if that group exists.
    /// Default: `/run/meshd/meshd.sock`.
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    /// A TCP address for `/metrics` and the dashboard only. Default: off.
    #[serde(default)]
    pub http: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Lifetime of node certificates; they renew at half-life. Default: 24h. Allowed:
    /// 10s (for tests) to 365 days.
    #[serde(default = "default_cert_ttl", with = "duration")]
    pub cert_ttl: Duration,
}

/// SWIM and anti-entropy. Defaults follow memberlist's LAN profile (what Consul and Serf
/// run on a LAN), with faster anti-entropy because a route change must reach every host
/// within seconds even when a broadcast is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipConfig {
    /// Time between probes of a random member. Default: 1s.
    #[serde(default = "default_probe_interval", with = "duration")]
    pub probe_interval: Duration,
    /// How long a probe waits for an ack before asking others to probe. Default: 500ms.
    #[serde(default = "default_probe_timeout", with = "duration")]
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly. Default: 3.
    #[serde(default = "default_indirect_probes")]
    pub indirect_probes: usize,
    /// Suspicion lasts `suspicion_mult * max(1, log10(N)) * probe_interval` before a
    /// suspect is declared dead. Default: 4.
    #[serde(default = "default_suspicion_mult")]
    pub suspicion_mult: f64,
    /// Time between gossip rounds. Default: 200ms.
    #[serde(default = "default_gossip_interval", with = "duration")]
    pub gossip_interval: Duration,
    /// Members each gossip round sends to. Default: 3.
    #[serde(default = "default_gossip_nodes")]
    pub gossip_nodes: usize,
    /// Each update is sent `retransmit_mult * ceil(log10(N + 1))` times. Default: 4.
    #[serde(default = "default_retransmit_mult")]
    pub retransmit_mult: f64,
    /// Time between push-pull anti-entropy exchanges with a random member. Default: 5s.
    #[serde(default = "default_sync_interval", with = "duration")]
    pub sync_interval: Duration,
    /// How long a dead member's own entries (its service instances) are kept, as
    /// unreachable, before they are removed. Default: 72h, as Serf.
    #[serde(default = "default_reap_after", with = "duration")]
    pub reap_after: Duration,
    /// The largest gossip datagram, bytes: below QUIC's datagram limit on any path with
    /// a 1280-byte MTU. Default: 1150.
    #[serde(default = "default_max_datagram")]
    pub max_datagram: usize,
}

/// The gossip timers' floors.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);
pub const MIN_GOSSIP_INTERVAL: Duration = Duration::from_millis(10);
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(500);

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_indirect_probes() -> usize {
    3
}
fn default_suspicion_mult() -> f64 {
    4.0
}
fn default_gossip_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_gossip_nodes() -> usize {
    3
}
fn default_retransmit_mult() -> f64 {
    4.0
}
fn default_sync_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_reap_after() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_max_datagram() -> usize {
    1150
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            indirect_probes: default_indirect_probes(),
            suspicion_mult: default_suspicion_mult(),
            gossip_interval: default_gossip_interval(),
            gossip_nodes: default_gossip_nodes(),
            retransmit_mult: default_retransmit_mult(),
            sync_interval: default_sync_interval(),
            reap_after: default_reap_after(),
            max_datagram: default_max_datagram(),
        }
    }
}

impl GossipConfig {
    pub fn params(&self) -> crate::membership::core::Params {
        crate::membership::core::Params {
            probe_period: self.probe_interval,
            probe_timeout: self.probe_timeout,
            indirect_probes: self.indirect_probes,
            suspicion_mult: self.suspicion_mult,
            gossip_interval: self.gossip_interval,
            gossip_fanout: self.gossip_nodes,
            max_datagram: self.max_datagram,
            retransmit_mult: self.retransmit_mult,
            remember_down: self.reap_after,
        }
    }
}

fn default_node_name() -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    host.split('.').next().unwrap_or_default().to_ascii_lowercase()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/meshd")
}
fn default_bind() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7946))
}
fn default_trust_domain() -> String {
    "mesh.local".to_owned()
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_dns_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 153), 53))
}
fn default_dns_domain() -> String {
    "mesh".to_owned()
}
fn default_dns_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_vip_range() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(127, 77, 0, 0), 16).expect("a /16 is a valid prefix")
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/meshd/meshd.sock")
}
fn default_cert_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { listen: default_dns_listen(), domain: default_dns_domain(), ttl: default_dns_ttl() }
    }
}
impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            vip_range: default_vip_range(),
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
            source: None,
        }
    }
}
impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { socket: default_admin_socket(), http: None }
    }
}
impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig { cert_ttl: default_cert_ttl() }
    }
}

/// Why a config could not be used. Both are the operator's to fix: exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no file at the path.
    #[error(
        "{}: no such file. meshd needs a config; the smallest one is\n\n    \
         node_name = \"vm-1\"          # default: the hostname\n    \
         bind = \"198.18.0.1:7946\"    # this host's address: the one UDP port of the mesh\n    \
         join = [\"198.18.0.2:7946\"]  # on every host but the first: a member to find the mesh by\n\n\
         A commented example with every key: packaging/examples/meshd.toml in the source, installed as\n\
         /usr/share/doc/meshd/examples/meshd.toml; each key is described in docs/configuration.md.\n\
         Write it to {} (or pass --config PATH), then run this again.",
        path.display(),
        path.display()
    )]
    Missing { path: PathBuf },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file was read but is not a valid meshd.toml.
    #[error(transparent)]
    Invalid(#[from] InputError),
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConfigError::Missing { path: path.to_owned() },
            _ => ConfigError::Read { path: path.to_owned(), source },
        })?;
        Ok(Config::parse(&path.display().to_string(), &text)?)
    }

    /// Parses and validates `text`, naming `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, InputError> {
        let src = Source::new(file, text);
        let config: Config = src.parse()?;
        config.validate(&src)?;
        Ok(config)
    }

    /// Keys this meshd accepts (so one config serves every version) but does not act on
    /// yet, each with what happens instead; meshd logs them at WARN when it starts.
    /// None at present: every key acts.
    pub fn not_yet_in_effect(&self) -> Vec<String> {
        Vec::new()
    }

    /// The keys whose values differ between `self` and `other`, dotted (`dns.ttl`); a
    /// list or a list of tables (`join`, `service`) is one key.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        flatten(&key, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_owned(), other.clone());
                }
            }
        }
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        flatten("", &serde_json::to_value(self).unwrap_or_default(), &mut a);
        flatten("", &serde_json::to_value(other).unwrap_or_default(), &mut b);
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
    }

    fn validate(&self, src: &Source<'_>) -> Result<(), InputError> {
        if !mesh_proto::is_dns_label(&self.node_name) {
            let why = if self.node_name.is_empty() {
                "no node name: the hostname is empty; set node_name".to_owned()
            } else {
                format!("'{}' is not a valid node name: {}", self.node_name, mesh_proto::DNS_LABEL_RULE)
            };
            return Err(src.error("node_name", why));
        }
        if !is_dns_name(&self.trust_domain) {
            return Err(src.error(
                "trust_domain",
                format!("'{}' is not a valid trust domain (a DNS name like mesh.local)", self.trust_domain),
            ));
        }
        if self.drain_timeout > Duration::from_secs(3600) {
            return Err(src.error("drain_timeout", "drain_timeout must be at most 1h"));
        }
        if let Some(adv) = self.advertise {
            if adv.ip().is_unspecified() {
                return Err(src.error("advertise", "advertise must be an address peers can dial, not 0.0.0.0"));
            }
        }
        for (i, seed) in self.join.iter().enumerate() {
            if seed.ip().is_unspecified() || seed.port() == 0 {
                return Err(src.error(&format!("join[{i}]"), format!("{seed} cannot be dialled")));
            }
        }
        if self.log_level.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(src.error(
                "log_level",
                format!("'{}' is not a log filter (try info, debug or meshd=debug,warn)", self.log_level),
            ));
        }
        if !is_dns_name(&self.dns.domain) {
            return Err(src.error("dns.domain", format!("'{}' is not a valid domain", self.dns.domain)));
        }
        if self.dns.ttl.subsec_nanos() != 0 || self.dns.ttl > Duration::from_secs(86_400) {
            return Err(src.error("dns.ttl", "ttl must be whole seconds, at most 1 day"));
        }
        let vips = self.proxy.vip_range;
        if vips.trunc() != vips {
            return Err(
                src.error("proxy.vip_range", format!("{vips} has host bits set; did you mean {}?", vips.trunc()))
            );
        }
        if vips.prefix_len() > 28 {
            return Err(src.error("proxy.vip_range", format!("{vips} is too small: use a /28 or larger")));
        }
        // Virtual IPs shadow whatever else has their addresses on this host: they must be
        // private to it (loopback) or to its network, and not meshd's own addresses.
        let private: [Ipv4Net; 5] = [
            Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default(),
            Ipv4Net::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default(),
            Ipv4Net::new(std::net::Ipv4Addr::new(172, 16, 0, 0), 12).unwrap_or_default(),
            Ipv4Net::new(std::net::Ipv4Addr::new(192, 168, 0, 0), 16).unwrap_or_default(),
            Ipv4Net::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 10).unwrap_or_default(),
        ];
        if !private.iter().any(|p| p.contains(&vips)) {
            return Err(src.error(
                "proxy.vip_range",
                format!("{vips} is not a loopback or private range: use one inside 127.0.0.0/8 (the default, 127.77.0.0/16) or a private network"),
            ));
        }
        let own = [
            ("bind", Some(self.bind.ip())),
            ("advertise", self.advertise.map(|a| a.ip())),
            ("dns.listen", Some(self.dns.listen.ip())),
            ("admin.http", self.admin.http.map(|a| a.ip())),
        ];
        for (key, ip) in own {
            if let Some(std::net::IpAddr::V4(ip)) = ip {
                if vips.contains(&ip) {
                    return Err(src.error(
                        key,
                        format!("{ip} is inside proxy.vip_range ({vips}): virtual IPs would shadow it; choose an address or a range apart"),
                    ));
                }
            }
        }
        if let Some(endpoint) = &self.tracing.otlp_endpoint {
            crate::telemetry::otlp::traces_url(endpoint).map_err(|why| src.error("tracing.otlp_endpoint", why))?;
        }
        if !(0.0..=100.0).contains(&self.tracing.sample_percent) {
            return Err(src.error("tracing.sample_percent", "sample_percent must be between 0 and 100"));
        }
        if self.access_log.as_ref().is_some_and(|a| a.path.trim().is_empty()) {
            return Err(src.error("access_log.path", "path must be \"-\" (meshd's output) or a file"));
        }
        if !(1..=1_000_000).contains(&self.proxy.max_connections) {
            return Err(src.error("proxy.max_connections", "max_connections must be between 1 and 1000000"));
        }
        if self.proxy.connect_timeout.is_zero() || self.proxy.connect_timeout > Duration::from_secs(300) {
            return Err(src.error("proxy.connect_timeout", "connect_timeout must be above zero and at most 5m"));
        }
        let mut listens = std::collections::HashSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            if mesh_proto::service::ServiceName::parse(&u.service).is_none() {
                return Err(src.error(
                    &format!("upstream[{i}].service"),
                    format!("'{}' is not a service name (SERVICE or SUBSET.SERVICE)", u.service),
                ));
            }
            if u.listen.port() == 0 || !listens.insert(u.listen) {
                return Err(src.error(
                    &format!("upstream[{i}].listen"),
                    format!("{} needs a port of its own (not 0, not used by another upstream)", u.listen),
                ));
            }
            if let Some(source) = &u.source {
                if !self.service.iter().any(|s| &s.name == source) {
                    return Err(src.error(
                        &format!("upstream[{i}].source"),
                        format!("'{source}' is not a [[service]] of this host"),
                    ));
                }
            }
        }
        if let Some(source) = &self.proxy.source {
            if !self.service.iter().any(|s| &s.name == source) {
                return Err(src.error("proxy.source", format!("'{source}' is not a [[service]] of this host")));
            }
        }
        if let Some(b) = &self.bridge {
            if !mesh_proto::is_dns_label(&b.cluster) {
                return Err(src.error(
                    "bridge.cluster",
                    format!("'{}' is not a valid cluster name: {}", b.cluster, mesh_proto::DNS_LABEL_RULE),
                ));
            }
        }
        if self.admin.socket.as_os_str().is_empty() {
            return Err(src.error("admin.socket", "admin.socket must be a path"));
        }
        let ttl = self.identity.cert_ttl;
        if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(365 * 86_400) {
            return Err(src.error("identity.cert_ttl", "cert_ttl must be between 10s and 365 days"));
        }
        let g = &self.gossip;
        // Floors: below them a node spends a core on timers and datagrams for nothing.
        let at_least = |key: &str, value: Duration, min: Duration| {
            if value < min {
                Err(src.error(
                    &format!("gossip.{key}"),
                    format!("{key} must be at least {} (it is {})", duration::format(min), duration::format(value)),
                ))
            } else {
                Ok(())
            }
        };
        at_least("probe_interval", g.probe_interval, MIN_PROBE_INTERVAL)?;
        at_least("probe_timeout", g.probe_timeout, MIN_PROBE_TIMEOUT)?;
        at_least("gossip_interval", g.gossip_interval, MIN_GOSSIP_INTERVAL)?;
        at_least("sync_interval", g.sync_interval, MIN_SYNC_INTERVAL)?;
        if g.probe_timeout >= g.probe_interval {
            return Err(src.error("gossip.probe_timeout", "probe_timeout must be below probe_interval"));
        }
        if !(1.0..=100.0).contains(&g.suspicion_mult) || !(1.0..=100.0).contains(&g.retransmit_mult) {
            return Err(
                src.error("gossip.suspicion_mult", "suspicion_mult and retransmit_mult must be between 1 and 100")
            );
        }
        if !(512..=1200).contains(&g.max_datagram) {
            return Err(src.error("gossip.max_datagram", "max_datagram must be between 512 and 1200 bytes"));
        }
        if g.reap_after < Duration::from_secs(1) {
            return Err(src.error("gossip.reap_after", "reap_after must be at least 1s"));
        }
        if g.indirect_probes == 0 || g.gossip_nodes == 0 {
            return Err(src.error("gossip.gossip_nodes", "indirect_probes and gossip_nodes must be at least 1"));
        }
        let mut names = BTreeSet::new();
        for (i, svc) in self.service.iter().enumerate() {
            let path = format!("service[{i}]");
            svc.validate(src, &path)?;
            if let Err(why) = check_service_address(svc) {
                return Err(src.error(&format!("{path}.address"), why));
            }
            if !names.insert(&svc.name) {
                return Err(src.error(&format!("{path}.name"), format!("service '{}' is declared twice", svc.name)));
            }
        }
        Ok(())
    }

    /// The address peers dial to reach this node, given the address the UDP socket
    /// actually bound (which has the real port when `bind` asked for port 0).
    pub fn advertise_addr(&self, bound: SocketAddr) -> Result<SocketAddr, AdvertiseError> {
        if let Some(mut adv) = self.advertise {
            if adv.port() == 0 {
                adv.set_port(bound.port());
            }
            return Ok(adv);
        }
        if !bound.ip().is_unspecified() {
            return Ok(bound);
        }
        let private = private_ipv4s().map_err(AdvertiseError::Interfaces)?;
        match private.as_slice() {
            [one] => Ok(SocketAddr::new(IpAddr::V4(*one), bound.port())),
            [] => Err(AdvertiseError::NoPrivate),
            several => Err(AdvertiseError::Several(several.to_vec())),
        }
    }
}

/// `advertise` was left out and could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error("bind is 0.0.0.0 and this host has no private IPv4 address: set advertise")]
    NoPrivate,
    #[error("bind is 0.0.0.0 and this host has several private IPv4 addresses ({}): set advertise to one of them",
        .0.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "))]
    Several(Vec<Ipv4Addr>),
    #[error("cannot list network interfaces: {0}")]
    Interfaces(nix::Error),
}

/// RFC 1918 and RFC 6598 addresses on this host's interfaces, as Consul picks them.
fn private_ipv4s() -> Result<Vec<Ipv4Addr>, nix::Error> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(ip) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()).map(|s| s.ip()) else {
            continue;
        };
        let [a, b, ..] = ip.octets();
        if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
            out.insert(ip);
        }
    }
    Ok(out.into_iter().collect())
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(mesh_proto::is_dns_label)
}

/// Whether a service this host declares may live at its address: one of this host's own
/// addresses (loopback included), unless the service says `external = true`. So no
/// registration, local or replicated, can make meshd connect anywhere its operator did
/// not say.
pub fn check_service_address(spec: &mesh_proto::service::ServiceSpec) -> Result<(), String> {
    let a = spec.address;
    if spec.external || a.is_loopback() || host_addresses().contains(&a) {
        return Ok(());
    }
    Err(format!(
        "{a} is not an address of this host: a service runs on the host that registers it (set external = true for one that lives elsewhere)"
    ))
}

/// This host's interface addresses, as the kernel lists them now.
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, InputError> {
        Config::parse("meshd.toml", text)
    }

    #[test]
    fn the_design_example_is_accepted() {
        let text = r#"
node_name = "vm-1"
data_dir = "/var/lib/meshd"
bind = "0.0.0.0:7946"
advertise = "198.18.0.1:7946"
join = ["198.18.0.2:7946"]
trust_domain = "mesh.local"
drain_timeout = "5s"

[dns]
listen = "127.0.0.153:53"
domain = "mesh"
ttl = "5s"

[proxy]
vip_range = "127.77.0.0/16"

[admin]
socket = "/run/meshd/meshd.sock"
http = "127.0.0.1:9101"

[[service]]
name = "reviews"
address = "127.0.0.1"
port = 9080
protocol = "http"
labels = { version = "v1" }
check = { http = "http://127.0.0.1:9080/health", interval = "5s" }
"#;
        let c = parse(text).expect("the full example is valid");
        assert_eq!(c.node_name, "vm-1");
        assert_eq!(c.advertise, Some("198.18.0.1:7946".parse().expect("addr")));
        assert_eq!(c.service.len(), 1);
        assert_eq!(c.admin.http, Some("127.0.0.1:9101".parse().expect("addr")));
    }

    #[test]
    fn defaults() {
        let c = parse("node_name = \"a\"\n").expect("valid");
        assert_eq!(c.bind, "0.0.0.0:7946".parse().expect("addr"));
        assert_eq!(c.dns.listen, "127.0.0.153:53".parse().expect("addr"));
        assert_eq!(c.dns.ttl, Duration::from_secs(5));
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.admin.socket, PathBuf::from("/run/meshd/meshd.sock"));
        assert_eq!(c.admin.http, None);
        assert_eq!(c.proxy.vip_range.to_string(), "127.77.0.0/16");
        assert_eq!(c.identity.cert_ttl, Duration::from_secs(86_400));
        assert_eq!(c.trust_domain, "mesh.local");
    }

    /// Each bad file: the key it must name and the line it is on.
    #[test]
    fn bad_files_name_key_and_line() {
        let cases: &[(&str, &str, usize)] = &[
            ("bnid = \"0.0.0.0:1\"\n", "bnid", 1),
            ("node_name = \"a\"\n[dns]\nttl = \"5s\"\nlisten = 53\n", "dns.listen", 4),
            ("node_name = \"a\"\ndrain_timeout = \"soon\"\n", "drain_timeout", 2),
            ("node_name = \"a\"\n\nbind = \"10.0.0.300:1\"\n", "bind", 3),
            ("node_name = \"a\"\n[admin]\nhttp = \"localhost\"\n", "admin.http", 3),
            ("node_name = \"a\"\njoin = [\"1.2.3.4:1\", \"nope\"]\n", "join[1]", 2),
            ("node_name = \"VM_1\"\n", "node_name", 1),
            ("node_name = \"a\"\n[proxy]\nvip_range = \"127.77.0.1/16\"\n", "proxy.vip_range", 3),
            ("node_name = \"a\"\n[proxy]\nvip_range = \"127.77.0.0/30\"\n", "proxy.vip_range", 3),
            ("node_name = \"a\"\n[dns]\nttl = \"1500ms\"\n", "dns.ttl", 3),
            ("node_name = \"a\"\n[dns]\ndomain = \"me sh\"\n", "dns.domain", 3),
            ("node_name = \"a\"\nlog_level = \"\"\n", "log_level", 2),
            ("node_name = \"a\"\n[identity]\ncert_ttl = \"1s\"\n", "identity.cert_ttl", 3),
            ("node_name = \"a\"\nadvertise = \"0.0.0.0:7946\"\n", "advertise", 2),
            (
                "node_name = \"a\"\n[[service]]\nname = \"x\"\nport = 1\n[[service]]\nname = \"x\"\nport = 2\n",
                "service[1].name",
                6,
            ),
            ("node_name = \"a\"\n[[service]]\nname = \"x\"\nport = 70000\n", "service[0].port", 4),
            ("node_name = \"a\"\n[[service]]\nname = \"x\"\nport = 1\ncolour = \"red\"\n", "service[0].colour", 5),
            // Virtual IPs that would shadow others' addresses or meshd's own.
            ("node_name = \"a\"\n[proxy]\nvip_range = \"0.0.0.0/0\"\n", "proxy.vip_range", 3),
            ("node_name = \"a\"\n[proxy]\nvip_range = \"8.8.0.0/16\"\n", "proxy.vip_range", 3),
            ("node_name = \"a\"\nbind = \"127.77.0.1:7946\"\n", "bind", 2),
            ("node_name = \"a\"\n[dns]\nlisten = \"127.77.3.3:53\"\n", "dns.listen", 3),
            // Values that would burn a core: the floors.
            ("node_name = \"a\"\n[gossip]\nprobe_interval = \"1ns\"\n", "gossip.probe_interval", 3),
            ("node_name = \"a\"\n[gossip]\ngossip_interval = \"2ns\"\n", "gossip.gossip_interval", 3),
            ("node_name = \"a\"\n[gossip]\nsync_interval = \"1ms\"\n", "gossip.sync_interval", 3),
            (
                "node_name = \"a\"\n[[service]]\nname = \"x\"\nport = 1\ncheck = { tcp = \"127.0.0.1:1\", interval = \"1ns\" }\n",
                "service[0].check.interval",
                5,
            ),
        ];
        for (text, key, line) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.key.as_deref(), Some(*key), "{text:?} gave {err}");
            assert_eq!(err.line, Some(*line), "{text:?} gave {err}");
            assert!(err.to_string().starts_with(&format!("meshd.toml:{line}: ")), "{err}");
        }
    }

    #[test]
    fn unknown_key_message_is_the_documented_one() {
        let err = parse("bnid = \"0.0.0.0:1\"\n").expect_err("unknown key");
        assert_eq!(err.to_string(), "meshd.toml:1: unknown key 'bnid' (did you mean 'bind'?)");
    }

    #[test]
    fn advertise_resolution() {
        let c = parse("node_name = \"a\"\nbind = \"127.0.3.1:0\"\n").expect("valid");
        let bound: SocketAddr = "127.0.3.1:4567".parse().expect("addr");
        assert_eq!(c.advertise_addr(bound).expect("loopback bind"), bound);
        let c = parse("node_name = \"a\"\nadvertise = \"198.18.0.1:0\"\n").expect("valid");
        assert_eq!(c.advertise_addr(bound).expect("explicit"), "198.18.0.1:4567".parse::<SocketAddr>().expect("addr"));
    }
}
