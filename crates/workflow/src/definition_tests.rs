//! Tests of `coretex_core::workflow::definition` that need the real expression language: the
//! built-in `cel` component, which only the host can run.

use serde_json::{Value, json};

use crate::definition::*;
use crate::expr::Scope;
use crate::job::FieldError;
use crate::limits::MAX_STEP_ID_LEN;
use crate::plugins::{ConditionEvaluator, PluginExpressions};
use crate::testing::builtin_expressions;

/// Templates and `for_each` are checked by the real built-in language.
fn cel() -> PluginExpressions {
    builtin_expressions()
}

/// Accepts `true`, `false` and comparisons of paths; rejects anything with `??`.
struct Fake;
impl ConditionEvaluator for Fake {
    fn compile(&self, e: &str) -> Result<(), String> {
        if e.contains("??") {
            Err(format!("syntax error in `{e}`"))
        } else {
            Ok(())
        }
    }
    fn evaluate(&self, e: &str, _: &Value) -> Result<bool, String> {
        Ok(e == "true")
    }
}

fn spec(steps: Value) -> WorkflowSpec {
    serde_json::from_value(json!({"name": "w", "steps": steps})).unwrap()
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn unknown_dependency_is_named_with_its_step() {
    let e = validate(
        &spec(json!({"a": {"topic": "t", "depends_on": ["nope"]}})),
        &Fake,
        &cel(),
    );
    assert_eq!(fields(&e), ["steps.a.depends_on"]);
    assert!(e[0].message.contains("nope"));
}

#[test]
fn cycles_are_rejected() {
    let e = validate(
        &spec(json!({
            "a": {"topic": "t", "depends_on": ["c"]},
            "b": {"topic": "t", "depends_on": ["a"]},
            "c": {"topic": "t", "depends_on": ["b"]},
        })),
        &Fake,
        &cel(),
    );
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("cycle"), "{e:?}");
}

#[test]
fn bad_condition_and_template_name_the_step() {
    let e = validate(
        &spec(json!({
            "a": {"topic": "t", "condition": "x ?? y"},
            "b": {"topic": "t", "input": {"x": {"y": ["ok ${input.n}", "${input.n >}"]}}},
            "c": {"topic": "t", "input": {"x": "${input.a"}},
            "d": {"topic": "t", "for_each": "input.xs.map(x,"},
        })),
        &Fake,
        &cel(),
    );
    assert_eq!(
        fields(&e),
        [
            "steps.a.condition",
            "steps.b.input.x.y[1]",
            "steps.c.input.x",
            "steps.d.for_each"
        ]
    );
    assert!(e[1].message.contains("step `b`"), "{e:?}");
}

#[test]
fn templates_and_for_each_accept_cel_expressions() {
    let e = validate(
        &spec(json!({
            "a": {"topic": "t", "for_each": "${input.xs.filter(x, x % 2 == 0)}",
                  "input": {"sum": "${item + index * 2}", "m": "${ {'k': [item]} }",
                            "label": "${size(input.xs) > 2 ? 'many' : 'few'} items"}},
        })),
        &Fake,
        &cel(),
    );
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn step_ids_that_could_not_be_part_of_a_job_id_are_refused() {
    let long = "s".repeat(MAX_STEP_ID_LEN + 1);
    let e = validate(
        &spec(
            json!({"a.0": {"topic": "t"}, "b:c": {"topic": "t"}, &long: {"topic": "t"},
                     "ok_-9": {"topic": "t"}}),
        ),
        &Fake,
        &cel(),
    );
    assert_eq!(
        fields(&e),
        ["steps.a.0", "steps.b:c", format!("steps.{long}").as_str()]
    );
}

#[test]
fn numbers_the_engine_multiplies_are_bounded() {
    let e = validate(
        &spec(
            json!({"a": {"topic": "t", "timeout_sec": u64::MAX, "max_parallel": 0,
            "retry": {"max_retries": 1000, "initial_backoff_sec": -1, "max_backoff_sec": 1e300,
                      "multiplier": 0.5, "policy": "no good"}}}),
        ),
        &Fake,
        &cel(),
    );
    assert_eq!(
        fields(&e),
        [
            "steps.a.timeout_sec",
            "steps.a.retry.max_retries",
            "steps.a.retry.initial_backoff_sec",
            "steps.a.retry.max_backoff_sec",
            "steps.a.retry.multiplier",
            "steps.a.retry.policy",
            "steps.a.max_parallel"
        ]
    );
}

#[test]
fn a_job_step_needs_a_topic() {
    let e = validate(&spec(json!({"a": {}})), &Fake, &cel());
    assert_eq!(fields(&e), ["steps.a.topic"]);
    assert!(validate(&spec(json!({"a": {"type": "approval"}})), &Fake, &cel()).is_empty());
}

#[test]
fn whole_string_template_keeps_the_type() {
    let scope = Scope::of(json!({"input": {"n": 3, "xs": [1, 2], "s": "hi"}}));
    let out = render(
        &json!({"n": "${input.n}", "xs": "${input.xs}", "msg": "${input.s} x${input.n}",
                "second": "${input.xs[1]}", "deep": [{"sum": "${input.xs[0] + input.xs[1]}"}],
                "plain": 7}),
        &scope,
        &cel(),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"n": 3, "xs": [1, 2], "msg": "hi x3", "second": 2, "deep": [{"sum": 3}],
               "plain": 7})
    );
    let e = render(&json!({"x": ["${input.none}"]}), &scope, &cel()).unwrap_err();
    assert!(e.starts_with("input.x[0]: `input.none`"), "{e}");
}

#[test]
fn an_invalid_schema_is_named_where_it_is_wrong() {
    let e = check_schema(&json!({"type": "object", "properties": {"n": {"type": 12}}}));
    assert_eq!(fields(&e), ["input_schema.properties.n.type"]);
    let e = check_schema(&json!({"$ref": "https://example.com/schema.json"}));
    assert_eq!(fields(&e), ["input_schema"], "{e:?}");
    let e = validate(
        &serde_json::from_value(json!({"name": "w", "input_schema": {"minimum": "1"},
            "steps": {"a": {"topic": "t"}}}))
        .unwrap(),
        &Fake,
        &cel(),
    );
    assert_eq!(fields(&e), ["input_schema.minimum"]);
}
