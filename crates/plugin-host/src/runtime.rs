//! The plugin runtime: the one module that touches wasmtime. Everything else in Coretex sees
//! [`PluginRuntime::load`] and the typed calls of a [`PluginComponent`], in the host's own types.
//!
//! # The sandbox
//!
//! A plugin runs in a [`Store`] of its own with an **epoch deadline** per call (a ticker thread
//! advances the engine's epoch every millisecond while calls run, and sleeps when none has for a
//! second — see [`EpochTicker`]; a call gets `call_deadline` worth of ticks and traps when they
//! run out), a **memory cap** (a resource limiter refuses to grow a linear
//! memory past `memory_cap`, and the refusal is a trap), and **WASI with nothing in it**: no
//! preopened directory, no socket permission, no environment, no arguments, stdin empty and
//! stdout/stderr discarded. Rust plugins import WASI for their standard library, so it is linked,
//! but there is nothing behind it to read, write or leak.
//!
//! WASI is the host's own shim ([`wasi_shim`](super::wasi_shim)): just what a plugin's
//! standard library imports (clocks, random bytes, empty stdin, discarding stdout/stderr, no
//! environment, no files), defined under the names each component imports, with every other
//! import — filesystem operations, sockets — a function that traps. Nothing in it waits, so
//! plugins are called **synchronously**, on the caller's thread and stack: no fiber, no future.
//! The scheduler's callers are async tasks, so their calls are handed to threads of their own
//! ([`threads`](super::threads)), where a slow call holds up no task; the workflow engine
//! calls from Tokio's blocking pool.
//! `wasmtime_wasi` is not used: its async form needs a fiber per call (a tenth of a call's
//! cost), and its sync form's blocking stream operations enter a Tokio runtime with `block_on`,
//! which panics when the caller — the scheduler — is itself a Tokio task, so one `eprintln!`
//! in a plugin would take a scheduler task down. The shim's writes never block and never touch
//! Tokio. A plugin that waits on a clock (a `sleep`) fails its call
//! ([`FailureReason::Blocked`]).
//!
//! # The instance pool
//!
//! Instantiating a component costs 15–20 µs (a store, a linear memory mapped from its data
//! segments, the guest's own start-up); a call on a warm instance about 0.3 µs (below). So
//! instances are kept warm and reused, and a call that finds one idle pays only for itself. Each
//! [`PluginComponent`] has an `InstancePre` (imports resolved and type-checked once, at load)
//! and its idle instances: the one that ran last in a slot taken and refilled with one atomic
//! swap each (no lock: the common case, a call at a time), and the others in a stack behind a
//! mutex, for when calls run concurrently. A call takes one (or instantiates when none is
//! idle), runs on it alone — nothing is locked during the call, so as many calls run at once as
//! there are threads calling — and puts it back, into the slot if it is free: the instance that
//! ran last, whose memory is warm in cache, runs next. The stack is bounded (twice the CPUs) so
//! a burst of concurrent calls does not leave a crowd of idle instances behind.
//!
//! An instance keeps its linear memory between calls, which is what lets `round-robin` remember
//! whose turn it is; it also means the state of one instance is not the state of another, so a
//! plugin may keep hints between calls, never truth. Reuse has a price that recycling bounds: an
//! instance is dropped after `recycle_after` calls (10,000 by default), so a slow leak or a
//! fragmenting allocator inside a plugin never grows without end, and it is dropped at once
//! after any failed call — after a trap its memory may be half-written, and wasmtime refuses to
//! enter it again anyway. The next call instantiates a fresh one; a failing plugin therefore
//! pays an instantiation per failure, which its circuit breaker soon stops.
//!
//! Per-call data a strategy may ask for (the job's labels, a candidate's id) stays where it is:
//! the store holds a pointer to the caller's borrowed [`DispatchCall`] for the duration of the
//! call only. What does cross is twelve bytes per candidate, as one list of numbers, a block per
//! field (`wit/dispatch.wit` says why not a list of records, nor a list per field): each
//! instance keeps the list and refills it in one pass, so the host allocates nothing per call,
//! and wasmtime copies it into the guest in one go, where the SDK reads each block in place as
//! a slice. The answer holds no string (a `no-worker` reason or an error message is fetched by
//! a second call, `message`, only when there is one), so the guest has no post-return to run.
//! At a thousand candidates a call costs about 1.3–1.4 times the native least-loaded scan
//! (4.3–4.5 µs against 3.2–3.5 µs; it was ten times with a `list<record>`, which wasmtime 48 writes field by
//! field, and three times with three lists and the async call).
//!
//! At one candidate a call costs about 0.35 µs through the adapter the scheduler calls
//! (`benches/plugins.rs`, `component`; it was 0.94 µs with `wasmtime_wasi`'s async form, three
//! lists and a string in the answer), of which the adapter's part — the config read, the plugin
//! looked up by name, its breaker and counters — is 25–45 ns: the sandboxed call alone (the
//! instance taken and put back, the list refilled, the call; `runtime` in the bench) is about
//! 0.30 µs. By `perf`, three fifths of a call is wasmtime's fixed price for a component call:
//! entering the instance, lowering the arguments — the list is a call into the guest's
//! allocator, a second entry into wasm — and lifting the answer; a fair part of that is
//! wasmtime looking up, on every call, the code of each function it enters (it initialises a
//! function reference afresh each time it needs one). The guest's own work (its allocator, the
//! strategy, freeing the list) is about an eighth. What is left to take is wasmtime's, out of
//! reach without changing wasmtime, so the 0.3 µs target of SPEC §9 is not met (0.32–0.37 µs
//! from run to run on the 2-core reference machine, a shared VM).
//!
//! # The cache
//!
//! Compiling a component takes from milliseconds to seconds; loading a compiled one takes
//! milliseconds. Compiled components are kept in `cache_dir` under the SHA-256 of the component's
//! bytes and a hash of everything that decides whether wasmtime can load the artifact (its
//! version, the compiler's target and flags, the engine's settings), and are loaded with
//! `Component::deserialize_file`, which maps the file instead of reading it. A restart, a second
//! replica on the same machine or a second load of the same bytes compiles nothing.
//!
//! Loading an artifact is `unsafe`: it is native code, run as it is, so whoever can write into
//! the directory can make the host run anything. The directory is per user
//! ([`default_cache_dir`](super::default_cache_dir): `$XDG_CACHE_HOME` or `~/.cache`, never a
//! shared temporary directory) and created private (0700); and before each load the host checks
//! that the directory and the file belong to its own user and that no one else may write them
//! (no group or other write bit). A directory or file that fails the check — made by another
//! user first, or opened up since — is not read: the component is compiled in memory, and the
//! refusal logged. No cache directory at all (no home) compiles every load.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{
    Config, Engine, OptLevel, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap,
};

use super::threads::PluginThreads;
use super::wasi_shim::{self, Blocked, HasWasiShim, WasiShim};

use super::{CallError, FailureReason, LoadError, PluginKind, PluginSettings};
use crate::job::{JobSpec, JobState, Priority};
use crate::retry::RetryDecision;
use crate::strategy::{Candidate, Pick};

/// The generated bindings of the three worlds, and of `expression-evaluator` (which the built-in
/// `cel` exports beside `step-condition`); nothing outside this module sees them.
mod wit {
    pub mod dispatch {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "dispatch-strategy",
        });
    }
    pub mod condition {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "step-condition",
            with: { "coretex:plugin/types": super::dispatch::coretex::plugin::types },
        });
    }
    pub mod retry {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "retry-policy",
            with: { "coretex:plugin/types": super::dispatch::coretex::plugin::types },
        });
    }
    pub mod expression {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "expression-evaluator",
            with: { "coretex:plugin/types": super::dispatch::coretex::plugin::types },
            // A scope's variables go in as borrowed text: no copy of `steps` per call.
            ownership: Borrowing { duplicate_if_necessary: false },
        });
    }
}

use wit::dispatch::coretex::plugin::types::PluginError;
use wit::dispatch::exports::coretex::plugin::dispatch as wire_dispatch;
use wit::expression::exports::coretex::plugin::expression as wire_expression;
use wit::retry::exports::coretex::plugin::retry as wire_retry;

/// How often the engine's epoch advances: the resolution of every call deadline.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The longest message a plugin can put in a log line or on a job.
const MAX_MESSAGE: usize = 512;

/// Limits applied to every instance, from [`PluginSettings`].
#[derive(Debug, Clone, Copy)]
struct SandboxLimits {
    deadline_ticks: u64,
    /// For step conditions, templates and `for_each`.
    expression_deadline_ticks: u64,
    memory_cap: usize,
    recycle_after: u64,
    max_idle: usize,
}

/// The engine, the linker every plugin is resolved against, and the compiled-component cache.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<Sandbox>,
    limits: SandboxLimits,
    /// `None`: compile every load in memory.
    cache_dir: Option<PathBuf>,
    /// The hash of what makes a compiled artifact loadable by this engine, in cache file names.
    engine_tag: String,
    compiles: AtomicU64,
    ticker: Arc<EpochTicker>,
    /// Where the scheduler's calls run (see [`PluginThreads`]).
    threads: PluginThreads,
}

impl PluginRuntime {
    pub fn new(settings: &PluginSettings) -> Result<Arc<Self>, LoadError> {
        let mut config = Config::new();
        // Calls are interrupted by epoch, not fuel: an epoch check is a load and a compare at
        // loop heads and function entries, where fuel counting costs on every block.
        config.epoch_interruption(true);
        // Plugins are called one call at a time per store; the component-model-async machinery
        // (tasks, streams, futures) would only add per-store set-up to every instantiation.
        config.concurrency_support(false);
        // Deep recursion traps as a stack overflow long before it could hurt the host. Calls run
        // on the caller's own stack (a plugin thread's, a Tokio blocking thread's or a test
        // thread's: 2 MiB), so this leaves the host frames under the call three quarters of it.
        config.max_wasm_stack(512 << 10);
        // Plugins are compiled once and cached, so spend compile time for faster calls.
        config.cranelift_opt_level(OptLevel::Speed);
        // A large component (CEL is 3 MB) compiles on every core the first time.
        config.parallel_compilation(true);
        // A trap is reported by its cause; a backtrace through a plugin stripped of symbols is
        // noise in a log line, and capturing it costs on every trap.
        config.wasm_backtrace_max_frames(None);
        // Instances start from a copy-on-write image of the initial memory: instantiation maps
        // pages instead of copying data segments, which keeps recycling cheap.
        config.memory_init_cow(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let ticker = EpochTicker::start(&engine)?;
        let threads = PluginThreads::start(settings.threads)
            .map_err(|e| LoadError::Invalid(format!("cannot start the plugin threads: {e}")))?;

        // The host's own imports; WASI is added per component (`load`), under the names it imports.
        let mut linker = Linker::new(&engine);
        wit::dispatch::DispatchStrategy::add_to_linker::<Sandbox, HasSelf<Sandbox>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;

        let cache_dir = settings.cache_dir.as_deref().and_then(|dir| {
            create_private_dir(dir)
                .inspect_err(|e| {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "cannot create the plugin cache dir; every plugin is compiled in memory");
                })
                .ok()
                .map(|()| dir.to_path_buf())
        });
        let mut tag = Sha256Hasher::default();
        engine.precompile_compatibility_hash().hash(&mut tag);
        let tick_ms = EPOCH_TICK.as_millis().max(1);
        let max_idle = std::thread::available_parallelism()
            .map_or(2, |n| n.get() * 2)
            .clamp(2, 64);
        Ok(Arc::new(PluginRuntime {
            limits: SandboxLimits {
                deadline_ticks: (settings.call_deadline.as_millis() / tick_ms).max(1) as u64,
                expression_deadline_ticks: (settings.expression_deadline.as_millis() / tick_ms)
                    .max(1) as u64,
                memory_cap: settings.memory_cap,
                recycle_after: settings.recycle_after.max(1),
                max_idle,
            },
            engine,
            linker,
            cache_dir,
            engine_tag: format!("{:016x}", tag.finish()),
            compiles: AtomicU64::new(0),
            ticker,
            threads,
        }))
    }

    /// The threads the scheduler's plugin calls run on.
    pub fn threads(&self) -> &PluginThreads {
        &self.threads
    }

    /// Whether the epoch ticker sleeps, no instance having run for a second.
    pub fn ticker_asleep(&self) -> bool {
        self.ticker.is_asleep()
    }

    /// How many components this runtime compiled (a cache hit compiles nothing).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Where the compiled form of `bytes` is cached (none without a cache dir).
    pub fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        self.cache_file(&sha256_hex(bytes))
    }

    fn cache_file(&self, hash: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{hash}-{}.cwasm", self.engine_tag)))
    }

    /// The cache file for `hash` when the cache dir may be trusted now: it is checked at each
    /// load, not only at start, so one opened up meanwhile is not read either.
    fn trusted_cache_file(&self, hash: &str) -> Option<PathBuf> {
        let path = self.cache_file(hash)?;
        let dir = path.parent()?;
        match std::fs::metadata(dir)
            .map_err(|e| e.to_string())
            .and_then(|meta| private_to_this_user(&meta))
        {
            Ok(()) => Some(path),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), why,
                    "the plugin cache dir is not private to this user; compiled plugins are \
                     neither read from it nor written to it (compiling in memory)");
                None
            }
        }
    }

    /// Compiles (or loads from the cache), checks the kind, resolves the imports and
    /// instantiates once — a component that cannot run is refused here, not at its first call.
    /// Compiling can take seconds: call this off the async threads.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<PluginComponent>, LoadError> {
        let hash = sha256_hex(bytes);
        let path = self.trusted_cache_file(&hash);
        let cached = || path.as_deref().and_then(|p| self.deserialize(p));
        let (component, from_cache) = match cached() {
            Some(c) => (c, true),
            None => {
                // One compile at a time in the process: each uses every core already, and a
                // second host in the process (tests start many) then finds the first one's
                // artifact in the cache instead of compiling the same bytes again.
                static COMPILING: Mutex<()> = Mutex::new(());
                let _one_at_a_time = COMPILING.lock();
                match cached() {
                    Some(c) => (c, true),
                    None => (self.compile(bytes, path.as_deref())?, false),
                }
            }
        };
        let Exported {
            kind,
            version,
            expression,
        } = exported(&self.engine, &component)?;
        let link = |e: wasmtime::Error| LoadError::Link(format!("{e:#}"));
        let mut linker = self.linker.clone();
        wasi_shim::link(&mut linker, &self.engine, &component).map_err(link)?;
        let pre = linker.instantiate_pre(&component).map_err(link)?;
        let pre = match kind {
            PluginKind::DispatchStrategy => {
                Pre::Dispatch(wit::dispatch::DispatchStrategyPre::new(pre).map_err(link)?)
            }
            PluginKind::StepCondition => Pre::Condition {
                condition: wit::condition::StepConditionIndices::new(&pre).map_err(link)?,
                expression: expression
                    .then(|| wit::expression::ExpressionEvaluatorIndices::new(&pre))
                    .transpose()
                    .map_err(link)?,
                pre,
            },
            PluginKind::RetryPolicy => {
                Pre::Retry(wit::retry::RetryPolicyPre::new(pre).map_err(link)?)
            }
        };
        let loaded = Arc::new(PluginComponent {
            kind,
            version,
            hash,
            from_cache,
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            limits: self.limits,
            pre,
            hot: AtomicPtr::new(std::ptr::null_mut()),
            idle: Mutex::new(Vec::new()),
            instantiations: AtomicU64::new(0),
        });
        let first = loaded
            .instantiate()
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        loaded.check_in(Box::new(first));
        Ok(loaded)
    }

    /// The compiled component at `path` (in a directory found private to this user), if the
    /// file is there, is a regular file, and is this user's and writable by no one else.
    fn deserialize(&self, path: &Path) -> Option<Component> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let trusted = if meta.is_file() {
            private_to_this_user(&meta)
        } else {
            Err("not a regular file".into())
        };
        if let Err(why) = trusted {
            tracing::warn!(path = %path.display(), why,
                "a compiled plugin in the cache is not private to this user; compiling again");
            return None;
        }
        // SAFETY: the file is this user's own and no one else may write it, in a directory
        // of which the same holds (so no one else can have put it there or swapped it since),
        // written by `compile` below from `Component::serialize` of an engine with the same
        // compatibility hash (it is in the file name); wasmtime checks the header again and
        // refuses a mismatch.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"),
                    "unusable compiled plugin in the cache; compiling again");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Compiles `bytes`, and caches the result at `path` (if any).
    fn compile(&self, bytes: &[u8], path: Option<&Path>) -> Result<Component, LoadError> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let Some(path) = path else {
            return Ok(component);
        };
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) = write_atomically(path, &artifact) {
                    tracing::warn!(path = %path.display(), error = %e,
                        "could not cache a compiled plugin; it will be compiled again next time");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not serialize a compiled plugin")
            }
        }
        Ok(component)
    }
}

/// How long the ticker goes on ticking after the last call ended before it sleeps.
const TICKER_IDLE: Duration = Duration::from_secs(1);

/// How often a sleeping ticker looks whether its engine is gone (a call wakes it at once).
const TICKER_SLEEP: Duration = Duration::from_secs(10);

/// The thread that advances the engine's epoch every tick while any instance runs (a call, or
/// a start-up), for as long as the engine lives. When nothing has run for [`TICKER_IDLE`] it
/// parks, so an idle host is not woken a thousand times a second (1% of a core here, and a
/// context switch each on machines whose cores Redis and NATS share); the next call unparks it
/// before it starts. A call's deadline counts from the epoch at its start, so a call made while
/// the ticker slept gets all of its ticks.
pub(crate) struct EpochTicker {
    /// How many ticks so far: the clock calls are timed by against their latency budget.
    ticks: AtomicU64,
    /// Instances running now.
    running: AtomicUsize,
    /// The ticker is asleep, or about to be: the next call must wake it.
    asleep: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// Counts one running instance while it lives.
pub(crate) struct Running<'a>(&'a EpochTicker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    fn start(engine: &Engine) -> Result<Arc<Self>, LoadError> {
        let ticker = Arc::new(EpochTicker {
            ticks: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            asleep: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        });
        let weak = engine.weak();
        let this = ticker.clone();
        let idle_ticks = (TICKER_IDLE.as_millis() / EPOCH_TICK.as_millis().max(1)) as u32;
        let spawned = std::thread::Builder::new()
            .name("coretex-plugin-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                    this.ticks.fetch_add(1, Ordering::Relaxed);
                    if this.running.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                        continue;
                    }
                    idle += 1;
                    if idle < idle_ticks {
                        continue;
                    }
                    // Asleep first, then look: a call either sees `asleep` and wakes this
                    // thread, or has counted itself in `running` before the look (both are
                    // sequentially consistent).
                    this.asleep.store(true, Ordering::SeqCst);
                    while this.asleep.load(Ordering::SeqCst)
                        && this.running.load(Ordering::SeqCst) == 0
                    {
                        std::thread::park_timeout(TICKER_SLEEP);
                        if weak.upgrade().is_none() {
                            return;
                        }
                    }
                    this.asleep.store(false, Ordering::SeqCst);
                    idle = 0;
                }
            });
        // Without the ticker no deadline ever fires; refuse to run plugins at all instead.
        let handle = spawned.map_err(|e| {
            LoadError::Invalid(format!("cannot start the plugin epoch ticker: {e}"))
        })?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// Counts an instance as running until the guard drops, waking the ticker if it sleeps.
    fn running(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst)
            && self.asleep.swap(false, Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Running(self)
    }

    fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }
}

/// The `coretex:plugin` versions this host speaks (the WIT in `wit/`).
const WIT_VERSIONS: &str = "0.2.";

/// What a component exports, as far as the host cares.
struct Exported {
    kind: PluginKind,
    /// The `coretex:plugin` version of the interface that gives the kind.
    version: String,
    /// Whether it exports `coretex:plugin/expression` too (it evaluates templates).
    expression: bool,
}

/// Reads the kind from the one `coretex:plugin/…@0.2.x` plugin interface the component exports
/// (`dispatch`, `condition` or `retry`), and whether it exports `expression` beside it.
fn exported(engine: &Engine, component: &Component) -> Result<Exported, LoadError> {
    let ty = component.component_type();
    let mut found = Vec::new();
    let mut expression = false;
    for (name, _) in ty.exports(engine) {
        let Some(rest) = name.strip_prefix("coretex:plugin/") else {
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match interface {
            "dispatch" => Some(PluginKind::DispatchStrategy),
            "condition" => Some(PluginKind::StepCondition),
            "retry" => Some(PluginKind::RetryPolicy),
            "expression" => None,
            _ => continue,
        };
        if !version.starts_with(WIT_VERSIONS) {
            return Err(LoadError::NotAPlugin(format!(
                "it exports `{name}`, and this host speaks coretex:plugin {WIT_VERSIONS}x \
                 (rebuild the plugin against this host's SDK)"
            )));
        }
        match kind {
            Some(kind) => found.push((kind, version.to_string())),
            None => expression = true,
        }
    }
    let (kind, version) = match found.len() {
        1 => found.remove(0),
        0 => {
            let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
            return Err(LoadError::NotAPlugin(format!(
                "it exports none of coretex:plugin/dispatch, condition or retry (it exports: {})",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            )));
        }
        _ => {
            return Err(LoadError::NotAPlugin(
                "it exports more than one plugin interface".into(),
            ));
        }
    };
    if expression && kind != PluginKind::StepCondition {
        return Err(LoadError::NotAPlugin(
            "it exports coretex:plugin/expression beside another interface than condition".into(),
        ));
    }
    Ok(Exported {
        kind,
        version,
        expression,
    })
}

enum Pre {
    Dispatch(wit::dispatch::DispatchStrategyPre<Sandbox>),
    /// A step condition, and its `expression` exports if it has them: looked up by hand on one
    /// instance, the generated `…Pre` of a world instantiating one of its own.
    Condition {
        pre: InstancePre<Sandbox>,
        condition: wit::condition::StepConditionIndices,
        expression: Option<wit::expression::ExpressionEvaluatorIndices>,
    },
    Retry(wit::retry::RetryPolicyPre<Sandbox>),
}

enum Exports {
    Dispatch(wit::dispatch::DispatchStrategy),
    Condition {
        condition: wit::condition::StepCondition,
        expression: Option<wit::expression::ExpressionEvaluator>,
    },
    Retry(wit::retry::RetryPolicy),
}

/// A loaded plugin: its kind, its `InstancePre` and its idle instances.
pub struct PluginComponent {
    kind: PluginKind,
    version: String,
    hash: String,
    from_cache: bool,
    engine: Engine,
    ticker: Arc<EpochTicker>,
    limits: SandboxLimits,
    pre: Pre,
    /// The idle instance that ran last, or null: taken and put back with one atomic swap each,
    /// without a lock, by the calls that find it there (nearly all of them, unless calls run
    /// concurrently). Owns the `Box` it points to.
    hot: AtomicPtr<Instance>,
    /// The other idle instances, most recent last.
    #[allow(
        clippy::vec_box,
        reason = "instances move between here and `hot` as boxes, never copied or reallocated"
    )]
    idle: Mutex<Vec<Box<Instance>>>,
    instantiations: AtomicU64,
}

impl Drop for PluginComponent {
    fn drop(&mut self) {
        let hot = *self.hot.get_mut();
        if !hot.is_null() {
            // SAFETY: a non-null `hot` came from `Box::into_raw` in `check_in`, and a swap that
            // took it out of `hot` would have left null; `&mut self` means no one else holds it.
            drop(unsafe { Box::from_raw(hot) });
        }
    }
}

// `hot` hands instances from thread to thread, as the mutex did.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Instance>();
};

/// One warm instance, used by one call at a time.
pub struct Instance {
    store: Store<Sandbox>,
    exports: Exports,
    calls: u64,
    /// The wire form of the candidates, kept so that a call allocates nothing on this side.
    wire: wire_dispatch::Candidates,
}

/// What a dispatch strategy is asked: borrowed from the scheduler for the length of the call.
#[derive(Clone, Copy)]
pub struct DispatchCall<'a> {
    pub job: &'a JobSpec,
    pub candidates: &'a [Candidate],
    /// The effective config's `dispatch` object.
    pub settings: Option<&'a serde_json::Value>,
}

/// What a retry policy is told about a failure.
#[derive(Debug, Clone)]
pub struct RetryCall<'a> {
    pub topic: &'a str,
    pub attempt: u32,
    /// FAILED, TIMEOUT or CANCELLED.
    pub outcome: JobState,
    pub error_code: &'a str,
    pub error_message: &'a str,
    pub elapsed_ms: u64,
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub multiplier: Option<f64>,
}

impl PluginComponent {
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The version of the `coretex:plugin` package the component was built against.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether it was loaded from the compiled-component cache rather than compiled.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Whether it evaluates workflow templates and `for_each` (it exports
    /// `coretex:plugin/expression`).
    pub fn evaluates_expressions(&self) -> bool {
        matches!(
            self.pre,
            Pre::Condition {
                expression: Some(_),
                ..
            }
        )
    }

    /// How long one condition, template or `for_each` evaluation may run.
    pub fn expression_deadline(&self) -> Duration {
        EPOCH_TICK.saturating_mul(
            u32::try_from(self.limits.expression_deadline_ticks).unwrap_or(u32::MAX),
        )
    }

    /// The most linear memory one instance may have, in bytes.
    pub fn memory_cap(&self) -> usize {
        self.limits.memory_cap
    }

    /// How many instances were made so far (warm reuse keeps this low).
    pub fn instantiations(&self) -> u64 {
        self.instantiations.load(Ordering::Relaxed)
    }

    /// The epoch ticker's count, one per [`EPOCH_TICK`] (a millisecond): the clock a call is
    /// timed by against its latency budget. One atomic load, where reading the system clock
    /// twice would add a sixth to a warm call. It never runs fast (a tick is a sleep of at least
    /// a millisecond), so a call it counts as slow was slow; one just over its budget may be
    /// counted under it (the ticker, or the call, may be descheduled for a while).
    pub fn ticks(&self) -> u64 {
        self.ticker.ticks.load(Ordering::Relaxed)
    }

    /// How many ticks of [`Self::ticks`] `budget` is (a budget under a tick is one tick).
    pub fn ticks_in(budget: Duration) -> u64 {
        u64::try_from(budget.as_millis() / EPOCH_TICK.as_millis().max(1))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// A fresh instance, outside the pool (the pool uses this; so does the benchmark).
    pub fn instantiate(&self) -> Result<Instance, CallError> {
        let _running = self.ticker.running();
        self.instantiations.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(&self.engine, Sandbox::new(self.limits.memory_cap));
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        // A start-up that loops is stopped like a call that loops, but start-up (a component's
        // initialisers) gets the deadline of a hundred calls: it runs once per instance.
        store.set_epoch_deadline(self.limits.deadline_ticks * 100);
        let exports = match &self.pre {
            Pre::Dispatch(pre) => {
                let out = pre.instantiate(&mut store);
                Exports::Dispatch(settle(&store, out)?)
            }
            Pre::Condition {
                pre,
                condition,
                expression,
            } => {
                let out = pre.instantiate(&mut store).and_then(|instance| {
                    Ok(Exports::Condition {
                        condition: condition.load(&mut store, &instance)?,
                        expression: expression
                            .as_ref()
                            .map(|e| e.load(&mut store, &instance))
                            .transpose()?,
                    })
                });
                settle(&store, out)?
            }
            Pre::Retry(pre) => {
                let out = pre.instantiate(&mut store);
                Exports::Retry(settle(&store, out)?)
            }
        };
        Ok(Instance {
            store,
            exports,
            calls: 0,
            wire: wire_dispatch::Candidates {
                fields: Vec::new(),
                preferred: None,
            },
        })
    }

    /// Runs `f` on an idle instance (or a new one) and returns the instance to the pool when the
    /// call succeeded and the instance has calls left; a failed call drops it. A plugin of
    /// another kind than `wanted` fails without a call.
    fn with_instance<R>(
        &self,
        wanted: PluginKind,
        f: impl FnOnce(&mut Instance, u64) -> Result<R, CallError>,
    ) -> Result<R, CallError> {
        if self.kind != wanted {
            return Err(CallError::new(
                FailureReason::WrongKind,
                format!("this plugin is a {}, not a {wanted}", self.kind),
            ));
        }
        let mut instance = match self.check_out() {
            Some(i) => i,
            None => Box::new(self.instantiate()?),
        };
        instance.calls += 1;
        let _running = self.ticker.running();
        let ticks = match wanted {
            PluginKind::StepCondition => self.limits.expression_deadline_ticks,
            _ => self.limits.deadline_ticks,
        };
        let out = f(&mut instance, ticks);
        if out.is_ok() {
            self.check_in(instance);
        }
        out
    }

    fn check_out(&self) -> Option<Box<Instance>> {
        let hot = self.hot.swap(std::ptr::null_mut(), Ordering::Acquire);
        if hot.is_null() {
            return self.idle.lock().pop();
        }
        // SAFETY: a non-null `hot` came from `Box::into_raw` in `check_in`, and the swap took
        // it out: this call owns it now.
        Some(unsafe { Box::from_raw(hot) })
    }

    fn check_in(&self, instance: Box<Instance>) {
        if instance.calls >= self.limits.recycle_after {
            return;
        }
        let raw = Box::into_raw(instance);
        let Err(_) = self.hot.compare_exchange(
            std::ptr::null_mut(),
            raw,
            Ordering::Release,
            Ordering::Relaxed,
        ) else {
            return;
        };
        // SAFETY: the exchange failed, so `raw` was not stored: it is still this call's own.
        let instance = unsafe { Box::from_raw(raw) };
        let mut idle = self.idle.lock();
        if idle.len() < self.limits.max_idle {
            idle.push(instance);
        }
    }

    /// Asks a dispatch strategy to pick one of `call.candidates`.
    pub fn pick(&self, call: &DispatchCall<'_>) -> Result<Pick, CallError> {
        self.with_instance(PluginKind::DispatchStrategy, |inst, ticks| {
            let Exports::Dispatch(bindings) = &inst.exports else {
                unreachable!("a dispatch plugin's instances export dispatch");
            };
            let job = wire_dispatch::JobSummary {
                priority: match call.job.priority {
                    Priority::Interactive => wire_dispatch::Priority::Interactive,
                    Priority::Batch => wire_dispatch::Priority::Batch,
                    Priority::Critical => wire_dispatch::Priority::Critical,
                },
                attempt: call.job.attempt,
                label_count: u32::try_from(call.job.labels.len()).unwrap_or(u32::MAX),
            };
            inst.store.set_epoch_deadline(ticks);
            inst.store.data_mut().call.enter(call);
            let dispatch = bindings.coretex_plugin_dispatch();
            // A few candidates go as arguments: a list costs a call into the plugin to
            // allocate it before the call itself.
            let out = match few(call.candidates) {
                Some(few) => dispatch.call_pick_few(&mut inst.store, job, few),
                None => {
                    set_candidates(&mut inst.wire, call.candidates);
                    dispatch.call_pick(&mut inst.store, job, &inst.wire)
                }
            };
            inst.store.data_mut().call.leave();
            let answer = settle(&inst.store, out)?;
            // The answer holds no string; a reason or an error message is one more call.
            let mut message = || {
                let out = bindings
                    .coretex_plugin_dispatch()
                    .call_message(&mut inst.store);
                settle(&inst.store, out).map(bounded)
            };
            match answer {
                Ok(wire_dispatch::Decision::Worker(i)) if (i as usize) < call.candidates.len() => {
                    Ok(Pick::Worker(i as usize))
                }
                Ok(wire_dispatch::Decision::Worker(i)) => Err(CallError::new(
                    FailureReason::OutOfRange,
                    format!(
                        "picked candidate {i} of {} candidates",
                        call.candidates.len()
                    ),
                )),
                Ok(wire_dispatch::Decision::NoWorker) => Ok(Pick::NoWorker(message()?)),
                Err(()) => Err(CallError::new(FailureReason::PluginError, message()?)),
            }
        })
    }

    /// Asks a retry policy what to do with a failed job.
    pub fn decide(&self, call: &RetryCall<'_>) -> Result<RetryDecision, CallError> {
        self.with_instance(PluginKind::RetryPolicy, |inst, ticks| {
            let Exports::Retry(bindings) = &inst.exports else {
                unreachable!("a retry plugin's instances export retry");
            };
            let failure = wire_retry::Failure {
                topic: call.topic.to_string(),
                attempt: call.attempt,
                outcome: match call.outcome {
                    JobState::Timeout => wire_retry::Outcome::Timeout,
                    JobState::Cancelled => wire_retry::Outcome::Cancelled,
                    _ => wire_retry::Outcome::Failed,
                },
                error_code: call.error_code.to_string(),
                error_message: call.error_message.to_string(),
                elapsed_ms: call.elapsed_ms,
                max_attempts: call.max_attempts,
                initial_backoff_ms: call.initial_backoff_ms,
                max_backoff_ms: call.max_backoff_ms,
                multiplier: call.multiplier,
            };
            inst.store.set_epoch_deadline(ticks);
            let out = bindings
                .coretex_plugin_retry()
                .call_decide(&mut inst.store, &failure);
            match settle(&inst.store, out)? {
                Ok(wire_retry::Decision::Retry(after_ms)) => Ok(RetryDecision::Retry { after_ms }),
                Ok(wire_retry::Decision::DeadLetter(reason)) => Ok(RetryDecision::DeadLetter {
                    reason: bounded(reason),
                }),
                Err(e) => Err(plugin_error(e)),
            }
        })
    }

    /// Asks a condition evaluator whether `expression` is well formed: the outer error is the
    /// plugin failing, the inner one the expression's fault.
    pub fn compile_condition(&self, expression: &str) -> Result<Result<(), String>, CallError> {
        self.condition(|bindings, store| {
            bindings
                .coretex_plugin_condition()
                .call_compile(store, expression)
        })
        .map(|r| r.map_err(|e| bounded(e.message)))
    }

    /// Asks a condition evaluator for the value of `expression` in `scope_json`.
    pub fn evaluate_condition(
        &self,
        expression: &str,
        scope_json: &str,
    ) -> Result<Result<bool, String>, CallError> {
        self.condition(|bindings, store| {
            bindings
                .coretex_plugin_condition()
                .call_evaluate(store, expression, scope_json)
        })
        .map(|r| r.map_err(|e| bounded(e.message)))
    }

    /// Asks an expression language for the value of `expression` with the variables of `scope`
    /// (name and JSON text each), as JSON text: the outer error is the call failing (its
    /// deadline, the memory cap, a trap), the inner one the expression's fault.
    pub fn evaluate_expression(
        &self,
        expression: &str,
        scope: &[(&str, &str)],
    ) -> Result<Result<String, String>, CallError> {
        if !self.evaluates_expressions() {
            return Err(CallError::new(
                FailureReason::WrongKind,
                "this plugin does not evaluate expressions (it exports no coretex:plugin/expression)",
            ));
        }
        self.with_instance(PluginKind::StepCondition, |inst, ticks| {
            let Exports::Condition {
                expression: Some(bindings),
                ..
            } = &inst.exports
            else {
                unreachable!("the instances of an expression language export expression");
            };
            let variables: Vec<wire_expression::Variable<'_>> = scope
                .iter()
                .map(|&(name, value_json)| wire_expression::Variable { name, value_json })
                .collect();
            inst.store.set_epoch_deadline(ticks);
            let out = bindings.coretex_plugin_expression().call_evaluate(
                &mut inst.store,
                expression,
                &variables,
            );
            settle(&inst.store, out).map(|r| r.map_err(|e| bounded(e.message)))
        })
    }

    fn condition<R>(
        &self,
        call: impl FnOnce(&wit::condition::StepCondition, &mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.with_instance(PluginKind::StepCondition, |inst, ticks| {
            let Exports::Condition {
                condition: bindings,
                ..
            } = &inst.exports
            else {
                unreachable!("a condition plugin's instances export condition");
            };
            inst.store.set_epoch_deadline(ticks);
            let out = call(bindings, &mut inst.store);
            settle(&inst.store, out)
        })
    }
}

/// Writes `candidates` into `wire` (a block per field, as `wit/dispatch.wit` lays them out) in
/// one pass, reusing its list.
fn set_candidates(wire: &mut wire_dispatch::Candidates, candidates: &[Candidate]) {
    let n = candidates.len();
    wire.fields.clear();
    wire.fields.resize(3 * n, 0);
    let (active_jobs, rest) = wire.fields.split_at_mut(n);
    let (max_parallel, cpu_load) = rest.split_at_mut(n);
    wire.preferred = None;
    let slots = active_jobs.iter_mut().zip(max_parallel).zip(cpu_load);
    for (i, (c, ((active_jobs, max_parallel), cpu_load))) in
        candidates.iter().zip(slots).enumerate()
    {
        *active_jobs = c.active_jobs;
        *max_parallel = c.max_parallel;
        *cpu_load = (c.cpu_load as f32).to_bits();
        if c.preferred && wire.preferred.is_none() {
            wire.preferred = u32::try_from(i).ok();
        }
    }
}

/// One to three candidates as `pick-few` takes them; `None` for more (or none).
fn few(candidates: &[Candidate]) -> Option<wire_dispatch::Few> {
    if candidates.is_empty() || candidates.len() > 3 {
        return None;
    }
    let slot = |i: usize| {
        candidates.get(i).map_or(
            wire_dispatch::Slot {
                active_jobs: 0,
                max_parallel: 0,
                cpu_load: 0.0,
            },
            |c| wire_dispatch::Slot {
                active_jobs: c.active_jobs,
                max_parallel: c.max_parallel,
                cpu_load: c.cpu_load as f32,
            },
        )
    };
    Some(wire_dispatch::Few {
        count: candidates.len() as u32,
        preferred: candidates
            .iter()
            .position(|c| c.preferred)
            .map(|i| i as u32),
        a: slot(0),
        b: slot(1),
        c: slot(2),
    })
}

/// A plugin's own `plugin-error` answer.
fn plugin_error(e: PluginError) -> CallError {
    CallError::new(FailureReason::PluginError, bounded(e.message))
}

/// Turns the outcome of a call into the host's error vocabulary.
fn settle<T>(store: &Store<Sandbox>, out: wasmtime::Result<T>) -> Result<T, CallError> {
    out.map_err(|e| classify(&e, store.data().limits.exceeded))
}

fn classify(e: &wasmtime::Error, memory_exceeded: bool) -> CallError {
    let message = bounded(format!("{e:#}"));
    if memory_exceeded {
        return CallError::new(FailureReason::Memory, message);
    }
    if e.downcast_ref::<Blocked>().is_some() {
        return CallError::new(FailureReason::Blocked, message);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::new(
            FailureReason::Deadline,
            "ran past its deadline and was interrupted",
        ),
        _ => CallError::new(FailureReason::Trap, message),
    }
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The data of a plugin's store.
struct Sandbox {
    wasi: WasiShim,
    limits: MemoryCap,
    call: CurrentCall,
}

impl Sandbox {
    fn new(memory_cap: usize) -> Self {
        Sandbox {
            // Nothing: no directories, no network, no environment, no arguments; stdin is empty
            // and stdout/stderr are discarded (`wasi_shim`).
            wasi: WasiShim::default(),
            limits: MemoryCap {
                limits: StoreLimitsBuilder::new()
                    .memory_size(memory_cap)
                    // A component is a handful of core instances, tables and memories.
                    .instances(32)
                    .tables(32)
                    .memories(8)
                    // Refusing to grow is a trap, not a `-1` the guest might spin on.
                    .trap_on_grow_failure(true)
                    .build(),
                exceeded: false,
            },
            call: CurrentCall(None),
        }
    }
}

impl HasWasiShim for Sandbox {
    fn wasi_shim(&mut self) -> &mut WasiShim {
        &mut self.wasi
    }
}

/// [`StoreLimits`], remembering whether it refused to grow a memory (to name the failure).
struct MemoryCap {
    limits: StoreLimits,
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.exceeded = true;
        }
        allowed
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The dispatch call in progress, for the `dispatch-context` imports.
struct CurrentCall(Option<NonNull<DispatchCall<'static>>>);

// SAFETY: the pointer is only dereferenced by the store's own host functions, on the thread
// that is running the call; `DispatchCall` is made of shared references to `Sync` data.
unsafe impl Send for CurrentCall {}

impl CurrentCall {
    fn enter(&mut self, call: &DispatchCall<'_>) {
        self.0 = Some(NonNull::from(call).cast());
    }

    fn leave(&mut self) {
        self.0 = None;
    }

    fn get(&self) -> Option<&DispatchCall<'_>> {
        // SAFETY: `enter` is called with a borrow that outlives the call (`PluginComponent::pick`
        // holds it), and `leave` clears the pointer when the call returns. Host functions run
        // only inside the call. Should the call unwind instead, the instance is dropped with
        // the unwinding frame and never called again.
        self.0.map(|p| unsafe { p.as_ref() })
    }
}

impl wit::dispatch::coretex::plugin::types::Host for Sandbox {}

impl wit::dispatch::coretex::plugin::dispatch_context::Host for Sandbox {
    fn job_topic(&mut self) -> String {
        self.call
            .get()
            .map(|c| c.job.topic.clone())
            .unwrap_or_default()
    }

    fn job_tenant(&mut self) -> String {
        self.call
            .get()
            .map(|c| c.job.tenant_id.clone())
            .unwrap_or_default()
    }

    fn job_label(&mut self, key: String) -> Option<String> {
        self.call.get()?.job.labels.get(&key).cloned()
    }

    fn job_labels(&mut self) -> Vec<(String, String)> {
        self.call
            .get()
            .map(|c| {
                c.job
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn candidate_label(&mut self, index: u32, key: String) -> Option<String> {
        let c = self.call.get()?.candidates.get(index as usize)?;
        c.labels.get(&key).cloned()
    }

    fn candidate_id(&mut self, index: u32) -> Option<String> {
        let c = self.call.get()?.candidates.get(index as usize)?;
        Some(c.worker_id.to_string())
    }

    fn setting(&mut self, key: String) -> Option<String> {
        let value = self.call.get()?.settings?.get(&key)?;
        Some(value.to_string())
    }
}

/// `std::hash::Hash` into SHA-256, so the engine's compatibility hash is stable across runs.
#[derive(Default)]
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // The digest's first eight bytes, big-endian.
        let digest = self.0.clone().finalize();
        digest
            .iter()
            .take(8)
            .fold(0, |n, b| (n << 8) | u64::from(*b))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether a cache directory or file may be trusted: owned by the user this process runs as, and
/// writable by no one else (no group or other write bit).
fn private_to_this_user(meta: &std::fs::Metadata) -> Result<(), String> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    private_to(meta, unsafe { libc::geteuid() })
}

fn private_to(meta: &std::fs::Metadata, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != uid {
        return Err(format!(
            "owned by uid {}, not by this user ({uid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes to a temporary file and renames it into place, so a reader never maps a half-written
/// artifact (two hosts compiling the same bytes at once both rename whole files).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_cache_entry_is_trusted_only_when_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let meta = || std::fs::metadata(dir.path()).unwrap();
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(private_to(&meta(), me), Ok(()));
        let foreign = private_to(&meta(), me.wrapping_add(1)).unwrap_err();
        assert!(foreign.contains("owned by uid"), "{foreign}");
        for mode in [0o777, 0o770, 0o702] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let open = private_to(&meta(), me).unwrap_err();
            assert!(
                open.contains("writable by group or others"),
                "{mode:o}: {open}"
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            private_to(&meta(), me),
            Ok(()),
            "readable by others is fine"
        );
    }
}
