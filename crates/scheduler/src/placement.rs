//! Where a job may go, before the strategy ranks anyone: the checks a job that came off the bus
//! must pass again, the pool it asks for (its `preferred_pool` label, else the effective
//! config's `pools.<topic>`), whether its tenant is granted that pool, the `placement.*` labels
//! a worker must match, and what the job waits for when no worker takes it. Pure: the
//! scheduler gathers the effective config and the live workers, this decides.

use crate::configsvc::schema::{PREFERRED_POOL_LABEL, Tenancy};
use crate::job::{JobError, JobSpec, env_refusal};
use crate::time::Millis;

use super::registry::Placement;

/// Why a job cannot be scheduled at all, checked again on every attempt: a job read off the
/// bus or the store, or one whose deadline has passed while it waited, fails here.
pub fn refusal(spec: &JobSpec, now: Millis) -> Option<JobError> {
    if spec.id.is_empty() || spec.topic.is_empty() {
        return Some(JobError::new(
            "invalid_job",
            "a job needs an id and a topic",
        ));
    }
    if spec.deadline.is_some_and(|d| d <= now) {
        return Some(JobError::new(
            "deadline_exceeded",
            "the deadline passed before dispatch",
        ));
    }
    let name = spec.env.keys().find(|k| env_refusal(k).is_some())?;
    Some(JobError::new(
        "invalid_job",
        format!("the job's env sets `{name}`, which is on the env deny list"),
    ))
}

/// The workers a job may go to: a [`Placement`] borrowing from the job, the pool it chose and
/// the tenancy it was checked against.
#[derive(Debug)]
pub struct Target<'a> {
    pub placement: Placement<'a>,
    spec: &'a JobSpec,
}

impl<'a> Target<'a> {
    /// The placement of `spec` under the effective config `effective` and the tenancy policy;
    /// `pool_not_allowed` when the job asks for a pool its tenant is not granted (checked at
    /// submit and at config writes too, but the grants may have changed since).
    pub fn of(
        spec: &'a JobSpec,
        effective: &'a serde_json::Value,
        tenancy: &'a Tenancy,
    ) -> Result<Target<'a>, JobError> {
        let pool = spec
            .labels
            .get(PREFERRED_POOL_LABEL)
            .map(String::as_str)
            .or_else(|| effective.get("pools")?.get(spec.topic.as_str())?.as_str());
        if let Some(p) = pool
            && !tenancy.may_use_pool(&spec.tenant_id, p)
        {
            let refusal = tenancy.pool_refusal(&spec.tenant_id, p);
            return Err(JobError::new("pool_not_allowed", refusal));
        }
        Ok(Target {
            placement: Placement {
                topic: &spec.topic,
                pool,
                allowed_pools: tenancy.allowed_pools(&spec.tenant_id),
                required_labels: spec
                    .labels
                    .iter()
                    .filter(|(k, _)| k.starts_with("placement."))
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                preferred_worker: spec.labels.get("preferred_worker_id").map(String::as_str),
            },
            spec,
        })
    }

    /// What the job waits for when the strategy found no worker (`why`), as its `reason`.
    pub fn waiting_reason(&self, why: &str) -> String {
        match (self.placement.pool, self.placement.allowed_pools) {
            (Some(p), _) => format!("waiting for capacity in pool `{p}`: {why}"),
            (None, Some(granted)) => format!(
                "waiting for capacity for topic `{}` in the pools granted to `{}` ({}): {why}",
                self.spec.topic,
                self.spec.tenant_id,
                granted.join(", ")
            ),
            (None, None) => {
                format!(
                    "waiting for capacity for topic `{}`: {why}",
                    self.spec.topic
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::job::JobRequest;

    fn spec(req: serde_json::Value) -> JobSpec {
        let req: JobRequest = serde_json::from_value(req).unwrap();
        JobSpec::accept(req, 1_000)
    }

    fn tenancy(policy: serde_json::Value) -> Tenancy {
        Tenancy::from_system(Some(&json!({ "tenancy": policy })))
    }

    #[test]
    fn a_job_off_the_bus_is_checked_again() {
        let ok = spec(json!({"topic": "t"}));
        assert_eq!(refusal(&ok, 1_000), None);
        let mut nameless = ok.clone();
        nameless.topic.clear();
        assert_eq!(refusal(&nameless, 1_000).unwrap().code, "invalid_job");
        let late = spec(json!({"topic": "t", "deadline_ms": 50}));
        assert_eq!(refusal(&late, 1_049), None);
        assert_eq!(refusal(&late, 1_050).unwrap().code, "deadline_exceeded");
        let mut sneaky = ok;
        sneaky.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        let err = refusal(&sneaky, 1_000).unwrap();
        assert!(err.message.contains("LD_PRELOAD"), "{err:?}");
    }

    #[test]
    fn the_label_wins_over_the_config_and_placement_labels_are_required() {
        let s = spec(json!({"topic": "t", "labels": {
            "preferred_pool": "gpu", "placement.zone": "eu", "other": "x",
            "preferred_worker_id": "w-7"}}));
        let config = json!({"pools": {"t": "cpu"}});
        let open = Tenancy::default();
        let t = Target::of(&s, &config, &open).unwrap();
        assert_eq!(t.placement.pool, Some("gpu"));
        assert_eq!(t.placement.required_labels, [("placement.zone", "eu")]);
        assert_eq!(t.placement.preferred_worker, Some("w-7"));
        assert_eq!(t.placement.allowed_pools, None);

        let plain = spec(json!({"topic": "t"}));
        let t = Target::of(&plain, &config, &open).unwrap();
        assert_eq!(
            t.placement.pool,
            Some("cpu"),
            "the topic's pool from the config"
        );
        assert_eq!(
            t.waiting_reason("no worker"),
            "waiting for capacity in pool `cpu`: no worker"
        );
    }

    #[test]
    fn a_pool_the_tenant_is_not_granted_is_refused() {
        let s = spec(json!({"topic": "t", "tenant_id": "acme",
                            "labels": {"preferred_pool": "gpu"}}));
        let policy = tenancy(json!({"pools": {"acme": ["cpu"]}}));
        let err = Target::of(&s, &json!({}), &policy).unwrap_err();
        assert_eq!(err.code, "pool_not_allowed");
        assert!(
            err.message.contains("gpu") && err.message.contains("acme"),
            "{err:?}"
        );

        // Without a pool, the job may go to any granted one, and says so while it waits.
        let s = spec(json!({"topic": "t", "tenant_id": "acme"}));
        let none = json!({});
        let t = Target::of(&s, &none, &policy).unwrap();
        assert_eq!(t.placement.allowed_pools, Some(&["cpu".to_string()][..]));
        assert_eq!(
            t.waiting_reason("busy"),
            "waiting for capacity for topic `t` in the pools granted to `acme` (cpu): busy"
        );
        let open = Tenancy::default();
        let t = Target::of(&s, &none, &open).unwrap();
        assert_eq!(
            t.waiting_reason("busy"),
            "waiting for capacity for topic `t`: busy"
        );
    }
}
