//! Config routes: one scope at a time, with `If-Match` revisions (each write checked against
//! the schema of the keys the host reads), and the effective merge — for a tenant key, only of
//! what is its org's: the system and org scopes, a team not bound to another org, and its own
//! workflows and their steps.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, Body, Query};
use crate::configsvc::{ConfigTarget, Scope, ScopeRef};
use crate::job::check_ident;

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::field("If-Match", "must be a revision number"))
        })
        .transpose()
}

/// The scope a request names, if the caller may touch it: a tenant key only its own tenant's
/// `org` scope (another tenant's answers 404, the system, team, workflow and step scopes 403).
fn scope_of(caller: &Caller, r: &ScopeRef) -> Result<Scope, ApiError> {
    let scope = Scope::parse(r).map_err(ApiError::invalid)?;
    match (caller.tenant(), &scope) {
        (None, _) => Ok(scope),
        (Some(t), Scope::Org(org)) if org == t => Ok(scope),
        (Some(_), Scope::Org(_)) => {
            Err(ApiError::not_found(format!("no config at {}", scope.key())))
        }
        (Some(_), _) => {
            caller.require_admin("config outside the key's own `org` scope")?;
            Ok(scope)
        }
    }
}

fn with_etag(doc: &crate::store::ConfigDoc, body: Value) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{}\"", doc.revision)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    scope: Option<String>,
    id: Option<String>,
    workflow_id: Option<String>,
    step_id: Option<String>,
    data: Option<Value>,
}

pub async fn set(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(req): Body<SetRequest>,
) -> Result<Response, ApiError> {
    let scope = scope_of(
        &caller,
        &ScopeRef {
            scope: req.scope.clone(),
            id: req.id.clone(),
            workflow_id: req.workflow_id.clone(),
            step_id: req.step_id.clone(),
        },
    )?;
    let data = req
        .data
        .ok_or_else(|| ApiError::field("data", "is required"))?;
    let plugins = &s.scheduler.plugins;
    let plugin_kind = |name: &str| plugins.get(name).map(|p| p.kind());
    let doc = s
        .config
        .set(&scope, &data, if_match(&headers)?, &plugin_kind)
        .await?;
    Ok(with_etag(
        &doc,
        json!({"scope": req.scope, "id": req.id, "workflow_id": req.workflow_id,
                "step_id": req.step_id, "data": doc.data, "revision": doc.revision,
                "updated_at": crate::time::to_rfc3339(doc.updated_at)}),
    ))
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Query(r): Query<ScopeRef>,
) -> Result<Response, ApiError> {
    let scope = scope_of(&caller, &r)?;
    match s.config.get(&scope).await? {
        Some(doc) => Ok(with_etag(
            &doc,
            json!({"scope": r.scope, "id": r.id, "workflow_id": r.workflow_id,
                    "step_id": r.step_id, "data": doc.data, "revision": doc.revision,
                    "updated_at": crate::time::to_rfc3339(doc.updated_at)}),
        )),
        None => Err(ApiError::not_found(format!("no config at {}", scope.key()))),
    }
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(r): Query<ScopeRef>,
) -> Result<Response, ApiError> {
    let scope = scope_of(&caller, &r)?;
    if s.config.delete(&scope, if_match(&headers)?).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no config at {}", scope.key())))
    }
}

pub async fn effective(
    State(s): State<AppState>,
    caller: Caller,
    Query(mut t): Query<ConfigTarget>,
) -> Result<Response, ApiError> {
    t.org_id = caller.narrow("org_id", t.org_id)?;
    let mut errors = Vec::new();
    for (field, v) in [
        ("org_id", &t.org_id),
        ("team_id", &t.team_id),
        ("workflow_id", &t.workflow_id),
        ("step_id", &t.step_id),
    ] {
        if let Some(v) = v {
            check_ident(field, v, &mut errors);
        }
    }
    if t.step_id.is_some() && t.workflow_id.is_none() {
        errors.push(crate::job::FieldError::new(
            "workflow_id",
            "is required with step_id (step config is keyed by workflow and step)",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if let Some(tenant) = caller.tenant() {
        visible_to_tenant(&s, &caller, tenant, &t).await?;
    }
    let eff = s.config.effective(&t).await?;
    Ok(Json(eff.value.clone()).into_response())
}

/// 404 unless every scope a tenant key's target names is its org's: a team bound to another org
/// (`tenancy.teams`), or a workflow (and so its steps) of another org or of none, answers as if
/// it did not exist.
async fn visible_to_tenant(
    s: &AppState,
    caller: &Caller,
    tenant: &str,
    t: &ConfigTarget,
) -> Result<(), ApiError> {
    if let Some(team) = &t.team_id
        && s.config
            .tenancy()
            .await?
            .team_belongs_elsewhere(tenant, team)
    {
        return Err(ApiError::not_found(format!("no such team `{team}`")));
    }
    if let Some(wf) = &t.workflow_id {
        super::workflows::visible(s, caller, wf, None).await?;
    }
    Ok(())
}
