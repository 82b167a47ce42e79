//! The contracts of the plugin kinds the services call, without the runtime behind them: which
//! kinds there are, and the evaluators the workflow definitions and engine use. The scheduler's
//! contracts are [`crate::strategy`] and [`crate::retry`]; the wasmtime side lives in the host's
//! `plugins` module, which implements them all.

use std::time::Duration;

use serde::Serialize;

use crate::workflow::expr::Scope;

/// The three kinds of plugin, one per WIT world; a component's kind is read from what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// World `dispatch-strategy`: exports `coretex:plugin/dispatch`.
    DispatchStrategy,
    /// World `step-condition`: exports `coretex:plugin/condition`.
    StepCondition,
    /// World `retry-policy`: exports `coretex:plugin/retry`.
    RetryPolicy,
}

impl PluginKind {
    pub const ALL: [PluginKind; 3] = [
        PluginKind::DispatchStrategy,
        PluginKind::StepCondition,
        PluginKind::RetryPolicy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            PluginKind::DispatchStrategy => "dispatch-strategy",
            PluginKind::StepCondition => "step-condition",
            PluginKind::RetryPolicy => "retry-policy",
        }
    }

    /// How long a call of this kind should take when the config says nothing. A strategy over a
    /// thousand candidates takes 5 µs and a retry policy under one; a millisecond is two hundred
    /// times that, and a tenth of their deadline. A step condition is a CEL program whose first
    /// parse on a fresh instance can take milliseconds on a busy machine: half its deadline.
    pub const fn default_latency_budget(self) -> Duration {
        match self {
            PluginKind::DispatchStrategy | PluginKind::RetryPolicy => Duration::from_millis(1),
            PluginKind::StepCondition => Duration::from_millis(50),
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a step condition when a workflow is saved and evaluates it when a step may run. The
/// workflow engine calls it; the host's `PluginConditions` answers through the configured evaluator
/// plugin (the built-in one is CEL).
pub trait ConditionEvaluator: Send + Sync {
    /// Whether `expression` is well formed (an error names what is wrong).
    fn compile(&self, expression: &str) -> Result<(), String>;
    /// Evaluates `expression` against `scope` (`input`, `ctx`, `steps`, and `item`/`index` inside
    /// a `for_each`); a non-boolean result is an error.
    fn evaluate(&self, expression: &str, scope: &serde_json::Value) -> Result<bool, String>;
}

/// Evaluates the expressions of workflow steps that yield values — `${…}` templates and
/// `for_each` — and checks their syntax when a workflow is saved. the host's `PluginExpressions` answers
/// through the built-in `cel` component, in its sandbox.
pub trait ExpressionEvaluator: Send + Sync {
    /// Whether `expression` is well formed (an error names it and what is wrong).
    fn check(&self, expression: &str) -> Result<(), String>;
    /// The value of `expression` with the variables of `scope`; an error names the expression,
    /// and the limit it ran into if it did.
    fn evaluate(&self, expression: &str, scope: &Scope) -> Result<serde_json::Value, String>;
}
