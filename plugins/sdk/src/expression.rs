//! Workflow expressions that yield values: the `${…}` templates of a step's input and its
//! `for_each`, in the language of step conditions.
//!
//! An evaluator of templates is a [`StepCondition`] that also implements [`ExpressionLanguage`],
//! exported with [`export_expression_language!`](crate::export_expression_language) (world
//! `expression-language`). The host evaluates every workflow's templates with its built-in `cel`,
//! whatever evaluator a config names for conditions; this is how that one is written, and what a
//! replacement of it would implement.

use serde_json::Value;

use crate::condition::StepCondition;

/// One variable of the scope as the host sends it: its name (`input`, `ctx`, `steps`, and inside
/// a `for_each` `item` and `index`) and its value as JSON text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variable<'a> {
    pub name: &'a str,
    pub json: &'a str,
}

impl Variable<'_> {
    /// The value, parsed.
    pub fn value(&self) -> Result<Value, String> {
        serde_json::from_str(self.json)
            .map_err(|e| format!("variable `{}` is not JSON: {e}", self.name))
    }
}

/// Evaluates expressions to any JSON value; their syntax is checked with
/// [`StepCondition::compile`] (one language for conditions, templates and `for_each`).
pub trait ExpressionLanguage: StepCondition {
    /// Evaluates `expression` with each variable of `scope` in scope: its value, or an error (a
    /// missing key, a type error, a value JSON cannot hold).
    ///
    /// Calls come in runs over mostly the same text — every template of a step, then every
    /// child of a fan-out, against the same `input`, `ctx` and `steps` — so an evaluator may keep
    /// what it made of a variable's text for the next call that sends the same text.
    fn evaluate_json(&self, expression: &str, scope: &[Variable<'_>]) -> Result<Value, String>;
}
