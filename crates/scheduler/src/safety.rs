//! The safety check (SPEC §5 step 2): a policy decides ALLOW, DENY, REQUIRE_HUMAN or THROTTLE for
//! a job against its *effective* config (resolved first, unlike the original). The evaluator sits
//! behind a circuit breaker per tenant: when it keeps failing or timing out for a tenant (its
//! `safety` config is malformed, say), the gate fails closed for that tenant only.
//!
//! The built-in policy reads the effective config's `safety` object:
//!
//! ```json
//! {"safety": {"allowed_topics": ["job.*"], "denied_topics": ["job.danger.*"],
//!             "require_human_topics": ["job.payout"], "throttle_topics": ["job.bulk.*"],
//!             "throttle_delay_ms": 1000}}
//! ```
//!
//! Patterns are globs. Deny wins over everything; a non-empty `allowed_topics` denies what it
//! does not match. Tenant-specific policy is the `org` scope's `safety` key — which cannot weaken
//! the system's: when a later scope replaced the system scope's `safety`, the system's policy is
//! checked too and the stricter answer stands (see [`SafetyGate::check`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use crate::breaker::{BreakerConfig, TenantBreakers, TenantLimits};
use crate::job::JobSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    RequireHuman,
    Throttle { delay_ms: u64 },
}

impl Decision {
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow => "ALLOW",
            Decision::Deny => "DENY",
            Decision::RequireHuman => "REQUIRE_HUMAN",
            Decision::Throttle { .. } => "THROTTLE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: String,
}

impl Verdict {
    fn new(decision: Decision, reason: impl Into<String>) -> Self {
        Verdict {
            decision,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

#[async_trait]
pub trait SafetyPolicy: Send + Sync {
    async fn evaluate(&self, job: &JobSpec, config: &Value) -> Result<Verdict, PolicyError>;
}

/// Topic allow/deny lists from config.
pub struct BuiltinPolicy;

const DEFAULT_THROTTLE_MS: u64 = 1_000;

fn patterns(safety: &Value, key: &str) -> Result<Vec<glob::Pattern>, PolicyError> {
    match safety.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| {
                let s = p.as_str().ok_or_else(|| {
                    PolicyError(format!("safety.{key} must hold glob strings only"))
                })?;
                glob::Pattern::new(s)
                    .map_err(|e| PolicyError(format!("safety.{key}: bad pattern `{s}`: {e}")))
            })
            .collect(),
        Some(_) => Err(PolicyError(format!(
            "safety.{key} must be an array of glob strings"
        ))),
    }
}

fn first_match<'a>(pats: &'a [glob::Pattern], topic: &str) -> Option<&'a glob::Pattern> {
    pats.iter().find(|p| p.matches(topic))
}

impl BuiltinPolicy {
    pub fn decide(job: &JobSpec, config: &Value) -> Result<Verdict, PolicyError> {
        let safety = match config.get("safety") {
            None | Some(Value::Null) => {
                return Ok(Verdict::new(Decision::Allow, "no safety policy"));
            }
            Some(s @ Value::Object(_)) => s,
            Some(_) => return Err(PolicyError("safety must be an object".into())),
        };
        let topic = job.topic.as_str();
        if let Some(p) = first_match(&patterns(safety, "denied_topics")?, topic) {
            return Ok(Verdict::new(
                Decision::Deny,
                format!("topic `{topic}` matches denied pattern `{p}`"),
            ));
        }
        let allowed = patterns(safety, "allowed_topics")?;
        if !allowed.is_empty() && first_match(&allowed, topic).is_none() {
            return Ok(Verdict::new(
                Decision::Deny,
                format!("topic `{topic}` matches no allowed pattern"),
            ));
        }
        if let Some(p) = first_match(&patterns(safety, "require_human_topics")?, topic) {
            return Ok(Verdict::new(
                Decision::RequireHuman,
                format!("topic `{topic}` matches `{p}`, which needs a human approval"),
            ));
        }
        if let Some(p) = first_match(&patterns(safety, "throttle_topics")?, topic) {
            let delay_ms = match safety.get("throttle_delay_ms") {
                None => DEFAULT_THROTTLE_MS,
                Some(v) => v.as_u64().ok_or_else(|| {
                    PolicyError("safety.throttle_delay_ms must be a whole number".into())
                })?,
            };
            return Ok(Verdict::new(
                Decision::Throttle { delay_ms },
                format!("topic `{topic}` matches throttled pattern `{p}`"),
            ));
        }
        Ok(Verdict::new(Decision::Allow, "allowed by policy"))
    }
}

#[async_trait]
impl SafetyPolicy for BuiltinPolicy {
    async fn evaluate(&self, job: &JobSpec, config: &Value) -> Result<Verdict, PolicyError> {
        BuiltinPolicy::decide(job, config)
    }
}

/// The policy behind a breaker per tenant and a per-call time limit.
pub struct SafetyGate {
    policy: Arc<dyn SafetyPolicy>,
    breakers: TenantBreakers,
    timeout: Duration,
}

impl SafetyGate {
    pub fn new(
        policy: Arc<dyn SafetyPolicy>,
        cfg: BreakerConfig,
        limits: TenantLimits,
        timeout: Duration,
    ) -> Self {
        SafetyGate {
            policy,
            breakers: TenantBreakers::new("safety", cfg, limits),
            timeout,
        }
    }

    pub fn breakers(&self) -> &TenantBreakers {
        &self.breakers
    }

    /// Always answers: a failing, slow or shut-off evaluator yields DENY (fail closed), for the
    /// job's tenant alone. `system` is the system scope's policy when a later scope replaced
    /// it: it is evaluated first, and the stricter of the two answers stands.
    pub async fn check(&self, job: &JobSpec, config: &Value, system: Option<&Value>) -> Verdict {
        let tenant = job.tenant_id.as_str();
        if self.breakers.try_acquire(tenant, Instant::now).is_err() {
            return Verdict::new(
                Decision::Deny,
                format!(
                    "circuit open: the safety policy of tenant `{tenant}` failed repeatedly, so \
                     its jobs are denied until a check succeeds again (fix its `safety` config)"
                ),
            );
        }
        let both = async {
            let first = match system {
                Some(s) => {
                    let v = self.policy.evaluate(job, s).await?;
                    if v.decision == Decision::Deny {
                        return Ok(v);
                    }
                    Some(v)
                }
                None => None,
            };
            let own = self.policy.evaluate(job, config).await?;
            Ok::<_, PolicyError>(match first {
                Some(f) => stricter(f, own),
                None => own,
            })
        };
        match tokio::time::timeout(self.timeout, both).await {
            Ok(Ok(v)) => {
                self.breakers.record_success(tenant, Instant::now);
                v
            }
            Ok(Err(e)) => {
                self.breakers.record_failure(tenant, Instant::now());
                Verdict::new(Decision::Deny, format!("safety policy failed: {e}"))
            }
            Err(_) => {
                self.breakers.record_failure(tenant, Instant::now());
                Verdict::new(
                    Decision::Deny,
                    format!("safety policy timed out after {:?}", self.timeout),
                )
            }
        }
    }
}

/// The stricter of two verdicts: DENY, then REQUIRE_HUMAN, then the longer THROTTLE, then ALLOW
/// (on a tie, the first).
fn stricter(a: Verdict, b: Verdict) -> Verdict {
    fn rank(d: &Decision) -> (u8, u64) {
        match d {
            Decision::Deny => (3, 0),
            Decision::RequireHuman => (2, 0),
            Decision::Throttle { delay_ms } => (1, *delay_ms),
            Decision::Allow => (0, 0),
        }
    }
    if rank(&b.decision) > rank(&a.decision) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use crate::job::JobRequest;
    use serde_json::json;

    fn job(topic: &str) -> JobSpec {
        JobSpec::accept(
            JobRequest {
                topic: topic.into(),
                ..Default::default()
            },
            0,
        )
    }

    #[test]
    fn no_policy_allows() {
        let v = BuiltinPolicy::decide(&job("a"), &json!({})).unwrap();
        assert_eq!(v.decision, Decision::Allow);
    }

    #[test]
    fn deny_beats_allow_and_names_the_pattern() {
        let cfg =
            json!({"safety": {"allowed_topics": ["job.*"], "denied_topics": ["job.danger.*"]}});
        let v = BuiltinPolicy::decide(&job("job.danger.rm"), &cfg).unwrap();
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.contains("job.danger.*"));
        assert_eq!(
            BuiltinPolicy::decide(&job("job.echo"), &cfg)
                .unwrap()
                .decision,
            Decision::Allow
        );
        assert_eq!(
            BuiltinPolicy::decide(&job("other"), &cfg).unwrap().decision,
            Decision::Deny
        );
    }

    #[test]
    fn human_and_throttle_rules() {
        let cfg = json!({"safety": {"require_human_topics": ["pay*"], "throttle_topics": ["bulk"],
                                    "throttle_delay_ms": 250}});
        assert_eq!(
            BuiltinPolicy::decide(&job("payout"), &cfg)
                .unwrap()
                .decision,
            Decision::RequireHuman
        );
        assert_eq!(
            BuiltinPolicy::decide(&job("bulk"), &cfg).unwrap().decision,
            Decision::Throttle { delay_ms: 250 }
        );
    }

    #[test]
    fn malformed_policy_is_an_error() {
        assert!(
            BuiltinPolicy::decide(&job("a"), &json!({"safety": {"denied_topics": "x"}})).is_err()
        );
        assert!(BuiltinPolicy::decide(&job("a"), &json!({"safety": 3})).is_err());
    }

    fn tenant_job(tenant: &str, topic: &str) -> JobSpec {
        JobSpec::accept(
            JobRequest {
                topic: topic.into(),
                tenant_id: Some(tenant.into()),
                ..Default::default()
            },
            0,
        )
    }

    fn gate(policy: Arc<dyn SafetyPolicy>, timeout: Duration) -> SafetyGate {
        SafetyGate::new(
            policy,
            BreakerConfig::default(),
            TenantLimits::default(),
            timeout,
        )
    }

    #[tokio::test]
    async fn a_failing_policy_fails_closed_for_its_tenant_only() {
        let gate = gate(Arc::new(BuiltinPolicy), Duration::from_millis(100));
        let bad = json!({"safety": {"denied_topics": 1}});
        for _ in 0..3 {
            let v = gate.check(&tenant_job("acme", "a"), &bad, None).await;
            assert_eq!(v.decision, Decision::Deny);
            assert!(v.reason.starts_with("safety policy failed"), "{}", v.reason);
        }
        assert_eq!(gate.breakers().state("acme"), BreakerState::Open);
        let v = gate.check(&tenant_job("acme", "a"), &json!({}), None).await;
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.starts_with("circuit open"), "{}", v.reason);
        assert!(v.reason.contains("`acme`"), "{}", v.reason);
        let v = gate.check(&tenant_job("beta", "a"), &json!({}), None).await;
        assert_eq!(
            v.decision,
            Decision::Allow,
            "another tenant is not affected"
        );
    }

    #[tokio::test]
    async fn the_system_policy_stands_under_a_tenants_own() {
        let gate = gate(Arc::new(BuiltinPolicy), Duration::from_millis(100));
        let system =
            json!({"safety": {"denied_topics": ["rm.*"], "require_human_topics": ["pay"]}});
        let tenant = json!({"safety": {"allowed_topics": ["*"], "throttle_topics": ["pay"]}});
        let check = |topic: &'static str| {
            let (gate, system, tenant) = (&gate, &system, &tenant);
            async move {
                gate.check(&tenant_job("acme", topic), tenant, Some(system))
                    .await
                    .decision
            }
        };
        assert_eq!(check("rm.all").await, Decision::Deny);
        assert_eq!(check("pay").await, Decision::RequireHuman);
        assert_eq!(check("other").await, Decision::Allow);
    }

    struct Slow;
    #[async_trait]
    impl SafetyPolicy for Slow {
        async fn evaluate(&self, _: &JobSpec, _: &Value) -> Result<Verdict, PolicyError> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Verdict::new(Decision::Allow, ""))
        }
    }

    #[tokio::test]
    async fn a_slow_policy_times_out_and_counts_as_failure() {
        let gate = gate(Arc::new(Slow), Duration::from_millis(20));
        let v = gate.check(&job("a"), &json!({}), None).await;
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.contains("timed out"));
    }
}
