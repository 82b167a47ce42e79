//! Settling failures: a job that ended badly (or cannot be scheduled at all) goes through its
//! retry policy — within the host's bounds — to another attempt or to the dead-letter queue,
//! in one stored transition.

use super::retry::{self, Failure, RetryDecision};
use super::{Scheduler, SchedulerError};
use crate::job::{Job, JobError, JobSpec, JobState};
use crate::protocol::Clearance;
use crate::store::{Claim, CreateOutcome, DlqEntry, JobUpdate, NewJob, Transition};
use crate::time::now_ms;

impl Scheduler {
    /// Fails a job that cannot be scheduled at all, through the retry policy's dead letter.
    pub(super) async fn fail_now(
        &self,
        spec: &JobSpec,
        err: JobError,
    ) -> Result<(), SchedulerError> {
        let Some(job) = self.store.get_job(&spec.id).await? else {
            return Ok(());
        };
        let reason = err.message.clone();
        self.dead_letter(
            &job,
            JobState::Failed,
            JobUpdate {
                error: Some(err),
                ..Default::default()
            },
            reason,
            None,
        )
        .await
    }

    /// A job ended badly: the retry policy decides between another attempt and the DLQ. The
    /// next attempt is created before the failure is recorded, so a crash in between leaves a
    /// job to run, never a lost retry (the attempt id is deterministic, so doing it twice
    /// creates it once). A failure a worker reported carries its `claim`: it is recorded only
    /// while the job is that worker's (see [`Claim`]).
    pub async fn settle_failure(
        &self,
        job: &Job,
        outcome: JobState,
        update: JobUpdate,
        note: String,
        claim: Option<Claim>,
    ) -> Result<(), SchedulerError> {
        let now = now_ms();
        let deadline_passed = job.spec.deadline.is_some_and(|d| d <= now);
        let decision = if deadline_passed {
            RetryDecision::DeadLetter {
                reason: "deadline exceeded".into(),
            }
        } else {
            // The policy of the config the job was dispatched with; a job that never was
            // dispatched goes by its current effective config.
            let resolved;
            let effective = match &job.effective_config {
                Some(v) => v,
                None => {
                    resolved = self.effective_config(&job.spec).await?;
                    &resolved.value
                }
            };
            let failure = Failure {
                job,
                outcome,
                error: update.error.as_ref(),
                elapsed_ms: (now - job.spec.created_at).max(0) as u64,
            };
            let asked = self.plugins.decide_retry(effective, &failure).await;
            self.settings.retry_bounds.bound(
                asked,
                job.spec.attempt,
                effective
                    .pointer("/retry/max_attempts")
                    .and_then(serde_json::Value::as_u64),
            )
        };
        match decision {
            RetryDecision::Retry { after_ms } => {
                let next = retry::next_attempt(&job.spec, now, after_ms);
                let next_id = next.id.clone();
                let new = NewJob {
                    spec: next.clone(),
                    idempotency_key: None,
                    note: Some(format!("attempt {} of {}", next.attempt, job.spec.id)),
                };
                if self.store.create_job(&new).await? == CreateOutcome::Created {
                    self.announce(next, Clearance::None).await;
                }
                let mut t = Transition::to(outcome, now)
                    .note(format!("{note}; retrying as {next_id} in {after_ms} ms"))
                    .claimed_by(claim);
                t.update = update;
                self.apply(&job.spec.id, &t).await?;
                Ok(())
            }
            RetryDecision::DeadLetter { reason } => {
                self.dead_letter(job, outcome, update, format!("{note}; {reason}"), claim)
                    .await
            }
        }
    }

    async fn dead_letter(
        &self,
        job: &Job,
        outcome: JobState,
        update: JobUpdate,
        reason: String,
        claim: Option<Claim>,
    ) -> Result<(), SchedulerError> {
        let now = now_ms();
        let entry = DlqEntry {
            job_id: job.spec.id.clone(),
            topic: job.spec.topic.clone(),
            tenant_id: job.spec.tenant_id.clone(),
            status: outcome,
            reason: reason.clone(),
            error: update.error.clone(),
            attempts: job.spec.attempt,
            created_at: now,
            request: job.spec.clone(),
        };
        let mut t = Transition::to(outcome, now).note(reason).claimed_by(claim);
        t.update = update;
        t.dead_letter = Some(entry);
        self.apply(&job.spec.id, &t).await?;
        Ok(())
    }
}
