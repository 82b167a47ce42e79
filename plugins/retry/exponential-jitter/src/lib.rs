//! `exponential-jitter`: exponential backoff with *equal jitter*, up to `max_attempts` runs in
//! all.
//!
//! After failed attempt `n` the backoff is `initial × multiplierⁿ⁻¹`, capped at `max`; the job
//! then waits half of that plus a random share of the other half, i.e. a uniformly random delay
//! in `[backoff/2, backoff]`. Equal jitter rather than full jitter (`[0, backoff]`): a burst of
//! jobs that failed together still spreads out, but no retry comes back at once to a
//! dependency that has just failed. Defaults: initial 1000 ms, multiplier 2, max 60 000 ms,
//! 3 attempts; the failure's own retry settings override each of them. A cancelled job is not
//! retried.

use std::time::Duration;

use coretex_plugin_sdk::Rng;
use coretex_plugin_sdk::retry::{Decision, Failure, RetryPolicy};

const DEFAULT_INITIAL_MS: u64 = 1_000;
const DEFAULT_MULTIPLIER: f64 = 2.0;
const DEFAULT_MAX_MS: u64 = 60_000;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

#[derive(Default)]
pub struct ExponentialJitter {
    rng: Rng,
}

/// The backoff before jitter after `failure`'s attempt, in milliseconds.
fn backoff_ms(failure: &Failure) -> Result<u64, String> {
    let multiplier = failure.multiplier.unwrap_or(DEFAULT_MULTIPLIER);
    if !(multiplier.is_finite() && multiplier >= 1.0) {
        return Err(format!(
            "retry multiplier must be at least 1, not {multiplier}"
        ));
    }
    let initial = failure.initial_backoff_ms.unwrap_or(DEFAULT_INITIAL_MS) as f64;
    let max = failure.max_backoff_ms.unwrap_or(DEFAULT_MAX_MS);
    let exponent = i32::try_from(failure.attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    // Float arithmetic saturates to infinity instead of overflowing; `min` then caps it.
    Ok((initial * multiplier.powi(exponent)).min(max as f64) as u64)
}

impl RetryPolicy for ExponentialJitter {
    fn decide(&self, failure: &Failure) -> Result<Decision, String> {
        if let Some(reason) = failure.no_retry_reason(DEFAULT_MAX_ATTEMPTS) {
            return Ok(Decision::DeadLetter(reason));
        }
        let backoff = backoff_ms(failure)?;
        let half = backoff / 2;
        let delay = (backoff - half) + self.rng.below(half + 1);
        Ok(Decision::Retry(Duration::from_millis(delay)))
    }
}

coretex_plugin_sdk::export_retry_policy!(ExponentialJitter);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::retry::Outcome;

    use super::*;

    fn failure(attempt: u32) -> Failure {
        Failure::new("job.echo", attempt)
    }

    fn delay_ms(policy: &ExponentialJitter, f: &Failure) -> u64 {
        match policy.decide(f) {
            Ok(Decision::Retry(after)) => after.as_millis() as u64,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_by_default() {
        assert_eq!(backoff_ms(&failure(1)), Ok(1_000));
        assert_eq!(backoff_ms(&failure(2)), Ok(2_000));
        assert_eq!(backoff_ms(&failure(5)), Ok(16_000));
    }

    #[test]
    fn backoff_is_capped_at_the_maximum() {
        assert_eq!(backoff_ms(&failure(7)), Ok(60_000));
        assert_eq!(backoff_ms(&failure(u32::MAX)), Ok(60_000));
    }

    #[test]
    fn settings_from_the_failure_override_the_defaults() {
        let f = Failure {
            initial_backoff_ms: Some(100),
            multiplier: Some(3.0),
            max_backoff_ms: Some(500),
            ..failure(3)
        };
        assert_eq!(backoff_ms(&f), Ok(500));
        assert_eq!(
            backoff_ms(&Failure {
                max_backoff_ms: None,
                ..f
            }),
            Ok(900)
        );
    }

    #[test]
    fn the_delay_is_between_half_the_backoff_and_the_backoff() {
        let policy = ExponentialJitter {
            rng: Rng::seeded(9),
        };
        let delays: Vec<u64> = (0..200).map(|_| delay_ms(&policy, &failure(2))).collect();
        assert!(
            delays.iter().all(|d| (1_000..=2_000).contains(d)),
            "{delays:?}"
        );
        let spread = delays.iter().max().unwrap() - delays.iter().min().unwrap();
        assert!(
            spread > 500,
            "jitter should spread retries, spread {spread} ms"
        );
    }

    #[test]
    fn the_third_attempt_is_the_last_by_default() {
        let policy = ExponentialJitter::default();
        delay_ms(&policy, &failure(2));
        assert_eq!(
            policy.decide(&failure(3)),
            Ok(Decision::DeadLetter("failed on attempt 3 of 3".into()))
        );
        let more = Failure {
            max_attempts: Some(4),
            ..failure(3)
        };
        delay_ms(&policy, &more);
    }

    #[test]
    fn a_cancelled_job_is_not_retried() {
        let f = Failure {
            outcome: Outcome::Cancelled,
            ..failure(1)
        };
        assert!(matches!(
            ExponentialJitter::default().decide(&f),
            Ok(Decision::DeadLetter(_))
        ));
    }

    #[test]
    fn a_multiplier_below_one_is_an_error() {
        let f = Failure {
            multiplier: Some(0.5),
            ..failure(1)
        };
        assert!(ExponentialJitter::default().decide(&f).is_err());
    }
}
