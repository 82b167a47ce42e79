//! Hostile: a dispatch strategy whose `pick` never returns. The host's epoch deadline must stop
//! it, and dispatch must fall back to the built-in strategy.

use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};

#[derive(Default)]
pub struct LoopForever;

impl DispatchStrategy for LoopForever {
    fn pick(&self, _: &Job, _: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
        let mut spins = 0u64;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(LoopForever);
