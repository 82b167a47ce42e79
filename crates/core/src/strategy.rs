//! The dispatch strategy (SPEC §5 step 4): given a job and the eligible workers, pick one. The
//! built-in default, least-loaded, is native here; plugins will stand behind the same trait.
//!
//! Least-loaded: a worker is overloaded when `active/max_parallel ≥ 0.9` or `cpu_load ≥ 90`; the
//! job's `preferred_worker_id` wins when that worker is not overloaded; otherwise the lowest
//! `active_jobs + cpu_load/100` wins, and ties go round the tied workers in turn, so equal
//! workers share a burst instead of one taking it all.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::job::JobSpec;

use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// Index into the candidates.
    Worker(usize),
    /// Nobody fits now; the reason is recorded on the job.
    NoWorker(String),
}

#[derive(Debug, thiserror::Error)]
#[error("strategy failed: {0}")]
pub struct StrategyError(pub String);

pub trait DispatchStrategy: Send + Sync {
    fn name(&self) -> &str;
    fn pick(&self, job: &JobSpec, candidates: &[Candidate]) -> Result<Pick, StrategyError>;
}

#[derive(Default)]
pub struct LeastLoaded {
    turn: AtomicUsize,
}

pub fn is_overloaded(c: &Candidate) -> bool {
    let max = c.max_parallel.max(1) as f64;
    c.active_jobs as f64 / max >= 0.9 || c.cpu_load >= 90.0
}

impl DispatchStrategy for LeastLoaded {
    fn name(&self) -> &str {
        "least-loaded"
    }

    fn pick(&self, _job: &JobSpec, candidates: &[Candidate]) -> Result<Pick, StrategyError> {
        if candidates.is_empty() {
            return Ok(Pick::NoWorker("no live worker serves this job".into()));
        }
        if let Some(i) = candidates
            .iter()
            .position(|c| c.preferred && !is_overloaded(c))
        {
            return Ok(Pick::Worker(i));
        }
        let n = candidates.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in candidates.iter().enumerate().cycle().skip(start).take(n) {
            if is_overloaded(c) {
                continue;
            }
            let score = c.active_jobs as f64 + c.cpu_load / 100.0;
            if best.is_none_or(|(_, b)| score < b) {
                best = Some((i, score));
            }
        }
        Ok(match best {
            Some((i, _)) => Pick::Worker(i),
            None => Pick::NoWorker(format!("all {n} eligible workers are overloaded")),
        })
    }
}

/// One worker as a dispatch strategy sees it: numbers, not strings.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub worker_id: Arc<str>,
    pub active_jobs: u32,
    pub max_parallel: u32,
    pub cpu_load: f64,
    /// The job named this worker in `labels.preferred_worker_id`.
    pub preferred: bool,
    /// The worker's labels (shared, not copied), for strategies that place by label.
    pub labels: Arc<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobRequest;
    use std::collections::HashSet;

    fn c(id: &str, active: u32, max: u32, cpu: f64) -> Candidate {
        Candidate {
            worker_id: id.into(),
            active_jobs: active,
            max_parallel: max,
            cpu_load: cpu,
            preferred: false,
            labels: Default::default(),
        }
    }

    fn job() -> JobSpec {
        JobSpec::accept(
            JobRequest {
                topic: "t".into(),
                ..Default::default()
            },
            0,
        )
    }

    fn picked(s: &LeastLoaded, cs: &[Candidate]) -> Option<String> {
        match s.pick(&job(), cs).unwrap() {
            Pick::Worker(i) => Some(cs[i].worker_id.to_string()),
            Pick::NoWorker(_) => None,
        }
    }

    #[test]
    fn lowest_score_wins() {
        let s = LeastLoaded::default();
        let cs = [c("a", 3, 10, 0.0), c("b", 1, 10, 50.0), c("c", 2, 10, 0.0)];
        assert_eq!(picked(&s, &cs).as_deref(), Some("b"));
    }

    #[test]
    fn overloaded_workers_are_skipped() {
        let s = LeastLoaded::default();
        assert_eq!(
            picked(&s, &[c("a", 9, 10, 0.0), c("b", 5, 10, 0.0)]).as_deref(),
            Some("b")
        );
        assert_eq!(
            picked(&s, &[c("a", 0, 10, 95.0), c("b", 5, 10, 0.0)]).as_deref(),
            Some("b")
        );
        assert_eq!(picked(&s, &[c("a", 9, 10, 0.0)]), None);
    }

    #[test]
    fn preferred_worker_wins_unless_overloaded() {
        let s = LeastLoaded::default();
        let mut p = c("p", 5, 10, 0.0);
        p.preferred = true;
        assert_eq!(
            picked(&s, &[c("a", 0, 10, 0.0), p.clone()]).as_deref(),
            Some("p")
        );
        p.active_jobs = 9;
        assert_eq!(picked(&s, &[c("a", 0, 10, 0.0), p]).as_deref(), Some("a"));
    }

    #[test]
    fn ties_spread_across_workers() {
        let s = LeastLoaded::default();
        let cs = [c("a", 0, 10, 0.0), c("b", 0, 10, 0.0), c("c", 0, 10, 0.0)];
        let seen: HashSet<_> = (0..6).filter_map(|_| picked(&s, &cs)).collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn no_candidates_is_no_worker_not_an_error() {
        let s = LeastLoaded::default();
        assert!(matches!(s.pick(&job(), &[]).unwrap(), Pick::NoWorker(_)));
    }
}
