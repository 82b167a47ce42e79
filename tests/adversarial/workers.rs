//! Workers that die or misbehave (issue 14, cases 1 and 2): a job held by a worker that went
//! silent or restarted runs again elsewhere, and no retry policy retries without bound.

use std::time::Duration;

use coretex::bus::publish_json;
use coretex::protocol::{ResultMsg, ResultStatus, VERSION};
use coretex::scheduler::retry::RetryBounds;
use coretex::worker::Mode;
use serde_json::{Value, json};

use crate::common::{Backend, Host, fast_reconciler, options, unique};

const WAIT: Duration = Duration::from_secs(15);

fn history_notes(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["note"].as_str().map(str::to_string))
        .collect()
}

/// A host whose reconciler ticks fast and whose workers are gone after `ttl` of silence.
async fn host(backend: Backend, ttl: Duration) -> Host {
    let mut o = options(backend);
    o.reconciler = fast_reconciler();
    o.worker_ttl = ttl;
    Host::start_with(o).await
}

/// Submits a job to `topic` and waits until the worker has started it.
async fn running_job(h: &Host, topic: &str) -> String {
    let id = h
        .api
        .submit(json!({"topic": topic, "payload": {"n": 1}}))
        .await;
    h.api.wait_state(&id, "RUNNING", WAIT).await;
    id
}

async fn a_job_whose_worker_dies_runs_again_on_another(backend: Backend) {
    let h = host(backend, Duration::from_secs(2)).await;
    let topic = unique("long.");
    let doomed = h
        .ready_worker(
            &unique("w-doomed-"),
            "p",
            &[&topic],
            &[],
            Mode::Exec("sleep 600".into()),
        )
        .await;
    let id = running_job(&h, &topic).await;
    // The worker dies: no more heartbeats, no result, ever. Another takes the topic.
    doomed.cancel();
    h.ready_worker(&unique("w-heir-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let lost = h.api.wait_state(&id, "FAILED", WAIT).await;
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    let again = h
        .api
        .wait_state(&format!("{id}~attempt-2"), "SUCCEEDED", WAIT)
        .await;
    assert_eq!(again["result"], json!({"n": 1}), "{again}");

    // The dead worker's result, should it come after all (under the lease it was given), is
    // written down and changes nothing.
    let lease = h.stored_job(&id).await.lease;
    assert!(lease.is_some(), "the dispatch of {id} has a lease");
    let late = ResultMsg {
        v: VERSION,
        job_id: id.clone(),
        worker_id: lost["worker_id"].as_str().unwrap().to_string(),
        status: ResultStatus::Succeeded,
        result: Some(json!("too late")),
        error: None,
        execution_ms: 1,
        started_at: None,
        lease,
    };
    let bus = h.running.scheduler.bus.clone();
    publish_json(bus.as_ref(), &bus.subjects().result(), &late)
        .await
        .unwrap();
    let noted = h
        .api
        .wait_job(&id, WAIT, |j| {
            history_notes(j).iter().any(|n| n.contains("late result"))
        })
        .await;
    assert_eq!(noted["state"], "FAILED", "{noted}");
    assert!(noted["result"].is_null(), "{noted}");
    h.stop().await;
}

async fn a_worker_restarted_under_its_id_hands_back_its_jobs_at_once(backend: Backend) {
    // A TTL far past the test's patience: only the new instance can explain the requeue.
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("long.");
    let worker = unique("w-phoenix-");
    let first = h
        .ready_worker(&worker, "p", &[&topic], &[], Mode::Exec("sleep 600".into()))
        .await;
    let id = running_job(&h, &topic).await;
    first.cancel();
    // The same id, a new process: it knows nothing of the job.
    h.worker(&worker, "p", &[&topic], &[], Mode::Echo);
    let lost = h.api.wait_state(&id, "FAILED", WAIT).await;
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    assert!(
        lost["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted")),
        "{lost}"
    );
    h.api
        .wait_state(&format!("{id}~attempt-2"), "SUCCEEDED", WAIT)
        .await;
    h.stop().await;
}

async fn a_policy_that_always_retries_now_stops_at_the_ceiling(backend: Backend) {
    let mut o = options(backend);
    o.scheduler.retry_bounds = RetryBounds {
        max_attempts: 4,
        min_backoff_ms: 300,
    };
    let h = Host::start_with(o).await;
    let topic = unique("fails.");
    h.ready_worker(
        &unique("w-"),
        "p",
        &[&topic],
        &[],
        Mode::Exec("exit 1".into()),
    )
    .await;
    // Retry at once, as often as the config allows.
    let (status, v) = h
        .api
        .post(
            "/api/v1/config",
            json!({"scope": "system", "data": {"retry": {
                "policy": "fixed", "max_attempts": 100, "initial_backoff_ms": 0}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = h.api.submit(json!({"topic": topic})).await;
    let last = format!("{id}~attempt-4");
    h.api
        .wait_for(
            &format!("/api/v1/dlq/{last}"),
            "the fourth attempt is dead-lettered",
            |s, _| s == 200,
        )
        .await;
    let (_, entry) = h.api.get(&format!("/api/v1/dlq/{last}")).await;
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("at most 4")),
        "{entry}"
    );
    let (status, _) = h.api.get(&format!("/api/v1/jobs/{id}~attempt-5")).await;
    assert_eq!(status, 404, "no fifth attempt");
    // Each retry waited the host's minimum, not the policy's 0 ms.
    for n in 2..=4 {
        let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}~attempt-{n}")).await;
        let created = coretex::time::parse_rfc3339(job["created_at"].as_str().unwrap()).unwrap();
        let not_before = coretex::time::parse_rfc3339(job["not_before"].as_str().unwrap()).unwrap();
        assert!(not_before - created >= 300, "{job}");
    }
    h.stop().await;
}

on_both_backends!(
    a_job_whose_worker_dies_runs_again_on_another,
    a_worker_restarted_under_its_id_hands_back_its_jobs_at_once,
    a_policy_that_always_retries_now_stops_at_the_ceiling,
);
