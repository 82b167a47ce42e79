//! Plugins in the host: the plugin host itself — runtime, registry, adapters, breakers — is the
//! `coretex-plugin-host` crate (the only one that knows wasmtime), re-exported here whole so
//! `coretex::plugins::…` paths name it. What it cannot know lives here: the plugins built into
//! the binary ([`load_builtins`]) and the uploaded ones, kept in the store and announced on the
//! bus ([`uploads`]).

pub use coretex_plugin_host::*;

mod builtin;
pub mod uploads;

/// Loads the plugins embedded in the binary (built from `plugins/` by `build.rs`). Compiles when
/// the cache misses: call it off the async threads.
pub fn load_builtins(registry: &PluginRegistry) {
    for (name, bytes) in builtin::BUILTINS {
        let _ = registry.install(name, Source::Builtin, bytes);
    }
}

/// For the host's unit tests: the real built-in expression language, loaded once per test
/// binary (compiled components come from the per-user cache after the first run).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, OnceLock};

    use super::adapters::EXPRESSION_LANGUAGE;
    use super::runtime::PluginRuntime;
    use super::{PluginExpressions, PluginRegistry, PluginSettings, Source, builtin};
    use crate::breaker::BreakerConfig;

    /// A registry with the built-in expression language installed, one per test process.
    pub fn builtin_registry() -> &'static Arc<PluginRegistry> {
        static REGISTRY: OnceLock<Arc<PluginRegistry>> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let runtime = PluginRuntime::new(&PluginSettings::default()).unwrap();
            let registry = PluginRegistry::new(runtime, BreakerConfig::default());
            let (name, bytes) = builtin::BUILTINS
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
}
