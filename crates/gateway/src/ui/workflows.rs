//! Workflows: definitions with their versions and their DAG, runs with the same DAG coloured
//! by step status (live), step details, approve or reject with a comment, cancel a run or a
//! step, and starting a run (its input checked against `input_schema` by the API).

use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::UiState;
use super::api::{UiError, query, seg};
use super::dag::{self, DagNode};
use super::session::{Posted, Session, csrf_input};
use super::views::{self, badge, empty, facts, items, job_link, json_block, live, s};

#[derive(Deserialize, Default)]
pub struct PageQuery {
    cursor: Option<String>,
}

pub async fn list(
    State(st): State<UiState>,
    session: Session,
    Query(q): Query<PageQuery>,
) -> Result<Response, UiError> {
    let page = st
        .api
        .get(
            &session,
            &format!("/workflows?{}", query(&[("cursor", q.cursor.as_deref())])),
        )
        .await?;
    let defs = items(&page);
    let body = html! {
        @if defs.is_empty() {
            (empty("No workflows yet. Create one with POST /api/v1/workflows (JSON or YAML)."))
        } @else {
            table class="list" {
                thead { tr { th { "Workflow" } th { "Name" } th { "Org" } th { "Version" } th { "Steps" } th { "Updated" } } }
                tbody {
                    @for w in defs {
                        tr {
                            td { a href=(format!("/ui/workflows/{}", seg(s(w, "id")))) { code { (s(w, "id")) } } }
                            td { (s(w, "name")) }
                            td { (s(w, "org_id")) }
                            td { (w.get("version").map(Value::to_string).unwrap_or_default()) }
                            td { (w.get("steps").and_then(Value::as_object).map_or(0, |m| m.len())) }
                            td { time { (s(w, "updated_at")) } }
                        }
                    }
                }
            }
        }
        @if let Some(c) = page.get("next_cursor").and_then(Value::as_str) {
            nav class="pager" aria-label="Pages" {
                a rel="next" href=(format!("/ui/workflows?{}", query(&[("cursor", Some(c))]))) { "Next page →" }
            }
        }
    };
    Ok(views::page("Workflows", "/ui/workflows", Some(&session), body).into_response())
}

/// The steps of a definition as DAG nodes, coloured by `run`'s step statuses when given.
fn nodes(def: &Value, run: Option<&Value>) -> Vec<DagNode> {
    let Some(steps) = def.get("steps").and_then(Value::as_object) else {
        return Vec::new();
    };
    steps
        .iter()
        .map(|(id, step)| {
            let kind = step.get("type").and_then(Value::as_str).unwrap_or("job");
            let detail = if kind == "approval" {
                "approval".to_string()
            } else if step.get("for_each").is_some() {
                format!("for_each {}", s(step, "topic"))
            } else {
                s(step, "topic").to_string()
            };
            let step_run = run.and_then(|r| r.get("steps")).and_then(|m| m.get(id));
            DagNode {
                id: id.clone(),
                depends_on: step
                    .get("depends_on")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
                detail,
                status: run.map(|_| {
                    step_run
                        .map(|sr| s(sr, "status"))
                        .filter(|st| !st.is_empty())
                        .unwrap_or("pending")
                        .to_string()
                }),
                href: run.map(|_| format!("#step-{id}")),
            }
        })
        .collect()
}

/// A workflow's definition: `version` of it, or its latest.
async fn definition(
    st: &UiState,
    session: &Session,
    id: &str,
    version: Option<u64>,
) -> Result<Value, UiError> {
    let version = version.map(|v| v.to_string());
    let q = query(&[("version", version.as_deref())]);
    st.api
        .get(session, &format!("/workflows/{}?{q}", seg(id)))
        .await
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    version: Option<u64>,
}

/// `/ui/workflows/{id}`: the definition (a version of it), its DAG, its runs, a start form.
pub async fn show(
    State(st): State<UiState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, UiError> {
    let def = definition(&st, &session, &id, q.version).await?;
    let latest = match q.version {
        None => def.get("version").and_then(Value::as_u64).unwrap_or(1),
        Some(_) => st
            .api
            .get(&session, &format!("/workflows/{}", seg(&id)))
            .await?
            .get("version")
            .and_then(Value::as_u64)
            .unwrap_or(1),
    };
    let shown = def.get("version").and_then(Value::as_u64).unwrap_or(latest);
    let runs = st
        .api
        .get(&session, &format!("/workflows/{}/runs?limit=50", seg(&id)))
        .await?;
    let here = format!("/ui/workflows/{}", seg(&id));
    let body = html! {
        (facts(&[
            ("Name", html! { (s(&def, "name")) }),
            ("Org", html! { (s(&def, "org_id")) }),
            ("Team", html! { (s(&def, "team_id")) }),
            ("Versions", html! {
                @for v in 1..=latest {
                    @if v == shown { strong { "v" (v) } } @else { a href=(format!("{here}?version={v}")) { "v" (v) } }
                    " "
                }
            }),
        ]))
        h2 { "Steps" }
        figure class="dag-box" { (dag::svg(&nodes(&def, None), &format!("The steps of {id}"))) }
        details class="card" {
            summary { "Definition (JSON)" }
            (json_block(&def))
        }
        h2 { "Start a run" }
        form method="post" action=(format!("{here}/runs")) class="stack card" {
            (csrf_input(&session))
            @if let Some(schema) = def.get("input_schema") {
                p class="hint" { "The input is checked against this schema:" }
                (json_block(schema))
            }
            label for="input" { "Input (JSON)" }
            textarea id="input" name="input" rows="4" { "{}" }
            button type="submit" id="start-run" { "Start run" }
        }
        h2 { "Runs" }
        (live("runs-live", &here, runs_table(items(&runs))))
    };
    Ok(views::page(
        &format!("Workflow {id}"),
        "/ui/workflows",
        Some(&session),
        body,
    )
    .into_response())
}

fn runs_table(runs: &[Value]) -> Markup {
    if runs.is_empty() {
        return empty("No runs yet.");
    }
    html! {
        table class="list" {
            thead { tr { th { "Run" } th { "Status" } th { "Version" } th { "Started" } } }
            tbody {
                @for r in runs {
                    tr {
                        td { a href=(format!("/ui/workflow-runs/{}", seg(s(r, "id")))) { code { (s(r, "id")) } } }
                        td { (badge(s(r, "status"))) }
                        td { (r.get("workflow_version").map(Value::to_string).unwrap_or_default()) }
                        td { (millis(r.get("started_at"))) }
                    }
                }
            }
        }
    }
}

/// A time the API gives as RFC 3339 text or as epoch milliseconds.
fn millis(v: Option<&Value>) -> Markup {
    match v {
        Some(Value::String(t)) => html! { time { (t) } },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ms) => html! { time { (crate::time::to_rfc3339(ms)) } },
            None => html! {},
        },
        _ => html! {},
    }
}

pub async fn start_run(
    State(st): State<UiState>,
    Path(id): Path<String>,
    form: Posted,
) -> Result<Response, UiError> {
    let input: Value = match form.get("input") {
        None => json!({}),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| UiError::field("input", format!("is not JSON: {e}")))?,
    };
    let run = st
        .api
        .post(
            &form.session,
            &format!("/workflows/{}/runs", seg(&id)),
            &json!({"input": input}),
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/workflow-runs/{}", seg(s(&run, "run_id")))).into_response())
}

/// `/ui/workflow-runs/{run_id}`: the run's DAG coloured by step status, and each step.
pub async fn run(
    State(st): State<UiState>,
    session: Session,
    Path(run_id): Path<String>,
) -> Result<Response, UiError> {
    let run = st
        .api
        .get(&session, &format!("/workflow-runs/{}", seg(&run_id)))
        .await?;
    let wf = s(&run, "workflow_id").to_string();
    let version = run.get("workflow_version").map(Value::to_string);
    let def = definition(
        &st,
        &session,
        &wf,
        run.get("workflow_version").and_then(Value::as_u64),
    )
    .await?;
    let here = format!("/ui/workflow-runs/{}", seg(&run_id));
    let status = s(&run, "status");
    let ended = matches!(status, "succeeded" | "failed" | "cancelled" | "timed_out");
    let kinds = def.get("steps").and_then(Value::as_object);
    let drawn = nodes(&def, Some(&run));
    // Steps listed in the drawing's order: left to right, top to bottom.
    let order = dag::layout(&drawn);
    let mut steps: Vec<(&String, &Value)> = run
        .get("steps")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .collect();
    steps.sort_by_key(|(id, _)| order.get(id.as_str()).copied().unwrap_or((usize::MAX, 0)));
    let live_part = html! {
        (facts(&[
            ("Status", html! { span id="run-status" { (badge(status)) } }),
            ("Completed", millis(run.get("completed_at"))),
            ("Error", html! { (s(&run, "error")) }),
        ]))
        @if !ended {
            form method="post" action=(format!("{here}/cancel")) class="inline" {
                (csrf_input(&session))
                button type="submit" class="danger" { "Cancel run" }
            }
        }
        figure class="dag-box" { (dag::svg(&drawn, &format!("Run {run_id}, coloured by step status"))) }
        h2 { "Steps" }
        @for (id, sr) in &steps {
            @let kind = kinds.and_then(|k| k.get(id.as_str())).and_then(|d| d.get("type")).and_then(Value::as_str).unwrap_or("job");
            @let step_status = s(sr, "status");
            section class="step card" id=(format!("step-{id}")) {
                h3 { code { (id) } " " (badge(step_status)) }
                (step_facts(sr))
                @if kind == "approval" && step_status == "waiting" {
                    form method="post" action=(format!("{here}/steps/{}/approve", seg(id))) class="inline approve" {
                        (csrf_input(&session))
                        label for=(format!("comment-{id}")) { "Comment" }
                        input id=(format!("comment-{id}")) name="comment";
                        button type="submit" name="approved" value="true" { "Approve" }
                        button type="submit" name="approved" value="false" class="danger" { "Reject" }
                    }
                } @else if !ended && matches!(step_status, "running" | "waiting" | "pending") {
                    form method="post" action=(format!("{here}/steps/{}/cancel", seg(id))) class="inline" {
                        (csrf_input(&session))
                        button type="submit" class="danger" { "Cancel step" }
                    }
                }
                @if let Some(children) = sr.get("children").and_then(Value::as_array) {
                    details {
                        summary { "for_each: " (children.len()) " children" }
                        ol {
                            @for c in children {
                                li { (badge(s(c, "status"))) " " @if let Some(item) = c.get("item") { code { (item.to_string()) } } " " @if !s(c, "job_id").is_empty() { (job_link(s(c, "job_id"))) } }
                            }
                        }
                    }
                }
                @if let Some(out) = sr.get("output") {
                    h4 { "Output" } (json_block(out))
                }
            }
        }
        @if let Some(out) = run.get("output") {
            h2 { "Output" } (json_block(out))
        }
    };
    let body = html! {
        (facts(&[
            ("Workflow", html! { a href=(format!("/ui/workflows/{}?version={}", seg(&wf), version.as_deref().unwrap_or("1"))) { code { (wf) } } " v" (version.as_deref().unwrap_or("")) }),
            ("Org", html! { (s(&run, "org_id")) }),
            ("Started", millis(run.get("started_at"))),
        ]))
        (live("run-live", &here, live_part))
        h2 { "Input" }
        (json_block(run.get("input").unwrap_or(&Value::Null)))
        @if let Some(ctx) = run.get("context").filter(|c| c.as_object().is_some_and(|o| !o.is_empty())) {
            h2 { "Context" } (json_block(ctx))
        }
    };
    Ok(views::page(
        &format!("Run {run_id}"),
        "/ui/workflows",
        Some(&session),
        body,
    )
    .into_response())
}

fn step_facts(sr: &Value) -> Markup {
    facts(&[
        (
            "Attempts",
            html! { (sr.get("attempts").map(Value::to_string).unwrap_or_default()) },
        ),
        (
            "Job",
            html! { @if !s(sr, "job_id").is_empty() { (job_link(s(sr, "job_id"))) } },
        ),
        ("Started", millis(sr.get("started_at"))),
        ("Completed", millis(sr.get("completed_at"))),
        ("Next attempt", millis(sr.get("next_attempt_at"))),
        ("Error", html! { (s(sr, "error")) }),
        (
            "Approval",
            html! {
                @if let Some(a) = sr.get("approval") {
                    @if a.get("approved").and_then(Value::as_bool) == Some(true) { "approved" } @else { "rejected" }
                    @if !s(a, "comment").is_empty() { " — “" (s(a, "comment")) "”" }
                }
            },
        ),
    ])
}

/// Posts `body` to the API's `/workflows/{workflow}/runs/{run_id}{tail}` (the route names the
/// run's workflow too), then goes back to the run's page.
async fn run_action(
    st: &UiState,
    form: &Posted,
    run_id: &str,
    tail: &str,
    body: Value,
) -> Result<Response, UiError> {
    let run = st
        .api
        .get(&form.session, &format!("/workflow-runs/{}", seg(run_id)))
        .await?;
    let wf = s(&run, "workflow_id");
    st.api
        .post(
            &form.session,
            &format!("/workflows/{}/runs/{}{tail}", seg(wf), seg(run_id)),
            &body,
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/workflow-runs/{}", seg(run_id))).into_response())
}

const CANCELLED_HERE: &str = "cancelled from the dashboard";

pub async fn cancel_run(
    State(st): State<UiState>,
    Path(run_id): Path<String>,
    form: Posted,
) -> Result<Response, UiError> {
    let body = json!({"reason": CANCELLED_HERE});
    run_action(&st, &form, &run_id, "/cancel", body).await
}

pub async fn approve_step(
    State(st): State<UiState>,
    Path((run_id, step_id)): Path<(String, String)>,
    form: Posted,
) -> Result<Response, UiError> {
    let approved = form.get("approved") == Some("true");
    let body = json!({"approved": approved, "comment": form.get("comment")});
    let tail = format!("/steps/{}/approve", seg(&step_id));
    run_action(&st, &form, &run_id, &tail, body).await
}

pub async fn cancel_step(
    State(st): State<UiState>,
    Path((run_id, step_id)): Path<(String, String)>,
    form: Posted,
) -> Result<Response, UiError> {
    let body = json!({"reason": CANCELLED_HERE});
    let tail = format!("/steps/{}/cancel", seg(&step_id));
    run_action(&st, &form, &run_id, &tail, body).await
}
