//! A native test harness: describe a job and the workers the host would offer, run a strategy
//! on them in an ordinary `cargo test`, and read back which worker it chose.
//!
//! ```
//! use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};
//! use coretex_plugin_sdk::testing::{Fixture, Worker};
//!
//! /// Picks the first candidate.
//! struct First;
//!
//! impl DispatchStrategy for First {
//!     fn pick(&self, _: &Job, candidates: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
//!         Ok(if candidates.is_empty() { Decision::NoWorker("none".into()) } else { Decision::Worker(0) })
//!     }
//! }
//!
//! let fixture = Fixture::new("job.echo")
//!     .worker(Worker::new("w1").active(3).max(4))
//!     .worker(Worker::new("w2"));
//! assert_eq!(fixture.pick_worker(&First).as_deref(), Some("w1"));
//! ```
//!
//! The harness plays the host's part: a worker named by the job's `preferred_worker_id` label is
//! the `preferred` candidate, settings are handed over as JSON text, and an answer outside the
//! candidates fails the pick as the host would count it a failure of the plugin.
//!
//! [`evaluate_json`] does the same for an expression language: it sends a scope as the host
//! does, a variable per key, each as JSON text.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dispatch::{
    Candidate, CandidateList, Context, Decision, DispatchStrategy, Job, Priority,
};
use crate::expression::{ExpressionLanguage, Variable};

/// A worker as the host's registry sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub id: String,
    pub active_jobs: u32,
    pub max_parallel: u32,
    pub cpu_load: f32,
    pub labels: BTreeMap<String, String>,
}

impl Worker {
    /// An idle worker with 10 slots, so that `.active(n)` alone reads as a load.
    pub fn new(id: impl Into<String>) -> Self {
        Worker {
            id: id.into(),
            active_jobs: 0,
            max_parallel: 10,
            cpu_load: 0.0,
            labels: BTreeMap::new(),
        }
    }

    pub fn active(mut self, active_jobs: u32) -> Self {
        self.active_jobs = active_jobs;
        self
    }

    pub fn max(mut self, max_parallel: u32) -> Self {
        self.max_parallel = max_parallel;
        self
    }

    pub fn cpu(mut self, cpu_load: f32) -> Self {
        self.cpu_load = cpu_load;
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A job and the workers eligible for it.
#[derive(Clone, Debug)]
pub struct Fixture {
    topic: String,
    tenant: String,
    priority: Priority,
    attempt: u32,
    labels: BTreeMap<String, String>,
    settings: BTreeMap<String, Value>,
    workers: Vec<Worker>,
}

impl Fixture {
    /// A first attempt of a batch job on `topic`, for tenant `default`, with no workers yet.
    pub fn new(topic: impl Into<String>) -> Self {
        Fixture {
            topic: topic.into(),
            tenant: "default".into(),
            priority: Priority::Batch,
            attempt: 1,
            labels: BTreeMap::new(),
            settings: BTreeMap::new(),
            workers: Vec::new(),
        }
    }

    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// A label on the job.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// A key of the effective config's `dispatch` object.
    pub fn setting(mut self, key: impl Into<String>, value: Value) -> Self {
        self.settings.insert(key.into(), value);
        self
    }

    /// An eligible worker; candidates are indexed in the order workers are added.
    pub fn worker(mut self, worker: Worker) -> Self {
        self.workers.push(worker);
        self
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// The job as a strategy sees it.
    pub fn job(&self) -> Job {
        Job {
            priority: self.priority,
            attempt: self.attempt,
            label_count: u32::try_from(self.labels.len()).unwrap_or(u32::MAX),
        }
    }

    /// The workers as a strategy sees them ([`CandidateList::view`] is the strategy's
    /// argument).
    pub fn candidates(&self) -> CandidateList {
        let preferred = self.labels.get("preferred_worker_id");
        self.workers
            .iter()
            .map(|w| Candidate {
                active_jobs: w.active_jobs,
                max_parallel: w.max_parallel,
                cpu_load: w.cpu_load,
                preferred: preferred == Some(&w.id),
            })
            .collect()
    }

    /// Runs one `pick`, as the host would: an index outside the candidates is an error.
    pub fn pick<S: DispatchStrategy + ?Sized>(&self, strategy: &S) -> Result<Decision, String> {
        let decision = strategy.pick(&self.job(), self.candidates().view(), self)?;
        match decision {
            Decision::Worker(index) if index >= self.workers.len() => Err(format!(
                "picked candidate {index}, but there are {} candidates",
                self.workers.len()
            )),
            decision => Ok(decision),
        }
    }

    /// The id of the worker `strategy` picks, or `None` when it places the job nowhere.
    ///
    /// # Panics
    ///
    /// When the pick fails (an error, or an index outside the candidates).
    pub fn pick_worker<S: DispatchStrategy + ?Sized>(&self, strategy: &S) -> Option<String> {
        match self.pick(strategy) {
            Ok(Decision::Worker(index)) => Some(self.workers[index].id.clone()),
            Ok(Decision::NoWorker(_)) => None,
            Err(e) => panic!("the strategy failed: {e}"),
        }
    }

    /// Places one job: picks a worker and, as the host's estimate does until the next
    /// heartbeat, counts the job as running on it. Returns the worker's id, as
    /// [`Fixture::pick_worker`] does.
    pub fn place<S: DispatchStrategy + ?Sized>(&mut self, strategy: &S) -> Option<String> {
        let id = self.pick_worker(strategy)?;
        if let Some(worker) = self.workers.iter_mut().find(|w| w.id == id) {
            worker.active_jobs += 1;
        }
        Some(id)
    }
}

impl Context for Fixture {
    fn topic(&self) -> String {
        self.topic.clone()
    }

    fn tenant(&self) -> String {
        self.tenant.clone()
    }

    fn job_label(&self, key: &str) -> Option<String> {
        self.labels.get(key).cloned()
    }

    fn job_labels(&self) -> Vec<(String, String)> {
        self.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn candidate_label(&self, index: usize, key: &str) -> Option<String> {
        self.workers.get(index)?.labels.get(key).cloned()
    }

    fn candidate_id(&self, index: usize) -> Option<String> {
        Some(self.workers.get(index)?.id.clone())
    }

    fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).map(Value::to_string)
    }
}

/// Evaluates `expression` with `language` as the host does: each top-level key of `scope` (a
/// JSON object) is a variable, sent as JSON text.
pub fn evaluate_json<L: ExpressionLanguage>(
    language: &L,
    expression: &str,
    scope: &Value,
) -> Result<Value, String> {
    let texts: Vec<(&str, String)> = scope
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.as_str(), value.to_string()))
        .collect();
    let variables: Vec<Variable<'_>> = texts
        .iter()
        .map(|(name, json)| Variable { name, json })
        .collect();
    language.evaluate_json(expression, &variables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Candidates;

    /// Answers whatever index it was built with.
    struct Fixed(usize);

    impl DispatchStrategy for Fixed {
        fn pick(&self, _: &Job, _: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
            Ok(Decision::Worker(self.0))
        }
    }

    #[test]
    fn the_worker_named_by_preferred_worker_id_is_the_preferred_candidate() {
        let fixture = Fixture::new("t")
            .label("preferred_worker_id", "b")
            .worker(Worker::new("a"))
            .worker(Worker::new("b"));
        assert_eq!(fixture.candidates().view().preferred(), Some(1));
    }

    #[test]
    fn an_index_outside_the_candidates_fails_the_pick() {
        let fixture = Fixture::new("t").worker(Worker::new("a"));
        assert!(fixture.pick(&Fixed(1)).is_err());
    }

    #[test]
    fn placing_a_job_counts_it_on_the_chosen_worker() {
        let mut fixture = Fixture::new("t").worker(Worker::new("a").active(2));
        assert_eq!(fixture.place(&Fixed(0)).as_deref(), Some("a"));
        assert_eq!(fixture.workers()[0].active_jobs, 3);
    }

    #[test]
    fn context_answers_from_the_fixture() {
        let fixture = Fixture::new("job.gpu")
            .tenant("acme")
            .label("region", "eu")
            .setting("label_weights", serde_json::json!({"region": 2}))
            .worker(Worker::new("w1").label("region", "eu"));
        let ctx: &dyn Context = &fixture;
        assert_eq!(ctx.topic(), "job.gpu");
        assert_eq!(ctx.tenant(), "acme");
        assert_eq!(ctx.job_label("region").as_deref(), Some("eu"));
        assert_eq!(ctx.job_labels(), [("region".to_string(), "eu".to_string())]);
        assert_eq!(ctx.candidate_label(0, "region").as_deref(), Some("eu"));
        assert_eq!(ctx.candidate_id(0).as_deref(), Some("w1"));
        assert_eq!(ctx.candidate_id(1), None);
        let weights: Option<BTreeMap<String, f64>> = ctx.setting_as("label_weights").unwrap();
        assert_eq!(weights.unwrap()["region"], 2.0);
        assert!(
            ctx.setting_as::<BTreeMap<String, f64>>("missing")
                .unwrap()
                .is_none()
        );
    }
}
