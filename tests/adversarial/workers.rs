//! Workers that die or misbehave (issue 14, cases 1 and 2): a job held by a worker that went
//! silent or restarted runs again elsewhere, a job silent past its heartbeat timeout is retried,
//! and no retry policy retries without bound. A heartbeat counts only from the worker it names
//! (its pass): one under another's id moves nothing, one under an id nobody reads registers
//! nothing.

use std::time::Duration;

use coretex::bus::publish_json;
use coretex::protocol::{ResultMsg, ResultStatus, VERSION};
use coretex::scheduler::retry::RetryBounds;
use coretex::worker::Mode;
use serde_json::{Value, json};

use crate::bus::{Peer, rejected};
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
    // The lease the dying worker holds (a finished job's record keeps none).
    let lease = h.stored_job(&id).await.lease;
    assert!(lease.is_some(), "the dispatch of {id} has a lease");
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
    assert_eq!(
        h.stored_job(&id).await.lease,
        None,
        "a finished job keeps no lease"
    );
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

/// A peer that has taken a job with a 1 s heartbeat timeout and said `started`: the job id and
/// its lease.
async fn started_with_heartbeat_timeout(h: &Host, peer: &mut Peer, topic: &str) -> (String, Value) {
    let id = h
        .api
        .submit(json!({"topic": topic, "heartbeat_timeout_sec": 1}))
        .await;
    let job = peer.next_job().await;
    assert_eq!(job["job_id"], id.as_str(), "{job}");
    let lease = job["lease"].clone();
    peer.start(&id, &lease, coretex::time::now_ms()).await;
    h.api.wait_state(&id, "RUNNING", WAIT).await;
    (id, lease)
}

/// Sends `progress` for `id` every 250 ms for `how_long`, under `lease`.
async fn keep_progressing(h: &Host, peer: &Peer, id: &str, lease: &Value, how_long: Duration) {
    let subject = h.running.scheduler.bus.subjects().progress();
    let until = tokio::time::Instant::now() + how_long;
    while tokio::time::Instant::now() < until {
        peer.say(
            subject.clone(),
            json!({"v": 1, "kind": "progress", "job_id": id, "worker_id": peer.id,
                   "attempt": 1, "lease": lease, "details": {"done": 0.5}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn a_job_silent_past_its_heartbeat_timeout_is_retried(backend: Backend) {
    // The worker heartbeats all along (its TTL is never reached): only the job is silent.
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("quiet.");
    let mut peer = Peer::join(&h, &topic).await;
    let (id, _) = started_with_heartbeat_timeout(&h, &mut peer, &topic).await;
    let ended = h.api.wait_state(&id, "FAILED", WAIT).await;
    assert_eq!(ended["error"]["code"], "heartbeat_timeout", "{ended}");
    h.api
        .wait_for(
            &format!("/api/v1/jobs/{id}~attempt-2"),
            "the retry policy runs it again",
            |s, _| s == 200,
        )
        .await;
    h.stop().await;
}

async fn a_job_that_sends_progress_is_not_ended(backend: Backend) {
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("busy.");
    let mut peer = Peer::join(&h, &topic).await;
    let (id, lease) = started_with_heartbeat_timeout(&h, &mut peer, &topic).await;
    // Four times the timeout, beating all along.
    keep_progressing(&h, &peer, &id, &lease, Duration::from_secs(4)).await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "RUNNING", "{job}");
    let s = h.running.scheduler.bus.subjects().clone();
    peer.say(
        s.result(),
        peer.result(&id, "succeeded", json!("done"), &lease),
    )
    .await;
    h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    h.stop().await;
}

async fn progress_without_a_valid_lease_is_refused(backend: Backend) {
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("forged.");
    let mut peer = Peer::join(&h, &topic).await;
    let (unsigned, bad) = (
        rejected(&h.api, "unsigned").await,
        rejected(&h.api, "bad_lease").await,
    );
    let (id, lease) = started_with_heartbeat_timeout(&h, &mut peer, &topic).await;
    // Another job's lease, the right one for another attempt, a stranger, and none at all.
    let other = h.api.submit(json!({"topic": topic})).await;
    let other_lease = peer.next_job().await["lease"].clone();
    let subject = h.running.scheduler.bus.subjects().progress();
    let forged = [
        json!({"job_id": id, "worker_id": peer.id, "attempt": 1, "lease": other_lease}),
        json!({"job_id": id, "worker_id": peer.id, "attempt": 2, "lease": lease}),
        json!({"job_id": id, "worker_id": "stranger", "attempt": 1, "lease": lease}),
        json!({"job_id": id, "worker_id": peer.id, "attempt": 1}),
    ];
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        for f in &forged {
            let mut m = f.clone();
            m["v"] = json!(1);
            m["kind"] = json!("progress");
            peer.say(subject.clone(), m).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ended = h.api.wait_state(&id, "FAILED", WAIT).await;
    assert_eq!(ended["error"]["code"], "heartbeat_timeout", "{ended}");
    assert!(rejected(&h.api, "unsigned").await > unsigned);
    assert!(rejected(&h.api, "bad_lease").await >= bad + 3);
    let _ = other;
    h.stop().await;
}

async fn a_coretex_worker_sends_progress_while_its_command_runs(backend: Backend) {
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("slow.");
    h.ready_worker(
        &unique("w-"),
        "p",
        &[&topic],
        &[],
        Mode::Exec("sleep 3".into()),
    )
    .await;
    let id = h
        .api
        .submit(json!({"topic": topic, "heartbeat_timeout_sec": 1}))
        .await;
    let done = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(done["attempt"], 1, "{done}");
    h.stop().await;
}

/// A heartbeat as `worker_id` serving `topic` in run `instance`, with `pass` (or none).
fn forged_heartbeat(worker_id: &str, topic: &str, instance: &str, pass: Option<&str>) -> Value {
    json!({"v": 1, "kind": "heartbeat", "worker_id": worker_id, "pool": "elsewhere",
           "topics": [topic], "active_jobs": 0, "max_parallel": 50,
           "instance": instance, "pass": pass})
}

async fn a_heartbeat_under_a_live_workers_id_requeues_nothing(backend: Backend) {
    // A TTL far past the test's patience, as for a real restart: a believed "restart" would
    // requeue the job at once.
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("long.");
    let worker = unique("w-victim-");
    h.ready_worker(
        &worker,
        "p",
        &[&topic],
        &[],
        Mode::Exec("sleep 2; echo '\"done\"'".into()),
    )
    .await;
    let id = running_job(&h, &topic).await;
    let bad_passes = rejected(&h.api, "bad_pass").await;
    // Another peer on the bus: a "new instance" of the worker, in another pool, without its
    // pass or with a made-up one, for a second.
    let bus = h.running.scheduler.bus.clone();
    for _ in 0..10 {
        for pass in [None, Some("AAAAAAAAAAAAAAAAAAAAAA")] {
            let hb = forged_heartbeat(&worker, &topic, "reborn", pass);
            publish_json(bus.as_ref(), &bus.subjects().heartbeat(), &hb)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = h.api.wait_job(&id, WAIT, |j| j["state"] != "RUNNING").await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["result"], "done", "{done}");
    assert_eq!(done["attempt"], 1, "{done}");
    assert!(rejected(&h.api, "bad_pass").await >= bad_passes + 10);
    // Nor did it move the worker to another pool.
    let (_, workers) = h.api.get("/api/v1/workers").await;
    let listed = workers["items"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|w| w["worker_id"] == worker.as_str())
                .cloned()
        })
        .expect("the worker is listed");
    assert_eq!(listed["pool"], "p", "{listed}");
    h.stop().await;
}

async fn a_heartbeat_nobody_answers_for_registers_no_worker(backend: Backend) {
    let h = host(backend, Duration::from_secs(30)).await;
    let topic = unique("void.");
    let ghost = unique("w-ghost-");
    let bus = h.running.scheduler.bus.clone();
    let id = h.api.submit(json!({"topic": topic})).await;
    // Heartbeats under an id whose subjects nobody reads: were it registered, the job would be
    // sent there and wait for its dispatch timeout.
    for _ in 0..10 {
        let hb = forged_heartbeat(&ghost, &topic, "i", None);
        publish_json(bus.as_ref(), &bus.subjects().heartbeat(), &hb)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, workers) = h.api.get("/api/v1/workers").await;
    assert!(
        !workers.to_string().contains(&ghost),
        "a worker nobody stands for is listed: {workers}"
    );
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "PENDING", "{job}");
    // A real worker for the topic takes it.
    h.ready_worker(&unique("w-real-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    h.stop().await;
}

async fn a_workflow_step_silent_past_its_heartbeat_timeout_is_retried(backend: Backend) {
    let h = host(backend, Duration::from_secs(120)).await;
    let topic = unique("step.");
    let mut peer = Peer::join(&h, &topic).await;
    let wf = unique("wf-quiet-");
    let (status, body) = h
        .api
        .post(
            "/api/v1/workflows",
            json!({"id": wf, "name": "quiet", "steps": {"slow": {
                "topic": topic, "heartbeat_timeout_sec": 1,
                "retry": {"max_retries": 1, "initial_backoff_sec": 0}}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = h
        .api
        .post(
            &format!("/api/v1/workflows/{wf}/runs"),
            json!({"input": {}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_string();
    let s = h.running.scheduler.bus.subjects().clone();

    // Attempt 1 starts and falls silent.
    let first = peer.next_job().await;
    let first_id = first["job_id"].as_str().unwrap().to_string();
    peer.start(&first_id, &first["lease"], coretex::time::now_ms())
        .await;
    let ended = h.api.wait_state(&first_id, "FAILED", WAIT).await;
    assert_eq!(ended["error"]["code"], "heartbeat_timeout", "{ended}");

    // Attempt 2 answers at once.
    let second = peer.next_job().await;
    let second_id = second["job_id"].as_str().unwrap();
    assert_ne!(second_id, first_id);
    peer.say(
        s.result(),
        peer.result(second_id, "succeeded", json!("ok"), &second["lease"]),
    )
    .await;
    let run = h
        .api
        .wait_for(
            &format!("/api/v1/workflow-runs/{run_id}"),
            "the run succeeds on its second attempt",
            |status, run| status == 200 && run["status"] == "succeeded",
        )
        .await;
    assert_eq!(run["steps"]["slow"]["attempts"], 2, "{run}");
    h.stop().await;
}

async fn a_worker_serves_only_the_pools_granted_to_its_id(backend: Backend) {
    let h = host(backend, Duration::from_secs(30)).await;
    let topic = unique("render.");
    let (gpu, cpu) = (unique("gpu-"), unique("cpu-"));
    let grants =
        |workers: Value| json!({"scope": "system", "data": {"tenancy": {"workers": workers}}});
    let (status, v) = h
        .api
        .post(
            "/api/v1/config",
            grants(json!({"gpu-*": ["gpu"], "*": ["cpu"]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let refused = rejected(&h.api, "pool_not_granted").await;

    // A worker whose id is not granted the pool it claims is never registered: the job for
    // that pool waits instead of going to it.
    h.worker(&cpu, "gpu", &[&topic], &[], Mode::Echo);
    let id = h
        .api
        .submit(json!({"topic": topic, "labels": {"preferred_pool": "gpu"}}))
        .await;
    let until = tokio::time::Instant::now() + WAIT;
    while rejected(&h.api, "pool_not_granted").await <= refused {
        assert!(
            tokio::time::Instant::now() < until,
            "the claim is not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, workers) = h.api.get("/api/v1/workers").await;
    assert!(!workers.to_string().contains(&cpu), "{workers}");
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "PENDING", "{job}");

    // The pool's own worker takes it.
    h.ready_worker(&gpu, "gpu", &[&topic], &[], Mode::Echo)
        .await;
    let done = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(done["worker_id"], gpu.as_str(), "{done}");

    // Revoked, the worker is forgotten at its next heartbeat.
    let (status, v) = h
        .api
        .post("/api/v1/config", grants(json!({"*": ["cpu"]})))
        .await;
    assert_eq!(status, 200, "{v}");
    h.api
        .wait_for(
            "/api/v1/workers",
            "the revoked worker is forgotten",
            |_, v| !v.to_string().contains(&gpu),
        )
        .await;
    h.stop().await;
}

on_both_backends!(
    a_worker_serves_only_the_pools_granted_to_its_id,
    a_workflow_step_silent_past_its_heartbeat_timeout_is_retried,
    a_heartbeat_under_a_live_workers_id_requeues_nothing,
    a_heartbeat_nobody_answers_for_registers_no_worker,
    a_job_silent_past_its_heartbeat_timeout_is_retried,
    a_job_that_sends_progress_is_not_ended,
    progress_without_a_valid_lease_is_refused,
    a_coretex_worker_sends_progress_while_its_command_runs,
    a_job_whose_worker_dies_runs_again_on_another,
    a_worker_restarted_under_its_id_hands_back_its_jobs_at_once,
    a_policy_that_always_retries_now_stops_at_the_ceiling,
);
