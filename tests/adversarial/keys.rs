//! The key space (issue 13, cases 2, 3 and 6): ids a client chooses can neither reach a key the
//! host keeps for itself, nor another tenant's job, workflow or trace, nor an id the host
//! derives; and a workflow deleted and created again never rewrites what a run follows.

use std::time::Duration;

use base64::Engine;
use coretex::worker::Mode;
use serde_json::{Value, json};

use crate::common::{Api, Backend, Host, options, unique};

const WAIT: Duration = Duration::from_secs(10);

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map_or(&[], Vec::as_slice)
}

/// A host with an admin key and two tenant keys, `acme` and `beta` (fresh names per test).
struct Tenants {
    host: Host,
    root: Api,
    acme: Api,
    beta: Api,
    acme_id: String,
}

async fn tenants(backend: Backend) -> Tenants {
    let acme_id = unique("acme");
    let beta_id = unique("beta");
    let mut o = options(backend);
    o.api_key = Some("root".into());
    o.tenant_keys = vec![
        (acme_id.clone(), "ka".into()),
        (beta_id.clone(), "kb".into()),
    ];
    let host = Host::start_with(o).await;
    let addr = host.running.addr;
    Tenants {
        host,
        root: Api::with_key(addr, "root"),
        acme: Api::with_key(addr, "ka"),
        beta: Api::with_key(addr, "kb"),
        acme_id,
    }
}

/// Dead-letters a job of `api`'s tenant named `id` (its deadline passes with no worker).
async fn dead_letter(api: &Api, id: &str) -> String {
    let job = api
        .submit(json!({"id": id, "topic": unique("nobody."), "deadline_ms": 100}))
        .await;
    api.wait_for(
        &format!("/api/v1/dlq/{job}"),
        "the job is dead-lettered",
        |s, _| s == 200,
    )
    .await;
    job
}

// ---------------------------------------------------------------------------------------------
// Case 2: ids that spell the host's own keys
// ---------------------------------------------------------------------------------------------

async fn a_job_named_like_an_index_leaves_the_dead_letter_queue_readable(backend: Backend) {
    let t = tenants(backend).await;
    // `idx` once made `SET dlq:idx` overwrite the DLQ index: every list answered 503 after.
    let first = dead_letter(&t.acme, "idx").await;
    let later = dead_letter(&t.beta, &unique("later-")).await;
    for (api, mine) in [(&t.acme, &first), (&t.beta, &later)] {
        let (status, v) = api.get("/api/v1/dlq").await;
        assert_eq!(status, 200, "{v}");
        let listed: Vec<_> = items(&v).iter().map(|e| e["job_id"].clone()).collect();
        assert_eq!(listed, [json!(mine)], "{v}");
    }
    let (status, v) = t.root.get("/api/v1/dlq").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(items(&v).len(), 2, "{v}");
    t.host.stop().await;
}

async fn workflow_ids_that_spell_a_version_key_stay_apart(backend: Backend) {
    let t = tenants(backend).await;
    let steps = |topic: &str| json!({"s": {"topic": topic}});
    // `w1` at version 2, and a workflow whose id is `w1:v:2`: once the same Redis key.
    let (status, v) = t
        .acme
        .post(
            "/api/v1/workflows",
            json!({"id": "w1", "name": "one", "steps": steps("t.one")}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let w1 = v["id"].as_str().unwrap().to_string();
    let r = t
        .acme
        .http
        .put(format!("{}/api/v1/workflows/w1", t.acme.base))
        .json(&json!({"name": "one", "steps": steps("t.two")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, v) = t
        .acme
        .post(
            "/api/v1/workflows",
            json!({"id": "w1:v:2", "name": "impostor", "steps": steps("t.impostor")}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v2) = t
        .acme
        .get(&format!("/api/v1/workflows/{w1}?version=2"))
        .await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["name"], "one", "version 2 of w1 is w1's: {v2}");
    assert_eq!(v2["steps"]["s"]["topic"], "t.two");
    let (_, imp) = t.acme.get("/api/v1/workflows/w1:v:2").await;
    assert_eq!(imp["name"], "impostor", "{imp}");
    t.host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Case 3: one id, two tenants
// ---------------------------------------------------------------------------------------------

async fn the_same_job_id_in_two_tenants_is_two_jobs(backend: Backend) {
    let t = tenants(backend).await;
    let body = |n: u32| json!({"id": "order-42", "topic": unique("nobody."), "payload": {"n": n}});
    let (status, a) = t.acme.post("/api/v1/jobs", body(1)).await;
    assert_eq!(status, 201, "{a}");
    let (status, b) = t.beta.post("/api/v1/jobs", body(2)).await;
    assert_eq!(status, 201, "beta's id is its own, not acme's: {b}");
    assert_ne!(a["job_id"], b["job_id"]);
    assert_ne!(
        a["trace_id"], b["trace_id"],
        "no trace leaks across tenants"
    );
    // Each reads its own by the id it chose; neither reaches the other's by its whole id.
    let (_, mine) = t.beta.get("/api/v1/jobs/order-42").await;
    assert_eq!(mine["payload"]["n"], 2, "{mine}");
    let (_, mine) = t.acme.get("/api/v1/jobs/order-42").await;
    assert_eq!(mine["payload"]["n"], 1, "{mine}");
    let acmes = a["job_id"].as_str().unwrap();
    let missing = format!("{}~no-such-job", t.acme_id);
    for path in [
        format!("/api/v1/jobs/{acmes}"),
        format!("/api/v1/jobs/{missing}"),
    ] {
        let (status, v) = t.beta.get(&path).await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(
            v["title"], "not found",
            "another tenant's job answers as one that does not exist: {v}"
        );
    }
    assert_eq!(
        t.beta
            .post(&format!("/api/v1/jobs/{acmes}/cancel"), json!({}))
            .await
            .0,
        404
    );
    let (_, still) = t.acme.get(&format!("/api/v1/jobs/{acmes}")).await;
    assert_eq!(still["state"], "PENDING", "{still}");
    t.host.stop().await;
}

async fn a_client_cannot_submit_an_id_the_host_derives(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("flaky.");
    h.ready_worker(
        &unique("w-"),
        "p",
        &[&topic],
        &[],
        Mode::Exec("exit 7".into()),
    )
    .await;
    // The ids the host derives hold a `~`, which no client id may.
    for id in ["sq~attempt-2", "sq~retry-1", "x~y"] {
        let (status, v) = h
            .api
            .post("/api/v1/jobs", json!({"id": id, "topic": topic}))
            .await;
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["errors"][0]["field"], "id", "{v}");
    }
    // What the old scheme derived (`<id>-attempt-2`), taken first, squats nothing now.
    let squatter = h
        .api
        .submit(json!({"id": "sq-attempt-2", "topic": unique("nobody."), "payload": "squat"}))
        .await;
    // The default policy retries a failure as `<id>~attempt-2`.
    let first = h
        .api
        .submit(json!({"id": "sq", "topic": topic, "payload": "mine"}))
        .await;
    let second = format!("{first}~attempt-2");
    let retried = h.api.wait_state(&second, "FAILED", WAIT).await;
    assert_eq!(retried["payload"], "mine", "{retried}");
    assert_eq!(retried["retry_of"], first.as_str());
    let (_, s) = h.api.get(&format!("/api/v1/jobs/{squatter}")).await;
    assert_eq!(s["payload"], "squat");
    assert_eq!(s["state"], "PENDING", "the squatter was never touched: {s}");
    h.stop().await;
}

async fn idempotency_keys_of_two_tenants_never_meet(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("nobody.");
    // `acme` with key `x:k` and `acme:x` with key `k` were one key, `idem:acme:x:k`.
    let tenant = unique("acme");
    let mut submitted = Vec::new();
    for (tenant, key) in [(tenant.clone(), "x:k"), (format!("{tenant}:x"), "k")] {
        let r = h
            .api
            .http
            .post(format!("{}/api/v1/jobs", h.api.base))
            .header("idempotency-key", key)
            .json(&json!({"topic": topic, "tenant_id": tenant}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "a new job for {tenant}");
        let v: Value = r.json().await.unwrap();
        submitted.push(v["job_id"].as_str().unwrap().to_string());
    }
    assert_ne!(submitted[0], submitted[1]);
    let (_, second) = h.api.get(&format!("/api/v1/jobs/{}", submitted[1])).await;
    assert_eq!(second["tenant_id"], format!("{tenant}:x"), "{second}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Cursors carry only the caller's ids
// ---------------------------------------------------------------------------------------------

/// The id a cursor holds (`base64("score:id")`).
fn cursor_id(v: &Value) -> Option<String> {
    let c = v["next_cursor"].as_str()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    Some(raw.split_once(':').unwrap().1.to_string())
}

async fn a_tenants_cursors_never_hold_another_tenants_ids(backend: Backend) {
    let t = tenants(backend).await;
    // Interleaved dead letters and workflows of both tenants, acme's first and last.
    for i in 0..3 {
        dead_letter(&t.acme, &format!("a{i}")).await;
        dead_letter(&t.beta, &format!("b{i}")).await;
        for (api, name) in [(&t.acme, "a"), (&t.beta, "b")] {
            let (status, v) = api
                .post(
                    "/api/v1/workflows",
                    json!({"id": format!("{name}{i}"), "name": "x",
                           "steps": {"s": {"type": "approval"}}}),
                )
                .await;
            assert_eq!(status, 201, "{v}");
            let wf = v["id"].as_str().unwrap();
            let (status, v) = api
                .post(&format!("/api/v1/workflows/{wf}/runs"), json!({}))
                .await;
            assert_eq!(status, 201, "{v}");
        }
    }
    let acme = format!("{}~", t.acme_id);
    for path in ["/api/v1/dlq?limit=1", "/api/v1/workflows?limit=1"] {
        let mut next = path.to_string();
        let mut seen = 0;
        loop {
            let (status, v) = t.acme.get(&next).await;
            assert_eq!(status, 200, "{v}");
            seen += items(&v).len();
            let Some(id) = cursor_id(&v) else { break };
            assert!(id.starts_with(&acme), "{path}: a cursor held `{id}`");
            next = format!("{path}&cursor={}", v["next_cursor"].as_str().unwrap());
        }
        assert_eq!(seen, 3, "{path} lists acme's three");
    }
    t.host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Case 6: a workflow deleted and created again
// ---------------------------------------------------------------------------------------------

async fn recreating_a_workflow_leaves_its_live_runs_on_their_version(backend: Backend) {
    let h = Host::start(backend).await;
    let topic = unique("echo.");
    h.ready_worker(&unique("w-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let (status, v) = h
        .api
        .post(
            "/api/v1/workflows",
            json!({"id": "wfx", "name": "gate", "steps": {
                "gate": {"type": "approval"},
                "work": {"topic": topic, "depends_on": ["gate"], "input": {"v": 1}}}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let wf = v["id"].as_str().unwrap().to_string();
    let (status, run) = h
        .api
        .post(&format!("/api/v1/workflows/{wf}/runs"), json!({}))
        .await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    assert_eq!(h.api.delete(&format!("/api/v1/workflows/{wf}")).await, 204);
    let (status, v) = h
        .api
        .post(
            "/api/v1/workflows",
            json!({"id": "wfx", "name": "other", "steps": {"else": {"topic": topic}}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["version"], 2,
        "a re-created id continues its versions: {v}"
    );
    let (_, v1) = h
        .api
        .get(&format!("/api/v1/workflows/{wf}?version=1"))
        .await;
    assert_eq!(
        v1["name"], "gate",
        "version 1 is as the run started it: {v1}"
    );

    let (status, v) = h
        .api
        .post(
            &format!("/api/v1/workflows/{wf}/runs/{run_id}/steps/gate/approve"),
            json!({"approved": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let run = h
        .api
        .wait_for(
            &format!("/api/v1/workflow-runs/{run_id}"),
            "the run finishes on its own version",
            |_, r| r["status"] == "succeeded",
        )
        .await;
    assert_eq!(run["steps"]["work"]["output"], json!({"v": 1}), "{run}");
    h.stop().await;
}

on_both_backends!(
    a_job_named_like_an_index_leaves_the_dead_letter_queue_readable,
    workflow_ids_that_spell_a_version_key_stay_apart,
    the_same_job_id_in_two_tenants_is_two_jobs,
    a_client_cannot_submit_an_id_the_host_derives,
    idempotency_keys_of_two_tenants_never_meet,
    a_tenants_cursors_never_hold_another_tenants_ids,
    recreating_a_workflow_leaves_its_live_runs_on_their_version,
);
