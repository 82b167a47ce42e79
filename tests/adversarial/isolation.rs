//! Tenants against each other (issue 13, case 4 and the code-reading cases): one tenant's config
//! cannot open a breaker another depends on, config is checked against the schema of the keys
//! the host reads, a tenant sees and routes to only what is its org's, and a job's env cannot
//! change what an `--exec` worker runs.
//!
//! Documents "stored before validation existed" are written straight to the store, as a host of
//! the previous version would have stored them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coretex::configsvc::Scope;
use coretex::serve::Running;
use coretex::worker::{Mode, Worker, WorkerOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{Api, Backend, options, start, unique};

const WAIT: Duration = Duration::from_secs(15);

/// A host with an admin key and the keys of tenants `acme` and `beta`.
struct Tenants {
    running: Running,
    root: Api,
    acme: Api,
    beta: Api,
    workers: CancellationToken,
    started: AtomicUsize,
}

impl Tenants {
    async fn start(backend: Backend) -> Tenants {
        let mut opts = options(backend);
        opts.api_key = Some("root".into());
        opts.tenant_keys = vec![("acme".into(), "ka".into()), ("beta".into(), "kb".into())];
        let running = start(opts).await;
        Tenants {
            root: Api::with_key(running.addr, "root"),
            acme: Api::with_key(running.addr, "ka"),
            beta: Api::with_key(running.addr, "kb"),
            running,
            workers: CancellationToken::new(),
            started: AtomicUsize::new(0),
        }
    }

    /// Starts an in-process worker of `pool` for `topic` and waits until the host lists it (the
    /// host's prefixes are its own: every worker it lists is one of the test's).
    async fn worker(&self, id: &str, pool: &str, topic: &str, mode: Mode) {
        let w = Worker::new(
            self.running.scheduler.bus.clone(),
            WorkerOptions {
                id: id.to_string(),
                pool: pool.to_string(),
                topics: vec![topic.to_string()],
                max_parallel: 8,
                labels: Default::default(),
                mode,
                heartbeat_interval: Duration::from_millis(100),
                report_cpu: false,
                started_delay: coretex::worker::STARTED_DELAY,
            },
        );
        let stop = self.workers.child_token();
        tokio::spawn(async move { w.run(stop).await.expect("the worker runs") });
        let started = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        self.root.wait_workers(started, WAIT).await;
    }

    /// Stores an org's config document as it is, unchecked (see the module docs).
    async fn store_unchecked(&self, org: &str, data: Value) {
        self.running
            .scheduler
            .store
            .config_put(
                &Scope::Org(org.into()).key(),
                &data,
                None,
                coretex::time::now_ms(),
            )
            .await
            .expect("stored");
    }

    async fn stop(self) {
        self.workers.cancel();
        self.running.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.running.handle).await;
    }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Asserts a 422 problem that names `field`.
fn assert_names(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 422, "{body}");
    let named: Vec<&str> = body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(named.contains(&field), "{field} is not named in {body}");
}

async fn set_config(api: &Api, body: Value) -> (u16, Value) {
    api.post("/api/v1/config", body).await
}

// ---------------------------------------------------------------------------------------------
// Case 4: one tenant's safety config and the breaker every tenant shared
// ---------------------------------------------------------------------------------------------

async fn one_tenants_bad_safety_config_denies_only_its_own_jobs(backend: Backend) {
    let h = Tenants::start(backend).await;
    let topic = unique("job.case4.");
    h.worker(&unique("w-"), "p", &topic, Mode::Echo).await;

    // Exactly as the issue wrote it: refused now, naming the key.
    let (status, v) = set_config(
        &h.acme,
        json!({"scope":"org","id":"acme","data":{"safety":{"denied_topics":"oops"}}}),
    )
    .await;
    assert_names(status, &v, "data.safety.denied_topics");

    // The same document stored before writes were checked: acme's jobs fail closed, each with
    // a reason that says what is wrong and whose it is…
    h.store_unchecked("acme", json!({"safety": {"denied_topics": "oops"}}))
        .await;
    for i in 0..10 {
        let id = h
            .acme
            .submit(json!({"topic": topic, "payload": {"i": i}}))
            .await;
        let job = h.acme.wait_state(&id, "DENIED", WAIT).await;
        let reason = job["safety_reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("safety.denied_topics") || reason.contains("tenant `acme`"),
            "job {i}: {reason}"
        );
    }
    // …and beta's job, ten acme jobs later, runs.
    let id = h.beta.submit(json!({"topic": topic})).await;
    h.beta.wait_state(&id, "SUCCEEDED", WAIT).await;

    // The admin sees acme's open breaker; beta sees none of it; the metric has no tenant label.
    let (_, status) = h.root.get("/api/v1/status").await;
    let open = status["breakers"]["tenants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        open.contains(&json!({"breaker": "safety", "tenant": "acme", "state": "open"})),
        "{status}"
    );
    let (_, status) = h.beta.get("/api/v1/status").await;
    assert_eq!(status["breakers"]["open"], 0, "{status}");
    assert!(!status.to_string().contains("acme"), "{status}");
    let metrics = h.root.metrics().await;
    assert!(
        metrics.contains(r#"coretex_breakers_open{breaker="safety"}"#),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn one_tenants_bad_safety_config_denies_only_its_own_jobs_embedded() {
    one_tenants_bad_safety_config_denies_only_its_own_jobs(Backend::Embedded).await;
}

#[tokio::test]
async fn one_tenants_bad_safety_config_denies_only_its_own_jobs_real() {
    one_tenants_bad_safety_config_denies_only_its_own_jobs(Backend::Real).await;
}

// ---------------------------------------------------------------------------------------------
// The retry-policy plugin's breaker
// ---------------------------------------------------------------------------------------------

async fn a_tenants_bad_retry_settings_leave_other_tenants_retries_alone(backend: Backend) {
    let h = Tenants::start(backend).await;
    let topic = unique("job.fails.");
    h.worker(&unique("w-"), "p", &topic, Mode::Exec("exit 3".into()))
        .await;

    let (status, v) = set_config(
        &h.acme,
        json!({"scope": "org", "id": "acme", "data": {"retry": {"multiplier": 0.5}}}),
    )
    .await;
    assert_names(status, &v, "data.retry.multiplier");
    let (status, v) = set_config(
        &h.beta,
        json!({"scope": "org", "id": "beta",
               "data": {"retry": {"initial_backoff_ms": 10, "max_attempts": 2}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Stored unchecked, acme's settings make the default policy fail for acme's jobs: each is
    // dead-lettered, saying so, and the plugin's breaker opens — for acme.
    h.store_unchecked("acme", json!({"retry": {"multiplier": 0.5}}))
        .await;
    for _ in 0..3 {
        let id = h.acme.submit(json!({"topic": topic})).await;
        h.acme.wait_state(&id, "FAILED", WAIT).await;
        let (status, entry) = h.acme.get(&format!("/api/v1/dlq/{id}")).await;
        assert_eq!(status, 200, "{entry}");
        assert!(
            entry["reason"]
                .as_str()
                .is_some_and(|r| r.contains("retry policy")),
            "{entry}"
        );
    }

    // beta's failing job is still retried by the policy: a second attempt exists.
    h.beta.submit(json!({"topic": topic})).await;
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, list) = h.beta.get(&format!("/api/v1/jobs?topic={topic}")).await;
        let jobs = items(&list);
        if jobs.len() == 2 && jobs.iter().all(|j| j["state"] == "FAILED") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "beta's job was not retried: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn a_tenants_bad_retry_settings_leave_other_tenants_retries_alone_embedded() {
    a_tenants_bad_retry_settings_leave_other_tenants_retries_alone(Backend::Embedded).await;
}

#[tokio::test]
async fn a_tenants_bad_retry_settings_leave_other_tenants_retries_alone_real() {
    a_tenants_bad_retry_settings_leave_other_tenants_retries_alone(Backend::Real).await;
}

// ---------------------------------------------------------------------------------------------
// The config schema
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn config_writes_are_checked_against_the_keys_the_host_reads() {
    let h = Tenants::start(Backend::Embedded).await;
    let org = |data: Value| json!({"scope": "org", "id": "acme", "data": data});
    for (data, field) in [
        (
            json!({"safety": {"denied_topics": "oops"}}),
            "data.safety.denied_topics",
        ),
        (
            json!({"safety": {"allowed_topics": ["ok", 7]}}),
            "data.safety.allowed_topics[1]",
        ),
        (
            json!({"safety": {"denied_topic": ["typo"]}}),
            "data.safety.denied_topic",
        ),
        (
            json!({"retry": {"multiplier": 0.5}}),
            "data.retry.multiplier",
        ),
        (
            json!({"retry": {"max_attempts": 1_000_000}}),
            "data.retry.max_attempts",
        ),
        (
            json!({"retry": {"initial_backoff_ms": -5}}),
            "data.retry.initial_backoff_ms",
        ),
        (
            json!({"retry": {"policy": "round-robin"}}),
            "data.retry.policy",
        ),
        (
            json!({"dispatch": {"strategy": "no-such-plugin"}}),
            "data.dispatch.strategy",
        ),
        (
            json!({"workflow": {"condition_evaluator": "never"}}),
            "data.workflow.condition_evaluator",
        ),
        (json!({"pools": {"job.x": ["p"]}}), "data.pools.job.x"),
        (
            json!({"tenancy": {"pools": {"acme": ["everything"]}}}),
            "data.tenancy",
        ),
        (json!({"mine": "x".repeat(70_000)}), "data"),
    ] {
        let (status, v) = set_config(&h.acme, org(data.clone())).await;
        assert_names(status, &v, field);
        let (status, _) = h.acme.get("/api/v1/config?scope=org&id=acme").await;
        assert_eq!(status, 404, "nothing was stored for {data}");
    }
    // The admin's system scope is held to the same schema.
    let (status, v) = set_config(
        &h.root,
        json!({"scope": "system", "data": {"tenancy": {"teams": {"t": 5}}}}),
    )
    .await;
    assert_names(status, &v, "data.tenancy.teams.t");

    // Keys of the user's own stay allowed, and reach the config as they are.
    let mine = json!({"retry": {"policy": "fixed", "multiplier": 1.5},
                      "dispatch": {"strategy": "label-affinity", "label_weights": {"gpu": 2}},
                      "report": {"format": "csv"}});
    let (status, v) = set_config(&h.acme, org(mine.clone())).await;
    assert_eq!(status, 200, "{v}");
    let (_, eff) = h.acme.get("/api/v1/config/effective").await;
    assert_eq!(eff["report"], mine["report"], "{eff}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The env deny list
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn env_that_changes_what_an_exec_worker_runs_is_refused_at_submit() {
    let h = Tenants::start(Backend::Embedded).await;
    let topic = unique("job.env.");
    for name in [
        "LD_PRELOAD",
        "PATH",
        "DYLD_INSERT_LIBRARIES",
        "BASH_ENV",
        "ld_audit",
    ] {
        let (status, v) = h
            .acme
            .post(
                "/api/v1/jobs",
                json!({"topic": topic, "env": {name: "/tmp/evil"}}),
            )
            .await;
        assert_names(status, &v, &format!("env.{name}"));
    }
    let (status, v) = h
        .acme
        .post(
            "/api/v1/jobs/batch",
            json!({"jobs": [{"topic": topic, "env": {"LD_LIBRARY_PATH": "/tmp"}},
                            {"topic": topic, "env": {"GREETING": "hi"}}]}),
        )
        .await;
    assert!(status < 300, "{status}: {v}");
    assert_eq!(v["items"][0]["error"]["status"], 422, "{v}");
    assert!(v["items"][1]["job_id"].is_string(), "{v}");
    let (_, list) = h.acme.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(
        items(&list).len(),
        1,
        "only the harmless job is stored: {list}"
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// What a tenant key sees of other orgs' config
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tenant_sees_no_config_of_another_orgs_team_or_workflow() {
    let h = Tenants::start(Backend::Embedded).await;
    let team = unique("team-");
    let (status, v) = set_config(
        &h.root,
        json!({"scope": "system", "data": {"tenancy": {"teams": {team.clone(): "beta"}}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = set_config(
        &h.root,
        json!({"scope": "team", "id": team, "data": {"team_secret": "beta's"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = h
        .beta
        .post(
            "/api/v1/workflows",
            json!({"id": unique("wf-"), "name": "b", "steps": {"s": {"topic": "job.x"}}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // Its whole id (`beta~…`): the id acme would have to name.
    let wf = v["id"].as_str().unwrap().to_string();
    let (status, v) = set_config(
        &h.root,
        json!({"scope": "workflow", "id": wf, "data": {"workflow_secret": "beta's"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    for query in [
        format!("team_id={team}"),
        format!("workflow_id={wf}"),
        format!("workflow_id={wf}&step_id=s"),
    ] {
        let (status, v) = h
            .acme
            .get(&format!("/api/v1/config/effective?{query}"))
            .await;
        assert_eq!(status, 404, "{query}: {v}");
        assert!(!v.to_string().contains("secret"), "{query}: {v}");
    }
    // Its own org's merge holds nothing of the host's tenancy policy either.
    let (_, v) = h.acme.get("/api/v1/config/effective").await;
    assert!(v.get("tenancy").is_none(), "{v}");
    // Nor can a job of acme's borrow beta's team.
    let (status, v) = h
        .acme
        .post("/api/v1/jobs", json!({"topic": "job.x", "team_id": team}))
        .await;
    assert_names(status, &v, "team_id");

    // beta sees its own.
    let (status, v) = h
        .beta
        .get(&format!(
            "/api/v1/config/effective?team_id={team}&workflow_id={wf}"
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["team_secret"], "beta's", "{v}");
    assert_eq!(v["workflow_secret"], "beta's", "{v}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Routing to pools
// ---------------------------------------------------------------------------------------------

async fn a_tenant_routes_only_to_pools_it_is_granted(backend: Backend) {
    let h = Tenants::start(backend).await;
    let topic = unique("job.pool.");
    let (status, v) = set_config(
        &h.root,
        json!({"scope": "system", "data": {"tenancy": {"pools": {
            "acme": ["acme-only", "shared"], "*": ["shared"]}}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (acme_worker, shared_worker) = (unique("w-acme-"), unique("w-shared-"));
    h.worker(&acme_worker, "acme-only", &topic, Mode::Echo)
        .await;
    h.worker(&shared_worker, "shared", &topic, Mode::Echo).await;

    // beta cannot name acme's pool, on a job or in its config.
    let (status, v) = h
        .beta
        .post(
            "/api/v1/jobs",
            json!({"topic": topic, "labels": {"preferred_pool": "acme-only"}}),
        )
        .await;
    assert_names(status, &v, "labels.preferred_pool");
    let (status, v) = set_config(
        &h.beta,
        json!({"scope": "org", "id": "beta", "data": {"pools": {topic.clone(): "acme-only"}}}),
    )
    .await;
    assert_names(status, &v, &format!("data.pools.{topic}"));

    // Chosen by topic, beta's jobs run only on the pool it is granted.
    for _ in 0..6 {
        let id = h.beta.submit(json!({"topic": topic})).await;
        let job = h.beta.wait_state(&id, "SUCCEEDED", WAIT).await;
        assert_eq!(job["worker_id"], shared_worker.as_str(), "{job}");
    }
    // acme may use its own.
    let id = h
        .acme
        .submit(json!({"topic": topic, "labels": {"preferred_pool": "acme-only"}}))
        .await;
    let job = h.acme.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(job["worker_id"], acme_worker.as_str(), "{job}");

    // A config stored before the check (of an org no key names) fails its job, saying why.
    h.store_unchecked("gamma", json!({"pools": {topic.clone(): "acme-only"}}))
        .await;
    let id = h
        .root
        .submit(json!({"topic": topic, "tenant_id": "gamma"}))
        .await;
    let job = h.root.wait_state(&id, "FAILED", WAIT).await;
    assert_eq!(job["error"]["code"], "pool_not_allowed", "{job}");
    h.stop().await;
}

#[tokio::test]
async fn a_tenant_routes_only_to_pools_it_is_granted_embedded() {
    a_tenant_routes_only_to_pools_it_is_granted(Backend::Embedded).await;
}

#[tokio::test]
async fn a_tenant_routes_only_to_pools_it_is_granted_real() {
    a_tenant_routes_only_to_pools_it_is_granted(Backend::Real).await;
}

// ---------------------------------------------------------------------------------------------
// The system's safety under a tenant's own
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tenants_safety_config_cannot_lift_the_systems_denies() {
    let h = Tenants::start(Backend::Embedded).await;
    let topic = unique("job.danger.");
    h.worker(&unique("w-"), "p", &topic, Mode::Echo).await;
    let (status, v) = set_config(
        &h.root,
        json!({"scope": "system", "data": {"safety": {"denied_topics": ["job.danger.*"]}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = set_config(
        &h.acme,
        json!({"scope": "org", "id": "acme",
               "data": {"safety": {"allowed_topics": ["*"], "denied_topics": []}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = h.acme.submit(json!({"topic": topic})).await;
    let job = h.acme.wait_state(&id, "DENIED", WAIT).await;
    assert!(
        job["safety_reason"]
            .as_str()
            .is_some_and(|r| r.contains("job.danger.*")),
        "{job}"
    );
    h.stop().await;
}
