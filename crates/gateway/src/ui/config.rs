//! `/ui/config`: the scopes that hold a document, as a tree (`GET /api/v1/config/scopes`); one
//! scope's document, edited against its revision; and the effective config of a target — of
//! what is saved, or, before saving, with the edit in place of the scope's document
//! (`POST /api/v1/config/preview`, which checks it as a write and stores nothing).
//!
//! The page's query names two things apart: the scope being edited (`scope`, `id`, and
//! `workflow_id` with `step_id` for a step) and the target whose effective config is shown
//! (`for_org`, `for_team`, `for_workflow`, `for_step`), by default the scope's own chain. An edit
//! that is previewed, or that the API refuses, comes back in the form as it was typed.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::UiState;
use super::api::{UiError, query};
use super::session::{Posted, Session, csrf_input};
use super::views::{self, empty, items, json_block, s};

const SCOPES: [&str; 5] = ["system", "org", "team", "workflow", "step"];

/// How many scopes the tree shows at once (the API's largest page).
const TREE_PAGE: usize = 500;

#[derive(Deserialize, Default, Clone)]
pub struct ConfigQuery {
    scope: Option<String>,
    id: Option<String>,
    workflow_id: Option<String>,
    step_id: Option<String>,
    for_org: Option<String>,
    for_team: Option<String>,
    for_workflow: Option<String>,
    for_step: Option<String>,
    /// Where the tree goes on (its `next_cursor`).
    scopes_after: Option<String>,
    saved: Option<String>,
}

/// The scope being edited, as the API names it.
struct Edited {
    scope: String,
    id: Option<String>,
    workflow_id: Option<String>,
    step_id: Option<String>,
}

impl ConfigQuery {
    fn from_form(form: &Posted) -> Self {
        let get = |k: &str| form.get(k).map(str::to_string);
        ConfigQuery {
            scope: get("scope"),
            id: get("id"),
            workflow_id: get("workflow_id"),
            step_id: get("step_id"),
            for_org: get("for_org"),
            for_team: get("for_team"),
            for_workflow: get("for_workflow"),
            for_step: get("for_step"),
            scopes_after: None,
            saved: None,
        }
    }

    /// The scope to edit: as asked, or the caller's own (the system scope for an admin, its
    /// org's for a tenant key).
    fn edited(&self, session: &Session) -> Edited {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let scope = given(&self.scope)
            .unwrap_or_else(|| if session.is_admin() { "system" } else { "org" }.into());
        let id = given(&self.id).or_else(|| {
            (scope == "org")
                .then(|| session.caller.tenant().map(str::to_string))
                .flatten()
        });
        Edited {
            scope,
            id,
            workflow_id: given(&self.workflow_id),
            step_id: given(&self.step_id),
        }
    }

    /// Whose effective config to show, as `/config/effective` takes it: the one asked for, or
    /// else the edited scope's own chain.
    fn target(&self, edited: &Edited) -> Vec<(&'static str, Option<String>)> {
        let asked = [
            ("org_id", &self.for_org),
            ("team_id", &self.for_team),
            ("workflow_id", &self.for_workflow),
            ("step_id", &self.for_step),
        ];
        if asked
            .iter()
            .any(|(_, v)| v.as_deref().is_some_and(|v| !v.is_empty()))
        {
            return asked.map(|(k, v)| (k, v.clone())).to_vec();
        }
        let org_of = |w: &Option<String>| {
            w.as_deref()
                .and_then(crate::ids::tenant_of)
                .map(str::to_string)
        };
        match edited.scope.as_str() {
            "org" => vec![("org_id", edited.id.clone())],
            "team" => vec![("team_id", edited.id.clone())],
            "workflow" => vec![
                ("org_id", org_of(&edited.id)),
                ("workflow_id", edited.id.clone()),
            ],
            "step" => vec![
                ("org_id", org_of(&edited.workflow_id)),
                ("workflow_id", edited.workflow_id.clone()),
                ("step_id", edited.step_id.clone()),
            ],
            _ => Vec::new(),
        }
    }
}

impl Edited {
    fn pairs(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("scope", Some(self.scope.as_str())),
            ("id", self.id.as_deref()),
            ("workflow_id", self.workflow_id.as_deref()),
            ("step_id", self.step_id.as_deref()),
        ]
    }

    /// The request body naming this scope, with `data`.
    fn body(&self, data: Value) -> Value {
        let mut body = Map::new();
        for (k, v) in self.pairs() {
            if let Some(v) = v {
                body.insert(k.into(), json!(v));
            }
        }
        body.insert("data".into(), data);
        Value::Object(body)
    }
}

/// An edit not saved: the text as typed, the revision it was made on, and what the API made of
/// it.
struct Draft {
    text: String,
    based_on: u64,
    outcome: Result<Value, UiError>,
}

/// The revision a posted edit was made on (0: the scope held no document).
fn based_on(form: &Posted) -> u64 {
    form.get("revision")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub async fn config(
    State(st): State<UiState>,
    session: Session,
    Query(q): Query<ConfigQuery>,
) -> Result<Response, UiError> {
    render(&st, &session, &q, None).await
}

/// Previews the edit: the effective config of the page's target with it in place of the
/// scope's document, or why the API refuses it — the form keeps the text either way.
pub async fn preview(State(st): State<UiState>, form: Posted) -> Result<Response, UiError> {
    let q = ConfigQuery::from_form(&form);
    let edited = q.edited(&form.session);
    let text = form.get("data").unwrap_or("{}").to_string();
    let outcome = match parse(&text) {
        Ok(data) => {
            let mut body = edited.body(data);
            let target: Map<String, Value> = q
                .target(&edited)
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), json!(v?))))
                .collect();
            if let Some(obj) = body.as_object_mut() {
                obj.insert("target".into(), Value::Object(target));
            }
            st.api.post(&form.session, "/config/preview", &body).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome
        && e.status == StatusCode::UNAUTHORIZED
    {
        return Err(UiError::new(e.status, e.detail.clone()));
    }
    let draft = Draft {
        text,
        based_on: based_on(&form),
        outcome,
    };
    render(&st, &form.session, &q, Some(draft)).await
}

fn parse(text: &str) -> Result<Value, UiError> {
    serde_json::from_str(text).map_err(|e| UiError::field("data", format!("is not JSON: {e}")))
}

/// Saves the edit against the revision it was made on; a refusal (a stale revision, a key the
/// schema refuses) comes back on the page with the edit kept.
pub async fn save(State(st): State<UiState>, form: Posted) -> Result<Response, UiError> {
    let q = ConfigQuery::from_form(&form);
    let edited = q.edited(&form.session);
    let text = form.get("data").unwrap_or("{}").to_string();
    // Always guarded: revision 0 saves only where no document has appeared meanwhile.
    let if_match = format!("\"{}\"", based_on(&form));
    let headers = [("if-match", if_match.as_str())];
    let saved = match parse(&text) {
        Ok(data) => {
            st.api
                .call_with(
                    &form.session,
                    Method::POST,
                    "/config",
                    Some(&edited.body(data)),
                    &headers,
                )
                .await
        }
        Err(e) => Err(e),
    };
    let saved = match saved {
        Ok(v) => v,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => return Err(e),
        Err(e) => {
            let status = e.status;
            let draft = Draft {
                text,
                based_on: based_on(&form),
                outcome: Err(e),
            };
            let page = render(&st, &form.session, &q, Some(draft)).await?;
            return Ok((status, page).into_response());
        }
    };
    let revision = saved
        .get("revision")
        .map(Value::to_string)
        .unwrap_or_default();
    let mut back: Vec<(&str, Option<&str>)> = edited.pairs().to_vec();
    let target = [
        ("for_org", q.for_org.as_deref()),
        ("for_team", q.for_team.as_deref()),
        ("for_workflow", q.for_workflow.as_deref()),
        ("for_step", q.for_step.as_deref()),
    ];
    back.extend(target);
    let done = format!("Saved as revision {revision}");
    back.push(("saved", Some(&done)));
    Ok(Redirect::to(&format!("/ui/config?{}", query(&back))).into_response())
}

async fn render(
    st: &UiState,
    session: &Session,
    q: &ConfigQuery,
    draft: Option<Draft>,
) -> Result<Response, UiError> {
    let edited = q.edited(session);
    let doc = match st
        .api
        .get(session, &format!("/config?{}", query(&edited.pairs())))
        .await
    {
        Ok(d) => Some(Ok(d)),
        Err(e) if e.status == StatusCode::NOT_FOUND => None,
        Err(e) => Some(Err(e)),
    };
    let target = q.target(&edited);
    let target_query = query(
        &target
            .iter()
            .map(|(k, v)| (*k, v.as_deref()))
            .collect::<Vec<_>>(),
    );
    let effective = st
        .api
        .get(session, &format!("/config/effective?{target_query}"))
        .await;
    let scopes = st
        .api
        .get(
            session,
            &format!(
                "/config/scopes?{}",
                query(&[
                    ("limit", Some(&TREE_PAGE.to_string())),
                    ("cursor", q.scopes_after.as_deref()),
                ])
            ),
        )
        .await;
    let stored = match &doc {
        Some(Ok(d)) => {
            serde_json::to_string_pretty(d.get("data").unwrap_or(&Value::Null)).unwrap_or_default()
        }
        _ => "{}".to_string(),
    };
    let revision = match &doc {
        Some(Ok(d)) => d.get("revision").and_then(Value::as_u64),
        _ => None,
    };
    let text = draft.as_ref().map_or(stored, |d| d.text.clone());
    // An edit goes on against the revision it was made on, so saving it cannot overwrite a
    // change its author has not seen — unless the save was refused for that very change, which
    // the page then shows beside the edit.
    let conflict = draft.as_ref().is_some_and(
        |d| matches!(&d.outcome, Err(e) if e.status == StatusCode::PRECONDITION_FAILED),
    );
    let edit_revision = match &draft {
        Some(d) if !conflict => d.based_on,
        _ => revision.unwrap_or(0),
    };
    let current = match (&doc, conflict) {
        (Some(Ok(d)), true) => d.get("data"),
        _ => None,
    };
    let hidden = html! {
        @for (k, v) in edited.pairs() { @if let Some(v) = v { input type="hidden" name=(k) value=(v); } }
        @for (k, v) in [("for_org", &q.for_org), ("for_team", &q.for_team), ("for_workflow", &q.for_workflow), ("for_step", &q.for_step)] {
            @if let Some(v) = v { input type="hidden" name=(k) value=(v); }
        }
    };
    let body = html! {
        @if let Some(saved) = &q.saved { p class="notice" role="status" { (saved) } }
        div class="split" {
            aside class="card scopes" aria-labelledby="scopes-title" {
                h2 id="scopes-title" { "Scopes" }
                p class="hint" { "Each scope merges over the one above it: system → org → team → workflow → step." }
                @match &scopes {
                    Ok(page) => {
                        @if items(page).is_empty() && q.scopes_after.is_none() {
                            (empty("No scope holds a document yet."))
                        } @else {
                            (tree(items(page), session, &edited))
                        }
                        @if let Some(next) = page.get("next_cursor").and_then(Value::as_str) {
                            p { a href=(format!("/ui/config?{}", query(&[("scopes_after", Some(next))]))) { "More scopes" } }
                        }
                    },
                    Err(e) => div class="error" role="alert" { p { "The scopes cannot be listed: " (e.detail) } },
                }
            }
            div {
                h2 { "Scope " code { (scope_label(&edited)) } }
                form method="get" action="/ui/config" class="filters" {
                    label { "Scope "
                        select name="scope" {
                            @for sc in SCOPES { option value=(sc) selected[sc == edited.scope] { (sc) } }
                        }
                    }
                    label { "Id (org, team or workflow) " input name="id" value=(edited.id.as_deref().unwrap_or("")); }
                    label { "Workflow (step scope) " input name="workflow_id" value=(edited.workflow_id.as_deref().unwrap_or("")); }
                    label { "Step " input name="step_id" value=(edited.step_id.as_deref().unwrap_or("")); }
                    button type="submit" { "Open" }
                }
                @match &doc {
                    Some(Err(e)) => { div class="error" role="alert" { p { (e.detail) } } },
                    None => { (empty("Nothing is set at this scope yet; saving creates it.")) },
                    Some(Ok(d)) => { p { "Revision " strong id="config-revision" { (revision.unwrap_or(0)) } ", updated " time { (s(d, "updated_at")) } } },
                }
                form method="post" action="/ui/config" class="stack card" {
                    (csrf_input(session))
                    (hidden)
                    input type="hidden" name="revision" value=(edit_revision);
                    label for="data" { "Document (JSON); saved only if nobody changed it since revision " (edit_revision) }
                    textarea id="data" name="data" rows="12" { (text) }
                    div class="actions" {
                        button type="submit" formaction="/ui/config/preview" id="preview-config" class="secondary" { "Preview effective config" }
                        button type="submit" id="save-config" { "Save" }
                    }
                }
                @if let Some(d) = &draft { (draft_outcome(d, current)) }
                h2 { "Effective config" }
                p class="hint" { "Of " (target_label(&target)) ", as saved." }
                form method="get" action="/ui/config" class="filters" {
                    @for (k, v) in edited.pairs() { @if let Some(v) = v { input type="hidden" name=(k) value=(v); } }
                    @if session.is_admin() { label { "Org " input name="for_org" value=(q.for_org.as_deref().unwrap_or("")); } }
                    label { "Team " input name="for_team" value=(q.for_team.as_deref().unwrap_or("")); }
                    label { "Workflow " input name="for_workflow" value=(q.for_workflow.as_deref().unwrap_or("")); }
                    label { "Step " input name="for_step" value=(q.for_step.as_deref().unwrap_or("")); }
                    button type="submit" { "Show" }
                }
                @match &effective {
                    Ok(v) => div id="effective" { (json_block(v)) },
                    Err(e) => div class="error" role="alert" { p { (e.detail) } },
                }
            }
        }
    };
    Ok(views::page("Config", "/ui/config", Some(session), body).into_response())
}

/// What the API made of an edit: the previewed effective config with the keys it changes, or
/// its refusal naming the fields — for a stale revision, with the `current` document.
fn draft_outcome(d: &Draft, current: Option<&Value>) -> Markup {
    match &d.outcome {
        Ok(p) => {
            let stored = p.get("revision").and_then(Value::as_u64).unwrap_or(0);
            let changed: Vec<&str> = p
                .get("changed")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            html! {
                section id="config-preview" class="card" aria-labelledby="preview-title" {
                    h2 id="preview-title" { "Preview with this edit (not saved)" }
                    @if stored != d.based_on {
                        p class="error" role="alert" { "Revision " (stored) " was saved since this edit began on revision " (d.based_on) ": saving it will be refused. Open the scope again to see it." }
                    }
                    p id="preview-changed" {
                        @if changed.is_empty() {
                            "The edit changes nothing in this effective config."
                        } @else {
                            "Changes " @for (i, k) in changed.iter().enumerate() { @if i > 0 { ", " } code { (k) } } "."
                        }
                    }
                    (json_block(p.get("effective").unwrap_or(&Value::Null)))
                }
            }
        }
        Err(e) => html! {
            div id="config-refused" class="error" role="alert" {
                p { (e.detail) }
                @if !e.fields.is_empty() {
                    ul { @for (f, m) in &e.fields { li { code { (f) } " " (m) } } }
                }
                @if let Some(c) = current {
                    p { "It was saved meanwhile as:" }
                    (json_block(c))
                    p { "Your edit is kept in the form, now against that revision: saving it replaces what is shown here." }
                }
            }
        },
    }
}

fn scope_label(e: &Edited) -> String {
    match e.scope.as_str() {
        "system" => "system".into(),
        "step" => format!(
            "step {} of {}",
            e.step_id.as_deref().unwrap_or("?"),
            e.workflow_id.as_deref().unwrap_or("?")
        ),
        other => format!("{other} {}", e.id.as_deref().unwrap_or("?")),
    }
}

fn target_label(target: &[(&str, Option<String>)]) -> String {
    let named: Vec<String> = target
        .iter()
        .filter_map(|(k, v)| Some(format!("{} {}", k.trim_end_matches("_id"), v.as_deref()?)))
        .collect();
    if named.is_empty() {
        "the system scope alone".into()
    } else {
        named.join(", ")
    }
}

/// The scopes of one org: its own document, its teams, its workflows with their steps.
#[derive(Default)]
struct OrgNode<'a> {
    doc: Option<&'a Value>,
    teams: Vec<&'a Value>,
    workflows: BTreeMap<&'a str, WorkflowNode<'a>>,
}

#[derive(Default)]
struct WorkflowNode<'a> {
    doc: Option<&'a Value>,
    steps: Vec<&'a Value>,
}

/// The listed scopes as a tree: the system scope; each org with its teams (those the tenancy
/// policy binds to it) and its workflows with their steps; then the shared teams. An org or
/// workflow without a document of its own still holds its branch. Each scope links to its
/// page: for a scope the session may edit, the scope itself; for another (a tenant key's team,
/// workflow or step) its effective config.
fn tree(items: &[Value], session: &Session, current: &Edited) -> Markup {
    let mut system = None;
    let mut orgs: BTreeMap<&str, OrgNode> = BTreeMap::new();
    let mut shared = Vec::new();
    for item in items {
        let org = s(item, "org_id");
        match s(item, "scope") {
            "system" => system = Some(item),
            "org" => orgs.entry(s(item, "id")).or_default().doc = Some(item),
            "team" if org.is_empty() => shared.push(item),
            "team" => orgs.entry(org).or_default().teams.push(item),
            "workflow" => {
                let wf = orgs.entry(org).or_default().workflows.entry(s(item, "id"));
                wf.or_default().doc = Some(item);
            }
            "step" => {
                let wf = orgs
                    .entry(org)
                    .or_default()
                    .workflows
                    .entry(s(item, "workflow_id"));
                wf.or_default().steps.push(item);
            }
            _ => {}
        }
    }
    let leaf = |item: &Value| node(item, session, current);
    html! {
        ul class="tree" {
            @if let Some(sys) = system { li { (leaf(sys)) } }
            @for (org, o) in &orgs {
                li {
                    @match o.doc { Some(d) => (leaf(d)), None => span class="kind" { "org " code { (org) } } }
                    ul {
                        @for t in &o.teams { li { (leaf(t)) } }
                        @for (wf, w) in &o.workflows {
                            li {
                                @match w.doc { Some(d) => (leaf(d)), None => span class="kind" { "workflow " code { (wf) } } }
                                @if !w.steps.is_empty() {
                                    ul { @for st in &w.steps { li { (leaf(st)) } } }
                                }
                            }
                        }
                    }
                }
            }
            @if !shared.is_empty() {
                li {
                    span class="kind" { "shared teams" }
                    ul { @for t in &shared { li { (leaf(t)) } } }
                }
            }
        }
    }
}

/// One listed scope: its kind and name, linked, with its revision.
fn node(item: &Value, session: &Session, current: &Edited) -> Markup {
    let scope = s(item, "scope");
    let name = match scope {
        "system" => String::new(),
        "step" => s(item, "step_id").to_string(),
        _ => s(item, "id").to_string(),
    };
    let own_org = scope == "org" && session.caller.tenant() == Some(s(item, "id"));
    let pairs: Vec<(&str, Option<&str>)> = if session.is_admin() || own_org {
        vec![
            ("scope", Some(scope)),
            ("id", item.get("id").and_then(Value::as_str)),
            (
                "workflow_id",
                item.get("workflow_id").and_then(Value::as_str),
            ),
            ("step_id", item.get("step_id").and_then(Value::as_str)),
        ]
    } else {
        // Not the key's to read: shown by the effective config it takes part in.
        let id = item.get("id").and_then(Value::as_str);
        match scope {
            "team" => vec![("for_team", id)],
            "workflow" => vec![("for_workflow", id)],
            _ => vec![
                (
                    "for_workflow",
                    item.get("workflow_id").and_then(Value::as_str),
                ),
                ("for_step", item.get("step_id").and_then(Value::as_str)),
            ],
        }
    };
    let is_current = current.scope == scope
        && match scope {
            "system" => true,
            "step" => {
                current.workflow_id.as_deref() == item.get("workflow_id").and_then(Value::as_str)
                    && current.step_id.as_deref() == Some(name.as_str())
            }
            _ => current.id.as_deref() == Some(name.as_str()),
        };
    html! {
        a href=(format!("/ui/config?{}", query(&pairs))) aria-current=[is_current.then_some("true")] {
            span class="kind" { (scope) } @if !name.is_empty() { " " code { (name) } }
        }
        " " span class="hint" { "rev " (item.get("revision").map(Value::to_string).unwrap_or_default()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caller;

    fn session(caller: Caller) -> Session {
        Session {
            key: None,
            caller,
            csrf: String::new(),
        }
    }

    fn edited(scope: &str, id: Option<&str>) -> Edited {
        Edited {
            scope: scope.into(),
            id: id.map(str::to_string),
            workflow_id: None,
            step_id: None,
        }
    }

    fn listed() -> Vec<Value> {
        vec![
            json!({"scope": "org", "id": "acme", "org_id": "acme", "revision": 2}),
            json!({"scope": "step", "workflow_id": "acme~wf", "step_id": "build", "org_id": "acme", "revision": 1}),
            json!({"scope": "system", "revision": 4}),
            json!({"scope": "team", "id": "payments", "org_id": "acme", "revision": 1}),
            json!({"scope": "team", "id": "shared", "org_id": null, "revision": 1}),
            json!({"scope": "workflow", "id": "acme~wf", "org_id": "acme", "revision": 3}),
            json!({"scope": "workflow", "id": "beta~wf", "org_id": "beta", "revision": 1}),
        ]
    }

    #[test]
    fn the_tree_nests_teams_workflows_and_steps_under_their_org() {
        let html = tree(
            &listed(),
            &session(Caller::Admin),
            &edited("org", Some("acme")),
        )
        .into_string();
        let at = |needle: &str| {
            html.find(needle)
                .unwrap_or_else(|| panic!("{needle} is not in {html}"))
        };
        // Top down: system, acme with its team, workflow and step, beta, then shared teams.
        assert!(at("scope=system") < at("scope=org&amp;id=acme"));
        assert!(at("scope=org&amp;id=acme") < at("id=payments"));
        assert!(at("id=payments") < at("scope=workflow&amp;id=acme%7Ewf"));
        assert!(
            at("scope=workflow&amp;id=acme%7Ewf")
                < at("scope=step&amp;workflow_id=acme%7Ewf&amp;step_id=build")
        );
        // beta holds no document of its own: its branch is named, not linked.
        assert!(at("org <code>beta</code>") < at("id=beta%7Ewf"));
        assert!(at("shared teams") > at("id=beta%7Ewf"));
        assert!(at("id=shared") > at("shared teams"));
        // The scope open on the page is marked.
        assert_eq!(html.matches("aria-current").count(), 1);
        assert!(
            html.contains("scope=org&amp;id=acme\" aria-current=\"true\""),
            "{html}"
        );
        assert!(html.contains("rev 3"));
    }

    #[test]
    fn a_tenant_edits_its_org_and_sees_the_rest_by_its_effective_config() {
        let tenant = session(Caller::Tenant("acme".into()));
        let html = tree(&listed()[..2], &tenant, &edited("org", Some("acme"))).into_string();
        assert!(
            html.contains("href=\"/ui/config?scope=org&amp;id=acme\""),
            "{html}"
        );
        assert!(
            html.contains("href=\"/ui/config?for_workflow=acme%7Ewf&amp;for_step=build\""),
            "{html}"
        );
        let team = node(&listed()[3], &tenant, &edited("org", Some("acme"))).into_string();
        assert!(team.contains("for_team=payments"), "{team}");
    }

    #[test]
    fn the_target_is_the_scopes_own_chain_unless_one_is_asked_for() {
        let q = ConfigQuery::default();
        let wf = edited("workflow", Some("acme~wf"));
        assert_eq!(
            q.target(&wf),
            [
                ("org_id", Some("acme".to_string())),
                ("workflow_id", Some("acme~wf".to_string()))
            ]
        );
        let step = Edited {
            workflow_id: Some("acme~wf".into()),
            step_id: Some("build".into()),
            ..edited("step", None)
        };
        assert_eq!(q.target(&step).len(), 3);
        assert!(q.target(&edited("system", None)).is_empty());
        assert_eq!(
            target_label(&q.target(&edited("system", None))),
            "the system scope alone"
        );
        let asked = ConfigQuery {
            for_team: Some("payments".into()),
            ..Default::default()
        };
        let t = asked.target(&wf);
        assert_eq!(t[1], ("team_id", Some("payments".to_string())));
        assert_eq!(t[2], ("workflow_id", None), "only what was asked");
        assert_eq!(target_label(&t), "team payments");
    }

    #[test]
    fn a_preview_warns_of_a_newer_revision_and_a_refusal_shows_what_it_would_overwrite() {
        let preview = |stored: u64| Draft {
            text: "{}".into(),
            based_on: 1,
            outcome: Ok(json!({"effective": {"a": 1}, "changed": ["a"], "revision": stored})),
        };
        let fresh = draft_outcome(&preview(1), None).into_string();
        assert!(fresh.contains("<code>a</code>") && !fresh.contains("role=\"alert\""));
        let stale = draft_outcome(&preview(2), None).into_string();
        assert!(stale.contains("Revision 2 was saved since"), "{stale}");
        let refused = Draft {
            text: "{}".into(),
            based_on: 1,
            outcome: Err(UiError::new(StatusCode::PRECONDITION_FAILED, "stale")),
        };
        let theirs = json!({"lvl": "theirs"});
        let shown = draft_outcome(&refused, Some(&theirs)).into_string();
        assert!(
            shown.contains("theirs") && shown.contains("saved meanwhile"),
            "{shown}"
        );
    }

    #[test]
    fn the_caller_edits_its_own_scope_by_default() {
        let q = ConfigQuery::default();
        let admin = q.edited(&session(Caller::Admin));
        assert_eq!((admin.scope.as_str(), admin.id), ("system", None));
        let acme = q.edited(&session(Caller::Tenant("acme".into())));
        assert_eq!(
            (acme.scope.as_str(), acme.id.as_deref()),
            ("org", Some("acme"))
        );
        assert_eq!(
            acme.body(json!({"a": 1})),
            json!({"scope": "org", "id": "acme", "data": {"a": 1}})
        );
    }
}
