//! Crash recovery, end to end (SPEC §4, §6, §12): real `coretex serve` and `coretex worker`
//! processes over the real Redis and NATS, killed with SIGKILL while jobs are in flight — or
//! stopped with SIGTERM, as a rolling restart stops them.
//!
//! What is proved is "no accepted job is ever lost, whichever process dies when": every job the
//! API accepted ends SUCCEEDED with its worker's result after the host is killed and started
//! again, a result a worker sends while no host runs waits in JetStream, and a job whose worker
//! died times out into the dead-letter queue. Stopped with SIGTERM, a process also runs no job
//! twice: `serve` drains what it accepted, a worker finishes its jobs before it exits.
//!
//! Each test runs its own host with its own Redis key prefix and NATS subject prefix (so the
//! tests run in parallel against one Redis and one NATS), and removes its keys and its JetStream
//! stream when it ends, however it ends. The children's logs are kept under
//! `$CARGO_TARGET_TMPDIR/crash_recovery/<prefix>/` and named in every failure message.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coretex::bus::Subjects;
use coretex::bus::nats::NatsBus;
use coretex::job::JobState;
use coretex::store::redis::RedisStore;
use coretex::store::{JobStore, StoreOptions};
use futures::StreamExt;
use serde_json::{Value, json};

use common::servers::free_port;
use common::{Api, nats_url, redis_url, unique};

const TERMINAL: [&str; 5] = ["SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT", "DENIED"];

/// Fails (never skips) when Redis or NATS is not there, saying which and where.
async fn require_backends() {
    let redis = redis_url();
    let ping = async {
        let client = redis::Client::open(redis.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("crash_recovery needs Redis at {redis} (set REDIS_URL): {e}"),
        Err(_) => panic!("crash_recovery needs Redis at {redis} (set REDIS_URL): no answer"),
    }
    let nats = nats_url();
    if let Err(e) = NatsBus::connect(&nats, Subjects::new("")).await {
        panic!("crash_recovery needs NATS with JetStream at {nats} (set NATS_URL): {e}");
    }
}

/// An API client whose every request gives up after a while, so no test can hang on one.
fn api(port: u16) -> Api {
    Api {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client"),
    }
}

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// SIGKILL, then reap: the process gets no chance to clean up after itself.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to end on its own; its exit status. Fails after
    /// `within`, with its log.
    async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) sends a signal to our own child; it touches no memory of ours.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "SIGTERM not sent"
        );
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling a child") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "still running {within:?} after SIGTERM; log {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One host and its workers, isolated by a prefix of their own.
struct Cluster {
    /// The Redis key prefix is `<tag>:`, the NATS subject prefix `<tag>`.
    tag: String,
    port: u16,
    serve_args: Vec<String>,
    logs: PathBuf,
    serve: Option<Proc>,
    serve_starts: usize,
    workers: Vec<(String, Proc)>,
    api: Api,
}

impl Cluster {
    /// `serve_args` are added to the command line of every `serve` this cluster starts.
    async fn new(serve_args: &[&str]) -> Self {
        require_backends().await;
        let tag = unique("crash");
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("crash_recovery")
            .join(&tag);
        std::fs::create_dir_all(&logs).expect("creating the log directory");
        let port = free_port();
        Cluster {
            api: api(port),
            tag,
            port,
            serve_args: serve_args.iter().map(|s| s.to_string()).collect(),
            logs,
            serve: None,
            serve_starts: 0,
            workers: Vec::new(),
        }
    }

    fn spawn(&self, name: &str, args: &[String]) -> Proc {
        let log = self.logs.join(format!("{name}.log"));
        let out = File::create(&log).expect("creating a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_coretex"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `coretex {}`: {e}", args[0]));
        Proc { child, log }
    }

    /// Where to look when something fails.
    fn where_logs(&self) -> String {
        format!("logs in {}", self.logs.display())
    }

    /// Starts `serve` on the cluster's port and prefixes and waits until it answers `/health`.
    async fn start_serve(&mut self) {
        assert!(self.serve.is_none(), "a serve is running already");
        self.serve_starts += 1;
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            // Several hosts run at once here; none needs the dashboard (on 8081 by default).
            "--no-ui",
            "--redis-url",
            &redis_url(),
            "--nats-url",
            &nats_url(),
            "--key-prefix",
            &format!("{}:", self.tag),
            "--subject-prefix",
            &self.tag,
            "--redeliver-after",
            "2s",
            "--pending-grace",
            "1s",
            "--reconcile-interval",
            "200ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.serve_args.iter().cloned());
        let mut proc = self.spawn(&format!("serve-{}", self.serve_starts), &args);
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.child.try_wait().expect("polling serve") {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                panic!("serve exited before it was ready ({status}); its log:\n{log}");
            }
            if let Ok(r) = self
                .api
                .http
                .get(format!("{}/health", self.api.base))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "serve did not answer /health within 30 s; {}",
                self.where_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.serve = Some(proc);
    }

    /// SIGKILLs the running `serve`.
    fn kill_serve(&mut self) {
        self.serve.take().expect("no serve is running").kill();
    }

    /// SIGTERMs the running `serve` and waits until it has drained and exited.
    async fn terminate_serve(&mut self) -> ExitStatus {
        let mut serve = self.serve.take().expect("no serve is running");
        serve.terminate(Duration::from_secs(60)).await
    }

    /// SIGTERMs a worker and waits until it has drained and exited.
    async fn terminate_worker(&mut self, id: &str) -> ExitStatus {
        let i = self
            .workers
            .iter()
            .position(|(w, _)| w == id)
            .expect("no such worker");
        let (_, mut worker) = self.workers.remove(i);
        worker.terminate(Duration::from_secs(60)).await
    }

    /// Starts a worker for `topic` that runs `exec` per job, `max_parallel` at a time.
    fn start_worker(&mut self, id: &str, topic: &str, exec: &str, max_parallel: u32) {
        let args: Vec<String> = [
            "worker",
            "--nats-url",
            &nats_url(),
            "--subject-prefix",
            &self.tag,
            "--id",
            id,
            "--topic",
            topic,
            "--max-parallel",
            &max_parallel.to_string(),
            "--exec",
            exec,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = self.spawn(id, &args);
        self.workers.push((id.to_string(), proc));
    }

    fn kill_worker(&mut self, id: &str) {
        let i = self
            .workers
            .iter()
            .position(|(w, _)| w == id)
            .expect("no such worker");
        self.workers.remove(i).1.kill();
    }

    /// The jobs as the API shows them now (a GET that fails counts as `null`).
    async fn jobs(&self, ids: &[String]) -> Vec<Value> {
        futures::stream::iter(ids)
            .map(|id| async move {
                let (status, job) = self.api.get(&format!("/api/v1/jobs/{id}")).await;
                if status == 200 { job } else { Value::Null }
            })
            .buffered(16)
            .collect()
            .await
    }

    /// Waits until every job is terminal and returns them; fails after `within`, naming the
    /// jobs that are not, with their histories.
    async fn wait_all_terminal(&self, ids: &[String], within: Duration) -> Vec<Value> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let jobs = self.jobs(ids).await;
            let stuck: Vec<&Value> = jobs
                .iter()
                .filter(|j| !TERMINAL.contains(&j["state"].as_str().unwrap_or("")))
                .collect();
            if stuck.is_empty() {
                return jobs;
            }
            if tokio::time::Instant::now() > until {
                let shown: Vec<String> = stuck
                    .iter()
                    .take(5)
                    .map(|j| format!("{} {} {}", j["id"], j["state"], j["history"]))
                    .collect();
                panic!(
                    "{} of {} accepted jobs are not terminal after {within:?}, e.g.\n{}\n{}",
                    stuck.len(),
                    ids.len(),
                    shown.join("\n"),
                    self.where_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// How many job results wait in the worker-event stream: single results, and the results
    /// inside batched ones (a worker sends results that are ready together as one message).
    async fn results_in_stream(&self) -> usize {
        let subjects = Subjects::new(&self.tag);
        let bus = NatsBus::connect(&nats_url(), subjects.clone())
            .await
            .expect("connecting to NATS");
        let js = async_nats::jetstream::new(bus.client().clone());
        let mut stream = js
            .get_stream(subjects.events_stream())
            .await
            .expect("the worker-event stream exists");
        let state = stream.info().await.expect("stream info").state.clone();
        if state.messages == 0 {
            return 0;
        }
        let (single, batch) = (subjects.result(), subjects.results());
        let mut n = 0;
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            if m.subject.as_str() == single {
                n += 1;
            } else if m.subject.as_str() == batch {
                let v: Value = serde_json::from_slice(&m.payload).expect("a batch of results");
                n += v["results"].as_array().map_or(0, Vec::len);
            }
        }
        n
    }
}

/// Submits a job, retrying the very same request (same `Idempotency-Key`) through connection
/// errors — what a client does while the host restarts. A 201 is a new job, a 200 the job an
/// earlier try created before its answer was lost: both are accepted jobs.
async fn submit_retrying(api: &Api, key: &str, body: &Value, logs: &str) -> String {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = api
            .http
            .post(format!("{}/api/v1/jobs", api.base))
            .header("Idempotency-Key", key)
            .timeout(Duration::from_secs(10))
            .json(body)
            .send()
            .await;
        let answer = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                r.json::<Value>().await.map(|v| (status, v))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((201 | 200, v)) => return v["job_id"].as_str().expect("job_id").to_string(),
            Ok((status, v)) => panic!("submit answered {status}: {v}; {logs}"),
            Err(e) => assert!(
                tokio::time::Instant::now() < until,
                "submit kept failing for 60 s: {e}; {logs}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes what the cluster left in Redis and NATS.
async fn remove_traces(tag: String) {
    if let Ok(bus) = NatsBus::connect(&nats_url(), Subjects::new(&tag)).await {
        let _ = bus.delete_events_stream().await;
    }
    let Ok(client) = redis::Client::open(redis_url().as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let Ok((next, keys)) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{tag}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async::<(u64, Vec<String>)>(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(&keys)
                .query_async::<i64>(&mut conn)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

impl Drop for Cluster {
    /// Kills every child, then cleans Redis and NATS on a thread of its own (a test may end by
    /// panicking inside its runtime, and the clean-up must run then too).
    fn drop(&mut self) {
        self.serve.take();
        self.workers.clear();
        let tag = self.tag.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(20), remove_traces(tag)).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A payload that tells the jobs apart; `cat` echoes it, so it is also the expected result.
fn payload(tag: &str, n: usize) -> Value {
    json!({"n": n, "tag": tag, "nested": {"list": [n, "x"], "ok": true}})
}

fn assert_succeeded_with_payload(c: &Cluster, job: &Value, payload: &Value) {
    assert_eq!(
        job["state"],
        "SUCCEEDED",
        "job {} ended {} (error {}); history {}; {}",
        job["id"],
        job["state"],
        job["error"],
        job["history"],
        c.where_logs()
    );
    assert_eq!(
        &job["result"],
        payload,
        "job {} has the wrong result; {}",
        job["id"],
        c.where_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_of_serve_loses_no_accepted_job() {
    let mut c = Cluster::new(&[]).await;
    let topic = "crash.echo";
    c.start_serve().await;
    c.start_worker("w1", topic, "sleep 0.2; cat", 4);
    c.start_worker("w2", topic, "sleep 0.2; cat", 4);
    c.api.wait_workers(2, Duration::from_secs(20)).await;

    const FIRST: usize = 100;
    const TOTAL: usize = 150;
    let logs = c.where_logs();
    let submitted = Arc::new(AtomicUsize::new(0));
    let submit_range = |range: std::ops::Range<usize>, parallel: usize| {
        let (api, tag, logs, submitted) =
            (api(c.port), c.tag.clone(), logs.clone(), submitted.clone());
        async move {
            let api = &api;
            futures::stream::iter(range)
                .map(|n| {
                    let (tag, logs, submitted) = (&tag, &logs, &submitted);
                    async move {
                        let body = json!({"topic": topic, "payload": payload(tag, n)});
                        let id = submit_retrying(api, &format!("job-{n}"), &body, logs).await;
                        submitted.fetch_add(1, Ordering::SeqCst);
                        (id, payload(tag, n))
                    }
                })
                .buffer_unordered(parallel)
                .collect::<Vec<_>>()
                .await
        }
    };

    // The first jobs are accepted by the first host, and some of them complete...
    let mut accepted = submit_range(0..FIRST, 10).await;
    let first_ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = c.jobs(&first_ids).await;
        if jobs.iter().filter(|j| j["state"] == "SUCCEEDED").count() >= 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no 10 jobs completed within 30 s, e.g. {}; {}",
            jobs[0],
            c.where_logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // ...then, while the others are in flight and more are being submitted, the host is
    // SIGKILLed, and a new one starts on the same port with the same prefixes.
    let rest = tokio::spawn(submit_range(FIRST..TOTAL, 5));
    while submitted.load(Ordering::SeqCst) < FIRST + 10 && !rest.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = c.jobs(&first_ids).await;
    c.kill_serve();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for j in &before {
        *states
            .entry(j["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let in_flight: usize = states
        .iter()
        .filter(|(s, _)| !TERMINAL.contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum();
    eprintln!("serve killed with the first {FIRST} jobs at {states:?}");
    assert!(
        in_flight > 0,
        "the premise of this test: the host dies with jobs in flight ({states:?})"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start_serve().await;
    accepted.extend(rest.await.expect("the submitter"));

    assert_eq!(accepted.len(), TOTAL);
    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), TOTAL, "every submission is its own job");
    let jobs = c.wait_all_terminal(&ids, Duration::from_secs(60)).await;
    for (job, (_, payload)) in jobs.iter().zip(&accepted) {
        assert_succeeded_with_payload(&c, job, payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_sent_while_no_serve_runs_are_kept() {
    let mut c = Cluster::new(&[]).await;
    let topic = "crash.gated";
    // Each job runs until the test lets it finish (or 30 s pass, so no command outlives the
    // test for long): the results are then certainly sent while no host runs.
    let gate = c.logs.join("release");
    let exec = format!(
        "for i in $(seq 600); do [ -e '{}' ] && break; sleep 0.05; done; cat",
        gate.display()
    );
    c.start_serve().await;
    c.start_worker("w1", topic, &exec, 4);
    c.start_worker("w2", topic, &exec, 4);
    c.api.wait_workers(2, Duration::from_secs(20)).await;

    const JOBS: usize = 6;
    let mut accepted = Vec::new();
    for n in 0..JOBS {
        let p = payload(&c.tag, n);
        let id = c.api.submit(json!({"topic": topic, "payload": p})).await;
        accepted.push((id, p));
    }
    for (id, _) in &accepted {
        c.api
            .wait_state(id, "RUNNING", Duration::from_secs(20))
            .await;
    }

    // Every job is RUNNING, so the store holds nothing the reconciler could re-send: the jobs
    // complete only if the results the workers publish while no host runs are kept.
    c.kill_serve();
    File::create(&gate).expect("opening the gate");
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.results_in_stream().await < JOBS {
        assert!(
            tokio::time::Instant::now() < until,
            "the workers' results never reached the JetStream stream; {}",
            c.where_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.start_serve().await;

    let ids: Vec<String> = accepted.iter().map(|(id, _)| id.clone()).collect();
    let jobs = c.wait_all_terminal(&ids, Duration::from_secs(60)).await;
    for (job, (_, payload)) in jobs.iter().zip(&accepted) {
        assert_succeeded_with_payload(&c, job, payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_job_times_out_to_the_dlq() {
    // The command would finish well within the running timeout: only the worker's death keeps
    // its result from coming (the orphaned command ends soon after, its output unread).
    let mut c = Cluster::new(&["--running-timeout", "5s"]).await;
    let topic = "crash.doomed";
    c.start_serve().await;
    // The default policy would retry the timed-out job on a worker that never comes back: this
    // test is about the timeout reaching the DLQ, so the first failure is final.
    let (status, v) = c
        .api
        .post(
            "/api/v1/config",
            json!({"scope": "system", "data": {"retry": {"policy": "never"}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    c.start_worker("w1", topic, "sleep 3; cat", 1);
    c.api.wait_workers(1, Duration::from_secs(20)).await;

    let id = c
        .api
        .submit(json!({"topic": topic, "payload": payload(&c.tag, 0)}))
        .await;
    c.api
        .wait_state(&id, "RUNNING", Duration::from_secs(20))
        .await;
    c.kill_worker("w1");

    let job = c
        .wait_all_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(job["state"], "TIMEOUT", "job {job}; {}", c.where_logs());
    assert_eq!(job["error"]["code"], "running_timeout", "job {job}");

    let (status, dlq) = c.api.get(&format!("/api/v1/dlq?topic={topic}")).await;
    assert_eq!(status, 200, "{dlq}");
    let entries: Vec<&Value> = dlq["items"]
        .as_array()
        .expect("a DLQ page")
        .iter()
        .filter(|e| e["job_id"] == id.as_str())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "the timed-out job is in the DLQ once: {dlq}"
    );
    assert_eq!(entries[0]["status"], "TIMEOUT", "{dlq}");
    assert_eq!(
        entries[0]["request"]["payload"],
        payload(&c.tag, 0),
        "{dlq}"
    );
}

/// Polls a workflow run until `done(run)`; fails after `within` with the run and the logs.
async fn wait_run(
    c: &Cluster,
    run_id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = tokio::time::Instant::now() + within;
    loop {
        let (status, run) = c.api.get(&format!("/api/v1/workflow-runs/{run_id}")).await;
        if status == 200 && done(&run) {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "run {run_id} did not get there within {within:?}: {run}; {}",
            c.where_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workflow_run_finishes_after_serve_is_killed_mid_run() {
    let mut c = Cluster::new(&[]).await;
    let topic = "crash.wf";
    c.start_serve().await;
    c.start_worker("w1", topic, "sleep 0.5; cat", 4);
    c.api.wait_workers(1, Duration::from_secs(20)).await;

    // A chain of three steps, each half a second, each fed by the one before.
    let def = json!({"id": "chain", "name": "chain", "steps": {
        "a": {"topic": topic, "input": {"n": 1}},
        "b": {"topic": topic, "depends_on": ["a"], "input": {"prev": "${steps.a.output}"}},
        "c": {"topic": topic, "depends_on": ["b"], "input": {"prev": "${steps.b.output}"}}
    }});
    let (status, v) = c.api.post("/api/v1/workflows", def).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = c
        .api
        .post("/api/v1/workflows/chain/runs", json!({"input": {}}))
        .await;
    assert_eq!(status, 201, "{v}");
    let run_id = v["run_id"].as_str().expect("a run id").to_string();

    // Once the first step is done and the second has its job, the host dies...
    wait_run(&c, &run_id, Duration::from_secs(30), |r| {
        r["steps"]["a"]["status"] == "succeeded" && r["steps"]["b"]["job_id"].is_string()
    })
    .await;
    c.kill_serve();
    // ...the second step's job finishes while no host runs; a new host takes the run on.
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.start_serve().await;

    let run = wait_run(&c, &run_id, Duration::from_secs(60), |r| {
        r["status"] != "running" && r["status"] != "pending"
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run}; {}", c.where_logs());
    assert_eq!(
        run["steps"]["c"]["output"],
        json!({"prev": {"prev": {"n": 1}}}),
        "{run}"
    );
}

/// A command that notes each job it runs in `runs` (one line per run, by job id), then echoes
/// its payload after `secs`.
fn noting_exec(runs: &std::path::Path, secs: &str) -> String {
    format!(
        "echo \"$CORETEX_JOB_ID\" >> '{}'; sleep {secs}; cat",
        runs.display()
    )
}

/// How many times each job ran, from the file `noting_exec` writes.
fn runs_by_job(runs: &std::path::Path) -> BTreeMap<String, usize> {
    let mut by_job = BTreeMap::new();
    for id in std::fs::read_to_string(runs).unwrap_or_default().lines() {
        *by_job.entry(id.to_string()).or_default() += 1;
    }
    by_job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_serve_after_a_burst_loses_no_job_and_runs_none_twice() {
    let mut c = Cluster::new(&[]).await;
    let topic = "drain.burst";
    let runs = c.logs.join("runs");
    c.start_serve().await;
    c.start_worker("w1", topic, &noting_exec(&runs, "0.3"), 8);
    c.start_worker("w2", topic, &noting_exec(&runs, "0.3"), 8);
    c.api.wait_workers(2, Duration::from_secs(20)).await;

    // A burst, and the host is told to stop the moment it has accepted it: some jobs are on
    // their way to workers, most wait for a slot.
    const JOBS: usize = 200;
    let payloads: Vec<Value> = (0..JOBS).map(|n| payload(&c.tag, n)).collect();
    let items: Vec<Value> = payloads
        .iter()
        .map(|p| json!({"topic": topic, "payload": p}))
        .collect();
    let (status, v) = c
        .api
        .post("/api/v1/jobs/batch", json!({"jobs": items}))
        .await;
    assert_eq!(status, 201, "{v}");
    let ids: Vec<String> = v["items"]
        .as_array()
        .expect("one item per job")
        .iter()
        .map(|i| {
            i["job_id"]
                .as_str()
                .expect("every job accepted")
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), JOBS);
    let exit = c.terminate_serve().await;
    assert!(
        exit.success(),
        "serve exited {exit} on SIGTERM; {}",
        c.where_logs()
    );

    // While no host runs: a job some worker took must not read PENDING, or the next host would
    // announce it again and perhaps give it to the other worker too.
    let store = RedisStore::connect(
        &redis_url(),
        &format!("{}:", c.tag),
        StoreOptions::default(),
    )
    .await
    .expect("connecting to Redis");
    // A job sent before the stop starts on its worker meanwhile (a command takes a moment to
    // start on a loaded machine): the premise is given a few seconds to show.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while runs_by_job(&runs).is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken: Vec<String> = runs_by_job(&runs).into_keys().collect();
    assert!(
        !taken.is_empty(),
        "the premise: workers had jobs when serve stopped"
    );
    for (id, job) in taken
        .iter()
        .zip(store.get_jobs(&taken).await.expect("reading jobs"))
    {
        let state = job.map(|j| j.state);
        assert_ne!(
            state,
            Some(JobState::Pending),
            "job {id} was taken by a worker but reads PENDING after the drain; {}",
            c.where_logs()
        );
    }

    c.start_serve().await;
    let jobs = c.wait_all_terminal(&ids, Duration::from_secs(90)).await;
    for (job, payload) in jobs.iter().zip(&payloads) {
        assert_succeeded_with_payload(&c, job, payload);
    }
    let ran = runs_by_job(&runs);
    let twice: Vec<(&String, &usize)> = ran.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "jobs run more than once: {twice:?}; {}",
        c.where_logs()
    );
    assert_eq!(ran.len(), JOBS, "every job ran; {}", c.where_logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_a_worker_finishes_its_job_and_the_next_goes_elsewhere() {
    let mut c = Cluster::new(&[]).await;
    let topic = "drain.worker";
    let runs = c.logs.join("runs");
    c.start_serve().await;
    c.start_worker("w1", topic, &noting_exec(&runs, "2"), 4);
    c.api.wait_workers(1, Duration::from_secs(20)).await;
    let first = c
        .api
        .submit(json!({"topic": topic, "payload": payload(&c.tag, 1)}))
        .await;
    c.api
        .wait_state(&first, "RUNNING", Duration::from_secs(20))
        .await;

    // SIGTERM while the job runs: the worker lets it finish, then exits 0.
    let exit = c.terminate_worker("w1").await;
    assert!(
        exit.success(),
        "the worker exited {exit}; {}",
        c.where_logs()
    );
    let job = c
        .wait_all_terminal(std::slice::from_ref(&first), Duration::from_secs(20))
        .await
        .remove(0);
    assert_succeeded_with_payload(&c, &job, &payload(&c.tag, 1));
    assert_eq!(job["worker_id"], "w1", "{job}");

    // The next job goes to the worker that replaces it.
    c.start_worker("w2", topic, &noting_exec(&runs, "0"), 4);
    let second = c
        .api
        .submit(json!({"topic": topic, "payload": payload(&c.tag, 2)}))
        .await;
    let job = c
        .wait_all_terminal(std::slice::from_ref(&second), Duration::from_secs(30))
        .await
        .remove(0);
    assert_succeeded_with_payload(&c, &job, &payload(&c.tag, 2));
    assert_eq!(job["worker_id"], "w2", "{job}");
    assert_eq!(runs_by_job(&runs).len(), 2, "each job ran once");
}
