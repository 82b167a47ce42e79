//! Workflow routes (SPEC §11): definitions, runs, approvals and cancels, over
//! [`Engine`](crate::workflow::engine::Engine).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, Body, Query, RawBody, optional_body, page_request};
use crate::job::FieldError;
use crate::store::RunFilter;
use crate::workflow::definition::{Run, Status, Workflow, WorkflowSpec};

/// The workflow, when the caller sees its org (else 404, as if it did not exist).
pub(super) async fn visible(
    s: &AppState,
    caller: &Caller,
    id: &str,
    version: Option<u64>,
) -> Result<Workflow, ApiError> {
    let wf = s.workflows.get(id, version).await?;
    if !caller.sees(&wf.org_id) {
        return Err(ApiError::not_found(format!("no such workflow `{id}`")));
    }
    Ok(wf)
}

/// 404 unless the caller sees the workflow (an admin is not asked: the action itself answers
/// 404 for a workflow that does not exist).
async fn check_visible(s: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    if caller.tenant().is_none() {
        return Ok(());
    }
    visible(s, caller, id, None).await.map(drop)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    version: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    #[serde(default)]
    input: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    approved: bool,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

/// A definition in JSON, or in YAML when the content type says so (`application/yaml`,
/// `text/yaml`, `application/x-yaml`). Errors name the field, in either syntax.
fn definition_body(headers: &HeaderMap, bytes: &[u8]) -> Result<WorkflowSpec, ApiError> {
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    let malformed = |field: &str, message: String| {
        let mut e = ApiError::invalid(vec![FieldError::new(field, message)]);
        e.status = StatusCode::BAD_REQUEST;
        e.title = "malformed body";
        e
    };
    let value: Value = if yaml {
        serde_norway::from_slice(bytes).map_err(|e| malformed("body", e.to_string()))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| malformed("body", e.to_string()))?
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".into() } else { path };
        ApiError::field(&field, e.inner().to_string())
    })
}

pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let mut spec = definition_body(&headers, &body)?;
    spec.org_id = caller.narrow("org_id", spec.org_id.take())?;
    let wf = s.workflows.create(spec).await?;
    Ok((StatusCode::CREATED, Json(wf)).into_response())
}

/// A tenant key's page holds only its org's definitions (so it may hold fewer than `limit`;
/// `next_cursor` still leads on).
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let mut page = s.workflows.list(&page).await?;
    page.items.retain(|wf| caller.sees(&wf.org_id));
    Ok(Json(page).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(visible(&s, &caller, &id, q.version).await?).into_response())
}

pub async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let mut spec = definition_body(&headers, &body)?;
    check_visible(&s, &caller, &id).await?;
    spec.org_id = caller.narrow("org_id", spec.org_id.take())?;
    Ok(Json(s.workflows.update(&id, spec).await?).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_visible(&s, &caller, &id).await?;
    if s.workflows.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no such workflow `{id}`")))
    }
}

pub async fn start_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: StartRun = optional_body(&body)?;
    check_visible(&s, &caller, &id).await?;
    let run = s.workflows.start_run(&id, req.input).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"run_id": run.id, "status": run.status})),
    )
        .into_response())
}

/// A tenant key's page holds only its org's runs.
pub async fn list_runs(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, ApiError> {
    check_visible(&s, &caller, &id).await?;
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let status = q
        .status
        .as_deref()
        .map(|st| {
            Status::parse(st).ok_or_else(|| {
                ApiError::field(
                    "status",
                    "one of pending, running, waiting, succeeded, failed, cancelled, timed_out",
                )
            })
        })
        .transpose()?;
    let filter = RunFilter {
        workflow_id: Some(id),
        status,
    };
    let mut page = s.workflows.list_runs(&filter, &page).await?;
    page.items.retain(|run| caller.sees(&run.org_id));
    Ok(Json(page).into_response())
}

pub async fn get_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let run = s.workflows.get_run(&run_id).await?;
    if !caller.sees(&run.org_id) {
        return Err(ApiError::not_found(format!("no such run `{run_id}`")));
    }
    Ok(Json(run).into_response())
}

/// The run, when it belongs to the workflow in the path and the caller sees its org (else 404).
async fn run_of(s: &AppState, caller: &Caller, id: &str, run_id: &str) -> Result<Run, ApiError> {
    let run = s.workflows.get_run(run_id).await?;
    if run.workflow_id != id || !caller.sees(&run.org_id) {
        return Err(ApiError::not_found(format!(
            "no run `{run_id}` of workflow `{id}`"
        )));
    }
    Ok(run)
}

pub async fn cancel_run(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: CancelBody = optional_body(&body)?;
    run_of(&s, &caller, &id, &run_id).await?;
    let reason = req.reason.unwrap_or_else(|| "cancelled by request".into());
    Ok(Json(s.workflows.cancel_run(&run_id, &reason).await?).into_response())
}

pub async fn cancel_step(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, run_id, step_id)): Path<(String, String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: CancelBody = optional_body(&body)?;
    run_of(&s, &caller, &id, &run_id).await?;
    let reason = req.reason.unwrap_or_else(|| "cancelled by request".into());
    Ok(Json(s.workflows.cancel_step(&run_id, &step_id, &reason).await?).into_response())
}

pub async fn approve(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, run_id, step_id)): Path<(String, String, String)>,
    Body(req): Body<ApproveBody>,
) -> Result<Response, ApiError> {
    run_of(&s, &caller, &id, &run_id).await?;
    let run = s
        .workflows
        .approve(&run_id, &step_id, req.approved, req.comment)
        .await?;
    Ok(Json(run).into_response())
}
