//! What meshd tells about itself and its traffic. Here: logging through `tracing` (the
//! filter comes from `RUST_LOG` when it is set, an operator debugging one host, else from
//! `log_level` in meshd.toml). [`record`]: what the proxy reports of each call;
//! [`traffic`]: the `istio_*` metrics and summaries made from it; [`access`]: the JSON access log; [`otlp`]: spans
//! to an OpenTelemetry collector; [`trace`]: W3C trace context.
//!
//! Must not: block the data path: log events are formatted and written by `tracing`'s
//! subscriber, access log lines and spans go through bounded queues, never awaited.

pub mod access;
pub mod otlp;
pub mod record;
pub mod trace;
pub mod traffic;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// Replaces the log filter of the installed subscriber.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();
/// Set when `RUST_LOG` chose the filter: `log_level` then does not apply, also on reload.
static FROM_ENV: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber. Logs go to stderr, which journald collects.
pub fn init(log_level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => match EnvFilter::try_new(env) {
            Ok(f) => {
                FROM_ENV.store(true, Ordering::Relaxed);
                f
            }
            Err(e) => {
                eprintln!("meshd: RUST_LOG is not a valid filter ({e}); using log_level = \"{log_level}\"");
                EnvFilter::new(log_level)
            }
        },
        _ => EnvFilter::new(log_level),
    };
    // Under systemd the journal adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let set: Result<SetFilter, _> = if under_systemd {
        let builder = builder.without_time().with_filter_reloading();
        let handle = builder.reload_handle();
        builder.try_init().map(|()| Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as SetFilter)
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        builder.try_init().map(|()| Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as SetFilter)
    };
    // A second init (tests, `meshd dev`) keeps the first subscriber.
    if let Ok(set) = set {
        let _ = SET_FILTER.set(set);
    }
}

/// Logs at `log_level` from now on (a reload of meshd.toml). Refused when `RUST_LOG`
/// chose the filter: an operator debugging this host keeps what they asked for.
pub fn set_log_level(log_level: &str) -> Result<(), String> {
    if FROM_ENV.load(Ordering::Relaxed) {
        return Err("RUST_LOG is set, and it chooses what is logged".to_owned());
    }
    let filter = EnvFilter::try_new(log_level).map_err(|e| e.to_string())?;
    match SET_FILTER.get() {
        Some(set) => set(filter),
        None => Err("this process did not install the log subscriber".to_owned()),
    }
}
