//! Plugins behind the host's traits. Each adapter is resolved per job from the effective config
//! and borrows it for the one decision; every call goes through the plugin's breaker for the
//! job's tenant ([`Plugin::call`]: one tenant's settings that make a plugin fail open only that
//! tenant's breaker) and, when it fails for any reason, the native default decides instead:
//! [`LeastLoaded`](crate::scheduler::strategy::LeastLoaded) for dispatch, dead-lettering (the job
//! waits in the DLQ, whole and retryable) for retry. Nothing a plugin does stops a job.
//!
//! The one exception is [`PluginExpressions`], the built-in `cel` evaluating workflow templates and
//! `for_each`: it is the workflow language rather than a pluggable decision, so it has no
//! default to fall back to and no breaker — a template that fails, fails its own step.

use std::sync::Arc;

use serde_json::Value;

use super::registry::{Plugin, PluginRegistry, Source};
use super::runtime::{DispatchCall, PluginComponent, RetryCall};
use super::{CallError, ConditionEvaluator, ExpressionEvaluator, FailureReason};
use crate::job::JobSpec;
use crate::scheduler::registry::Candidate;
use crate::scheduler::retry::{DeadLetterAtOnce, Failure, RetryDecision, RetryPolicy};
use crate::scheduler::strategy::{DispatchStrategy, Pick, StrategyError};
use crate::workflow::expr::Scope;

/// The retry policy when the config names none: backoff with jitter, from the `retry` object's
/// `initial_backoff_ms`, `multiplier`, `max_backoff_ms` and `max_attempts` (the plugin's own
/// defaults when absent: 1 s, ×2, 60 s, 3 runs in all).
///
/// Not for the jobs of workflow steps, though: the workflow engine retries a failed step itself,
/// by the step's `retry` settings (SPEC §10), so a second retry of the same job by the
/// scheduler would run the step twice. Their jobs are dead-lettered at once unless the config
/// names a policy.
pub const DEFAULT_RETRY_POLICY: &str = "exponential-jitter";

/// The condition evaluator when the config names none.
pub const DEFAULT_CONDITION_EVALUATOR: &str = "cel";

/// Which plugin a config key names.
enum Selected {
    /// The key is absent: the native default decides.
    Native,
    Plugin(Arc<Plugin>),
    /// The key names a plugin that is not loaded (counted and logged when selected).
    Missing {
        name: String,
        error: CallError,
    },
}

impl PluginRegistry {
    fn select(&self, name: Option<&str>) -> Selected {
        match name {
            None => Selected::Native,
            Some(name) => match self.get(name) {
                Some(p) => Selected::Plugin(p),
                None => Selected::Missing {
                    name: name.to_string(),
                    error: self.not_loaded(name),
                },
            },
        }
    }

    /// Counts a configured plugin that is not loaded, and logs it the first time.
    fn not_loaded(&self, name: &str) -> CallError {
        metrics::counter!("coretex_plugin_failures_total", "plugin" => name.to_string(),
            "reason" => FailureReason::NotLoaded.as_str())
        .increment(1);
        if self.missing_reported.lock().insert(name.to_string()) {
            tracing::warn!(
                plugin = name,
                "the config names a plugin that is not loaded; the built-in default decides"
            );
        }
        CallError::new(
            FailureReason::NotLoaded,
            format!("no plugin `{name}` is loaded"),
        )
    }

    /// The dispatch strategy `effective.dispatch.strategy` names (native least-loaded if none).
    pub fn strategy_for<'a>(&'a self, effective: &'a Value) -> StrategyChoice<'a> {
        let dispatch = effective.get("dispatch");
        StrategyChoice {
            configured: dispatch.and_then(|d| d.get("strategy")?.as_str()),
            settings: dispatch,
            registry: self,
        }
    }

    /// The retry policy `effective.retry.policy` names (else [`DEFAULT_RETRY_POLICY`]), with the
    /// `retry` object's settings.
    pub fn retry_for<'a>(&'a self, effective: &'a Value) -> RetryChoice<'a> {
        let retry = effective.get("retry");
        RetryChoice {
            configured: retry.and_then(|r| r.get("policy")?.as_str()),
            settings: retry,
            registry: self,
        }
    }

    /// The condition evaluator `effective.workflow.condition_evaluator` names (`cel` if none),
    /// for the workflows of `tenant`.
    pub fn conditions_for(&self, tenant: &str, effective: &Value) -> PluginConditions {
        let name = effective
            .get("workflow")
            .and_then(|w| w.get("condition_evaluator")?.as_str())
            .unwrap_or(DEFAULT_CONDITION_EVALUATOR);
        PluginConditions {
            tenant: tenant.to_string(),
            name: name.to_string(),
            plugin: self.get(name).ok_or_else(|| self.not_loaded(name)),
        }
    }
}

/// The dispatch strategy of one job.
pub struct StrategyChoice<'a> {
    /// The plugin the config names; none: the native default.
    configured: Option<&'a str>,
    settings: Option<&'a Value>,
    registry: &'a PluginRegistry,
}

impl DispatchStrategy for StrategyChoice<'_> {
    fn name(&self) -> &str {
        self.configured
            .unwrap_or_else(|| self.registry.least_loaded.name())
    }

    fn pick(&self, job: &JobSpec, candidates: &[Candidate]) -> Result<Pick, StrategyError> {
        let call = DispatchCall {
            job,
            candidates,
            settings: self.settings,
        };
        let failed = self.configured.map(|name| {
            self.registry
                .with_plugin(name, |p| p.call(&job.tenant_id, |c| c.pick(&call)))
                .unwrap_or_else(|| Err(self.registry.not_loaded(name)))
        });
        let failed = match failed {
            None => None,
            Some(Ok(pick)) => return Ok(pick),
            Some(Err(e)) => Some(e),
        };
        let pick = self.registry.least_loaded.pick(job, candidates)?;
        if let Some(e) = failed {
            tracing::debug!(job_id = %job.id, strategy = self.name(), error = %e,
                "dispatched by the built-in least-loaded instead");
        }
        Ok(pick)
    }
}

/// The retry policy of one failed job.
pub struct RetryChoice<'a> {
    /// The policy the config names, if any.
    configured: Option<&'a str>,
    settings: Option<&'a Value>,
    registry: &'a PluginRegistry,
}

impl RetryChoice<'_> {
    fn setting_u64(&self, key: &str) -> Option<u64> {
        self.settings?.get(key)?.as_u64()
    }

    /// The policy that decides for `spec`: the configured one, else the default — which for the
    /// job of a workflow step is to leave retrying to the workflow engine.
    fn select(&self, spec: &JobSpec) -> Selected {
        match self.configured {
            Some(name) => self.registry.select(Some(name)),
            None if spec.step_id.is_some() => Selected::Native,
            None => self.registry.select(Some(DEFAULT_RETRY_POLICY)),
        }
    }
}

impl RetryPolicy for RetryChoice<'_> {
    fn name(&self) -> &str {
        self.configured.unwrap_or(DEFAULT_RETRY_POLICY)
    }

    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        let spec = &failure.job.spec;
        let plugin = match self.select(spec) {
            Selected::Native => return DeadLetterAtOnce.decide(failure),
            Selected::Plugin(p) => p,
            Selected::Missing { name, error } => return dead_letter_after(&name, &error, failure),
        };
        let call = RetryCall {
            topic: &spec.topic,
            attempt: spec.attempt,
            outcome: failure.outcome,
            error_code: failure.error.map_or("", |e| e.code.as_str()),
            error_message: failure.error.map_or("", |e| e.message.as_str()),
            elapsed_ms: failure.elapsed_ms,
            max_attempts: self
                .setting_u64("max_attempts")
                .and_then(|n| u32::try_from(n).ok()),
            initial_backoff_ms: self.setting_u64("initial_backoff_ms"),
            max_backoff_ms: self.setting_u64("max_backoff_ms"),
            multiplier: self.settings.and_then(|s| s.get("multiplier")?.as_f64()),
        };
        match plugin.call(&spec.tenant_id, |c| c.decide(&call)) {
            Ok(d) => d,
            Err(e) => dead_letter_after(plugin.name(), &e, failure),
        }
    }
}

/// The answer when a retry policy cannot give one: the DLQ, where the job waits whole for a
/// person (or a bulk retry) — never lost, never retried blindly.
fn dead_letter_after(policy: &str, e: &CallError, failure: &Failure<'_>) -> RetryDecision {
    RetryDecision::DeadLetter {
        reason: format!(
            "{} on attempt {}; retry policy `{policy}` failed ({e}), so the job was dead-lettered",
            failure.outcome, failure.job.spec.attempt
        ),
    }
}

/// The condition evaluator of one workflow, through its plugin, under its tenant's breaker.
pub struct PluginConditions {
    tenant: String,
    name: String,
    plugin: Result<Arc<Plugin>, CallError>,
}

impl PluginConditions {
    fn plugin(&self) -> Result<&Plugin, String> {
        self.plugin.as_deref().map_err(|e| self.failed(e.clone()))
    }

    fn failed(&self, e: CallError) -> String {
        format!("condition evaluator `{}` failed: {e}", self.name)
    }
}

impl PluginConditions {
    /// Calls the evaluator, once more on a fresh instance when the first call ran past its
    /// deadline. The deadline is wall-clock time, so a host starved of CPU (a busy machine) can
    /// miss it through no fault of the expression; conditions are pure, so a second call is
    /// safe, and an expression that really loops fails twice.
    fn call_pure<R>(
        &self,
        f: impl Fn(&super::runtime::PluginComponent) -> Result<R, CallError>,
    ) -> Result<R, String> {
        let plugin = self.plugin()?;
        match plugin.call(&self.tenant, &f) {
            Err(e) if e.reason == FailureReason::Deadline => plugin.call(&self.tenant, &f),
            other => other,
        }
        .map_err(|e| self.failed(e))
    }
}

impl ConditionEvaluator for PluginConditions {
    fn compile(&self, expression: &str) -> Result<(), String> {
        self.call_pure(|c| c.compile_condition(expression))?
    }

    fn evaluate(&self, expression: &str, scope: &Value) -> Result<bool, String> {
        let scope = scope.to_string();
        self.call_pure(|c| c.evaluate_condition(expression, &scope))?
    }
}

/// The plugin that evaluates every workflow's templates and `for_each`: the built-in `cel`,
/// whatever the config names for conditions — templates are the workflow's own language, not a
/// decision to plug, and an upload under the name does not change them.
pub const EXPRESSION_LANGUAGE: &str = "cel";

impl PluginRegistry {
    /// The evaluator of templates and `for_each`: the built-in [`EXPRESSION_LANGUAGE`].
    pub fn expressions(&self) -> PluginExpressions {
        PluginExpressions {
            plugin: self
                .loaded_from(EXPRESSION_LANGUAGE, Source::Builtin)
                .ok_or_else(|| {
                    CallError::new(
                        FailureReason::NotLoaded,
                        format!("the built-in `{EXPRESSION_LANGUAGE}` is not loaded"),
                    )
                }),
        }
    }
}

/// Templates and `for_each`, through the built-in expression language in its sandbox.
pub struct PluginExpressions {
    plugin: Result<Arc<Plugin>, CallError>,
}

/// How much of an expression an error quotes.
const QUOTED: usize = 200;

impl PluginExpressions {
    /// Calls the component directly, not through the plugin's breaker: an expression that fails
    /// is its workflow's fault, not the plugin's, and with no default to fall back to, an open
    /// breaker would only fail every other workflow's templates with it. Once more on a fresh
    /// instance when the first call ran past its deadline, as for conditions
    /// ([`PluginConditions`]): the deadline is wall-clock time, which a busy machine eats.
    fn call<R>(
        &self,
        source: &str,
        f: impl Fn(&PluginComponent) -> Result<Result<R, String>, CallError>,
    ) -> Result<R, String> {
        let source = quoted(source);
        let component = match &self.plugin {
            Ok(p) => p.component(),
            Err(e) => return Err(format!("{source} was not evaluated: {e}")),
        };
        let out = match f(component) {
            Err(e) if e.reason == FailureReason::Deadline => f(component),
            other => other,
        };
        match out {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("{source}: {e}")),
            Err(e) => Err(format!("{source} {}", stopped(component, &e))),
        }
    }
}

/// `expression` in backquotes, cut short when it is long (an error message carries it).
fn quoted(expression: &str) -> String {
    match expression.char_indices().nth(QUOTED) {
        Some((cut, _)) => format!("`{}…`", &expression[..cut]),
        None => format!("`{expression}`"),
    }
}

/// What stopped an evaluation in the sandbox, naming the limit it ran into.
fn stopped(component: &PluginComponent, e: &CallError) -> String {
    match e.reason {
        FailureReason::Deadline => format!(
            "ran past the time budget of an expression ({} ms) and was stopped",
            component.expression_deadline().as_millis()
        ),
        FailureReason::Memory => format!(
            "needed more than the memory cap of an expression ({} MiB) and was stopped",
            component.memory_cap() >> 20
        ),
        _ => format!("failed in the sandbox: {e}"),
    }
}

impl ExpressionEvaluator for PluginExpressions {
    fn check(&self, expression: &str) -> Result<(), String> {
        self.call(expression, |c| c.compile_condition(expression))
    }

    fn evaluate(&self, expression: &str, scope: &Scope) -> Result<Value, String> {
        let variables: Vec<(&str, &str)> = scope.variables().collect();
        let json = self.call(expression, |c| {
            c.evaluate_expression(expression, &variables)
        })?;
        serde_json::from_str(&json).map_err(|e| {
            format!(
                "{} gave a value the host cannot read: {e}",
                quoted(expression)
            )
        })
    }
}
