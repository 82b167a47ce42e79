//! The workflow engine (SPEC §10): definitions and runs as plain data ([`definition`]), and the
//! engine that stores them, dispatches ready steps as jobs through the scheduler and advances
//! runs as their jobs end ([`engine`]). Templates and `for_each` are CEL expressions
//! ([`expr`]), the language of the built-in condition evaluator, evaluated in its sandbox.

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

pub mod engine;
mod plan;

pub use coretex_core::workflow::{definition, expr};

// The layers below, under the paths the modules name them by.
use coretex_bus as bus;
use coretex_core::{ids, job, limits, time};
use coretex_plugin_host as plugins;
use coretex_scheduler as scheduler;
use coretex_scheduler::{configsvc, leader};
use coretex_store as store;

#[cfg(test)]
mod definition_tests;
#[cfg(test)]
mod expr_tests;
#[cfg(test)]
mod testing;
