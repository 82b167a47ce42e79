//! The scheduler (SPEC §5): accepts jobs, decides where each one runs, and applies what workers
//! report back.
//!
//! # The hot path, and what it costs
//!
//! A job submitted over HTTP and completed by a worker costs **two writes to Redis** (each a
//! Lua script doing the whole transition: record, history, indexes, TTLs) and, under load, a
//! fraction of a NATS message at each hop:
//!
//! 1. *accept* — the create script writes the record, its indexes and history; the answer goes
//!    out only after it. The replica that accepted the job schedules it, from the spec in hand
//!    (never read back); `sys.job.submit` remains for submissions published on the bus.
//! 2. *schedule* — validation, effective config (an in-process cache, refreshed at most once a
//!    second and dropped on `sys.config.changed`), the safety gate, and the strategy over the
//!    in-memory worker registry run without I/O; the job goes to `worker.<id>.jobs` at once.
//!    Its DISPATCHED (worker, safety decision, effective config) is written
//!    `record_dispatch_after` (50 ms) later, or together with the job's start or result when
//!    that comes first — which for a quick job it does, so the dispatch costs no write of its
//!    own (see [`Scheduler::dispatch_lazily`] for which jobs may skip the check-and-set, and
//!    why that is safe).
//! 3. *result* — the worker reports through the durable event stream. A quick job's result
//!    carries its start time, and one script records PENDING → DISPATCHED → RUNNING →
//!    SUCCEEDED, each state with the time it was entered; a worker that sends `started` on its
//!    own has it held for `started_coalesce` (50 ms) so the two are still written together when
//!    the result follows soon. The job's terminal event goes to this replica's live-stream
//!    clients in process at once (see [`live`]), and to `sys.job.events` for the other
//!    replicas' (a workflow step's also to the engine's own feed, with its run id).
//!
//! A reader of the store sees a dispatched job PENDING for at most `record_dispatch_after`,
//! as it sees a started one DISPATCHED until its start is written; the history it then reads
//! is complete and in order.
//!
//! **Batching without waiting.** No step holds a lock or awaits another job, and nothing waits
//! for a batch to fill. The store queues concurrent create and transition calls and sends what
//! is queued as one script call per up to 128 jobs, a few calls in flight (group commit, in
//! `store::redis`; inside a call, the index writes of all its jobs go out as one `ZADD` or
//! `ZREM` per index); NATS publishes go through an [`Outbox`] that sends what is ready together
//! as one message (jobs for one worker, job events; the worker does the same
//! with its results). At a trickle every call and message goes alone, immediately; under load
//! one Redis call and one NATS message carry tens of jobs, and the JetStream stream stores and
//! acks one message where it stored and acked each job.
//!
//! **Where the time goes** (`benches/e2e.sh` on the 2-core machine, 20,000 jobs through real
//! Redis and NATS; CPU per job, the range of one evening's runs: the machine's speed drifts, so
//! the shares matter more than the figures): Redis 35–55 µs — inside the two scripts, the
//! record is one compact hash (its fields and its history: see `store/redis.rs`), written
//! twice, seven sorted-set changes (into the PENDING index, out of it and into the final
//! state's, recency and tenant at the create and at the end: the largest part, sent as one
//! `ZADD`/`ZREM` per index per batch),
//! the existence check, the read of the state and the record's TTL, set once the job has
//! finished; the rest is the Lua interpreter around them. A job that joins another's trace adds
//! its trace index entry (and the TTL of that index). This is the floor while every job keeps
//! its record, its history and the indexes SPEC §3 names.
//! `serve` 30–40 µs on one thread (diffuse: the result batches' application, scheduling — a
//! job that finds every slot taken is scheduled twice, once into the wait queue —, HTTP and
//! JSON of the bulk submits, the NATS and Redis clients' I/O; allocation is a large share,
//! hence mimalloc); NATS ~10 µs (~0.2 messages in and out per job: batches of jobs, results and
//! events, the results' JetStream storage and acks); the echo worker 6–8 µs; `loadgen` 4–7 µs.
//! One thread (`serve --threads`, its default on up to 2 cores) because every hand-off between
//! runtime threads is a wakeup on cores that Redis, NATS and the workers share, and because the
//! batches grow when one thread gathers them (+22% jobs/s against two threads, side by side).
//! A worker slot is given back the moment a result arrives, not once it is stored, so
//! the store's latency does not eat into a worker's `max_parallel`; each replica counts only
//! the slots it took (a result another replica applied frees it through that job's event).
//!
//! # Crash safety
//!
//! A job is stored before it is announced, and every later step is idempotent against the
//! store's check-and-set, so the reconciler may re-publish anything that looks stuck: a PENDING
//! job nobody scheduled, a DISPATCHED job whose worker never said `started` (the worker drops
//! duplicates and re-sends the result of a job it already finished). Worker events are acked
//! only after their transition is stored. A replica that dies between sending a job and writing
//! its dispatch leaves it PENDING: its result, handled by any replica, walks it through
//! DISPATCHED on the way; had it none, the reconciler announces it again after
//! `pending_grace` (at-least-once, as ever).
//!
//! # The parts
//!
//! This file holds submission, the scheduling pass (checks, the safety gate, the strategy over
//! the registry, the lazy dispatch record) and cancel/approve. The rest are modules of their
//! own: [`placement`] (the checks a job passes again, the pool and labels it may go to, what it
//! waits for), [`queue`] (the wait queue and when a waiting job's reason is written), [`slots`]
//! (which job holds which worker's slot), [`registry`] (live workers from heartbeats),
//! [`passes`] (which heartbeats count), [`results`] (applying what workers report), [`settle`]
//! (failure → retry or dead letter), [`safety`], [`live`] (the live stream's events) and
//! [`drain`]. The contracts — [`strategy`] and [`retry`] — are `coretex-core`'s.
//!
//! # The crate
//!
//! `coretex-scheduler` sits on the store, the bus and the plugin host, and under the workflow
//! engine and the host. With the scheduler it holds what the scheduler needs that is not the
//! host's composition: the [`configsvc`] (every dispatch reads a job's effective config), the
//! [`job_metrics`] it records as jobs end, and the [`leader`] lock that the loops run by one
//! replica at a time (the host's reconciler, the workflow engine's) share. It is handed its
//! store, bus, config, registry and plugins by the host (`serve`), which hands the other
//! services their own rather than letting them reach through the scheduler.

// Nothing a caller sends may panic the host: outside tests, failures are errors, not unwinds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub use coretex_core::{retry, strategy};

// The layers below, under the paths the modules name them by.
use coretex_bus as bus;
use coretex_core::{ids, job, limits, protocol, time};
use coretex_plugin_host as plugins;
use coretex_plugin_host::breaker;
use coretex_store as store;

pub mod configsvc;
pub mod dlq;
pub mod job_metrics;
pub mod leader;
pub mod reconciler;
pub mod uploads;

mod drain;
pub mod live;
pub mod passes;
pub mod placement;
pub mod progress;
mod queue;
pub mod registry;
pub mod results;
pub mod safety;
mod settle;
mod slots;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::bus::auth::{LeaseKey, Rejection};
use crate::bus::{Feed, Outbox, SCHEDULER_GROUP, SharedBus, job_events, publish_json};
use crate::configsvc::schema::Tenancy;
use crate::configsvc::{ConfigService, ConfigTarget, Effective};
use crate::job::{FieldError, Job, JobError, JobRequest, JobSpec, JobState, Limits, StepJobIds};
use crate::plugins::PluginRegistry;
use crate::protocol::{
    CancelMsg, Clearance, HeartbeatMsg, JobEventMsg, JobMsg, SubmitMsg, VERSION,
};
use crate::store::{
    Annotation, CreateOutcome, JobUpdate, NewJob, PARKED, SharedStore, StoreError, Transition,
    TransitionOutcome,
};
use crate::time::{Millis, now_ms};

use live::LiveEvents;
use passes::Admission;
use placement::Target;
use queue::WaitQueue;
use registry::Registry;
use safety::{Decision, SafetyGate};
use slots::Slots;
use strategy::{DispatchStrategy, Pick};

/// A map keyed by job id, of those the hot path touches for every job. foldhash (seeded per
/// map) hashes short keys several times faster than the standard SipHash, which took 2% of
/// `serve`'s samples under load (perf, 40,000 jobs); its quality variant, since job ids may be
/// chosen by clients.
pub(crate) type IdMap<V> = HashMap<String, V, foldhash::quality::RandomState>;
/// A set of job ids; see [`IdMap`].
pub(crate) type IdSet = HashSet<String, foldhash::quality::RandomState>;

/// Settings of the scheduler, from the command line.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub limits: Limits,
    /// How long a worker's `started` waits to be written together with its result.
    pub started_coalesce: Duration,
    /// At most this many jobs are scheduled (or worker events applied) at once per replica.
    pub max_in_flight: usize,
    /// How long a job this replica created and dispatched may go before its DISPATCHED is
    /// written, so that a quick job's dispatch, start and result are written together (see
    /// the module docs). Zero writes every dispatch before the job is sent.
    pub record_dispatch_after: Duration,
    /// Only jobs younger than this are dispatched before their DISPATCHED is written: it must
    /// stay well inside the reconciler's `pending_grace`, after which a PENDING job may be
    /// announced again elsewhere (`serve` caps it at half the grace).
    pub lazy_dispatch_max_age: Duration,
    /// The ceiling on attempts and the floor on back-off of every retry policy.
    pub retry_bounds: retry::RetryBounds,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            limits: Limits::default(),
            started_coalesce: Duration::from_millis(50),
            max_in_flight: 4096,
            record_dispatch_after: Duration::from_millis(50),
            lazy_dispatch_max_age: Duration::from_millis(2_500),
            retry_bounds: retry::RetryBounds::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid job")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such job `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store did not answer a create in time: each job named (by its place among the
    /// requests, and its id) may have been stored or not — a write that timed out can still
    /// land. A stored one is PENDING, and the reconciler schedules it; a client learns which
    /// with `GET /jobs/{id}`, and a resubmit under the same Idempotency-Key or id cannot store
    /// a second job.
    #[error("the store did not answer ({detail}); {} job(s) may have been stored", jobs.len())]
    OutcomeUnknown {
        detail: String,
        jobs: Vec<(usize, String)>,
    },
}

/// A create's error: an unavailable store leaves the jobs `jobs` names in doubt.
fn create_error(e: StoreError, jobs: impl FnOnce() -> Vec<(usize, String)>) -> SchedulerError {
    match e {
        StoreError::Unavailable(detail) => SchedulerError::OutcomeUnknown {
            detail,
            jobs: jobs(),
        },
        other => other.into(),
    }
}

impl From<crate::configsvc::ConfigError> for SchedulerError {
    fn from(e: crate::configsvc::ConfigError) -> Self {
        match e {
            crate::configsvc::ConfigError::Store(s) => SchedulerError::Store(s),
            other => SchedulerError::Conflict(other.to_string()),
        }
    }
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub job_id: String,
    pub trace_id: String,
    /// False when the id or idempotency key named an existing job.
    pub created: bool,
}

pub struct Scheduler {
    /// This scheduler, for the tasks it spawns from `&self` methods.
    me: std::sync::Weak<Scheduler>,
    /// Names this replica in the job events it publishes (`JobEventMsg::replica`).
    replica: Arc<str>,
    /// This replica's live-stream clients' events.
    live: LiveEvents,
    /// The store and bus the scheduler works with; readable (tests and diagnostics look through
    /// them), but the other services are handed their own handles where `serve` wires them.
    pub store: SharedStore,
    pub bus: SharedBus,
    config: Arc<ConfigService>,
    registry: Arc<Registry>,
    /// Resolves each job's dispatch strategy and retry policy from its effective config.
    plugins: Arc<PluginRegistry>,
    /// The jobs this replica saw end: counters and latency (what `/metrics` serves).
    job_metrics: Arc<crate::job_metrics::JobMetrics>,
    safety: SafetyGate,
    /// Mints the lease of each dispatch and verifies those workers echo (see
    /// [`crate::bus::auth`]).
    leases: LeaseKey,
    settings: SchedulerSettings,
    waiting: Mutex<WaitQueue>,
    capacity: Notify,
    in_flight: Arc<Semaphore>,
    /// Coalesced publishes (see [`Outbox`]): jobs to workers, job events.
    dispatches: Outbox,
    events: Outbox,
    subjects: HotSubjects,
    /// Jobs this replica created, by id, until they are first dispatched: only these may be
    /// sent before their dispatch is written (see [`Scheduler::dispatch_lazily`]).
    created_here: Mutex<IdMap<std::time::Instant>>,
    /// Dispatches sent to their worker and not yet written, by job id.
    unrecorded: Mutex<IdMap<Dispatch>>,
    /// Held while dispatches taken from `unrecorded` are written, so a drain knows when none is
    /// on its way (see [`Scheduler::drain`]).
    recording: tokio::sync::Mutex<()>,
    /// The worker slot each job this replica dispatched holds, until the job ends.
    slots: Slots,
    /// The last progress beat of each running job (see [`progress`]).
    progress: progress::Progress,
}

/// A dispatch sent to its worker whose DISPATCHED is not written yet: written by
/// [`Scheduler::run_dispatch_records`] after `record_dispatch_after`, or together with the
/// job's start or result if that comes first.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    pub(crate) at: Millis,
    since: std::time::Instant,
    pub(crate) update: JobUpdate,
}

/// The subjects of the hot path, made once.
struct HotSubjects {
    job_events: Arc<str>,
    job_events_batch: Arc<str>,
    step_events: Arc<str>,
    step_events_batch: Arc<str>,
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: SharedStore,
        bus: SharedBus,
        config: Arc<ConfigService>,
        registry: Arc<Registry>,
        plugins: Arc<PluginRegistry>,
        job_metrics: Arc<crate::job_metrics::JobMetrics>,
        safety: SafetyGate,
        leases: LeaseKey,
        settings: SchedulerSettings,
    ) -> Arc<Self> {
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        let subjects = HotSubjects {
            job_events: bus.subjects().job_events().into(),
            job_events_batch: bus.subjects().job_events_batch().into(),
            step_events: bus.subjects().step_events().into(),
            step_events_batch: bus.subjects().step_events_batch().into(),
        };
        Arc::new_cyclic(|me| Scheduler {
            me: me.clone(),
            replica: uuid::Uuid::new_v4().simple().to_string()[..12].into(),
            live: LiveEvents::default(),
            dispatches: Outbox::start(bus.clone(), "jobs"),
            events: Outbox::start(bus.clone(), "job_events"),
            subjects,
            store,
            bus,
            config,
            registry,
            plugins,
            job_metrics,
            safety,
            leases,
            settings,
            waiting: Mutex::new(WaitQueue::default()),
            capacity: Notify::new(),
            in_flight,
            created_here: Mutex::new(IdMap::default()),
            unrecorded: Mutex::new(IdMap::default()),
            recording: tokio::sync::Mutex::new(()),
            slots: Slots::default(),
            progress: progress::Progress::default(),
        })
    }

    /// What the host allows any retry policy (the workflow engine's step retries too).
    pub fn retry_bounds(&self) -> retry::RetryBounds {
        self.settings.retry_bounds
    }

    pub fn safety(&self) -> &SafetyGate {
        &self.safety
    }

    /// The last progress beat of each running job, which the reconciler checks heartbeat
    /// timeouts against.
    pub fn progress(&self) -> &progress::Progress {
        &self.progress
    }

    pub fn waiting_jobs(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Validates, stores (PENDING) and announces a job. Answers only once the job is stored.
    pub async fn submit(
        &self,
        req: JobRequest,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, SchedulerError> {
        self.create(
            self.accept(req, now_ms(), &mut None, JobSpec::accept)
                .await?,
            idempotency_key,
        )
        .await
    }

    /// Stores and announces a workflow step's job, whose ids the engine chose (see
    /// [`JobSpec::accept_step`]); the rest of the request is validated as a client's.
    pub async fn submit_step(
        &self,
        req: JobRequest,
        ids: StepJobIds,
    ) -> Result<Accepted, SchedulerError> {
        let spec = self
            .accept(req, now_ms(), &mut None, |req, now| {
                JobSpec::accept_step(req, ids, now)
            })
            .await?;
        self.create(spec, None).await
    }

    async fn create(
        &self,
        spec: JobSpec,
        idempotency_key: Option<String>,
    ) -> Result<Accepted, SchedulerError> {
        let new = NewJob {
            spec,
            idempotency_key,
            note: None,
        };
        let outcome = self
            .store
            .create_job(&new)
            .await
            .map_err(|e| create_error(e, || vec![(0, new.spec.id.clone())]))?;
        self.after_create(new.spec, outcome).await
    }

    /// Many submissions with one store round trip; one answer per request, in order. A bad item
    /// is reported in its place and never holds back the good ones.
    pub async fn submit_batch(
        &self,
        reqs: Vec<JobRequest>,
    ) -> Result<Vec<Result<Accepted, SchedulerError>>, SchedulerError> {
        let now = now_ms();
        let mut answers: Vec<Option<Result<Accepted, SchedulerError>>> = Vec::new();
        let mut valid = Vec::new();
        let mut tenancy = None;
        for req in reqs {
            match self.accept(req, now, &mut tenancy, JobSpec::accept).await {
                Ok(spec) => {
                    valid.push(NewJob {
                        spec,
                        idempotency_key: None,
                        note: None,
                    });
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let outcomes = self.store.create_jobs(&valid).await.map_err(|e| {
            create_error(e, || {
                let places = answers.iter().enumerate().filter(|(_, a)| a.is_none());
                places
                    .zip(&valid)
                    .map(|((i, _), new)| (i, new.spec.id.clone()))
                    .collect()
            })
        })?;
        if outcomes.len() != valid.len() {
            return Err(StoreError::Corrupt(format!(
                "{} outcomes for {} created jobs",
                outcomes.len(),
                valid.len()
            ))
            .into());
        }
        let stored = valid.into_iter().zip(outcomes);
        let slots = answers.iter_mut().filter(|a| a.is_none());
        for (slot, (new, outcome)) in slots.zip(stored) {
            *slot = Some(match outcome {
                Ok(o) => self.after_create(new.spec, o).await,
                Err(e) => Err(create_error(e, || vec![(0, new.spec.id.clone())])),
            });
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// The spec of a valid request whose message to a worker fits the bus. The message is
    /// measured with an empty effective config: the config is added at dispatch, where a
    /// message it makes too large fails its job (see [`Scheduler::send_to_worker`]).
    /// `tenancy` caches the tenancy policy over a batch (read the first time a request needs it).
    async fn accept(
        &self,
        req: JobRequest,
        now: Millis,
        tenancy: &mut Option<Arc<Tenancy>>,
        spec_of: impl FnOnce(JobRequest, Millis) -> JobSpec,
    ) -> Result<JobSpec, SchedulerError> {
        let mut errors = req.validate(&self.settings.limits);
        if errors.is_empty() && Tenancy::concerns(&req) {
            let policy = match tenancy {
                Some(t) => t,
                None => tenancy.insert(self.tenancy().await?),
            };
            errors = policy.refusals(&req);
        }
        if !errors.is_empty() {
            return Err(SchedulerError::Invalid(errors));
        }
        let spec = spec_of(req, now);
        let size = JobMsg::new(&spec, "{}").encoded_len();
        let max = self.bus.max_payload();
        if size > max {
            return Err(SchedulerError::Invalid(vec![FieldError::new(
                "payload",
                format!(
                    "with its env and labels the job's message to a worker is {size} bytes; \
                     the bus carries at most {max} (its max_payload)"
                ),
            )]));
        }
        Ok(spec)
    }

    async fn after_create(
        &self,
        spec: JobSpec,
        outcome: CreateOutcome,
    ) -> Result<Accepted, SchedulerError> {
        match outcome {
            CreateOutcome::Created => {
                if !self.settings.record_dispatch_after.is_zero() {
                    self.created_here
                        .lock()
                        .insert(spec.id.clone(), std::time::Instant::now());
                }
                let accepted = Accepted {
                    job_id: spec.id.clone(),
                    trace_id: spec.trace_id.clone(),
                    created: true,
                };
                self.announce(spec, Clearance::None).await;
                Ok(accepted)
            }
            CreateOutcome::Exists { job_id } => {
                let trace_id = match self.store.get_job(&job_id).await? {
                    Some(j) => j.spec.trace_id,
                    None => spec.trace_id,
                };
                Ok(Accepted {
                    job_id,
                    trace_id,
                    created: false,
                })
            }
        }
    }

    /// Hands a stored job to this replica's scheduler, in a task of its own. The submitting
    /// replica schedules its own submissions: a hop through NATS to whichever replica would
    /// cost two JSON passes over the whole spec and a message per job, and buys nothing a load
    /// balancer in front of the replicas does not. Should this replica die first, the job is
    /// PENDING in the store and the reconciler announces it again.
    pub async fn announce(&self, spec: JobSpec, clearance: Clearance) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            this.schedule_boxed(spec, clearance).await;
            drop(permit);
        });
    }

    /// Takes submissions published on `sys.job.submit` (by another replica of an older version,
    /// or by a client on the bus) from the queue group until the bus closes. A submit is only a
    /// request to schedule a job the store holds: what runs is the stored spec, cleared as the
    /// stored job says (a human's approval is written on it), never the message's spec or
    /// clearance — anyone who can publish on the subject could write those.
    pub async fn run_submissions(self: Arc<Self>) {
        let subject = self.bus.subjects().submit();
        let mut sub = match self.bus.queue_subscribe(&subject, SCHEDULER_GROUP).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "scheduler could not subscribe to submissions");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            match serde_json::from_slice::<SubmitMsg>(&msg.payload) {
                Ok(m) => self.submitted_on_the_bus(m).await,
                Err(e) => tracing::warn!(error = %e, "dropping malformed submit message"),
            }
        }
    }

    async fn submitted_on_the_bus(&self, m: SubmitMsg) {
        let id = &m.job.id;
        if !m.clearance.is_none() {
            Rejection::Clearance.record("submit", id, "");
        }
        match self.store.get_job(id).await {
            Ok(Some(job)) if job.state == JobState::Pending => {
                let clearance = Clearance::of_stored(&job);
                self.announce(job.spec, clearance).await;
            }
            // Under way or done: nothing to schedule.
            Ok(Some(_)) => {}
            Ok(None) => Rejection::UnknownJob.record("submit", id, ""),
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "submit not read back; the reconciler schedules a stored job")
            }
        }
    }

    /// Keeps the registry from heartbeats and wakes waiting jobs when capacity appears.
    pub async fn run_heartbeats(self: Arc<Self>) {
        let subject = self.bus.subjects().heartbeat();
        let mut sub = match self.bus.subscribe(&subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "scheduler could not subscribe to heartbeats");
                return;
            }
        };
        let passes = passes::Passes::new(self.leases.clone());
        // The grants of the last config read: a store that cannot be read keeps them.
        let mut tenancy = Arc::new(Tenancy::default());
        while let Some(msg) = sub.next().await {
            let hb = match serde_json::from_slice::<HeartbeatMsg>(&msg.payload) {
                Ok(hb) => hb,
                Err(e) => {
                    tracing::debug!(error = %e, "ignoring malformed heartbeat");
                    continue;
                }
            };
            match passes.admit(hb) {
                Admission::Counted(hb) => {
                    match self.tenancy().await {
                        Ok(t) => tenancy = t,
                        Err(e) => {
                            tracing::debug!(error = %e, "tenancy not read; the last read stands")
                        }
                    }
                    if !tenancy.may_serve(&hb.worker_id, &hb.pool) {
                        Rejection::PoolNotGranted.record("heartbeat", "", &hb.worker_id);
                        if self.registry.forget(&hb.worker_id) {
                            tracing::warn!(worker_id = %hb.worker_id, pool = %hb.pool,
                                "worker forgotten: its pool is no longer granted to it");
                        }
                    } else if self.registry.observe(hb) {
                        self.capacity.notify_one();
                    }
                }
                Admission::Challenge { pass, refused } => {
                    if let Some(r) = refused {
                        r.record("heartbeat", "", &pass.worker_id);
                    }
                    let subject = self.bus.subjects().worker_pass(&pass.worker_id);
                    if let Err(e) = publish_json(self.bus.as_ref(), &subject, &pass).await {
                        tracing::debug!(worker_id = %pass.worker_id, error = %e, "pass not sent");
                    }
                }
                Admission::Dropped(why) => tracing::debug!(why, "ignoring a heartbeat"),
            }
        }
    }

    /// Retries waiting jobs whenever capacity may have appeared, and at least every 250 ms: as
    /// many as there are free slots (at least one, so a job for an idle pool is not starved by a
    /// queue head nobody can take), each in its own task.
    pub async fn run_wait_queue(self: Arc<Self>) {
        loop {
            let _ =
                tokio::time::timeout(Duration::from_millis(250), self.capacity.notified()).await;
            self.registry.expire();
            let budget = self.registry.free_slots().max(1);
            let (batch, overdue) = {
                let mut waiting = self.waiting.lock();
                (waiting.take(budget), waiting.overdue(256, Instant::now()))
            };
            for (id, reason) in overdue {
                match self.note_waiting(&id, &reason).await {
                    Ok(true) => {}
                    Ok(false) => self.waiting.lock().forget(&id),
                    Err(e) => {
                        tracing::debug!(job_id = %id, error = %e, "waiting reason not written")
                    }
                }
            }
            for (spec, clearance) in batch {
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.schedule_boxed(spec, clearance).await;
                    drop(permit);
                });
            }
        }
    }

    fn wake_waiters(&self) {
        if self.waiting.lock().len() > 0 {
            self.capacity.notify_one();
        }
    }

    /// [`Scheduler::schedule`] on the heap, for the tasks spawned per job. Its future is kilobytes
    /// (every await of the pass keeps its locals); held inline, the task would copy all of it
    /// when spawned and again when it finishes — 5% of `serve`'s CPU in `memcpy` under load
    /// (perf, 40,000 jobs). Boxed, the task holds a pointer.
    fn schedule_boxed(
        self: &Arc<Self>,
        spec: JobSpec,
        clearance: Clearance,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.schedule(spec, clearance))
    }

    /// One pass of SPEC §5 for one job. Never fails: every outcome is recorded on the job, or
    /// left for the reconciler when the store is unreachable.
    pub async fn schedule(self: &Arc<Self>, spec: JobSpec, clearance: Clearance) {
        let now = now_ms();
        if let Some(nb) = spec.not_before
            && nb > now
        {
            self.announce_later(spec, clearance, Duration::from_millis((nb - now) as u64));
            return;
        }
        if let Err(e) = self.try_schedule(spec, clearance, now).await {
            tracing::warn!(error = %e, "scheduling deferred to the reconciler");
        }
    }

    /// Publishes the job again after a delay (a back-off or a throttle). Should this replica die
    /// meanwhile, the job is PENDING with a recheck time, and the reconciler publishes it.
    fn announce_later(self: &Arc<Self>, spec: JobSpec, clearance: Clearance, delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.announce(spec, clearance).await;
        });
    }

    async fn try_schedule(
        self: &Arc<Self>,
        spec: JobSpec,
        clearance: Clearance,
        now: Millis,
    ) -> Result<(), SchedulerError> {
        // 1. Validate what came off the bus (the gateway validated the request already).
        if let Some(err) = placement::refusal(&spec, now) {
            return self.fail_now(&spec, err).await;
        }
        // 2. Effective config for (tenant, team, workflow, step).
        let effective = self.effective_config(&spec).await?;
        // 3. Safety, against the effective config.
        let (decision, reason) = if clearance == Clearance::Approved {
            ("APPROVED".to_string(), "approved by a human".to_string())
        } else if clearance == Clearance::Throttled {
            (
                "ALLOW".to_string(),
                "released after its throttle delay".to_string(),
            )
        } else {
            let verdict = self
                .safety
                .check(&spec, &effective.value, effective.system_policy.as_ref())
                .await;
            match verdict.decision {
                Decision::Allow => {}
                Decision::Deny => {
                    let mut t = Transition::to(JobState::Denied, now_ms()).note(&verdict.reason);
                    t.update.safety_decision = Some("DENY".into());
                    t.update.safety_reason = Some(verdict.reason);
                    return self.apply(&spec.id, &t).await.map(drop);
                }
                Decision::RequireHuman => {
                    let a = Annotation {
                        expect: JobState::Pending,
                        at: now_ms(),
                        reason: Some(format!("awaiting approval: {}", verdict.reason)),
                        update: JobUpdate {
                            safety_decision: Some("REQUIRE_HUMAN".into()),
                            safety_reason: Some(verdict.reason),
                            ..Default::default()
                        },
                        recheck_at: Some(PARKED),
                    };
                    self.store.annotate(&spec.id, &a).await?;
                    return Ok(());
                }
                Decision::Throttle { delay_ms } => {
                    let a = Annotation {
                        expect: JobState::Pending,
                        at: now_ms(),
                        reason: Some(format!("throttled for {delay_ms} ms: {}", verdict.reason)),
                        update: JobUpdate {
                            safety_decision: Some("THROTTLE".into()),
                            safety_reason: Some(verdict.reason),
                            ..Default::default()
                        },
                        recheck_at: Some(now_ms() + delay_ms as i64),
                    };
                    if self.store.annotate(&spec.id, &a).await? {
                        self.announce_later(
                            spec,
                            Clearance::Throttled,
                            Duration::from_millis(delay_ms),
                        );
                    }
                    return Ok(());
                }
            }
            ("ALLOW".to_string(), verdict.reason)
        };
        // 4. The strategy picks among the eligible workers — of the pools the tenant is granted.
        let target = match Target::of(&spec, &effective.value, &effective.tenancy) {
            Ok(t) => t,
            Err(err) => return self.fail_now(&spec, err).await,
        };
        let candidates = self.registry.eligible_workers(&target.placement);
        // A plugin picks on the plugin threads, so that however long it takes, this thread goes
        // on serving HTTP, results and heartbeats meanwhile.
        let placed = self
            .plugins
            .place(effective.clone(), spec, candidates)
            .await
            .map_err(|e| SchedulerError::Conflict(e.to_string()))?;
        let (spec, candidates) = (placed.spec, placed.candidates);
        let pick = match placed.pick {
            Ok(p) => p,
            Err(e) => {
                let strategy = self.plugins.strategy_for(&effective.value);
                tracing::warn!(strategy = strategy.name(), error = %e, "strategy failed");
                Pick::NoWorker(format!("strategy {} failed: {e}", strategy.name()))
            }
        };
        let worker = match pick {
            Pick::Worker(i) if let Some(picked) = candidates.get(i) => {
                // Reserve the slot before awaiting the store, so the jobs being scheduled
                // concurrently see it taken.
                let w = picked.worker_id.clone();
                self.hold_slot(&spec.id, &w);
                w
            }
            Pick::Worker(i) => {
                tracing::warn!(index = i, "strategy returned an out-of-range candidate");
                return self
                    .wait_for_capacity(
                        spec,
                        clearance,
                        "strategy returned no valid worker".into(),
                        false,
                    )
                    .await;
            }
            Pick::NoWorker(why) => {
                let reason = Target::of(&spec, &effective.value, &effective.tenancy)
                    .map_or(why.clone(), |t| t.waiting_reason(&why));
                let busy = !candidates.is_empty();
                return self.wait_for_capacity(spec, clearance, reason, busy).await;
            }
        };
        // 5. Record the dispatch (with its lease), then hand the job to that worker.
        let lease = self.leases.mint(&spec.id, spec.attempt, &worker, now_ms());
        let update = JobUpdate {
            worker_id: Some(worker.to_string()),
            worker_instance: self.registry.instance(&worker),
            safety_decision: Some(decision),
            safety_reason: Some(reason),
            effective_config: Some(effective.value.clone()),
            lease: Some(lease.clone()),
            ..Default::default()
        };
        if !self.dispatch_lazily(&spec.id, update.clone()) {
            let mut t = Transition::to(JobState::Dispatched, now_ms());
            t.update = update;
            let applied = self.apply(&spec.id, &t).await;
            if !matches!(applied, Ok(Some(TransitionOutcome::Applied { .. }))) {
                // Already dispatched by another replica, cancelled meanwhile, or not stored:
                // give the reserved slot back.
                self.release_slot(&spec.id);
                return applied.map(drop);
            }
        }
        self.waiting.lock().forget(&spec.id);
        self.send_to_worker(&worker, &spec, &effective.json, Some(lease))
            .await;
        Ok(())
    }

    /// Takes the first dispatch of a job this replica created moments ago without writing it
    /// first: the job goes to its worker now and its DISPATCHED is written later (after
    /// `record_dispatch_after`, or with its start or result). False when the dispatch must be
    /// written before the job is sent.
    ///
    /// The check-and-set of PENDING → DISPATCHED is what stops two replicas dispatching one
    /// job. Skipping it is safe only for a job no one else can be scheduling: one this replica
    /// created (a job is created once in the whole cluster), dispatched for the first time,
    /// while it is younger than `lazy_dispatch_max_age` — the reconciler announces a PENDING
    /// job again only after `pending_grace`, at least twice that. Retries, re-announced and
    /// bus-submitted jobs all take the written path.
    fn dispatch_lazily(&self, id: &str, update: JobUpdate) -> bool {
        let Some(created) = self.created_here.lock().remove(id) else {
            return false;
        };
        if created.elapsed() >= self.settings.lazy_dispatch_max_age {
            return false;
        }
        let dispatch = Dispatch {
            at: now_ms(),
            since: std::time::Instant::now(),
            update,
        };
        self.unrecorded.lock().insert(id.to_string(), dispatch);
        true
    }

    /// Counts a job against its worker's capacity in this replica's registry.
    fn hold_slot(&self, job_id: &str, worker: &str) {
        if let Some(previous) = self.slots.hold(job_id, worker, Instant::now()) {
            self.registry.note_finished(&previous);
        }
        self.registry.note_dispatched(worker);
    }

    /// Gives back the worker slot a job holds, if this replica dispatched it: when its result
    /// arrives here, when its terminal event arrives from the replica that applied its result
    /// (see [`Scheduler::run_remote_events`]), or when its dispatch was refused. A replica
    /// counts only its own dispatches, so a result handled by another replica neither frees a
    /// slot here twice nor one this replica never took; heartbeats correct the rest.
    pub(crate) fn release_slot(&self, job_id: &str) -> bool {
        match self.slots.release(job_id) {
            Some(worker) => {
                self.registry.note_finished(&worker);
                true
            }
            None => false,
        }
    }

    /// The live job events: this replica's as it records them, other replicas' as the bus
    /// brings them (see [`Scheduler::run_remote_events`]).
    pub fn live_events(&self) -> &LiveEvents {
        &self.live
    }

    /// Takes the terminal job events other replicas recorded, until the bus closes: frees the
    /// slots of the jobs among them this replica dispatched, and passes them on to this
    /// replica's live-stream clients. Events this replica recorded are skipped: it did both
    /// when it recorded them (see [`Scheduler::publish_event`]). Also forgets slots held far
    /// longer than any job's result can take to come (their worker's heartbeats have long
    /// corrected its count).
    pub async fn run_remote_events(self: Arc<Self>) {
        const FORGET_AFTER: Duration = Duration::from_secs(600);
        let mut swept = std::time::Instant::now();
        let mut events = std::pin::pin!(job_events(self.bus.clone(), Feed::All, None));
        while let Some(parsed) = events.next().await {
            let mut freed = false;
            for ev in parsed {
                if ev.replica.as_deref() == Some(&*self.replica) {
                    continue;
                }
                if ev.state.is_terminal() {
                    freed |= self.release_slot(&ev.job_id);
                }
                if self.live.is_watched()
                    && let Ok(body) = serde_json::to_vec(&ev)
                {
                    self.live
                        .offer(ev.state, ev.tenant_id.as_deref(), &bytes::Bytes::from(body));
                }
            }
            if freed {
                self.wake_waiters();
            }
            if swept.elapsed() >= FORGET_AFTER / 10 {
                self.slots.sweep(FORGET_AFTER, Instant::now());
                swept = std::time::Instant::now();
            }
        }
    }

    /// The dispatch of a job not written yet, for a transition that writes it on the way.
    pub(crate) fn take_unrecorded(&self, id: &str) -> Option<Dispatch> {
        self.unrecorded.lock().remove(id)
    }

    /// Gives back a dispatch whose transition could not be stored, to be written later.
    pub(crate) fn keep_unrecorded(&self, id: &str, dispatch: Dispatch) {
        self.unrecorded.lock().insert(id.to_string(), dispatch);
    }

    /// Writes the DISPATCHED of jobs whose start or result did not come within
    /// `record_dispatch_after`, until the scheduler is dropped. A write the store refuses
    /// because the job moved on (cancelled meanwhile) is dropped; one that fails (the store
    /// is down) is tried again on the next tick.
    pub async fn run_dispatch_records(self: Arc<Self>) {
        let after = self.settings.record_dispatch_after;
        if after.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval((after / 2).max(Duration::from_millis(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_age = self.settings.lazy_dispatch_max_age;
        let mut pruned = std::time::Instant::now();
        loop {
            tick.tick().await;
            let _recording = self.recording.lock().await;
            // Jobs that never reached a worker in time: once per `max_age`, so the map (a burst
            // may hold tens of thousands) is walked rarely and holds at most two ages' worth.
            if pruned.elapsed() >= max_age {
                self.created_here
                    .lock()
                    .retain(|_, created| created.elapsed() < max_age);
                pruned = std::time::Instant::now();
            }
            let due: Vec<(String, Dispatch)> = {
                let mut map = self.unrecorded.lock();
                let ids: Vec<String> = map
                    .iter()
                    .filter(|(_, d)| d.since.elapsed() >= after)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|id| map.remove(&id).map(|d| (id, d)))
                    .collect()
            };
            self.write_dispatches(due).await;
        }
    }

    /// Writes the DISPATCHED of each dispatch; one the store cannot take now is kept for later.
    async fn write_dispatches(&self, due: Vec<(String, Dispatch)>) {
        let writes = due.into_iter().map(|(id, d)| async move {
            let mut t = Transition::to(JobState::Dispatched, d.at);
            t.update = d.update.clone();
            if let Err(e) = self.apply(&id, &t).await {
                tracing::debug!(job_id = %id, error = %e, "dispatch not written yet");
                self.keep_unrecorded(&id, d);
            }
        });
        futures::future::join_all(writes).await;
    }

    /// The tenancy policy in force (system config `tenancy`).
    async fn tenancy(&self) -> Result<Arc<Tenancy>, SchedulerError> {
        Ok(self.config.tenancy().await?)
    }

    /// The effective config (SPEC §8) of a job's (tenant, team, workflow, step).
    async fn effective_config(&self, spec: &JobSpec) -> Result<Arc<Effective>, SchedulerError> {
        let target = ConfigTarget {
            org_id: Some(spec.tenant_id.clone()),
            team_id: spec.team_id.clone(),
            workflow_id: spec.workflow_id.clone(),
            step_id: spec.step_id.clone(),
        };
        Ok(self.config.effective(&target).await?)
    }

    /// Sends a dispatched job to its worker under the dispatch's lease (also used by the
    /// reconciler to re-deliver; a job recorded without a lease, by an older host, gets a new
    /// one). A job whose message the bus cannot carry (its effective config made it too large)
    /// fails with the reason: sent anyway, it would wait DISPATCHED for a worker that never
    /// gets it.
    pub async fn send_to_worker(
        &self,
        worker: &str,
        spec: &JobSpec,
        effective_json: &str,
        lease: Option<String>,
    ) {
        let mut msg = JobMsg::new(spec, effective_json);
        msg.lease = Some(
            lease.unwrap_or_else(|| self.leases.mint(&spec.id, spec.attempt, worker, now_ms())),
        );
        // Jobs for one worker that leave together go as one batch, to workers that take them.
        let batch = self
            .registry
            .accepts_batches(worker)
            .then(|| self.bus.subjects().worker_batch(worker).into());
        match serde_json::to_vec(&msg) {
            Ok(body) if body.len() > self.bus.max_payload() => {
                self.take_unrecorded(&spec.id);
                let err = JobError::new(
                    "message_too_large",
                    format!(
                        "with its effective config the job's message to its worker is {} bytes; \
                         the bus carries at most {} (its max_payload)",
                        body.len(),
                        self.bus.max_payload()
                    ),
                );
                if let Err(e) = self.fail_now(spec, err).await {
                    tracing::warn!(job_id = %spec.id, error = %e, "could not fail a job too large for the bus");
                }
            }
            Ok(body) => self.dispatches.send(
                self.bus.subjects().worker_jobs(worker).into(),
                batch,
                body.into(),
            ),
            Err(e) => {
                tracing::warn!(job_id = %spec.id, error = %e, "could not send job to worker; the reconciler re-delivers")
            }
        }
    }

    /// Queues a job until capacity appears. `busy`: eligible workers exist but all are full,
    /// so the job only waits its turn (see [`WaitQueue`] for when its reason is written).
    async fn wait_for_capacity(
        &self,
        spec: JobSpec,
        clearance: Clearance,
        reason: String,
        busy: bool,
    ) -> Result<(), SchedulerError> {
        let write_now =
            self.waiting
                .lock()
                .reason_to_write(&spec.id, &reason, busy, Instant::now());
        if write_now {
            if !self.note_waiting(&spec.id, &reason).await? {
                // No longer PENDING (cancelled, timed out): nothing to wait for.
                self.waiting.lock().forget(&spec.id);
                return Ok(());
            }
            self.waiting.lock().reason_written(&spec.id, reason);
        }
        self.waiting.lock().push(spec, clearance);
        Ok(())
    }

    /// Writes why a PENDING job waits; false when it is no longer PENDING.
    async fn note_waiting(&self, id: &str, reason: &str) -> Result<bool, SchedulerError> {
        let a = Annotation {
            expect: JobState::Pending,
            at: now_ms(),
            reason: Some(reason.to_string()),
            update: JobUpdate::default(),
            recheck_at: None,
        };
        Ok(self.store.annotate(id, &a).await?)
    }

    /// Applies a transition, treating "someone else moved it" as a quiet no-op.
    async fn apply(
        &self,
        id: &str,
        t: &Transition,
    ) -> Result<Option<TransitionOutcome>, SchedulerError> {
        match self.store.transition(id, t).await {
            Ok(o) => {
                if t.to.is_terminal()
                    && let TransitionOutcome::Applied {
                        run_id,
                        tenant_id,
                        created_at,
                        ..
                    } = &o
                {
                    self.job_metrics.ended(t.to, *created_at, t.at);
                    self.publish_event(id, t.to, t.at, run_id.clone(), tenant_id)
                        .await;
                }
                Ok(Some(o))
            }
            Err(StoreError::IllegalTransition { from, to }) => {
                tracing::debug!(job_id = id, %from, %to, "transition skipped: the job moved on");
                Ok(None)
            }
            Err(StoreError::NotFound(_)) => {
                tracing::warn!(job_id = id, "transition of a job that is not stored");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the completion feed that a job ended: this replica's live-stream clients at once,
    /// everyone else through the bus.
    async fn publish_event(
        &self,
        id: &str,
        state: JobState,
        at: Millis,
        run_id: Option<String>,
        tenant_id: &str,
    ) {
        // Its slot, if this replica dispatched it (a result applied here has given it back
        // already; a cancel or a timeout recorded here gives it back now).
        if self.release_slot(id) {
            self.wake_waiters();
        }
        let msg = JobEventMsg {
            v: VERSION,
            job_id: id.to_string(),
            state,
            at,
            run_id,
            tenant_id: Some(tenant_id.to_string()),
            replica: Some(self.replica.to_string()),
        };
        let Ok(body) = serde_json::to_vec(&msg) else {
            return;
        };
        let body = bytes::Bytes::from(body);
        self.live.offer(state, Some(tenant_id), &body);
        if msg.run_id.is_some() {
            // The workflow engine hears its steps' jobs on a feed of their own.
            self.events.send(
                self.subjects.step_events.clone(),
                Some(self.subjects.step_events_batch.clone()),
                body.clone(),
            );
        }
        self.events.send(
            self.subjects.job_events.clone(),
            Some(self.subjects.job_events_batch.clone()),
            body,
        );
    }

    /// Cancels a job wherever it is. A terminal job is answered as it is, unchanged.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job, SchedulerError> {
        let t = Transition::to(JobState::Cancelled, now_ms()).note(format!("cancelled: {reason}"));
        self.apply(id, &t).await?;
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(id.into()))?;
        if job.state == JobState::Cancelled {
            self.waiting.lock().forget(id);
            self.send_cancel(id, reason).await;
        }
        Ok(job)
    }

    pub async fn send_cancel(&self, id: &str, reason: &str) {
        let msg = CancelMsg {
            v: VERSION,
            job_id: id.to_string(),
            reason: reason.to_string(),
        };
        let subject = self.bus.subjects().cancel();
        if let Err(e) = publish_json(self.bus.as_ref(), &subject, &msg).await {
            tracing::warn!(job_id = id, error = %e, "could not send cancel");
        }
    }

    /// Releases (or denies) a job held for human approval.
    pub async fn approve(
        &self,
        id: &str,
        approved: bool,
        comment: Option<String>,
    ) -> Result<Job, SchedulerError> {
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(id.into()))?;
        if job.state != JobState::Pending || job.safety_decision.as_deref() != Some("REQUIRE_HUMAN")
        {
            return Err(SchedulerError::Conflict(format!(
                "job `{id}` is {} and not awaiting approval",
                job.state
            )));
        }
        let comment = comment.unwrap_or_default();
        if approved {
            let a = Annotation {
                expect: JobState::Pending,
                at: now_ms(),
                reason: Some(format!("approved {comment}").trim().to_string()),
                update: JobUpdate {
                    safety_decision: Some("APPROVED".into()),
                    safety_reason: Some(comment),
                    ..Default::default()
                },
                recheck_at: Some(now_ms()),
            };
            self.store.annotate(id, &a).await?;
            self.announce(job.spec.clone(), Clearance::Approved).await;
        } else {
            let mut t = Transition::to(JobState::Denied, now_ms())
                .note(format!("rejected by a human {comment}").trim().to_string());
            t.update.safety_decision = Some("DENY".into());
            t.update.safety_reason =
                Some(format!("rejected by a human {comment}").trim().to_string());
            self.apply(id, &t).await?;
        }
        Ok(self.store.get_job(id).await?.unwrap_or(job))
    }
}
