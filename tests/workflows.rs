//! The workflow engine end to end (SPEC §10, §11): definitions, runs, fan-out, templates,
//! retries, approvals, cancels and timeouts, each on the embedded host and on real Redis + NATS.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Api, Backend, options, start};
use coretex::serve::{Running, ServeOptions};
use coretex::worker::{Mode, Worker, WorkerOptions};
use coretex::workflow::engine::{Engine, EngineSettings, run_lock_name};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Host {
    running: Running,
    api: Api,
    workers: CancellationToken,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.workers.cancel();
        self.running.stop.cancel();
    }
}

impl Host {
    /// A host with the demo echo workers (topic `job.echo`) and a fast workflow tick.
    async fn start(backend: Backend) -> Host {
        Host::start_with(backend, |_| {}).await
    }

    /// The same, with `adjust` applied to the options last.
    async fn start_with(backend: Backend, adjust: impl FnOnce(&mut ServeOptions)) -> Host {
        let mut o = options(backend);
        o.demo_workers = true;
        o.workflows.tick = Duration::from_millis(100);
        adjust(&mut o);
        let running = start(o).await;
        let api = Api::new(running.addr);
        api.wait_workers(2, Duration::from_secs(10)).await;
        Host {
            running,
            api,
            workers: CancellationToken::new(),
        }
    }

    /// An in-process worker running `cmd` for `topic`, registered before this returns.
    async fn exec_worker(&self, id: &str, topic: &str, cmd: &str) {
        let w = Worker::new(
            self.running.scheduler.bus.clone(),
            WorkerOptions {
                id: id.to_string(),
                pool: format!("pool-{id}"),
                topics: vec![topic.to_string()],
                max_parallel: 8,
                labels: BTreeMap::new(),
                mode: Mode::Exec(cmd.to_string()),
                heartbeat_interval: Duration::from_millis(100),
                report_cpu: false,
                started_delay: coretex::worker::STARTED_DELAY,
            },
        );
        let stop = self.workers.child_token();
        tokio::spawn(async move { w.run(stop).await.expect("worker runs") });
        self.api.wait_workers(3, Duration::from_secs(10)).await;
    }

    async fn create(&self, def: Value) -> Value {
        let (status, v) = self.api.post("/api/v1/workflows", def).await;
        assert_eq!(status, 201, "create answered {status}: {v}");
        v
    }

    async fn start_run(&self, wf: &str, input: Value) -> String {
        let (status, v) = self
            .api
            .post(
                &format!("/api/v1/workflows/{wf}/runs"),
                json!({"input": input}),
            )
            .await;
        assert_eq!(status, 201, "start answered {status}: {v}");
        v["run_id"].as_str().unwrap().to_string()
    }

    /// Polls a run until `done(run)`, or panics after 15 s.
    async fn wait_run(&self, run_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.api
            .wait_for(
                &format!("/api/v1/workflow-runs/{run_id}"),
                "the run gets there",
                |status, run| status == 200 && done(run),
            )
            .await
    }

    async fn wait_status(&self, run_id: &str, status: &str) -> Value {
        self.wait_run(run_id, |r| r["status"] == status).await
    }
}

/// Runs one behaviour on both backends, as two tests.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Embedded).await }
            )*
        }
        mod real {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Backend::Real).await }
            )*
        }
    };
}

on_both!(
    definitions_are_versioned_and_runs_keep_their_version,
    validation_rejects_bad_definitions_naming_the_step,
    input_schema_is_checked_when_a_run_starts,
    templates_and_for_each_are_cel_expressions,
    fan_out_pipeline_runs_with_templates_conditions_and_outputs,
    failed_step_retries_with_backoff_then_succeeds,
    step_retries_go_through_the_retry_policy_they_name,
    finished_runs_expire_and_leave_no_index_entries,
    workflow_reconciler_runs_in_one_replica_at_a_time,
    result_arriving_while_the_run_lock_is_held_is_not_dropped,
    failed_step_fails_the_run_unless_on_error_continue,
    approval_waits_then_approve_resumes_and_reject_fails,
    cancel_run_cancels_its_running_jobs,
    cancel_one_step_cancels_its_job_and_dependents,
    run_timeout_cancels_running_jobs,
    step_timeout_times_the_step_out,
    reconciler_submits_the_job_of_a_step_saved_without_one,
    for_each_runs_at_most_max_parallel_children_at_once,
    example_workflows_run_on_the_demo_workers,
);

async fn definitions_are_versioned_and_runs_keep_their_version(b: Backend) {
    let h = Host::start(b).await;
    let v1 = h
        .create(json!({"id": "wf-v", "name": "v", "steps": {"a": {"topic": "job.echo", "input": {"v": 1}}}}))
        .await;
    assert_eq!(v1["version"], 1);
    let (status, _) = h
        .api
        .post(
            "/api/v1/workflows",
            json!({"id": "wf-v", "name": "v", "steps": {"a": {"topic": "job.echo"}}}),
        )
        .await;
    assert_eq!(status, 409);
    let run1 = h.start_run("wf-v", json!({})).await;
    let r = h
        .api
        .http
        .put(format!("{}/api/v1/workflows/wf-v", h.api.base))
        .json(&json!({"name": "v2", "steps": {"a": {"topic": "job.echo", "input": {"v": 2}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v2: Value = r.json().await.unwrap();
    assert_eq!(v2["version"], 2);
    let run2 = h.start_run("wf-v", json!({})).await;
    let r1 = h.wait_status(&run1, "succeeded").await;
    let r2 = h.wait_status(&run2, "succeeded").await;
    assert_eq!(r1["workflow_version"], 1);
    assert_eq!(r1["steps"]["a"]["output"], json!({"v": 1}));
    assert_eq!(r2["steps"]["a"]["output"], json!({"v": 2}));
    let (_, old) = h.api.get("/api/v1/workflows/wf-v?version=1").await;
    assert_eq!(old["name"], "v");
    let (_, list) = h.api.get("/api/v1/workflows").await;
    assert_eq!(list["items"][0]["version"], 2);
    let (_, runs) = h.api.get("/api/v1/workflows/wf-v/runs").await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 2);
    let (_, done) = h
        .api
        .get("/api/v1/workflows/wf-v/runs?status=succeeded")
        .await;
    assert_eq!(done["items"].as_array().unwrap().len(), 2);
    assert_eq!(h.api.delete("/api/v1/workflows/wf-v").await, 204);
    assert_eq!(h.api.get("/api/v1/workflows/wf-v").await.0, 404);
}

async fn validation_rejects_bad_definitions_naming_the_step(b: Backend) {
    let h = Host::start(b).await;
    for (steps, field) in [
        (
            json!({"a": {"topic": "job.echo", "depends_on": ["ghost"]}}),
            "steps.a.depends_on",
        ),
        (
            json!({"a": {"topic": "job.echo", "depends_on": ["b"]}, "b": {"topic": "job.echo", "depends_on": ["a"]}}),
            "steps.a.depends_on",
        ),
        (
            json!({"a": {"topic": "job.echo", "condition": "input.x == "}}),
            "steps.a.condition",
        ),
        (
            json!({"a": {"topic": "job.echo", "input": {"x": "${input.x"}}}),
            "steps.a.input.x",
        ),
        (
            json!({"a": {"topic": "job.echo", "input": {"x": ["ok", {"y": "n=${input.n *}"}]}}}),
            "steps.a.input.x[1].y",
        ),
        (
            json!({"a": {"topic": "job.echo", "for_each": "input..x"}}),
            "steps.a.for_each",
        ),
        (
            json!({"a": {"topic": "job.echo", "for_each": "${input.xs.map(x, }"}}),
            "steps.a.for_each",
        ),
    ] {
        let (status, v) = h
            .api
            .post("/api/v1/workflows", json!({"name": "bad", "steps": steps}))
            .await;
        assert_eq!(status, 422, "{steps}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
        if field.contains("input") || field.contains("for_each") {
            assert!(
                v["errors"][0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("step `a`")),
                "the message names the step and what is wrong: {v}"
            );
        }
    }
    let (status, v) = h
        .api
        .post(
            "/api/v1/workflows",
            json!({"name": "bad", "input_schema": {"type": "object",
                   "properties": {"n": {"type": "integr"}}},
                   "steps": {"a": {"topic": "job.echo"}}}),
        )
        .await;
    assert_eq!(status, 422, "an invalid JSON Schema: {v}");
    assert_eq!(v["errors"][0]["field"], "input_schema.properties.n.type");
    let (_, list) = h.api.get("/api/v1/workflows").await;
    assert_eq!(list["items"], json!([]), "nothing was stored");
}

async fn input_schema_is_checked_when_a_run_starts(b: Backend) {
    let h = Host::start(b).await;
    h.create(json!({"id": "wf-s", "name": "s",
        "input_schema": {"type": "object", "required": ["n"], "properties": {
            "n": {"type": "integer"},
            "items": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
            "mode": {"oneOf": [{"const": "fast"}, {"const": "safe"}]}}},
        "steps": {"a": {"topic": "job.echo"}}}))
        .await;
    let (status, v) = h
        .api
        .post("/api/v1/workflows/wf-s/runs", json!({"input": {"n": "x"}}))
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "input.n");
    for (input, field) in [
        (json!({}), "input.n"),
        (json!({"n": 1, "items": ["ok", "NOT"]}), "input.items[1]"),
        (json!({"n": 1, "mode": "slow"}), "input.mode"),
    ] {
        let (status, v) = h
            .api
            .post("/api/v1/workflows/wf-s/runs", json!({"input": input}))
            .await;
        assert_eq!(status, 422, "{input}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
    }
    let (_, runs) = h.api.get("/api/v1/workflows/wf-s/runs").await;
    assert_eq!(runs["items"], json!([]), "a rejected input starts no run");
    let run = h
        .start_run("wf-s", json!({"n": 3, "items": ["a"], "mode": "safe"}))
        .await;
    h.wait_status(&run, "succeeded").await;
}

async fn templates_and_for_each_are_cel_expressions(b: Backend) {
    let h = Host::start(b).await;
    h.create(json!({"id": "wf-cel", "name": "cel", "steps": {
        "calc": {"topic": "job.echo", "input": {
            "scaled": "${input.xs.map(x, x * input.k).filter(x, x > 2)}",
            "count": "${size(input.xs) + 1}",
            "label": "${input.name.length()} chars, first ${input.xs.first()}",
            "who": "${ {'name': input.name, 'many': size(input.xs) > 2} }",
            "size": "${size(input.xs) > 2 ? 'big' : 'small'}"}},
        "fan": {"topic": "job.echo", "depends_on": ["calc"],
                "for_each": "${steps.calc.output.scaled.filter(x, x % 4 == 0)}",
                "input": {"half": "${item / 2}", "last": "${index == 1}"}}
    }}))
    .await;
    let run_id = h
        .start_run("wf-cel", json!({"xs": [1, 2, 3, 4], "k": 2, "name": "ada"}))
        .await;
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(
        run["steps"]["calc"]["output"],
        json!({"scaled": [4, 6, 8], "count": 5, "label": "3 chars, first 1",
               "who": {"name": "ada", "many": true}, "size": "big"})
    );
    assert_eq!(
        run["steps"]["fan"]["output"],
        json!([{"half": 2, "last": false}, {"half": 4, "last": true}])
    );

    // A template that fails at run time fails its step, saying which expression and why.
    h.create(json!({"id": "wf-cel-bad", "name": "bad", "steps": {
        "a": {"topic": "job.echo", "input": {"x": "${input.missing + 1}"}}}}))
        .await;
    let run_id = h.start_run("wf-cel-bad", json!({})).await;
    let run = h.wait_status(&run_id, "failed").await;
    let error = run["steps"]["a"]["error"].as_str().unwrap();
    assert!(error.contains("input.missing"), "{run}");
}

async fn fan_out_pipeline_runs_with_templates_conditions_and_outputs(b: Backend) {
    let h = Host::start(b).await;
    h.create(json!({"id": "wf-fan", "name": "fan", "steps": {
        "prepare": {"topic": "job.echo", "input": {"items": "${input.items}", "label": "n=${input.n}"},
                    "route_labels": {"team": "blue"}},
        "fan": {"topic": "job.echo", "depends_on": ["prepare"], "for_each": "steps.prepare.output.items",
                "max_parallel": 2, "input": {"item": "${item}", "i": "${index}"}},
        "optional": {"topic": "job.echo", "depends_on": ["prepare"], "condition": "input.n > 100"},
        "report": {"topic": "job.echo", "depends_on": ["fan", "optional"],
                   "input": {"all": "${steps.fan.output}"}, "output_path": "result.report"}
    }}))
    .await;
    let run_id = h
        .start_run("wf-fan", json!({"items": ["a", "b", "c"], "n": 5}))
        .await;
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(
        run["steps"]["prepare"]["output"],
        json!({"items": ["a", "b", "c"], "label": "n=5"})
    );
    assert_eq!(run["steps"]["optional"]["status"], "skipped");
    let children = run["steps"]["fan"]["children"].as_array().unwrap();
    assert_eq!(children.len(), 3);
    assert_eq!(children[1]["output"], json!({"item": "b", "i": 1}));
    let all = json!([{"item": "a", "i": 0}, {"item": "b", "i": 1}, {"item": "c", "i": 2}]);
    assert_eq!(run["steps"]["fan"]["output"], all);
    assert_eq!(run["context"]["result"]["report"], json!({"all": all}));
    assert_eq!(run["output"]["report"], json!({"all": all}));
    // The step's job carries the run's ids, the effective config and the route labels.
    let job_id = run["steps"]["prepare"]["job_id"].as_str().unwrap();
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["env"]["workflow_id"], "default~wf-fan");
    assert_eq!(job["env"]["run_id"], run_id.as_str());
    assert_eq!(job["env"]["step_id"], "prepare");
    assert_eq!(job["env"]["tenant_id"], "default");
    assert_eq!(job["labels"]["team"], "blue");
    assert!(job["effective_config"].is_object(), "{job}");
    let child_job = children[2]["job_id"].as_str().unwrap();
    let (_, job) = h.api.get(&format!("/api/v1/jobs/{child_job}")).await;
    assert_eq!(job["env"]["foreach_index"], "2");
    assert_eq!(job["env"]["foreach_item"], "c");
}

/// Fails the first attempt (job ids end in `~<attempt>`), echoes afterwards.
const FAILS_THE_FIRST_ATTEMPT: &str =
    r#"case "$CORETEX_JOB_ID" in *~1) echo boom >&2; exit 1;; *) cat;; esac"#;

async fn failed_step_retries_with_backoff_then_succeeds(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("flaky", "job.flaky", FAILS_THE_FIRST_ATTEMPT)
        .await;
    h.create(json!({"id": "wf-retry", "name": "r", "steps": {
        "a": {"topic": "job.flaky", "input": {"ok": true},
              "retry": {"max_retries": 2, "initial_backoff_sec": 0.2}}
    }}))
    .await;
    let run_id = h.start_run("wf-retry", json!({})).await;
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(run["steps"]["a"]["attempts"], 2);
    assert_eq!(run["steps"]["a"]["output"], json!({"ok": true}));
}

async fn step_retries_go_through_the_retry_policy_they_name(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("flaky-p", "job.flaky", FAILS_THE_FIRST_ATTEMPT)
        .await;
    let flaky = |id: &str, retry: Value| {
        json!({"id": id, "name": id, "steps": {
            "a": {"topic": "job.flaky", "input": {"ok": true}, "retry": retry}}})
    };
    // `fixed` retries after the step's backoff: the second attempt succeeds.
    h.create(flaky(
        "wf-fixed",
        json!({"max_retries": 2, "initial_backoff_sec": 0.2, "policy": "fixed"}),
    ))
    .await;
    // `never` dead-letters at once, whatever the step's own `max_retries` would allow.
    h.create(flaky(
        "wf-never",
        json!({"max_retries": 2, "initial_backoff_sec": 0.2, "policy": "never"}),
    ))
    .await;
    // The step's settings reach the policy: no retries means `max_attempts` 1, where `fixed`
    // alone would allow 3.
    h.create(flaky(
        "wf-fixed-once",
        json!({"max_retries": 0, "initial_backoff_sec": 0.2, "policy": "fixed"}),
    ))
    .await;
    let fixed = h.start_run("wf-fixed", json!({})).await;
    let never = h.start_run("wf-never", json!({})).await;
    let once = h.start_run("wf-fixed-once", json!({})).await;

    let run = h.wait_status(&fixed, "succeeded").await;
    assert_eq!(run["steps"]["a"]["attempts"], 2);
    for run_id in [never, once] {
        let run = h.wait_status(&run_id, "failed").await;
        assert_eq!(run["steps"]["a"]["attempts"], 1, "{run}");
        let error = run["steps"]["a"]["error"].as_str().unwrap();
        assert!(error.contains("boom"), "the job's error is kept: {run}");
    }
}

async fn failed_step_fails_the_run_unless_on_error_continue(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("failer", "job.fail", "exit 3").await;
    h.create(json!({"id": "wf-fail", "name": "f", "steps": {
        "a": {"topic": "job.fail"},
        "b": {"topic": "job.echo", "depends_on": ["a"]}
    }}))
    .await;
    let run_id = h.start_run("wf-fail", json!({})).await;
    let run = h.wait_status(&run_id, "failed").await;
    assert_eq!(run["steps"]["a"]["status"], "failed");
    assert_eq!(run["steps"]["b"]["status"], "cancelled");
    assert!(run["error"].as_str().unwrap().contains("step `a`"), "{run}");

    h.create(json!({"id": "wf-cont", "name": "c", "steps": {
        "a": {"topic": "job.fail", "on_error": "continue"},
        "b": {"topic": "job.echo", "depends_on": ["a"], "input": {"after": true}}
    }}))
    .await;
    let run_id = h.start_run("wf-cont", json!({})).await;
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(run["steps"]["a"]["status"], "failed");
    assert_eq!(run["steps"]["b"]["output"], json!({"after": true}));
}

async fn approval_waits_then_approve_resumes_and_reject_fails(b: Backend) {
    let h = Host::start(b).await;
    h.create(json!({"id": "wf-ok", "name": "approval", "steps": {
        "review": {"type": "approval"},
        "ship": {"topic": "job.echo", "depends_on": ["review"],
                 "input": {"by": "${steps.review.output.comment}"}}
    }}))
    .await;
    let run_id = h.start_run("wf-ok", json!({})).await;
    h.wait_status(&run_id, "waiting").await;
    let path = format!("/api/v1/workflows/wf-ok/runs/{run_id}/steps/review/approve");
    let (status, _) = h
        .api
        .post(&path, json!({"approved": true, "comment": "lgtm"}))
        .await;
    assert_eq!(status, 200);
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(run["steps"]["review"]["approval"]["comment"], "lgtm");
    assert_eq!(run["steps"]["ship"]["output"], json!({"by": "lgtm"}));
    let (status, _) = h.api.post(&path, json!({"approved": true})).await;
    assert_eq!(status, 409, "an answered approval cannot be answered again");

    let run_id = h.start_run("wf-ok", json!({})).await;
    h.wait_status(&run_id, "waiting").await;
    let (status, _) = h
        .api
        .post(
            &format!("/api/v1/workflows/wf-ok/runs/{run_id}/steps/review/approve"),
            json!({"approved": false, "comment": "not today"}),
        )
        .await;
    assert_eq!(status, 200);
    let run = h.wait_status(&run_id, "failed").await;
    assert_eq!(run["steps"]["review"]["status"], "failed");
    assert_eq!(run["steps"]["review"]["approval"]["comment"], "not today");
}

async fn cancel_run_cancels_its_running_jobs(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("sleeper", "job.sleep", "sleep 30").await;
    h.create(json!({"id": "wf-c", "name": "c", "steps": {"a": {"topic": "job.sleep"}}}))
        .await;
    let run_id = h.start_run("wf-c", json!({})).await;
    let run = h.wait_status(&run_id, "running").await;
    let job_id = run["steps"]["a"]["job_id"].as_str().unwrap().to_string();
    h.api
        .wait_state(&job_id, "RUNNING", Duration::from_secs(10))
        .await;
    let (status, v) = h
        .api
        .post(
            &format!("/api/v1/workflows/wf-c/runs/{run_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    h.api
        .wait_state(&job_id, "CANCELLED", Duration::from_secs(10))
        .await;
    let (status, _) = h
        .api
        .post(
            &format!("/api/v1/workflows/other/runs/{run_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "a run is reached only through its workflow");
}

async fn cancel_one_step_cancels_its_job_and_dependents(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("sleeper2", "job.sleep", "sleep 30").await;
    h.create(json!({"id": "wf-cs", "name": "cs", "steps": {
        "slow": {"topic": "job.sleep"},
        "after": {"topic": "job.echo", "depends_on": ["slow"]},
        "other": {"topic": "job.echo"}
    }}))
    .await;
    let run_id = h.start_run("wf-cs", json!({})).await;
    let run = h
        .wait_run(&run_id, |r| r["steps"]["slow"]["job_id"].is_string())
        .await;
    let job_id = run["steps"]["slow"]["job_id"].as_str().unwrap().to_string();
    let (status, v) = h
        .api
        .post(
            &format!("/api/v1/workflows/wf-cs/runs/{run_id}/steps/slow/cancel"),
            json!({"reason": "too slow"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let run = h.wait_status(&run_id, "cancelled").await;
    assert_eq!(run["steps"]["slow"]["status"], "cancelled");
    assert_eq!(run["steps"]["after"]["status"], "cancelled");
    assert_eq!(run["steps"]["other"]["status"], "succeeded");
    h.api
        .wait_state(&job_id, "CANCELLED", Duration::from_secs(10))
        .await;
}

async fn run_timeout_cancels_running_jobs(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("sleeper3", "job.sleep", "sleep 30").await;
    h.create(json!({"id": "wf-rt", "name": "rt", "timeout_sec": 1,
        "steps": {"a": {"topic": "job.sleep"}}}))
        .await;
    let run_id = h.start_run("wf-rt", json!({})).await;
    let run = h.wait_status(&run_id, "timed_out").await;
    let job_id = run["steps"]["a"]["job_id"].as_str().unwrap();
    h.api
        .wait_state(job_id, "CANCELLED", Duration::from_secs(10))
        .await;
}

async fn step_timeout_times_the_step_out(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("sleeper4", "job.sleep", "sleep 30").await;
    h.create(json!({"id": "wf-st", "name": "st",
        "steps": {"a": {"topic": "job.sleep", "timeout_sec": 1}}}))
        .await;
    let run_id = h.start_run("wf-st", json!({})).await;
    let run = h.wait_status(&run_id, "failed").await;
    assert_eq!(run["steps"]["a"]["status"], "timed_out");
    let job_id = run["steps"]["a"]["job_id"].as_str().unwrap();
    h.api
        .wait_state(job_id, "CANCELLED", Duration::from_secs(10))
        .await;
}

async fn reconciler_submits_the_job_of_a_step_saved_without_one(b: Backend) {
    // A replica that saved a run and died before submitting the step's job: the workflow
    // reconciler finds the job missing and submits it.
    let h = Host::start(b).await;
    h.create(json!({"id": "wf-rec", "name": "rec",
        "steps": {"a": {"topic": "job.echo", "input": {"x": 1}}}}))
        .await;
    let store = &h.running.scheduler.store;
    let wf = store
        .workflow_get("default~wf-rec", None)
        .await
        .unwrap()
        .unwrap();
    let run: coretex::workflow::definition::Run = serde_json::from_value(json!({
        "id": "default~run-crashed", "workflow_id": wf.id, "workflow_version": wf.version,
        "org_id": "default", "team_id": "", "input": {}, "context": {}, "status": "running",
        "steps": {"a": {"status": "running", "attempts": 1,
                        "job_id": "default~run-crashed~a~1"}},
        "started_at": "2026-01-01T00:00:00Z", "revision": 0
    }))
    .unwrap();
    store.run_put(&run).await.unwrap();
    let run = h.wait_status("default~run-crashed", "succeeded").await;
    assert_eq!(run["steps"]["a"]["output"], json!({"x": 1}));
}

async fn for_each_runs_at_most_max_parallel_children_at_once(b: Backend) {
    let h = Host::start(b).await;
    h.exec_worker("slowish", "job.slowish", "sleep 0.3; cat")
        .await;
    h.create(json!({"id": "wf-mp", "name": "mp", "steps": {
        "each": {"topic": "job.slowish", "for_each": "input.xs", "max_parallel": 2,
                 "input": {"x": "${item}"}}
    }}))
    .await;
    let run_id = h.start_run("wf-mp", json!({"xs": [1, 2, 3, 4, 5]})).await;
    let run = h
        .wait_run(&run_id, |r| {
            let running = r["steps"]["each"]["children"]
                .as_array()
                .map_or(0, |c| c.iter().filter(|c| c["status"] == "running").count());
            assert!(running <= 2, "more than max_parallel children running: {r}");
            r["status"] == "succeeded"
        })
        .await;
    let outs: Vec<Value> = (1..=5).map(|x| json!({"x": x})).collect();
    assert_eq!(run["steps"]["each"]["output"], Value::Array(outs));
}

async fn example_workflows_run_on_the_demo_workers(b: Backend) {
    let h = Host::start(b).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows");
    let yaml = std::fs::read(dir.join("fan-out.yaml")).unwrap();
    let r = h
        .api
        .http
        .post(format!("{}/api/v1/workflows", h.api.base))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let run_id = h
        .start_run(
            "fan-out-pipeline",
            json!({"items": ["a", "b", "c"], "notify": false}),
        )
        .await;
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(run["steps"]["notify"]["status"], "skipped");
    assert_eq!(
        run["context"]["report"]["results"][2],
        json!({"item": "c", "position": 2})
    );

    let def: Value =
        serde_json::from_slice(&std::fs::read(dir.join("approval.json")).unwrap()).unwrap();
    h.create(def).await;
    let run_id = h
        .start_run("approval-flow", json!({"version": "1.4.2"}))
        .await;
    h.wait_status(&run_id, "waiting").await;
    let (status, _) = h
        .api
        .post(
            &format!("/api/v1/workflows/approval-flow/runs/{run_id}/steps/review/approve"),
            json!({"approved": true, "comment": "ship it"}),
        )
        .await;
    assert_eq!(status, 200);
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(
        run["context"]["deployment"],
        json!({"artifact": "app-1.4.2.tar.gz", "approved_with": "ship it"})
    );
}

async fn finished_runs_expire_and_leave_no_index_entries(b: Backend) {
    let h = Host::start_with(b, |o| {
        o.store.job_ttl_ms = 1_500;
        o.workflows.prune_every = Duration::from_millis(100);
    })
    .await;
    h.create(json!({"id": "wf-ttl", "name": "ttl", "steps": {
        "a": {"topic": "job.echo"},
        "review": {"type": "approval", "depends_on": ["a"]}}}))
        .await;
    let finished = h.start_run("wf-ttl", json!({})).await;
    h.wait_status(&finished, "waiting").await;
    let path = format!("/api/v1/workflows/wf-ttl/runs/{finished}/steps/review/approve");
    assert_eq!(h.api.post(&path, json!({"approved": true})).await.0, 200);
    h.wait_status(&finished, "succeeded").await;
    let waiting = h.start_run("wf-ttl", json!({})).await;
    h.wait_status(&waiting, "waiting").await;

    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while h
        .api
        .get(&format!("/api/v1/workflow-runs/{finished}"))
        .await
        .0
        != 404
    {
        assert!(
            tokio::time::Instant::now() < until,
            "a finished run outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An unfinished run has no TTL, however long it waits.
    let (status, run) = h.api.get(&format!("/api/v1/workflow-runs/{waiting}")).await;
    assert_eq!((status, &run["status"]), (200, &json!("waiting")), "{run}");
    let (_, runs) = h.api.get("/api/v1/workflows/wf-ttl/runs").await;
    let ids: Vec<&str> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [waiting.as_str()]);
    // The reconciler pruned the expired run's index entries: nothing is left to prune.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let store = &h.running.scheduler.store;
    assert_eq!(store.run_prune_indexes().await.unwrap(), 0);
}

async fn workflow_reconciler_runs_in_one_replica_at_a_time(b: Backend) {
    let mut h = Host::start(b).await;
    // A second replica's engine on the same store and bus: the host's own reconciler holds the
    // lock (it ticks every 100 ms), so this one stands by.
    let other = Engine::new(
        h.running.workflows.handles().clone(),
        EngineSettings::default(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_eq!(other.reconcile_as_leader().await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A replica that stops hands the lock over at once.
    h.running.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), &mut h.running.handle)
        .await
        .expect("the host stops")
        .unwrap()
        .unwrap();
    assert!(other.reconcile_as_leader().await.unwrap().is_some());
    other.release().await;
}

async fn result_arriving_while_the_run_lock_is_held_is_not_dropped(b: Backend) {
    // No reconciler tick to fall back on: only the job's result can advance the run, and it
    // must wait for the lock rather than give up after `lock_wait`.
    let h = Host::start_with(b, |o| {
        o.workflows.tick = Duration::from_secs(3600);
        o.workflows.lock_wait = Duration::from_millis(100);
    })
    .await;
    h.exec_worker("gate", "job.gate", "sleep 0.5; cat").await;
    h.create(json!({"id": "wf-lock", "name": "lock", "steps": {
        "a": {"topic": "job.gate", "input": {"v": 1}},
        "b": {"topic": "job.echo", "depends_on": ["a"], "input": {"after": "${steps.a.output.v}"}}}}))
        .await;
    let run_id = h.start_run("wf-lock", json!({})).await;
    let store = &h.running.scheduler.store;
    let lock = run_lock_name(&run_id);
    while !store
        .lock_acquire(&lock, "another-replica", 60_000)
        .await
        .unwrap()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let run = h
        .wait_run(&run_id, |r| r["steps"]["a"]["job_id"].is_string())
        .await;
    let job_id = run["steps"]["a"]["job_id"].as_str().unwrap();
    h.api
        .wait_state(job_id, "SUCCEEDED", Duration::from_secs(10))
        .await;
    // The result is in while the lock is held, for many times `lock_wait`.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (_, run) = h.api.get(&format!("/api/v1/workflow-runs/{run_id}")).await;
    assert_eq!(run["steps"]["a"]["status"], "running", "{run}");
    assert!(store.lock_release(&lock, "another-replica").await.unwrap());
    let run = h.wait_status(&run_id, "succeeded").await;
    assert_eq!(run["steps"]["b"]["output"], json!({"after": 1}));
}
