//! The dashboard's jobs page with 10,000 jobs in the store: the server time of its first page
//! (`GET /ui/jobs`: the API's list of 50 through the gateway's router, the HTML, and its gzip
//! compression, asked for as a browser asks), on the real Redis and NATS and, for comparison,
//! on the embedded store and bus.
//!
//! `cargo bench --bench ui -- --warm-up-time 1 --measurement-time 5` (Redis at REDIS_URL,
//! default 127.0.0.1:6379; NATS at NATS_URL, default 127.0.0.1:4222). The target is ≤ 100 ms.

use std::net::SocketAddr;
use std::time::Duration;

use coretex::serve::{self, DEMO_TOPIC, Running, ServeOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const JOBS: usize = 10_000;
const BATCH: usize = 1_000;

/// A host (no keys, so no sign-in) with the demo workers and its dashboard, holding [`JOBS`]
/// finished jobs.
async fn host(real: bool) -> (Running, reqwest::Client, String) {
    let tag = format!("uibench{}", uuid::Uuid::new_v4().simple());
    let mut o = ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ui_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        key_prefix: format!("{tag}:"),
        subject_prefix: tag,
        demo_workers: true,
        ..Default::default()
    };
    if real {
        o.redis_url = Some(std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into()));
        o.nats_url = Some(std::env::var("NATS_URL").unwrap_or("nats://127.0.0.1:4222".into()));
    }
    let running = serve::start(o)
        .await
        .expect("a host starts (Redis and NATS must run for the real backend)");
    let http = reqwest::Client::new();
    let api = format!("http://{}/api/v1", running.addr);
    for b in 0..JOBS / BATCH {
        let jobs: Vec<Value> = (0..BATCH)
            .map(|i| json!({"topic": DEMO_TOPIC, "payload": {"n": b * BATCH + i}}))
            .collect();
        let r = http
            .post(format!("{api}/jobs/batch"))
            .json(&json!({"jobs": jobs}))
            .send()
            .await
            .expect("the batch is sent");
        assert!(r.status().is_success(), "the batch is accepted");
    }
    // Settled: the demo workers have run them all, so the measurement shares the machine with
    // nothing else.
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut open = 0;
        for state in ["PENDING", "SCHEDULED", "DISPATCHED", "RUNNING"] {
            let v: Value = http
                .get(format!("{api}/jobs?state={state}&limit=1"))
                .send()
                .await
                .expect("answers")
                .json()
                .await
                .expect("JSON");
            open += v["items"].as_array().map_or(1, Vec::len);
        }
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the jobs never finished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ui = format!("http://{}/ui/jobs", running.ui_addr.expect("a dashboard"));
    (running, http, ui)
}

fn jobs_page(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    for (name, real) in [("redis", true), ("embedded", false)] {
        let (running, http, ui) = rt.block_on(host(real));
        let page = |http: reqwest::Client, ui: String| async move {
            let r = http
                .get(&ui)
                .header("accept-encoding", "gzip")
                .send()
                .await
                .expect("answers");
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-encoding"], "gzip");
            r.bytes().await.expect("a page")
        };
        let sent = rt.block_on(page(http.clone(), ui.clone())).len();
        println!("ui_jobs_page_10k_{name}: the first page is {sent} bytes gzip-compressed");
        let mut g = c.benchmark_group(format!("ui_jobs_page_10k_{name}"));
        g.sample_size(30);
        g.bench_function("first_page", |b| {
            b.to_async(&rt).iter(|| page(http.clone(), ui.clone()))
        });
        g.finish();
        running.stop.cancel();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(10), running.handle).await;
        });
    }
}

criterion_group!(benches, jobs_page);
criterion_main!(benches);
