//! Dispatch strategies: which worker gets a job.
//!
//! The host filters the live workers down to the eligible ones (alive, in the job's pool or
//! serving its topic, carrying its `placement.*` labels) and hands them to
//! [`DispatchStrategy::pick`] as [`Candidates`]: numbers only, a slice per field (they cross the
//! sandbox boundary as one list of numbers, a block per field, which is the cheapest way
//! across), read one [`Candidate`] at a time. Ranking a thousand workers costs no strings and no
//! allocation. A strategy that needs a string (the job's topic, a worker's label, a setting)
//! asks the [`Context`] for it, and only that string crosses the sandbox boundary.

use std::cell::Cell;
use std::iter::{FusedIterator, Zip};
use std::slice;

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

/// The eligible workers, as the host sends them: one slice per field (each a block of the one
/// list that crossed the boundary, not a copy), candidate `i` at index `i` of each. A view that
/// borrows the call's data (cheap to copy); [`Candidates::get`] and [`Candidates::iter`] put a
/// [`Candidate`] together on demand, and the slices themselves are there for a strategy that
/// scans one field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidates<'a> {
    active_jobs: &'a [u32],
    max_parallel: &'a [u32],
    cpu_load: &'a [f32],
    preferred: Option<usize>,
}

impl<'a> Candidates<'a> {
    /// Candidates from one slice per field and the index of the candidate the job names in its
    /// `preferred_worker_id` label. An error when the slices differ in length or `preferred` is
    /// not one of the candidates: the host never sends such a call.
    pub fn new(
        active_jobs: &'a [u32],
        max_parallel: &'a [u32],
        cpu_load: &'a [f32],
        preferred: Option<usize>,
    ) -> Result<Self, String> {
        let n = active_jobs.len();
        if max_parallel.len() != n || cpu_load.len() != n {
            return Err(format!(
                "candidate fields differ in length: {n} active-jobs, {} max-parallel, {} cpu-load",
                max_parallel.len(),
                cpu_load.len()
            ));
        }
        if let Some(i) = preferred.filter(|&i| i >= n) {
            return Err(format!("preferred candidate {i} of {n} candidates"));
        }
        Ok(Candidates {
            active_jobs,
            max_parallel,
            cpu_load,
            preferred,
        })
    }

    pub fn len(&self) -> usize {
        self.active_jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active_jobs.is_empty()
    }

    /// The candidate at `index`.
    pub fn get(&self, index: usize) -> Option<Candidate> {
        Some(Candidate {
            active_jobs: *self.active_jobs.get(index)?,
            max_parallel: self.max_parallel[index],
            cpu_load: self.cpu_load[index],
            preferred: self.preferred == Some(index),
        })
    }

    /// The candidates in order (the index of each is its position).
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            fields: self
                .active_jobs
                .iter()
                .zip(self.max_parallel)
                .zip(self.cpu_load),
            index: 0,
            preferred: self.preferred,
        }
    }

    /// The index of the candidate the job names in its `preferred_worker_id` label, overloaded
    /// or not.
    pub fn preferred(&self) -> Option<usize> {
        self.preferred
    }

    /// Every candidate's running jobs.
    pub fn active_jobs(&self) -> &'a [u32] {
        self.active_jobs
    }

    /// Every candidate's slots.
    pub fn max_parallel(&self) -> &'a [u32] {
        self.max_parallel
    }

    /// Every candidate's CPU load, in percent.
    pub fn cpu_load(&self) -> &'a [f32] {
        self.cpu_load
    }
}

impl<'a> IntoIterator for Candidates<'a> {
    type Item = Candidate;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The candidates in order: see [`Candidates::iter`]. It walks the three slices side by side,
/// so a scan has no bounds checks and `skip(n)` costs nothing.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    fields: Fields<'a>,
    /// The index of the next candidate.
    index: usize,
    preferred: Option<usize>,
}

/// Active jobs, max parallel and CPU load, side by side.
type Fields<'a> = Zip<Zip<slice::Iter<'a, u32>, slice::Iter<'a, u32>>, slice::Iter<'a, f32>>;

impl Iterator for Iter<'_> {
    type Item = Candidate;

    fn next(&mut self) -> Option<Candidate> {
        let ((&active_jobs, &max_parallel), &cpu_load) = self.fields.next()?;
        let index = self.index;
        self.index += 1;
        Some(Candidate {
            active_jobs,
            max_parallel,
            cpu_load,
            preferred: self.preferred == Some(index),
        })
    }

    fn nth(&mut self, n: usize) -> Option<Candidate> {
        let skipped = n.min(self.fields.len());
        self.index += skipped;
        if skipped > 0 {
            self.fields.nth(skipped - 1);
        }
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.fields.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl FusedIterator for Iter<'_> {}

/// Candidates kept in owned lists, one per field: what a test builds (with `collect`) and
/// views as [`Candidates`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CandidateList {
    active_jobs: Vec<u32>,
    max_parallel: Vec<u32>,
    cpu_load: Vec<f32>,
    preferred: Option<usize>,
}

impl CandidateList {
    /// Adds a candidate at the end; a `preferred` one becomes the preferred candidate.
    pub fn push(&mut self, candidate: Candidate) {
        if candidate.preferred {
            self.preferred = Some(self.active_jobs.len());
        }
        self.active_jobs.push(candidate.active_jobs);
        self.max_parallel.push(candidate.max_parallel);
        self.cpu_load.push(candidate.cpu_load);
    }

    pub fn view(&self) -> Candidates<'_> {
        Candidates {
            active_jobs: &self.active_jobs,
            max_parallel: &self.max_parallel,
            cpu_load: &self.cpu_load,
            preferred: self.preferred,
        }
    }
}

impl FromIterator<Candidate> for CandidateList {
    fn from_iter<I: IntoIterator<Item = Candidate>>(candidates: I) -> Self {
        let mut list = CandidateList::default();
        for c in candidates {
            list.push(c);
        }
        list
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
    pub fn from_choice(choice: Option<usize>, candidates: Candidates<'_>) -> Decision {
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
pub fn preferred_candidate(candidates: Candidates<'_>) -> Option<usize> {
    candidates
        .preferred()
        .filter(|&i| candidates.get(i).is_some_and(|c| !c.is_overloaded()))
}

/// Picks the cheapest candidate and spreads ties: the scan starts one candidate further on at
/// each call (wrapping round) and keeps the first of the cheapest, so equally cheap candidates
/// take turns and a burst of jobs is shared instead of landing on whichever comes first in the
/// list. Keep one in the strategy's instance: the turn is counted across calls.
#[derive(Debug, Default)]
pub struct TieBreaker {
    turn: Cell<usize>,
}

impl TieBreaker {
    /// The index of the candidate with the lowest `cost`, overloaded candidates skipped (and
    /// `cost` called once for each of the others); among equal costs, the first one from where
    /// this call's scan starts. `None` when every candidate is overloaded (or there are none).
    /// One pass, no allocation.
    pub fn lowest<K: PartialOrd>(
        &self,
        candidates: Candidates<'_>,
        mut cost: impl FnMut(usize, &Candidate) -> K,
    ) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        let start = turn % n;
        let mut lowest: Option<(usize, K)> = None;
        let mut consider = |(i, c): (usize, Candidate)| {
            if c.is_overloaded() {
                return;
            }
            let k = cost(i, &c);
            if lowest.as_ref().is_none_or(|(_, l)| k < *l) {
                lowest = Some((i, k));
            }
        };
        let all = candidates.iter().enumerate();
        all.clone().skip(start).for_each(&mut consider);
        all.take(start).for_each(&mut consider);
        lowest.map(|(i, _)| i)
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
        candidates: Candidates<'_>,
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

    fn list(candidates: &[Candidate]) -> CandidateList {
        candidates.iter().copied().collect()
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
    fn candidates_are_read_back_field_by_field_in_order() {
        let preferred = Candidate {
            preferred: true,
            ..candidate(2, 4, 30.0)
        };
        let given = [candidate(1, 8, 10.0), preferred, candidate(0, 2, 0.5)];
        let list = list(&given);
        let view = list.view();
        assert_eq!(view.len(), 3);
        assert_eq!(view.preferred(), Some(1));
        assert_eq!(view.iter().collect::<Vec<_>>(), given);
        assert_eq!(view.get(1), Some(preferred));
        assert_eq!(view.get(3), None);
        assert_eq!(view.active_jobs(), [1, 2, 0]);
    }

    #[test]
    fn fields_of_different_lengths_are_refused() {
        assert!(Candidates::new(&[1, 2], &[4], &[0.0, 0.0], None).is_err());
        assert!(Candidates::new(&[1], &[4], &[0.0], Some(1)).is_err());
        assert!(Candidates::new(&[1], &[4], &[0.0], Some(0)).is_ok());
    }

    #[test]
    fn the_preferred_candidate_counts_only_when_not_overloaded() {
        let preferred = |active_jobs| Candidate {
            preferred: true,
            ..candidate(active_jobs, 10, 0.0)
        };
        let fits = list(&[candidate(0, 10, 0.0), preferred(5)]);
        assert_eq!(preferred_candidate(fits.view()), Some(1));
        let full = list(&[candidate(0, 10, 0.0), preferred(9)]);
        assert_eq!(preferred_candidate(full.view()), None);
    }

    #[test]
    fn tie_breaker_takes_the_lowest_cost_and_skips_the_overloaded() {
        let candidates = list(&[
            candidate(9, 10, 0.0),
            candidate(3, 10, 0.0),
            candidate(1, 10, 0.0),
        ]);
        let ties = TieBreaker::default();
        for _ in 0..3 {
            assert_eq!(
                ties.lowest(candidates.view(), |_, c| c.active_jobs),
                Some(2)
            );
        }
        let overloaded = list(&[candidate(9, 10, 0.0)]);
        assert_eq!(ties.lowest(overloaded.view(), |_, c| c.active_jobs), None);
        let none = CandidateList::default();
        assert_eq!(ties.lowest(none.view(), |_, c| c.active_jobs), None);
    }

    #[test]
    fn tie_breaker_spreads_calls_over_equal_candidates_only() {
        let candidates = list(&[
            candidate(0, 10, 0.0),
            candidate(5, 10, 0.0),
            candidate(0, 10, 0.0),
            candidate(0, 10, 0.0),
        ]);
        let ties = TieBreaker::default();
        let picks: Vec<_> = (0..4)
            .filter_map(|_| ties.lowest(candidates.view(), |_, c| c.active_jobs))
            .collect();
        assert_eq!(picks, [0, 2, 2, 3]);
    }

    #[test]
    fn load_score_adds_cpu_as_a_fraction_of_a_job() {
        assert_eq!(candidate(2, 10, 50.0).load_score(), 2.5);
    }
}
