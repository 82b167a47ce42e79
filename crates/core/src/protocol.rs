//! The JSON messages that cross NATS (SPEC §4): one kind per subject, each carrying `"v": 1`
//! and its `"kind"`. Unknown fields are ignored so the protocol can grow; workers in any
//! language need only these shapes. Plain data, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{EFFECTIVE_CONFIG_ENV, JobError, JobSpec, Priority};
use crate::limits::JsonMeasure;
use crate::time::{self, Millis};

pub const VERSION: u8 = 1;

/// The capability a worker lists in its heartbeats to receive jobs in batches.
pub const BATCH_CAPABILITY: &str = "batch";

fn v1() -> u8 {
    VERSION
}

/// `sys.job.submit`: asks the schedulers to schedule a stored job (no host publishes it any
/// more: a replica schedules what it accepts itself). The host reads the job back from the store
/// and schedules what it stored: the message's spec and clearance decide nothing (see
/// [`crate::bus::auth`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "submit")]
pub struct SubmitMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job: JobSpec,
    /// A clearance claimed on the bus: refused (counted), never honoured.
    #[serde(default, skip_serializing_if = "Clearance::is_none")]
    pub clearance: Clearance,
}

/// A safety decision that has already been made for a job being re-submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clearance {
    /// Check as usual.
    #[default]
    None,
    /// A human approved it after REQUIRE_HUMAN.
    Approved,
    /// It was throttled and has waited its delay.
    Throttled,
}

impl Clearance {
    pub fn is_none(&self) -> bool {
        *self == Clearance::None
    }

    /// What a stored job has earned: a human's approval is written on it
    /// (`safety_decision` APPROVED) before it is scheduled again.
    pub fn of_stored(job: &crate::job::Job) -> Clearance {
        if job.safety_decision.as_deref() == Some("APPROVED") {
            Clearance::Approved
        } else {
            Clearance::None
        }
    }
}

/// `worker.<id>.jobs`: a job handed to one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "job")]
pub struct JobMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job_id: String,
    pub trace_id: String,
    pub topic: String,
    pub attempt: u32,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::rfc3339_opt"
    )]
    pub deadline_at: Option<Millis>,
    /// The dispatch's lease (see [`crate::bus::auth`]): the worker echoes it, unchanged, in its
    /// `started` and result for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl JobMsg {
    /// The message that hands `spec` to a worker, with its effective config (as JSON) in the
    /// env, where SPEC §8 puts it, and no lease yet.
    pub fn new(spec: &JobSpec, effective_json: &str) -> JobMsg {
        let mut env = spec.env.clone();
        env.insert(EFFECTIVE_CONFIG_ENV.to_string(), effective_json.to_string());
        JobMsg {
            v: VERSION,
            job_id: spec.id.clone(),
            trace_id: spec.trace_id.clone(),
            topic: spec.topic.clone(),
            attempt: spec.attempt,
            payload: spec.payload.clone(),
            env,
            labels: spec.labels.clone(),
            priority: spec.priority,
            deadline_at: spec.deadline,
            lease: None,
        }
    }

    /// Its size as JSON, in bytes, without keeping the text.
    pub fn encoded_len(&self) -> usize {
        JsonMeasure::of_value(self).bytes
    }
}

/// `sys.job.started`: a worker began a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "started")]
pub struct StartedMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job_id: String,
    pub worker_id: String,
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
    /// The lease of the job's message, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `sys.job.progress`: a worker is still working on a job (sent every few seconds while it
/// runs; as Temporal's activity heartbeat). A job submitted with `heartbeat_timeout_sec` fails
/// `heartbeat_timeout` once none has come for that long. Not kept: a lost one is made good by
/// the next.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "progress")]
pub struct ProgressMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job_id: String,
    pub worker_id: String,
    #[serde(default = "one")]
    pub attempt: u32,
    /// The lease of the job's message, echoed: progress without it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Anything the worker wants to say about how far it got (at most
    /// [`MAX_PROGRESS_DETAILS_BYTES`] as JSON; the host logs it at debug and keeps nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// The largest `details` a [`ProgressMsg`] may carry, as JSON.
pub const MAX_PROGRESS_DETAILS_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Succeeded,
    Failed,
    Cancelled,
    Timeout,
}

/// `sys.job.result`: how a job ended on its worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "result")]
pub struct ResultMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job_id: String,
    pub worker_id: String,
    pub status: ResultStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default)]
    pub execution_ms: u64,
    /// When the job started, for a worker that sends no `started` for a job that finished
    /// quickly: the host records RUNNING at this time on the way to the outcome.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::rfc3339_opt"
    )]
    pub started_at: Option<Millis>,
    /// The lease of the job's message, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// Several messages of one kind in one envelope, `{"v":1,"kind":K,"K":[…]}` (see
/// the host's `bus::Outbox`): jobs on `worker.<id>.batch`, results on `sys.job.results`, job
/// events on `sys.job.events.batch`.
#[derive(Debug, Clone, Deserialize)]
pub struct Batch<T> {
    #[serde(default = "v1")]
    pub v: u8,
    #[serde(alias = "jobs", alias = "results", alias = "job_events")]
    pub items: Vec<T>,
}

/// `sys.heartbeat`: a worker's liveness and load, seen by every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "heartbeat")]
pub struct HeartbeatMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub worker_id: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub active_jobs: u32,
    #[serde(default = "one")]
    pub max_parallel: u32,
    /// Percent, 0–100 (and above on a saturated host).
    #[serde(default)]
    pub cpu_load: f64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// This run of the worker process (a fresh id at each start): a worker restarted under the
    /// same `worker_id` announces a new instance, and the jobs the old one held are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The worker is stopping: it takes no new job (one sent anyway is handed back) and
    /// finishes those it runs. Hosts send it nothing more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The pass the hosts sent this instance on `worker.<id>.pass` ([`PassMsg`]), echoed:
    /// hosts count a heartbeat only with it, so a heartbeat under another worker's id, or
    /// under an id nobody reads, registers no worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
}

/// `worker.<id>.pass`: the hosts' answer to a heartbeat that carries no valid pass. Only the
/// worker itself reads its subject (NATS permissions), so echoing the pass in its heartbeats
/// proves it is the worker it says, in the run (`instance`) it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "pass")]
pub struct PassMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub worker_id: String,
    /// The instance the pass is for: a worker ignores a pass for another run of itself.
    #[serde(default)]
    pub instance: String,
    pub pass: String,
}

fn one() -> u32 {
    1
}

/// `sys.job.cancel`: stop a job wherever it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "cancel")]
pub struct CancelMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job_id: String,
    #[serde(default)]
    pub reason: String,
}

/// `sys.job.events`: a job reached a terminal state (the completion feed behind
/// `GET /api/v1/stream` and `coretex loadgen`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "job_event")]
pub struct JobEventMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub job_id: String,
    pub state: crate::job::JobState,
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
    /// The workflow run the job is a step of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The job's tenant: a tenant key's live stream shows only its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The `serve` replica that recorded the transition: it has handed the event to its own
    /// live-stream clients already, and skips it when the bus brings it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// `sys.config.changed`: a config scope changed; replicas drop their cached effective configs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "config_changed")]
pub struct ConfigChangedMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub scope: String,
}

/// `sys.plugins.changed`: a plugin was uploaded or deleted; replicas load the store's plugins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "plugins_changed")]
pub struct PluginsChangedMsg {
    #[serde(default = "v1")]
    pub v: u8,
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_version_and_kind() {
        let m = CancelMsg {
            v: VERSION,
            job_id: "j1".into(),
            reason: "user".into(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], "cancel");
    }

    #[test]
    fn a_foreign_worker_result_parses_with_unknown_fields() {
        let raw = r#"{"v":1,"kind":"result","job_id":"j","worker_id":"w","status":"failed",
                      "error":{"code":"E","message":"boom"},"execution_ms":3,"extra":true}"#;
        let m: ResultMsg = serde_json::from_str(raw).unwrap();
        assert_eq!(m.status, ResultStatus::Failed);
        assert_eq!(m.error.unwrap().code, "E");
    }

    #[test]
    fn a_batch_of_results_parses_with_started_at() {
        let raw = r#"{"v":1,"kind":"results","results":[
            {"v":1,"kind":"result","job_id":"a","worker_id":"w","status":"succeeded",
             "started_at":"2026-01-01T00:00:00.000Z","execution_ms":0},
            {"v":1,"kind":"result","job_id":"b","worker_id":"w","status":"failed"}]}"#;
        let b: Batch<ResultMsg> = serde_json::from_str(raw).unwrap();
        assert_eq!(b.items.len(), 2);
        assert!(b.items[0].started_at.is_some());
        assert!(b.items[1].started_at.is_none());
    }

    #[test]
    fn a_job_message_measures_what_it_serializes_to() {
        let req: crate::job::JobRequest = serde_json::from_value(serde_json::json!({
            "topic": "t", "payload": {"s": "é\"\u{1}", "n": [1, 2.5]},
            "env": {"A": "a\nb"}, "labels": {"l": "v"}, "deadline_ms": 5}))
        .unwrap();
        let msg = JobMsg::new(&JobSpec::accept(req, 1_000), r#"{"k":"v"}"#);
        assert_eq!(msg.encoded_len(), serde_json::to_vec(&msg).unwrap().len());
        assert_eq!(msg.env[EFFECTIVE_CONFIG_ENV], r#"{"k":"v"}"#);
    }

    #[test]
    fn a_minimal_heartbeat_parses() {
        let m: HeartbeatMsg =
            serde_json::from_str(r#"{"kind":"heartbeat","worker_id":"w1"}"#).unwrap();
        assert_eq!(m.max_parallel, 1);
        assert_eq!(m.v, 1);
    }
}
