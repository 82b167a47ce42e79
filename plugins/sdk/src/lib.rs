//! Write Coretex plugins in plain Rust.
//!
//! Coretex asks plugins three questions: *which worker gets this job* (a
//! [`dispatch::DispatchStrategy`]), *does this workflow step run* (a
//! [`condition::StepCondition`]) and *is this failed job retried* (a [`retry::RetryPolicy`]).
//! A plugin is a `cdylib` crate that implements one of the traits and exports it with the
//! matching macro; `cargo build --release --target wasm32-wasip2` turns it into a WebAssembly
//! component that the host loads into a sandbox. (A fourth, [`expression::ExpressionLanguage`],
//! is the language of workflow templates; the host asks only its built-in `cel`.)
//!
//! ```
//! use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};
//!
//! /// The worker with the most free slots.
//! #[derive(Default)]
//! struct MostFreeSlots;
//!
//! impl DispatchStrategy for MostFreeSlots {
//!     fn pick(&self, _: &Job, candidates: Candidates<'_>, _: &dyn Context) -> Result<Decision, String> {
//!         let roomiest = candidates.iter().enumerate().max_by_key(|(_, c)| c.free_slots());
//!         Ok(match roomiest {
//!             Some((i, _)) => Decision::Worker(i),
//!             None => Decision::NoWorker("no eligible worker".into()),
//!         })
//!     }
//! }
//!
//! coretex_plugin_sdk::export_dispatch_strategy!(MostFreeSlots);
//! ```
//!
//! The generated WebAssembly bindings stay inside this crate; a plugin sees only the types of
//! its kind's module. [`testing`] runs a strategy natively, so a plugin is unit-tested with a
//! plain `cargo test`.

pub mod condition;
pub mod dispatch;
#[doc(hidden)]
pub mod export;
pub mod expression;
mod random;
pub mod retry;
pub mod testing;
mod wit;

pub use random::Rng;
/// The JSON library of condition and expression scopes, so plugins use the same version.
pub use serde_json;
