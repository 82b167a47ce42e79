//! Coretex's domain, at the bottom of the workspace: plain data and pure functions, no I/O.
//!
//! * [`job`] — the job model, its states and the one transition table the stores implement;
//!   [`ids`] — tenant-qualified ids; [`time`] — the clock's units; [`limits`] — the bounds on
//!   what a caller may send.
//! * [`protocol`] — the messages between hosts and workers.
//! * [`workflow`] — workflow definitions, runs and their validation; the expression scope.
//! * The contracts the services call and the plugin host implements: [`strategy`] (placing a
//!   job on a worker, with the native least-loaded default), [`retry`] (what a failure becomes)
//!   and [`plugin`] (the plugin kinds and the condition and expression evaluators).
//!
//! Everything that talks to Redis, NATS or wasmtime depends on this crate, never the other way.

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

pub mod ids;
pub mod job;
pub mod limits;
pub mod plugin;
pub mod protocol;
pub mod retry;
pub mod strategy;
pub mod time;
pub mod workflow;
