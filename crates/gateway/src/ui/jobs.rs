//! Jobs and dead letters: the filtered, paged list with a submit form, a job's page (history
//! timeline, payload and result, effective config, safety decision, cancel and approve), and
//! the dead letters with bulk retry and delete.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::UiState;
use super::api::{UiError, query, seg};
use super::session::{Posted, Session, csrf_input};
use super::views::{self, badge, empty, facts, items, job_link, json_block, live, s};
use crate::job::{JobState, Priority};

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    state: Option<String>,
    topic: Option<String>,
    tenant: Option<String>,
    trace_id: Option<String>,
    cursor: Option<String>,
}

impl JobsQuery {
    fn pairs(&self) -> Vec<(&'static str, Option<&str>)> {
        vec![
            ("state", self.state.as_deref()),
            ("topic", self.topic.as_deref()),
            ("tenant", self.tenant.as_deref()),
            ("trace_id", self.trace_id.as_deref()),
        ]
    }
}

/// `/ui/jobs`: the API's list with its filters and cursor paging, and a submit form.
pub async fn list(
    State(st): State<UiState>,
    session: Session,
    Query(q): Query<JobsQuery>,
) -> Result<Response, UiError> {
    let mut pairs = q.pairs();
    pairs.push(("cursor", q.cursor.as_deref()));
    let filters = query(&q.pairs());
    let page = st
        .api
        .get(&session, &format!("/jobs?{}", query(&pairs)))
        .await?;
    let next = page.get("next_cursor").and_then(Value::as_str);
    let here = format!("/ui/jobs?{}", query(&pairs));
    let rows = job_table(items(&page));
    let table = if q.cursor.is_none() {
        // The first page follows the stream; a later page stays as it was read.
        live("jobs-live", &here, rows)
    } else {
        rows
    };
    let body = html! {
        form method="get" action="/ui/jobs" class="filters" role="search" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for st in JobState::ALL {
                        option value=(st.as_str()) selected[q.state.as_deref() == Some(st.as_str())] { (st.as_str()) }
                    }
                }
            }
            label { "Topic " input name="topic" value=(q.topic.as_deref().unwrap_or("")); }
            @if session.is_admin() {
                label { "Tenant " input name="tenant" value=(q.tenant.as_deref().unwrap_or("")); }
            }
            label { "Trace " input name="trace_id" value=(q.trace_id.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
            @if !filters.is_empty() { a href="/ui/jobs" { "Clear" } }
        }
        (table)
        nav class="pager" aria-label="Pages" {
            @if q.cursor.is_some() { a href=(format!("/ui/jobs?{filters}")) { "← First page" } }
            @if let Some(c) = next {
                a rel="next" href=(format!("/ui/jobs?{}", query(&[("cursor", Some(c))]) + &amp(&filters))) { "Next page →" }
            }
        }
        details class="card" open[items(&page).is_empty() && q.cursor.is_none() && filters.is_empty()] {
            summary { "Submit a job" }
            form method="post" action="/ui/jobs" class="stack" {
                (csrf_input(&session))
                label for="topic" { "Topic" }
                input id="topic" name="topic" required placeholder="job.echo";
                label for="payload" { "Payload (JSON)" }
                textarea id="payload" name="payload" rows="4" { "{}" }
                label for="priority" { "Priority" }
                select id="priority" name="priority" {
                    @for p in [Priority::Interactive, Priority::Batch, Priority::Critical] {
                        option value=(p.as_str()) selected[p == Priority::default()] { (p.as_str()) }
                    }
                }
                @if session.is_admin() {
                    label for="tenant_id" { "Tenant (empty: the default)" }
                    input id="tenant_id" name="tenant_id";
                }
                button type="submit" id="submit-job" { "Submit" }
            }
        }
    };
    Ok(views::page("Jobs", "/ui/jobs", Some(&session), body).into_response())
}

fn amp(filters: &str) -> String {
    if filters.is_empty() {
        String::new()
    } else {
        format!("&{filters}")
    }
}

fn job_table(jobs: &[Value]) -> Markup {
    if jobs.is_empty() {
        return empty("No jobs match.");
    }
    html! {
        table class="list" {
            thead { tr { th { "Job" } th { "State" } th { "Topic" } th { "Tenant" } th { "Worker" } th { "Updated" } } }
            tbody {
                @for j in jobs {
                    tr data-job=(s(j, "id")) {
                        td { (job_link(s(j, "id"))) }
                        td class="state" { (badge(s(j, "state"))) }
                        td { (s(j, "topic")) }
                        td { (s(j, "tenant_id")) }
                        td { (s(j, "worker_id")) }
                        td { time { (s(j, "updated_at")) } }
                    }
                }
            }
        }
    }
}

pub async fn submit(State(st): State<UiState>, form: Posted) -> Result<Response, UiError> {
    let payload: Value = match form.get("payload") {
        None => json!({}),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| UiError::field("payload", format!("is not JSON: {e}")))?,
    };
    let mut req = json!({"topic": form.get("topic").unwrap_or_default(), "payload": payload});
    for field in ["priority", "tenant_id"] {
        if let (Some(v), Some(obj)) = (form.get(field), req.as_object_mut()) {
            obj.insert(field.into(), json!(v));
        }
    }
    let accepted = st.api.post(&form.session, "/jobs", &req).await?;
    Ok(Redirect::to(&format!("/ui/jobs/{}", seg(s(&accepted, "job_id")))).into_response())
}

/// `/ui/jobs/{id}`: everything about one job; its state, history and result follow the stream.
pub async fn show(
    State(st): State<UiState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let job = st.api.get(&session, &format!("/jobs/{}", seg(&id))).await?;
    let here = format!("/ui/jobs/{}", seg(&id));
    let state = s(&job, "state");
    let terminal = state.parse::<JobState>().is_ok_and(JobState::is_terminal);
    let needs_human = s(&job, "safety_decision") == "REQUIRE_HUMAN" && !terminal;
    let dead = if matches!(state, "FAILED" | "TIMEOUT" | "DENIED") {
        st.api
            .get(&session, &format!("/dlq/{}", seg(&id)))
            .await
            .ok()
    } else {
        None
    };
    let live_part = html! {
        (facts(&[
            ("State", html! { span id="job-state" { (badge(state)) } }),
            ("Reason", html! { (s(&job, "reason")) }),
            ("Worker", html! { (s(&job, "worker_id")) }),
            ("Attempt", html! { (job.get("attempt").map(Value::to_string).unwrap_or_default()) }),
            ("Execution", html! { @if let Some(ms) = job.get("execution_ms").and_then(Value::as_u64) { (ms) " ms" } }),
            ("Safety decision", html! { (s(&job, "safety_decision")) @if !s(&job, "safety_reason").is_empty() { " — " (s(&job, "safety_reason")) } }),
        ]))
        @if !terminal {
            div class="actions" {
                @if needs_human {
                    form method="post" action=(format!("{here}/approve")) class="inline" {
                        (csrf_input(&session))
                        label for="comment" { "Comment" }
                        input id="comment" name="comment";
                        button type="submit" name="approved" value="true" { "Approve" }
                        button type="submit" name="approved" value="false" class="danger" { "Reject" }
                    }
                }
                form method="post" action=(format!("{here}/cancel")) class="inline" {
                    (csrf_input(&session))
                    button type="submit" class="danger" { "Cancel job" }
                }
            }
        }
        h2 { "History" }
        ol class="timeline" {
            @for ev in job.get("history").and_then(Value::as_array).map_or(&[][..], Vec::as_slice) {
                li {
                    (badge(s(ev, "state")))
                    " " time { (s(ev, "at")) }
                    @if !s(ev, "note").is_empty() { span class="note" { " — " (s(ev, "note")) } }
                }
            }
        }
        @if let Some(r) = job.get("result") {
            h2 { "Result" }
            (json_block(r))
        }
        @if let Some(e) = job.get("error") {
            h2 { "Error" }
            (json_block(e))
        }
    };
    let body = html! {
        (facts(&[
            ("Id", html! { code { (s(&job, "id")) } }),
            ("Topic", html! { (s(&job, "topic")) }),
            ("Tenant", html! { (s(&job, "tenant_id")) }),
            ("Team", html! { (s(&job, "team_id")) }),
            ("Priority", html! { (s(&job, "priority")) }),
            ("Trace", html! { @if !s(&job, "trace_id").is_empty() {
                a href=(format!("/ui/jobs?{}", query(&[("trace_id", Some(s(&job, "trace_id")))]))) { code { (s(&job, "trace_id")) } } } }),
            ("Retry of", html! { @if !s(&job, "retry_of").is_empty() { (job_link(s(&job, "retry_of"))) } }),
            ("Workflow run", html! { @if !s(&job, "run_id").is_empty() {
                a href=(format!("/ui/workflow-runs/{}", seg(s(&job, "run_id")))) { code { (s(&job, "run_id")) } }
                " step " code { (s(&job, "step_id")) } } }),
            ("Created", html! { time { (s(&job, "created_at")) } }),
        ]))
        (live("job-live", &here, live_part))
        h2 { "Payload" }
        (json_block(job.get("payload").unwrap_or(&Value::Null)))
        @if let Some(c) = job.get("effective_config") {
            h2 { "Effective config" }
            (json_block(c))
        }
        @if let Some(d) = &dead {
            h2 { "Dead letter" }
            p { (s(d, "reason")) " · attempts " (d.get("attempts").map(Value::to_string).unwrap_or_default())
                " · " a href=(format!("/ui/dlq?{}", query(&[("topic", Some(s(d, "topic")))]))) { "in the dead-letter list" } }
        }
    };
    Ok(views::page(&format!("Job {id}"), "/ui/jobs", Some(&session), body).into_response())
}

pub async fn cancel(
    State(st): State<UiState>,
    Path(id): Path<String>,
    form: Posted,
) -> Result<Response, UiError> {
    st.api
        .post(
            &form.session,
            &format!("/jobs/{}/cancel", seg(&id)),
            &json!({"reason": "cancelled from the dashboard"}),
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/jobs/{}", seg(&id))).into_response())
}

pub async fn approve(
    State(st): State<UiState>,
    Path(id): Path<String>,
    form: Posted,
) -> Result<Response, UiError> {
    let approved = form.get("approved") == Some("true");
    st.api
        .post(
            &form.session,
            &format!("/jobs/{}/approve", seg(&id)),
            &json!({"approved": approved, "comment": form.get("comment")}),
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/jobs/{}", seg(&id))).into_response())
}

#[derive(Deserialize, Default)]
pub struct DlqQuery {
    topic: Option<String>,
    status: Option<String>,
    tenant: Option<String>,
    cursor: Option<String>,
    done: Option<String>,
}

/// `/ui/dlq`: dead letters, filtered by topic and reason, to retry or delete many at once.
pub async fn dlq(
    State(st): State<UiState>,
    session: Session,
    Query(q): Query<DlqQuery>,
) -> Result<Response, UiError> {
    let filters = [
        ("topic", q.topic.as_deref()),
        ("status", q.status.as_deref()),
        ("tenant", q.tenant.as_deref()),
    ];
    let mut pairs = filters.to_vec();
    pairs.push(("cursor", q.cursor.as_deref()));
    let page = st
        .api
        .get(&session, &format!("/dlq?{}", query(&pairs)))
        .await?;
    let entries = items(&page);
    let next = page.get("next_cursor").and_then(Value::as_str);
    let filters = query(&filters);
    let body = html! {
        @if let Some(done) = &q.done { p class="notice" role="status" { (done) } }
        form method="get" action="/ui/dlq" class="filters" role="search" {
            label { "Topic " input name="topic" value=(q.topic.as_deref().unwrap_or("")); }
            label { "Reason "
                select name="status" {
                    option value="" { "any" }
                    @for st in ["FAILED", "TIMEOUT", "DENIED", "CANCELLED"] {
                        option value=(st) selected[q.status.as_deref() == Some(st)] { (st) }
                    }
                }
            }
            @if session.is_admin() {
                label { "Tenant " input name="tenant" value=(q.tenant.as_deref().unwrap_or("")); }
            }
            button type="submit" { "Filter" }
        }
        @if entries.is_empty() {
            (empty("No dead letters."))
        } @else {
            form method="post" action=(format!("/ui/dlq?{filters}")) id="dlq-form" {
                (csrf_input(&session))
                div class="actions" {
                    button type="submit" name="action" value="retry" id="retry-selected" { "Retry selected" }
                    button type="submit" name="action" value="delete" class="danger" id="delete-selected" { "Delete selected" }
                }
                table class="list" {
                    thead { tr {
                        th { input type="checkbox" data-select-all aria-label="Select all"; }
                        th { "Job" } th { "Status" } th { "Topic" } th { "Tenant" } th { "Reason" } th { "Attempts" } th { "Dead since" }
                    } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { input type="checkbox" name="job_id" value=(s(e, "job_id")) aria-label=(format!("Select {}", s(e, "job_id"))); }
                                td { (job_link(s(e, "job_id"))) }
                                td { (badge(s(e, "status"))) }
                                td { (s(e, "topic")) }
                                td { (s(e, "tenant_id")) }
                                td { (s(e, "reason")) @if let Some(m) = e.get("error").and_then(|er| er.get("message")).and_then(Value::as_str) { br; small { (m) } } }
                                td { (e.get("attempts").map(Value::to_string).unwrap_or_default()) }
                                td { time { (s(e, "created_at")) } }
                            }
                        }
                    }
                }
            }
        }
        nav class="pager" aria-label="Pages" {
            @if let Some(c) = next {
                a rel="next" href=(format!("/ui/dlq?{}", query(&[("cursor", Some(c))]) + &amp(&filters))) { "Next page →" }
            }
        }
    };
    Ok(views::page("Dead letters", "/ui/dlq", Some(&session), body).into_response())
}

/// Retries or deletes the selected dead letters, one API call each; says how many of each
/// outcome.
pub async fn dlq_bulk(
    State(st): State<UiState>,
    Query(q): Query<DlqQuery>,
    form: Posted,
) -> Result<Response, UiError> {
    let ids = form.all("job_id");
    if ids.is_empty() {
        return Err(UiError::field("job_id", "select at least one dead letter"));
    }
    let retry = match form.get("action") {
        Some("retry") => true,
        Some("delete") => false,
        _ => return Err(UiError::field("action", "must be retry or delete")),
    };
    let (mut ok, mut failed) = (0, Vec::new());
    for id in &ids {
        let path = format!("/dlq/{}", seg(id));
        let r = if retry {
            st.api
                .post(&form.session, &format!("{path}/retry"), &json!({}))
                .await
        } else {
            st.api
                .call(&form.session, axum::http::Method::DELETE, &path, None)
                .await
        };
        match r {
            Ok(_) => ok += 1,
            Err(e) => failed.push(format!("{id}: {}", e.detail)),
        }
    }
    let verb = if retry { "retried" } else { "deleted" };
    let mut done = format!("{ok} {verb}");
    if !failed.is_empty() {
        done.push_str(&format!(
            "; {} failed ({})",
            failed.len(),
            failed.join("; ")
        ));
    }
    let filters = query(&[
        ("topic", q.topic.as_deref()),
        ("status", q.status.as_deref()),
        ("tenant", q.tenant.as_deref()),
        ("done", Some(&done)),
    ]);
    Ok(Redirect::to(&format!("/ui/dlq?{filters}")).into_response())
}
