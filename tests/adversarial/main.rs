//! The attacker's tests (issue 13, SPEC §12): what a hostile or careless tenant, request,
//! worker, plugin or bus peer can send, each case as a test that failed before its fix. One
//! module per trust boundary; the hosts are the same as the other end-to-end tests start (both
//! backends where the case applies, each with prefixes of its own).

#[path = "../common/mod.rs"]
mod common;
mod isolation;
mod keys;
mod limits;

mod expressions;
