//! Graceful shutdown: one trigger, many watchers, a deadline.
//!
//! Every long-running task holds a [`DrainWatcher`]. When the trigger fires, each task
//! stops taking new work, finishes what it has, and drops its watcher (or the
//! [`Release`] it got from [`DrainWatcher::wait_for_drain`]). The trigger returns when
//! every watcher is gone, or when the deadline passes, whichever is first; the caller
//! then aborts whatever is left. An idle daemon therefore exits at once.
//!
//! A drain may be a *handover* ([`DrainTrigger::hand_over`]): an upgrade's new process
//! serves from now on, so the drain must not look like this node leaving (no gossip
//! "left", no STOPPING to systemd, and peers are told to reconnect rather than go
//! elsewhere). Tasks ask [`DrainWatcher::is_handover`].
//!
//! Must not: know what the tasks do; it only counts who is still busy.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Starts a drain. Held by whoever handles the shutdown signal.
pub struct DrainTrigger {
    signal: watch::Sender<Phase>,
    all_released: mpsc::Receiver<()>,
}

/// Tells a task that a drain has started; the drain waits until every clone is dropped.
#[derive(Clone)]
pub struct DrainWatcher {
    signal: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

/// Held by a task while it finishes its work after the drain started.
#[must_use = "the drain waits until this is dropped"]
pub struct Release {
    _alive: mpsc::Sender<()>,
}

/// Where the process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    /// Draining because a new process took over.
    HandingOver,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher finished in time.
    Complete,
    /// The deadline passed with work still running; it will be cut.
    DeadlineExceeded,
}

/// A trigger and its first watcher.
pub fn new() -> (DrainTrigger, DrainWatcher) {
    let (signal_tx, signal_rx) = watch::channel(Phase::Serving);
    // Nothing is ever sent: the channel only tells when the last sender is gone.
    let (alive_tx, alive_rx) = mpsc::channel(1);
    (DrainTrigger { signal: signal_tx, all_released: alive_rx }, DrainWatcher { signal: signal_rx, _alive: alive_tx })
}

impl DrainTrigger {
    /// Signals every watcher, then waits until all of them are dropped or `deadline`
    /// passes.
    pub async fn start_drain_and_wait(mut self, deadline: Duration) -> DrainOutcome {
        self.signal.send_if_modified(|p| {
            let serving = *p == Phase::Serving;
            if serving {
                *p = Phase::Draining;
            }
            serving
        });
        match tokio::time::timeout(deadline, self.all_released.recv()).await {
            Ok(_) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::DeadlineExceeded,
        }
    }
}

impl DrainTrigger {
    /// Starts a drain that is a handover to a new process (see the module doc); wait for
    /// it with [`DrainTrigger::start_drain_and_wait`].
    pub fn hand_over(&self) {
        self.signal.send_replace(Phase::HandingOver);
    }
}

impl DrainWatcher {
    /// Resolves once the drain has started (at once if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        // An error means the trigger was dropped without draining: treat it as a drain,
        // since nobody can start one any more.
        let _ = rx.wait_for(|p| *p != Phase::Serving).await;
    }

    /// Whether the drain is a handover to a new process.
    pub fn is_handover(&self) -> bool {
        *self.signal.borrow() == Phase::HandingOver
    }

    /// Resolves once the drain has started, with a [`Release`] that keeps the drain
    /// waiting until the task has finished.
    pub async fn wait_for_drain(self) -> Release {
        self.signaled().await;
        Release { _alive: self._alive }
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow() != Phase::Serving
    }

    /// A handle that sees the drain start but does not hold it up: for request handlers
    /// that should wrap up early (blocking queries), whose server holds the watcher.
    pub fn signal(&self) -> DrainSignal {
        DrainSignal { signal: self.signal.clone() }
    }
}

/// Sees a drain start without delaying it. See [`DrainWatcher::signal`].
#[derive(Clone)]
pub struct DrainSignal {
    signal: watch::Receiver<Phase>,
}

impl DrainSignal {
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        let _ = rx.wait_for(|p| *p != Phase::Serving).await;
    }

    /// Whether the drain is a handover to a new process.
    pub fn is_handover(&self) -> bool {
        *self.signal.borrow() == Phase::HandingOver
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow() != Phase::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_drain_completes_at_once() {
        let (trigger, watcher) = new();
        drop(watcher);
        let started = tokio::time::Instant::now();
        assert_eq!(trigger.start_drain_and_wait(Duration::from_secs(60)).await, DrainOutcome::Complete);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_release_then_gives_up_at_the_deadline() {
        let (trigger, watcher) = new();
        let task = tokio::spawn(async move {
            let release = watcher.wait_for_drain().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(release);
        });
        assert_eq!(trigger.start_drain_and_wait(Duration::from_secs(2)).await, DrainOutcome::DeadlineExceeded);
        task.abort();
    }

    #[tokio::test]
    async fn a_handover_is_a_drain_that_says_so_and_stays_one() {
        let (trigger, watcher) = new();
        assert!(!watcher.is_draining() && !watcher.is_handover());
        trigger.hand_over();
        watcher.signaled().await;
        assert!(watcher.is_draining() && watcher.is_handover());
        let signal = watcher.signal();
        drop(watcher);
        assert_eq!(trigger.start_drain_and_wait(Duration::from_secs(5)).await, DrainOutcome::Complete);
        assert!(signal.is_handover(), "waiting for the drain keeps it a handover");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_completes_when_the_last_watcher_finishes() {
        let (trigger, watcher) = new();
        let other = watcher.clone();
        let t1 = tokio::spawn(async move {
            let _release = watcher.wait_for_drain().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let t2 = tokio::spawn(async move {
            other.signaled().await;
            assert!(other.is_draining());
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(other);
        });
        let started = tokio::time::Instant::now();
        assert_eq!(trigger.start_drain_and_wait(Duration::from_secs(10)).await, DrainOutcome::Complete);
        assert!(started.elapsed() >= Duration::from_millis(300));
        t1.await.expect("t1");
        t2.await.expect("t2");
    }
}
