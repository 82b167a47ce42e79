//! For the unit tests: the real built-in expression language, loaded once per test binary
//! (compiled components come from the per-user cache after the first run).

use std::sync::{Arc, OnceLock};

use crate::plugins::adapters::EXPRESSION_LANGUAGE;
use crate::plugins::breaker::BreakerConfig;
use crate::plugins::runtime::PluginRuntime;
use crate::plugins::{PluginExpressions, PluginRegistry, PluginSettings, Source};

/// A registry with the built-in expression language installed, one per test process.
pub fn builtin_registry() -> &'static Arc<PluginRegistry> {
    static REGISTRY: OnceLock<Arc<PluginRegistry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let runtime = PluginRuntime::new(&PluginSettings::default()).unwrap();
        let registry = PluginRegistry::new(runtime, BreakerConfig::default());
        let (name, bytes) = coretex_builtins::BUILTINS
            .iter()
            .find(|(name, _)| *name == EXPRESSION_LANGUAGE)
            .unwrap();
        registry.install(name, Source::Builtin, bytes).unwrap();
        registry
    })
}

pub fn builtin_expressions() -> PluginExpressions {
    builtin_registry().expressions()
}
