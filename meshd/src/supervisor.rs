//! Keeps a long-running task alive: if it panics or returns before the drain starts, the
//! failure is logged at ERROR, counted, and the task is started again after a short
//! pause. A part of meshd must never die quietly while the rest carries on.
//!
//! Must not: restart a task once the drain has started (ending then is its job), or spin:
//! restarts are paced.

use std::future::Future;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::task::JoinSet;

use crate::drain::DrainWatcher;

/// The pause before a restart, so a task that fails at once does not spin a core.
pub const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// More restarts than this within [`RESTART_WINDOW`] and the supervisor gives up: the
/// task fails for a reason a restart does not cure, and meshd exits (non-zero) so that
/// its service manager starts it afresh.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Runs `start()` until the drain starts, starting it again whenever it ends otherwise,
/// up to [`MAX_RESTARTS`] in [`RESTART_WINDOW`]; then returns (the caller treats that as
/// the part's failure). `restarts` counts the restarts; `name` names the task in the log.
pub async fn supervise<F, Fut>(name: &'static str, restarts: Counter, drain: DrainWatcher, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut recent: std::collections::VecDeque<tokio::time::Instant> = std::collections::VecDeque::new();
    loop {
        // A JoinSet of one: when this supervisor is aborted, so is the task.
        let mut task = JoinSet::new();
        task.spawn(start());
        let ended = task.join_next().await;
        if drain.is_draining() {
            return;
        }
        match ended {
            Some(Err(e)) if e.is_panic() => {
                let why = panic_message(e.into_panic());
                tracing::error!(task = name, panic = %why, "task panicked; restarting it");
            }
            _ => tracing::error!(task = name, "task ended unexpectedly; restarting it"),
        }
        let now = tokio::time::Instant::now();
        recent.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if recent.len() >= MAX_RESTARTS {
            tracing::error!(task = name, restarts = recent.len(), window = ?RESTART_WINDOW, "task keeps failing; giving up on it");
            return;
        }
        recent.push_back(now);
        restarts.inc();
        tokio::select! {
            _ = tokio::time::sleep(RESTART_PAUSE) => {}
            _ = drain.signaled() => return,
        }
    }
}

/// meshd's long-running parts, by name. Each runs until the drain; one that ends before
/// it (a panic, a return, a supervisor that gave up) is a failure of the whole daemon,
/// which then drains and exits non-zero so that its service manager restarts it, rather
/// than carry on without the part.
#[derive(Default)]
pub struct Parts {
    set: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Parts {
    pub fn spawn(&mut self, name: &'static str, part: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(part);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first part to end; its name and how it ended. Pending forever when
    /// there are none.
    pub async fn first_ended(&mut self) -> (&'static str, String) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => (self.name(id), "it returned".to_owned()),
            Some(Err(e)) => {
                let name = self.name(e.id());
                let why = if e.is_panic() {
                    format!("it panicked: {}", panic_message(e.into_panic()))
                } else {
                    e.to_string()
                };
                (name, why)
            }
            None => std::future::pending().await,
        }
    }

    fn name(&self, id: tokio::task::Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("?")
    }

    /// Waits up to `within` for every part to end (after the drain signal each returns);
    /// aborts the rest. Whether all ended in time.
    pub async fn join_within(&mut self, within: std::time::Duration) -> bool {
        let all = async { while self.set.join_next().await.is_some() {} };
        let ended = tokio::time::timeout(within, all).await.is_ok();
        self.set.shutdown().await;
        ended
    }

    /// Ends every part (after the drain).
    pub async fn shutdown(&mut self) {
        self.set.shutdown().await;
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast::<&'static str>().map(|s| (*s).to_owned()).unwrap_or_else(|_| "?".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_restarted_and_counted_until_the_drain() {
        let (trigger, watcher) = crate::drain::new();
        let restarts = Counter::default();
        let starts = Arc::new(AtomicUsize::new(0));
        let (running_tx, mut running) = tokio::sync::mpsc::channel(1);
        let s = starts.clone();
        let w = watcher.clone();
        let supervisor = tokio::spawn(supervise("test", restarts.clone(), watcher.clone(), move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            let running = running_tx.clone();
            let w = w.clone();
            async move {
                match n {
                    0 => panic!("the first run panics"),
                    1 => {}
                    _ => {
                        let _ = running.send(()).await;
                        w.signaled().await;
                    }
                }
            }
        }));
        drop(watcher);
        tokio::time::timeout(Duration::from_secs(10), running.recv()).await.expect("a third start").expect("sent");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(restarts.get(), 2, "one panic and one early return");
        let outcome = trigger.start_drain_and_wait(Duration::from_secs(10)).await;
        assert_eq!(outcome, crate::drain::DrainOutcome::Complete);
        supervisor.await.expect("the supervisor returns at the drain");
        assert_eq!(restarts.get(), 2, "an end during the drain is no failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_failing_is_given_up_on_after_max_restarts() {
        let (_trigger, watcher) = crate::drain::new();
        let restarts = Counter::default();
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        supervise("failing", restarts.clone(), watcher, move || {
            s.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        })
        .await;
        assert_eq!(restarts.get(), MAX_RESTARTS as u64);
        assert_eq!(starts.load(Ordering::SeqCst), MAX_RESTARTS + 1, "the first run and each restart");
    }
}
