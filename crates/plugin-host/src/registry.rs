//! The registry of loaded plugins: name → plugin, from three sources.
//!
//! * **built-in** — embedded in the binary, loaded at start;
//! * **dir** — `.wasm` files in `--plugin-dir` (name = file stem, `_` read as `-`), scanned every
//!   `poll_interval`: a file whose modification time or size changed is read, and loaded when its
//!   hash changed; a file that is gone is unloaded;
//! * **api** — uploaded with `PUT /api/v1/plugins/{name}` and kept in the store, so every replica
//!   loads it: the replica that took the upload announces `sys.plugins.changed`, the others
//!   compare the store's list with what they run (also every few seconds, in case a notice was
//!   missed) and load what differs. That part needs the store and the bus, so it is the host's
//!   (`coretex::plugins::uploads`); this crate knows neither.
//!
//! A name may come from several sources at once; api wins over dir, dir over built-in, so an
//! upload or a file named `least-loaded` replaces the built-in, and removing it brings the
//! built-in back. The winners are published as one immutable map behind an [`ArcSwap`]: a lookup
//! (once per job) is lock-free, and a swap leaves calls in flight running on the plugin they
//! started with — they hold its `Arc`. A component that fails to load never replaces anything:
//! the failure is kept and listed, and the previous version stays in service.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use super::runtime::{PluginComponent, PluginRuntime, sha256_hex};
use super::threads::PluginThreads;
use super::{
    CallError, FailureReason, LATENCY_BUDGET_KEY, LoadError, PluginKind, check_name, name_from_stem,
};
use crate::breaker::{BreakerConfig, BreakerState, TenantBreaker, TenantBreakers, TenantLimits};
use crate::strategy::LeastLoaded;
use crate::time::{self, Millis, now_ms};

/// Where a plugin came from; a later variant wins over an earlier one for the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Builtin,
    Dir,
    Api,
}

/// A loaded plugin with its circuit breakers (one per tenant: settings one tenant's config hands
/// it can make it fail for that tenant alone) and its counts. A new version of a plugin is a new
/// `Plugin`: it starts with closed breakers and fresh counts.
pub struct Plugin {
    name: String,
    source: Source,
    component: Arc<PluginComponent>,
    breakers: TenantBreakers,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Calls that answered over their latency budget (not counted in `failures`).
    over_budget: AtomicU64,
    rejected: AtomicU64,
    /// `coretex_plugin_calls_total{plugin}`, registered once: a call should not pay for building
    /// a metric key.
    calls_total: metrics::Counter,
    last_failure: Mutex<Option<FailureInfo>>,
    loaded_at: Millis,
}

/// The last failure of a plugin, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct FailureInfo {
    pub reason: FailureReason,
    pub message: String,
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> PluginKind {
        self.component.kind()
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn component(&self) -> &PluginComponent {
        &self.component
    }

    /// The state of `tenant`'s breaker for this plugin.
    pub fn breaker_state(&self, tenant: &str) -> BreakerState {
        self.breakers.state(tenant)
    }

    pub fn breakers(&self) -> &TenantBreakers {
        &self.breakers
    }

    /// Makes one call for `tenant` through its breaker, and counts, logs and remembers how it
    /// went. A call that answers but takes longer than `budget` — the latency budget of its kind
    /// for the job's config ([`latency_budget`](super::latency_budget)) — keeps its answer and
    /// counts as a failure for the breaker: a plugin whose calls keep running past their budget
    /// is switched off like a failing one, and the built-in default decides until its breaker
    /// closes again. Timed by the epoch ticker ([`PluginComponent::ticks`]), which costs a warm
    /// call nothing measurable.
    pub fn call<R>(
        &self,
        tenant: &str,
        budget: Duration,
        f: impl FnOnce(&PluginComponent) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        // While no tenant's breaker has a failure, it answers without a lock or a clock
        // reading: the common case costs two atomic loads (here and in `record_success`).
        if self.breakers.try_acquire(tenant, Instant::now).is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("coretex_plugin_failures_total", "plugin" => self.name.clone(),
                "reason" => FailureReason::BreakerOpen.as_str())
            .increment(1);
            return Err(CallError::new(
                FailureReason::BreakerOpen,
                format!(
                    "the plugin's circuit breaker for tenant `{tenant}` is open after repeated failures"
                ),
            ));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.calls_total.increment(1);
        let started = self.component.ticks();
        let out = f(&self.component);
        let took = self.component.ticks().saturating_sub(started);
        match &out {
            Ok(_) if took <= PluginComponent::ticks_in(budget) => {
                self.breakers.record_success(tenant, Instant::now)
            }
            Ok(_) => self.failed(
                tenant,
                &CallError::new(
                    FailureReason::OverBudget,
                    format!(
                        "answered, but took more than its latency budget of {} ms \
                         (plugins.{LATENCY_BUDGET_KEY}.{})",
                        budget.as_millis(),
                        self.kind()
                    ),
                ),
            ),
            Err(e) => self.failed(tenant, e),
        }
        out
    }

    /// Counts, logs and remembers a failed call (or one over its budget), and tells the tenant's
    /// breaker.
    fn failed(&self, tenant: &str, e: &CallError) {
        self.breakers.record_failure(tenant, Instant::now());
        let count = match e.reason {
            FailureReason::OverBudget => &self.over_budget,
            _ => &self.failures,
        };
        count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("coretex_plugin_failures_total", "plugin" => self.name.clone(),
            "reason" => e.reason.as_str())
        .increment(1);
        if e.reason == FailureReason::OverBudget {
            tracing::warn!(plugin = %self.name, tenant, reason = e.reason.as_str(),
                error = %e.message, "plugin call too slow; its answer is used, its breaker told");
        } else {
            tracing::warn!(plugin = %self.name, tenant, reason = e.reason.as_str(),
                error = %e.message, "plugin call failed; the built-in default decides instead");
        }
        *self.last_failure.lock() = Some(FailureInfo {
            reason: e.reason,
            message: e.message.clone(),
            at: now_ms(),
        });
    }

    /// Its row in the listing; for a tenant's key, only what concerns that tenant (other
    /// tenants' names and failures are theirs).
    pub fn info(&self, seen_by: Option<&str>) -> PluginInfo {
        let (breaker, breakers_open, breaker_open_for, last_failure) = match seen_by {
            None => {
                let (n, open) = self.breakers.not_closed(LISTED_TENANTS);
                let tenants = open.into_iter().map(|b| b.tenant).collect();
                (
                    self.breakers.worst(),
                    n,
                    tenants,
                    self.last_failure.lock().clone(),
                )
            }
            Some(t) => {
                let state = self.breakers.state(t);
                let open = state != BreakerState::Closed;
                let tenants = if open {
                    vec![t.to_string()]
                } else {
                    Vec::new()
                };
                (state, usize::from(open), tenants, None)
            }
        };
        PluginInfo {
            name: self.name.clone(),
            status: "loaded",
            kind: Some(self.kind()),
            version: Some(self.component.version().to_string()),
            hash: Some(self.component.hash().to_string()),
            source: self.source,
            loaded_at: Some(self.loaded_at),
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            over_budget: self.over_budget.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            breaker: Some(breaker),
            breakers_open,
            breaker_open_for,
            last_failure,
            load_error: None,
        }
    }
}

/// How many tenants a plugin's listing names, of those whose breaker is not closed.
const LISTED_TENANTS: usize = 20;

/// One row of `GET /api/v1/plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// `loaded`, or `failed` when no version of the name could be loaded.
    pub status: &'static str,
    pub kind: Option<PluginKind>,
    /// The `coretex:plugin` package version the plugin was built against.
    pub version: Option<String>,
    /// SHA-256 of the component.
    pub hash: Option<String>,
    pub source: Source,
    #[serde(with = "time::rfc3339_opt")]
    pub loaded_at: Option<Millis>,
    pub calls: u64,
    /// Calls that failed (their answer was not used).
    pub failures: u64,
    /// Calls that answered, over the latency budget of their kind: their answer was used, and
    /// the breaker counted them as failures.
    pub over_budget: u64,
    /// Calls refused by the open breaker (the built-in default decided them).
    pub rejected: u64,
    /// The worst state of its breakers (one per tenant): `open` while any tenant's is.
    pub breaker: Option<BreakerState>,
    /// How many tenants' breakers are not closed, and the first of them.
    pub breakers_open: usize,
    pub breaker_open_for: Vec<String>,
    pub last_failure: Option<FailureInfo>,
    /// Why the latest version offered under this name did not load (the listed one, if any,
    /// is the previous version, still in service).
    pub load_error: Option<LoadProblem>,
}

/// A version of a plugin that could not be loaded.
#[derive(Debug, Clone, Serialize)]
pub struct LoadProblem {
    pub source: Source,
    pub message: String,
    pub hash: String,
    #[serde(with = "time::rfc3339")]
    pub at: Millis,
}

pub struct PluginRegistry {
    runtime: Arc<PluginRuntime>,
    breaker: BreakerConfig,
    /// The plugin in service under each name. Looked up once per job, by a name from the config
    /// (not from a client's request): hashed with foldhash, several times faster than SipHash on
    /// a short name, and the keys are only the names of installed plugins.
    active: ArcSwap<ActiveMap>,
    /// Every loaded plugin by name and source; `active` is the highest source of each name.
    loaded: Mutex<BTreeMap<String, BTreeMap<Source, Arc<Plugin>>>>,
    problems: Mutex<BTreeMap<String, LoadProblem>>,
    /// Names the config asked for while nothing by that name was loaded (logged once each).
    pub(super) missing_reported: Mutex<HashSet<String>>,
    /// The native strategy: the default, and the fallback of every strategy plugin.
    pub(super) least_loaded: LeastLoaded,
}

type ActiveMap = HashMap<String, Arc<Plugin>, foldhash::fast::RandomState>;

/// Keeps `--plugin-dir` and the registry in step.
pub struct DirWatcher {
    registry: Arc<PluginRegistry>,
    dir: PathBuf,
    seen: HashMap<String, Seen>,
}

impl DirWatcher {
    /// Scans every `every`, forever.
    pub async fn run(mut self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.scan().await;
        }
    }

    /// Loads new and changed files, unloads the plugins whose file is gone. A file is read only
    /// when its modification time or size changed, and loaded only when its hash did.
    pub async fn scan(&mut self) {
        let mut present = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the plugin dir");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = name_from_stem(stem);
            present.push(name.clone());
            let modified = meta.modified().ok();
            if self
                .seen
                .get(&name)
                .is_some_and(|s| s.modified == modified && s.len == meta.len())
            {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a plugin file");
                    continue;
                }
            };
            let hash = sha256_hex(&bytes);
            let unchanged = self.seen.get(&name).is_some_and(|s| s.hash == hash);
            self.seen.insert(
                name.clone(),
                Seen {
                    modified,
                    len: meta.len(),
                    hash,
                },
            );
            if unchanged {
                continue;
            }
            let registry = self.registry.clone();
            let _ =
                tokio::task::spawn_blocking(move || registry.install(&name, Source::Dir, &bytes))
                    .await;
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for name in gone {
            self.seen.remove(&name);
            self.registry.remove(&name, Source::Dir);
        }
    }
}

/// What the directory scan remembers of a file.
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    hash: String,
}

impl PluginRegistry {
    pub fn new(runtime: Arc<PluginRuntime>, breaker: BreakerConfig) -> Arc<Self> {
        Arc::new(PluginRegistry {
            runtime,
            breaker,
            active: ArcSwap::from_pointee(ActiveMap::default()),
            loaded: Mutex::new(BTreeMap::new()),
            problems: Mutex::new(BTreeMap::new()),
            missing_reported: Mutex::new(HashSet::new()),
            least_loaded: LeastLoaded::default(),
        })
    }

    /// The threads the scheduler's plugin calls run on.
    pub fn threads(&self) -> &PluginThreads {
        self.runtime.threads()
    }

    /// The plugin in service under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.active.load().get(name).cloned()
    }

    /// Runs `f` on the plugin in service under `name`, borrowed rather than counted (the hot
    /// path: one dispatch decision per job).
    pub fn with_plugin<R>(&self, name: &str, f: impl FnOnce(&Plugin) -> R) -> Option<R> {
        self.active.load().get(name).map(|p| f(p))
    }

    /// The tenants' breakers that are not closed, across the plugins in service (at most
    /// `limit` listed), and how many there are in all.
    pub fn open_breakers(&self, limit: usize) -> (usize, Vec<TenantBreaker>) {
        let mut total = 0;
        let mut listed = Vec::new();
        for plugin in self.active.load().values() {
            let (n, some) = plugin
                .breakers
                .not_closed(limit.saturating_sub(listed.len()));
            total += n;
            listed.extend(some);
        }
        (total, listed)
    }

    /// Every plugin in service, and every name whose latest version failed to load.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.list_for(None)
    }

    /// [`Self::list`] as the key of `tenant` sees it (`None`: an admin).
    pub fn list_for(&self, tenant: Option<&str>) -> Vec<PluginInfo> {
        let active = self.active.load();
        let problems = self.problems.lock();
        let mut out: BTreeMap<String, PluginInfo> = active
            .iter()
            .map(|(name, p)| (name.clone(), p.info(tenant)))
            .collect();
        for (name, problem) in problems.iter() {
            match out.get_mut(name) {
                Some(info) => info.load_error = Some(problem.clone()),
                None => {
                    out.insert(
                        name.clone(),
                        PluginInfo {
                            name: name.clone(),
                            status: "failed",
                            kind: None,
                            version: None,
                            hash: None,
                            source: problem.source,
                            loaded_at: None,
                            calls: 0,
                            failures: 0,
                            over_budget: 0,
                            rejected: 0,
                            breaker: None,
                            breakers_open: 0,
                            breaker_open_for: Vec::new(),
                            last_failure: None,
                            load_error: Some(problem.clone()),
                        },
                    );
                }
            }
        }
        out.into_values().collect()
    }

    /// Loads `bytes` as plugin `name` from `source` and puts it in service (if no higher source
    /// holds the name). A failure is recorded and listed; whatever served the name still does.
    /// Compiles when the cache misses: call it off the async threads.
    pub fn install(
        &self,
        name: &str,
        source: Source,
        bytes: &[u8],
    ) -> Result<Arc<Plugin>, LoadError> {
        let component = self.load(name, source, bytes)?;
        Ok(self.put_in_service(name, source, component))
    }

    /// Loads a component for `name`, recording (and logging) why when it cannot be loaded; puts
    /// nothing in service (see [`Self::put_in_service`]). Compiles when the cache misses.
    pub fn load(
        &self,
        name: &str,
        source: Source,
        bytes: &[u8],
    ) -> Result<Arc<PluginComponent>, LoadError> {
        let loaded = check_name(name).and_then(|()| self.runtime.load(bytes));
        match loaded {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::error!(plugin = name, source = ?source, error = %e,
                    "plugin not loaded; the previous version (if any) stays in service");
                self.problems.lock().insert(
                    name.to_string(),
                    LoadProblem {
                        source,
                        message: e.to_string(),
                        hash: sha256_hex(bytes),
                        at: now_ms(),
                    },
                );
                Err(e)
            }
        }
    }

    /// Puts a loaded component in service as `name` from `source` (if no higher source holds
    /// the name), replacing that source's previous version.
    pub fn put_in_service(
        &self,
        name: &str,
        source: Source,
        component: Arc<PluginComponent>,
    ) -> Arc<Plugin> {
        let plugin = Arc::new(Plugin {
            name: name.to_string(),
            source,
            breakers: TenantBreakers::new(
                format!("plugin:{name}"),
                self.breaker,
                TenantLimits::default(),
            ),
            component,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            calls_total: metrics::counter!("coretex_plugin_calls_total", "plugin" => name.to_string()),
            last_failure: Mutex::new(None),
            loaded_at: now_ms(),
        });
        tracing::info!(plugin = name, source = ?source, kind = %plugin.kind(),
            version = plugin.component.version(), hash = plugin.component.hash(),
            from_cache = plugin.component.from_cache(), "plugin loaded");
        let mut loaded = self.loaded.lock();
        self.problems.lock().remove(name);
        loaded
            .entry(name.to_string())
            .or_default()
            .insert(source, plugin.clone());
        self.publish(&loaded);
        plugin
    }

    /// Takes the `source` version of `name` out of service (a lower source takes over, if any).
    pub fn remove(&self, name: &str, source: Source) -> bool {
        let mut loaded = self.loaded.lock();
        let removed = match loaded.get_mut(name) {
            Some(versions) => {
                let removed = versions.remove(&source).is_some();
                if versions.is_empty() {
                    loaded.remove(name);
                }
                removed
            }
            None => false,
        };
        let mut problems = self.problems.lock();
        if problems.get(name).is_some_and(|p| p.source == source) {
            problems.remove(name);
        }
        drop(problems);
        if removed {
            tracing::info!(plugin = name, source = ?source, "plugin unloaded");
            self.publish(&loaded);
        }
        removed
    }

    fn publish(&self, loaded: &BTreeMap<String, BTreeMap<Source, Arc<Plugin>>>) {
        let winners = loaded
            .iter()
            .filter_map(|(name, versions)| {
                let (_, top) = versions.last_key_value()?;
                Some((name.clone(), top.clone()))
            })
            .collect();
        self.active.store(Arc::new(winners));
    }

    /// The version of `name` loaded from `source`, in service or not.
    pub fn loaded_from(&self, name: &str, source: Source) -> Option<Arc<Plugin>> {
        self.loaded.lock().get(name)?.get(&source).cloned()
    }

    /// Whether the `source` version of `name` with content hash `hash` is still to be loaded:
    /// neither loaded already nor failed to load the last time it was tried.
    pub fn wants(&self, name: &str, source: Source, hash: &str) -> bool {
        let current = self.loaded_from(name, source);
        if current.is_some_and(|p| p.component.hash() == hash) {
            return false;
        }
        !self
            .problems
            .lock()
            .get(name)
            .is_some_and(|p| p.source == source && p.hash == hash)
    }

    /// The names with a version loaded from `source`.
    pub fn names_from(&self, source: Source) -> Vec<String> {
        self.loaded
            .lock()
            .iter()
            .filter(|(_, versions)| versions.contains_key(&source))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A watcher of `dir`; its first [`DirWatcher::scan`] loads what is there.
    pub fn watch_dir(self: &Arc<Self>, dir: PathBuf) -> DirWatcher {
        DirWatcher {
            registry: self.clone(),
            dir,
            seen: HashMap::new(),
        }
    }
}
