//! The workflow engine (SPEC §10): definitions and runs as plain data ([`definition`]), and the
//! engine that stores them, dispatches ready steps as jobs through the scheduler and advances
//! runs as their jobs end ([`engine`]). Templates and `for_each` are CEL expressions
//! ([`expr`]), the language of the built-in condition evaluator, evaluated in its sandbox.

pub mod engine;
mod plan;

pub use coretex_core::workflow::{definition, expr};

#[cfg(test)]
mod definition_tests;
#[cfg(test)]
mod expr_tests;
