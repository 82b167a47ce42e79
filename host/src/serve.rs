//! `coretex serve`: wires one host process — store, bus, config service, scheduler, result
//! applier, reconciler, gateway and (optionally) the demo workers — and runs it until stopped.
//!
//! With neither `--redis-url` nor `--nats-url` it runs on the embedded store and bus, and says
//! so: everything then lives in this process and goes with it.
//!
//! Stopped ([`Running::stop`], SIGTERM or SIGINT), it drains before it exits: the HTTP server
//! takes no new connection and answers the requests it has; the workflow engine lets its
//! advances in flight finish; the scheduler lets its passes finish, sends what its outboxes hold
//! and writes the dispatches it has not written (see `scheduler::drain`); each waits at most
//! `drain_timeout`. Only then do the background loops stop and the locks go — the reconciler's,
//! the workflow reconciler's and any run lock still held — so another replica takes over at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::breaker::{BreakerConfig, TenantLimits};
use crate::bus::auth::LeaseKey;
use crate::bus::memory::MemoryBus;
use crate::bus::nats::{NatsAuth, NatsBus, redacted};
use crate::bus::{SharedBus, Subjects};
use crate::configsvc::ConfigService;
use crate::dlq::Dlq;
use crate::gateway::{self, AppState};
use crate::job_metrics::JobMetrics;
use crate::plugins::runtime::PluginRuntime;
use crate::plugins::{PluginRegistry, PluginSettings, uploads};
use crate::reconciler::{Reconciler, ReconcilerSettings};
use crate::scheduler::registry::Registry;
use crate::scheduler::safety::{BuiltinPolicy, SafetyGate};
use crate::scheduler::{Scheduler, SchedulerSettings};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{SharedStore, StoreOptions};
use crate::supervisor::Supervisor;
use crate::worker::{Mode, Worker, WorkerOptions};
use crate::workflow::engine::{self, Engine, EngineSettings};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Where the dashboard (`/ui`) listens; `None`: no dashboard.
    pub ui_listen: Option<SocketAddr>,
    pub ui: crate::ui::UiSettings,
    pub redis_url: Option<String>,
    /// NATS seed servers, comma-separated, possibly with credentials (`nats://user:pass@…`,
    /// `nats://token@…`).
    pub nats_url: Option<String>,
    /// Other NATS credentials and TLS.
    pub nats_auth: NatsAuth,
    /// Copies of the worker-event stream a JetStream cluster keeps.
    pub nats_stream_replicas: usize,
    pub key_prefix: String,
    pub subject_prefix: String,
    /// The admin key.
    pub api_key: Option<String>,
    /// Keys bound to a tenant: (tenant, key).
    pub tenant_keys: Vec<(String, String)>,
    /// Requests per second each key may make (a burst of as many); `None` is no limit.
    pub rate_limit: Option<std::num::NonZeroU32>,
    pub demo_workers: bool,
    pub store: StoreOptions,
    pub scheduler: SchedulerSettings,
    pub reconciler: ReconcilerSettings,
    pub worker_ttl: Duration,
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers before its connection is closed.
    pub header_read_timeout: Duration,
    /// The largest message the embedded bus carries (NATS tells its own `max_payload`).
    pub embedded_bus_max_payload: usize,
    /// `.wasm` plugins loaded from here, and watched for changes.
    pub plugin_dir: Option<PathBuf>,
    pub plugins: PluginSettings,
    pub workflows: EngineSettings,
    /// On stop, how long each stage of the drain may take (see the module docs).
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ui_listen: None,
            ui: crate::ui::UiSettings::default(),
            redis_url: None,
            nats_url: None,
            nats_stream_replicas: 1,
            nats_auth: NatsAuth::default(),
            key_prefix: "coretex:".into(),
            subject_prefix: String::new(),
            api_key: None,
            tenant_keys: Vec::new(),
            rate_limit: None,
            demo_workers: false,
            store: StoreOptions::default(),
            scheduler: SchedulerSettings::default(),
            reconciler: ReconcilerSettings::default(),
            worker_ttl: Duration::from_secs(30),
            max_body_bytes: crate::limits::MAX_BODY_BYTES,
            header_read_timeout: crate::limits::HEADER_READ_TIMEOUT,
            embedded_bus_max_payload: crate::limits::EMBEDDED_BUS_MAX_PAYLOAD,
            plugin_dir: None,
            plugins: PluginSettings::default(),
            workflows: EngineSettings::default(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A running host.
pub struct Running {
    pub addr: SocketAddr,
    /// The dashboard's address, when it is served.
    pub ui_addr: Option<SocketAddr>,
    pub stop: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub scheduler: Arc<Scheduler>,
    pub workflows: Arc<Engine>,
}

/// The process-wide Prometheus recorder (one per process, however many hosts a test starts).
/// The job latency is a histogram with the buckets the status interpolates in (see
/// [`crate::job_metrics`]); every other distribution stays a summary.
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(crate::job_metrics::JOB_LATENCY.into()),
                    &crate::job_metrics::LATENCY_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// The plugin registry with the built-in plugins and the uploaded ones loaded. The first start
/// on a machine compiles the built-ins (seconds); later starts load them from the cache.
async fn start_plugins(
    opts: &ServeOptions,
    store: &SharedStore,
) -> anyhow::Result<Arc<PluginRegistry>> {
    let runtime = PluginRuntime::new(&opts.plugins).context("starting the plugin runtime")?;
    let plugins = PluginRegistry::new(runtime, BreakerConfig::default());
    let loading = plugins.clone();
    tokio::task::spawn_blocking(move || crate::plugins::load_builtins(&loading))
        .await
        .context("loading the built-in plugins")?;
    if let Err(e) = uploads::sync_from_store(plugins.clone(), store.as_ref()).await {
        tracing::warn!(error = %e, "cannot load the uploaded plugins yet; retrying in the background");
    }
    Ok(plugins)
}

/// Loads the plugins of `dir` now, then follows the directory in a supervised loop (a restart
/// scans it afresh).
async fn watch_plugin_dir(
    loops: &Supervisor,
    plugins: &Arc<PluginRegistry>,
    dir: PathBuf,
    every: Duration,
) {
    plugins.watch_dir(dir.clone()).scan().await;
    let plugins = plugins.clone();
    loops.spawn("plugins.dir", move || {
        let mut watcher = plugins.watch_dir(dir.clone());
        async move {
            watcher.scan().await;
            watcher.run(every).await;
        }
    });
}

/// The echo pool of `--demo-workers`.
pub const DEMO_POOL: &str = "echo";
pub const DEMO_TOPIC: &str = "job.echo";

/// Connects the backends, starts every component and the HTTP listener.
pub async fn start(opts: ServeOptions) -> anyhow::Result<Running> {
    let keys = Arc::new(gateway::auth::Keys::new(
        opts.api_key.as_deref(),
        &opts.tenant_keys,
        opts.rate_limit,
    )?);
    for addr in std::iter::once(opts.listen).chain(opts.ui_listen) {
        if keys.open() && !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {addr} without an API key: set --api-key (CORETEX_API_KEY) or listen on loopback",
            );
        }
    }
    // First: metric handles made from here on (the plugins' counters) register with it.
    let metrics = metrics_handle();
    let subjects = Subjects::new(&opts.subject_prefix);
    let store: SharedStore = match &opts.redis_url {
        Some(url) => Arc::new(
            RedisStore::connect(url, &opts.key_prefix, opts.store.clone())
                .await
                .with_context(|| format!("connecting to Redis at {url}"))?,
        ),
        None => {
            tracing::warn!(
                "no --redis-url: using the embedded in-memory store (state lives and dies with this process)"
            );
            Arc::new(MemoryStore::new(opts.store.clone()))
        }
    };
    let bus: SharedBus = match &opts.nats_url {
        Some(url) => {
            let nats = NatsBus::connect_with(url, &opts.nats_auth, subjects)
                .await
                .with_context(|| format!("connecting to NATS at {}", redacted(url)))?
                .with_stream_replicas(opts.nats_stream_replicas);
            nats.ensure_events_stream()
                .await
                .context("creating the JetStream stream for worker events")?;
            Arc::new(nats)
        }
        None => {
            tracing::warn!(
                "no --nats-url: using the in-process bus (only in-process workers can connect)"
            );
            Arc::new(MemoryBus::new(subjects).with_max_payload(opts.embedded_bus_max_payload))
        }
    };
    // The key of the bus leases: the same for every replica of the deployment.
    let secret = store
        .shared_secret()
        .await
        .context("reading the replicas' shared secret from the store")?;
    let leases = LeaseKey::new(&secret).context("keying the bus leases")?;
    let stop = CancellationToken::new();
    let config = ConfigService::new(store.clone(), bus.clone());
    let registry = Arc::new(Registry::new(opts.worker_ttl));
    let plugins = start_plugins(&opts, &store).await?;
    let job_metrics = Arc::new(JobMetrics::new());
    let scheduler = Scheduler::new(
        store.clone(),
        bus.clone(),
        config.clone(),
        registry.clone(),
        plugins.clone(),
        job_metrics.clone(),
        SafetyGate::new(
            Arc::new(BuiltinPolicy),
            BreakerConfig::default(),
            TenantLimits::default(),
            Duration::from_secs(1),
        ),
        leases,
        scheduler_settings(&opts),
    );
    let owner = format!("serve-{}", uuid::Uuid::new_v4());
    // Each service is handed the store by the roles it plays, not the scheduler's.
    let reconciler = Reconciler::new(
        scheduler.clone(),
        store.clone(),
        store.clone(),
        registry.clone(),
        opts.reconciler.clone(),
        owner,
    );
    let workflows = Engine::new(
        engine::Handles {
            scheduler: scheduler.clone(),
            workflows: store.clone(),
            jobs: store.clone(),
            locks: store.clone(),
            bus: bus.clone(),
            config: config.clone(),
            plugins: plugins.clone(),
        },
        opts.workflows.clone(),
    );

    // The loops stop after the drain, not with `stop`: the drain needs them (results applied,
    // dispatches recorded) until the work in flight has settled.
    let loops = Supervisor::new(CancellationToken::new());
    {
        let (plugins, store, bus) = (plugins.clone(), store.clone(), bus.clone());
        loops.spawn("plugins.follow_store", move || {
            uploads::follow_store(plugins.clone(), store.clone(), bus.clone())
        });
    }
    {
        let config = config.clone();
        loops.spawn("config.changes", move || {
            config.clone().listen_for_changes()
        });
    }
    type SchedulerLoop = fn(Arc<Scheduler>) -> futures::future::BoxFuture<'static, ()>;
    let scheduler_loops: [(&'static str, SchedulerLoop); 7] = [
        ("scheduler.heartbeats", |s| Box::pin(s.run_heartbeats())),
        ("scheduler.progress", |s| Box::pin(s.run_progress())),
        ("scheduler.submissions", |s| Box::pin(s.run_submissions())),
        ("scheduler.wait_queue", |s| Box::pin(s.run_wait_queue())),
        ("scheduler.results", |s| Box::pin(s.run_results())),
        ("scheduler.dispatch_records", |s| {
            Box::pin(s.run_dispatch_records())
        }),
        ("scheduler.remote_events", |s| {
            Box::pin(s.run_remote_events())
        }),
    ];
    for (name, run) in scheduler_loops {
        let s = scheduler.clone();
        loops.spawn(name, move || run(s.clone()));
    }
    {
        let r = reconciler.clone();
        loops.spawn("reconciler", move || r.clone().run());
        let w = workflows.clone();
        loops.spawn("workflows.events", move || w.clone().run_events());
        let w = workflows.clone();
        loops.spawn("workflows.reconciler", move || w.clone().run_reconciler());
    }
    if let Some(dir) = &opts.plugin_dir {
        watch_plugin_dir(&loops, &plugins, dir.clone(), opts.plugins.poll_interval).await;
        tracing::info!(dir = %dir.display(), "watching the plugin dir");
    }
    if opts.demo_workers {
        for (i, name) in [(1, "demo.echo-1"), (2, "demo.echo-2")] {
            let (bus, stop) = (bus.clone(), loops.stopping());
            loops.spawn(name, move || {
                let w = Worker::new(
                    bus.clone(),
                    WorkerOptions {
                        id: format!("demo-echo-{i}"),
                        pool: DEMO_POOL.into(),
                        topics: vec![DEMO_TOPIC.into()],
                        max_parallel: 50,
                        labels: BTreeMap::new(),
                        mode: Mode::Echo,
                        heartbeat_interval: Duration::from_secs(1),
                        report_cpu: false,
                        started_delay: crate::worker::STARTED_DELAY,
                    },
                );
                let stop = stop.clone();
                async move {
                    if let Err(e) = w.run(stop).await {
                        tracing::error!(error = %e, "demo worker stopped");
                    }
                }
            });
        }
        tracing::info!(
            pool = DEMO_POOL,
            topic = DEMO_TOPIC,
            "demo echo workers started"
        );
    }

    let state = AppState {
        scheduler: scheduler.clone(),
        store: store.clone(),
        bus: bus.clone(),
        registry,
        plugins: plugins.clone(),
        job_metrics,
        config,
        dlq: Arc::new(Dlq::new(store.clone(), store.clone(), scheduler.clone())),
        reconciler: reconciler.clone(),
        workflows: workflows.clone(),
        metrics,
        keys: keys.clone(),
        stop: stop.clone(),
        started: Instant::now(),
        max_body_bytes: opts.max_body_bytes,
        loops: loops.clone(),
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    if keys.open() {
        tracing::warn!("no API key configured: the API is open, on loopback only");
    }
    tracing::info!(%addr, store = store.backend(), bus = bus.backend(), "coretex serving");
    let app = gateway::router(state);
    // The dashboard asks the API's own router, in process, with the signed-in key.
    let ui = match opts.ui_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding the dashboard's {at}"))?;
            let ui_addr = listener.local_addr()?;
            tracing::info!(addr = %ui_addr, "dashboard serving at /ui");
            let router = crate::ui::router(app.clone(), keys.clone(), opts.ui.clone());
            Some((listener, ui_addr, router))
        }
        None => None,
    };
    let ui_addr = ui.as_ref().map(|(_, a, _)| *a);
    let stop_http = stop.clone();
    let engine = workflows.clone();
    let drained_scheduler = scheduler.clone();
    let header_read_timeout = opts.header_read_timeout;
    let grace = opts.drain_timeout;
    let handle = tokio::spawn(async move {
        let api = serve_http(listener, app, header_read_timeout, stop_http.clone(), grace);
        match ui {
            Some((listener, _, router)) => {
                let ui = serve_http(listener, router, header_read_timeout, stop_http, grace);
                tokio::join!(api, ui);
            }
            None => api.await,
        }
        tracing::info!("draining");
        // The engine first: its advances submit step jobs, which the scheduler then places.
        engine.drain(grace).await;
        drained_scheduler.drain(grace).await;
        reconciler.release().await;
        loops.shutdown().await;
        // After its loops have ended, so the engine's reconciler cannot take the lock again.
        engine.release().await;
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        ui_addr,
        stop,
        handle,
        scheduler,
        workflows,
    })
}

/// Serves HTTP/1 until `stop`, then lets the open connections finish, for `grace` at most (live
/// streams end with `stop` too). axum's own `serve` is this loop without a timer, so hyper had no header-read
/// timeout: a client that sent half a request held its connection for as long as it liked.
/// Here a client has `header_read_timeout` to send each request's headers (an idle keep-alive
/// connection is closed after as long).
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_read_timeout: Duration,
    stop: CancellationToken,
    grace: Duration,
) {
    use axum::serve::Listener;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    let mut listener = listener;
    loop {
        // `accept` of axum's `Listener` retries what a failed accept (too many open files)
        // throws, after a pause, instead of ending the server.
        let (tcp, _) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            _ = stop.cancelled() => break,
        };
        // TCP_NODELAY: with Nagle's algorithm a small write waits for the ACK of the one
        // before, which a client may delay by up to 40 ms — the live stream writes one small
        // event after another, so its completions would arrive late.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "HTTP requests still open at the end of the drain");
    }
}

/// The scheduler's settings, with lazily written dispatches kept well inside the reconciler's
/// grace for PENDING jobs (see `Scheduler::dispatch_lazily`), or off when the grace is too short
/// for them.
fn scheduler_settings(opts: &ServeOptions) -> SchedulerSettings {
    let mut s = opts.scheduler.clone();
    s.lazy_dispatch_max_age = s
        .lazy_dispatch_max_age
        .min(opts.reconciler.pending_grace / 2);
    if s.record_dispatch_after * 4 > s.lazy_dispatch_max_age {
        s.record_dispatch_after = Duration::ZERO;
    }
    s
}
