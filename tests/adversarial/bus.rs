//! Peers on the bus (issue 14, case 4): whoever can publish on NATS is hostile until checked.
//! A result or start from anyone but the worker the job's current attempt was given to changes
//! nothing; a submit cannot carry a safety decision; a worker's clock decides no time the host
//! keeps; and with the README's permission layout a worker's NATS credentials let it do a
//! worker's part and nothing more.
//!
//! The hostile peer is [`Peer`]: a worker written from the protocol alone, which says only what
//! the test makes it say.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coretex::bus::nats::{NatsAuth, NatsBus};
use coretex::bus::{Bus, MessageStream, SharedBus, Subjects, publish_json};
use coretex::protocol::{Clearance, HeartbeatMsg, PassMsg, SubmitMsg, VERSION};
use coretex::reconciler::ReconcilerSettings;
use coretex::time::{now_ms, parse_rfc3339, to_rfc3339};
use coretex::worker::Mode;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{
    Api, Backend, Host, NatsServer, fast_reconciler, keep_beating, options, unique,
};

const WAIT: Duration = Duration::from_secs(15);
const TWO_HOURS: i64 = 2 * 3600 * 1000;

/// A worker the test speaks for: it heartbeats (topics of its own, no batches) and hands over
/// each job message as it came, lease and all.
pub(crate) struct Peer {
    pub(crate) id: String,
    bus: SharedBus,
    jobs: MessageStream,
    _beats: CancellationToken,
}

impl Peer {
    pub(crate) async fn join(h: &Host, topic: &str) -> Peer {
        let id = unique("peer-");
        let bus = h.running.scheduler.bus.clone();
        let jobs = bus
            .subscribe(&bus.subjects().worker_jobs(&id))
            .await
            .expect("the peer subscribes to its jobs");
        let beats = h.workers.child_token();
        keep_beating(bus.clone(), heartbeat(&id, topic), beats.clone()).await;
        h.wait_worker(&id).await;
        Peer {
            id,
            bus,
            jobs,
            _beats: beats,
        }
    }

    /// The next job message sent to this peer.
    pub(crate) async fn next_job(&mut self) -> Value {
        let msg = tokio::time::timeout(WAIT, self.jobs.next())
            .await
            .expect("a job reaches the peer")
            .expect("the peer's subscription is open");
        serde_json::from_slice(&msg.payload).expect("a job message is JSON")
    }

    pub(crate) async fn say(&self, subject: String, msg: Value) {
        self.bus
            .publish(&subject, Bytes::from(msg.to_string()))
            .await
            .expect("the peer publishes");
    }

    /// Says `started` for `job_id` under `lease`, at `at` by this peer's clock.
    pub(crate) async fn start(&self, job_id: &str, lease: &Value, at: i64) {
        self.say(
            self.bus.subjects().started(),
            json!({"v": 1, "kind": "started", "job_id": job_id, "worker_id": self.id,
                   "at": to_rfc3339(at), "lease": lease}),
        )
        .await;
    }

    /// A result for `job_id`, as this peer or as `worker_id`, under `lease`.
    pub(crate) fn result(&self, job_id: &str, status: &str, result: Value, lease: &Value) -> Value {
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
        pass: None,
    }
}

/// How many bus messages `/metrics` says were rejected for `reason`.
pub(crate) async fn rejected(api: &Api, reason: &str) -> u64 {
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

/// The issue's case: a client that was never given the job says it succeeded.
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
    let behind = now_ms() - TWO_HOURS;
    peer.start(&id, &job["lease"], behind).await;
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
    result["started_at"] = json!(to_rfc3339(behind));
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
    peer.start(&id, &job["lease"], now_ms() + TWO_HOURS).await;
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

// ---------------------------------------------------------------------------------------------
// NATS permissions
// ---------------------------------------------------------------------------------------------

/// The README's permission layout for a deployment under `prefix`: the host user may do
/// anything under the prefix (and JetStream's API, and inboxes); each worker user publishes its
/// heartbeats, starts and results, and reads its own jobs and pass, the cancels and its own
/// inbox.
pub fn permission_layout(prefix: &str, host: (&str, &str), workers: &[(&str, &str)]) -> String {
    let p = Subjects::new(prefix);
    let pre = p.prefix();
    let mut users = format!(
        r#"{{ user: "{}", password: "{}", permissions: {{
              publish: ["{pre}>", "$JS.API.>", "$JS.ACK.>", "_INBOX.>"]
              subscribe: ["{pre}>", "_INBOX.>"] }} }}"#,
        host.0, host.1
    );
    for (id, password) in workers {
        let inbox = format!("_INBOX.{pre}worker.{id}.>");
        users.push_str(&format!(
            r#"
            {{ user: "{id}", password: "{password}", permissions: {{
              publish: ["{}", "{}", "{}", "{}", "{}", "{inbox}"]
              subscribe: ["{}", "{}", "{}", "{}", "{inbox}"] }} }}"#,
            p.heartbeat(),
            p.started(),
            p.progress(),
            p.result(),
            p.results(),
            p.worker_jobs(id),
            p.worker_batch(id),
            p.worker_pass(id),
            p.cancel(),
        ));
    }
    format!("accounts {{ CORETEX {{ jetstream: enabled\n users: [\n{users}\n] }} }}")
}

/// What the server told a client it refused.
type Refusals = Arc<parking_lot::Mutex<Vec<String>>>;

async fn wait_refusal(refusals: &Refusals, what: &str) {
    let until = tokio::time::Instant::now() + WAIT;
    while !refusals.lock().iter().any(|r| r.contains(what)) {
        assert!(
            tokio::time::Instant::now() < until,
            "the server never refused `{what}`: {:?}",
            refusals.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Under the README's layout a worker's credentials can heartbeat, take its own jobs and
/// report on them — and cannot submit, read another worker's jobs, or finish a job it was not
/// given (that last one the host's lease check refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_credential_does_a_workers_part_and_no_more() {
    let mut o = options(Backend::Real);
    o.reconciler = fast_reconciler();
    let prefix = o.subject_prefix.clone();
    let layout = permission_layout(
        &prefix,
        ("host", "host-pw"),
        &[("mallory", "mallory-pw"), ("bob", "bob-pw")],
    );
    let server = NatsServer::start(&layout).await;
    o.nats_url = Some(server.url("host:host-pw"));
    let h = Host::start_with(o).await;
    let s = Subjects::new(&prefix);

    // Bob: a worker as `coretex worker` runs one, under his own credentials and inbox.
    let (mine, theirs) = (unique("mine."), unique("theirs."));
    let auth = NatsAuth {
        inbox_prefix: Some(s.worker_inbox("bob")),
        ..Default::default()
    };
    let bob_bus = NatsBus::connect_with(&server.url("bob:bob-pw"), &auth, s.clone())
        .await
        .expect("bob connects with his credentials");
    bob_bus
        .flush()
        .await
        .expect("bob's flush round-trips through his own inbox");
    let bob = coretex::worker::Worker::new(
        Arc::new(bob_bus),
        coretex::worker::WorkerOptions {
            id: "bob".into(),
            pool: "p".into(),
            topics: vec![theirs.clone()],
            max_parallel: 4,
            labels: Default::default(),
            mode: Mode::Exec("sleep 1; echo '\"real\"'".into()),
            heartbeat_interval: Duration::from_millis(100),
            report_cpu: false,
            started_delay: coretex::worker::STARTED_DELAY,
        },
    );
    let stop = h.workers.child_token();
    tokio::spawn(bob.run(stop));
    h.wait_worker("bob").await;

    // Mallory: a raw client with a worker's credentials, the server's refusals noted.
    let refusals: Refusals = Default::default();
    let noted = refusals.clone();
    let mallory =
        async_nats::ConnectOptions::with_user_and_password("mallory".into(), "mallory-pw".into())
            .event_callback(move |event| {
                let noted = noted.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        noted.lock().push(e.to_string());
                    }
                }
            })
            .connect(server.url(""))
            .await
            .expect("mallory connects with a worker's credentials");
    let mut own_jobs = mallory.subscribe(s.worker_jobs("mallory")).await.unwrap();
    let mut own_pass = mallory.subscribe(s.worker_pass("mallory")).await.unwrap();
    let mut hb = heartbeat("mallory", &mine);
    {
        let (m, subject, stop) = (mallory.clone(), s.heartbeat(), h.workers.child_token());
        let mut hb = hb.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                    Some(msg) = own_pass.next() => {
                        let pass: PassMsg = serde_json::from_slice(&msg.payload).unwrap();
                        hb.pass = Some(pass.pass);
                    }
                }
                let _ = m
                    .publish(
                        subject.clone(),
                        Bytes::from(serde_json::to_vec(&hb).unwrap()),
                    )
                    .await;
            }
        });
    }
    h.wait_worker("mallory").await;

    // 1. No submit: the host's side of the server never sees it.
    let watcher =
        async_nats::ConnectOptions::with_user_and_password("host".into(), "host-pw".into())
            .connect(server.url(""))
            .await
            .unwrap();
    let mut submits = watcher.subscribe(s.submit()).await.unwrap();
    let mut beats = watcher.subscribe(s.heartbeat()).await.unwrap();
    watcher.flush().await.unwrap();
    let held = unique("held.");
    held_topic(&h, &held).await;
    let id = awaiting_approval(&h, &held).await;
    let spec = h.stored_job(&id).await.spec;
    let forged = SubmitMsg {
        v: VERSION,
        job: spec,
        clearance: Clearance::Approved,
    };
    mallory
        .publish(
            s.submit(),
            Bytes::from(serde_json::to_vec(&forged).unwrap()),
        )
        .await
        .unwrap();
    let sentinel = json!({"kind": "heartbeat", "worker_id": "sentinel"}).to_string();
    mallory
        .publish(s.heartbeat(), Bytes::from(sentinel.clone()))
        .await
        .unwrap();
    // Messages of one publisher reach a subscriber in order: a submit let through would have
    // come before the sentinel.
    loop {
        let beat = tokio::time::timeout(WAIT, beats.next())
            .await
            .expect("the sentinel arrives")
            .unwrap();
        if beat.payload == sentinel.as_bytes() {
            break;
        }
    }
    assert!(
        futures::FutureExt::now_or_never(submits.next()).is_none(),
        "a worker's credentials published a submit"
    );
    wait_refusal(&refusals, &format!("Publish to \"{}\"", s.submit())).await;

    // 2. No reading of another worker's jobs.
    let mut spy = mallory.subscribe(s.worker_jobs("bob")).await.unwrap();
    wait_refusal(
        &refusals,
        &format!("Subscription to \"{}\"", s.worker_jobs("bob")),
    )
    .await;
    let j = h.api.submit(json!({"topic": theirs})).await;
    h.api.wait_state(&j, "RUNNING", WAIT).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), spy.next())
            .await
            .ok()
            .flatten()
            .is_none(),
        "a worker's credentials read another worker's job"
    );

    // 2b. No heartbeat as another worker: bob's pass goes where only bob reads, and a "restart"
    // under his id without it requeues nothing (his job still ends as he says, below).
    let _bobs_pass = mallory.subscribe(s.worker_pass("bob")).await.unwrap();
    wait_refusal(
        &refusals,
        &format!("Subscription to \"{}\"", s.worker_pass("bob")),
    )
    .await;
    let bad_passes = rejected(&h.api, "bad_pass").await;
    hb.worker_id = "bob".into();
    hb.topics = vec![theirs.clone()];
    hb.instance = Some("bob-reborn".into());
    for pass in [None, Some("AAAAAAAAAAAAAAAAAAAAAA".to_string())] {
        hb.pass = pass;
        mallory
            .publish(s.heartbeat(), Bytes::from(serde_json::to_vec(&hb).unwrap()))
            .await
            .unwrap();
    }
    mallory.flush().await.unwrap();
    let until = tokio::time::Instant::now() + WAIT;
    while rejected(&h.api, "bad_pass").await <= bad_passes {
        assert!(
            tokio::time::Instant::now() < until,
            "the forged pass is not counted"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // 3. No finishing of a job given to another: mallory's lease is for her own job only.
    let k = h.api.submit(json!({"topic": mine})).await;
    let msg = tokio::time::timeout(WAIT, own_jobs.next())
        .await
        .expect("mallory's own job reaches her")
        .unwrap();
    let own: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(own["job_id"], k.as_str());
    for worker in ["mallory", "bob"] {
        let forged = json!({"v": 1, "kind": "result", "job_id": j, "worker_id": worker,
                            "status": "succeeded", "result": "forged", "lease": own["lease"]});
        mallory
            .publish(s.result(), Bytes::from(forged.to_string()))
            .await
            .unwrap();
    }
    let done = h.api.wait_job(&j, WAIT, |j| j["state"] != "RUNNING").await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["result"], "real", "{done}");
    assert_eq!(done["worker_id"], "bob", "{done}");

    // Her own job she may finish.
    let ok = json!({"v": 1, "kind": "result", "job_id": k, "worker_id": "mallory",
                    "status": "succeeded", "result": "mine", "lease": own["lease"]});
    mallory
        .publish(s.result(), Bytes::from(ok.to_string()))
        .await
        .unwrap();
    let done = h.api.wait_state(&k, "SUCCEEDED", WAIT).await;
    assert_eq!(done["result"], "mine", "{done}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// NATS credentials and TLS
// ---------------------------------------------------------------------------------------------

/// Connects to `url` as `auth` says and round-trips a message; the error, if any.
async fn round_trip(url: &str, auth: &NatsAuth) -> Result<(), String> {
    let bus = NatsBus::connect_with(url, auth, Subjects::new(&unique("t")))
        .await
        .map_err(|e| e.to_string())?;
    let mut sub = bus.subscribe("probe").await.map_err(|e| e.to_string())?;
    bus.flush().await.map_err(|e| e.to_string())?;
    bus.publish("probe", Bytes::from_static(b"hi"))
        .await
        .map_err(|e| e.to_string())?;
    let got = tokio::time::timeout(WAIT, sub.next()).await;
    match got {
        Ok(Some(m)) if m.payload == "hi" => Ok(()),
        other => Err(format!(
            "no round trip: {:?}",
            other.map(|m| m.map(|m| m.payload))
        )),
    }
}

#[tokio::test]
async fn a_token_in_the_url_authenticates_and_is_never_shown() {
    let server = NatsServer::start(r#"authorization { token: "s3cret-token" }"#).await;
    let none = NatsAuth::default();
    round_trip(&server.url("s3cret-token"), &none)
        .await
        .expect("the right token connects");
    let refused = round_trip(&server.url("wrong-token"), &none)
        .await
        .expect_err("a wrong token is refused");
    assert!(refused.contains("authorization"), "{refused}");
    assert!(
        !refused.contains("wrong-token"),
        "the error shows the token: {refused}"
    );
    round_trip(&server.url(""), &none)
        .await
        .expect_err("no token is refused");
}

#[tokio::test]
async fn an_nkey_seed_authenticates_given_or_from_a_file() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = NatsServer::start(&format!(
        r#"authorization {{ users: [ {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    ))
    .await;
    let file = server.dir.path().join("worker.nk");
    std::fs::write(&file, format!("{seed}\n")).unwrap();
    for given in [seed.clone(), file.display().to_string()] {
        let auth = NatsAuth {
            nkey: Some(given),
            ..Default::default()
        };
        round_trip(&server.url(""), &auth)
            .await
            .expect("the user's seed connects");
    }
    let stranger = NatsAuth {
        nkey: Some(nkeys::KeyPair::new_user().seed().unwrap()),
        ..Default::default()
    };
    round_trip(&server.url(""), &stranger)
        .await
        .expect_err("another seed is refused");
}

/// `openssl` (on PATH) makes a CA, a server certificate for 127.0.0.1 and a client certificate.
fn certificates(dir: &std::path::Path) {
    const SCRIPT: &str = r#"
set -e
printf 'subjectAltName=IP:127.0.0.1\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=test CA'
for name in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $name.key -out $name.csr -subj "/CN=$name"
  openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile $name.ext -out $name.pem
done
"#;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .current_dir(dir)
        .output()
        .expect("a shell");
    assert!(
        out.status.success(),
        "making test certificates with openssl (it must be on PATH): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tls_with_a_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let p = |f: &str| certs.path().join(f);
    let server = NatsServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    ))
    .await;
    let full = NatsAuth {
        tls_ca: Some(p("ca.pem")),
        tls_client: Some((p("client.pem"), p("client.key"))),
        ..Default::default()
    };
    round_trip(&server.url_with("tls", ""), &full)
        .await
        .expect("TLS with the CA and a client certificate connects");
    round_trip(&server.url(""), &full)
        .await
        .expect("a CA alone asks for TLS, whatever the scheme");
    let no_client = NatsAuth {
        tls_ca: Some(p("ca.pem")),
        ..Default::default()
    };
    round_trip(&server.url_with("tls", ""), &no_client)
        .await
        .expect_err("a server that verifies clients refuses one without a certificate");
    round_trip(&server.url_with("tls", ""), &NatsAuth::default())
        .await
        .expect_err("a server certificate no known CA signed is refused");
}
