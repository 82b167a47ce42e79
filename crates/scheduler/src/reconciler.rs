//! The reconciler (SPEC §6): the loop that finds what fell through the cracks. It runs in one
//! replica at a time, holding the `reconciler` lock with an owner token (renewed each tick,
//! released only by its owner), and every tick:
//!
//! * DISPATCHED jobs older than `dispatch_timeout` → TIMEOUT (cancel sent, retry policy asked);
//!   younger ones whose worker has not said `started` for `redeliver_after` are sent to their
//!   worker again (it drops duplicates and re-sends results it already has) — this is what
//!   recovers a job whose dispatch message died with a replica;
//! * RUNNING jobs older than `running_timeout` → TIMEOUT;
//! * DISPATCHED and RUNNING jobs whose worker is lost — silent past its heartbeat TTL, or
//!   restarted under the same id (a new instance in its heartbeats) — → FAILED `worker_lost`,
//!   through the retry policy, so they run again elsewhere (a page of each state per tick, the
//!   walk going on where the last tick left it);
//! * RUNNING jobs submitted with `heartbeat_timeout_sec` whose worker, alive, has sent no
//!   `progress` for the job within it → FAILED `heartbeat_timeout`, through the retry policy
//!   (in the same walk; see [`crate::progress`]);
//! * jobs past their deadline → TIMEOUT (FAILED when they never reached a worker);
//! * PENDING jobs nobody scheduled within `pending_grace` are published again;
//! * index entries of expired records are pruned (every minute).
//!
//! Work per tick is bounded (`page` jobs per query). A job whose handling keeps failing is
//! skipped after `retry_budget` attempts and reported (log, metric, `/api/v1/status`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::job::{HEARTBEAT_TIMEOUT, Job, JobError, JobState, WORKER_LOST};
use crate::leader::Leadership;
use crate::protocol::Clearance;
use crate::registry::{Holder, Registry};
use crate::store::{Annotation, Cursor, JobStore, JobUpdate, Locks, StoreError};
use crate::time::{Millis, now_ms};
use crate::{Scheduler, SchedulerError};

#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub interval: Duration,
    pub dispatch_timeout: Duration,
    pub running_timeout: Duration,
    pub redeliver_after: Duration,
    pub pending_grace: Duration,
    pub page: usize,
    pub retry_budget: u32,
    pub job_ttl: Duration,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            interval: Duration::from_secs(1),
            dispatch_timeout: Duration::from_secs(300),
            running_timeout: Duration::from_secs(3600),
            redeliver_after: Duration::from_secs(10),
            pending_grace: Duration::from_secs(5),
            page: 500,
            retry_budget: 3,
            job_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

const LOCK: &str = "reconciler";
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Reconciler {
    /// The scheduler's own operations: announce, re-send, settle a failure, cancel.
    scheduler: Arc<Scheduler>,
    /// The jobs it watches, read and annotated directly.
    jobs: Arc<dyn JobStore>,
    /// The live workers, whose silence or restart loses their jobs.
    registry: Arc<Registry>,
    settings: ReconcilerSettings,
    leadership: Leadership,
    failures: Mutex<HashMap<String, u32>>,
    skipped: Mutex<Vec<String>>,
    /// Where the walk for lost workers goes on, per state.
    walks: Mutex<HashMap<JobState, Cursor>>,
}

fn ms(d: Duration) -> Millis {
    d.as_millis() as Millis
}

impl Reconciler {
    pub fn new(
        scheduler: Arc<Scheduler>,
        jobs: Arc<dyn JobStore>,
        locks: Arc<dyn Locks>,
        registry: Arc<Registry>,
        settings: ReconcilerSettings,
        owner: String,
    ) -> Arc<Self> {
        let ttl = Leadership::ttl_for(settings.interval);
        // A beat older than the running timeout can save no job from it.
        scheduler
            .progress()
            .set_horizon(ms(settings.running_timeout));
        Arc::new(Reconciler {
            leadership: Leadership::new(locks, LOCK, owner, ttl),
            scheduler,
            jobs,
            registry,
            settings,
            failures: Mutex::new(HashMap::new()),
            skipped: Mutex::new(Vec::new()),
            walks: Mutex::new(HashMap::new()),
        })
    }

    /// Jobs given up on after the retry budget (most recent last).
    pub fn skipped(&self) -> Vec<String> {
        self.skipped.lock().clone()
    }

    pub async fn run(self: Arc<Self>) {
        self.leadership
            .lead_every(
                self.settings.interval,
                || async {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "reconciler tick incomplete");
                    }
                },
                PRUNE_EVERY,
                || async {
                    let before = now_ms() - ms(self.settings.job_ttl);
                    match self.jobs.prune_indexes(before).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(removed = n, "pruned expired index entries")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "index pruning failed"),
                    }
                },
            )
            .await
    }

    /// Releases the lock (on shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        self.leadership.release().await;
    }

    /// One pass over everything the reconciler watches.
    pub async fn tick(&self) -> Result<(), SchedulerError> {
        let now = now_ms();
        let s = &self.settings;
        let store = &self.jobs;

        let due = store
            .jobs_due(JobState::Dispatched, now - ms(s.redeliver_after), s.page)
            .await?;
        self.each(due, |job| self.check_dispatched(job, now))
            .await?;

        let due = store
            .jobs_due(JobState::Running, now - ms(s.running_timeout), s.page)
            .await?;
        self.each(due, |job| async move {
            if job.state != JobState::Running {
                return Ok(());
            }
            let note = format!(
                "no result within the running timeout ({:?})",
                self.settings.running_timeout
            );
            self.time_out(job, JobState::Timeout, "running_timeout", note)
                .await
        })
        .await?;

        for state in [JobState::Dispatched, JobState::Running] {
            self.find_lost(state).await?;
        }

        let due = store.deadlines_due(now, s.page).await?;
        self.each(due, |job| async move {
            if job.state.is_terminal() {
                return Ok(());
            }
            let outcome = match job.state {
                JobState::Pending | JobState::Scheduled => JobState::Failed,
                _ => JobState::Timeout,
            };
            self.time_out(
                job,
                outcome,
                "deadline_exceeded",
                "the deadline passed".into(),
            )
            .await
        })
        .await?;

        let due = store
            .jobs_due(JobState::Pending, now - ms(s.pending_grace), s.page)
            .await?;
        self.each(due, |job| async move {
            if job.state != JobState::Pending {
                return Ok(());
            }
            let clearance = Clearance::of_stored(&job);
            let recheck = Annotation {
                expect: JobState::Pending,
                at: now_ms(),
                reason: None,
                update: JobUpdate::default(),
                recheck_at: Some(now_ms()),
            };
            if store.annotate(&job.spec.id, &recheck).await? {
                self.scheduler.announce(job.spec, clearance).await;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// One page of the `state` index: each job whose worker is lost fails (`worker_lost`), and
    /// each RUNNING job silent past its heartbeat timeout fails (`heartbeat_timeout`); both go
    /// through the retry policy.
    async fn find_lost(&self, state: JobState) -> Result<(), SchedulerError> {
        let after = self.walks.lock().remove(&state);
        let (held, next) = self
            .jobs
            .holdings(state, after.as_ref(), self.settings.page)
            .await?;
        if let Some(next) = next {
            self.walks.lock().insert(state, next);
        }
        let registry = &self.registry;
        let now = now_ms();
        let lost: HashMap<String, (&'static str, String)> = held
            .into_iter()
            .filter_map(|h| {
                let worker = h.worker_id.as_deref()?;
                let why = match registry.holder(worker, h.worker_instance.as_deref()) {
                    Holder::Alive => return self.silent(state, &h, worker, now),
                    Holder::Silent => format!(
                        "worker {worker} lost: no heartbeat within its TTL ({:?})",
                        registry.ttl()
                    ),
                    Holder::Restarted { now } => format!(
                        "worker {worker} lost: it restarted (instance {now}) while holding the job"
                    ),
                };
                Some((h.job_id, (WORKER_LOST, why)))
            })
            .collect();
        let ids = lost.keys().cloned().collect();
        self.each(ids, |job| {
            let (code, why) = lost.get(&job.spec.id).cloned().unwrap_or_default();
            async move {
                if job.state != state {
                    return Ok(());
                }
                if code == HEARTBEAT_TIMEOUT {
                    tracing::warn!(job_id = %job.spec.id, reason = %why, "job silent past its heartbeat timeout");
                    metrics::counter!("coretex_jobs_heartbeat_timeout_total").increment(1);
                } else {
                    tracing::warn!(job_id = %job.spec.id, reason = %why, "job lost with its worker");
                    metrics::counter!("coretex_jobs_worker_lost_total").increment(1);
                }
                self.time_out(job, JobState::Failed, code, why).await
            }
        })
        .await
    }

    /// Why a RUNNING job held by a live worker is to end `heartbeat_timeout`: no progress
    /// under its lease for longer than its timeout, as far as this replica has heard.
    fn silent(
        &self,
        state: JobState,
        h: &crate::store::Holding,
        worker: &str,
        now: Millis,
    ) -> Option<(String, (&'static str, String))> {
        let timeout = h
            .heartbeat_timeout_ms
            .filter(|_| state == JobState::Running)?;
        let since = self
            .scheduler
            .progress()
            .silent_since(&h.job_id, h.lease.as_deref(), h.since);
        let silent = now.saturating_sub(since);
        (silent > Millis::try_from(timeout).unwrap_or(Millis::MAX)).then(|| {
            let why = format!(
                "no progress from worker {worker} for {} ms, past the job's heartbeat timeout ({} s)",
                silent,
                timeout / 1000
            );
            (h.job_id.clone(), (HEARTBEAT_TIMEOUT, why))
        })
    }

    async fn check_dispatched(&self, job: Job, now: Millis) -> Result<(), SchedulerError> {
        if job.state != JobState::Dispatched {
            return Ok(());
        }
        let age = now - job.updated_at;
        if age >= ms(self.settings.dispatch_timeout) {
            let note = format!(
                "not started within the dispatch timeout ({:?})",
                self.settings.dispatch_timeout
            );
            return self
                .time_out(job, JobState::Timeout, "dispatch_timeout", note)
                .await;
        }
        let Some(worker) = job.worker_id.clone() else {
            return Ok(());
        };
        if !self.registry.is_alive(&worker) {
            return Ok(());
        }
        let recheck = Annotation {
            expect: JobState::Dispatched,
            at: now_ms(),
            reason: None,
            update: JobUpdate::default(),
            recheck_at: Some(now_ms()),
        };
        if self.jobs.annotate(&job.spec.id, &recheck).await? {
            let effective = job
                .effective_config
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "{}".into());
            tracing::info!(job_id = %job.spec.id, worker_id = %worker, "re-delivering a job its worker has not started");
            self.scheduler
                .send_to_worker(&worker, &job.spec, &effective, job.lease.clone())
                .await;
        }
        Ok(())
    }

    async fn time_out(
        &self,
        job: Job,
        outcome: JobState,
        code: &str,
        note: String,
    ) -> Result<(), SchedulerError> {
        let was_out = matches!(job.state, JobState::Dispatched | JobState::Running);
        let update = JobUpdate {
            error: Some(JobError::new(code, note.clone())),
            ..Default::default()
        };
        let id = job.spec.id.clone();
        self.scheduler
            .settle_failure(&job, outcome, update, note, None)
            .await?;
        if was_out {
            self.scheduler.send_cancel(&id, code).await;
        }
        Ok(())
    }

    /// Loads the jobs and handles each, counting failures against the retry budget.
    async fn each<F, Fut>(&self, ids: Vec<String>, mut handle: F) -> Result<(), SchedulerError>
    where
        F: FnMut(Job) -> Fut,
        Fut: std::future::Future<Output = Result<(), SchedulerError>>,
    {
        if ids.is_empty() {
            return Ok(());
        }
        let jobs = self.jobs.get_jobs(&ids).await?;
        for (id, job) in ids.into_iter().zip(jobs) {
            let Some(job) = job else { continue };
            if self.skipped.lock().contains(&id) {
                continue;
            }
            match handle(job).await {
                Ok(()) => {
                    self.failures.lock().remove(&id);
                }
                Err(SchedulerError::Store(StoreError::Unavailable(e))) => {
                    return Err(SchedulerError::Store(StoreError::Unavailable(e)));
                }
                Err(e) => {
                    let n = {
                        let mut f = self.failures.lock();
                        let n = f.entry(id.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    if n >= self.settings.retry_budget {
                        tracing::error!(job_id = %id, error = %e, attempts = n, "reconciler gives up on a job");
                        metrics::counter!("coretex_reconciler_skipped_total").increment(1);
                        self.failures.lock().remove(&id);
                        let mut skipped = self.skipped.lock();
                        skipped.push(id);
                        let excess = skipped.len().saturating_sub(1000);
                        skipped.drain(..excess);
                    } else {
                        tracing::warn!(job_id = %id, error = %e, attempts = n, "reconciler could not handle a job");
                    }
                }
            }
        }
        Ok(())
    }
}
