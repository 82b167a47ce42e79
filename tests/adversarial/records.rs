//! Records read back from the store are input too: one that is corrupt fails what it
//! describes, with an error naming the fault, and never panics the loop that reads it.

use serde_json::json;

use crate::common::{Api, Backend, options, start};

on_both_backends!(a_run_record_missing_a_step_fails_the_run_not_the_engine);

async fn a_run_record_missing_a_step_fails_the_run_not_the_engine(b: Backend) {
    let mut o = options(b);
    o.workflows.tick = std::time::Duration::from_millis(100);
    let running = start(o).await;
    let api = Api::new(running.addr);
    let (status, v) = api
        .post(
            "/api/v1/workflows",
            json!({"id": "gate", "name": "gate", "steps": {
                "review": {"type": "approval"},
                "ship": {"topic": "job.echo", "depends_on": ["review"]}
            }}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = api
        .post("/api/v1/workflows/gate/runs", json!({"input": {}}))
        .await;
    assert_eq!(status, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/workflow-runs/{run_id}");
    api.wait_for(&path, "the run waits for approval", |_, r| {
        r["status"] == "waiting"
    })
    .await;

    // The record loses the state of a step its version has (a bad restore, a hand edit).
    let store = &running.scheduler.store;
    let mut run = store.run_get(&run_id).await.unwrap().expect("the run");
    run.steps.remove("ship");
    store.run_put(&run).await.unwrap();

    let run = api
        .wait_for(&path, "the corrupt run fails", |_, r| {
            r["status"] == "failed"
        })
        .await;
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("`ship`"), "{run}");
    running.stop.cancel();
}
