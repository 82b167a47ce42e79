//! Slot accounting: the worker slot each job this replica dispatched holds, until the job ends.
//!
//! Between two heartbeats a replica counts its own dispatches against a worker's capacity (see
//! [`super::registry`]); this is the book of which job holds which worker's slot, so a slot is
//! given back exactly once — when the job's result arrives here, when its terminal event comes
//! from the replica that applied its result, or when its dispatch was refused — and never for a
//! job another replica dispatched. Entries older than any result can take are swept: their
//! worker's heartbeats have long corrected its count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::IdMap;

#[derive(Default)]
pub(super) struct Slots {
    held: Mutex<IdMap<(Arc<str>, Instant)>>,
}

impl Slots {
    /// Notes that `job_id` holds a slot of `worker` from `now`; answers the worker whose slot
    /// the job held before (a job dispatched again), which is free again.
    pub(super) fn hold(&self, job_id: &str, worker: &str, now: Instant) -> Option<Arc<str>> {
        self.held
            .lock()
            .insert(job_id.to_string(), (Arc::from(worker), now))
            .map(|(w, _)| w)
    }

    /// Gives back the slot `job_id` holds, if it holds one here: the worker it belonged to.
    pub(super) fn release(&self, job_id: &str) -> Option<Arc<str>> {
        self.held.lock().remove(job_id).map(|(w, _)| w)
    }

    /// Forgets the slots held longer than `age` at `now`.
    pub(super) fn sweep(&self, age: Duration, now: Instant) {
        self.held
            .lock()
            .retain(|_, (_, since)| now.duration_since(*since) < age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_given_back_once_and_only_by_its_holder() {
        let slots = Slots::default();
        let now = Instant::now();
        assert_eq!(slots.hold("j1", "w1", now), None);
        assert_eq!(slots.release("j2"), None, "never held here");
        assert_eq!(slots.release("j1").as_deref(), Some("w1"));
        assert_eq!(slots.release("j1"), None, "given back once");
    }

    #[test]
    fn a_job_dispatched_again_frees_its_old_slot() {
        let slots = Slots::default();
        let now = Instant::now();
        slots.hold("j1", "w1", now);
        assert_eq!(slots.hold("j1", "w2", now).as_deref(), Some("w1"));
        assert_eq!(slots.release("j1").as_deref(), Some("w2"));
    }

    #[test]
    fn old_slots_are_swept() {
        let slots = Slots::default();
        let t0 = Instant::now();
        slots.hold("old", "w1", t0);
        slots.hold("new", "w1", t0 + Duration::from_secs(500));
        slots.sweep(Duration::from_secs(600), t0 + Duration::from_secs(700));
        assert_eq!(slots.release("old"), None);
        assert_eq!(slots.release("new").as_deref(), Some("w1"));
    }
}
