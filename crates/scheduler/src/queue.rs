//! The wait queue: jobs no worker can take yet, by priority, and when each one's reason for
//! waiting is worth a write to the store. Plain data; the scheduler holds it under a lock and
//! does the writes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{IdMap, IdSet};
use crate::job::{JobSpec, Priority};
use crate::protocol::Clearance;

/// Jobs waiting for a worker, by priority (critical first, batch last), each once.
///
/// Why a job waits is written to the store (its `reason`, and a line of history) once per
/// reason. A job with no worker that could ever take it gets its reason at once. A job that
/// only waits its turn — eligible workers exist, all busy — is ordinary queueing: writing a
/// reason on each of a burst of thousands would double the store work of the burst, so such
/// a job gets its reason only once it has waited [`BACKLOG_NOTE_AFTER`].
#[derive(Default)]
pub(super) struct WaitQueue {
    lanes: [VecDeque<(JobSpec, Clearance)>; 3],
    ids: IdSet,
    /// The reason last written to the store, per job.
    recorded: IdMap<String>,
    /// Jobs waiting their turn, with when they began to and why; their reason is not written
    /// yet.
    backlog: IdMap<(Instant, String)>,
    /// The same jobs in the order they began to wait (entries of jobs that left since are
    /// skipped when met), so finding the overdue ones looks only at those.
    backlog_order: VecDeque<(Instant, String)>,
}

/// How long a job may wait its turn behind busy workers before its reason is written.
const BACKLOG_NOTE_AFTER: Duration = Duration::from_secs(5);

impl WaitQueue {
    fn lane(&mut self, p: Priority) -> &mut VecDeque<(JobSpec, Clearance)> {
        let [critical, interactive, batch] = &mut self.lanes;
        match p {
            Priority::Critical => critical,
            Priority::Interactive => interactive,
            Priority::Batch => batch,
        }
    }

    pub(super) fn push(&mut self, spec: JobSpec, clearance: Clearance) {
        if self.ids.insert(spec.id.clone()) {
            self.lane(spec.priority).push_back((spec, clearance));
        }
    }

    /// Takes up to `n` jobs, highest priority first.
    pub(super) fn take(&mut self, n: usize) -> Vec<(JobSpec, Clearance)> {
        let mut out = Vec::with_capacity(n.min(self.ids.len()));
        for lane in self.lanes.iter_mut() {
            while out.len() < n {
                let Some(entry) = lane.pop_front() else { break };
                self.ids.remove(&entry.0.id);
                out.push(entry);
            }
        }
        out
    }

    /// Whether a job about to wait for `reason` should have it written now. Not when that is
    /// the reason written last; not yet when the job only waits its turn (`busy`) and has no
    /// reason written: it is backlogged instead, and [`WaitQueue::overdue`] hands it back once it
    /// has waited [`BACKLOG_NOTE_AFTER`].
    pub(super) fn reason_to_write(
        &mut self,
        id: &str,
        reason: &str,
        busy: bool,
        now: Instant,
    ) -> bool {
        if self.recorded.get(id).is_some_and(|r| r == reason) {
            false
        } else if busy && !self.recorded.contains_key(id) {
            self.backlogged(id, reason.to_string(), now);
            false
        } else {
            true
        }
    }

    /// Notes that `reason` was written for a job.
    pub(super) fn reason_written(&mut self, id: &str, reason: String) {
        self.backlog.remove(id);
        self.recorded.insert(id.to_string(), reason);
    }

    /// Notes that a job waits its turn, for `reason`.
    fn backlogged(&mut self, id: &str, reason: String, now: Instant) {
        match self.backlog.get_mut(id) {
            Some(entry) => entry.1 = reason,
            None => {
                self.backlog.insert(id.to_string(), (now, reason));
                self.backlog_order.push_back((now, id.to_string()));
            }
        }
    }

    /// Backlogged jobs that have waited long enough to have their reason written (at most
    /// `n`), as `(id, reason)`; they move to `recorded`.
    pub(super) fn overdue(&mut self, n: usize, now: Instant) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.backlog_order.front() {
                Some((since, _)) if now.duration_since(*since) >= BACKLOG_NOTE_AFTER => {}
                _ => break,
            }
            let Some((since, id)) = self.backlog_order.pop_front() else {
                break;
            };
            if self.backlog.get(&id).is_some_and(|(s, _)| *s == since)
                && let Some((_, reason)) = self.backlog.remove(&id)
            {
                self.recorded.insert(id.clone(), reason.clone());
                out.push((id, reason));
            }
        }
        out
    }

    /// Forgets a job that left the queue for good (dispatched, cancelled, failed).
    pub(super) fn forget(&mut self, id: &str) {
        self.recorded.remove(id);
        self.backlog.remove(id);
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobRequest;

    fn spec(id: &str, priority: Priority) -> JobSpec {
        let req: JobRequest =
            serde_json::from_value(serde_json::json!({"topic": "t", "payload": null}))
                .expect("a request");
        let mut spec = JobSpec::accept(req, 0);
        spec.id = id.to_string();
        spec.priority = priority;
        spec
    }

    fn ids(taken: &[(JobSpec, Clearance)]) -> Vec<&str> {
        taken.iter().map(|(s, _)| s.id.as_str()).collect()
    }

    #[test]
    fn takes_highest_priority_first_and_each_job_once() {
        let mut q = WaitQueue::default();
        q.push(spec("b1", Priority::Batch), Clearance::None);
        q.push(spec("i1", Priority::Interactive), Clearance::None);
        q.push(spec("c1", Priority::Critical), Clearance::None);
        q.push(spec("i1", Priority::Interactive), Clearance::None);
        q.push(spec("i2", Priority::Interactive), Clearance::None);
        assert_eq!(q.len(), 4);
        assert_eq!(ids(&q.take(3)), ["c1", "i1", "i2"]);
        assert_eq!(ids(&q.take(3)), ["b1"]);
        assert_eq!(q.len(), 0);
        q.push(spec("i1", Priority::Interactive), Clearance::None);
        assert_eq!(q.len(), 1, "a job taken may wait again");
    }

    #[test]
    fn a_job_with_nowhere_to_go_has_its_reason_written_at_once_and_once() {
        let mut q = WaitQueue::default();
        let now = Instant::now();
        assert!(q.reason_to_write("j", "no worker for topic t", false, now));
        q.reason_written("j", "no worker for topic t".into());
        assert!(!q.reason_to_write("j", "no worker for topic t", false, now));
        assert!(q.reason_to_write("j", "all workers draining", false, now));
    }

    #[test]
    fn a_job_waiting_its_turn_is_noted_only_once_overdue() {
        let mut q = WaitQueue::default();
        let t0 = Instant::now();
        assert!(!q.reason_to_write("a", "busy", true, t0));
        assert!(!q.reason_to_write("b", "busy", true, t0 + Duration::from_secs(1)));
        assert!(!q.reason_to_write("a", "still busy", true, t0 + Duration::from_secs(2)));
        assert!(q.overdue(10, t0 + Duration::from_secs(4)).is_empty());
        let due = q.overdue(10, t0 + BACKLOG_NOTE_AFTER);
        assert_eq!(due, [("a".to_string(), "still busy".to_string())]);
        q.forget("b");
        assert!(q.overdue(10, t0 + BACKLOG_NOTE_AFTER * 2).is_empty());
        // Written once overdue: the same reason is not written again.
        assert!(!q.reason_to_write("a", "still busy", true, t0 + BACKLOG_NOTE_AFTER * 2));
    }
}
