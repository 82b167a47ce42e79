//! One advance of one run, worked out without I/O: given the run, its workflow version, the
//! state of its steps' jobs and the time, [`Plan`] settles what finished, starts what is ready
//! (conditions, templates and `for_each` through the evaluators), schedules retries and
//! timeouts, concludes the run, and collects the jobs to submit and cancel as [`Effect`]s. The
//! engine reads what a plan needs, runs it off the async threads, stores the run and performs
//! the effects.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::definition::{self, OnError, Run, Status, StepDef, StepRun, StepType, Workflow};
use super::expr::Scope;
use crate::ids;
use crate::job::{Job, JobRequest, JobState, StepJobIds};
use crate::limits::{MAX_FOR_EACH_ITEMS, MAX_TIMEOUT_SEC};
use crate::plugins::{ConditionEvaluator, ExpressionEvaluator, PluginRegistry};
use crate::scheduler::retry::{Failure, RetryBounds, RetryDecision, RetryPolicy};
use crate::time::Millis;

/// A step's job as an advance submits it: the request (rendered input, env, labels) and the
/// ids the engine gives it.
#[derive(Debug)]
pub(super) struct StepJob {
    pub(super) req: JobRequest,
    pub(super) ids: StepJobIds,
}

/// What an advance does outside the run document.
#[derive(Debug)]
pub(super) enum Effect {
    Submit(Box<StepJob>),
    Cancel { job_id: String, reason: String },
}

/// The job of a step (or child) that is running.
pub(super) fn running_jobs(run: &Run) -> impl Iterator<Item = (&str, &StepRun)> {
    run.steps.values().flat_map(|s| {
        std::iter::once(s)
            .chain(s.children.iter().flatten())
            .filter(|s| s.status == Status::Running)
            .filter_map(|s| s.job_id.as_deref().map(|j| (j, s)))
    })
}

/// The step (or child) whose job is `job_id`.
pub(super) fn step_of_job<'r>(run: &'r mut Run, job_id: &str) -> Option<&'r mut StepRun> {
    run.steps.values_mut().find_map(|s| {
        if s.job_id.as_deref() == Some(job_id) {
            Some(s)
        } else {
            s.children
                .iter_mut()
                .flatten()
                .find(|c| c.job_id.as_deref() == Some(job_id))
        }
    })
}

/// Ends a step that is not finished (and its unfinished children) with `status`.
pub(super) fn end_step(s: &mut StepRun, status: Status, why: &str, now: Millis) {
    for c in s.children.iter_mut().flatten() {
        end_step(c, status, why, now);
    }
    if !s.status.is_terminal() {
        s.status = status;
        s.error.get_or_insert_with(|| why.to_string());
        s.completed_at = Some(now);
        s.next_attempt_at = None;
    }
}

/// One advance of one run, pure but for the effects it collects.
pub(super) struct Plan<'a, C: ConditionEvaluator> {
    pub(super) wf: &'a Workflow,
    pub(super) now: Millis,
    pub(super) jobs: &'a HashMap<String, Job>,
    pub(super) conditions: &'a C,
    /// Templates and `for_each`.
    pub(super) expressions: &'a dyn ExpressionEvaluator,
    /// For the retry policies steps name.
    pub(super) plugins: &'a PluginRegistry,
    /// What the host allows any retry policy (see [`RetryBounds`]).
    pub(super) retry_bounds: RetryBounds,
    pub(super) effects: Vec<Effect>,
    /// The jobs `effects` submits.
    pub(super) submitted: HashSet<String>,
}

/// How a running job of a step (or child) stands.
enum JobOutcome {
    Running,
    Missing,
    Succeeded(Value),
    Failed(String, Status),
}

impl<C: ConditionEvaluator> Plan<'_, C> {
    pub(super) fn advance(&mut self, run: &mut Run) {
        if run.status.is_terminal() {
            return;
        }
        // A run is created with a state per step of its version, and versions never change;
        // a record that lacks one is corrupt, and fails rather than waiting forever.
        if let Some(missing) = self.wf.steps.keys().find(|id| !run.steps.contains_key(*id)) {
            let why = format!("the run has no state for step `{missing}` of its workflow");
            self.finish(run, Status::Failed, Some(why));
            return;
        }
        if let Some(t) = self.wf.timeout_sec
            && self.now - run.started_at > t.min(MAX_TIMEOUT_SEC) as i64 * 1000
        {
            for s in run.steps.values_mut() {
                end_step(s, Status::Cancelled, "the run timed out", self.now);
            }
            self.finish(
                run,
                Status::TimedOut,
                Some(format!("the run timed out after {t} s")),
            );
            return;
        }
        // Settling a step may make others ready (and a skip may ready more): go round until
        // nothing changes.
        for _ in 0..=self.wf.steps.len() {
            let snapshot = run.steps.clone();
            let ids: Vec<String> = self.wf.steps.keys().cloned().collect();
            for id in &ids {
                self.step(run, id);
            }
            if run.steps == snapshot {
                break;
            }
        }
        self.conclude(run);
    }

    fn finish(&mut self, run: &mut Run, status: Status, error: Option<String>) {
        run.status = status;
        run.error = error;
        run.completed_at = Some(self.now);
    }

    fn step(&mut self, run: &mut Run, id: &str) {
        // `advance` checked that every step of the version has its state.
        let (Some(def), Some(s)) = (self.wf.steps.get(id).cloned(), run.steps.get(id)) else {
            return;
        };
        match s.status {
            Status::Pending if s.attempts == 0 => self.maybe_start(run, id, &def),
            Status::Pending | Status::Running => {
                let scope = Scope::of(run.scope());
                let Some(mut s) = run.steps.remove(id) else {
                    return;
                };
                if s.children.is_some() {
                    self.for_each(run, id, &def, &mut s, &scope);
                } else {
                    self.job_step(run, id, &def, &mut s, None, &scope);
                }
                if s.status == Status::Succeeded
                    && let (Some(path), Some(out)) = (&def.output_path, &s.output)
                {
                    definition::write_path(&mut run.context, path, out.clone());
                }
                run.steps.insert(id.to_string(), s);
            }
            _ => {}
        }
    }

    /// A step not begun: waits for its dependencies, then is skipped, cancelled, waits for
    /// approval, fans out, or submits its first job.
    fn maybe_start(&mut self, run: &mut Run, id: &str, def: &StepDef) {
        let mut blocked = None;
        for dep in &def.depends_on {
            // A definition names only its own steps, and `advance` checked each has its state.
            let Some(d) = run.steps.get(dep) else { return };
            let dep_continues = self
                .wf
                .steps
                .get(dep)
                .is_some_and(|d| d.on_error == OnError::Continue);
            match d.status {
                Status::Succeeded | Status::Skipped => {}
                Status::Failed | Status::TimedOut if dep_continues => {}
                Status::Failed | Status::TimedOut | Status::Cancelled => {
                    blocked = Some(format!("dependency `{dep}` {}", d.status));
                }
                _ => return,
            }
        }
        let now = self.now;
        if let Some(why) = blocked {
            if let Some(s) = run.steps.get_mut(id) {
                end_step(s, Status::Cancelled, &why, now);
            }
            return;
        }
        let scope = run.scope();
        if let Some(cond) = &def.condition {
            match self.conditions.evaluate(cond, &scope) {
                Ok(true) => {}
                Ok(false) => {
                    if let Some(s) = run.steps.get_mut(id) {
                        s.status = Status::Skipped;
                        s.completed_at = Some(now);
                    }
                    return;
                }
                Err(e) => {
                    if let Some(s) = run.steps.get_mut(id) {
                        end_step(s, Status::Failed, &format!("condition: {e}"), now);
                    }
                    return;
                }
            }
        }
        let scope = Scope::of(scope);
        let Some(mut s) = run.steps.remove(id) else {
            return;
        };
        s.started_at = Some(now);
        if def.kind == StepType::Approval {
            s.status = Status::Waiting;
        } else if let Some(expr) = &def.for_each {
            match definition::resolve(expr, &scope, self.expressions) {
                Ok(Value::Array(items)) if items.len() > MAX_FOR_EACH_ITEMS => end_step(
                    &mut s,
                    Status::Failed,
                    &format!(
                        "for_each `{expr}` gave {} items; the limit is {MAX_FOR_EACH_ITEMS}",
                        items.len()
                    ),
                    now,
                ),
                Ok(Value::Array(items)) => {
                    s.status = Status::Running;
                    s.children = Some(
                        items
                            .into_iter()
                            .map(|item| StepRun {
                                item: Some(item),
                                ..Default::default()
                            })
                            .collect(),
                    );
                    self.for_each(run, id, def, &mut s, &scope);
                }
                Ok(other) => end_step(
                    &mut s,
                    Status::Failed,
                    &format!("for_each `{expr}` gave {other}, not an array"),
                    now,
                ),
                Err(e) => end_step(&mut s, Status::Failed, &format!("for_each: {e}"), now),
            }
        } else {
            self.submit(run, id, def, &mut s, None, &scope);
        }
        run.steps.insert(id.to_string(), s);
    }

    /// The children of a fan-out: settles the running ones, starts pending ones up to
    /// `max_parallel`, and ends the parent when all succeeded or one failed.
    fn for_each(&mut self, run: &Run, id: &str, def: &StepDef, s: &mut StepRun, scope: &Scope) {
        let mut children = s.children.take().unwrap_or_default();
        let limit = def.max_parallel.map_or(usize::MAX, |m| m as usize);
        for (i, c) in children.iter_mut().enumerate() {
            if c.status == Status::Running || (c.status == Status::Pending && c.attempts > 0) {
                self.job_step(run, id, def, c, Some(i), scope);
            }
        }
        for i in 0..children.len() {
            let active = children
                .iter()
                .filter(|c| c.status == Status::Running)
                .count();
            if active >= limit {
                break;
            }
            if let Some(c) = children.get_mut(i)
                && c.status == Status::Pending
                && c.attempts == 0
            {
                c.started_at = Some(self.now);
                self.submit(run, id, def, c, Some(i), scope);
            }
        }
        let failed = children.iter().enumerate().find_map(|(i, c)| {
            matches!(
                c.status,
                Status::Failed | Status::TimedOut | Status::Cancelled
            )
            .then(|| {
                let error = c.error.as_deref().unwrap_or_default();
                format!("item {i} {}: {error}", c.status)
            })
        });
        s.children = Some(children);
        if let Some(why) = failed {
            end_step(s, Status::Failed, &why, self.now);
        } else if s
            .children
            .as_ref()
            .is_some_and(|k| k.iter().all(|c| c.status == Status::Succeeded))
        {
            s.status = Status::Succeeded;
            s.output = Some(Value::Array(
                s.children
                    .iter()
                    .flatten()
                    .map(|c| c.output.clone().unwrap_or(Value::Null))
                    .collect(),
            ));
            s.completed_at = Some(self.now);
        }
    }

    /// A job step (or child) under way: settles its job, times it out, or fires a due retry.
    fn job_step(
        &mut self,
        run: &Run,
        id: &str,
        def: &StepDef,
        s: &mut StepRun,
        index: Option<usize>,
        scope: &Scope,
    ) {
        if s.status == Status::Pending {
            if s.next_attempt_at.is_none_or(|t| t <= self.now) {
                self.submit(run, id, def, s, index, scope);
            }
            return;
        }
        let Some(job_id) = s.job_id.clone() else {
            return;
        };
        match self.outcome(&job_id, def, s) {
            JobOutcome::Running => {}
            // Saved as running but never stored (a crash between the save and the submit): the
            // same attempt again, with the same id.
            JobOutcome::Missing => match self.job_request(run, id, def, s, index, scope) {
                Ok(req) => self.effects.push(Effect::Submit(Box::new(req))),
                Err(e) => end_step(s, Status::Failed, &e, self.now),
            },
            JobOutcome::Succeeded(out) => {
                s.status = Status::Succeeded;
                s.output = Some(out);
                s.error = None;
                s.completed_at = Some(self.now);
            }
            JobOutcome::Failed(why, status) => match self.retry_after(def, s, &job_id, status) {
                Ok(wait) => {
                    s.error = Some(why);
                    s.status = Status::Pending;
                    s.job_id = None;
                    s.next_attempt_at = Some(
                        self.now
                            .saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)),
                    );
                }
                Err(no_retry) => {
                    s.error = Some(match no_retry {
                        Some(reason) => format!("{why}; {reason}"),
                        None => why,
                    });
                    s.status = status;
                    s.completed_at = Some(self.now);
                }
            },
        }
    }

    /// How long to wait before the next attempt of a failed step, or why there is none. Without a
    /// `retry.policy` the step's own settings decide; with one, the retry-policy plugin of that
    /// name does (SPEC §9), told the step's settings, the attempt and the job's error — a policy
    /// that cannot answer means no retry, as for jobs.
    fn retry_after(
        &self,
        def: &StepDef,
        s: &StepRun,
        job_id: &str,
        status: Status,
    ) -> std::result::Result<u64, Option<String>> {
        let Some(retry) = &def.retry else {
            return Err(None);
        };
        let Some(config) = retry.policy_config() else {
            return if s.attempts <= retry.max_retries {
                match self.retry_bounds.bound(
                    RetryDecision::Retry {
                        after_ms: retry.backoff_ms(s.attempts),
                    },
                    s.attempts,
                    None,
                ) {
                    RetryDecision::Retry { after_ms } => Ok(after_ms),
                    RetryDecision::DeadLetter { reason } => Err(Some(reason)),
                }
            } else {
                Err(None)
            };
        };
        let Some(job) = self.jobs.get(job_id) else {
            return Err(None);
        };
        let mut job = job.clone();
        job.spec.attempt = s.attempts;
        let outcome = match status {
            Status::TimedOut => JobState::Timeout,
            _ if job.state.is_terminal() => job.state,
            _ => JobState::Failed,
        };
        let elapsed_ms = s.started_at.map_or(0, |t| (self.now - t).max(0) as u64);
        let asked = self.plugins.retry_for(&config).decide(&Failure {
            job: &job,
            outcome,
            error: job.error.as_ref(),
            elapsed_ms,
        });
        let configured = config
            .pointer("/retry/max_attempts")
            .and_then(Value::as_u64);
        match self.retry_bounds.bound(asked, s.attempts, configured) {
            RetryDecision::Retry { after_ms } => Ok(after_ms),
            RetryDecision::DeadLetter { reason } => Err(Some(reason)),
        }
    }

    fn outcome(&self, job_id: &str, def: &StepDef, s: &StepRun) -> JobOutcome {
        let Some(job) = self.jobs.get(job_id) else {
            // Submitted by this very advance (a later round of it looks again): running, not
            // missing, or the round would submit it a second time.
            if self.submitted.contains(job_id) {
                return JobOutcome::Running;
            }
            return JobOutcome::Missing;
        };
        match job.state {
            JobState::Succeeded => JobOutcome::Succeeded(job.result.clone().unwrap_or(Value::Null)),
            state if state.is_terminal() => JobOutcome::Failed(
                match &job.error {
                    Some(e) => format!("job {job_id} {state}: {}", e.message),
                    None => format!("job {job_id} {state}"),
                },
                if state == JobState::Timeout {
                    Status::TimedOut
                } else {
                    Status::Failed
                },
            ),
            _ => match (def.timeout_sec, s.started_at) {
                (Some(t), Some(started))
                    if self.now - started > t.min(MAX_TIMEOUT_SEC) as i64 * 1000 =>
                {
                    JobOutcome::Failed(format!("step timed out after {t} s"), Status::TimedOut)
                }
                _ => JobOutcome::Running,
            },
        }
    }

    fn push_submit(&mut self, job: StepJob) {
        if self.submitted.insert(job.ids.job_id.clone()) {
            self.effects.push(Effect::Submit(Box::new(job)));
        }
    }

    /// Submits the next attempt of a step (or child) as a job.
    fn submit(
        &mut self,
        run: &Run,
        id: &str,
        def: &StepDef,
        s: &mut StepRun,
        index: Option<usize>,
        scope: &Scope,
    ) {
        s.attempts += 1;
        s.next_attempt_at = None;
        match self.job_request(run, id, def, s, index, scope) {
            Ok(job) => {
                s.job_id = Some(job.ids.job_id.clone());
                s.status = Status::Running;
                self.push_submit(job);
            }
            Err(e) => end_step(s, Status::Failed, &e, self.now),
        }
    }

    fn job_request(
        &self,
        run: &Run,
        id: &str,
        def: &StepDef,
        s: &StepRun,
        index: Option<usize>,
        scope: &Scope,
    ) -> std::result::Result<StepJob, String> {
        let mut env: BTreeMap<String, String> = [
            ("workflow_id", run.workflow_id.clone()),
            ("run_id", run.id.clone()),
            ("step_id", id.to_string()),
            ("tenant_id", run.org_id.clone()),
            ("team_id", run.team_id.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let (job_id, scope) = match index {
            Some(i) => {
                let item = s.item.clone().unwrap_or(Value::Null);
                env.insert("foreach_index".into(), i.to_string());
                env.insert(
                    "foreach_item".into(),
                    match &item {
                        Value::String(x) => x.clone(),
                        other => other.to_string(),
                    },
                );
                let scope = scope.with("item", &item).with("index", &json!(i));
                let job_id = ids::derive(&ids::derive(&ids::derive(&run.id, id), i), s.attempts);
                (job_id, scope)
            }
            None => (
                ids::derive(&ids::derive(&run.id, id), s.attempts),
                scope.clone(),
            ),
        };
        let payload = definition::render(&def.input, &scope, self.expressions)?;
        let req = JobRequest {
            topic: def.topic.clone().unwrap_or_default(),
            payload,
            tenant_id: Some(run.org_id.clone()),
            team_id: (!run.team_id.is_empty()).then(|| run.team_id.clone()),
            labels: def.route_labels.clone(),
            env,
            deadline_ms: None,
            heartbeat_timeout_sec: def.heartbeat_timeout_sec,
            ..Default::default()
        };
        let ids = StepJobIds {
            job_id,
            workflow_id: run.workflow_id.clone(),
            run_id: run.id.clone(),
            step_id: id.to_string(),
        };
        Ok(StepJob { req, ids })
    }

    /// The run's status from its steps.
    fn conclude(&mut self, run: &mut Run) {
        let failed = run.steps.iter().find(|(id, s)| {
            matches!(s.status, Status::Failed | Status::TimedOut)
                && self
                    .wf
                    .steps
                    .get(*id)
                    .is_none_or(|d| d.on_error == OnError::Fail)
        });
        if let Some((id, s)) = failed {
            let why = format!(
                "step `{id}` {}: {}",
                s.status,
                s.error.clone().unwrap_or_default()
            );
            for s in run.steps.values_mut() {
                end_step(s, Status::Cancelled, "the run failed", self.now);
            }
            self.finish(run, Status::Failed, Some(why));
            return;
        }
        if run.steps.values().all(|s| s.status.is_terminal()) {
            let cancelled = run.steps.values().any(|s| s.status == Status::Cancelled);
            let output: serde_json::Map<String, Value> = definition::leaf_steps(&self.wf.steps)
                .into_iter()
                .filter_map(|id| Some((id.to_string(), run.steps.get(id)?.output.clone()?)))
                .collect();
            run.output = Some(Value::Object(output));
            if cancelled {
                self.finish(run, Status::Cancelled, Some("a step was cancelled".into()));
            } else {
                self.finish(run, Status::Succeeded, None);
            }
        } else if run.steps.values().any(|s| s.status == Status::Waiting)
            && !run.steps.values().any(|s| s.status == Status::Running)
        {
            run.status = Status::Waiting;
        } else {
            run.status = Status::Running;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::job::JobSpec;
    use crate::testing::builtin_registry;

    /// Conditions are their own answer: `"true"` runs a step, anything else skips it.
    struct Literal;
    impl ConditionEvaluator for Literal {
        fn compile(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn evaluate(&self, e: &str, _: &Value) -> Result<bool, String> {
            Ok(e == "true")
        }
    }

    fn workflow(steps: Value, timeout_sec: Option<u64>) -> Workflow {
        Workflow {
            id: "acme~wf".into(),
            name: "wf".into(),
            org_id: "acme".into(),
            team_id: String::new(),
            version: 1,
            timeout_sec,
            input_schema: None,
            steps: serde_json::from_value(steps).expect("steps"),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn run_of(wf: &Workflow) -> Run {
        Run {
            id: "acme~run-1".into(),
            workflow_id: wf.id.clone(),
            workflow_version: wf.version,
            org_id: wf.org_id.clone(),
            team_id: String::new(),
            input: json!({"n": 2}),
            context: json!({}),
            status: Status::Pending,
            steps: wf
                .steps
                .keys()
                .map(|k| (k.clone(), StepRun::default()))
                .collect(),
            started_at: 0,
            completed_at: None,
            output: None,
            error: None,
            revision: 0,
        }
    }

    /// Advances `run` at `now` with the jobs `jobs`: the effects, as (submitted, cancelled) ids.
    fn advance(
        wf: &Workflow,
        run: &mut Run,
        jobs: &HashMap<String, Job>,
        now: Millis,
    ) -> (Vec<String>, Vec<String>) {
        let registry = builtin_registry();
        let expressions = registry.expressions();
        let mut plan = Plan {
            wf,
            now,
            jobs,
            conditions: &Literal,
            expressions: &expressions,
            plugins: registry,
            retry_bounds: RetryBounds::default(),
            effects: Vec::new(),
            submitted: HashSet::new(),
        };
        plan.advance(run);
        let mut submitted = Vec::new();
        let mut cancelled = Vec::new();
        for e in plan.effects {
            match e {
                Effect::Submit(job) => submitted.push(job.ids.job_id),
                Effect::Cancel { job_id, .. } => cancelled.push(job_id),
            }
        }
        (submitted, cancelled)
    }

    fn ended(job_id: &str, state: JobState, result: Value) -> Job {
        let req: JobRequest =
            serde_json::from_value(json!({"topic": "t", "payload": null})).expect("a request");
        let mut spec = serde_json::to_value(JobSpec::accept(req, 0)).expect("a spec");
        spec["id"] = json!(job_id);
        spec["state"] = json!(state);
        spec["result"] = result;
        spec["updated_at"] = json!("2026-01-01T00:00:00Z");
        serde_json::from_value(spec).expect("a job")
    }

    #[test]
    fn a_step_starts_once_its_dependency_succeeded() {
        let wf = workflow(
            json!({"a": {"topic": "t"}, "b": {"topic": "t", "depends_on": ["a"]}}),
            None,
        );
        let mut run = run_of(&wf);
        let (submitted, _) = advance(&wf, &mut run, &HashMap::new(), 10);
        assert_eq!(submitted.len(), 1, "only `a` is ready: {submitted:?}");
        assert_eq!(run.status, Status::Running);
        let a_job = run.steps["a"].job_id.clone().expect("a's job");

        let jobs = HashMap::from([(
            a_job.clone(),
            ended(&a_job, JobState::Succeeded, json!({"ok": 1})),
        )]);
        let (submitted, _) = advance(&wf, &mut run, &jobs, 20);
        assert_eq!(run.steps["a"].status, Status::Succeeded);
        assert_eq!(run.steps["a"].output, Some(json!({"ok": 1})));
        assert_eq!(submitted, [run.steps["b"].job_id.clone().expect("b's job")]);
    }

    #[test]
    fn a_false_condition_skips_its_step_and_readies_what_follows() {
        let wf = workflow(
            json!({
                "a": {"topic": "t", "condition": "false"},
                "b": {"topic": "t", "depends_on": ["a"]},
            }),
            None,
        );
        let mut run = run_of(&wf);
        let (submitted, _) = advance(&wf, &mut run, &HashMap::new(), 10);
        assert_eq!(run.steps["a"].status, Status::Skipped);
        assert_eq!(submitted.len(), 1, "`b` starts in the same advance");
        assert_eq!(run.steps["b"].status, Status::Running);
    }

    #[test]
    fn an_approval_step_waits_without_a_job() {
        let wf = workflow(json!({"gate": {"type": "approval"}}), None);
        let mut run = run_of(&wf);
        let (submitted, _) = advance(&wf, &mut run, &HashMap::new(), 10);
        assert!(submitted.is_empty());
        assert_eq!(run.steps["gate"].status, Status::Waiting);
        assert!(!run.status.is_terminal());
    }

    #[test]
    fn a_run_past_its_timeout_ends_and_cancels_its_running_jobs() {
        let wf = workflow(json!({"a": {"topic": "t"}}), Some(5));
        let mut run = run_of(&wf);
        advance(&wf, &mut run, &HashMap::new(), 10);
        assert_eq!(run.steps["a"].status, Status::Running);
        advance(&wf, &mut run, &HashMap::new(), 6_000);
        assert_eq!(run.status, Status::TimedOut);
        assert_eq!(run.steps["a"].status, Status::Cancelled);
    }

    #[test]
    fn a_run_missing_a_steps_state_fails_rather_than_waits() {
        let wf = workflow(json!({"a": {"topic": "t"}, "b": {"topic": "t"}}), None);
        let mut run = run_of(&wf);
        run.steps.remove("b");
        advance(&wf, &mut run, &HashMap::new(), 10);
        assert_eq!(run.status, Status::Failed);
        assert!(run.error.as_deref().unwrap_or_default().contains("`b`"));
    }
}
