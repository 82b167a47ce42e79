//! `cel`, the language of workflows: step conditions (the default condition evaluator), and the
//! `${…}` templates and `for_each` expressions of every workflow's steps, evaluated here, in the
//! sandbox, under its deadline and memory cap. [CEL] is the language Kubernetes, Hatchet and
//! Inngest use for the same job.
//!
//! Every top-level key of the scope is a variable: `input`, `ctx`, `steps` and, inside a
//! `for_each`, `item` and `index`. On top of CEL's standard library (comparisons, `&&`, `||`,
//! `!`, `in`, `size()`, `has()`, `all()`, `exists()`, `map()`, `filter()`, `matches()`, …) two
//! functions that the home-grown condition languages of other orchestrators taught users to
//! expect: `length()`, another name for `size()`, and `first()`, the first element of a list
//! (`null` for an empty one). Both work as methods (`steps.fetch.output.items.first()`) and as
//! functions (`length(input.name)`).
//!
//! Whole numbers of the scope are `int` when they fit (`uint` past that), others `double`, so
//! `input.n * 2` works on a JSON `3`. A condition must be a `bool`; a template or `for_each` may
//! be any value JSON can hold.
//!
//! An instance keeps what it can reuse across calls: compiled programs by source (a workflow's
//! expressions are evaluated over and over), and the variables of the last template call,
//! converted, with the JSON text each came from (a step's templates, and each child of a
//! fan-out, share most of theirs), so that a large `steps` is converted once, not once per
//! template and per child.
//!
//! [CEL]: https://github.com/google/cel-spec

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel_interpreter::extractors::This;
use cel_interpreter::objects::Key;
use cel_interpreter::{Context, Env, ExecutionError, Program, Value};
use coretex_plugin_sdk::condition::StepCondition;
use coretex_plugin_sdk::expression::{ExpressionLanguage, Variable};
use coretex_plugin_sdk::serde_json::Value as Json;

/// Compiled programs kept per instance. Past this many the cache starts afresh, which bounds its
/// memory.
const CACHED_PROGRAMS: usize = 256;

/// A context of its own, its variables bound `'static`: owned by the instance.
type OwnedContext = Context<'static, 'static>;

pub struct Cel {
    env: Arc<Env>,
    programs: RefCell<HashMap<String, Program>>,
    /// The context of the last template call, kept for the next, and the JSON text each of its
    /// variables was made from. Binding a variable converts the whole value into the
    /// interpreter's own form, which for a large `steps` costs as much as parsing it; a variable
    /// sent again with the same text is left bound.
    kept: RefCell<Option<(OwnedContext, HashMap<String, String>)>>,
}

impl Default for Cel {
    fn default() -> Self {
        Cel {
            env: Arc::new(Env::stdlib()),
            programs: RefCell::default(),
            kept: RefCell::default(),
        }
    }
}

impl Cel {
    fn compile_program(&self, expression: &str) -> Result<Program, String> {
        self.env
            .compile(expression)
            .map_err(|e| format!("invalid CEL expression: {e}"))
    }

    /// A context with the standard library and the two extensions, and no variables.
    fn context(&self) -> Result<OwnedContext, String> {
        let mut context = Context::with_env(Arc::clone(&self.env));
        context
            .add_function("length", length)
            .and_then(|()| context.add_function("first", first))
            .map_err(|e| format!("declaring the CEL extensions: {e}"))?;
        Ok(context)
    }

    /// Runs the program of `expression` (compiled on its first use) in `context`.
    fn execute(&self, expression: &str, context: &OwnedContext) -> Result<Value, String> {
        let mut programs = self.programs.borrow_mut();
        if !programs.contains_key(expression) {
            let program = self.compile_program(expression)?;
            if programs.len() >= CACHED_PROGRAMS {
                programs.clear();
            }
            programs.insert(expression.to_owned(), program);
        }
        programs[expression]
            .execute(context)
            .map_err(|e| e.to_string())
    }
}

impl StepCondition for Cel {
    fn compile(&self, expression: &str) -> Result<(), String> {
        self.compile_program(expression).map(drop)
    }

    fn evaluate(&self, expression: &str, scope: &Json) -> Result<bool, String> {
        let Json::Object(variables) = scope else {
            return Err("the scope is not a JSON object".into());
        };
        let mut context = self.context()?;
        for (name, value) in variables {
            context.add_variable_from_value(name.as_str(), to_cel(value));
        }
        match self.execute(expression, &context)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "a condition must be a bool, not {}: {other:?}",
                other.type_of()
            )),
        }
    }
}

impl ExpressionLanguage for Cel {
    fn evaluate_json(&self, expression: &str, scope: &[Variable<'_>]) -> Result<Json, String> {
        let mut kept = self.kept.borrow_mut();
        let (context, texts) = match &mut *kept {
            Some(kept) => kept,
            None => kept.insert((self.context()?, HashMap::new())),
        };
        // Exactly this scope's variables are bound: the `item` of an earlier fan-out, say, must
        // not be in scope of a later template.
        texts.retain(|name, _| scope.iter().any(|v| v.name == name));
        if let Context::Root { variables, .. } = context {
            variables.retain(|name, _| texts.contains_key(name));
        }
        for v in scope {
            if texts.get(v.name).is_some_and(|text| text == v.json) {
                continue;
            }
            context.add_variable_from_value(v.name, to_cel(&v.value()?));
            texts.insert(v.name.to_owned(), v.json.to_owned());
        }
        let value = self.execute(expression, context)?;
        value
            .json()
            .map_err(|e| format!("the value cannot be JSON: {e}"))
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

coretex_plugin_sdk::export_expression_language!(Cel);

#[cfg(test)]
mod tests {
    use coretex_plugin_sdk::serde_json::json;
    use coretex_plugin_sdk::testing::evaluate_json;

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

    fn value(expression: &str) -> Result<Json, String> {
        let scope = json!({
            "input": {"n": 3, "ratio": 0.5, "xs": [1, 2, 3], "name": "ada",
                      "big": 18446744073709551615u64},
            "ctx": {},
            "steps": {"fetch": {"status": "succeeded",
                                "output": {"items": [{"id": "a"}, {"id": "b"}]}}},
        });
        evaluate_json(&Cel::default(), expression, &scope)
    }

    #[test]
    fn templates_yield_json_of_any_type() {
        assert_eq!(value("input.n * 2 + 1"), Ok(json!(7)));
        assert_eq!(value("input.ratio"), Ok(json!(0.5)));
        assert_eq!(value("input.xs.map(x, x * 10)"), Ok(json!([10, 20, 30])));
        assert_eq!(value("input.xs.filter(x, x > 1).size()"), Ok(json!(2)));
        assert_eq!(
            value("{'who': input.name, 'ok': input.n > 2}"),
            Ok(json!({"who": "ada", "ok": true}))
        );
        assert_eq!(value("input.n > 5 ? 'big' : 'small'"), Ok(json!("small")));
        assert_eq!(value("input.big"), Ok(json!(u64::MAX)));
        assert_eq!(value("null"), Ok(Json::Null));
    }

    #[test]
    fn the_extensions_work_in_templates_too() {
        assert_eq!(value("steps.fetch.output.items.first().id"), Ok(json!("a")));
        assert_eq!(value("length(input.name)"), Ok(json!(3)));
        assert_eq!(value("input.xs.length()"), Ok(json!(3)));
        assert_eq!(value("[].first()"), Ok(Json::Null));
    }

    #[test]
    fn a_missing_key_in_a_template_is_an_error_that_has_can_avoid() {
        assert!(value("input.nope").is_err());
        assert_eq!(
            value("has(input.nope) ? input.nope : 'fallback'"),
            Ok(json!("fallback"))
        );
        assert!(value("input.n >").unwrap_err().starts_with("invalid CEL"));
    }

    #[test]
    fn a_variable_sent_again_stays_bound_and_only_the_scope_sent_is_in_scope() {
        let cel = Cel::default();
        let steps = json!({"a": {"output": [1, 2, 3]}});
        for (i, item) in [json!("x"), json!("y")].into_iter().enumerate() {
            let scope = json!({"steps": steps, "item": item, "index": i});
            assert_eq!(
                evaluate_json(&cel, "[item, index, steps.a.output.size()]", &scope),
                Ok(json!([item, i, 3]))
            );
        }
        let texts = |cel: &Cel| {
            let kept = cel.kept.borrow();
            let mut names: Vec<String> = kept.as_ref().unwrap().1.keys().cloned().collect();
            names.sort();
            names
        };
        assert_eq!(texts(&cel), ["index", "item", "steps"]);
        let later = json!({"steps": steps});
        assert!(
            evaluate_json(&cel, "item", &later).is_err(),
            "the item of the fan-out is gone"
        );
        assert_eq!(texts(&cel), ["steps"]);
    }

    #[test]
    fn evaluating_twice_uses_the_cached_program() {
        let cel = Cel::default();
        assert_eq!(cel.evaluate("input.amount == 250", &scope()), Ok(true));
        assert_eq!(cel.evaluate("input.amount == 250", &scope()), Ok(true));
        assert_eq!(cel.programs.borrow().len(), 1);
    }
}
