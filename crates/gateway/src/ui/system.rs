//! The host as a whole: the overview, workers and plugins.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::UiState;
use super::api::{UiError, query};
use super::session::{Posted, Session, csrf_input};
use super::views::{self, badge, empty, items, job_link, live, s};
use crate::job::JobState;

/// How many of a tenant's latest jobs its overview counts by state.
const OVERVIEW_SAMPLE: usize = 500;
/// The window of "now" for a tenant's throughput.
const THROUGHPUT_WINDOW_MS: i64 = 60_000;

/// What a tenant's overview derives from its latest jobs (the host's metrics carry no tenant,
/// so the status gives them to an admin only).
#[derive(Debug, Default, PartialEq)]
struct Recent {
    by_state: BTreeMap<&'static str, usize>,
    /// Jobs that finished within [`THROUGHPUT_WINDOW_MS`] of `now`.
    finished_last_minute: usize,
    /// The median execution time of the sampled jobs that succeeded.
    median_execution_ms: Option<u64>,
}

fn recent(jobs: &[Value], now: i64) -> Recent {
    let mut r = Recent::default();
    let mut exec = Vec::new();
    for j in jobs {
        let Ok(state) = s(j, "state").parse::<JobState>() else {
            continue;
        };
        *r.by_state.entry(state.as_str()).or_default() += 1;
        if state.is_terminal()
            && crate::time::parse_rfc3339(s(j, "updated_at"))
                .is_ok_and(|at| now - at <= THROUGHPUT_WINDOW_MS)
        {
            r.finished_last_minute += 1;
        }
        if state == JobState::Succeeded
            && let Some(ms) = j.get("execution_ms").and_then(Value::as_u64)
        {
            exec.push(ms);
        }
    }
    exec.sort_unstable();
    r.median_execution_ms = exec.get(exec.len() / 2).copied();
    r
}

/// A duration in milliseconds as people read it: "—" for none, "12 ms", "3.4 s", "5 min".
fn duration(ms: Option<f64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.1} ms"),
        Some(ms) if ms < 1_000.0 => format!("{ms:.0} ms"),
        Some(ms) if ms < 60_000.0 => format!("{:.1} s", ms / 1_000.0),
        Some(ms) => format!("{:.0} min", ms / 60_000.0),
    }
}

/// A count of jobs per state as links to the jobs in that state.
fn state_counts<'a>(counts: impl IntoIterator<Item = (&'a str, Option<u64>)>) -> Markup {
    html! {
        ul class="states" {
            @for (state, n) in counts {
                li { a href=(format!("/ui/jobs?{}", query(&[("state", Some(state))]))) { (badge(state)) " " strong { @match n { Some(n) => (n), None => "—" } } } }
            }
        }
    }
}

/// The host's job metrics (an admin's overview): the status' `jobs`, the numbers `/metrics`
/// serves.
fn host_jobs(jobs: &Value) -> (Markup, Markup) {
    let latency = jobs.get("latency").unwrap_or(&Value::Null);
    let ms = |k: &str| latency.get(k).and_then(Value::as_f64);
    let number = |v: &Value, k: &str| v.get(k).map(Value::to_string).unwrap_or_default();
    // In the order a job moves through them.
    let counts = |k: &str| -> Vec<(&str, Option<u64>)> {
        let Some(m) = jobs.get(k).and_then(Value::as_object) else {
            return Vec::new();
        };
        JobState::ALL
            .iter()
            .filter_map(|s| Some((s.as_str(), m.get(s.as_str())?.as_u64())))
            .collect()
    };
    let live = counts("live");
    let tiles = html! {
        div class="tile" { span class="n" id="tile-throughput" { (jobs.get("throughput_per_s").and_then(Value::as_f64).map(|t| format!("{t}")).unwrap_or_default()) " /s" } span { "jobs ended, last " (number(jobs, "rate_window_s")) " s" } }
        div class="tile" { span class="n" id="tile-latency" { (duration(ms("p50_ms"))) } span { "median submit → succeeded, last " (number(latency, "window_s")) " s (p95 " (duration(ms("p95_ms"))) ")" } }
    };
    let states = html! {
        h2 { "Jobs by state" }
        p class="hint" { "Live jobs as the store counts them now; ended ones since this host started. The numbers " code { "/metrics" } " serves (" code { "coretex_jobs" } ", " code { "coretex_jobs_total" } ")." }
        @if live.is_empty() {
            div class="error" role="alert" { p { "The store did not answer: the live jobs cannot be counted." } }
        } @else {
            (state_counts(live))
        }
        (state_counts(counts("ended")))
    };
    (tiles, states)
}

/// A tenant's jobs by state, over its latest jobs.
fn tenant_jobs(latest: &Value) -> (Markup, Markup) {
    let r = recent(items(latest), crate::time::now_ms());
    let sampled = items(latest).len();
    let tiles = html! {
        div class="tile" { span class="n" { (r.finished_last_minute) } span { "of your jobs finished in the last minute" } }
        div class="tile" { span class="n" { (duration(r.median_execution_ms.map(|ms| ms as f64))) } span { "median execution (recent)" } }
    };
    let states = html! {
        h2 { "Jobs by state" }
        p class="hint" { "Of your latest " (sampled) " jobs" @if sampled == OVERVIEW_SAMPLE { " (the list holds more)" } "." }
        @if sampled == 0 {
            (empty("No jobs yet."))
        } @else {
            (state_counts(r.by_state.iter().map(|(s, n)| (*s, Some(*n as u64)))))
        }
    };
    (tiles, states)
}

/// `/ui`: jobs per state, throughput and latency now, live workers, open breakers and the
/// latest failures.
pub async fn overview(State(st): State<UiState>, session: Session) -> Result<Response, UiError> {
    let status = st.api.get(&session, "/status").await?;
    let failures = st.api.get(&session, "/jobs?state=FAILED&limit=10").await?;
    let workers = st.api.get(&session, "/workers").await?;
    let (job_tiles, job_states) = match status.get("jobs").filter(|j| j.is_object()) {
        Some(jobs) => host_jobs(jobs),
        None => tenant_jobs(
            &st.api
                .get(&session, &format!("/jobs?limit={OVERVIEW_SAMPLE}"))
                .await?,
        ),
    };
    let open = status
        .get("breakers")
        .and_then(|b| b.get("tenants"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let body = html! {
        div class="tiles" {
            div class="tile" { span class="n" id="tile-status" { (s(&status, "status")) } span { "host" } }
            div class="tile" { span class="n" { (items(&workers).len()) } span { "live workers" } }
            (job_tiles)
            div class="tile" { span class="n" { (status.get("waiting_jobs").map(Value::to_string).unwrap_or_default()) } span { "jobs waiting for capacity" } }
            div class="tile" { span class="n" { (status.get("breakers").and_then(|b| b.get("open")).map(Value::to_string).unwrap_or_default()) } span { "open breakers" } }
        }
        (job_states)
        h2 { "Open breakers" }
        @if open.is_empty() {
            (empty("All breakers are closed."))
        } @else {
            table class="list" {
                thead { tr { th { "Breaker" } th { "Tenant" } th { "State" } } }
                tbody { @for b in open { tr { td { (s(b, "breaker")) } td { (s(b, "tenant")) } td { (badge(s(b, "state"))) } } } }
            }
        }
        h2 { "Recent failures" }
        @if items(&failures).is_empty() {
            (empty("No failed jobs."))
        } @else {
            table class="list" {
                thead { tr { th { "Job" } th { "Topic" } th { "Error" } th { "When" } } }
                tbody {
                    @for j in items(&failures) {
                        tr {
                            td { (job_link(s(j, "id"))) }
                            td { (s(j, "topic")) }
                            td { (j.get("error").and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("")) }
                            td { time { (s(j, "updated_at")) } }
                        }
                    }
                }
            }
        }
    };
    let body = live("overview-live", "/ui", body);
    Ok(views::page("Overview", "/ui", Some(&session), body).into_response())
}

/// `/ui/workers`: pools, slots, CPU, labels, last heartbeat.
pub async fn workers(State(st): State<UiState>, session: Session) -> Result<Response, UiError> {
    let workers = st.api.get(&session, "/workers").await?;
    let list = items(&workers);
    let body = html! {
        @if list.is_empty() {
            (empty("No worker is connected."))
        } @else {
            table class="list" {
                thead { tr { th { "Worker" } th { "Pool" } th { "Topics" } th { "Slots used" } th { "CPU" } th { "Labels" } th { "Last heartbeat" } } }
                tbody {
                    @for w in list {
                        tr {
                            td { code { (s(w, "worker_id")) } @if w.get("draining").and_then(Value::as_bool) == Some(true) { " " (badge("draining")) } }
                            td { (s(w, "pool")) }
                            td { (w.get("topics").and_then(Value::as_array).map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            td { (w.get("active_jobs").map(Value::to_string).unwrap_or_default()) " / " (w.get("max_parallel").map(Value::to_string).unwrap_or_default()) }
                            td { (w.get("cpu_load").and_then(Value::as_f64).map(|c| format!("{:.0} %", c * 100.0)).unwrap_or_default()) }
                            td { (labels(w.get("labels"))) }
                            td { time { (s(w, "last_seen")) } }
                        }
                    }
                }
            }
        }
    };
    let body = live("workers-live", "/ui/workers", body);
    Ok(views::page("Workers", "/ui/workers", Some(&session), body).into_response())
}

fn labels(v: Option<&Value>) -> Markup {
    html! {
        @for (k, v) in v.and_then(Value::as_object).into_iter().flatten() {
            span class="label" { (k) "=" (v.as_str().unwrap_or("")) } " "
        }
    }
}

#[derive(Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
}

/// `/ui/plugins`: kind, version, hash, calls, failures, breaker state; the dispatch strategy
/// of a scope; an upload (admin).
pub async fn plugins(
    State(st): State<UiState>,
    session: Session,
    Query(q): Query<DoneQuery>,
) -> Result<Response, UiError> {
    let plugins = st.api.get(&session, "/plugins").await?;
    let list = items(&plugins);
    let strategies: Vec<&str> = list
        .iter()
        .filter(|p| s(p, "kind") == "dispatch-strategy" && s(p, "status") == "loaded")
        .map(|p| s(p, "name"))
        .collect();
    let body = html! {
        @if list.is_empty() {
            (empty("No plugins are loaded."))
        } @else {
            table class="list" {
                thead { tr { th { "Plugin" } th { "Status" } th { "Kind" } th { "Version" } th { "Source" } th { "Hash" } th { "Calls" } th { "Failures" } th { "Breaker" } } }
                tbody {
                    @for p in list {
                        tr {
                            td { code { (s(p, "name")) } }
                            td { (s(p, "status")) }
                            td { (s(p, "kind")) }
                            td { (s(p, "version")) }
                            td { (s(p, "source")) }
                            td { code title=(s(p, "hash")) { (s(p, "hash").chars().take(12).collect::<String>()) } }
                            td { (p.get("calls").map(Value::to_string).unwrap_or_default()) }
                            td { (p.get("failures").map(Value::to_string).unwrap_or_default()) }
                            td { @if !s(p, "breaker").is_empty() { (badge(s(p, "breaker"))) } }
                        }
                    }
                }
            }
        }
        @if let Some(done) = &q.done { p class="notice" role="status" { (done) } }
        h2 { "Dispatch strategy per scope" }
        @if strategies.is_empty() {
            (empty("No dispatch-strategy plugin is loaded."))
        } @else {
            form method="post" action="/ui/plugins/strategy" class="filters card" {
                (csrf_input(&session))
                @if session.is_admin() {
                    label { "Scope "
                        select name="scope" id="strategy-scope" {
                            @for sc in ["system", "org", "team", "workflow"] { option value=(sc) { (sc) } }
                        }
                    }
                    label { "Id (org, team or workflow) " input name="id" id="strategy-id"; }
                } @else {
                    input type="hidden" name="scope" value="org";
                    @if let Some(t) = session.caller.tenant() { input type="hidden" name="id" value=(t); }
                    span class="hint" { "For your org" }
                }
                label { "Strategy "
                    select name="strategy" id="strategy" {
                        @for name in &strategies { option value=(name) { (name) } }
                    }
                }
                button type="submit" id="set-strategy" { "Set strategy" }
            }
        }
        @if session.is_admin() {
            h2 { "Upload a plugin" }
            form method="post" action="/ui/plugins/upload" enctype="multipart/form-data" class="stack card" {
                (csrf_input(&session))
                label for="plugin-name" { "Name" }
                input id="plugin-name" name="name" required;
                label for="plugin-wasm" { "Component (.wasm)" }
                input id="plugin-wasm" name="wasm" type="file" accept=".wasm,application/wasm" required;
                button type="submit" id="upload-plugin" { "Upload" }
            }
        }
    };
    Ok(views::page("Plugins", "/ui/plugins", Some(&session), body).into_response())
}

/// The largest component the upload form takes (the API's body limit applies too).
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// Uploads a component through `PUT /api/v1/plugins/{name}` (admin; the API says so to others).
pub async fn plugin_upload(
    State(st): State<UiState>,
    session: Session,
    mut form: axum::extract::Multipart,
) -> Result<Response, UiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        UiError::new(axum::http::StatusCode::BAD_REQUEST, e.body_text())
    };
    let (mut csrf, mut name, mut wasm) = (None, None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some(super::session::CSRF_FIELD) => csrf = Some(field.text().await.map_err(bad)?),
            Some("name") => name = Some(field.text().await.map_err(bad)?),
            Some("wasm") => wasm = Some(field.bytes().await.map_err(bad)?),
            _ => {}
        }
    }
    // Before anything is sent on.
    session.check_csrf(csrf.as_deref())?;
    let name = name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| UiError::field("name", "is required"))?;
    let wasm = wasm.ok_or_else(|| UiError::field("wasm", "choose a .wasm file"))?;
    let info = st
        .api
        .send_bytes(
            &session,
            Method::PUT,
            &format!("/plugins/{}", super::api::seg(name.trim())),
            wasm,
        )
        .await?;
    let done = format!(
        "Uploaded {} ({}, {})",
        s(&info, "name"),
        s(&info, "kind"),
        s(&info, "hash").chars().take(12).collect::<String>()
    );
    Ok(Redirect::to(&format!("/ui/plugins?{}", query(&[("done", Some(&done))]))).into_response())
}

/// Sets `dispatch.strategy` in one scope's document, keeping the rest of it, against the
/// revision it read (a concurrent change fails with the API's 412, not lost).
pub async fn choose_strategy(State(st): State<UiState>, form: Posted) -> Result<Response, UiError> {
    let strategy = form
        .get("strategy")
        .ok_or_else(|| UiError::field("strategy", "is required"))?;
    let scope = [("scope", form.get("scope")), ("id", form.get("id"))];
    let current = match st
        .api
        .get(&form.session, &format!("/config?{}", query(&scope)))
        .await
    {
        Ok(doc) => Some(doc),
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => None,
        Err(e) => return Err(e),
    };
    let mut data = current
        .as_ref()
        .and_then(|d| d.get("data").cloned())
        .unwrap_or_else(|| json!({}));
    match data.as_object_mut() {
        Some(doc) => {
            let dispatch = doc.entry("dispatch").or_insert_with(|| json!({}));
            match dispatch.as_object_mut() {
                Some(d) => {
                    d.insert("strategy".into(), json!(strategy));
                }
                None => *dispatch = json!({"strategy": strategy}),
            }
        }
        None => data = json!({"dispatch": {"strategy": strategy}}),
    }
    let mut req = json!({"data": data});
    for (k, v) in scope {
        if let (Some(v), Some(obj)) = (v, req.as_object_mut()) {
            obj.insert(k.into(), json!(v));
        }
    }
    let revision = current
        .as_ref()
        .and_then(|d| d.get("revision"))
        .map(|r| format!("\"{r}\""));
    let headers: Vec<(&str, &str)> = revision.iter().map(|r| ("if-match", r.as_str())).collect();
    st.api
        .call_with(&form.session, Method::POST, "/config", Some(&req), &headers)
        .await?;
    let done = format!(
        "The {} scope{} now dispatches with {strategy}",
        form.get("scope").unwrap_or("system"),
        form.get("id").map(|i| format!(" {i}")).unwrap_or_default()
    );
    Ok(Redirect::to(&format!("/ui/plugins?{}", query(&[("done", Some(&done))]))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_jobs_are_counted_by_state_with_throughput_and_median() {
        let now = 1_000_000_000;
        let at = |ms: i64| crate::time::to_rfc3339(ms);
        let jobs = [
            json!({"state": "SUCCEEDED", "updated_at": at(now - 1_000), "execution_ms": 30}),
            json!({"state": "SUCCEEDED", "updated_at": at(now - 2_000), "execution_ms": 10}),
            json!({"state": "SUCCEEDED", "updated_at": at(now - 120_000), "execution_ms": 20}),
            json!({"state": "RUNNING", "updated_at": at(now - 1_000)}),
            json!({"state": "FAILED", "updated_at": at(now - 5_000)}),
        ];
        let r = recent(&jobs, now);
        assert_eq!(r.by_state.get("SUCCEEDED"), Some(&3));
        assert_eq!(r.by_state.get("RUNNING"), Some(&1));
        assert_eq!(
            r.finished_last_minute, 3,
            "two successes and a failure, not the old one"
        );
        assert_eq!(r.median_execution_ms, Some(20));
        assert_eq!(recent(&[], now), Recent::default());
    }

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        assert_eq!(duration(None), "—");
        assert_eq!(duration(Some(2.5)), "2.5 ms");
        assert_eq!(duration(Some(235.0)), "235 ms");
        assert_eq!(duration(Some(1_500.0)), "1.5 s");
        assert_eq!(duration(Some(300_000.0)), "5 min");
    }

    #[test]
    fn the_host_metrics_show_live_and_ended_jobs_and_say_when_the_store_is_down() {
        let jobs = json!({
            "live": {"PENDING": 2, "RUNNING": 1},
            "ended": {"SUCCEEDED": 7},
            "throughput_per_s": 1.5,
            "rate_window_s": 10,
            "latency": {"window_s": 60, "count": 7, "p50_ms": 12.0, "p95_ms": 480.0},
        });
        let (tiles, states) = host_jobs(&jobs);
        let (tiles, states) = (tiles.into_string(), states.into_string());
        assert!(
            tiles.contains("1.5 /s") && tiles.contains("last 10 s"),
            "{tiles}"
        );
        assert!(
            tiles.contains("12 ms") && tiles.contains("p95 480 ms"),
            "{tiles}"
        );
        assert!(states.contains("state=PENDING") && states.contains("<strong>2</strong>"));
        assert!(states.contains("state=SUCCEEDED") && states.contains("<strong>7</strong>"));
        let at = |state: &str| states.find(&format!("state={state}")).unwrap_or(usize::MAX);
        assert!(at("PENDING") < at("RUNNING"), "in the order a job moves");
        let (_, down) = host_jobs(&json!({"live": null, "ended": {}}));
        assert!(down.into_string().contains("did not answer"));
    }
}
