//! `power-of-two-choices`: draw two workers at random and send the job to the lighter one
//! (lower `active_jobs + cpu_load/100`).
//!
//! Comparing two random workers instead of scanning for the lightest keeps the load nearly as
//! even as least-loaded while several schedulers, each with a slightly stale view of the
//! workers, stop piling onto the same "lightest" worker between heartbeats. Overloaded workers
//! are never drawn, and the job's `preferred_worker_id` wins when that worker is not
//! overloaded.

use coretex_plugin_sdk::Rng;
use coretex_plugin_sdk::dispatch::{
    Candidates, Context, Decision, DispatchStrategy, Job, preferred_candidate,
};

#[derive(Default)]
pub struct PowerOfTwoChoices {
    rng: Rng,
}

impl PowerOfTwoChoices {
    /// Draws two different workers among those not overloaded (ranks among them, mapped back
    /// to candidate indexes by a second scan: no list of the open ones is built).
    fn draw_two(&self, candidates: Candidates<'_>) -> Option<usize> {
        let open = |i: &usize| candidates.get(*i).is_some_and(|c| !c.is_overloaded());
        let nth_open = |rank: u64| (0..candidates.len()).filter(open).nth(rank as usize);
        let n = (0..candidates.len()).filter(open).count() as u64;
        if n < 2 {
            return nth_open(0);
        }
        let first = self.rng.below(n);
        // Draw the second from the others: shift the draws at or past the first up by one.
        let second = self.rng.below(n - 1);
        let second = if second >= first { second + 1 } else { second };
        let (a, b) = (nth_open(first)?, nth_open(second)?);
        let score = |i| candidates.get(i).map(|c| c.load_score());
        Some(if score(b) < score(a) { b } else { a })
    }
}

impl DispatchStrategy for PowerOfTwoChoices {
    fn pick(
        &self,
        _: &Job,
        candidates: Candidates<'_>,
        _: &dyn Context,
    ) -> Result<Decision, String> {
        let choice = preferred_candidate(candidates).or_else(|| self.draw_two(candidates));
        Ok(Decision::from_choice(choice, candidates))
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(PowerOfTwoChoices);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use coretex_plugin_sdk::testing::{Fixture, Worker};

    use super::*;

    fn seeded(seed: u64) -> PowerOfTwoChoices {
        PowerOfTwoChoices {
            rng: Rng::seeded(seed),
        }
    }

    #[test]
    fn of_two_workers_the_lighter_always_wins() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("heavy").active(6))
            .worker(Worker::new("light").active(1));
        let strategy = seeded(1);
        for _ in 0..20 {
            assert_eq!(fixture.pick_worker(&strategy).as_deref(), Some("light"));
        }
    }

    #[test]
    fn the_heaviest_worker_never_wins() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("a").active(1))
            .worker(Worker::new("b").active(2))
            .worker(Worker::new("heaviest").active(8));
        let strategy = seeded(2);
        for _ in 0..50 {
            assert_ne!(fixture.pick_worker(&strategy).as_deref(), Some("heaviest"));
        }
    }

    #[test]
    fn a_burst_spreads_over_equal_workers() {
        let mut fixture = Fixture::new("t");
        for id in ["a", "b", "c", "d"] {
            fixture = fixture.worker(Worker::new(id).max(100));
        }
        let strategy = seeded(3);
        let mut placed: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..40 {
            *placed.entry(fixture.place(&strategy).unwrap()).or_default() += 1;
        }
        assert_eq!(placed.len(), 4);
        assert!(
            placed.values().all(|&n| (8..=12).contains(&n)),
            "{placed:?}"
        );
    }

    #[test]
    fn overloaded_workers_are_never_drawn() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("full").active(10))
            .worker(Worker::new("hot").cpu(95.0))
            .worker(Worker::new("ok").active(5));
        let strategy = seeded(4);
        for _ in 0..20 {
            assert_eq!(fixture.pick_worker(&strategy).as_deref(), Some("ok"));
        }
        let all_full = Fixture::new("t").worker(Worker::new("full").active(10));
        assert_eq!(all_full.pick_worker(&strategy), None);
    }

    #[test]
    fn the_preferred_worker_wins_unless_overloaded() {
        let fixture = |preferred_active| {
            Fixture::new("t")
                .label("preferred_worker_id", "p")
                .worker(Worker::new("a"))
                .worker(Worker::new("p").active(preferred_active))
        };
        let strategy = seeded(5);
        assert_eq!(fixture(8).pick_worker(&strategy).as_deref(), Some("p"));
        assert_eq!(fixture(9).pick_worker(&strategy).as_deref(), Some("a"));
    }
}
