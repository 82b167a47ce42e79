//! The config keys the host reads, their schema, and the tenancy policy (SPEC §8, §12).
//!
//! Every key the host itself reads from an effective config is checked when a scope is written,
//! and a bad one is refused (422) naming it, e.g. `data.safety.denied_topics`:
//!
//! | key | schema |
//! |---|---|
//! | `safety.allowed_topics`, `.denied_topics`, `.require_human_topics`, `.throttle_topics` | arrays of at most 256 glob strings (each at most 256 bytes, a valid glob) |
//! | `safety.throttle_delay_ms` | a whole number, 0 – 3,600,000 |
//! | `retry.policy` | the name of a loaded retry-policy plugin |
//! | `retry.initial_backoff_ms`, `.max_backoff_ms` | whole numbers, 0 – 86,400,000 |
//! | `retry.multiplier` | a number, 1 – 100 |
//! | `retry.max_attempts` | a whole number, 1 – 100 |
//! | `dispatch.strategy` | the name of a loaded dispatch-strategy plugin (other `dispatch` keys are the strategy's own settings) |
//! | `workflow.condition_evaluator` | the name of a loaded step-condition plugin |
//! | `plugins.latency_budget_ms.dispatch-strategy`, `.retry-policy`, `.step-condition` | whole numbers, 1 – 60,000 (see [`crate::plugins::latency_budget`]) |
//! | `pools` | a map topic → pool (identifiers, at most 1,024); at an `org` scope, only pools the org is granted |
//! | `tenancy` | the system scope only: see [`Tenancy`] |
//!
//! `safety`, `retry`, `workflow`, `plugins` take no other keys (a misspelt `denied_topic` would otherwise
//! deny nothing, silently); each of these objects may also be `null`. Any other top-level key is
//! the user's own and reaches the worker as it is (`CORETEX_EFFECTIVE_CONFIG`); a whole document
//! is at most [`MAX_DOC_BYTES`].
//!
//! A document stored before these checks existed is read as it is: what it breaks, it breaks
//! for the jobs it applies to only (their tenant's breakers open, see
//! [`crate::breaker`]), and a malformed `tenancy` is ignored (with a warning) as if absent.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Scope;
use crate::job::{DEFAULT_TENANT, FieldError, JobRequest, check_ident};
use crate::plugins::{LATENCY_BUDGET_KEY, PluginKind};

/// The largest config document (its JSON), so what every job of a scope carries stays small.
pub const MAX_DOC_BYTES: usize = 64 << 10;
const MAX_PATTERNS: usize = 256;
const MAX_PATTERN_BYTES: usize = 256;
const MAX_THROTTLE_MS: u64 = 3_600_000;
const MAX_BACKOFF_MS: u64 = 86_400_000;
const MAX_MULTIPLIER: f64 = 100.0;
const MAX_ATTEMPTS: u64 = 100;
const MAX_POOLS: usize = 1_024;
/// The longest latency budget of a plugin call: a minute, far past any deadline.
const MAX_LATENCY_BUDGET_MS: u64 = 60_000;

/// The glob lists of `safety`.
const SAFETY_LISTS: [&str; 4] = [
    "allowed_topics",
    "denied_topics",
    "require_human_topics",
    "throttle_topics",
];

/// What the checks need to know beyond the document.
pub struct Context<'a> {
    /// The kind of the plugin loaded under a name, if any.
    pub plugin_kind: &'a dyn Fn(&str) -> Option<PluginKind>,
    /// The policy in force (the system scope's `tenancy`).
    pub tenancy: &'a Tenancy,
}

/// Every problem with `data` as the document of `scope`, each naming its key. Empty: valid.
pub fn validate(scope: &Scope, data: &Value, cx: &Context<'_>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Value::Object(doc) = data else {
        errors.push(FieldError::new("data", "must be a JSON object"));
        return errors;
    };
    let size = serde_json::to_vec(data).map_or(0, |v| v.len());
    if size > MAX_DOC_BYTES {
        errors.push(FieldError::new(
            "data",
            format!("is {size} bytes; a config document is at most {MAX_DOC_BYTES}"),
        ));
    }
    let mut e = Errors(&mut errors);
    if let Some(v) = object(&mut e, doc, "safety") {
        check_safety(&mut e, v);
    }
    if let Some(v) = object(&mut e, doc, "retry") {
        check_retry(&mut e, v, cx);
    }
    if let Some(v) = object(&mut e, doc, "dispatch")
        && let Some(name) = v.get("strategy")
    {
        check_plugin(
            &mut e,
            "data.dispatch.strategy",
            name,
            PluginKind::DispatchStrategy,
            cx,
        );
    }
    if let Some(v) = object(&mut e, doc, "workflow") {
        for (k, val) in v {
            match k.as_str() {
                "condition_evaluator" => check_plugin(
                    &mut e,
                    "data.workflow.condition_evaluator",
                    val,
                    PluginKind::StepCondition,
                    cx,
                ),
                _ => e.unknown("workflow", k, &["condition_evaluator"]),
            }
        }
    }
    if let Some(v) = object(&mut e, doc, "plugins") {
        check_plugins(&mut e, v);
    }
    if let Some(v) = object(&mut e, doc, "pools") {
        let org = match scope {
            Scope::Org(org) => Some(org.as_str()),
            _ => None,
        };
        check_pools(&mut e, v, org, cx.tenancy);
    }
    if let Some(v) = doc.get("tenancy") {
        if *scope == Scope::System {
            Tenancy::parse(v, &mut e);
        } else {
            e.push(
                "data.tenancy",
                "is set at the system scope only (it says what each tenant may use)",
            );
        }
    }
    errors
}

/// The errors found so far, with the helpers that name a key.
struct Errors<'a>(&'a mut Vec<FieldError>);

impl Errors<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn unknown(&mut self, object: &str, key: &str, known: &[&str]) {
        self.push(
            format!("data.{object}.{key}"),
            format!("is not a `{object}` setting (one of {})", known.join(", ")),
        );
    }
}

/// `doc[key]` when it is an object; `null` and absence are nothing to check, anything else is
/// an error.
fn object<'a>(
    e: &mut Errors<'_>,
    doc: &'a Map<String, Value>,
    key: &str,
) -> Option<&'a Map<String, Value>> {
    match doc.get(key)? {
        Value::Object(m) => Some(m),
        Value::Null => None,
        _ => {
            e.push(format!("data.{key}"), "must be an object (or null)");
            None
        }
    }
}

fn check_safety(e: &mut Errors<'_>, safety: &Map<String, Value>) {
    for (key, v) in safety {
        let field = format!("data.safety.{key}");
        if SAFETY_LISTS.contains(&key.as_str()) {
            let Value::Array(items) = v else {
                e.push(field, "must be an array of glob strings");
                continue;
            };
            if items.len() > MAX_PATTERNS {
                e.push(field.clone(), format!("at most {MAX_PATTERNS} patterns"));
            }
            for (i, item) in items.iter().enumerate() {
                let field = format!("{field}[{i}]");
                match item.as_str() {
                    None => e.push(field, "must be a glob string"),
                    Some(p) if p.len() > MAX_PATTERN_BYTES => e.push(
                        field,
                        format!("a pattern is at most {MAX_PATTERN_BYTES} bytes"),
                    ),
                    Some(p) => {
                        if let Err(err) = glob::Pattern::new(p) {
                            e.push(field, format!("`{p}` is not a valid glob: {err}"));
                        }
                    }
                }
            }
        } else if key == "throttle_delay_ms" {
            whole(e, &field, v, 0, MAX_THROTTLE_MS);
        } else {
            let mut known = SAFETY_LISTS.to_vec();
            known.push("throttle_delay_ms");
            e.unknown("safety", key, &known);
        }
    }
}

fn check_retry(e: &mut Errors<'_>, retry: &Map<String, Value>, cx: &Context<'_>) {
    for (key, v) in retry {
        let field = format!("data.retry.{key}");
        match key.as_str() {
            "policy" => check_plugin(e, &field, v, PluginKind::RetryPolicy, cx),
            "initial_backoff_ms" | "max_backoff_ms" => whole(e, &field, v, 0, MAX_BACKOFF_MS),
            "max_attempts" => whole(e, &field, v, 1, MAX_ATTEMPTS),
            "multiplier" => match v.as_f64() {
                Some(m) if (1.0..=MAX_MULTIPLIER).contains(&m) => {}
                _ => e.push(
                    field,
                    format!("must be a number from 1 to {MAX_MULTIPLIER}"),
                ),
            },
            _ => e.unknown(
                "retry",
                key,
                &[
                    "policy",
                    "initial_backoff_ms",
                    "max_backoff_ms",
                    "multiplier",
                    "max_attempts",
                ],
            ),
        }
    }
}

fn check_plugins(e: &mut Errors<'_>, plugins: &Map<String, Value>) {
    for (key, v) in plugins {
        if key != LATENCY_BUDGET_KEY {
            e.unknown("plugins", key, &[LATENCY_BUDGET_KEY]);
            continue;
        }
        let field = format!("data.plugins.{key}");
        let Value::Object(budgets) = v else {
            e.push(field, "must be an object: plugin kind → milliseconds");
            continue;
        };
        for (kind, ms) in budgets {
            let field = format!("{field}.{kind}");
            if PluginKind::ALL.iter().any(|k| k.as_str() == kind) {
                whole(e, &field, ms, 1, MAX_LATENCY_BUDGET_MS);
            } else {
                let kinds: Vec<&str> = PluginKind::ALL.iter().map(|k| k.as_str()).collect();
                e.push(
                    field,
                    format!("is not a plugin kind (one of {})", kinds.join(", ")),
                );
            }
        }
    }
}

fn whole(e: &mut Errors<'_>, field: &str, v: &Value, min: u64, max: u64) {
    if !v.as_u64().is_some_and(|n| (min..=max).contains(&n)) {
        e.push(field, format!("must be a whole number from {min} to {max}"));
    }
}

fn check_plugin(e: &mut Errors<'_>, field: &str, v: &Value, kind: PluginKind, cx: &Context<'_>) {
    let Some(name) = v.as_str() else {
        e.push(field, format!("must name a {kind} plugin"));
        return;
    };
    match (cx.plugin_kind)(name) {
        Some(k) if k == kind => {}
        Some(k) => e.push(field, format!("`{name}` is a {k} plugin, not a {kind}")),
        None => e.push(field, format!("no {kind} plugin `{name}` is loaded")),
    }
}

fn check_pools(
    e: &mut Errors<'_>,
    pools: &Map<String, Value>,
    org: Option<&str>,
    tenancy: &Tenancy,
) {
    if pools.len() > MAX_POOLS {
        e.push("data.pools", format!("at most {MAX_POOLS} topics"));
    }
    for (topic, pool) in pools {
        let field = format!("data.pools.{topic}");
        check_ident(&field, topic, e.0);
        let Some(pool) = pool.as_str() else {
            e.push(field, "must name a pool");
            continue;
        };
        check_ident(&field, pool, e.0);
        if let Some(org) = org
            && !tenancy.may_use_pool(org, pool)
        {
            e.push(field, tenancy.pool_refusal(org, pool));
        }
    }
}

/// What the system scope's `tenancy` key grants each tenant (org):
///
/// ```json
/// {"tenancy": {"pools": {"acme": ["acme-gpu", "shared"], "*": ["shared"]},
///              "teams": {"payments": "acme", "search": "beta"}}}
/// ```
///
/// * `pools`: the worker pools each org's jobs may run on — named in `labels.preferred_pool` or
///   in a `pools` map, or chosen by topic — with `*` for every org not named. Without `pools`
///   any job may use any pool; with it, an org neither named nor covered by `*` may use none.
/// * `teams`: the org each team belongs to. A bound team's config applies only to its org's jobs
///   and is shown only to its org's key; a team bound to no org is shared by all.
/// * `workers`: the pools each worker id may serve — an id, a prefix ending in `*`, or `*`; the
///   most specific entry decides. Without `workers` a worker serves the pool its heartbeat
///   names; with it, a worker whose pool is not granted to its id is not registered, so a
///   worker's credentials cannot claim a pool (and the tenants' jobs on it) that is not its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenancy {
    pools: Option<BTreeMap<String, Vec<String>>>,
    teams: BTreeMap<String, String>,
    workers: Option<BTreeMap<String, Vec<String>>>,
}

/// The `tenancy.pools` entry of every org not named.
const EVERY_OTHER_ORG: &str = "*";

impl Tenancy {
    /// The policy in the system scope's document. A malformed `tenancy` (stored before it was
    /// checked, when it was an ordinary key) is ignored, with a warning, as if absent.
    pub fn from_system(system: Option<&Value>) -> Tenancy {
        let Some(v) = system.and_then(|s| s.get("tenancy")) else {
            return Tenancy::default();
        };
        let mut errors = Vec::new();
        let tenancy = Tenancy::parse(v, &mut Errors(&mut errors));
        if errors.is_empty() {
            return tenancy;
        }
        // Read at every cache fill: said once per process, not once a second.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(errors = ?errors, "the system config's `tenancy` is malformed and ignored");
        }
        Tenancy::default()
    }

    fn parse(v: &Value, e: &mut Errors<'_>) -> Tenancy {
        let mut out = Tenancy::default();
        let Value::Object(m) = v else {
            e.push("data.tenancy", "must be an object");
            return out;
        };
        for (key, v) in m {
            match key.as_str() {
                "pools" => out.pools = Some(parse_pool_grants(e, v)),
                "teams" => out.teams = parse_team_owners(e, v),
                "workers" => out.workers = Some(parse_worker_grants(e, v)),
                _ => e.unknown("tenancy", key, &["pools", "teams", "workers"]),
            }
        }
        out
    }

    /// The pools `org` may use; `None`: any.
    pub fn allowed_pools(&self, org: &str) -> Option<&[String]> {
        let grants = self.pools.as_ref()?;
        Some(
            grants
                .get(org)
                .or_else(|| grants.get(EVERY_OTHER_ORG))
                .map_or(&[], Vec::as_slice),
        )
    }

    pub fn may_use_pool(&self, org: &str, pool: &str) -> bool {
        self.allowed_pools(org)
            .is_none_or(|allowed| allowed.iter().any(|p| p == pool))
    }

    /// Why `org` may not use `pool`.
    pub fn pool_refusal(&self, org: &str, pool: &str) -> String {
        format!("pool `{pool}` is not granted to org `{org}` (system config `tenancy.pools`)")
    }

    /// Whether the worker `worker_id` may serve `pool` (`tenancy.workers`): the entry for its
    /// id, else the one with the longest prefix (`gpu-*`) it starts with, else `*`.
    pub fn may_serve(&self, worker_id: &str, pool: &str) -> bool {
        let Some(grants) = &self.workers else {
            return true;
        };
        let entry = grants.get(worker_id).or_else(|| {
            grants
                .iter()
                .filter_map(|(pattern, pools)| {
                    let prefix = pattern.strip_suffix('*')?;
                    worker_id
                        .starts_with(prefix)
                        .then_some((prefix.len(), pools))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, pools)| pools)
        });
        entry.is_some_and(|pools| pools.iter().any(|p| p == pool))
    }

    /// The org `team` is bound to; `None` for a shared team.
    pub fn team_org(&self, team: &str) -> Option<&str> {
        self.teams.get(team).map(String::as_str)
    }

    /// Whether `team` is bound to an org other than `org` (its config is then not `org`'s to
    /// see or use).
    pub fn team_belongs_elsewhere(&self, org: &str, team: &str) -> bool {
        self.teams.get(team).is_some_and(|owner| owner != org)
    }

    /// Whether `req` names anything this policy grants (a preferred pool, a team).
    pub fn concerns(req: &JobRequest) -> bool {
        req.team_id.is_some() || req.labels.contains_key(PREFERRED_POOL_LABEL)
    }

    /// What `req` asks that its org is not granted: a preferred pool, a team bound to another
    /// org. Each names its field.
    pub fn refusals(&self, req: &JobRequest) -> Vec<FieldError> {
        let org = req.tenant_id.as_deref().unwrap_or(DEFAULT_TENANT);
        let mut errors = Vec::new();
        if let Some(pool) = req.labels.get(PREFERRED_POOL_LABEL)
            && !self.may_use_pool(org, pool)
        {
            errors.push(FieldError::new(
                format!("labels.{PREFERRED_POOL_LABEL}"),
                self.pool_refusal(org, pool),
            ));
        }
        if let Some(team) = &req.team_id
            && self.team_belongs_elsewhere(org, team)
        {
            errors.push(FieldError::new(
                "team_id",
                format!(
                    "team `{team}` is not one of org `{org}`'s (system config `tenancy.teams`)"
                ),
            ));
        }
        errors
    }
}

/// The job label that names the pool a job wants (SPEC §5).
pub const PREFERRED_POOL_LABEL: &str = "preferred_pool";

fn parse_pool_grants(e: &mut Errors<'_>, v: &Value) -> BTreeMap<String, Vec<String>> {
    let Value::Object(m) = v else {
        e.push(
            "data.tenancy.pools",
            "must map orgs (or `*`) to lists of pools",
        );
        return BTreeMap::new();
    };
    for org in m.keys().filter(|org| *org != EVERY_OTHER_ORG) {
        check_ident(&format!("data.tenancy.pools.{org}"), org, e.0);
    }
    parse_grant_lists(e, "data.tenancy.pools", m)
}

/// Each key's list of at most [`MAX_POOLS`] pools (the keys are checked by the caller).
fn parse_grant_lists(
    e: &mut Errors<'_>,
    at: &str,
    m: &serde_json::Map<String, Value>,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (key, pools) in m {
        let field = format!("{at}.{key}");
        let Value::Array(items) = pools else {
            e.push(field, "must be a list of pools");
            continue;
        };
        if items.len() > MAX_POOLS {
            e.push(field.clone(), format!("at most {MAX_POOLS} pools"));
        }
        let mut granted = Vec::with_capacity(items.len());
        for (i, p) in items.iter().enumerate() {
            let field = format!("{field}[{i}]");
            match p.as_str() {
                Some(p) => {
                    check_ident(&field, p, e.0);
                    granted.push(p.to_string());
                }
                None => e.push(field, "must name a pool"),
            }
        }
        out.insert(key.clone(), granted);
    }
    out
}

fn parse_worker_grants(e: &mut Errors<'_>, v: &Value) -> BTreeMap<String, Vec<String>> {
    let Value::Object(m) = v else {
        e.push(
            "data.tenancy.workers",
            "must map worker ids (or `prefix*`, or `*`) to lists of pools",
        );
        return BTreeMap::new();
    };
    for pattern in m.keys() {
        let id = pattern.strip_suffix('*').unwrap_or(pattern);
        if !id.is_empty() {
            check_ident(&format!("data.tenancy.workers.{pattern}"), id, e.0);
        }
    }
    parse_grant_lists(e, "data.tenancy.workers", m)
}

fn parse_team_owners(e: &mut Errors<'_>, v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Value::Object(m) = v else {
        e.push(
            "data.tenancy.teams",
            "must map teams to the org each belongs to",
        );
        return out;
    };
    for (team, org) in m {
        let field = format!("data.tenancy.teams.{team}");
        check_ident(&field, team, e.0);
        match org.as_str() {
            Some(org) => {
                check_ident(&field, org, e.0);
                out.insert(team.clone(), org.to_string());
            }
            None => e.push(field, "must name an org"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kinds(name: &str) -> Option<PluginKind> {
        match name {
            "least-loaded" => Some(PluginKind::DispatchStrategy),
            "exponential-jitter" => Some(PluginKind::RetryPolicy),
            "cel" => Some(PluginKind::StepCondition),
            _ => None,
        }
    }

    fn fields(scope: &Scope, data: Value, tenancy: &Tenancy) -> Vec<String> {
        let cx = Context {
            plugin_kind: &kinds,
            tenancy,
        };
        validate(scope, &data, &cx)
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn org_fields(data: Value) -> Vec<String> {
        fields(&Scope::Org("acme".into()), data, &Tenancy::default())
    }

    #[test]
    fn every_key_the_host_reads_is_checked_and_named() {
        assert_eq!(
            org_fields(json!({"safety": {"denied_topics": "oops"}})),
            ["data.safety.denied_topics"]
        );
        assert_eq!(
            org_fields(json!({"safety": {"allowed_topics": ["a", 3, "[z"]}})),
            [
                "data.safety.allowed_topics[1]",
                "data.safety.allowed_topics[2]"
            ]
        );
        assert_eq!(
            org_fields(json!({"safety": {"denied_topic": ["x"], "throttle_delay_ms": -1}})),
            ["data.safety.denied_topic", "data.safety.throttle_delay_ms"]
        );
        assert_eq!(
            org_fields(json!({"retry": {"multiplier": 0.5, "max_attempts": 0,
                "initial_backoff_ms": 1e12, "policy": "cel", "jitter": true}})),
            [
                "data.retry.initial_backoff_ms",
                "data.retry.jitter",
                "data.retry.max_attempts",
                "data.retry.multiplier",
                "data.retry.policy"
            ]
        );
        assert_eq!(
            org_fields(json!({"dispatch": {"strategy": "nope", "label_weights": {"a": 1}}})),
            ["data.dispatch.strategy"],
            "other dispatch keys are the strategy's own settings"
        );
        assert_eq!(
            org_fields(json!({"workflow": {"condition_evaluator": "least-loaded"}})),
            ["data.workflow.condition_evaluator"]
        );
        assert_eq!(
            org_fields(json!({"pools": {"job.x": 3, "bad topic": "p"}})),
            ["data.pools.bad topic", "data.pools.job.x"]
        );
        assert_eq!(
            org_fields(
                json!({"plugins": {"latency_budget_ms": {"dispatch-strategy": 0,
                "retry-policy": 1.5, "step-condition": 60_001, "dispatch": 1}, "budget": 1}})
            ),
            [
                "data.plugins.budget",
                "data.plugins.latency_budget_ms.dispatch",
                "data.plugins.latency_budget_ms.dispatch-strategy",
                "data.plugins.latency_budget_ms.retry-policy",
                "data.plugins.latency_budget_ms.step-condition"
            ]
        );
        assert_eq!(
            org_fields(json!({"plugins": {"latency_budget_ms": 5}})),
            ["data.plugins.latency_budget_ms"]
        );
        assert_eq!(org_fields(json!({"safety": 1})), ["data.safety"]);
        assert_eq!(org_fields(json!([1])), ["data"]);
    }

    #[test]
    fn good_documents_and_user_keys_pass() {
        let good = json!({
            "safety": {"allowed_topics": ["job.*"], "denied_topics": [], "throttle_delay_ms": 5},
            "retry": {"policy": "exponential-jitter", "multiplier": 1.5, "max_attempts": 4,
                      "initial_backoff_ms": 10, "max_backoff_ms": 1000},
            "dispatch": {"strategy": "least-loaded"},
            "workflow": {"condition_evaluator": "cel"},
            "plugins": {"latency_budget_ms": {"dispatch-strategy": 2, "retry-policy": 1,
                        "step-condition": 60_000}},
            "pools": {"job.echo": "echo"},
            "retry_note": "users' own keys are theirs", "limits": {"cpu": 2},
        });
        assert!(org_fields(good).is_empty());
        assert!(org_fields(json!({"safety": null, "retry": null})).is_empty());
    }

    #[test]
    fn a_document_is_bounded_in_size() {
        let big = json!({"blob": "x".repeat(MAX_DOC_BYTES)});
        assert_eq!(org_fields(big), ["data"]);
    }

    #[test]
    fn tenancy_is_the_system_scopes_alone() {
        let t = json!({"tenancy": {"pools": {"acme": ["gpu"], "*": ["shared"]},
                                   "teams": {"payments": "acme"}}});
        assert!(fields(&Scope::System, t.clone(), &Tenancy::default()).is_empty());
        assert_eq!(org_fields(t), ["data.tenancy"]);
        assert_eq!(
            fields(
                &Scope::System,
                json!({"tenancy": {"pools": {"acme": "gpu"}, "teams": {"t": 1}, "x": 1}}),
                &Tenancy::default()
            ),
            [
                "data.tenancy.pools.acme",
                "data.tenancy.teams.t",
                "data.tenancy.x"
            ]
        );
    }

    #[test]
    fn an_org_scope_names_only_pools_its_org_is_granted() {
        let tenancy = Tenancy::from_system(Some(
            &json!({"tenancy": {"pools": {"acme": ["gpu"], "*": ["shared"]}}}),
        ));
        let acme = Scope::Org("acme".into());
        let beta = Scope::Org("beta".into());
        assert!(fields(&acme, json!({"pools": {"t": "gpu"}}), &tenancy).is_empty());
        assert_eq!(
            fields(&acme, json!({"pools": {"t": "shared"}}), &tenancy),
            ["data.pools.t"]
        );
        assert_eq!(
            fields(&beta, json!({"pools": {"t": "gpu"}}), &tenancy),
            ["data.pools.t"]
        );
        assert!(fields(&beta, json!({"pools": {"t": "shared"}}), &tenancy).is_empty());
        assert!(
            fields(&Scope::System, json!({"pools": {"t": "gpu"}}), &tenancy).is_empty(),
            "the system scope is the admin's"
        );
    }

    #[test]
    fn tenancy_grants_pools_and_binds_teams() {
        let none = Tenancy::default();
        assert_eq!(none.allowed_pools("acme"), None);
        assert!(none.may_use_pool("acme", "anything"));
        let t = Tenancy::from_system(Some(&json!({"tenancy": {
            "pools": {"acme": ["gpu", "shared"]}, "teams": {"payments": "acme"}}})));
        assert_eq!(
            t.allowed_pools("acme"),
            Some(&["gpu".to_string(), "shared".to_string()][..])
        );
        assert_eq!(
            t.allowed_pools("beta"),
            Some(&[][..]),
            "no `*`: an org not named may use no pool"
        );
        assert!(t.team_belongs_elsewhere("beta", "payments"));
        assert!(!t.team_belongs_elsewhere("acme", "payments"));
        assert!(!t.team_belongs_elsewhere("beta", "unbound"));
        let malformed = Tenancy::from_system(Some(&json!({"tenancy": "legacy user value"})));
        assert_eq!(malformed, Tenancy::default());
    }

    #[test]
    fn worker_ids_are_bound_to_the_pools_they_may_serve() {
        assert!(Tenancy::default().may_serve("anyone", "any-pool"));
        let t = Tenancy::from_system(Some(&json!({"tenancy": {"workers": {
            "gpu-*": ["gpu"], "gpu-shared-*": ["gpu", "shared"], "w-7": ["special"],
            "*": ["shared"]}}})));
        assert!(t.may_serve("gpu-1", "gpu"));
        assert!(
            !t.may_serve("gpu-1", "shared"),
            "its prefix's entry decides, not `*`"
        );
        assert!(
            t.may_serve("gpu-shared-1", "shared"),
            "the longest prefix decides"
        );
        assert!(t.may_serve("w-7", "special"));
        assert!(!t.may_serve("w-7", "shared"), "an id's own entry decides");
        assert!(t.may_serve("cpu-9", "shared"));
        assert!(!t.may_serve("cpu-9", "gpu"));
        let no_default = Tenancy::from_system(Some(&json!({"tenancy": {"workers": {
            "gpu-*": ["gpu"]}}})));
        assert!(
            !no_default.may_serve("cpu-9", "gpu"),
            "an id no entry covers serves nothing"
        );
        assert_eq!(
            fields(
                &Scope::System,
                json!({"tenancy": {"workers": {"gpu-*": "gpu", "bad id*": ["p"],
                                               "ok": ["bad pool"], "*": []}}}),
                &Tenancy::default()
            ),
            [
                "data.tenancy.workers.bad id*",
                "data.tenancy.workers.gpu-*",
                "data.tenancy.workers.ok[0]",
            ]
        );
        assert_eq!(
            fields(
                &Scope::System,
                json!({"tenancy": {"workers": ["gpu"]}}),
                &Tenancy::default()
            ),
            ["data.tenancy.workers"]
        );
    }

    #[test]
    fn a_job_names_only_pools_and_teams_its_org_is_granted() {
        let t = Tenancy::from_system(Some(&json!({"tenancy": {
            "pools": {"acme": ["gpu"], "*": ["shared"]}, "teams": {"payments": "acme"}}})));
        let req = |tenant: &str, pool: &str, team: &str| -> JobRequest {
            serde_json::from_value(json!({"topic": "t", "tenant_id": tenant,
                "labels": {"preferred_pool": pool}, "team_id": team}))
            .unwrap()
        };
        assert!(t.refusals(&req("acme", "gpu", "payments")).is_empty());
        let fields: Vec<_> = t
            .refusals(&req("beta", "gpu", "payments"))
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["labels.preferred_pool", "team_id"]);
        assert!(t.refusals(&req("beta", "shared", "search")).is_empty());
        assert!(Tenancy::concerns(&req("beta", "shared", "search")));
    }
}
