//! The HTTP gateway (SPEC §11): JSON over HTTP under `/api/v1`, errors as problem+json (built
//! in [`error`] only), lists as `{items, next_cursor}` with `limit` ≤ 500 and an opaque cursor.
//!
//! Every body is size-limited and every field validated before anything changes. With keys
//! configured (an admin key, `--api-key`, and tenant keys, `--tenant-key`) every `/api` route
//! needs one (`Authorization: Bearer …` or `X-API-Key`), and a tenant key sees only its tenant
//! (see [`auth`]); without any, `serve` refuses to listen beyond loopback.

//!
//! The dashboard ([`ui`]) lives here too: its pages ask this crate's router, in process.
//!
//! A crate above the scheduler and the workflow engine, and under the host only: the host
//! (`serve`) builds the [`AppState`], handing the gateway each service and handle it answers from.

// Nothing a caller sends may panic the host: outside tests, failures are errors, not unwinds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
mod config;
mod dlq;
pub mod error;
mod extract;
mod jobs;
mod plugins;
mod stream;
pub mod ui;
mod workflows;

// The layers below, under the paths the modules name them by (the plugin host, the DLQ service
// and the plugin uploads by their crates': `plugins` and `dlq` are this crate's handlers).
use coretex_bus as bus;
use coretex_core::{ids, job, limits, time};
use coretex_plugin_host::breaker;
use coretex_scheduler as scheduler;
use coretex_scheduler::{configsvc, job_metrics};
use coretex_store as store;
use coretex_workflow as workflow;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::bus::SharedBus;
use crate::configsvc::ConfigService;
use crate::job_metrics::JobMetrics;
use crate::scheduler::Scheduler;
use crate::scheduler::registry::Registry;
use crate::store::SharedStore;
use crate::workflow::engine::Engine;
use coretex_plugin_host::PluginRegistry;
use coretex_scheduler::dlq::Dlq;
use coretex_scheduler::reconciler::Reconciler;
use error::ApiError;
pub use extract::{Body, Path, Query, RawBody, optional_body};

#[derive(Clone)]
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    /// Jobs listed and read, plugin blobs, the backend's health: the gateway answers from the
    /// whole store.
    pub store: SharedStore,
    pub bus: SharedBus,
    pub registry: Arc<Registry>,
    pub plugins: Arc<PluginRegistry>,
    pub job_metrics: Arc<JobMetrics>,
    pub config: Arc<ConfigService>,
    pub dlq: Arc<Dlq>,
    pub reconciler: Arc<Reconciler>,
    pub workflows: Arc<Engine>,
    pub metrics: Option<PrometheusHandle>,
    pub keys: Arc<auth::Keys>,
    /// Cancelled when the host stops: live streams end then, so the HTTP server's graceful
    /// shutdown does not wait on them forever.
    pub stop: tokio_util::sync::CancellationToken,
    pub started: Instant,
    pub max_body_bytes: usize,
    /// The host's background loops, for the status page.
    pub loops: coretex_supervisor::Supervisor,
}

/// The largest page a list answers.
pub const MAX_LIMIT: usize = crate::limits::MAX_PAGE_ITEMS;
pub const DEFAULT_LIMIT: usize = 50;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/batch", post(jobs::submit_batch))
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/approve", post(jobs::approve))
        .route("/traces/{trace_id}", get(jobs::trace))
        .route("/workers", get(jobs::workers))
        .route("/stream", get(stream::stream))
        .route(
            "/config",
            post(config::set).get(config::get).delete(config::delete),
        )
        .route("/config/effective", get(config::effective))
        .route("/config/scopes", get(config::scopes))
        .route("/config/preview", post(config::preview))
        .route("/dlq", get(dlq::list))
        .route("/dlq/retry", post(dlq::retry_matching))
        .route("/dlq/{job_id}", get(dlq::get).delete(dlq::delete))
        .route("/dlq/{job_id}/retry", post(dlq::retry))
        .route("/workflows", post(workflows::create).get(workflows::list))
        .route(
            "/workflows/{id}",
            get(workflows::get)
                .put(workflows::update)
                .delete(workflows::delete),
        )
        .route(
            "/workflows/{id}/runs",
            post(workflows::start_run).get(workflows::list_runs),
        )
        .route("/workflow-runs/{run_id}", get(workflows::get_run))
        .route(
            "/workflows/{id}/runs/{run_id}/cancel",
            post(workflows::cancel_run),
        )
        .route(
            "/workflows/{id}/runs/{run_id}/steps/{step_id}/approve",
            post(workflows::approve),
        )
        .route(
            "/workflows/{id}/runs/{run_id}/steps/{step_id}/cancel",
            post(workflows::cancel_step),
        )
        .route("/plugins", get(plugins::list))
        .route(
            "/plugins/{name}",
            axum::routing::put(plugins::put).delete(plugins::delete),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // Added after the key check, so it is served without a key: it describes the API.
        .route("/openapi.json", get(openapi));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::map_response(error::as_problem))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        // Answers (a page of 500 jobs, /metrics) in gzip or brotli for a client that asks; the
        // live stream is never compressed (its events would wait in the compressor).
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .br(true),
        )
        .with_state(state)
}

/// The OpenAPI 3.1 document of this API (SPEC §11). Kept by hand beside the routes; the API
/// tests check that every operation it lists is routed and that every route of SPEC §11 is in
/// it.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// How many open breakers the status lists by tenant (it counts them all).
const LISTED_BREAKERS: usize = 100;

/// The status; a tenant's key sees its own tenant's open breakers only, an admin's every
/// tenant's (at most [`LISTED_BREAKERS`] named).
async fn status(State(s): State<AppState>, caller: auth::Caller) -> Response {
    let (open_count, open) = match caller.tenant() {
        None => {
            let (safety, mut open) = s.scheduler.safety().breakers().not_closed(LISTED_BREAKERS);
            let (plugins, more) = s.plugins.open_breakers(LISTED_BREAKERS - open.len());
            open.extend(more);
            (safety + plugins, open)
        }
        Some(t) => {
            let own = open_own(&s, t);
            (own.len(), own)
        }
    };
    let store_ok = s.store.ping().await.is_ok();
    // The metrics carry no tenant: what all jobs do is the admin's to see.
    let jobs = match caller.tenant() {
        None => Some(jobs_now(&s).await),
        Some(_) => None,
    };
    let bus_ok = s.bus.is_connected();
    // A loop restarted lately makes the host degraded, but still able to serve (200); a
    // backend it cannot reach makes it unable to (503).
    let healthy = store_ok && bus_ok && !s.loops.degraded();
    let mut body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "uptime_s": s.started.elapsed().as_secs(),
        "store": {"backend": s.store.backend(), "ok": store_ok},
        "bus": {"backend": s.bus.backend(), "connected": bus_ok},
        "workers": s.registry.list().len(),
        "waiting_jobs": s.scheduler.waiting_jobs(),
        "breakers": {"open": open_count, "tenants": open},
        "reconciler_skipped": s.reconciler.skipped(),
        "plugins": s.plugins.list_for(caller.tenant()),
        "loops": s.loops.status(),
    });
    if let (Some(jobs), Some(obj)) = (jobs, body.as_object_mut()) {
        obj.insert("jobs".into(), jobs);
    }
    let code = if store_ok && bus_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `tenant`'s breakers that are not closed: the safety gate's and each plugin's.
fn open_own(s: &AppState, tenant: &str) -> Vec<crate::breaker::TenantBreaker> {
    let plugins = s.plugins.list_for(Some(tenant));
    let safety = s.scheduler.safety().breakers();
    let own = std::iter::once((safety.name().to_string(), safety.state(tenant))).chain(
        plugins
            .into_iter()
            .filter_map(|p| Some((format!("plugin:{}", p.name), p.breaker?))),
    );
    own.filter(|(_, state)| *state != crate::breaker::BreakerState::Closed)
        .map(|(breaker, state)| crate::breaker::TenantBreaker {
            breaker,
            tenant: tenant.to_string(),
            state,
        })
        .collect()
}

/// What the jobs do now, from the numbers `/metrics` serves (see [`crate::job_metrics`]): the
/// live states counted in the store (`null` when it cannot answer), and this replica's ended
/// jobs, throughput and latency.
async fn jobs_now(s: &AppState) -> serde_json::Value {
    let live = crate::job_metrics::count_live(s.store.as_ref()).await.ok();
    let now = s.job_metrics.now();
    json!({
        "live": live,
        "ended": now.ended,
        "throughput_per_s": now.throughput_per_s,
        "rate_window_s": crate::job_metrics::RATE_WINDOW_S,
        "latency": now.latency,
    })
}

async fn metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => {
            // The live-state gauges are counted when read; without the store they keep their
            // last values.
            if let Err(e) = crate::job_metrics::count_live(s.store.as_ref()).await {
                tracing::debug!(error = %e, "cannot count the live jobs for /metrics");
            }
            h.render().into_response()
        }
        None => ApiError::not_found("metrics are not enabled in this process").into_response(),
    }
}

/// Reads `limit` (default 50, at most 500) and the opaque cursor.
pub fn page_request(
    limit: Option<usize>,
    cursor: Option<&str>,
) -> Result<crate::store::PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let cursor = match cursor {
        None | Some("") => None,
        Some(c) => Some(
            crate::store::Cursor::decode(c)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API returned"))?,
        ),
    };
    Ok(crate::store::PageRequest { limit, cursor })
}

/// Ids given as filters or parameters, each when present: 422 naming every one that is not an
/// id (`[A-Za-z0-9._:-]{1,128}`).
pub fn check_idents(ids: &[(&str, Option<&str>)]) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (field, id) in ids {
        if let Some(id) = id {
            crate::job::check_ident(field, id, &mut errors);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// A cancel reason or an approval comment, when given, within [`MAX_REASON_BYTES`].
///
/// [`MAX_REASON_BYTES`]: crate::limits::MAX_REASON_BYTES
pub fn check_reason(field: &str, text: Option<&str>) -> Result<(), ApiError> {
    use crate::limits::MAX_REASON_BYTES;
    match text {
        Some(t) if t.len() > MAX_REASON_BYTES => Err(ApiError::field(
            field,
            format!("must be at most {MAX_REASON_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Parses an optional RFC 3339 time parameter.
pub fn time_param(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|s| crate::time::parse_rfc3339(s).map_err(|e| ApiError::field(field, e)))
        .transpose()
}
