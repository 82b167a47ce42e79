//! Clients that walk away mid-request (issue 15, cancel-safe handlers): starting a run advances
//! it, and cancel and approve change it under its lock. A client that disconnects drops the
//! handler's future wherever it is; the work it started must still finish, and must leave
//! nothing behind that stops the run from advancing later (a "busy" mark, a held lock).

use std::time::Duration;

use coretex::worker::Mode;
use serde_json::json;

use crate::common::{Backend, Host, options, unique};

/// Runs started by requests abandoned at every point of their way still all finish.
async fn runs_started_by_abandoned_requests_all_finish(backend: Backend) {
    let mut o = options(backend);
    o.workflows.tick = Duration::from_millis(100);
    let h = Host::start_with(o).await;
    let topic = unique("job.abandon.");
    h.ready_worker(&unique("w"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let (code, wf) = h
        .api
        .post(
            "/api/v1/workflows",
            json!({"name": "abandon", "steps": {
                "a": {"topic": topic},
                "b": {"topic": topic, "depends_on": ["a"]},
            }}),
        )
        .await;
    assert_eq!(code, 201, "{wf}");
    let wf_id = wf["id"].as_str().expect("a workflow id").to_string();

    let engine = h.running.workflows.clone();
    // Each start is dropped after a growing number of polls' worth of time: before the run is
    // stored, while its lock is taken, mid-advance, after it.
    for micros in [0u64, 50, 100, 200, 400, 800, 1_500, 3_000, 6_000, 12_000] {
        let start = engine.start_run(&wf_id, json!({}));
        let _ = tokio::time::timeout(Duration::from_micros(micros), start).await;
    }
    // And cancels abandoned the same way, on runs of their own.
    let mut cancelled = Vec::new();
    for micros in [0u64, 100, 400, 1_500, 6_000] {
        let run = engine
            .start_run(&wf_id, json!({}))
            .await
            .expect("a run starts");
        let cancel = engine.cancel_run(&run.id, "abandoned");
        let _ = tokio::time::timeout(Duration::from_micros(micros), cancel).await;
        cancelled.push(run.id);
    }

    let runs = || async {
        let (_, v) = h
            .api
            .get(&format!("/api/v1/workflows/{wf_id}/runs?limit=100"))
            .await;
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all = runs().await;
        let open: Vec<_> = all
            .iter()
            .filter(|r| !matches!(r["status"].as_str(), Some("succeeded" | "cancelled")))
            .collect();
        if open.is_empty() {
            assert!(all.len() >= cancelled.len(), "{all:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "runs left unfinished by abandoned requests: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A run whose cancel was abandoned either ended cancelled or (cancel dropped before it
    // applied) succeeded; the request for it can be made again and answers.
    for id in cancelled {
        let (code, run) = h.api.get(&format!("/api/v1/workflow-runs/{id}")).await;
        assert_eq!(code, 200, "{run}");
    }
    h.stop().await;
}

on_both_backends!(runs_started_by_abandoned_requests_all_finish);
