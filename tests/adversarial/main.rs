//! The attacker's tests (issue 13, SPEC §12): what a hostile or careless tenant, request,
//! worker, plugin or bus peer can send, each case as a test that failed before its fix. One
//! module per trust boundary; the hosts are the same as the other end-to-end tests start (both
//! backends where the case applies, each with prefixes of its own).

/// Runs each named case (`async fn case(Backend)`) on both backends, as the tests
/// `<module>::embedded::<case>` and `<module>::real::<case>`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(crate::common::Backend::Embedded).await })*
        }
        mod real {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(crate::common::Backend::Real).await })*
        }
    };
}

mod abandoned;
mod bus;
#[path = "../common/mod.rs"]
mod common;
mod drain;
mod expressions;
mod isolation;
mod keys;
mod limits;
mod plugins_slow;
mod records;
mod workers;
