//! End-to-end tests of the HTTP API (SPEC §§2–8, §11): a host started in-process, in-process
//! workers on its bus, and every behaviour proved on both backends (the embedded store and bus,
//! and the real Redis and NATS).
//!
//! Each test starts its own host with fresh key and subject prefixes, its own topics and unique
//! worker ids, so the tests run in parallel against one Redis and one NATS. Nothing asserts a
//! duration: state changes are awaited with generous timeouts.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{Api, Backend, Host, fast_reconciler, options, unique};
use coretex::protocol::{CancelMsg, HeartbeatMsg, VERSION};
use coretex::worker::Mode;
use futures::StreamExt;
use serde_json::{Value, json};

/// How long a state change may take before a test fails.
const WAIT: Duration = Duration::from_secs(10);

/// Generates `<name>_embedded` and `<name>_real` tests from `async fn <name>(Backend)`.
macro_rules! on_both_backends {
    ($($name:ident => $embedded:ident, $real:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $embedded() {
                $name(Backend::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $real() {
                $name(Backend::Real).await;
            }
        )*
    };
}

on_both_backends! {
    echo_job_succeeds_with_its_payload_and_full_history
        => echo_job_succeeds_with_its_payload_and_full_history_embedded,
           echo_job_succeeds_with_its_payload_and_full_history_real;
    dispatched_job_env_carries_the_effective_config
        => dispatched_job_env_carries_the_effective_config_embedded,
           dispatched_job_env_carries_the_effective_config_real;
    invalid_submissions_name_the_field_and_store_nothing
        => invalid_submissions_name_the_field_and_store_nothing_embedded,
           invalid_submissions_name_the_field_and_store_nothing_real;
    idempotency_key_answers_the_first_job
        => idempotency_key_answers_the_first_job_embedded,
           idempotency_key_answers_the_first_job_real;
    batch_stores_good_items_and_reports_bad_ones_in_place
        => batch_stores_good_items_and_reports_bad_ones_in_place_embedded,
           batch_stores_good_items_and_reports_bad_ones_in_place_real;
    failed_job_is_dead_lettered_whole_and_can_be_retried
        => failed_job_is_dead_lettered_whole_and_can_be_retried_embedded,
           failed_job_is_dead_lettered_whole_and_can_be_retried_real;
    failing_job_is_retried_by_the_default_policy_then_dead_lettered
        => failing_job_is_retried_by_the_default_policy_then_dead_lettered_embedded,
           failing_job_is_retried_by_the_default_policy_then_dead_lettered_real;
    cancel_stops_a_running_command_and_leaves_terminal_jobs_alone
        => cancel_stops_a_running_command_and_leaves_terminal_jobs_alone_embedded,
           cancel_stops_a_running_command_and_leaves_terminal_jobs_alone_real;
    safety_policy_denies_holds_for_approval_and_releases
        => safety_policy_denies_holds_for_approval_and_releases_embedded,
           safety_policy_denies_holds_for_approval_and_releases_real;
    job_without_eligible_worker_waits_then_runs_where_placement_allows
        => job_without_eligible_worker_waits_then_runs_where_placement_allows_embedded,
           job_without_eligible_worker_waits_then_runs_where_placement_allows_real;
    a_job_waiting_its_turn_gets_its_reason_only_after_a_while
        => a_job_waiting_its_turn_gets_its_reason_only_after_a_while_embedded,
           a_job_waiting_its_turn_gets_its_reason_only_after_a_while_real;
    job_past_its_deadline_without_worker_fails_into_the_dlq
        => job_past_its_deadline_without_worker_fails_into_the_dlq_embedded,
           job_past_its_deadline_without_worker_fails_into_the_dlq_real;
    reconciler_times_out_a_job_its_worker_never_started
        => reconciler_times_out_a_job_its_worker_never_started_embedded,
           reconciler_times_out_a_job_its_worker_never_started_real;
    config_service_revisions_scopes_and_effective_merge
        => config_service_revisions_scopes_and_effective_merge_embedded,
           config_service_revisions_scopes_and_effective_merge_real;
    config_scopes_are_listed_and_drafts_previewed_within_the_tenant
        => config_scopes_are_listed_and_drafts_previewed_within_the_tenant_embedded,
           config_scopes_are_listed_and_drafts_previewed_within_the_tenant_real;
    job_lists_filter_and_page_without_repeats
        => job_lists_filter_and_page_without_repeats_embedded,
           job_lists_filter_and_page_without_repeats_real;
    workers_status_health_and_metrics_answer
        => workers_status_health_and_metrics_answer_embedded,
           workers_status_health_and_metrics_answer_real;
    oversized_bodies_are_refused_with_a_problem
        => oversized_bodies_are_refused_with_a_problem_embedded,
           oversized_bodies_are_refused_with_a_problem_real;
    tenant_keys_see_and_touch_only_their_tenant
        => tenant_keys_see_and_touch_only_their_tenant_embedded,
           tenant_keys_see_and_touch_only_their_tenant_real;
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// One HTTP answer, with its content type.
struct Resp {
    status: u16,
    content_type: String,
    body: Value,
}

/// Sends a request with optional raw body and headers.
async fn send(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = api.http.request(method, format!("{}{path}", api.base));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.unwrap_or_default();
    Resp {
        status,
        content_type,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn post_with(api: &Api, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    send(
        api,
        reqwest::Method::POST,
        path,
        Some(serde_json::to_vec(body).unwrap()),
        headers,
    )
    .await
}

async fn get_full(api: &Api, path: &str) -> Resp {
    send(api, reqwest::Method::GET, path, None, &[]).await
}

/// Asserts a problem+json answer with `status` whose `errors[]` names `field`.
fn assert_problem(r: &Resp, status: u16, field: &str) {
    assert_eq!(r.status, status, "expected {status}, got: {}", r.body);
    assert!(
        r.content_type.starts_with("application/problem+json"),
        "content type `{}` for {}",
        r.content_type,
        r.body
    );
    assert_eq!(r.body["status"], status, "problem status: {}", r.body);
    for key in ["type", "title", "detail"] {
        assert!(
            r.body.get(key).is_some(),
            "problem without `{key}`: {}",
            r.body
        );
    }
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&field),
        "errors[] should name `{field}`, names {fields:?}: {}",
        r.body
    );
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    items(v)
        .iter()
        .filter_map(|i| i[key].as_str().map(String::from))
        .collect()
}

fn states(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .expect("a job has a history")
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect()
}

fn notes(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .expect("a job has a history")
        .iter()
        .filter_map(|e| e["note"].as_str().map(String::from))
        .collect()
}

/// Polls until `cond()` holds, or panics after [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn set_config(api: &Api, body: Value) -> Value {
    let (status, v) = api.post("/api/v1/config", body.clone()).await;
    assert_eq!(status, 200, "config {body} answered {status}: {v}");
    v
}

// ---------------------------------------------------------------------------------------------
// 1. The happy path
// ---------------------------------------------------------------------------------------------

async fn echo_job_succeeds_with_its_payload_and_full_history(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("echo.");
    let worker = unique("w-echo-");
    h.ready_worker(&worker, "p", &[&topic], &[], Mode::Echo)
        .await;

    let payload = json!({"n": 42, "list": [1, "two", null], "nested": {"ok": true}});
    let (status, accepted) = h
        .api
        .post("/api/v1/jobs", json!({"topic": topic, "payload": payload}))
        .await;
    assert_eq!(status, 201, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_string();
    assert!(accepted["trace_id"].as_str().is_some_and(|t| !t.is_empty()));

    let job = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(job["result"], payload);
    assert_eq!(
        states(&job),
        ["PENDING", "DISPATCHED", "RUNNING", "SUCCEEDED"],
        "{job}"
    );
    assert_eq!(job["worker_id"], worker.as_str());
    // The dispatch, written together with the result, kept its own time and fields.
    assert_eq!(job["safety_decision"], "ALLOW");
    assert!(job["effective_config"].is_object(), "{job}");
    let times: Vec<i64> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| coretex::time::parse_rfc3339(e["at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{job}");
    assert_eq!(job["topic"], topic.as_str());
    assert_eq!(job["trace_id"], accepted["trace_id"]);
    assert!(job.get("error").is_none_or(Value::is_null), "{job}");

    let missing = get_full(&h.api, "/api/v1/jobs/no-such-job").await;
    assert_eq!(missing.status, 404);
    assert!(missing.content_type.starts_with("application/problem+json"));
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Effective config in the job env
// ---------------------------------------------------------------------------------------------

async fn dispatched_job_env_carries_the_effective_config(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("cfg.");
    let tenant = unique("acme-");
    set_config(
        &h.api,
        json!({"scope": "system", "data": {"region": "eu", "shared": "system", "limits": {"cpu": 1, "mem": 2}}}),
    )
    .await;
    set_config(
        &h.api,
        json!({"scope": "org", "id": tenant, "data": {"shared": "org", "limits": {"cpu": 8}, "org_only": [1, 2]}}),
    )
    .await;
    let expected =
        json!({"region": "eu", "shared": "org", "limits": {"cpu": 8}, "org_only": [1, 2]});

    h.ready_worker(
        &unique("w-exec-"),
        "p",
        &[&topic],
        &[],
        Mode::Exec(r#"printf '%s' "$CORETEX_EFFECTIVE_CONFIG""#.into()),
    )
    .await;
    let id = h
        .api
        .submit(json!({"topic": topic, "tenant_id": tenant, "payload": {}}))
        .await;
    let job = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(job["result"], expected, "{job}");
    assert_eq!(job["effective_config"], expected, "{job}");

    // Another tenant gets only the system scope.
    let other = h.api.submit(json!({"topic": topic, "payload": {}})).await;
    let job = h.api.wait_state(&other, "SUCCEEDED", WAIT).await;
    assert_eq!(
        job["result"],
        json!({"region": "eu", "shared": "system", "limits": {"cpu": 1, "mem": 2}})
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Validation
// ---------------------------------------------------------------------------------------------

async fn invalid_submissions_name_the_field_and_store_nothing(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("val.");
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"topic": "bad topic!"}), 422, "topic"),
        (json!({"topic": ""}), 422, "topic"),
        (json!({"payload": {}}), 400, "topic"),
        (json!({"topic": topic, "bogus": 1}), 400, "bogus"),
        (
            json!({"topic": topic, "deadline_ms": 0}),
            422,
            "deadline_ms",
        ),
        (
            json!({"topic": topic, "deadline_ms": "soon"}),
            400,
            "deadline_ms",
        ),
        (
            json!({"topic": topic, "deadline_ms": -5}),
            400,
            "deadline_ms",
        ),
        (
            json!({"topic": topic, "env": {"CORETEX_EFFECTIVE_CONFIG": "{}"}}),
            422,
            "env.CORETEX_EFFECTIVE_CONFIG",
        ),
        (
            json!({"topic": topic, "env": {"1BAD": "x"}}),
            422,
            "env.1BAD",
        ),
        (
            json!({"topic": topic, "priority": "urgent"}),
            400,
            "priority",
        ),
        (
            json!({"topic": topic, "tenant_id": "a b"}),
            422,
            "tenant_id",
        ),
        (json!({"topic": topic, "id": "x/y"}), 422, "id"),
    ];
    for (body, status, field) in &cases {
        let r = post_with(&h.api, "/api/v1/jobs", body, &[]).await;
        assert_problem(&r, *status, field);
    }
    // Several problems at once are all reported.
    let r = post_with(
        &h.api,
        "/api/v1/jobs",
        &json!({"topic": "no good", "deadline_ms": 0, "env": {"CORETEX_EFFECTIVE_CONFIG": "x"}}),
        &[],
    )
    .await;
    for field in ["topic", "deadline_ms", "env.CORETEX_EFFECTIVE_CONFIG"] {
        assert_problem(&r, 422, field);
    }
    // Not JSON at all.
    let r = send(
        &h.api,
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(b"{not json".to_vec()),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"));

    let (status, list) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(status, 200);
    assert!(items(&list).is_empty(), "nothing is stored: {list}");
    let (_, all) = h.api.get("/api/v1/jobs").await;
    assert!(items(&all).is_empty(), "nothing is stored: {all}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Idempotency
// ---------------------------------------------------------------------------------------------

async fn idempotency_key_answers_the_first_job(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("idem.");
    let key = unique("key-");
    let body = json!({"topic": topic, "payload": {"n": 1}});
    let first = post_with(&h.api, "/api/v1/jobs", &body, &[("Idempotency-Key", &key)]).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let second = post_with(&h.api, "/api/v1/jobs", &body, &[("Idempotency-Key", &key)]).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(first.body["job_id"], second.body["job_id"]);
    assert_eq!(first.body["trace_id"], second.body["trace_id"]);

    let (_, list) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(ids(&list, "id"), [first.body["job_id"].as_str().unwrap()]);

    // Another key is another job.
    let third = post_with(
        &h.api,
        "/api/v1/jobs",
        &body,
        &[("Idempotency-Key", &unique("key-"))],
    )
    .await;
    assert_eq!(third.status, 201);
    assert_ne!(third.body["job_id"], first.body["job_id"]);
    let (_, list) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(items(&list).len(), 2, "{list}");

    // An empty key is refused, naming the header.
    let bad = post_with(&h.api, "/api/v1/jobs", &body, &[("Idempotency-Key", "")]).await;
    assert_problem(&bad, 422, "Idempotency-Key");
    h.stop().await;
}

/// A submit whose store write does not answer in time (Redis stopped under it) is answered 503
/// "outcome unknown", naming each job it may have stored: the write can still land once Redis
/// answers again, so the client is told which ids to look up, and a resubmit under the same
/// Idempotency-Key finds the job if it was stored or stores one if it was not — never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_the_store_does_not_answer_names_the_jobs_it_may_have_stored() {
    let (url, port) = common::servers::private_redis();
    let mut opts = options(Backend::Real);
    opts.redis_url = Some(url);
    let h = Host::start_with(opts).await;
    let topic = unique("doubt.");
    let body = json!({"topic": topic, "payload": {"n": 1}});
    assert_eq!(h.api.post("/api/v1/jobs", body.clone()).await.0, 201);

    let pid = common::servers::RedisCluster::pid(port);
    let resume = common::servers::Resume(pid.clone());
    common::servers::RedisCluster::signal(&pid, "STOP");
    let key = unique("key-");
    let batch = json!({"jobs": [body, 7, {"topic": topic}]});
    let keyed = [("Idempotency-Key", key.as_str())];
    let (single, batched) = tokio::join!(
        post_with(&h.api, "/api/v1/jobs", &body, &keyed),
        post_with(&h.api, "/api/v1/jobs/batch", &batch, &[]),
    );
    drop(resume);

    assert_problem(&single, 503, "job_id");
    assert_eq!(single.body["title"], "outcome unknown", "{}", single.body);
    let named = |problem: &Value| -> Vec<(String, String)> {
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let m = e["message"].as_str().unwrap();
                let id = m
                    .split('`')
                    .nth(1)
                    .unwrap_or_else(|| panic!("no id in {m}"));
                (e["field"].as_str().unwrap().to_string(), id.to_string())
            })
            .collect()
    };
    let single_ids = named(&single.body);
    assert_eq!(single_ids.len(), 1, "{}", single.body);
    // The batch's items in doubt answer 503 in their places, naming their jobs; the malformed
    // one is refused as it would be anyway. (A store that fails the whole call answers one
    // problem naming `jobs[i].job_id` instead: the gateway handles both.)
    assert_eq!(batched.status, 503, "{}", batched.body);
    assert_eq!(batched.body["accepted"], 0, "{}", batched.body);
    let item_status: Vec<&Value> = (0..3)
        .map(|i| &batched.body["items"][i]["error"]["status"])
        .collect();
    assert_eq!(
        item_status,
        [&json!(503), &json!(422), &json!(503)],
        "{}",
        batched.body
    );
    let batch_ids: Vec<(String, String)> = [0, 2]
        .iter()
        .flat_map(|&i| named(&batched.body["items"][i]["error"]))
        .collect();
    let fields: Vec<&str> = batch_ids.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        ["jobs[0].job_id", "jobs[2].job_id"],
        "{}",
        batched.body
    );

    // Redis answers again: each job named is stored or not, and the keyed resubmit agrees.
    let (_, id) = &single_ids[0];
    let again = post_with(&h.api, "/api/v1/jobs", &body, &keyed).await;
    let (stored, _) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    match (again.status, stored) {
        (200, 200) => assert_eq!(again.body["job_id"], id.as_str(), "{}", again.body),
        (201, 404) => assert_ne!(again.body["job_id"], id.as_str(), "{}", again.body),
        other => panic!("resubmit {other:?}: {}", again.body),
    }
    for (_, id) in &batch_ids {
        let (status, _) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
        assert!(matches!(status, 200 | 404), "job {id}: {status}");
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Batch
// ---------------------------------------------------------------------------------------------

async fn batch_stores_good_items_and_reports_bad_ones_in_place(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("batch.");
    h.ready_worker(&unique("w-batch-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let batch = json!({"jobs": [
        {"topic": topic, "payload": {"i": 0}},
        {"topic": "bad topic", "payload": {"i": 1}},
        {"topic": topic, "payload": {"i": 2}},
        {"topic": topic, "nope": true},
        {"topic": topic, "payload": {"i": 4}, "deadline_ms": 0},
        {"topic": topic, "payload": {"i": 5}},
    ]});
    let (status, v) = h.api.post("/api/v1/jobs/batch", batch).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["accepted"], 3, "{v}");
    let answers = items(&v);
    assert_eq!(answers.len(), 6, "{v}");
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["index"], i, "{v}");
    }
    let field_of = |i: usize| -> Vec<String> {
        answers[i]["error"]["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("item {i} has no errors: {v}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(field_of(1), ["jobs[1].topic"]);
    assert!(field_of(3)[0].starts_with("jobs[3]"), "{v}");
    assert!(answers[3].to_string().contains("nope"), "{v}");
    assert_eq!(field_of(4), ["jobs[4].deadline_ms"]);

    let good: Vec<(usize, String)> = [0, 2, 5]
        .into_iter()
        .map(|i| {
            let id = answers[i]["job_id"]
                .as_str()
                .unwrap_or_else(|| panic!("item {i} has no job id: {v}"));
            (i, id.to_string())
        })
        .collect();
    for (i, id) in &good {
        let job = h.api.wait_state(id, "SUCCEEDED", WAIT).await;
        assert_eq!(job["result"], json!({"i": i}));
    }
    let (_, list) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(
        items(&list).len(),
        3,
        "only the good items are stored: {list}"
    );

    // An all-bad batch stores nothing; an empty one is refused naming `jobs`.
    let (status, v) = h
        .api
        .post("/api/v1/jobs/batch", json!({"jobs": [{"topic": "x y"}]}))
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["accepted"], 0);
    let r = post_with(&h.api, "/api/v1/jobs/batch", &json!({"jobs": []}), &[]).await;
    assert_problem(&r, 422, "jobs");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Failure and the DLQ
// ---------------------------------------------------------------------------------------------

/// Makes every failure final: for tests about where a failed job ends up, not about retrying
/// it (the default policy retries with backoff).
async fn dead_letter_at_once(api: &Api) {
    set_config(
        api,
        json!({"scope": "system", "data": {"retry": {"policy": "never"}}}),
    )
    .await;
}

async fn failed_job_is_dead_lettered_whole_and_can_be_retried(backend: Backend) {
    let h = Host::start(backend).await;
    dead_letter_at_once(&h.api).await;
    let topic = unique("fail.");
    let bulk_topic = unique("failbulk.");
    h.ready_worker(
        &unique("w-fail-"),
        "p",
        &[&topic, &bulk_topic],
        &[],
        Mode::Exec("echo boom >&2; exit 3".into()),
    )
    .await;

    let payload = json!({"order": 17, "items": ["a", "b"]});
    let labels = json!({"team": "billing", "kind": "nightly"});
    let env = json!({"MY_SETTING": "on", "OTHER": "2"});
    let id = h
        .api
        .submit(
            json!({"topic": topic, "payload": payload, "labels": labels, "env": env,
                       "priority": "batch", "tenant_id": "t-dlq"}),
        )
        .await;
    let job = h.api.wait_state(&id, "FAILED", WAIT).await;
    assert_eq!(job["error"]["code"], "exit_3", "{job}");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("boom"),
        "{job}"
    );

    // The entry is listed (filtered by topic), readable, and holds the whole request.
    let list = h
        .api
        .wait_for(
            &format!("/api/v1/dlq?topic={topic}"),
            "the dead letter is listed",
            |s, v| s == 200 && ids(v, "job_id").contains(&id),
        )
        .await;
    assert_eq!(ids(&list, "job_id"), [id.as_str()]);
    let (_, other) = h
        .api
        .get(&format!("/api/v1/dlq?topic={}", unique("none.")))
        .await;
    assert!(items(&other).is_empty(), "{other}");
    let (status, entry) = h.api.get(&format!("/api/v1/dlq/{id}")).await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["topic"], topic.as_str());
    assert_eq!(entry["tenant_id"], "t-dlq");
    assert_eq!(entry["status"], "FAILED");
    assert_eq!(entry["error"]["code"], "exit_3", "{entry}");
    assert_eq!(entry["request"]["payload"], payload);
    assert_eq!(entry["request"]["labels"], labels);
    assert_eq!(entry["request"]["env"], env);
    assert_eq!(entry["request"]["priority"], "batch");

    // Retry one: a new job `<id>~retry-1`, the entry gone.
    let (status, r) = h
        .api
        .post(&format!("/api/v1/dlq/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 201, "{r}");
    let retry_id = format!("{id}~retry-1");
    assert_eq!(r["new_job_id"], retry_id.as_str(), "{r}");
    let (status, _) = h.api.get(&format!("/api/v1/dlq/{id}")).await;
    assert_eq!(status, 404, "the retried entry is removed");
    let retried = h.api.wait_state(&retry_id, "FAILED", WAIT).await;
    assert_eq!(retried["retry_of"], id.as_str());
    assert_eq!(retried["labels"], labels);
    assert_eq!(retried["payload"], payload);
    assert_eq!(retried["env"], env);
    assert_eq!(retried["trace_id"], job["trace_id"]);
    // Retrying what is not in the DLQ is a 404.
    let (status, _) = h
        .api
        .post(&format!("/api/v1/dlq/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 404);

    // Delete.
    h.api
        .wait_for(
            &format!("/api/v1/dlq/{retry_id}"),
            "the retry is dead-lettered too",
            |s, _| s == 200,
        )
        .await;
    assert_eq!(h.api.delete(&format!("/api/v1/dlq/{retry_id}")).await, 204);
    assert_eq!(h.api.delete(&format!("/api/v1/dlq/{retry_id}")).await, 404);
    let (_, list) = h.api.get(&format!("/api/v1/dlq?topic={topic}")).await;
    assert!(items(&list).is_empty(), "{list}");

    // Bulk retry by filter replays each matching entry once — not the new dead letters of its
    // own replays, which fail again while the bulk retry is still going.
    const BULK: usize = 12;
    let mut bulk = Vec::new();
    for i in 0..BULK {
        bulk.push(
            h.api
                .submit(json!({"topic": bulk_topic, "payload": {"i": i}}))
                .await,
        );
    }
    for id in &bulk {
        h.api.wait_state(id, "FAILED", WAIT).await;
    }
    h.api
        .wait_for(
            &format!("/api/v1/dlq?topic={bulk_topic}"),
            "the bulk dead letters are listed",
            |_, v| items(v).len() == BULK,
        )
        .await;
    let (status, r) = h
        .api
        .post("/api/v1/dlq/retry", json!({"topic": bulk_topic}))
        .await;
    assert_eq!(status, 200, "{r}");
    let mut retried: Vec<String> = r["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["job_id"].as_str().unwrap().to_string())
        .collect();
    retried.sort();
    let mut expected = bulk.clone();
    expected.sort();
    assert_eq!(retried, expected, "each entry retried once: {r}");
    for id in &bulk {
        let job = h
            .api
            .wait_state(&format!("{id}~retry-1"), "FAILED", WAIT)
            .await;
        assert_eq!(job["retry_of"], id.as_str());
    }
    // The entries of the first generation are gone; the retries' own failures are new entries.
    let list = h
        .api
        .wait_for(
            &format!("/api/v1/dlq?topic={bulk_topic}"),
            "the retries are dead-lettered",
            |_, v| items(v).len() == BULK,
        )
        .await;
    let mut listed = ids(&list, "job_id");
    listed.sort();
    let mut expected: Vec<String> = bulk.iter().map(|id| format!("{id}~retry-1")).collect();
    expected.sort();
    assert_eq!(listed, expected);

    // A bad filter is refused, naming the field.
    let r = post_with(&h.api, "/api/v1/dlq/retry", &json!({"status": "NOPE"}), &[]).await;
    assert_problem(&r, 422, "status");
    h.stop().await;
}

async fn failing_job_is_retried_by_the_default_policy_then_dead_lettered(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("flaky.");
    h.ready_worker(
        &unique("w-flaky-"),
        "p",
        &[&topic],
        &[],
        Mode::Exec("exit 7".into()),
    )
    .await;

    // No `retry` config: exponential-jitter with its defaults, three runs in all, the second
    // after 0.5–1 s and the third after 1–2 s.
    let id = h
        .api
        .submit(json!({"topic": topic, "payload": {"n": 1}}))
        .await;
    let first = h.api.wait_state(&id, "FAILED", WAIT).await;
    let second_id = format!("{id}~attempt-2");
    let third_id = format!("{id}~attempt-3");
    assert!(
        notes(&first).iter().any(|n| n.contains(&second_id)),
        "the failure names the next attempt: {first}"
    );
    let second = h.api.wait_state(&second_id, "FAILED", WAIT).await;
    assert_eq!(second["attempt"], 2, "{second}");
    assert_eq!(second["retry_of"], id.as_str(), "{second}");
    assert_eq!(second["payload"], json!({"n": 1}));
    assert_eq!(second["trace_id"], first["trace_id"]);
    let third = h.api.wait_state(&third_id, "FAILED", WAIT).await;
    assert_eq!(third["attempt"], 3, "{third}");
    assert_eq!(third["retry_of"], second_id.as_str(), "{third}");

    // The last attempt, and only it, is dead-lettered; there is no fourth.
    let entry = h
        .api
        .wait_for(
            &format!("/api/v1/dlq/{third_id}"),
            "the last attempt is dead-lettered",
            |s, _| s == 200,
        )
        .await;
    assert_eq!(entry["attempts"], 3, "{entry}");
    assert_eq!(entry["error"]["code"], "exit_7", "{entry}");
    let (_, list) = h.api.get(&format!("/api/v1/dlq?topic={topic}")).await;
    assert_eq!(ids(&list, "job_id"), [third_id.as_str()]);
    let (status, _) = h.api.get(&format!("/api/v1/jobs/{id}-attempt-4")).await;
    assert_eq!(status, 404);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Cancel
// ---------------------------------------------------------------------------------------------

/// Whether a process is gone (or only a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

async fn cancel_stops_a_running_command_and_leaves_terminal_jobs_alone(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("slow.");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let marker = dir.path().join("marker");
    let worker = unique("w-slow-");
    h.ready_worker(
        &worker,
        "p",
        &[&topic],
        &[],
        Mode::Exec(format!(
            "echo $$ > {}; sleep 30; touch {}",
            pidfile.display(),
            marker.display()
        )),
    )
    .await;

    let id = h.api.submit(json!({"topic": topic})).await;
    h.api.wait_state(&id, "RUNNING", WAIT).await;
    eventually("the command wrote its pid", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_gone(pid), "the command runs");
    h.api
        .wait_for(
            "/api/v1/workers",
            "the worker reports one active job",
            |_, v| {
                items(v)
                    .iter()
                    .any(|w| w["worker_id"] == worker.as_str() && w["active_jobs"] == 1)
            },
        )
        .await;

    let (status, job) = h
        .api
        .post(
            &format!("/api/v1/jobs/{id}/cancel"),
            json!({"reason": "test says stop"}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "CANCELLED");
    assert_eq!(states(&job).last().map(String::as_str), Some("CANCELLED"));

    // The worker killed the command, and its load drops back to zero.
    eventually("the cancelled command is killed", || process_gone(pid)).await;
    h.api
        .wait_for(
            "/api/v1/workers",
            "the worker reports no active job",
            |_, v| {
                items(v)
                    .iter()
                    .any(|w| w["worker_id"] == worker.as_str() && w["active_jobs"] == 0)
            },
        )
        .await;
    assert!(!marker.exists(), "the command did not run to its end");

    // The job stays CANCELLED even after the worker's own `cancelled` result arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "CANCELLED", "{job}");

    // Cancelling a terminal job answers it unchanged.
    let (status, again) = h
        .api
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["state"], "CANCELLED");
    assert_eq!(again["history"], job["history"], "nothing changed");

    let echo_topic = unique("done.");
    h.ready_worker(&unique("w-done-"), "p", &[&echo_topic], &[], Mode::Echo)
        .await;
    let done = h
        .api
        .submit(json!({"topic": echo_topic, "payload": 1}))
        .await;
    let before = h.api.wait_state(&done, "SUCCEEDED", WAIT).await;
    let r = send(
        &h.api,
        reqwest::Method::POST,
        &format!("/api/v1/jobs/{done}/cancel"),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "SUCCEEDED");
    assert_eq!(r.body["history"], before["history"]);
    // No body is the defaults; a body of blanks is malformed, not none.
    let blank = h
        .api
        .http
        .post(format!("{}/api/v1/jobs/{done}/cancel", h.api.base))
        .header("content-type", "application/json")
        .body(" ")
        .send()
        .await
        .unwrap();
    assert_eq!(blank.status().as_u16(), 400);

    let (status, _) = h
        .api
        .post("/api/v1/jobs/no-such-job/cancel", json!({}))
        .await;
    assert_eq!(status, 404);

    // A job cancelled while it waits for a worker never runs when one appears.
    let waiting_topic = unique("waiting.");
    let waiting = h.api.submit(json!({"topic": waiting_topic})).await;
    h.api
        .wait_job(&waiting, WAIT, |j| {
            j["reason"].as_str().is_some_and(|r| r.contains("capacity"))
        })
        .await;
    let (status, job) = h
        .api
        .post(&format!("/api/v1/jobs/{waiting}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "CANCELLED");
    h.ready_worker(&unique("w-wait-"), "p", &[&waiting_topic], &[], Mode::Echo)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{waiting}")).await;
    assert_eq!(job["state"], "CANCELLED", "{job}");
    assert!(job.get("worker_id").is_none_or(Value::is_null), "{job}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Safety
// ---------------------------------------------------------------------------------------------

async fn safety_policy_denies_holds_for_approval_and_releases(backend: Backend) {
    // With a busy reconciler, which must leave a held job alone.
    let h = Host::start_fast(backend).await;
    let tenant = unique("org-");
    set_config(
        &h.api,
        json!({"scope": "org", "id": tenant, "data": {"safety": {
            "denied_topics": ["danger.*"], "require_human_topics": ["human.*"]}}}),
    )
    .await;
    h.ready_worker(
        &unique("w-safe-"),
        "p",
        &["danger.rm", "human.pay", "human.wire", "plain.job"],
        &[],
        Mode::Echo,
    )
    .await;

    let denied = h
        .api
        .submit(json!({"topic": "danger.rm", "tenant_id": tenant}))
        .await;
    let job = h.api.wait_state(&denied, "DENIED", WAIT).await;
    assert_eq!(job["safety_decision"], "DENY");
    assert!(
        job["safety_reason"].as_str().unwrap().contains("danger.*"),
        "{job}"
    );
    assert!(job.get("worker_id").is_none_or(Value::is_null), "{job}");

    // The policy is the tenant's: another tenant runs the same topic.
    let other = h.api.submit(json!({"topic": "danger.rm"})).await;
    h.api.wait_state(&other, "SUCCEEDED", WAIT).await;

    // REQUIRE_HUMAN holds the job PENDING until approved.
    let held = h
        .api
        .submit(json!({"topic": "human.pay", "tenant_id": tenant, "payload": {"amount": 5}}))
        .await;
    let job = h
        .api
        .wait_job(&held, WAIT, |j| j["safety_decision"] == "REQUIRE_HUMAN")
        .await;
    assert_eq!(job["state"], "PENDING", "{job}");
    assert!(
        job["safety_reason"].as_str().unwrap().contains("human.*"),
        "{job}"
    );
    // Longer than the reconciler's pending grace: a held job is not re-published.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{held}")).await;
    assert_eq!(job["state"], "PENDING", "still held: {job}");
    assert_eq!(job["safety_decision"], "REQUIRE_HUMAN", "still held: {job}");
    let (status, job) = h
        .api
        .post(
            &format!("/api/v1/jobs/{held}/approve"),
            json!({"approved": true, "comment": "ok by me"}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let job = h.api.wait_state(&held, "SUCCEEDED", WAIT).await;
    assert_eq!(job["result"], json!({"amount": 5}));
    assert_eq!(job["safety_decision"], "APPROVED", "{job}");

    // Approving a job that is not held is a conflict.
    let r = post_with(
        &h.api,
        &format!("/api/v1/jobs/{held}/approve"),
        &json!({"approved": true}),
        &[],
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"));

    // Rejection denies it.
    let rejected = h
        .api
        .submit(json!({"topic": "human.wire", "tenant_id": tenant}))
        .await;
    h.api
        .wait_job(&rejected, WAIT, |j| j["safety_decision"] == "REQUIRE_HUMAN")
        .await;
    let (status, job) = h
        .api
        .post(
            &format!("/api/v1/jobs/{rejected}/approve"),
            json!({"approved": false, "comment": "no way"}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let job = h.api.wait_state(&rejected, "DENIED", WAIT).await;
    assert_eq!(job["safety_decision"], "DENY");
    assert!(
        job["safety_reason"].as_str().unwrap().contains("no way"),
        "{job}"
    );

    // A malformed approval names the field.
    let r = post_with(
        &h.api,
        &format!("/api/v1/jobs/{rejected}/approve"),
        &json!({"approved": "yes"}),
        &[],
    )
    .await;
    assert_problem(&r, 400, "approved");

    // Topics the policy does not name run.
    let plain = h
        .api
        .submit(json!({"topic": "plain.job", "tenant_id": tenant}))
        .await;
    let job = h.api.wait_state(&plain, "SUCCEEDED", WAIT).await;
    assert_eq!(job["safety_decision"], "ALLOW");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Capacity, pools and placement
// ---------------------------------------------------------------------------------------------

async fn job_without_eligible_worker_waits_then_runs_where_placement_allows(backend: Backend) {
    let h = Host::start(backend).await;

    // No worker: the job waits with a reason, then runs when one appears.
    let topic = unique("later.");
    let id = h.api.submit(json!({"topic": topic, "payload": "hi"})).await;
    let job = h
        .api
        .wait_job(&id, WAIT, |j| {
            j["reason"].as_str().is_some_and(|r| r.contains("capacity"))
        })
        .await;
    assert_eq!(job["state"], "PENDING", "{job}");
    let late = unique("w-late-");
    h.worker(&late, "p", &[&topic], &[], Mode::Echo);
    let job = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert_eq!(job["worker_id"], late.as_str());
    assert_eq!(job["result"], "hi");

    // `pools` routes a topic to a pool's workers, even ones that do not list the topic.
    let pooled = unique("pooled.");
    let gpu_pool = unique("gpu-");
    set_config(
        &h.api,
        json!({"scope": "system", "data": {"pools": {pooled.clone(): gpu_pool}}}),
    )
    .await;
    let gpu = unique("w-gpu-");
    let cpu = unique("w-cpu-");
    h.ready_worker(&gpu, &gpu_pool, &["something.else"], &[], Mode::Echo)
        .await;
    h.ready_worker(&cpu, "cpu", &[&pooled], &[], Mode::Echo)
        .await;
    for i in 0..4 {
        let id = h.api.submit(json!({"topic": pooled, "payload": i})).await;
        let job = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
        assert_eq!(job["worker_id"], gpu.as_str(), "routed to the pool: {job}");
    }

    // `placement.*` labels constrain placement; other labels do not.
    let placed = unique("placed.");
    let zone_a = unique("w-zone-a-");
    let zone_b = unique("w-zone-b-");
    h.ready_worker(
        &zone_a,
        "z",
        &[&placed],
        &[("placement.zone", "a")],
        Mode::Echo,
    )
    .await;
    h.ready_worker(
        &zone_b,
        "z",
        &[&placed],
        &[("placement.zone", "b")],
        Mode::Echo,
    )
    .await;
    for _ in 0..4 {
        let id = h
            .api
            .submit(json!({"topic": placed, "labels": {"placement.zone": "b", "owner": "nobody-has-this"}}))
            .await;
        let job = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
        assert_eq!(job["worker_id"], zone_b.as_str(), "{job}");
    }
    let id = h
        .api
        .submit(json!({"topic": placed, "labels": {"owner": "nobody-has-this", "env": "prod"}}))
        .await;
    let job = h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    assert!(
        job["worker_id"] == zone_a.as_str() || job["worker_id"] == zone_b.as_str(),
        "{job}"
    );
    let nowhere = h
        .api
        .submit(json!({"topic": placed, "labels": {"placement.zone": "c"}}))
        .await;
    let job = h
        .api
        .wait_job(&nowhere, WAIT, |j| {
            j["reason"].as_str().is_some_and(|r| r.contains("capacity"))
        })
        .await;
    assert_eq!(job["state"], "PENDING", "{job}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. Deadline
// ---------------------------------------------------------------------------------------------

/// A job behind busy workers is ordinary queueing: its reason is written only once it has waited
/// a while (5 s), not at once as for a job no worker could ever take.
async fn a_job_waiting_its_turn_gets_its_reason_only_after_a_while(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("busy.");
    let worker = unique("w-busy-");
    h.ready_worker(&worker, "p", &[&topic], &[], Mode::Exec("sleep 20".into()))
        .await;
    // Eight jobs fill the worker's eight slots.
    let mut running = Vec::new();
    for i in 0..8 {
        running.push(h.api.submit(json!({"topic": topic, "payload": i})).await);
    }
    for id in &running {
        h.api
            .wait_job(id, WAIT, |j| {
                j["state"] == "RUNNING" || j["state"] == "DISPATCHED"
            })
            .await;
    }
    // Until the worker itself reports the eight, the host's count is an estimate that a
    // heartbeat sent before the last jobs arrived can lower (`scheduler::registry`).
    h.api
        .wait_for(
            "/api/v1/workers",
            "the worker reports its eight jobs",
            |_, v| {
                v["items"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|w| w["worker_id"] == worker.as_str() && w["active_jobs"] == 8)
                })
            },
        )
        .await;
    let queued = h
        .api
        .submit(json!({"topic": topic, "payload": "last"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{queued}")).await;
    assert_eq!(job["state"], "PENDING", "{job}");
    assert!(
        job["reason"].as_str().is_none_or(str::is_empty),
        "a job waiting its turn has no reason yet: {job}"
    );
    let job = h
        .api
        .wait_job(&queued, WAIT, |j| {
            j["reason"]
                .as_str()
                .is_some_and(|r| r.contains("overloaded"))
        })
        .await;
    assert_eq!(job["state"], "PENDING", "{job}");
    assert!(
        notes(&job).iter().any(|n| n.contains("overloaded")),
        "the reason is in the history too: {job}"
    );
    h.stop().await;
}

async fn job_past_its_deadline_without_worker_fails_into_the_dlq(backend: Backend) {
    let h = Host::start_fast(backend).await;
    let topic = unique("deadline.");
    let id = h
        .api
        .submit(json!({"topic": topic, "deadline_ms": 300, "payload": {"x": 1}}))
        .await;
    let job = h.api.wait_state(&id, "FAILED", WAIT).await;
    let code = job["error"]["code"].as_str().unwrap_or_default();
    assert!(code.contains("deadline"), "{job}");
    let entry = h
        .api
        .wait_for(
            &format!("/api/v1/dlq/{id}"),
            "the expired job is dead-lettered",
            |s, _| s == 200,
        )
        .await;
    assert_eq!(entry["status"], "FAILED");
    assert_eq!(entry["request"]["payload"], json!({"x": 1}));
    assert_eq!(entry["request"]["deadline_ms"], 300);
    let (_, list) = h.api.get(&format!("/api/v1/dlq?topic={topic}")).await;
    assert_eq!(ids(&list, "job_id"), [id.as_str()]);

    // A worker appearing later does not resurrect it.
    h.ready_worker(&unique("w-late-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 11. Reconciler
// ---------------------------------------------------------------------------------------------

async fn reconciler_times_out_a_job_its_worker_never_started(backend: Backend) {
    let h = Host::start_fast(backend).await;
    dead_letter_at_once(&h.api).await;
    let topic = unique("ghost.");
    let ghost = unique("w-ghost-");
    let bus = h.running.scheduler.bus.clone();

    // Watch cancels from the start.
    let mut cancels = bus.subscribe(&bus.subjects().cancel()).await.unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<CancelMsg>::new()));
    let seen_w = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = cancels.next().await {
            if let Ok(c) = serde_json::from_slice::<CancelMsg>(&m.payload) {
                seen_w.lock().push(c);
            }
        }
    });

    // A worker that heartbeats but never takes a job.
    let beats = h.workers.child_token();
    let hb = HeartbeatMsg {
        v: VERSION,
        worker_id: ghost.clone(),
        pool: "ghosts".into(),
        topics: vec![topic.clone()],
        active_jobs: 0,
        max_parallel: 4,
        cpu_load: 0.0,
        labels: BTreeMap::new(),
        capabilities: vec![],
        instance: None,
        draining: false,
        pass: None,
    };
    common::keep_beating(bus.clone(), hb, beats.clone()).await;
    h.wait_worker(&ghost).await;

    let id = h
        .api
        .submit(json!({"topic": topic, "payload": {"k": "v"}}))
        .await;
    let job = h.api.wait_state(&id, "DISPATCHED", WAIT).await;
    assert_eq!(job["worker_id"], ghost.as_str());
    let job = h.api.wait_state(&id, "TIMEOUT", WAIT).await;
    assert_eq!(job["error"]["code"], "dispatch_timeout", "{job}");
    assert!(!states(&job).contains(&"RUNNING".to_string()), "{job}");

    let entry = h
        .api
        .wait_for(
            &format!("/api/v1/dlq/{id}"),
            "the timed-out job is dead-lettered",
            |s, _| s == 200,
        )
        .await;
    assert_eq!(entry["status"], "TIMEOUT");
    assert_eq!(entry["request"]["payload"], json!({"k": "v"}));
    eventually("a cancel is sent for the timed-out job", || {
        seen.lock().iter().any(|c| c.job_id == id)
    })
    .await;
    beats.cancel();
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 12. Config service
// ---------------------------------------------------------------------------------------------

async fn config_service_revisions_scopes_and_effective_merge(backend: Backend) {
    let h = Host::start(backend).await;
    let org = unique("org-");

    let v = set_config(&h.api, json!({"scope": "org", "id": org, "data": {"a": 1}})).await;
    assert_eq!(v["revision"], 1, "{v}");
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "org", "id": org, "data": {"a": 2}}),
        &[("If-Match", "1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["revision"], 2);
    let stale = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "org", "id": org, "data": {"a": 3}}),
        &[("If-Match", "1")],
    )
    .await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert!(stale.content_type.starts_with("application/problem+json"));
    assert_eq!(stale.body["status"], 412);
    let bad = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "org", "id": org, "data": {"a": 3}}),
        &[("If-Match", "soon")],
    )
    .await;
    assert_problem(&bad, 422, "If-Match");

    let got = get_full(&h.api, &format!("/api/v1/config?scope=org&id={org}")).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.body["data"],
        json!({"a": 2}),
        "the stale write changed nothing"
    );
    assert_eq!(got.body["revision"], 2);

    // Every scope, merged shallowly in order.
    let team = unique("team-");
    let wf = unique("wf-");
    set_config(
        &h.api,
        json!({"scope": "system", "data": {"s": "system", "a": 0, "nested": {"x": 1, "y": 1}, "lvl": "system"}}),
    )
    .await;
    set_config(
        &h.api,
        json!({"scope": "org", "id": org, "data": {"a": 2, "lvl": "org"}}),
    )
    .await;
    set_config(
        &h.api,
        json!({"scope": "team", "id": team, "data": {"nested": {"x": 2}, "lvl": "team"}}),
    )
    .await;
    set_config(
        &h.api,
        json!({"scope": "workflow", "id": wf, "data": {"w": true, "lvl": "workflow"}}),
    )
    .await;
    set_config(
        &h.api,
        json!({"scope": "step", "workflow_id": wf, "step_id": "build", "data": {"lvl": "step"}}),
    )
    .await;
    // The same step id in another workflow is another document.
    let other_wf = unique("wf-");
    set_config(
        &h.api,
        json!({"scope": "step", "workflow_id": other_wf, "step_id": "build", "data": {"lvl": "elsewhere"}}),
    )
    .await;

    let (status, eff) = h
        .api
        .get(&format!(
            "/api/v1/config/effective?org_id={org}&team_id={team}&workflow_id={wf}&step_id=build"
        ))
        .await;
    assert_eq!(status, 200, "{eff}");
    assert_eq!(
        eff,
        json!({"s": "system", "a": 2, "nested": {"x": 2}, "w": true, "lvl": "step"})
    );
    let (_, eff) = h
        .api
        .get(&format!("/api/v1/config/effective?org_id={org}"))
        .await;
    assert_eq!(
        eff,
        json!({"s": "system", "a": 2, "nested": {"x": 1, "y": 1}, "lvl": "org"})
    );
    let (_, eff) = h.api.get("/api/v1/config/effective").await;
    assert_eq!(eff["lvl"], "system");

    // Step scope needs both ids.
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "step", "step_id": "build", "data": {}}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "workflow_id");
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "step", "workflow_id": wf, "data": {}}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "step_id");
    let r = get_full(&h.api, "/api/v1/config/effective?step_id=build").await;
    assert_problem(&r, 422, "workflow_id");
    let r = get_full(&h.api, "/api/v1/config?scope=step&step_id=build").await;
    assert_problem(&r, 422, "workflow_id");
    // Other bad input.
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "galaxy", "data": {}}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "scope");
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "org", "id": org, "data": [1]}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "data");
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "org", "data": {}}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "id");

    // Delete, then the scope is gone and no longer merged.
    assert_eq!(
        h.api
            .delete(&format!(
                "/api/v1/config?scope=step&workflow_id={wf}&step_id=build"
            ))
            .await,
        204
    );
    assert_eq!(
        h.api
            .delete(&format!(
                "/api/v1/config?scope=step&workflow_id={wf}&step_id=build"
            ))
            .await,
        404
    );
    let (status, _) = h
        .api
        .get(&format!(
            "/api/v1/config?scope=step&workflow_id={wf}&step_id=build"
        ))
        .await;
    assert_eq!(status, 404);
    let (_, eff) = h
        .api
        .get(&format!(
            "/api/v1/config/effective?org_id={org}&team_id={team}&workflow_id={wf}&step_id=build"
        ))
        .await;
    assert_eq!(eff["lvl"], "workflow", "{eff}");
    let (status, v) = h
        .api
        .get(&format!(
            "/api/v1/config?scope=step&workflow_id={other_wf}&step_id=build"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["data"]["lvl"], "elsewhere");
    h.stop().await;
}

/// Every `(scope, id or workflow_id~step_id)` of the scope list, paged `limit` at a time, and
/// checked to come in key order without repeats.
async fn all_scopes(api: &Api, limit: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/config/scopes?limit={limit}&cursor={c}"),
            None => format!("/api/v1/config/scopes?limit={limit}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        for i in items(&page) {
            let name = match i["scope"].as_str().unwrap() {
                "step" => format!(
                    "{}~{}",
                    i["workflow_id"].as_str().unwrap(),
                    i["step_id"].as_str().unwrap()
                ),
                "system" => String::new(),
                _ => i["id"].as_str().unwrap().to_string(),
            };
            assert!(i["revision"].as_u64().is_some_and(|r| r >= 1), "{i}");
            out.push((i["scope"].as_str().unwrap().to_string(), name));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let keys: Vec<String> = out.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "in key order, each once");
    out
}

async fn config_scopes_are_listed_and_drafts_previewed_within_the_tenant(backend: Backend) {
    let (acme, beta) = (unique("acme-"), unique("beta-"));
    let mut o = options(backend);
    o.api_key = Some("root-key".into());
    o.tenant_keys = vec![
        (acme.clone(), "acme-key".into()),
        (beta.clone(), "beta-key".into()),
    ];
    let h = Host::start_with(o).await;
    let (root, a, b) = (
        keyed(&h, "root-key"),
        keyed(&h, "acme-key"),
        keyed(&h, "beta-key"),
    );
    let (acme_wf, beta_wf) = (format!("{acme}~wf"), format!("{beta}~wf"));
    for body in [
        json!({"scope": "system", "data": {"lvl": "system",
            "tenancy": {"teams": {"payments": acme, "search": beta}}}}),
        json!({"scope": "org", "id": acme, "data": {"lvl": "org", "a": 1}}),
        json!({"scope": "org", "id": beta, "data": {"lvl": "org"}}),
        json!({"scope": "team", "id": "payments", "data": {"team": "payments"}}),
        json!({"scope": "team", "id": "search", "data": {"team": "search"}}),
        json!({"scope": "team", "id": "shared", "data": {"team": "shared"}}),
        json!({"scope": "workflow", "id": acme_wf, "data": {"lvl": "workflow"}}),
        json!({"scope": "step", "workflow_id": acme_wf, "step_id": "build", "data": {"lvl": "step"}}),
        json!({"scope": "workflow", "id": beta_wf, "data": {"lvl": "workflow"}}),
        json!({"scope": "step", "workflow_id": beta_wf, "step_id": "build", "data": {"lvl": "step"}}),
    ] {
        set_config(&root, body).await;
    }
    let named = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .collect();
        v.sort_by_key(|(s, n)| format!("{s}:{n}"));
        v
    };
    let acme_step = format!("{acme_wf}~build");
    let beta_step = format!("{beta_wf}~build");

    // The admin lists every scope, in pages that neither repeat nor skip.
    let every = named(&[
        ("system", ""),
        ("org", &acme),
        ("org", &beta),
        ("team", "payments"),
        ("team", "search"),
        ("team", "shared"),
        ("workflow", &acme_wf),
        ("step", &acme_step),
        ("workflow", &beta_wf),
        ("step", &beta_step),
    ]);
    assert_eq!(all_scopes(&root, 500).await, every);
    assert_eq!(all_scopes(&root, 3).await, every);
    let (_, page) = root.get("/api/v1/config/scopes").await;
    let step = items(&page)
        .into_iter()
        .find(|i| i["scope"] == "step" && i["workflow_id"] == acme_wf.as_str())
        .expect("acme's step is listed");
    assert_eq!(step["step_id"], "build");
    assert_eq!(step["org_id"], acme.as_str(), "{step}");
    let team = items(&page)
        .into_iter()
        .find(|i| i["id"] == "search")
        .expect("the search team");
    assert_eq!(
        team["org_id"],
        beta.as_str(),
        "bound by the tenancy policy: {team}"
    );

    // A tenant key lists its org, its workflows and their steps, and the teams its jobs may
    // use — never the system scope nor anything of another tenant's.
    let acme_sees = named(&[
        ("org", &acme),
        ("team", "payments"),
        ("team", "shared"),
        ("workflow", &acme_wf),
        ("step", &acme_step),
    ]);
    assert_eq!(all_scopes(&a, 500).await, acme_sees);
    assert_eq!(all_scopes(&a, 1).await, acme_sees, "paged one at a time");
    let beta_sees = named(&[
        ("org", &beta),
        ("team", "search"),
        ("team", "shared"),
        ("workflow", &beta_wf),
        ("step", &beta_step),
    ]);
    assert_eq!(all_scopes(&b, 2).await, beta_sees);
    // A cursor from another key's list positions, and still shows nothing else.
    let (_, first) = root.get("/api/v1/config/scopes?limit=1").await;
    let c = first["next_cursor"].as_str().expect("more to come");
    let (_, page) = b.get(&format!("/api/v1/config/scopes?cursor={c}")).await;
    assert!(!page.to_string().contains(&acme), "{page}");
    assert_problem(
        &get_full(&a, "/api/v1/config/scopes?cursor=nope!").await,
        422,
        "cursor",
    );
    assert_problem(
        &get_full(&a, "/api/v1/config/scopes?limit=0").await,
        422,
        "limit",
    );

    // A draft is merged in place of the stored document, checked as a write, stored nowhere.
    let r = post_with(
        &root,
        "/api/v1/config/preview",
        &json!({"scope": "org", "id": acme, "data": {"lvl": "draft", "b": 2}}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["effective"],
        json!({"lvl": "draft", "b": 2}),
        "{}",
        r.body
    );
    assert_eq!(r.body["changed"], json!(["a", "b", "lvl"]), "{}", r.body);
    assert_eq!(r.body["revision"], 1);
    let (_, stored) = root
        .get(&format!("/api/v1/config?scope=org&id={acme}"))
        .await;
    assert_eq!(
        stored["data"],
        json!({"lvl": "org", "a": 1}),
        "nothing stored"
    );
    assert_eq!(stored["revision"], 1);
    // For a target further down the chain: the step's `lvl` still wins.
    let r = post_with(
        &root,
        "/api/v1/config/preview",
        &json!({"scope": "org", "id": acme, "data": {"lvl": "draft"},
                "target": {"org_id": acme, "workflow_id": acme_wf, "step_id": "build"}}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["effective"]["lvl"], "step", "{}", r.body);
    assert_eq!(r.body["changed"], json!(["a"]), "{}", r.body);
    // A scope the target does not merge, a draft the schema refuses: 422 naming them.
    let r = post_with(
        &root,
        "/api/v1/config/preview",
        &json!({"scope": "org", "id": acme, "data": {}, "target": {"org_id": beta}}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "target");
    let r = post_with(
        &root,
        "/api/v1/config/preview",
        &json!({"scope": "system", "data": {"safety": {"denied_topics": "rm.*"}}}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "data.safety.denied_topics");
    let r = post_with(
        &root,
        "/api/v1/config/preview",
        &json!({"scope": "system"}),
        &[],
    )
    .await;
    assert_problem(&r, 422, "data");

    // A tenant key previews its own org's document, for its own targets only.
    let r = post_with(
        &a,
        "/api/v1/config/preview",
        &json!({"scope": "org", "id": acme, "data": {"lvl": "mine"},
                "target": {"team_id": "payments", "workflow_id": "wf"}}),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["effective"]["lvl"], "workflow", "{}", r.body);
    assert_eq!(r.body["effective"]["team"], "payments", "{}", r.body);
    for (body, status) in [
        (json!({"scope": "org", "id": beta, "data": {}}), 404),
        (json!({"scope": "system", "data": {}}), 403),
        (
            json!({"scope": "org", "id": acme, "data": {}, "target": {"workflow_id": beta_wf}}),
            404,
        ),
        (
            json!({"scope": "org", "id": acme, "data": {}, "target": {"team_id": "search"}}),
            404,
        ),
        (
            json!({"scope": "org", "id": acme, "data": {}, "target": {"org_id": beta}}),
            403,
        ),
    ] {
        let r = post_with(&a, "/api/v1/config/preview", &body, &[]).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            !r.body.to_string().contains("\"lvl\""),
            "{body} leaked: {}",
            r.body
        );
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 13. Lists, filters, paging, traces
// ---------------------------------------------------------------------------------------------

/// Pages through `path` (which has a query string) with `limit`, returning every id in order.
async fn page_all(api: &Api, path: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let url = match &cursor {
            Some(c) => format!("{path}&limit={limit}&cursor={c}"),
            None => format!("{path}&limit={limit}"),
        };
        let (status, page) = api.get(&url).await;
        assert_eq!(status, 200, "{url}: {page}");
        let got = ids(&page, "id");
        assert!(got.len() <= limit, "{page}");
        out.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("paging {path} never ended");
}

async fn job_lists_filter_and_page_without_repeats(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("list.");
    let idle = unique("idle.");
    let tenant_a = unique("ta-");
    let tenant_b = unique("tb-");
    let trace = unique("trace-");
    h.ready_worker(&unique("w-list-"), "p", &[&topic], &[], Mode::Echo)
        .await;

    let mut all = Vec::new();
    let mut of_a = Vec::new();
    for i in 0..7 {
        let tenant = if i % 2 == 0 { &tenant_a } else { &tenant_b };
        let mut body = json!({"topic": topic, "tenant_id": tenant, "payload": i});
        if i < 3 {
            body["trace_id"] = json!(trace);
        }
        let id = h.api.submit(body).await;
        if i % 2 == 0 {
            of_a.push(id.clone());
        }
        all.push(id);
    }
    for id in &all {
        h.api.wait_state(id, "SUCCEEDED", WAIT).await;
    }
    // One cancelled job on another topic, in tenant A.
    let cancelled = h
        .api
        .submit(json!({"topic": idle, "tenant_id": tenant_a}))
        .await;
    let (status, _) = h
        .api
        .post(&format!("/api/v1/jobs/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for limit in [1, 2, 3, 500] {
        let paged = page_all(&h.api, &format!("/api/v1/jobs?topic={topic}"), limit).await;
        let unique_ids: std::collections::HashSet<_> = paged.iter().collect();
        assert_eq!(
            unique_ids.len(),
            paged.len(),
            "no repeats with limit {limit}: {paged:?}"
        );
        assert_eq!(sorted(paged), sorted(all.clone()), "limit {limit}");
    }

    let succeeded = page_all(
        &h.api,
        &format!("/api/v1/jobs?state=SUCCEEDED&topic={topic}"),
        2,
    )
    .await;
    assert_eq!(sorted(succeeded), sorted(all.clone()));
    let (_, v) = h.api.get("/api/v1/jobs?state=CANCELLED").await;
    assert_eq!(ids(&v, "id"), [cancelled.as_str()]);
    let (_, v) = h.api.get("/api/v1/jobs?state=cancelled").await;
    assert_eq!(
        ids(&v, "id"),
        [cancelled.as_str()],
        "states parse in any case"
    );
    let (_, v) = h
        .api
        .get(&format!("/api/v1/jobs?state=PENDING&topic={topic}"))
        .await;
    assert!(items(&v).is_empty(), "{v}");

    let mut expect_a = of_a.clone();
    expect_a.push(cancelled.clone());
    let in_a = page_all(&h.api, &format!("/api/v1/jobs?tenant={tenant_a}"), 2).await;
    assert_eq!(sorted(in_a), sorted(expect_a));
    let in_a_done = page_all(
        &h.api,
        &format!("/api/v1/jobs?tenant={tenant_a}&state=SUCCEEDED"),
        2,
    )
    .await;
    assert_eq!(sorted(in_a_done), sorted(of_a.clone()));
    let (_, v) = h
        .api
        .get(&format!("/api/v1/jobs?tenant={}", unique("nobody-")))
        .await;
    assert!(items(&v).is_empty());

    // Bad paging parameters name themselves.
    for q in ["limit=0", "limit=501"] {
        let r = get_full(&h.api, &format!("/api/v1/jobs?{q}")).await;
        assert_problem(&r, 422, "limit");
    }
    let r = get_full(&h.api, "/api/v1/jobs?cursor=garbage!").await;
    assert_problem(&r, 422, "cursor");
    let r = get_full(&h.api, "/api/v1/jobs?limit=many").await;
    assert_problem(&r, 400, "limit");
    let r = get_full(&h.api, "/api/v1/jobs?state=SLEEPING").await;
    assert_problem(&r, 422, "state");
    let r = get_full(&h.api, "/api/v1/jobs?colour=red").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"));

    // The trace lists exactly its jobs; a trace id is a tenant's own, so the same one in two
    // tenants is two traces.
    let trace_a = format!("{tenant_a}~{trace}");
    let (status, v) = h.api.get(&format!("/api/v1/traces/{trace_a}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        sorted(ids(&v, "id")),
        sorted(vec![all[0].clone(), all[2].clone()])
    );
    for j in items(&v) {
        assert_eq!(j["trace_id"], trace_a.as_str());
    }
    let (_, v) = h
        .api
        .get(&format!("/api/v1/traces/{tenant_b}~{trace}"))
        .await;
    assert_eq!(ids(&v, "id"), [all[1].as_str()]);
    let (_, v) = h
        .api
        .get(&format!("/api/v1/traces/{}", unique("none-")))
        .await;
    assert!(items(&v).is_empty());
    let (_, v) = h
        .api
        .get(&format!("/api/v1/jobs?trace_id={trace_a}&limit=1"))
        .await;
    assert_eq!(items(&v).len(), 1);
    assert!(v["next_cursor"].is_string(), "{v}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 14. Workers, status, health, metrics
// ---------------------------------------------------------------------------------------------

async fn workers_status_health_and_metrics_answer(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("obs.");
    let w1 = unique("w-obs-1-");
    let w2 = unique("w-obs-2-");
    h.ready_worker(&w1, "obs-pool", &[&topic], &[("rack", "r1")], Mode::Echo)
        .await;
    let stop_w2 = h
        .ready_worker(&w2, "obs-pool", &[&topic, "other"], &[], Mode::Echo)
        .await;

    let (status, v) = h.api.get("/api/v1/workers").await;
    assert_eq!(status, 200);
    let listed = ids(&v, "worker_id");
    assert!(listed.contains(&w1) && listed.contains(&w2), "{v}");
    let one = items(&v)
        .into_iter()
        .find(|w| w["worker_id"] == w1.as_str())
        .unwrap();
    assert_eq!(one["pool"], "obs-pool");
    assert_eq!(one["topics"], json!([topic]));
    assert_eq!(one["labels"], json!({"rack": "r1"}));
    assert_eq!(one["capabilities"], json!(["echo", "batch"]));
    assert!(one["max_parallel"].as_u64().is_some_and(|m| m > 0));

    let (status, st) = h.api.get("/api/v1/status").await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["status"], "ok");
    let (store, bus) = match backend {
        Backend::Embedded => ("memory", "memory"),
        Backend::Real => ("redis", "nats"),
    };
    assert_eq!(st["store"]["backend"], store, "{st}");
    assert_eq!(st["store"]["ok"], true);
    assert_eq!(st["bus"]["backend"], bus, "{st}");
    assert_eq!(st["bus"]["connected"], true);
    assert_eq!(st["workers"], 2, "{st}");

    let (status, health) = h.api.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");

    let id = h.api.submit(json!({"topic": topic})).await;
    h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
    // A job no worker takes stays live.
    let waiting = h.api.submit(json!({"topic": unique("nobody.")})).await;

    // The status reads the numbers /metrics serves: the job ended, its latency, the live one.
    let (_, st) = h.api.get("/api/v1/status").await;
    let jobs = &st["jobs"];
    assert_eq!(jobs["ended"]["SUCCEEDED"], 1, "{st}");
    assert_eq!(jobs["ended"]["FAILED"], 0, "{st}");
    assert_eq!(jobs["latency"]["count"], 1, "{st}");
    let p50 = jobs["latency"]["p50_ms"].as_f64().expect("a median");
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{id}")).await;
    let took = coretex::time::parse_rfc3339(job["updated_at"].as_str().unwrap()).unwrap()
        - coretex::time::parse_rfc3339(job["created_at"].as_str().unwrap()).unwrap();
    let bucket = coretex::job_metrics::LATENCY_BUCKETS
        .iter()
        .map(|le| le * 1000.0)
        .find(|le| took as f64 <= *le)
        .unwrap_or(f64::MAX);
    assert!(
        p50 <= bucket,
        "the median {p50} ms lies in the bucket of the job's {took} ms"
    );
    assert!(
        jobs["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0),
        "a job ended in the last seconds: {st}"
    );
    let live = h
        .api
        .wait_for("/api/v1/status", "the waiting job is counted", |_, st| {
            st["jobs"]["live"]["PENDING"].as_u64().unwrap_or(0)
                + st["jobs"]["live"]["SCHEDULED"].as_u64().unwrap_or(0)
                == 1
        })
        .await;
    assert_eq!(live["jobs"]["live"]["RUNNING"], 0, "{live}");
    let (_, w) = h.api.get(&format!("/api/v1/jobs/{waiting}")).await;
    assert!(["PENDING", "SCHEDULED"].contains(&w["state"].as_str().unwrap_or("")));

    let r = h
        .api
        .http
        .get(format!("{}/metrics", h.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = r.text().await.unwrap();
    // The recorder is the process's, shared by the tests' hosts: at least this host's numbers.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert!(value("coretex_jobs_total{state=\"SUCCEEDED\"}") >= 1.0);
    assert!(value("coretex_job_latency_seconds_count") >= 1.0);
    assert!(text.contains("coretex_job_latency_seconds_bucket{le=\"0.005\"}"));
    value("coretex_jobs{state=\"PENDING\"}");

    // Answers are compressed for a client that asks; the live stream never is (its events
    // would wait in the compressor).
    for (path, compressed) in [
        ("/metrics", true),
        ("/api/v1/jobs", true),
        ("/api/v1/stream", false),
    ] {
        let r = h
            .api
            .http
            .get(format!("{}{path}", h.api.base))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let encoding = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(encoding.as_deref(), compressed.then_some("gzip"), "{path}");
    }

    // A stopped worker leaves the list once its heartbeats stop (TTL), not before the test ends
    // — so only check the unknown route answers a problem.
    stop_w2.cancel();
    let r = get_full(&h.api, "/api/v1/nothing-here").await;
    assert_eq!(r.status, 404);
    assert!(r.content_type.starts_with("application/problem+json"));
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 15. Body size
// ---------------------------------------------------------------------------------------------

async fn oversized_bodies_are_refused_with_a_problem(backend: Backend) {
    let mut o = options(backend);
    o.max_body_bytes = 4096;
    let h = Host::start_with(o).await;
    let topic = unique("big.");

    let big = json!({"topic": topic, "payload": "x".repeat(10_000)});
    let r = post_with(&h.api, "/api/v1/jobs", &big, &[]).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/problem+json"),
        "{}",
        r.content_type
    );
    assert_eq!(r.body["status"], 413);

    let r = post_with(
        &h.api,
        "/api/v1/jobs/batch",
        &json!({"jobs": (0..100).map(|i| json!({"topic": topic, "payload": i, "labels": {"pad": "y".repeat(50)}})).collect::<Vec<_>>()}),
        &[],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"));

    // Routes that read an optional body are limited the same way.
    let small = h
        .api
        .submit(json!({"topic": topic, "payload": "x".repeat(1000)}))
        .await;
    let r = post_with(
        &h.api,
        &format!("/api/v1/jobs/{small}/cancel"),
        &json!({"reason": "r".repeat(10_000)}),
        &[],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/problem+json"),
        "{}",
        r.content_type
    );
    let r = post_with(
        &h.api,
        "/api/v1/config",
        &json!({"scope": "system", "data": {"blob": "z".repeat(10_000)}}),
        &[],
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.content_type.starts_with("application/problem+json"));

    // Nothing from the refused requests is stored; the small job is.
    let (_, list) = h.api.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(ids(&list, "id"), [small.as_str()]);
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{small}")).await;
    assert_eq!(
        job["state"], "PENDING",
        "the oversized cancel changed nothing: {job}"
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The live stream across replicas
// ---------------------------------------------------------------------------------------------

/// Reads a live stream's job events into `(job id, state)` pairs as they come, once the stream
/// is open: the host subscribed it before it answered, so every event from then on is in it.
async fn watch_stream(api: &Api) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (open_tx, open_rx) = tokio::sync::oneshot::channel();
    let (http, url) = (api.http.clone(), format!("{}/api/v1/stream", api.base));
    tokio::spawn(async move {
        let resp = http.get(url).send().await.expect("stream opens");
        assert_eq!(resp.status(), 200);
        let _ = open_tx.send(());
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                    let v: Value = serde_json::from_str(data.trim()).expect("event JSON");
                    let pair = (
                        v["job_id"].as_str().unwrap().to_string(),
                        v["state"].as_str().unwrap().to_string(),
                    );
                    if tx.send(pair).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::time::timeout(WAIT, open_rx)
        .await
        .expect("the stream opens in time")
        .expect("the stream opens");
    rx
}

/// Each replica's stream reports every job once — those it finished itself (handed over in
/// process) and those another replica finished (through the bus) — whichever replica took the
/// submit and whichever applied the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replicas_stream_reports_each_job_once() {
    // Two replicas of one deployment: the same key and subject prefixes.
    let opts = options(Backend::Real);
    let a = Host::start_with(opts.clone()).await;
    let b = Host::start_with(opts).await;
    let topic = unique("live.");
    a.ready_worker(&unique("w-live-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let mut streams = [watch_stream(&a.api).await, watch_stream(&b.api).await];

    let mut ids = Vec::new();
    for i in 0..20 {
        let api = if i % 2 == 0 { &a.api } else { &b.api };
        ids.push(
            api.submit(json!({"topic": topic, "payload": {"i": i}}))
                .await,
        );
    }
    for (name, stream) in ["a", "b"].iter().zip(&mut streams) {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        let until = tokio::time::Instant::now() + WAIT;
        while ids.iter().any(|id| !seen.contains_key(id)) {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Some((id, state))) = tokio::time::timeout(left, stream.recv()).await else {
                panic!("replica {name}'s stream missed jobs; it saw {seen:?}");
            };
            seen.entry(id).or_default().push(state);
        }
        // Anything repeated would come now.
        while let Ok(Some((id, state))) =
            tokio::time::timeout(Duration::from_millis(300), stream.recv()).await
        {
            seen.entry(id).or_default().push(state);
        }
        for id in &ids {
            assert_eq!(seen[id], ["SUCCEEDED"], "replica {name}, job {id}");
        }
    }
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// API keys and rate limits
// ---------------------------------------------------------------------------------------------

/// An API client of the host that sends `key` with every request.
fn keyed(h: &Host, key: &str) -> Api {
    Api::with_key(h.running.addr, key)
}

async fn tenant_keys_see_and_touch_only_their_tenant(backend: Backend) {
    let (acme, beta) = (unique("acme-"), unique("beta-"));
    let mut o = options(backend);
    o.reconciler = fast_reconciler();
    o.api_key = Some("root-key".into());
    o.tenant_keys = vec![
        (acme.clone(), "acme-key".into()),
        (beta.clone(), "beta-key".into()),
    ];
    let h = Host::start_with(o).await;
    let (root, a, b) = (
        keyed(&h, "root-key"),
        keyed(&h, "acme-key"),
        keyed(&h, "beta-key"),
    );

    // No key, or an unknown one: 401 everywhere under /api; /health stays open.
    assert_eq!(h.api.get("/api/v1/jobs").await.0, 401);
    assert_eq!(keyed(&h, "guess").get("/api/v1/jobs").await.0, 401);
    assert_eq!(h.api.get("/health").await.0, 200);

    // A tenant key's jobs go to its tenant; naming another is refused and stores nothing.
    let topic = unique("tenancy.");
    let acme_job = a.submit(json!({"topic": topic, "payload": {}})).await;
    let (_, job) = a.get(&format!("/api/v1/jobs/{acme_job}")).await;
    assert_eq!(job["tenant_id"], acme.as_str(), "{job}");
    let (status, v) = a
        .post("/api/v1/jobs", json!({"topic": topic, "tenant_id": beta}))
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("tenant_id"), "{v}");
    let beta_job = b.submit(json!({"topic": topic, "payload": {}})).await;
    let admin_job = root
        .submit(json!({"topic": topic, "tenant_id": beta, "payload": {}}))
        .await;

    // Another tenant's job does not exist for it: read, cancel, approve all answer 404.
    assert_eq!(b.get(&format!("/api/v1/jobs/{acme_job}")).await.0, 404);
    assert_eq!(
        b.post(&format!("/api/v1/jobs/{acme_job}/cancel"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        b.post(
            &format!("/api/v1/jobs/{acme_job}/approve"),
            json!({"approved": true})
        )
        .await
        .0,
        404
    );
    let (_, job) = root.get(&format!("/api/v1/jobs/{acme_job}")).await;
    assert_eq!(
        job["state"], "PENDING",
        "the refused cancel changed nothing: {job}"
    );

    // Lists are narrowed to the key's tenant; asking for another's is refused.
    let (_, list) = b.get(&format!("/api/v1/jobs?topic={topic}")).await;
    let mut seen = ids(&list, "id");
    seen.sort();
    let mut want = vec![beta_job.clone(), admin_job.clone()];
    want.sort();
    assert_eq!(seen, want, "{list}");
    assert_eq!(a.get(&format!("/api/v1/jobs?tenant={beta}")).await.0, 403);
    let (_, list) = root.get(&format!("/api/v1/jobs?topic={topic}")).await;
    assert_eq!(ids(&list, "id").len(), 3, "{list}");
    let (_, trace) = b.get(&format!("/api/v1/traces/{acme_job}")).await;
    assert!(items(&trace).is_empty(), "{trace}");

    // A batch reports an item for another tenant in its place and keeps the rest.
    let (status, v) = a
        .post(
            "/api/v1/jobs/batch",
            json!({"jobs": [{"topic": topic}, {"topic": topic, "tenant_id": beta}]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["items"][1]["error"]["status"], 403, "{v}");

    // Dead letters: a job past its deadline lands there, seen only by its tenant (and admin).
    let late = a
        .submit(json!({"topic": unique("nobody."), "deadline_ms": 200}))
        .await;
    a.wait_for(&format!("/api/v1/dlq/{late}"), "dead-lettered", |s, _| {
        s == 200
    })
    .await;
    assert_eq!(b.get(&format!("/api/v1/dlq/{late}")).await.0, 404);
    assert_eq!(
        b.post(&format!("/api/v1/dlq/{late}/retry"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(b.delete(&format!("/api/v1/dlq/{late}")).await, 404);
    let (_, list) = b.get("/api/v1/dlq").await;
    assert!(items(&list).is_empty(), "{list}");
    let (_, list) = a.get("/api/v1/dlq").await;
    assert_eq!(ids(&list, "job_id"), [late.as_str()]);
    assert_eq!(root.get(&format!("/api/v1/dlq/{late}")).await.0, 200);

    // Config: its own org scope only; another org's is absent, the system scope is admin's.
    let (status, v) = a
        .post(
            "/api/v1/config",
            json!({"scope": "org", "id": acme, "data": {"x": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = a
        .post(
            "/api/v1/config",
            json!({"scope": "org", "id": beta, "data": {"x": 2}}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = a
        .post(
            "/api/v1/config",
            json!({"scope": "system", "data": {"x": 3}}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        b.get(&format!("/api/v1/config?scope=org&id={acme}"))
            .await
            .0,
        404
    );
    // The status tells a tenant nothing of all jobs: the metrics carry no tenant.
    let (_, st) = a.get("/api/v1/status").await;
    assert!(st.get("jobs").is_none(), "{st}");
    let (_, st) = root.get("/api/v1/status").await;
    assert!(st["jobs"]["ended"].is_object(), "{st}");
    let (_, eff) = a.get("/api/v1/config/effective").await;
    assert_eq!(
        eff["x"], 1,
        "a tenant's effective config is its own org's: {eff}"
    );
    assert_eq!(
        b.get(&format!("/api/v1/config/effective?org_id={acme}"))
            .await
            .0,
        403
    );

    // Workflows and runs belong to the org of the key that made them.
    let wf = unique("wf-");
    let (status, v) = a
        .post(
            "/api/v1/workflows",
            json!({"id": wf, "name": "t", "steps": {"s": {"topic": unique("none.")}}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["org_id"], acme.as_str(), "{v}");
    assert_eq!(b.get(&format!("/api/v1/workflows/{wf}")).await.0, 404);
    assert_eq!(
        b.post(&format!("/api/v1/workflows/{wf}/runs"), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(b.delete(&format!("/api/v1/workflows/{wf}")).await, 404);
    let (status, run) = a
        .post(&format!("/api/v1/workflows/{wf}/runs"), json!({}))
        .await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(
        b.get(&format!("/api/v1/workflow-runs/{run_id}")).await.0,
        404
    );
    assert_eq!(
        b.post(
            &format!("/api/v1/workflows/{wf}/runs/{run_id}/cancel"),
            json!({})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        a.get(&format!("/api/v1/workflow-runs/{run_id}")).await.0,
        200
    );
    let whole = format!("{acme}~{wf}");
    assert_eq!(b.get(&format!("/api/v1/workflows/{whole}")).await.0, 404);
    let (_, list) = b.get("/api/v1/workflows").await;
    assert!(!ids(&list, "id").contains(&whole), "{list}");
    let (_, list) = a.get("/api/v1/workflows").await;
    assert_eq!(ids(&list, "id"), [whole.as_str()], "{list}");

    // Admin-only: plugin uploads and the live stream.
    let r = a
        .http
        .put(format!("{}/api/v1/plugins/mine", a.base))
        .header("content-type", "application/wasm")
        .body(vec![0u8; 8])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(a.delete("/api/v1/plugins/least-loaded").await, 403);

    // The live stream: a tenant key's carries only its tenant's events, an admin's every one.
    let done = unique("done.");
    h.worker(&unique("w-tenancy-"), "p", &[&done], &[], Mode::Echo);
    root.wait_for("/api/v1/workers", "the worker registers", |_, v| {
        !items(v).is_empty()
    })
    .await;
    let (mut acme_events, mut all_events) = (watch_stream(&a).await, watch_stream(&root).await);
    let acme_done = a.submit(json!({"topic": done})).await;
    let beta_done = b.submit(json!({"topic": done})).await;
    let mut all = Vec::new();
    while all.len() < 2 {
        let Ok(Some((id, _))) = tokio::time::timeout(WAIT, all_events.recv()).await else {
            panic!("the admin's stream missed jobs; it saw {all:?}");
        };
        all.push(id);
    }
    all.sort();
    let mut want = vec![acme_done.clone(), beta_done.clone()];
    want.sort();
    assert_eq!(all, want);
    let first = tokio::time::timeout(WAIT, acme_events.recv()).await;
    assert_eq!(
        first.unwrap().unwrap(),
        (acme_done, "SUCCEEDED".to_string())
    );
    let more = tokio::time::timeout(Duration::from_millis(300), acme_events.recv()).await;
    assert!(
        more.is_err(),
        "acme's stream carried another event: {more:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_held_to_its_rate_limit() {
    let mut o = options(Backend::Embedded);
    o.api_key = Some("root-key".into());
    o.tenant_keys = vec![(unique("acme-"), "acme-key".into())];
    // One request a second: a burst of one, then 429 until a second has passed (a test
    // machine under load may be slow, but not a second slow between two local requests).
    o.rate_limit = std::num::NonZeroU32::new(1);
    let h = Host::start_with(o).await;
    let (root, a) = (keyed(&h, "root-key"), keyed(&h, "acme-key"));
    assert_eq!(a.get("/api/v1/workers").await.0, 200);
    let r = a
        .http
        .get(format!("{}/api/v1/workers", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["status"], 429, "{problem}");
    // Another key has a bucket of its own.
    assert_eq!(root.get("/api/v1/workers").await.0, 200);
    // After Retry-After, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    assert_eq!(a.get("/api/v1/workers").await.0, 200);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_only_routed_ones() {
    let mut o = options(Backend::Embedded);
    o.api_key = Some("root-key".into());
    let h = Host::start_with(o).await;
    // Served without a key.
    let r = send(
        &h.api,
        reqwest::Method::GET,
        "/api/v1/openapi.json",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");

    // Every route SPEC §11 names is described.
    let spec_routes = [
        ("get", "/health"),
        ("get", "/api/v1/status"),
        ("post", "/api/v1/jobs"),
        ("get", "/api/v1/jobs"),
        ("post", "/api/v1/jobs/batch"),
        ("get", "/api/v1/jobs/{id}"),
        ("post", "/api/v1/jobs/{id}/cancel"),
        ("post", "/api/v1/jobs/{id}/approve"),
        ("get", "/api/v1/traces/{trace_id}"),
        ("get", "/api/v1/workers"),
        ("get", "/api/v1/workflows"),
        ("post", "/api/v1/workflows"),
        ("get", "/api/v1/workflows/{id}"),
        ("put", "/api/v1/workflows/{id}"),
        ("delete", "/api/v1/workflows/{id}"),
        ("post", "/api/v1/workflows/{id}/runs"),
        ("get", "/api/v1/workflows/{id}/runs"),
        ("get", "/api/v1/workflow-runs/{run_id}"),
        ("post", "/api/v1/workflows/{id}/runs/{run_id}/cancel"),
        (
            "post",
            "/api/v1/workflows/{id}/runs/{run_id}/steps/{step_id}/approve",
        ),
        (
            "post",
            "/api/v1/workflows/{id}/runs/{run_id}/steps/{step_id}/cancel",
        ),
        ("post", "/api/v1/config"),
        ("get", "/api/v1/config"),
        ("delete", "/api/v1/config"),
        ("get", "/api/v1/config/effective"),
        ("get", "/api/v1/dlq"),
        ("delete", "/api/v1/dlq/{job_id}"),
        ("post", "/api/v1/dlq/{job_id}/retry"),
        ("post", "/api/v1/dlq/retry"),
        ("get", "/api/v1/plugins"),
        ("put", "/api/v1/plugins/{name}"),
        ("delete", "/api/v1/plugins/{name}"),
        ("get", "/api/v1/stream"),
        ("get", "/metrics"),
        ("get", "/api/v1/openapi.json"),
    ];
    for (method, path) in spec_routes {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in the OpenAPI document"
        );
    }

    // Every operation it lists is routed: the router answers something other than its own
    // "no such route" 404 or a 405 (path parameters get a made-up id; the key is the admin's).
    let admin = keyed(&h, "root-key");
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            if concrete.ends_with("/stream") {
                continue; // an endless response; routed per the 403 a tenant gets above
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = admin
                .http
                .request(m, format!("{}{concrete}", admin.base))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert!(
                status != 405 && !(status == 404 && body.contains("no such route")),
                "{method} {path} ({concrete}) is in the document but not routed: {status} {body}"
            );
        }
    }
    assert!(operations >= spec_routes.len(), "{operations}");
    // Every $ref points at something the document defines.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/").skip(1) {
        let target = &r[..r.find('"').unwrap()];
        let (kind, name) = target.split_once('/').unwrap();
        assert!(
            doc["components"][kind][name].is_object(),
            "dangling $ref #/components/{target}"
        );
    }
    h.stop().await;
}

/// A live stream never ends on its own; the host ends it when it stops, so that stopping does
/// not wait on its clients (the reconciler's lock is released only after the HTTP server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stops_promptly_with_a_live_stream_open() {
    let mut h = Host::start(Backend::Embedded).await;
    let _events = watch_stream(&h.api).await;
    h.running.stop.cancel();
    let done = tokio::time::timeout(Duration::from_secs(5), &mut h.running.handle).await;
    assert!(
        matches!(done, Ok(Ok(Ok(())))),
        "the host did not stop with a stream open: {done:?}"
    );
}
