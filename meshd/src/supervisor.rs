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

/// Runs `start()` until the drain starts, starting it again whenever it ends otherwise.
/// `restarts` counts the restarts; `name` names the task in the log.
pub async fn supervise<F, Fut>(name: &'static str, restarts: Counter, drain: DrainWatcher, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        restarts.inc();
        tokio::select! {
            _ = tokio::time::sleep(RESTART_PAUSE) => {}
            _ = drain.signaled() => return,
        }
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
}
