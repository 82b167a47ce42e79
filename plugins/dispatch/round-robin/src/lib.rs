//! `round-robin`: workers take turns, whatever their load, except that an overloaded worker
//! sits its turn out and the job's `preferred_worker_id` wins when that worker is not
//! overloaded.
//!
//! The turn is an index into the candidate list, which the host builds in the same order from
//! call to call while the set of workers stays the same; when a worker joins or leaves, the
//! rotation simply carries on from the same position.

use std::cell::Cell;

use coretex_plugin_sdk::dispatch::{
    Candidates, Context, Decision, DispatchStrategy, Job, preferred_candidate,
};

#[derive(Default)]
pub struct RoundRobin {
    next: Cell<usize>,
}

impl DispatchStrategy for RoundRobin {
    fn pick(
        &self,
        _: &Job,
        candidates: Candidates<'_>,
        _: &dyn Context,
    ) -> Result<Decision, String> {
        let choice = preferred_candidate(candidates).or_else(|| {
            let n = candidates.len();
            let start = self.next.get() % n.max(1);
            let i = (start..n)
                .chain(0..start)
                .find(|&i| candidates.get(i).is_some_and(|c| !c.is_overloaded()))?;
            self.next.set(i + 1);
            Some(i)
        });
        Ok(Decision::from_choice(choice, candidates))
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(RoundRobin);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::testing::{Fixture, Worker};

    use super::*;

    fn picks(fixture: &Fixture, strategy: &RoundRobin, n: usize) -> Vec<String> {
        (0..n)
            .filter_map(|_| fixture.pick_worker(strategy))
            .collect()
    }

    #[test]
    fn workers_take_turns_whatever_their_load() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("a").active(5))
            .worker(Worker::new("b"))
            .worker(Worker::new("c").cpu(80.0));
        assert_eq!(
            picks(&fixture, &RoundRobin::default(), 4),
            ["a", "b", "c", "a"]
        );
    }

    #[test]
    fn an_overloaded_worker_sits_its_turn_out() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("a"))
            .worker(Worker::new("full").active(10))
            .worker(Worker::new("c"));
        assert_eq!(
            picks(&fixture, &RoundRobin::default(), 4),
            ["a", "c", "a", "c"]
        );
    }

    #[test]
    fn the_preferred_worker_wins_without_taking_a_turn() {
        let strategy = RoundRobin::default();
        let plain = Fixture::new("t")
            .worker(Worker::new("a"))
            .worker(Worker::new("b"));
        let preferring_b = plain.clone().label("preferred_worker_id", "b");
        assert_eq!(plain.pick_worker(&strategy).as_deref(), Some("a"));
        assert_eq!(preferring_b.pick_worker(&strategy).as_deref(), Some("b"));
        assert_eq!(plain.pick_worker(&strategy).as_deref(), Some("b"));
    }

    #[test]
    fn nobody_available_places_nowhere() {
        let strategy = RoundRobin::default();
        assert_eq!(Fixture::new("t").pick_worker(&strategy), None);
        let all_full = Fixture::new("t").worker(Worker::new("a").cpu(99.0));
        assert_eq!(
            all_full.pick(&strategy),
            Ok(Decision::NoWorker(
                "all 1 eligible workers are overloaded".into()
            ))
        );
    }
}
