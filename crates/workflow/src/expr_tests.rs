//! Tests of `coretex_core::workflow::expr` that need the real expression language: the built-in
//! `cel` component, which only the host can run.

use serde_json::json;

use crate::expr::*;
use crate::testing::builtin_expressions;

#[test]
fn one_template_keeps_the_type_and_mixed_text_interpolates() {
    let cel = builtin_expressions();
    let s = Scope::of(json!({"input": {"n": 3, "xs": [1, 2, 3], "name": "ada"}}));
    assert_eq!(render_string("${input.xs}", &s, &cel), Ok(json!([1, 2, 3])));
    assert_eq!(render_string("${input.n + 1}", &s, &cel), Ok(json!(4)));
    assert_eq!(
        render_string("${input.name}: ${input.n * 2} ${null}${input.xs}", &s, &cel),
        Ok(json!("ada: 6 [1,2,3]"))
    );
    assert_eq!(
        render_string("${ {'k': '}'}.k }", &s, &cel),
        Ok(json!("}")),
        "a brace in a string does not end the template"
    );
    let e = render_string("${input.nope}", &s, &cel).unwrap_err();
    assert!(
        e.contains("`input.nope`"),
        "the error names the expression: {e}"
    );
}

#[test]
fn syntax_is_checked_in_the_sandbox() {
    let cel = builtin_expressions();
    assert_eq!(
        check_template("n=${input.n > 1 && size(input.xs) == 3}", &cel),
        Ok(())
    );
    let e = check_template("ok ${input.n >}", &cel).unwrap_err();
    assert!(
        e.contains("`input.n >`") && e.contains("invalid CEL"),
        "{e}"
    );
    assert!(check_template("${input..x}", &cel).is_err());
    assert!(check_template("${ }", &cel).is_err());
}

#[test]
fn for_each_may_be_bare_or_one_template() {
    assert_eq!(bare("input.xs"), "input.xs");
    assert_eq!(bare(" ${input.xs} "), "input.xs");
    assert_eq!(bare("${a} ${b}"), "${a} ${b}");
}
