//! The job model: states, the one transition table, the submitted request and its validation,
//! and the stored record. Plain data and pure functions; nothing here does I/O.
//!
//! Every other module (the Lua scripts of the Redis store included, which are generated from
//! [`TRANSITIONS`]) takes the legal moves from this file, so the table exists exactly once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids;
use crate::limits::{
    JsonMeasure, MAX_DEADLINE_MS, MAX_ENV_BYTES, MAX_ENV_VALUE_BYTES, MAX_ENV_VARS, MAX_ID_LEN,
    MAX_JSON_DEPTH, MAX_LABEL_VALUE_BYTES, MAX_LABELS, MAX_PAYLOAD_BYTES, MAX_TIMEOUT_SEC,
};
use crate::time::{self, Millis};

/// The life of a job. The last five are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Scheduled,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Timeout,
    Denied,
}

use JobState::*;

/// The legal moves (SPEC §3). A same-state move is a no-op and is not listed; a job enters the
/// system as PENDING.
pub const TRANSITIONS: &[(JobState, &[JobState])] = &[
    (
        Pending,
        &[Scheduled, Dispatched, Denied, Failed, Timeout, Cancelled],
    ),
    (Scheduled, &[Dispatched, Denied, Failed, Timeout, Cancelled]),
    (
        Dispatched,
        &[Running, Succeeded, Failed, Cancelled, Timeout],
    ),
    (Running, &[Succeeded, Failed, Cancelled, Timeout]),
];

impl JobState {
    pub const ALL: [JobState; 9] = [
        Pending, Scheduled, Dispatched, Running, Succeeded, Failed, Cancelled, Timeout, Denied,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Pending => "PENDING",
            Scheduled => "SCHEDULED",
            Dispatched => "DISPATCHED",
            Running => "RUNNING",
            Succeeded => "SUCCEEDED",
            Failed => "FAILED",
            Cancelled => "CANCELLED",
            Timeout => "TIMEOUT",
            Denied => "DENIED",
        }
    }

    pub const fn is_terminal(self) -> bool {
        matches!(self, Succeeded | Failed | Cancelled | Timeout | Denied)
    }

    /// Whether `self → to` is a real move of the table. Same-state is not a move (it is a no-op,
    /// which callers treat separately).
    pub fn can_transition_to(self, to: JobState) -> bool {
        TRANSITIONS
            .iter()
            .find(|(from, _)| *from == self)
            .is_some_and(|(_, tos)| tos.contains(&to))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
    Critical,
}

impl Priority {
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
            Priority::Critical => "critical",
        }
    }
}

/// What a client submits (`POST /api/v1/jobs`). Everything but `topic` is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub topic: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Time budget in milliseconds from acceptance; the job fails or times out past it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub deadline_ms: Option<u64>,
    /// Seconds the job may run without its worker sending `progress`: past it the job fails
    /// `heartbeat_timeout` and goes through the retry policy (none: no such check).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub heartbeat_timeout_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
}

/// Limits applied when validating a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: MAX_PAYLOAD_BYTES,
        }
    }
}

/// One invalid field, named as the client spelled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Errors as one line: `field: message; field: message`.
    pub fn describe(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The env key the scheduler fills with the effective config; clients may not set it.
pub const EFFECTIVE_CONFIG_ENV: &str = "CORETEX_EFFECTIVE_CONFIG";

/// Env names a job may not set (compared ignoring case), because they change what the worker's
/// `sh -c` and the programs it starts load or run, rather than passing data: the dynamic loader
/// (`LD_*`, `DYLD_*`), the search path, shell start-up and parsing, glibc's module and tunable
/// paths, and the code-injection hooks of common interpreters. `CORETEX_*` is the host's and
/// the worker's own. Refused at submit (422 naming `env.<NAME>`) and again by the `--exec`
/// worker, which trusts no message on the bus.
pub const DENIED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_", "CORETEX_", "BASH_FUNC_", "MALLOC_"];
pub const DENIED_ENV_NAMES: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "GLOBIGNORE",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
];

/// Why a job's env may not set `name`; `None` when it may.
pub fn env_refusal(name: &str) -> Option<&'static str> {
    let starts_with = |prefix: &str| {
        name.as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    if starts_with("CORETEX_") {
        Some("is set by the scheduler or the worker and may not be submitted")
    } else if DENIED_ENV_NAMES
        .iter()
        .any(|d| d.eq_ignore_ascii_case(name))
        || DENIED_ENV_PREFIXES.iter().any(|p| starts_with(p))
    {
        Some("changes what the worker's shell loads or runs; it is on the env deny list")
    } else {
        None
    }
}

/// An identifier a job, tenant, topic or trace may carry: 1–128 of `[A-Za-z0-9._:-]`. Kept
/// narrow because ids become parts of Redis keys and NATS-safe tokens.
pub fn check_ident(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    if value.is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.len() > MAX_ID_LEN {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        errors.push(FieldError::new(
            field,
            "may hold only letters, digits, '.', '_', '-' and ':'",
        ));
    }
}

fn check_opt_ident(field: &str, value: &Option<String>, errors: &mut Vec<FieldError>) {
    if let Some(v) = value {
        check_ident(field, v, errors);
    }
}

/// Labels (a job's, or a step's `route_labels`): at most [`MAX_LABELS`], keys 1–128
/// characters, values at most [`MAX_LABEL_VALUE_BYTES`].
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if labels.len() > MAX_LABELS {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_ID_LEN {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                format!("label keys are 1–{MAX_ID_LEN} characters"),
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                format!("label values are at most {MAX_LABEL_VALUE_BYTES} bytes"),
            ));
        }
    }
}

impl JobRequest {
    /// Every problem with the request, each naming its field. Empty means valid.
    pub fn validate(&self, limits: &Limits) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_ident("topic", &self.topic, &mut errors);
        check_opt_ident("id", &self.id, &mut errors);
        check_opt_ident("tenant_id", &self.tenant_id, &mut errors);
        check_opt_ident("team_id", &self.team_id, &mut errors);
        check_opt_ident("principal_id", &self.principal_id, &mut errors);
        check_opt_ident("trace_id", &self.trace_id, &mut errors);
        check_opt_ident("workflow_id", &self.workflow_id, &mut errors);
        check_opt_ident("run_id", &self.run_id, &mut errors);
        check_opt_ident("step_id", &self.step_id, &mut errors);
        // Over the bus a payload can be deeper than a body allows (a workflow template builds
        // it): the same depth limit, so its records read back.
        let payload = JsonMeasure::of_value(&self.payload);
        if payload.bytes > limits.max_payload_bytes {
            errors.push(FieldError::new(
                "payload",
                format!(
                    "is {} bytes; the limit is {}",
                    payload.bytes, limits.max_payload_bytes
                ),
            ));
        }
        if payload.depth > MAX_JSON_DEPTH {
            errors.push(FieldError::new(
                "payload",
                crate::limits::too_deep(payload.depth),
            ));
        }
        check_labels("labels", &self.labels, &mut errors);
        if self.env.len() > MAX_ENV_VARS {
            errors.push(FieldError::new(
                "env",
                format!("at most {MAX_ENV_VARS} variables"),
            ));
        }
        let mut env_bytes = 0;
        for (k, v) in &self.env {
            env_bytes += k.len() + v.len();
            let valid_name = !k.is_empty()
                && k.len() <= MAX_ID_LEN
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                errors.push(FieldError::new(
                    format!("env.{k}"),
                    "names are letters, digits and '_', not starting with a digit",
                ));
            } else if let Some(why) = env_refusal(k) {
                errors.push(FieldError::new(format!("env.{k}"), why));
            }
            if v.len() > MAX_ENV_VALUE_BYTES {
                errors.push(FieldError::new(
                    format!("env.{k}"),
                    format!("values are at most {MAX_ENV_VALUE_BYTES} bytes"),
                ));
            }
        }
        if env_bytes > MAX_ENV_BYTES {
            errors.push(FieldError::new(
                "env",
                format!("names and values are {env_bytes} bytes; the limit is {MAX_ENV_BYTES}"),
            ));
        }
        if let Some(d) = self.deadline_ms
            && (d == 0 || d > MAX_DEADLINE_MS)
        {
            errors.push(FieldError::new(
                "deadline_ms",
                format!("must be between 1 and {MAX_DEADLINE_MS}"),
            ));
        }
        if let Some(t) = self.heartbeat_timeout_sec
            && (t == 0 || t > MAX_TIMEOUT_SEC)
        {
            errors.push(FieldError::new(
                "heartbeat_timeout_sec",
                format!("must be between 1 and {MAX_TIMEOUT_SEC}"),
            ));
        }
        errors
    }
}

/// The immutable part of a job, fixed at acceptance. Stored once, carried whole in the submit
/// message (so the scheduler never reads the store to schedule) and in DLQ entries (so a retry
/// replays it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub topic: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub priority: Priority,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// See [`JobRequest::heartbeat_timeout_sec`]; kept by every retry of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_sec: Option<u64>,
    /// Absolute deadline (acceptance + `deadline_ms`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::rfc3339_opt"
    )]
    pub deadline: Option<Millis>,
    pub trace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The job this one replays (DLQ retry) or retries (retry policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    #[serde(default = "one")]
    pub attempt: u32,
    /// Not to be dispatched before this time (a retry's back-off).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::rfc3339_opt"
    )]
    pub not_before: Option<Millis>,
    #[serde(with = "time::rfc3339")]
    pub created_at: Millis,
}

fn one() -> u32 {
    1
}

impl JobSpec {
    /// The spec of a newly accepted, already validated request: its ids (the job's, its trace's,
    /// its workflow's and run's) qualified by its tenant (see [`crate::ids`]).
    pub fn accept(req: JobRequest, now: Millis) -> JobSpec {
        let tenant = req
            .tenant_id
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string());
        let ours = |local: &String| ids::qualify(&tenant, local);
        let id = ours(&req.id.clone().unwrap_or_else(new_id));
        // A job that starts a trace names it after itself (the store needs no trace index
        // entry for it: see `store::redis`).
        let trace_id = req.trace_id.as_ref().map_or_else(|| id.clone(), ours);
        let workflow_id = req.workflow_id.as_ref().map(ours);
        let run_id = req.run_id.as_ref().map(ours);
        JobSpec {
            id,
            trace_id,
            workflow_id,
            run_id,
            tenant_id: tenant,
            ..JobSpec::of(req, now)
        }
    }

    /// The spec of a workflow step's job, whose ids the engine gives whole: `ids` are taken as
    /// they are, the request's own id fields are ignored.
    pub fn accept_step(req: JobRequest, ids: StepJobIds, now: Millis) -> JobSpec {
        JobSpec {
            id: ids.job_id,
            trace_id: ids.run_id.clone(),
            workflow_id: Some(ids.workflow_id),
            run_id: Some(ids.run_id),
            step_id: Some(ids.step_id),
            tenant_id: req
                .tenant_id
                .clone()
                .unwrap_or_else(|| DEFAULT_TENANT.to_string()),
            ..JobSpec::of(req, now)
        }
    }

    /// Everything of the request but its ids and tenant, which the two `accept`s fill in.
    fn of(req: JobRequest, now: Millis) -> JobSpec {
        JobSpec {
            deadline: req.deadline_ms.map(|d| now + d as i64),
            id: String::new(),
            topic: req.topic,
            payload: req.payload,
            priority: req.priority,
            tenant_id: String::new(),
            team_id: req.team_id,
            principal_id: req.principal_id,
            labels: req.labels,
            env: req.env,
            deadline_ms: req.deadline_ms,
            heartbeat_timeout_sec: req.heartbeat_timeout_sec,
            trace_id: String::new(),
            workflow_id: None,
            run_id: None,
            step_id: req.step_id,
            retry_of: None,
            attempt: 1,
            not_before: None,
            created_at: now,
        }
    }
}

/// The ids of a workflow step's job, chosen by the engine (see [`crate::ids`]): the job's is
/// derived from the run's, so no client can have taken it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepJobIds {
    pub job_id: String,
    pub workflow_id: String,
    /// Also the job's trace: a run's jobs are one trace.
    pub run_id: String,
    pub step_id: String,
}

pub const DEFAULT_TENANT: &str = "default";

/// `#[serde(deserialize_with = "whole::opt")]` (or `whole::num`) for a count or a duration: a
/// whole number, written `5` or `5.0` — JSON Schema's `integer` admits both, and so do the
/// clients that write every number with a fraction. A fraction or a number out of the type's
/// range is an error naming the field.
pub mod whole {
    use serde::de::{Deserialize, Deserializer, Error};

    pub fn num<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let whole = n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        });
        whole
            .and_then(|w| T::try_from(w).ok())
            .ok_or_else(|| D::Error::custom(format!("`{n}` is not a whole number in range")))
    }

    pub fn opt<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Num(#[serde(deserialize_with = "num")] u64);
        Option::<Num>::deserialize(d)?
            .map(|Num(w)| T::try_from(w).map_err(|_| D::Error::custom("out of range")))
            .transpose()
    }
}

/// A fresh, time-ordered identifier: a UUID v7 (milliseconds, then random bits) written in 26
/// characters of Crockford's base 32, lowercase, which sort as the UUIDs do. (The 36 of its
/// hex form were in every key and index entry of a job's: the id's length is Redis memory per
/// retained job.)
pub fn new_id() -> String {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut v = uuid::Uuid::now_v7().as_u128();
    let mut out = [0u8; 26];
    for c in out.iter_mut().rev() {
        // (Five bits index 32 digits: `get` always finds one.)
        *c = DIGITS.get((v & 31) as usize).copied().unwrap_or(b'0');
        v >>= 5;
    }
    out.iter().map(|&c| char::from(c)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// The error code of a job whose worker was lost (silent past its TTL, or restarted) while it
/// held the job.
pub const WORKER_LOST: &str = "worker_lost";
/// The error code of a job whose worker sent no `progress` within its `heartbeat_timeout_sec`.
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";

/// The error code of a job a stopping worker handed back: one that came after its drain began,
/// or was still running when the drain's grace ran out. It goes through the retry policy like
/// any failure, so it runs again on another worker.
pub const WORKER_DRAINED: &str = "worker_drained";

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// One entry of a job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A stored job: its spec plus everything that changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    #[serde(flatten)]
    pub spec: JobSpec,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The run of the worker process the job was given to (see `HeartbeatMsg::instance`), while
    /// the job is live: how the reconciler tells a restarted worker's jobs. A finished job's
    /// record keeps its `worker_id` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_reason: Option<String>,
    /// Why the job is where it is (e.g. waiting for capacity), when that is worth saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_ms: Option<u64>,
    /// The effective config (SPEC §8) the job was dispatched with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_config: Option<Value>,
    /// The lease of its dispatch (see [`crate::bus::auth`]). Never shown: whoever holds it can
    /// report on the job as its worker.
    #[serde(skip)]
    pub lease: Option<String>,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Millis,
    #[serde(default)]
    pub history: Vec<JobEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_short_distinct_and_sort_by_time() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert_eq!((a.len(), b.len()), (26, 26));
        assert!(a < b, "{a} sorts before {b}, made later");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(many.len(), 10_000);
    }

    fn legal_pairs() -> Vec<(JobState, JobState)> {
        vec![
            (Pending, Scheduled),
            (Pending, Dispatched),
            (Pending, Denied),
            (Pending, Failed),
            (Pending, Timeout),
            (Pending, Cancelled),
            (Scheduled, Dispatched),
            (Scheduled, Denied),
            (Scheduled, Failed),
            (Scheduled, Timeout),
            (Scheduled, Cancelled),
            (Dispatched, Running),
            (Dispatched, Succeeded),
            (Dispatched, Failed),
            (Dispatched, Cancelled),
            (Dispatched, Timeout),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Timeout),
        ]
    }

    #[test]
    fn every_pair_of_states_is_legal_exactly_when_spec_lists_it() {
        let legal = legal_pairs();
        for from in JobState::ALL {
            for to in JobState::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(legal.len(), 20);
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(JobState::ALL.iter().all(|to| !from.can_transition_to(*to)));
        }
        assert_eq!(JobState::ALL.iter().filter(|s| s.is_terminal()).count(), 5);
    }

    #[test]
    fn same_state_is_never_a_move() {
        for s in JobState::ALL {
            assert!(!s.can_transition_to(s));
        }
    }

    #[test]
    fn states_parse_from_their_names() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                Value::String(s.as_str().into())
            );
        }
        assert!("DONE".parse::<JobState>().is_err());
    }

    #[test]
    fn validation_names_each_bad_field() {
        let req = JobRequest {
            topic: "bad topic".into(),
            id: Some(String::new()),
            env: [(EFFECTIVE_CONFIG_ENV.to_string(), "{}".to_string())].into(),
            deadline_ms: Some(0),
            payload: Value::String("x".repeat(100)),
            ..Default::default()
        };
        let errs = req.validate(&Limits {
            max_payload_bytes: 10,
        });
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "topic",
                "id",
                "payload",
                "env.CORETEX_EFFECTIVE_CONFIG",
                "deadline_ms"
            ]
        );
    }

    #[test]
    fn env_that_changes_what_the_shell_runs_is_refused() {
        for name in [
            "LD_PRELOAD",
            "ld_library_path",
            "PATH",
            "DYLD_INSERT_LIBRARIES",
            "BASH_ENV",
            "GCONV_PATH",
            "NODE_OPTIONS",
            "CORETEX_JOB_ID",
        ] {
            let req = JobRequest {
                topic: "t".into(),
                env: [(name.to_string(), "x".to_string())].into(),
                ..Default::default()
            };
            let errs = req.validate(&Limits::default());
            assert_eq!(errs.len(), 1, "{name}: {errs:?}");
            assert_eq!(errs[0].field, format!("env.{name}"));
        }
        for name in ["MY_PATH", "LOG_LEVEL", "workflow_id", "PATHS"] {
            assert_eq!(env_refusal(name), None, "{name}");
        }
    }

    #[test]
    fn a_minimal_request_is_valid_and_gets_ids() {
        let req: JobRequest = serde_json::from_str(r#"{"topic":"job.echo"}"#).unwrap();
        assert!(req.validate(&Limits::default()).is_empty());
        let spec = JobSpec::accept(req, 1_000);
        assert_eq!(spec.tenant_id, DEFAULT_TENANT);
        assert!(!spec.id.is_empty() && !spec.trace_id.is_empty());
        assert_eq!(spec.attempt, 1);
    }

    #[test]
    fn unknown_request_fields_are_rejected() {
        let err = serde_json::from_str::<JobRequest>(r#"{"topic":"a","topci":"b"}"#).unwrap_err();
        assert!(err.to_string().contains("topci"));
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_fraction() {
        let req: JobRequest = serde_json::from_str(r#"{"topic":"t","deadline_ms":421.0}"#).unwrap();
        assert_eq!(req.deadline_ms, Some(421));
        for bad in ["421.5", "-1", "1e30", "\"5\""] {
            let text = format!(r#"{{"topic":"t","deadline_ms":{bad}}}"#);
            assert!(serde_json::from_str::<JobRequest>(&text).is_err(), "{bad}");
        }
        let req: JobRequest = serde_json::from_str(r#"{"topic":"t","deadline_ms":null}"#).unwrap();
        assert_eq!(req.deadline_ms, None);
    }

    #[test]
    fn deadline_is_absolute_from_acceptance() {
        let req = JobRequest {
            topic: "t".into(),
            deadline_ms: Some(500),
            ..Default::default()
        };
        assert_eq!(JobSpec::accept(req, 10_000).deadline, Some(10_500));
    }
}
