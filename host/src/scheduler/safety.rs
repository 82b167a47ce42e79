//! The safety check (SPEC §5 step 2): a policy decides ALLOW, DENY, REQUIRE_HUMAN or THROTTLE for
//! a job against its *effective* config (resolved first, unlike the original). The evaluator sits
//! behind a circuit breaker: when it keeps failing or timing out, the gate fails closed.
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
//! does not match. Tenant-specific policy is the `org` scope's `safety` key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use crate::breaker::{BreakerConfig, CircuitBreaker};
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
                let s = p
                    .as_str()
                    .ok_or_else(|| PolicyError(format!("safety.{key} holds a non-string")))?;
                glob::Pattern::new(s)
                    .map_err(|e| PolicyError(format!("safety.{key}: bad pattern `{s}`: {e}")))
            })
            .collect(),
        Some(_) => Err(PolicyError(format!("safety.{key} must be an array"))),
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

/// The policy behind its breaker and a per-call time limit.
pub struct SafetyGate {
    policy: Arc<dyn SafetyPolicy>,
    breaker: CircuitBreaker,
    timeout: Duration,
}

impl SafetyGate {
    pub fn new(policy: Arc<dyn SafetyPolicy>, cfg: BreakerConfig, timeout: Duration) -> Self {
        SafetyGate {
            policy,
            breaker: CircuitBreaker::new("safety", cfg),
            timeout,
        }
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Always answers: a failing, slow or shut-off evaluator yields DENY (fail closed).
    pub async fn check(&self, job: &JobSpec, config: &Value) -> Verdict {
        if self.breaker.try_acquire(Instant::now()).is_err() {
            return Verdict::new(Decision::Deny, "circuit open");
        }
        match tokio::time::timeout(self.timeout, self.policy.evaluate(job, config)).await {
            Ok(Ok(v)) => {
                self.breaker.record_success();
                v
            }
            Ok(Err(e)) => {
                self.breaker.record_failure(Instant::now());
                Verdict::new(Decision::Deny, format!("safety policy failed: {e}"))
            }
            Err(_) => {
                self.breaker.record_failure(Instant::now());
                Verdict::new(
                    Decision::Deny,
                    format!("safety policy timed out after {:?}", self.timeout),
                )
            }
        }
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

    #[tokio::test]
    async fn failing_policy_fails_closed_and_opens_the_breaker() {
        let gate = SafetyGate::new(
            Arc::new(BuiltinPolicy),
            BreakerConfig::default(),
            Duration::from_millis(100),
        );
        let bad = json!({"safety": {"denied_topics": 1}});
        for _ in 0..3 {
            let v = gate.check(&job("a"), &bad).await;
            assert_eq!(v.decision, Decision::Deny);
            assert!(v.reason.starts_with("safety policy failed"));
        }
        assert_eq!(gate.breaker().state(), BreakerState::Open);
        let v = gate.check(&job("a"), &json!({})).await;
        assert_eq!(v, Verdict::new(Decision::Deny, "circuit open"));
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
        let gate = SafetyGate::new(
            Arc::new(Slow),
            BreakerConfig::default(),
            Duration::from_millis(20),
        );
        let v = gate.check(&job("a"), &json!({})).await;
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.contains("timed out"));
    }
}
