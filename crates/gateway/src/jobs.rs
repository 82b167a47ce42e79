//! Job, trace and worker routes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::error::{ApiError, outcome_unknown};
use super::{
    AppState, Body, Path, Query, RawBody, check_idents, check_reason, page_request, time_param,
};
use crate::job::{JobRequest, JobState};
use crate::limits::{MAX_BATCH_JOBS, MAX_IDEMPOTENCY_KEY_LEN};
use crate::scheduler::SchedulerError;
use crate::store::{JobFilter, StoreError};

pub async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(mut req): Body<JobRequest>,
) -> Result<Response, ApiError> {
    req.tenant_id = caller.narrow("tenant_id", req.tenant_id.take())?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))?;
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN {
                return Err(ApiError::field(
                    "Idempotency-Key",
                    format!("must be 1–{MAX_IDEMPOTENCY_KEY_LEN} characters"),
                ));
            }
            Some(k.to_string())
        }
    };
    let accepted = s.scheduler.submit(req, key).await?;
    let code = if accepted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        Json(json!({"job_id": accepted.job_id, "trace_id": accepted.trace_id})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    jobs: Vec<serde_json::Value>,
}

pub async fn submit_batch(
    State(s): State<AppState>,
    caller: Caller,
    Body(batch): Body<BatchRequest>,
) -> Result<Response, ApiError> {
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH_JOBS {
        return Err(ApiError::field(
            "jobs",
            format!("must hold 1 to {MAX_BATCH_JOBS} jobs"),
        ));
    }
    // Each item is parsed on its own, so one malformed item is reported in its place.
    let mut parsed = Vec::with_capacity(batch.jobs.len());
    let mut slots = Vec::with_capacity(batch.jobs.len());
    for (i, item) in batch.jobs.into_iter().enumerate() {
        match serde_json::from_value::<JobRequest>(item) {
            Ok(mut r) => match caller.narrow("tenant_id", r.tenant_id.take()) {
                Ok(tenant) => {
                    r.tenant_id = tenant;
                    slots.push(None);
                    parsed.push(r);
                }
                Err(e) => slots.push(Some(json!({"index": i, "error": {
                    "status": e.status.as_u16(), "detail": e.detail,
                    "errors": [{"field": format!("jobs[{i}].tenant_id"), "message": e.detail}]}}))),
            },
            Err(e) => slots.push(Some(json!({"index": i, "error": {
                "status": 422, "errors": [{"field": format!("jobs[{i}]"), "message": e.to_string()}]}}))),
        }
    }
    let mut answers = match s.scheduler.submit_batch(parsed).await {
        Ok(answers) => answers.into_iter(),
        // Name each job in doubt by its place in the request.
        Err(SchedulerError::OutcomeUnknown { detail, jobs }) => {
            let places: Vec<usize> = slots
                .iter()
                .enumerate()
                .filter_map(|(i, slot)| slot.is_none().then_some(i))
                .collect();
            return Err(outcome_unknown(
                &detail,
                jobs.into_iter().map(|(k, id)| {
                    let i = places.get(k).copied().unwrap_or(k);
                    (format!("jobs[{i}].job_id"), id)
                }),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut accepted = 0;
    let mut in_doubt = false;
    let items: Vec<_> = slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| match slot {
            Some(err) => err,
            None => match answers.next().unwrap_or_else(|| {
                Err(StoreError::Corrupt("the scheduler gave no answer for this job".into()).into())
            }) {
                Ok(a) => {
                    accepted += 1;
                    json!({"index": i, "job_id": a.job_id, "trace_id": a.trace_id})
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    in_doubt |= e.status == StatusCode::SERVICE_UNAVAILABLE;
                    let errors: Vec<_> = e
                        .errors
                        .iter()
                        .map(|f| json!({"field": format!("jobs[{i}].{}", f.field), "message": f.message}))
                        .collect();
                    json!({"index": i, "error": {"status": e.status.as_u16(), "detail": e.detail, "errors": errors}})
                }
            },
        })
        .collect();
    // None stored: 503 when some may have been (the store did not answer), else 422.
    let code = if accepted > 0 {
        StatusCode::CREATED
    } else if in_doubt {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((code, Json(json!({"accepted": accepted, "items": items}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    topic: Option<String>,
    tenant: Option<String>,
    team: Option<String>,
    trace_id: Option<String>,
    updated_after: Option<String>,
    updated_before: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    check_idents(&[
        ("topic", q.topic.as_deref()),
        ("tenant", q.tenant.as_deref()),
        ("team", q.team.as_deref()),
    ])?;
    let state = q
        .state
        .as_deref()
        .map(|st| {
            st.parse::<JobState>()
                .map_err(|e| ApiError::field("state", e))
        })
        .transpose()?;
    let trace_id = q
        .trace_id
        .map(|t| caller.resolve("trace_id", "trace", &t))
        .transpose()?;
    let filter = JobFilter {
        state,
        topic: q.topic,
        tenant: caller.narrow("tenant", q.tenant)?,
        team: q.team,
        trace_id,
        updated_after: time_param("updated_after", q.updated_after.as_deref())?,
        updated_before: time_param("updated_before", q.updated_before.as_deref())?,
    };
    let page = s.store.list_jobs(&filter, &page).await?;
    Ok(Json(page).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = caller.resolve("id", "job", &id)?;
    match s.store.get_job(&id).await? {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(ApiError::not_found(format!("no such job `{id}`"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    reason: Option<String>,
}

pub async fn cancel(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let id = caller.resolve("id", "job", &id)?;
    let req: CancelRequest = super::optional_body(&body)?;
    let reason = req
        .reason
        .unwrap_or_else(|| "cancelled through the API".into());
    check_reason("reason", Some(&reason))?;
    let job = s.scheduler.cancel(&id, &reason).await?;
    Ok(Json(job).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    approved: bool,
    comment: Option<String>,
}

pub async fn approve(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ApproveRequest>,
) -> Result<Response, ApiError> {
    let id = caller.resolve("id", "job", &id)?;
    check_reason("comment", req.comment.as_deref())?;
    let job = s.scheduler.approve(&id, req.approved, req.comment).await?;
    Ok(Json(job).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn trace(
    State(s): State<AppState>,
    caller: Caller,
    Path(trace_id): Path<String>,
    Query(q): Query<TraceQuery>,
) -> Result<Response, ApiError> {
    let trace_id = caller.resolve("trace_id", "trace", &trace_id)?;
    let page = page_request(q.limit.or(Some(super::MAX_LIMIT)), q.cursor.as_deref())?;
    let filter = JobFilter {
        trace_id: Some(trace_id),
        tenant: caller.tenant().map(str::to_string),
        ..Default::default()
    };
    let page = s.store.list_jobs(&filter, &page).await?;
    Ok(Json(page).into_response())
}

pub async fn workers(State(s): State<AppState>) -> Response {
    Json(json!({"items": s.registry.list(), "next_cursor": null})).into_response()
}
