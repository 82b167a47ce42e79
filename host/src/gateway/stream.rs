//! `GET /api/v1/stream`: live job events as Server-Sent Events. Every terminal transition any
//! replica records is published on `sys.job.events` (or, several at once, on
//! `sys.job.events.batch`); a stream forwards the ones its replica recorded straight from the
//! scheduler and the others' from the bus (see [`crate::scheduler::live`]), optionally only one
//! state — so a client, `coretex loadgen` among them, learns of completions without polling
//! jobs one by one.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, Query};
use crate::job::JobState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    state: Option<String>,
}

/// Every tenant's events go to a stream (they do not carry their tenant): an admin key's.
pub async fn stream(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require_admin("the live stream (every tenant's events)")?;
    let only = q
        .state
        .as_deref()
        .map(|st| {
            st.parse::<JobState>()
                .map_err(|e| ApiError::field("state", e))
        })
        .transpose()?;
    let events = BroadcastStream::new(s.scheduler.live_events().watch()).filter_map(move |ev| {
        let event = match ev {
            Ok(ev) if only.is_none_or(|st| st == ev.state) => std::str::from_utf8(&ev.json)
                .ok()
                .map(|text| Event::default().event("job").data(text)),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "a live-stream client fell behind; events dropped"
                );
                None
            }
        };
        std::future::ready(event.map(Ok))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
