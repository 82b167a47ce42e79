//! The workflow engine: stores definitions and runs, dispatches ready steps as jobs through the
//! scheduler, and advances runs as their jobs end.
//!
//! # How a run advances
//!
//! Every change to a run — a job of one of its steps ended, a backoff or timeout came due, a
//! human approved, someone cancelled — goes through [`Engine::advance`]: under the run's lock
//! (a store lock with a per-holder token, so it holds across replicas) the run is read, the jobs
//! of its running steps are read in one call, and [`Plan`] works out the new state and the
//! effects (jobs to submit, jobs to cancel). The run is saved with compare-and-set on its
//! revision **before** the effects: job ids are deterministic (`<run>.<step>[.<i>].<attempt>`),
//! so a crash between the save and the submit leaves a running step whose job does not exist,
//! which the next advance submits again (a second submit of an existing id creates nothing).
//!
//! Two things wake a run: the terminal job events every scheduler publishes (one replica takes
//! each, through a queue group), and the workflow reconciler, a tick that advances every active
//! run. The tick is what recovers a lost event or a crashed replica, and what fires retry
//! backoffs and step/run timeouts; it runs in one replica at a time, the holder of the
//! `workflow-reconciler` lock (an owner token with a TTL, renewed every tick and page, as the job
//! reconciler's), so replicas do not all walk every run.
//!
//! A result is never dropped because its run is busy. An advance asked while one is in progress
//! in this process is remembered, and the holder goes round once more when it is done (its read
//! of the jobs may predate the result). An advance whose run is locked by another replica waits
//! until the lock is free — the holder finishes in milliseconds, and one that died lets go when
//! the lock's TTL runs out — then reads the run and its jobs afresh. Only the tick does not
//! wait: it skips a locked run and comes back.
//!
//! A replica that stops ([`Engine::drain`], then [`Engine::release`]) takes no more run locks,
//! lets the advances in flight finish, and releases what it still holds — the reconciler lock
//! and the lock of any advance cut short — so another replica goes on at once rather than after
//! the locks' TTL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::definition::{self, Approval, Run, Status, StepRun, StepType, Workflow, WorkflowSpec};
use super::plan::{Effect, Plan, StepJob, end_step, running_jobs, step_of_job};
use crate::bus::{Feed, SharedBus, job_events};
use crate::configsvc::{ConfigService, ConfigTarget};
use crate::ids;
use crate::job::{DEFAULT_TENANT, FieldError, Job};
use crate::leader::Leadership;
use crate::plugins::{ConditionEvaluator, PluginRegistry};
use crate::scheduler::{Scheduler, SchedulerError};
use crate::store::{JobStore, Locks, Page, PageRequest, RunFilter, StoreError, WorkflowStore};
use crate::time::{Millis, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("invalid workflow")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The task doing the work ended abnormally (it panicked).
    #[error("{0}")]
    Aborted(String),
}

type Result<T> = std::result::Result<T, WorkflowError>;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How often the workflow reconciler advances every active run.
    pub tick: Duration,
    /// How long a run's lock lives if its holder dies.
    pub lock_ttl: Duration,
    /// How long a person's change (approve, cancel) waits for a run's lock held elsewhere before
    /// it is answered 409. Advances asked by job results wait until the lock is free.
    pub lock_wait: Duration,
    /// How often the reconciler drops the index entries of expired runs.
    pub prune_every: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            tick: Duration::from_secs(1),
            lock_ttl: Duration::from_secs(30),
            lock_wait: Duration::from_secs(5),
            prune_every: Duration::from_secs(60),
        }
    }
}

/// The queue group of the engines: one replica advances a run per job event.
pub const WORKFLOW_GROUP: &str = "coretex-workflow";

/// What the engine works with, handed to it where the host is wired (`serve`): the scheduler
/// for the step jobs' submits and cancels, the store by role, the bus for the job events, the
/// config and plugins that resolve a step's conditions.
#[derive(Clone)]
pub struct Handles {
    pub scheduler: Arc<Scheduler>,
    /// Definitions and runs.
    pub workflows: Arc<dyn WorkflowStore>,
    /// The step jobs, read when a run advances.
    pub jobs: Arc<dyn JobStore>,
    /// The run locks and the workflow reconciler's.
    pub locks: Arc<dyn Locks>,
    pub bus: SharedBus,
    pub config: Arc<ConfigService>,
    pub plugins: Arc<PluginRegistry>,
}

pub struct Engine {
    handles: Handles,
    scheduler: Arc<Scheduler>,
    store: Arc<dyn WorkflowStore>,
    settings: EngineSettings,
    /// Runs being advanced in this process, and whether another advance was asked meanwhile.
    busy: Mutex<HashMap<String, bool>>,
    /// The workflow reconciler's lock, under this replica's token.
    leadership: Leadership,
    /// Permits to evaluate off the async threads ([`Engine::off_thread`]): one per core.
    evaluating: tokio::sync::Semaphore,
    /// The run locks this replica holds, by name, with their tokens.
    held: Mutex<HashMap<String, String>>,
    /// The advances job events asked for, in their own tasks.
    advances: TaskTracker,
    /// Cancelled when the replica stops: no run lock is taken from then on.
    stopping: CancellationToken,
}

/// A change asked from outside: applied to the run under its lock, before it advances.
type Change = Box<dyn FnOnce(&Workflow, &mut Run, Millis) -> Result<()> + Send>;

impl Engine {
    pub fn new(handles: Handles, settings: EngineSettings) -> Arc<Self> {
        let leadership = Leadership::new(
            handles.locks.clone(),
            RECONCILER_LOCK,
            format!("workflows-{}", uuid::Uuid::new_v4()),
            Leadership::ttl_for(settings.tick),
        );
        Arc::new(Engine {
            store: handles.workflows.clone(),
            scheduler: handles.scheduler.clone(),
            handles,
            settings,
            leadership,
            busy: Mutex::new(HashMap::new()),
            evaluating: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            held: Mutex::new(HashMap::new()),
            advances: TaskTracker::new(),
            stopping: CancellationToken::new(),
        })
    }

    /// The handles this engine was given (another engine on the same ones is another replica's).
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// Runs the synchronous part of a save or an advance — conditions, templates and `for_each`,
    /// each a call into the sandbox that may take up to its deadline — on Tokio's blocking pool,
    /// so the async threads (one, in `serve` on a small machine) go on answering whatever a
    /// workflow's expressions cost. At most one evaluation per core at once: a burst of costly
    /// ones waits its turn here, asynchronously, instead of crowding the cores with threads that
    /// leave the async threads a sliver of CPU. The hop costs about 16 µs (`benches/plugins.rs`).
    async fn off_thread<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        let stopped = || WorkflowError::Conflict("the host is shutting down; try again".into());
        let _permit = self.evaluating.acquire().await.map_err(|_| stopped())?;
        match tokio::task::spawn_blocking(work).await {
            Ok(r) => Ok(r),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(stopped()),
        }
    }

    async fn conditions(
        &self,
        org_id: &str,
        team_id: &str,
        workflow_id: Option<&str>,
    ) -> Result<impl ConditionEvaluator + use<>> {
        let target = ConfigTarget {
            org_id: Some(org_id.to_string()),
            team_id: (!team_id.is_empty()).then(|| team_id.to_string()),
            workflow_id: workflow_id.map(str::to_string),
            step_id: None,
        };
        let effective = self
            .handles
            .config
            .effective(&target)
            .await
            .map_err(|e| match e {
                crate::configsvc::ConfigError::Store(s) => WorkflowError::Store(s),
                other => WorkflowError::Conflict(other.to_string()),
            })?;
        Ok(self
            .handles
            .plugins
            .conditions_for(org_id, &effective.value))
    }

    // ---- definitions ----

    async fn checked(&self, spec: WorkflowSpec, id: String, version: u64) -> Result<Workflow> {
        let org_id = spec
            .org_id
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string());
        let team_id = spec.team_id.clone().unwrap_or_default();
        let conditions = self.conditions(&org_id, &team_id, Some(&id)).await?;
        let expressions = self.handles.plugins.expressions();
        let (spec, mut errors) = self
            .off_thread(move || {
                let errors = definition::validate(&spec, &conditions, &expressions);
                (spec, errors)
            })
            .await?;
        errors.extend(
            [("org_id", &spec.org_id), ("team_id", &spec.team_id)]
                .into_iter()
                .filter_map(|(f, v)| v.as_ref().map(|v| (f, v)))
                .flat_map(|(f, v)| {
                    let mut e = Vec::new();
                    crate::job::check_ident(f, v, &mut e);
                    e
                }),
        );
        if !errors.is_empty() {
            return Err(WorkflowError::Invalid(errors));
        }
        let now = now_ms();
        Ok(Workflow {
            id,
            name: spec.name,
            org_id,
            team_id,
            version,
            timeout_sec: spec.timeout_sec,
            input_schema: spec.input_schema,
            steps: spec.steps,
            created_at: now,
            updated_at: now,
        })
    }

    /// Validates and stores a new workflow, `{org}~{id}` (see [`ids`]). Its first version is 1,
    /// or — for an id deleted before — the one after the last stored under it, so a run still
    /// following an old version never sees it change.
    pub async fn create(&self, mut spec: WorkflowSpec) -> Result<Workflow> {
        let org = spec
            .org_id
            .get_or_insert_with(|| DEFAULT_TENANT.to_string())
            .clone();
        let local = spec
            .id
            .get_or_insert_with(|| format!("wf-{}", uuid::Uuid::now_v7()))
            .clone();
        let id = ids::qualify(&org, &local);
        let exists =
            || WorkflowError::Conflict(format!("workflow `{id}` exists; update it with PUT"));
        let head = self.store.workflow_head(&id).await?;
        if head.is_some_and(|h| h.live) {
            return Err(exists());
        }
        let version = head.map_or(0, |h| h.latest) + 1;
        let wf = self.checked(spec, id.clone(), version).await?;
        match self.store.workflow_put(&wf, true).await {
            Err(StoreError::Conflict { .. }) => Err(exists()),
            other => other.map(|()| wf).map_err(Into::into),
        }
    }

    /// Stores a new version; runs already started keep theirs. The workflow stays in its org.
    pub async fn update(&self, id: &str, mut spec: WorkflowSpec) -> Result<Workflow> {
        let current = self.get(id, None).await?;
        let local = id
            .strip_prefix(&ids::qualify(&current.org_id, ""))
            .unwrap_or(id)
            .to_string();
        let mut errors = Vec::new();
        if spec.id.as_deref().is_some_and(|s| s != local && s != id) {
            errors.push(FieldError::new("id", "does not match the path"));
        }
        if spec.org_id.as_deref().is_some_and(|o| o != current.org_id) {
            errors.push(FieldError::new(
                "org_id",
                format!("the workflow belongs to org `{}`", current.org_id),
            ));
        }
        if !errors.is_empty() {
            return Err(WorkflowError::Invalid(errors));
        }
        spec.id = Some(local);
        spec.org_id = Some(current.org_id.clone());
        let mut wf = self
            .checked(spec, id.to_string(), current.version + 1)
            .await?;
        wf.created_at = current.created_at;
        match self.store.workflow_put(&wf, false).await {
            Err(StoreError::Conflict { current }) => Err(WorkflowError::Conflict(format!(
                "workflow `{id}` changed meanwhile (now version {current}); try again"
            ))),
            other => other.map(|()| wf).map_err(Into::into),
        }
    }

    pub async fn get(&self, id: &str, version: Option<u64>) -> Result<Workflow> {
        self.store
            .workflow_get(id, version)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("no such workflow `{id}`")))
    }

    /// The live workflows (of one org), by id.
    pub async fn list(&self, org: Option<&str>, page: &PageRequest) -> Result<Page<Workflow>> {
        Ok(self.store.workflow_list(org, page).await?)
    }

    pub async fn delete(&self, id: &str) -> Result<bool> {
        Ok(self.store.workflow_delete(id).await?)
    }

    // ---- runs ----

    /// Checks the input against the workflow's schema, stores the run and starts it.
    pub async fn start_run(self: &Arc<Self>, workflow_id: &str, input: Value) -> Result<Run> {
        let wf = self.get(workflow_id, None).await?;
        if let Some(schema) = &wf.input_schema {
            let errors = definition::check_input(schema, &input);
            if !errors.is_empty() {
                return Err(WorkflowError::Invalid(errors));
            }
        }
        let run = Run {
            id: ids::qualify(&wf.org_id, &format!("run-{}", uuid::Uuid::now_v7())),
            workflow_id: wf.id.clone(),
            workflow_version: wf.version,
            org_id: wf.org_id.clone(),
            team_id: wf.team_id.clone(),
            input,
            context: json!({}),
            status: Status::Pending,
            steps: wf
                .steps
                .keys()
                .map(|k| (k.clone(), StepRun::default()))
                .collect(),
            started_at: now_ms(),
            completed_at: None,
            output: None,
            error: None,
            revision: 0,
        };
        self.store.run_put(&run).await?;
        self.advance(&run.id).await?;
        self.get_run(&run.id).await
    }

    pub async fn get_run(&self, run_id: &str) -> Result<Run> {
        self.store
            .run_get(run_id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("no such run `{run_id}`")))
    }

    pub async fn list_runs(&self, filter: &RunFilter, page: &PageRequest) -> Result<Page<Run>> {
        Ok(self.store.run_list(filter, page).await?)
    }

    /// Cancels a run: every running job gets a cancel, every unfinished step ends cancelled.
    pub async fn cancel_run(self: &Arc<Self>, run_id: &str, reason: &str) -> Result<Run> {
        let reason = reason.to_string();
        self.change(
            run_id,
            Box::new(move |_, run, now| {
                if run.status.is_terminal() {
                    return Ok(());
                }
                for s in run.steps.values_mut() {
                    end_step(s, Status::Cancelled, &reason, now);
                }
                run.status = Status::Cancelled;
                run.error = Some(reason);
                run.completed_at = Some(now);
                Ok(())
            }),
        )
        .await
    }

    /// Cancels one step (its job or children's jobs); its dependents are cancelled with it.
    pub async fn cancel_step(
        self: &Arc<Self>,
        run_id: &str,
        step_id: &str,
        reason: &str,
    ) -> Result<Run> {
        let (step_id, reason) = (step_id.to_string(), reason.to_string());
        self.change(
            run_id,
            Box::new(move |_, run, now| {
                let s = run.steps.get_mut(&step_id).ok_or_else(|| {
                    WorkflowError::NotFound(format!("no step `{step_id}` in this run"))
                })?;
                if s.status.is_terminal() {
                    return Err(WorkflowError::Conflict(format!(
                        "step `{step_id}` is {} already",
                        s.status
                    )));
                }
                end_step(s, Status::Cancelled, &reason, now);
                Ok(())
            }),
        )
        .await
    }

    /// A human's answer to an approval step: approval succeeds it, rejection fails it.
    pub async fn approve(
        self: &Arc<Self>,
        run_id: &str,
        step_id: &str,
        approved: bool,
        comment: Option<String>,
    ) -> Result<Run> {
        let step_id = step_id.to_string();
        self.change(
            run_id,
            Box::new(move |wf, run, now| {
                let is_approval = wf
                    .steps
                    .get(&step_id)
                    .is_some_and(|d| d.kind == StepType::Approval);
                let s = run.steps.get_mut(&step_id).ok_or_else(|| {
                    WorkflowError::NotFound(format!("no step `{step_id}` in this run"))
                })?;
                if !is_approval || s.status != Status::Waiting {
                    return Err(WorkflowError::Conflict(format!(
                        "step `{step_id}` is {} and not awaiting approval",
                        s.status
                    )));
                }
                s.output = Some(json!({"approved": approved, "comment": comment}));
                s.approval = Some(Approval {
                    approved,
                    comment: comment.clone(),
                    at: now,
                });
                if approved {
                    s.status = Status::Succeeded;
                } else {
                    s.status = Status::Failed;
                    s.error = Some(match &comment {
                        Some(c) => format!("rejected: {c}"),
                        None => "rejected".into(),
                    });
                }
                s.completed_at = Some(now);
                Ok(())
            }),
        )
        .await
    }

    // ---- advancing ----

    /// Advances a run. Asked while this process advances it already, it is remembered and done
    /// once more right after. A lock held by another replica is waited for until it is free,
    /// however long: the result that asked for this advance must not be dropped, and a holder
    /// that died lets go when its lock's TTL runs out.
    pub async fn advance(self: &Arc<Self>, run_id: &str) -> Result<()> {
        self.advance_waiting(run_id, LockWait::UntilFree).await
    }

    /// Runs `work` to its end in a task of its own (tracked with the event advances, so a drain
    /// waits for it too) and answers its result. Whoever asked may stop waiting — a client that
    /// disconnects drops its handler's future wherever it is — without cutting the work short:
    /// an advance cut short left its run marked busy in this process, so no later advance here
    /// ran it, and its lock held until the TTL.
    async fn to_completion<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.advances.spawn(work).await.map_err(|e| {
            WorkflowError::Aborted(format!("the run's advance ended abnormally: {e}"))
        })?
    }

    async fn advance_waiting(self: &Arc<Self>, run_id: &str, wait: LockWait) -> Result<()> {
        let (engine, run_id) = (self.clone(), run_id.to_string());
        self.to_completion(async move { engine.advance_here(&run_id, wait).await })
            .await
    }

    /// [`Engine::advance_waiting`] in the caller's task.
    async fn advance_here(&self, run_id: &str, wait: LockWait) -> Result<()> {
        {
            let mut busy = self.busy.lock();
            if let Some(again) = busy.get_mut(run_id) {
                *again = true;
                return Ok(());
            }
            busy.insert(run_id.to_string(), false);
        }
        loop {
            let r = self.locked(run_id, None, wait).await;
            let again = {
                let mut busy = self.busy.lock();
                if busy.get(run_id).copied().unwrap_or(false) && r.is_ok() {
                    busy.insert(run_id.to_string(), false);
                    true
                } else {
                    busy.remove(run_id);
                    false
                }
            };
            if !again {
                return r.map(drop);
            }
        }
    }

    /// A person's change: waits `lock_wait` at most for the run's lock, then answers 409.
    async fn change(self: &Arc<Self>, run_id: &str, change: Change) -> Result<Run> {
        let (engine, run_id) = (self.clone(), run_id.to_string());
        self.to_completion(async move {
            engine
                .locked(&run_id, Some(change), LockWait::Bounded)
                .await
        })
        .await
    }

    /// Under the run's lock: applies `change`, advances, saves, then performs the effects.
    async fn locked(&self, run_id: &str, change: Option<Change>, wait: LockWait) -> Result<Run> {
        let lock = run_lock_name(run_id);
        let token = uuid::Uuid::new_v4().to_string();
        let ttl = self.settings.lock_ttl.as_millis() as u64;
        let deadline = match wait {
            LockWait::UntilFree => None,
            LockWait::Bounded => Some(tokio::time::Instant::now() + self.settings.lock_wait),
            LockWait::Not => Some(tokio::time::Instant::now()),
        };
        let mut pause = Duration::from_millis(10);
        loop {
            if self.stopping.is_cancelled() {
                return Err(WorkflowError::Conflict(
                    "the host is shutting down; try again".into(),
                ));
            }
            if self.handles.locks.lock_acquire(&lock, &token, ttl).await? {
                break;
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(WorkflowError::Conflict(format!(
                    "run `{run_id}` is busy; try again"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        self.held.lock().insert(lock.clone(), token.clone());
        let r = self.advance_held(run_id, change).await;
        match self.handles.locks.lock_release(&lock, &token).await {
            Ok(_) => {
                self.held.lock().remove(&lock);
            }
            Err(e) => {
                tracing::warn!(run_id, error = %e, "could not release a run lock; it expires")
            }
        }
        r
    }

    async fn advance_held(&self, run_id: &str, change: Option<Change>) -> Result<Run> {
        let mut run = self.get_run(run_id).await?;
        let wf = self
            .get(&run.workflow_id, Some(run.workflow_version))
            .await?;
        let before = run.clone();
        let now = now_ms();
        if let Some(change) = change {
            change(&wf, &mut run, now)?;
        }
        // The jobs running before the change too: a change may end steps whose jobs need a cancel.
        let job_ids: Vec<String> = running_jobs(&before)
            .chain(running_jobs(&run))
            .map(|(j, _)| j.to_string())
            .collect();
        let jobs: HashMap<String, Job> = self
            .handles
            .jobs
            .get_jobs(&job_ids)
            .await?
            .into_iter()
            .flatten()
            .map(|j| (j.spec.id.clone(), j))
            .collect();
        let conditions = self
            .conditions(&run.org_id, &run.team_id, Some(&run.workflow_id))
            .await?;
        let expressions = self.handles.plugins.expressions();
        let plugins = self.handles.plugins.clone();
        let retry_bounds = self.scheduler.retry_bounds();
        let (mut run, mut effects, jobs) = self
            .off_thread(move || {
                let mut plan = Plan {
                    wf: &wf,
                    now,
                    jobs: &jobs,
                    conditions: &conditions,
                    expressions: &expressions,
                    plugins: &plugins,
                    retry_bounds,
                    effects: Vec::new(),
                    submitted: HashSet::new(),
                };
                plan.advance(&mut run);
                let effects = plan.effects;
                (run, effects, jobs)
            })
            .await?;
        // A job is submitted only for a step still running at the end (a run that failed in the
        // same advance submits nothing), and every job whose step ended without it is cancelled.
        let still: HashSet<&str> = running_jobs(&run).map(|(j, _)| j).collect();
        effects.retain(|e| match e {
            Effect::Submit(job) => still.contains(job.ids.job_id.as_str()),
            Effect::Cancel { .. } => true,
        });
        effects.extend(
            running_jobs(&before)
                .map(|(j, _)| j)
                .filter(|j| !still.contains(j))
                .filter(|j| jobs.get(*j).is_some_and(|job| !job.state.is_terminal()))
                .map(|j| Effect::Cancel {
                    job_id: j.to_string(),
                    reason: "its workflow step ended".into(),
                }),
        );
        if run != before {
            run.revision = self.store.run_put(&run).await?;
        }
        let mut refused = Vec::new();
        for e in effects {
            match e {
                Effect::Submit(job) => {
                    let StepJob { req, ids } = *job;
                    let id = ids.job_id.clone();
                    match self.scheduler.submit_step(req, ids).await {
                        Ok(_) => {}
                        // Refused, it would be refused again: its step fails with the reason
                        // rather than wait for a job that will never exist.
                        Err(SchedulerError::Invalid(errors)) => {
                            refused.push((id, FieldError::describe(&errors)));
                        }
                        // The step stays running with its job id; the next advance sees the job
                        // missing and submits it again.
                        Err(e) => {
                            tracing::warn!(run_id, job_id = %id, error = %e, "could not submit a step job")
                        }
                    }
                }
                Effect::Cancel { job_id, reason } => {
                    if let Err(e) = self.scheduler.cancel(&job_id, &reason).await {
                        tracing::debug!(run_id, job_id, error = %e, "step job not cancelled");
                    }
                }
            }
        }
        if !refused.is_empty() {
            let now = now_ms();
            for (job_id, why) in &refused {
                if let Some(s) = step_of_job(&mut run, job_id) {
                    end_step(
                        s,
                        Status::Failed,
                        &format!("its job was refused: {why}"),
                        now,
                    );
                }
            }
            run.revision = self.store.run_put(&run).await?;
        }
        Ok(run)
    }

    /// Advances the run of every terminal event of a step's job (the steps' own feed; one replica
    /// per event, by queue group).
    pub async fn run_events(self: Arc<Self>) {
        let mut events = std::pin::pin!(job_events(
            self.handles.bus.clone(),
            Feed::Steps,
            Some(WORKFLOW_GROUP)
        ));
        while let Some(parsed) = events.next().await {
            for ev in parsed {
                // A job that is no workflow's step says so in its event: nothing to read.
                let Some(run_id) = ev.run_id else {
                    continue;
                };
                let engine = self.clone();
                self.advances.spawn(async move {
                    if let Err(e) = engine.advance(&run_id).await {
                        tracing::debug!(run_id, error = %e, "run not advanced; the tick will");
                    }
                });
            }
        }
    }

    /// The workflow reconciler: every tick, in the one replica that holds the reconciler lock,
    /// advances each active run and, now and then, prunes the index entries of expired runs.
    /// This recovers results nobody applied (a lost event, a replica that died mid-advance) and
    /// fires retry backoffs and timeouts.
    pub async fn run_reconciler(self: Arc<Self>) {
        self.leadership
            .lead_every(
                self.settings.tick,
                || async {
                    if let Err(e) = self.reconcile_once().await {
                        tracing::warn!(error = %e, "workflow reconciler tick failed");
                    }
                },
                self.settings.prune_every,
                || self.prune_runs(),
            )
            .await
    }

    /// One reconciler tick if this replica holds the reconciler lock (taking it when it is
    /// free): the number of runs looked at, or `None` when another replica is the reconciler.
    pub async fn reconcile_as_leader(self: &Arc<Self>) -> Result<Option<usize>> {
        if !self.leadership.hold().await? {
            return Ok(None);
        }
        Ok(Some(self.reconcile_once().await?))
    }

    async fn prune_runs(&self) {
        match self.store.run_prune_indexes().await {
            Ok(n) if n > 0 => {
                tracing::info!(removed = n, "pruned the index entries of expired runs")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "run index pruning failed"),
        }
    }

    /// Stops taking run locks (on shutdown) and waits, at most `grace`, for the advances job
    /// events asked for to end; answers whether they all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.stopping.cancel();
        self.advances.close();
        let settled = tokio::time::timeout(grace, self.advances.wait())
            .await
            .is_ok();
        if !settled {
            tracing::warn!(?grace, "run advances still going at the end of the drain");
        }
        settled
    }

    /// Lets another replica take over at once (on shutdown, once the loops have ended): releases
    /// the reconciler lock and every run lock an advance cut short still holds.
    pub async fn release(&self) {
        self.leadership.release().await;
        let held: Vec<(String, String)> = self.held.lock().drain().collect();
        for (lock, token) in held {
            if let Err(e) = self.handles.locks.lock_release(&lock, &token).await {
                tracing::warn!(lock, error = %e, "could not release a run lock; it expires");
            }
        }
    }

    /// One pass over the active runs (pending, running, waiting), paged. A run whose lock is
    /// held is skipped (its holder is advancing it; the next tick comes back), and the reconciler
    /// lock is renewed after each page, so a long pass keeps it; a pass that lost it stops.
    async fn reconcile_once(self: &Arc<Self>) -> Result<usize> {
        let mut advanced = 0;
        for status in [Status::Pending, Status::Running, Status::Waiting] {
            let filter = RunFilter {
                status: Some(status),
                ..RunFilter::default()
            };
            let mut page = PageRequest {
                limit: 200,
                cursor: None,
            };
            loop {
                let got = self.store.run_list(&filter, &page).await?;
                for run in &got.items {
                    if let Err(e) = self.advance_waiting(&run.id, LockWait::Not).await {
                        tracing::debug!(run_id = %run.id, error = %e, "run not advanced this tick");
                    }
                    advanced += 1;
                }
                if !self.leadership.hold().await? {
                    return Ok(advanced);
                }
                match got
                    .next_cursor
                    .and_then(|c| crate::store::Cursor::decode(&c))
                {
                    Some(c) => page.cursor = Some(c),
                    None => break,
                }
            }
        }
        Ok(advanced)
    }
}

/// The name of a run's lock (a store lock: `lock:wf-run:{id}` in Redis).
pub fn run_lock_name(run_id: &str) -> String {
    format!("wf-run:{run_id}")
}

/// The lock held by the one replica that runs the workflow reconciler.
const RECONCILER_LOCK: &str = "workflow-reconciler";

/// How an advance treats a run lock held elsewhere.
#[derive(Debug, Clone, Copy)]
enum LockWait {
    /// Until it is free: an advance asked by a job result.
    UntilFree,
    /// `lock_wait` at most: a person's change, answered 409 past it.
    Bounded,
    /// Not at all: the reconciler's tick, which comes back anyway.
    Not,
}
