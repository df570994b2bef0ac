//! Reloading meshd.toml while serving (SIGHUP, `systemctl reload meshd`). What a reload
//! changes: the config's services (added, changed, removed: the same as at start), the
//! log level, the DNS TTL and the proxy's limits (connections accepted from now on
//! follow them). Every other changed key is named in the log as waiting for a restart.
//! A file that does not load changes nothing: `signal` logs its file:line:key error and
//! never hands it here.
//!
//! Must not: act on a key it does not list in [`RELOADABLE`].

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::dns::Responder;
use crate::drain::DrainWatcher;
use crate::proxy::Proxy;

/// The keys a reload applies.
pub const RELOADABLE: [&str; 5] = ["service", "log_level", "dns.ttl", "proxy.connect_timeout", "proxy.max_connections"];

/// What a reload changes.
pub struct Targets {
    pub catalog: Catalog,
    pub proxy: Arc<Proxy>,
    pub responder: Arc<Responder>,
}

/// Applies each config that arrives, until the drain starts.
pub async fn run(mut configs: mpsc::Receiver<Config>, mut running: Config, targets: Targets, drain: DrainWatcher) {
    loop {
        let next = tokio::select! {
            next = configs.recv() => next,
            _ = drain.signaled() => return,
        };
        let Some(next) = next else {
            // Nobody sends reloads (`meshd dev`): wait for the drain like every part.
            drain.signaled().await;
            return;
        };
        running = apply(running, next, &targets).await;
    }
}

/// Applies what may change of `next`; returns the configuration now in effect (keys
/// waiting for a restart keep their running values, and are named again next time).
pub async fn apply(running: Config, next: Config, t: &Targets) -> Config {
    let changed = running.changed_keys(&next);
    if changed.is_empty() {
        tracing::info!("meshd.toml reloaded: nothing changed");
        return running;
    }
    let (now, later): (Vec<String>, Vec<String>) = changed.into_iter().partition(|k| RELOADABLE.contains(&k.as_str()));
    let mut applied = running.clone();
    let mut done = Vec::new();
    for key in &now {
        let result = match key.as_str() {
            "service" => {
                let (catalog, services) = (t.catalog.clone(), next.service.clone());
                match tokio::task::spawn_blocking(move || catalog.declare_config(&services)).await {
                    Ok(Ok(())) => {
                        applied.service = next.service.clone();
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            "log_level" => crate::telemetry::set_log_level(&next.log_level).map(|()| {
                applied.log_level = next.log_level.clone();
            }),
            "dns.ttl" => {
                let (responder, ttl) = (t.responder.clone(), u32::try_from(next.dns.ttl.as_secs()).unwrap_or(u32::MAX));
                match tokio::task::spawn_blocking(move || responder.set_ttl(ttl)).await {
                    Ok(()) => {
                        applied.dns.ttl = next.dns.ttl;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            "proxy.connect_timeout" | "proxy.max_connections" => {
                t.proxy.set_limits(next.proxy.connect_timeout, next.proxy.max_connections);
                applied.proxy.connect_timeout = next.proxy.connect_timeout;
                applied.proxy.max_connections = next.proxy.max_connections;
                Ok(())
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => done.push(key.as_str()),
            Err(why) => tracing::error!(key = %key, %why, "meshd.toml: this change was not applied"),
        }
    }
    if !later.is_empty() {
        tracing::warn!(keys = %later.join(", "), "meshd.toml: these changes take effect when meshd restarts");
    }
    tracing::info!(applied = %done.join(", "), "meshd.toml reloaded");
    applied
}
