//! `most-free-slots`: send each job to the worker with the most free slots, and never to a
//! worker that is full.

use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};

#[derive(Default)]
pub struct MostFreeSlots;

impl DispatchStrategy for MostFreeSlots {
    fn pick(
        &self,
        _job: &Job,
        candidates: Candidates<'_>,
        _ctx: &dyn Context,
    ) -> Result<Decision, String> {
        let roomiest = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.free_slots() > 0)
            .max_by_key(|(_, c)| c.free_slots());
        Ok(match roomiest {
            Some((i, _)) => Decision::Worker(i),
            None => Decision::NoWorker("every eligible worker is full".into()),
        })
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(MostFreeSlots);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::testing::{Fixture, Worker};

    use super::*;

    #[test]
    fn the_worker_with_the_most_free_slots_wins() {
        let fixture = Fixture::new("job.render")
            .worker(Worker::new("small").active(1).max(4))
            .worker(Worker::new("big").active(6).max(16))
            .worker(Worker::new("busy").active(7).max(8));
        assert_eq!(fixture.pick_worker(&MostFreeSlots).as_deref(), Some("big"));
    }

    #[test]
    fn full_workers_get_nothing() {
        let fixture = Fixture::new("job.render").worker(Worker::new("full").active(4).max(4));
        assert_eq!(fixture.pick_worker(&MostFreeSlots), None);
    }
}
