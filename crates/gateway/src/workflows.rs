//! Workflow routes (SPEC §11): definitions, runs, approvals and cancels, over
//! [`Engine`](crate::workflow::engine::Engine).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::{
    AppState, Body, Path, Query, RawBody, check_reason, extract, optional_body, page_request,
};
use crate::store::RunFilter;
use crate::workflow::definition::{Status, WorkflowSpec};

/// The whole id of the workflow the caller names (see [`Caller::resolve`]): a tenant key
/// names only its org's.
fn qualified_workflow_id(caller: &Caller, id: &str) -> Result<String, ApiError> {
    caller.resolve("id", "workflow", id)
}

/// The whole id of the run the caller names.
fn qualified_run_id(caller: &Caller, run_id: &str) -> Result<String, ApiError> {
    caller.resolve("run_id", "run", run_id)
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
/// `text/yaml`, `application/x-yaml`), within the body's limits (`budget` bounds what YAML
/// aliases expand to). Errors name the field, in either syntax.
fn definition_body(
    headers: &HeaderMap,
    bytes: &[u8],
    budget: usize,
) -> Result<WorkflowSpec, ApiError> {
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    if yaml {
        extract::yaml(bytes, budget)
    } else {
        extract::json(bytes)
    }
}

pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let mut spec = definition_body(&headers, &body, s.max_body_bytes)?;
    spec.org_id = caller.narrow("org_id", spec.org_id.take())?;
    let wf = s.workflows.create(spec).await?;
    Ok((StatusCode::CREATED, Json(wf)).into_response())
}

/// A tenant key lists its org's definitions only.
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let page = s.workflows.list(caller.tenant(), &page).await?;
    Ok(Json(page).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let id = qualified_workflow_id(&caller, &id)?;
    Ok(Json(s.workflows.get(&id, q.version).await?).into_response())
}

pub async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let id = qualified_workflow_id(&caller, &id)?;
    let mut spec = definition_body(&headers, &body, s.max_body_bytes)?;
    spec.org_id = caller.narrow("org_id", spec.org_id.take())?;
    Ok(Json(s.workflows.update(&id, spec).await?).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = qualified_workflow_id(&caller, &id)?;
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
    let id = qualified_workflow_id(&caller, &id)?;
    let req: StartRun = optional_body(&body)?;
    let run = s.workflows.start_run(&id, req.input).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"run_id": run.id, "status": run.status})),
    )
        .into_response())
}

pub async fn list_runs(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, ApiError> {
    let id = qualified_workflow_id(&caller, &id)?;
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
        org: None,
    };
    Ok(Json(s.workflows.list_runs(&filter, &page).await?).into_response())
}

pub async fn get_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let run_id = qualified_run_id(&caller, &run_id)?;
    Ok(Json(s.workflows.get_run(&run_id).await?).into_response())
}

/// The whole id of the run in the path, when it is a run of the workflow in the path and the
/// caller sees both (else 404).
async fn run_of(s: &AppState, caller: &Caller, id: &str, run: &str) -> Result<String, ApiError> {
    let id = qualified_workflow_id(caller, id)?;
    let run = qualified_run_id(caller, run)?;
    if s.workflows.get_run(&run).await?.workflow_id != id {
        return Err(ApiError::not_found(format!(
            "no run `{run}` of workflow `{id}`"
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
    check_reason("reason", req.reason.as_deref())?;
    let run_id = run_of(&s, &caller, &id, &run_id).await?;
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
    check_reason("reason", req.reason.as_deref())?;
    let run_id = run_of(&s, &caller, &id, &run_id).await?;
    let reason = req.reason.unwrap_or_else(|| "cancelled by request".into());
    Ok(Json(s.workflows.cancel_step(&run_id, &step_id, &reason).await?).into_response())
}

pub async fn approve(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, run_id, step_id)): Path<(String, String, String)>,
    Body(req): Body<ApproveBody>,
) -> Result<Response, ApiError> {
    check_reason("comment", req.comment.as_deref())?;
    let run_id = run_of(&s, &caller, &id, &run_id).await?;
    let run = s
        .workflows
        .approve(&run_id, &step_id, req.approved, req.comment)
        .await?;
    Ok(Json(run).into_response())
}
