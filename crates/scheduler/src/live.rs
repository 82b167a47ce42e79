//! The live job events of one replica: what its `GET /api/v1/stream` clients receive.
//!
//! A terminal transition this replica records is offered here the moment it is stored, before
//! (and besides) its publication on `sys.job.events`; the events other replicas record arrive
//! through the bus (see [`super::Scheduler::run_remote_events`]). A client of this replica thus
//! learns of a job this replica finished without a round trip through NATS, and the replica
//! does not read its own events back from the bus for it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::job::JobState;

/// Events held for a client that has fallen behind; one further behind loses the oldest (and
/// is told how many), as a slow subscriber of the bus would.
const BACKLOG: usize = 32 * 1024;

/// One terminal job event: its state and tenant (to filter on) and its JSON, as published on
/// the bus.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub state: JobState,
    /// `None` for an event of a replica older than the field.
    pub tenant: Option<Arc<str>>,
    pub json: Bytes,
}

/// Fans the events out to every watching client.
pub struct LiveEvents {
    tx: broadcast::Sender<LiveEvent>,
}

impl Default for LiveEvents {
    fn default() -> Self {
        LiveEvents {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl LiveEvents {
    /// Whether any client watches (when none does, an event costs nothing here).
    pub fn is_watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Hands an event to every client watching now.
    pub fn offer(&self, state: JobState, tenant: Option<&str>, json: &Bytes) {
        if self.is_watched() {
            let _ = self.tx.send(LiveEvent {
                state,
                tenant: tenant.map(Arc::from),
                json: json.clone(),
            });
        }
    }

    /// Every event offered from now on.
    pub fn watch(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_watcher_gets_each_event_offered_while_it_watches() {
        let live = LiveEvents::default();
        live.offer(JobState::Succeeded, None, &Bytes::from_static(b"before"));
        assert!(!live.is_watched());
        let (mut a, mut b) = (live.watch(), live.watch());
        live.offer(JobState::Failed, Some("acme"), &Bytes::from_static(b"one"));
        for rx in [&mut a, &mut b] {
            let ev = rx.recv().await.unwrap();
            assert_eq!((ev.state, &ev.json[..]), (JobState::Failed, &b"one"[..]));
            assert_eq!(ev.tenant.as_deref(), Some("acme"));
            assert!(rx.try_recv().is_err(), "nothing offered before it watched");
        }
    }
}
