//! Hostile: a dispatch strategy whose `pick` panics, which in a component is a trap. The host
//! must count it against the plugin, recycle the instance and fall back.

use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};

#[derive(Default)]
pub struct Trap;

impl DispatchStrategy for Trap {
    fn pick(&self, _: &Job, _: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
        panic!("this strategy always traps")
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(Trap);
