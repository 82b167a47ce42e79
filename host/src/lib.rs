//! Coretex: a job and workflow orchestrator whose scheduling decisions are pluggable.
//!
//! The modules follow SPEC.md's components, in crates along the layers (README, "Layout").
//! Domain types without I/O sit at the bottom ([`job`], [`ids`], [`protocol`], [`time`]); the
//! backends ([`store`], [`bus`]) and the plugin host ([`plugins`]) sit on them; the
//! [`scheduler`] (with [`configsvc`]) on those, the [`workflow`] engine on the scheduler. This
//! crate holds what is above: the [`reconciler`], [`dlq`] and [`worker`]; [`gateway`] serves
//! them over HTTP, and [`serve`] wires a process, handing each service the handles it needs.

// Nothing a caller sends may panic the host: outside tests, failures are errors, not unwinds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

// The domain modules live in `coretex-core`; re-exported so paths read as one tree.
pub use coretex_core::{ids, job, limits, protocol, time};
// The backends and the plugin host's breakers are crates of their own, under the same paths.
pub use coretex_bus as bus;
pub use coretex_plugin_host::breaker;
pub use coretex_store as store;
// The scheduler is a crate of its own, with the config service, job metrics and leader lock it
// needs; under the same paths.
pub use coretex_scheduler as scheduler;
pub use coretex_scheduler::{configsvc, job_metrics, leader};
// The workflow engine likewise, above the scheduler.
pub use coretex_workflow as workflow;

pub mod dlq;
pub mod gateway;
#[cfg(test)]
mod limits_docs;
pub mod loadgen;
pub mod plugins;
pub mod reconciler;
pub mod serve;
pub mod supervisor;
pub mod ui;
pub mod worker;
