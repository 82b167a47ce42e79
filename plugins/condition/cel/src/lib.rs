//! `cel`, the default step-condition evaluator: conditions are [CEL] expressions, the language
//! Kubernetes, Hatchet and Inngest use for the same job.
//!
//! Every top-level key of the scope is a variable: `input`, `ctx`, `steps` and, inside a
//! `for_each`, `item` and `index`. On top of CEL's standard library (comparisons, `&&`, `||`,
//! `!`, `in`, `size()`, `has()`, `all()`, `exists()`, `matches()`, …) two functions that the
//! home-grown condition languages of other orchestrators taught users to expect:
//! `length()`, another name for `size()`, and `first()`, the first element of a list (`null`
//! for an empty one). Both work as methods (`steps.fetch.output.items.first()`) and as
//! functions (`length(input.name)`).
//!
//! [CEL]: https://github.com/google/cel-spec

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel_interpreter::extractors::This;
use cel_interpreter::objects::Key;
use cel_interpreter::{Env, ExecutionError, Program, Value};
use coretex_plugin_sdk::condition::StepCondition;
use coretex_plugin_sdk::serde_json::Value as Json;

/// Compiled programs kept per instance: a workflow's conditions are evaluated over and over.
/// Past this many the cache starts afresh, which bounds its memory.
const CACHED_PROGRAMS: usize = 256;

pub struct Cel {
    env: Arc<Env>,
    programs: RefCell<HashMap<String, Program>>,
}

impl Default for Cel {
    fn default() -> Self {
        Cel {
            env: Arc::new(Env::stdlib()),
            programs: RefCell::default(),
        }
    }
}

impl Cel {
    fn compile_program(&self, expression: &str) -> Result<Program, String> {
        self.env
            .compile(expression)
            .map_err(|e| format!("invalid CEL expression: {e}"))
    }

    fn run(&self, program: &Program, scope: &Json) -> Result<Value, String> {
        let Json::Object(variables) = scope else {
            return Err("the scope is not a JSON object".into());
        };
        let mut context = cel_interpreter::Context::with_env(Arc::clone(&self.env));
        context
            .add_function("length", length)
            .and_then(|()| context.add_function("first", first))
            .map_err(|e| format!("declaring the CEL extensions: {e}"))?;
        for (name, value) in variables {
            context.add_variable_from_value(name.as_str(), to_cel(value));
        }
        program.execute(&context).map_err(|e| e.to_string())
    }
}

impl StepCondition for Cel {
    fn compile(&self, expression: &str) -> Result<(), String> {
        self.compile_program(expression).map(drop)
    }

    fn evaluate(&self, expression: &str, scope: &Json) -> Result<bool, String> {
        let mut programs = self.programs.borrow_mut();
        if !programs.contains_key(expression) {
            let program = self.compile_program(expression)?;
            if programs.len() >= CACHED_PROGRAMS {
                programs.clear();
            }
            programs.insert(expression.to_owned(), program);
        }
        match self.run(&programs[expression], scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "a condition must be a bool, not {}: {other:?}",
                other.type_of()
            )),
        }
    }
}

/// A JSON value as a CEL value: whole numbers are `int` when they fit (`uint` past that),
/// others `double`.
fn to_cel(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(fields) => Value::from(
            fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect::<HashMap<Key, Value>>(),
        ),
    }
}

/// `length()`: the size of a string (in code points), a list, a map or bytes.
fn length(This(value): This<Value>) -> Result<Value, ExecutionError> {
    let n = match &value {
        Value::String(s) => s.chars().count(),
        Value::List(items) => items.len(),
        Value::Map(map) => map.map.len(),
        Value::Bytes(bytes) => bytes.len(),
        other => {
            return Err(ExecutionError::function_error(
                "length",
                format!("no length for a {}", other.type_of()),
            ));
        }
    };
    Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// `first()`: the first element of a list, `null` when it is empty.
fn first(This(list): This<Arc<Vec<Value>>>) -> Value {
    list.first().cloned().unwrap_or(Value::Null)
}

coretex_plugin_sdk::export_step_condition!(Cel);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::serde_json::json;

    use super::*;

    fn scope() -> Json {
        json!({
            "input": {"amount": 250, "ratio": 0.75, "region": "eu", "tags": ["urgent", "vip"]},
            "ctx": {"tenant": "acme"},
            "steps": {
                "fetch": {"status": "succeeded", "output": {"items": [{"id": "a"}, {"id": "b"}]}},
                "empty": {"status": "succeeded", "output": {"items": []}}
            }
        })
    }

    fn eval(expression: &str) -> Result<bool, String> {
        Cel::default().evaluate(expression, &scope())
    }

    #[test]
    fn comparisons_and_logic_over_the_scope() {
        assert_eq!(eval("input.amount > 100 && input.region == 'eu'"), Ok(true));
        assert_eq!(
            eval("input.amount <= 100 || !(ctx.tenant == 'acme')"),
            Ok(false)
        );
        assert_eq!(eval("input.ratio >= 0.5 && input.ratio < 1.0"), Ok(true));
        assert_eq!(eval("steps.fetch.status != 'failed'"), Ok(true));
    }

    #[test]
    fn membership_and_sizes() {
        assert_eq!(eval("'vip' in input.tags"), Ok(true));
        assert_eq!(eval("size(input.tags) == 2"), Ok(true));
        assert_eq!(eval("input.tags.size() == 2"), Ok(true));
        assert_eq!(eval("steps.fetch.output.items.length() == 2"), Ok(true));
        assert_eq!(eval("length(input.region) == 2"), Ok(true));
    }

    #[test]
    fn first_of_a_list_and_of_an_empty_one() {
        assert_eq!(eval("steps.fetch.output.items.first().id == 'a'"), Ok(true));
        assert_eq!(eval("first(input.tags) == 'urgent'"), Ok(true));
        assert_eq!(eval("steps.empty.output.items.first() == null"), Ok(true));
    }

    #[test]
    fn macros_of_the_standard_library() {
        assert_eq!(eval("has(input.region) && !has(input.missing)"), Ok(true));
        assert_eq!(
            eval("steps.fetch.output.items.all(i, i.id != '')"),
            Ok(true)
        );
        assert_eq!(eval("input.tags.exists(t, t.startsWith('ur'))"), Ok(true));
        assert_eq!(eval("input.region.matches('^e[a-z]$')"), Ok(true));
    }

    #[test]
    fn for_each_items_are_in_scope() {
        let scope = json!({"input": {}, "ctx": {}, "steps": {}, "item": {"n": 3}, "index": 1});
        assert_eq!(
            Cel::default().evaluate("item.n > 2 && index == 1", &scope),
            Ok(true)
        );
    }

    #[test]
    fn a_result_that_is_not_a_bool_is_an_error() {
        let error = eval("input.amount + 1").unwrap_err();
        assert!(error.contains("must be a bool, not int"), "{error}");
    }

    #[test]
    fn an_unknown_variable_is_an_error() {
        assert!(eval("item.n > 2").is_err());
    }

    #[test]
    fn compile_checks_syntax_only() {
        let cel = Cel::default();
        assert_eq!(cel.compile("input.amount > 100"), Ok(()));
        assert_eq!(cel.compile("whatever.we.like == 1"), Ok(()));
        let error = cel.compile("input.amount >").unwrap_err();
        assert!(error.starts_with("invalid CEL expression"), "{error}");
    }

    #[test]
    fn evaluating_twice_uses_the_cached_program() {
        let cel = Cel::default();
        assert_eq!(cel.evaluate("input.amount == 250", &scope()), Ok(true));
        assert_eq!(cel.evaluate("input.amount == 250", &scope()), Ok(true));
        assert_eq!(cel.programs.borrow().len(), 1);
    }
}
