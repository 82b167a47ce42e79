//! The `coretex` command: `serve`, `worker`, and the client subcommands that talk to the HTTP API.

// As in the library: outside tests, failures are errors, not panics.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// mimalloc instead of the system allocator: the host's hot path allocates many small buffers
/// from many tasks, and glibc malloc spent a third of `serve`'s CPU under load on it (measured
/// with perf at 20,000 jobs: `_int_malloc`, `malloc_consolidate`, `unlink_chunk`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the crate names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays mapped before mimalloc gives it back to the OS. Its default, 1 s,
/// is shorter than the pauses between bursts: each burst then faulted its memory in again, 2 MiB
/// transparent huge pages zeroed by the kernel (perf at 20,000 jobs: 4–9 thousand page faults
/// per run, a tenth of `serve`'s CPU in `clear_page_erms` and the allocator's first touches).
/// Ten seconds keeps a busy process's memory and still returns an idle one's.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides when set.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option of the allocator; any value is valid for it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use coretex::bus::Subjects;
use coretex::bus::nats::{NatsAuth, NatsBus, redacted};
use coretex::job::Limits;
use coretex::plugins::PluginSettings;
use coretex::reconciler::ReconcilerSettings;
use coretex::scheduler::SchedulerSettings;
use coretex::scheduler::retry::RetryBounds;
use coretex::serve::{self, ServeOptions};
use coretex::store::StoreOptions;
use coretex::worker::{Mode, Worker, WorkerOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "coretex",
    version,
    about = "Job and workflow orchestrator with WebAssembly scheduling plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: gateway, scheduler, reconciler, config service.
    Serve(Box<ServeArgs>),
    /// Run a worker that takes jobs over NATS.
    Worker(WorkerArgs),
    /// Submit one job.
    Submit(SubmitArgs),
    /// List, show or cancel jobs.
    Jobs(JobsArgs),
    /// List, retry or delete dead letters.
    Dlq(DlqArgs),
    /// Show the live workers.
    Workers(ClientArgs),
    /// Show the host's status.
    Status(ClientArgs),
    /// List, upload or delete plugins.
    Plugins(PluginsArgs),
    /// Submit N jobs, wait until all are terminal, print one summary line.
    Loadgen(LoadgenArgs),
    /// Create, run, watch and approve workflows.
    Workflows(WorkflowsArgs),
}

#[derive(Args)]
struct WorkflowsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    action: WorkflowsAction,
}

#[derive(Subcommand)]
enum WorkflowsAction {
    /// Create a workflow from a JSON or YAML file (`.yaml`/`.yml` are sent as YAML).
    Create { file: PathBuf },
    /// Store a new version of a workflow from a file; runs already started keep theirs.
    Update { id: String, file: PathBuf },
    /// List the workflows.
    List,
    /// Show a workflow (the latest version, or `--version`).
    Get {
        id: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete a workflow.
    Delete { id: String },
    /// Start a run; with `--watch`, follow it to the end.
    Run {
        id: String,
        /// The run's input, JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        watch: bool,
    },
    /// List a workflow's runs.
    Runs {
        id: String,
        #[arg(long)]
        status: Option<String>,
    },
    /// Follow a run, printing each change, until it ends (fails unless it succeeded).
    Watch { run_id: String },
    /// Approve (or with `--reject`, reject) an approval step.
    Approve {
        workflow_id: String,
        run_id: String,
        step_id: String,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Cancel a run, or with `--step`, one step of it.
    Cancel {
        workflow_id: String,
        run_id: String,
        #[arg(long)]
        step: Option<String>,
    },
}

#[derive(Args)]
struct LoadgenArgs {
    /// `--gateway` may name several replicas, comma-separated: submitters spread over them.
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Submitters in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Jobs per bulk submit (throughput mode).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value = "job.echo")]
    topic: String,
    /// Open-loop latency mode: single submits at this many jobs per second.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to wait for the last job to finish.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
}

#[derive(Args)]
struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "CORETEX_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the dashboard (`/ui`), a port of its own.
    #[arg(long, env = "CORETEX_UI_LISTEN", default_value = "127.0.0.1:8081")]
    ui_listen: SocketAddr,
    /// Serve no dashboard.
    #[arg(long)]
    no_ui: bool,
    /// Mark the dashboard's cookies Secure: it is reached over TLS (through a proxy).
    #[arg(long, env = "CORETEX_UI_SECURE_COOKIES")]
    ui_secure_cookies: bool,
    /// Redis URL: `redis://host:port` for one Redis, `redis+cluster://host:port,host:port,…`
    /// for a Redis Cluster (any reachable nodes of it); without it, an embedded in-memory store.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Logical shards of a new Redis store (jobs and runs spread over them; each a hash slot of
    /// a Redis Cluster). A store keeps the count it was first written with.
    #[arg(long, env = "CORETEX_REDIS_SHARDS", default_value_t = coretex::store::DEFAULT_SHARDS,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    redis_shards: u16,
    /// Replicas each batch of job writes waits for (Redis `WAIT`, up to 100 ms) before it is
    /// answered: 1 on a cluster with replicas makes an acknowledged job survive a master's loss.
    #[arg(long, env = "CORETEX_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    redis_wait_replicas: u8,
    /// NATS URL (credentials may go in it: `nats://user:pass@host`, `nats://token@host`;
    /// `tls://` for TLS); without it, an in-process bus. Several seed servers of one cluster may
    /// be given, comma-separated (`nats://a:4222,nats://b:4222`).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
    /// How many servers of a JetStream cluster keep a copy of the worker-event stream (3 on a
    /// three-node cluster survives the loss of any one node).
    #[arg(long, env = "CORETEX_NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_stream_replicas: u8,
    /// Prefix of every Redis key.
    #[arg(long, env = "CORETEX_KEY_PREFIX", default_value = "coretex:")]
    key_prefix: String,
    /// Prefix of every NATS subject.
    #[arg(long, env = "CORETEX_SUBJECT_PREFIX", default_value = "")]
    subject_prefix: String,
    /// The admin API key. With no key at all (admin or tenant) the API is open and listens on
    /// loopback only.
    #[arg(long, env = "CORETEX_API_KEY")]
    api_key: Option<String>,
    /// A key bound to one tenant, as TENANT=KEY (repeat it; the environment variable takes a
    /// comma-separated list). It sees only that tenant's jobs, workflows, runs, config and
    /// dead letters.
    #[arg(long = "tenant-key", env = "CORETEX_TENANT_KEYS", value_delimiter = ',',
          value_parser = parse_label)]
    tenant_keys: Vec<(String, String)>,
    /// Requests per second each API key may make (a burst of as many; over it, 429 with
    /// Retry-After). Without it, no limit.
    #[arg(long, env = "CORETEX_RATE_LIMIT")]
    rate_limit: Option<std::num::NonZeroU32>,
    /// Start an in-process echo worker pool (pool `echo`, topic `job.echo`).
    #[arg(long)]
    demo_workers: bool,
    /// How long a job record lives after the job finished (a live job never expires).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7days")]
    job_ttl: Duration,
    /// DISPATCHED jobs not started within this time out.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    dispatch_timeout: Duration,
    /// RUNNING jobs without a result within this time out.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    running_timeout: Duration,
    /// A DISPATCHED job not started after this is sent to its worker again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    redeliver_after: Duration,
    /// A PENDING job nobody scheduled within this is published again.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pending_grace: Duration,
    /// How often the reconciler scans.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    reconcile_interval: Duration,
    /// A worker unseen for this long is gone, and the jobs it held fail (`worker_lost`) and go
    /// through the retry policy.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    worker_ttl: Duration,
    /// The most attempts of a job any retry policy may make (the config's `retry.max_attempts`
    /// may lower it); past it a failure is dead-lettered.
    #[arg(long, env = "CORETEX_RETRY_MAX_ATTEMPTS", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..))]
    retry_max_attempts: u32,
    /// The shortest back-off any retry policy may ask for; a shorter one is raised to it.
    #[arg(long, env = "CORETEX_RETRY_MIN_BACKOFF", value_parser = humantime::parse_duration,
          default_value = "100ms")]
    retry_min_backoff: Duration,
    /// Largest request body.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Largest job payload.
    #[arg(long, default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// Load `.wasm` plugins from this directory, and pick up changes while running.
    #[arg(long, env = "CORETEX_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Where compiled plugins are cached (default `$XDG_CACHE_HOME/coretex/plugins`, else
    /// `~/.cache/coretex/plugins`); read only while owned by this user and writable by no one else.
    #[arg(long, env = "CORETEX_PLUGIN_CACHE_DIR")]
    plugin_cache_dir: Option<PathBuf>,
    /// How long one plugin call may run before it is interrupted.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    plugin_deadline: Duration,
    /// The most memory one plugin instance may use, in MiB.
    #[arg(long, default_value_t = 32)]
    plugin_memory_mib: usize,
    /// A plugin instance is replaced by a fresh one after this many calls.
    #[arg(long, default_value_t = 10_000)]
    plugin_recycle_after: u64,
    /// Threads the scheduler's plugin calls run on, off the threads that serve HTTP, results
    /// and heartbeats (default: half the cores, at least one).
    #[arg(long, env = "CORETEX_PLUGIN_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    plugin_threads: Option<u16>,
    /// Threads that run serve's work. 1 runs it all on one thread, which is faster where Redis,
    /// NATS and the workers share a small machine (see the README's Performance); the default
    /// is 1 on a machine of up to 2 cores and one per core above that.
    #[arg(long, env = "CORETEX_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// On SIGTERM or SIGINT, how long each stage of the drain may take: requests in flight,
    /// workflow advances, scheduling passes (then dispatches are written and locks released).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
}

/// How `serve` and `worker` authenticate to NATS and encrypt the connection, besides credentials
/// in the URL (see the README's "An authenticated bus").
#[derive(Args)]
struct NatsArgs {
    /// NATS credentials file (a user JWT and its nkey seed, as `nsc` writes them).
    #[arg(long, env = "NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS nkey seed (`SU…`), or a file holding it (a file or the environment is safer: other
    /// users of the machine can read a command line).
    #[arg(long, env = "NATS_NKEY", hide_env_values = true)]
    nats_nkey: Option<String>,
    /// CA certificate(s), PEM, to verify the NATS server with; TLS is then required.
    #[arg(long, env = "NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate, PEM, for a NATS server that verifies clients (with --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key, PEM.
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    fn auth(self) -> NatsAuth {
        NatsAuth {
            creds_file: self.nats_creds,
            nkey: self.nats_nkey,
            tls_ca: self.nats_tls_ca,
            tls_client: self.nats_tls_cert.zip(self.nats_tls_key),
            inbox_prefix: None,
        }
    }
}

#[derive(Args)]
struct WorkerArgs {
    /// NATS URL (credentials may go in it: `nats://user:pass@host`, `nats://token@host`;
    /// `tls://` for TLS).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats_url: String,
    #[command(flatten)]
    nats: NatsArgs,
    #[arg(long, env = "CORETEX_SUBJECT_PREFIX", default_value = "")]
    subject_prefix: String,
    /// Worker id (default: a random one).
    #[arg(long)]
    id: Option<String>,
    #[arg(long, default_value = "default")]
    pool: String,
    /// A topic this worker serves (repeatable).
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    #[arg(long, default_value_t = 4)]
    max_parallel: u32,
    /// A label `k=v` (repeatable); `placement.*` labels constrain placement.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Run this shell command per job (payload on stdin, result on stdout).
    #[arg(long, conflicts_with = "echo")]
    exec: Option<String>,
    /// Answer each job with its payload.
    #[arg(long)]
    echo: bool,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    heartbeat: Duration,
    /// On SIGTERM or SIGINT, how long running jobs may take to finish; those still running then
    /// are stopped and handed back to the host, which runs them again elsewhere.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
}

#[derive(Args, Clone)]
struct ClientArgs {
    #[arg(long, env = "CORETEX_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    #[arg(long, env = "CORETEX_API_KEY")]
    api_key: Option<String>,
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long)]
    topic: String,
    /// Payload JSON.
    #[arg(long, default_value = "{}")]
    payload: String,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    priority: Option<String>,
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[arg(long)]
    deadline_ms: Option<u64>,
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct JobsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    action: JobsAction,
}

#[derive(Subcommand)]
enum JobsAction {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job with its history.
    Get { id: String },
    /// Cancel a job.
    Cancel { id: String },
}

#[derive(Args)]
struct DlqArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Subcommand)]
enum DlqAction {
    List {
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    Retry {
        job_id: String,
    },
    Delete {
        job_id: String,
    },
}

#[derive(Args)]
struct PluginsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    action: PluginsAction,
}

#[derive(Subcommand)]
enum PluginsAction {
    /// The loaded plugins, with their kind, source, calls, failures and breaker.
    List,
    /// Upload a component (admin): every replica loads it.
    Put { name: String, file: PathBuf },
    /// Delete an uploaded plugin (admin).
    Delete { name: String },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not k=v"))
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    runtime(&cli.command)?.block_on(run(cli.command))
}

/// The Tokio runtime a command runs on. Everything but a multi-threaded `serve` runs on one
/// thread: a worker's and loadgen's work is a little I/O per job, and on one thread a message
/// goes from the socket to the task that handles it and back out without waking another
/// thread. Measured on 2 cores with Redis, NATS, serve, a worker and loadgen (benches/ab.sh,
/// medians of 8 pairs at 1,000 jobs/s): the worker's CPU per job −41%, loadgen's −19%, p99
/// −20%. `serve` on one thread (its default on up to 2 cores): −24% of its CPU per job at
/// 1,000 jobs/s and +21% jobs/s in bulk (6 pairs), as its batches of Redis and NATS work grow.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match command {
        Command::Serve(a) => a
            .threads
            .map_or(if cores <= 2 { 1 } else { cores }, usize::from),
        _ => 1,
    };
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(a) => run_serve(*a).await,
        Command::Worker(a) => run_worker(a).await,
        Command::Submit(a) => {
            let payload: Value =
                serde_json::from_str(&a.payload).context("--payload is not JSON")?;
            let mut body = serde_json::Map::new();
            body.insert("topic".into(), a.topic.into());
            body.insert("payload".into(), payload);
            if let Some(t) = a.tenant {
                body.insert("tenant_id".into(), t.into());
            }
            if let Some(p) = a.priority {
                body.insert("priority".into(), p.into());
            }
            if let Some(d) = a.deadline_ms {
                body.insert("deadline_ms".into(), d.into());
            }
            if !a.labels.is_empty() {
                let labels = a.labels.into_iter().collect::<BTreeMap<_, _>>();
                body.insert("labels".into(), serde_json::to_value(labels)?);
            }
            let mut req = client(&a.client).post("/api/v1/jobs");
            if let Some(k) = a.idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            print_response(req.json(&body)).await
        }
        Command::Jobs(a) => {
            let c = client(&a.client);
            match a.action {
                JobsAction::List {
                    state,
                    topic,
                    tenant,
                    limit,
                } => {
                    let mut q = vec![("limit", limit.to_string())];
                    q.extend(state.map(|v| ("state", v)));
                    q.extend(topic.map(|v| ("topic", v)));
                    q.extend(tenant.map(|v| ("tenant", v)));
                    print_response(c.get("/api/v1/jobs").query(&q)).await
                }
                JobsAction::Get { id } => {
                    print_response(c.get(&format!("/api/v1/jobs/{id}"))).await
                }
                JobsAction::Cancel { id } => {
                    print_response(c.post(&format!("/api/v1/jobs/{id}/cancel"))).await
                }
            }
        }
        Command::Dlq(a) => {
            let c = client(&a.client);
            match a.action {
                DlqAction::List { topic, limit } => {
                    let mut q = vec![("limit", limit.to_string())];
                    q.extend(topic.map(|v| ("topic", v)));
                    print_response(c.get("/api/v1/dlq").query(&q)).await
                }
                DlqAction::Retry { job_id } => {
                    print_response(c.post(&format!("/api/v1/dlq/{job_id}/retry"))).await
                }
                DlqAction::Delete { job_id } => {
                    print_response(c.delete(&format!("/api/v1/dlq/{job_id}"))).await
                }
            }
        }
        Command::Workers(c) => print_response(client(&c).get("/api/v1/workers")).await,
        Command::Status(c) => print_response(client(&c).get("/api/v1/status")).await,
        Command::Plugins(a) => {
            let c = client(&a.client);
            match a.action {
                PluginsAction::List => print_response(c.get("/api/v1/plugins")).await,
                PluginsAction::Put { name, file } => {
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    print_response(
                        c.put(&format!("/api/v1/plugins/{name}"))
                            .header("content-type", "application/wasm")
                            .body(bytes),
                    )
                    .await
                }
                PluginsAction::Delete { name } => {
                    print_response(c.delete(&format!("/api/v1/plugins/{name}"))).await
                }
            }
        }
        Command::Workflows(a) => run_workflows(a).await,
        Command::Loadgen(a) => {
            let summary = coretex::loadgen::run(coretex::loadgen::LoadgenOptions {
                gateway: a.client.gateway,
                api_key: a.client.api_key,
                jobs: a.jobs,
                concurrency: a.concurrency,
                batch: a.batch,
                topic: a.topic,
                rate: a.rate,
                timeout: a.timeout,
            })
            .await?;
            println!("{summary}");
            if summary.ok != summary.jobs {
                bail!(
                    "{} of {} jobs did not succeed",
                    summary.jobs - summary.ok,
                    summary.jobs
                );
            }
            Ok(())
        }
    }
}

/// A definition file's body and content type (YAML by extension).
fn definition_file(file: &PathBuf) -> anyhow::Result<(Vec<u8>, &'static str)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    Ok((
        bytes,
        if yaml {
            "application/yaml"
        } else {
            "application/json"
        },
    ))
}

async fn run_workflows(a: WorkflowsArgs) -> anyhow::Result<()> {
    let c = client(&a.client);
    match a.action {
        WorkflowsAction::Create { file } => {
            let (body, ct) = definition_file(&file)?;
            print_response(
                c.post("/api/v1/workflows")
                    .header("content-type", ct)
                    .body(body),
            )
            .await
        }
        WorkflowsAction::Update { id, file } => {
            let (body, ct) = definition_file(&file)?;
            print_response(
                c.put(&format!("/api/v1/workflows/{id}"))
                    .header("content-type", ct)
                    .body(body),
            )
            .await
        }
        WorkflowsAction::List => print_response(c.get("/api/v1/workflows")).await,
        WorkflowsAction::Get { id, version } => {
            let q: Vec<(&str, String)> = version
                .map(|v| ("version", v.to_string()))
                .into_iter()
                .collect();
            print_response(c.get(&format!("/api/v1/workflows/{id}")).query(&q)).await
        }
        WorkflowsAction::Delete { id } => {
            print_response(c.delete(&format!("/api/v1/workflows/{id}"))).await
        }
        WorkflowsAction::Run { id, input, watch } => {
            let input: Value = serde_json::from_str(&input).context("--input is not JSON")?;
            let resp = c
                .post(&format!("/api/v1/workflows/{id}/runs"))
                .json(&serde_json::json!({"input": input}))
                .send()
                .await
                .context("calling the gateway")?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                eprintln!("{}", serde_json::to_string_pretty(&v)?);
                bail!("the gateway answered {status}");
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            match (watch, v.get("run_id").and_then(Value::as_str)) {
                (true, Some(run_id)) => watch_run(&c, run_id).await,
                _ => Ok(()),
            }
        }
        WorkflowsAction::Runs { id, status } => {
            let q: Vec<(&str, String)> = status.map(|s| ("status", s)).into_iter().collect();
            print_response(c.get(&format!("/api/v1/workflows/{id}/runs")).query(&q)).await
        }
        WorkflowsAction::Watch { run_id } => watch_run(&c, &run_id).await,
        WorkflowsAction::Approve {
            workflow_id,
            run_id,
            step_id,
            reject,
            comment,
        } => {
            print_response(
                c.post(&format!(
                    "/api/v1/workflows/{workflow_id}/runs/{run_id}/steps/{step_id}/approve"
                ))
                .json(&serde_json::json!({"approved": !reject, "comment": comment})),
            )
            .await
        }
        WorkflowsAction::Cancel {
            workflow_id,
            run_id,
            step,
        } => {
            let path = match step {
                Some(s) => {
                    format!("/api/v1/workflows/{workflow_id}/runs/{run_id}/steps/{s}/cancel")
                }
                None => format!("/api/v1/workflows/{workflow_id}/runs/{run_id}/cancel"),
            };
            print_response(c.post(&path)).await
        }
    }
}

/// Polls a run and prints a line per change of its or its steps' status, until it ends.
async fn watch_run(c: &Client, run_id: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let resp = c
            .get(&format!("/api/v1/workflow-runs/{run_id}"))
            .send()
            .await
            .context("calling the gateway")?;
        if !resp.status().is_success() {
            bail!("the gateway answered {}", resp.status());
        }
        let run: Value = resp.json().await?;
        let text =
            |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_string);
        let steps: Vec<String> = run
            .get("steps")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(id, s)| format!("{id}={}", text(s, "status").unwrap_or("?".into())))
            .collect();
        let status = text(&run, "status").unwrap_or("?".into());
        let line = format!("run {run_id} {status}  {}", steps.join(" "));
        if line != last {
            println!("{line}");
            last = line;
        }
        match status.as_str() {
            "succeeded" => {
                let output = run.get("output").unwrap_or(&Value::Null);
                println!("{}", serde_json::to_string_pretty(output)?);
                return Ok(());
            }
            "failed" | "cancelled" | "timed_out" => {
                bail!("run {status}: {}", text(&run, "error").unwrap_or_default())
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    let opts = ServeOptions {
        listen: a.listen,
        ui_listen: (!a.no_ui).then_some(a.ui_listen),
        ui: coretex::ui::UiSettings {
            secure_cookies: a.ui_secure_cookies,
        },
        redis_url: a.redis_url,
        nats_url: a.nats_url,
        nats_stream_replicas: usize::from(a.nats_stream_replicas),
        nats_auth: a.nats.auth(),
        key_prefix: a.key_prefix,
        subject_prefix: a.subject_prefix,
        api_key: a.api_key,
        tenant_keys: a.tenant_keys,
        rate_limit: a.rate_limit,
        demo_workers: a.demo_workers,
        store: StoreOptions {
            job_ttl_ms: a.job_ttl.as_millis() as u64,
            shards: a.redis_shards,
            wait_replicas: a.redis_wait_replicas,
            ..Default::default()
        },
        scheduler: SchedulerSettings {
            limits: Limits {
                max_payload_bytes: a.max_payload_bytes,
            },
            retry_bounds: RetryBounds {
                max_attempts: a.retry_max_attempts,
                min_backoff_ms: a.retry_min_backoff.as_millis() as u64,
            },
            ..Default::default()
        },
        reconciler: ReconcilerSettings {
            interval: a.reconcile_interval,
            dispatch_timeout: a.dispatch_timeout,
            running_timeout: a.running_timeout,
            redeliver_after: a.redeliver_after,
            pending_grace: a.pending_grace,
            job_ttl: a.job_ttl,
            ..Default::default()
        },
        worker_ttl: a.worker_ttl,
        max_body_bytes: a.max_body_bytes,
        header_read_timeout: coretex::limits::HEADER_READ_TIMEOUT,
        embedded_bus_max_payload: coretex::limits::EMBEDDED_BUS_MAX_PAYLOAD,
        plugin_dir: a.plugin_dir,
        plugins: PluginSettings {
            cache_dir: a
                .plugin_cache_dir
                .or_else(coretex::plugins::default_cache_dir),
            call_deadline: a.plugin_deadline,
            memory_cap: a.plugin_memory_mib << 20,
            recycle_after: a.plugin_recycle_after,
            threads: a
                .plugin_threads
                .map_or_else(coretex::plugins::default_threads, usize::from),
            ..Default::default()
        },
        workflows: Default::default(),
        drain_timeout: a.drain_timeout,
    };
    let running = serve::start(opts).await?;
    eprintln!("coretex listening on http://{}", running.addr);
    if let Some(ui) = running.ui_addr {
        eprintln!("dashboard at http://{ui}/ui");
    }
    let stop = running.stop.clone();
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    running.handle.await?
}

async fn run_worker(a: WorkerArgs) -> anyhow::Result<()> {
    let mode = match (a.exec, a.echo) {
        (Some(cmd), false) => Mode::Exec(cmd),
        (None, true) => Mode::Echo,
        _ => bail!("give exactly one of --exec CMD or --echo"),
    };
    let id =
        a.id.unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4().simple()));
    let subjects = Subjects::new(&a.subject_prefix);
    // Replies (a flush's round trip) on an inbox of the worker's own, which its NATS
    // permissions can grant without granting every connection's.
    let auth = NatsAuth {
        inbox_prefix: Some(subjects.worker_inbox(&id)),
        ..a.nats.auth()
    };
    let bus = NatsBus::connect_with(&a.nats_url, &auth, subjects)
        .await
        .with_context(|| format!("connecting to NATS at {}", redacted(&a.nats_url)))?;
    let opts = WorkerOptions {
        id,
        pool: a.pool,
        topics: a.topics,
        max_parallel: a.max_parallel.max(1),
        labels: a.labels.into_iter().collect(),
        mode,
        heartbeat_interval: a.heartbeat,
        report_cpu: true,
        started_delay: coretex::worker::STARTED_DELAY,
    };
    let worker = Worker::new(Arc::new(bus), opts);
    let drain = CancellationToken::new();
    let d = drain.clone();
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        d.cancel();
    });
    worker.run_draining(drain, a.drain_timeout).await
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed before it returns, so a signal
/// sent from then on is not lost.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

fn client(a: &ClientArgs) -> Client {
    Client {
        http: reqwest::Client::new(),
        base: a.gateway.trim_end_matches('/').to_string(),
        key: a.api_key.clone(),
    }
}

impl Client {
    fn with_key(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_key(self.http.get(format!("{}{path}", self.base)))
    }
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_key(self.http.post(format!("{}{path}", self.base)))
    }
    fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_key(self.http.put(format!("{}{path}", self.base)))
    }
    fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_key(self.http.delete(format!("{}{path}", self.base)))
    }
}

/// Prints the answer's JSON; a 4xx/5xx prints the problem and fails the command.
async fn print_response(req: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let resp = req.send().await.context("calling the gateway")?;
    let status = resp.status();
    let text = resp.text().await?;
    let pretty = serde_json::from_str::<Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or(text.clone()))
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        eprintln!("{pretty}");
        bail!("the gateway answered {status}")
    }
}
