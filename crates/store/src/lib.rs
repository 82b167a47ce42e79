//! The store: everything Coretex keeps — jobs with their indexes and history, dead letters,
//! config documents, singleton locks, uploaded plugins, workflows and their runs — behind one
//! trait per role, with two backends.
//!
//! The roles are [`JobStore`], [`DeadLetters`], [`ConfigStore`], [`Locks`], [`PluginBlobs`] and
//! [`WorkflowStore`]; [`Store`] is all of them at once, what a backend implements and what the
//! composition point (`serve`) holds. A service that uses one role is handed that role only
//! (the config service an `Arc<dyn ConfigStore>`, the leader election an `Arc<dyn Locks>`), so
//! its signature says what it may touch. The contracts speak of jobs, recheck times and lists,
//! not of any backend's data structures: how Redis keeps them (sorted-set scores, key names)
//! is `redis.rs`'s alone.
//!
//! This is the `coretex-store` crate: it depends on the domain (`coretex-core`) and nothing of
//! the host's; the host re-exports it as `coretex::store`.
//!
//! * [`redis::RedisStore`]: the real one. Every job state change is one Lua script (one round
//!   trip, atomic, safe on a multiplexed connection); the key layout lives in `redis.rs`.
//! * [`memory::MemoryStore`]: the embedded default, with the same semantics, so `serve` runs with
//!   nothing installed. One conformance suite (`tests/store_conformance.rs`) runs against both.
//!
//! Both answer list queries from server-side indexes ordered by `(updated_at, id)` descending, with
//! an opaque cursor holding the last `(score, id)` returned: members that tie on the score are
//! ordered by id, so a page boundary inside a tie neither skips nor repeats a job.

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

pub mod memory;
pub mod redis;
pub mod shards;

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

// The domain modules, under the paths the backends name them by (`crate::job`, `crate::ids`, …).
use coretex_core::{ids, job, time, workflow};

use crate::job::{Job, JobError, JobSpec, JobState};
use crate::time::Millis;
use crate::workflow::definition::{Run, Status, Workflow};

pub type SharedStore = Arc<dyn Store>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("no such job `{0}`")]
    NotFound(String),
    #[error("illegal transition {from} -> {to}")]
    IllegalTransition { from: JobState, to: JobState },
    #[error("revision conflict: the current revision is {current}")]
    Conflict { current: u64 },
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A job to create in state PENDING.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub spec: JobSpec,
    /// Client idempotency key (scoped to the tenant): a second create with the same key answers
    /// the first job's id and creates nothing.
    pub idempotency_key: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// Nothing was written: the id (or the idempotency key) already names this job.
    Exists {
        job_id: String,
    },
}

/// Fields a transition (or annotation) may set alongside the state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    pub worker_id: Option<String>,
    pub worker_instance: Option<String>,
    pub result: Option<Value>,
    pub error: Option<JobError>,
    pub safety_decision: Option<String>,
    pub safety_reason: Option<String>,
    pub execution_ms: Option<u64>,
    /// The effective config the job was dispatched with.
    pub effective_config: Option<Value>,
    /// The lease of the dispatch (see the host's `bus::auth`): what the worker's `started` and
    /// result must carry.
    pub lease: Option<String>,
}

impl JobUpdate {
    /// Takes each field `self` leaves unset from `earlier` (fields set by an earlier step of the
    /// same walk, such as the dispatch's worker and config under a result).
    pub fn or(mut self, earlier: JobUpdate) -> JobUpdate {
        self.worker_id = self.worker_id.or(earlier.worker_id);
        self.worker_instance = self.worker_instance.or(earlier.worker_instance);
        self.result = self.result.or(earlier.result);
        self.error = self.error.or(earlier.error);
        self.safety_decision = self.safety_decision.or(earlier.safety_decision);
        self.safety_reason = self.safety_reason.or(earlier.safety_reason);
        self.execution_ms = self.execution_ms.or(earlier.execution_ms);
        self.effective_config = self.effective_config.or(earlier.effective_config);
        self.lease = self.lease.or(earlier.lease);
        self
    }
}

/// Who asks for a transition when a worker reports (its `started` or result): the worker and
/// the lease its message carried, which the host has verified already (see
/// the host's `bus::auth`). The store applies the transition only while the job's recorded
/// assignment admits the claim ([`Claim::admits`]), in the same atomic step as the transition,
/// and otherwise answers [`TransitionOutcome::OtherWorker`] and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub worker_id: String,
    pub lease: String,
}

impl Claim {
    /// Whether a job given to `worker_id` under `lease` (as recorded) takes this claim: a job
    /// that records a lease, only from that lease and its worker; one that records a worker
    /// and no lease (dispatched by a host older than leases), only from that worker; one that
    /// records neither (PENDING: its dispatch is not written yet, or the replica that sent it
    /// died first), from any claim — the host verified its lease, so it did send the job to
    /// this worker, and the transition writes that assignment. The Redis transition script
    /// spells the same rule in Lua.
    pub fn admits(&self, worker_id: Option<&str>, lease: Option<&str>) -> bool {
        let same_worker = worker_id.is_none_or(|w| w == self.worker_id);
        match lease {
            Some(l) => l == self.lease && same_worker,
            None => same_worker,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Transition {
    pub to: JobState,
    pub at: Millis,
    /// States to pass through on the way, in order, each with the time it was entered (e.g.
    /// DISPATCHED and RUNNING on the way to SUCCEEDED when a job's dispatch, its `started` and
    /// its result are written together). The walk begins after the job's current state when
    /// that is on the path, else at the path's start; a walk the table does not allow falls
    /// back to the direct `from → to`.
    pub via: Vec<(JobState, Millis)>,
    pub note: Option<String>,
    pub update: JobUpdate,
    /// Written in the same atomic step: a job is never FAILED without its dead letter.
    pub dead_letter: Option<DlqEntry>,
    /// When a worker's report asks for the transition: who, checked against the job's
    /// assignment in the same atomic step.
    pub claim: Option<Claim>,
}

impl Transition {
    pub fn to(to: JobState, at: Millis) -> Self {
        Transition {
            to,
            at,
            via: Vec::new(),
            note: None,
            update: JobUpdate::default(),
            dead_letter: None,
            claim: None,
        }
    }

    /// Passes through `state` (entered at `at`) after the states named so far.
    pub fn through(mut self, state: JobState, at: Millis) -> Self {
        self.via.push((state, at));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Applies only if the job's assignment admits `claim` (see [`Claim::admits`]).
    pub fn claimed_by(mut self, claim: Option<Claim>) -> Self {
        self.claim = claim;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    Applied {
        from: JobState,
        /// The workflow run the job is a step of, so a terminal event can say so without the
        /// engine reading the job back.
        run_id: Option<String>,
        /// The job's tenant, so that its event can say whose it is.
        tenant_id: String,
        /// When the job was submitted, so that its end-to-end latency is measured without
        /// reading it back (see `job_metrics`).
        created_at: Millis,
    },
    /// The job was already in the target state: nothing changed.
    Unchanged,
    /// The transition's [`Claim`] is not the job's assignment (another worker's, or another
    /// dispatch's): nothing changed.
    OtherWorker,
}

/// A job and the worker it was given to (see [`JobStore::holdings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub job_id: String,
    pub worker_id: Option<String>,
    pub worker_instance: Option<String>,
    /// The lease of the job's dispatch.
    pub lease: Option<String>,
    /// The job's `heartbeat_timeout_sec`, in ms (none: its progress is not checked).
    pub heartbeat_timeout_ms: Option<u64>,
    /// When it entered the state (or its recheck time, when an annotation set one since).
    pub since: crate::time::Millis,
}

/// A change that keeps the state: a note on why a job waits, and when to look at it again.
#[derive(Debug, Clone)]
pub struct Annotation {
    /// Applied only while the job is in this state.
    pub expect: JobState,
    pub at: Millis,
    /// Recorded (and added to the history when it differs from the last one).
    pub reason: Option<String>,
    pub update: JobUpdate,
    /// When the reconciler looks at the job again: once this time is past by its grace period
    /// ([`JobStore::jobs_due`]). [`PARKED`] takes it out of every such look (e.g. a job awaiting
    /// approval, which an event moves, not a clock).
    pub recheck_at: Option<Millis>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub topic: Option<String>,
    pub tenant: Option<String>,
    pub team: Option<String>,
    pub trace_id: Option<String>,
    pub updated_after: Option<Millis>,
    pub updated_before: Option<Millis>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    pub tenant: Option<String>,
    pub topic: Option<String>,
    pub status: Option<JobState>,
}

/// A position in an index: the last `(score, id)` a page returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub score: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}", self.score, self.id))
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (score, id) = raw.split_once(':')?;
        Some(Cursor {
            score: score.parse().ok()?,
            id: id.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A dead letter: how a job ended and the whole request, so a retry replays it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqEntry {
    pub job_id: String,
    pub topic: String,
    pub tenant_id: String,
    pub status: JobState,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub attempts: u32,
    #[serde(with = "time::rfc3339")]
    pub created_at: Millis,
    /// The original job spec: payload, labels, env, priority, budget, trace and workflow ids.
    pub request: JobSpec,
}

/// A config scope's document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDoc {
    pub data: Value,
    pub revision: u64,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Millis,
}

/// A plugin uploaded through the API, kept so that every replica loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlugin {
    pub name: String,
    /// SHA-256 of `bytes`, hex.
    pub hash: String,
    pub bytes: Vec<u8>,
    pub updated_at: Millis,
}

/// A stored plugin without its bytes: enough to see whether a replica runs the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMeta {
    pub name: String,
    pub hash: String,
    pub updated_at: Millis,
}

/// What every handle on the store can say, whatever its role: which backend answers, and
/// whether it is reachable.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which backend this is, for status and logs.
    fn backend(&self) -> &'static str;
    async fn ping(&self) -> StoreResult<()>;
}

/// Jobs: their records, atomic transitions and annotations, the lists the API pages through,
/// and the queries the reconciler walks (due rechecks, holdings, deadlines).
#[async_trait]
pub trait JobStore: Backend {
    async fn create_job(&self, job: &NewJob) -> StoreResult<CreateOutcome>;
    /// Many creates in one round trip; one outcome per job, in order.
    async fn create_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<CreateOutcome>>>;
    async fn get_job(&self, id: &str) -> StoreResult<Option<Job>>;
    async fn get_jobs(&self, ids: &[String]) -> StoreResult<Vec<Option<Job>>>;
    /// Check-and-set of the state with its indexes, fields, history and (optionally) a dead
    /// letter, atomically. An illegal move is an error naming both states and changes nothing.
    async fn transition(&self, id: &str, t: &Transition) -> StoreResult<TransitionOutcome>;
    /// Returns false (and changes nothing) when the job is not in `a.expect`.
    async fn annotate(&self, id: &str, a: &Annotation) -> StoreResult<bool>;
    async fn list_jobs(&self, filter: &JobFilter, page: &PageRequest) -> StoreResult<Page<Job>>;
    /// How many jobs are in each of `states` now, in order. Counts are of live jobs: a
    /// terminal state counts 0 (finished jobs are listed, not counted, and on Redis they are in
    /// no state index of their own). The same holds for `jobs_due` and `holdings`, which
    /// answer nothing for a terminal state.
    async fn count_jobs(&self, states: &[JobState]) -> StoreResult<Vec<u64>>;
    /// Ids in `state` whose recheck time (when they entered the state, or the
    /// [`Annotation::recheck_at`] set since) is ≤ `before`, oldest first.
    async fn jobs_due(
        &self,
        state: JobState,
        before: Millis,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
    /// Up to `limit` jobs in `state` after `after` (newest first), each with the worker it was
    /// given to, and the position to go on from (`None` once every such job was seen): how the
    /// reconciler walks every DISPATCHED and RUNNING job for lost workers.
    async fn holdings(
        &self,
        state: JobState,
        after: Option<&Cursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Holding>, Option<Cursor>)>;
    /// Non-terminal jobs whose deadline is ≤ `now`, earliest first.
    async fn deadlines_due(&self, now: Millis, limit: usize) -> StoreResult<Vec<String>>;
    /// Forgets, in the lists and queries above, the jobs last listed before `before` that
    /// expired (a job expires a TTL after it finished; a live one never does, however old);
    /// answers how many entries went.
    async fn prune_indexes(&self, before: Millis) -> StoreResult<u64>;
}

/// Dead letters: written with a job's failure ([`Transition::dead_letter`]), read, paged and
/// removed here.
#[async_trait]
pub trait DeadLetters: Backend {
    async fn dlq_get(&self, job_id: &str) -> StoreResult<Option<DlqEntry>>;
    async fn dlq_list(&self, filter: &DlqFilter, page: &PageRequest)
    -> StoreResult<Page<DlqEntry>>;
    async fn dlq_delete(&self, job_id: &str) -> StoreResult<bool>;
}

/// Config documents by scope key, each with a revision for optimistic concurrency.
#[async_trait]
pub trait ConfigStore: Backend {
    async fn config_get(&self, keys: &[String]) -> StoreResult<Vec<Option<ConfigDoc>>>;
    /// Replaces the document; with `if_match`, only when the current revision equals it (a
    /// missing document has revision 0).
    async fn config_put(
        &self,
        key: &str,
        data: &Value,
        if_match: Option<u64>,
        now: Millis,
    ) -> StoreResult<ConfigDoc>;
    async fn config_delete(&self, key: &str, if_match: Option<u64>) -> StoreResult<bool>;
    /// The keys of the stored config documents that start with `prefix`, after `after` (when
    /// given), in byte order, at most `limit`.
    async fn config_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
}

/// What the host replicas agree on through the store: singleton locks (who leads the
/// reconciler, the workflow tick) and the secret they share.
#[async_trait]
pub trait Locks: Backend {
    /// Takes the lock, or renews it when `owner` holds it already.
    async fn lock_acquire(&self, name: &str, owner: &str, ttl_ms: u64) -> StoreResult<bool>;
    /// Releases the lock only if `owner` holds it.
    async fn lock_release(&self, name: &str, owner: &str) -> StoreResult<bool>;
    /// The secret every host replica shares: the key of the bus leases (the host's `bus::auth`).
    /// The first replica to ask makes it (32 random bytes), atomically: every replica of the
    /// deployment gets the same one, for good.
    async fn shared_secret(&self) -> StoreResult<Vec<u8>>;
}

/// Plugins uploaded through the API, kept so that every replica loads the same bytes.
#[async_trait]
pub trait PluginBlobs: Backend {
    /// Stores (or replaces) an uploaded plugin.
    async fn plugin_put(
        &self,
        name: &str,
        bytes: &[u8],
        hash: &str,
        now: Millis,
    ) -> StoreResult<()>;
    async fn plugin_get(&self, name: &str) -> StoreResult<Option<StoredPlugin>>;
    /// Every stored plugin, by name.
    async fn plugin_list(&self) -> StoreResult<Vec<PluginMeta>>;
    async fn plugin_delete(&self, name: &str) -> StoreResult<bool>;
}

/// Workflow definitions (versioned) and their runs.
#[async_trait]
pub trait WorkflowStore: Backend {
    /// Saves version `wf.version` of a workflow (and makes it the latest) only when the latest
    /// version ever stored is `wf.version - 1` (0: none) and the workflow is live for an update
    /// (`create` false) or not live — never created, or deleted — for a create; else `Conflict`
    /// with the latest version. A version once written never changes: runs follow the version
    /// they started with, and a workflow deleted and created again continues its numbering.
    async fn workflow_put(&self, wf: &Workflow, create: bool) -> StoreResult<()>;
    /// The latest version ever stored under `id` and whether the workflow is live (`None`: no
    /// version ever).
    async fn workflow_head(&self, id: &str) -> StoreResult<Option<WorkflowHead>>;
    /// The latest version of a live workflow, or the version asked for (live or not).
    async fn workflow_get(&self, id: &str, version: Option<u64>) -> StoreResult<Option<Workflow>>;
    /// The latest version of every live workflow (of one org), by id.
    async fn workflow_list(
        &self,
        org: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Workflow>>;
    /// Removes the workflow from the list and `workflow_get(id, None)`; the stored versions stay
    /// for the runs still following them.
    async fn workflow_delete(&self, id: &str) -> StoreResult<bool>;

    /// Saves a run when the stored revision is `run.revision` (0: a new run), as revision + 1,
    /// listing it under its new status in the same atomic step; returns the new revision.
    /// A run saved finished expires `job_ttl_ms` later: it lives as long as its steps' jobs.
    async fn run_put(&self, run: &Run) -> StoreResult<u64>;
    /// Forgets, in the run lists, the runs that expired; returns how many went.
    async fn run_prune_indexes(&self) -> StoreResult<u64>;
    async fn run_get(&self, id: &str) -> StoreResult<Option<Run>>;
    /// Runs newest first (by `started_at`, ties by id), filtered by workflow, org or status.
    async fn run_list(&self, filter: &RunFilter, page: &PageRequest) -> StoreResult<Page<Run>>;
}

/// Every role at once: what a backend is, and what the composition point holds
/// ([`SharedStore`]). Implemented for anything that implements all the roles; a service that
/// needs one role takes that narrow handle (`Arc<dyn ConfigStore>`, `&dyn JobStore`), which an
/// `Arc<dyn Store>` coerces to.
pub trait Store:
    JobStore + DeadLetters + ConfigStore + Locks + PluginBlobs + WorkflowStore
{
}

impl<T> Store for T where
    T: JobStore + DeadLetters + ConfigStore + Locks + PluginBlobs + WorkflowStore + ?Sized
{
}

/// Where a workflow's versions stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkflowHead {
    /// The latest version ever stored (a delete keeps it).
    pub latest: u64,
    /// Whether the workflow exists now (not deleted).
    pub live: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub workflow_id: Option<String>,
    /// The runs of one org (tenant) only.
    pub org: Option<String>,
    pub status: Option<Status>,
}

/// The run index a filter is answered from (the same in both backends): the most selective
/// one. An org's runs come from its own index, so a page's cursor never holds another org's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RunIndex<'a> {
    Workflow(&'a str),
    Org(&'a str),
    Status(Status),
    All,
}

impl<'a> RunIndex<'a> {
    pub(crate) fn of(filter: &'a RunFilter) -> Self {
        match (&filter.workflow_id, &filter.org, filter.status) {
            (Some(w), _, _) => RunIndex::Workflow(w),
            (None, Some(o), _) => RunIndex::Org(o),
            (None, None, Some(s)) => RunIndex::Status(s),
            (None, None, None) => RunIndex::All,
        }
    }
}

/// Workflows are listed by id: the cursor holds the last id.
pub(crate) fn workflow_cursor(id: &str) -> String {
    Cursor {
        score: 0,
        id: id.to_string(),
    }
    .encode()
}

impl RunFilter {
    pub fn matches(&self, run: &Run) -> bool {
        self.workflow_id
            .as_deref()
            .is_none_or(|w| w == run.workflow_id)
            && self.org.as_deref().is_none_or(|o| o == run.org_id)
            && self.status.is_none_or(|s| s == run.status)
    }
}

/// Settings shared by both backends.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a job record (and its history) lives after it finished (a live job never
    /// expires, however long it waits).
    pub job_ttl_ms: u64,
    /// How long an idempotency key keeps answering the first job.
    pub idempotency_ttl_ms: u64,
    /// Logical shards of the Redis layout (see `redis.rs`), for a store not written yet: a
    /// store keeps the count it was first written with, whatever a later replica is given.
    pub shards: u16,
    /// Redis replicas a batched write (job creates and state changes) waits for before it is
    /// answered (`WAIT`, at most [`WAIT_REPLICAS_TIMEOUT_MS`]): with 1, a write acknowledged
    /// survives the loss of its master, which replicates asynchronously. 0 waits for none.
    pub wait_replicas: u8,
    /// Entries of one page of a finished jobs' index (see `redis.rs`): Redis keeps a sorted set
    /// of up to `zset-max-listpack-entries` (128 by default) in its compact encoding, about a
    /// third of the memory per entry. An insert scans the listpack, so half that is cheaper:
    /// 64 took a Lua `ZADD` 2.26 µs where 128 took 3.11 and a skip list 2.09, for 1 B more
    /// an entry. Past this many, a page is still written to when a late entry belongs in it.
    pub index_page: u16,
}

/// How long a batched write waits for [`StoreOptions::wait_replicas`] before it is answered
/// anyway (the write stands on its master; only a failover in that window could lose it).
pub const WAIT_REPLICAS_TIMEOUT_MS: u64 = 100;

/// Shards of a new Redis store: twelve spread evenly over a cluster of 2, 3, 4 or 6 masters
/// (give a larger cluster more), and few enough that a listing — one query per shard — stays
/// cheap, and that a batch on one Redis, whose index writes take a call per shard's key, costs
/// nearly what it did unsharded (16 shards cost one Redis 6% more CPU per job than 1 did in
/// `benches/ab.sh`, within that harness's noise).
pub const DEFAULT_SHARDS: u16 = 12;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            job_ttl_ms: 7 * 24 * 3600 * 1000,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            shards: DEFAULT_SHARDS,
            wait_replicas: 0,
            index_page: 64,
        }
    }
}

/// Bytes in the [`Locks::shared_secret`] a store makes.
pub const SHARED_SECRET_BYTES: usize = 32;

/// A new shared secret, from the operating system's random source (through the thread-local
/// CSPRNG it seeds).
pub(crate) fn fresh_secret() -> [u8; SHARED_SECRET_BYTES] {
    use rand::Rng as _;
    let mut secret = [0u8; SHARED_SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// The recheck time of a parked job: later than any time a due query asks about, so nobody
/// rechecks it by time (every backend must keep it exactly; `redis.rs` says why this value).
pub const PARKED: Millis = 1 << 52;

/// The index a job list is answered from: the most selective filter that has one.
pub(crate) fn list_index(filter: &JobFilter) -> IndexName<'_> {
    if let Some(t) = &filter.trace_id {
        IndexName::Trace(t)
    } else if let Some(t) = &filter.tenant {
        IndexName::Tenant(t)
    } else if let Some(s) = filter.state.filter(|s| s.is_terminal()) {
        // A terminal job never changes again, so its state-index score is its updated_at.
        IndexName::State(s)
    } else {
        IndexName::Recent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexName<'a> {
    Recent,
    Tenant(&'a str),
    Trace(&'a str),
    State(JobState),
}

/// How many index entries one list call may look at before it answers a short page (with a
/// cursor to go on from): bounds the work of a very selective filter.
pub(crate) fn scan_budget(limit: usize) -> usize {
    (limit * 20).max(2_000)
}

impl JobFilter {
    /// Whether a job with these indexed fields passes every filter.
    pub fn matches(
        &self,
        state: JobState,
        topic: &str,
        tenant: &str,
        team: &str,
        updated_at: Millis,
    ) -> bool {
        self.state.is_none_or(|s| s == state)
            && self.topic.as_deref().is_none_or(|t| t == topic)
            && self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.team.as_deref().is_none_or(|t| t == team)
            && self.updated_after.is_none_or(|a| updated_at > a)
            && self.updated_before.is_none_or(|b| updated_at < b)
    }
}

impl DlqFilter {
    pub fn matches(&self, e: &DlqEntry) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == e.tenant_id)
            && self.topic.as_deref().is_none_or(|t| t == e.topic)
            && self.status.is_none_or(|s| s == e.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            score: -5,
            id: "a:b".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("!!"), None);
    }
}
