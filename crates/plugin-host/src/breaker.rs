//! Circuit breakers, one per tenant (SPEC §5, §12): closed → open after N consecutive failures,
//! open for a cool-down, then half-open with a few probe slots, closed again after M successes.
//! They guard the safety policy and each plugin; [`TenantBreakers`] keeps one per tenant, so one
//! tenant's failures (a malformed policy, settings a plugin refuses) open only that tenant's
//! breaker and never one another tenant depends on.
//!
//! **Why only the troubled tenants are kept.** A closed breaker with no failure since its last
//! success behaves exactly like a new one, so the map holds a tenant only from its first failure
//! until it is healthy again — nearly always none, so a call costs one atomic load, no lock and no
//! clock reading. Tenants are many and unbounded (a job names its own `tenant_id`), so the map is
//! bounded too: an entry untouched for `idle_after` is forgotten, and a map at `max_tenants`
//! first drops its closed entries (they hold only a partial count), then its least recently
//! touched, down to seven eighths of the cap — a flood of failing tenants costs bounded memory
//! and an amortized O(log n) per new tenant, and forgetting an open breaker at worst lets that
//! tenant's calls fail a few more times before it opens again.
//!
//! The clock is passed in (`Instant`) so every state change is unit-tested without sleeping.
//! Every change is logged with its tenant and counted
//! (`coretex_breaker_transitions_total{breaker,to}`); how many tenants' breakers are not closed
//! is a gauge (`coretex_breakers_open{breaker}`). Neither carries the tenant as a label, so the
//! metrics' cardinality is bounded by the number of breakers, not of tenants; `GET
//! /api/v1/status` lists the open ones by tenant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How many tenants' breakers a [`TenantBreakers`] keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct TenantLimits {
    /// The most tenants tracked at once.
    pub max_tenants: usize,
    /// A tenant untouched this long is forgotten (never sooner than the cool-down).
    pub idle_after: Duration,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            max_tenants: 10_000,
            idle_after: Duration::from_secs(600),
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

    /// How bad it is, for a summary's worst state.
    fn severity(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// The call was refused: the tenant's breaker is open (or half-open with every probe slot
/// taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// One tenant's breaker: the state machine, with no lock and no I/O of its own.
#[derive(Debug, Clone)]
struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    touched: Instant,
}

impl Breaker {
    fn new(now: Instant) -> Self {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: now,
            probes_in_flight: 0,
            probe_successes: 0,
            touched: now,
        }
    }

    /// Closed with no failure since the last success: no different from a breaker never used.
    fn is_pristine(&self) -> bool {
        self.state == BreakerState::Closed && self.consecutive_failures == 0
    }

    fn try_acquire(&mut self, cfg: &BreakerConfig, now: Instant) -> Result<(), Rejected> {
        self.touched = now;
        if self.state == BreakerState::Open {
            if now.duration_since(self.opened_at) < cfg.cooldown {
                return Err(Rejected);
            }
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
        if self.state == BreakerState::HalfOpen {
            if self.probes_in_flight >= cfg.half_open_probes {
                return Err(Rejected);
            }
            self.probes_in_flight += 1;
        }
        Ok(())
    }

    fn record_success(&mut self, cfg: &BreakerConfig, now: Instant) {
        self.touched = now;
        self.consecutive_failures = 0;
        if self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            self.probe_successes += 1;
            if self.probe_successes >= cfg.close_after {
                self.state = BreakerState::Closed;
            }
        }
    }

    fn record_failure(&mut self, cfg: &BreakerConfig, now: Instant) {
        self.touched = now;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let trip = match self.state {
            BreakerState::Closed => self.consecutive_failures >= cfg.failure_threshold,
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if trip {
            self.opened_at = now;
            self.probes_in_flight = 0;
            self.state = BreakerState::Open;
        }
    }
}

/// One tenant whose breaker is not closed, as `/api/v1/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantBreaker {
    pub breaker: String,
    pub tenant: String,
    pub state: BreakerState,
}

/// The breakers of one guarded thing (the safety policy, a plugin), one per tenant.
pub struct TenantBreakers {
    name: String,
    cfg: BreakerConfig,
    limits: TenantLimits,
    /// How many tenants `tracked` holds: zero — every tenant healthy — lets a call skip the
    /// lock. Written under the lock.
    len: AtomicUsize,
    tracked: Mutex<Tracked>,
    open_gauge: metrics::Gauge,
}

struct Tracked {
    /// Tenant ids come from clients: a seeded hash, not a predictable one.
    by_tenant: HashMap<String, Breaker, foldhash::quality::RandomState>,
    /// How many of them are not closed (the gauge).
    not_closed: usize,
    last_sweep: Instant,
}

impl TenantBreakers {
    pub fn new(name: impl Into<String>, cfg: BreakerConfig, limits: TenantLimits) -> Self {
        let name = name.into();
        let open_gauge = metrics::gauge!("coretex_breakers_open", "breaker" => name.clone());
        open_gauge.set(0.0);
        TenantBreakers {
            limits: TenantLimits {
                max_tenants: limits.max_tenants.max(1),
                idle_after: limits.idle_after.max(cfg.cooldown),
            },
            name,
            cfg,
            len: AtomicUsize::new(0),
            tracked: Mutex::new(Tracked {
                by_tenant: HashMap::default(),
                not_closed: 0,
                last_sweep: Instant::now(),
            }),
            open_gauge,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state of `tenant`'s breaker.
    pub fn state(&self, tenant: &str) -> BreakerState {
        self.tracked
            .lock()
            .by_tenant
            .get(tenant)
            .map_or(BreakerState::Closed, |b| b.state)
    }

    /// Asks to make a call for `tenant` now. In half-open state an accepted call holds a probe
    /// slot until its outcome is recorded. The clock is read only when the tenant is tracked.
    pub fn try_acquire(&self, tenant: &str, now: impl FnOnce() -> Instant) -> Result<(), Rejected> {
        if self.len.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut tracked = self.tracked.lock();
        let Some(b) = tracked.by_tenant.get_mut(tenant) else {
            return Ok(());
        };
        let before = b.state;
        let answer = b.try_acquire(&self.cfg, now());
        let after = b.state;
        self.changed(&mut tracked, tenant, before, after);
        answer
    }

    /// A call for `tenant` succeeded.
    pub fn record_success(&self, tenant: &str, now: impl FnOnce() -> Instant) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut tracked = self.tracked.lock();
        let Some(b) = tracked.by_tenant.get_mut(tenant) else {
            return;
        };
        let before = b.state;
        b.record_success(&self.cfg, now());
        let (after, pristine) = (b.state, b.is_pristine());
        self.changed(&mut tracked, tenant, before, after);
        if pristine {
            tracked.by_tenant.remove(tenant);
            self.len.store(tracked.by_tenant.len(), Ordering::Release);
        }
    }

    /// A call for `tenant` failed (or timed out).
    pub fn record_failure(&self, tenant: &str, now: Instant) {
        let mut tracked = self.tracked.lock();
        if !tracked.by_tenant.contains_key(tenant) {
            self.make_room(&mut tracked, now);
            tracked
                .by_tenant
                .insert(tenant.to_string(), Breaker::new(now));
        }
        let Some(b) = tracked.by_tenant.get_mut(tenant) else {
            return;
        };
        let before = b.state;
        b.record_failure(&self.cfg, now);
        let after = b.state;
        self.changed(&mut tracked, tenant, before, after);
        self.len.store(tracked.by_tenant.len(), Ordering::Release);
    }

    /// The tenants whose breaker is not closed (at most `limit`, the worst first), and how many
    /// there are in all.
    pub fn not_closed(&self, limit: usize) -> (usize, Vec<TenantBreaker>) {
        let tracked = self.tracked.lock();
        let mut out: Vec<TenantBreaker> = tracked
            .by_tenant
            .iter()
            .filter(|(_, b)| b.state != BreakerState::Closed)
            .map(|(tenant, b)| TenantBreaker {
                breaker: self.name.clone(),
                tenant: tenant.clone(),
                state: b.state,
            })
            .collect();
        out.sort_by(|a, b| (b.state.severity(), &a.tenant).cmp(&(a.state.severity(), &b.tenant)));
        out.truncate(limit);
        (tracked.not_closed, out)
    }

    /// The worst state of any tenant's breaker.
    pub fn worst(&self) -> BreakerState {
        self.tracked
            .lock()
            .by_tenant
            .values()
            .map(|b| b.state)
            .max_by_key(|s| s.severity())
            .unwrap_or(BreakerState::Closed)
    }

    /// How many tenants are tracked (not healthy, or not yet forgotten).
    pub fn tracked(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Logs and counts a state change of `tenant`'s breaker.
    fn changed(&self, tracked: &mut Tracked, tenant: &str, from: BreakerState, to: BreakerState) {
        if from == to {
            return;
        }
        match (from == BreakerState::Closed, to == BreakerState::Closed) {
            (true, false) => tracked.not_closed += 1,
            (false, true) => tracked.not_closed = tracked.not_closed.saturating_sub(1),
            _ => {}
        }
        self.open_gauge.set(tracked.not_closed as f64);
        tracing::warn!(breaker = %self.name, tenant, from = from.as_str(), to = to.as_str(),
            "circuit breaker state change");
        metrics::counter!("coretex_breaker_transitions_total", "breaker" => self.name.clone(), "to" => to.as_str())
            .increment(1);
    }

    /// Before a new tenant is tracked: forgets idle tenants (at most once per `idle_after`, or
    /// whenever the map is full), and when it is still full, evicts down to 7/8 of the cap —
    /// closed entries first, then the least recently touched.
    fn make_room(&self, tracked: &mut Tracked, now: Instant) {
        let full = tracked.by_tenant.len() >= self.limits.max_tenants;
        if !full && now.saturating_duration_since(tracked.last_sweep) < self.limits.idle_after {
            return;
        }
        tracked.last_sweep = now;
        let idle_after = self.limits.idle_after;
        self.evict(tracked, |_, b| {
            now.saturating_duration_since(b.touched) >= idle_after
        });
        if tracked.by_tenant.len() < self.limits.max_tenants {
            return;
        }
        let keep = self.limits.max_tenants - self.limits.max_tenants / 8 - 1;
        let mut order: Vec<(bool, Instant, String)> = tracked
            .by_tenant
            .iter()
            .map(|(t, b)| (b.state != BreakerState::Closed, b.touched, t.clone()))
            .collect();
        order.sort_unstable();
        let excess = order.len().saturating_sub(keep);
        let doomed: std::collections::HashSet<String> =
            order.into_iter().take(excess).map(|(_, _, t)| t).collect();
        self.evict(tracked, |t, _| doomed.contains(t));
    }

    fn evict(&self, tracked: &mut Tracked, doomed: impl Fn(&str, &Breaker) -> bool) {
        let before = tracked.by_tenant.len();
        let mut not_closed_removed = 0;
        tracked.by_tenant.retain(|t, b| {
            let drop = doomed(t, b);
            if drop && b.state != BreakerState::Closed {
                not_closed_removed += 1;
            }
            !drop
        });
        if tracked.by_tenant.len() != before {
            tracked.not_closed = tracked.not_closed.saturating_sub(not_closed_removed);
            self.open_gauge.set(tracked.not_closed as f64);
            tracing::debug!(breaker = %self.name, forgotten = before - tracked.by_tenant.len(),
                "idle or excess tenant breakers forgotten");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> TenantBreakers {
        TenantBreakers::new("test", BreakerConfig::default(), TenantLimits::default())
    }

    fn fail(b: &TenantBreakers, tenant: &str, n: usize, at: Instant) {
        for _ in 0..n {
            b.record_failure(tenant, at);
        }
    }

    #[test]
    fn stays_closed_below_the_failure_threshold() {
        let b = breakers();
        let t = Instant::now();
        fail(&b, "a", 2, t);
        assert_eq!(b.state("a"), BreakerState::Closed);
        b.record_success("a", || t);
        fail(&b, "a", 2, t);
        assert_eq!(
            b.state("a"),
            BreakerState::Closed,
            "a success resets the count"
        );
        assert!(b.try_acquire("a", || t).is_ok());
    }

    #[test]
    fn opens_after_three_consecutive_failures_and_rejects_during_cooldown() {
        let b = breakers();
        let t = Instant::now();
        fail(&b, "a", 3, t);
        assert_eq!(b.state("a"), BreakerState::Open);
        assert_eq!(
            b.try_acquire("a", || t + Duration::from_secs(29)),
            Err(Rejected)
        );
    }

    #[test]
    fn half_opens_after_cooldown_with_three_probe_slots() {
        let b = breakers();
        let t = Instant::now();
        fail(&b, "a", 3, t);
        let later = t + Duration::from_secs(30);
        for _ in 0..3 {
            assert!(b.try_acquire("a", || later).is_ok());
        }
        assert_eq!(b.state("a"), BreakerState::HalfOpen);
        assert_eq!(
            b.try_acquire("a", || later),
            Err(Rejected),
            "probe slots are full"
        );
    }

    #[test]
    fn closes_after_two_probe_successes_and_is_then_forgotten() {
        let b = breakers();
        let t = Instant::now();
        fail(&b, "a", 3, t);
        let later = t + Duration::from_secs(31);
        b.try_acquire("a", || later).unwrap();
        b.record_success("a", || later);
        assert_eq!(b.state("a"), BreakerState::HalfOpen);
        b.try_acquire("a", || later).unwrap();
        b.record_success("a", || later);
        assert_eq!(b.state("a"), BreakerState::Closed);
        assert_eq!(b.tracked(), 0, "a healthy tenant takes no room");
    }

    #[test]
    fn a_probe_failure_reopens_for_a_new_cooldown() {
        let b = breakers();
        let t = Instant::now();
        fail(&b, "a", 3, t);
        let later = t + Duration::from_secs(30);
        b.try_acquire("a", || later).unwrap();
        b.record_failure("a", later);
        assert_eq!(b.state("a"), BreakerState::Open);
        assert_eq!(
            b.try_acquire("a", || later + Duration::from_secs(29)),
            Err(Rejected)
        );
        assert!(
            b.try_acquire("a", || later + Duration::from_secs(30))
                .is_ok()
        );
    }

    #[test]
    fn one_tenants_failures_open_only_its_own_breaker() {
        let b = breakers();
        let t = Instant::now();
        fail(&b, "acme", 10, t);
        assert_eq!(b.state("acme"), BreakerState::Open);
        assert_eq!(b.try_acquire("acme", || t), Err(Rejected));
        assert_eq!(b.state("beta"), BreakerState::Closed);
        assert!(b.try_acquire("beta", || t).is_ok());
        b.record_success("beta", || t);
        assert_eq!(b.tracked(), 1, "only the failing tenant is tracked");
        let (open, listed) = b.not_closed(10);
        assert_eq!(open, 1);
        assert_eq!(
            listed,
            [TenantBreaker {
                breaker: "test".into(),
                tenant: "acme".into(),
                state: BreakerState::Open
            }]
        );
        assert_eq!(b.worst(), BreakerState::Open);
    }

    #[test]
    fn an_untracked_tenant_is_answered_without_reading_the_clock() {
        let b = breakers();
        assert!(
            b.try_acquire("a", || unreachable!("no tenant is tracked"))
                .is_ok()
        );
        b.record_success("a", || unreachable!("no tenant is tracked"));
    }

    #[test]
    fn idle_tenants_are_forgotten() {
        let limits = TenantLimits {
            max_tenants: 100,
            idle_after: Duration::from_secs(60),
        };
        let b = TenantBreakers::new("test", BreakerConfig::default(), limits);
        let t = Instant::now();
        fail(&b, "once", 1, t);
        fail(&b, "opened", 3, t);
        assert_eq!(b.tracked(), 2);
        // The next failure after a quiet minute sweeps both: neither was touched since.
        fail(&b, "new", 1, t + Duration::from_secs(61));
        assert_eq!(b.tracked(), 1);
        assert_eq!(b.state("opened"), BreakerState::Closed, "forgotten");
        assert_eq!(b.not_closed(10).0, 0);
    }

    #[test]
    fn a_flood_of_failing_tenants_stays_within_the_cap() {
        let limits = TenantLimits {
            max_tenants: 64,
            idle_after: Duration::from_secs(3600),
        };
        let b = TenantBreakers::new("test", BreakerConfig::default(), limits);
        let t = Instant::now();
        // A tenant whose breaker opens midway outlives the flood of closed ones.
        for i in 0..1_000u64 {
            let at = t + Duration::from_millis(i);
            fail(&b, &format!("flood-{i}"), 1, at);
            assert!(b.tracked() <= 64, "{} tracked", b.tracked());
            if i == 500 {
                fail(&b, "victim", 3, at);
            }
            if i % 50 == 0 {
                b.record_failure("victim", at);
            }
        }
        assert_eq!(
            b.state("victim"),
            BreakerState::Open,
            "closed entries go first: the open breaker stays"
        );
        assert_eq!(b.not_closed(10).0, 1);
    }

    #[test]
    fn a_full_map_of_open_breakers_evicts_the_least_recently_touched() {
        let limits = TenantLimits {
            max_tenants: 8,
            idle_after: Duration::from_secs(3600),
        };
        let b = TenantBreakers::new("test", BreakerConfig::default(), limits);
        let t = Instant::now();
        for i in 0..8u64 {
            fail(&b, &format!("t{i}"), 3, t + Duration::from_secs(i));
        }
        assert_eq!(b.not_closed(100).0, 8);
        fail(&b, "late", 3, t + Duration::from_secs(100));
        assert!(b.tracked() <= 8);
        assert_eq!(b.state("t0"), BreakerState::Closed, "the oldest went");
        assert_eq!(b.state("t7"), BreakerState::Open, "the newest stayed");
        assert_eq!(b.state("late"), BreakerState::Open);
        assert_eq!(b.not_closed(100).0, b.tracked());
    }
}
