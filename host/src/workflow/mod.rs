//! The workflow engine (SPEC §10): definitions and runs as plain data ([`definition`]), and the
//! engine that stores them, dispatches ready steps as jobs through the scheduler and advances
//! runs as their jobs end ([`engine`]). Templates and `for_each` are CEL expressions
//! ([`expr`]), the language of the built-in condition evaluator, evaluated in its sandbox.

pub mod definition;
pub mod engine;
pub mod expr;
