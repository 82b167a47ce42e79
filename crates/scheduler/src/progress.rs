//! Progress heartbeats of running jobs (`sys.job.progress`, SPEC §4): a job submitted with
//! `heartbeat_timeout_sec` fails `heartbeat_timeout` once its worker has sent no progress for
//! that long, and goes through the retry policy (as Temporal's activity heartbeat), even while
//! the worker itself still heartbeats.
//!
//! # Why in memory, and why on core NATS
//!
//! A progress message is frequent (every worker heartbeat interval, per running job) and worth
//! nothing once the next has come: writing each to the store would cost a write per beat per
//! job for a fact only one replica (the reconciler's leader) reads. So progress travels on a
//! plain NATS subject that every replica subscribes to (as worker heartbeats do), not on the
//! JetStream events stream, and each replica keeps the last beat of each job in memory.
//! The leader decides with what it has seen: a job is silent since the later of its last
//! beat, the time it became RUNNING, and the time this replica began to listen — so a replica
//! that has just started (or just become leader after a restart) gives every job a full timeout
//! before it ends one, and never ends one on beats it missed.
//!
//! A beat counts only under the lease of the job's message: a progress without a lease, or with
//! one no host minted for this job and worker, is refused and counted like a forged result
//! ([`crate::bus::auth`]); one under a genuine lease of a superseded dispatch is kept but does
//! not count, since the reconciler compares it with the lease the store records for the job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;

use crate::bus::auth::Rejection;
use crate::protocol::{MAX_PROGRESS_DETAILS_BYTES, ProgressMsg};
use crate::time::{Millis, now_ms};

use super::Scheduler;

/// How often a replica drops beats past the horizon.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Scheduler {
    /// Records the progress beats workers send, each checked against its lease.
    pub async fn run_progress(self: std::sync::Arc<Self>) {
        use futures::StreamExt as _;
        let subject = self.bus.subjects().progress();
        let mut sub = match self.bus.subscribe(&subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "scheduler could not subscribe to progress");
                return;
            }
        };
        let mut pruned = std::time::Instant::now();
        while let Some(msg) = sub.next().await {
            match serde_json::from_slice::<ProgressMsg>(&msg.payload) {
                Ok(p) => self.observe_progress(&p),
                Err(e) => tracing::debug!(error = %e, "ignoring malformed progress"),
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = std::time::Instant::now();
                self.progress.prune(now_ms());
            }
        }
    }

    /// Keeps a progress beat if its lease is one a host minted for this job, worker and
    /// attempt; refuses (logs, counts) it otherwise.
    pub fn observe_progress(&self, p: &ProgressMsg) {
        let verified = self
            .leases
            .verify(&p.job_id, &p.worker_id, p.lease.as_deref())
            .and_then(|l| {
                if l.attempt == p.attempt {
                    Ok(l)
                } else {
                    Err(Rejection::BadLease)
                }
            });
        let (Ok(_), Some(lease)) = (verified, p.lease.as_deref()) else {
            if let Err(why) = verified {
                why.record("progress", &p.job_id, &p.worker_id);
            }
            return;
        };
        if let Some(details) = &p.details {
            let text = details.to_string();
            if text.len() <= MAX_PROGRESS_DETAILS_BYTES {
                tracing::debug!(job_id = %p.job_id, worker_id = %p.worker_id, details = %text, "progress");
            }
        }
        self.progress.observe(&p.job_id, lease, now_ms());
    }
}

/// The last progress beat of a job: when, under which lease.
#[derive(Debug, Clone)]
struct Beat {
    lease: String,
    at: Millis,
}

/// The last progress seen for each job (by this replica, since `listening_since`).
pub struct Progress {
    beats: Mutex<HashMap<String, Beat, foldhash::quality::RandomState>>,
    listening_since: Millis,
    /// Beats older than this (ms) are dropped by [`Progress::prune`]: set to the running
    /// timeout, past which a job is timed out whatever its beats say.
    horizon_ms: AtomicI64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(now_ms())
    }
}

impl Progress {
    pub fn new(listening_since: Millis) -> Self {
        Progress {
            beats: Mutex::new(HashMap::default()),
            listening_since,
            horizon_ms: AtomicI64::new(3_600_000),
        }
    }

    /// Beats older than `horizon_ms` are forgotten (see [`Progress::prune`]).
    pub fn set_horizon(&self, horizon_ms: Millis) {
        self.horizon_ms.store(horizon_ms.max(1), Ordering::Relaxed);
    }

    /// A verified progress beat of `job_id` under `lease`, at `at` (the host's clock).
    pub fn observe(&self, job_id: &str, lease: &str, at: Millis) {
        let mut beats = self.beats.lock();
        match beats.get_mut(job_id) {
            Some(b) => {
                b.at = b.at.max(at);
                if b.lease != lease {
                    b.lease = lease.to_string();
                    b.at = at;
                }
            }
            None => {
                beats.insert(
                    job_id.to_string(),
                    Beat {
                        lease: lease.to_string(),
                        at,
                    },
                );
            }
        }
    }

    /// Since when the job, RUNNING since `running_since` under `lease` (the store's), has
    /// been silent as far as this replica knows.
    pub fn silent_since(&self, job_id: &str, lease: Option<&str>, running_since: Millis) -> Millis {
        let beat = self
            .beats
            .lock()
            .get(job_id)
            .filter(|b| lease.is_some_and(|l| l == b.lease))
            .map_or(Millis::MIN, |b| b.at);
        beat.max(running_since).max(self.listening_since)
    }

    /// Drops the beats older than the horizon before `now`; answers how many are kept.
    pub fn prune(&self, now: Millis) -> usize {
        let before = now - self.horizon_ms.load(Ordering::Relaxed);
        let mut beats = self.beats.lock();
        beats.retain(|_, b| b.at >= before);
        beats.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_silent_since_its_last_beat_under_its_lease() {
        let p = Progress::new(1_000);
        // Nothing seen: since it ran, or since the replica listens, whichever is later.
        assert_eq!(p.silent_since("j", Some("L"), 500), 1_000);
        assert_eq!(p.silent_since("j", Some("L"), 2_000), 2_000);
        p.observe("j", "L", 5_000);
        p.observe("j", "L", 4_000);
        assert_eq!(p.silent_since("j", Some("L"), 2_000), 5_000);
        // A beat under another dispatch's lease counts for nothing.
        assert_eq!(p.silent_since("j", Some("M"), 2_000), 2_000);
        assert_eq!(p.silent_since("j", None, 2_000), 2_000);
        p.observe("j", "M", 3_000);
        assert_eq!(p.silent_since("j", Some("M"), 2_000), 3_000);
    }

    #[test]
    fn old_beats_are_pruned() {
        let p = Progress::new(0);
        p.set_horizon(100);
        p.observe("old", "L", 1_000);
        p.observe("new", "L", 1_950);
        assert_eq!(p.prune(2_000), 1);
        assert_eq!(p.silent_since("old", Some("L"), 0), 0);
        assert_eq!(p.silent_since("new", Some("L"), 0), 1_950);
    }
}
