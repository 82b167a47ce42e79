//! `label-affinity`: prefer the workers whose labels match the job's.
//!
//! Each of the job's labels is worth a weight — 1 unless the `dispatch.label_weights` setting
//! (a JSON object, label key → number) says otherwise; 0 switches a key off. A worker's
//! affinity is the sum of the weights of the job labels it carries with the same value. The
//! highest affinity wins; among equals the least-loaded one does (lowest `active_jobs +
//! cpu_load/100`), and ties spread as in least-loaded. Overloaded workers are skipped, and the
//! job's `preferred_worker_id` wins when that worker is not overloaded.
//!
//! The host's own routing labels (`preferred_worker_id`, `preferred_pool`, `placement.*`) are
//! not weighed: the host has already applied them to every candidate.

use std::collections::BTreeMap;

use coretex_plugin_sdk::dispatch::{
    Candidates, Context, Decision, DispatchStrategy, Job, TieBreaker, preferred_candidate,
};

#[derive(Default)]
pub struct LabelAffinity {
    ties: TieBreaker,
}

fn is_routing_label(key: &str) -> bool {
    key == "preferred_worker_id" || key == "preferred_pool" || key.starts_with("placement.")
}

impl DispatchStrategy for LabelAffinity {
    fn pick(
        &self,
        _: &Job,
        candidates: Candidates<'_>,
        ctx: &dyn Context,
    ) -> Result<Decision, String> {
        if let Some(i) = preferred_candidate(candidates) {
            return Ok(Decision::Worker(i));
        }
        let weights: BTreeMap<String, f64> = ctx.setting_as("label_weights")?.unwrap_or_default();
        let weighed: Vec<(String, String, f64)> = ctx
            .job_labels()
            .into_iter()
            .filter(|(key, _)| !is_routing_label(key))
            .map(|(key, value)| {
                let weight = weights.get(&key).copied().unwrap_or(1.0);
                (key, value, weight)
            })
            .filter(|&(_, _, weight)| weight != 0.0)
            .collect();
        let affinity = |i: usize| -> f64 {
            weighed
                .iter()
                .filter(|(key, value, _)| ctx.candidate_label(i, key).as_ref() == Some(value))
                .map(|&(_, _, weight)| weight)
                .sum()
        };
        let choice = self
            .ties
            .lowest(candidates, |i, c| (-affinity(i), c.load_score()));
        Ok(Decision::from_choice(choice, candidates))
    }
}

coretex_plugin_sdk::export_dispatch_strategy!(LabelAffinity);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::serde_json::json;
    use coretex_plugin_sdk::testing::{Fixture, Worker};

    use super::*;

    #[test]
    fn a_worker_matching_more_labels_wins_over_a_lighter_one() {
        let fixture = Fixture::new("t")
            .label("region", "eu")
            .label("gpu", "a100")
            .worker(Worker::new("idle"))
            .worker(Worker::new("eu").active(3).label("region", "eu"))
            .worker(
                Worker::new("eu-gpu")
                    .active(6)
                    .label("region", "eu")
                    .label("gpu", "a100"),
            );
        assert_eq!(
            fixture.pick_worker(&LabelAffinity::default()).as_deref(),
            Some("eu-gpu")
        );
    }

    #[test]
    fn a_label_with_a_different_value_does_not_match() {
        let fixture = Fixture::new("t")
            .label("region", "eu")
            .worker(Worker::new("us").label("region", "us"))
            .worker(Worker::new("eu").active(4).label("region", "eu"));
        assert_eq!(
            fixture.pick_worker(&LabelAffinity::default()).as_deref(),
            Some("eu")
        );
    }

    #[test]
    fn weights_from_the_setting_decide_between_labels() {
        let fixture = |weights| {
            Fixture::new("t")
                .label("region", "eu")
                .label("gpu", "a100")
                .setting("label_weights", weights)
                .worker(Worker::new("eu").label("region", "eu"))
                .worker(Worker::new("gpu").label("gpu", "a100"))
        };
        let strategy = LabelAffinity::default();
        let gpu_first = fixture(json!({"gpu": 5, "region": 2}));
        assert_eq!(gpu_first.pick_worker(&strategy).as_deref(), Some("gpu"));
        let region_first = fixture(json!({"gpu": 0.5}));
        assert_eq!(region_first.pick_worker(&strategy).as_deref(), Some("eu"));
    }

    #[test]
    fn a_zero_weight_switches_a_label_off() {
        let fixture = Fixture::new("t")
            .label("team", "docs")
            .setting("label_weights", json!({"team": 0}))
            .worker(Worker::new("docs").active(2).label("team", "docs"))
            .worker(Worker::new("idle"));
        assert_eq!(
            fixture.pick_worker(&LabelAffinity::default()).as_deref(),
            Some("idle")
        );
    }

    #[test]
    fn without_a_match_the_least_loaded_wins() {
        let fixture = Fixture::new("t")
            .label("region", "eu")
            .worker(Worker::new("busy").active(3))
            .worker(Worker::new("light").active(1));
        assert_eq!(
            fixture.pick_worker(&LabelAffinity::default()).as_deref(),
            Some("light")
        );
    }

    #[test]
    fn overloaded_matching_workers_are_skipped() {
        let fixture = Fixture::new("t")
            .label("region", "eu")
            .worker(Worker::new("eu-full").active(10).label("region", "eu"))
            .worker(Worker::new("other"));
        assert_eq!(
            fixture.pick_worker(&LabelAffinity::default()).as_deref(),
            Some("other")
        );
    }

    #[test]
    fn the_preferred_worker_wins_over_affinity() {
        let fixture = Fixture::new("t")
            .label("region", "eu")
            .label("preferred_worker_id", "p")
            .worker(Worker::new("eu").label("region", "eu"))
            .worker(Worker::new("p"));
        assert_eq!(
            fixture.pick_worker(&LabelAffinity::default()).as_deref(),
            Some("p")
        );
    }

    #[test]
    fn a_malformed_weight_setting_is_an_error() {
        let fixture = Fixture::new("t")
            .setting("label_weights", json!(["gpu"]))
            .worker(Worker::new("a"));
        let error = fixture.pick(&LabelAffinity::default()).unwrap_err();
        assert!(error.contains("dispatch.label_weights"), "{error}");
    }
}
