//! Workers that stop on purpose (issue 14, graceful drain): a worker told to drain finishes
//! what it runs, takes nothing new, and hands back what outlives its grace, which then runs on
//! another worker. `serve` stopped with SIGTERM is in `tests/crash_recovery.rs`.

use std::sync::Arc;
use std::time::Duration;

use coretex::worker::{Mode, Worker, WorkerOptions};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{Backend, Host, fast_reconciler, options, unique};

const WAIT: Duration = Duration::from_secs(15);

/// A worker on the host's bus that drains (with `grace`) when the token is cancelled.
fn draining_worker(
    h: &Host,
    id: &str,
    topic: &str,
    mode: Mode,
    grace: Duration,
) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let w = Worker::new(
        h.running.scheduler.bus.clone(),
        WorkerOptions {
            id: id.to_string(),
            pool: "p".into(),
            topics: vec![topic.to_string()],
            max_parallel: 4,
            labels: Default::default(),
            mode,
            heartbeat_interval: Duration::from_millis(100),
            report_cpu: false,
            started_delay: coretex::worker::STARTED_DELAY,
        },
    );
    let drain = CancellationToken::new();
    let run = tokio::spawn(Arc::clone(&w).run_draining(drain.clone(), grace));
    (drain, run)
}

/// The worker as `GET /api/v1/workers` lists it.
async fn listed(h: &Host, id: &str) -> Value {
    let (_, v) = h.api.get("/api/v1/workers").await;
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["worker_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_draining(h: &Host, id: &str) {
    let until = tokio::time::Instant::now() + WAIT;
    while listed(h, id).await["draining"] != true {
        assert!(
            tokio::time::Instant::now() < until,
            "worker {id} never showed as draining: {}",
            listed(h, id).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A host with a fast reconciler, a worker of a topic of its own that runs `cmd` and drains
/// with `grace` when `drain` is cancelled, and a job with `payload` that worker is running.
struct Scene {
    h: Host,
    topic: String,
    leaving: String,
    job: String,
    drain: CancellationToken,
    run: JoinHandle<anyhow::Result<()>>,
}

async fn job_on_a_worker_that_will_drain(
    backend: Backend,
    cmd: &str,
    grace: Duration,
    payload: Value,
) -> Scene {
    let mut o = options(backend);
    o.reconciler = fast_reconciler();
    let h = Host::start_with(o).await;
    let topic = unique("drain.");
    let leaving = unique("w-leaving-");
    let (drain, run) = draining_worker(&h, &leaving, &topic, Mode::Exec(cmd.into()), grace);
    h.wait_worker(&leaving).await;
    let job = h
        .api
        .submit(json!({"topic": &topic, "payload": payload}))
        .await;
    h.api.wait_state(&job, "RUNNING", WAIT).await;
    Scene {
        h,
        topic,
        leaving,
        job,
        drain,
        run,
    }
}

/// Waits until the drained worker's `run_draining` has returned, without error.
async fn drained(run: JoinHandle<anyhow::Result<()>>) {
    tokio::time::timeout(WAIT, run)
        .await
        .expect("the worker returns once drained")
        .expect("the worker task")
        .expect("the worker drains without error");
}

async fn a_draining_worker_finishes_its_job_and_takes_no_new_one(backend: Backend) {
    let s = job_on_a_worker_that_will_drain(
        backend,
        "sleep 1; cat",
        Duration::from_secs(60),
        json!({"n": 1}),
    )
    .await;
    let h = &s.h;
    s.drain.cancel();
    wait_draining(h, &s.leaving).await;
    // Submitted while the only worker of its topic drains: it waits for another worker.
    let second = h
        .api
        .submit(json!({"topic": &s.topic, "payload": {"n": 2}}))
        .await;
    let done = h.api.wait_state(&s.job, "SUCCEEDED", WAIT).await;
    assert_eq!(done["result"], json!({"n": 1}), "{done}");
    assert_eq!(done["worker_id"], s.leaving.as_str(), "{done}");
    drained(s.run).await;

    let heir = unique("w-heir-");
    h.ready_worker(&heir, "p", &[&s.topic], &[], Mode::Echo)
        .await;
    let second = h.api.wait_state(&second, "SUCCEEDED", WAIT).await;
    assert_eq!(second["worker_id"], heir.as_str(), "{second}");
    assert_eq!(
        second["attempt"], 1,
        "never handed to the draining worker: {second}"
    );
    s.h.stop().await;
}

async fn a_job_running_past_the_grace_is_handed_back_and_runs_elsewhere(backend: Backend) {
    let s = job_on_a_worker_that_will_drain(
        backend,
        "sleep 600",
        Duration::from_millis(300),
        json!({"n": 7}),
    )
    .await;
    let h = &s.h;
    s.drain.cancel();
    drained(s.run).await;
    let handed_back = h.api.wait_state(&s.job, "FAILED", WAIT).await;
    assert_eq!(
        handed_back["error"]["code"], "worker_drained",
        "{handed_back}"
    );
    h.ready_worker(&unique("w-heir-"), "p", &[&s.topic], &[], Mode::Echo)
        .await;
    let again = h
        .api
        .wait_state(&format!("{}~attempt-2", s.job), "SUCCEEDED", WAIT)
        .await;
    assert_eq!(again["result"], json!({"n": 7}), "{again}");
    s.h.stop().await;
}

on_both_backends!(
    a_draining_worker_finishes_its_job_and_takes_no_new_one,
    a_job_running_past_the_grace_is_handed_back_and_runs_elsewhere,
);
