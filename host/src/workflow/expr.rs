//! Workflow expressions (SPEC §10): the `${…}` templates of step inputs and the `for_each`
//! expressions, evaluated as [CEL] on the host. The one module that names the `cel` crate.
//!
//! # One language for conditions, templates and fan-outs
//!
//! Step conditions go to the configured evaluator plugin, whose built-in is CEL (the `cel`
//! plugin, built on the same crate and version as this module). Templates and `for_each` are
//! evaluated here, natively, with the same standard library and the same two extensions
//! (`length()` and `first()`), so `steps.fetch.output.items.first().id` means the same thing in a
//! condition and in a template. They do not go through the plugin for two reasons: the plugin
//! interface answers a boolean, while a template yields any value (the list a step fans out over,
//! an object passed on whole); and templates are rendered for every job a step submits, where a
//! sandboxed call per string would cost more than the evaluation.
//!
//! Evaluation is CEL's: a missing key or an unknown variable is an error (the step fails naming
//! the template), not a silent `null` — `has(input.x) ? input.x : 'default'` says what to do
//! instead. Saving a definition compiles every template, so a syntax error is a 4xx naming the
//! step and field, never a failed run.
//!
//! [CEL]: https://github.com/google/cel-spec

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::extractors::This;
use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Program, Value as Cel};
use serde_json::Value;

/// The standard library, built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

fn compile(source: &str) -> Result<Program, String> {
    if source.trim().is_empty() {
        return Err("empty expression".into());
    }
    ENV.compile(source)
        .map_err(|e| format!("invalid CEL expression `{source}`: {e}"))
}

/// Whether `source` is a well-formed expression (syntax only: the scope is known at run time).
pub fn check(source: &str) -> Result<(), String> {
    compile(source).map(drop)
}

/// Evaluates `source` with every top-level key of the JSON object `scope` as a variable
/// (`input`, `ctx`, `steps`, and `item`/`index` inside a `for_each`).
pub fn evaluate(source: &str, scope: &Value) -> Result<Value, String> {
    let program = compile(source)?;
    let mut context = Context::with_env(Arc::clone(&ENV));
    context
        .add_function("length", length)
        .and_then(|()| context.add_function("first", first))
        .map_err(|e| format!("declaring the CEL extensions: {e}"))?;
    for (name, value) in scope.as_object().into_iter().flatten() {
        context.add_variable_from_value(name.as_str(), to_cel(value));
    }
    let out = program
        .execute(&context)
        .map_err(|e| format!("`{source}`: {e}"))?;
    out.json()
        .map_err(|e| format!("`{source}` gave a value JSON cannot hold: {e}"))
}

/// A JSON value as a CEL value, as the `cel` plugin converts its scope: whole numbers are `int`
/// when they fit (`uint` past that), others `double`. (Serde would make every non-negative
/// number a `uint`, and CEL does not mix `uint` and `int` in arithmetic: `input.n * 2` would
/// fail.)
fn to_cel(json: &Value) -> Cel {
    match json {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            (None, None) => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => Cel::from(
            fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect::<HashMap<Key, Cel>>(),
        ),
    }
}

/// `length()`: the size of a string (in code points), a list, a map or bytes — as in the `cel`
/// condition plugin.
fn length(This(value): This<Cel>) -> Result<Cel, ExecutionError> {
    let n = match &value {
        Cel::String(s) => s.chars().count(),
        Cel::List(items) => items.len(),
        Cel::Map(map) => map.map.len(),
        Cel::Bytes(bytes) => bytes.len(),
        other => {
            return Err(ExecutionError::function_error(
                "length",
                format!("no length for a {}", other.type_of()),
            ));
        }
    };
    Ok(Cel::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// `first()`: the first element of a list, `null` when it is empty — as in the `cel` plugin.
fn first(This(list): This<Arc<Vec<Cel>>>) -> Cel {
    list.first().cloned().unwrap_or(Cel::Null)
}

/// A piece of a string that may hold templates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Piece<'a> {
    Text(&'a str),
    /// The expression between `${` and its closing `}`.
    Expr(&'a str),
}

/// Splits `s` into literal text and `${expr}` templates. An expression may hold braces (a map
/// literal) and strings with braces in them: the template ends at the `}` that closes it.
pub fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let body = &rest[start + 2..];
        let end = closing_brace(body).ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        out.push(Piece::Expr(&body[..end]));
        rest = &body[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The offset of the `}` closing a template body: braces nest, and those inside quotes do not
/// count.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The expression of a `for_each`, which may be written bare (`input.items`) or as one template
/// (`${input.items}`).
pub fn bare(source: &str) -> &str {
    match pieces(source.trim()).as_deref() {
        Ok([Piece::Expr(e)]) => e,
        _ => source,
    }
}

/// Compiles every template in `s`.
pub fn check_template(s: &str) -> Result<(), String> {
    pieces(s)?.into_iter().try_for_each(|p| match p {
        Piece::Expr(e) => check(e),
        Piece::Text(_) => Ok(()),
    })
}

/// Fills the templates of one string. A string that is exactly one template takes the value's
/// type; templates inside longer text are spliced in (a string as is, `null` as nothing, other
/// values as JSON).
pub fn render_string(s: &str, scope: &Value) -> Result<Value, String> {
    let ps = pieces(s)?;
    if let [Piece::Expr(e)] = ps.as_slice() {
        return evaluate(e, scope);
    }
    let mut out = String::new();
    for p in ps {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr(e) => match evaluate(e, scope)? {
                Value::String(s) => out.push_str(&s),
                Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope() -> Value {
        json!({
            "input": {"n": 3, "ratio": 0.5, "xs": [1, 2, 3], "name": "ada", "big": 18446744073709551615u64},
            "ctx": {},
            "steps": {"fetch": {"status": "succeeded", "output": {"items": [{"id": "a"}, {"id": "b"}]}}},
        })
    }

    #[test]
    fn expressions_yield_json_of_any_type() {
        let s = scope();
        assert_eq!(evaluate("input.n * 2 + 1", &s), Ok(json!(7)));
        assert_eq!(evaluate("input.ratio", &s), Ok(json!(0.5)));
        assert_eq!(
            evaluate("input.xs.map(x, x * 10)", &s),
            Ok(json!([10, 20, 30]))
        );
        assert_eq!(
            evaluate("input.xs.filter(x, x > 1).size()", &s),
            Ok(json!(2))
        );
        assert_eq!(
            evaluate("{'who': input.name, 'ok': input.n > 2}", &s),
            Ok(json!({"who": "ada", "ok": true}))
        );
        assert_eq!(
            evaluate("input.n > 5 ? 'big' : 'small'", &s),
            Ok(json!("small"))
        );
        assert_eq!(evaluate("input.big", &s), Ok(json!(u64::MAX)));
    }

    #[test]
    fn the_condition_plugin_extensions_work_here_too() {
        let s = scope();
        assert_eq!(
            evaluate("steps.fetch.output.items.first().id", &s),
            Ok(json!("a"))
        );
        assert_eq!(evaluate("length(input.name)", &s), Ok(json!(3)));
        assert_eq!(evaluate("input.xs.length()", &s), Ok(json!(3)));
        assert_eq!(evaluate("[].first()", &s), Ok(Value::Null));
    }

    #[test]
    fn a_missing_key_is_an_error_that_has_can_avoid() {
        let s = scope();
        let e = evaluate("input.nope", &s).unwrap_err();
        assert!(e.contains("input.nope"), "{e}");
        assert_eq!(
            evaluate("has(input.nope) ? input.nope : 'fallback'", &s),
            Ok(json!("fallback"))
        );
    }

    #[test]
    fn syntax_errors_are_found_without_a_scope() {
        assert!(check("input.n > 1 && size(input.xs) == 3").is_ok());
        assert!(check("input.n >").unwrap_err().contains("invalid CEL"));
        assert!(check("input..x").is_err());
        assert!(check("  ").is_err());
    }

    #[test]
    fn templates_end_at_their_own_brace() {
        assert_eq!(
            pieces("a ${ {'k': '}'}.k } b ${input.n}").unwrap(),
            [
                Piece::Text("a "),
                Piece::Expr(" {'k': '}'}.k "),
                Piece::Text(" b "),
                Piece::Expr("input.n"),
            ]
        );
        assert!(pieces("x ${input.n").is_err());
        assert_eq!(
            pieces("no templates").unwrap(),
            [Piece::Text("no templates")]
        );
    }

    #[test]
    fn one_template_keeps_the_type_and_mixed_text_interpolates() {
        let s = scope();
        assert_eq!(render_string("${input.xs}", &s), Ok(json!([1, 2, 3])));
        assert_eq!(render_string("${input.n + 1}", &s), Ok(json!(4)));
        assert_eq!(
            render_string("${input.name}: ${input.n * 2} ${null}${input.xs}", &s),
            Ok(json!("ada: 6 [1,2,3]"))
        );
        assert_eq!(
            render_string("${ {'k': '}'}.k }", &s),
            Ok(json!("}")),
            "a brace in a string does not end the template"
        );
    }

    #[test]
    fn for_each_may_be_bare_or_one_template() {
        assert_eq!(bare("input.xs"), "input.xs");
        assert_eq!(bare(" ${input.xs} "), "input.xs");
        assert_eq!(bare("${a} ${b}"), "${a} ${b}");
    }
}
