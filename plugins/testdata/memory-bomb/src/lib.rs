//! Hostile: a dispatch strategy whose `pick` allocates (and touches) memory until something
//! stops it. The host's per-instance memory cap must turn that into a trap, not an
//! out-of-memory host.

use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};

#[derive(Default)]
pub struct MemoryBomb;

impl DispatchStrategy for MemoryBomb {
    fn pick(&self, _: &Job, _: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xAB; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(MemoryBomb);
