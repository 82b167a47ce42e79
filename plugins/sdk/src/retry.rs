//! Retry policies: what happens to a failed job.

use std::time::Duration;

/// How a job ended badly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Outcome {
    #[default]
    Failed,
    Timeout,
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Failed => "failed",
            Outcome::Timeout => "timed out",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The failed job, and the retry settings that apply to it (from the workflow step's `retry`
/// or the effective config's `retry` object). A setting left `None` is the policy's to choose.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Failure {
    pub topic: String,
    /// The attempt that failed: 1 for the first run.
    pub attempt: u32,
    pub outcome: Outcome,
    pub error_code: String,
    pub error_message: String,
    /// Milliseconds since the first attempt was accepted.
    pub elapsed_ms: u64,
    /// Runs in all, the first one included.
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub multiplier: Option<f64>,
}

impl Failure {
    /// A failed run of a job on `topic`, without an error or retry settings: a start for tests,
    /// `Failure { max_attempts: Some(5), ..Failure::new("job.echo", 2) }`.
    pub fn new(topic: impl Into<String>, attempt: u32) -> Self {
        Failure {
            topic: topic.into(),
            attempt,
            ..Failure::default()
        }
    }

    /// Why this failure must not be retried under the rules every built-in policy shares, if
    /// it must not: a cancelled job stays cancelled (someone meant it), and a job that has used
    /// its `max_attempts` (or `default_max_attempts` when the failure sets none) is done.
    pub fn no_retry_reason(&self, default_max_attempts: u32) -> Option<String> {
        let max_attempts = self.max_attempts.unwrap_or(default_max_attempts);
        if self.outcome == Outcome::Cancelled {
            Some(format!(
                "cancelled on attempt {}; not retried",
                self.attempt
            ))
        } else if self.attempt >= max_attempts {
            Some(format!(
                "{} on attempt {} of {max_attempts}{}",
                self.outcome.as_str(),
                self.attempt,
                self.error_suffix()
            ))
        } else {
            None
        }
    }

    /// A dead-letter reason for a policy that never retries.
    pub fn final_reason(&self, policy: &str) -> String {
        format!(
            "{} on attempt {}{}; retry policy: {policy}",
            self.outcome.as_str(),
            self.attempt,
            self.error_suffix()
        )
    }

    fn error_suffix(&self) -> String {
        match (self.error_code.is_empty(), self.error_message.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!(" ({})", self.error_code),
            (true, false) => format!(" ({})", self.error_message),
            (false, false) => format!(" ({}: {})", self.error_code, self.error_message),
        }
    }
}

/// The policy's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the job again after this long (sent to the host in whole milliseconds).
    Retry(Duration),
    /// Give up: the job goes to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// Decides what happens to a failed job. An `Err` or a panic counts as a failure of the
/// plugin, and the host falls back to its built-in default.
pub trait RetryPolicy {
    fn decide(&self, failure: &Failure) -> Result<Decision, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(attempt: u32, outcome: Outcome) -> Failure {
        Failure {
            outcome,
            ..Failure::new("job.echo", attempt)
        }
    }

    #[test]
    fn attempts_below_the_maximum_may_be_retried() {
        assert_eq!(failure(2, Outcome::Failed).no_retry_reason(3), None);
        assert_eq!(failure(2, Outcome::Timeout).no_retry_reason(3), None);
    }

    #[test]
    fn the_last_attempt_is_not_retried() {
        assert_eq!(
            failure(3, Outcome::Timeout).no_retry_reason(3).as_deref(),
            Some("timed out on attempt 3 of 3")
        );
    }

    #[test]
    fn max_attempts_from_the_failure_overrides_the_default() {
        let f = Failure {
            max_attempts: Some(5),
            ..failure(3, Outcome::Failed)
        };
        assert_eq!(f.no_retry_reason(3), None);
    }

    #[test]
    fn a_cancelled_job_is_never_retried() {
        assert!(failure(1, Outcome::Cancelled).no_retry_reason(3).is_some());
    }

    #[test]
    fn reasons_carry_the_error() {
        let f = Failure {
            error_code: "E_IO".into(),
            error_message: "disk full".into(),
            ..failure(1, Outcome::Failed)
        };
        assert_eq!(
            f.final_reason("never"),
            "failed on attempt 1 (E_IO: disk full); retry policy: never"
        );
    }
}
