//! Workflows as plain data: definitions, runs and their validation ([`definition`]), and the
//! scope templates and `for_each` expressions see ([`expr`]). The engine that runs them is the
//! host's.

pub mod definition;
pub mod expr;
