//! Applies what workers report (`sys.job.started`, `sys.job.result`, and batches of results on
//! `sys.job.results`), from the durable event stream. An event is acked only once its effect is
//! stored; one that could not be stored (the store is down) is left unacked and comes back.
//!
//! A report counts only from the worker the job was given to, under the lease of that dispatch
//! (see [`crate::bus::auth`]): its lease is verified as it arrives, and every transition it asks
//! for carries the claim, which the store checks against the job's assignment. Times it reports
//! are clamped between the dispatch and this host's clock. Anything else is refused: logged,
//! counted, acked and otherwise ignored.
//!
//! A `started` is held for `started_coalesce` so that a short job's RUNNING and its result are
//! written by one script (see the module docs of [the crate's docs](crate)). Both events of a job
//! come through the same ordered stream, so a result always finds its `started` if it is held.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;

use super::{Dispatch, Scheduler, SchedulerError};
use crate::bus::Ack;
use crate::bus::auth::{Lease, Rejection};
use crate::job::{JobError, JobState, WORKER_LOST};
use crate::limits::{JsonMeasure, MAX_JSON_DEPTH, too_deep};
use crate::protocol::{Batch, ResultMsg, ResultStatus, StartedMsg};
use crate::store::{Annotation, Claim, JobUpdate, Transition, TransitionOutcome};
use crate::time::now_ms;

/// A worker's `started` whose lease verified, its time clamped, waiting for its result.
struct HeldStart {
    msg: StartedMsg,
    lease: Lease,
    claim: Claim,
    ack: Ack,
    since: Instant,
}

/// A worker's result whose lease verified.
struct Report {
    msg: ResultMsg,
    lease: Lease,
    claim: Claim,
}

type Held = Arc<Mutex<super::IdMap<HeldStart>>>;

impl Scheduler {
    /// Consumes worker events until the bus closes, reconnecting the consumer after errors.
    pub async fn run_results(self: Arc<Self>) {
        let held: Held = Arc::new(Mutex::new(super::IdMap::default()));
        tokio::spawn(self.clone().flush_held_starts(held.clone()));
        loop {
            let mut events = match self.bus.consume_worker_events().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot consume worker events; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let started_subject = self.bus.subjects().started();
            let results_subject = self.bus.subjects().results();
            while let Some(mut msg) = events.next().await {
                let ack = msg.take_ack();
                if msg.subject == started_subject {
                    match serde_json::from_slice::<StartedMsg>(&msg.payload) {
                        Ok(mut s) => {
                            let Some((lease, claim)) =
                                self.verified("started", &s.job_id, &s.worker_id, &s.lease)
                            else {
                                let _ = ack.ack().await;
                                continue;
                            };
                            s.at = lease.clamp(s.at, now_ms());
                            let held_start = HeldStart {
                                msg: s,
                                lease,
                                claim,
                                ack,
                                since: Instant::now(),
                            };
                            held.lock()
                                .insert(held_start.msg.job_id.clone(), held_start);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "dropping malformed started message");
                            let _ = ack.ack().await;
                        }
                    }
                    continue;
                }
                let results = if msg.subject == results_subject {
                    serde_json::from_slice::<Batch<ResultMsg>>(&msg.payload).map(|b| b.items)
                } else {
                    serde_json::from_slice::<ResultMsg>(&msg.payload).map(|r| vec![r])
                };
                let results: Vec<Report> = match results {
                    Ok(r) => r
                        .into_iter()
                        .filter_map(|msg| {
                            let (lease, claim) =
                                self.verified("result", &msg.job_id, &msg.worker_id, &msg.lease)?;
                            Some(Report { msg, lease, claim })
                        })
                        .collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping malformed result message");
                        Vec::new()
                    }
                };
                if results.is_empty() {
                    let _ = ack.ack().await;
                    continue;
                }
                // The worker's slot is free as soon as its result is here: waiting jobs need
                // not wait for the result to be stored too.
                for r in &results {
                    self.release_slot(&r.msg.job_id);
                }
                self.wake_waiters();
                let starts: Vec<Option<HeldStart>> = {
                    let mut held = held.lock();
                    results.iter().map(|r| held.remove(&r.msg.job_id)).collect()
                };
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    // The results of one message are stored together (their transitions share
                    // batched script calls) and the message is acked once all are.
                    let applied = futures::future::join_all(
                        results
                            .iter()
                            .zip(&starts)
                            .map(|(r, s)| this.apply_result(r, s.as_ref())),
                    )
                    .await;
                    let failed = applied.iter().filter(|a| a.is_err()).count();
                    if failed == 0 {
                        let _ = ack.ack().await;
                        for s in starts.into_iter().flatten() {
                            let _ = s.ack.ack().await;
                        }
                    } else if let Some(Err(e)) = applied.into_iter().find(Result::is_err) {
                        tracing::warn!(failed, error = %e, "results not applied; they will be delivered again");
                    }
                    drop(permit);
                });
            }
            tracing::warn!("worker event stream ended; resubscribing");
        }
    }

    /// Writes RUNNING for starts whose result did not come within the coalescing window.
    async fn flush_held_starts(self: Arc<Self>, held: Held) {
        let window = self.settings.started_coalesce;
        let mut tick = tokio::time::interval((window / 2).max(Duration::from_millis(5)));
        loop {
            tick.tick().await;
            let due: Vec<HeldStart> = {
                let mut map = held.lock();
                let ids: Vec<String> = map
                    .iter()
                    .filter(|(_, h)| h.since.elapsed() >= window)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter().filter_map(|id| map.remove(id)).collect()
            };
            for h in due {
                let this = self.clone();
                tokio::spawn(async move {
                    let id = &h.msg.job_id;
                    let refused = |why: Rejection| why.record("started", id, &h.claim.worker_id);
                    let dispatch = match this.unrecorded_for(id, &h.claim) {
                        Ok(d) => d,
                        Err(why) => {
                            refused(why);
                            let _ = h.ack.ack().await;
                            return;
                        }
                    };
                    let mut t = Transition::to(JobState::Running, h.msg.at)
                        .claimed_by(Some(h.claim.clone()));
                    t.update.worker_id = Some(h.claim.worker_id.clone());
                    t.update.lease = Some(h.claim.lease.clone());
                    t = with_dispatch(t, dispatch.as_ref(), h.lease.dispatched_at(h.msg.at));
                    match this.apply_keeping(id, &t, dispatch).await {
                        Ok(outcome) => {
                            if outcome == Some(TransitionOutcome::OtherWorker) {
                                refused(Rejection::NotAssigned);
                            }
                            let _ = h.ack.ack().await;
                        }
                        Err(e) => tracing::warn!(job_id = %id, error = %e,
                            "started not applied; it will be delivered again"),
                    }
                });
            }
        }
    }

    async fn apply_result(
        &self,
        report: &Report,
        start: Option<&HeldStart>,
    ) -> Result<(), SchedulerError> {
        let Report {
            msg: r,
            lease,
            claim,
        } = report;
        let now = now_ms();
        let refused = |why: Rejection| why.record("result", &r.job_id, &r.worker_id);
        // A result nested deeper than a body may be could not be read back from the run that
        // wraps it (serde_json stops at 128 levels): the job fails instead, saying why.
        let depth = r
            .result
            .as_ref()
            .map_or(0, |v| JsonMeasure::of_value(v).depth);
        let too_deep = (depth > MAX_JSON_DEPTH)
            .then(|| JobError::new("result_too_deep", format!("the result {}", too_deep(depth))));
        let update = JobUpdate {
            worker_id: Some(r.worker_id.clone()),
            lease: Some(claim.lease.clone()),
            result: if too_deep.is_some() {
                None
            } else {
                r.result.clone()
            },
            error: too_deep.clone().or_else(|| r.error.clone()),
            execution_ms: Some(lease.clamp_duration(r.execution_ms, now)),
            ..Default::default()
        };
        let outcome = match r.status {
            _ if too_deep.is_some() => JobState::Failed,
            ResultStatus::Succeeded => JobState::Succeeded,
            ResultStatus::Failed => JobState::Failed,
            ResultStatus::Cancelled => JobState::Cancelled,
            ResultStatus::Timeout => JobState::Timeout,
        };
        // A start held for the job counts only if it came from this worker under this lease.
        let start = start.filter(|s| s.claim == *claim);
        let started = r
            .started_at
            .map(|at| lease.clamp(at, now))
            .or(start.map(|s| s.msg.at));
        let dispatched_at = lease.dispatched_at(now);
        // A dispatch this replica has not written yet is written on the way.
        let dispatch = match self.unrecorded_for(&r.job_id, claim) {
            Ok(d) => d,
            Err(why) => {
                refused(why);
                return Ok(());
            }
        };
        if outcome == JobState::Succeeded {
            let mut t = Transition::to(outcome, now).claimed_by(Some(claim.clone()));
            if let Some(at) = started {
                t = t.through(JobState::Running, at);
            }
            t.update = update;
            let t = with_dispatch(t, dispatch.as_ref(), dispatched_at);
            match self.apply_keeping(&r.job_id, &t, dispatch).await? {
                Some(TransitionOutcome::OtherWorker) => refused(Rejection::NotAssigned),
                Some(_) => {}
                None => self.note_late_result(r, claim).await?,
            }
            return Ok(());
        }
        // A failure goes through the retry policy from where the worker left the job.
        let step = match (started, dispatch.as_ref().map(|d| d.at)) {
            (Some(at), _) => Some(Transition::to(JobState::Running, at)),
            (None, Some(at)) => Some(Transition::to(JobState::Dispatched, at)),
            (None, None) => None,
        };
        if let Some(t) = step {
            let mut t = t.claimed_by(Some(claim.clone()));
            t.update.worker_id = Some(r.worker_id.clone());
            t.update.lease = Some(claim.lease.clone());
            let t = with_dispatch(t, dispatch.as_ref(), dispatched_at);
            if self.apply_keeping(&r.job_id, &t, dispatch).await?
                == Some(TransitionOutcome::OtherWorker)
            {
                refused(Rejection::NotAssigned);
                return Ok(());
            }
        }
        let Some(job) = self.store.get_job(&r.job_id).await? else {
            return Ok(());
        };
        if job.state.is_terminal() {
            return self.note_late_result(r, claim).await;
        }
        if !claim.admits(job.worker_id.as_deref(), job.lease.as_deref()) {
            refused(Rejection::NotAssigned);
            return Ok(());
        }
        let note = match update.error.as_ref() {
            Some(e) => format!(
                "worker {} reported {}: {}: {}",
                r.worker_id, outcome, e.code, e.message
            ),
            None => format!("worker {} reported {}", r.worker_id, outcome),
        };
        self.settle_failure(&job, outcome, update, note, Some(claim.clone()))
            .await
    }

    /// The lease of a worker's report as the claim its transitions carry, if it verifies; a
    /// report whose lease does not is refused (logged, counted) and `None`.
    fn verified(
        &self,
        kind: &str,
        job_id: &str,
        worker_id: &str,
        lease: &Option<String>,
    ) -> Option<(Lease, Claim)> {
        match self.leases.verify(job_id, worker_id, lease.as_deref()) {
            Ok(verified) => Some((
                verified,
                Claim {
                    worker_id: worker_id.to_string(),
                    lease: lease.clone().unwrap_or_default(),
                },
            )),
            Err(why) => {
                why.record(kind, job_id, worker_id);
                None
            }
        }
    }

    /// The dispatch of a job this replica has not written yet, for a report that writes it on
    /// the way — if the report is from that dispatch. One from another (a genuine lease of a
    /// dispatch this one superseded) is refused, and the dispatch kept to be written.
    fn unrecorded_for(&self, id: &str, claim: &Claim) -> Result<Option<Dispatch>, Rejection> {
        match self.take_unrecorded(id) {
            Some(d) if !claim.admits(d.update.worker_id.as_deref(), d.update.lease.as_deref()) => {
                self.keep_unrecorded(id, d);
                Err(Rejection::NotAssigned)
            }
            d => Ok(d),
        }
    }
}

impl Scheduler {
    /// A result for a job that ended without it: when its worker — the one it was given to,
    /// under this lease — had been declared lost, the result is written on the job's history
    /// (and nothing else changes); a duplicate of a result already applied is dropped without
    /// a word.
    async fn note_late_result(&self, r: &ResultMsg, claim: &Claim) -> Result<(), SchedulerError> {
        let Some(job) = self.store.get_job(&r.job_id).await? else {
            return Ok(());
        };
        let lost = job.error.as_ref().is_some_and(|e| e.code == WORKER_LOST);
        if !job.state.is_terminal() || !lost {
            return Ok(());
        }
        if !claim.admits(job.worker_id.as_deref(), job.lease.as_deref()) {
            Rejection::NotAssigned.record("result", &r.job_id, &r.worker_id);
            return Ok(());
        }
        let note = Annotation {
            expect: job.state,
            at: now_ms(),
            reason: Some(format!(
                "late result from worker {} ({:?}), ignored: the job had ended {} when its worker \
                 was declared lost",
                r.worker_id, r.status, job.state
            )),
            update: JobUpdate::default(),
            recheck_at: None,
        };
        self.store.annotate(&r.job_id, &note).await?;
        metrics::counter!("coretex_late_results_total").increment(1);
        Ok(())
    }

    /// Applies a transition that carries a job's unwritten dispatch; should the store fail,
    /// the dispatch is kept to be written later.
    async fn apply_keeping(
        &self,
        id: &str,
        t: &Transition,
        dispatch: Option<Dispatch>,
    ) -> Result<Option<TransitionOutcome>, SchedulerError> {
        match self.apply(id, t).await {
            Ok(o) => Ok(o),
            Err(e) => {
                if let Some(d) = dispatch {
                    self.keep_unrecorded(id, d);
                }
                Err(e)
            }
        }
    }
}

/// Puts a job's dispatch on the way of a later transition: DISPATCHED first, entered at the
/// dispatch (when this replica has it unwritten, with its worker, safety decision and config)
/// or else at `fallback_at`. A job whose DISPATCHED is stored already skips that step (the walk
/// begins after the current state); one still PENDING because the replica that sent it has not
/// written it yet, or died first, takes it.
fn with_dispatch(mut t: Transition, dispatch: Option<&Dispatch>, fallback_at: i64) -> Transition {
    if t.to != JobState::Dispatched {
        let at = dispatch.map_or(fallback_at, |d| d.at);
        t.via.insert(0, (JobState::Dispatched, at));
    }
    if let Some(d) = dispatch {
        t.update = std::mem::take(&mut t.update).or(d.update.clone());
    }
    t
}
