//! Applies what workers report (`sys.job.started`, `sys.job.result`, and batches of results on
//! `sys.job.results`), from the durable event stream. An event is acked only once its effect is stored; one that could not be stored (the
//! store is down) is left unacked and comes back.
//!
//! A `started` is held for `started_coalesce` so that a short job's RUNNING and its result are
//! written by one script (see the module docs of [`crate::scheduler`]). Both events of a job
//! come through the same ordered stream, so a result always finds its `started` if it is held.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;

use super::{Scheduler, SchedulerError};
use crate::bus::Ack;
use crate::job::{JobError, JobState, WORKER_LOST};
use crate::limits::{JsonMeasure, MAX_JSON_DEPTH, too_deep};
use crate::protocol::{Batch, ResultMsg, ResultStatus, StartedMsg};
use crate::store::{Annotation, JobUpdate, Transition, TransitionOutcome};
use crate::time::now_ms;

struct HeldStart {
    msg: StartedMsg,
    ack: Ack,
    since: Instant,
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
                        Ok(s) => {
                            let held_start = HeldStart {
                                msg: s,
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
                let results = match results {
                    Ok(r) if !r.is_empty() => r,
                    Ok(_) => {
                        let _ = ack.ack().await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping malformed result message");
                        let _ = ack.ack().await;
                        continue;
                    }
                };
                // The worker's slot is free as soon as its result is here: waiting jobs need
                // not wait for the result to be stored too.
                for r in &results {
                    self.release_slot(&r.job_id);
                }
                self.wake_waiters();
                let starts: Vec<Option<HeldStart>> = {
                    let mut held = held.lock();
                    results.iter().map(|r| held.remove(&r.job_id)).collect()
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
                            .map(|(r, s)| this.apply_result(r, s.as_ref().map(|s| &s.msg))),
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
                    let dispatch = this.take_unrecorded(id);
                    let mut t = Transition::to(JobState::Running, h.msg.at);
                    t.update.worker_id = Some(h.msg.worker_id.clone());
                    t = with_dispatch(t, dispatch.as_ref(), h.msg.at);
                    match this.apply_keeping(id, &t, dispatch).await {
                        Ok(_) => {
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
        r: &ResultMsg,
        start: Option<&StartedMsg>,
    ) -> Result<(), SchedulerError> {
        let now = now_ms();
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
            result: if too_deep.is_some() {
                None
            } else {
                r.result.clone()
            },
            error: too_deep.clone().or_else(|| r.error.clone()),
            execution_ms: Some(r.execution_ms),
            ..Default::default()
        };
        let outcome = match r.status {
            _ if too_deep.is_some() => JobState::Failed,
            ResultStatus::Succeeded => JobState::Succeeded,
            ResultStatus::Failed => JobState::Failed,
            ResultStatus::Cancelled => JobState::Cancelled,
            ResultStatus::Timeout => JobState::Timeout,
        };
        let started = r.started_at.or(start.map(|s| s.at));
        // A dispatch this replica has not written yet is written on the way.
        let dispatch = self.take_unrecorded(&r.job_id);
        if outcome == JobState::Succeeded {
            let mut t = Transition::to(outcome, now);
            if let Some(at) = started {
                t = t.through(JobState::Running, at);
            }
            t.update = update;
            let t = with_dispatch(t, dispatch.as_ref(), started.unwrap_or(now));
            if self.apply_keeping(&r.job_id, &t, dispatch).await?.is_none() {
                self.note_late_result(r).await?;
            }
            return Ok(());
        }
        // A failure goes through the retry policy from where the worker left the job.
        let step = match (started, dispatch.as_ref().map(|d| d.at)) {
            (Some(at), _) => Some(Transition::to(JobState::Running, at)),
            (None, Some(at)) => Some(Transition::to(JobState::Dispatched, at)),
            (None, None) => None,
        };
        if let Some(mut t) = step {
            t.update.worker_id = Some(r.worker_id.clone());
            let t = with_dispatch(t, dispatch.as_ref(), started.unwrap_or(now));
            self.apply_keeping(&r.job_id, &t, dispatch).await?;
        }
        let Some(job) = self.store.get_job(&r.job_id).await? else {
            return Ok(());
        };
        if job.state.is_terminal() {
            return self.note_late_result(r).await;
        }
        let note = match update.error.as_ref() {
            Some(e) => format!(
                "worker {} reported {}: {}: {}",
                r.worker_id, outcome, e.code, e.message
            ),
            None => format!("worker {} reported {}", r.worker_id, outcome),
        };
        self.settle_failure(&job, outcome, update, note).await
    }
}

impl Scheduler {
    /// A result for a job that ended without it: when its worker had been declared lost, the
    /// result is written on the job's history (and nothing else changes); a duplicate of a
    /// result already applied is dropped without a word.
    async fn note_late_result(&self, r: &ResultMsg) -> Result<(), SchedulerError> {
        let Some(job) = self.store.get_job(&r.job_id).await? else {
            return Ok(());
        };
        let lost = job.error.as_ref().is_some_and(|e| e.code == WORKER_LOST);
        if !job.state.is_terminal() || !lost {
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
        dispatch: Option<super::Dispatch>,
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
fn with_dispatch(
    mut t: Transition,
    dispatch: Option<&super::Dispatch>,
    fallback_at: i64,
) -> Transition {
    if t.to != JobState::Dispatched {
        let at = dispatch.map_or(fallback_at, |d| d.at);
        t.via.insert(0, (JobState::Dispatched, at));
    }
    if let Some(d) = dispatch {
        t.update = std::mem::take(&mut t.update).or(d.update.clone());
    }
    t
}
