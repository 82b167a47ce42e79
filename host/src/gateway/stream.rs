//! `GET /api/v1/stream`: live job events as Server-Sent Events. Every terminal transition any
//! replica records is published on `sys.job.events` (or, several at once, on
//! `sys.job.events.batch`); each stream forwards them (optionally only
//! one state), so a client — `coretex loadgen` among them — learns of completions without
//! polling jobs one by one.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::{AppState, Query};
use crate::job::JobState;
use crate::protocol::{Batch, JobEventMsg};

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
    let bus = &s.scheduler.bus;
    let (single, batch) = (
        bus.subjects().job_events(),
        bus.subjects().job_events_batch(),
    );
    let unavailable = |e: crate::bus::BusError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus unavailable",
            e.to_string(),
        )
    };
    let one = bus.subscribe(&single).await.map_err(unavailable)?;
    let many = bus.subscribe(&batch).await.map_err(unavailable)?;
    let events = futures::stream::select(one, many).flat_map(move |m| {
        // Each event is forwarded as the JSON it came as; a batch is split into its events.
        let texts: Vec<String> = if m.subject == batch {
            serde_json::from_slice::<Batch<Box<RawValue>>>(&m.payload)
                .map(|b| b.items.into_iter().map(|r| r.get().to_string()).collect())
                .unwrap_or_default()
        } else {
            String::from_utf8(m.payload.to_vec()).into_iter().collect()
        };
        let wanted: Vec<Result<Event, Infallible>> = texts
            .into_iter()
            .filter(|text| match only {
                None => true,
                Some(state) => {
                    serde_json::from_str::<JobEventMsg>(text).is_ok_and(|ev| ev.state == state)
                }
            })
            .map(|text| Ok(Event::default().event("job").data(text)))
            .collect();
        futures::stream::iter(wanted)
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
