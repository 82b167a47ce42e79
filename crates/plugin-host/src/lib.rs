//! Plugins (SPEC §9): the decisions users most want to change — which worker gets a job, whether
//! a failed job runs again, whether a workflow step runs — made by WebAssembly components.
//!
//! * [`runtime`] is the one module that touches wasmtime: the engine and its knobs, the on-disk
//!   cache of compiled components, the sandbox (epoch deadline, memory cap, empty WASI) and the
//!   pool of warm instances.
//! * [`registry`] keeps the loaded plugins by name — built in, from `--plugin-dir`, or uploaded
//!   through the API and kept in the store (the host's `plugins::uploads` keeps those in step
//!   with the store) — and swaps a replaced one atomically.
//! * [`adapters`] puts a plugin behind the host's own traits
//!   ([`DispatchStrategy`](crate::strategy::DispatchStrategy),
//!   [`RetryPolicy`](crate::retry::RetryPolicy), [`ConditionEvaluator`]): every call is
//!   guarded by the plugin's circuit breaker, counted, and falls back to the native default when
//!   the plugin fails, so a plugin can slow one decision down by its deadline but never stop a job.
//!   And the built-in `cel` behind [`ExpressionEvaluator`], for the templates and `for_each` of
//!   every workflow (no breaker there: a failing expression fails its own step).
//!
//! * [`threads`] is where the scheduler's calls run: threads of their own, so that a slow
//!   plugin holds up neither the HTTP server nor results and heartbeats.
//! * [`breaker`]: the circuit breakers, per tenant, that guard every plugin call (the host's
//!   safety gate uses the same ones).
//!
//! Which plugin decides is config (any scope): `{"dispatch": {"strategy": "round-robin"}}`,
//! `{"retry": {"policy": "exponential-jitter"}}`, `{"workflow": {"condition_evaluator": "cel"}}`;
//! and so is how long a call of each kind should take, its latency budget
//! (`{"plugins": {"latency_budget_ms": {"dispatch-strategy": 1}}}`, see [`latency_budget`]).
//!
//! This is the `coretex-plugin-host` crate, the only one in the workspace that depends on
//! wasmtime (`tests/layering.rs` fails if another does). It depends on the domain
//! (`coretex-core`) alone; the host re-exports it as `coretex::plugins`, beside what needs the
//! store and the bus (uploads) and the plugins built into the binary.

// Nothing a caller sends may panic the host: outside tests, failures are errors, not unwinds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod adapters;
pub mod breaker;
pub mod registry;
pub mod runtime;
pub mod threads;
mod wasi_shim;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

// The domain modules, under the paths the plugin host names them by (`crate::strategy`, …).
use coretex_core::{job, retry, strategy, time, workflow};

pub use adapters::{PluginConditions, PluginExpressions, RetryChoice, StrategyChoice};
pub use coretex_core::plugin::{ConditionEvaluator, ExpressionEvaluator, PluginKind};
pub use registry::{PluginInfo, PluginRegistry, Source};

/// The config key that holds the latency budget of each kind (`{"dispatch-strategy": 1, …}`).
pub const LATENCY_BUDGET_KEY: &str = "latency_budget_ms";

/// How long a call of `kind` should take for the jobs of an effective config:
/// `plugins.latency_budget_ms.<kind>` in milliseconds, else the kind's
/// [default](PluginKind::default_latency_budget). A plugin whose calls keep taking longer is
/// treated by its breaker as failing ([`registry::Plugin::call`]).
pub fn latency_budget(effective: &serde_json::Value, kind: PluginKind) -> Duration {
    effective
        .get("plugins")
        .and_then(|p| p.get(LATENCY_BUDGET_KEY)?.get(kind.as_str())?.as_u64())
        .map_or(kind.default_latency_budget(), Duration::from_millis)
}

/// Why a plugin call failed: the `reason` label of `coretex_plugin_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Ran past its epoch deadline.
    Deadline,
    /// Tried to grow its memory past the cap.
    Memory,
    /// Trapped (a panic, `unreachable`, a bad memory access, a stack overflow, …).
    Trap,
    /// Answered with a candidate index outside the candidates.
    OutOfRange,
    /// Answered with its own `plugin-error`.
    PluginError,
    /// Waited on something that is not ready (a clock: the sandbox has nothing else to wait
    /// for, and a call does not wait).
    Blocked,
    /// Is not of the kind the config asked for (e.g. a retry policy named as a strategy).
    WrongKind,
    /// No plugin of that name is loaded.
    NotLoaded,
    /// The plugin's circuit breaker is open: not called at all.
    BreakerOpen,
    /// Answered, but took longer than the latency budget of its kind: the answer is used, and
    /// the breaker counts the call as a failure.
    OverBudget,
}

impl FailureReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::Deadline => "deadline",
            FailureReason::Memory => "memory",
            FailureReason::Trap => "trap",
            FailureReason::OutOfRange => "out_of_range",
            FailureReason::PluginError => "plugin_error",
            FailureReason::Blocked => "blocked",
            FailureReason::WrongKind => "wrong_kind",
            FailureReason::NotLoaded => "not_loaded",
            FailureReason::BreakerOpen => "breaker_open",
            FailureReason::OverBudget => "over_budget",
        }
    }
}

/// A failed plugin call: why, and what the sandbox said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", reason.as_str())]
pub struct CallError {
    pub reason: FailureReason,
    pub message: String,
}

impl CallError {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        CallError {
            reason,
            message: message.into(),
        }
    }
}

/// Why a component could not be loaded as a plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid component: {0}")]
    Invalid(String),
    #[error("not a Coretex plugin: {0}")]
    NotAPlugin(String),
    #[error("cannot be linked: {0}")]
    Link(String),
    #[error("cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("invalid plugin name `{0}`: use lowercase letters, digits and '-' (at most 64)")]
    Name(String),
}

/// How plugins run: parsed once by `coretex serve`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Compiled components, by content hash; `None` compiles every load in memory. Used only
    /// while it is private to this user (`plugins::runtime`, "The cache").
    pub cache_dir: Option<PathBuf>,
    /// How long one call may run before it is interrupted (dispatch and retry calls: the
    /// scheduler's hot path).
    pub call_deadline: Duration,
    /// The same for a workflow's expressions — a step condition, a template, a `for_each` — which
    /// are evaluated per step rather than per job, and are tenants' code: a CEL program's first
    /// parse alone can take a few milliseconds on a busy machine, and an expression that runs
    /// past this fails its step naming the limit.
    pub expression_deadline: Duration,
    /// The most linear memory one instance may have.
    pub memory_cap: usize,
    /// An instance is recycled after this many calls.
    pub recycle_after: u64,
    /// How often the plugin dir is scanned.
    pub poll_interval: Duration,
    /// How many threads the scheduler's plugin calls run on ([`threads`]).
    pub threads: usize,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            cache_dir: default_cache_dir(),
            call_deadline: Duration::from_millis(10),
            expression_deadline: Duration::from_millis(100),
            memory_cap: 32 << 20,
            recycle_after: 10_000,
            poll_interval: Duration::from_millis(500),
            threads: default_threads(),
        }
    }
}

/// Half the cores, at least one: on two cores, one thread beside the runtime's.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .max(1)
}

/// `$XDG_CACHE_HOME/coretex/plugins`, else `~/.cache/coretex/plugins`: the user's own, never
/// inside a build's `target` (a `cargo clean` costs no recompile, a restart finds its compiled
/// plugins) and never a shared temporary directory, where another user could plant native code
/// for the host to load. `None` without a home (every load is compiled in memory).
pub fn default_cache_dir() -> Option<PathBuf> {
    // Relative paths are to be ignored (XDG Base Directory Specification).
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| Some(absolute(std::env::var_os("HOME")?)?.join(".cache")))?;
    Some(base.join("coretex").join("plugins"))
}

/// Plugin names are file stems with `_` read as `-`: `round_robin.wasm` is `round-robin`.
pub fn name_from_stem(stem: &str) -> String {
    stem.replace('_', "-")
}

/// A name a plugin may have: it is a config value, a store key and a URL segment.
pub fn check_name(name: &str) -> Result<(), LoadError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LoadError::Name(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_become_dashed_names() {
        assert_eq!(
            name_from_stem("power_of_two_choices"),
            "power-of-two-choices"
        );
        assert!(check_name("round-robin").is_ok());
        assert!(check_name("Round").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn a_latency_budget_comes_from_the_config_else_the_kinds_default() {
        let none = serde_json::json!({});
        assert_eq!(
            latency_budget(&none, PluginKind::DispatchStrategy),
            Duration::from_millis(1)
        );
        assert_eq!(
            latency_budget(&none, PluginKind::StepCondition),
            Duration::from_millis(50)
        );
        let set = serde_json::json!({"plugins": {"latency_budget_ms": {"retry-policy": 7}}});
        assert_eq!(
            latency_budget(&set, PluginKind::RetryPolicy),
            Duration::from_millis(7)
        );
        assert_eq!(
            latency_budget(&set, PluginKind::DispatchStrategy),
            Duration::from_millis(1)
        );
    }
}
