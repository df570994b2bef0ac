//! The `meshd` binary: parses the command line, loads the config, and hands over to the
//! library. Exit status: 0 ok, 1 runtime failure, 2 usage or invalid input.
//!
//! Must not: hold logic of its own beyond the command line and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use meshd::config::{self, Config};
use meshd::{app, bootstrap, datadir, dev, signal, telemetry};

#[derive(Parser)]
#[command(name = "meshd", version = mesh_proto::VERSION, about = "The mesh daemon: one per host")]
struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Prepare data_dir and a new mesh CA on the first host of a mesh.
    Init,
    /// Join a mesh with a token from `meshctl token create` (run on any other host).
    Join {
        /// The token, one line.
        token: String,
    },
    /// A local mesh on loopback to try things with; stops on Ctrl-C.
    Dev,
    /// Validate the config file: exit 0 when meshd would start with it, 2 (naming the
    /// line and key) when not. Changes nothing.
    CheckConfig,
    /// Upgrade the running meshd without dropping a connection: it starts the binary now
    /// at its path (a package upgrade replaced it), hands it every socket, and drains.
    /// Waits until the new process serves the admin socket; exit 0 then, 1 if not.
    Upgrade {
        /// How long to wait for the new process.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The Kubernetes bridge's housekeeping.
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as the package installs it.
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum BridgeCommand {
    /// Delete every Service and EndpointSlice a bridge of CLUSTER wrote in the export
    /// namespace (objects carrying its `meshd.io/bridge` label; nothing else), with the
    /// config's `[bridge]` credentials. Run after the bridges are gone.
    Purge {
        #[arg(long)]
        cluster: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Init => init(&cli.config),
        Command::Join { token } => join(&cli.config, &token),
        Command::Dev => dev(),
        Command::Upgrade { timeout } => upgrade(&cli.config, timeout),
        Command::Bridge(BridgeCommand::Purge { cluster }) => bridge_purge(&cli.config, &cluster),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        },
        Command::CheckConfig => match load(&cli.config) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

/// jemalloc, not the system allocator: memory freed after a burst of connections goes
/// back to the system (measured in `bench-tunnel`). With its `background_threads`
/// feature a thread of its own returns idle pages over the following seconds; without it
/// jemalloc purges only while allocating, so an idle meshd kept a burst's memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("meshd: {message}");
    ExitCode::from(code)
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(2, e))
}

/// The async runtime: a current-thread one when meshd may use a single CPU (its
/// affinity or cgroup allows one), where a multi-thread scheduler's work stealing and
/// wake-ups between threads only cost (`bench-tunnel 5`, 3 runs each, meshd pinned to one
/// core: HTTP 17.4-18.7k req/s and 0.053-0.056 CPU s per 1,000 against 12.6-13.6k and
/// 0.073-0.078; TCP wrk 45-49k against 37-42k; bulk throughput unchanged); else one
/// worker per CPU. `MESHD_RUNTIME=multi|current` overrides the choice (for benchmarks).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let current = match std::env::var("MESHD_RUNTIME").as_deref() {
        Ok("current") => true,
        Ok("multi") => false,
        _ => cpus == 1,
    };
    let mut builder = if current {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().map_err(|e| fail(1, format!("cannot start the runtime: {e}")))
}

fn init(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match bootstrap::init(&config) {
        Ok(fingerprint) => {
            println!("initialised node {} in {}", config.node_name, config.data_dir.display());
            println!("mesh CA {fingerprint}");
            println!("next: start meshd, then `meshctl token create` for each host to join");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

fn join(path: &std::path::Path, token: &str) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = mesh_proto::token::Token::decode(token) {
        return fail(2, format!("malformed token: {e}"));
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(bootstrap::join(&config, token)) {
        Ok(joined) => {
            let role = if joined.signer { " as a signer" } else { "" };
            println!("joined the mesh as {}{role} (CA {})", config.node_name, joined.ca_fingerprint);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&config.log_level);
    for key in config.not_yet_in_effect() {
        tracing::warn!("accepted but not in effect in this version: {key}");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.handle().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => tracing::info!("one CPU: a current-thread runtime"),
        _ => tracing::info!(
            workers = std::thread::available_parallelism().map_or(1, usize::from),
            "a multi-thread runtime"
        ),
    }
    match (datadir::open(&config.data_dir, &config.node_name), &config.join_token) {
        (Ok(_), _) => {}
        // First start of an unattended install: join with the configured token.
        (Err(datadir::DataDirError::NotInitialised { .. }), Some(token)) => {
            tracing::info!("no identity yet: joining with join_token");
            if let Err(e) = rt.block_on(bootstrap::join(&config, token)) {
                return fail(e.exit_code(), e);
            }
        }
        (Err(e), _) => return fail(if e.is_usage() { 2 } else { 1 }, e),
    }
    // Started by a running meshd to take over from it (an upgrade): its sockets first,
    // then, once it has closed the store, the rest.
    let inherited = match meshd::handover::inherit() {
        None => None,
        Some(Ok(inherited)) => {
            tracing::info!("upgrade: took the sockets of the running meshd; waiting for it to close the store");
            if let Err(e) = inherited.wait_released() {
                return fail(1, format!("upgrade: {e}"));
            }
            Some(std::sync::Arc::new(inherited))
        }
        Some(Err(e)) => return fail(1, format!("upgrade: {e}")),
    };
    // The binary to start at an upgrade: the file at this path, whatever it is by then.
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/meshd"));
    let code = rt.block_on(async {
        let mut signals = match signal::Shutdown::new() {
            Ok(s) => s,
            Err(e) => return fail(1, format!("cannot handle signals: {e}")),
        };
        let hangup = match signal::Hangup::new() {
            Ok(s) => s,
            Err(e) => return fail(1, format!("cannot handle signals: {e}")),
        };
        let upgrade = match signal::Upgrade::new() {
            Ok(s) => s,
            Err(e) => return fail(1, format!("cannot handle signals: {e}")),
        };
        let bound = match app::build_with(&config, inherited).await {
            Ok(b) => b,
            Err(e) => return fail(if e.is_usage() { 2 } else { 1 }, e),
        };
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(hangup.reload(path.to_owned(), reload_tx));
        let (upgrade_tx, upgrade_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(upgrade.forward(upgrade_tx));
        let upgrades = app::Upgrades { requests: upgrade_rx, exe, config: path.to_owned() };
        let bound = bound.reload_from(reload_rx).upgrade_from(upgrades);
        let ran = bound
            .run(async move {
                let first = signals.recv().await;
                tracing::info!(signal = ?first, "shutting down");
                // The process ends right after the drain, which ends this task with it.
                signals.exit_on_second();
            })
            .await;
        match ran.failed {
            None => ExitCode::SUCCESS,
            Some(part) => fail(1, format!("{part} failed (see the log above); exiting so that meshd is restarted")),
        }
    });
    // The drain is over: a blocking task that still runs (a disk that hangs a write) must
    // not keep the process from exiting.
    rt.shutdown_timeout(EXIT_GRACE);
    code
}

/// How long the runtime waits, after the drain, for blocking work before the process
/// exits anyway.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// `meshd upgrade`: SIGUSR2 to the meshd serving the admin socket (found by the
/// socket's peer credentials), then waits until another process serves it.
fn upgrade(path: &std::path::Path, timeout: std::time::Duration) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket = &config.admin.socket;
    // The process that answers on the admin socket (its credentials would name the one
    // that bound it, which an upgrade keeps).
    let server = |socket: &std::path::Path| -> Option<i32> {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /v1/status HTTP/1.0\r\nHost: meshd\r\n\r\n").ok()?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response).ok()?;
        let body = response.windows(4).position(|w| w == b"\r\n\r\n").map(|at| &response[at + 4..])?;
        let status: mesh_proto::api::Status = serde_json::from_slice(body).ok()?;
        status.pid.and_then(|p| i32::try_from(p).ok())
    };
    let Some(old) = server(socket) else {
        return fail(1, format!("no meshd serves {}: nothing to upgrade (start it instead)", socket.display()));
    };
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGUSR2) {
        return fail(1, format!("cannot signal meshd (pid {old}): {e}"));
    }
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        match server(socket) {
            Some(new) if new != old => {
                println!("upgraded: pid {new} serves now; pid {old} finishes its open connections");
                return ExitCode::SUCCESS;
            }
            // Refused or not yet taken over: the old process logs why.
            _ => {}
        }
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), None).is_err() && server(socket).is_none() {
            return fail(1, format!("meshd (pid {old}) exited and nothing serves {}: see its log", socket.display()));
        }
    }
    fail(1, format!("no new meshd within {timeout:?}: pid {old} still serves (see its log for why)"))
}

fn bridge_purge(path: &std::path::Path, cluster: &str) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(bridge) = config.bridge else {
        return fail(2, format!("{}: no [bridge] table: nothing says how to reach the cluster", path.display()));
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let client = match meshd::bridge::client(&bridge).await {
            Ok(c) => c,
            Err(e) => return fail(1, e),
        };
        match meshd::bridge::purge(client, &bridge.export_namespace, cluster).await {
            Ok((services, slices)) => {
                println!(
                    "deleted {services} Service(s) and {slices} EndpointSlice(s) of cluster {cluster} in namespace {}",
                    bridge.export_namespace
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, format!("purge: {e}")),
        }
    })
}

fn dev() -> ExitCode {
    telemetry::init("warn");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let signals = match signal::Shutdown::new() {
            Ok(s) => s,
            Err(e) => return fail(1, format!("cannot handle signals: {e}")),
        };
        match dev::run(signals).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, format!("{e:#}")),
        }
    })
}
