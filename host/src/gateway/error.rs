//! The one place errors become HTTP: `application/problem+json` (RFC 9457) with `type, title,
//! status, detail` and, for bad input, `errors[]` naming each field.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::configsvc::ConfigError;
use crate::job::FieldError;
use crate::plugins::LoadError;
use crate::plugins::registry::UploadError;
use crate::scheduler::SchedulerError;
use crate::store::StoreError;
use crate::workflow::engine::WorkflowError;

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
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
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
        }
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

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let text = r.body_text();
        // serde_path_to_error puts the failing path first: "topic: invalid type: …".
        let detail = text
            .strip_prefix("Failed to deserialize the JSON body into the target type: ")
            .unwrap_or(&text)
            .to_string();
        // The path comes first; a missing field (at the top level, where there is no path) or
        // an unknown one names itself between backticks.
        let (field, message) = match detail.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') && path != "." => {
                let field = match backticked(rest, "missing field `") {
                    Some(missing) => format!("{path}.{missing}"),
                    None => path.to_string(),
                };
                (field, rest.to_string())
            }
            Some((_, rest)) if rest.contains("unknown field `") => (
                rest.split('`').nth(1).unwrap_or("body").to_string(),
                rest.to_string(),
            ),
            _ => match backticked(&detail, "missing field `")
                .or_else(|| backticked(&detail, "unknown field `"))
            {
                Some(f) => (f.to_string(), detail.clone()),
                None => ("body".to_string(), detail.clone()),
            },
        };
        let mut e = ApiError::field(&field, message);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            e.status = status;
            e.title = "body too large";
        } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            e.status = status;
            e.title = "unsupported media type";
        } else {
            e.status = StatusCode::BAD_REQUEST;
            e.title = "malformed body";
        }
        e
    }
}

/// The name between backticks right after `prefix` (serde's "missing field `x`").
fn backticked<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.split_once(prefix)?.1.split('`').next()
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let mut e = ApiError::new(status, "unreadable body", r.body_text());
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            e.title = "body too large";
        }
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
