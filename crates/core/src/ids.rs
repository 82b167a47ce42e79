//! The ids a tenant owns — jobs, traces, workflows and runs — and how a caller's id is read.
//! Plain functions, no I/O.
//!
//! # One name space per tenant
//!
//! A client names its jobs and workflows (`"id": "order-42"`), and two tenants may well pick the
//! same name. So every id the host keeps is *qualified*: `{tenant}~{local}` (`acme~order-42`),
//! where neither a tenant nor a client's local id may hold `~` (both are identifiers,
//! [`crate::job::check_ident`]). From that:
//!
//! * The same local id in two tenants is two jobs; neither tenant can learn whether the other's
//!   exists, nor squat it.
//! * An id says whose it is: a tenant key naming another tenant's id is answered 404 before the
//!   store is read ([`resolve`]).
//! * Ids the host derives — a retry's `…~attempt-2`, a dead-letter replay's `…~retry-1`, a
//!   workflow step's job `{run}~{step}~{attempt}` — hold a `~` past the tenant's, so no client
//!   can submit one first ([`derive`]).
//! * No id equals a key the host keeps for itself: the store puts each id between braces
//!   (`job:{acme~x}`), which no id holds (see `store::redis`).
//!
//! The API answers qualified ids, and takes either form: an unqualified id is the caller's — a
//! tenant key's own tenant, or for an admin the default tenant.

use crate::job::{DEFAULT_TENANT, FieldError};

/// Between a tenant and its local id, and before each part the host derives.
pub const SEP: char = '~';

/// The longest qualified id the API takes: a tenant and a local id (128 each) and the parts
/// the host adds (a step id, attempt numbers).
pub const MAX_QUALIFIED_LEN: usize = 512;

/// The id of what `tenant` calls `local`.
pub fn qualify(tenant: &str, local: &str) -> String {
    let mut id = String::with_capacity(tenant.len() + 1 + local.len());
    id.push_str(tenant);
    id.push(SEP);
    id.push_str(local);
    id
}

/// The tenant a qualified id belongs to (`None` for an unqualified one).
pub fn tenant_of(id: &str) -> Option<&str> {
    id.split_once(SEP).map(|(tenant, _)| tenant)
}

/// An id the host derives from `parent` (a retry, a replay, a step's job): `{parent}~{part}`.
/// A client's local id holds no `~`, so no client can choose one.
pub fn derive(parent: &str, part: impl std::fmt::Display) -> String {
    format!("{parent}{SEP}{part}")
}

/// Whether `id` may name something a tenant owns, qualified or not: 1–[`MAX_QUALIFIED_LEN`]
/// of `[A-Za-z0-9._:~-]`, not starting or ending with `~`, no two `~` in a row.
pub fn check_id(field: &str, id: &str, errors: &mut Vec<FieldError>) {
    let well_formed = !id.is_empty()
        && id.len() <= MAX_QUALIFIED_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'~'))
        && id.split(SEP).all(|part| !part.is_empty());
    if !well_formed {
        errors.push(FieldError::new(
            field,
            format!(
                "must be 1–{MAX_QUALIFIED_LEN} of letters, digits, '.', '_', '-' and ':', \
                 optionally qualified by a tenant (`tenant~id`)"
            ),
        ));
    }
}

/// The whole id a caller means by `id`: a tenant key (`tenant`) means its own tenant's, an
/// admin (`None`) the default tenant's when `id` is unqualified. `None` when `id` is qualified
/// with a tenant other than the caller's: it is not the caller's to see, and the answer is a 404
/// that never read the store.
pub fn resolve(id: &str, tenant: Option<&str>) -> Option<String> {
    match (tenant_of(id), tenant) {
        (Some(owner), Some(caller)) if owner != caller => None,
        (Some(_), _) => Some(id.to_string()),
        (None, caller) => Some(qualify(caller.unwrap_or(DEFAULT_TENANT), id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_local_id_in_two_tenants_is_two_ids() {
        assert_ne!(qualify("acme", "order-42"), qualify("beta", "order-42"));
        assert_eq!(tenant_of(&qualify("acme", "x:y")), Some("acme"));
    }

    #[test]
    fn qualification_cannot_be_forged_with_separators_in_either_part() {
        // `acme` + `x:k` and `acme:x` + `k` were one idempotency key once.
        assert_ne!(qualify("acme", "x:k"), qualify("acme:x", "k"));
    }

    #[test]
    fn a_tenant_key_resolves_its_own_ids_only() {
        assert_eq!(resolve("x", Some("acme")).as_deref(), Some("acme~x"));
        assert_eq!(resolve("acme~x", Some("acme")).as_deref(), Some("acme~x"));
        assert_eq!(resolve("beta~x", Some("acme")), None);
        assert_eq!(resolve("x", None).as_deref(), Some("default~x"));
        assert_eq!(resolve("beta~x", None).as_deref(), Some("beta~x"));
    }

    #[test]
    fn derived_ids_are_out_of_a_clients_reach() {
        let derived = derive(&qualify("acme", "j"), "attempt-2");
        assert_eq!(derived, "acme~j~attempt-2");
        let mut errors = Vec::new();
        crate::job::check_ident("id", "j~attempt-2", &mut errors);
        assert_eq!(errors.len(), 1, "a client may not submit a derived id");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in ["", "~x", "x~", "a~~b", "a b", "a{b}", &"x".repeat(513)] {
            let mut errors = Vec::new();
            check_id("id", bad, &mut errors);
            assert_eq!(errors.len(), 1, "{bad:?}");
        }
        let mut errors = Vec::new();
        check_id("id", "acme~run-1~fetch~2", &mut errors);
        assert!(errors.is_empty());
    }
}
