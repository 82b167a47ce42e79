//! `coretex loadgen` against a host: it counts what happened to every job correctly (succeeded,
//! failed, lost), and under load through the real Redis and NATS no accepted job is lost and
//! every one is stored with its whole history. Timings are printed, never asserted.

mod common;

use std::time::Duration;

use coretex::job::DEFAULT_TENANT;
use coretex::loadgen::{self, LoadgenOptions, Summary};
use coretex::serve::Running;
use coretex::worker::{Mode, Worker, WorkerOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::{Api, Backend, options, start, unique};

fn loadgen_options(running: &Running, topic: &str, jobs: usize) -> LoadgenOptions {
    LoadgenOptions {
        gateway: format!("http://{}", running.addr),
        api_key: None,
        jobs,
        concurrency: 8,
        batch: 500,
        topic: topic.to_string(),
        rate: None,
        timeout: Duration::from_secs(120),
    }
}

/// An in-process echo worker on the host's bus, listed by the host before this returns.
async fn echo_worker(running: &Running, topic: &str, max_parallel: u32) -> CancellationToken {
    let id = unique("w-load-");
    let w = Worker::new(
        running.scheduler.bus.clone(),
        WorkerOptions {
            id: id.clone(),
            pool: "load".into(),
            topics: vec![topic.to_string()],
            max_parallel,
            labels: Default::default(),
            mode: Mode::Echo,
            heartbeat_interval: Duration::from_millis(200),
            report_cpu: false,
            started_delay: coretex::worker::STARTED_DELAY,
        },
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { w.run(s).await.expect("worker runs") });
    let api = Api::new(running.addr);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api.get("/api/v1/workers").await;
        if v["items"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["worker_id"] == id.as_str()))
        {
            return stop;
        }
        assert!(tokio::time::Instant::now() < until, "worker never listed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Deletes every key under the test's prefix (the records would otherwise live for their TTL).
async fn clean_redis(prefix: &str) {
    let client = redis::Client::open(common::redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running");
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(&mut conn, format!("{prefix}*"))
                .await
                .expect("scan");
        let mut keys = Vec::new();
        while let Some(k) = futures::StreamExt::next(&mut iter).await {
            keys.push(k.expect("key"));
        }
        keys
    };
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .expect("unlink");
    }
}

/// The size of an index every shard of the store under `prefix` keeps: the sum of the shards'.
async fn zcard(prefix: &str, index: &str) -> u64 {
    let client = redis::Client::open(common::redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running");
    let mut total = 0;
    for tag in coretex::store::shards::shard_tags(coretex::store::DEFAULT_SHARDS) {
        total += redis::cmd("ZCARD")
            .arg(format!("{prefix}{tag}:{index}"))
            .query_async::<u64>(&mut conn)
            .await
            .expect("zcard");
    }
    total
}

/// The entries of the paged index of finished jobs (`idx:done`, pages `idx:done:{n}`), summed
/// over the shards, and how many of them are the jobs' in `state`.
async fn finished(prefix: &str, state: &str) -> (u64, u64) {
    let client = redis::Client::open(common::redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running");
    let (mut entries, mut in_state) = (0, 0);
    for tag in coretex::store::shards::shard_tags(coretex::store::DEFAULT_SHARDS) {
        let dir = format!("{prefix}{tag}:idx:done");
        let pages: Vec<String> = redis::cmd("ZRANGE")
            .arg(&dir)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("zrange");
        for page in pages {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(format!("{dir}:{page}"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .expect("zrange");
            if ids.is_empty() {
                continue;
            }
            // The page's jobs' states in one round trip.
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hget(format!("{prefix}{tag}:job:{{{id}}}"), "state");
            }
            let states: Vec<Option<String>> = pipe.query_async(&mut conn).await.expect("hget");
            entries += ids.len() as u64;
            in_state += states
                .iter()
                .filter(|s| s.as_deref() == Some(state))
                .count() as u64;
        }
    }
    (entries, in_state)
}

fn assert_all_ok(s: &Summary, n: usize) {
    assert_eq!(
        (s.jobs, s.ok, s.failed, s.lost),
        (n, n, 0, 0),
        "every job succeeds and is counted once: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_jobs_through_redis_and_nats_none_lost() {
    let mut opts = options(Backend::Real);
    opts.store.job_ttl_ms = 3_600_000;
    let prefix = opts.key_prefix.clone();
    let running = start(opts).await;
    let topic = unique("load.");
    let worker = echo_worker(&running, &topic, 50).await;

    let n = 10_000;
    let summary = loadgen::run(loadgen_options(&running, &topic, n))
        .await
        .expect("loadgen runs");
    println!("bulk, real backends, debug build: {summary}");
    assert_all_ok(&summary, n);

    // The store agrees: every job SUCCEEDED, and a job's history is whole.
    assert_eq!(
        finished(&prefix, "SUCCEEDED").await,
        (n as u64, n as u64),
        "every job is finished, SUCCEEDED, and indexed once"
    );
    assert_eq!(zcard(&prefix, "idx:recent").await, 0, "no live job is left");
    assert_eq!(zcard(&prefix, "idx:state:DISPATCHED").await, 0);
    assert_eq!(zcard(&prefix, "idx:state:PENDING").await, 0);
    let api = Api::new(running.addr);
    let (_, page) = api.get("/api/v1/jobs?state=SUCCEEDED&limit=3").await;
    for job in page["items"].as_array().expect("a page of jobs") {
        // A job that waited for a free slot long enough has a note of why, in its PENDING.
        let mut states: Vec<&str> = job["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|e| e["state"].as_str())
            .collect();
        states.dedup();
        assert_eq!(
            states,
            ["PENDING", "DISPATCHED", "RUNNING", "SUCCEEDED"],
            "{job}"
        );
    }

    // Open loop: single submits at a fixed rate, counted the same way.
    let mut o = loadgen_options(&running, &topic, 500);
    o.rate = Some(500.0);
    o.concurrency = 50;
    let summary = loadgen::run(o).await.expect("loadgen runs");
    println!("open loop at 500/s, real backends, debug build: {summary}");
    assert_all_ok(&summary, 500);

    worker.cancel();
    running.stop.cancel();
    clean_redis(&prefix).await;
}

async fn failures_and_losses_are_counted(backend: Backend) {
    let opts = options(backend);
    let prefix = opts.key_prefix.clone();
    let running = start(opts).await;
    let api = Api::new(running.addr);
    let denied = unique("denied.");
    let (status, v) = api
        .post(
            "/api/v1/config",
            json!({"scope": "org", "id": DEFAULT_TENANT,
                   "data": {"safety": {"denied_topics": [format!("{denied}*")]}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // Denied jobs end at once: every one is failed, none ok, none lost.
    let mut o = loadgen_options(&running, &format!("{denied}x"), 300);
    o.batch = 100;
    let s = loadgen::run(o).await.expect("loadgen runs");
    assert_eq!((s.ok, s.failed, s.lost), (0, 300, 0), "{s}");
    assert!(s.to_string().contains("failed=300"), "{s}");

    // Jobs nobody can run never end: after the timeout each is lost (and counted failed).
    let mut o = loadgen_options(&running, &unique("nobody."), 40);
    o.batch = 7;
    o.timeout = Duration::from_millis(500);
    let s = loadgen::run(o).await.expect("loadgen runs");
    assert_eq!((s.ok, s.lost), (0, 40), "{s}");
    assert!(s.to_string().contains("lost=40"), "{s}");

    running.stop.cancel();
    if backend == Backend::Real {
        clean_redis(&prefix).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_losses_are_counted_embedded() {
    failures_and_losses_are_counted(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_losses_are_counted_real() {
    failures_and_losses_are_counted(Backend::Real).await;
}
