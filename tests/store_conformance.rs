//! Store conformance: one suite of behaviour checks, run against both backends.
//!
//! Every `check_*` function takes a fresh, empty [`SharedStore`]; the `conformance!` macro at the
//! bottom turns each into three tests, `memory::<name>` on a [`MemoryStore`], `redis::<name>` on
//! a [`RedisStore`] talking to a real server (`REDIS_URL`, else a private `redis-server` the tests
//! start) and `cluster::<name>` on the same store over a three-master Redis Cluster
//! (`REDIS_CLUSTER_URL`, else a private one the tests start): one layout, both deployments.
//! Each Redis test works under its own random key prefix, so the tests run in parallel, and
//! deletes that prefix's keys when it ends (even when it fails). When Redis is not reachable the
//! Redis tests fail, saying so: they never skip.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use coretex::job::JobState::{self, *};
use coretex::job::{
    DEFAULT_TENANT, Job, JobError, JobEvent, JobRequest, JobSpec, Priority, TRANSITIONS,
};
use coretex::store::memory::MemoryStore;
use coretex::store::redis::RedisStore;
use coretex::store::shards::{shard_of, shard_prefix, shard_tags};
use coretex::store::{
    Annotation, Backend, Claim, ConfigDoc, CreateOutcome, Cursor, DEFAULT_SHARDS, DlqEntry,
    DlqFilter, JobFilter, JobUpdate, Locks, NewJob, PARKED, PageRequest, RunFilter,
    SHARED_SECRET_BYTES, SharedStore, StoreError, StoreOptions, Transition, TransitionOutcome,
};
use coretex::time::{Millis, now_ms};
use coretex::workflow::definition::{Run, Status};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A job request with the fields the index checks care about.
#[derive(Clone, Default)]
struct Req {
    topic: &'static str,
    tenant: Option<&'static str>,
    team: Option<&'static str>,
    trace: Option<&'static str>,
    deadline_ms: Option<u64>,
}

fn spec_at(r: Req, at: Millis) -> JobSpec {
    JobSpec::accept(
        JobRequest {
            topic: if r.topic.is_empty() {
                "job.test"
            } else {
                r.topic
            }
            .to_string(),
            tenant_id: r.tenant.map(str::to_string),
            team_id: r.team.map(str::to_string),
            trace_id: r.trace.map(str::to_string),
            deadline_ms: r.deadline_ms,
            ..Default::default()
        },
        at,
    )
}

fn simple_spec(at: Millis) -> JobSpec {
    spec_at(Req::default(), at)
}

fn new_job(spec: &JobSpec) -> NewJob {
    NewJob {
        spec: spec.clone(),
        idempotency_key: None,
        note: None,
    }
}

async fn create(store: &SharedStore, spec: &JobSpec) {
    let outcome = store.create_job(&new_job(spec)).await.expect("create_job");
    assert_eq!(outcome, CreateOutcome::Created, "creating {}", spec.id);
}

async fn created(store: &SharedStore, r: Req, at: Millis) -> JobSpec {
    let spec = spec_at(r, at);
    create(store, &spec).await;
    spec
}

async fn get(store: &SharedStore, id: &str) -> Job {
    store
        .get_job(id)
        .await
        .expect("get_job")
        .unwrap_or_else(|| panic!("job {id} should exist"))
}

async fn go(store: &SharedStore, id: &str, to: JobState, at: Millis) -> TransitionOutcome {
    store
        .transition(id, &Transition::to(to, at))
        .await
        .unwrap_or_else(|e| panic!("transition of {id} to {to}: {e}"))
}

/// A legal walk from PENDING to `state`.
fn path_to(state: JobState) -> &'static [JobState] {
    match state {
        Pending => &[],
        Scheduled => &[Scheduled],
        Dispatched => &[Dispatched],
        Running => &[Dispatched, Running],
        Succeeded => &[Dispatched, Succeeded],
        Failed => &[Failed],
        Cancelled => &[Cancelled],
        Timeout => &[Timeout],
        Denied => &[Denied],
    }
}

/// Creates a job and walks it to `state`, one millisecond per step from `*clock`.
async fn job_in(store: &SharedStore, state: JobState, clock: &mut Millis) -> String {
    let spec = simple_spec(*clock);
    create(store, &spec).await;
    for s in path_to(state) {
        *clock += 1;
        let outcome = go(store, &spec.id, *s, *clock).await;
        assert!(matches!(outcome, TransitionOutcome::Applied { .. }));
    }
    *clock += 1;
    spec.id
}

fn states(job: &Job) -> Vec<JobState> {
    job.history.iter().map(|e| e.state).collect()
}

/// Whether job `id` is in `state`'s index: a live state's, due by `far`; for a finished state,
/// the listing of that state (a finished job is in no state index of its own on Redis, see
/// [`JobStore::count_jobs`]).
async fn indexed_in(store: &SharedStore, state: JobState, id: &str, far: Millis) -> bool {
    if state.is_terminal() {
        let filter = JobFilter {
            state: Some(state),
            ..Default::default()
        };
        list_all(store, &filter, 500)
            .await
            .iter()
            .any(|j| j.spec.id == id)
    } else {
        store
            .jobs_due(state, far, 10_000)
            .await
            .unwrap()
            .iter()
            .any(|j| j == id)
    }
}

fn ids_of(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.spec.id.clone()).collect()
}

fn dead_letter(spec: &JobSpec, status: JobState, created_at: Millis) -> DlqEntry {
    DlqEntry {
        job_id: spec.id.clone(),
        topic: spec.topic.clone(),
        tenant_id: spec.tenant_id.clone(),
        status,
        reason: format!("ended {status}"),
        error: Some(JobError::new("worker_error", "it broke")),
        attempts: 3,
        created_at,
        request: spec.clone(),
    }
}

/// Every page of a job list, checking each page's size and that no job comes twice.
async fn list_all(store: &SharedStore, filter: &JobFilter, limit: usize) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::new();
    let mut cursor = None;
    for _ in 0..100_000 {
        let page = store
            .list_jobs(filter, &PageRequest { limit, cursor })
            .await
            .expect("list_jobs");
        assert!(page.items.len() <= limit, "a page is at most `limit` long");
        out.extend(page.items);
        match page.next_cursor {
            None => {
                let unique: HashSet<_> = out.iter().map(|j| j.spec.id.clone()).collect();
                assert_eq!(
                    unique.len(),
                    out.len(),
                    "a job was listed twice ({filter:?})"
                );
                return out;
            }
            Some(c) => {
                cursor = Some(Cursor::decode(&c).expect("the store's own cursor decodes"));
            }
        }
    }
    panic!("the listing never ended ({filter:?}, limit {limit})");
}

async fn dlq_all(store: &SharedStore, filter: &DlqFilter, limit: usize) -> Vec<DlqEntry> {
    let mut out: Vec<DlqEntry> = Vec::new();
    let mut cursor = None;
    for _ in 0..100_000 {
        let page = store
            .dlq_list(filter, &PageRequest { limit, cursor })
            .await
            .expect("dlq_list");
        assert!(page.items.len() <= limit, "a page is at most `limit` long");
        out.extend(page.items);
        match page.next_cursor {
            None => {
                let unique: HashSet<_> = out.iter().map(|e| e.job_id.clone()).collect();
                assert_eq!(unique.len(), out.len(), "a dead letter was listed twice");
                return out;
            }
            Some(c) => {
                cursor = Some(Cursor::decode(&c).expect("the store's own cursor decodes"));
            }
        }
    }
    panic!("the dead-letter listing never ended ({filter:?}, limit {limit})");
}

/// Newest first, ties broken by id, descending: the order every list answers in.
fn sort_desc<T>(items: &mut [T], key: impl Fn(&T) -> (Millis, String)) {
    items.sort_by_key(|b| std::cmp::Reverse(key(b)));
}

// ---------------------------------------------------------------------------------------------
// Creating and reading jobs
// ---------------------------------------------------------------------------------------------

async fn check_created_job_reads_back_as_pending(store: SharedStore) {
    store.ping().await.expect("ping");
    let now = now_ms();
    let spec = JobSpec::accept(
        JobRequest {
            id: Some("job-1".into()),
            topic: "job.echo".into(),
            payload: json!({"n": 1, "s": "héllo", "a": [1, 2.5, null, {"deep": true}]}),
            priority: Priority::Batch,
            tenant_id: Some("acme".into()),
            team_id: Some("red".into()),
            principal_id: Some("alice".into()),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            env: BTreeMap::from([("MODE".to_string(), "fast".to_string())]),
            deadline_ms: Some(60_000),
            heartbeat_timeout_sec: Some(30),
            trace_id: Some("trace-1".into()),
            workflow_id: Some("wf".into()),
            run_id: Some("run".into()),
            step_id: Some("step".into()),
        },
        now,
    );
    let outcome = store
        .create_job(&NewJob {
            spec: spec.clone(),
            idempotency_key: None,
            note: Some("accepted".into()),
        })
        .await
        .unwrap();
    assert_eq!(outcome, CreateOutcome::Created);

    let job = get(&store, "acme~job-1").await;
    assert_eq!(job.spec, spec);
    assert_eq!(job.state, Pending);
    assert_eq!(job.updated_at, now);
    assert_eq!(
        job.history,
        vec![JobEvent {
            at: now,
            state: Pending,
            note: Some("accepted".into()),
        }]
    );
    assert_eq!(
        (
            &job.worker_id,
            &job.result,
            &job.error,
            &job.reason,
            job.execution_ms
        ),
        (&None, &None, &None, &None, None)
    );
    assert_eq!(
        (
            &job.safety_decision,
            &job.safety_reason,
            &job.effective_config
        ),
        (&None, &None, &None)
    );

    // The same id again: nothing is written, the first job stays as it was.
    let mut again = spec.clone();
    again.topic = "job.other".into();
    again.created_at = now + 5;
    let outcome = store.create_job(&new_job(&again)).await.unwrap();
    assert_eq!(
        outcome,
        CreateOutcome::Exists {
            job_id: "acme~job-1".into()
        }
    );
    assert_eq!(get(&store, "acme~job-1").await, job);

    assert_eq!(store.get_job("no-such-job").await.unwrap(), None);
    let many = store
        .get_jobs(&[
            "acme~job-1".into(),
            "no-such-job".into(),
            "acme~job-1".into(),
        ])
        .await
        .unwrap();
    assert_eq!(many, vec![Some(job.clone()), None, Some(job)]);
    assert_eq!(store.get_jobs(&[]).await.unwrap(), vec![]);
}

async fn check_idempotency_key_answers_the_first_job_per_tenant(store: SharedStore) {
    let now = now_ms();
    let keyed = |spec: &JobSpec, key: &str| NewJob {
        spec: spec.clone(),
        idempotency_key: Some(key.to_string()),
        note: None,
    };
    let t1 = |at| {
        spec_at(
            Req {
                tenant: Some("t1"),
                ..Default::default()
            },
            at,
        )
    };
    let first = t1(now);
    let outcome = store.create_job(&keyed(&first, "k1")).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);

    // Another job with the same key in the same tenant answers the first job, creating nothing.
    let second = t1(now + 1);
    let outcome = store.create_job(&keyed(&second, "k1")).await.unwrap();
    assert_eq!(
        outcome,
        CreateOutcome::Exists {
            job_id: first.id.clone()
        }
    );
    assert_eq!(store.get_job(&second.id).await.unwrap(), None);
    assert_eq!(get(&store, &first.id).await.spec, first);

    // The key is scoped to the tenant; another key in the same tenant is another job.
    let other_tenant = spec_at(
        Req {
            tenant: Some("t2"),
            ..Default::default()
        },
        now + 2,
    );
    let outcome = store.create_job(&keyed(&other_tenant, "k1")).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    let other_key = t1(now + 3);
    let outcome = store.create_job(&keyed(&other_key, "k2")).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);

    let t1_jobs = list_all(
        &store,
        &JobFilter {
            tenant: Some("t1".into()),
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(ids_of(&t1_jobs), vec![other_key.id, first.id]);
}

async fn check_batch_create_answers_each_job_in_order(store: SharedStore) {
    let now = now_ms();
    let existing = spec_at(
        Req {
            tenant: Some("t1"),
            ..Default::default()
        },
        now,
    );
    let outcome = store
        .create_job(&NewJob {
            spec: existing.clone(),
            idempotency_key: Some("batch-key".into()),
            note: None,
        })
        .await
        .unwrap();
    assert_eq!(outcome, CreateOutcome::Created);

    let n1 = simple_spec(now + 1);
    let n2 = simple_spec(now + 2);
    let by_key = spec_at(
        Req {
            tenant: Some("t1"),
            ..Default::default()
        },
        now + 3,
    );
    let batch = vec![
        new_job(&n1),
        new_job(&existing),
        new_job(&n2),
        NewJob {
            spec: by_key.clone(),
            idempotency_key: Some("batch-key".into()),
            note: None,
        },
        new_job(&n1),
    ];
    let outcomes: Vec<CreateOutcome> = store
        .create_jobs(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect("each create succeeds"))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            CreateOutcome::Created,
            CreateOutcome::Exists {
                job_id: existing.id.clone()
            },
            CreateOutcome::Created,
            CreateOutcome::Exists {
                job_id: existing.id.clone()
            },
            CreateOutcome::Exists {
                job_id: n1.id.clone()
            },
        ]
    );
    let jobs = store
        .get_jobs(&[n1.id.clone(), n2.id.clone(), by_key.id.clone()])
        .await
        .unwrap();
    assert_eq!(jobs[0].as_ref().map(|j| &j.spec), Some(&n1));
    assert_eq!(jobs[1].as_ref().map(|j| &j.spec), Some(&n2));
    assert_eq!(jobs[2], None);
    assert!(store.create_jobs(&[]).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------------------------

async fn check_every_legal_transition_applies(store: SharedStore) {
    let mut clock = now_ms() - 1_000_000;
    let mut applied = 0;
    for (from, tos) in TRANSITIONS {
        for to in *tos {
            let id = job_in(&store, *from, &mut clock).await;
            let before = get(&store, &id).await;
            assert_eq!(before.state, *from);
            let at = clock + 7;
            let note = format!("{from} to {to}");
            let outcome = store
                .transition(&id, &Transition::to(*to, at).note(note.clone()))
                .await
                .unwrap_or_else(|e| panic!("{from} -> {to} is legal: {e}"));
            assert_eq!(
                outcome,
                TransitionOutcome::Applied {
                    from: *from,
                    run_id: None,
                    tenant_id: DEFAULT_TENANT.into(),
                    created_at: before.spec.created_at,
                }
            );

            let after = get(&store, &id).await;
            assert_eq!(after.state, *to);
            assert_eq!(after.updated_at, at);
            let mut history = before.history.clone();
            history.push(JobEvent {
                at,
                state: *to,
                note: Some(note),
            });
            assert_eq!(after.history, history, "{from} -> {to}");

            // The job moved between the state indexes.
            let far = at + 1_000_000;
            assert!(
                indexed_in(&store, *to, &id, far).await,
                "{from} -> {to}: the job is in the {to} index"
            );
            assert!(
                !indexed_in(&store, *from, &id, far).await,
                "{from} -> {to}: the job left the {from} index"
            );
            applied += 1;
            clock += 10;
        }
    }
    assert_eq!(applied, 20, "the table has twenty moves");
}

async fn check_illegal_transitions_error_and_change_nothing(store: SharedStore) {
    let mut clock = now_ms() - 1_000_000;
    let mut refused = 0;
    for from in JobState::ALL {
        for to in JobState::ALL {
            if from == to || from.can_transition_to(to) {
                continue;
            }
            let id = job_in(&store, from, &mut clock).await;
            let before = get(&store, &id).await;
            let spec = before.spec.clone();
            let mut t = Transition::to(to, clock + 1_000).note("must not apply");
            t.update = JobUpdate {
                worker_id: Some("w-evil".into()),
                result: Some(json!({"x": 1})),
                error: Some(JobError::new("e", "m")),
                execution_ms: Some(9),
                ..Default::default()
            };
            t.via = vec![(Running, clock + 500)];
            t.dead_letter = Some(dead_letter(&spec, to, clock));
            match store.transition(&id, &t).await {
                Err(StoreError::IllegalTransition { from: f, to: t }) => {
                    assert_eq!((f, t), (from, to));
                }
                other => panic!("{from} -> {to} must be refused, got {other:?}"),
            }
            let after = get(&store, &id).await;
            assert_eq!(after, before, "{from} -> {to} changed the job");
            assert_eq!(after.history.len(), before.history.len());
            assert_eq!(after.updated_at, before.updated_at);
            assert_eq!(store.dlq_get(&id).await.unwrap(), None);
            assert!(
                indexed_in(&store, from, &id, clock + 1_000_000).await,
                "{from} -> {to}: the job stays in its state index"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 9 * 8 - 20);
    match store
        .transition("no-such-job", &Transition::to(Scheduled, clock))
        .await
    {
        Err(StoreError::NotFound(id)) => assert_eq!(id, "no-such-job"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn check_same_state_transition_is_unchanged(store: SharedStore) {
    let mut clock = now_ms() - 1_000_000;
    for s in JobState::ALL {
        let id = job_in(&store, s, &mut clock).await;
        let before = get(&store, &id).await;
        let mut t = Transition::to(s, clock + 100).note("again");
        t.update.worker_id = Some("w-2".into());
        t.dead_letter = Some(dead_letter(&before.spec, s, clock));
        let outcome = store.transition(&id, &t).await.unwrap();
        assert_eq!(outcome, TransitionOutcome::Unchanged, "{s} -> {s}");
        assert_eq!(get(&store, &id).await, before, "{s} -> {s} changed the job");
        assert_eq!(store.dlq_get(&id).await.unwrap(), None);
    }
}

async fn check_via_passes_through_the_intermediate_state(store: SharedStore) {
    let t0 = now_ms() - 100_000;
    let through = |to: JobState, via: JobState, at: Millis| Transition {
        via: vec![(via, at - 1)],
        ..Transition::to(to, at).note("done")
    };

    // DISPATCHED --(via RUNNING)--> SUCCEEDED records RUNNING on the way.
    let a = created(&store, Req::default(), t0).await;
    go(&store, &a.id, Dispatched, t0 + 1).await;
    let outcome = store
        .transition(&a.id, &through(Succeeded, Running, t0 + 3))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Dispatched,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: a.created_at,
        }
    );
    let job = get(&store, &a.id).await;
    assert_eq!(job.state, Succeeded);
    assert_eq!(job.updated_at, t0 + 3);
    assert_eq!(
        job.history,
        vec![
            JobEvent {
                at: t0,
                state: Pending,
                note: None
            },
            JobEvent {
                at: t0 + 1,
                state: Dispatched,
                note: None
            },
            JobEvent {
                at: t0 + 2,
                state: Running,
                note: None
            },
            JobEvent {
                at: t0 + 3,
                state: Succeeded,
                note: Some("done".into())
            },
        ]
    );
    let far = t0 + 1_000_000;
    assert!(!indexed_in(&store, Running, &a.id, far).await);
    assert!(!indexed_in(&store, Dispatched, &a.id, far).await);
    assert!(indexed_in(&store, Succeeded, &a.id, far).await);

    // Already RUNNING: no second RUNNING event.
    let b = created(&store, Req::default(), t0).await;
    go(&store, &b.id, Dispatched, t0 + 1).await;
    go(&store, &b.id, Running, t0 + 2).await;
    let outcome = store
        .transition(&b.id, &through(Succeeded, Running, t0 + 5))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Running,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: b.created_at,
        }
    );
    let job = get(&store, &b.id).await;
    assert_eq!(states(&job), [Pending, Dispatched, Running, Succeeded]);
    assert_eq!(job.history[2].at, t0 + 2);

    // A via the job cannot take is skipped when the direct move is legal...
    let c = created(&store, Req::default(), t0).await;
    let outcome = store
        .transition(&c.id, &through(Failed, Running, t0 + 5))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Pending,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: c.created_at,
        }
    );
    assert_eq!(states(&get(&store, &c.id).await), [Pending, Failed]);

    // ...and does not make an illegal move legal.
    let d = created(&store, Req::default(), t0).await;
    let before = get(&store, &d.id).await;
    match store
        .transition(&d.id, &through(Succeeded, Running, t0 + 5))
        .await
    {
        Err(StoreError::IllegalTransition { from, to }) => {
            assert_eq!((from, to), (Pending, Succeeded));
        }
        other => panic!("PENDING -> SUCCEEDED via RUNNING must be refused, got {other:?}"),
    }
    assert_eq!(get(&store, &d.id).await, before);

    // Two legal hops: PENDING -> DISPATCHED -> SUCCEEDED and SCHEDULED -> DISPATCHED -> RUNNING.
    let e = created(&store, Req::default(), t0).await;
    let outcome = store
        .transition(&e.id, &through(Succeeded, Dispatched, t0 + 5))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Pending,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: e.created_at,
        }
    );
    assert_eq!(
        states(&get(&store, &e.id).await),
        [Pending, Dispatched, Succeeded]
    );
    let f = created(&store, Req::default(), t0).await;
    go(&store, &f.id, Scheduled, t0 + 1).await;
    let outcome = store
        .transition(&f.id, &through(Running, Dispatched, t0 + 5))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Scheduled,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: f.created_at,
        }
    );
    let job = get(&store, &f.id).await;
    assert_eq!(states(&job), [Pending, Scheduled, Dispatched, Running]);
    assert_eq!(job.history[2].at, t0 + 4);
    assert!(indexed_in(&store, Running, &f.id, far).await);
}

async fn check_a_walk_through_several_states_starts_after_the_current_one(store: SharedStore) {
    let t0 = now_ms() - 100_000;
    // A job's dispatch, start and result written as one transition.
    let walk = |at: Millis| {
        let mut t = Transition::to(Succeeded, at)
            .through(Dispatched, at - 2)
            .through(Running, at - 1)
            .note("done");
        t.update.worker_id = Some("w-1".into());
        t.update.safety_decision = Some("ALLOW".into());
        t
    };

    // From PENDING the whole walk is recorded, with the fields of every step.
    let a = created(&store, Req::default(), t0).await;
    let outcome = store.transition(&a.id, &walk(t0 + 3)).await.unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Pending,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: a.created_at,
        }
    );
    let job = get(&store, &a.id).await;
    assert_eq!(states(&job), [Pending, Dispatched, Running, Succeeded]);
    let times: Vec<Millis> = job.history.iter().map(|e| e.at).collect();
    assert_eq!(times, [t0, t0 + 1, t0 + 2, t0 + 3]);
    assert_eq!(job.history[3].note.as_deref(), Some("done"));
    assert_eq!(job.worker_id.as_deref(), Some("w-1"));
    assert_eq!(job.safety_decision.as_deref(), Some("ALLOW"));
    assert_eq!(job.updated_at, t0 + 3);

    // From DISPATCHED it begins after DISPATCHED; from RUNNING after RUNNING.
    let b = created(&store, Req::default(), t0).await;
    go(&store, &b.id, Dispatched, t0 + 1).await;
    store.transition(&b.id, &walk(t0 + 10)).await.unwrap();
    let job = get(&store, &b.id).await;
    assert_eq!(states(&job), [Pending, Dispatched, Running, Succeeded]);
    assert_eq!(job.history[1].at, t0 + 1, "the stored dispatch stays");
    assert_eq!(job.history[2].at, t0 + 9);

    let c = created(&store, Req::default(), t0).await;
    go(&store, &c.id, Dispatched, t0 + 1).await;
    go(&store, &c.id, Running, t0 + 2).await;
    store.transition(&c.id, &walk(t0 + 10)).await.unwrap();
    let job = get(&store, &c.id).await;
    assert_eq!(states(&job), [Pending, Dispatched, Running, Succeeded]);
    assert_eq!(job.history[2].at, t0 + 2);

    // A job that ended meanwhile refuses the walk and keeps what it has.
    let d = created(&store, Req::default(), t0).await;
    go(&store, &d.id, Cancelled, t0 + 1).await;
    let before = get(&store, &d.id).await;
    match store.transition(&d.id, &walk(t0 + 10)).await {
        Err(StoreError::IllegalTransition { from, to }) => {
            assert_eq!((from, to), (Cancelled, Succeeded));
        }
        other => panic!("CANCELLED -> SUCCEEDED must be refused, got {other:?}"),
    }
    assert_eq!(get(&store, &d.id).await, before);
    assert!(indexed_in(&store, Succeeded, &a.id, t0 + 1_000_000).await);
}

async fn check_update_fields_are_stored_and_read_back(store: SharedStore) {
    let t0 = now_ms() - 100_000;
    let config = json!({"timeout_ms": 5000, "nested": {"a": [1, 2, 3]}, "name": "ünï"});
    let result = json!({"out": "héllo", "n": 42, "f": 1.5, "list": [true, null, -7]});

    let a = created(&store, Req::default(), t0).await;
    let mut t = Transition::to(Dispatched, t0 + 1);
    t.update = JobUpdate {
        worker_id: Some("w-1".into()),
        effective_config: Some(config.clone()),
        safety_decision: Some("ALLOW".into()),
        safety_reason: Some("policy ok".into()),
        ..Default::default()
    };
    store.transition(&a.id, &t).await.unwrap();
    let job = get(&store, &a.id).await;
    assert_eq!(job.worker_id.as_deref(), Some("w-1"));
    assert_eq!(job.effective_config.as_ref(), Some(&config));
    assert_eq!(job.safety_decision.as_deref(), Some("ALLOW"));
    assert_eq!(job.safety_reason.as_deref(), Some("policy ok"));
    assert_eq!(
        (&job.result, &job.error, job.execution_ms),
        (&None, &None, None)
    );

    // A transition without updates keeps what earlier ones set.
    go(&store, &a.id, Running, t0 + 2).await;
    let mut t = Transition::to(Succeeded, t0 + 3);
    t.update = JobUpdate {
        result: Some(result.clone()),
        execution_ms: Some(1234),
        ..Default::default()
    };
    store.transition(&a.id, &t).await.unwrap();
    let job = get(&store, &a.id).await;
    assert_eq!(job.result.as_ref(), Some(&result));
    assert_eq!(job.execution_ms, Some(1234));
    assert_eq!(job.worker_id.as_deref(), Some("w-1"));
    assert_eq!(job.effective_config.as_ref(), Some(&config));
    assert_eq!(job.safety_decision.as_deref(), Some("ALLOW"));
    assert_eq!(job.error, None);

    // An error, and a scalar result.
    let b = created(&store, Req::default(), t0).await;
    let mut t = Transition::to(Failed, t0 + 1);
    t.update = JobUpdate {
        error: Some(JobError::new("worker_crashed", "exit code 137")),
        result: Some(json!("partial")),
        execution_ms: Some(0),
        ..Default::default()
    };
    store.transition(&b.id, &t).await.unwrap();
    let job = get(&store, &b.id).await;
    assert_eq!(
        job.error,
        Some(JobError::new("worker_crashed", "exit code 137"))
    );
    assert_eq!(job.result, Some(json!("partial")));
    assert_eq!(job.execution_ms, Some(0));
    assert_eq!(job.worker_id, None);

    // A safety denial.
    let c = created(&store, Req::default(), t0).await;
    let mut t = Transition::to(Denied, t0 + 1);
    t.update.safety_decision = Some("DENY".into());
    t.update.safety_reason = Some("topic is blocked".into());
    store.transition(&c.id, &t).await.unwrap();
    let job = get(&store, &c.id).await;
    assert_eq!(job.state, Denied);
    assert_eq!(job.safety_decision.as_deref(), Some("DENY"));
    assert_eq!(job.safety_reason.as_deref(), Some("topic is blocked"));
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

async fn check_dead_letter_is_written_with_the_failure(store: SharedStore) {
    let t0 = now_ms() - 100_000;
    let a = created(&store, Req::default(), t0).await;
    go(&store, &a.id, Dispatched, t0 + 1).await;
    let entry = dead_letter(&a, Failed, t0 + 2);
    let mut t = Transition::to(Failed, t0 + 2);
    t.update.error = entry.error.clone();
    t.dead_letter = Some(entry.clone());
    let outcome = store.transition(&a.id, &t).await.unwrap();
    assert_eq!(
        outcome,
        TransitionOutcome::Applied {
            from: Dispatched,
            run_id: None,
            tenant_id: DEFAULT_TENANT.into(),
            created_at: a.created_at,
        }
    );
    assert_eq!(get(&store, &a.id).await.state, Failed);
    assert_eq!(store.dlq_get(&a.id).await.unwrap(), Some(entry.clone()));

    // A timeout without an error.
    let b = created(&store, Req::default(), t0).await;
    let mut entry_b = dead_letter(&b, Timeout, t0 + 3);
    entry_b.error = None;
    let mut t = Transition::to(Timeout, t0 + 3);
    t.dead_letter = Some(entry_b.clone());
    store.transition(&b.id, &t).await.unwrap();
    assert_eq!(store.dlq_get(&b.id).await.unwrap(), Some(entry_b.clone()));

    assert_eq!(store.dlq_get("no-such-job").await.unwrap(), None);
    let page = store
        .dlq_list(
            &DlqFilter::default(),
            &PageRequest {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items, vec![entry_b.clone(), entry.clone()]);
    assert_eq!(page.next_cursor, None);

    assert!(store.dlq_delete(&a.id).await.unwrap());
    assert!(!store.dlq_delete(&a.id).await.unwrap());
    assert_eq!(store.dlq_get(&a.id).await.unwrap(), None);
    assert_eq!(
        dlq_all(&store, &DlqFilter::default(), 10).await,
        vec![entry_b]
    );
    // Deleting the dead letter leaves the job alone.
    assert_eq!(get(&store, &a.id).await.state, Failed);
}

async fn check_dead_letters_filter_and_page_through_ties(store: SharedStore) {
    let t = now_ms() - 100_000;
    // (tenant, topic, status, created_at, how many)
    let groups = [
        ("t1", "x", Failed, t, 7),
        ("t2", "y", Timeout, t, 3),
        ("t1", "y", Cancelled, t - 100, 2),
        ("t2", "x", Failed, t + 100, 2),
    ];
    let mut all = Vec::new();
    for (tenant, topic, status, at, n) in groups {
        for _ in 0..n {
            let spec = created(
                &store,
                Req {
                    tenant: Some(tenant),
                    topic,
                    ..Default::default()
                },
                at - 1_000,
            )
            .await;
            let entry = dead_letter(&spec, status, at);
            let mut tr = Transition::to(status, at);
            tr.dead_letter = Some(entry.clone());
            store.transition(&spec.id, &tr).await.unwrap();
            all.push(entry);
        }
    }
    sort_desc(&mut all, |e| (e.created_at, e.job_id.clone()));

    let filters = [
        DlqFilter::default(),
        DlqFilter {
            tenant: Some("t1".into()),
            ..Default::default()
        },
        DlqFilter {
            topic: Some("x".into()),
            ..Default::default()
        },
        DlqFilter {
            status: Some(Failed),
            ..Default::default()
        },
        DlqFilter {
            tenant: Some("t2".into()),
            status: Some(Timeout),
            ..Default::default()
        },
        DlqFilter {
            tenant: Some("t1".into()),
            topic: Some("y".into()),
            status: Some(Cancelled),
        },
        DlqFilter {
            tenant: Some("nobody".into()),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let expected: Vec<DlqEntry> = all
            .iter()
            .filter(|e| {
                filter.tenant.as_deref().is_none_or(|t| t == e.tenant_id)
                    && filter.topic.as_deref().is_none_or(|t| t == e.topic)
                    && filter.status.is_none_or(|s| s == e.status)
            })
            .cloned()
            .collect();
        for limit in [1, 2, 3, 5, 100] {
            let got = dlq_all(&store, filter, limit).await;
            assert_eq!(
                got.iter().map(|e| &e.job_id).collect::<Vec<_>>(),
                expected.iter().map(|e| &e.job_id).collect::<Vec<_>>(),
                "{filter:?}, limit {limit}"
            );
            assert_eq!(got, expected);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Annotations and the due lists
// ---------------------------------------------------------------------------------------------

async fn check_annotation_applies_only_in_the_expected_state(store: SharedStore) {
    let t0 = now_ms() - 100_000;
    let a = created(&store, Req::default(), t0).await;
    let annotation = |expect: JobState, at: Millis, reason: Option<&str>| Annotation {
        expect,
        at,
        reason: reason.map(str::to_string),
        update: JobUpdate::default(),
        recheck_at: None,
    };

    // Not in the expected state: nothing happens.
    let before = get(&store, &a.id).await;
    let mut wrong = annotation(Scheduled, t0 + 1, Some("nope"));
    wrong.update.worker_id = Some("w".into());
    wrong.recheck_at = Some(t0 + 50);
    assert!(!store.annotate(&a.id, &wrong).await.unwrap());
    assert_eq!(get(&store, &a.id).await, before);
    assert_eq!(
        store.jobs_due(Pending, t0, 10).await.unwrap(),
        vec![a.id.clone()]
    );
    assert!(
        store
            .jobs_due(Scheduled, t0 + 100, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // In it: the reason is recorded once, with an event, and updates apply.
    let mut first = annotation(Pending, t0 + 5, Some("waiting for capacity"));
    first.update.safety_decision = Some("REVIEW".into());
    assert!(store.annotate(&a.id, &first).await.unwrap());
    let job = get(&store, &a.id).await;
    assert_eq!(job.state, Pending);
    assert_eq!(job.reason.as_deref(), Some("waiting for capacity"));
    assert_eq!(job.safety_decision.as_deref(), Some("REVIEW"));
    assert_eq!(
        job.history,
        vec![
            JobEvent {
                at: t0,
                state: Pending,
                note: None
            },
            JobEvent {
                at: t0 + 5,
                state: Pending,
                note: Some("waiting for capacity".into())
            },
        ]
    );

    // The same reason again: no second event.
    assert!(
        store
            .annotate(
                &a.id,
                &annotation(Pending, t0 + 6, Some("waiting for capacity"))
            )
            .await
            .unwrap()
    );
    assert_eq!(get(&store, &a.id).await.history.len(), 2);

    // No reason (or an empty one): the last one stays, only the update applies.
    assert!(
        store
            .annotate(&a.id, &annotation(Pending, t0 + 6, Some("")))
            .await
            .unwrap()
    );
    let mut quiet = annotation(Pending, t0 + 7, None);
    quiet.update.worker_id = Some("w-9".into());
    quiet.update.effective_config = Some(json!({"k": "v"}));
    assert!(store.annotate(&a.id, &quiet).await.unwrap());
    let job = get(&store, &a.id).await;
    assert_eq!(job.history.len(), 2);
    assert_eq!(job.reason.as_deref(), Some("waiting for capacity"));
    assert_eq!(job.worker_id.as_deref(), Some("w-9"));
    assert_eq!(job.effective_config, Some(json!({"k": "v"})));

    // A different reason is another event.
    assert!(
        store
            .annotate(&a.id, &annotation(Pending, t0 + 8, Some("quota exceeded")))
            .await
            .unwrap()
    );
    let job = get(&store, &a.id).await;
    assert_eq!(job.reason.as_deref(), Some("quota exceeded"));
    assert_eq!(
        job.history.last(),
        Some(&JobEvent {
            at: t0 + 8,
            state: Pending,
            note: Some("quota exceeded".into())
        })
    );
    assert_eq!(job.history.len(), 3);

    // A transition clears the reason.
    go(&store, &a.id, Scheduled, t0 + 9).await;
    let job = get(&store, &a.id).await;
    assert_eq!(job.reason, None);
    assert_eq!(states(&job), [Pending, Pending, Pending, Scheduled]);

    match store
        .annotate("no-such-job", &annotation(Pending, t0, Some("x")))
        .await
    {
        Err(StoreError::NotFound(id)) => assert_eq!(id, "no-such-job"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn check_jobs_due_are_oldest_first_and_follow_recheck_times(store: SharedStore) {
    let t = now_ms() - 100_000;
    let a = created(&store, Req::default(), t - 300).await.id;
    let b = created(&store, Req::default(), t - 200).await.id;
    let c = created(&store, Req::default(), t - 100).await.id;
    let due = |before: Millis, limit: usize| {
        let store = store.clone();
        async move { store.jobs_due(Pending, before, limit).await.unwrap() }
    };
    assert_eq!(due(t, 10).await, [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(
        due(t - 200, 10).await,
        [a.as_str(), b.as_str()],
        "the bound is inclusive"
    );
    assert_eq!(due(t - 301, 10).await, Vec::<String>::new());
    assert_eq!(due(t, 2).await, [a.as_str(), b.as_str()]);

    let recheck = |at: Millis| Annotation {
        expect: Pending,
        at: t,
        reason: None,
        update: JobUpdate::default(),
        recheck_at: Some(at),
    };
    // A later recheck time moves the job back in the queue...
    assert!(store.annotate(&a, &recheck(t - 150)).await.unwrap());
    assert_eq!(due(t, 10).await, [b.as_str(), a.as_str(), c.as_str()]);
    assert_eq!(due(t - 200, 10).await, [b.as_str()]);
    // ...and PARKED takes it out of any time-based look.
    assert!(store.annotate(&b, &recheck(PARKED)).await.unwrap());
    assert_eq!(due(t, 10).await, [a.as_str(), c.as_str()]);
    assert_eq!(due(PARKED - 1, 10).await, [a.as_str(), c.as_str()]);
    // Parked is not gone: the job still lists.
    let pending = list_all(
        &store,
        &JobFilter {
            state: Some(Pending),
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(pending.len(), 3);
    // Annotating in the wrong state does not move it.
    let mut wrong = recheck(t - 1_000);
    wrong.expect = Scheduled;
    assert!(!store.annotate(&c, &wrong).await.unwrap());
    assert_eq!(due(t, 10).await, [a.as_str(), c.as_str()]);

    // Other states are indexed by the time the job entered them; ties go by id.
    go(&store, &a, Scheduled, t + 10).await;
    go(&store, &c, Scheduled, t + 5).await;
    assert_eq!(
        store.jobs_due(Scheduled, t + 100, 10).await.unwrap(),
        [c.as_str(), a.as_str()]
    );
    assert_eq!(
        store.jobs_due(Scheduled, t + 5, 10).await.unwrap(),
        [c.as_str()]
    );
    assert!(due(t + 1_000, 10).await.is_empty());
    let d = created(&store, Req::default(), t).await.id;
    let e = created(&store, Req::default(), t).await.id;
    go(&store, &d, Scheduled, t + 5).await;
    go(&store, &e, Scheduled, t + 5).await;
    let mut tied = vec![c.clone(), d, e];
    tied.sort();
    tied.push(a);
    assert_eq!(store.jobs_due(Scheduled, t + 100, 10).await.unwrap(), tied);
}

async fn check_deadlines_due_earliest_first_until_terminal(store: SharedStore) {
    let now = now_ms();
    let with_deadline = |ms| Req {
        deadline_ms: Some(ms),
        ..Default::default()
    };
    let a = created(&store, with_deadline(1_000), now).await.id;
    let b = created(&store, with_deadline(2_000), now).await.id;
    let c = created(&store, with_deadline(3_000), now).await.id;
    let _no_deadline = created(&store, Req::default(), now).await.id;
    let due = |at: Millis, limit: usize| {
        let store = store.clone();
        async move { store.deadlines_due(at, limit).await.unwrap() }
    };
    assert!(due(now + 500, 10).await.is_empty());
    assert_eq!(
        due(now + 1_000, 10).await,
        [a.as_str()],
        "the bound is inclusive"
    );
    assert_eq!(
        due(now + 5_000, 10).await,
        [a.as_str(), b.as_str(), c.as_str()]
    );
    assert_eq!(due(now + 5_000, 2).await, [a.as_str(), b.as_str()]);

    // A non-terminal move keeps the deadline; a terminal one drops it.
    go(&store, &a, Scheduled, now + 1).await;
    assert_eq!(
        due(now + 5_000, 10).await,
        [a.as_str(), b.as_str(), c.as_str()]
    );
    go(&store, &a, Cancelled, now + 2).await;
    assert_eq!(due(now + 5_000, 10).await, [b.as_str(), c.as_str()]);
    let mut t = Transition::to(Succeeded, now + 3);
    t.via = vec![(Running, now + 2)];
    go(&store, &b, Dispatched, now + 1).await;
    store.transition(&b, &t).await.unwrap();
    assert_eq!(due(now + 5_000, 10).await, [c.as_str()]);
    go(&store, &c, Timeout, now + 3_000).await;
    assert!(due(now + 5_000, 10).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

async fn check_job_lists_filter_on_every_field(store: SharedStore) {
    let base = now_ms() - 100_000;
    let table: [(&str, &str, Option<&str>, &str); 7] = [
        ("t1", "x", Some("red"), "tr1"),
        ("t1", "y", Some("red"), "tr1"),
        ("t1", "x", None, "tr2"),
        ("t2", "x", Some("blue"), "tr1"),
        ("t2", "y", None, "tr2"),
        ("t2", "x", Some("red"), "tr3"),
        ("t1", "x", None, "tr1"),
    ];
    let mut ids = Vec::new();
    for (i, (tenant, topic, team, trace)) in table.into_iter().enumerate() {
        let spec = spec_at(
            Req {
                topic: if topic == "x" { "topic.x" } else { "topic.y" },
                tenant: Some(tenant),
                team,
                trace: Some(trace),
                deadline_ms: None,
            },
            base + 10 * i as Millis,
        );
        create(&store, &spec).await;
        ids.push(spec.id);
    }
    // A trace named after the job that started it (submitted without one): that job is listed
    // from its own record, its followers from the trace — created before it, after it, and at
    // the same time on either side of it by id.
    let root = spec_at(
        Req {
            topic: "topic.x",
            tenant: Some("t1"),
            ..Default::default()
        },
        base + 35,
    );
    assert_eq!(
        root.trace_id, root.id,
        "a job without a trace starts its own"
    );
    create(&store, &root).await;
    ids.push(root.id.clone());
    for (at, id) in [
        (base + 5, None),
        (base + 35, Some("00000000-tie-before")),
        (base + 35, Some("ffffffff-tie-after")),
        (base + 65, None),
    ] {
        let mut follower = spec_at(
            Req {
                topic: "topic.y",
                tenant: Some("t2"),
                ..Default::default()
            },
            at,
        );
        follower.trace_id = root.id.clone();
        if let Some(id) = id {
            follower.id = format!("{id}-{}", root.id);
        }
        create(&store, &follower).await;
        ids.push(follower.id);
    }
    go(&store, &root.id, Cancelled, base + 160).await;
    go(&store, &ids[1], Dispatched, base + 100).await;
    go(&store, &ids[1], Running, base + 110).await;
    go(&store, &ids[2], Dispatched, base + 120).await;
    go(&store, &ids[2], Succeeded, base + 130).await;
    go(&store, &ids[4], Cancelled, base + 140).await;
    go(&store, &ids[5], Scheduled, base + 150).await;
    let all: Vec<Job> = store
        .get_jobs(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.expect("every job exists"))
        .collect();

    let s = |v: &str| Some(v.to_string());
    let filters = vec![
        JobFilter {
            trace_id: s(&root.id),
            ..Default::default()
        },
        JobFilter {
            trace_id: s(&root.id),
            state: Some(Cancelled),
            ..Default::default()
        },
        JobFilter {
            trace_id: s(&root.id),
            tenant: s("t2"),
            ..Default::default()
        },
        JobFilter::default(),
        JobFilter {
            state: Some(Pending),
            ..Default::default()
        },
        JobFilter {
            state: Some(Running),
            ..Default::default()
        },
        JobFilter {
            state: Some(Succeeded),
            ..Default::default()
        },
        JobFilter {
            state: Some(Failed),
            ..Default::default()
        },
        JobFilter {
            topic: s("topic.x"),
            ..Default::default()
        },
        JobFilter {
            tenant: s("t2"),
            ..Default::default()
        },
        JobFilter {
            team: s("red"),
            ..Default::default()
        },
        JobFilter {
            trace_id: s("tr1"),
            ..Default::default()
        },
        JobFilter {
            updated_after: Some(base + 110),
            ..Default::default()
        },
        JobFilter {
            updated_before: Some(base + 40),
            ..Default::default()
        },
        JobFilter {
            updated_after: Some(base + 20),
            updated_before: Some(base + 140),
            ..Default::default()
        },
        JobFilter {
            tenant: s("t1"),
            state: Some(Pending),
            ..Default::default()
        },
        JobFilter {
            topic: s("topic.x"),
            team: s("red"),
            ..Default::default()
        },
        JobFilter {
            trace_id: s("tr1"),
            tenant: s("t2"),
            ..Default::default()
        },
        JobFilter {
            state: Some(Pending),
            updated_before: Some(base + 40),
            ..Default::default()
        },
        JobFilter {
            tenant: s("t1"),
            topic: s("topic.y"),
            team: s("red"),
            state: Some(Running),
            updated_after: Some(base),
            updated_before: Some(base + 1_000),
            trace_id: s("tr1"),
        },
        JobFilter {
            tenant: s("nobody"),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let mut expected: Vec<Job> = all
            .iter()
            .filter(|j| {
                filter.state.is_none_or(|s| s == j.state)
                    && filter.topic.as_ref().is_none_or(|t| *t == j.spec.topic)
                    && filter
                        .tenant
                        .as_ref()
                        .is_none_or(|t| *t == j.spec.tenant_id)
                    && filter
                        .team
                        .as_ref()
                        .is_none_or(|t| Some(t) == j.spec.team_id.as_ref())
                    && filter
                        .trace_id
                        .as_ref()
                        .is_none_or(|t| *t == j.spec.trace_id)
                    && filter.updated_after.is_none_or(|a| j.updated_at > a)
                    && filter.updated_before.is_none_or(|b| j.updated_at < b)
            })
            .cloned()
            .collect();
        if filter.trace_id.is_some() {
            // A trace lists its jobs in the order they were created.
            sort_desc(&mut expected, |j| (j.spec.created_at, j.spec.id.clone()));
        } else {
            sort_desc(&mut expected, |j| (j.updated_at, j.spec.id.clone()));
        }
        for limit in [1, 2, 3, 100] {
            let got = list_all(&store, filter, limit).await;
            assert_eq!(ids_of(&got), ids_of(&expected), "{filter:?}, limit {limit}");
            assert_eq!(got, expected);
        }
        let one_page = store
            .list_jobs(
                filter,
                &PageRequest {
                    limit: 100,
                    cursor: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(one_page.next_cursor, None, "everything fits in one page");
    }
}

async fn check_pages_through_identical_timestamps_exactly_once(store: SharedStore) {
    let t = now_ms() - 100_000;
    let req = Req {
        tenant: Some("tie"),
        ..Default::default()
    };
    for _ in 0..25 {
        created(&store, req.clone(), t).await;
    }
    for at in [t - 1, t - 1, t + 1, t + 1, t + 1] {
        created(&store, req.clone(), at).await;
    }
    let expect = |store: SharedStore| async move {
        let mut all: Vec<Job> = list_all(&store, &JobFilter::default(), 1_000).await;
        assert_eq!(all.len(), 30);
        sort_desc(&mut all, |j| (j.updated_at, j.spec.id.clone()));
        ids_of(&all)
    };
    let expected = expect(store.clone()).await;
    let tenant = JobFilter {
        tenant: Some("tie".into()),
        ..Default::default()
    };
    for limit in [1, 2, 4, 7, 25, 29, 30, 31] {
        assert_eq!(
            ids_of(&list_all(&store, &JobFilter::default(), limit).await),
            expected,
            "limit {limit}"
        );
        assert_eq!(
            ids_of(&list_all(&store, &tenant, limit).await),
            expected,
            "tenant index, limit {limit}"
        );
    }

    // A full last page still hands out a cursor; the page after it is empty and ends the list.
    let mut cursor = None;
    for _ in 0..10 {
        let page = store
            .list_jobs(
                &JobFilter::default(),
                &PageRequest {
                    limit: 3,
                    cursor: cursor.take(),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.items.len(), 3);
        cursor = Some(Cursor::decode(&page.next_cursor.expect("more to come")).unwrap());
    }
    let last = store
        .list_jobs(&JobFilter::default(), &PageRequest { limit: 3, cursor })
        .await
        .unwrap();
    assert!(last.items.is_empty());
    assert_eq!(last.next_cursor, None);

    // Moving some tied jobs together to one new time moves them to the top, still by id.
    let movers: Vec<String> = expected.iter().skip(5).step_by(4).cloned().collect();
    for id in &movers {
        go(&store, id, Scheduled, t + 2).await;
    }
    let expected = expect(store.clone()).await;
    let mut top = movers.clone();
    top.sort_by(|a, b| b.cmp(a));
    assert_eq!(expected[..movers.len()], top[..]);
    for limit in [1, 3, 6] {
        assert_eq!(
            ids_of(&list_all(&store, &JobFilter::default(), limit).await),
            expected
        );
        assert_eq!(ids_of(&list_all(&store, &tenant, limit).await), expected);
    }
}

/// More jobs tied on one timestamp than a page may look at (the scan budget is 2000 entries):
/// paging still returns each exactly once, for jobs and for dead letters alike.
async fn check_pages_through_more_ties_than_the_scan_budget(store: SharedStore) {
    const MANY: usize = 2_100;
    let t = now_ms() - 100_000;
    let req = Req {
        tenant: Some("crowd"),
        ..Default::default()
    };
    // One job older than the crowd, in a state nobody else is in.
    let loner = created(&store, req.clone(), t - 1_000).await.id;
    go(&store, &loner, Dispatched, t - 500).await;

    let specs: Vec<JobSpec> = (0..MANY).map(|_| spec_at(req.clone(), t)).collect();
    for chunk in specs.chunks(500) {
        let batch: Vec<NewJob> = chunk.iter().map(new_job).collect();
        for outcome in store.create_jobs(&batch).await.unwrap() {
            assert_eq!(outcome.unwrap(), CreateOutcome::Created);
        }
    }
    let mut expected: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    expected.sort_by(|a, b| b.cmp(a));
    let mut with_loner = expected.clone();
    with_loner.push(loner.clone());

    for filter in [
        JobFilter::default(),
        JobFilter {
            tenant: Some("crowd".into()),
            ..Default::default()
        },
    ] {
        assert_eq!(ids_of(&list_all(&store, &filter, 100).await), with_loner);
    }
    // A selective filter answers short pages (with a cursor) rather than scanning forever.
    let dispatched = JobFilter {
        state: Some(Dispatched),
        ..Default::default()
    };
    let first = store
        .list_jobs(
            &dispatched,
            &PageRequest {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert!(first.items.is_empty());
    assert!(first.next_cursor.is_some(), "the budget ran out: go on");
    assert_eq!(
        ids_of(&list_all(&store, &dispatched, 10).await),
        [loner.as_str()]
    );

    // Dead letters, all created at the same time.
    let failed_at = t + 10;
    let calls = specs.iter().map(|spec| {
        let store = store.clone();
        async move {
            let mut tr = Transition::to(Failed, failed_at);
            tr.dead_letter = Some(dead_letter(spec, Failed, failed_at));
            store.transition(&spec.id, &tr).await
        }
    });
    for (outcome, spec) in futures::future::join_all(calls)
        .await
        .into_iter()
        .zip(&specs)
    {
        assert_eq!(
            outcome.unwrap(),
            TransitionOutcome::Applied {
                from: Pending,
                run_id: None,
                tenant_id: "crowd".into(),
                created_at: spec.created_at,
            }
        );
    }
    let dlq: Vec<String> = dlq_all(&store, &DlqFilter::default(), 100)
        .await
        .into_iter()
        .map(|e| e.job_id)
        .collect();
    assert_eq!(dlq.len(), MANY);
    assert_eq!(dlq, expected);
    let failed = JobFilter {
        state: Some(Failed),
        ..Default::default()
    };
    assert_eq!(ids_of(&list_all(&store, &failed, 100).await), expected);
}

// ---------------------------------------------------------------------------------------------
// Pruning
// ---------------------------------------------------------------------------------------------

async fn check_prune_drops_the_index_entries_of_expired_jobs(store: SharedStore) {
    let t = now_ms();
    let bound = t - 5_000;
    let req = |team| Req {
        tenant: Some("p"),
        topic: "topic.p",
        team,
        trace: Some("trace-p"),
        deadline_ms: None,
    };
    // Three old jobs that finished (they expire a TTL later), then an old one still live.
    let old1 = created(&store, req(None), t - 10_000).await.id;
    let old2 = created(&store, req(Some("red")), t - 9_000).await.id;
    let old3 = created(&store, req(None), t - 8_000).await.id;
    for (id, at) in [(&old1, t - 9_500), (&old2, t - 8_500), (&old3, t - 7_500)] {
        go(&store, id, Cancelled, at).await;
    }
    let live = created(&store, req(Some("red")), t - 7_000).await.id;
    let at_bound = created(&store, req(None), bound).await.id;
    let fresh = created(&store, req(Some("red")), t).await.id;
    assert_eq!(
        store.prune_indexes(bound).await.unwrap(),
        0,
        "none expired yet"
    );

    tokio::time::sleep(Duration::from_millis(SHORT_TTL.job_ttl_ms + 200)).await;
    // Each expired job leaves the indexes of finished jobs: in memory the recent, tenant and
    // CANCELLED ones; on Redis the shard's and the tenant's paged ones.
    let per_job = if store.backend() == "memory" { 3 } else { 2 };
    assert_eq!(store.prune_indexes(bound).await.unwrap(), 3 * per_job);
    assert_eq!(store.prune_indexes(bound).await.unwrap(), 0);

    // The live job stays in every index, however old.
    let kept = [fresh.as_str(), at_bound.as_str(), live.as_str()];
    assert_eq!(
        ids_of(&list_all(&store, &JobFilter::default(), 10).await),
        kept
    );
    let tenant = JobFilter {
        tenant: Some("p".into()),
        ..Default::default()
    };
    assert_eq!(ids_of(&list_all(&store, &tenant, 10).await), kept);
    let topic = JobFilter {
        topic: Some("topic.p".into()),
        ..Default::default()
    };
    assert_eq!(ids_of(&list_all(&store, &topic, 10).await), kept);
    let team = JobFilter {
        team: Some("red".into()),
        ..Default::default()
    };
    assert_eq!(
        ids_of(&list_all(&store, &team, 10).await),
        [fresh.as_str(), live.as_str()]
    );
    assert_eq!(
        store.jobs_due(Pending, t, 10).await.unwrap(),
        [live.as_str(), at_bound.as_str(), fresh.as_str()]
    );
    assert_eq!(get(&store, &live).await.state, Pending);
    let trace = JobFilter {
        trace_id: Some("p~trace-p".into()),
        ..Default::default()
    };
    assert_eq!(ids_of(&list_all(&store, &trace, 10).await), kept);
}

// ---------------------------------------------------------------------------------------------
// Config documents
// ---------------------------------------------------------------------------------------------

async fn check_config_documents_follow_if_match(store: SharedStore) {
    let now = now_ms();
    let v1 = json!({"max_concurrency": 4, "pool": {"gpu": true}});
    let v2 = json!({"max_concurrency": 8});

    let doc = store.config_put("system", &v1, None, now).await.unwrap();
    assert_eq!(
        doc,
        ConfigDoc {
            data: v1.clone(),
            revision: 1,
            updated_at: now
        }
    );
    let doc = store
        .config_put("system", &v2, Some(1), now + 1)
        .await
        .unwrap();
    assert_eq!(doc.revision, 2);
    match store.config_put("system", &v1, Some(1), now + 2).await {
        Err(StoreError::Conflict { current }) => assert_eq!(current, 2),
        other => panic!("a stale If-Match must conflict, got {other:?}"),
    }
    // A missing document has revision 0.
    match store.config_put("tenant:a", &v1, Some(3), now).await {
        Err(StoreError::Conflict { current }) => assert_eq!(current, 0),
        other => panic!("expected a conflict at revision 0, got {other:?}"),
    }
    let doc = store
        .config_put("tenant:a", &json!("scalar"), Some(0), now + 3)
        .await
        .unwrap();
    assert_eq!(doc.revision, 1);
    // Without If-Match a put always applies.
    let doc = store
        .config_put("tenant:a", &json!([1, 2]), None, now + 4)
        .await
        .unwrap();
    assert_eq!(doc.revision, 2);

    let docs = store
        .config_get(&["tenant:a".into(), "missing".into(), "system".into()])
        .await
        .unwrap();
    assert_eq!(
        docs,
        vec![
            Some(ConfigDoc {
                data: json!([1, 2]),
                revision: 2,
                updated_at: now + 4
            }),
            None,
            Some(ConfigDoc {
                data: v2.clone(),
                revision: 2,
                updated_at: now + 1
            }),
        ]
    );
    assert!(store.config_get(&[]).await.unwrap().is_empty());

    match store.config_delete("system", Some(1)).await {
        Err(StoreError::Conflict { current }) => assert_eq!(current, 2),
        other => panic!("a stale If-Match must conflict, got {other:?}"),
    }
    assert!(store.config_get(&["system".into()]).await.unwrap()[0].is_some());
    assert!(store.config_delete("system", Some(2)).await.unwrap());
    assert_eq!(
        store.config_get(&["system".into()]).await.unwrap(),
        vec![None]
    );
    assert!(!store.config_delete("system", None).await.unwrap());
    assert!(!store.config_delete("system", Some(0)).await.unwrap());
    match store.config_delete("system", Some(2)).await {
        Err(StoreError::Conflict { current }) => assert_eq!(current, 0),
        other => panic!("expected a conflict at revision 0, got {other:?}"),
    }
    // A deleted document starts again from revision 1.
    let doc = store
        .config_put("system", &v1, Some(0), now + 5)
        .await
        .unwrap();
    assert_eq!(doc.revision, 1);
    assert!(store.config_delete("tenant:a", None).await.unwrap());
}

async fn check_config_keys_list_a_prefix_in_byte_order_after_a_key(store: SharedStore) {
    let now = now_ms();
    let keys = [
        "team:payments",
        "org:acme",
        "step:acme~wf~build",
        "org:beta",
        "system:default",
        "workflow:acme~wf",
        "org:acme2",
        "workflow:beta~wf",
    ];
    for k in keys {
        store.config_put(k, &json!({}), None, now).await.unwrap();
    }
    let mut all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    all.sort();
    assert_eq!(store.config_keys("", None, 100).await.unwrap(), all);
    // Paged by the last key read.
    let first = store.config_keys("", None, 3).await.unwrap();
    assert_eq!(first, all[..3]);
    let rest = store
        .config_keys("", first.last().map(String::as_str), 100)
        .await
        .unwrap();
    assert_eq!(rest, all[3..]);
    // A prefix is one range: an org's workflows, not another's whose name starts the same.
    assert_eq!(
        store.config_keys("org:acme", None, 100).await.unwrap(),
        ["org:acme", "org:acme2"]
    );
    assert_eq!(
        store
            .config_keys("workflow:acme~", None, 100)
            .await
            .unwrap(),
        ["workflow:acme~wf"]
    );
    // A position before the prefix starts it; one past it ends it.
    assert_eq!(
        store.config_keys("org:", Some("a"), 1).await.unwrap(),
        ["org:acme"]
    );
    assert!(
        store
            .config_keys("org:", Some("org:z"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A deleted document leaves the list.
    assert!(store.config_delete("org:beta", None).await.unwrap());
    assert_eq!(
        store.config_keys("org:", None, 100).await.unwrap(),
        ["org:acme", "org:acme2"]
    );
}

async fn check_jobs_are_counted_by_state(store: SharedStore) {
    let mut clock = now_ms() - 100_000;
    let live = [Pending, Scheduled, Dispatched, Running];
    assert_eq!(store.count_jobs(&live).await.unwrap(), [0, 0, 0, 0]);
    for state in [
        Pending, Pending, Dispatched, Running, Running, Running, Succeeded,
    ] {
        job_in(&store, state, &mut clock).await;
    }
    assert_eq!(store.count_jobs(&live).await.unwrap(), [2, 0, 1, 3]);
    // Counts are of live jobs: a finished one is counted by no state.
    assert_eq!(
        store.count_jobs(&[Running, Succeeded]).await.unwrap(),
        [3, 0]
    );
    assert!(store.count_jobs(&[]).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------

async fn check_locks_belong_to_one_owner_until_they_expire(store: SharedStore) {
    let long = 60_000;
    assert!(store.lock_acquire("reconciler", "a", long).await.unwrap());
    assert!(!store.lock_acquire("reconciler", "b", long).await.unwrap());
    assert!(
        store.lock_acquire("reconciler", "a", long).await.unwrap(),
        "the owner renews"
    );
    assert!(!store.lock_release("reconciler", "b").await.unwrap());
    assert!(
        !store.lock_acquire("reconciler", "b", long).await.unwrap(),
        "a stranger's release changes nothing"
    );
    assert!(store.lock_release("reconciler", "a").await.unwrap());
    assert!(!store.lock_release("reconciler", "a").await.unwrap());
    assert!(store.lock_acquire("reconciler", "b", long).await.unwrap());
    assert!(!store.lock_release("never-taken", "a").await.unwrap());
    // Locks are independent by name.
    assert!(store.lock_acquire("other", "a", long).await.unwrap());

    // Expiry lets another owner in; the old owner can no longer release it.
    assert!(store.lock_acquire("short", "a", 150).await.unwrap());
    assert!(!store.lock_acquire("short", "b", 150).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.lock_acquire("short", "b", long).await.unwrap());
    assert!(!store.lock_release("short", "a").await.unwrap());
    assert!(!store.lock_acquire("short", "a", long).await.unwrap());

    // Renewal pushes expiry out.
    assert!(store.lock_acquire("renewed", "a", 400).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store.lock_acquire("renewed", "a", 400).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !store.lock_acquire("renewed", "b", 400).await.unwrap(),
        "renewed 250ms ago for 400ms"
    );
    assert!(store.lock_release("renewed", "a").await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Claims: a worker's report moves only the job assigned to it
// ---------------------------------------------------------------------------------------------

fn claim(worker: &str, lease: &str) -> Option<Claim> {
    Some(Claim {
        worker_id: worker.into(),
        lease: lease.into(),
    })
}

async fn claimed(
    store: &SharedStore,
    id: &str,
    to: JobState,
    c: Option<Claim>,
) -> TransitionOutcome {
    let t = Transition::to(to, now_ms()).claimed_by(c);
    store
        .transition(id, &t)
        .await
        .unwrap_or_else(|e| panic!("claimed transition of {id} to {to}: {e}"))
}

async fn check_a_claimed_transition_applies_only_for_the_assignment(store: SharedStore) {
    let t0 = now_ms() - 100_000;
    // Nothing recorded yet (the dispatch is not written): the claim's transition writes it.
    let a = created(&store, Req::default(), t0).await;
    let mut t = Transition::to(Dispatched, t0 + 1).claimed_by(claim("w-1", "L1"));
    t.update.worker_id = Some("w-1".into());
    t.update.worker_instance = Some("i-1".into());
    t.update.lease = Some("L1".into());
    assert!(matches!(
        store.transition(&a.id, &t).await.unwrap(),
        TransitionOutcome::Applied { .. }
    ));
    let job = get(&store, &a.id).await;
    assert_eq!(
        (
            job.worker_id.as_deref(),
            job.worker_instance.as_deref(),
            job.lease.as_deref()
        ),
        (Some("w-1"), Some("i-1"), Some("L1"))
    );
    // Another lease, another worker, or the lease under another worker's name: refused, and
    // nothing changes — before the state is even looked at.
    for (worker, lease) in [("w-1", "L2"), ("w-2", "L2"), ("w-2", "L1")] {
        for to in [Running, Succeeded, Dispatched] {
            assert_eq!(
                claimed(&store, &a.id, to, claim(worker, lease)).await,
                TransitionOutcome::OtherWorker,
                "{worker} {lease} → {to}"
            );
        }
    }
    let job = get(&store, &a.id).await;
    assert_eq!(job.state, Dispatched);
    assert_eq!(job.history.len(), 2);
    // The assignment's own claim moves it; a transition without a claim (the host's own)
    // is not asked.
    assert!(matches!(
        claimed(&store, &a.id, Running, claim("w-1", "L1")).await,
        TransitionOutcome::Applied { .. }
    ));
    assert!(matches!(
        claimed(&store, &a.id, Succeeded, None).await,
        TransitionOutcome::Applied { .. }
    ));
    // A finished job keeps the worker it ran on, not the lease and instance only a live
    // job's reports and watch use.
    let job = get(&store, &a.id).await;
    assert_eq!(
        (
            job.worker_id.as_deref(),
            job.worker_instance.as_deref(),
            job.lease.as_deref()
        ),
        (Some("w-1"), None, None)
    );
    // Finished: the assignment's claim meets the transition table, a stranger's is refused.
    assert!(matches!(
        store
            .transition(
                &a.id,
                &Transition::to(Failed, now_ms()).claimed_by(claim("w-1", "L1"))
            )
            .await,
        Err(StoreError::IllegalTransition { .. })
    ));
    assert_eq!(
        claimed(&store, &a.id, Failed, claim("w-2", "L2")).await,
        TransitionOutcome::OtherWorker
    );

    // A job recorded with a worker and no lease (dispatched by a host older than leases):
    // that worker's claims only.
    let b = created(&store, Req::default(), t0).await;
    let mut t = Transition::to(Dispatched, t0 + 1);
    t.update.worker_id = Some("w-old".into());
    store.transition(&b.id, &t).await.unwrap();
    assert_eq!(
        claimed(&store, &b.id, Running, claim("w-new", "L")).await,
        TransitionOutcome::OtherWorker
    );
    assert!(matches!(
        claimed(&store, &b.id, Running, claim("w-old", "L")).await,
        TransitionOutcome::Applied { .. }
    ));

    // A dispatch written together with the job's finish (a quick job's one script): the
    // finished record holds neither its lease nor its instance either.
    let c = created(&store, Req::default(), t0).await;
    let mut t = Transition::to(Succeeded, t0 + 3)
        .through(Dispatched, t0 + 1)
        .through(Running, t0 + 2)
        .claimed_by(claim("w-3", "L3"));
    t.update.worker_id = Some("w-3".into());
    t.update.worker_instance = Some("i-3".into());
    t.update.lease = Some("L3".into());
    assert!(matches!(
        store.transition(&c.id, &t).await.unwrap(),
        TransitionOutcome::Applied { .. }
    ));
    let job = get(&store, &c.id).await;
    assert_eq!(states(&job), vec![Pending, Dispatched, Running, Succeeded]);
    assert_eq!(
        (
            job.worker_id.as_deref(),
            job.worker_instance.as_deref(),
            job.lease.as_deref()
        ),
        (Some("w-3"), None, None)
    );

    // A job that is not stored answers so, claim or not.
    assert!(matches!(
        store
            .transition(
                "default~nope",
                &Transition::to(Running, t0).claimed_by(claim("w", "L"))
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// The replicas' shared secret
// ---------------------------------------------------------------------------------------------

async fn check_the_shared_secret_is_made_once(store: SharedStore) {
    let asked = futures::future::join_all((0..8).map(|_| store.shared_secret())).await;
    let first = asked[0].as_ref().expect("shared_secret").clone();
    assert_eq!(first.len(), SHARED_SECRET_BYTES);
    assert!(first.iter().any(|b| *b != 0), "random, not zeros");
    for a in &asked {
        assert_eq!(
            a.as_ref().unwrap(),
            &first,
            "every caller gets the same secret"
        );
    }
    assert_eq!(store.shared_secret().await.unwrap(), first, "for good");
}

/// Two replicas (two connections, one key prefix) share one secret; another deployment (another
/// prefix) has its own.
#[tokio::test]
async fn redis_replicas_share_one_secret_and_deployments_do_not() {
    let (a, keys) = redis_store(StoreOptions::default()).await;
    let b = RedisStore::connect(&keys.url, &keys.prefix, StoreOptions::default())
        .await
        .expect("a second replica connects");
    let (other, _other_keys) = redis_store(StoreOptions::default()).await;
    let (sa, sb) = tokio::join!(a.shared_secret(), b.shared_secret());
    assert_eq!(sa.unwrap(), sb.unwrap());
    assert_ne!(
        a.shared_secret().await.unwrap(),
        other.shared_secret().await.unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// TTL
// ---------------------------------------------------------------------------------------------

const SHORT_TTL: StoreOptions = StoreOptions {
    job_ttl_ms: 600,
    idempotency_ttl_ms: 600,
    shards: coretex::store::DEFAULT_SHARDS,
    wait_replicas: 0,
    // Pages of two entries: the expiry checks prune finished jobs' indexes over many pages.
    index_page: 2,
};

async fn check_jobs_expire_after_their_ttl(store: SharedStore) {
    let now = now_ms();
    let a = spec_at(
        Req {
            trace: Some("trace-a"),
            ..Default::default()
        },
        now,
    );
    let keyed = |spec: &JobSpec| NewJob {
        spec: spec.clone(),
        idempotency_key: Some("idem".into()),
        note: None,
    };
    assert_eq!(
        store.create_job(&keyed(&a)).await.unwrap(),
        CreateOutcome::Created
    );
    let in_b = || Req {
        trace: Some("trace-b"),
        ..Default::default()
    };
    let b = created(&store, in_b(), now).await;
    // A job expires a TTL after it finished.
    go(&store, &b.id, Cancelled, now_ms()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d = created(&store, in_b(), now_ms()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(store.get_job(&b.id).await.unwrap(), None, "b has expired");
    let both = store.get_jobs(&[a.id.clone(), b.id.clone()]).await.unwrap();
    assert!(both[0].is_some() && both[1].is_none());
    assert!(matches!(
        store
            .transition(&b.id, &Transition::to(Cancelled, now_ms()))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let trace_b = JobFilter {
        trace_id: Some("default~trace-b".into()),
        ..Default::default()
    };
    assert_eq!(
        ids_of(&list_all(&store, &trace_b, 10).await),
        [d.id.as_str()],
        "a live job still lists under its trace, created after a sibling finished"
    );

    // A job that never finishes never expires, nor does its trace while it lives.
    go(&store, &d.id, Dispatched, now_ms()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(&store, &a.id).await.state, Pending);
    assert_eq!(get(&store, &d.id).await.state, Dispatched);
    let trace_a = JobFilter {
        trace_id: Some("default~trace-a".into()),
        ..Default::default()
    };
    assert_eq!(
        ids_of(&list_all(&store, &trace_a, 10).await),
        [a.id.as_str()]
    );
    assert_eq!(
        ids_of(&list_all(&store, &trace_b, 10).await),
        [d.id.as_str()]
    );
    go(&store, &d.id, Succeeded, now_ms()).await;

    // The idempotency key expired, and the id of b is free again.
    let c = simple_spec(now_ms());
    assert_eq!(
        store.create_job(&keyed(&c)).await.unwrap(),
        CreateOutcome::Created
    );
    let again = JobSpec {
        id: b.id.clone(),
        ..spec_at(in_b(), now_ms())
    };
    create(&store, &again).await;
    assert_eq!(get(&store, &b.id).await.history.len(), 1);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.get_job(&d.id).await.unwrap(), None, "d has expired");
    assert_eq!(
        ids_of(&list_all(&store, &trace_b, 10).await),
        [b.id.as_str()]
    );
}

fn run_at(id: &str, status: Status, started_at: Millis) -> Run {
    Run {
        id: id.into(),
        workflow_id: "wf-ttl".into(),
        workflow_version: 1,
        org_id: "default".into(),
        team_id: String::new(),
        input: json!({}),
        context: json!({}),
        status,
        steps: BTreeMap::new(),
        started_at,
        completed_at: None,
        output: None,
        error: None,
        revision: 0,
    }
}

async fn run_ids(store: &SharedStore, filter: RunFilter) -> Vec<String> {
    let page = PageRequest {
        limit: 50,
        cursor: None,
    };
    let got = store.run_list(&filter, &page).await.unwrap();
    got.items.into_iter().map(|r| r.id).collect()
}

async fn check_finished_runs_expire_and_their_index_entries_are_pruned(store: SharedStore) {
    let now = now_ms();
    let mut done = run_at("run-done", Status::Running, now);
    done.revision = store.run_put(&done).await.unwrap();
    done.status = Status::Succeeded;
    store.run_put(&done).await.unwrap();
    // Unfinished runs never expire, however old.
    let waiting = run_at("run-waiting", Status::Waiting, now - 3_600_000);
    store.run_put(&waiting).await.unwrap();
    let by_workflow = || RunFilter {
        workflow_id: Some("wf-ttl".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        run_ids(&store, by_workflow()).await,
        ["run-done", "run-waiting"]
    );
    assert_eq!(
        store.run_prune_indexes().await.unwrap(),
        0,
        "nothing expired yet"
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.run_get("run-done").await.unwrap(), None, "expired");
    assert!(store.run_get("run-waiting").await.unwrap().is_some());
    assert_eq!(run_ids(&store, by_workflow()).await, ["run-waiting"]);
    assert_eq!(run_ids(&store, RunFilter::default()).await, ["run-waiting"]);
    let succeeded = RunFilter {
        status: Some(Status::Succeeded),
        ..RunFilter::default()
    };
    assert!(run_ids(&store, succeeded).await.is_empty());
    // Its entries in the all-runs, workflow, org and status indexes go; the live run's stay.
    assert_eq!(store.run_prune_indexes().await.unwrap(), 4);
    assert_eq!(store.run_prune_indexes().await.unwrap(), 0);
    assert_eq!(run_ids(&store, by_workflow()).await, ["run-waiting"]);
    // The id is free again: a new run saves as revision 1.
    assert_eq!(
        store
            .run_put(&run_at("run-done", Status::Running, now_ms()))
            .await
            .unwrap(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

fn memory_store(opts: StoreOptions) -> SharedStore {
    Arc::new(MemoryStore::new(opts))
}

#[path = "common/servers.rs"]
mod servers;
use servers::{redis_cluster_url, redis_url};

/// Deletes a test's keys when the test ends, passed or failed.
struct RedisKeys {
    url: String,
    prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        use ::redis::Commands;
        let Ok(client) = ::redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = match conn.scan_match::<_, String>(format!("{}*", self.prefix)) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: ::redis::RedisResult<()> = conn.del(chunk);
        }
    }
}

/// Hundreds of transitions in flight at once (the Redis store sends them in shared batched
/// script calls): each caller gets its own job's answer, legal or not, and a step job's answer
/// names its run; every answer names its job's tenant.
async fn check_concurrent_transitions_each_get_their_own_answer(store: SharedStore) {
    let now = now_ms();
    let mut specs = Vec::new();
    for i in 0..300 {
        let mut spec = simple_spec(now);
        if i % 3 == 0 {
            spec.run_id = Some(format!("run-{i}"));
        }
        spec.tenant_id = format!("tenant-{}", i % 7);
        specs.push(spec);
    }
    let news: Vec<NewJob> = specs.iter().map(new_job).collect();
    let created = store.create_jobs(&news).await.expect("create_jobs");
    assert!(
        created
            .iter()
            .all(|c| matches!(c, Ok(CreateOutcome::Created)))
    );
    // Every other job is dispatched first; then all go for RUNNING at once, which only the
    // dispatched ones may.
    let to_dispatched = Transition::to(Dispatched, now + 1);
    let dispatched = futures::future::join_all(
        specs
            .iter()
            .step_by(2)
            .map(|s| store.transition(&s.id, &to_dispatched)),
    )
    .await;
    assert!(
        dispatched
            .iter()
            .all(|d| matches!(d, Ok(TransitionOutcome::Applied { from: Pending, .. })))
    );
    let to_running = Transition::to(Running, now + 2);
    let answers =
        futures::future::join_all(specs.iter().map(|s| store.transition(&s.id, &to_running))).await;
    for (i, (spec, answer)) in specs.iter().zip(answers).enumerate() {
        if i % 2 == 0 {
            let outcome = answer.unwrap_or_else(|e| panic!("job {i}: {e}"));
            assert_eq!(
                outcome,
                TransitionOutcome::Applied {
                    from: Dispatched,
                    run_id: spec.run_id.clone(),
                    tenant_id: spec.tenant_id.clone(),
                    created_at: spec.created_at,
                },
                "job {i}"
            );
            assert_eq!(get(&store, &spec.id).await.state, Running);
        } else {
            assert!(
                matches!(
                    answer,
                    Err(StoreError::IllegalTransition {
                        from: Pending,
                        to: Running
                    })
                ),
                "job {i}: {answer:?}"
            );
            assert_eq!(get(&store, &spec.id).await.state, Pending);
        }
    }
    let missing = store
        .transition("no-such-job", &Transition::to(Running, now))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

/// A job that moves twice within one batched call (queued together, the Redis store sends both
/// moves in one script call, whose index writes go out at its end) is listed in the state its
/// last move put it in, and only there.
async fn check_two_moves_queued_together_leave_a_job_in_its_last_state(store: SharedStore) {
    two_moves_queued_together(&store).await;
}

/// The scenario of [`check_two_moves_queued_together_leave_a_job_in_its_last_state`]; answers
/// the jobs' ids.
async fn two_moves_queued_together(store: &SharedStore) -> Vec<String> {
    let now = now_ms();
    let specs: Vec<JobSpec> = (0..200).map(|_| simple_spec(now)).collect();
    let news: Vec<NewJob> = specs.iter().map(new_job).collect();
    store.create_jobs(&news).await.expect("create_jobs");
    let (to_dispatched, to_running) = (
        Transition::to(Dispatched, now + 1),
        Transition::to(Running, now + 2),
    );
    // Each job's two moves are queued one after the other, all before any is sent.
    let answers = futures::future::join_all(specs.iter().flat_map(|s| {
        [
            store.transition(&s.id, &to_dispatched),
            store.transition(&s.id, &to_running),
        ]
    }))
    .await;
    for (i, a) in answers.iter().enumerate() {
        assert!(
            matches!(a, Ok(TransitionOutcome::Applied { .. })),
            "move {i}: {a:?}"
        );
    }
    let listed = |state| JobFilter {
        state: Some(state),
        ..Default::default()
    };
    let mut running = ids_of(&list_all(store, &listed(Running), 100).await);
    let mut expected: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    running.sort();
    expected.sort();
    assert_eq!(running, expected, "every job is listed as RUNNING");
    for state in [Pending, Dispatched] {
        assert!(
            list_all(store, &listed(state), 100).await.is_empty(),
            "no job is left in the {state} index"
        );
    }
    let recent = list_all(store, &JobFilter::default(), 100).await;
    assert_eq!(recent.len(), specs.len(), "each job is listed once");
    expected
}

/// The same, read from Redis's own index sets: a list filters entries whose record moved on, so
/// a stale entry would not show through the store's API, only cost every later scan.
#[tokio::test]
async fn redis_two_moves_queued_together_leave_no_stale_index_entry() {
    use ::redis::AsyncCommands;
    let (store, keys) = redis_store(StoreOptions::default()).await;
    let ids = two_moves_queued_together(&store).await;
    let mut conn = raw_connection(&keys).await;
    // Each shard keeps its own indexes: the counts are their sums.
    let mut zcard = async |index: &str| -> usize {
        let mut n = 0;
        for tag in shard_tags(DEFAULT_SHARDS) {
            let key = format!("{}{tag}:{index}", keys.prefix);
            n += conn.zcard::<_, usize>(&key).await.expect("ZCARD");
        }
        n
    };
    for (state, count) in [("PENDING", 0), ("DISPATCHED", 0), ("RUNNING", ids.len())] {
        assert_eq!(zcard(&format!("idx:state:{state}")).await, count, "{state}");
    }
    assert_eq!(zcard("idx:recent").await, ids.len());
}

/// A rolling upgrade: a job written, and moved to DISPATCHED, by the version before the lean
/// record (its whole spec as JSON in `spec`, its history as JSON events `h:1` … `h:{hn}`, long
/// field names, every index entry) reads back whole, and this version moves it on — the claim
/// checked against its recorded assignment, new events after the old ones, the fields it set
/// earlier kept — and lists it.
#[tokio::test]
async fn redis_a_record_written_before_the_lean_layout_is_read_and_moved_on() {
    use ::redis::AsyncCommands;
    let (store, keys) = redis_store(StoreOptions::default()).await;
    let mut conn = raw_connection(&keys).await;
    let t0 = now_ms() - 10_000;
    let mut spec = spec_at(
        Req {
            topic: "job.old",
            tenant: Some("acme"),
            team: Some("ops"),
            ..Default::default()
        },
        t0,
    );
    spec.payload =
        json!({"order": 42, "note": "a payload longer than sixty-four bytes, as many are"});
    spec.labels.insert("region".into(), "eu".into());
    let id = spec.id.clone();
    let config = json!({"timeout_ms": 5000});
    let event = |at: Millis, state: JobState, note: Option<&str>| {
        serde_json::to_string(&JobEvent {
            at,
            state,
            note: note.map(str::to_string),
        })
        .unwrap()
    };
    let p = &shard_prefix(&keys.prefix, &id, DEFAULT_SHARDS);
    let key = format!("{p}job:{{{id}}}");
    let fields: Vec<(&str, String)> = vec![
        ("spec", serde_json::to_string(&spec).unwrap()),
        ("state", "DISPATCHED".into()),
        ("created", t0.to_string()),
        ("updated_at", (t0 + 1).to_string()),
        ("tenant", "acme".into()),
        ("topic", "job.old".into()),
        ("team", "ops".into()),
        ("trace", id.clone()),
        ("hn", "2".into()),
        ("h:1", event(t0, Pending, Some("accepted"))),
        ("h:2", event(t0 + 1, Dispatched, None)),
        ("reason", String::new()),
        ("worker_id", "w-old".into()),
        ("lease", "lease-1".into()),
        ("effective_config", config.to_string()),
        ("safety_decision", "ALLOW".into()),
        ("safety_reason", "no safety policy".into()),
    ];
    let _: () = conn.hset_multiple(&key, &fields).await.expect("HSET");
    for index in [
        "idx:state:DISPATCHED".to_string(),
        "idx:recent".to_string(),
        "idx:tenant:{acme}".to_string(),
    ] {
        let _: () = conn
            .zadd(format!("{p}{index}"), &id, t0 + 1)
            .await
            .expect("ZADD");
    }

    let job = get(&store, &id).await;
    assert_eq!(job.spec, spec, "the spec reads back whole");
    assert_eq!(job.state, Dispatched);
    let events: Vec<_> = job
        .history
        .iter()
        .map(|e| (e.at, e.state, e.note.as_deref()))
        .collect();
    assert_eq!(
        events,
        [(t0, Pending, Some("accepted")), (t0 + 1, Dispatched, None)]
    );
    assert_eq!(job.effective_config.as_ref(), Some(&config));
    assert_eq!(job.safety_reason.as_deref(), Some("no safety policy"));
    assert_eq!(job.reason, None);

    // Another dispatch's claim is refused; the recorded one moves it on.
    let t = Transition::to(Running, t0 + 2).claimed_by(claim("w-old", "lease-2"));
    assert_eq!(
        store.transition(&id, &t).await.unwrap(),
        TransitionOutcome::OtherWorker
    );
    let mut t = Transition::to(Succeeded, t0 + 3)
        .through(Running, t0 + 2)
        .note("done, at last")
        .claimed_by(claim("w-old", "lease-1"));
    t.update.result = Some(json!({"ok": true}));
    t.update.execution_ms = Some(7);
    match store.transition(&id, &t).await.unwrap() {
        TransitionOutcome::Applied {
            from,
            tenant_id,
            created_at,
            ..
        } => assert_eq!(
            (from, tenant_id.as_str(), created_at),
            (Dispatched, "acme", t0)
        ),
        other => panic!("the transition should apply: {other:?}"),
    }
    let job = get(&store, &id).await;
    assert_eq!(job.state, Succeeded);
    assert_eq!(job.spec, spec);
    assert_eq!(
        job.history
            .iter()
            .map(|e| (e.at, e.state))
            .collect::<Vec<_>>(),
        vec![
            (t0, Pending),
            (t0 + 1, Dispatched),
            (t0 + 2, Running),
            (t0 + 3, Succeeded)
        ]
    );
    assert_eq!(
        job.history.last().and_then(|e| e.note.as_deref()),
        Some("done, at last")
    );
    assert_eq!(job.result, Some(json!({"ok": true})));
    assert_eq!(job.execution_ms, Some(7));
    assert_eq!(job.worker_id.as_deref(), Some("w-old"));
    assert_eq!(job.effective_config.as_ref(), Some(&config));
    assert_eq!(job.updated_at, t0 + 3);
    let listed = list_all(
        &store,
        &JobFilter {
            tenant: Some("acme".into()),
            team: Some("ops".into()),
            state: Some(Succeeded),
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(ids_of(&listed), vec![id.clone()]);
    let ttl: i64 = conn.pttl(&key).await.expect("PTTL");
    assert!(ttl > 0, "a finished job expires, whoever wrote it: {ttl}");
}

/// The lean record in Redis: a job's hash stays in Redis's compact encoding (every value
/// within 64 bytes, longer ones in pieces) through its whole life, holds neither its tenant
/// nor its trace (both follow from its id), and an effective config too large to inline is
/// stored once for all the jobs dispatched with it, expiring with the last of them.
#[tokio::test]
async fn redis_job_records_are_compact_and_share_their_effective_config() {
    use ::redis::AsyncCommands;
    let (store, keys) = redis_store(StoreOptions::default()).await;
    let mut conn = raw_connection(&keys).await;
    let t0 = now_ms() - 10_000;
    let config =
        json!({"retry": {"max_attempts": 3}, "safety": {"denied_topics": ["job.danger.*"]}});
    let small = json!({"a": 1});
    let mut ids: Vec<String> = Vec::new();
    for (i, cfg) in [&config, &config, &small].into_iter().enumerate() {
        let mut spec = simple_spec(t0);
        // The two jobs that share a config in one shard (a config is stored once per shard).
        while i == 1 && shard_of(&spec.id, DEFAULT_SHARDS) != shard_of(&ids[0], DEFAULT_SHARDS) {
            spec = simple_spec(t0);
        }
        spec.payload = json!({"i": i});
        create(&store, &spec).await;
        let mut t = Transition::to(Succeeded, t0 + 3)
            .through(Dispatched, t0 + 1)
            .through(Running, t0 + 2);
        t.update = JobUpdate {
            worker_id: Some("w1".into()),
            worker_instance: Some(uuid::Uuid::new_v4().to_string()),
            lease: Some(format!("1.{t0}.45bcb6b3925e4750.HsQhQ93pemxP1os4KJNwog")),
            effective_config: Some(cfg.clone()),
            safety_decision: Some("ALLOW".into()),
            safety_reason: Some("no safety policy".into()),
            result: Some(json!({"i": i})),
            execution_ms: Some(0),
            ..Default::default()
        };
        store.transition(&spec.id, &t).await.unwrap();
        let job = get(&store, &spec.id).await;
        assert_eq!(job.effective_config.as_ref(), Some(cfg));
        assert_eq!(job.spec, spec);
        assert_eq!(states(&job), vec![Pending, Dispatched, Running, Succeeded]);
        ids.push(spec.id);
    }
    for id in &ids {
        let key = format!(
            "{}job:{{{id}}}",
            shard_prefix(&keys.prefix, id, DEFAULT_SHARDS)
        );
        assert_eq!(encoding(&mut conn, &key).await, "listpack", "{key}");
        let stored: Vec<String> = conn.hkeys(&key).await.expect("HKEYS");
        // (Nor a finished job's lease and worker instance, written with its finish here.)
        for derived in [
            "tenant",
            "trace",
            "spec",
            "team",
            "reason",
            "lease",
            "worker_instance",
        ] {
            assert!(
                !stored.iter().any(|f| f == derived),
                "{key} holds {derived}"
            );
        }
    }
    // Values longer than 64 bytes — a payload, a waiting reason and its history note, a
    // result, an error — go in pieces, cut between the bytes of a character or not, and the
    // hash stays compact; a reason replaced by a shorter one leaves no piece behind.
    let mut spec = simple_spec(t0);
    let long = "ünïcödé ".repeat(40);
    spec.payload = json!({"text": long, "n": [1, 2, 3]});
    spec.labels.insert("region".into(), "~eu".into());
    create(&store, &spec).await;
    let waiting = format!(
        "waiting for capacity in pool `echo`: {}",
        "every worker is busy ".repeat(5)
    );
    for reason in [waiting.as_str(), "~short"] {
        let a = Annotation {
            expect: Pending,
            at: t0 + 1,
            reason: Some(reason.to_string()),
            update: JobUpdate::default(),
            recheck_at: None,
        };
        assert!(store.annotate(&spec.id, &a).await.unwrap());
        assert_eq!(get(&store, &spec.id).await.reason.as_deref(), Some(reason));
    }
    let result = json!({"echo": long});
    let mut t = Transition::to(Failed, t0 + 2).note(format!("failed: {long}"));
    t.update = JobUpdate {
        result: Some(result.clone()),
        error: Some(JobError::new("boom", long.clone())),
        safety_reason: Some(format!("~{long}")),
        ..Default::default()
    };
    store.transition(&spec.id, &t).await.unwrap();
    let job = get(&store, &spec.id).await;
    assert_eq!(job.spec, spec);
    assert_eq!(job.result, Some(result));
    assert_eq!(job.error, Some(JobError::new("boom", long.clone())));
    assert_eq!(job.safety_reason, Some(format!("~{long}")));
    assert_eq!(job.reason, None);
    assert_eq!(
        job.history
            .iter()
            .map(|e| (e.state, e.note.clone()))
            .collect::<Vec<_>>(),
        vec![
            (Pending, None),
            (Pending, Some(waiting.clone())),
            (Pending, Some("~short".into())),
            (Failed, Some(format!("failed: {long}")))
        ]
    );
    let p = &shard_prefix(&keys.prefix, &spec.id, DEFAULT_SHARDS);
    let key = format!("{p}job:{{{}}}", spec.id);
    assert_eq!(encoding(&mut conn, &key).await, "listpack", "{key}");
    let stored: Vec<String> = conn.hkeys(&key).await.expect("HKEYS");
    assert!(
        !stored.iter().any(|f| f.starts_with("reason")),
        "the waiting reason goes, pieces and all: {stored:?}"
    );

    // A history that grows a piece at a time, past nine pieces and on.
    let spec = simple_spec(t0);
    create(&store, &spec).await;
    let reasons: Vec<String> = (0..40)
        .map(|i| format!("waiting, for the {i}th time, for a slot"))
        .collect();
    for (i, reason) in reasons.iter().enumerate() {
        let a = Annotation {
            expect: Pending,
            at: t0 + i as Millis,
            reason: Some(reason.clone()),
            update: JobUpdate::default(),
            recheck_at: None,
        };
        assert!(store.annotate(&spec.id, &a).await.unwrap());
    }
    go(&store, &spec.id, Cancelled, t0 + 100).await;
    let job = get(&store, &spec.id).await;
    let notes: Vec<Option<String>> = job.history.iter().map(|e| e.note.clone()).collect();
    let mut expected = vec![None];
    expected.extend(reasons.iter().cloned().map(Some));
    expected.push(None);
    assert_eq!(notes, expected);
    assert_eq!(
        job.history.last().map(|e| (e.at, e.state)),
        Some((t0 + 100, Cancelled))
    );
    // Past 1 KB it went whole, its pieces dropped.
    let stored: Vec<String> = conn
        .hkeys(format!("{p}job:{{{}}}", spec.id))
        .await
        .expect("HKEYS");
    assert!(!stored.iter().any(|f| f.contains('#')), "{stored:?}");

    // Values over 1 KB stay whole, one that starts with the pieces' mark too; one far over
    // (a megabyte) is no harder.
    for len in [5000, 1 << 20] {
        let mut spec = simple_spec(t0);
        spec.payload = json!("x".repeat(len));
        create(&store, &spec).await;
        let mut t = Transition::to(Denied, t0 + 1);
        t.update.safety_reason = Some(format!("~3~{}", "y".repeat(2000)));
        t.update.result = Some(json!("z".repeat(len)));
        store.transition(&spec.id, &t).await.unwrap();
        let job = get(&store, &spec.id).await;
        assert_eq!(job.spec, spec);
        assert_eq!(job.safety_reason, t.update.safety_reason);
        assert_eq!(job.result, t.update.result);
    }

    let configs: Vec<String> = conn
        .keys(format!("{}*cfg:*", keys.prefix))
        .await
        .expect("KEYS");
    assert_eq!(
        configs.len(),
        1,
        "one stored config for two jobs: {configs:?}"
    );
    let ttl: i64 = conn.pttl(&configs[0]).await.expect("PTTL");
    assert!(ttl > 0, "the stored config expires");
    let jobs = store.get_jobs(&ids).await.unwrap();
    let shown: Vec<Option<serde_json::Value>> = jobs
        .into_iter()
        .map(|j| j.and_then(|j| j.effective_config))
        .collect();
    assert_eq!(shown, vec![Some(config.clone()), Some(config), Some(small)]);
}

/// A connection of the test's own to its Redis, to look at (or write) keys directly.
async fn raw_connection(keys: &RedisKeys) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(keys.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// How Redis holds `key` (`OBJECT ENCODING`).
async fn encoding(conn: &mut ::redis::aio::MultiplexedConnection, key: &str) -> String {
    ::redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async(conn)
        .await
        .expect("OBJECT ENCODING")
}

fn redis_unreachable(url: &str, e: StoreError) -> ! {
    panic!(
        "Redis is not reachable at {url} ({e}). The redis::* store conformance tests need a \
         running Redis server: the tests start a private one unless REDIS_URL names another."
    )
}

async fn redis_store(opts: StoreOptions) -> (SharedStore, RedisKeys) {
    let url = redis_url();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4());
    let store = match RedisStore::connect(&url, &prefix, opts).await {
        Ok(s) => s,
        Err(e) => redis_unreachable(&url, e),
    };
    if let Err(e) = store.ping().await {
        redis_unreachable(&url, e);
    }
    (Arc::new(store), RedisKeys { url, prefix })
}

/// Pages of a list merged across shards: in order, each job once, none missed — while new jobs
/// arrive at the top between pages (a page boundary is one position in the whole listing, so a
/// job added above it is not listed and nothing below it moves).
async fn check_pages_stay_in_order_while_jobs_are_added(store: SharedStore) {
    let t = now_ms() - 100_000;
    let req = Req {
        tenant: Some("pager"),
        ..Default::default()
    };
    // Scores with ties (three jobs a millisecond), spread over every shard.
    let mut initial = Vec::new();
    for i in 0..150 {
        initial.push(created(&store, req.clone(), t + i / 3).await.id);
    }
    let expected = {
        let mut by_score: Vec<(Millis, String)> = Vec::new();
        for id in &initial {
            by_score.push((get(&store, id).await.updated_at, id.clone()));
        }
        by_score.sort_by(|a, b| b.cmp(a));
        by_score.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    };
    for filter in [
        JobFilter::default(),
        JobFilter {
            tenant: Some("pager".into()),
            ..Default::default()
        },
    ] {
        let mut seen = Vec::new();
        let mut cursor = None;
        for round in 0.. {
            assert!(round < 200, "the listing does not end");
            let page = store
                .list_jobs(&filter, &PageRequest { limit: 7, cursor })
                .await
                .expect("list_jobs");
            seen.extend(ids_of(&page.items));
            // Newer than every job listed so far: above the cursor.
            created(&store, req.clone(), t + 50_000 + round).await;
            match page.next_cursor {
                Some(c) => cursor = Some(Cursor::decode(&c).expect("a cursor")),
                None => break,
            }
        }
        let from_start: Vec<String> = seen.into_iter().filter(|id| initial.contains(id)).collect();
        assert_eq!(from_start, expected, "{filter:?}");
    }
}

/// Finished jobs listed in order over many index pages (pages of three entries on Redis):
/// finishes in batches, out of order (a late finish older than pages written before it), with
/// ties, in two tenants, some jobs left live; every filter lists each job once, newest first.
async fn check_finished_jobs_list_in_order_over_index_pages(store: SharedStore) {
    let t = now_ms() - 100_000;
    let mut jobs = Vec::new();
    for i in 0..120u64 {
        let tenant = if i % 3 == 0 { "pages-b" } else { "pages-a" };
        let req = Req {
            tenant: Some(tenant),
            ..Default::default()
        };
        jobs.push(created(&store, req, t + i as Millis).await.id);
    }
    // Finish times: mostly rising, in ties of two, with every seventh job finishing long
    // before the others (written last, below the pages already there); every tenth stays live.
    let finish = |i: usize| -> Millis {
        if i % 7 == 3 {
            t + 1_000 + i as Millis
        } else {
            t + 10_000 + (i / 2) as Millis
        }
    };
    let order: Vec<usize> = (0..jobs.len())
        .filter(|i| i % 7 != 3)
        .chain((0..jobs.len()).filter(|i| i % 7 == 3))
        .filter(|i| i % 10 != 9)
        .collect();
    for batch in order.chunks(9) {
        let moves = batch.iter().map(|&i| {
            let (to, at) = (if i % 4 == 0 { Failed } else { Succeeded }, finish(i));
            let t = match to {
                Succeeded => Transition::to(to, at).through(Dispatched, at - 1),
                _ => Transition::to(to, at),
            };
            let store = store.clone();
            let id = jobs[i].clone();
            async move { store.transition(&id, &t).await }
        });
        for answer in futures::future::join_all(moves).await {
            assert!(
                matches!(answer, Ok(TransitionOutcome::Applied { .. })),
                "{answer:?}"
            );
        }
    }
    let mut all = Vec::new();
    for id in &jobs {
        all.push(get(&store, id).await);
    }
    let filters = [
        JobFilter::default(),
        JobFilter {
            tenant: Some("pages-a".into()),
            ..Default::default()
        },
        JobFilter {
            state: Some(Succeeded),
            ..Default::default()
        },
        JobFilter {
            state: Some(Failed),
            tenant: Some("pages-b".into()),
            ..Default::default()
        },
        JobFilter {
            state: Some(Pending),
            ..Default::default()
        },
        JobFilter {
            updated_after: Some(t + 1_050),
            updated_before: Some(t + 10_040),
            ..Default::default()
        },
    ];
    for filter in filters {
        let mut expected: Vec<(Millis, String)> = all
            .iter()
            .filter(|j| {
                filter
                    .tenant
                    .as_ref()
                    .is_none_or(|t| *t == j.spec.tenant_id)
            })
            .filter(|j| filter.state.is_none_or(|s| s == j.state))
            .filter(|j| filter.updated_after.is_none_or(|a| j.updated_at > a))
            .filter(|j| filter.updated_before.is_none_or(|b| j.updated_at < b))
            .map(|j| (j.updated_at, j.spec.id.clone()))
            .collect();
        expected.sort_by(|a, b| b.cmp(a));
        let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
        assert!(!expected.is_empty(), "{filter:?} selects some jobs");
        for limit in [4, 50] {
            let listed = ids_of(&list_all(&store, &filter, limit).await);
            assert_eq!(listed, expected, "{filter:?}, pages of {limit}");
        }
    }
}

/// Pages of three entries in the finished jobs' indexes, to walk and prune many of them.
const SMALL_PAGES: StoreOptions = StoreOptions {
    job_ttl_ms: 7 * 24 * 3600 * 1000,
    idempotency_ttl_ms: 24 * 3600 * 1000,
    shards: coretex::store::DEFAULT_SHARDS,
    wait_replicas: 0,
    index_page: 3,
};

/// The cluster's key space holds a test's jobs evenly: each master within ±20% of an even
/// share (the shards' tags spread over the masters' slot ranges, the jobs over the shards).
#[tokio::test]
async fn cluster_keys_spread_evenly_over_the_masters() {
    let url = redis_cluster_url();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4());
    let store: SharedStore = Arc::new(
        RedisStore::connect(&url, &prefix, StoreOptions::default())
            .await
            .unwrap_or_else(|e| redis_unreachable(&url, e)),
    );
    assert_eq!(store.backend(), "redis-cluster");
    let now = now_ms();
    let jobs: Vec<NewJob> = (0..3_000).map(|_| new_job(&simple_spec(now))).collect();
    for chunk in jobs.chunks(500) {
        for outcome in store.create_jobs(chunk).await.unwrap() {
            assert_eq!(outcome.unwrap(), CreateOutcome::Created);
        }
    }
    let ports: Vec<u16> = url
        .trim_start_matches("redis+cluster://")
        .split(',')
        .filter_map(|h| h.rsplit(':').next()?.parse().ok())
        .collect();
    let masters: Vec<u16> = ports
        .into_iter()
        .filter(|p| servers::RedisCluster::cli(*p, &["role"]).starts_with("master"))
        .collect();
    assert_eq!(masters.len(), 3, "a three-master cluster");
    let counts: Vec<usize> = masters
        .iter()
        .map(|p| {
            servers::RedisCluster::cli(*p, &["--scan", "--pattern", &format!("{prefix}*job:*")])
                .lines()
                .count()
        })
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 3_000, "{counts:?}");
    for n in &counts {
        assert!((800..=1_200).contains(n), "jobs per master {counts:?}");
    }
}

/// A master killed while jobs are being created and moved: its replica takes over, the store
/// follows it, and every job a create acknowledged (with `wait_replicas: 1`) is there after, its
/// last acknowledged state with it — and the store goes on working.
/// `--redis-wait-replicas` while the replicas cannot answer (stopped): each shard's first batch
/// waits out its `WAIT` (100 ms) and is acknowledged on its master, and that shard's batches
/// then stop waiting for a while — the creates go on, each acknowledged and readable, without
/// a `WAIT` each — and wait again once the replicas are back and the while is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_replicas_that_do_not_answer_stop_the_waits_for_a_while() {
    let cluster = servers::RedisCluster::start(3, 1);
    let opts = StoreOptions {
        wait_replicas: 1,
        ..StoreOptions::default()
    };
    let url = cluster.url();
    let store: SharedStore = Arc::new(
        RedisStore::connect(&url, "waits:", opts)
            .await
            .unwrap_or_else(|e| redis_unreachable(&url, e)),
    );
    let masters = cluster.masters();
    let waits = |reset: bool| -> u64 {
        masters
            .iter()
            .map(|p| {
                let stats = servers::RedisCluster::cli(*p, &["info", "commandstats"]);
                if reset {
                    servers::RedisCluster::cli(*p, &["config", "resetstat"]);
                }
                stats
                    .lines()
                    .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
                    .and_then(|v| v.split(',').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    let create_one_by_one = async |n: usize| {
        let mut ids = Vec::new();
        for _ in 0..n {
            let spec = simple_spec(now_ms());
            create(&store, &spec).await;
            ids.push(spec.id);
        }
        for id in &ids {
            get(&store, id).await;
        }
    };
    // The replicas answer: every batch waits for one.
    waits(true);
    create_one_by_one(24).await;
    assert!(waits(true) >= 24, "a WAIT after each batch");

    let replicas: Vec<String> = cluster
        .replicas()
        .into_iter()
        .map(servers::RedisCluster::pid)
        .collect();
    assert_eq!(replicas.len(), 3);
    // Stopped, not dead: their connections stay open and silent, as a hung host's would.
    struct Resume(Vec<String>);
    impl Drop for Resume {
        fn drop(&mut self) {
            for pid in &self.0 {
                servers::RedisCluster::signal(pid, "CONT");
            }
        }
    }
    for pid in &replicas {
        servers::RedisCluster::signal(pid, "STOP");
    }
    let resume = Resume(replicas);
    let started = std::time::Instant::now();
    create_one_by_one(120).await;
    drop(resume);
    let shards = usize::from(coretex::store::DEFAULT_SHARDS) as u64;
    let waited = waits(true);
    assert!(
        (1..=shards).contains(&waited),
        "a WAIT for each shard's first batch at most, then none: {waited} for 120 creates"
    );
    // The while (5 s) over and the replicas back, batches wait again.
    cluster.wait_replicas_synced(Duration::from_secs(30));
    if let Some(rest) = Duration::from_millis(5_300).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    create_one_by_one(24).await;
    assert!(waits(false) >= 1, "the batches wait for a replica again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_master_failover_loses_no_acknowledged_job() {
    let cluster = servers::RedisCluster::start(3, 1);
    let url = cluster.url();
    let opts = StoreOptions {
        wait_replicas: 1,
        ..StoreOptions::default()
    };
    let store: SharedStore = Arc::new(
        RedisStore::connect(&url, "failover:", opts)
            .await
            .unwrap_or_else(|e| redis_unreachable(&url, e)),
    );
    let acknowledged = Arc::new(parking_lot::Mutex::new(BTreeMap::<String, JobState>::new()));
    // Moves asked for: one whose answer was lost (a call cut off by the failover) may still
    // have been applied, so its job may be a step past its acknowledged state, never behind.
    let attempted = Arc::new(parking_lot::Mutex::new(HashSet::<String>::new()));
    let writer = {
        let (store, acknowledged, attempted) =
            (store.clone(), acknowledged.clone(), attempted.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            while acknowledged.lock().len() < 600 {
                let now = now_ms();
                let batch: Vec<NewJob> = (0..20).map(|_| new_job(&simple_spec(now))).collect();
                let outcomes = store.create_jobs(&batch).await.unwrap();
                for (job, outcome) in batch.iter().zip(outcomes) {
                    match outcome {
                        Ok(CreateOutcome::Created) => {
                            acknowledged.lock().insert(job.spec.id.clone(), Pending);
                        }
                        // A create the failover cut off after it was applied, sent again by
                        // the cluster client: the job is there, under its own id.
                        Ok(CreateOutcome::Exists { job_id }) if job_id == job.spec.id => {
                            acknowledged.lock().insert(job_id, Pending);
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => refused += 1,
                    }
                }
                // Half of them on: a transition acknowledged is kept as well.
                for job in batch.iter().step_by(2) {
                    let id = &job.spec.id;
                    if !acknowledged.lock().contains_key(id) {
                        continue;
                    }
                    attempted.lock().insert(id.clone());
                    if let Ok(TransitionOutcome::Applied { .. }) = store
                        .transition(id, &Transition::to(Scheduled, now_ms()))
                        .await
                    {
                        acknowledged.lock().insert(id.clone(), Scheduled);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            refused
        })
    };
    while acknowledged.lock().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = cluster.masters()[0];
    cluster.kill(victim);
    let refused = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the store goes on after the failover")
        .unwrap();
    cluster.wait_ok(Duration::from_secs(30));
    assert_eq!(
        cluster.masters().len(),
        3,
        "a replica took the master's place"
    );
    let acknowledged = acknowledged.lock().clone();
    let ids: Vec<String> = acknowledged.keys().cloned().collect();
    let jobs = store.get_jobs(&ids).await.unwrap();
    let lost: Vec<&String> = ids
        .iter()
        .zip(&jobs)
        .filter(|(_, j)| j.is_none())
        .map(|(id, _)| id)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged jobs lost: {lost:?}",
        lost.len()
    );
    let attempted = attempted.lock().clone();
    for (job, want) in jobs.iter().flatten().zip(acknowledged.values()) {
        let unanswered_move =
            *want == Pending && job.state == Scheduled && attempted.contains(&job.spec.id);
        if !unanswered_move {
            assert_eq!(job.state, *want, "{}", job.spec.id);
        }
    }
    println!(
        "failover: {} jobs acknowledged, {refused} creates refused while the slots moved",
        ids.len()
    );
}

/// A slot moved while the store writes to it (as `redis-cli --cluster reshard` moves one: the
/// target `IMPORTING`, the source `MIGRATING`, its keys sent over a few at a time). Every
/// write to the moving shard — a create, a state change, an annotation — is refused whole while
/// the slot is half moved: nothing written on either side, no key made on the target that the
/// source still holds (which would stop the move). Other shards go on. Once the slot has moved,
/// the same writes apply and every record is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_to_a_slot_being_moved_are_refused_whole_then_go_on() {
    use servers::RedisCluster;
    let cluster = RedisCluster::start(3, 0);
    let url = cluster.url();
    let prefix = "moving:";
    let store: SharedStore = Arc::new(
        RedisStore::connect(&url, prefix, StoreOptions::default())
            .await
            .unwrap_or_else(|e| redis_unreachable(&url, e)),
    );
    let t0 = now_ms() - 10_000;
    let first = simple_spec(t0);
    let target = shard_of(&first.id, DEFAULT_SHARDS);
    let in_shard = |yes: bool| loop {
        let spec = simple_spec(t0);
        if (shard_of(&spec.id, DEFAULT_SHARDS) == target) == yes {
            return spec;
        }
    };
    // The shard holds records and indexes: jobs created, some dispatched.
    let mut ids = Vec::new();
    for i in 0..8 {
        let spec = if i == 0 {
            first.clone()
        } else {
            in_shard(true)
        };
        create(&store, &spec).await;
        if i % 2 == 0 {
            go(&store, &spec.id, Dispatched, t0 + 1).await;
        }
        ids.push(spec.id);
    }

    // The shard's slot, its master and another.
    let p = shard_prefix(prefix, &ids[0], DEFAULT_SHARDS);
    let tag = p.split(['{', '}']).nth(1).expect("a hash tag").to_string();
    let masters = cluster.masters();
    let slot = RedisCluster::cli(masters[0], &["cluster", "keyslot", &format!("{{{tag}}}")])
        .trim()
        .to_string();
    let count = |port: u16| {
        RedisCluster::cli(port, &["cluster", "countkeysinslot", &slot])
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let src = *masters
        .iter()
        .find(|&&m| count(m) > 0)
        .expect("the slot's master");
    let dst = *masters.iter().find(|&&m| m != src).unwrap();
    let id_of = |port: u16| {
        RedisCluster::cli(port, &["cluster", "myid"])
            .trim()
            .to_string()
    };
    let (src_id, dst_id) = (id_of(src), id_of(dst));
    let keys_in = |port: u16| -> Vec<String> {
        let mut k: Vec<String> =
            RedisCluster::cli(port, &["cluster", "getkeysinslot", &slot, "10000"])
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect();
        k.sort();
        k
    };
    // What each side holds, value by value.
    let snapshot = || -> Vec<(u16, String, String)> {
        [src, dst]
            .into_iter()
            .flat_map(|port| {
                keys_in(port).into_iter().map(move |k| {
                    let dump = RedisCluster::cli(port, &["dump", &k]);
                    (port, k, dump)
                })
            })
            .collect()
    };
    let migrate = |keys: &[String]| {
        let dst_port = dst.to_string();
        let mut args = vec![
            "migrate",
            "127.0.0.1",
            dst_port.as_str(),
            "",
            "0",
            "5000",
            "keys",
        ];
        args.extend(keys.iter().map(String::as_str));
        let out = RedisCluster::cli(src, &args);
        assert_eq!(out.trim(), "OK", "MIGRATE {keys:?}: {out}");
    };

    // The move starts, and half the slot's keys go over.
    RedisCluster::cli(dst, &["cluster", "setslot", &slot, "importing", &src_id]);
    RedisCluster::cli(src, &["cluster", "setslot", &slot, "migrating", &dst_id]);
    let keys = keys_in(src);
    assert!(keys.len() >= 8, "the shard's keys: {keys:?}");
    migrate(&keys[..keys.len() / 2]);
    let before = snapshot();
    assert!(
        before.iter().any(|(port, ..)| *port == dst),
        "some keys moved"
    );
    assert!(
        before.iter().any(|(port, ..)| *port == src),
        "some keys stayed"
    );

    // Writes to the moving shard are refused, each whole.
    let late = in_shard(true);
    let created = store.create_jobs(&[new_job(&late)]).await;
    assert!(
        !matches!(created.as_deref(), Ok([Ok(_)])),
        "a create in a moving slot: {created:?}"
    );
    for id in [&ids[0], &ids[6]] {
        let moved = store.transition(id, &Transition::to(Running, t0 + 2)).await;
        assert!(moved.is_err(), "a transition in a moving slot: {moved:?}");
    }
    let note = Annotation {
        expect: Pending,
        at: t0 + 3,
        reason: Some("waiting for capacity".into()),
        update: JobUpdate::default(),
        recheck_at: Some(t0 + 3),
    };
    let noted = store.annotate(&ids[1], &note).await;
    assert!(noted.is_err(), "an annotation in a moving slot: {noted:?}");
    assert!(
        snapshot() == before,
        "nothing is written on either side of a moving slot"
    );
    // Another shard's writes go on meanwhile.
    let elsewhere = in_shard(false);
    create(&store, &elsewhere).await;

    // The move ends (the rest of the keys, then the slot is the target's on every master).
    let rest = keys_in(src);
    if !rest.is_empty() {
        migrate(&rest);
    }
    for port in [dst, src].into_iter().chain(masters.iter().copied()) {
        RedisCluster::cli(port, &["cluster", "setslot", &slot, "node", &dst_id]);
    }
    assert_eq!(count(src), 0, "the source holds none of the slot's keys");

    // The refused writes apply now, and every record is whole.
    let created = store.create_jobs(&[new_job(&late)]).await.unwrap();
    assert!(
        matches!(created.as_slice(), [Ok(CreateOutcome::Created)]),
        "{created:?}"
    );
    for id in [&ids[0], &ids[6]] {
        let moved = store
            .transition(id, &Transition::to(Running, t0 + 4))
            .await
            .unwrap_or_else(|e| panic!("{id} after the move: {e}"));
        assert!(
            matches!(moved, TransitionOutcome::Applied { .. }),
            "{id}: {moved:?}"
        );
    }
    assert!(store.annotate(&ids[1], &note).await.unwrap());
    for (i, id) in ids.iter().enumerate() {
        let job = get(&store, id).await;
        let want = match i {
            0 | 6 => vec![Pending, Dispatched, Running],
            // (The waiting reason is an event of its own.)
            1 => vec![Pending, Pending],
            i if i % 2 == 0 => vec![Pending, Dispatched],
            _ => vec![Pending],
        };
        assert_eq!(states(&job), want, "{id}");
    }
    assert_eq!(get(&store, &late.id).await.state, Pending);
    let listed = list_all(&store, &JobFilter::default(), 5).await;
    assert_eq!(
        listed.len(),
        ids.len() + 2,
        "every job is listed after the move"
    );
}

/// A store on a Redis Cluster (`REDIS_CLUSTER_URL`, else a private three-master cluster the
/// tests start), under a key prefix of its own. Its keys are left behind: the private cluster
/// goes with the test process.
async fn redis_cluster_store(opts: StoreOptions) -> SharedStore {
    let url = redis_cluster_url();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4());
    let store = match RedisStore::connect(&url, &prefix, opts).await {
        Ok(s) => s,
        Err(e) => redis_unreachable(&url, e),
    };
    if let Err(e) = store.ping().await {
        redis_unreachable(&url, e);
    }
    Arc::new(store)
}

/// `name => check_fn [with options]`: one `memory::name`, one `redis::name` and one
/// `cluster::name` (a three-master Redis Cluster) test per check.
macro_rules! conformance {
    (@opts) => { StoreOptions::default() };
    (@opts $opts:expr) => { $opts };
    ($($name:ident => $check:ident $(with $opts:expr)?;)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    $check(memory_store(conformance!(@opts $($opts)?))).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _keys) = redis_store(conformance!(@opts $($opts)?)).await;
                    $check(store).await;
                }
            )*
        }
        mod cluster {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    $check(redis_cluster_store(conformance!(@opts $($opts)?)).await).await;
                }
            )*
        }
    };
}

conformance! {
    created_job_reads_back_as_pending => check_created_job_reads_back_as_pending;
    concurrent_transitions_each_get_their_own_answer =>
        check_concurrent_transitions_each_get_their_own_answer;
    two_moves_queued_together_leave_a_job_in_its_last_state =>
        check_two_moves_queued_together_leave_a_job_in_its_last_state;
    idempotency_key_answers_the_first_job_per_tenant =>
        check_idempotency_key_answers_the_first_job_per_tenant;
    batch_create_answers_each_job_in_order => check_batch_create_answers_each_job_in_order;
    every_legal_transition_applies => check_every_legal_transition_applies;
    illegal_transitions_error_and_change_nothing =>
        check_illegal_transitions_error_and_change_nothing;
    same_state_transition_is_unchanged => check_same_state_transition_is_unchanged;
    via_passes_through_the_intermediate_state => check_via_passes_through_the_intermediate_state;
    a_walk_through_several_states_starts_after_the_current_one =>
        check_a_walk_through_several_states_starts_after_the_current_one;
    update_fields_are_stored_and_read_back => check_update_fields_are_stored_and_read_back;
    dead_letter_is_written_with_the_failure => check_dead_letter_is_written_with_the_failure;
    dead_letters_filter_and_page_through_ties => check_dead_letters_filter_and_page_through_ties;
    annotation_applies_only_in_the_expected_state =>
        check_annotation_applies_only_in_the_expected_state;
    jobs_due_are_oldest_first_and_follow_recheck_times =>
        check_jobs_due_are_oldest_first_and_follow_recheck_times;
    deadlines_due_earliest_first_until_terminal =>
        check_deadlines_due_earliest_first_until_terminal;
    job_lists_filter_on_every_field => check_job_lists_filter_on_every_field;
    pages_through_identical_timestamps_exactly_once =>
        check_pages_through_identical_timestamps_exactly_once;
    pages_through_more_ties_than_the_scan_budget =>
        check_pages_through_more_ties_than_the_scan_budget;
    prune_drops_the_index_entries_of_expired_jobs =>
        check_prune_drops_the_index_entries_of_expired_jobs with SHORT_TTL;
    config_documents_follow_if_match => check_config_documents_follow_if_match;
    config_keys_list_a_prefix_in_byte_order_after_a_key =>
        check_config_keys_list_a_prefix_in_byte_order_after_a_key;
    jobs_are_counted_by_state => check_jobs_are_counted_by_state;
    locks_belong_to_one_owner_until_they_expire =>
        check_locks_belong_to_one_owner_until_they_expire;
    a_claimed_transition_applies_only_for_the_assignment =>
        check_a_claimed_transition_applies_only_for_the_assignment;
    the_shared_secret_is_made_once => check_the_shared_secret_is_made_once;
    jobs_expire_after_their_ttl => check_jobs_expire_after_their_ttl with SHORT_TTL;
    finished_runs_expire_and_their_index_entries_are_pruned =>
        check_finished_runs_expire_and_their_index_entries_are_pruned with SHORT_TTL;
    pages_stay_in_order_while_jobs_are_added => check_pages_stay_in_order_while_jobs_are_added;
    finished_jobs_list_in_order_over_index_pages =>
        check_finished_jobs_list_in_order_over_index_pages with SMALL_PAGES;
}
