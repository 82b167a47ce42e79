//! Workflow expressions (SPEC §10): the `${…}` templates of step inputs and the `for_each`
//! expressions — their syntax, the scope they see, and how a template's value fills its string.
//! Evaluating them is an [`ExpressionEvaluator`]'s: the built-in `cel` component, in its sandbox.
//!
//! # One language, evaluated in the sandbox
//!
//! Step conditions, templates and `for_each` are all [CEL]: `steps.fetch.output.items.first().id`
//! means the same thing in each. Conditions go to the configured evaluator plugin; templates and
//! `for_each` to the built-in `cel` component, through the `expression` interface it exports
//! besides `condition` (`wit/expression.wit`), because a template yields any value where a
//! condition answers a boolean. They run there rather than natively for what the sandbox bounds:
//! a template is a tenant's code, and `${input.n.map(a, input.n.map(b, a*b)).size()}` over 3,000
//! items ran for seconds on the host's runtime thread (a nested expression a few dozen levels
//! deep overflowed its stack). In the component each evaluation has the expression deadline and
//! the memory cap of a plugin call, and the engine evaluates off the async threads
//! ([`super::engine`]); an expression past either limit fails its step naming the expression and
//! the limit. The component compiles each source once and keeps the program.
//!
//! A [`Scope`] is made once per step and holds each variable as JSON text, which the sandbox
//! takes as is: a step's templates and the children of a fan-out share the text of `input`,
//! `ctx` and `steps`, and the component parses a text it saw in the previous call only once.
//!
//! Evaluation is CEL's: a missing key or an unknown variable is an error (the step fails naming
//! the template), not a silent `null` — `has(input.x) ? input.x : 'default'` says what to do
//! instead. Saving a definition checks every template's syntax in the component, so a syntax
//! error is a 4xx naming the step and field, never a failed run.
//!
//! [CEL]: https://github.com/google/cel-spec

use std::cell::OnceCell;
use std::sync::Arc;

use serde_json::Value;

use crate::plugin::ExpressionEvaluator;

/// The variables an expression sees — `input`, `ctx`, `steps`, and inside a `for_each` `item`
/// and `index` — each as JSON text: serialized on first use (a step that renders nothing pays
/// nothing), once, and shared by the scopes made from it with [`Scope::with`].
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// A JSON object, a variable per key, until the texts are made.
    value: Value,
    /// (name, JSON text)
    texts: OnceCell<Vec<(Arc<str>, Arc<str>)>>,
}

impl Scope {
    /// A variable for each top-level key of `object` (none for another value).
    pub fn of(object: Value) -> Scope {
        Scope {
            value: object,
            texts: OnceCell::new(),
        }
    }

    fn texts(&self) -> &[(Arc<str>, Arc<str>)] {
        self.texts.get_or_init(|| {
            self.value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, value)| (Arc::from(name.as_str()), Arc::from(value.to_string())))
                .collect()
        })
    }

    /// This scope with `name` set to `value` (replacing the variable of that name, if any).
    pub fn with(&self, name: &str, value: &Value) -> Scope {
        let json: Arc<str> = Arc::from(value.to_string());
        let mut texts = self.texts().to_vec();
        match texts.iter_mut().find(|(n, _)| &**n == name) {
            Some((_, v)) => *v = json,
            None => texts.push((Arc::from(name), json)),
        }
        Scope {
            value: Value::Null,
            texts: OnceCell::from(texts),
        }
    }

    /// Each variable's name and JSON text.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.texts().iter().map(|(n, v)| (&**n, &**v))
    }
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

/// Checks the syntax of every template in `s`.
pub fn check_template(s: &str, expressions: &dyn ExpressionEvaluator) -> Result<(), String> {
    pieces(s)?.into_iter().try_for_each(|p| match p {
        Piece::Expr(e) => expressions.check(e),
        Piece::Text(_) => Ok(()),
    })
}

/// Fills the templates of one string. A string that is exactly one template takes the value's
/// type; templates inside longer text are spliced in (a string as is, `null` as nothing, other
/// values as JSON).
pub fn render_string(
    s: &str,
    scope: &Scope,
    expressions: &dyn ExpressionEvaluator,
) -> Result<Value, String> {
    let ps = pieces(s)?;
    if let [Piece::Expr(e)] = ps.as_slice() {
        return expressions.evaluate(e, scope);
    }
    let mut out = String::new();
    for p in ps {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr(e) => match expressions.evaluate(e, scope)? {
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
    fn a_scope_shares_its_texts_and_replaces_a_variable_by_name() {
        let base = Scope::of(json!({"input": {"n": 1}, "steps": {}}));
        let child = base.with("item", &json!("a")).with("index", &json!(0));
        let again = child.with("item", &json!("b"));
        let vars: Vec<(&str, &str)> = again.variables().collect();
        assert_eq!(
            vars,
            [
                ("input", r#"{"n":1}"#),
                ("steps", "{}"),
                ("item", r#""b""#),
                ("index", "0")
            ]
        );
        assert!(Arc::ptr_eq(&base.texts()[0].1, &again.texts()[0].1));
        assert_eq!(Scope::of(json!([1])).variables().count(), 0);
    }
}
