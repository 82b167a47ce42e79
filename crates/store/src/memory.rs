//! The embedded store: everything in one process's memory, with the semantics of the Redis store
//! (same indexes, same ordering and cursors, same TTLs, same check-and-set), so `serve` works on
//! a machine with nothing installed. One mutex guards it all; each operation is short and never
//! awaits while holding it, which is what makes every operation atomic, as a Lua script is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use super::*;
use crate::job::{Job, JobEvent, JobState};
use crate::time::now_ms;
use crate::workflow::definition::{Run, Status, Workflow};

/// A sorted set ordered by `(score, member)`, as Redis orders a ZSET.
#[derive(Default)]
struct ZSet {
    scores: HashMap<String, i64>,
    ordered: BTreeSet<(i64, String)>,
}

impl ZSet {
    fn add(&mut self, member: &str, score: i64) {
        if let Some(old) = self.scores.insert(member.to_string(), score) {
            self.ordered.remove(&(old, member.to_string()));
        }
        self.ordered.insert((score, member.to_string()));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.ordered.remove(&(old, member.to_string()));
        }
    }

    /// Removes the members `gone` says are gone, among those scored below `before` (all of
    /// them without); returns how many.
    fn remove_gone(&mut self, before: Option<i64>, gone: impl Fn(&str) -> bool) -> u64 {
        let doomed: Vec<_> = self
            .ordered
            .iter()
            .take_while(|(s, _)| before.is_none_or(|b| *s < b))
            .filter(|(_, m)| gone(m))
            .cloned()
            .collect();
        for (_, m) in &doomed {
            self.remove(m);
        }
        doomed.len() as u64
    }

    /// Descending `(score, member)` strictly after `cursor`.
    fn iter_desc_after<'a>(
        &'a self,
        cursor: Option<&Cursor>,
    ) -> Box<dyn Iterator<Item = &'a (i64, String)> + 'a> {
        match cursor {
            None => Box::new(self.ordered.iter().rev()),
            Some(c) => Box::new(self.ordered.range(..(c.score, c.id.clone())).rev()),
        }
    }

    fn ascending_up_to(&self, max: i64, limit: usize) -> Vec<String> {
        self.ordered
            .iter()
            .take_while(|(s, _)| *s <= max)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// One page of an index, from the cursor down: the entries `get` answers for, up to the page's
/// limit or the scan budget, with a cursor at the last entry looked at when there may be more.
fn page_desc<T>(index: &ZSet, page: &PageRequest, get: impl Fn(&str) -> Option<T>) -> Page<T> {
    let budget = scan_budget(page.limit);
    let mut items = Vec::new();
    let mut last = None;
    let mut scanned = 0;
    for (score, id) in index.iter_desc_after(page.cursor.as_ref()) {
        if scanned == budget {
            break;
        }
        scanned += 1;
        last = Some(Cursor {
            score: *score,
            id: id.clone(),
        });
        if let Some(item) = get(id) {
            items.push(item);
            if items.len() == page.limit {
                break;
            }
        }
    }
    let next = (items.len() == page.limit || scanned == budget)
        .then(|| last.map(|c| c.encode()))
        .flatten();
    Page {
        items,
        next_cursor: next,
    }
}

struct Record {
    job: Job,
    expires_at: Millis,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Record>,
    idempotency: HashMap<String, (String, Millis)>,
    indexes: HashMap<String, ZSet>,
    dlq: HashMap<String, DlqEntry>,
    dlq_index: ZSet,
    /// Each tenant's dead letters, as Redis keeps them (a tenant's cursor never holds
    /// another's id).
    dlq_tenant_index: HashMap<String, ZSet>,
    /// Ordered, so that keys are listed in byte order as Redis lists them.
    config: BTreeMap<String, ConfigDoc>,
    locks: HashMap<String, (String, Millis)>,
    plugins: BTreeMap<String, StoredPlugin>,
    /// Workflow id → the latest version ever stored and whether it is live.
    workflows: BTreeMap<String, WorkflowHead>,
    workflow_versions: HashMap<(String, u64), Workflow>,
    /// Each run with the time it expires (once finished).
    runs: HashMap<String, (Run, Option<Millis>)>,
    /// The run indexes, as Redis keeps them.
    run_indexes: HashMap<RunIndexKey, ZSet>,
    /// [`Locks::shared_secret`], once made.
    secret: Option<Vec<u8>>,
}

/// A [`RunIndex`] that owns its name, to key a map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RunIndexKey {
    Workflow(String),
    Org(String),
    Status(Status),
    All,
}

impl From<RunIndex<'_>> for RunIndexKey {
    fn from(i: RunIndex<'_>) -> Self {
        match i {
            RunIndex::Workflow(w) => RunIndexKey::Workflow(w.to_string()),
            RunIndex::Org(o) => RunIndexKey::Org(o.to_string()),
            RunIndex::Status(s) => RunIndexKey::Status(s),
            RunIndex::All => RunIndexKey::All,
        }
    }
}

fn index_key(name: IndexName<'_>) -> String {
    match name {
        IndexName::Recent => "recent".into(),
        IndexName::Tenant(t) => format!("tenant:{t}"),
        IndexName::Trace(t) => format!("trace:{t}"),
        IndexName::State(s) => format!("state:{s}"),
    }
}

const DEADLINE: &str = "deadline";

pub struct MemoryStore {
    inner: Mutex<Inner>,
    opts: StoreOptions,
}

impl MemoryStore {
    pub fn new(opts: StoreOptions) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            opts,
        }
    }
}

impl Inner {
    fn index(&mut self, name: IndexName<'_>) -> &mut ZSet {
        self.indexes.entry(index_key(name)).or_default()
    }

    /// The live record, dropping it if its TTL has passed (as Redis would have).
    fn live(&mut self, id: &str, now: Millis) -> Option<&mut Record> {
        if self.jobs.get(id).is_some_and(|r| r.expires_at <= now) {
            self.jobs.remove(id);
        }
        self.jobs.get_mut(id)
    }

    /// The run, dropping it if it finished a TTL ago (as Redis would have).
    fn live_run(&mut self, id: &str, now: Millis) -> Option<&Run> {
        if self
            .runs
            .get(id)
            .is_some_and(|(_, expires)| expires.is_some_and(|t| t <= now))
        {
            self.runs.remove(id);
        }
        self.runs.get(id).map(|(r, _)| r)
    }

    /// Re-scores the "updated" indexes of a job that just changed.
    fn touch_indexes(&mut self, spec: &JobSpec, at: Millis) {
        let id = spec.id.as_str();
        self.index(IndexName::Recent).add(id, at);
        self.index(IndexName::Tenant(&spec.tenant_id)).add(id, at);
    }

    fn create(&mut self, new: &NewJob, opts: &StoreOptions, now: Millis) -> CreateOutcome {
        let spec = &new.spec;
        let idem_key = new
            .idempotency_key
            .as_ref()
            .map(|k| crate::ids::qualify(&spec.tenant_id, k));
        if let Some(key) = &idem_key
            && let Some((existing, exp)) = self.idempotency.get(key)
            && *exp > now
        {
            return CreateOutcome::Exists {
                job_id: existing.clone(),
            };
        }
        if self.live(&spec.id, now).is_some() {
            return CreateOutcome::Exists {
                job_id: spec.id.clone(),
            };
        }
        if let Some(key) = idem_key {
            self.idempotency
                .insert(key, (spec.id.clone(), now + opts.idempotency_ttl_ms as i64));
        }
        let job = Job {
            spec: spec.clone(),
            state: JobState::Pending,
            worker_id: None,
            worker_instance: None,
            safety_decision: None,
            safety_reason: None,
            reason: None,
            result: None,
            error: None,
            execution_ms: None,
            effective_config: None,
            lease: None,
            updated_at: spec.created_at,
            history: vec![JobEvent {
                at: spec.created_at,
                state: JobState::Pending,
                note: new.note.clone(),
            }],
        };
        let id = spec.id.as_str();
        self.index(IndexName::State(JobState::Pending))
            .add(id, spec.not_before.unwrap_or(spec.created_at));
        self.index(IndexName::Trace(&spec.trace_id))
            .add(id, spec.created_at);
        if let Some(d) = spec.deadline {
            self.indexes.entry(DEADLINE.into()).or_default().add(id, d);
        }
        self.touch_indexes(spec, job.updated_at);
        self.jobs.insert(
            spec.id.clone(),
            Record {
                job,
                // A live job never expires; it does a TTL after it finished.
                expires_at: Millis::MAX,
            },
        );
        CreateOutcome::Created
    }
}

fn apply_update(rec: &mut Record, u: &JobUpdate) {
    let job = &mut rec.job;
    if let Some(v) = &u.worker_id {
        job.worker_id = Some(v.clone());
    }
    if let Some(v) = &u.worker_instance {
        job.worker_instance = Some(v.clone());
    }
    if let Some(v) = &u.result {
        job.result = Some(v.clone());
    }
    if let Some(v) = &u.error {
        job.error = Some(v.clone());
    }
    if let Some(v) = &u.safety_decision {
        job.safety_decision = Some(v.clone());
    }
    if let Some(v) = &u.safety_reason {
        job.safety_reason = Some(v.clone());
    }
    if let Some(v) = u.execution_ms {
        job.execution_ms = Some(v);
    }
    if let Some(v) = &u.effective_config {
        job.effective_config = Some(v.clone());
    }
    if let Some(v) = &u.lease {
        job.lease = Some(v.clone());
    }
}

/// The walk `from → [via… →] to` a transition takes (see [`Transition::via`]), or the illegal
/// pair.
pub(crate) fn plan_path(
    from: JobState,
    t: &Transition,
) -> Result<Vec<(JobState, Millis)>, StoreError> {
    let start = t
        .via
        .iter()
        .rposition(|(s, _)| *s == from)
        .map_or(0, |i| i + 1);
    let mut path: Vec<(JobState, Millis)> = t.via.iter().skip(start).cloned().collect();
    path.push((t.to, t.at));
    let mut prev = from;
    if path.iter().all(|(s, _)| {
        let ok = prev.can_transition_to(*s);
        prev = *s;
        ok
    }) {
        return Ok(path);
    }
    if from.can_transition_to(t.to) {
        Ok(vec![(t.to, t.at)])
    } else {
        Err(StoreError::IllegalTransition { from, to: t.to })
    }
}

#[async_trait]
impl Backend for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn create_job(&self, job: &NewJob) -> StoreResult<CreateOutcome> {
        Ok(self.inner.lock().create(job, &self.opts, now_ms()))
    }

    async fn create_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<CreateOutcome>>> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        Ok(jobs
            .iter()
            .map(|j| Ok(inner.create(j, &self.opts, now)))
            .collect())
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<Job>> {
        Ok(self.inner.lock().live(id, now_ms()).map(|r| r.job.clone()))
    }

    async fn get_jobs(&self, ids: &[String]) -> StoreResult<Vec<Option<Job>>> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        Ok(ids
            .iter()
            .map(|id| inner.live(id, now).map(|r| r.job.clone()))
            .collect())
    }

    async fn transition(&self, id: &str, t: &Transition) -> StoreResult<TransitionOutcome> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        let ttl = self.opts.job_ttl_ms as i64;
        let Some(rec) = inner.live(id, now) else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        if let Some(claim) = &t.claim
            && !claim.admits(rec.job.worker_id.as_deref(), rec.job.lease.as_deref())
        {
            return Ok(TransitionOutcome::OtherWorker);
        }
        let from = rec.job.state;
        if from == t.to {
            return Ok(TransitionOutcome::Unchanged);
        }
        let path = plan_path(from, t)?;
        apply_update(rec, &t.update);
        for (i, (state, at)) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            rec.job.history.push(JobEvent {
                at: *at,
                state: *state,
                note: if last { t.note.clone() } else { None },
            });
        }
        rec.job.state = t.to;
        rec.job.updated_at = t.at;
        rec.job.reason = None;
        if t.to.is_terminal() {
            rec.expires_at = now + ttl;
            // Only a report on the live job and the reconciler's watch over it use them (as on
            // Redis).
            rec.job.lease = None;
            rec.job.worker_instance = None;
        }
        // The spec is immutable and small next to the history: clone it, not the whole job.
        let spec = rec.job.spec.clone();
        inner.index(IndexName::State(from)).remove(id);
        inner.index(IndexName::State(t.to)).add(id, t.at);
        if t.to.is_terminal() {
            inner.indexes.entry(DEADLINE.into()).or_default().remove(id);
        }
        inner.touch_indexes(&spec, t.at);
        if let Some(dl) = &t.dead_letter {
            // Filed under the id of the job that failed, as the Redis script does.
            inner.dlq.insert(id.to_string(), dl.clone());
            inner.dlq_index.add(id, dl.created_at);
            inner
                .dlq_tenant_index
                .entry(spec.tenant_id.clone())
                .or_default()
                .add(id, dl.created_at);
        }
        Ok(TransitionOutcome::Applied {
            from,
            run_id: spec.run_id,
            tenant_id: spec.tenant_id,
            created_at: spec.created_at,
        })
    }

    async fn annotate(&self, id: &str, a: &Annotation) -> StoreResult<bool> {
        let mut inner = self.inner.lock();
        let Some(rec) = inner.live(id, now_ms()) else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        if rec.job.state != a.expect {
            return Ok(false);
        }
        apply_update(rec, &a.update);
        // An empty reason says nothing (Redis cannot tell it from none): it is not recorded.
        if a.reason.as_deref().is_some_and(|r| !r.is_empty()) && a.reason != rec.job.reason {
            rec.job.reason = a.reason.clone();
            rec.job.history.push(JobEvent {
                at: a.at,
                state: a.expect,
                note: a.reason.clone(),
            });
        }
        if let Some(score) = a.recheck_at {
            inner.index(IndexName::State(a.expect)).add(id, score);
        }
        Ok(true)
    }

    async fn count_jobs(&self, states: &[JobState]) -> StoreResult<Vec<u64>> {
        let inner = self.inner.lock();
        Ok(states
            .iter()
            .map(|s| {
                inner
                    .indexes
                    .get(&index_key(IndexName::State(*s)))
                    .filter(|_| !s.is_terminal())
                    .map_or(0, |z| z.scores.len() as u64)
            })
            .collect())
    }

    async fn list_jobs(&self, filter: &JobFilter, page: &PageRequest) -> StoreResult<Page<Job>> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        let key = index_key(list_index(filter));
        let candidates: Vec<(i64, String)> = match inner.indexes.get(&key) {
            None => Vec::new(),
            Some(z) => z
                .iter_desc_after(page.cursor.as_ref())
                .take(scan_budget(page.limit))
                .cloned()
                .collect(),
        };
        let budget_hit = candidates.len() == scan_budget(page.limit);
        let mut items = Vec::new();
        let mut last = None;
        for (score, id) in candidates {
            last = Some(Cursor {
                score,
                id: id.clone(),
            });
            if let Some(rec) = inner.live(&id, now) {
                let j = &rec.job;
                let team = j.spec.team_id.as_deref().unwrap_or("");
                if filter.matches(
                    j.state,
                    &j.spec.topic,
                    &j.spec.tenant_id,
                    team,
                    j.updated_at,
                ) {
                    items.push(j.clone());
                    if items.len() == page.limit {
                        break;
                    }
                }
            }
        }
        let next = (items.len() == page.limit || budget_hit)
            .then(|| last.map(|c| c.encode()))
            .flatten();
        Ok(Page {
            items,
            next_cursor: next,
        })
    }

    async fn jobs_due(
        &self,
        state: JobState,
        before: Millis,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let inner = self.inner.lock();
        Ok(inner
            .indexes
            .get(&index_key(IndexName::State(state)))
            .filter(|_| !state.is_terminal())
            .map(|z| z.ascending_up_to(before, limit))
            .unwrap_or_default())
    }

    async fn holdings(
        &self,
        state: JobState,
        after: Option<&Cursor>,
        limit: usize,
    ) -> StoreResult<(Vec<Holding>, Option<Cursor>)> {
        if state.is_terminal() {
            return Ok((Vec::new(), None));
        }
        let mut inner = self.inner.lock();
        let entries: Vec<(i64, String)> = inner
            .index(IndexName::State(state))
            .iter_desc_after(after)
            .take(limit)
            .cloned()
            .collect();
        let now = now_ms();
        let next = (entries.len() == limit)
            .then(|| {
                entries.last().map(|(score, id)| Cursor {
                    score: *score,
                    id: id.clone(),
                })
            })
            .flatten();
        let held = entries
            .into_iter()
            .map(|(since, id)| {
                let job = inner.live(&id, now).map(|r| &r.job);
                Holding {
                    worker_id: job.and_then(|j| j.worker_id.clone()),
                    worker_instance: job.and_then(|j| j.worker_instance.clone()),
                    lease: job.and_then(|j| j.lease.clone()),
                    heartbeat_timeout_ms: job
                        .and_then(|j| j.spec.heartbeat_timeout_sec)
                        .map(|t| t.saturating_mul(1000)),
                    since,
                    job_id: id,
                }
            })
            .collect();
        Ok((held, next))
    }

    async fn deadlines_due(&self, now: Millis, limit: usize) -> StoreResult<Vec<String>> {
        let inner = self.inner.lock();
        Ok(inner
            .indexes
            .get(DEADLINE)
            .map(|z| z.ascending_up_to(now, limit))
            .unwrap_or_default())
    }

    async fn prune_indexes(&self, before: Millis) -> StoreResult<u64> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        inner.jobs.retain(|_, r| r.expires_at > now);
        inner.idempotency.retain(|_, (_, exp)| *exp > now);
        let Inner { jobs, indexes, .. } = &mut *inner;
        let mut removed = 0;
        for (name, z) in indexes.iter_mut() {
            if name.starts_with("trace:") {
                // A trace index is scored by creation time and lives as long as its jobs (Redis
                // expires the whole key with them): only the entries of expired jobs go, uncounted.
                z.remove_gone(None, |id| !jobs.contains_key(id));
            } else if name != DEADLINE {
                // Only a record last touched before `before` can have expired.
                removed += z.remove_gone(Some(before), |id| !jobs.contains_key(id));
            }
        }
        indexes.retain(|_, z| !z.scores.is_empty());
        Ok(removed)
    }
}

#[async_trait]
impl DeadLetters for MemoryStore {
    async fn dlq_get(&self, job_id: &str) -> StoreResult<Option<DlqEntry>> {
        Ok(self.inner.lock().dlq.get(job_id).cloned())
    }

    async fn dlq_list(
        &self,
        filter: &DlqFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<DlqEntry>> {
        let inner = self.inner.lock();
        let index = match &filter.tenant {
            Some(t) => match inner.dlq_tenant_index.get(t) {
                Some(index) => index,
                None => {
                    return Ok(Page {
                        items: Vec::new(),
                        next_cursor: None,
                    });
                }
            },
            None => &inner.dlq_index,
        };
        Ok(page_desc(index, page, |id| {
            inner.dlq.get(id).filter(|e| filter.matches(e)).cloned()
        }))
    }

    async fn dlq_delete(&self, job_id: &str) -> StoreResult<bool> {
        let mut inner = self.inner.lock();
        inner.dlq_index.remove(job_id);
        if let Some(t) = crate::ids::tenant_of(job_id)
            && let Some(index) = inner.dlq_tenant_index.get_mut(t)
        {
            index.remove(job_id);
        }
        Ok(inner.dlq.remove(job_id).is_some())
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn config_get(&self, keys: &[String]) -> StoreResult<Vec<Option<ConfigDoc>>> {
        let inner = self.inner.lock();
        Ok(keys.iter().map(|k| inner.config.get(k).cloned()).collect())
    }

    async fn config_put(
        &self,
        key: &str,
        data: &Value,
        if_match: Option<u64>,
        now: Millis,
    ) -> StoreResult<ConfigDoc> {
        let mut inner = self.inner.lock();
        let current = inner.config.get(key).map_or(0, |d| d.revision);
        if if_match.is_some_and(|m| m != current) {
            return Err(StoreError::Conflict { current });
        }
        let doc = ConfigDoc {
            data: data.clone(),
            revision: current + 1,
            updated_at: now,
        };
        inner.config.insert(key.to_string(), doc.clone());
        Ok(doc)
    }

    async fn config_delete(&self, key: &str, if_match: Option<u64>) -> StoreResult<bool> {
        let mut inner = self.inner.lock();
        let current = inner.config.get(key).map_or(0, |d| d.revision);
        if if_match.is_some_and(|m| m != current) {
            return Err(StoreError::Conflict { current });
        }
        Ok(inner.config.remove(key).is_some())
    }

    async fn config_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let inner = self.inner.lock();
        let from = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        Ok(inner
            .config
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Locks for MemoryStore {
    async fn lock_acquire(&self, name: &str, owner: &str, ttl_ms: u64) -> StoreResult<bool> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        let free = match inner.locks.get(name) {
            None => true,
            Some((holder, exp)) => holder == owner || *exp <= now,
        };
        if free {
            inner
                .locks
                .insert(name.to_string(), (owner.to_string(), now + ttl_ms as i64));
        }
        Ok(free)
    }

    async fn lock_release(&self, name: &str, owner: &str) -> StoreResult<bool> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        match inner.locks.get(name) {
            Some((holder, exp)) if holder == owner && *exp > now => {
                inner.locks.remove(name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn shared_secret(&self) -> StoreResult<Vec<u8>> {
        let mut inner = self.inner.lock();
        Ok(inner
            .secret
            .get_or_insert_with(|| fresh_secret().to_vec())
            .clone())
    }
}

#[async_trait]
impl PluginBlobs for MemoryStore {
    async fn plugin_put(
        &self,
        name: &str,
        bytes: &[u8],
        hash: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let plugin = StoredPlugin {
            name: name.to_string(),
            hash: hash.to_string(),
            bytes: bytes.to_vec(),
            updated_at: now,
        };
        self.inner.lock().plugins.insert(name.to_string(), plugin);
        Ok(())
    }

    async fn plugin_get(&self, name: &str) -> StoreResult<Option<StoredPlugin>> {
        Ok(self.inner.lock().plugins.get(name).cloned())
    }

    async fn plugin_list(&self) -> StoreResult<Vec<PluginMeta>> {
        Ok(self
            .inner
            .lock()
            .plugins
            .values()
            .map(|p| PluginMeta {
                name: p.name.clone(),
                hash: p.hash.clone(),
                updated_at: p.updated_at,
            })
            .collect())
    }

    async fn plugin_delete(&self, name: &str) -> StoreResult<bool> {
        Ok(self.inner.lock().plugins.remove(name).is_some())
    }
}

#[async_trait]
impl WorkflowStore for MemoryStore {
    async fn workflow_put(&self, wf: &Workflow, create: bool) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        let head = inner.workflows.get(&wf.id).copied();
        let current = head.map_or(0, |h| h.latest);
        let live = head.is_some_and(|h| h.live);
        let key = (wf.id.clone(), wf.version);
        if current + 1 != wf.version || live == create || inner.workflow_versions.contains_key(&key)
        {
            return Err(StoreError::Conflict { current });
        }
        inner.workflows.insert(
            wf.id.clone(),
            WorkflowHead {
                latest: wf.version,
                live: true,
            },
        );
        inner.workflow_versions.insert(key, wf.clone());
        Ok(())
    }

    async fn workflow_head(&self, id: &str) -> StoreResult<Option<WorkflowHead>> {
        Ok(self.inner.lock().workflows.get(id).copied())
    }

    async fn workflow_get(&self, id: &str, version: Option<u64>) -> StoreResult<Option<Workflow>> {
        let inner = self.inner.lock();
        let live = || inner.workflows.get(id).filter(|h| h.live).map(|h| h.latest);
        let Some(v) = version.or_else(live) else {
            return Ok(None);
        };
        Ok(inner.workflow_versions.get(&(id.to_string(), v)).cloned())
    }

    async fn workflow_list(
        &self,
        org: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<Workflow>> {
        let inner = self.inner.lock();
        let prefix = org.map(|o| crate::ids::qualify(o, ""));
        let from = match (&page.cursor, &prefix) {
            (Some(c), _) => std::ops::Bound::Excluded(c.id.clone()),
            (None, Some(p)) => std::ops::Bound::Included(p.clone()),
            (None, None) => std::ops::Bound::Unbounded,
        };
        let mut items = Vec::new();
        for (id, head) in inner.workflows.range((from, std::ops::Bound::Unbounded)) {
            if prefix.as_ref().is_some_and(|p| !id.starts_with(p.as_str())) {
                break;
            }
            if !head.live {
                continue;
            }
            if let Some(wf) = inner.workflow_versions.get(&(id.clone(), head.latest)) {
                items.push(wf.clone());
            }
            if items.len() == page.limit {
                break;
            }
        }
        let next = (items.len() == page.limit)
            .then(|| items.last().map(|w| workflow_cursor(&w.id)))
            .flatten();
        Ok(Page {
            items,
            next_cursor: next,
        })
    }

    async fn workflow_delete(&self, id: &str) -> StoreResult<bool> {
        let mut inner = self.inner.lock();
        Ok(match inner.workflows.get_mut(id) {
            Some(head) if head.live => {
                head.live = false;
                true
            }
            _ => false,
        })
    }

    async fn run_put(&self, run: &Run) -> StoreResult<u64> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        let old = inner.live_run(&run.id, now).map(|r| (r.revision, r.status));
        let current = old.map_or(0, |(rev, _)| rev);
        if current != run.revision {
            return Err(StoreError::Conflict { current });
        }
        let mut saved = run.clone();
        saved.revision = current + 1;
        if let Some((_, status)) = old {
            inner
                .run_indexes
                .entry(RunIndexKey::Status(status))
                .or_default()
                .remove(&run.id);
        }
        for name in [
            RunIndex::Status(run.status),
            RunIndex::Workflow(&run.workflow_id),
            RunIndex::Org(&run.org_id),
            RunIndex::All,
        ] {
            inner
                .run_indexes
                .entry(name.into())
                .or_default()
                .add(&run.id, run.started_at);
        }
        let expires_at = run
            .status
            .is_terminal()
            .then(|| now + self.opts.job_ttl_ms as Millis);
        inner.runs.insert(run.id.clone(), (saved, expires_at));
        Ok(current + 1)
    }

    async fn run_prune_indexes(&self) -> StoreResult<u64> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        inner
            .runs
            .retain(|_, (_, expires)| expires.is_none_or(|t| t > now));
        let Inner {
            runs, run_indexes, ..
        } = &mut *inner;
        let removed = run_indexes
            .values_mut()
            .map(|z| z.remove_gone(None, |id| !runs.contains_key(id)))
            .sum();
        run_indexes.retain(|_, z| !z.scores.is_empty());
        Ok(removed)
    }

    async fn run_get(&self, id: &str) -> StoreResult<Option<Run>> {
        Ok(self.inner.lock().live_run(id, now_ms()).cloned())
    }

    async fn run_list(&self, filter: &RunFilter, page: &PageRequest) -> StoreResult<Page<Run>> {
        let inner = self.inner.lock();
        let Some(index) = inner.run_indexes.get(&RunIndex::of(filter).into()) else {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        let now = now_ms();
        Ok(page_desc(index, page, |id| {
            inner
                .runs
                .get(id)
                .filter(|(r, expires)| expires.is_none_or(|t| t > now) && filter.matches(r))
                .map(|(r, _)| r.clone())
        }))
    }
}
