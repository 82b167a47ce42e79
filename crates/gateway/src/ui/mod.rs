//! The dashboard (`/ui`): server-rendered HTML with htmx, on its own port (`--ui-listen`).
//!
//! Every page is a server route, so a deep link works on reload and the read-only pages are
//! readable without JavaScript. The HTML is written with maud (checked by the compiler, no
//! template files to drift); htmx (vendored, embedded with `include_str!`) makes the live parts
//! refresh themselves when the event stream says a job finished.
//!
//! The dashboard holds no data access of its own: every page asks the gateway's router, in
//! process, with the signed-in key as `X-API-Key` (see [`api`]). A tenant key therefore sees
//! exactly what it sees through the API — the same resolution of ids, the same 404 for another
//! tenant's, the same narrowed lists and stream — and every write goes through the same
//! validation. The key is kept in an HttpOnly, SameSite=Strict cookie (Secure when
//! `--ui-secure-cookies` says the dashboard is reached over TLS); every form carries a CSRF
//! token (see [`session`]).

mod api;
mod config;
pub mod dag;
mod jobs;
mod session;
mod system;
mod views;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower_http::compression::CompressionLayer;

use crate::auth::Keys;
pub use api::UiError;
use session::Session;

/// How the dashboard is served.
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    /// Mark the session cookies `Secure`: the dashboard is reached over TLS (a proxy in front).
    pub secure_cookies: bool,
}

#[derive(Clone)]
pub struct UiState {
    api: api::Api,
    keys: Arc<Keys>,
    settings: UiSettings,
    /// Signs the CSRF tokens of a host without keys (a keyed session's are signed by its key).
    secret: Arc<[u8; 32]>,
}

/// The dashboard's routes, over `api` (the gateway's router, which answers every question).
pub fn router(api: Router, keys: Arc<Keys>, settings: UiSettings) -> Router {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let state = UiState {
        api: api::Api::new(api),
        keys,
        settings,
        secret: Arc::new(secret),
    };
    let ui = Router::new()
        .route("/", get(system::overview))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .route("/assets/{name}", get(asset))
        .route("/stream", get(stream))
        .route("/jobs", get(jobs::list).post(jobs::submit))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/approve", post(jobs::approve))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{id}", get(workflows::show))
        .route("/workflows/{id}/runs", post(workflows::start_run))
        .route("/workflow-runs/{run_id}", get(workflows::run))
        .route(
            "/workflow-runs/{run_id}/cancel",
            post(workflows::cancel_run),
        )
        .route(
            "/workflow-runs/{run_id}/steps/{step_id}/approve",
            post(workflows::approve_step),
        )
        .route(
            "/workflow-runs/{run_id}/steps/{step_id}/cancel",
            post(workflows::cancel_step),
        )
        .route("/dlq", get(jobs::dlq).post(jobs::dlq_bulk))
        .route("/workers", get(system::workers))
        .route("/plugins", get(system::plugins))
        .route(
            "/plugins/upload",
            post(system::plugin_upload).layer(axum::extract::DefaultBodyLimit::max(
                system::MAX_UPLOAD_BYTES,
            )),
        )
        .route("/plugins/strategy", post(system::choose_strategy))
        .route("/config", get(config::config).post(config::save))
        .route("/config/preview", post(config::preview))
        .fallback(|| async { UiError::not_found("no such page") });
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .nest("/ui", ui)
        .fallback(|| async { UiError::not_found("no such page") })
        .layer(middleware::map_response(security_headers))
        // gzip or brotli, as the browser asks: the assets and the pages (the live parts are
        // fetched again every few seconds). Not the event stream: a compressor would hold its
        // events back. A page's CSRF token is masked afresh each time (see `session`).
        .layer(CompressionLayer::new().gzip(true).br(true))
        .with_state(state)
}

/// What every answer of the dashboard carries: a content security policy that allows only its
/// own scripts and styles (no inline script, no eval), no framing, no sniffing, no caching of
/// pages that show a tenant's data.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The embedded assets: htmx (vendored, 2.0.11), the stylesheet and the page script.
pub const ASSETS: [(&str, &str, &str); 3] = [
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/htmx.min.js"),
    ),
    (
        "ui.css",
        "text/css; charset=utf-8",
        include_str!("assets/ui.css"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/ui.js"),
    ),
];

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => UiError::not_found("no such asset").into_response(),
    }
}

/// The API's live stream (`/api/v1/stream`) with the session's key: what the page script
/// listens to (an `EventSource` cannot send a header, and the API is on another port).
async fn stream(State(s): State<UiState>, session: Session) -> Response {
    s.api.stream(&session).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// The budget of the whole dashboard's assets, compressed.
    const BUDGET_BYTES: usize = 300 * 1024;

    async fn get(app: &Router, path: &str, encoding: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(e) = encoding {
            req = req.header(header::ACCEPT_ENCODING, e);
        }
        match app.clone().oneshot(req.body(Body::empty()).unwrap()).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn the_assets_are_sent_compressed_within_the_budget() {
        let keys = Arc::new(Keys::new(None, &[], None).unwrap());
        let app = router(Router::new(), keys, UiSettings::default());
        let raw: usize = ASSETS.iter().map(|(_, _, body)| body.len()).sum();
        for encoding in ["gzip", "br"] {
            let mut sent = 0;
            for (name, _, body) in ASSETS {
                let resp = get(&app, &format!("/ui/assets/{name}"), Some(encoding)).await;
                assert_eq!(resp.status(), 200, "{name}");
                assert_eq!(resp.headers()[header::CONTENT_ENCODING], encoding, "{name}");
                assert_eq!(resp.headers()[header::VARY], "accept-encoding");
                assert_eq!(
                    resp.headers()[header::CACHE_CONTROL],
                    "public, max-age=3600"
                );
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                assert!(bytes.len() < body.len(), "{name} shrinks with {encoding}");
                sent += bytes.len();
            }
            println!("assets: {raw} bytes, {sent} bytes with {encoding}");
            assert!(sent < BUDGET_BYTES, "{sent} bytes with {encoding}");
        }
        // A client that asks for nothing gets the bytes as they are.
        let plain = get(&app, "/ui/assets/ui.css", None).await;
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        // Pages are compressed too; the event stream is not (see `gateway::stream`).
        let page = get(&app, "/ui/sign-in", Some("gzip")).await;
        assert_eq!(page.headers()[header::CONTENT_ENCODING], "gzip");
    }
}
