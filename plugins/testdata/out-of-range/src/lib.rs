//! Hostile: a dispatch strategy that answers a candidate index that does not exist. The host
//! must treat it as a failure of the plugin, not index out of bounds.

use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};

#[derive(Default)]
pub struct OutOfRange;

impl DispatchStrategy for OutOfRange {
    fn pick(&self, _: &Job, _: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
        Ok(Decision::Worker(9999))
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(OutOfRange);
