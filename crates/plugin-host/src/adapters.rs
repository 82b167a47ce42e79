//! Plugins behind the host's traits. Each adapter is resolved per job from the effective config
//! and borrows it for the one decision; every call goes through the plugin's breaker for the
//! job's tenant ([`Plugin::call`]: one tenant's settings that make a plugin fail open only that
//! tenant's breaker) and, when it fails for any reason, the native default decides instead:
//! [`LeastLoaded`](crate::strategy::LeastLoaded) for dispatch, dead-lettering (the job
//! waits in the DLQ, whole and retryable) for retry. Nothing a plugin does stops a job.
//!
//! The one exception is [`PluginExpressions`], the built-in `cel` evaluating workflow templates and
//! `for_each`: it is the workflow language rather than a pluggable decision, so it has no
//! default to fall back to and no breaker — a template that fails, fails its own step.
//!
//! The scheduler asks from async tasks, through [`PluginRegistry::place`] and
//! [`PluginRegistry::decide_retry`]: a decision that needs a plugin is made on the
//! [plugin threads](super::threads), one the native default makes is made at once, where it is
//! asked. The workflow engine asks from Tokio's blocking pool, through the traits directly.

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::registry::{Plugin, PluginRegistry, Source};
use super::runtime::{DispatchCall, PluginComponent, RetryCall};
use super::threads::Stopped;
use super::{
    CallError, ConditionEvaluator, ExpressionEvaluator, FailureReason, PluginKind, latency_budget,
};
use crate::job::{JobSpec, JobState};
use crate::retry::{DeadLetterAtOnce, Failure, RetryDecision, RetryPolicy};
use crate::strategy::{Candidate, DispatchStrategy, Pick, StrategyError};
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
            budget: latency_budget(effective, PluginKind::DispatchStrategy),
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
            budget: latency_budget(effective, PluginKind::RetryPolicy),
            registry: self,
        }
    }

    /// The pick of the strategy `config` names for `spec` among `candidates`, made where it
    /// cannot hold up the async runtime: by the native default at once (it takes microseconds),
    /// by a plugin on the [plugin threads](super::threads). The spec and the candidates come
    /// back with it. `Err` only when the call did not complete (the host is stopping).
    pub async fn place<C>(
        self: &Arc<Self>,
        config: Arc<C>,
        spec: JobSpec,
        candidates: Vec<Candidate>,
    ) -> Result<Placed, Stopped>
    where
        C: Borrow<Value> + Send + Sync + 'static,
    {
        let strategy = self.strategy_for((*config).borrow());
        if !strategy.calls_plugin() {
            let pick = strategy.pick(&spec, &candidates);
            return Ok(Placed {
                spec,
                candidates,
                pick,
            });
        }
        let this = self.clone();
        self.threads()
            .run(move || {
                let pick = this
                    .strategy_for((*config).borrow())
                    .pick(&spec, &candidates);
                Placed {
                    spec,
                    candidates,
                    pick,
                }
            })
            .await
    }

    /// The decision of the retry policy `effective` names on `failure`, made where it cannot hold
    /// up the async runtime: on the [plugin threads](super::threads) when a plugin decides, at
    /// once when the native default does.
    pub async fn decide_retry(&self, effective: &Value, failure: &Failure<'_>) -> RetryDecision {
        let ask = match self.retry_for(effective).prepare(failure) {
            RetryAnswer::Decided(decision) => return decision,
            RetryAnswer::Ask(ask) => ask,
        };
        let (policy, outcome, attempt) = (ask.plugin.name().to_string(), ask.outcome, ask.attempt);
        self.threads()
            .run(move || ask.answer())
            .await
            .unwrap_or_else(|e| RetryDecision::DeadLetter {
                reason: format!(
                    "{outcome} on attempt {attempt}; retry policy `{policy}` did not answer \
                     ({e}), so the job was dead-lettered"
                ),
            })
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
            budget: latency_budget(effective, PluginKind::StepCondition),
        }
    }
}

/// A job placed by [`PluginRegistry::place`]: its spec and candidates, handed back, and the pick.
pub struct Placed {
    pub spec: JobSpec,
    pub candidates: Vec<Candidate>,
    pub pick: Result<Pick, StrategyError>,
}

/// The dispatch strategy of one job.
pub struct StrategyChoice<'a> {
    /// The plugin the config names; none: the native default.
    configured: Option<&'a str>,
    settings: Option<&'a Value>,
    /// The latency budget of a pick.
    budget: Duration,
    registry: &'a PluginRegistry,
}

impl StrategyChoice<'_> {
    /// Whether a pick calls a plugin: the config names one, and it is loaded.
    pub fn calls_plugin(&self) -> bool {
        self.configured
            .is_some_and(|name| self.registry.with_plugin(name, |_| ()).is_some())
    }
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
                .with_plugin(name, |p| {
                    p.call(&job.tenant_id, self.budget, |c| c.pick(&call))
                })
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
    /// The latency budget of a decision.
    budget: Duration,
    registry: &'a PluginRegistry,
}

/// What [`RetryChoice::prepare`] makes of a failure.
pub enum RetryAnswer {
    /// Decided without a plugin: the native default, or a configured policy that is not loaded.
    Decided(RetryDecision),
    /// A plugin decides: [`RetryAsk::answer`], wherever plugin calls run.
    Ask(RetryAsk),
}

/// The question for a retry policy plugin, owned, so it can be answered on another thread.
pub struct RetryAsk {
    plugin: Arc<Plugin>,
    tenant: String,
    budget: Duration,
    topic: String,
    attempt: u32,
    outcome: JobState,
    error_code: String,
    error_message: String,
    elapsed_ms: u64,
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    multiplier: Option<f64>,
}

impl RetryAsk {
    /// The plugin's decision, through its breaker; the DLQ when it cannot give one.
    pub fn answer(self) -> RetryDecision {
        let call = RetryCall {
            topic: &self.topic,
            attempt: self.attempt,
            outcome: self.outcome,
            error_code: &self.error_code,
            error_message: &self.error_message,
            elapsed_ms: self.elapsed_ms,
            max_attempts: self.max_attempts,
            initial_backoff_ms: self.initial_backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
            multiplier: self.multiplier,
        };
        match self
            .plugin
            .call(&self.tenant, self.budget, |c| c.decide(&call))
        {
            Ok(d) => d,
            Err(e) => dead_letter_after(self.plugin.name(), &e, self.outcome, self.attempt),
        }
    }
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

    /// The decision on `failure` when no plugin is needed for it, else the question for the
    /// plugin that decides.
    pub fn prepare(&self, failure: &Failure<'_>) -> RetryAnswer {
        let spec = &failure.job.spec;
        let plugin = match self.select(spec) {
            Selected::Native => return RetryAnswer::Decided(DeadLetterAtOnce.decide(failure)),
            Selected::Plugin(p) => p,
            Selected::Missing { name, error } => {
                return RetryAnswer::Decided(dead_letter_after(
                    &name,
                    &error,
                    failure.outcome,
                    spec.attempt,
                ));
            }
        };
        RetryAnswer::Ask(RetryAsk {
            plugin,
            tenant: spec.tenant_id.clone(),
            budget: self.budget,
            topic: spec.topic.clone(),
            attempt: spec.attempt,
            outcome: failure.outcome,
            error_code: failure.error.map(|e| e.code.clone()).unwrap_or_default(),
            error_message: failure.error.map(|e| e.message.clone()).unwrap_or_default(),
            elapsed_ms: failure.elapsed_ms,
            max_attempts: self
                .setting_u64("max_attempts")
                .and_then(|n| u32::try_from(n).ok()),
            initial_backoff_ms: self.setting_u64("initial_backoff_ms"),
            max_backoff_ms: self.setting_u64("max_backoff_ms"),
            multiplier: self.settings.and_then(|s| s.get("multiplier")?.as_f64()),
        })
    }
}

impl RetryPolicy for RetryChoice<'_> {
    fn name(&self) -> &str {
        self.configured.unwrap_or(DEFAULT_RETRY_POLICY)
    }

    /// Decides on the caller's thread: for callers that are off the async runtime already (the
    /// workflow engine, on the blocking pool). The scheduler goes through
    /// [`PluginRegistry::decide_retry`].
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        match self.prepare(failure) {
            RetryAnswer::Decided(decision) => decision,
            RetryAnswer::Ask(ask) => ask.answer(),
        }
    }
}

/// The answer when a retry policy cannot give one: the DLQ, where the job waits whole for a
/// person (or a bulk retry) — never lost, never retried blindly.
fn dead_letter_after(
    policy: &str,
    e: &CallError,
    outcome: JobState,
    attempt: u32,
) -> RetryDecision {
    RetryDecision::DeadLetter {
        reason: format!(
            "{outcome} on attempt {attempt}; retry policy `{policy}` failed ({e}), so the job was \
             dead-lettered"
        ),
    }
}

/// The condition evaluator of one workflow, through its plugin, under its tenant's breaker.
pub struct PluginConditions {
    tenant: String,
    name: String,
    plugin: Result<Arc<Plugin>, CallError>,
    /// The latency budget of an evaluation.
    budget: Duration,
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
        match plugin.call(&self.tenant, self.budget, &f) {
            Err(e) if e.reason == FailureReason::Deadline => {
                plugin.call(&self.tenant, self.budget, &f)
            }
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
