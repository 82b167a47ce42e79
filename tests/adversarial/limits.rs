//! Limits wherever input enters (issue 13, cases 1, 7 and 8, and the limits found reading the
//! code): a body nested or sized past a limit, a workflow too large for the engine, a step whose
//! job could never be valid, a job too large for the bus, a client that never finishes its
//! headers. Each is answered 413/422 problem+json naming the limit, or fails the job or step
//! with the reason; none crashes the host or leaves work waiting forever.

use std::collections::BTreeMap;
use std::time::Duration;

use coretex::limits;
use coretex::worker::Mode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Backend, Host, options, unique};

const WAIT: Duration = Duration::from_secs(20);

/// A host whose workflows advance every 100 ms, with `adjust` applied to its options last.
async fn host(backend: Backend, adjust: impl FnOnce(&mut coretex::serve::ServeOptions)) -> Host {
    let mut o = options(backend);
    o.workflows.tick = Duration::from_millis(100);
    adjust(&mut o);
    Host::start_with(o).await
}

impl Host {
    /// An in-process echo worker for `topic`, registered before this returns.
    async fn echo_worker(&self, topic: &str) {
        self.topic_worker(topic, Mode::Echo).await
    }

    async fn topic_worker(&self, topic: &str, mode: Mode) {
        self.ready_worker(&unique("w-"), &unique("pool-"), &[topic], &[], mode)
            .await;
    }

    async fn post_yaml(&self, yaml: String) -> (u16, String, Value) {
        self.api
            .send(
                "POST",
                "/api/v1/workflows",
                Some("application/yaml"),
                yaml.into_bytes(),
            )
            .await
    }

    async fn create_workflow(&self, def: &Value) -> (u16, Value) {
        self.api.post("/api/v1/workflows", def.clone()).await
    }

    /// Creates a workflow, starts a run with `input` and waits until `done(run)`.
    async fn run_until(&self, def: Value, input: Value, done: impl Fn(&Value) -> bool) -> Value {
        let (status, wf) = self.create_workflow(&def).await;
        assert_eq!(status, 201, "create: {wf}");
        let id = wf["id"].as_str().expect("a workflow id");
        let (status, v) = self
            .api
            .post(
                &format!("/api/v1/workflows/{id}/runs"),
                json!({"input": input}),
            )
            .await;
        assert_eq!(status, 201, "start: {v}");
        let run_id = v["run_id"].as_str().expect("a run id").to_string();
        self.api
            .wait_for(
                &format!("/api/v1/workflow-runs/{run_id}"),
                "the run gets there",
                |status, run| status == 200 && done(run),
            )
            .await
    }
}

/// `depth` nested arrays around a zero (`nest(1)` is `[0]`).
fn nest(depth: usize) -> Value {
    (0..depth).fold(json!(0), |v, _| json!([v]))
}

/// Asserts a problem+json answer whose `errors[]` names `field` and whose text says `says`.
fn assert_problem(answer: &(u16, String, Value), status: u16, field: &str, says: &str) {
    let (got, ctype, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert!(
        ctype.starts_with("application/problem+json"),
        "content type `{ctype}`: {body}"
    );
    assert_eq!(body["status"], status, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&field),
        "errors[] names {fields:?}, not `{field}`: {body}"
    );
    assert!(
        body.to_string().contains(says),
        "the problem says `{says}`: {body}"
    );
}

async fn post_json(h: &Host, path: &str, body: &Value) -> (u16, String, Value) {
    h.api
        .send(
            "POST",
            path,
            Some("application/json"),
            serde_json::to_vec(body).unwrap(),
        )
        .await
}

// ---- case 1: a workflow the engine cannot hold ----

/// 150,000 steps in one dependency chain (about 7 MB, under the body limit) overflowed the
/// stack of the cycle check and aborted `serve`. Now the step count is refused first, and the
/// check itself walks any graph without recursion (see the unit tests of `definition`).
async fn a_workflow_of_150000_chained_steps_is_refused_and_the_host_lives(b: Backend) {
    let h = host(b, |_| {}).await;
    let steps: serde_json::Map<String, Value> = (0..150_000)
        .map(|i| {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![format!("s{}", i - 1)]
            };
            (format!("s{i}"), json!({"topic": "t", "depends_on": deps}))
        })
        .collect();
    let r = post_json(
        &h,
        "/api/v1/workflows",
        &json!({"name": "chain", "steps": steps}),
    )
    .await;
    assert_problem(&r, 422, "steps", &limits::MAX_STEPS.to_string());
    let (status, _) = h.api.get("/health").await;
    assert_eq!(status, 200);
}

/// Steps, dependencies, ids, durations and counts past their ranges are refused on save,
/// each naming its field: a step id that cannot be part of a job id, `timeout_sec` that
/// overflowed `t * 1000`, retry and fan-out numbers the engine multiplies or loops over.
async fn workflow_fields_past_their_limits_are_refused_naming_the_field(b: Backend) {
    let h = host(b, |_| {}).await;
    let long_id = "s".repeat(limits::MAX_STEP_ID_LEN + 1);
    let many_deps: Vec<String> = (0..=limits::MAX_DEPENDENCIES).map(|_| "a".into()).collect();
    let deep_path = vec!["p"; limits::MAX_OUTPUT_PATH_SEGMENTS + 1].join(".");
    let cases: Vec<(Value, String)> = vec![
        (
            json!({&long_id: {"topic": "t"}}),
            format!("steps.{long_id}"),
        ),
        (json!({"a.b": {"topic": "t"}}), "steps.a.b".into()),
        (
            json!({"a": {"topic": "t", "timeout_sec": u64::MAX}}),
            "steps.a.timeout_sec".into(),
        ),
        (
            json!({"a": {"topic": "t", "timeout_sec": 0}}),
            "steps.a.timeout_sec".into(),
        ),
        (
            json!({"a": {"topic": "t"}, "b": {"topic": "t", "depends_on": many_deps}}),
            "steps.b.depends_on".into(),
        ),
        (
            json!({"a": {"topic": "t", "retry": {"max_retries": 4_000_000_000u32}}}),
            "steps.a.retry.max_retries".into(),
        ),
        (
            json!({"a": {"topic": "t", "retry": {"initial_backoff_sec": 1e300}}}),
            "steps.a.retry.initial_backoff_sec".into(),
        ),
        (
            json!({"a": {"topic": "t", "retry": {"multiplier": 1e300}}}),
            "steps.a.retry.multiplier".into(),
        ),
        (
            json!({"a": {"topic": "t", "for_each": "[1]", "max_parallel": u32::MAX}}),
            "steps.a.max_parallel".into(),
        ),
        (
            json!({"a": {"topic": "t", "output_path": deep_path}}),
            "steps.a.output_path".into(),
        ),
        (
            json!({"a": {"topic": "t", "condition": format!("true{}", " && true".repeat(1000))}}),
            "steps.a.condition".into(),
        ),
        (
            json!({"a": {"topic": "t", "route_labels": (0..=limits::MAX_LABELS)
                .map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}}),
            "steps.a.route_labels".into(),
        ),
    ];
    for (steps, field) in cases {
        let r = post_json(
            &h,
            "/api/v1/workflows",
            &json!({"name": "w", "steps": steps}),
        )
        .await;
        assert_problem(&r, 422, &field, "");
    }
    let r = post_json(
        &h,
        "/api/v1/workflows",
        &json!({"name": "w", "timeout_sec": u64::MAX, "steps": {"a": {"topic": "t"}}}),
    )
    .await;
    assert_problem(&r, 422, "timeout_sec", &limits::MAX_TIMEOUT_SEC.to_string());
    let r = post_json(
        &h,
        "/api/v1/workflows",
        &json!({"name": "n".repeat(limits::MAX_NAME_BYTES + 1), "steps": {"a": {"topic": "t"}}}),
    )
    .await;
    assert_problem(&r, 422, "name", "");
    let (_, list) = h.api.get("/api/v1/workflows").await;
    assert_eq!(list["items"], json!([]), "nothing was stored: {list}");
}

/// A step id at its longest, fanned out, makes job ids and env a scheduler accepts: the run
/// succeeds rather than waiting forever on a job that was refused.
async fn the_longest_step_id_makes_valid_step_jobs(b: Backend) {
    let h = host(b, |_| {}).await;
    let topic = unique("long.");
    h.echo_worker(&topic).await;
    let step = "s".repeat(limits::MAX_STEP_ID_LEN);
    let run = h
        .run_until(
            json!({"name": "long", "steps": {&step: {"topic": topic, "for_each": "${input.xs}",
                "input": {"x": "${item}"}}}}),
            json!({"xs": [1, 2, 3]}),
            |r| r["status"] != "running" && r["status"] != "pending",
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

// ---- for_each and refused step jobs ----

/// A `for_each` that yields more items than the limit fails its step naming the limit, before
/// a single child is made.
async fn a_for_each_past_its_item_limit_fails_the_step(b: Backend) {
    let h = host(b, |_| {}).await;
    let items = vec![0; limits::MAX_FOR_EACH_ITEMS + 1];
    let run = h
        .run_until(
            json!({"name": "fan", "steps": {"a": {"topic": unique("fan."), "for_each": "${input.xs}"}}}),
            json!({"xs": items}),
            |r| r["status"] == "failed",
        )
        .await;
    let error = run["steps"]["a"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&limits::MAX_FOR_EACH_ITEMS.to_string()),
        "the step names the limit: {run}"
    );
    assert!(
        run["steps"]["a"]["children"].is_null(),
        "no child was made: {run}"
    );
}

/// A `for_each` item too long for the job env (`foreach_item`) makes a job the scheduler
/// refuses: the step fails with the scheduler's reason instead of staying `running` forever.
async fn a_step_job_the_scheduler_refuses_fails_the_step_with_the_reason(b: Backend) {
    let h = host(b, |_| {}).await;
    let long = "x".repeat(limits::MAX_ENV_VALUE_BYTES + 1);
    let run = h
        .run_until(
            json!({"name": "refused", "steps": {"a": {"topic": unique("ref."), "for_each": "${input.xs}"}}}),
            json!({"xs": [long]}),
            |r| r["status"] == "failed",
        )
        .await;
    let error = run["steps"]["a"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("env.foreach_item"),
        "the reason names the field: {run}"
    );
}

// ---- case 7: depth ----

/// A payload nested 126 deep was accepted, and its dead letter (which wraps it in more levels)
/// could no longer be read back. Now one depth limit holds for every body; a body at the limit
/// dead-letters and reads back, one past it is refused naming the limit.
async fn json_past_the_depth_limit_is_refused_and_at_the_limit_reads_back(b: Backend) {
    let h = host(b, |_| {}).await;
    let topic = unique("deep.");
    let limit = limits::MAX_JSON_DEPTH;
    for depth in [limit, 126] {
        let r = post_json(
            &h,
            "/api/v1/jobs",
            &json!({"topic": topic, "payload": nest(depth)}),
        )
        .await;
        assert_problem(&r, 422, "body", &limit.to_string());
    }
    let r = post_json(
        &h,
        "/api/v1/jobs/batch",
        &json!({"jobs": [{"topic": topic, "payload": nest(limit)}]}),
    )
    .await;
    assert_problem(&r, 422, "body", &limit.to_string());

    // At the limit (the body's object is one level): stored, dead-lettered, read back.
    let payload = nest(limit - 1);
    let id = h
        .api
        .submit(json!({"topic": topic, "payload": payload, "deadline_ms": 1}))
        .await;
    h.api
        .wait_job(&id, WAIT, |j| {
            j["state"] == "FAILED" || j["state"] == "TIMEOUT"
        })
        .await;
    let until = tokio::time::Instant::now() + WAIT;
    let entry = loop {
        let (status, e) = h.api.get(&format!("/api/v1/dlq/{id}")).await;
        if status == 200 {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no dead letter: {status} {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entry["request"]["payload"], payload);
    let (status, page) = h.api.get(&format!("/api/v1/dlq?topic={topic}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["request"]["payload"], payload);
    let (status, page) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(status, 200, "{page}");

    // Workflow definitions and run inputs are bodies too, in JSON or YAML.
    let wf = json!({"name": "deep", "steps": {"a": {"topic": topic, "input": nest(limit)}}});
    let r = post_json(&h, "/api/v1/workflows", &wf).await;
    assert_problem(&r, 422, "body", &limit.to_string());
    let yaml = format!(
        "name: deep\nsteps:\n  a:\n    topic: t\n    input: {}{}\n",
        "[".repeat(limit),
        "]".repeat(limit)
    );
    let r = h.post_yaml(yaml).await;
    assert_problem(&r, 422, "body", &limit.to_string());
}

/// A few kilobytes of YAML aliases expand to far more than the body limit: refused while it is
/// read, naming the limit, instead of building the whole expansion in memory.
async fn yaml_aliases_cannot_expand_past_the_body_limit(b: Backend) {
    let h = host(b, |o| o.max_body_bytes = 1 << 20).await;
    let mut yaml = format!(
        "name: bomb\nsteps:\n  a:\n    topic: t\n    input:\n      blob: &b \"{}\"\n      copies: [",
        "x".repeat(64 * 1024)
    );
    yaml.push_str(&vec!["*b"; 1000].join(", "));
    yaml.push_str("]\n");
    assert!(yaml.len() < 1 << 20);
    let r = h.post_yaml(yaml).await;
    assert_problem(&r, 413, "body", "alias");
    let (_, list) = h.api.get("/api/v1/workflows").await;
    assert_eq!(list["items"], json!([]), "nothing was stored: {list}");
}

// ---- case 8: every rejection is problem+json ----

/// `GET /api/v1/jobs/%FF` answered plain text; so did a wrong method, a body that is not JSON
/// by its content type, and a missing body. Every rejection is problem+json now.
async fn every_rejection_is_problem_json(b: Backend) {
    let h = host(b, |o| o.max_body_bytes = 4096).await;
    let no_body = Vec::new;
    for (method, path, ctype, body, status) in [
        ("GET", "/api/v1/jobs/%FF", None, no_body(), 400),
        ("GET", "/api/v1/workflows/%FF%FE", None, no_body(), 400),
        ("POST", "/api/v1/jobs/%C3%28/cancel", None, no_body(), 400),
        ("DELETE", "/api/v1/jobs", None, no_body(), 405),
        ("PUT", "/health", None, no_body(), 405),
        (
            "POST",
            "/api/v1/jobs",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
        ),
        ("POST", "/api/v1/jobs", None, no_body(), 415),
        (
            "POST",
            "/api/v1/jobs",
            Some("application/json"),
            no_body(),
            400,
        ),
        ("GET", "/api/v1/jobs?limit=many", None, no_body(), 400),
        (
            "POST",
            "/api/v1/jobs",
            Some("application/json"),
            vec![b' '; 5000],
            413,
        ),
        (
            "POST",
            "/api/v1/workflows",
            Some("application/json"),
            vec![b' '; 5000],
            413,
        ),
    ] {
        let (got, ctype, body) = h.api.send(method, path, ctype, body).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(
            ctype.starts_with("application/problem+json"),
            "{method} {path}: `{ctype}` {body}"
        );
        assert_eq!(body["status"], status, "{method} {path}: {body}");
        if status != 405 {
            assert!(
                body["errors"][0]["field"].is_string(),
                "{method} {path} names a field: {body}"
            );
        }
    }
}

// ---- env and the bus's max_payload ----

/// 100 variables of 15 KiB each pass every per-variable check but make a 1.5 MB env that no
/// worker message can carry: refused, naming the env limit.
async fn an_env_past_its_total_size_is_refused(b: Backend) {
    let h = host(b, |_| {}).await;
    let env: BTreeMap<String, String> = (0..100)
        .map(|i| (format!("V{i}"), "v".repeat(15 * 1024)))
        .collect();
    let r = post_json(
        &h,
        "/api/v1/jobs",
        &json!({"topic": unique("env."), "env": env}),
    )
    .await;
    assert_problem(&r, 422, "env", &limits::MAX_ENV_BYTES.to_string());
}

/// A payload just under its own limit plus an env makes a message over the bus's
/// `max_payload` (NATS's, read from the server; the embedded bus's, configured): refused at
/// submit naming the limit, where before it was accepted and stayed DISPATCHED forever.
async fn a_job_too_large_for_the_bus_is_refused_at_submit(b: Backend) {
    let h = host(b, |_| {}).await;
    let topic = unique("big.");
    let payload = "p".repeat(limits::MAX_PAYLOAD_BYTES - 100);
    let env: BTreeMap<String, String> = (0..3)
        .map(|i| (format!("V{i}"), "v".repeat(limits::MAX_ENV_VALUE_BYTES)))
        .collect();
    let body = json!({"topic": topic, "payload": payload, "env": env});
    let r = post_json(&h, "/api/v1/jobs", &body).await;
    assert_problem(&r, 422, "payload", "max_payload");
    let (status, v) = h
        .api
        .post("/api/v1/jobs/batch", json!({"jobs": [body]}))
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("max_payload"), "{v}");
    let (_, page) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(page["items"], json!([]), "nothing was stored: {page}");
}

/// A job that fits at submit but not once its effective config is added (the scheduler puts
/// the whole of it in the job's env) fails with the reason instead of staying DISPATCHED.
async fn a_job_its_config_pushes_past_the_bus_limit_fails(b: Backend) {
    let h = host(b, |_| {}).await;
    let topic = unique("cfg.");
    let tenant = unique("tenant-");
    h.echo_worker(&topic).await;
    let (status, v) = h
        .api
        .post(
            "/api/v1/config",
            json!({"scope": "org", "id": tenant, "data": {"notes": "n".repeat(60 * 1024)}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = h
        .api
        // Within 60 KiB of the bus limit: the org's config (one document, at most 64 KiB) tips it.
        .submit(json!({"topic": topic, "tenant_id": tenant, "payload": "p".repeat(1_000_000)}))
        .await;
    let job = h
        .api
        .wait_job(&id, WAIT, |j| {
            j["state"]
                .as_str()
                .is_some_and(|s| s != "PENDING" && s != "DISPATCHED")
        })
        .await;
    assert_eq!(job["state"], "FAILED", "{}", job["error"]);
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_payload")),
        "the error names the limit: {}",
        job["error"]
    );
}

/// Jobs for one worker that leave together go as one batch message: a batch of large jobs is
/// split so that each message fits the bus, instead of one message that the bus refuses.
async fn batched_dispatches_stay_within_the_bus_limit(b: Backend) {
    let h = host(b, |_| {}).await;
    let topic = unique("batch.");
    h.echo_worker(&topic).await;
    let jobs: Vec<Value> = (0..8)
        .map(|i| json!({"topic": topic, "payload": format!("{i}{}", "b".repeat(300 * 1024))}))
        .collect();
    let (status, v) = h
        .api
        .post("/api/v1/jobs/batch", json!({"jobs": jobs}))
        .await;
    assert_eq!(status, 201, "{v}");
    for item in v["items"].as_array().expect("items") {
        let id = item["job_id"].as_str().expect("stored");
        h.api.wait_state(id, "SUCCEEDED", WAIT).await;
    }
}

/// A worker's result nested 100 deep (under serde_json's 128, so it parses) fitted in its job
/// record, but a run wrapping it as a step's output could no longer be read back. Results are
/// held to the same depth limit as bodies: the job fails, saying why, and its run reads back.
async fn a_result_past_the_depth_limit_fails_its_job(b: Backend) {
    let h = host(b, |_| {}).await;
    let topic = unique("deepres.");
    let cmd = "printf '%0100d' 0 | tr 0 '['; printf '%0100d' 0 | tr 0 ']'";
    h.topic_worker(&topic, Mode::Exec(cmd.into())).await;
    let run = h
        .run_until(
            json!({"name": "deep", "steps": {"a": {"topic": topic, "for_each": "[1]"}}}),
            json!({}),
            |r| r["status"] == "failed",
        )
        .await;
    let error = run["steps"]["a"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&limits::MAX_JSON_DEPTH.to_string()), "{run}");
}

// ---- the HTTP server ----

/// A client that sends half a request header and then nothing held its connection open for as
/// long as it liked (slowloris); now it is closed after the header-read timeout, while other
/// clients are served.
async fn a_connection_that_sends_half_a_header_is_closed(b: Backend) {
    let h = host(b, |o| o.header_read_timeout = Duration::from_millis(300)).await;
    let mut slow = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (status, _) = h.api.get("/health").await;
    assert_eq!(status, 200, "others are served meanwhile");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the half-sent request's connection is still open"
    );
}

macro_rules! on {
    ($backend:ident: $($name:ident),* $(,)?) => {
        $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() { super::$name(crate::common::Backend::$backend).await })*
    };
}

mod embedded {
    on!(Embedded:
        a_workflow_of_150000_chained_steps_is_refused_and_the_host_lives,
        workflow_fields_past_their_limits_are_refused_naming_the_field,
        the_longest_step_id_makes_valid_step_jobs,
        a_for_each_past_its_item_limit_fails_the_step,
        a_step_job_the_scheduler_refuses_fails_the_step_with_the_reason,
        json_past_the_depth_limit_is_refused_and_at_the_limit_reads_back,
        yaml_aliases_cannot_expand_past_the_body_limit,
        every_rejection_is_problem_json,
        an_env_past_its_total_size_is_refused,
        a_job_too_large_for_the_bus_is_refused_at_submit,
        a_job_its_config_pushes_past_the_bus_limit_fails,
        batched_dispatches_stay_within_the_bus_limit,
        a_result_past_the_depth_limit_fails_its_job,
        a_connection_that_sends_half_a_header_is_closed,
    );
}

mod real {
    on!(Real:
        the_longest_step_id_makes_valid_step_jobs,
        a_step_job_the_scheduler_refuses_fails_the_step_with_the_reason,
        json_past_the_depth_limit_is_refused_and_at_the_limit_reads_back,
        a_job_too_large_for_the_bus_is_refused_at_submit,
        a_job_its_config_pushes_past_the_bus_limit_fails,
        batched_dispatches_stay_within_the_bus_limit,
        a_result_past_the_depth_limit_fails_its_job,
    );
}
