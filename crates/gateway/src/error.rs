//! The one place errors become HTTP: `application/problem+json` (RFC 9457) with `type, title,
//! status, detail` and, for bad input, `errors[]` naming each field.

use axum::Json;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::configsvc::ConfigError;
use crate::job::FieldError;
use crate::scheduler::SchedulerError;
use crate::store::StoreError;
use crate::workflow::engine::WorkflowError;
use coretex_plugin_host::LoadError;
use coretex_scheduler::uploads::UploadError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            title,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = FieldError::describe(&errors);
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            title: "invalid request",
            detail,
            errors,
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::invalid(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not found", what)
    }

    /// 400: a body (or part of one) that does not parse as what the route takes.
    pub fn malformed_text(field: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::field(field, message);
        e.status = StatusCode::BAD_REQUEST;
        e.title = "malformed body";
        e
    }

    /// 400 naming where a body failed to parse: the path serde was at, completed by the field
    /// a "missing field" or "unknown field" error names.
    pub fn malformed(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let named = backticked(&message, "missing field `")
            .or_else(|| backticked(&message, "unknown field `"));
        let field = match (path.as_str(), named) {
            (".", Some(name)) => name.to_string(),
            (".", None) => "body".to_string(),
            (p, Some(name)) if p.rsplit('.').next() != Some(name) => format!("{p}.{name}"),
            (p, _) => p.to_string(),
        };
        // A field named by the empty string (`{"": 1}`) is named by where it is.
        let field = match field.trim_end_matches('.') {
            "" => "body",
            f => f,
        };
        ApiError::malformed_text(field, message)
    }

    /// 413: a body, or what it expands to, past a size limit.
    pub fn too_large(field: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::field(field, message);
        e.status = StatusCode::PAYLOAD_TOO_LARGE;
        e.title = "body too large";
        e
    }

    /// 415: a body in a format the route does not read.
    pub fn unsupported_media_type(message: &str) -> Self {
        let mut e = ApiError::field("Content-Type", message);
        e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        e.title = "unsupported media type";
        e
    }
}

/// Makes an error answer that is not JSON — axum's own, such as a 405 for a method the route
/// does not take — problem+json, keeping its status and headers (`Allow`, say). Layered over
/// the whole router, so no rejection reaches a client as plain text. (An error answered in JSON
/// on purpose, a batch none of whose items was stored, is left as it is.)
pub async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/problem+json")
            || v.as_bytes().starts_with(b"application/json")
    });
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let problem = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            ApiError::new(
                status,
                "method not allowed",
                format!("this route takes {allowed}"),
            )
        }
        StatusCode::NOT_FOUND => ApiError::not_found("no such route"),
        _ if status.is_client_error() => ApiError::new(
            status,
            "request refused",
            status.canonical_reason().unwrap_or_default(),
        ),
        _ => ApiError::new(
            status,
            "server error",
            status.canonical_reason().unwrap_or_default(),
        ),
    };
    let (problem, body) = problem.into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(problem.headers);
    Response::from_parts(parts, body)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let slug = self.title.replace(' ', "-");
        let body = Problem {
            kind: format!("https://coretex.dev/problems/{slug}"),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store unavailable", d)
            }
            StoreError::NotFound(id) => ApiError::not_found(format!("no such job `{id}`")),
            StoreError::IllegalTransition { from, to } => ApiError::new(
                StatusCode::CONFLICT,
                "illegal transition",
                format!("a job cannot go from {from} to {to}"),
            ),
            StoreError::Conflict { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "revision conflict",
                format!("the current revision is {current}"),
            ),
            StoreError::Corrupt(d) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt record", d)
            }
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::Invalid(errors) => ApiError::invalid(errors),
            SchedulerError::Store(s) => s.into(),
            SchedulerError::NotFound(id) => ApiError::not_found(format!("no such job `{id}`")),
            SchedulerError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            SchedulerError::OutcomeUnknown { detail, jobs } => outcome_unknown(
                &detail,
                jobs.into_iter().map(|(_, id)| ("job_id".into(), id)),
            ),
        }
    }
}

/// A submit the store did not answer in time: 503, and each job it may have stored named in
/// `errors` (`field` says which: `job_id`, or `jobs[{i}].job_id` in a batch).
pub fn outcome_unknown(detail: &str, jobs: impl Iterator<Item = (String, String)>) -> ApiError {
    let errors: Vec<FieldError> = jobs
        .map(|(field, id)| FieldError::new(field, format!("job `{id}` may have been stored")))
        .collect();
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        title: "outcome unknown",
        detail: format!(
            "the store did not answer in time ({detail}): the {} job(s) named in `errors` may \
             have been stored — a stored one runs; GET /api/v1/jobs/{{id}} tells, and a \
             resubmit under the same Idempotency-Key or job id cannot store it twice",
            errors.len()
        ),
        errors,
    }
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Invalid(errors) => ApiError::invalid(errors),
            WorkflowError::NotFound(d) => ApiError::not_found(d),
            WorkflowError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            WorkflowError::Store(s) => s.into(),
            WorkflowError::Scheduler(s) => s.into(),
            WorkflowError::Aborted(d) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", d)
            }
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Store(s) => s.into(),
            ConfigError::Invalid(errors) => ApiError::invalid(errors),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Load(e @ LoadError::Name(_)) => ApiError::field("name", e.to_string()),
            UploadError::Load(load) => ApiError::field("body", load.to_string()),
            UploadError::Store(s) => s.into(),
            e @ UploadError::NotUploaded { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "not an uploaded plugin",
                e.to_string(),
            ),
        }
    }
}

/// The name between backticks right after `prefix` (serde's "missing field `x`").
fn backticked<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.split_once(prefix)?.1.split('`').next()
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let mut e = ApiError::field("body", r.body_text());
        e.status = status;
        e.title = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body too large"
        } else {
            "unreadable body"
        };
        e
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        let field = match &r {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key }
                | ErrorKind::ParseErrorAtKey { key, .. }
                | ErrorKind::DeserializeError { key, .. } => key.clone(),
                _ => "path".to_string(),
            },
            _ => "path".to_string(),
        };
        let mut e = ApiError::field(&field, r.body_text());
        e.status = r.status();
        e.title = "malformed path";
        e
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let text = r.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text)
            .to_string();
        // "limit: invalid digit found in string" names the parameter first; "unknown field
        // `colour`, …" and "missing field `x`" name it between backticks.
        let field = match detail.split_once(": ") {
            Some((path, _)) if !path.is_empty() && !path.contains(' ') && path != "." => {
                path.to_string()
            }
            _ => detail.split('`').nth(1).unwrap_or("query").to_string(),
        };
        let mut e = ApiError::field(&field, detail);
        e.status = StatusCode::BAD_REQUEST;
        e.title = "malformed query";
        e
    }
}
