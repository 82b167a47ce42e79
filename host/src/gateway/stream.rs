//! `GET /api/v1/stream`: live job events as Server-Sent Events. Every terminal transition any
//! replica records is published on `sys.job.events`; each stream forwards them (optionally only
//! one state), so a client — `coretex loadgen` among them — learns of completions without
//! polling jobs one by one.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::error::ApiError;
use super::{AppState, Query};
use crate::job::JobState;
use crate::protocol::JobEventMsg;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    state: Option<String>,
}

pub async fn stream(
    State(s): State<AppState>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let only = q
        .state
        .as_deref()
        .map(|st| {
            st.parse::<JobState>()
                .map_err(|e| ApiError::field("state", e))
        })
        .transpose()?;
    let subject = s.scheduler.bus.subjects().job_events();
    let sub = s.scheduler.bus.subscribe(&subject).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus unavailable",
            e.to_string(),
        )
    })?;
    let events = sub.filter_map(move |m| async move {
        let text = String::from_utf8(m.payload.to_vec()).ok()?;
        if let Some(state) = only {
            let ev: JobEventMsg = serde_json::from_str(&text).ok()?;
            if ev.state != state {
                return None;
            }
        }
        Some(Ok(Event::default().event("job").data(text)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
