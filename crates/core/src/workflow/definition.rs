//! Workflow definitions and runs as plain data (SPEC §10): the types, their validation, the
//! `${expr}` templates of step inputs and the input-schema check. No I/O: the engine
//! ([`super::engine`]) stores and advances these.
//!
//! Every expression of a definition is CEL: a step `condition` goes to the configured condition
//! evaluator (a plugin, CEL by default) and is checked through [`ConditionEvaluator::compile`] on
//! save; `${…}` templates and `for_each` (their syntax in [`super::expr`]) go to an
//! [`ExpressionEvaluator`], the built-in `cel` component, checked there on save too.
//! `input_schema` is JSON Schema, checked by the `jsonschema` crate: the schema itself on save, a
//! run's input when the run starts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::expr::{self, Scope};
use crate::job::{FieldError, check_ident, check_labels, whole};
use crate::limits::{
    MAX_BACKOFF_MULTIPLIER, MAX_BACKOFF_SEC, MAX_DEPENDENCIES, MAX_EXPRESSION_BYTES,
    MAX_FOR_EACH_ITEMS, MAX_NAME_BYTES, MAX_OUTPUT_PATH_SEGMENTS, MAX_RETRIES, MAX_STEP_ID_LEN,
    MAX_STEPS, MAX_TIMEOUT_SEC,
};
use crate::plugin::{ConditionEvaluator, ExpressionEvaluator};
use crate::time::{self, Millis};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepType {
    #[default]
    Job,
    Approval,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Fail,
    Continue,
}

/// A step's retry settings: `max_retries` more attempts after the first, waiting
/// `initial_backoff_sec · multiplier^(n-1)` (capped at `max_backoff_sec`) before attempt n+1.
/// With a `policy`, the retry-policy plugin of that name decides instead, told these settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(default, deserialize_with = "whole::num")]
    pub max_retries: u32,
    #[serde(default = "one")]
    pub initial_backoff_sec: f64,
    #[serde(default = "sixty")]
    pub max_backoff_sec: f64,
    #[serde(default = "two")]
    pub multiplier: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}
fn sixty() -> f64 {
    60.0
}

impl RetrySettings {
    /// Every setting within its range (see [`crate::limits`]): the engine multiplies them.
    fn check(&self, field: &str, errors: &mut Vec<FieldError>) {
        if self.max_retries > MAX_RETRIES {
            errors.push(FieldError::new(
                format!("{field}.max_retries"),
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        for (name, sec) in [
            ("initial_backoff_sec", self.initial_backoff_sec),
            ("max_backoff_sec", self.max_backoff_sec),
        ] {
            if !(0.0..=MAX_BACKOFF_SEC).contains(&sec) {
                errors.push(FieldError::new(
                    format!("{field}.{name}"),
                    format!("must be between 0 and {MAX_BACKOFF_SEC} seconds"),
                ));
            }
        }
        if !(1.0..=MAX_BACKOFF_MULTIPLIER).contains(&self.multiplier) {
            errors.push(FieldError::new(
                format!("{field}.multiplier"),
                format!("must be between 1 and {MAX_BACKOFF_MULTIPLIER}"),
            ));
        }
        if let Some(policy) = &self.policy {
            check_ident(&format!("{field}.policy"), policy, errors);
        }
    }

    /// The config that selects `policy` (when set) and hands it these settings in the units
    /// retry policies read (SPEC §9): `max_attempts` counts the first attempt, backoffs are in ms.
    pub fn policy_config(&self) -> Option<Value> {
        let ms = |sec: f64| (sec.max(0.0) * 1000.0) as u64;
        Some(json!({"retry": {
            "policy": self.policy.as_deref()?,
            "max_attempts": self.max_retries.saturating_add(1),
            "initial_backoff_ms": ms(self.initial_backoff_sec),
            "max_backoff_ms": ms(self.max_backoff_sec),
            "multiplier": self.multiplier,
        }}))
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1) as i32);
        let sec = (self.initial_backoff_sec.max(0.0) * exp).min(self.max_backoff_sec.max(0.0));
        (sec * 1000.0) as u64
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    #[serde(default, rename = "type")]
    pub kind: StepType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySettings>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub timeout_sec: Option<u64>,
    /// The step's job must send `progress` at least this often while it runs, or it fails
    /// `heartbeat_timeout` (and is retried as the step's retry settings say): see
    /// [`crate::job::JobRequest::heartbeat_timeout_sec`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub heartbeat_timeout_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub on_error: OnError,
}

/// A definition as a client sends it (create and update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Ignored on input: the store numbers versions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub version: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub timeout_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    pub steps: BTreeMap<String, StepDef>,
}

/// A stored definition: one version of one workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub team_id: String,
    pub version: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::opt"
    )]
    pub timeout_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    pub steps: BTreeMap<String, StepDef>,
    #[serde(with = "time::rfc3339")]
    pub created_at: Millis,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// Steps only.
    Skipped,
}

impl Status {
    /// The statuses a run ends in.
    pub const RUN_ENDS: [Status; 4] = [
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::Cancelled
                | Status::TimedOut
                | Status::Skipped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A human's answer to an approval step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub status: Status,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    /// A `for_each` step's children, in item order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<StepRun>>,
    /// The item of a `for_each` child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub workflow_id: String,
    /// The definition version this run follows to the end, whatever updates come later.
    pub workflow_version: u64,
    pub org_id: String,
    pub team_id: String,
    pub input: Value,
    /// Written by steps' `output_path`.
    pub context: Value,
    pub status: Status,
    pub steps: BTreeMap<String, StepRun>,
    #[serde(with = "time::rfc3339")]
    pub started_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bumped by every save; a save names the revision it read (compare-and-set).
    #[serde(default)]
    pub revision: u64,
}

impl Run {
    /// The scope conditions and templates see: `input`, `ctx`, `steps.<id>.{status,output}`.
    pub fn scope(&self) -> Value {
        let steps: Map<String, Value> = self
            .steps
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    json!({"status": s.status, "output": s.output.clone().unwrap_or(Value::Null)}),
                )
            })
            .collect();
        json!({"input": self.input, "ctx": self.context, "steps": steps})
    }
}

/// Checks a definition: identifiers, topics, dependencies, cycles, conditions, templates,
/// `for_each`, `output_path`, and every count, length and duration against its limit (see
/// [`crate::limits`]). Every error names the step (`steps.<id>.<field>`).
pub fn validate(
    spec: &WorkflowSpec,
    conditions: &dyn ConditionEvaluator,
    expressions: &dyn ExpressionEvaluator,
) -> Vec<FieldError> {
    // Before anything that costs per step (compiling conditions, walking the graph).
    if spec.steps.len() > MAX_STEPS {
        return vec![FieldError::new(
            "steps",
            format!(
                "{} steps; the limit is {MAX_STEPS} steps per workflow",
                spec.steps.len()
            ),
        )];
    }
    let mut errors = Vec::new();
    if let Some(id) = &spec.id {
        check_ident("id", id, &mut errors);
    }
    if spec.name.len() > MAX_NAME_BYTES {
        errors.push(FieldError::new(
            "name",
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    check_timeout("timeout_sec", spec.timeout_sec, &mut errors);
    if spec.steps.is_empty() {
        errors.push(FieldError::new(
            "steps",
            "a workflow needs at least one step",
        ));
    }
    if let Some(schema) = &spec.input_schema {
        errors.extend(check_schema(schema));
    }
    for (id, step) in &spec.steps {
        let field = |f: &str| format!("steps.{id}.{f}");
        check_step_id(&format!("steps.{id}"), id, &mut errors);
        check_timeout(&field("timeout_sec"), step.timeout_sec, &mut errors);
        check_timeout(
            &field("heartbeat_timeout_sec"),
            step.heartbeat_timeout_sec,
            &mut errors,
        );
        check_labels(&field("route_labels"), &step.route_labels, &mut errors);
        if let Some(retry) = &step.retry {
            retry.check(&field("retry"), &mut errors);
        }
        if step.depends_on.len() > MAX_DEPENDENCIES {
            errors.push(FieldError::new(
                field("depends_on"),
                format!(
                    "{} dependencies; the limit is {MAX_DEPENDENCIES} per step",
                    step.depends_on.len()
                ),
            ));
        }
        for (name, source) in [("condition", &step.condition), ("for_each", &step.for_each)] {
            if source
                .as_ref()
                .is_some_and(|e| e.len() > MAX_EXPRESSION_BYTES)
            {
                errors.push(FieldError::new(
                    field(name),
                    format!("step `{id}`: expressions are at most {MAX_EXPRESSION_BYTES} bytes"),
                ));
            }
        }
        match step.kind {
            StepType::Job => match &step.topic {
                Some(t) => check_ident(&field("topic"), t, &mut errors),
                None => errors.push(FieldError::new(field("topic"), "a job step needs a topic")),
            },
            StepType::Approval if step.for_each.is_some() => errors.push(FieldError::new(
                field("for_each"),
                "an approval step cannot fan out",
            )),
            StepType::Approval => {}
        }
        for dep in &step.depends_on {
            if !spec.steps.contains_key(dep) {
                errors.push(FieldError::new(
                    field("depends_on"),
                    format!("step `{id}` depends on unknown step `{dep}`"),
                ));
            }
        }
        if let Some(c) = &step.condition
            && c.len() <= MAX_EXPRESSION_BYTES
            && let Err(e) = conditions.compile(c)
        {
            errors.push(FieldError::new(
                field("condition"),
                format!("step `{id}`: {e}"),
            ));
        }
        if let Some(fe) = &step.for_each
            && fe.len() <= MAX_EXPRESSION_BYTES
            && let Err(e) = expressions.check(expr::bare(fe))
        {
            errors.push(FieldError::new(
                field("for_each"),
                format!("step `{id}`: {e}"),
            ));
        }
        if step
            .max_parallel
            .is_some_and(|m| m == 0 || m as usize > MAX_FOR_EACH_ITEMS)
        {
            errors.push(FieldError::new(
                field("max_parallel"),
                format!("must be between 1 and {MAX_FOR_EACH_ITEMS}"),
            ));
        }
        if let Err((at, e)) = check_templates(&step.input, &field("input"), expressions) {
            errors.push(FieldError::new(at, format!("step `{id}`: {e}")));
        }
        if let Some(p) = &step.output_path {
            if p.is_empty() || p.split('.').any(str::is_empty) {
                errors.push(FieldError::new(
                    field("output_path"),
                    format!("step `{id}`: `{p}` is not a dotted path"),
                ));
            } else if p.split('.').count() > MAX_OUTPUT_PATH_SEGMENTS {
                errors.push(FieldError::new(
                    field("output_path"),
                    format!("step `{id}`: at most {MAX_OUTPUT_PATH_SEGMENTS} segments"),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&spec.steps)
        && let Some(first) = cycle.first()
    {
        errors.push(FieldError::new(
            format!("steps.{first}.depends_on"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    errors
}

/// A step id: 1–[`MAX_STEP_ID_LEN`] of `[A-Za-z0-9_-]`. Narrower than other ids because it is
/// spliced into its jobs' ids, `<run>.<step>[.<item>].<attempt>`: without `.` no two steps'
/// jobs can share an id (step `a.0` attempt 1 and item 0 of step `a` would), and at this length
/// the longest such id is still a valid job id.
pub fn check_step_id(field: &str, id: &str, errors: &mut Vec<FieldError>) {
    if id.is_empty() || id.len() > MAX_STEP_ID_LEN {
        errors.push(FieldError::new(
            field,
            format!("step ids are 1–{MAX_STEP_ID_LEN} characters"),
        ));
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        errors.push(FieldError::new(
            field,
            "step ids hold only letters, digits, '_' and '-'",
        ));
    }
}

/// A `timeout_sec`, when set: 1 s to [`MAX_TIMEOUT_SEC`] (the engine works in milliseconds, so
/// an unbounded count of seconds would overflow).
fn check_timeout(field: &str, timeout_sec: Option<u64>, errors: &mut Vec<FieldError>) {
    if timeout_sec.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_SEC) {
        errors.push(FieldError::new(
            field,
            format!("must be between 1 and {MAX_TIMEOUT_SEC} seconds"),
        ));
    }
}

/// A cycle through `depends_on` (first step repeated at the end), if there is one. A depth-first
/// walk with a stack of its own, not recursion: a chain as long as the input is walked in a
/// heap-allocated stack, never the thread's.
fn find_cycle(steps: &BTreeMap<String, StepDef>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let deps_of = |id: &str| steps.get(id).map_or(&[][..], |s| s.depends_on.as_slice());
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for root in steps.keys() {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        // The open path from `root`, each step with the index of its next dependency to visit.
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        marks.insert(root, Mark::Open);
        while let Some(&(id, next)) = path.last() {
            let Some(dep) = deps_of(id).get(next).map(String::as_str) else {
                marks.insert(id, Mark::Done);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            if !steps.contains_key(dep) {
                continue;
            }
            match marks.get(dep) {
                Some(Mark::Done) => {}
                Some(Mark::Open) => {
                    let start = path.iter().position(|(p, _)| *p == dep).unwrap_or(0);
                    let mut cycle: Vec<String> = path
                        .iter()
                        .skip(start)
                        .map(|(p, _)| p.to_string())
                        .collect();
                    cycle.push(dep.to_string());
                    return Some(cycle);
                }
                None => {
                    marks.insert(dep, Mark::Open);
                    path.push((dep, 0));
                }
            }
        }
    }
    None
}

/// The value of a `for_each` expression (bare or one template) in `scope`.
pub fn resolve(
    source: &str,
    scope: &Scope,
    expressions: &dyn ExpressionEvaluator,
) -> Result<Value, String> {
    expressions.evaluate(expr::bare(source), scope)
}

/// Checks the templates of a step input; an error names where (`steps.a.input.x[1]`).
fn check_templates(
    v: &Value,
    at: &str,
    expressions: &dyn ExpressionEvaluator,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) => expr::check_template(s, expressions).map_err(|e| (at.to_string(), e)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_templates(x, &format!("{at}[{i}]"), expressions)),
        Value::Object(o) => o
            .iter()
            .try_for_each(|(k, x)| check_templates(x, &format!("{at}.{k}"), expressions)),
        _ => Ok(()),
    }
}

/// Fills the `${expr}` templates of a step's `input` from `scope`. A string that is exactly one
/// template takes the value's type; templates inside longer strings are spliced in as text. An
/// error names where (`input.x[1]`) and the expression.
pub fn render(
    input: &Value,
    scope: &Scope,
    expressions: &dyn ExpressionEvaluator,
) -> Result<Value, String> {
    render_at(input, "input", scope, expressions)
}

fn render_at(
    v: &Value,
    at: &str,
    scope: &Scope,
    expressions: &dyn ExpressionEvaluator,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            expr::render_string(s, scope, expressions).map_err(|e| format!("{at}: {e}"))?
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| render_at(x, &format!("{at}[{i}]"), scope, expressions))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    Ok((
                        k.clone(),
                        render_at(x, &format!("{at}.{k}"), scope, expressions)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Writes `value` at the dotted `path` of `ctx`, creating objects on the way.
pub fn write_path(ctx: &mut Value, path: &str, value: Value) {
    let mut cur = ctx;
    for key in path.split('.') {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        // An object now: the `else` is never taken.
        let Value::Object(map) = cur else { return };
        cur = map.entry(key.to_string()).or_insert(Value::Null);
    }
    *cur = value;
}

/// Checks an `input_schema` against its meta-schema (the draft it names, 2020-12 by default):
/// an error names the field inside it (`input_schema.properties.n.type`). References to other
/// documents cannot be resolved (the host fetches nothing), so they are errors too.
pub fn check_schema(schema: &Value) -> Vec<FieldError> {
    match jsonschema::validator_for(schema) {
        Ok(_) => Vec::new(),
        Err(e) => vec![FieldError::new(
            field_at("input_schema", e.instance_path()),
            format!("not a valid JSON Schema: {e}"),
        )],
    }
}

/// Checks a run's input against the workflow's schema: one error per failure, each naming the
/// path in the input (`input.items[2]`; for a missing property, the property: `input.n`).
pub fn check_input(schema: &Value, input: &Value) -> Vec<FieldError> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(_) => return check_schema(schema),
    };
    validator
        .iter_errors(input)
        .map(|e| {
            let mut at = field_at("input", e.instance_path());
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
                match property {
                    Value::String(p) => at = format!("{at}.{p}"),
                    other => at = format!("{at}.{other}"),
                }
            }
            FieldError::new(at, e.to_string())
        })
        .collect()
}

/// `root` followed by a JSON pointer as a dotted path: `/items/2/name` → `root.items[2].name`.
fn field_at(root: &str, at: &jsonschema::paths::Location) -> String {
    let mut out = root.to_string();
    for seg in at.segments() {
        match seg {
            jsonschema::paths::LocationSegment::Property(p) => {
                out.push('.');
                out.push_str(&p);
            }
            jsonschema::paths::LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The steps nothing depends on: their outputs make the run's output.
pub fn leaf_steps(steps: &BTreeMap<String, StepDef>) -> Vec<&str> {
    let used: BTreeSet<&str> = steps
        .values()
        .flat_map(|s| s.depends_on.iter().map(String::as_str))
        .collect();
    steps
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    /// `n` steps, each depending on the one before; the first on the last when `closed`.
    fn chain(n: usize, closed: bool) -> BTreeMap<String, StepDef> {
        (0..n)
            .map(|i| {
                let dep = match i {
                    0 if closed => Some(n - 1),
                    0 => None,
                    i => Some(i - 1),
                };
                let step = StepDef {
                    topic: Some("t".into()),
                    depends_on: dep.map(|d| format!("s{d}")).into_iter().collect(),
                    ..Default::default()
                };
                (format!("s{i}"), step)
            })
            .collect()
    }

    /// An evaluator for workflows with no expressions: any call is a test failure.
    struct NoExpressions;
    impl ConditionEvaluator for NoExpressions {
        fn compile(&self, e: &str) -> Result<(), String> {
            panic!("no condition to compile here: {e}")
        }
        fn evaluate(&self, e: &str, _: &Value) -> Result<bool, String> {
            panic!("no condition to evaluate here: {e}")
        }
    }
    impl ExpressionEvaluator for NoExpressions {
        fn check(&self, e: &str) -> Result<(), String> {
            panic!("no expression to check here: {e}")
        }
        fn evaluate(&self, e: &str, _: &Scope) -> Result<Value, String> {
            panic!("no expression to evaluate here: {e}")
        }
    }

    #[test]
    fn a_workflow_past_the_step_limit_is_refused_before_its_steps_are_checked() {
        let spec = WorkflowSpec {
            id: None,
            name: "w".into(),
            org_id: None,
            team_id: None,
            version: None,
            timeout_sec: None,
            input_schema: None,
            steps: chain(MAX_STEPS + 1, true),
        };
        let e = validate(&spec, &NoExpressions, &NoExpressions);
        assert_eq!(fields(&e), ["steps"]);
        assert!(e[0].message.contains(&MAX_STEPS.to_string()), "{e:?}");
        let at_limit = WorkflowSpec {
            steps: chain(MAX_STEPS, false),
            ..spec
        };
        assert!(validate(&at_limit, &NoExpressions, &NoExpressions).is_empty());
    }

    #[test]
    fn the_cycle_check_walks_a_chain_of_any_length_without_recursion() {
        assert_eq!(find_cycle(&chain(200_000, false)), None);
        let cycle = find_cycle(&chain(200_000, true)).expect("the closed chain is a cycle");
        assert_eq!(cycle.len(), 200_001);
        assert_eq!(cycle.first(), cycle.last());
    }

    #[test]
    fn output_path_writes_nested() {
        let mut ctx = json!({});
        write_path(&mut ctx, "a.b", json!(1));
        write_path(&mut ctx, "a.c", json!(2));
        assert_eq!(ctx, json!({"a": {"b": 1, "c": 2}}));
    }

    #[test]
    fn input_errors_name_the_failing_path() {
        let schema = json!({"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "minimum": 1},
                           "tags": {"type": "array", "items": {"type": "string"}},
                           "who": {"type": "object", "required": ["email"],
                                   "properties": {"email": {"type": "string", "format": "email"}}}}});
        assert!(check_schema(&schema).is_empty());
        let e = check_input(&schema, &json!({"n": 0, "tags": ["a", 1], "who": {}}));
        let mut got = fields(&e);
        got.sort();
        assert_eq!(got, ["input.n", "input.tags[1]", "input.who.email"]);
        assert_eq!(fields(&check_input(&schema, &json!({}))), ["input.n"]);
        assert!(check_input(&schema, &json!({"n": 2})).is_empty());
    }

    #[test]
    fn keywords_past_the_old_subset_are_checked() {
        let schema = json!({"type": "object", "properties": {
            "mode": {"oneOf": [{"const": "fast"}, {"const": "safe"}]},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"}}});
        assert_eq!(
            fields(&check_input(
                &schema,
                &json!({"mode": "slow", "code": "abc"})
            ))
            .len(),
            2
        );
        assert!(check_input(&schema, &json!({"mode": "safe", "code": "ABC"})).is_empty());
    }

    #[test]
    fn a_named_policy_is_handed_the_step_settings() {
        let mut r: RetrySettings = serde_json::from_value(
            json!({"max_retries": 2, "initial_backoff_sec": 0.25, "max_backoff_sec": 4}),
        )
        .unwrap();
        assert_eq!(r.policy_config(), None, "no policy: the step's own backoff");
        r.policy = Some("fixed".into());
        assert_eq!(
            r.policy_config(),
            Some(json!({"retry": {"policy": "fixed", "max_attempts": 3,
                "initial_backoff_ms": 250, "max_backoff_ms": 4000, "multiplier": 2.0}}))
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = RetrySettings {
            max_retries: 3,
            initial_backoff_sec: 1.0,
            max_backoff_sec: 3.0,
            multiplier: 2.0,
            policy: None,
        };
        assert_eq!(
            [r.backoff_ms(1), r.backoff_ms(2), r.backoff_ms(3)],
            [1000, 2000, 3000]
        );
    }
}
