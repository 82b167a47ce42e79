//! The built-in plugins, embedded in the binary by `build.rs` (which builds them from
//! `plugins/`): the dispatch strategies `least-loaded`, `round-robin`, `power-of-two-choices`
//! and `label-affinity`, the condition evaluator `cel`, and the retry policies
//! `exponential-jitter`, `fixed` and `never`.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
