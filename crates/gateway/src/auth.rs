//! Who is calling (SPEC §11): API keys, each an admin key or bound to one tenant, and a rate
//! limit per key.
//!
//! A tenant key sees and touches only its tenant's jobs, workflow definitions and runs, config
//! (the `org` scope of its tenant) and dead letters: another tenant's id answers 404, as if it
//! did not exist, and a list (and the live stream) is narrowed to the tenant. Plugin uploads
//! and the system, team, workflow and step config scopes need an admin key. With no key
//! configured at all the API is open — everyone is admin — and `serve` listens on loopback
//! only.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;

/// The caller of a request, as its key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin key, or any caller of an API that has no keys.
    Admin,
    /// A key bound to this tenant.
    Tenant(Arc<str>),
}

impl Caller {
    /// The tenant the caller is bound to; `None` for an admin.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(t),
        }
    }

    /// Whether the caller may see what belongs to `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant().is_none_or(|t| t == tenant)
    }

    /// The whole id the caller means by the `field` of a path or query (see
    /// [`crate::ids::resolve`]): its own tenant's for a tenant key, the default tenant's for an
    /// admin's unqualified id. A malformed id is a 422 naming `field`; another tenant's is a 404
    /// naming `what`, answered before anything is read, as for an id that does not exist.
    pub fn resolve(&self, field: &str, what: &str, id: &str) -> Result<String, ApiError> {
        let mut errors = Vec::new();
        crate::ids::check_id(field, id, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        crate::ids::resolve(id, self.tenant())
            .ok_or_else(|| ApiError::not_found(format!("no such {what} `{id}`")))
    }

    /// 403 unless the caller is an admin; `what` says what needs it.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{what} needs an admin key"),
            )),
        }
    }

    /// The tenant of a list's filter, or of a new job or workflow, for this caller: an admin's as
    /// given; a tenant key's is its own tenant (naming another is a 403 on `field`).
    pub fn narrow(&self, field: &str, given: Option<String>) -> Result<Option<String>, ApiError> {
        match self.tenant() {
            None => Ok(given),
            Some(t) => match given {
                Some(g) if g != t => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("`{field}`: this key sees only tenant `{t}`"),
                )),
                _ => Ok(Some(t.to_string())),
            },
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Put there by `authenticate`, which every /api route passes through.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "the request was not authenticated",
            )
        })
    }
}

/// The configured keys and the rate limiter.
pub struct Keys {
    /// Key → (its index, which bucket of the rate limiter it draws from; the caller).
    keys: HashMap<String, (u32, Caller)>,
    limiter: Option<DefaultKeyedRateLimiter<u32>>,
}

impl Keys {
    /// `admin` and `tenants` (tenant, key) pairs; `rate` requests per second per key (a burst
    /// of as many), or no limit. An empty key, a tenant that is not an identifier or a key given
    /// twice is refused.
    pub fn new(
        admin: Option<&str>,
        tenants: &[(String, String)],
        rate: Option<NonZeroU32>,
    ) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        let all = admin
            .map(|k| (k.to_string(), Caller::Admin))
            .into_iter()
            .chain(
                tenants
                    .iter()
                    .map(|(t, k)| (k.clone(), Caller::Tenant(t.as_str().into()))),
            );
        for (i, (key, caller)) in all.enumerate() {
            // Named as on the command line (`--api-key`, `--tenant-key TENANT=KEY`).
            let flag = match &caller {
                Caller::Admin => "--api-key".to_string(),
                Caller::Tenant(t) => format!("--tenant-key {t}=…"),
            };
            if key.is_empty() {
                anyhow::bail!("{flag}: the key may not be empty");
            }
            if let Caller::Tenant(t) = &caller {
                let mut errors = Vec::new();
                crate::job::check_ident("tenant", t, &mut errors);
                if let Some(e) = errors.first() {
                    anyhow::bail!("{flag}: the tenant {}", e.message);
                }
            }
            if keys.insert(key, (i as u32, caller)).is_some() {
                anyhow::bail!("{flag}: this key is given to another caller too");
            }
        }
        Ok(Keys {
            keys,
            limiter: rate.map(|r| RateLimiter::keyed(Quota::per_second(r))),
        })
    }

    /// No key: the API is open.
    pub fn open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a request's key names, and its rate-limit bucket; `None` for a missing or
    /// unknown key while keys are configured.
    fn resolve(&self, headers: &HeaderMap) -> Option<(u32, Caller)> {
        let given = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        self.lookup(given)
    }

    /// The caller `key` names, as a request carrying it would be named (the dashboard's
    /// sign-in asks this of the key it is given).
    pub fn caller(&self, key: Option<&str>) -> Option<Caller> {
        self.lookup(key).map(|(_, caller)| caller)
    }

    fn lookup(&self, key: Option<&str>) -> Option<(u32, Caller)> {
        if self.open() {
            return Some((0, Caller::Admin));
        }
        self.keys.get(key?).cloned()
    }

    /// How long the bucket must wait before its next request, when it is over its limit.
    fn over_limit(&self, bucket: u32) -> Option<std::time::Duration> {
        let limiter = self.limiter.as_ref()?;
        limiter
            .check_key(&bucket)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The middleware of every /api route: names the caller (401 without a valid key) and applies
/// its rate limit (429 with `Retry-After`).
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some((bucket, caller)) = state.keys.resolve(req.headers()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
        )
        .into_response();
    };
    if let Some(wait) = state.keys.over_limit(bucket) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            format!("this key is over its rate limit; retry in {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(key).unwrap());
        h
    }

    #[test]
    fn keys_name_their_callers() {
        let keys = Keys::new(
            Some("root"),
            &[
                ("acme".into(), "k-acme".into()),
                ("beta".into(), "k-beta".into()),
            ],
            None,
        )
        .unwrap();
        assert_eq!(keys.resolve(&headers("root")).unwrap().1, Caller::Admin);
        assert_eq!(
            keys.resolve(&headers("k-acme")).unwrap().1,
            Caller::Tenant("acme".into())
        );
        assert!(keys.resolve(&headers("nope")).is_none());
        assert!(keys.resolve(&HeaderMap::new()).is_none());
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer k-beta"),
        );
        assert_eq!(
            keys.resolve(&bearer).unwrap().1,
            Caller::Tenant("beta".into())
        );
    }

    #[test]
    fn without_keys_everyone_is_admin() {
        let keys = Keys::new(None, &[], None).unwrap();
        assert!(keys.open());
        assert_eq!(keys.resolve(&HeaderMap::new()).unwrap().1, Caller::Admin);
    }

    #[test]
    fn bad_key_lists_are_refused() {
        assert!(Keys::new(Some(""), &[], None).is_err());
        assert!(Keys::new(None, &[("a b".into(), "k".into())], None).is_err());
        assert!(Keys::new(Some("k"), &[("acme".into(), "k".into())], None).is_err());
    }

    #[test]
    fn a_tenant_key_is_narrowed_to_its_tenant() {
        let acme = Caller::Tenant("acme".into());
        assert_eq!(
            acme.narrow("tenant", None).unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(
            acme.narrow("tenant", Some("acme".into()))
                .unwrap()
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            acme.narrow("tenant", Some("beta".into()))
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(Caller::Admin.narrow("tenant", None).unwrap(), None);
        assert!(acme.sees("acme") && !acme.sees("beta") && Caller::Admin.sees("beta"));
        assert!(acme.require_admin("this").is_err());
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let keys = Keys::new(
            Some("root"),
            &[("acme".into(), "k-acme".into())],
            NonZeroU32::new(2),
        )
        .unwrap();
        assert!(keys.over_limit(0).is_none());
        assert!(keys.over_limit(0).is_none());
        let wait = keys
            .over_limit(0)
            .expect("the third request in a second is over");
        assert!(wait <= std::time::Duration::from_secs(1));
        assert!(keys.over_limit(1).is_none(), "another key is not limited");
    }
}
