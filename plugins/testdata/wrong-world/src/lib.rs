//! Hostile: a retry policy, for a host test that configures it as a dispatch strategy
//! (`dispatch.strategy = "wrong-world"`). The host reads a plugin's kind from the world it
//! exports, so it must refuse it for dispatch rather than call a `pick` that is not there.

use coretex_plugin_sdk::retry::{Decision, Failure, RetryPolicy};

#[derive(Default)]
pub struct WrongWorld;

impl RetryPolicy for WrongWorld {
    fn decide(&self, failure: &Failure) -> Result<Decision, String> {
        Ok(Decision::DeadLetter(failure.final_reason("wrong-world")))
    }
}

coretex_plugin_sdk::export_retry_policy!(WrongWorld);
