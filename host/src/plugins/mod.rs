//! Plugins in the host: the plugin host itself — runtime, registry, adapters, breakers — is the
//! `coretex-plugin-host` crate (the only one that knows wasmtime), re-exported here whole so
//! `coretex::plugins::…` paths name it. What it cannot know lives here: the plugins built into
//! the binary ([`load_builtins`]) and the uploaded ones, kept in the store and announced on the
//! bus ([`uploads`]).

pub use coretex_plugin_host::*;

/// The uploaded plugins, kept in the store and announced on the bus (in `coretex-scheduler`).
pub use coretex_scheduler::uploads;

/// Loads the plugins embedded in the binary (built from `plugins/` by `coretex-builtins`).
/// Compiles when the cache misses: call it off the async threads.
pub fn load_builtins(registry: &PluginRegistry) {
    for (name, bytes) in coretex_builtins::BUILTINS {
        let _ = registry.install(name, Source::Builtin, bytes);
    }
}
