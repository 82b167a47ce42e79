//! The live worker registry, built from heartbeats (every replica sees every heartbeat). A worker
//! unseen for its TTL is gone; one that announces a new instance (it restarted under the same
//! id) has lost what its old instance held ([`Registry::holder`]).
//!
//! Between two heartbeats a replica counts the jobs it dispatched to a worker itself, so a burst
//! does not all land on whichever worker looked idlest a second ago; the next heartbeat replaces
//! the estimate with the worker's own count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Serialize;

pub use coretex_core::strategy::Candidate;

use crate::protocol::HeartbeatMsg;
use crate::time::{self, Millis, now_ms};

struct Entry {
    hb: HeartbeatMsg,
    worker_id: Arc<str>,
    /// The heartbeat's labels, shared with every candidate made from it.
    labels: Arc<BTreeMap<String, String>>,
    last_seen: Instant,
    last_seen_ms: Millis,
    /// Dispatched by this replica since the last heartbeat, minus results seen since.
    local_delta: i64,
}

impl Entry {
    fn active(&self) -> u32 {
        (self.hb.active_jobs as i64 + self.local_delta).max(0) as u32
    }
}

/// What `GET /api/v1/workers` shows.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub worker_id: String,
    pub pool: String,
    pub topics: Vec<String>,
    pub active_jobs: u32,
    pub max_parallel: u32,
    pub cpu_load: f64,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    /// Stopping: it finishes its jobs and is sent no more.
    pub draining: bool,
    #[serde(with = "time::rfc3339")]
    pub last_seen: Millis,
}

/// Which workers may take a job before the strategy ranks them.
#[derive(Debug, Clone, Default)]
pub struct Placement<'a> {
    pub topic: &'a str,
    /// When set, the workers of this pool; otherwise the workers that list the topic.
    pub pool: Option<&'a str>,
    /// When set, only workers of these pools: the ones the job's tenant is granted.
    pub allowed_pools: Option<&'a [String]>,
    /// `placement.*` labels the worker must carry with equal values.
    pub required_labels: Vec<(&'a str, &'a str)>,
    pub preferred_worker: Option<&'a str>,
}

pub struct Registry {
    workers: RwLock<HashMap<String, Entry>>,
    ttl: Duration,
    /// When this registry began to listen: until a TTL has passed it has not heard from every
    /// live worker yet, and cannot call any worker gone.
    started: Instant,
}

/// What the registry knows of the worker a job was given to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// The worker (that instance of it) is alive, or the registry cannot tell yet.
    Alive,
    /// Unseen for its TTL.
    Silent,
    /// It restarted: this instance replaced the one the job was given to.
    Restarted { now: String },
}

impl Registry {
    pub fn new(ttl: Duration) -> Self {
        Registry {
            workers: RwLock::new(HashMap::new()),
            ttl,
            started: Instant::now(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The run of the worker process its last heartbeat announced (recorded with a dispatch).
    pub fn instance(&self, worker_id: &str) -> Option<String> {
        self.workers.read().get(worker_id)?.hb.instance.clone()
    }

    /// Whether the worker `worker_id` (its run `instance`, when the dispatch recorded one) can
    /// still be working on a job it was given.
    pub fn holder(&self, worker_id: &str, instance: Option<&str>) -> Holder {
        let workers = self.workers.read();
        match workers.get(worker_id) {
            Some(e) if e.last_seen.elapsed() < self.ttl => {
                match (instance, e.hb.instance.as_deref()) {
                    (Some(was), Some(now)) if was != now => Holder::Restarted {
                        now: now.to_string(),
                    },
                    _ => Holder::Alive,
                }
            }
            _ if self.started.elapsed() < self.ttl => Holder::Alive,
            _ => Holder::Silent,
        }
    }

    /// Records a heartbeat; true when the worker is new or reports more free capacity.
    pub fn observe(&self, hb: HeartbeatMsg) -> bool {
        let mut workers = self.workers.write();
        let now = Instant::now();
        match workers.get_mut(&hb.worker_id) {
            Some(e) => {
                let before = e.hb.max_parallel.saturating_sub(e.active());
                if e.labels.as_ref() != &hb.labels {
                    e.labels = Arc::new(hb.labels.clone());
                }
                e.hb = hb;
                e.local_delta = 0;
                e.last_seen = now;
                e.last_seen_ms = now_ms();
                e.hb.max_parallel.saturating_sub(e.active()) > before
            }
            None => {
                workers.insert(
                    hb.worker_id.clone(),
                    Entry {
                        worker_id: Arc::from(hb.worker_id.as_str()),
                        labels: Arc::new(hb.labels.clone()),
                        hb,
                        last_seen: now,
                        last_seen_ms: now_ms(),
                        local_delta: 0,
                    },
                );
                true
            }
        }
    }

    /// Forgets a worker at once (its pool is no longer granted to it): it is sent nothing more,
    /// and the jobs it held are lost with it.
    pub fn forget(&self, worker_id: &str) -> bool {
        self.workers.write().remove(worker_id).is_some()
    }

    pub fn note_dispatched(&self, worker_id: &str) {
        if let Some(e) = self.workers.write().get_mut(worker_id) {
            e.local_delta += 1;
        }
    }

    pub fn note_finished(&self, worker_id: &str) {
        if let Some(e) = self.workers.write().get_mut(worker_id) {
            e.local_delta -= 1;
        }
    }

    /// Jobs the live workers can still take before they count as overloaded (`active <
    /// 0.9 × max_parallel`), summed.
    pub fn free_slots(&self) -> usize {
        self.workers
            .read()
            .values()
            .filter(|e| e.last_seen.elapsed() < self.ttl && !e.hb.draining)
            .map(|e| {
                let usable = (e.hb.max_parallel as usize * 9).div_ceil(10);
                usable.saturating_sub(e.active() as usize)
            })
            .sum()
    }

    /// Whether the worker takes several jobs in one message (it lists the `batch` capability).
    pub fn accepts_batches(&self, worker_id: &str) -> bool {
        self.workers.read().get(worker_id).is_some_and(|e| {
            e.hb.capabilities
                .iter()
                .any(|c| c == crate::protocol::BATCH_CAPABILITY)
        })
    }

    pub fn is_alive(&self, worker_id: &str) -> bool {
        self.workers
            .read()
            .get(worker_id)
            .is_some_and(|e| e.last_seen.elapsed() < self.ttl)
    }

    /// Drops workers unseen for their TTL.
    pub fn expire(&self) {
        let ttl = self.ttl;
        self.workers.write().retain(|id, e| {
            let alive = e.last_seen.elapsed() < ttl;
            if !alive {
                tracing::info!(worker_id = %id, "worker gone: no heartbeat within its TTL");
            }
            alive
        });
    }

    /// The live workers that satisfy the job's pool, topic and placement constraints (a
    /// draining worker takes nothing new).
    pub fn eligible_workers(&self, p: &Placement<'_>) -> Vec<Candidate> {
        let workers = self.workers.read();
        workers
            .values()
            .filter(|e| e.last_seen.elapsed() < self.ttl && !e.hb.draining)
            .filter(|e| match p.pool {
                Some(pool) => e.hb.pool == pool,
                None => e.hb.topics.iter().any(|t| t == p.topic),
            })
            .filter(|e| {
                p.allowed_pools
                    .is_none_or(|allowed| allowed.contains(&e.hb.pool))
            })
            .filter(|e| {
                p.required_labels
                    .iter()
                    .all(|(k, v)| e.hb.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|e| Candidate {
                worker_id: e.worker_id.clone(),
                active_jobs: e.active(),
                max_parallel: e.hb.max_parallel,
                cpu_load: e.hb.cpu_load,
                preferred: p.preferred_worker == Some(&*e.worker_id),
                labels: e.labels.clone(),
            })
            .collect()
    }

    pub fn list(&self) -> Vec<WorkerView> {
        let workers = self.workers.read();
        let mut out: Vec<_> = workers
            .values()
            .filter(|e| e.last_seen.elapsed() < self.ttl)
            .map(|e| WorkerView {
                worker_id: e.hb.worker_id.clone(),
                pool: e.hb.pool.clone(),
                topics: e.hb.topics.clone(),
                active_jobs: e.active(),
                max_parallel: e.hb.max_parallel,
                cpu_load: e.hb.cpu_load,
                labels: e.hb.labels.clone(),
                capabilities: e.hb.capabilities.clone(),
                draining: e.hb.draining,
                last_seen: e.last_seen_ms,
            })
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hb(id: &str, pool: &str, topics: &[&str], active: u32, max: u32) -> HeartbeatMsg {
        HeartbeatMsg {
            v: 1,
            worker_id: id.into(),
            pool: pool.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            active_jobs: active,
            max_parallel: max,
            cpu_load: 0.0,
            labels: BTreeMap::new(),
            capabilities: vec![],
            instance: None,
            draining: false,
            pass: None,
        }
    }

    #[test]
    fn pool_wins_over_topic_and_placement_labels_must_match() {
        let r = Registry::new(Duration::from_secs(30));
        r.observe(hb("a", "gpu", &["x"], 0, 4));
        let mut b = hb("b", "cpu", &["t"], 0, 4);
        b.labels.insert("placement.zone".into(), "eu".into());
        r.observe(b);
        let ids = |p: &Placement| -> Vec<String> {
            let mut v: Vec<_> = r
                .eligible_workers(p)
                .iter()
                .map(|c| c.worker_id.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            ids(&Placement {
                topic: "t",
                ..Default::default()
            }),
            ["b"]
        );
        assert_eq!(
            ids(&Placement {
                topic: "t",
                pool: Some("gpu"),
                ..Default::default()
            }),
            ["a"]
        );
        let zone = Placement {
            topic: "t",
            required_labels: vec![("placement.zone", "us")],
            ..Default::default()
        };
        assert!(ids(&zone).is_empty());
        r.observe(hb("c", "gpu", &["t"], 0, 4));
        let granted = ["cpu".to_string()];
        assert_eq!(
            ids(&Placement {
                topic: "t",
                allowed_pools: Some(&granted),
                ..Default::default()
            }),
            ["b"],
            "a worker of a pool the tenant is not granted is not a candidate"
        );
    }

    #[test]
    fn local_dispatch_counts_until_the_next_heartbeat() {
        let r = Registry::new(Duration::from_secs(30));
        r.observe(hb("a", "p", &["t"], 1, 4));
        r.note_dispatched("a");
        r.note_dispatched("a");
        let p = Placement {
            topic: "t",
            ..Default::default()
        };
        assert_eq!(r.eligible_workers(&p)[0].active_jobs, 3);
        r.observe(hb("a", "p", &["t"], 2, 4));
        assert_eq!(r.eligible_workers(&p)[0].active_jobs, 2);
    }

    #[test]
    fn free_slots_stop_at_the_overload_threshold() {
        let r = Registry::new(Duration::from_secs(30));
        r.observe(hb("a", "p", &["t"], 10, 50));
        r.observe(hb("b", "p", &["t"], 0, 1));
        assert_eq!(r.free_slots(), 35 + 1);
    }

    #[test]
    fn workers_past_their_ttl_are_gone() {
        let r = Registry::new(Duration::from_millis(0));
        r.observe(hb("a", "p", &["t"], 0, 1));
        assert!(
            r.eligible_workers(&Placement {
                topic: "t",
                ..Default::default()
            })
            .is_empty()
        );
        r.expire();
        assert!(r.list().is_empty());
    }
}
