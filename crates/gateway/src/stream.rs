//! `GET /api/v1/stream`: live job events as Server-Sent Events. Every terminal transition any
//! replica records is published on `sys.job.events` (or, several at once, on
//! `sys.job.events.batch`); a stream forwards the ones its replica recorded straight from the
//! scheduler and the others' from the bus (see [`crate::scheduler::live`]), optionally only one
//! state — so a client, `coretex loadgen` among them, learns of completions without polling
//! jobs one by one.

use std::convert::Infallible;
use std::sync::Arc;

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

/// A tenant key's stream carries only its tenant's events; an admin's, every one.
pub async fn stream(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant: Option<Arc<str>> = caller.tenant().map(Arc::from);
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
            Ok(ev)
                if only.is_none_or(|st| st == ev.state)
                    && tenant
                        .as_ref()
                        .is_none_or(|t| ev.tenant.as_ref() == Some(t)) =>
            {
                std::str::from_utf8(&ev.json)
                    .ok()
                    .map(|text| Event::default().event("job").data(text))
            }
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
    // A stream never ends on its own; it ends when the host stops.
    let events = events.take_until(s.stop.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
