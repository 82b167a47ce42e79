//! The store's hot path: the create script and the transition script, one at a time (latency of
//! one round trip) and 100 in flight on the multiplexed connection (what the scheduler does under
//! load), against the real Redis and, for comparison, the embedded store.
//!
//! `cargo bench --bench store -- --warm-up-time 1 --measurement-time 3` (Redis at REDIS_URL,
//! default 127.0.0.1:6379; the transition pools are sized for such a run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use coretex::job::{JobRequest, JobSpec, JobState};
use coretex::store::memory::MemoryStore;
use coretex::store::redis::RedisStore;
use coretex::store::{JobUpdate, NewJob, SharedStore, StoreOptions, Transition};
use coretex::time::now_ms;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Jobs created up front for the transition benchmarks (run with a short measurement time).
const POOL: usize = 200_000;

fn new_job() -> NewJob {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let req = JobRequest {
        id: Some(format!("bench-{}-{n}", std::process::id())),
        topic: "bench".into(),
        payload: serde_json::json!({"n": n}),
        ..Default::default()
    };
    NewJob {
        spec: JobSpec::accept(req, now_ms()),
        idempotency_key: None,
        note: None,
    }
}

fn dispatch() -> Transition {
    let mut t = Transition::to(JobState::Dispatched, now_ms());
    t.update = JobUpdate {
        worker_id: Some("w1".into()),
        safety_decision: Some("ALLOW".into()),
        ..Default::default()
    };
    t
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Deletes every key the benchmark wrote (SCAN in pages: KEYS over a large database would time
/// out, and the keys must not be left behind to slow every later SCAN).
async fn cleanup(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .expect("scanning the benchmark's keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("deleting the benchmark's keys");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

fn stores(rt: &tokio::runtime::Runtime, prefix: &str) -> Vec<(&'static str, SharedStore)> {
    let url = redis_url();
    let redis = rt
        .block_on(RedisStore::connect(&url, prefix, StoreOptions::default()))
        .unwrap_or_else(|e| panic!("Redis at {url} is needed for this benchmark: {e}"));
    vec![
        ("redis", Arc::new(redis) as SharedStore),
        (
            "memory",
            Arc::new(MemoryStore::new(StoreOptions::default())),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let prefix = format!("bench{}:", uuid::Uuid::new_v4().simple());
    for (name, store) in stores(&rt, &prefix) {
        let mut g = c.benchmark_group(format!("store/{name}"));
        g.bench_function("create", |b| {
            b.to_async(&rt).iter_batched(
                new_job,
                |j| {
                    let store = store.clone();
                    async move { store.create_job(&j).await.unwrap() }
                },
                BatchSize::SmallInput,
            )
        });
        if name != "redis" {
            // The transition script is Redis's; the embedded store's move is a map update.
            g.finish();
            continue;
        }
        // Jobs to transition are created before the clock starts (a setup closure cannot
        // block on the runtime the routine runs on); each iteration takes the next one.
        let pool: Vec<String> = rt.block_on(async {
            let mut ids = Vec::with_capacity(POOL);
            for _ in 0..POOL / 1000 {
                let jobs: Vec<NewJob> = (0..1000).map(|_| new_job()).collect();
                store.create_jobs(&jobs).await.unwrap();
                ids.extend(jobs.into_iter().map(|j| j.spec.id));
            }
            ids
        });
        let next = AtomicUsize::new(0);
        let take = |n: usize| {
            let start = next.fetch_add(n, Ordering::Relaxed);
            assert!(start + n <= pool.len(), "the job pool ran out; raise POOL");
            pool[start..start + n].to_vec()
        };
        g.bench_function("transition", |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                let id = take(1).pop().unwrap();
                async move { store.transition(&id, &dispatch()).await.unwrap() }
            })
        });
        g.bench_function("transition_x100_concurrent", |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                let ids = take(100);
                async move {
                    let t = dispatch();
                    futures::future::join_all(ids.iter().map(|id| store.transition(id, &t))).await
                }
            })
        });
        g.finish();
    }
    rt.block_on(cleanup(&prefix));
}

criterion_group!(benches, bench);
criterion_main!(benches);
