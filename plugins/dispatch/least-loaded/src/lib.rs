//! `least-loaded`, the default dispatch strategy (SPEC §5).
//!
//! Overloaded workers (90 % of their slots busy, or their CPU at 90 % or more) are skipped. The
//! job's `preferred_worker_id` wins when that worker is not overloaded; otherwise the lowest
//! `active_jobs + cpu_load/100` wins. Tied workers take turns, so equal workers share a burst
//! instead of one taking it all. This is the host's built-in fallback strategy, as a plugin.

use coretex_plugin_sdk::dispatch::{
    Candidates, Context, Decision, DispatchStrategy, Job, TieBreaker, preferred_candidate,
};

#[derive(Default)]
pub struct LeastLoaded {
    ties: TieBreaker,
}

impl DispatchStrategy for LeastLoaded {
    fn pick(
        &self,
        _: &Job,
        candidates: Candidates<'_>,
        _: &dyn Context,
    ) -> Result<Decision, String> {
        let choice = preferred_candidate(candidates)
            .or_else(|| self.ties.lowest(candidates, |_, c| c.load_score()));
        Ok(Decision::from_choice(choice, candidates))
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(LeastLoaded);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use coretex_plugin_sdk::testing::{Fixture, Worker};

    use super::*;

    #[test]
    fn lowest_score_wins() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("a").active(3))
            .worker(Worker::new("b").active(1).cpu(50.0))
            .worker(Worker::new("c").active(2));
        assert_eq!(
            fixture.pick_worker(&LeastLoaded::default()).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn cpu_load_breaks_an_equal_job_count() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("busy-cpu").active(1).cpu(60.0))
            .worker(Worker::new("idle-cpu").active(1).cpu(10.0));
        assert_eq!(
            fixture.pick_worker(&LeastLoaded::default()).as_deref(),
            Some("idle-cpu")
        );
    }

    #[test]
    fn overloaded_workers_are_skipped() {
        let strategy = LeastLoaded::default();
        let by_slots = Fixture::new("t")
            .worker(Worker::new("a").active(9).max(10))
            .worker(Worker::new("b").active(5).max(10));
        assert_eq!(by_slots.pick_worker(&strategy).as_deref(), Some("b"));
        let by_cpu = Fixture::new("t")
            .worker(Worker::new("a").cpu(95.0))
            .worker(Worker::new("b").active(5));
        assert_eq!(by_cpu.pick_worker(&strategy).as_deref(), Some("b"));
    }

    #[test]
    fn all_overloaded_places_nowhere_with_a_reason() {
        let fixture = Fixture::new("t")
            .worker(Worker::new("a").active(1).max(1))
            .worker(Worker::new("b").cpu(90.0));
        assert_eq!(
            fixture.pick(&LeastLoaded::default()),
            Ok(Decision::NoWorker(
                "all 2 eligible workers are overloaded".into()
            ))
        );
    }

    #[test]
    fn preferred_worker_wins_unless_overloaded() {
        let strategy = LeastLoaded::default();
        let fixture = |preferred_active| {
            Fixture::new("t")
                .label("preferred_worker_id", "p")
                .worker(Worker::new("a"))
                .worker(Worker::new("p").active(preferred_active))
        };
        assert_eq!(fixture(5).pick_worker(&strategy).as_deref(), Some("p"));
        assert_eq!(fixture(9).pick_worker(&strategy).as_deref(), Some("a"));
    }

    #[test]
    fn ties_spread_across_workers() {
        let strategy = LeastLoaded::default();
        let fixture = Fixture::new("t")
            .worker(Worker::new("a"))
            .worker(Worker::new("b"))
            .worker(Worker::new("c"));
        let picked: BTreeSet<_> = (0..3)
            .filter_map(|_| fixture.pick_worker(&strategy))
            .collect();
        assert_eq!(picked.len(), 3);
    }

    #[test]
    fn a_burst_fills_workers_evenly() {
        let strategy = LeastLoaded::default();
        let mut fixture = Fixture::new("t")
            .worker(Worker::new("a"))
            .worker(Worker::new("b").active(2));
        for _ in 0..6 {
            fixture.place(&strategy);
        }
        let active: Vec<u32> = fixture.workers().iter().map(|w| w.active_jobs).collect();
        assert_eq!(active, [4, 4]);
    }

    #[test]
    fn no_candidates_is_no_worker_not_an_error() {
        let fixture = Fixture::new("t");
        assert!(matches!(
            fixture.pick(&LeastLoaded::default()),
            Ok(Decision::NoWorker(_))
        ));
    }
}
