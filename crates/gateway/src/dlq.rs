//! Dead-letter routes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, Path, Query, RawBody, check_idents, page_request};
use crate::job::JobState;
use crate::limits::MAX_BULK_RETRY;
use crate::store::DlqFilter;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant: Option<String>,
    topic: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn filter(
    tenant: Option<String>,
    topic: Option<String>,
    status: Option<String>,
) -> Result<DlqFilter, ApiError> {
    check_idents(&[("tenant", tenant.as_deref()), ("topic", topic.as_deref())])?;
    Ok(DlqFilter {
        tenant,
        topic,
        status: status
            .as_deref()
            .map(|s| {
                s.parse::<JobState>()
                    .map_err(|e| ApiError::field("status", e))
            })
            .transpose()?,
    })
}

pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let f = filter(caller.narrow("tenant", q.tenant)?, q.topic, q.status)?;
    Ok(Json(s.dlq.list(&f, &page).await?).into_response())
}

/// The whole id of the dead job the caller names (see [`Caller::resolve`]).
fn dead_job(caller: &Caller, job_id: &str) -> Result<String, ApiError> {
    caller.resolve("job_id", "dead letter for job", job_id)
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = dead_job(&caller, &job_id)?;
    match s.dlq.get(&job_id).await? {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(ApiError::not_found(format!(
            "no dead letter for `{job_id}`"
        ))),
    }
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = dead_job(&caller, &job_id)?;
    if s.dlq.delete(&job_id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "no dead letter for `{job_id}`"
        )))
    }
}

pub async fn retry(
    State(s): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = dead_job(&caller, &job_id)?;
    let r = s.dlq.retry(&job_id).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    tenant: Option<String>,
    topic: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "crate::job::whole::opt")]
    max: Option<usize>,
}

pub async fn retry_matching(
    State(s): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: BulkRequest = super::optional_body(&body)?;
    let max = req.max.unwrap_or(1000);
    if max == 0 || max > MAX_BULK_RETRY {
        return Err(ApiError::field(
            "max",
            format!("must be between 1 and {MAX_BULK_RETRY}"),
        ));
    }
    let f = filter(caller.narrow("tenant", req.tenant)?, req.topic, req.status)?;
    Ok(Json(s.dlq.retry_matching(&f, max).await?).into_response())
}
