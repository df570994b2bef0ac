//! Wiring. [`build`] binds every socket first and returns a [`Bound`] with the real
//! addresses (port 0 is legal; tests read the addresses back), then [`Bound::run`]
//! serves until told to stop, drains within `drain_timeout`, and cleans up. No logic of
//! its own lives here.
//!
//! Must not: hold logic of its own: a decision found here belongs in the module it is
//! about.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use mesh_proto::api::MemberState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{TcpListener, UnixListener};

use crate::admin::{self, AdminState};
use crate::config::{AdvertiseError, Config};
use crate::drain::{self, DrainOutcome, DrainTrigger, DrainWatcher};
use crate::handover::{Inherited, Kind, Slot};
use crate::identity::signer::Signer;
use crate::identity::{verify, Identity, IdentityError};
use crate::state::{self, Publisher, Snapshot};
use crate::store::{self, Store, StoreError};
use crate::transport::{Transport, TransportError};
use crate::{datadir, membership, metrics, signal};

/// Why meshd could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A socket could not be bound (address in use, permission denied...). The I/O error
    /// is part of the message, not a source, so that a chain printer says it once.
    #[error("cannot bind {what} on {addr}: {error}{}", bind_hint(.error))]
    Bind { what: &'static str, addr: String, error: std::io::Error },
    /// Another process already serves the admin socket.
    #[error("another meshd is already serving {}: stop it first, or set admin.socket", path.display())]
    AlreadyRunning { path: PathBuf },
    /// The advertise address could not be worked out.
    #[error(transparent)]
    Advertise(#[from] AdvertiseError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node's identity is missing or unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// `[bridge]` is set but the cluster cannot be reached with what it names.
    #[error("[bridge]: {0}")]
    Bridge(#[from] crate::bridge::BridgeError),
}

impl AppError {
    /// Whether the operator must change the config (exit 2) rather than the machine's
    /// state (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            AppError::Advertise(_) | AppError::Store(StoreError::Corrupt { .. }) => true,
            AppError::Identity(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// What to do about a bind error, when there is something to say.
fn bind_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another meshd (or `meshd dev`) may be running on this address: stop it, or choose another address"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE (the systemd unit grants it)"
        }
        _ => "",
    }
}

/// Every socket bound, nothing served yet.
pub struct Bound {
    /// The admin Unix socket's path.
    pub admin_socket: PathBuf,
    /// The node's data directory, watched while serving.
    data_dir: PathBuf,
    /// The `admin.http` address as bound, when set.
    pub admin_http: Option<SocketAddr>,
    /// The UDP address as bound: gossip, tunnels and joins.
    pub udp: SocketAddr,
    /// What peers dial.
    pub advertise: SocketAddr,
    /// The replicated store, open.
    pub store: Store,
    /// This node's identity.
    pub identity: Arc<Identity>,
    /// The QUIC endpoint on the UDP port.
    pub transport: Arc<Transport>,
    signer: Arc<Signer>,
    seeds: Vec<SocketAddr>,
    gossip: GossipParts,
    catalog: crate::catalog::Catalog,
    vips: Arc<crate::catalog::vip::Vips>,
    proxy: Arc<crate::proxy::Proxy>,
    upstreams: Vec<(TcpListener, crate::proxy::Destination)>,
    /// The DNS address as bound (UDP and TCP).
    pub dns: SocketAddr,
    dns_sockets: (tokio::net::UdpSocket, TcpListener, crate::dns::answer::Zone, crate::dns::Metrics),
    node_name: String,
    drain_timeout: Duration,
    policy_default: crate::config::PolicyDefault,
    publisher: Publisher,
    admin_listener: UnixListener,
    admin_inode: u64,
    http_listener: Option<TcpListener>,
    registry: prometheus_client::registry::Registry,
    /// The access log's writer and the span exporter, when configured.
    telemetry_tasks: Vec<Task>,
    /// The configuration it started with, and where reloaded ones arrive.
    config: crate::config::Config,
    reloads: Option<tokio::sync::mpsc::Receiver<crate::config::Config>>,
    /// Copies of the listening sockets, for a successor.
    handover_fds: Vec<(Slot, OwnedFd)>,
    /// What a predecessor handed over, when this process is a successor.
    inherited: Option<Arc<Inherited>>,
    upgrades: Option<Upgrades>,
    /// The Kubernetes bridge's client, with `[bridge]`.
    bridge: Option<(crate::config::BridgeConfig, kube::Client)>,
}

/// Where upgrade requests come from and what to start.
pub struct Upgrades {
    /// One message per request (SIGUSR2, `meshd upgrade`).
    pub requests: tokio::sync::mpsc::Receiver<()>,
    /// The binary to start: the path this one was started from (a package upgrade has
    /// replaced the file there).
    pub exe: PathBuf,
    /// The config file, for the successor.
    pub config: PathBuf,
}

/// A task `run` starts.
type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What membership needs that `build` prepares.
struct GossipParts {
    params: membership::core::Params,
    sync_interval: Duration,
    reap_after: Duration,
    metrics: membership::Metrics,
    heard: Arc<membership::Heard>,
    conns: tokio::sync::mpsc::Receiver<crate::transport::Peer>,
    writes: tokio::sync::mpsc::Receiver<Arc<crate::store::entry::Entry>>,
    bump: u64,
}

/// Binds every socket `config` names.
pub async fn build(config: &Config) -> Result<Bound, AppError> {
    build_with(config, None).await
}

/// [`build`], taking each socket from `inherited` when the predecessor handed one over
/// for the same address (an upgrade), binding it otherwise.
pub async fn build_with(config: &Config, inherited: Option<Arc<Inherited>>) -> Result<Bound, AppError> {
    let from = inherited.as_deref();
    let udp_socket = match from.and_then(|i| i.udp(Kind::Mesh, &config.bind.to_string())) {
        Some(socket) => socket,
        None => UdpSocket::bind(config.bind).map_err(|error| AppError::Bind {
            what: "the mesh UDP port (bind)",
            addr: config.bind.to_string(),
            error,
        })?,
    };
    let udp = udp_socket.local_addr().map_err(|error| AppError::Bind {
        what: "the mesh UDP port (bind)",
        addr: config.bind.to_string(),
        error,
    })?;
    crate::transport::size_socket_buffers(&udp_socket);
    let advertise = config.advertise_addr(udp)?;

    // DNS on UDP and TCP, the same port for both (port 0: the one UDP got).
    let dns_err = |error| AppError::Bind { what: "DNS (dns.listen)", addr: config.dns.listen.to_string(), error };
    let dns_key = config.dns.listen.to_string();
    let dns_udp = match from.and_then(|i| i.udp(Kind::DnsUdp, &dns_key)) {
        Some(s) => {
            s.set_nonblocking(true).map_err(dns_err)?;
            tokio::net::UdpSocket::from_std(s).map_err(dns_err)?
        }
        None => tokio::net::UdpSocket::bind(config.dns.listen).await.map_err(dns_err)?,
    };
    let dns_addr = dns_udp.local_addr().map_err(dns_err)?;
    let dns_tcp = match from.and_then(|i| i.tcp(Kind::DnsTcp, &dns_key)) {
        Some(l) => tokio_listener(l).map_err(dns_err)?,
        None => TcpListener::bind(dns_addr).await.map_err(dns_err)?,
    };
    let zone = crate::dns::answer::Zone::new(&config.dns.domain, u32::try_from(config.dns.ttl.as_secs()).unwrap_or(5))
        .map_err(|e| AppError::Bind {
            what: "DNS (dns.domain)",
            addr: config.dns.domain.clone(),
            error: std::io::Error::other(e.to_string()),
        })?;

    let (admin_listener, admin_inode) = match from.and_then(|i| i.unix(&config.admin.socket.display().to_string())) {
        Some(l) => inherit_admin_socket(&config.admin.socket, l)?,
        None => bind_admin_socket(&config.admin.socket)?,
    };
    let http_listener = match config.admin.http {
        Some(addr) => {
            let err =
                |error| AppError::Bind { what: "the metrics address (admin.http)", addr: addr.to_string(), error };
            Some(match from.and_then(|i| i.tcp(Kind::AdminHttp, &addr.to_string())) {
                Some(l) => tokio_listener(l).map_err(err)?,
                None => TcpListener::bind(addr).await.map_err(err)?,
            })
        }
        None => None,
    };
    let admin_http = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let mut upstreams = Vec::new();
    for u in &config.upstream {
        let err =
            |error| AppError::Bind { what: "an upstream ([[upstream]] listen)", addr: u.listen.to_string(), error };
        let listener = match from.and_then(|i| i.tcp(Kind::Proxy, &u.listen.to_string())) {
            Some(l) => tokio_listener(l).map_err(err)?,
            None => TcpListener::bind(u.listen).await.map_err(err)?,
        };
        let dest = crate::proxy::Destination { name: u.service.clone(), source_service: u.source.clone() };
        upstreams.push((listener, dest));
    }
    // Copies of every listening socket, for a successor (an upgrade).
    let dup_err = |error| AppError::Bind { what: "a copy of a socket for upgrades", addr: String::new(), error };
    let mut handover_fds: Vec<(Slot, OwnedFd)> = vec![
        (
            Slot { kind: Kind::Mesh, key: config.bind.to_string() },
            udp_socket.as_fd().try_clone_to_owned().map_err(dup_err)?,
        ),
        (Slot { kind: Kind::DnsUdp, key: dns_key.clone() }, dns_udp.as_fd().try_clone_to_owned().map_err(dup_err)?),
        (Slot { kind: Kind::DnsTcp, key: dns_key }, dns_tcp.as_fd().try_clone_to_owned().map_err(dup_err)?),
        (
            Slot { kind: Kind::Admin, key: config.admin.socket.display().to_string() },
            admin_listener.as_fd().try_clone_to_owned().map_err(dup_err)?,
        ),
    ];
    if let (Some(l), Some(addr)) = (&http_listener, config.admin.http) {
        handover_fds.push((
            Slot { kind: Kind::AdminHttp, key: addr.to_string() },
            l.as_fd().try_clone_to_owned().map_err(dup_err)?,
        ));
    }
    for ((l, _), u) in upstreams.iter().zip(&config.upstream) {
        handover_fds.push((
            Slot { kind: Kind::Proxy, key: u.listen.to_string() },
            l.as_fd().try_clone_to_owned().map_err(dup_err)?,
        ));
    }

    let publisher = Publisher::new(Snapshot::new(
        &config.node_name,
        vec![state::Member {
            name: config.node_name.clone(),
            addr: advertise,
            state: MemberState::Alive,
            last_heard: SystemTime::now(),
        }],
    ));
    let mut registry = metrics::registry();
    let store_metrics = store::Metrics::register(metrics::mesh(&mut registry));
    let tls_metrics = verify::Metrics::register(metrics::mesh(&mut registry));
    let identity = Arc::new(Identity::load(&config.data_dir, &config.node_name, tls_metrics)?);
    let authority = Arc::new(identity.entry_authority()?);
    let open = || {
        Store::open(
            &datadir::store_path(&config.data_dir),
            &config.node_name,
            authority.clone(),
            store_metrics.clone(),
            publisher.store_sink(),
        )
    };
    let store = match open() {
        Ok(store) => store,
        // A predecessor has just closed it; its last threads may still hold the lock.
        Err(first) if inherited.is_some() => {
            let deadline = std::time::Instant::now() + STORE_RELEASE;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match open() {
                    Ok(store) => break store,
                    Err(_) if std::time::Instant::now() < deadline => {}
                    Err(_) => return Err(first.into()),
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    // Revocations are in force before the first handshake.
    identity.revocations.replace(publisher.current().parts.revoked.clone());
    identity.set_roots(&publisher.current().parts.roots, store::wall_ms());
    let transport_metrics = crate::transport::Metrics::register(metrics::mesh(&mut registry));
    let (conns_tx, conns_rx) = tokio::sync::mpsc::channel(1024);
    // A peer may hold as many tunnels to this node as a listener admits connections.
    let streams = u32::try_from(config.proxy.max_connections).unwrap_or(u32::MAX);
    // Connection IDs name this process; a successor's must differ from its predecessor's.
    let previous = from.and_then(|i| i.previous.as_ref().map(|(g, _)| *g));
    let generation = loop {
        let g: u8 = rand::random();
        if Some(g) != previous {
            break g;
        }
    };
    let route = match from.and_then(|i| i.previous.as_ref()) {
        Some((g, to)) => Some((*g, to.try_clone().map_err(TransportError::Endpoint)?)),
        None => None,
    };
    let transport = Arc::new(Transport::with_generation(
        udp_socket,
        generation,
        route,
        identity.clone(),
        transport_metrics,
        Some(conns_tx),
        streams,
    )?);
    let (writes_tx, writes_rx) = tokio::sync::mpsc::channel(1024);
    store.broadcast_to(writes_tx);
    let gossip = GossipParts {
        params: config.gossip.params(),
        sync_interval: config.gossip.sync_interval,
        reap_after: config.gossip.reap_after,
        metrics: membership::Metrics::register(metrics::mesh(&mut registry)),
        heard: Arc::default(),
        conns: conns_rx,
        writes: writes_rx,
        // A restarted node is a new SWIM identity: it supersedes the old one at once.
        bump: store::wall_ms(),
    };
    let signer = Arc::new(Signer::new(identity.clone(), store.clone(), advertise, config.identity.cert_ttl));
    if signer.is_signer() && identity.current().info.role.is_none() {
        // A certificate from before roles: other nodes would take this signer for an
        // operator and refuse its revocations. A renewal writes the role in.
        match signer.renew_self() {
            Ok(info) => tracing::info!(role = ?info.role, "renewed a certificate from before roles"),
            Err(e) => tracing::warn!(error = %e, "cannot renew a certificate from before roles"),
        }
    }
    crate::identity::seal::record_own_key(&store, &identity)?;
    signer.announce()?;
    let catalog = crate::catalog::Catalog::new(store.clone(), &config.node_name)
        .with_metrics(crate::catalog::Metrics::register(metrics::mesh(&mut registry)))
        .with_publisher(publisher.clone())?;
    catalog.declare_config(&config.service)?;
    let vips = Arc::new(crate::catalog::vip::Vips::load(store.clone(), config.proxy.vip_range)?);
    let mut seeds: Vec<SocketAddr> = config.join.iter().copied().filter(|s| *s != advertise && *s != udp).collect();
    // A node restarted without seeds announces itself to the members it last knew.
    if seeds.is_empty() {
        seeds.extend(datadir::known_members(&config.data_dir).into_iter().filter(|a| *a != advertise && *a != udp));
    }
    // A successor announces itself to every member its predecessor knew.
    for (_, addr) in from.map(|i| i.members.as_slice()).unwrap_or_default() {
        if !seeds.contains(addr) && *addr != advertise {
            seeds.push(*addr);
        }
    }
    let (telemetry, telemetry_metrics) = crate::telemetry::traffic::Telemetry::register(
        &mut registry,
        crate::telemetry::traffic::Settings {
            node: config.node_name.clone(),
            trust_domain: config.trust_domain.clone(),
            dns_domain: config.dns.domain.trim_end_matches('.').to_owned(),
            admin_http: admin_http.map(|a| a.to_string()),
            sample_percent: config.tracing.sample_percent,
        },
    );
    crate::telemetry::traffic::Telemetry::register_own(&telemetry_metrics, metrics::mesh(&mut registry));
    let mut telemetry_tasks: Vec<Task> = Vec::new();
    let telemetry = match &config.access_log {
        Some(a) => {
            let target = crate::telemetry::access::Target::parse(&a.path);
            let (log, writer) = crate::telemetry::access::AccessLog::new(target, telemetry_metrics.clone());
            telemetry_tasks.push(Box::pin(writer));
            telemetry.with_access_log(log)
        }
        None => telemetry,
    };
    let telemetry = match &config.tracing.otlp_endpoint {
        Some(endpoint) => {
            let (spans, exporter) =
                crate::telemetry::otlp::Spans::new(endpoint, &config.node_name, telemetry_metrics.clone()).map_err(
                    |e| AppError::Bind {
                        what: "traces (tracing.otlp_endpoint)",
                        addr: endpoint.clone(),
                        error: std::io::Error::other(e),
                    },
                )?;
            telemetry_tasks.push(Box::pin(exporter));
            telemetry.with_spans(spans)
        }
        None => telemetry,
    };
    let proxy = Arc::new(crate::proxy::Proxy::new(
        &config.node_name,
        transport.clone(),
        crate::proxy::Metrics::register(metrics::mesh(&mut registry)),
        crate::proxy::Settings {
            connect_timeout: config.proxy.connect_timeout,
            max_connections: config.proxy.max_connections,
            policy_default: config.policy.default,
            source: config.proxy.source.clone(),
        },
        Arc::new(telemetry),
    ));

    let bridge = match &config.bridge {
        Some(b) => Some((b.clone(), crate::bridge::client(b).await?)),
        None => None,
    };

    Ok(Bound {
        admin_socket: config.admin.socket.clone(),
        admin_http,
        udp,
        advertise,
        store,
        identity,
        transport,
        signer,
        seeds,
        gossip,
        catalog,
        vips,
        proxy,
        upstreams,
        dns: dns_addr,
        dns_sockets: (dns_udp, dns_tcp, zone, crate::dns::Metrics::register(metrics::mesh(&mut registry))),
        node_name: config.node_name.clone(),
        data_dir: config.data_dir.clone(),
        drain_timeout: config.drain_timeout,
        policy_default: config.policy.default,
        publisher,
        admin_listener,
        admin_inode,
        http_listener,
        registry,
        telemetry_tasks,
        config: config.clone(),
        reloads: None,
        handover_fds,
        inherited,
        upgrades: None,
        bridge,
    })
}

/// How long a successor waits for its predecessor's store to close.
const STORE_RELEASE: Duration = Duration::from_secs(10);

/// A listening socket received from a predecessor, for tokio.
fn tokio_listener(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// The admin socket as the predecessor bound it (same file, same inode).
fn inherit_admin_socket(path: &Path, l: std::os::unix::net::UnixListener) -> Result<(UnixListener, u64), AppError> {
    let err =
        |error| AppError::Bind { what: "the admin socket (admin.socket)", addr: path.display().to_string(), error };
    l.set_nonblocking(true).map_err(err)?;
    let inode = std::fs::metadata(path).map_err(err)?.ino();
    Ok((UnixListener::from_std(l).map_err(err)?, inode))
}

impl Bound {
    /// Configs read again while serving (SIGHUP) arrive on `configs`; see [`crate::reload`].
    pub fn reload_from(mut self, configs: tokio::sync::mpsc::Receiver<crate::config::Config>) -> Bound {
        self.reloads = Some(configs);
        self
    }

    /// Upgrade requests (SIGUSR2, `meshd upgrade`) arrive on `upgrades`; see
    /// [`crate::handover`].
    pub fn upgrade_from(mut self, upgrades: Upgrades) -> Bound {
        self.upgrades = Some(upgrades);
        self
    }

    /// This node's signer (tokens, joins), for `meshd dev`'s in-process joins.
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// Serves until `stop` resolves, or until a part of meshd fails (ends before the
    /// drain), then drains for at most `drain_timeout` and returns. Tells systemd READY
    /// once serving and STOPPING when the drain starts.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Ran {
        let (trigger, watcher) = drain::new();
        if let Some(inherited) = &self.inherited {
            self.proxy.inherit(inherited.clone());
        }
        let admin_metrics = admin::Metrics::register(metrics::mesh(&mut self.registry));
        let bridge_metrics =
            self.bridge.is_some().then(|| crate::bridge::Metrics::register(metrics::mesh(&mut self.registry)));
        let part_failures = Family::<PartLabel, Counter>::default();
        metrics::mesh(&mut self.registry).register(
            "part_failures",
            "Parts of meshd that ended before the drain (meshd then exits non-zero), by part",
            part_failures.clone(),
        );
        let state = Arc::new(AdminState {
            snapshot: self.publisher.subscribe(),
            registry: Arc::new(self.registry),
            draining: watcher.signal(),
            metrics: admin_metrics,
            identity: self.identity.clone(),
            transport: self.transport.clone(),
            signer: self.signer.clone(),
            heard: self.gossip.heard.clone(),
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            vips: self.vips.clone(),
            seeds: self.seeds.clone(),
            policy_default: self.policy_default,
            telemetry: self.proxy.telemetry().clone(),
            blocking: Arc::new(tokio::sync::Semaphore::new(admin::MAX_BLOCKING)),
        });

        // Logged before anything serves, so that whoever sees the admin socket answer
        // finds the bound addresses in the log already (the test harness reads them).
        tracing::info!(
            admin_socket = %self.admin_socket.display(),
            admin_http = %self.admin_http.map_or("off".to_owned(), |a| a.to_string()),
            udp = %self.udp,
            advertise = %self.advertise,
            dns = %self.dns,
            "sockets bound; serving"
        );
        let mut tasks = crate::supervisor::Parts::default();
        // They end with the process (the proxy holds their queues).
        for task in std::mem::take(&mut self.telemetry_tasks) {
            tokio::spawn(task);
        }
        tasks.spawn("admin", serve_unix(self.admin_listener, admin::router(state.clone()), watcher.clone()));
        if let Some(listener) = self.http_listener {
            tasks.spawn("admin.http", serve_tcp(listener, admin::http_router(state.clone()), watcher.clone()));
        }
        if let Some(interval) = signal::watchdog_interval() {
            tasks.spawn("watchdog", signal::run_watchdog(interval, watcher.clone()));
        }
        let (joins_tx, joins_rx) = tokio::sync::mpsc::channel(64);
        tasks.spawn("transport", self.transport.clone().serve(joins_tx, watcher.clone()));
        let g = self.gossip;
        let (members_tx, members_rx) = tokio::sync::mpsc::channel(1024);
        let (exchange, member_lists) = membership::Exchange::new();
        let services = crate::peer::server::Services {
            signer: self.signer.clone(),
            store: self.store.clone(),
            exchange: exchange.clone(),
            proxy: self.proxy.clone(),
            drain: watcher.clone(),
        };
        tasks.spawn("peer", crate::peer::server::dispatch(joins_rx, g.conns, members_tx, services, watcher.clone()));
        let inputs = membership::Inputs {
            me: membership::core::MemberId { name: self.node_name.as_str().into(), addr: self.advertise, bump: g.bump },
            params: g.params,
            sync_interval: g.sync_interval,
            reap_after: g.reap_after,
            transport: self.transport.clone(),
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            seeds: self.seeds.clone(),
            metrics: g.metrics,
            heard: g.heard,
            exchange,
        };
        tasks.spawn("gossip", membership::driver::run(inputs, members_rx, g.writes, member_lists, watcher.clone()));
        tasks.spawn(
            "renewal",
            crate::peer::renew::run(
                self.identity.clone(),
                self.transport.clone(),
                self.signer.clone(),
                self.seeds.clone(),
                watcher.clone(),
            ),
        );
        let (dns_udp, dns_tcp, zone, dns_metrics) = self.dns_sockets;
        // DNS answers a virtual IP once the proxy listens on it.
        let (bound_tx, bound_rx) = tokio::sync::watch::channel(crate::dns::VipMap::default());
        // A successor routes once gossip has confirmed the members its predecessor knew
        // (connections wait in the listeners' queues meanwhile, rather than find no
        // healthy instance).
        let expected: Vec<String> =
            self.inherited.as_ref().map(|i| i.members.iter().map(|(n, _)| n.clone()).collect()).unwrap_or_default();
        let mut snapshots = self.publisher.subscribe();
        let hold: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = (!expected.is_empty()).then(|| {
            Box::pin(async move {
                let known = |s: &Snapshot| {
                    expected.iter().all(|n| s.members.iter().any(|m| &m.name == n && m.state == MemberState::Alive))
                };
                let confirmed = tokio::time::timeout(MEMBERS_WITHIN, snapshots.wait_for(|s| known(s))).await;
                match confirmed {
                    Ok(_) => tracing::info!(members = expected.len(), "upgrade: gossip confirmed the members; routing"),
                    Err(_) => {
                        tracing::warn!(within = ?MEMBERS_WITHIN, "upgrade: not every member confirmed; routing anyway")
                    }
                }
            }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        });
        tasks.spawn(
            "proxy",
            crate::proxy::run(
                self.proxy.clone(),
                self.publisher.subscribe(),
                self.vips.subscribe(),
                bound_tx,
                std::mem::take(&mut self.upstreams),
                hold,
                watcher.clone(),
            ),
        );
        let snapshots = self.publisher.subscribe();
        let responder = Arc::new(crate::dns::Responder::new(
            zone,
            dns_metrics,
            snapshots.borrow().clone(),
            bound_rx.borrow().clone(),
        ));
        tasks.spawn("dns answers", crate::dns::keep_current(responder.clone(), snapshots, bound_rx, watcher.clone()));
        tasks.spawn("dns", crate::dns::serve(responder.clone(), dns_udp, dns_tcp, watcher.clone()));
        let targets = crate::reload::Targets { catalog: self.catalog.clone(), proxy: self.proxy.clone(), responder };
        // Without a sender (`meshd dev`) the channel is closed and the task waits for the drain.
        let reloads = self.reloads.take().unwrap_or_else(|| tokio::sync::mpsc::channel(1).1);
        tasks.spawn("reload", crate::reload::run(reloads, self.config.clone(), targets, watcher.clone()));
        tasks.spawn(
            "catalog",
            crate::catalog::run(self.catalog.clone(), self.vips.clone(), self.publisher.subscribe(), watcher.clone()),
        );
        tasks.spawn(
            "ca roots",
            crate::peer::renew::follow_roots(
                self.publisher.subscribe(),
                self.identity.clone(),
                self.transport.clone(),
                self.signer.clone(),
                watcher.clone(),
            ),
        );
        tasks.spawn(
            "revocations",
            crate::transport::apply_revocations(self.publisher.subscribe(), self.transport.clone(), watcher.clone()),
        );
        tasks.spawn("data_dir", datadir::watch(self.data_dir.clone(), watcher.clone()));
        if let (Some((config, client)), Some(metrics)) = (self.bridge.take(), bridge_metrics) {
            if config.export {
                let inputs = crate::bridge::ExportInputs {
                    config: config.clone(),
                    client: client.clone(),
                    node: self.node_name.clone(),
                    address: self.advertise.ip(),
                    proxy: self.proxy.clone(),
                    snapshots: self.publisher.subscribe(),
                    metrics: metrics.clone(),
                };
                tasks.spawn("bridge export", crate::bridge::export(inputs, watcher.clone()));
            }
            tasks.spawn(
                "bridge",
                crate::bridge::run(config, client, self.catalog.clone(), self.proxy.clone(), metrics, watcher.clone()),
            );
        }
        tasks.spawn(
            "members file",
            datadir::keep_members(self.data_dir.clone(), self.publisher.subscribe(), watcher.clone()),
        );
        tasks.spawn("store recovery", keep_store_writable(self.store.clone(), watcher.clone()));
        drop(watcher);

        signal::notify_ready();
        if let Some(inherited) = self.inherited.take() {
            // Serving on every inherited socket: the predecessor may hand systemd over.
            match tokio::task::spawn_blocking(move || inherited.serving()).await {
                Ok(Ok(())) => tracing::info!("took over from the previous meshd process"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot tell the previous meshd process it may go"),
                Err(e) => tracing::warn!(error = %e, "cannot tell the previous meshd process it may go"),
            }
        }

        let mut upgrades = self.upgrades.take();
        let mut stop = std::pin::pin!(stop);
        let end = loop {
            let upgrade = async {
                match &mut upgrades {
                    Some(u) => u.requests.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => break End::Stop,
                (part, why) = tasks.first_ended() => {
                    part_failures.get_or_create(&PartLabel { part }).inc();
                    tracing::error!(part, %why, "a part of meshd failed; draining and exiting non-zero so that the service manager restarts meshd");
                    break End::Failed(part);
                }
                Some(()) = upgrade => {
                    let Some(u) = &upgrades else { continue };
                    match start_successor(&self.admin_socket, u).await {
                        Ok(successor) => break End::Upgrade(successor),
                        Err(e) => tracing::error!(error = %e, "upgrade refused: this process keeps serving"),
                    }
                }
            }
        };
        let failed = match end {
            End::Stop => None,
            End::Failed(part) => Some(part),
            End::Upgrade(successor) => {
                let fds = std::mem::take(&mut self.handover_fds);
                let members: Vec<(String, SocketAddr)> = self
                    .publisher
                    .current()
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Alive && m.name != self.node_name)
                    .map(|m| (m.name.clone(), m.addr))
                    .collect();
                let handed = match hand_over(
                    fds,
                    members,
                    &self.transport,
                    &self.proxy,
                    successor,
                    &trigger,
                    &mut tasks,
                )
                .await
                {
                    Ok(successor) => {
                        // The store closes with its last user: the successor opens it.
                        drop(state);
                        drop((self.store, self.catalog, self.vips, self.signer));
                        take_over(successor).await
                    }
                    Err(part) => Err(part),
                };
                tracing::info!(deadline = ?self.drain_timeout, "draining the connections that were open at the upgrade");
                let drained = drain_with(trigger, self.drain_timeout).await;
                tasks.shutdown().await;
                self.transport.close().await;
                // The admin socket is the successor's now: it stays.
                return Ran { drained, failed: handed.err() };
            }
        };
        signal::notify_stopping();
        tracing::info!(deadline = ?self.drain_timeout, "draining");
        let drained = drain_with(trigger, self.drain_timeout).await;
        tasks.shutdown().await;
        self.transport.close().await;
        remove_admin_socket(&self.admin_socket, self.admin_inode);
        drop(self.publisher);
        Ran { drained, failed }
    }
}

/// Checks and starts the new binary, up to its asking for the sockets.
async fn start_successor(admin: &Path, u: &Upgrades) -> Result<crate::handover::Successor, String> {
    let (exe, config, admin) = (u.exe.clone(), u.config.clone(), admin.to_owned());
    tracing::info!(exe = %exe.display(), "upgrade: starting the new binary");
    match tokio::task::spawn_blocking(move || crate::handover::start(&exe, &config, &admin)).await {
        Ok(started) => started.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Hands every socket to `successor`, stops serving anything new and waits for the
/// control plane to end; the caller then closes the store and calls [`take_over`].
/// On error, the part name for [`Ran::failed`]. Open connections then drain on this
/// process.
async fn hand_over(
    mut sockets: Vec<(Slot, OwnedFd)>,
    members: Vec<(String, SocketAddr)>,
    transport: &Transport,
    proxy: &crate::proxy::Proxy,
    successor: crate::handover::Successor,
    trigger: &DrainTrigger,
    tasks: &mut crate::supervisor::Parts,
) -> Result<crate::handover::Successor, &'static str> {
    sockets.extend(proxy.listener_copies());
    let count = sockets.len();
    let generation = transport.socket().generation();
    let sent = tokio::task::spawn_blocking(move || {
        let borrowed: Vec<(Slot, std::os::fd::BorrowedFd<'_>)> =
            sockets.iter().map(|(slot, fd)| (slot.clone(), fd.as_fd())).collect();
        let sent = successor.send_sockets(&borrowed, generation, members);
        sent.map(|forwarded| (successor, forwarded))
    })
    .await;
    let (successor, forwarded) = match sent {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "upgrade: cannot hand the sockets over; draining so that meshd is restarted");
            trigger.hand_over();
            return Err("upgrade");
        }
        Err(e) => {
            tracing::error!(error = %e, "upgrade: cannot hand the sockets over; draining so that meshd is restarted");
            trigger.hand_over();
            return Err("upgrade");
        }
    };
    let new_pid = successor.pid();
    tracing::info!(
        sockets = count,
        pid = new_pid,
        "upgrade: sockets handed over; stopping everything but the open connections"
    );
    // This process's QUIC datagrams now come through the successor, which reads the port.
    if let Err(e) = transport.socket().take_forwarded(forwarded) {
        tracing::error!(error = %e, "upgrade: cannot take datagrams from the successor");
    }
    trigger.hand_over();
    // Peers open nothing new on this process's connections.
    let mut told = tokio::task::JoinSet::new();
    for p in transport.peers() {
        told.spawn(async move { tokio::time::timeout(GO_AWAY_WITHIN, crate::peer::client::go_away(&p)).await });
    }
    while told.join_next().await.is_some() {}
    // The control plane ends at the drain signal.
    if !tasks.join_within(PARTS_END_WITHIN).await {
        tracing::warn!(within = ?PARTS_END_WITHIN, "upgrade: parts still running were stopped");
    }
    Ok(successor)
}

/// Tells `successor` the store is closed and waits until it serves; then systemd learns
/// it is the main process.
async fn take_over(successor: crate::handover::Successor) -> Result<u32, &'static str> {
    {
        let released = tokio::task::spawn_blocking(move || successor.released().map(|()| successor)).await;
        let successor = match released {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "upgrade: the successor went away");
                return Err("upgrade");
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade: the successor went away");
                return Err("upgrade");
            }
        };
        match tokio::task::spawn_blocking(move || successor.wait_serving()).await {
            Ok(Ok(pid)) => {
                signal::notify_main_pid(pid);
                tracing::info!(pid, "upgrade: the new process serves; this one exits once its connections end");
                Ok(pid)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "upgrade: the new process did not start serving; exiting so that meshd is restarted");
                Err("upgrade")
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade: the new process did not start serving; exiting so that meshd is restarted");
                Err("upgrade")
            }
        }
    }
}

/// How a [`Bound::run`] stopped serving.
enum End {
    Stop,
    Failed(&'static str),
    Upgrade(crate::handover::Successor),
}

/// How long a successor waits for gossip to confirm its predecessor's members.
const MEMBERS_WITHIN: Duration = Duration::from_secs(3);

/// How long telling a peer that this process handed over may take.
const GO_AWAY_WITHIN: Duration = Duration::from_secs(1);

/// How long the control plane's parts have to end at a handover.
const PARTS_END_WITHIN: Duration = Duration::from_secs(5);

/// How a [`Bound::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    pub drained: DrainOutcome,
    /// The part whose failure ended it, if one did (the exit status is then 1).
    pub failed: Option<&'static str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PartLabel {
    part: &'static str,
}

/// Every [`datadir::WATCH_EVERY`], lets a store that turned read-only after a failed
/// write (a full disk) try to become writable again, until the drain.
async fn keep_store_writable(store: Store, drain: DrainWatcher) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(datadir::WATCH_EVERY) => {}
            _ = drain.signaled() => return,
        }
        let store = store.clone();
        // A rebuild writes the whole store: off the async threads.
        let _ = tokio::task::spawn_blocking(move || store.recover()).await;
    }
}

async fn drain_with(trigger: DrainTrigger, deadline: Duration) -> DrainOutcome {
    let outcome = trigger.start_drain_and_wait(deadline).await;
    match outcome {
        DrainOutcome::Complete => tracing::info!("drained"),
        DrainOutcome::DeadlineExceeded => {
            tracing::warn!(?deadline, "drain deadline passed; cutting what is left")
        }
    }
    outcome
}

/// The admin socket: at most this many connections at once (more than the blocking
/// queries that may park, [`admin::MAX_BLOCKING`]); one more is closed at once. A request
/// head must arrive within the deadline, and an idle keep-alive connection is closed after
/// as long; a parked blocking query is a request in flight and is never cut.
pub const ADMIN_MAX_CONNECTIONS: usize = 1024;
pub const ADMIN_HEAD_DEADLINE: Duration = Duration::from_secs(10);

/// `admin.http` (`/metrics`): the same, with fewer connections.
pub const ADMIN_HTTP_MAX_CONNECTIONS: usize = 64;
pub const ADMIN_HTTP_HEAD_DEADLINE: Duration = Duration::from_secs(10);

async fn serve_unix(listener: UnixListener, router: Router, drain: DrainWatcher) {
    let (listener, router) = (&listener, &router);
    let accept = move || async move {
        let (stream, _) = listener.accept().await?;
        // Each connection carries its peer's credentials, for the access check.
        let caller = crate::admin::access::Caller::of(&stream);
        Ok((stream, router.clone().layer(axum::Extension(axum::extract::ConnectInfo(caller)))))
    };
    serve_http("admin socket", ADMIN_MAX_CONNECTIONS, ADMIN_HEAD_DEADLINE, accept, drain).await;
}

async fn serve_tcp(listener: TcpListener, router: Router, drain: DrainWatcher) {
    let (listener, router) = (&listener, &router);
    let accept = move || async move { Ok((listener.accept().await?.0, router.clone())) };
    serve_http("admin.http", ADMIN_HTTP_MAX_CONNECTIONS, ADMIN_HTTP_HEAD_DEADLINE, accept, drain).await;
}

/// Serves HTTP/1.1 on what `accept` yields (a stream and the router for it) until the
/// drain: at most `max` connections at once (one more is closed at once), request heads
/// within `deadline` (idle keep-alive too). At the drain, requests in flight finish (a
/// blocking query answers at once then).
async fn serve_http<S, A, F>(what: &'static str, max: usize, deadline: Duration, mut accept: A, drain: DrainWatcher)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> F,
    F: Future<Output = std::io::Result<(S, Router)>>,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = accept() => {
                let (stream, service) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, server = what, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if conns.len() >= max {
                    drop(stream);
                    continue;
                }
                conns.spawn(serve_conn(hyper_util::rt::TokioIo::new(stream), service, deadline, drain.signal()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = drain.signaled() => break,
        }
    }
    while conns.join_next().await.is_some() {}
    drop(drain);
}

/// One HTTP/1.1 connection to `service`, its request heads within `deadline` (idle
/// keep-alive too); once the drain starts it ends gracefully, after the request in flight.
async fn serve_conn<I>(io: I, service: Router, deadline: Duration, draining: crate::drain::DrainSignal)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(deadline);
    let conn = builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = draining.signaled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Binds the admin socket: its directory is created if missing, a stale socket left by
/// a crash is replaced, a live one is refused. Mode 0660, group `meshd` if it exists.
fn bind_admin_socket(path: &Path) -> Result<(UnixListener, u64), AppError> {
    let bind_err =
        |error| AppError::Bind { what: "the admin socket (admin.socket)", addr: path.display().to_string(), error };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AppError::AlreadyRunning { path: path.to_owned() });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    let meta = std::fs::metadata(path).map_err(bind_err)?;
    // Under the systemd unit (Group=meshd) the socket is born in group meshd: no chown,
    // which the unit's system call filter forbids (@chown is in @privileged).
    if let Ok(Some(group)) = nix::unistd::Group::from_name("meshd") {
        if meta.gid() != group.gid.as_raw() {
            if let Err(e) = nix::unistd::chown(path, None, Some(group.gid)) {
                tracing::warn!(error = %e, path = %path.display(), "cannot give the admin socket to group meshd");
            }
        }
    }
    let inode = meta.ino();
    Ok((listener, inode))
}

/// Removes the admin socket at exit, unless another process has replaced it since.
fn remove_admin_socket(path: &Path, inode: u64) {
    if std::fs::metadata(path).map(|m| m.ino() == inode).unwrap_or(false) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove the admin socket");
        }
    }
}
