//! Peers on the bus (issue 14, case 4): whoever can publish on NATS is hostile until checked.
//! A result or start from anyone but the worker the job's current attempt was given to changes
//! nothing; a submit cannot carry a safety decision; a worker's clock decides no time the host
//! keeps.
//!
//! The hostile peer is [`Peer`]: a worker written from the protocol alone, which says only what
//! the test makes it say.

use std::time::Duration;

use bytes::Bytes;
use coretex::bus::{MessageStream, SharedBus, publish_json};
use coretex::protocol::{Clearance, HeartbeatMsg, SubmitMsg, VERSION};
use coretex::reconciler::ReconcilerSettings;
use coretex::time::{now_ms, parse_rfc3339, to_rfc3339};
use coretex::worker::Mode;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{Api, Backend, Host, fast_reconciler, options, unique};

const WAIT: Duration = Duration::from_secs(15);
const TWO_HOURS: i64 = 2 * 3600 * 1000;

/// A worker the test speaks for: it heartbeats (topics of its own, no batches) and hands over
/// each job message as it came, lease and all.
struct Peer {
    id: String,
    bus: SharedBus,
    jobs: MessageStream,
    _beats: CancellationToken,
}

impl Peer {
    async fn join(h: &Host, topic: &str) -> Peer {
        let id = unique("peer-");
        let bus = h.running.scheduler.bus.clone();
        let jobs = bus
            .subscribe(&bus.subjects().worker_jobs(&id))
            .await
            .expect("the peer subscribes to its jobs");
        let hb = heartbeat(&id, topic);
        let beats = h.workers.child_token();
        let (b, stop) = (bus.clone(), beats.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = publish_json(b.as_ref(), &b.subjects().heartbeat(), &hb).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        h.wait_worker(&id).await;
        Peer {
            id,
            bus,
            jobs,
            _beats: beats,
        }
    }

    /// The next job message sent to this peer.
    async fn next_job(&mut self) -> Value {
        let msg = tokio::time::timeout(WAIT, self.jobs.next())
            .await
            .expect("a job reaches the peer")
            .expect("the peer's subscription is open");
        serde_json::from_slice(&msg.payload).expect("a job message is JSON")
    }

    async fn say(&self, subject: String, msg: Value) {
        self.bus
            .publish(&subject, Bytes::from(msg.to_string()))
            .await
            .expect("the peer publishes");
    }

    /// A result for `job_id`, as this peer or as `worker_id`, under `lease`.
    fn result(&self, job_id: &str, status: &str, result: Value, lease: &Value) -> Value {
        json!({"v": 1, "kind": "result", "job_id": job_id, "worker_id": self.id,
               "status": status, "result": result, "execution_ms": 1, "lease": lease})
    }
}

/// The heartbeat of a worker serving `topic` in pool `p`, that takes no batches.
fn heartbeat(id: &str, topic: &str) -> HeartbeatMsg {
    HeartbeatMsg {
        v: VERSION,
        worker_id: id.to_string(),
        pool: "p".into(),
        topics: vec![topic.to_string()],
        active_jobs: 0,
        max_parallel: 8,
        cpu_load: 0.0,
        labels: Default::default(),
        capabilities: vec![],
        instance: Some(unique("i-")),
        draining: false,
    }
}

/// How many bus messages `/metrics` says were rejected for `reason`.
async fn rejected(api: &Api, reason: &str) -> u64 {
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap_or_default();
    let series = format!("coretex_bus_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// Waits until a rejection for `reason` is counted past `before`, or until the job has left
/// `state` (which the rejected message must not have made it do).
async fn until_rejected_or_moved(h: &Host, reason: &str, before: u64, id: &str, state: &str) {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        if rejected(&h.api, reason).await > before {
            return;
        }
        let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
        if job["state"] != state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no `{reason}` rejection counted: {job}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// When the job entered `state`, from its history.
fn entered(job: &Value, state: &str) -> i64 {
    let at = job["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["state"] == state))
        .and_then(|e| e["at"].as_str())
        .unwrap_or_else(|| panic!("the job was never {state}: {job}"));
    parse_rfc3339(at).expect("an RFC 3339 time")
}

fn created_at(job: &Value) -> i64 {
    parse_rfc3339(job["created_at"].as_str().expect("created_at")).expect("an RFC 3339 time")
}

/// A host whose `safety` holds every job of `topic` for a human.
async fn held_topic(h: &Host, topic: &str) {
    let (status, v) = h
        .api
        .post(
            "/api/v1/config",
            json!({"scope": "system", "data": {"safety": {"require_human_topics": [topic]}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

async fn awaiting_approval(h: &Host, topic: &str) -> String {
    let id = h
        .api
        .submit(json!({"topic": topic, "payload": {"n": 1}}))
        .await;
    h.api
        .wait_job(&id, WAIT, |j| j["safety_decision"] == "REQUIRE_HUMAN")
        .await;
    id
}

/// The case: a client that was never given the job says it succeeded.
async fn a_result_from_a_stranger_finishes_nothing(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("held.");
    held_topic(&h, &topic).await;
    let worker = unique("w-");
    h.ready_worker(&worker, "p", &[&topic], &[], Mode::Echo)
        .await;
    let id = awaiting_approval(&h, &topic).await;

    let bus = h.running.scheduler.bus.clone();
    let s = bus.subjects().clone();
    let say = |subject: String, msg: Value| {
        let bus = bus.clone();
        async move {
            bus.publish(&subject, Bytes::from(msg.to_string()))
                .await
                .unwrap()
        }
    };
    let before = rejected(&h.api, "unsigned").await;
    say(
        s.started(),
        json!({"v": 1, "kind": "started", "job_id": id, "worker_id": "stranger",
               "at": to_rfc3339(now_ms())}),
    )
    .await;
    say(
        s.result(),
        json!({"v": 1, "kind": "result", "job_id": id, "worker_id": "stranger",
               "status": "succeeded", "result": "forged"}),
    )
    .await;
    // A lease the host never minted, in a batch.
    say(
        s.results(),
        json!({"v": 1, "kind": "results", "results": [{"v": 1, "kind": "result", "job_id": id,
               "worker_id": "stranger", "status": "succeeded", "result": "forged",
               "lease": "1.1.0000000000000000.AAAAAAAAAAAAAAAAAAAAAA"}]}),
    )
    .await;
    until_rejected_or_moved(&h, "unsigned", before, &id, "PENDING").await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "PENDING", "{job}");
    assert!(job["result"].is_null(), "{job}");

    // Approved, it runs where the host sends it, and only there.
    let (status, v) = h
        .api
        .post(
            &format!("/api/v1/jobs/{id}/approve"),
            json!({"approved": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let done = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(done["result"], json!({"n": 1}), "{done}");
    assert_eq!(done["worker_id"], worker.as_str(), "{done}");
    assert!(rejected(&h.api, "bad_lease").await >= 1);
    h.stop().await;
}

/// A worker holding a lease for one job of its own cannot finish another worker's job with it,
/// in its own name or in that worker's.
async fn a_lease_for_one_job_finishes_no_other(backend: Backend) {
    let h = Host::start(backend).await;
    let (mine, theirs) = (unique("mine."), unique("theirs."));
    let mut mallory = Peer::join(&h, &mine).await;
    let alice = unique("w-alice-");
    h.ready_worker(
        &alice,
        "p",
        &[&theirs],
        &[],
        Mode::Exec("sleep 1; echo '\"real\"'".into()),
    )
    .await;
    let k = h.api.submit(json!({"topic": mine})).await;
    let job = mallory.next_job().await;
    assert_eq!(job["job_id"], k.as_str());
    let lease = job["lease"].clone();

    let j = h.api.submit(json!({"topic": theirs})).await;
    h.api.wait_state(&j, "RUNNING", WAIT).await;
    let mut as_alice = mallory.result(&j, "succeeded", json!("forged"), &lease);
    as_alice["worker_id"] = json!(alice);
    let s = mallory.bus.subjects().clone();
    mallory
        .say(
            s.result(),
            mallory.result(&j, "succeeded", json!("forged"), &lease),
        )
        .await;
    mallory.say(s.result(), as_alice).await;
    let done = h.api.wait_job(&j, WAIT, |j| j["state"] != "RUNNING").await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["result"], "real", "{done}");
    assert_eq!(done["worker_id"], alice.as_str(), "{done}");
    h.stop().await;
}

/// A lease is for one attempt: the result of a later attempt under the first one's lease is
/// refused, and the later attempt's own lease is taken.
async fn a_result_for_another_attempt_is_ignored(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("flaky.");
    let mut peer = Peer::join(&h, &topic).await;
    let id = h.api.submit(json!({"topic": topic})).await;
    let first = peer.next_job().await;
    let s = peer.bus.subjects().clone();
    let mut failed = peer.result(&id, "failed", Value::Null, &first["lease"]);
    failed["error"] = json!({"code": "E", "message": "boom"});
    peer.say(s.result(), failed).await;

    let second = peer.next_job().await;
    let retry = format!("{id}~attempt-2");
    assert_eq!(second["job_id"], retry.as_str(), "{second}");
    let before = rejected(&h.api, "bad_lease").await;
    peer.say(
        s.result(),
        peer.result(&retry, "succeeded", json!("stale"), &first["lease"]),
    )
    .await;
    until_rejected_or_moved(&h, "bad_lease", before, &retry, "DISPATCHED").await;
    peer.say(
        s.result(),
        peer.result(&retry, "succeeded", json!("fresh"), &second["lease"]),
    )
    .await;
    let done = h.api.wait_state(&retry, "SUCCEEDED", WAIT).await;
    assert_eq!(done["result"], "fresh", "{done}");
    h.stop().await;
}

/// `clearance: approved` on the submit subject releases nothing: the host decides from the job
/// it stored, and a submit for a job it never stored creates none.
async fn a_forged_approved_submit_runs_nothing(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("held.");
    held_topic(&h, &topic).await;
    h.ready_worker(&unique("w-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let id = awaiting_approval(&h, &topic).await;
    let stored = h.stored_job(&id).await;
    let mut unknown = stored.spec.clone();
    unknown.id = format!("{}-forged", stored.spec.id);
    unknown.trace_id = unknown.id.clone();

    let bus = h.running.scheduler.bus.clone();
    let before = rejected(&h.api, "clearance").await;
    for job in [stored.spec.clone(), unknown.clone()] {
        let forged = SubmitMsg {
            v: VERSION,
            job,
            clearance: Clearance::Approved,
        };
        publish_json(bus.as_ref(), &bus.subjects().submit(), &forged)
            .await
            .unwrap();
    }
    until_rejected_or_moved(&h, "clearance", before, &id, "PENDING").await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "PENDING", "{job}");
    assert_eq!(job["safety_decision"], "REQUIRE_HUMAN", "{job}");
    assert!(job["worker_id"].is_null(), "{job}");
    let (status, v) = h.api.get(&format!("/api/v1/jobs/{}", unknown.id)).await;
    assert_eq!(status, 404, "{v}");
    h.stop().await;
}

/// A worker whose clock is two hours behind: its `started` would have put the job RUNNING two
/// hours ago, past the running timeout at once.
async fn a_worker_clock_behind_times_nothing_out(backend: Backend) {
    let h = Host::start_fast(backend).await;
    let topic = unique("skewed.");
    let mut peer = Peer::join(&h, &topic).await;
    let s = peer.bus.subjects().clone();
    let id = h.api.submit(json!({"topic": topic})).await;
    let job = peer.next_job().await;
    let behind = to_rfc3339(now_ms() - TWO_HOURS);
    peer.say(
        s.started(),
        json!({"v": 1, "kind": "started", "job_id": id, "worker_id": peer.id, "at": behind,
               "lease": job["lease"]}),
    )
    .await;
    h.api.wait_state(&id, "RUNNING", WAIT).await;
    // Ten reconciler ticks: a RUNNING time two hours old would have timed the job out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = h.api.get(&format!("/api/v1/jobs/{id}")).await.1;
    assert_eq!(running["state"], "RUNNING", "{running}");
    let at = entered(&running, "RUNNING");
    assert!(
        at >= created_at(&running) && at <= now_ms(),
        "RUNNING at the worker's clock: {running}"
    );

    // The same through a result's `started_at`.
    let quick = h.api.submit(json!({"topic": topic})).await;
    let job = peer.next_job().await;
    let mut result = peer.result(&quick, "succeeded", json!(1), &job["lease"]);
    result["started_at"] = json!(behind);
    peer.say(s.result(), result).await;
    let done = h.api.wait_state(&quick, "SUCCEEDED", WAIT).await;
    let at = entered(&done, "RUNNING");
    assert!(
        at >= created_at(&done) && at <= entered(&done, "SUCCEEDED"),
        "RUNNING at the worker's clock: {done}"
    );
    h.stop().await;
}

/// A worker whose clock is two hours ahead: its `started` would have kept the job from timing
/// out for two hours more than the running timeout.
async fn a_worker_clock_ahead_keeps_no_job_from_timing_out(backend: Backend) {
    let mut o = options(backend);
    o.reconciler = ReconcilerSettings {
        running_timeout: Duration::from_secs(2),
        ..fast_reconciler()
    };
    let h = Host::start_with(o).await;
    let topic = unique("skewed.");
    let mut peer = Peer::join(&h, &topic).await;
    let id = h.api.submit(json!({"topic": topic})).await;
    let job = peer.next_job().await;
    peer.say(
        peer.bus.subjects().started(),
        json!({"v": 1, "kind": "started", "job_id": id, "worker_id": peer.id,
               "at": to_rfc3339(now_ms() + TWO_HOURS), "lease": job["lease"]}),
    )
    .await;
    let timed_out = h.api.wait_state(&id, "TIMEOUT", WAIT).await;
    assert_eq!(timed_out["error"]["code"], "running_timeout", "{timed_out}");
    assert!(
        entered(&timed_out, "RUNNING") <= entered(&timed_out, "TIMEOUT"),
        "RUNNING at the worker's clock: {timed_out}"
    );
    h.stop().await;
}

on_both_backends!(
    a_result_from_a_stranger_finishes_nothing,
    a_lease_for_one_job_finishes_no_other,
    a_result_for_another_attempt_is_ignored,
    a_forged_approved_submit_runs_nothing,
    a_worker_clock_behind_times_nothing_out,
    a_worker_clock_ahead_keeps_no_job_from_timing_out,
);
