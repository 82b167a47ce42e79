//! Step conditions: whether a workflow step runs.
//!
//! The workflow engine calls [`StepCondition::compile`] when a workflow is saved, so a bad
//! expression is rejected with a message naming its step, and [`StepCondition::evaluate`] when
//! the step becomes ready.

use serde_json::Value;

/// Checks and evaluates condition expressions.
pub trait StepCondition {
    /// Checks that `expression` is well formed; the error says what is wrong with it.
    fn compile(&self, expression: &str) -> Result<(), String>;

    /// Evaluates `expression` against `scope`, a JSON object with `input` (the run's input),
    /// `ctx` (the run's context), `steps` (`{step_id: {output, status}}`) and, inside a
    /// `for_each`, `item` and `index`. A result that is not a boolean is an error.
    fn evaluate(&self, expression: &str, scope: &Value) -> Result<bool, String>;
}
