//! A circuit breaker: closed → open after N consecutive failures, open for a cool-down, then
//! half-open with a few probe slots, closed again after M successes (SPEC §5). It guards the
//! safety policy now and each plugin later.
//!
//! The clock is passed in (`Instant`) so every state change is unit-tested without sleeping.
//! Every change is logged and counted (`coretex_breaker_transitions_total{breaker,to}`), and the
//! current state is a gauge (`coretex_breaker_state{breaker}`: 0 closed, 1 open, 2 half-open).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub cooldown: Duration,
    pub half_open_probes: u32,
    pub close_after: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
            half_open_probes: 3,
            close_after: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
}

pub struct CircuitBreaker {
    name: String,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    /// Closed with no failure since the last success: the state of nearly every call, in which
    /// `try_acquire` and `record_success` change nothing, so they read this and take no lock
    /// (and no clock reading). Written under the lock whenever the state or the count changes.
    healthy: AtomicBool,
}

/// The call was refused: the breaker is open (or half-open with every probe slot taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, cfg: BreakerConfig) -> Self {
        let name = name.into();
        metrics::gauge!("coretex_breaker_state", "breaker" => name.clone()).set(0.0);
        CircuitBreaker {
            name,
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: Instant::now(),
                probes_in_flight: 0,
                probe_successes: 0,
            }),
            healthy: AtomicBool::new(true),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().state
    }

    /// Asks to make a call now. In half-open state an accepted call holds a probe slot until its
    /// outcome is recorded.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Rejected> {
        self.try_acquire_with(|| now)
    }

    /// [`Self::try_acquire`], reading the clock only when the breaker is open (the cool-down
    /// is the one thing that needs it).
    pub fn try_acquire_with(&self, now: impl FnOnce() -> Instant) -> Result<(), Rejected> {
        if self.healthy.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::Open {
            if now().duration_since(inner.opened_at) < self.cfg.cooldown {
                return Err(Rejected);
            }
            self.change(&mut inner, BreakerState::HalfOpen);
            inner.probes_in_flight = 0;
            inner.probe_successes = 0;
        }
        if inner.state == BreakerState::HalfOpen {
            if inner.probes_in_flight >= self.cfg.half_open_probes {
                return Err(Rejected);
            }
            inner.probes_in_flight += 1;
        }
        Ok(())
    }

    pub fn record_success(&self) {
        if self.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        inner.consecutive_failures = 0;
        if inner.state == BreakerState::HalfOpen {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            inner.probe_successes += 1;
            if inner.probe_successes >= self.cfg.close_after {
                self.change(&mut inner, BreakerState::Closed);
            }
        }
        self.healthy
            .store(inner.state == BreakerState::Closed, Ordering::Release);
    }

    pub fn record_failure(&self, now: Instant) {
        let mut inner = self.inner.lock();
        self.healthy.store(false, Ordering::Release);
        inner.consecutive_failures += 1;
        let trip = match inner.state {
            BreakerState::Closed => inner.consecutive_failures >= self.cfg.failure_threshold,
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if trip {
            inner.opened_at = now;
            inner.probes_in_flight = 0;
            self.change(&mut inner, BreakerState::Open);
        }
    }

    fn change(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        inner.state = to;
        tracing::warn!(breaker = %self.name, from = from.as_str(), to = to.as_str(), "circuit breaker state change");
        metrics::counter!("coretex_breaker_transitions_total", "breaker" => self.name.clone(), "to" => to.as_str())
            .increment(1);
        metrics::gauge!("coretex_breaker_state", "breaker" => self.name.clone()).set(to.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new("test", BreakerConfig::default())
    }

    #[test]
    fn stays_closed_below_the_failure_threshold() {
        let b = breaker();
        let t = Instant::now();
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_success();
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        assert!(b.try_acquire(t).is_ok());
    }

    #[test]
    fn opens_after_three_consecutive_failures_and_rejects_during_cooldown() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.try_acquire(t + Duration::from_secs(29)), Err(Rejected));
    }

    #[test]
    fn half_opens_after_cooldown_with_three_probe_slots() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let later = t + Duration::from_secs(30);
        for _ in 0..3 {
            assert!(b.try_acquire(later).is_ok());
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(later), Err(Rejected), "probe slots are full");
    }

    #[test]
    fn closes_after_two_probe_successes() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let later = t + Duration::from_secs(31);
        b.try_acquire(later).unwrap();
        b.record_success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.try_acquire(later).unwrap();
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_probe_failure_reopens_for_a_new_cooldown() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let later = t + Duration::from_secs(30);
        b.try_acquire(later).unwrap();
        b.record_failure(later);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire(later + Duration::from_secs(29)),
            Err(Rejected)
        );
        assert!(b.try_acquire(later + Duration::from_secs(30)).is_ok());
    }
}
