//! The retry decision (SPEC §5 step 5): a failed or timed-out job either runs again after a
//! delay or goes to the dead-letter queue. The built-in default here dead-letters at once;
//! policy plugins stand behind the same trait.
//!
//! A retry is a new job, `<root>~attempt-<n>` (an id only the host derives: see [`crate::ids`]), with the same spec, `attempt = n`, `retry_of` the
//! job before it and `not_before` the back-off. Terminal states stay terminal (SPEC §3), the
//! history of each attempt stays readable, and the trace id ties the attempts together.

use crate::ids;
use crate::job::{Job, JobError, JobSpec, JobState};
use crate::time::Millis;

/// What a retry policy is told about a failure.
#[derive(Debug)]
pub struct Failure<'a> {
    pub job: &'a Job,
    /// FAILED, TIMEOUT or CANCELLED.
    pub outcome: JobState,
    pub error: Option<&'a JobError>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    Retry { after_ms: u64 },
    DeadLetter { reason: String },
}

pub trait RetryPolicy: Send + Sync {
    fn name(&self) -> &str;
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision;
}

/// No retries: what a workflow step's job gets from the scheduler (the engine retries steps by
/// their own settings) unless its config names a policy.
pub struct DeadLetterAtOnce;

impl RetryPolicy for DeadLetterAtOnce {
    fn name(&self) -> &str {
        "never"
    }

    fn decide(&self, f: &Failure<'_>) -> RetryDecision {
        RetryDecision::DeadLetter {
            reason: format!(
                "{} on attempt {}; retry policy: never",
                f.outcome, f.job.spec.attempt
            ),
        }
    }
}

/// The spec of the next attempt of a job.
pub fn next_attempt(spec: &JobSpec, now: Millis, after_ms: u64) -> JobSpec {
    let root = root_id(&spec.id);
    let attempt = spec.attempt + 1;
    JobSpec {
        id: ids::derive(root, format_args!("{ATTEMPT}{attempt}")),
        attempt,
        retry_of: Some(spec.id.clone()),
        not_before: Some(now + after_ms as i64),
        created_at: now,
        ..spec.clone()
    }
}

/// What comes before an attempt's number in its id (after the separator).
const ATTEMPT: &str = "attempt-";

/// The id of the first attempt.
fn root_id(id: &str) -> &str {
    match id
        .rsplit_once(ids::SEP)
        .and_then(|(root, last)| Some((root, last.strip_prefix(ATTEMPT)?)))
    {
        Some((root, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => root,
        _ => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobRequest;

    #[test]
    fn attempts_count_from_the_root_id() {
        let spec = JobSpec::accept(
            JobRequest {
                id: Some("j1".into()),
                topic: "t".into(),
                ..Default::default()
            },
            0,
        );
        let a2 = next_attempt(&spec, 100, 50);
        assert_eq!(a2.id, "default~j1~attempt-2");
        assert_eq!(a2.not_before, Some(150));
        let a3 = next_attempt(&a2, 200, 0);
        assert_eq!(a3.id, "default~j1~attempt-3");
        assert_eq!(a3.retry_of.as_deref(), Some("default~j1~attempt-2"));
        assert_eq!(a3.trace_id, spec.trace_id);
    }
}
