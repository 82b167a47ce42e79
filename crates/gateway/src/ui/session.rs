//! Sign-in, the session cookie and CSRF tokens.
//!
//! The session is the API key itself, in a cookie the page's scripts cannot read (HttpOnly),
//! that no other site's page sends (SameSite=Strict), sent only under `/ui`, and `Secure` when
//! the dashboard is reached over TLS. Every request names its caller through the gateway's own
//! [`Keys`](crate::auth::Keys), so a key removed from the host's configuration signs
//! its sessions out at once.
//!
//! Every form carries a CSRF token, checked before the form is read ([`Posted`]): the HMAC of a
//! fixed label under the session's key — nobody without the key can make it, it needs no
//! server-side state (any replica checks it), and it changes with the key. A host without keys
//! signs with a secret of its own process. The sign-in form itself is guarded by a
//! double-submit cookie (a random value in a cookie and in the form), so another site cannot
//! sign a browser in with the attacker's key.
//!
//! Pages are sent compressed. A compressed page that holds a secret next to text a request
//! chose leaks the secret through its size, one guessed byte at a time (BREACH): so the token is
//! written masked — a fresh random pad and the token XORed with it, [`mask`] — and no two pages
//! carry the same bytes for it. (SameSite=Strict already keeps another site's requests from
//! carrying the session at all; the mask does not rest on that.)

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use maud::html;
use sha2::Sha256;

use super::{UiError, UiState, views};
use crate::auth::Caller;

const KEY_COOKIE: &str = "coretex_ui_key";
const SIGN_IN_COOKIE: &str = "coretex_ui_signin";
/// The form field of the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";
/// The largest form the dashboard reads.
const MAX_FORM_BYTES: usize = 4 << 20;

/// A signed-in (or, on a host without keys, anonymous admin) visitor.
pub struct Session {
    /// The API key, sent with every call to the API; `None` on a host without keys.
    pub key: Option<String>,
    pub caller: Caller,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.caller.tenant().is_none()
    }

    /// 403 unless `given` is this session's CSRF token, as [`csrf_input`] masked it.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), UiError> {
        let unmasked = given.and_then(unmask).unwrap_or_default();
        if !self.csrf.is_empty() && same(&unmasked, self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(UiError::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ))
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn decode(v: &str) -> String {
    form_urlencoded::parse(format!("v={v}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// A `Set-Cookie` value for `name` under `/ui`; `max_age` 0 deletes it.
fn set_cookie(s: &UiState, name: &str, value: &str, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if s.settings.secure_cookies {
        c.push_str("; Secure");
    }
    c
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// `token` as a form carries it: a fresh random pad, then the token XORed with the pad, both in
/// hex — the same token, never the same bytes twice.
pub fn mask(token: &str) -> String {
    let mut pad = vec![0u8; token.len()];
    rand::fill(pad.as_mut_slice());
    let masked: Vec<u8> = token.bytes().zip(&pad).map(|(t, p)| t ^ p).collect();
    format!("{}{}", hex(&pad), hex(&masked))
}

/// The token a masked value carries; `None` for anything [`mask`] did not make.
fn unmask(given: &str) -> Option<Vec<u8>> {
    let bytes = unhex(given)?;
    let (pad, masked) = bytes.split_at(bytes.len() / 2);
    (pad.len() == masked.len()).then(|| pad.iter().zip(masked).map(|(p, m)| p ^ m).collect())
}

/// The CSRF token of a session with `key` (or, without one, of this process).
fn csrf_token(s: &UiState, key: Option<&str>) -> String {
    let secret = key.map_or(&s.secret[..], str::as_bytes);
    // HMAC accepts a key of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(b"coretex-ui-csrf-v1");
            hex(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Compares in time independent of where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<UiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &UiState) -> Result<Self, Response> {
        let key = cookie(&parts.headers, KEY_COOKIE)
            .map(decode)
            .filter(|k| !k.is_empty());
        match s.keys.caller(key.as_deref()) {
            Some(caller) => {
                let key = if s.keys.open() { None } else { key };
                let csrf = csrf_token(s, key.as_deref());
                Ok(Session { key, caller, csrf })
            }
            None => {
                // Back to the page asked for, once signed in (a GET only: a form is not replayed).
                // The whole path: inside `/ui`, the router sees it without that prefix.
                let uri = parts
                    .extensions
                    .get::<axum::extract::OriginalUri>()
                    .map_or(&parts.uri, |o| &o.0);
                let next = (parts.method == axum::http::Method::GET)
                    .then(|| uri.path_and_query().map(|p| p.as_str()))
                    .flatten()
                    .filter(|p| local_page(p));
                let to = match next {
                    Some(n) => format!("/ui/sign-in?{}", super::api::query(&[("next", Some(n))])),
                    None => "/ui/sign-in".to_string(),
                };
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

/// A form posted by a session, its CSRF token checked (403 without the right one).
pub struct Posted {
    pub session: Session,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name` (checkboxes).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn form_fields(req: Request, s: &UiState) -> Result<Vec<(String, String)>, Response> {
    let bytes = axum::body::Bytes::from_request(req, s)
        .await
        .map_err(IntoResponse::into_response)?;
    if bytes.len() > MAX_FORM_BYTES {
        return Err(
            UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response(),
        );
    }
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

impl FromRequest<UiState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, s: &UiState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, s).await?;
        let fields = form_fields(Request::from_parts(parts, body), s).await?;
        let given = fields
            .iter()
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.as_str());
        session
            .check_csrf(given)
            .map_err(IntoResponse::into_response)?;
        Ok(Posted { session, fields })
    }
}

/// A page of this dashboard, never another site: where a sign-in may send the browser on to.
fn local_page(path: &str) -> bool {
    path.starts_with("/ui") && !path.starts_with("/ui/sign-in") && !path.contains('\\')
}

#[derive(serde::Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn sign_in_page(
    State(s): State<UiState>,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let next = q.next.as_deref().filter(|n| local_page(n));
    let page = views::sign_in(&nonce, next, s.keys.open(), None);
    let mut resp = page.into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&s, SIGN_IN_COOKIE, &nonce, None)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub async fn sign_in(State(s): State<UiState>, req: Request) -> Response {
    let expected = cookie(req.headers(), SIGN_IN_COOKIE).map(str::to_string);
    let fields = match form_fields(req, &s).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let nonce = field(CSRF_FIELD).unwrap_or_default();
    if expected
        .as_deref()
        .is_none_or(|e| !same(e.as_bytes(), nonce.as_bytes()))
        || nonce.is_empty()
    {
        return UiError::new(
            StatusCode::FORBIDDEN,
            "the sign-in form's token is missing or wrong: reload the sign-in page",
        )
        .into_response();
    }
    let key = field("key").unwrap_or_default().trim();
    if s.keys.open() || s.keys.caller(Some(key)).is_none() || key.is_empty() {
        let message = if s.keys.open() {
            "this host has no keys: no sign-in is needed"
        } else {
            "that key is not one this host knows"
        };
        let next = field("next").filter(|n| local_page(n));
        let page = views::sign_in(nonce, next, s.keys.open(), Some(message));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    }
    let next = field("next").filter(|n| local_page(n)).unwrap_or("/ui");
    let mut resp = Redirect::to(next).into_response();
    let h = resp.headers_mut();
    for c in [
        set_cookie(&s, KEY_COOKIE, &encode(key), None),
        set_cookie(&s, SIGN_IN_COOKIE, "", Some(0)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

pub async fn sign_out(State(s): State<UiState>, _form: Posted) -> Response {
    let mut resp = Redirect::to("/ui/sign-in").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&s, KEY_COOKIE, "", Some(0))) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// The hidden CSRF field of a session's forms.
pub fn csrf_input(session: &Session) -> maud::Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(mask(&session.csrf)); }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_and_keys_survive_the_round_trip() {
        let mut h = HeaderMap::new();
        let key = "k; with=odd chars%";
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {KEY_COOKIE}={}; b=2", encode(key))).unwrap(),
        );
        assert_eq!(cookie(&h, KEY_COOKIE).map(decode).as_deref(), Some(key));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "nope"), None);
    }

    #[test]
    fn sign_in_sends_on_only_to_pages_of_the_dashboard() {
        assert!(local_page("/ui/jobs/acme~1?x=1"));
        for elsewhere in [
            "//evil.example/ui",
            "https://evil.example",
            "/api/v1/jobs",
            "/ui/sign-in",
            "/ui\\evil",
        ] {
            assert!(!local_page(elsewhere), "{elsewhere}");
        }
    }

    #[test]
    fn comparison_needs_equal_strings() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn the_token_is_masked_afresh_each_time_and_unmasks_to_itself() {
        let token = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let (a, b) = (mask(token), mask(token));
        assert_ne!(a, b, "never the same bytes twice");
        assert!(!a.contains(token));
        assert_eq!(unmask(&a).as_deref(), Some(token.as_bytes()));
        assert_eq!(unmask(&b).as_deref(), Some(token.as_bytes()));
        let session = Session {
            key: None,
            caller: Caller::Admin,
            csrf: token.into(),
        };
        assert!(session.check_csrf(Some(&a)).is_ok());
        for wrong in [
            None,
            Some(""),
            Some(token),
            Some("zz"),
            Some("0000"),
            Some(&a[1..]),
        ] {
            assert!(session.check_csrf(wrong).is_err(), "{wrong:?}");
        }
        // Another session's token does not pass.
        assert!(
            session
                .check_csrf(Some(&mask(&token.replace('9', "8"))))
                .is_err()
        );
    }
}
