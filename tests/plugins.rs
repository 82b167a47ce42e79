//! Plugins, against real components built from `plugins/` by the host's build script: hostile
//! plugins are contained, compiled components come from the cache, the plugin dir is followed
//! live, and a host picks its strategy from config and takes uploads through the API.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Api, Backend};
use coretex::breaker::{BreakerConfig, BreakerState};
use coretex::job::{Job, JobError, JobRequest, JobSpec, JobState};
use coretex::plugins::runtime::{DispatchCall, PluginComponent, PluginRuntime};
use coretex::plugins::{
    CallError, ConditionEvaluator, FailureReason, LoadError, PluginKind, PluginRegistry,
    PluginSettings, Source,
};
use coretex::scheduler::registry::Candidate;
use coretex::scheduler::retry::{Failure, RetryDecision, RetryPolicy};
use coretex::scheduler::strategy::{DispatchStrategy, Pick};
use serde_json::{Value, json};

/// A component built by the host's build script.
fn wasm(stem: &str) -> Vec<u8> {
    let path = format!(
        "{}/../plugins/target/wasm32-wasip2/release/{stem}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Settings for tests that are not about the deadline: a generous one, because the tests share
/// two cores and a plugin's first call on a fresh instance pays for its lazy start-up.
fn settings(cache: &Path) -> PluginSettings {
    PluginSettings {
        cache_dir: Some(cache.into()),
        call_deadline: Duration::from_secs(1),
        ..Default::default()
    }
}

/// The production deadline (10 ms), for the tests of containment.
fn strict(cache: &Path) -> PluginSettings {
    PluginSettings {
        call_deadline: PluginSettings::default().call_deadline,
        ..settings(cache)
    }
}

fn registry_with(settings: PluginSettings, plugins: &[(&str, &str)]) -> Arc<PluginRegistry> {
    let registry = PluginRegistry::new(
        PluginRuntime::new(&settings).unwrap(),
        BreakerConfig::default(),
    );
    for (name, stem) in plugins {
        registry.install(name, Source::Dir, &wasm(stem)).unwrap();
    }
    registry
}

fn job(labels: &[(&str, &str)]) -> JobSpec {
    JobSpec::accept(
        JobRequest {
            topic: "t".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        0,
    )
}

fn worker(id: &str, active: u32, labels: &[(&str, &str)]) -> Candidate {
    Candidate {
        worker_id: id.into(),
        active_jobs: active,
        max_parallel: 10,
        cpu_load: 0.0,
        preferred: false,
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// Calls a strategy component directly (no breaker, no fallback), for a label-less job.
fn pick(component: &PluginComponent, candidates: &[Candidate]) -> Result<Pick, CallError> {
    component.pick(&DispatchCall {
        job: &job(&[]),
        candidates,
        settings: None,
    })
}

fn strategy_config(name: &str) -> Value {
    json!({"dispatch": {"strategy": name}})
}

fn listed(registry: &PluginRegistry, name: &str) -> Value {
    let all = serde_json::to_value(registry.list()).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("`{name}` is not listed: {all}"))
}

// ---------------------------------------------------------------------------------------------
// Containment
// ---------------------------------------------------------------------------------------------

/// Three calls fail fast and fall back to least-loaded (which picks the idle worker), the
/// breaker opens, the fourth call is not even made, and the listing shows it all.
fn assert_contained(stem: &str, reasons: &[FailureReason]) {
    let cache = tempfile::tempdir().unwrap();
    let name = stem.replace('_', "-");
    let registry = registry_with(strict(cache.path()), &[(&name, stem)]);
    let config = strategy_config(&name);
    let candidates = [worker("busy", 5, &[]), worker("idle", 0, &[])];
    for attempt in 1..=4 {
        let started = Instant::now();
        let pick = registry
            .strategy_for(&config)
            .pick(&job(&[]), &candidates)
            .unwrap();
        assert_eq!(pick, Pick::Worker(1), "{stem}: the fallback places the job");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{stem}: call {attempt} took {:?}",
            started.elapsed()
        );
    }
    let plugin = registry.get(&name).unwrap();
    assert_eq!(
        plugin.breaker_state(&job(&[]).tenant_id),
        BreakerState::Open,
        "{stem}"
    );
    let info = listed(&registry, &name);
    assert_eq!(info["calls"], 3, "{stem}: {info}");
    assert_eq!(info["failures"], 3, "{stem}: {info}");
    assert_eq!(
        info["rejected"], 1,
        "{stem}: the open breaker refused the 4th: {info}"
    );
    assert_eq!(info["breaker"], "open", "{stem}: {info}");
    let reason = &info["last_failure"]["reason"];
    assert!(
        reasons.iter().any(|r| reason == r.as_str()),
        "{stem}: {info}"
    );
}

#[test]
fn a_plugin_that_loops_forever_hits_the_epoch_deadline() {
    assert_contained("loop_forever", &[FailureReason::Deadline]);
}

#[test]
fn a_memory_bomb_is_stopped_by_the_cap_or_the_deadline() {
    // Filling 32 MiB takes longer than the 10 ms deadline here; either limit contains it.
    assert_contained(
        "memory_bomb",
        &[FailureReason::Memory, FailureReason::Deadline],
    );
}

#[test]
fn a_memory_bomb_with_time_to_spare_hits_the_memory_cap() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&PluginSettings {
        call_deadline: Duration::from_secs(30),
        ..settings(cache.path())
    })
    .unwrap();
    let bomb = runtime.load(&wasm("memory_bomb")).unwrap();
    let candidates = [worker("w", 0, &[])];
    let err = pick(&bomb, &candidates).unwrap_err();
    assert_eq!(err.reason, FailureReason::Memory, "{err}");
}

/// The epoch ticker sleeps while no plugin runs; a call wakes it, so a loop started after a
/// quiet spell is stopped at the deadline as ever.
#[test]
fn a_plugin_looping_after_a_quiet_spell_still_hits_the_deadline() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&strict(cache.path())).unwrap();
    let looping = runtime.load(&wasm("loop_forever")).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !runtime.ticker_asleep() {
        assert!(Instant::now() < until, "the ticker never went to sleep");
        std::thread::sleep(Duration::from_millis(100));
    }
    let candidates = [worker("w", 0, &[])];
    for round in 0..2 {
        let started = Instant::now();
        let err = pick(&looping, &candidates).unwrap_err();
        assert_eq!(err.reason, FailureReason::Deadline, "round {round}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "round {round}: the loop ran {:?}",
            started.elapsed()
        );
        assert!(!runtime.ticker_asleep(), "a call woke the ticker");
    }
}

#[test]
fn a_trapping_plugin_is_contained() {
    assert_contained("trap", &[FailureReason::Trap]);
}

#[test]
fn an_out_of_range_answer_is_a_failure_not_a_panic() {
    assert_contained("out_of_range", &[FailureReason::OutOfRange]);
}

#[test]
fn a_plugin_of_the_wrong_world_is_refused_for_dispatch() {
    assert_contained("wrong_world", &[FailureReason::WrongKind]);
}

#[test]
fn a_configured_plugin_that_is_not_loaded_falls_back() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(settings(cache.path()), &[]);
    let config = strategy_config("nowhere");
    let pick = registry
        .strategy_for(&config)
        .pick(&job(&[]), &[worker("busy", 5, &[]), worker("idle", 0, &[])])
        .unwrap();
    assert_eq!(pick, Pick::Worker(1));
}

// ---------------------------------------------------------------------------------------------
// Latency budgets, and where the scheduler's calls run
// ---------------------------------------------------------------------------------------------

/// The `slow` strategy spinning `spin_ms` per pick, with a dispatch budget of `budget_ms`.
fn slow_config(spin_ms: u64, budget_ms: u64) -> Value {
    json!({"dispatch": {"strategy": "slow", "spin_ms": spin_ms},
        "plugins": {"latency_budget_ms": {"dispatch-strategy": budget_ms}}})
}

#[test]
fn a_strategy_over_its_latency_budget_keeps_its_answer_and_opens_its_breaker() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(settings(cache.path()), &[("slow", "slow")]);
    let config = slow_config(5, 1);
    let candidates = [worker("busy", 5, &[]), worker("idle", 0, &[])];
    for _ in 0..3 {
        let pick = registry
            .strategy_for(&config)
            .pick(&job(&[]), &candidates)
            .unwrap();
        assert_eq!(pick, Pick::Worker(1));
    }
    let info = listed(&registry, "slow");
    assert_eq!(info["breaker"], "open", "{info}");
    assert_eq!(info["over_budget"], 3, "{info}");
    assert_eq!(info["failures"], 0, "its answers were used: {info}");
    assert_eq!(info["last_failure"]["reason"], "over_budget", "{info}");
    let message = info["last_failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("latency budget of 1 ms (plugins.latency_budget_ms.dispatch-strategy)"),
        "{message}"
    );
    // Open, it is not called: the built-in least-loaded places the job at once.
    registry
        .strategy_for(&config)
        .pick(&job(&[]), &candidates)
        .unwrap();
    assert_eq!(listed(&registry, "slow")["rejected"], 1);
}

#[test]
fn a_strategy_within_its_latency_budget_is_not_counted_slow() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(settings(cache.path()), &[("slow", "slow")]);
    let config = slow_config(2, 60_000);
    for _ in 0..4 {
        registry
            .strategy_for(&config)
            .pick(&job(&[]), &[worker("w", 0, &[])])
            .unwrap();
    }
    let info = listed(&registry, "slow");
    assert_eq!(info["breaker"], "closed", "{info}");
    assert_eq!(info["over_budget"], 0, "{info}");
}

/// The scheduler asks through `place` and `decide_retry`, which answer as the traits do — a
/// plugin's on a plugin thread, the native default's at once.
#[tokio::test]
async fn place_and_decide_retry_answer_as_the_traits_do() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(
        settings(cache.path()),
        &[
            ("round-robin", "round_robin"),
            ("exponential-jitter", "exponential_jitter"),
        ],
    );
    let candidates = vec![worker("a", 0, &[]), worker("b", 0, &[])];
    let config = Arc::new(strategy_config("round-robin"));
    let mut picked = HashSet::new();
    for _ in 0..4 {
        let placed = registry
            .place(config.clone(), job(&[]), candidates.clone())
            .await
            .unwrap();
        assert_eq!(placed.candidates.len(), 2, "the candidates come back");
        match placed.pick.unwrap() {
            Pick::Worker(i) => picked.insert(i),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(picked.len(), 2, "round-robin took turns");
    assert_eq!(listed(&registry, "round-robin")["calls"], 4);
    // No strategy configured: the native default, no plugin call.
    let native = registry
        .place(Arc::new(json!({})), job(&[]), candidates)
        .await
        .unwrap();
    assert_eq!(native.pick.unwrap(), Pick::Worker(0));

    let job = failed_job(1);
    let error = JobError::new("boom", "it broke");
    let failure = Failure {
        job: &job,
        outcome: JobState::Failed,
        error: Some(&error),
        elapsed_ms: 10,
    };
    assert!(matches!(
        registry.decide_retry(&json!({}), &failure).await,
        RetryDecision::Retry { .. }
    ));
    assert_eq!(listed(&registry, "exponential-jitter")["calls"], 1);
}

/// Calls a strategy component directly with the given `dispatch` settings.
fn pick_with(
    component: &PluginComponent,
    settings: &Value,
    candidates: &[Candidate],
) -> Result<Pick, CallError> {
    component.pick(&DispatchCall {
        job: &job(&[]),
        candidates,
        settings: Some(settings),
    })
}

/// Inside a Tokio task, as the scheduler calls: the WASI a plugin gets must neither block nor
/// need a runtime of its own (a `block_on` in a write to stderr would panic here).
#[tokio::test]
async fn a_plugin_that_prints_and_looks_around_gets_an_empty_world_and_works() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let noisy = runtime.load(&wasm("noisy")).unwrap();
    let candidates = [worker("a", 0, &[]), worker("b", 0, &[])];
    for _ in 0..3 {
        // 400 lines of 100 bytes to stdout and stderr per call, all discarded.
        assert_eq!(
            pick_with(&noisy, &json!({}), &candidates).unwrap(),
            Pick::Worker(0)
        );
    }
    assert_eq!(noisy.instantiations(), 1, "no call failed");
    let report = match pick_with(&noisy, &json!({"noisy_mode": "report"}), &candidates) {
        Ok(Pick::NoWorker(report)) => report,
        other => panic!("{other:?}"),
    };
    for seen in [
        "env=0",
        "args=0",
        "stdin=0",
        "file=refused",
        "wall_after_2020=true",
        "monotonic=true",
        "hashmap=1",
    ] {
        assert!(report.contains(seen), "{seen} not in: {report}");
    }
}

#[test]
fn a_plugin_that_sleeps_exits_or_connects_fails_its_call_and_the_next_call_works() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let noisy = runtime.load(&wasm("noisy")).unwrap();
    let candidates = [worker("a", 0, &[])];
    let slept = pick_with(&noisy, &json!({"noisy_mode": "sleep"}), &candidates).unwrap_err();
    assert_eq!(slept.reason, FailureReason::Blocked, "{slept}");
    let exited = pick_with(&noisy, &json!({"noisy_mode": "exit"}), &candidates).unwrap_err();
    assert_eq!(exited.reason, FailureReason::Trap, "{exited}");
    assert!(exited.message.contains("exit"), "{exited}");
    // The standard library links the socket imports for `TcpStream`: they load, and trap.
    let connected = pick_with(&noisy, &json!({"noisy_mode": "net"}), &candidates).unwrap_err();
    assert_eq!(connected.reason, FailureReason::Trap, "{connected}");
    assert!(connected.message.contains("wasi:sockets"), "{connected}");
    assert_eq!(
        pick_with(&noisy, &json!({}), &candidates).unwrap(),
        Pick::Worker(0)
    );
    assert_eq!(
        noisy.instantiations(),
        4,
        "each failed call dropped its instance"
    );
}

// ---------------------------------------------------------------------------------------------
// The runtime: kinds, the cache, the instance pool
// ---------------------------------------------------------------------------------------------

#[test]
fn the_kind_and_version_come_from_the_exported_world() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    for (stem, kind) in [
        ("least_loaded", PluginKind::DispatchStrategy),
        ("round_robin", PluginKind::DispatchStrategy),
        ("power_of_two_choices", PluginKind::DispatchStrategy),
        ("label_affinity", PluginKind::DispatchStrategy),
        ("exponential_jitter", PluginKind::RetryPolicy),
        ("fixed", PluginKind::RetryPolicy),
        ("never", PluginKind::RetryPolicy),
        ("wrong_world", PluginKind::RetryPolicy),
    ] {
        let loaded = runtime.load(&wasm(stem)).unwrap();
        assert_eq!(loaded.kind(), kind, "{stem}");
        assert!(loaded.version().starts_with("0.2."), "{stem}");
    }
}

/// The built-in `cel` is a step condition that evaluates templates too; a condition plugin
/// built against `coretex:plugin@0.2.0`, before 0.2.1 added `expression`, still loads and answers
/// on this host (wit/README.md: the versions), and is not asked for templates.
#[test]
fn conditions_built_against_0_2_0_load_beside_the_expression_language() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let cel = runtime.load(&wasm("cel")).unwrap();
    assert_eq!(cel.kind(), PluginKind::StepCondition);
    assert!(cel.evaluates_expressions());
    let scope = [("input", r#"{"n": 2}"#)];
    assert_eq!(
        cel.evaluate_expression("input.n * 2", &scope).unwrap(),
        Ok("4".into())
    );

    let legacy = runtime.load(&wasm("legacy_condition")).unwrap();
    assert_eq!(legacy.kind(), PluginKind::StepCondition);
    assert_eq!(legacy.version(), "0.2.0");
    assert!(!legacy.evaluates_expressions());
    assert_eq!(legacy.evaluate_condition("true", "{}").unwrap(), Ok(true));
    assert_eq!(legacy.compile_condition("anything").unwrap(), Ok(()));
    let e = legacy.evaluate_expression("true", &scope).unwrap_err();
    assert_eq!(e.reason, FailureReason::WrongKind, "{e}");
}

#[test]
fn bytes_that_are_not_a_component_are_refused_with_the_reason() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let err = runtime.load(b"not wasm at all").err().unwrap();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}

#[test]
fn a_second_load_of_the_same_bytes_comes_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = wasm("round_robin");
    let first = PluginRuntime::new(&settings(cache.path())).unwrap();
    let loaded = first.load(&bytes).unwrap();
    assert!(!loaded.from_cache());
    assert_eq!(first.compiles(), 1);
    assert!(first.cache_path(&bytes).unwrap().exists());
    // A restart: a new engine over the same cache dir compiles nothing.
    let second = PluginRuntime::new(&settings(cache.path())).unwrap();
    let again = second.load(&bytes).unwrap();
    assert!(again.from_cache());
    assert_eq!(second.compiles(), 0);
    assert_eq!(again.hash(), loaded.hash());
}

/// Loading a cached artifact runs native code: one from a directory or file that someone else
/// could have written is never loaded, the component is compiled in memory instead.
#[test]
fn a_cache_that_others_can_write_is_not_loaded_from() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let bytes = wasm("round_robin");
    let first = PluginRuntime::new(&settings(cache.path())).unwrap();
    first.load(&bytes).unwrap();
    let artifact = first.cache_path(&bytes).unwrap();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };

    chmod(cache.path(), 0o777);
    let open_dir = PluginRuntime::new(&settings(cache.path())).unwrap();
    let loaded = open_dir.load(&bytes).unwrap();
    assert!(
        !loaded.from_cache(),
        "a world-writable cache dir is not read"
    );
    assert_eq!(open_dir.compiles(), 1);

    chmod(cache.path(), 0o700);
    chmod(&artifact, 0o666);
    let open_file = PluginRuntime::new(&settings(cache.path())).unwrap();
    assert!(
        !open_file.load(&bytes).unwrap().from_cache(),
        "nor a world-writable artifact"
    );
    assert_eq!(open_file.compiles(), 1);

    // Compiled again into the private dir, the artifact is the runtime's own again.
    let private = PluginRuntime::new(&settings(cache.path())).unwrap();
    assert!(private.load(&bytes).unwrap().from_cache());
}

/// The default cache dir is the user's own, never the shared temporary directory.
#[test]
fn a_fresh_cache_dir_is_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("coretex").join("plugins");
    PluginRuntime::new(&settings(&dir)).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    if let Some(default) = coretex::plugins::default_cache_dir() {
        assert!(
            !default.starts_with(std::env::temp_dir()),
            "{}",
            default.display()
        );
    }
}

#[test]
fn calls_reuse_a_warm_instance_and_recycle_it_after_n_calls() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&PluginSettings {
        recycle_after: 10,
        ..settings(cache.path())
    })
    .unwrap();
    let rr = runtime.load(&wasm("round_robin")).unwrap();
    assert_eq!(rr.instantiations(), 1, "instantiated once at load");
    let candidates = [
        worker("a", 0, &[]),
        worker("b", 0, &[]),
        worker("c", 0, &[]),
    ];
    let picks: Vec<Pick> = (0..6).map(|_| pick(&rr, &candidates).unwrap()).collect();
    // One warm instance keeps the turn between calls.
    assert_eq!(
        picks,
        [0, 1, 2, 0, 1, 2].map(Pick::Worker).to_vec(),
        "round-robin keeps its turn in the warm instance"
    );
    assert_eq!(rr.instantiations(), 1);
    for _ in 0..20 {
        pick(&rr, &candidates).unwrap();
    }
    // 1 + 26 calls at 10 per instance: the first instance served 10, then two fresh ones.
    assert_eq!(rr.instantiations(), 3);
}

#[test]
fn a_failed_call_drops_its_instance() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let trap = runtime.load(&wasm("trap")).unwrap();
    for _ in 0..2 {
        let err = pick(&trap, &[worker("a", 0, &[])]).unwrap_err();
        assert_eq!(err.reason, FailureReason::Trap);
    }
    assert_eq!(
        trap.instantiations(),
        2,
        "the trapped instance was not reused"
    );
}

#[test]
fn labels_reach_a_strategy_through_the_dispatch_context() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(
        settings(cache.path()),
        &[("label-affinity", "label_affinity")],
    );
    let candidates = [
        worker("plain", 0, &[]),
        worker("gpu", 3, &[("gpu", "a100")]),
    ];
    let pick = registry
        .strategy_for(&strategy_config("label-affinity"))
        .pick(&job(&[("gpu", "a100")]), &candidates)
        .unwrap();
    assert_eq!(
        pick,
        Pick::Worker(1),
        "the worker with the job's label wins"
    );
    assert_eq!(listed(&registry, "label-affinity")["failures"], 0);
}

/// A pick's answer carries no string; a `no-worker` reason or an error message comes back by a
/// second call (`message`), and reaches the host whole.
#[test]
fn a_reason_and_an_error_message_come_back_from_the_plugin() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let least_loaded = runtime.load(&wasm("least_loaded")).unwrap();
    let overloaded = [worker("a", 10, &[]), worker("b", 9, &[])];
    assert_eq!(
        pick(&least_loaded, &overloaded).unwrap(),
        Pick::NoWorker("all 2 eligible workers are overloaded".into())
    );
    assert_eq!(
        pick(&least_loaded, &[worker("a", 0, &[])]).unwrap(),
        Pick::Worker(0),
        "and the instance goes on picking"
    );
    let affinity = runtime.load(&wasm("label_affinity")).unwrap();
    let err = pick_with(
        &affinity,
        &json!({"label_weights": ["not", "a", "map"]}),
        &[worker("a", 0, &[])],
    )
    .unwrap_err();
    assert_eq!(err.reason, FailureReason::PluginError, "{err}");
    assert!(err.message.contains("label_weights"), "{err}");
}

/// One to three candidates cross as arguments (`pick-few`), more as one list (`pick`): a
/// strategy sees the same candidates either way — every field, the preferred one, each index.
#[test]
fn few_and_many_candidates_reach_a_strategy_alike() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(&settings(cache.path())).unwrap();
    let least_loaded = runtime.load(&wasm("least_loaded")).unwrap();
    for n in 1..=6 {
        for lightest in 0..n {
            let mut cs: Vec<Candidate> = (0..n).map(|i| worker(&format!("w{i}"), 4, &[])).collect();
            cs[lightest].active_jobs = 3;
            assert_eq!(
                pick(&least_loaded, &cs).unwrap(),
                Pick::Worker(lightest),
                "{n} candidates, the lightest at {lightest}"
            );
            // The CPU load counts (a fraction of a job) and the slots (9 of 10 busy is
            // overloaded): make the lightest the busiest CPU, then full.
            cs[lightest].cpu_load = 99.0;
            if n > 1 {
                assert_ne!(pick(&least_loaded, &cs).unwrap(), Pick::Worker(lightest));
            }
            cs[lightest].cpu_load = 0.0;
            cs[lightest].active_jobs = 9;
            if n > 1 {
                assert_ne!(pick(&least_loaded, &cs).unwrap(), Pick::Worker(lightest));
            }
            // A preferred worker that is not overloaded wins over lighter ones.
            cs[lightest].active_jobs = 7;
            cs[lightest].preferred = true;
            assert_eq!(
                pick(&least_loaded, &cs).unwrap(),
                Pick::Worker(lightest),
                "{n} candidates, preferred at {lightest}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retry policies and conditions
// ---------------------------------------------------------------------------------------------

fn failed_job(attempt: u32) -> Job {
    let mut spec = job(&[]);
    spec.attempt = attempt;
    let mut v = serde_json::to_value(&spec).unwrap();
    v["state"] = json!("FAILED");
    v["updated_at"] = v["created_at"].clone();
    serde_json::from_value(v).unwrap()
}

fn decide(registry: &PluginRegistry, config: &Value, attempt: u32) -> RetryDecision {
    decide_for(registry, config, &failed_job(attempt))
}

fn decide_for(registry: &PluginRegistry, config: &Value, job: &Job) -> RetryDecision {
    let error = JobError::new("boom", "it broke");
    registry.retry_for(config).decide(&Failure {
        job,
        outcome: JobState::Failed,
        error: Some(&error),
        elapsed_ms: 10,
    })
}

#[test]
fn without_a_configured_policy_failures_back_off_exponentially_for_three_runs() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(
        settings(cache.path()),
        &[("exponential-jitter", "exponential_jitter")],
    );
    let no_config = json!({});
    assert_eq!(registry.retry_for(&no_config).name(), "exponential-jitter");
    // Backoff 1 s, then 2 s, each with equal jitter (half of it, plus up to the other half).
    for (attempt, range) in [(1, 500..=1_000), (2, 1_000..=2_000)] {
        match decide(&registry, &no_config, attempt) {
            RetryDecision::Retry { after_ms } => {
                assert!(range.contains(&after_ms), "attempt {attempt}: {after_ms}")
            }
            other => panic!("attempt {attempt} of 3 should retry: {other:?}"),
        }
    }
    assert!(matches!(
        decide(&registry, &no_config, 3),
        RetryDecision::DeadLetter { .. }
    ));
    // The config's settings reach the default policy without naming it.
    let one_run = json!({"retry": {"max_attempts": 1}});
    assert!(matches!(
        decide(&registry, &one_run, 1),
        RetryDecision::DeadLetter { .. }
    ));
    assert_eq!(listed(&registry, "exponential-jitter")["calls"], 4);
}

#[test]
fn a_workflow_step_job_is_left_to_the_engine_unless_a_policy_is_configured() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(
        settings(cache.path()),
        &[("exponential-jitter", "exponential_jitter")],
    );
    let mut step_job = failed_job(1);
    step_job.spec.run_id = Some("run-1".into());
    step_job.spec.step_id = Some("build".into());
    match decide_for(&registry, &json!({}), &step_job) {
        RetryDecision::DeadLetter { reason } => assert!(reason.contains("never"), "{reason}"),
        other => panic!("the workflow engine retries steps, not the scheduler: {other:?}"),
    }
    let configured = json!({"retry": {"policy": "exponential-jitter"}});
    assert!(matches!(
        decide_for(&registry, &configured, &step_job),
        RetryDecision::Retry { .. }
    ));
}

#[test]
fn a_retry_policy_plugin_decides_from_the_retry_settings() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(
        settings(cache.path()),
        &[("exponential-jitter", "exponential_jitter")],
    );
    let config = json!({"retry": {"policy": "exponential-jitter", "max_attempts": 3,
        "initial_backoff_ms": 100, "max_backoff_ms": 1000}});
    match decide(&registry, &config, 1) {
        RetryDecision::Retry { after_ms } => assert!(after_ms <= 1000, "{after_ms}"),
        other => panic!("attempt 1 of 3 should retry: {other:?}"),
    }
    assert!(matches!(
        decide(&registry, &config, 3),
        RetryDecision::DeadLetter { .. }
    ));
}

#[test]
fn a_failing_retry_policy_dead_letters_instead() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(settings(cache.path()), &[("trap", "trap")]);
    match decide(&registry, &json!({"retry": {"policy": "trap"}}), 1) {
        RetryDecision::DeadLetter { reason } => {
            assert!(reason.contains("retry policy `trap` failed"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cel_checks_and_evaluates_step_conditions() {
    let cache = tempfile::tempdir().unwrap();
    let registry = registry_with(settings(cache.path()), &[("cel", "cel")]);
    let cel = registry.conditions_for("default", &json!({}));
    cel.compile("input.count > 1 && steps.build.status == 'succeeded'")
        .unwrap();
    assert!(cel.compile("input.count >").is_err());
    let scope = json!({"input": {"count": 2}, "steps": {"build": {"status": "succeeded"}}});
    assert_eq!(
        cel.evaluate(
            "input.count > 1 && steps.build.status == 'succeeded'",
            &scope
        ),
        Ok(true)
    );
    assert_eq!(cel.evaluate("input.count > 5", &scope), Ok(false));
}

// ---------------------------------------------------------------------------------------------
// The plugin dir
// ---------------------------------------------------------------------------------------------

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_millis(1500);
    while !done() {
        assert!(Instant::now() < until, "not within 1.5 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_plugin_dir_is_followed_live() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with(settings(cache.path()), &[]);
    let mut watcher = registry.watch_dir(dir.path().into());
    watcher.scan().await;
    let watching = tokio::spawn(watcher.run(Duration::from_millis(500)));
    let file = dir.path().join("my_strategy.wasm");

    // A new file is live within a second, under its dashed name.
    std::fs::write(&file, wasm("round_robin")).unwrap();
    eventually("the dropped file loads", || {
        registry.get("my-strategy").is_some()
    })
    .await;
    let first = registry.get("my-strategy").unwrap();
    assert_eq!(first.kind(), PluginKind::DispatchStrategy);

    // Replacing it swaps atomically; a holder of the old one keeps a working plugin.
    std::fs::write(&file, wasm("least_loaded")).unwrap();
    eventually("the replacement loads", || {
        registry
            .get("my-strategy")
            .is_some_and(|p| p.component().hash() != first.component().hash())
    })
    .await;
    assert_eq!(
        pick(first.component(), &[worker("a", 0, &[])]).unwrap(),
        Pick::Worker(0)
    );
    let second = registry.get("my-strategy").unwrap();

    // A broken file is reported, and the previous version stays in service.
    std::fs::write(&file, b"\0asm broken").unwrap();
    eventually("the broken file is reported", || {
        !listed(&registry, "my-strategy")["load_error"].is_null()
    })
    .await;
    let info = listed(&registry, "my-strategy");
    assert_eq!(info["status"], "loaded", "{info}");
    assert_eq!(info["hash"], second.component().hash(), "{info}");

    // A removed file is unloaded.
    std::fs::remove_file(&file).unwrap();
    eventually("the removed file unloads", || {
        registry.get("my-strategy").is_none()
    })
    .await;
    watching.abort();
}

// ---------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------

async fn start_with_demo_workers(
    backend: Backend,
    call_deadline: Duration,
) -> (coretex::serve::Running, Api) {
    let mut opts = common::options(backend);
    opts.demo_workers = true;
    opts.plugins.call_deadline = call_deadline;
    let running = common::start(opts).await;
    let api = Api::new(running.addr);
    api.wait_workers(2, Duration::from_secs(10)).await;
    (running, api)
}

async fn set_strategy(api: &Api, name: &str) {
    let (status, v) = api
        .post(
            "/api/v1/config",
            json!({"scope": "system", "data": strategy_config(name)}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

/// Runs `n` echo jobs one after another; the workers that ran them.
async fn run_jobs(api: &Api, n: usize) -> Vec<String> {
    let mut workers = Vec::new();
    for i in 0..n {
        let id = api
            .submit(json!({"topic": coretex::serve::DEMO_TOPIC, "payload": {"i": i}}))
            .await;
        let done = api
            .wait_state(&id, "SUCCEEDED", Duration::from_secs(10))
            .await;
        workers.push(done["worker_id"].as_str().unwrap().to_string());
    }
    workers
}

#[tokio::test]
async fn round_robin_from_config_spreads_jobs_across_two_workers() {
    let (running, api) = start_with_demo_workers(Backend::Embedded, Duration::from_secs(1)).await;
    set_strategy(&api, "round-robin").await;
    let workers = run_jobs(&api, 6).await;
    let used: HashSet<&String> = workers.iter().collect();
    assert_eq!(used.len(), 2, "both workers took jobs: {workers:?}");
    let row = api.plugin_row("round-robin").await;
    assert_eq!(row["source"], "builtin", "{row}");
    assert!(
        row["calls"].as_u64().unwrap() >= 6,
        "round-robin decided: {row}"
    );
    assert_eq!(row["failures"], 0, "{row}");
    let (_, status) = api.get("/api/v1/status").await;
    assert!(
        status["plugins"].as_array().unwrap().len() >= 8,
        "the status lists the plugins: {status}"
    );
    running.stop.cancel();
}

async fn put_plugin(api: &Api, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let r = api
        .http
        .put(format!("{}/api/v1/plugins/{name}", api.base))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_uploaded_plugin_is_stored_and_used() {
    // Long enough that `my-rr` never misses it on a busy test machine, short enough that the
    // looping upload below is stopped quickly.
    let (running, api) =
        start_with_demo_workers(Backend::Embedded, Duration::from_millis(200)).await;
    let (status, v) = put_plugin(&api, "my-rr", wasm("round_robin")).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["source"], "api", "{v}");
    assert_eq!(v["kind"], "dispatch-strategy", "{v}");
    let stored = running.scheduler.store.plugin_list().await.unwrap();
    assert!(
        stored.iter().any(|p| p.name == "my-rr"),
        "kept in the store"
    );

    set_strategy(&api, "my-rr").await;
    let workers = run_jobs(&api, 4).await;
    assert_eq!(
        workers.iter().collect::<HashSet<_>>().len(),
        2,
        "{workers:?}"
    );
    assert!(api.plugin_row("my-rr").await["calls"].as_u64().unwrap() >= 4);

    // Bad uploads are refused with the reason and change nothing.
    let (status, v) = put_plugin(&api, "broken", b"nope".to_vec()).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "body", "{v}");
    let (status, v) = put_plugin(&api, "Bad_Name", wasm("round_robin")).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "name", "{v}");

    // A hostile upload cannot stop jobs: they fall back and succeed.
    assert_eq!(put_plugin(&api, "spin", wasm("loop_forever")).await.0, 201);
    set_strategy(&api, "spin").await;
    assert_eq!(run_jobs(&api, 4).await.len(), 4);
    let row = api.plugin_row("spin").await;
    assert_eq!(row["breaker"], "open", "{row}");
    assert_eq!(row["last_failure"]["reason"], "deadline", "{row}");
    // And in the metrics: the failures by reason, the breaker's state change.
    let metrics = api.metrics().await;
    for series in [
        r#"coretex_plugin_failures_total{plugin="spin",reason="deadline"}"#,
        r#"coretex_breaker_transitions_total{breaker="plugin:spin",to="open"}"#,
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }

    // Deleting removes it from the store and from service; built-ins cannot be deleted.
    assert_eq!(api.delete("/api/v1/plugins/my-rr").await, 204);
    assert!(api.plugin_row("my-rr").await.is_null());
    assert_eq!(api.delete("/api/v1/plugins/my-rr").await, 404);
    assert_eq!(api.delete("/api/v1/plugins/round-robin").await, 409);
    running.stop.cancel();
}

#[tokio::test]
async fn an_upload_reaches_every_replica() {
    let a_opts = common::options(Backend::Real);
    let mut b_opts = a_opts.clone();
    b_opts.listen = "127.0.0.1:0".parse().unwrap();
    let a = common::start(a_opts).await;
    let b = common::start(b_opts).await;
    let (api_a, api_b) = (Api::new(a.addr), Api::new(b.addr));
    let (status, v) = put_plugin(&api_a, "shared-rr", wasm("round_robin")).await;
    assert_eq!(status, 201, "{v}");
    let until = Instant::now() + Duration::from_secs(3);
    while api_b.plugin_row("shared-rr").await.is_null() {
        assert!(Instant::now() < until, "replica b never loaded the upload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api_a.delete("/api/v1/plugins/shared-rr").await, 204);
    let until = Instant::now() + Duration::from_secs(3);
    while !api_b.plugin_row("shared-rr").await.is_null() {
        assert!(Instant::now() < until, "replica b kept a deleted upload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop.cancel();
    b.stop.cancel();
}
