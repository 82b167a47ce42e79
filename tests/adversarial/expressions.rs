//! Workflow expressions are tenants' code (issue 13, case 5). Templates and `for_each` run in the
//! sandboxed `cel` component, under a time budget and a memory cap, off the async threads: an
//! expression past either limit fails its own step naming the expression and the limit, one the
//! sandbox cannot even compile is refused on save, and the host answers meanwhile.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, Backend, options, start};

/// How long a request may take before the host counts as stalled: generous, for a loaded machine.
const LIVENESS: Duration = Duration::from_secs(60);

/// Case 5: 3,000 × 3,000 products of the run's input.
const QUADRATIC: &str = "input.n.map(a, input.n.map(b, a*b))";

fn three_thousand_items() -> Value {
    json!({"n": (0..3000).collect::<Vec<i64>>()})
}

async fn create(api: &Api, definition: Value) {
    let (status, v) = api.post("/api/v1/workflows", definition).await;
    assert_eq!(status, 201, "create answered {status}: {v}");
}

/// Starts a run of `workflow` and answers its id; the host must answer within [`LIVENESS`].
async fn start_run(api: &Api, workflow: &str, input: Value) -> String {
    let path = format!("/api/v1/workflows/{workflow}/runs");
    let (status, run) = tokio::time::timeout(LIVENESS, api.post(&path, json!({"input": input})))
        .await
        .expect("the host answers the start of a run");
    assert_eq!(status, 201, "start answered {status}: {run}");
    run["run_id"].as_str().unwrap().to_string()
}

/// Waits until the run has failed, and answers the error of its step `step`.
async fn step_error(api: &Api, run_id: &str, step: &str) -> String {
    let until = tokio::time::Instant::now() + LIVENESS;
    loop {
        let (_, run) = api.get(&format!("/api/v1/workflow-runs/{run_id}")).await;
        if run["status"] == "failed" {
            assert_eq!(run["steps"][step]["status"], "failed", "{run}");
            return run["steps"][step]["error"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < until,
            "run {run_id} did not fail: it is {}, its steps {}",
            run["status"],
            run["steps"]
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

on_both_backends!(
    the_quadratic_template_fails_its_step_on_the_time_budget,
    a_memory_bomb_template_hits_the_memory_cap,
    a_for_each_over_a_huge_expression_fails_its_step_on_the_budget,
    expressions_too_deep_to_compile_are_refused_on_save,
);

/// Runs a workflow of one step `a` on a fresh host, with `input`, and answers the error the
/// step failed with.
async fn step_failure(b: Backend, step: Value, input: Value) -> String {
    let host = start(options(b)).await;
    let api = Api::new(host.addr);
    create(&api, json!({"id": "w", "name": "w", "steps": {"a": step}})).await;
    let run_id = start_run(&api, "w", input).await;
    let error = step_error(&api, &run_id, "a").await;
    host.stop.cancel();
    error
}

async fn the_quadratic_template_fails_its_step_on_the_time_budget(b: Backend) {
    let step = json!({"topic": "job.echo", "input": {"x": format!("${{{QUADRATIC}.size()}}")}});
    let error = step_failure(b, step, three_thousand_items()).await;
    assert!(
        error.starts_with("input.x: ")
            && error.contains(QUADRATIC)
            && error.contains("time budget of an expression (100 ms)"),
        "the error names where, the expression and the limit: {error}"
    );
}

async fn a_memory_bomb_template_hits_the_memory_cap(b: Backend) {
    // A thousand copies of twice 64 KiB: 128 MiB, four times the cap, made in milliseconds.
    let bomb = "input.xs.map(x, input.s + input.s)";
    let step = json!({"topic": "job.echo", "input": {"copies": format!("${{{bomb}}}")}});
    let input = json!({"s": "x".repeat(64 << 10), "xs": (0..1000).collect::<Vec<i64>>()});
    let error = step_failure(b, step, input).await;
    assert!(
        error.contains(bomb) && error.contains("memory cap of an expression (32 MiB)"),
        "{error}"
    );
}

async fn a_for_each_over_a_huge_expression_fails_its_step_on_the_budget(b: Backend) {
    let step = json!({"topic": "job.echo", "for_each": QUADRATIC, "input": {"i": "${index}"}});
    let error = step_failure(b, step, three_thousand_items()).await;
    assert!(
        error.starts_with("for_each: ")
            && error.contains(QUADRATIC)
            && error.contains("time budget"),
        "{error}"
    );
}

async fn expressions_too_deep_to_compile_are_refused_on_save(b: Backend) {
    let host = start(options(b)).await;
    let api = Api::new(host.addr);
    // Ten thousand additions: a syntax tree ten thousand deep, which the parser recurses down
    // (a few dozen nested levels overflowed the stack of a test thread when the host compiled
    // templates itself).
    let deep = vec!["1"; 10_000].join(" + ");
    for (step, field) in [
        (
            json!({"topic": "job.echo", "input": {"x": format!("${{{deep}}}")}}),
            "steps.a.input.x",
        ),
        (
            json!({"topic": "job.echo", "for_each": format!("[{deep}]")}),
            "steps.a.for_each",
        ),
    ] {
        let (status, v) = tokio::time::timeout(
            LIVENESS,
            api.post(
                "/api/v1/workflows",
                json!({"name": "deep", "steps": {"a": step}}),
            ),
        )
        .await
        .expect("the host answers a save");
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["errors"][0]["field"], field, "{v}");
    }
    let (status, _) = api.get("/health").await;
    assert_eq!(status, 200);
    host.stop.cancel();
}

/// `serve` runs on one thread on a small machine; an evaluation that runs there stalls every
/// request. Here the host and this test share one thread, and `/health` (and the run, still
/// being evaluated) answer while the template is evaluated.
async fn health_answers_while_a_template_is_evaluated(b: Backend) {
    let mut o = options(b);
    // Enough time for the evaluation that the memory cap, not the deadline, stops it: about a
    // second in, far longer than this test takes to look.
    o.plugins.expression_deadline = Duration::from_secs(30);
    let host = start(o).await;
    let api = Api::new(host.addr);
    create(
        &api,
        json!({"id": "quadratic", "name": "q", "steps": {"a": {"topic": "job.echo",
            "input": {"x": format!("${{{QUADRATIC}.size()}}")}}}}),
    )
    .await;
    let starter = Api::new(host.addr);
    let starting = tokio::spawn(async move {
        starter
            .post(
                "/api/v1/workflows/quadratic/runs",
                json!({"input": three_thousand_items()}),
            )
            .await
    });
    // A run is stored before it is first advanced: listed as pending, its evaluation is about
    // to begin; a moment later it is under way.
    let until = tokio::time::Instant::now() + LIVENESS;
    let run_id = loop {
        let (_, runs) = api
            .get("/api/v1/workflows/quadratic/runs?status=pending")
            .await;
        if let Some(id) = runs["items"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no pending run: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, health) = tokio::time::timeout(LIVENESS, api.get("/health"))
        .await
        .expect("/health answers");
    assert_eq!(status, 200, "{health}");
    let (_, run) = api.get(&format!("/api/v1/workflow-runs/{run_id}")).await;
    assert_eq!(
        run["steps"]["a"]["status"], "pending",
        "/health answered before the evaluation ended: {}",
        run["steps"]
    );
    let (status, started) = tokio::time::timeout(LIVENESS, starting)
        .await
        .expect("the start of the run is answered")
        .unwrap();
    assert_eq!(status, 201, "{started}");
    let error = step_error(&api, &run_id, "a").await;
    assert!(error.contains(QUADRATIC), "{error}");
    host.stop.cancel();
}

mod one_thread {
    #[tokio::test(flavor = "current_thread")]
    async fn health_answers_while_a_template_is_evaluated_embedded() {
        super::health_answers_while_a_template_is_evaluated(super::Backend::Embedded).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn health_answers_while_a_template_is_evaluated_real() {
        super::health_answers_while_a_template_is_evaluated(super::Backend::Real).await
    }
}
