//! Hostile, but legal: a dispatch strategy that spins for `dispatch.spin_ms` (3 ms when unset)
//! on every pick, then picks as least-loaded does. It stays under its deadline, so no call of
//! it fails; it only takes long. The host must run it where it cannot hold up anything else,
//! and its breaker must treat it as failing once its calls keep running past their budget.

use std::time::{Duration, Instant};

use coretex_plugin_sdk::dispatch::{
    Candidates, Context, Decision, DispatchStrategy, Job, TieBreaker, preferred_candidate,
};

#[derive(Default)]
pub struct Slow {
    ties: TieBreaker,
}

impl DispatchStrategy for Slow {
    fn pick(
        &self,
        _: &Job,
        candidates: Candidates<'_>,
        ctx: &dyn Context,
    ) -> Result<Decision, String> {
        let spin_ms: u64 = ctx.setting_as("spin_ms")?.unwrap_or(3);
        let until = Instant::now() + Duration::from_millis(spin_ms);
        let mut spins = 0u64;
        while Instant::now() < until {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        let choice = preferred_candidate(candidates)
            .or_else(|| self.ties.lowest(candidates, |_, c| c.load_score()));
        Ok(Decision::from_choice(choice, candidates))
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(Slow);
