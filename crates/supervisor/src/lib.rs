//! Supervision of the host's background loops (heartbeats, submissions, results, the
//! reconcilers, …): each runs under one [`TaskTracker`] and stops when
//! [`Supervisor::shutdown`] cancels its [`CancellationToken`] (after `serve`'s drain). A loop that returns or panics while the host runs is logged, counted
//! and started again after a back-off (doubling from 100 ms to 30 s, back to the start once a
//! run has lasted a minute), and `/api/v1/status` shows it — the host is `degraded` while a loop
//! waits to restart or has restarted within the last five minutes. Before this, loops were
//! spawned detached: one that ended early (a subscription that failed) was noticed by nobody.

// Nothing a caller sends may panic the host: outside tests, failures are errors, not unwinds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The first wait before a restart, doubled after each quick failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long counts as healthy: the back-off starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long after a restart the host still reports itself degraded.
const DEGRADED_AFTER_RESTART: Duration = Duration::from_secs(300);

/// One loop as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LoopStatus {
    /// `running`, or `restarting` while it waits out its back-off.
    pub state: &'static str,
    pub restarts: u64,
    /// Why it last ended (returned, or the panic's message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Seconds since it last restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarted_s_ago: Option<u64>,
}

#[derive(Debug, Default)]
struct Health {
    restarting: bool,
    restarts: u64,
    last_failure: Option<String>,
    last_restart: Option<Instant>,
}

/// Runs and restarts the host's loops; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    stop: CancellationToken,
    health: Arc<Mutex<BTreeMap<&'static str, Health>>>,
}

impl Supervisor {
    /// Loops stop when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        Supervisor {
            tracker: TaskTracker::new(),
            stop,
            health: Arc::default(),
        }
    }

    /// Runs `run()` as the loop `name` until the host stops, starting it again whenever it
    /// returns or panics.
    pub fn spawn<F, Fut>(&self, name: &'static str, run: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.health.lock().insert(name, Health::default());
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                // A task of its own, so that a panic ends this run, not the supervisor.
                let mut task = tokio::spawn(run());
                let why = tokio::select! {
                    biased;
                    _ = this.stop.cancelled() => {
                        task.abort();
                        return;
                    }
                    ended = &mut task => match ended {
                        Ok(()) => "returned".to_string(),
                        Err(e) if e.is_panic() => panic_message(e.into_panic()),
                        Err(e) => e.to_string(),
                    },
                };
                if this.stop.is_cancelled() {
                    // It ended because the host is stopping (its bus closed, say).
                    return;
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(
                    task = name,
                    ended = %why,
                    restart_in_ms = backoff.as_millis() as u64,
                    "a background loop ended; restarting it"
                );
                metrics::counter!("coretex_loop_restarts_total", "loop" => name).increment(1);
                this.record(name, |h| {
                    h.restarting = true;
                    h.last_failure = Some(why);
                });
                tokio::select! {
                    _ = this.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                this.record(name, |h| {
                    h.restarting = false;
                    h.restarts += 1;
                    h.last_restart = Some(Instant::now());
                });
            }
        });
    }

    fn record(&self, name: &'static str, change: impl FnOnce(&mut Health)) {
        if let Some(h) = self.health.lock().get_mut(name) {
            change(h);
        }
    }

    /// Every loop's status, by name.
    pub fn status(&self) -> BTreeMap<&'static str, LoopStatus> {
        self.health
            .lock()
            .iter()
            .map(|(name, h)| {
                let status = LoopStatus {
                    state: if h.restarting {
                        "restarting"
                    } else {
                        "running"
                    },
                    restarts: h.restarts,
                    last_failure: h.last_failure.clone(),
                    restarted_s_ago: h.last_restart.map(|t| t.elapsed().as_secs()),
                };
                (*name, status)
            })
            .collect()
    }

    /// Whether a loop is waiting to restart, or restarted a short while ago.
    pub fn degraded(&self) -> bool {
        self.health.lock().values().any(|h| {
            h.restarting
                || h.last_restart
                    .is_some_and(|t| t.elapsed() < DEGRADED_AFTER_RESTART)
        })
    }

    /// The token the loops stop with, for tasks that should stop with them.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops every loop (cancelling their token) and waits until they have all ended.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_panics_is_restarted_and_reported() {
        let stop = CancellationToken::new();
        let sup = Supervisor::new(stop.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sup.spawn("flaky", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run dies");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "started again after the panic"
        );
        let status = sup.status();
        let flaky = &status["flaky"];
        assert_eq!((flaky.state, flaky.restarts), ("running", 1));
        assert_eq!(
            flaky.last_failure.as_deref(),
            Some("panicked: first run dies")
        );
        assert!(sup.degraded());
        sup.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_keeps_returning_backs_off() {
        let stop = CancellationToken::new();
        let sup = Supervisor::new(stop.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sup.spawn("quitter", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        // Waits of 0.1, 0.2, 0.4, 0.8, 1.6 s: six runs in the first 3.1 s, not thousands.
        tokio::time::sleep(Duration::from_millis(3_150)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 6);
        assert_eq!(
            sup.status()["quitter"].last_failure.as_deref(),
            Some("returned")
        );
        sup.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_loops_are_not_degraded_and_stop_with_the_host() {
        let stop = CancellationToken::new();
        let sup = Supervisor::new(stop.clone());
        sup.spawn("steady", std::future::pending::<()>);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!sup.degraded());
        assert_eq!(sup.status()["steady"].state, "running");
        sup.shutdown().await;
        assert!(sup.tracker.is_empty());
    }
}
