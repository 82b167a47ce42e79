//! A slow plugin (issue 14, case 3): a legal dispatch strategy that takes milliseconds per pick,
//! always under its deadline. Its calls run off the runtime's threads, so while one is in flight
//! the host answers HTTP and places, runs and settles other jobs; and a plugin whose calls keep
//! running past the latency budget of its kind is treated by its breaker as a failing one.

use std::time::Duration;

use coretex::serve::ServeOptions;
use coretex::time::{Millis, now_ms, parse_rfc3339};
use coretex::worker::Mode;
use serde_json::{Value, json};

use crate::common::{Api, Backend, Host, options, unique};

const WAIT: Duration = Duration::from_secs(30);

/// How long one pick of the held-up tenant spins: long enough that everything the test asks of
/// the host meanwhile is done well before it ends, even on a loaded machine.
const SPIN_MS: u64 = 3_000;

fn slow_wasm() -> Vec<u8> {
    let path = format!(
        "{}/../plugins/target/wasm32-wasip2/release/slow.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (built by the host's build.rs)"))
}

/// A host started with `opts`, an echo worker on a topic of its own, and the `slow` strategy
/// uploaded: the host and the topic.
async fn host_with_slow(opts: ServeOptions) -> (Host, String) {
    let h = Host::start_with(opts).await;
    let topic = unique("echo.");
    h.ready_worker(&unique("w-"), "p", &[&topic], &[], Mode::Echo)
        .await;
    let (status, _, v) = h
        .api
        .send(
            "PUT",
            "/api/v1/plugins/slow",
            Some("application/wasm"),
            slow_wasm(),
        )
        .await;
    assert_eq!(status, 201, "upload answered {status}: {v}");
    (h, topic)
}

async fn set_config(api: &Api, body: Value) {
    let (status, v) = api.post("/api/v1/config", body.clone()).await;
    assert_eq!(status, 200, "config {body} answered {status}: {v}");
}

/// When the job entered `state`, from its history.
fn entered(job: &Value, state: &str) -> Millis {
    job["history"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["state"] == state)
        .and_then(|e| parse_rfc3339(e["at"].as_str()?).ok())
        .unwrap_or_else(|| panic!("the job never was {state}: {job}"))
}

// The host runs on the test's own thread, as `serve` runs on one thread on a machine of up to
// two cores: a plugin call made on that thread would stop everything else until it returned.
#[tokio::test]
async fn embedded_a_slow_pick_holds_up_neither_the_api_nor_other_jobs() {
    a_slow_pick_holds_up_neither_the_api_nor_other_jobs(Backend::Embedded).await
}

#[tokio::test]
async fn real_a_slow_pick_holds_up_neither_the_api_nor_other_jobs() {
    a_slow_pick_holds_up_neither_the_api_nor_other_jobs(Backend::Real).await
}

async fn a_slow_pick_holds_up_neither_the_api_nor_other_jobs(b: Backend) {
    let mut o = options(b);
    // The spin stays under its deadline: the call is legal, only slow.
    o.plugins.call_deadline = Duration::from_millis(SPIN_MS * 4);
    let (h, topic) = host_with_slow(o).await;
    // Only the tenant `slowpoke` places its jobs with the slow strategy.
    set_config(
        &h.api,
        json!({"scope": "org", "id": "slowpoke",
            "data": {"dispatch": {"strategy": "slow", "spin_ms": SPIN_MS}}}),
    )
    .await;

    let held = h
        .api
        .submit(json!({"topic": topic, "tenant_id": "slowpoke", "payload": {}}))
        .await;
    // The pick has begun once the plugin counts a call.
    h.api
        .wait_for("/api/v1/plugins", "the slow pick begins", |_, v| {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "slow" && p["calls"].as_u64().is_some_and(|n| n >= 1))
        })
        .await;

    // While it spins: the API answers, and another tenant's job is placed, run and settled.
    let (status, health) = h.api.get("/health").await;
    assert_eq!(status, 200, "{health}");
    let health_answered = now_ms();
    let other = h.api.submit(json!({"topic": topic, "payload": {}})).await;
    let other = h.api.wait_state(&other, "SUCCEEDED", WAIT).await;

    let held = h.api.wait_state(&held, "SUCCEEDED", WAIT).await;
    let picked = entered(&held, "DISPATCHED");
    assert!(
        health_answered < picked,
        "/health was answered at {health_answered}, only after the slow pick ended ({picked})"
    );
    let settled = entered(&other, "SUCCEEDED");
    assert!(
        settled < picked,
        "another tenant's job succeeded at {settled}, only after the slow pick ended ({picked})"
    );
    h.stop().await;
}

on_both_backends!(a_strategy_slower_than_its_budget_opens_its_breaker);

async fn a_strategy_slower_than_its_budget_opens_its_breaker(b: Backend) {
    let mut o = options(b);
    // 6 ms a pick, far under its deadline (a loaded machine must not turn a slow call into one
    // stopped at its deadline), over a 1 ms budget by more than the epoch's one-tick slack.
    o.plugins.call_deadline = Duration::from_millis(200);
    let (h, topic) = host_with_slow(o).await;
    set_config(
        &h.api,
        json!({"scope": "system", "data": {"dispatch": {"strategy": "slow", "spin_ms": 6},
            "plugins": {"latency_budget_ms": {"dispatch-strategy": 1}}}}),
    )
    .await;
    // Three over budget in a row open it; a few more picks are allowed for a machine so loaded
    // that the epoch ticker itself fell behind during one.
    let mut row = Value::Null;
    for i in 0..12 {
        let id = h
            .api
            .submit(json!({"topic": topic, "payload": {"i": i}}))
            .await;
        h.api.wait_state(&id, "SUCCEEDED", WAIT).await;
        row = h.api.plugin_row("slow").await;
        if row["breaker"] == "open" && row["rejected"].as_u64().is_some_and(|n| n >= 1) {
            break;
        }
    }
    assert_eq!(row["breaker"], "open", "{row}");
    assert!(
        row["rejected"].as_u64().is_some_and(|n| n >= 1),
        "once open, the built-in strategy places the jobs: {row}"
    );
    let metrics = h.api.metrics().await;
    let series = r#"coretex_plugin_failures_total{plugin="slow",reason="over_budget"}"#;
    assert!(metrics.contains(series), "{series} in:\n{metrics}");
    h.stop().await;
}
