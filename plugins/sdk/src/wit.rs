//! The generated bindings, one module per world. Private: authors see the plain types of
//! [`crate::dispatch`], [`crate::condition`], [`crate::expression`] and [`crate::retry`], and the
//! glue in [`crate::export`] converts between the two.
//!
//! Each module describes only its world's *imports* in this crate; the world's exports are
//! described by the wit-bindgen export macro, which only an `export_*!` invocation in a plugin
//! crate expands. So a plugin built with `export_retry_policy!` is a component that exports the
//! retry world and nothing else, and the host reads the plugin's kind from that. The one
//! exception, `export_expression_language!`, expands two worlds' macros (`step-condition` and
//! `expression-evaluator`); wit-component unites them into one component that exports both.

pub mod dispatch_strategy {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "dispatch-strategy",
        pub_export_macro: true,
        export_macro_name: "__export_dispatch_strategy_world",
    });
}

pub mod step_condition {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "step-condition",
        pub_export_macro: true,
        export_macro_name: "__export_step_condition_world",
    });
}

pub mod expression_evaluator {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "expression-evaluator",
        pub_export_macro: true,
        export_macro_name: "__export_expression_evaluator_world",
    });
}

pub mod retry_policy {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "retry-policy",
        pub_export_macro: true,
        export_macro_name: "__export_retry_policy_world",
    });
}
