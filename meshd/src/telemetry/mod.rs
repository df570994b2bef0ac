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

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Logs go to stderr, which journald collects.
pub fn init(log_level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(env).unwrap_or_else(|e| {
            eprintln!("meshd: RUST_LOG is not a valid filter ({e}); using log_level = \"{log_level}\"");
            EnvFilter::new(log_level)
        }),
        _ => EnvFilter::new(log_level),
    };
    // Under systemd the journal adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if under_systemd { builder.without_time().try_init() } else { builder.try_init() };
    // A second init (tests, `meshd dev`) keeps the first subscriber.
    drop(result);
}
