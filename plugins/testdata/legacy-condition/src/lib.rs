//! `legacy-condition`: a step condition built against `coretex:plugin@0.2.0`, whose WIT is
//! inlined here as it was released (before 0.2.1 added `expression`), so the host's tests prove
//! that a plugin built for an older 0.2.x keeps loading. The expression `true` is true, any other
//! false.

wit_bindgen::generate!({
    inline: r#"
        package coretex:plugin@0.2.0;

        interface types {
            enum priority { interactive, batch, critical }
            record plugin-error { message: string }
        }

        interface condition {
            use types.{plugin-error};
            compile: func(expression: string) -> result<_, plugin-error>;
            evaluate: func(expression: string, scope-json: string) -> result<bool, plugin-error>;
        }

        world step-condition {
            export condition;
        }
    "#,
});

use coretex::plugin::types::PluginError;

struct Legacy;

impl exports::coretex::plugin::condition::Guest for Legacy {
    fn compile(_expression: String) -> Result<(), PluginError> {
        Ok(())
    }

    fn evaluate(expression: String, _scope_json: String) -> Result<bool, PluginError> {
        Ok(expression == "true")
    }
}

export!(Legacy);
