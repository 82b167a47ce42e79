//! How a scheduler stops without leaving work half done (`serve` on SIGTERM, after its HTTP
//! server has answered the requests it took).
//!
//! Nothing it accepted can be lost by stopping: every job is stored before it is answered, and
//! the reconciler of whichever replica runs next announces a PENDING job again. What a stop can
//! cost is a job run twice: a job this replica sent to its worker without writing its
//! DISPATCHED yet (see [`Scheduler::dispatch_lazily`]) still reads PENDING, so the next
//! reconciler announces it again while its first worker runs it — and may give it to another.
//! A drain therefore lets the scheduling passes and result applications in flight end, starts
//! no new ones, sends what the outboxes hold and writes every dispatch not written yet.

use std::time::Duration;

use super::Scheduler;

impl Scheduler {
    /// Drains this scheduler for good, waiting at most `grace` for the passes in flight: after
    /// it, the scheduler starts no more passes (a job left waiting here is PENDING in the store,
    /// for the reconciler). Answers whether every pass ended within `grace`.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.settings.max_in_flight).unwrap_or(u32::MAX);
        // The semaphore is fair: while this waits, no pass queued after it starts.
        let settled = match tokio::time::timeout(grace, self.in_flight.acquire_many(all)).await {
            Ok(Ok(permits)) => {
                // Kept for good: this scheduler is stopping.
                permits.forget();
                true
            }
            Ok(Err(_closed)) => true,
            Err(_elapsed) => {
                tracing::warn!(
                    ?grace,
                    "scheduling passes still running at the end of the drain"
                );
                false
            }
        };
        self.dispatches.flush().await;
        self.events.flush().await;
        {
            // Once the dispatch-records loop has finished the writes it took on, no dispatch
            // is on its way: the rest are all in `unrecorded`.
            let _recording = self.recording.lock().await;
            let unwritten: Vec<_> = self.unrecorded.lock().drain().collect();
            let count = unwritten.len();
            self.write_dispatches(unwritten).await;
            let left = self.unrecorded.lock().len();
            if left > 0 {
                tracing::warn!(
                    left,
                    "dispatches not written at stop; those jobs read PENDING until their results come"
                );
            } else if count > 0 {
                tracing::info!(count, "dispatches written at stop");
            }
        }
        if let Err(e) = self.bus.flush().await {
            tracing::warn!(error = %e, "messages may not have reached the bus at stop");
        }
        settled
    }
}
