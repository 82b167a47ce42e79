//! The glue the `export_*!` macros expand to: the conversions between the generated wire types
//! and the SDK's plain ones, and the [`Context`] backed by the host's imports. Not part of the
//! API (hidden from the docs); only the macros reach in here.
//!
//! A macro keeps the plugin's instance in a `thread_local!` built with `Default` on first use:
//! a component instance is single-threaded, and a thread-local (unlike a `static`) lets the
//! instance keep its state in a `Cell` without asking for `Sync`.

use crate::condition::StepCondition;
use crate::dispatch::{self, Candidates, Context, DispatchStrategy, Job, Priority};
use crate::expression::{ExpressionLanguage, Variable};
use crate::retry::{self, Failure, Outcome, RetryPolicy};
use crate::wit::dispatch_strategy::coretex::plugin::dispatch_context as host;
use crate::wit::dispatch_strategy::exports::coretex::plugin::dispatch as wire_dispatch;
use crate::wit::retry_policy::exports::coretex::plugin::retry as wire_retry;

pub use crate::wit::dispatch_strategy::coretex::plugin::types::PluginError;
pub use crate::wit::expression_evaluator::exports::coretex::plugin::expression::{
    Guest as ExpressionGuest, Variable as WireVariable,
};
pub use crate::wit::step_condition::exports::coretex::plugin::condition::Guest as ConditionGuest;
pub use crate::wit::{dispatch_strategy, expression_evaluator, retry_policy, step_condition};
pub use wire_dispatch::{
    Candidates as WireCandidates, Decision as WireDispatchDecision, Few as WireFew,
    Guest as DispatchGuest, JobSummary as WireJob,
};
pub use wire_retry::{Decision as WireRetryDecision, Failure as WireFailure, Guest as RetryGuest};
// The worlds each generate the shared `types` interface; the error is the same record.
pub use crate::wit::expression_evaluator::coretex::plugin::types::PluginError as ExpressionPluginError;
pub use crate::wit::retry_policy::coretex::plugin::types::PluginError as RetryPluginError;
pub use crate::wit::step_condition::coretex::plugin::types::PluginError as ConditionPluginError;

/// Runs `strategy` on one `pick` call from the host. The candidates are viewed where they
/// arrived: the one list the host wrote into this instance's memory, a block per field, each
/// block a slice of it, not copied again.
///
/// The answer carries no string (see `pick` in `wit/dispatch.wit`): a `NoWorker` reason or an
/// error message waits in [`MESSAGE`] for the host's `message` call.
// The unit error is the WIT's `result<decision>`: the message travels apart, off the hot path.
#[allow(clippy::result_unit_err)]
pub fn pick<S: DispatchStrategy>(
    strategy: &S,
    job: WireJob,
    candidates: WireCandidates,
) -> Result<WireDispatchDecision, ()> {
    match fields(&candidates.fields, candidates.preferred) {
        Ok(c) => answer(strategy, job, c),
        Err(message) => fail(message),
    }
}

/// Runs `strategy` on one `pick-few` call: the one to three candidates came as arguments, and
/// are viewed from arrays on the stack.
#[allow(clippy::result_unit_err)]
pub fn pick_few<S: DispatchStrategy>(
    strategy: &S,
    job: WireJob,
    few: WireFew,
) -> Result<WireDispatchDecision, ()> {
    let n = few.count as usize;
    if !(1..=3).contains(&n) {
        return fail(format!("pick-few with {n} candidates (1 to 3)"));
    }
    let slots = [few.a, few.b, few.c];
    let active_jobs = slots.map(|s| s.active_jobs);
    let max_parallel = slots.map(|s| s.max_parallel);
    let cpu_load = slots.map(|s| s.cpu_load);
    let preferred = few.preferred.map(|i| i as usize);
    match Candidates::new(
        &active_jobs[..n],
        &max_parallel[..n],
        &cpu_load[..n],
        preferred,
    ) {
        Ok(c) => answer(strategy, job, c),
        Err(message) => fail(message),
    }
}

/// The strategy's answer, in the wire's terms.
fn answer<S: DispatchStrategy>(
    strategy: &S,
    job: WireJob,
    candidates: Candidates<'_>,
) -> Result<WireDispatchDecision, ()> {
    let job = Job {
        priority: match job.priority {
            wire_dispatch::Priority::Interactive => Priority::Interactive,
            wire_dispatch::Priority::Batch => Priority::Batch,
            wire_dispatch::Priority::Critical => Priority::Critical,
        },
        attempt: job.attempt,
        label_count: job.label_count,
    };
    // The index goes back unchecked: judging it is the host's job (and the containment tests
    // need a plugin that answers out of range).
    match strategy.pick(&job, candidates, &HostContext) {
        Ok(dispatch::Decision::Worker(index)) => match u32::try_from(index) {
            Ok(index) => Ok(WireDispatchDecision::Worker(index)),
            Err(_) => fail(format!("candidate index {index} does not fit in u32")),
        },
        Ok(dispatch::Decision::NoWorker(reason)) => {
            MESSAGE.with(|m| *m.borrow_mut() = reason);
            Ok(WireDispatchDecision::NoWorker)
        }
        Err(message) => fail(message),
    }
}

std::thread_local! {
    /// The reason of the last `NoWorker` or the message of the last error, until the host asks.
    static MESSAGE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn fail(message: String) -> Result<WireDispatchDecision, ()> {
    MESSAGE.with(|m| *m.borrow_mut() = message);
    Err(())
}

/// Answers the host's `message` call: the last reason or error message, taken.
pub fn message() -> String {
    MESSAGE.with(|m| std::mem::take(&mut *m.borrow_mut()))
}

/// The view of the wire's `fields`: active jobs, max parallel and CPU load, a block each.
fn fields(fields: &[u32], preferred: Option<u32>) -> Result<Candidates<'_>, String> {
    if !fields.len().is_multiple_of(3) {
        return Err(format!(
            "{} candidate fields is not three per candidate",
            fields.len()
        ));
    }
    let n = fields.len() / 3;
    let (active_jobs, rest) = fields.split_at(n);
    let (max_parallel, cpu_bits) = rest.split_at(n);
    // SAFETY: `f32` and `u32` have the same size and alignment, and every bit pattern of a
    // `u32` is some `f32` (the host wrote `f32::to_bits`); the slice borrows `fields`.
    let cpu_load: &[f32] =
        unsafe { std::slice::from_raw_parts(cpu_bits.as_ptr().cast::<f32>(), cpu_bits.len()) };
    Candidates::new(
        active_jobs,
        max_parallel,
        cpu_load,
        preferred.map(|i| i as usize),
    )
}

/// The [`Context`] of a `pick` call inside the sandbox: each answer is one call to the host.
struct HostContext;

impl Context for HostContext {
    fn topic(&self) -> String {
        host::job_topic()
    }

    fn tenant(&self) -> String {
        host::job_tenant()
    }

    fn job_label(&self, key: &str) -> Option<String> {
        host::job_label(key)
    }

    fn job_labels(&self) -> Vec<(String, String)> {
        host::job_labels()
    }

    fn candidate_label(&self, index: usize, key: &str) -> Option<String> {
        host::candidate_label(u32::try_from(index).ok()?, key)
    }

    fn candidate_id(&self, index: usize) -> Option<String> {
        host::candidate_id(u32::try_from(index).ok()?)
    }

    fn setting(&self, key: &str) -> Option<String> {
        host::setting(key)
    }
}

/// Runs `condition` on one `compile` call from the host.
pub fn compile<C: StepCondition>(
    condition: &C,
    expression: String,
) -> Result<(), ConditionPluginError> {
    condition
        .compile(&expression)
        .map_err(|message| ConditionPluginError { message })
}

/// Runs `condition` on one `evaluate` call from the host.
pub fn evaluate<C: StepCondition>(
    condition: &C,
    expression: String,
    scope_json: String,
) -> Result<bool, ConditionPluginError> {
    let scope = serde_json::from_str(&scope_json).map_err(|e| ConditionPluginError {
        message: format!("the scope is not JSON: {e}"),
    })?;
    condition
        .evaluate(&expression, &scope)
        .map_err(|message| ConditionPluginError { message })
}

/// Runs `language` on one `expression.evaluate` call from the host: the value, as JSON text.
pub fn evaluate_json<L: ExpressionLanguage>(
    language: &L,
    expression: String,
    scope: Vec<WireVariable>,
) -> Result<String, ExpressionPluginError> {
    let scope: Vec<Variable<'_>> = scope
        .iter()
        .map(|v| Variable {
            name: &v.name,
            json: &v.value_json,
        })
        .collect();
    language
        .evaluate_json(&expression, &scope)
        .and_then(|value| {
            serde_json::to_string(&value).map_err(|e| format!("the value is not JSON: {e}"))
        })
        .map_err(|message| ExpressionPluginError { message })
}

/// Runs `policy` on one `decide` call from the host.
pub fn decide<P: RetryPolicy>(
    policy: &P,
    failure: WireFailure,
) -> Result<WireRetryDecision, RetryPluginError> {
    let failure = Failure {
        topic: failure.topic,
        attempt: failure.attempt,
        outcome: match failure.outcome {
            wire_retry::Outcome::Failed => Outcome::Failed,
            wire_retry::Outcome::Timeout => Outcome::Timeout,
            wire_retry::Outcome::Cancelled => Outcome::Cancelled,
        },
        error_code: failure.error_code,
        error_message: failure.error_message,
        elapsed_ms: failure.elapsed_ms,
        max_attempts: failure.max_attempts,
        initial_backoff_ms: failure.initial_backoff_ms,
        max_backoff_ms: failure.max_backoff_ms,
        multiplier: failure.multiplier,
    };
    match policy.decide(&failure) {
        Ok(retry::Decision::Retry(after)) => Ok(WireRetryDecision::Retry(
            u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        )),
        Ok(retry::Decision::DeadLetter(reason)) => Ok(WireRetryDecision::DeadLetter(reason)),
        Err(message) => Err(RetryPluginError { message }),
    }
}

/// Makes this crate a `dispatch-strategy` component whose `pick` runs a `Default` instance of
/// the given [`DispatchStrategy`](crate::dispatch::DispatchStrategy) (the crate documentation
/// has an example). Use it once, in a `cdylib` crate, and no other `export_*!` macro beside it: a component
/// exports exactly one world, and the host reads the plugin's kind from it.
#[macro_export]
macro_rules! export_dispatch_strategy {
    ($strategy:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STRATEGY: $strategy = <$strategy as ::core::default::Default>::default();
            }

            struct Export;

            impl $crate::export::DispatchGuest for Export {
                fn pick(
                    job: $crate::export::WireJob,
                    candidates: $crate::export::WireCandidates,
                ) -> ::core::result::Result<$crate::export::WireDispatchDecision, ()> {
                    STRATEGY.with(|strategy| $crate::export::pick(strategy, job, candidates))
                }

                fn pick_few(
                    job: $crate::export::WireJob,
                    few: $crate::export::WireFew,
                ) -> ::core::result::Result<$crate::export::WireDispatchDecision, ()> {
                    STRATEGY.with(|strategy| $crate::export::pick_few(strategy, job, few))
                }

                fn message() -> ::std::string::String {
                    $crate::export::message()
                }
            }

            $crate::__export_dispatch_strategy_impl!(
                Export with_types_in $crate::export::dispatch_strategy
            );
        };
    };
}

/// Makes this crate a `step-condition` component backed by a `Default` instance of the given
/// [`StepCondition`](crate::condition::StepCondition). One per crate, as for
/// [`export_dispatch_strategy!`].
#[macro_export]
macro_rules! export_step_condition {
    ($condition:ty) => {
        const _: () = {
            ::std::thread_local! {
                static CONDITION: $condition = <$condition as ::core::default::Default>::default();
            }

            struct Export;

            $crate::__export_condition!(Export, CONDITION);
        };
    };
}

/// Makes this crate a `step-condition` component that also exports `expression` (world
/// `expression-evaluator`): conditions, templates and `for_each` answered by a `Default` instance
/// of the given [`ExpressionLanguage`](crate::expression::ExpressionLanguage). One per crate, as
/// for [`export_dispatch_strategy!`].
#[macro_export]
macro_rules! export_expression_language {
    ($language:ty) => {
        const _: () = {
            ::std::thread_local! {
                static LANGUAGE: $language = <$language as ::core::default::Default>::default();
            }

            struct Export;

            $crate::__export_condition!(Export, LANGUAGE);

            impl $crate::export::ExpressionGuest for Export {
                fn evaluate(
                    expression: ::std::string::String,
                    scope: ::std::vec::Vec<$crate::export::WireVariable>,
                ) -> ::core::result::Result<
                    ::std::string::String,
                    $crate::export::ExpressionPluginError,
                > {
                    LANGUAGE
                        .with(|language| $crate::export::evaluate_json(language, expression, scope))
                }
            }

            $crate::__export_expression_evaluator_impl!(
                Export with_types_in $crate::export::expression_evaluator
            );
        };
    };
}

/// The `step-condition` world's exports on `$export`, answered by the instance in the
/// thread-local `$instance`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_condition {
    ($export:ident, $instance:ident) => {
        impl $crate::export::ConditionGuest for $export {
            fn compile(
                expression: ::std::string::String,
            ) -> ::core::result::Result<(), $crate::export::ConditionPluginError> {
                $instance.with(|condition| $crate::export::compile(condition, expression))
            }

            fn evaluate(
                expression: ::std::string::String,
                scope_json: ::std::string::String,
            ) -> ::core::result::Result<bool, $crate::export::ConditionPluginError> {
                $instance
                    .with(|condition| $crate::export::evaluate(condition, expression, scope_json))
            }
        }

        $crate::__export_step_condition_impl!(
            $export with_types_in $crate::export::step_condition
        );
    };
}

/// Makes this crate a `retry-policy` component backed by a `Default` instance of the given
/// [`RetryPolicy`](crate::retry::RetryPolicy). One per crate, as for
/// [`export_dispatch_strategy!`].
#[macro_export]
macro_rules! export_retry_policy {
    ($policy:ty) => {
        const _: () = {
            ::std::thread_local! {
                static POLICY: $policy = <$policy as ::core::default::Default>::default();
            }

            struct Export;

            impl $crate::export::RetryGuest for Export {
                fn decide(
                    failure: $crate::export::WireFailure,
                ) -> ::core::result::Result<
                    $crate::export::WireRetryDecision,
                    $crate::export::RetryPluginError,
                > {
                    POLICY.with(|policy| $crate::export::decide(policy, failure))
                }
            }

            $crate::__export_retry_policy_impl!(
                Export with_types_in $crate::export::retry_policy
            );
        };
    };
}
