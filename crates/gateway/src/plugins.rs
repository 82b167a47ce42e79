//! Plugin routes: the listing, and upload and delete of plugins kept in the store (admin).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, Path, RawBody};
use coretex_plugin_host::Source;
use coretex_scheduler::uploads;

pub async fn list(State(s): State<AppState>, caller: Caller) -> Response {
    let items = s.plugins.list_for(caller.tenant());
    Json(json!({"items": items, "next_cursor": null})).into_response()
}

/// `PUT /api/v1/plugins/{name}` with the component as the body: 201 when the name is new to the
/// API, 200 when it replaces an uploaded version; either way every replica loads it.
pub async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    caller.require_admin("uploading a plugin")?;
    if body.is_empty() {
        return Err(ApiError::field(
            "body",
            "must be a WebAssembly component (the .wasm file's bytes)",
        ));
    }
    let plugins = s.plugins.clone();
    let replaced = plugins
        .get(&name)
        .is_some_and(|p| p.source() == Source::Api);
    let info = uploads::upload(plugins, s.store.as_ref(), &s.bus, &name, body.to_vec()).await?;
    let code = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(info)).into_response())
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin("deleting a plugin")?;
    let plugins = &s.plugins;
    if uploads::delete(plugins, s.store.as_ref(), &s.bus, &name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no uploaded plugin `{name}`")))
    }
}
