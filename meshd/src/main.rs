//! The `meshd` binary: parses the command line, loads the config, and hands over to the
//! library. Exit status: 0 ok, 1 runtime failure, 2 usage or invalid input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshd::config::{self, Config};
use meshd::state::{Publisher, Snapshot};
use meshd::store::{self, Store};
use meshd::{app, datadir, dev, signal, telemetry};

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
    /// Prepare data_dir on the first host of a new mesh.
    Init,
    /// A local mesh on loopback to try things with; stops on Ctrl-C.
    Dev,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Init => init(&cli.config),
        Command::Dev => dev(),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("meshd: {message}");
    ExitCode::from(code)
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(2, e))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("cannot start the runtime: {e}")))
}

fn init(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = datadir::init(&config.data_dir, &config.node_name) {
        return fail(if e.is_usage() { 2 } else { 1 }, e);
    }
    let publisher = Publisher::new(Snapshot::empty(&config.node_name));
    let store_path = datadir::store_path(&config.data_dir);
    if let Err(e) = Store::open(&store_path, &config.node_name, publisher, store::Metrics::new()) {
        return fail(1, e);
    }
    println!("initialised node {} in {}", config.node_name, config.data_dir.display());
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&config.log_level);
    if let Err(e) = datadir::open(&config.data_dir, &config.node_name) {
        return fail(if e.is_usage() { 2 } else { 1 }, e);
    }
    if config.join_token.is_some() {
        tracing::warn!("join_token is set, but this meshd version cannot join a mesh yet; ignoring it");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let mut signals = match signal::Shutdown::new() {
            Ok(s) => s,
            Err(e) => return fail(1, format!("cannot handle signals: {e}")),
        };
        let bound = match app::build(&config).await {
            Ok(b) => b,
            Err(e) => return fail(if e.is_usage() { 2 } else { 1 }, e),
        };
        bound
            .run(async move {
                let first = signals.recv().await;
                tracing::info!(signal = ?first, "shutting down");
                // The process ends right after the drain, which ends this task with it.
                signals.exit_on_second();
            })
            .await;
        ExitCode::SUCCESS
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
