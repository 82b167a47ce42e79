//! `fixed`: retry after the same delay every time — `initial_backoff_ms` (1 s unless the
//! failure's settings say otherwise, capped by `max_backoff_ms` when that is set) — up to
//! `max_attempts` runs in all (3 by default). A cancelled job is not retried.

use std::time::Duration;

use coretex_plugin_sdk::retry::{Decision, Failure, RetryPolicy};

const DEFAULT_DELAY_MS: u64 = 1_000;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

#[derive(Default)]
pub struct Fixed;

impl RetryPolicy for Fixed {
    fn decide(&self, failure: &Failure) -> Result<Decision, String> {
        if let Some(reason) = failure.no_retry_reason(DEFAULT_MAX_ATTEMPTS) {
            return Ok(Decision::DeadLetter(reason));
        }
        let delay = failure.initial_backoff_ms.unwrap_or(DEFAULT_DELAY_MS);
        let delay = failure.max_backoff_ms.map_or(delay, |max| delay.min(max));
        Ok(Decision::Retry(Duration::from_millis(delay)))
    }
}

coretex_plugin_sdk::export_retry_policy!(Fixed);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::retry::Outcome;

    use super::*;

    fn failure(attempt: u32) -> Failure {
        Failure::new("job.echo", attempt)
    }

    #[test]
    fn every_retry_waits_the_same_second_by_default() {
        for attempt in 1..=2 {
            assert_eq!(
                Fixed.decide(&failure(attempt)),
                Ok(Decision::Retry(Duration::from_secs(1)))
            );
        }
    }

    #[test]
    fn the_third_failure_is_dead_lettered_by_default() {
        assert!(matches!(
            Fixed.decide(&failure(3)),
            Ok(Decision::DeadLetter(_))
        ));
    }

    #[test]
    fn settings_from_the_failure_override_the_defaults() {
        let f = Failure {
            initial_backoff_ms: Some(250),
            max_attempts: Some(10),
            ..failure(7)
        };
        assert_eq!(
            Fixed.decide(&f),
            Ok(Decision::Retry(Duration::from_millis(250)))
        );
        let capped = Failure {
            initial_backoff_ms: Some(5_000),
            max_backoff_ms: Some(2_000),
            ..failure(1)
        };
        assert_eq!(
            Fixed.decide(&capped),
            Ok(Decision::Retry(Duration::from_secs(2)))
        );
    }

    #[test]
    fn a_cancelled_job_is_not_retried() {
        let f = Failure {
            outcome: Outcome::Cancelled,
            ..failure(1)
        };
        assert!(matches!(Fixed.decide(&f), Ok(Decision::DeadLetter(_))));
    }
}
