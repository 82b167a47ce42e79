//! What a plugin costs: `least-loaded` native against the same strategy as a component (through
//! the adapter the scheduler calls: breaker, counters and all) at 1, 10, 100 and 1000 candidates,
//! and at one candidate the component called directly (`runtime`: the sandboxed call alone,
//! without the plugin's lookup by name, its breaker and counters); loading a compiled component
//! from the cache (a restart); instantiating one (a recycle). One candidate goes through
//! `pick-few` (the candidates as arguments), ten and more through `pick` (one list, which costs
//! a call into the plugin's allocator first).
//!
//! The machine these run on drifts: compare builds by alternating their bench binaries
//! (`target/release/deps/plugins-*`, copied aside) run by run, not against yesterday's figures.
//!
//! `component, off-thread` is the pick as the scheduler makes it since plugin calls left the
//! runtime's threads: handed to a plugin thread and awaited (README, "Where plugin calls run") —
//! alone (its latency: the plugin thread woken, the caller woken back), and 64 in flight at
//! once (its cost per pick under load, against the same 64 picks made inline).
//!
//! `cargo bench --bench plugins -- --warm-up-time 1 --measurement-time 3`
//!
//! Targets (SPEC §9): a warm call ≤ 0.3 µs at 1 candidate, ≤ 3× native at 1000; a cached load
//! ≤ 5 ms.
//!
//! `workflow expressions`: rendering a step's input in the sandboxed `cel` (three templates over a
//! small scope; one fan-out child over a scope whose `steps` holds 1,000 items, each child with
//! an `item` and `index` of its own), and the hop the engine makes to the blocking pool to
//! evaluate off the async threads. Measured: 25 µs, 69 µs and 16 µs. Before the sandbox the host
//! evaluated natively, compiling each template at each use and converting the whole scope for
//! each: 67–139 µs for the three templates, 1.8–4.0 ms for the child (the same cases on the same
//! machine, as its load drifted). In the sandbox a program is compiled once per instance and a
//! variable sent again with the same text stays bound, so the child pays for copying `steps`'
//! 25 KB of text in, not for converting it.

use std::collections::BTreeMap;
use std::sync::Arc;

use coretex::breaker::BreakerConfig;
use coretex::job::{JobRequest, JobSpec};
use coretex::plugins::runtime::{DispatchCall, PluginRuntime};
use coretex::plugins::{PluginRegistry, PluginSettings, Source};
use coretex::scheduler::registry::Candidate;
use coretex::scheduler::strategy::{DispatchStrategy, LeastLoaded};
use coretex::workflow::definition::render;
use coretex::workflow::expr::Scope;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;

fn candidates(n: usize) -> Vec<Candidate> {
    let labels = Arc::new(BTreeMap::new());
    (0..n)
        .map(|i| Candidate {
            worker_id: format!("worker-{i}").into(),
            active_jobs: (i % 7) as u32,
            max_parallel: 16,
            cpu_load: (i % 50) as f64,
            preferred: false,
            labels: labels.clone(),
        })
        .collect()
}

fn bytes(stem: &str) -> Vec<u8> {
    let path = format!(
        "{}/../plugins/target/wasm32-wasip2/release/{stem}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (built by the host's build.rs)"))
}

fn settings(cache: &tempfile::TempDir) -> PluginSettings {
    PluginSettings {
        cache_dir: Some(cache.path().into()),
        ..Default::default()
    }
}

fn pick(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(&cache)).unwrap();
    let registry = PluginRegistry::new(runtime, BreakerConfig::default());
    registry
        .install("least-loaded", Source::Builtin, &bytes("least_loaded"))
        .unwrap();
    let config = json!({"dispatch": {"strategy": "least-loaded"}});
    let job = JobSpec::accept(
        JobRequest {
            topic: "bench".into(),
            ..Default::default()
        },
        0,
    );
    let native = LeastLoaded::default();
    let mut group = c.benchmark_group("least-loaded pick");
    for n in [1, 10, 100, 1000] {
        let cs = candidates(n);
        group.bench_with_input(BenchmarkId::new("native", n), &cs, |b, cs| {
            b.iter(|| native.pick(&job, cs).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("component", n), &cs, |b, cs| {
            b.iter(|| registry.strategy_for(&config).pick(&job, cs).unwrap())
        });
    }
    let plugin = registry.get("least-loaded").unwrap();
    let one = candidates(1);
    let call = DispatchCall {
        job: &job,
        candidates: &one,
        settings: config.get("dispatch"),
    };
    group.bench_function(BenchmarkId::new("runtime", 1), |b| {
        b.iter(|| plugin.component().pick(&call).unwrap())
    });
    // As the scheduler places a job: the pick handed to a plugin thread and awaited from the
    // runtime's one thread (the job and candidates move there and back, no copies).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(config.clone());
    let mut held = Some((job.clone(), one.clone()));
    group.bench_function(BenchmarkId::new("component, off-thread", 1), |b| {
        b.iter(|| {
            let (j, cs) = held.take().unwrap();
            let placed = rt.block_on(registry.place(shared.clone(), j, cs)).unwrap();
            placed.pick.as_ref().unwrap();
            held = Some((placed.spec, placed.candidates));
        })
    });
    group.finish();

    // A burst, as under load: 64 picks in flight at once, so the plugin thread goes from one to
    // the next without sleeping and the runtime's thread parks once per burst, not per pick.
    // Per pick (throughput in elements): what placing costs when jobs keep coming.
    let mut group = c.benchmark_group("least-loaded pick, 64 in flight");
    group.throughput(criterion::Throughput::Elements(64));
    let mut burst: Vec<_> = (0..64).map(|_| (job.clone(), one.clone())).collect();
    group.bench_function("component, off-thread", |b| {
        b.iter(|| {
            let calls = std::mem::take(&mut burst)
                .into_iter()
                .map(|(j, cs)| registry.place(shared.clone(), j, cs));
            burst = rt
                .block_on(futures::future::join_all(calls))
                .into_iter()
                .map(|placed| {
                    let placed = placed.unwrap();
                    placed.pick.as_ref().unwrap();
                    (placed.spec, placed.candidates)
                })
                .collect();
        })
    });
    group.bench_function("component, inline", |b| {
        b.iter(|| {
            for (j, cs) in &burst {
                registry.strategy_for(&config).pick(j, cs).unwrap();
            }
        })
    });
    group.finish();
}

fn load_and_instantiate(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(&cache)).unwrap();
    let mut group = c.benchmark_group("plugin lifecycle");
    for stem in ["least_loaded", "cel"] {
        let wasm = bytes(stem);
        let warm = runtime.load(&wasm).unwrap();
        group.bench_function(BenchmarkId::new("cached load", stem), |b| {
            b.iter(|| {
                let loaded = runtime.load(&wasm).unwrap();
                assert!(loaded.from_cache());
            })
        });
        group.bench_function(BenchmarkId::new("instantiate", stem), |b| {
            b.iter(|| warm.instantiate().unwrap())
        });
    }
    group.finish();
}

fn expressions(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(&cache)).unwrap();
    let registry = PluginRegistry::new(runtime, BreakerConfig::default());
    registry
        .install("cel", Source::Builtin, &bytes("cel"))
        .unwrap();
    let cel = registry.expressions();
    let mut group = c.benchmark_group("workflow expressions");

    let input = json!({"n": "${input.n * 2 + 1}", "label": "${input.name}: ${input.xs.size()} items",
        "scaled": "${input.xs.map(x, x * input.k)}"});
    let scope = Scope::of(json!({
        "input": {"n": 3, "k": 2, "name": "ada", "xs": (0..10).collect::<Vec<i64>>()},
        "ctx": {}, "steps": {"a": {"status": "succeeded", "output": {"ok": true}}}}));
    group.bench_function("step render (3 templates)", |b| {
        b.iter(|| render(&input, &scope, &cel).unwrap())
    });

    let child = json!({"item": "${item}", "i": "${index}"});
    let items: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"id": format!("item-{i}"), "n": i}))
        .collect();
    let fan_out = Scope::of(json!({"input": {}, "ctx": {},
        "steps": {"prepare": {"status": "succeeded", "output": {"items": items}}}}));
    let mut index = 0;
    group.bench_function("for_each child render (1,000-item scope)", |b| {
        b.iter(|| {
            index = (index + 1) % 1000;
            let scope = fan_out
                .with("item", &json!({"id": format!("item-{index}"), "n": index}))
                .with("index", &json!(index));
            render(&child, &scope, &cel).unwrap()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    group.bench_function("off-thread hop (spawn_blocking)", |b| {
        b.to_async(&runtime)
            .iter(|| async { tokio::task::spawn_blocking(|| ()).await.unwrap() })
    });
    group.finish();
}

criterion_group!(benches, pick, load_and_instantiate, expressions);
criterion_main!(benches);
