//! The dashboard's only way to the data: the gateway's router, called in process with the
//! session's key, exactly as a client over HTTP would call it. Its problem+json answers become
//! [`UiError`]s, shown as error pages (or, for a 401, as the sign-in page).

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;
use tower::ServiceExt;

use super::session::Session;
use super::views;

/// The largest answer read from the API (a page of jobs with large payloads stays far below).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A request body.
enum Payload {
    Json(String),
    Bytes(axum::body::Bytes),
}

#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// What went wrong, as the API said it (or as the dashboard itself found it).
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub detail: String,
    /// The fields the API named, with their messages.
    pub fields: Vec<(String, String)>,
}

impl UiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        UiError {
            status,
            detail: detail.into(),
            fields: Vec::new(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        UiError::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        UiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!("`{field}` {message}"),
            fields: vec![(field.to_string(), message)],
        }
    }

    /// From a problem+json answer of the API.
    fn from_problem(status: StatusCode, body: &Value) -> Self {
        let detail = body
            .get("detail")
            .and_then(Value::as_str)
            .or_else(|| body.get("title").and_then(Value::as_str))
            .unwrap_or("the request failed")
            .to_string();
        let fields = body
            .get("errors")
            .and_then(Value::as_array)
            .map(|errs| {
                errs.iter()
                    .map(|e| {
                        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").into();
                        (s("field"), s("message"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        UiError {
            status,
            detail,
            fields,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/ui/sign-in").into_response();
        }
        (self.status, views::error_page(&self)).into_response()
    }
}

/// One path segment, percent-encoded: a value from a URL or a form never changes the route.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string of the non-empty values, encoded.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

impl Api {
    pub fn new(router: Router) -> Self {
        Api { router }
    }

    /// Sends `method path` (under `/api/v1`) with the session's key and, when given, a JSON
    /// body; the answer's JSON (null for an empty one), or the API's error.
    pub async fn call(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, UiError> {
        self.call_with(session, method, path, body, &[]).await
    }

    /// [`Api::call`] with extra request headers (`If-Match`).
    pub async fn call_with(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, UiError> {
        let body = body.map(|v| Payload::Json(v.to_string()));
        self.answer(self.send(session, method, path, body, headers).await?)
            .await
    }

    /// Sends raw bytes (a plugin's component) as `application/octet-stream`.
    pub async fn send_bytes(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        bytes: axum::body::Bytes,
    ) -> Result<Value, UiError> {
        let body = Some(Payload::Bytes(bytes));
        self.answer(self.send(session, method, path, body, &[]).await?)
            .await
    }

    /// The answer's JSON (null for an empty one), or the API's error.
    async fn answer(&self, resp: Response) -> Result<Value, UiError> {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| UiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(UiError::from_problem(status, &value))
        }
    }

    pub async fn get(&self, session: &Session, path: &str) -> Result<Value, UiError> {
        self.call(session, Method::GET, path, None).await
    }

    pub async fn post(
        &self,
        session: &Session,
        path: &str,
        body: &Value,
    ) -> Result<Value, UiError> {
        self.call(session, Method::POST, path, Some(body)).await
    }

    async fn send(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<Payload>,
        headers: &[(&str, &str)],
    ) -> Result<Response, UiError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(key) = &session.key {
            req = req.header("x-api-key", key.as_str());
        }
        let body = match body {
            Some(Payload::Json(text)) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(text)
            }
            Some(Payload::Bytes(bytes)) => {
                req = req.header(header::CONTENT_TYPE, "application/octet-stream");
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        // The router's error type is `Infallible`.
        match self.router.clone().oneshot(req).await {
            Ok(resp) => Ok(resp),
            Err(never) => match never {},
        }
    }

    /// The API's live stream, answered as it is (Server-Sent Events).
    pub async fn stream(&self, session: &Session) -> Response {
        match self.send(session, Method::GET, "/stream", None, &[]).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_change_the_route() {
        assert_eq!(seg("acme~job-1.x_y"), "acme~job-1.x_y");
        assert_eq!(seg("../workers"), "..%2Fworkers");
        assert_eq!(seg("a b?c#d"), "a%20b%3Fc%23d");
    }

    #[test]
    fn queries_leave_out_empty_values() {
        assert_eq!(
            query(&[("state", Some("FAILED")), ("topic", Some("")), ("x", None)]),
            "state=FAILED"
        );
        assert_eq!(query(&[("topic", Some("a&b"))]), "topic=a%26b");
    }
}
