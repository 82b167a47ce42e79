//! `never`: no retries; every failed job goes to the dead-letter queue at once, where it can be
//! inspected and retried by hand.

use coretex_plugin_sdk::retry::{Decision, Failure, RetryPolicy};

#[derive(Default)]
pub struct Never;

impl RetryPolicy for Never {
    fn decide(&self, failure: &Failure) -> Result<Decision, String> {
        Ok(Decision::DeadLetter(failure.final_reason("never")))
    }
}

coretex_plugin_sdk::export_retry_policy!(Never);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::retry::Outcome;

    use super::*;

    #[test]
    fn even_a_first_failure_is_dead_lettered_with_its_error() {
        let failure = Failure {
            outcome: Outcome::Timeout,
            error_code: "TIMEOUT".into(),
            max_attempts: Some(5),
            ..Failure::new("job.echo", 1)
        };
        assert_eq!(
            Never.decide(&failure),
            Ok(Decision::DeadLetter(
                "timed out on attempt 1 (TIMEOUT); retry policy: never".into()
            ))
        );
    }
}
