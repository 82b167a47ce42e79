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

/// What the host allows any retry policy — a plugin, the built-in default, a step's own
/// settings: at most `max_attempts` attempts of a job (the config's `retry.max_attempts` may
/// lower it, never raise it) and at least `min_backoff_ms` between two. A policy that always
/// answers "retry now" once ran one failing job 8,500 times in 15 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBounds {
    pub max_attempts: u32,
    pub min_backoff_ms: u64,
}

impl Default for RetryBounds {
    fn default() -> Self {
        RetryBounds {
            max_attempts: 25,
            min_backoff_ms: 100,
        }
    }
}

impl RetryBounds {
    /// The policy's `decision` after attempt `attempt` failed, within the bounds: a retry past
    /// the ceiling is a dead letter that says so, a back-off under the floor is raised to it.
    /// `configured` is the effective config's `retry.max_attempts`.
    pub fn bound(
        &self,
        decision: RetryDecision,
        attempt: u32,
        configured: Option<u64>,
    ) -> RetryDecision {
        let RetryDecision::Retry { after_ms } = decision else {
            return decision;
        };
        let (ceiling, whose) = match configured {
            Some(c) if c < u64::from(self.max_attempts) => (c as u32, "retry.max_attempts"),
            _ => (self.max_attempts, "the host's ceiling"),
        };
        if attempt >= ceiling {
            return RetryDecision::DeadLetter {
                reason: format!(
                    "attempt {attempt} of at most {ceiling} ({whose}); the retry policy asked for \
                     another"
                ),
            };
        }
        RetryDecision::Retry {
            after_ms: after_ms.max(self.min_backoff_ms),
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
    fn a_retry_past_the_ceiling_is_a_dead_letter_and_a_short_backoff_is_raised() {
        let b = RetryBounds {
            max_attempts: 5,
            min_backoff_ms: 100,
        };
        let now = RetryDecision::Retry { after_ms: 0 };
        assert_eq!(
            b.bound(now.clone(), 1, None),
            RetryDecision::Retry { after_ms: 100 }
        );
        assert_eq!(
            b.bound(RetryDecision::Retry { after_ms: 500 }, 4, None),
            RetryDecision::Retry { after_ms: 500 }
        );
        assert!(matches!(
            b.bound(now.clone(), 5, None),
            RetryDecision::DeadLetter { reason } if reason.contains("at most 5 (the host's ceiling)")
        ));
        // The config may lower the ceiling, not raise it.
        assert!(matches!(
            b.bound(now.clone(), 2, Some(2)),
            RetryDecision::DeadLetter { reason } if reason.contains("retry.max_attempts")
        ));
        assert!(matches!(
            b.bound(now.clone(), 5, Some(1000)),
            RetryDecision::DeadLetter { .. }
        ));
        let dead = RetryDecision::DeadLetter {
            reason: "no".into(),
        };
        assert_eq!(b.bound(dead.clone(), 1, None), dead);
    }

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
