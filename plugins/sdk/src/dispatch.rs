//! Dispatch strategies: which worker gets a job.
//!
//! The host filters the live workers down to the eligible ones (alive, in the job's pool or
//! serving its topic, carrying its `placement.*` labels) and hands them to
//! [`DispatchStrategy::pick`] as [`Candidate`]s: numbers only, so that ranking a thousand workers
//! costs no strings. A strategy that needs a string (the job's topic, a worker's label, a
//! setting) asks the [`Context`] for it, and only that string crosses the sandbox boundary.

use std::cell::Cell;

use serde::de::DeserializeOwned;

/// How urgent a job is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    Interactive,
    #[default]
    Batch,
    Critical,
}

/// The job being placed, as numbers; its strings are in the [`Context`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub priority: Priority,
    /// 1 for the first run, 2 for the first retry, …
    pub attempt: u32,
    /// How many labels the job carries.
    pub label_count: u32,
}

/// One eligible worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Jobs the worker runs now (the host's estimate between heartbeats).
    pub active_jobs: u32,
    /// How many jobs the worker runs at once at most (≥ 1).
    pub max_parallel: u32,
    /// The worker host's CPU load in percent (0–100).
    pub cpu_load: f32,
    /// The job named this worker in its `preferred_worker_id` label.
    pub preferred: bool,
}

impl Candidate {
    /// Overloaded as SPEC §5 has it: 90 % of its slots busy, or its CPU at 90 % or more.
    pub fn is_overloaded(&self) -> bool {
        let max = self.max_parallel.max(1) as f32;
        self.active_jobs as f32 / max >= 0.9 || self.cpu_load >= 90.0
    }

    /// Slots the worker has free now.
    pub fn free_slots(&self) -> u32 {
        self.max_parallel.saturating_sub(self.active_jobs)
    }

    /// The least-loaded score: running jobs plus the CPU load as a fraction; lower is lighter.
    pub fn load_score(&self) -> f32 {
        self.active_jobs as f32 + self.cpu_load / 100.0
    }
}

/// A strategy's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the job to the candidate at this index.
    Worker(usize),
    /// Send it nowhere now: the job waits for capacity and the reason is recorded on it.
    NoWorker(String),
}

impl Decision {
    /// `Worker(i)` for a chosen candidate; without one, `NoWorker` with the reason a strategy
    /// that skips overloaded workers gives: there were no candidates, or all were overloaded.
    pub fn from_choice(choice: Option<usize>, candidates: &[Candidate]) -> Decision {
        match (choice, candidates.len()) {
            (Some(i), _) => Decision::Worker(i),
            (None, 0) => Decision::NoWorker("no eligible worker".into()),
            (None, n) => Decision::NoWorker(format!("all {n} eligible workers are overloaded")),
        }
    }
}

/// What a strategy may ask the host about the call in progress. Each answer is fetched when
/// asked for, so ask only for what the decision needs.
pub trait Context {
    /// The job's topic.
    fn topic(&self) -> String;
    /// The job's tenant.
    fn tenant(&self) -> String;
    /// The value of one of the job's labels.
    fn job_label(&self, key: &str) -> Option<String>;
    /// All of the job's labels, as (key, value) pairs in no particular order.
    fn job_labels(&self) -> Vec<(String, String)>;
    /// The value of a label of the candidate at `index` (an index into `candidates`).
    fn candidate_label(&self, index: usize, key: &str) -> Option<String>;
    /// The id of the candidate at `index`.
    fn candidate_id(&self, index: usize) -> Option<String>;
    /// A setting from the effective config's `dispatch` object, as JSON text.
    fn setting(&self, key: &str) -> Option<String>;
}

impl dyn Context + '_ {
    /// A setting from the effective config's `dispatch` object, parsed: `Ok(None)` when it is
    /// absent, an error naming the key when it does not parse as `T`.
    pub fn setting_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        self.setting(key)
            .map(|json| {
                serde_json::from_str(&json).map_err(|e| format!("setting dispatch.{key}: {e}"))
            })
            .transpose()
    }
}

/// The index of the candidate the job names in its `preferred_worker_id` label, when that
/// worker is not overloaded: the built-in strategies all let such a worker win.
pub fn preferred_candidate(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .position(|c| c.preferred && !c.is_overloaded())
}

/// Picks the cheapest candidate and spreads ties: equally cheap candidates take turns, so a
/// burst of jobs is shared instead of landing on whichever comes first in the list. Keep one
/// in the strategy's instance: the turn is counted across calls.
#[derive(Debug, Default)]
pub struct TieBreaker {
    turn: Cell<usize>,
}

impl TieBreaker {
    /// The index of the candidate with the lowest `cost`, overloaded candidates skipped (and
    /// `cost` called once for each of the others); among equal costs, the one whose turn it
    /// is. `None` when every candidate is overloaded (or there are none).
    pub fn lowest<K: PartialOrd>(
        &self,
        candidates: &[Candidate],
        mut cost: impl FnMut(usize, &Candidate) -> K,
    ) -> Option<usize> {
        let mut lowest: Option<K> = None;
        let mut tied: Vec<usize> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            if c.is_overloaded() {
                continue;
            }
            let k = cost(i, c);
            if lowest.as_ref().is_none_or(|l| k < *l) {
                lowest = Some(k);
                tied.clear();
                tied.push(i);
            } else if lowest.as_ref().is_some_and(|l| k == *l) {
                tied.push(i);
            }
        }
        if tied.is_empty() {
            return None;
        }
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        Some(tied[turn % tied.len()])
    }
}

/// Chooses a worker for a job.
///
/// The host keeps one instance per sandbox and calls it many times, so state kept in the
/// instance (behind a `Cell`, say) lives across calls, until the host recycles the instance.
/// An `Err`, a panic, an index outside `candidates` or a call past the host's deadline counts
/// as a failure of the plugin: the host dispatches that job with its built-in least-loaded
/// strategy, and a plugin that keeps failing is switched off by a circuit breaker.
pub trait DispatchStrategy {
    fn pick(
        &self,
        job: &Job,
        candidates: &[Candidate],
        ctx: &dyn Context,
    ) -> Result<Decision, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(active_jobs: u32, max_parallel: u32, cpu_load: f32) -> Candidate {
        Candidate {
            active_jobs,
            max_parallel,
            cpu_load,
            preferred: false,
        }
    }

    #[test]
    fn overloaded_at_ninety_percent_of_slots_or_cpu() {
        assert!(!candidate(8, 10, 89.9).is_overloaded());
        assert!(candidate(9, 10, 0.0).is_overloaded());
        assert!(candidate(0, 10, 90.0).is_overloaded());
        assert!(candidate(1, 1, 0.0).is_overloaded());
    }

    #[test]
    fn a_zero_max_parallel_counts_as_one_slot() {
        assert!(!candidate(0, 0, 0.0).is_overloaded());
        assert!(candidate(1, 0, 0.0).is_overloaded());
        assert_eq!(candidate(3, 0, 0.0).free_slots(), 0);
    }

    #[test]
    fn the_preferred_candidate_counts_only_when_not_overloaded() {
        let preferred = |active_jobs| Candidate {
            preferred: true,
            ..candidate(active_jobs, 10, 0.0)
        };
        assert_eq!(
            preferred_candidate(&[candidate(0, 10, 0.0), preferred(5)]),
            Some(1)
        );
        assert_eq!(
            preferred_candidate(&[candidate(0, 10, 0.0), preferred(9)]),
            None
        );
    }

    #[test]
    fn tie_breaker_takes_the_lowest_cost_and_skips_the_overloaded() {
        let candidates = [
            candidate(9, 10, 0.0),
            candidate(3, 10, 0.0),
            candidate(1, 10, 0.0),
        ];
        let ties = TieBreaker::default();
        assert_eq!(ties.lowest(&candidates, |_, c| c.active_jobs), Some(2));
        assert_eq!(ties.lowest(&candidates[..1], |_, c| c.active_jobs), None);
        assert_eq!(ties.lowest(&[], |_, c| c.active_jobs), None);
    }

    #[test]
    fn tie_breaker_rotates_through_equal_candidates_only() {
        let candidates = [
            candidate(0, 10, 0.0),
            candidate(5, 10, 0.0),
            candidate(0, 10, 0.0),
        ];
        let ties = TieBreaker::default();
        let picks: Vec<_> = (0..4)
            .map(|_| ties.lowest(&candidates, |_, c| c.active_jobs))
            .collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
    }

    #[test]
    fn load_score_adds_cpu_as_a_fraction_of_a_job() {
        assert_eq!(candidate(2, 10, 50.0).load_score(), 2.5);
    }
}
