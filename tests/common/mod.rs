//! Shared helpers for the end-to-end tests: a host started in-process on either backend, with
//! a key prefix and subject prefix of its own so tests run in parallel against one Redis and one
//! NATS, and small HTTP helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use coretex::bus::{SharedBus, publish_json};
use coretex::protocol::{HeartbeatMsg, PassMsg};
use coretex::reconciler::ReconcilerSettings;
use coretex::serve::{self, Running, ServeOptions};
use coretex::worker::{Mode, Worker, WorkerOptions};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub mod servers;
pub use servers::{nats_url, redis_url};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store and in-process bus.
    Embedded,
    /// The real Redis and NATS servers.
    Real,
}

/// Heartbeats `hb` on `bus` every 100 ms until `stop`, as a worker does: echoing the pass the
/// hosts send to its `worker.<id>.pass` subject (without it the hosts register nothing).
pub async fn keep_beating(bus: SharedBus, mut hb: HeartbeatMsg, stop: CancellationToken) {
    let mut passes = bus
        .subscribe(&bus.subjects().worker_pass(&hb.worker_id))
        .await
        .expect("the worker subscribes to its pass");
    tokio::spawn(async move {
        let subject = bus.subjects().heartbeat();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                Some(msg) = passes.next() => match serde_json::from_slice::<PassMsg>(&msg.payload) {
                    Ok(p) => hb.pass = Some(p.pass),
                    Err(_) => continue,
                },
            }
            let _ = publish_json(bus.as_ref(), &subject, &hb).await;
        }
    });
}

/// A unique tag for keys and subjects.
pub fn unique(tag: &str) -> String {
    format!("{tag}{}", uuid::Uuid::new_v4().simple())
}

/// Options for a host on `backend`, isolated by fresh prefixes, listening on a free port.
pub fn options(backend: Backend) -> ServeOptions {
    let tag = unique("t");
    let mut o = ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        key_prefix: format!("{tag}:"),
        subject_prefix: tag,
        ..Default::default()
    };
    if backend == Backend::Real {
        o.redis_url = Some(redis_url());
        o.nats_url = Some(nats_url());
    }
    o
}

/// Starts a host; a missing Redis or NATS is a failure with a clear message, never a skip.
pub async fn start(opts: ServeOptions) -> Running {
    let what = if opts.redis_url.is_some() {
        format!(
            "Redis at {} and NATS at {} must be running for this test",
            redis_url(),
            nats_url()
        )
    } else {
        "the embedded host".into()
    };
    serve::start(opts)
        .await
        .unwrap_or_else(|e| panic!("could not start a host ({what}): {e:#}"))
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Api::with_client(addr, reqwest::Client::new())
    }

    /// A client that sends `key` (as `X-API-Key`) with every request.
    pub fn with_key(addr: SocketAddr, key: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-api-key", key.parse().expect("a key is a header value"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("an HTTP client");
        Api::with_client(addr, http)
    }

    fn with_client(addr: SocketAddr, http: reqwest::Client) -> Self {
        Api {
            base: format!("http://{addr}"),
            http,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Sends raw bytes (with a content type, when given): the answer's status, content type,
    /// and body as JSON (as a JSON string when it is not JSON).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String, Value) {
        let mut r = self.http.request(
            method.parse().expect("a method"),
            format!("{}{path}", self.base),
        );
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        let resp = r.body(body).send().await.expect("the host answers");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, ctype, body)
    }

    /// Submits a job and returns its id.
    pub async fn submit(&self, body: Value) -> String {
        let (status, v) = self.post("/api/v1/jobs", body).await;
        assert_eq!(status, 201, "submit answered {status}: {v}");
        v["job_id"].as_str().unwrap().to_string()
    }

    /// Polls a job until `done(job)` holds, or panics after `within`.
    pub async fn wait_job(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = tokio::time::Instant::now() + within;
        loop {
            let (status, job) = self.get(&format!("/api/v1/jobs/{id}")).await;
            if status == 200 && done(&job) {
                return job;
            }
            if tokio::time::Instant::now() > until {
                panic!("job {id} did not reach the expected state within {within:?}: {job}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `path` until `done(status, body)` holds, or panics naming `what` after 15 s.
    pub async fn wait_for(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, v) = self.get(path).await;
            if done(status, &v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{what}: GET {path} answered {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the job is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        self.wait_job(id, within, |j| j["state"] == state).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The row of plugin `name` in `GET /api/v1/plugins` (null when it is not listed).
    pub async fn plugin_row(&self, name: &str) -> Value {
        let (status, v) = self.get("/api/v1/plugins").await;
        assert_eq!(status, 200, "{v}");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits until at least `n` workers are registered.
    pub async fn wait_workers(&self, n: usize, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            let (_, v) = self.get("/api/v1/workers").await;
            if v["items"].as_array().is_some_and(|a| a.len() >= n) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "fewer than {n} workers registered: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A host with in-process workers
// ---------------------------------------------------------------------------------------------

/// A host under test, its API client and the workers started on its bus.
pub struct Host {
    pub running: Running,
    pub api: Api,
    pub workers: CancellationToken,
}

/// Reconciler settings short enough for a test to watch it act.
pub fn fast_reconciler() -> ReconcilerSettings {
    ReconcilerSettings {
        interval: Duration::from_millis(100),
        dispatch_timeout: Duration::from_secs(1),
        running_timeout: Duration::from_secs(60),
        redeliver_after: Duration::from_millis(300),
        pending_grace: Duration::from_millis(500),
        ..Default::default()
    }
}

impl Host {
    pub async fn start(backend: Backend) -> Host {
        Host::start_with(options(backend)).await
    }

    pub async fn start_fast(backend: Backend) -> Host {
        let mut o = options(backend);
        o.reconciler = fast_reconciler();
        Host::start_with(o).await
    }

    pub async fn start_with(opts: ServeOptions) -> Host {
        let running = start(opts).await;
        let api = Api::new(running.addr);
        Host {
            running,
            api,
            workers: CancellationToken::new(),
        }
    }

    /// Starts an in-process worker on the host's bus; it stops with the host or with the token
    /// returned.
    pub fn worker(
        &self,
        id: &str,
        pool: &str,
        topics: &[&str],
        labels: &[(&str, &str)],
        mode: Mode,
    ) -> CancellationToken {
        let w = Worker::new(
            self.running.scheduler.bus.clone(),
            WorkerOptions {
                id: id.to_string(),
                pool: pool.to_string(),
                topics: topics.iter().map(|t| t.to_string()).collect(),
                max_parallel: 8,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                mode,
                heartbeat_interval: Duration::from_millis(100),
                report_cpu: false,
                started_delay: coretex::worker::STARTED_DELAY,
            },
        );
        let stop = self.workers.child_token();
        let s = stop.clone();
        tokio::spawn(async move {
            w.run(s).await.expect("worker runs");
        });
        stop
    }

    /// Starts a worker and waits until the host lists it.
    pub async fn ready_worker(
        &self,
        id: &str,
        pool: &str,
        topics: &[&str],
        labels: &[(&str, &str)],
        mode: Mode,
    ) -> CancellationToken {
        let stop = self.worker(id, pool, topics, labels, mode);
        self.wait_worker(id).await;
        stop
    }

    /// The job as the host's store holds it (with what the API does not show, e.g. its lease).
    pub async fn stored_job(&self, id: &str) -> coretex::job::Job {
        self.running
            .scheduler
            .store
            .get_job(id)
            .await
            .expect("the store answers")
            .unwrap_or_else(|| panic!("job {id} is stored"))
    }

    pub async fn wait_worker(&self, id: &str) {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = self.api.get("/api/v1/workers").await;
            if v["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|w| w["worker_id"] == id))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "worker {id} never registered: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn stop(mut self) {
        self.workers.cancel();
        self.running.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.running.handle).await;
    }
}

/// A test that fails midway still stops its host and workers.
impl Drop for Host {
    fn drop(&mut self) {
        self.workers.cancel();
        self.running.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// A private NATS server
// ---------------------------------------------------------------------------------------------

/// A `nats-server` of the test's own (the binary on PATH), on a free port, with JetStream in a
/// temporary directory and the rest of its config — users, permissions, TLS — given by the
/// test. Stopped (its process, by id) when dropped.
pub struct NatsServer {
    child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server with `config` (nats-server's config syntax, without `listen` and
    /// `jetstream`, which this adds) and waits until it takes connections.
    pub async fn start(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\n{config}\n"),
        )
        .expect("the server's config written");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("a log file");
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test runs its own nats-server, which must be on PATH: {e}")
            });
        let mut server = NatsServer { child, port, dir };
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            let exited = server.child.try_wait().ok().flatten();
            if exited.is_some() || tokio::time::Instant::now() > until {
                panic!("nats-server did not start ({exited:?}): {}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// `nats://{userinfo}@127.0.0.1:{port}` (`userinfo` may be empty: no credentials).
    pub fn url(&self, userinfo: &str) -> String {
        self.url_with("nats", userinfo)
    }

    /// The server's URL with a scheme of choice (`tls`).
    pub fn url_with(&self, scheme: &str, userinfo: &str) -> String {
        match userinfo {
            "" => format!("{scheme}://127.0.0.1:{}", self.port),
            u => format!("{scheme}://{u}@127.0.0.1:{}", self.port),
        }
    }

    /// What the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
