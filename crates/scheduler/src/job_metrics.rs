//! Job metrics: how many jobs ended in each terminal state, how long a job took from submit to
//! SUCCEEDED, and how many jobs are in each live state — what `/metrics` serves, and what the
//! status (`/api/v1/status` `jobs`, the dashboard's overview) reads back in process.
//!
//! The counters and the latency are recorded at the one place a job's terminal transition is
//! applied (`Scheduler::apply`), once per job this replica moved to its end, by one call that
//! feeds both readers: the process's Prometheus recorder (`coretex_jobs_total{state}`, the
//! histogram `coretex_job_latency_seconds` with [`LATENCY_BUCKETS`]) and [`JobMetrics`], which
//! keeps the totals and the last minute second by second, so that "now" is answered without
//! rendering and parsing the text: the rate of ended jobs over the last [`RATE_WINDOW_S`]
//! seconds, and latency quantiles over the last [`LATENCY_WINDOW_S`] interpolated in the
//! histogram's buckets, as Prometheus' `histogram_quantile` does with the same buckets.
//!
//! The live-state gauges (`coretex_jobs{state}`) are counted in the store when they are read
//! ([`count_live`]): they are the cluster's, where the counters are this replica's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::job::JobState;
use crate::store::{JobStore, StoreResult};
use crate::time::Millis;

/// Jobs that ended, by terminal state (a counter).
pub const JOBS_TOTAL: &str = "coretex_jobs_total";
/// From submit to SUCCEEDED, in seconds (a histogram).
pub const JOB_LATENCY: &str = "coretex_job_latency_seconds";
/// Jobs in each live state now (a gauge).
pub const JOBS_LIVE: &str = "coretex_jobs";

/// The upper bounds, in seconds, of [`JOB_LATENCY`]'s buckets (the recorder is built with them,
/// see `serve`): from a quick echo job to an hour in the queue.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The throughput "now" is the rate over this many seconds.
pub const RATE_WINDOW_S: u64 = 10;
/// The latency "now" is of the jobs that succeeded within this many seconds.
pub const LATENCY_WINDOW_S: u64 = 60;

/// The terminal states, in the order of [`JobMetrics`]' totals.
const ENDS: [JobState; 5] = [
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::Timeout,
    JobState::Denied,
];

/// The live states, counted by [`count_live`].
pub const LIVE: [JobState; 4] = [
    JobState::Pending,
    JobState::Scheduled,
    JobState::Dispatched,
    JobState::Running,
];

/// One second of the last minute.
#[derive(Debug, Clone, Copy)]
struct Second {
    /// Which second since the start this is; a slot holding an older one is stale.
    at: u64,
    ended: u32,
    /// Jobs that succeeded, by latency bucket; the last is past every bound (`+Inf`).
    latency: [u32; LATENCY_BUCKETS.len() + 1],
}

const EMPTY: Second = Second {
    at: u64::MAX,
    ended: 0,
    latency: [0; LATENCY_BUCKETS.len() + 1],
};

/// A replica's job counters and latency: see the module docs.
pub struct JobMetrics {
    started: Instant,
    totals: [AtomicU64; ENDS.len()],
    counters: [metrics::Counter; ENDS.len()],
    latency: metrics::Histogram,
    /// A ring of the last [`LATENCY_WINDOW_S`] seconds, by second modulo its length.
    seconds: Mutex<[Second; LATENCY_WINDOW_S as usize]>,
}

/// What the jobs do now, as [`JobMetrics::now`] answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobsNow {
    /// Jobs that ended in each terminal state since this replica started.
    pub ended: BTreeMap<&'static str, u64>,
    /// Jobs ended per second over the last [`RATE_WINDOW_S`] seconds (or since the start, when
    /// that is sooner).
    pub throughput_per_s: f64,
    pub latency: Latency,
}

/// Submit-to-SUCCEEDED latency of the jobs that succeeded in the last [`LATENCY_WINDOW_S`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub window_s: u64,
    /// How many succeeded in the window (the quantiles are `None` without any).
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics::new()
    }
}

impl JobMetrics {
    /// Counters registered with the recorder installed now (`serve` installs it first).
    pub fn new() -> Self {
        metrics::describe_counter!(JOBS_TOTAL, "Jobs that ended, by terminal state");
        metrics::describe_histogram!(
            JOB_LATENCY,
            metrics::Unit::Seconds,
            "Time from submit to SUCCEEDED"
        );
        metrics::describe_gauge!(JOBS_LIVE, "Jobs in each live state (counted in the store)");
        JobMetrics {
            started: Instant::now(),
            totals: Default::default(),
            counters: ENDS.map(|s| metrics::counter!(JOBS_TOTAL, "state" => s.as_str())),
            latency: metrics::histogram!(JOB_LATENCY),
            seconds: Mutex::new([EMPTY; LATENCY_WINDOW_S as usize]),
        }
    }

    /// Notes that a job submitted at `created_at` ended in `state` at `at`. Other states are
    /// not an end and are ignored.
    pub fn ended(&self, state: JobState, created_at: Millis, at: Millis) {
        let Some(i) = ENDS.iter().position(|s| *s == state) else {
            return;
        };
        if let (Some(total), Some(counter)) = (self.totals.get(i), self.counters.get(i)) {
            total.fetch_add(1, Ordering::Relaxed);
            counter.increment(1);
        }
        // Submitted by another replica whose clock runs ahead: no negative latency.
        let latency_ms =
            (state == JobState::Succeeded).then(|| at.saturating_sub(created_at).max(0));
        if let Some(ms) = latency_ms {
            self.latency.record(ms as f64 / 1000.0);
        }
        self.note(latency_ms, self.started.elapsed().as_secs());
    }

    /// Counts an end (with its latency, for a success) in second `now_s`.
    fn note(&self, latency_ms: Option<i64>, now_s: u64) {
        let mut seconds = self.seconds.lock();
        let len = seconds.len() as u64;
        let Some(slot) = usize::try_from(now_s % len)
            .ok()
            .and_then(|i| seconds.get_mut(i))
        else {
            return;
        };
        if slot.at != now_s {
            *slot = Second { at: now_s, ..EMPTY };
        }
        slot.ended = slot.ended.saturating_add(1);
        if let Some(n) = latency_ms.and_then(|ms| slot.latency.get_mut(bucket(ms))) {
            *n = n.saturating_add(1);
        }
    }

    /// The totals, the throughput and the latency now.
    pub fn now(&self) -> JobsNow {
        self.at(self.started.elapsed())
    }

    /// [`JobMetrics::now`] at `elapsed` since the start.
    fn at(&self, elapsed: Duration) -> JobsNow {
        let now_s = elapsed.as_secs();
        let within = |s: &Second, window: u64| s.at <= now_s && now_s - s.at < window;
        let seconds = *self.seconds.lock();
        let ended_lately: u64 = seconds
            .iter()
            .filter(|s| within(s, RATE_WINDOW_S))
            .map(|s| u64::from(s.ended))
            .sum();
        // The window's whole seconds before this one, and as much of this one as has passed.
        let span = elapsed
            .as_secs_f64()
            .min((RATE_WINDOW_S - 1) as f64 + f64::from(elapsed.subsec_nanos()) / 1e9);
        let throughput_per_s = if span > 0.0 {
            ended_lately as f64 / span
        } else {
            0.0
        };
        let mut buckets = [0u64; LATENCY_BUCKETS.len() + 1];
        for s in seconds.iter().filter(|s| within(s, LATENCY_WINDOW_S)) {
            for (sum, n) in buckets.iter_mut().zip(s.latency) {
                *sum += u64::from(n);
            }
        }
        let ms = |q| quantile(q, &buckets).map(|s| (s * 1000.0 * 10.0).round() / 10.0);
        JobsNow {
            ended: ENDS
                .iter()
                .zip(&self.totals)
                .map(|(s, n)| (s.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
            throughput_per_s: (throughput_per_s * 100.0).round() / 100.0,
            latency: Latency {
                window_s: LATENCY_WINDOW_S,
                count: buckets.iter().sum(),
                p50_ms: ms(0.5),
                p95_ms: ms(0.95),
                p99_ms: ms(0.99),
            },
        }
    }
}

/// The bucket of a latency: the first whose bound it does not exceed (Prometheus' `le`).
fn bucket(latency_ms: i64) -> usize {
    let s = latency_ms as f64 / 1000.0;
    LATENCY_BUCKETS
        .iter()
        .position(|le| s <= *le)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// The `q` quantile (seconds) of the counts per bucket, as `histogram_quantile` computes it: the
/// rank's bucket, linearly between its bounds (the first from 0); in the `+Inf` bucket, the
/// highest finite bound. `None` without any count.
fn quantile(q: f64, counts: &[u64; LATENCY_BUCKETS.len() + 1]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in counts.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let lower = i.checked_sub(1).and_then(|j| LATENCY_BUCKETS.get(j));
            let Some(upper) = LATENCY_BUCKETS.get(i) else {
                return lower.copied();
            };
            let lower = lower.copied().unwrap_or(0.0);
            return Some(lower + (upper - lower) * (rank - below as f64) / *n as f64);
        }
        below += n;
    }
    LATENCY_BUCKETS.last().copied()
}

/// The jobs in each live state now, counted in the store (the cluster's, not only this
/// replica's), and set as the `coretex_jobs{state}` gauges on the way.
pub async fn count_live(store: &dyn JobStore) -> StoreResult<BTreeMap<&'static str, u64>> {
    let counts = store.count_jobs(&LIVE).await?;
    Ok(LIVE
        .iter()
        .zip(counts)
        .map(|(s, n)| {
            metrics::gauge!(JOBS_LIVE, "state" => s.as_str()).set(n as f64);
            (s.as_str(), n)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ends_are_counted_by_state_and_other_states_ignored() {
        let m = JobMetrics::new();
        m.ended(JobState::Succeeded, 0, 10);
        m.ended(JobState::Succeeded, 0, 10);
        m.ended(JobState::Denied, 0, 10);
        m.ended(JobState::Running, 0, 10);
        let now = m.now();
        assert_eq!(now.ended.get("SUCCEEDED"), Some(&2));
        assert_eq!(now.ended.get("DENIED"), Some(&1));
        assert_eq!(now.ended.get("FAILED"), Some(&0));
        assert_eq!(now.ended.get("RUNNING"), None);
        assert_eq!(now.latency.count, 2, "only successes have a latency");
    }

    #[test]
    fn throughput_is_the_rate_over_the_last_seconds() {
        let m = JobMetrics::new();
        // 5 ended long ago, then 2 per second over seconds 100..=109.
        for _ in 0..5 {
            m.note(None, 20);
        }
        for s in 100..110 {
            m.note(None, s);
            m.note(Some(40), s);
        }
        // At 109.5 s: the 10 seconds 100..=109 are the window, 9.5 s of them passed.
        let now = m.at(Duration::from_millis(109_500));
        assert_eq!(
            now.throughput_per_s,
            (20.0f64 / 9.5 * 100.0).round() / 100.0
        );
        // Long after, nothing is recent.
        assert_eq!(m.at(200 * S).throughput_per_s, 0.0);
        // Younger than the window: the rate since the start.
        let young = JobMetrics::new();
        young.note(None, 0);
        young.note(None, 1);
        assert_eq!(young.at(Duration::from_millis(2_000)).throughput_per_s, 1.0);
        assert_eq!(JobMetrics::new().at(Duration::ZERO).throughput_per_s, 0.0);
    }

    #[test]
    fn latency_quantiles_interpolate_in_the_buckets_of_the_last_minute() {
        let m = JobMetrics::new();
        // 100 successes at second 10: 50 at 20 ms (bucket 10–25 ms), 50 at 200 ms (100–250 ms).
        for _ in 0..50 {
            m.note(Some(20), 10);
            m.note(Some(200), 10);
        }
        let l = m.at(30 * S).latency;
        assert_eq!(l.count, 100);
        // Rank 50 is the last of the 10–25 ms bucket: its upper bound.
        assert_eq!(l.p50_ms, Some(25.0));
        // Rank 95: 45 of 50 into the 100–250 ms bucket.
        assert_eq!(l.p95_ms, Some(235.0));
        // A minute later they are no longer "now".
        let later = m.at(71 * S).latency;
        assert_eq!((later.count, later.p50_ms), (0, None));
    }

    #[test]
    fn a_slot_is_reused_a_minute_later_without_its_old_counts() {
        let m = JobMetrics::new();
        m.note(Some(1), 3);
        m.note(Some(1), 3 + LATENCY_WINDOW_S);
        let l = m.at(Duration::from_secs(3 + LATENCY_WINDOW_S)).latency;
        assert_eq!(l.count, 1);
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        assert_eq!(quantile(0.5, &counts), None);
        // All in the first bucket (0–5 ms): interpolated from 0.
        counts[0] = 4;
        assert_eq!(quantile(0.5, &counts), Some(0.0025));
        // Past every bound: the highest finite one.
        let mut slow = [0u64; LATENCY_BUCKETS.len() + 1];
        slow[LATENCY_BUCKETS.len()] = 3;
        assert_eq!(quantile(0.99, &slow), Some(3600.0));
        assert_eq!(bucket(5), 0, "5 ms is ≤ 0.005 s");
        assert_eq!(bucket(6), 1);
        assert_eq!(bucket(10_000_000), LATENCY_BUCKETS.len());
    }
}
