//! The dead-letter queue (SPEC §7). Entries are written by the scheduler in the same atomic step
//! that records the failure; here they are listed, read, deleted and retried.
//!
//! A retry replays the whole original request as a new job `<old>~retry-<n>` (`retry_of` set,
//! labels, env, payload, priority, budget and trace kept), and the entry is removed only after
//! the new job is stored, so a crash in between leaves the entry, never nothing.

use std::sync::Arc;

use serde::Serialize;

use crate::job::JobSpec;
use crate::protocol::Clearance;
use crate::store::{
    CreateOutcome, DeadLetters, DlqEntry, DlqFilter, JobStore, NewJob, Page, PageRequest,
};
use crate::time::now_ms;
use crate::{Scheduler, SchedulerError};

/// Retry ids tried before giving up (`~retry-1` … `~retry-1000`).
const MAX_RETRY_SUFFIX: u32 = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct RetryOutcome {
    pub job_id: String,
    pub new_job_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkRetry {
    pub retried: Vec<RetryOutcome>,
    pub failed: Vec<BulkFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkFailure {
    pub job_id: String,
    pub error: String,
}

pub struct Dlq {
    /// The entries the scheduler wrote.
    dead: Arc<dyn DeadLetters>,
    /// Where a replay is stored, before the scheduler announces it.
    jobs: Arc<dyn JobStore>,
    scheduler: Arc<Scheduler>,
}

impl Dlq {
    pub fn new(
        dead: Arc<dyn DeadLetters>,
        jobs: Arc<dyn JobStore>,
        scheduler: Arc<Scheduler>,
    ) -> Self {
        Dlq {
            dead,
            jobs,
            scheduler,
        }
    }

    pub async fn list(
        &self,
        filter: &DlqFilter,
        page: &PageRequest,
    ) -> Result<Page<DlqEntry>, SchedulerError> {
        Ok(self.dead.dlq_list(filter, page).await?)
    }

    pub async fn get(&self, job_id: &str) -> Result<Option<DlqEntry>, SchedulerError> {
        Ok(self.dead.dlq_get(job_id).await?)
    }

    pub async fn delete(&self, job_id: &str) -> Result<bool, SchedulerError> {
        Ok(self.dead.dlq_delete(job_id).await?)
    }

    /// Replays one entry as a new job.
    pub async fn retry(&self, job_id: &str) -> Result<RetryOutcome, SchedulerError> {
        let entry = self
            .get(job_id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(job_id.to_string()))?;
        for n in 1..=MAX_RETRY_SUFFIX {
            let spec = replay(&entry.request, n);
            let new = NewJob {
                spec: spec.clone(),
                idempotency_key: None,
                note: Some(format!("retry of dead letter {job_id}")),
            };
            if self.jobs.create_job(&new).await? == CreateOutcome::Created {
                let new_job_id = spec.id.clone();
                self.scheduler.announce(spec, Clearance::None).await;
                self.dead.dlq_delete(job_id).await?;
                return Ok(RetryOutcome {
                    job_id: job_id.to_string(),
                    new_job_id,
                });
            }
        }
        Err(SchedulerError::Conflict(format!(
            "job `{job_id}` has been retried {MAX_RETRY_SUFFIX} times already"
        )))
    }

    /// Retries every entry matching the filter, at most `max` of them.
    pub async fn retry_matching(
        &self,
        filter: &DlqFilter,
        max: usize,
    ) -> Result<BulkRetry, SchedulerError> {
        let mut out = BulkRetry {
            retried: Vec::new(),
            failed: Vec::new(),
        };
        // Retried entries leave the index, so each page is read from the top again; failures
        // stay, so the cursor moves past them. So do entries dead-lettered after the bulk retry
        // began: a replay that fails at once lands at the top of the index while this loop still
        // runs, and must not be replayed again (and again) by the same request.
        let started = now_ms();
        let mut replays = std::collections::HashSet::new();
        let mut cursor = None;
        while out.retried.len() + out.failed.len() < max {
            let page = self
                .list(
                    filter,
                    &PageRequest {
                        limit: 100.min(max - out.retried.len() - out.failed.len()),
                        cursor: cursor.clone(),
                    },
                )
                .await?;
            if page.items.is_empty() {
                break;
            }
            let mut progressed = false;
            for entry in page.items {
                if entry.created_at > started || replays.contains(&entry.job_id) {
                    cursor = Some(crate::store::Cursor {
                        score: entry.created_at,
                        id: entry.job_id.clone(),
                    });
                    continue;
                }
                match self.retry(&entry.job_id).await {
                    Ok(r) => {
                        progressed = true;
                        replays.insert(r.new_job_id.clone());
                        out.retried.push(r);
                    }
                    Err(e) => {
                        cursor = Some(crate::store::Cursor {
                            score: entry.created_at,
                            id: entry.job_id.clone(),
                        });
                        out.failed.push(BulkFailure {
                            job_id: entry.job_id,
                            error: e.to_string(),
                        });
                    }
                }
            }
            if !progressed && page.next_cursor.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

/// The spec of the `n`-th replay of a dead job.
fn replay(old: &JobSpec, n: u32) -> JobSpec {
    let now = now_ms();
    JobSpec {
        id: crate::ids::derive(&old.id, format_args!("retry-{n}")),
        retry_of: Some(old.id.clone()),
        attempt: 1,
        not_before: None,
        created_at: now,
        deadline: old.deadline_ms.map(|d| now + d as i64),
        ..old.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobRequest;

    #[test]
    fn a_replay_keeps_the_request_and_names_its_origin() {
        let mut req = JobRequest {
            id: Some("j".into()),
            topic: "t".into(),
            deadline_ms: Some(1000),
            ..Default::default()
        };
        req.labels.insert("k".into(), "v".into());
        let old = JobSpec::accept(req, 0);
        let r = replay(&old, 2);
        assert_eq!(r.id, "default~j~retry-2");
        assert_eq!(r.retry_of.as_deref(), Some("default~j"));
        assert_eq!(r.labels, old.labels);
        assert_eq!(r.trace_id, old.trace_id);
        assert_eq!(r.deadline, Some(r.created_at + 1000));
    }
}
