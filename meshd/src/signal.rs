//! Process signals and the systemd notification protocol.
//!
//! SIGTERM or SIGINT starts a graceful drain; a second one ends the process at once.
//! SIGUSR2 starts an upgrade (`crate::handover`).
//! SIGHUP reads the config file again and hands it to `reload` when it loads; when it
//! does not, the error (file:line:key) is logged and nothing changes.
//! With `Type=notify`, systemd learns READY once every socket serves, STOPPING when the
//! drain starts, and gets WATCHDOG pings when the unit sets `WatchdogSec`.
//!
//! Must not: stop anything itself: it tells `app`, which drains.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The shutdown signals this process reacts to, registered once at start so a signal
/// that arrives early is not lost.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Term,
    Int,
}

impl Received {
    /// The conventional exit status of a process killed by this signal (128 + number),
    /// used when a second signal cuts the drain short.
    pub fn exit_status(self) -> i32 {
        match self {
            Received::Term => 143,
            Received::Int => 130,
        }
    }
}

impl Shutdown {
    pub fn new() -> std::io::Result<Shutdown> {
        Ok(Shutdown { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Term,
            _ = self.int.recv() => Received::Int,
        }
    }

    /// After the first signal: a second one exits the process at once, with the
    /// conventional status, even if the drain is still running.
    pub fn exit_on_second(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let second = self.recv().await;
            tracing::warn!(signal = ?second, "second signal: exiting without finishing the drain");
            std::process::exit(second.exit_status());
        })
    }
}

/// SIGHUP, registered at start (its default action would end the process).
pub struct Hangup(Signal);

impl Hangup {
    pub fn new() -> std::io::Result<Hangup> {
        Ok(Hangup(signal(SignalKind::hangup())?))
    }

    /// On every SIGHUP: loads `path` again and sends the config on; a file that does not
    /// load is logged and dropped. Ends when nobody receives.
    pub async fn reload(mut self, path: std::path::PathBuf, configs: tokio::sync::mpsc::Sender<crate::config::Config>) {
        while self.0.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reading the config again");
            match crate::config::Config::load(&path) {
                Ok(config) => {
                    if configs.send(config).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "the config was not reloaded; the running configuration stays"),
            }
        }
    }
}

/// SIGUSR2: upgrade to the binary now at meshd's path ([`crate::handover`]).
pub struct Upgrade(Signal);

impl Upgrade {
    pub fn new() -> std::io::Result<Upgrade> {
        Ok(Upgrade(signal(SignalKind::user_defined2())?))
    }

    /// Sends one request on `requests` per SIGUSR2, until nobody receives.
    pub async fn forward(mut self, requests: tokio::sync::mpsc::Sender<()>) {
        while self.0.recv().await.is_some() {
            tracing::info!("SIGUSR2: upgrading");
            if requests.send(()).await.is_err() {
                return;
            }
        }
    }
}

/// Tells systemd (if it is listening) that meshd is ready to serve.
pub fn notify_ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd that the process `pid` (an upgrade's successor) is meshd's main process
/// from now on.
pub fn notify_main_pid(pid: u32) {
    notify(&[NotifyState::MainPid(pid), NotifyState::Status("handed over to the new process")]);
}

/// Tells systemd that meshd is draining and will stop.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn notify(states: &[NotifyState<'_>]) {
    // Not under systemd (NOTIFY_SOCKET unset) this does nothing and returns Ok.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The interval at which to ping systemd's watchdog, if the unit enables one: half the
/// watchdog timeout, as sd_watchdog_enabled(3) recommends.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog every `interval` until the drain starts.
pub async fn run_watchdog(interval: Duration, drain: crate::drain::DrainWatcher) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            _ = drain.signaled() => return,
        }
    }
}
