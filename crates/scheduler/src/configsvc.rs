//! The config service (SPEC §8): scoped JSON documents with revisions, and the effective config
//! of a job — the shallow merge `system → org → team → workflow → step`, where a top-level key of
//! a later scope replaces the earlier value whole.
//!
//! Step documents are keyed by workflow *and* step id (the original keyed them by step id alone,
//! so two workflows with a step `build` shared one config). The scheduler asks for an effective
//! config per job; answers are cached for a second and dropped at once when any replica changes a
//! scope (`sys.config.changed`), so the hot path reads Redis at most once a second per
//! (tenant, team, workflow, step) and never waits for it on a hit.
//!
//! Writes are checked against the schema of the keys the host reads ([`schema`]); the merge
//! follows the tenancy policy: the system scope's `tenancy` (what each org may use) is the
//! host's and never part of an effective config, a team bound to another org is left out of an
//! org's merge, and when a later scope replaces the system's `safety` the system's policy is
//! handed on beside the merge ([`Effective::system_policy`]) so the safety check still applies
//! it.

pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bus::{SharedBus, publish_json};
use crate::job::{FieldError, check_ident};
use crate::protocol::{ConfigChangedMsg, VERSION};
use crate::store::{ConfigDoc, ConfigStore, StoreError};
use crate::time::now_ms;
use schema::Tenancy;

/// One config scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    System,
    Org(String),
    Team(String),
    Workflow(String),
    Step { workflow: String, step: String },
}

/// How a scope is named on the API: `scope` plus `id`, or `workflow_id` and `step_id` for a step.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ScopeRef {
    pub scope: Option<String>,
    pub id: Option<String>,
    pub workflow_id: Option<String>,
    pub step_id: Option<String>,
}

impl Scope {
    /// The store key of the scope's document.
    pub fn key(&self) -> String {
        match self {
            Scope::System => "system:default".into(),
            Scope::Org(id) => format!("org:{id}"),
            Scope::Team(id) => format!("team:{id}"),
            Scope::Workflow(id) => format!("workflow:{id}"),
            // A workflow id is `org~local` and a step id holds no `~`: one key per pair.
            Scope::Step { workflow, step } => {
                format!("step:{}", crate::ids::derive(workflow, step))
            }
        }
    }

    /// The scope whose document is stored under `key` (see [`Scope::key`]); `None` for a key
    /// of no scope.
    pub fn from_key(key: &str) -> Option<Scope> {
        let (kind, id) = key.split_once(':')?;
        let id = Some(id).filter(|i| !i.is_empty())?.to_string();
        match kind {
            "system" => Some(Scope::System),
            "org" => Some(Scope::Org(id)),
            "team" => Some(Scope::Team(id)),
            "workflow" => Some(Scope::Workflow(id)),
            // A step id holds no `~`: the last one ends the workflow's id.
            "step" => {
                let (workflow, step) = id.rsplit_once(crate::ids::SEP)?;
                Some(Scope::Step {
                    workflow: workflow.to_string(),
                    step: step.to_string(),
                })
            }
            _ => None,
        }
    }

    /// The scope as the API names it: `scope` with `id`, or `workflow_id` and `step_id`.
    pub fn to_ref(&self) -> ScopeRef {
        let named = |kind: &str, id: &str| ScopeRef {
            scope: Some(kind.into()),
            id: Some(id.into()),
            ..Default::default()
        };
        match self {
            Scope::System => ScopeRef {
                scope: Some("system".into()),
                ..Default::default()
            },
            Scope::Org(id) => named("org", id),
            Scope::Team(id) => named("team", id),
            Scope::Workflow(id) => named("workflow", id),
            Scope::Step { workflow, step } => ScopeRef {
                scope: Some("step".into()),
                workflow_id: Some(workflow.clone()),
                step_id: Some(step.clone()),
                ..Default::default()
            },
        }
    }

    /// The org whose scope this is: an org's own, a workflow's (and its steps') by the
    /// workflow's id, a team's by the tenancy policy's binding; none for the system scope and a
    /// shared team.
    pub fn org<'a>(&'a self, tenancy: &'a Tenancy) -> Option<&'a str> {
        match self {
            Scope::System => None,
            Scope::Org(o) => Some(o),
            Scope::Team(t) => tenancy.team_org(t),
            Scope::Workflow(w) | Scope::Step { workflow: w, .. } => crate::ids::tenant_of(w),
        }
    }

    /// The target whose effective config this scope's document takes part in first: its own
    /// chain (a workflow's or step's with its org).
    pub fn target(&self) -> ConfigTarget {
        let mut t = ConfigTarget::default();
        match self {
            Scope::System => {}
            Scope::Org(o) => t.org_id = Some(o.clone()),
            Scope::Team(team) => t.team_id = Some(team.clone()),
            Scope::Workflow(w) => {
                t.org_id = crate::ids::tenant_of(w).map(str::to_string);
                t.workflow_id = Some(w.clone());
            }
            Scope::Step { workflow, step } => {
                t.org_id = crate::ids::tenant_of(workflow).map(str::to_string);
                t.workflow_id = Some(workflow.clone());
                t.step_id = Some(step.clone());
            }
        }
        t
    }

    pub fn parse(r: &ScopeRef) -> Result<Scope, Vec<FieldError>> {
        let mut errors = Vec::new();
        let need = |field: &str, v: &Option<String>, errors: &mut Vec<FieldError>| -> String {
            match v {
                Some(v) => {
                    check_ident(field, v, errors);
                    v.clone()
                }
                None => {
                    errors.push(FieldError::new(field, "is required for this scope"));
                    String::new()
                }
            }
        };
        // A workflow is named whole (`org~id`), or by its id in the default org.
        let workflow = |field: &str, v: &Option<String>, errors: &mut Vec<FieldError>| match v {
            Some(v) => {
                crate::ids::check_id(field, v, errors);
                crate::ids::resolve(v, None).unwrap_or_default()
            }
            None => need(field, v, errors),
        };
        let scope = match r.scope.as_deref() {
            Some("system") => Scope::System,
            Some("org") => Scope::Org(need("id", &r.id, &mut errors)),
            Some("team") => Scope::Team(need("id", &r.id, &mut errors)),
            Some("workflow") => Scope::Workflow(workflow("id", &r.id, &mut errors)),
            Some("step") => Scope::Step {
                workflow: workflow("workflow_id", &r.workflow_id, &mut errors),
                step: need("step_id", &r.step_id, &mut errors),
            },
            Some(other) => {
                errors.push(FieldError::new(
                    "scope",
                    format!("`{other}` is not one of system, org, team, workflow, step"),
                ));
                Scope::System
            }
            None => {
                errors.push(FieldError::new("scope", "is required"));
                Scope::System
            }
        };
        if errors.is_empty() {
            Ok(scope)
        } else {
            Err(errors)
        }
    }
}

/// Whose effective config to resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct ConfigTarget {
    pub org_id: Option<String>,
    pub team_id: Option<String>,
    pub workflow_id: Option<String>,
    pub step_id: Option<String>,
}

impl ConfigTarget {
    /// The scopes that apply, in merge order.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes = vec![Scope::System];
        if let Some(o) = &self.org_id {
            scopes.push(Scope::Org(o.clone()));
        }
        if let Some(t) = &self.team_id {
            scopes.push(Scope::Team(t.clone()));
        }
        if let Some(w) = &self.workflow_id {
            scopes.push(Scope::Workflow(w.clone()));
            if let Some(s) = &self.step_id {
                scopes.push(Scope::Step {
                    workflow: w.clone(),
                    step: s.clone(),
                });
            }
        }
        scopes
    }
}

/// Shallow merge: each later document's top-level keys replace the earlier ones whole.
pub fn merge<'a>(docs: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Map::new();
    for doc in docs {
        if let Value::Object(m) = doc {
            for (k, v) in m {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// An effective config, with its JSON text ready for `CORETEX_EFFECTIVE_CONFIG`.
#[derive(Debug)]
pub struct Effective {
    pub value: Value,
    pub json: String,
    /// `{"safety": …}` of the system scope when a later scope replaced its `safety`: a tenant's
    /// own policy adds to the system's, never weakens it.
    pub system_policy: Option<Value>,
    /// The system scope's tenancy policy.
    pub tenancy: Arc<Tenancy>,
}

/// The merged document, for what reads an effective config as a whole (the plugins' adapters,
/// which take any owner of one).
impl std::borrow::Borrow<Value> for Effective {
    fn borrow(&self) -> &Value {
        &self.value
    }
}

/// The key of the system scope that holds the tenancy policy (see [`Tenancy`]).
const TENANCY_KEY: &str = "tenancy";

impl Effective {
    /// Merges the documents of `scopes` (in order, `None` where a scope has none) for `target`.
    fn resolve(target: &ConfigTarget, scopes: &[Scope], docs: &[Option<ConfigDoc>]) -> Effective {
        let system = scopes
            .iter()
            .zip(docs)
            .find(|(s, _)| **s == Scope::System)
            .and_then(|(_, d)| d.as_ref())
            .map(|d| &d.data);
        let tenancy = Tenancy::from_system(system);
        let org = target.org_id.as_deref();
        let applied = scopes.iter().zip(docs).filter_map(|(scope, doc)| {
            let doc = doc.as_ref()?;
            match (scope, org) {
                (Scope::Team(team), Some(org)) if tenancy.team_belongs_elsewhere(org, team) => None,
                _ => Some(&doc.data),
            }
        });
        let mut value = merge(applied);
        if let Value::Object(m) = &mut value {
            m.remove(TENANCY_KEY);
        }
        let system_safety = system
            .and_then(|s| s.get("safety"))
            .filter(|s| !s.is_null());
        let system_policy = system_safety
            .filter(|s| value.get("safety") != Some(*s))
            .map(|s| serde_json::json!({ "safety": s }));
        Effective {
            json: value.to_string(),
            value,
            system_policy,
            tenancy: Arc::new(tenancy),
        }
    }
}

/// A stored scope, as [`ConfigService::scopes`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedScope {
    pub key: String,
    pub scope: Scope,
    /// The org it belongs to (see [`Scope::org`]).
    pub org: Option<String>,
    pub revision: u64,
    pub updated_at: crate::time::Millis,
}

/// The effective config a draft document would make (see [`ConfigService::preview`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub effective: Value,
    /// The top-level keys whose merged value the draft changes, in order.
    pub changed: Vec<String>,
    /// The scope's stored revision the draft was merged in place of (0: none stored).
    pub revision: u64,
}

/// One stretch of the scope keys, in key order, that a caller may list (see
/// [`visible_ranges`]).
struct KeyRange {
    prefix: String,
    /// Only the prefix itself, not the longer keys that start with it.
    exact: bool,
}

/// The stretches of scope keys a caller sees, in byte order of their keys: everything for an
/// admin (`None`); for a tenant key its org's scope, its workflows' steps, the teams (those not
/// bound to another org are filtered later) and its workflows — what its effective config may
/// merge, the system scope aside (the host's, not the tenant's to read).
fn visible_ranges(tenant: Option<&str>) -> Vec<KeyRange> {
    let range = |prefix: String, exact: bool| KeyRange { prefix, exact };
    match tenant {
        None => vec![range(String::new(), false)],
        Some(t) => vec![
            range(Scope::Org(t.into()).key(), true),
            range(format!("step:{}", crate::ids::qualify(t, "")), false),
            range("team:".into(), false),
            range(format!("workflow:{}", crate::ids::qualify(t, "")), false),
        ],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid config")]
    Invalid(Vec<FieldError>),
}

const CACHE_TTL: Duration = Duration::from_secs(1);

/// Which kind of plugin a name is, if one is loaded (what the schema checks a plugin name by).
pub type PluginKindOf<'a> = dyn Fn(&str) -> Option<crate::plugins::PluginKind> + Sync + 'a;

/// The top-level keys whose values differ between two merged configs, in order.
fn changed_keys(before: &Value, after: &Value) -> Vec<String> {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return Vec::new();
    };
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .cloned()
        .collect()
}

pub struct ConfigService {
    store: Arc<dyn ConfigStore>,
    bus: SharedBus,
    cache: Mutex<HashMap<ConfigTarget, (Instant, Arc<Effective>)>>,
}

impl ConfigService {
    pub fn new(store: Arc<dyn ConfigStore>, bus: SharedBus) -> Arc<Self> {
        Arc::new(ConfigService {
            store,
            bus,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub async fn get(&self, scope: &Scope) -> Result<Option<ConfigDoc>, ConfigError> {
        Ok(self.store.config_get(&[scope.key()]).await?.pop().flatten())
    }

    /// Checks a scope's document against the schema ([`schema::validate`]); `plugin_kind`
    /// tells which plugins are loaded.
    async fn check(
        &self,
        scope: &Scope,
        data: &Value,
        plugin_kind: &PluginKindOf<'_>,
    ) -> Result<(), ConfigError> {
        let tenancy = self.tenancy().await?;
        let errors = schema::validate(
            scope,
            data,
            &schema::Context {
                plugin_kind,
                tenancy: &tenancy,
            },
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Stores a scope's document once it passes the schema (see [`ConfigService::check`]).
    pub async fn set(
        &self,
        scope: &Scope,
        data: &Value,
        if_match: Option<u64>,
        plugin_kind: &PluginKindOf<'_>,
    ) -> Result<ConfigDoc, ConfigError> {
        self.check(scope, data, plugin_kind).await?;
        let doc = self
            .store
            .config_put(&scope.key(), data, if_match, now_ms())
            .await?;
        self.changed(scope).await;
        Ok(doc)
    }

    pub async fn delete(&self, scope: &Scope, if_match: Option<u64>) -> Result<bool, ConfigError> {
        let deleted = self.store.config_delete(&scope.key(), if_match).await?;
        self.changed(scope).await;
        Ok(deleted)
    }

    /// The effective config of `target` were `scope`'s document `draft` — checked as a write
    /// is, stored nowhere — and which of its top-level keys that changes. The documents are
    /// read afresh, not from the cache, so the comparison is with what is stored now. A scope
    /// outside the target's chain is a 422 naming `target`.
    pub async fn preview(
        &self,
        target: &ConfigTarget,
        scope: &Scope,
        draft: &Value,
        plugin_kind: &PluginKindOf<'_>,
    ) -> Result<Preview, ConfigError> {
        self.check(scope, draft, plugin_kind).await?;
        let scopes = target.scopes();
        let Some(at) = scopes.iter().position(|s| s == scope) else {
            return Err(ConfigError::Invalid(vec![FieldError::new(
                "target",
                format!("does not merge the scope {}", scope.key()),
            )]));
        };
        let keys: Vec<String> = scopes.iter().map(Scope::key).collect();
        let stored = self.store.config_get(&keys).await?;
        let mut drafted = stored.clone();
        let revision = stored
            .get(at)
            .and_then(|d| d.as_ref())
            .map_or(0, |d| d.revision);
        if let Some(slot) = drafted.get_mut(at) {
            *slot = Some(ConfigDoc {
                data: draft.clone(),
                revision: revision + 1,
                updated_at: now_ms(),
            });
        }
        let before = Effective::resolve(target, &scopes, &stored).value;
        let after = Effective::resolve(target, &scopes, &drafted).value;
        Ok(Preview {
            changed: changed_keys(&before, &after),
            effective: after,
            revision,
        })
    }

    /// The scopes that hold a document and `tenant` (`None`: an admin) may see (see
    /// [`visible_ranges`]), by key after `after`, at most `limit`; and the key to go on from
    /// when there may be more.
    pub async fn scopes(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ListedScope>, Option<String>), ConfigError> {
        let tenancy = self.tenancy().await?;
        let visible = |key: &str| match (tenant, Scope::from_key(key)) {
            (_, None) => false,
            (Some(t), Some(Scope::Team(team))) => !tenancy.team_belongs_elsewhere(t, &team),
            (_, Some(_)) => true,
        };
        let mut keys = Vec::new();
        for range in visible_ranges(tenant) {
            let mut from = after.map(str::to_string);
            while keys.len() < limit {
                let want = if range.exact { 1 } else { limit - keys.len() };
                let got = self
                    .store
                    .config_keys(&range.prefix, from.as_deref(), want)
                    .await?;
                let exhausted = got.len() < want || range.exact;
                from = got.last().cloned().or(from);
                keys.extend(
                    got.into_iter()
                        .filter(|k| !range.exact || *k == range.prefix)
                        .filter(|k| visible(k)),
                );
                if exhausted {
                    break;
                }
            }
        }
        keys.truncate(limit);
        let next = (keys.len() == limit)
            .then(|| keys.last().cloned())
            .flatten();
        let docs = self.store.config_get(&keys).await?;
        let listed = keys
            .into_iter()
            .zip(docs)
            .filter_map(|(key, doc)| {
                // Deleted since it was listed: left out.
                let doc = doc?;
                let scope = Scope::from_key(&key)?;
                Some(ListedScope {
                    org: scope.org(&tenancy).map(str::to_string),
                    scope,
                    key,
                    revision: doc.revision,
                    updated_at: doc.updated_at,
                })
            })
            .collect();
        Ok((listed, next))
    }

    /// The merged config for a target, from the cache when fresh.
    pub async fn effective(&self, target: &ConfigTarget) -> Result<Arc<Effective>, ConfigError> {
        if let Some((at, eff)) = self.cache.lock().get(target)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(eff.clone());
        }
        let scopes = target.scopes();
        let keys: Vec<String> = scopes.iter().map(Scope::key).collect();
        let docs = self.store.config_get(&keys).await?;
        let eff = Arc::new(Effective::resolve(target, &scopes, &docs));
        let mut cache = self.cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(target.clone(), (Instant::now(), eff.clone()));
        Ok(eff)
    }

    /// The tenancy policy in force (the system scope's, through the cache).
    pub async fn tenancy(&self) -> Result<Arc<Tenancy>, ConfigError> {
        Ok(self
            .effective(&ConfigTarget::default())
            .await?
            .tenancy
            .clone())
    }

    async fn changed(&self, scope: &Scope) {
        self.cache.lock().clear();
        let msg = ConfigChangedMsg {
            v: VERSION,
            scope: scope.key(),
        };
        let subject = self.bus.subjects().config_changed();
        if let Err(e) = publish_json(self.bus.as_ref(), &subject, &msg).await {
            tracing::warn!(error = %e, "could not announce a config change; other replicas catch up within a second");
        }
    }

    /// Drops cached effective configs whenever any replica announces a change.
    pub async fn listen_for_changes(self: Arc<Self>) {
        let subject = self.bus.subjects().config_changed();
        let mut sub = match self.bus.subscribe(&subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "config change listener could not subscribe");
                return;
            }
        };
        while sub.next().await.is_some() {
            self.cache.lock().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_scopes_replace_top_level_keys_whole() {
        let system = json!({"a": 1, "nested": {"x": 1, "y": 2}, "keep": true});
        let org = json!({"a": 2, "nested": {"x": 9}});
        let step = json!({"a": 3});
        assert_eq!(
            merge([&system, &org, &step]),
            json!({"a": 3, "nested": {"x": 9}, "keep": true})
        );
    }

    #[test]
    fn step_scope_is_keyed_by_workflow_and_step() {
        let a = Scope::Step {
            workflow: "wf1".into(),
            step: "build".into(),
        };
        let b = Scope::Step {
            workflow: "wf2".into(),
            step: "build".into(),
        };
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn target_scopes_follow_the_hierarchy() {
        let t = ConfigTarget {
            org_id: Some("o".into()),
            team_id: Some("t".into()),
            workflow_id: Some("w".into()),
            step_id: Some("s".into()),
        };
        let keys: Vec<_> = t.scopes().iter().map(Scope::key).collect();
        assert_eq!(
            keys,
            [
                "system:default",
                "org:o",
                "team:t",
                "workflow:w",
                "step:w~s"
            ]
        );
    }

    fn docs(target: &ConfigTarget, data: &[Value]) -> Effective {
        let scopes = target.scopes();
        let docs: Vec<Option<ConfigDoc>> = data
            .iter()
            .map(|d| {
                (!d.is_null()).then(|| ConfigDoc {
                    data: d.clone(),
                    revision: 1,
                    updated_at: 0,
                })
            })
            .collect();
        Effective::resolve(target, &scopes, &docs)
    }

    fn org_team(org: &str, team: &str) -> ConfigTarget {
        ConfigTarget {
            org_id: Some(org.into()),
            team_id: Some(team.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_team_bound_to_another_org_is_left_out_and_tenancy_is_never_merged() {
        let system = json!({"tenancy": {"teams": {"payments": "acme"}}, "s": 1});
        let team = json!({"secret": "acme's"});
        let acme = docs(
            &org_team("acme", "payments"),
            &[system.clone(), Value::Null, team.clone()],
        );
        assert_eq!(acme.value, json!({"s": 1, "secret": "acme's"}));
        let beta = docs(&org_team("beta", "payments"), &[system, Value::Null, team]);
        assert_eq!(beta.value, json!({"s": 1}), "{}", beta.value);
        assert!(!beta.json.contains("tenancy"));
        assert!(beta.tenancy.team_belongs_elsewhere("beta", "payments"));
    }

    #[test]
    fn the_system_policy_is_kept_when_a_later_scope_replaces_safety() {
        let target = ConfigTarget {
            org_id: Some("acme".into()),
            ..Default::default()
        };
        let system = json!({"safety": {"denied_topics": ["rm.*"]}});
        let same = docs(&target, &[system.clone(), json!({"x": 1})]);
        assert_eq!(same.system_policy, None, "nothing replaced it");
        let replaced = docs(
            &target,
            &[system, json!({"safety": {"allowed_topics": ["*"]}})],
        );
        assert_eq!(
            replaced.system_policy,
            Some(json!({"safety": {"denied_topics": ["rm.*"]}}))
        );
        assert_eq!(replaced.value["safety"], json!({"allowed_topics": ["*"]}));
    }

    #[test]
    fn a_scope_is_read_back_from_its_key() {
        let scopes = [
            Scope::System,
            Scope::Org("acme".into()),
            Scope::Team("pay:ments".into()),
            Scope::Workflow("acme~wf.1".into()),
            Scope::Step {
                workflow: "acme~wf.1".into(),
                step: "build".into(),
            },
        ];
        for scope in scopes {
            assert_eq!(
                Scope::from_key(&scope.key()),
                Some(scope.clone()),
                "{scope:?}"
            );
            assert_eq!(
                Scope::parse(&scope.to_ref()),
                Ok(scope.clone()),
                "{scope:?}"
            );
        }
        for junk in ["", "org", "org:", "galaxy:x", "step:no-workflow"] {
            assert_eq!(Scope::from_key(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_scope_belongs_to_its_org_and_leads_its_own_chain() {
        let tenancy = Tenancy::from_system(Some(&json!({"tenancy": {"teams": {"pay": "acme"}}})));
        let step = Scope::Step {
            workflow: "acme~wf".into(),
            step: "s".into(),
        };
        assert_eq!(step.org(&tenancy), Some("acme"));
        assert_eq!(Scope::Team("pay".into()).org(&tenancy), Some("acme"));
        assert_eq!(Scope::Team("shared".into()).org(&tenancy), None);
        assert_eq!(Scope::System.org(&tenancy), None);
        let chain: Vec<String> = step.target().scopes().iter().map(Scope::key).collect();
        assert_eq!(
            chain,
            [
                "system:default",
                "org:acme",
                "workflow:acme~wf",
                "step:acme~wf~s"
            ]
        );
        for scope in [
            Scope::System,
            Scope::Org("o".into()),
            Scope::Team("t".into()),
            step,
        ] {
            assert_eq!(
                scope.target().scopes().last(),
                Some(&scope),
                "{scope:?} ends its chain"
            );
        }
    }

    #[test]
    fn a_tenant_sees_the_key_ranges_of_its_org_in_key_order() {
        let ranges = visible_ranges(Some("acme"));
        let prefixes: Vec<&str> = ranges.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(
            prefixes,
            ["org:acme", "step:acme~", "team:", "workflow:acme~"]
        );
        assert!(
            prefixes.windows(2).all(|w| w[0] < w[1]),
            "the cursor runs through them in order"
        );
        assert!(ranges[0].exact && !ranges[1].exact);
        let admin = visible_ranges(None);
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].prefix, "");
    }

    #[test]
    fn changed_keys_are_those_whose_merged_value_differs() {
        let before = json!({"a": 1, "b": {"x": 1}, "gone": true});
        let after = json!({"a": 1, "b": {"x": 2}, "new": 0});
        assert_eq!(changed_keys(&before, &after), ["b", "gone", "new"]);
        assert!(changed_keys(&before, &before).is_empty());
    }

    #[test]
    fn scope_parsing_names_the_missing_field() {
        let err = Scope::parse(&ScopeRef {
            scope: Some("step".into()),
            workflow_id: Some("w".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err[0].field, "step_id");
        let err = Scope::parse(&ScopeRef {
            scope: Some("galaxy".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err[0].field, "scope");
    }
}
