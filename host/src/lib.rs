//! Coretex: a job and workflow orchestrator whose scheduling decisions are pluggable.
//!
//! The modules follow SPEC.md's components, in crates along the layers (README, "Layout").
//! Domain types without I/O sit at the bottom ([`job`], [`ids`], [`protocol`], [`time`]); the
//! backends ([`store`], [`bus`]) and the plugin host ([`plugins`]) sit on them; the
//! [`scheduler`] (with the services on it: [`configsvc`], [`reconciler`], [`dlq`]) on those, the
//! [`workflow`] engine on the scheduler, the [`gateway`] (and the [`ui`]) on both. This crate
//! holds the binary's parts: [`serve`] wires a process, handing each service the handles it
//! needs and its loops to the [`supervisor`]; [`worker`] and [`loadgen`] are the other commands.

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
// The scheduler is a crate of its own, with the services on it (config, reconciler, dead
// letters, job metrics, the leader lock); under the same paths.
pub use coretex_scheduler as scheduler;
pub use coretex_scheduler::{configsvc, dlq, job_metrics, leader, reconciler};
// The workflow engine above it, the gateway and dashboard above both, the loop supervisor.
pub use coretex_gateway as gateway;
pub use coretex_gateway::ui;
pub use coretex_supervisor as supervisor;
pub use coretex_workflow as workflow;

#[cfg(test)]
mod limits_docs;
pub mod loadgen;
pub mod plugins;
pub mod serve;
pub mod worker;
