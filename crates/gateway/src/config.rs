//! Config routes: one scope at a time, with `If-Match` revisions (each write checked against
//! the schema of the keys the host reads), the list of the scopes that hold a document, and the
//! effective merge — of what is stored, or with a draft in place of one scope's document, stored
//! nowhere. For a tenant key, only of what is its org's: the system and org scopes, a team not
//! bound to another org, and its own workflows and their steps (the list leaves out the system
//! scope, which the key cannot read).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, Body, Query, check_idents};
use crate::configsvc::{ConfigTarget, Scope, ScopeRef};

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
    // Every id given is checked, also those the scope does not take (a workflow's may be
    // qualified by its org, so the scope's `id` may be too: `Scope::parse` narrows it).
    let mut errors = Vec::new();
    for (field, id) in [("id", &r.id), ("workflow_id", &r.workflow_id)] {
        if let Some(id) = id {
            crate::ids::check_id(field, id, &mut errors);
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    check_idents(&[("step_id", r.step_id.as_deref())])?;
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
    let plugins = &s.plugins;
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
    Query(t): Query<ConfigTarget>,
) -> Result<Response, ApiError> {
    let t = target_of(&s, &caller, t).await?;
    let eff = s.config.effective(&t).await?;
    Ok(Json(eff.value.clone()).into_response())
}

/// The target a caller names, checked: a tenant key's org is its own, its workflows are its
/// org's, and a team bound to another org does not exist for it.
async fn target_of(
    s: &AppState,
    caller: &Caller,
    mut t: ConfigTarget,
) -> Result<ConfigTarget, ApiError> {
    t.org_id = caller.narrow("org_id", t.org_id)?;
    t.workflow_id = t
        .workflow_id
        .map(|w| caller.resolve("workflow_id", "workflow", &w))
        .transpose()?;
    check_idents(&[
        ("org_id", t.org_id.as_deref()),
        ("team_id", t.team_id.as_deref()),
        ("step_id", t.step_id.as_deref()),
    ])?;
    if t.step_id.is_some() && t.workflow_id.is_none() {
        return Err(ApiError::field(
            "workflow_id",
            "is required with step_id (step config is keyed by workflow and step)",
        ));
    }
    if let Some(tenant) = caller.tenant() {
        team_visible_to_tenant(s, tenant, &t).await?;
    }
    Ok(t)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopesQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// The scopes that hold a document, by key, each with its revision: every one for an admin;
/// for a tenant key its org's scope, its workflows and their steps, and the teams its jobs may
/// use (bound to its org, or to none).
pub async fn scopes(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ScopesQuery>,
) -> Result<Response, ApiError> {
    let page = super::page_request(q.limit, q.cursor.as_deref())?;
    let after = page.cursor.map(|c| c.id);
    let (listed, next) = s
        .config
        .scopes(caller.tenant(), after.as_deref(), page.limit)
        .await?;
    let items: Vec<Value> = listed
        .into_iter()
        .map(|l| {
            let named = l.scope.to_ref();
            json!({
                "scope": named.scope, "id": named.id, "workflow_id": named.workflow_id,
                "step_id": named.step_id, "org_id": l.org, "revision": l.revision,
                "updated_at": crate::time::to_rfc3339(l.updated_at),
            })
        })
        .collect();
    let next_cursor = next.map(|key| crate::store::Cursor { score: 0, id: key }.encode());
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    scope: Option<String>,
    id: Option<String>,
    workflow_id: Option<String>,
    step_id: Option<String>,
    data: Option<Value>,
    /// Whose effective config to show; the scope's own chain when absent.
    target: Option<PreviewTarget>,
}

/// A [`ConfigTarget`] in a body, where an unknown field is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewTarget {
    org_id: Option<String>,
    team_id: Option<String>,
    workflow_id: Option<String>,
    step_id: Option<String>,
}

/// The effective config were one scope's document `data`: checked as a write is (the same
/// scope rules and schema), stored nowhere.
pub async fn preview(
    State(s): State<AppState>,
    caller: Caller,
    Body(req): Body<PreviewRequest>,
) -> Result<Response, ApiError> {
    let scope = scope_of(
        &caller,
        &ScopeRef {
            scope: req.scope,
            id: req.id,
            workflow_id: req.workflow_id,
            step_id: req.step_id,
        },
    )?;
    let data = req
        .data
        .ok_or_else(|| ApiError::field("data", "is required"))?;
    let target = match req.target {
        Some(t) => ConfigTarget {
            org_id: t.org_id,
            team_id: t.team_id,
            workflow_id: t.workflow_id,
            step_id: t.step_id,
        },
        None => scope.target(),
    };
    let target = target_of(&s, &caller, target).await?;
    let plugins = &s.plugins;
    let plugin_kind = |name: &str| plugins.get(name).map(|p| p.kind());
    let p = s
        .config
        .preview(&target, &scope, &data, &plugin_kind)
        .await?;
    Ok(
        Json(json!({"effective": p.effective, "changed": p.changed, "revision": p.revision}))
            .into_response(),
    )
}

/// 404 unless the team a tenant key's target names may be its org's: one bound to another org
/// (`tenancy.teams`) answers as if it did not exist. (A workflow, and so its steps, is the
/// tenant's by its id: [`Caller::resolve`] answered 404 for another org's.)
async fn team_visible_to_tenant(
    s: &AppState,
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
    Ok(())
}
