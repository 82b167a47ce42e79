//! The built-in plugins, embedded by `build.rs` (which builds them from `plugins/`): the
//! dispatch strategies `least-loaded`, `round-robin`, `power-of-two-choices` and
//! `label-affinity`, the condition evaluator `cel`, and the retry policies
//! `exponential-jitter`, `fixed` and `never`.
//!
//! A crate of its own, with no dependencies, so that the host embeds them in its binary and the
//! crates below the host (the workflow engine's tests need the real `cel`) can load them too.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
