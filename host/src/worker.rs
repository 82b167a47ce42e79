//! A worker (`coretex worker`, and the in-process demo pool of `serve --demo-workers`): takes
//! jobs from `worker.<id>.jobs`, says `started`, runs them, says `result`, and heartbeats its
//! load. It needs only the bus, never the store.
//!
//! Two ways to run a job: `--exec CMD` runs `sh -c CMD` per job (payload JSON on stdin, the job's
//! env plus `CORETEX_JOB_ID`, `CORETEX_TOPIC`, `CORETEX_ATTEMPT`, `CORETEX_TRACE_ID` in the
//! environment; stdout is the result — JSON if it parses, else a string — and a non-zero exit is
//! a failure), and `--echo` answers with the payload. A job whose env sets a name on the deny
//! list ([`crate::job::env_refusal`]: `LD_PRELOAD`, `PATH`, …) is failed without running: the
//! host refuses such jobs at submit, but a worker trusts no message on the bus.
//!
//! Delivery is at-least-once: the host re-sends a job it has not heard `started` for. A worker
//! therefore ignores a job it is already running, and answers a job it finished recently by
//! sending the same result again instead of running it twice.
//!
//! Every `started` and result echoes the lease of the job's message: the host takes a report on
//! a job only from the worker it gave the job to, for that dispatch (see [`crate::bus::auth`]).
//! Likewise every heartbeat echoes the pass the hosts sent this instance on `worker.<id>.pass`:
//! until it comes, the hosts register nothing (see [`crate::scheduler::passes`]).
//!
//! Built for throughput, within the public protocol: a job that finishes within
//! `started_delay` (50 ms) sends no `started` — its result carries `started_at` instead, and the
//! host records RUNNING at that time — and results that are ready together leave together, as
//! one `sys.job.results` message (see [`crate::bus::Outbox`]). The worker lists the `batch`
//! capability, so the host may send it several jobs at once on `worker.<id>.batch`.
//!
//! # Draining
//!
//! [`Worker::run_draining`] stops the way a rolling restart wants: told to drain, the worker
//! heartbeats `draining` at once (hosts then send it nothing), hands back every job it has not
//! started, lets the running ones finish for a grace period, then stops those still running and
//! hands them back too, publishes every result and returns. To hand a job back is to report it
//! FAILED with the code [`WORKER_DRAINED`]: the retry policy then runs it again on another
//! worker at once, where a job left behind would wait for the worker's heartbeat TTL
//! (`worker_lost`). The job subjects stay subscribed until the end, so a job already on its way
//! when the drain began is handed back too instead of vanishing with the subscription. What is
//! lost is the work of a job stopped at the end of the grace; nothing runs twice that did not
//! have to.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::bus::{MessageStream, Outbox, SharedBus, publish_json};
use crate::job::{EFFECTIVE_CONFIG_ENV, JobError, WORKER_DRAINED, env_refusal};
use crate::protocol::{
    Batch, CancelMsg, HeartbeatMsg, JobMsg, PassMsg, ProgressMsg, ResultMsg, ResultStatus,
    StartedMsg, VERSION,
};
use crate::time::now_ms;

#[derive(Debug, Clone)]
pub enum Mode {
    Echo,
    Exec(String),
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub id: String,
    pub pool: String,
    pub topics: Vec<String>,
    pub max_parallel: u32,
    pub labels: BTreeMap<String, String>,
    pub mode: Mode,
    pub heartbeat_interval: Duration,
    /// Report this process's CPU use in heartbeats. Off for the in-process demo pool, which
    /// shares its process with the host (the host's own work is not the worker's load).
    pub report_cpu: bool,
    /// A job still running after this long says `started`; one done sooner puts `started_at`
    /// in its result instead.
    pub started_delay: Duration,
}

/// The default of [`WorkerOptions::started_delay`].
pub const STARTED_DELAY: Duration = Duration::from_millis(50);

/// The capability a worker lists to receive jobs in batches (the protocol's).
pub use crate::protocol::BATCH_CAPABILITY;

/// How many finished jobs a worker remembers, to answer re-deliveries.
const REMEMBERED: usize = 10_000;

/// How long a drain waits for the jobs it stopped at the end of its grace to report: a killed
/// command's process group ends at once, so this is only a bound.
const STOPPED_JOBS_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    running: HashMap<String, CancellationToken, foldhash::quality::RandomState>,
    /// The jobs whose command (or echo) runs now, with their attempt and lease: each gets a
    /// `progress` every heartbeat interval.
    executing: HashMap<String, (u32, Option<String>), foldhash::quality::RandomState>,
    finished: HashMap<String, Bytes, foldhash::quality::RandomState>,
    finished_order: VecDeque<String>,
}

impl State {
    fn remember(&mut self, job_id: String, result: Bytes) {
        self.running.remove(&job_id);
        self.executing.remove(&job_id);
        if self.finished.insert(job_id.clone(), result).is_none() {
            self.finished_order.push_back(job_id);
        }
        while self.finished_order.len() > REMEMBERED {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }
}

pub struct Worker {
    bus: SharedBus,
    opts: WorkerOptions,
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    results: Outbox,
    result_subject: Arc<str>,
    results_subject: Arc<str>,
    /// Cancelled when a drain begins: a job not started by then is handed back.
    draining: CancellationToken,
    /// Cancelled when a drain's grace has run out: the jobs still running are stopped and
    /// handed back.
    grace_over: CancellationToken,
    /// Woken whenever a job ends, for a drain waiting for the last one.
    job_ended: Notify,
    /// This run of the worker, in its heartbeats (see [`HeartbeatMsg::instance`]).
    instance: String,
    /// What the hosts sent this instance to echo in its heartbeats ([`PassMsg`]).
    pass: Mutex<Option<String>>,
}

/// The subscriptions of a running worker.
struct Inbox {
    jobs: MessageStream,
    batches: MessageStream,
    cancels: MessageStream,
}

impl Worker {
    pub fn new(bus: SharedBus, opts: WorkerOptions) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(opts.max_parallel.max(1) as usize));
        let results = Outbox::start(bus.clone(), "results");
        let result_subject = bus.subjects().result().into();
        let results_subject = bus.subjects().results().into();
        Arc::new(Worker {
            bus,
            opts,
            state: Mutex::new(State::default()),
            slots,
            results,
            result_subject,
            results_subject,
            draining: CancellationToken::new(),
            grace_over: CancellationToken::new(),
            job_ended: Notify::new(),
            instance: uuid::Uuid::new_v4().to_string(),
            pass: Mutex::new(None),
        })
    }

    fn active(&self) -> u32 {
        self.state.lock().running.len() as u32
    }

    /// Runs until `stop` is cancelled: heartbeats, jobs and cancels. It stops at once, as a
    /// worker that dies does: what it held is recovered by the host (`worker_lost`).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let (mut inbox, beat) = self.start(&stop).await?;
        self.take_jobs(&mut inbox, stop.cancelled()).await;
        beat.abort();
        Ok(())
    }

    /// Runs until `drain` is cancelled, then drains (see the module docs): no new job, the
    /// running ones finish within `grace` or are handed back, every result is published.
    pub async fn run_draining(
        self: Arc<Self>,
        drain: CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let (mut inbox, beat) = self.start(&stop).await?;
        self.take_jobs(&mut inbox, drain.cancelled()).await;

        self.draining.cancel();
        let running = self.active();
        tracing::info!(worker_id = %self.opts.id, running, grace = ?grace, "draining");
        // At once, not at the next tick: every host stops sending jobs here.
        let hb = self.heartbeat_msg(0.0);
        if let Err(e) = publish_json(self.bus.as_ref(), &self.bus.subjects().heartbeat(), &hb).await
        {
            tracing::warn!(error = %e, "draining heartbeat not sent");
        }
        let finished = tokio::time::timeout(grace, self.wait_for_jobs(&mut inbox))
            .await
            .is_ok();
        if !finished {
            tracing::warn!(worker_id = %self.opts.id, running = self.active(),
                "the drain timeout ran out; handing back the jobs still running");
            self.grace_over.cancel();
            let stopped = self.wait_for_jobs(&mut inbox);
            let _ = tokio::time::timeout(STOPPED_JOBS_WAIT, stopped).await;
        }
        drop(inbox);
        self.results.flush().await;
        if let Err(e) = self.bus.flush().await {
            tracing::warn!(error = %e, "results may not have reached the bus");
        }
        stop.cancel();
        beat.abort();
        tracing::info!(worker_id = %self.opts.id, "drained");
        Ok(())
    }

    /// Subscribes to the worker's subjects and starts its heartbeats (until `stop`).
    async fn start(
        self: &Arc<Self>,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Inbox, tokio::task::JoinHandle<()>)> {
        let subjects = self.bus.subjects().clone();
        let inbox = Inbox {
            jobs: self
                .bus
                .subscribe(&subjects.worker_jobs(&self.opts.id))
                .await?,
            batches: self
                .bus
                .subscribe(&subjects.worker_batch(&self.opts.id))
                .await?,
            cancels: self.bus.subscribe(&subjects.cancel()).await?,
        };
        tracing::info!(worker_id = %self.opts.id, pool = %self.opts.pool, topics = ?self.opts.topics,
            max_parallel = self.opts.max_parallel, "worker ready");
        let passes = self
            .bus
            .subscribe(&subjects.worker_pass(&self.opts.id))
            .await?;
        let beat = tokio::spawn(self.clone().heartbeat(passes, stop.clone()));
        Ok((inbox, beat))
    }

    /// Takes jobs and cancels until `until` completes or the bus closes.
    async fn take_jobs(self: &Arc<Self>, inbox: &mut Inbox, until: impl Future<Output = ()>) {
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => break,
                Some(msg) = inbox.jobs.next() => match serde_json::from_slice::<JobMsg>(&msg.payload) {
                    Ok(job) => self.accept(job),
                    Err(e) => tracing::warn!(error = %e, "dropping malformed job message"),
                },
                Some(msg) = inbox.batches.next() => match serde_json::from_slice::<Batch<JobMsg>>(&msg.payload) {
                    Ok(batch) => batch.items.into_iter().for_each(|job| self.accept(job)),
                    Err(e) => tracing::warn!(error = %e, "dropping malformed job batch"),
                },
                Some(msg) = inbox.cancels.next() => {
                    if let Ok(c) = serde_json::from_slice::<CancelMsg>(&msg.payload)
                        && let Some(token) = self.state.lock().running.get(&c.job_id)
                    {
                        tracing::info!(job_id = %c.job_id, reason = %c.reason, "cancelling job");
                        token.cancel();
                    }
                }
                else => break,
            }
        }
    }

    /// Completes once no job runs, meanwhile answering what comes: a new job is handed back
    /// (the worker drains), a cancel stops its job.
    async fn wait_for_jobs(self: &Arc<Self>, inbox: &mut Inbox) {
        self.take_jobs(inbox, self.all_ended()).await;
        // The subscriptions closed first (the bus is gone): the jobs still end.
        self.all_ended().await;
    }

    /// Completes once no job runs.
    async fn all_ended(&self) {
        loop {
            let ended = self.job_ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so a job ending in between still wakes it.
            ended.as_mut().enable();
            if self.state.lock().running.is_empty() {
                return;
            }
            ended.await;
        }
    }

    fn accept(self: &Arc<Self>, job: JobMsg) {
        let token = CancellationToken::new();
        let draining = {
            let mut st = self.state.lock();
            if st.running.contains_key(&job.job_id) {
                return;
            }
            if let Some(result) = st.finished.get(&job.job_id).cloned() {
                self.results.send(self.result_subject.clone(), None, result);
                return;
            }
            let draining = self.draining.is_cancelled();
            if !draining {
                st.running.insert(job.job_id.clone(), token.clone());
            }
            draining
        };
        if draining {
            self.hand_back(&job, "it arrived after the worker began to drain");
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let slot = tokio::select! {
                slot = this.slots.clone().acquire_owned() => slot,
                _ = this.draining.cancelled() => {
                    this.hand_back(&job, "it had not started when the worker began to drain");
                    return;
                }
            };
            let Ok(_slot) = slot else {
                return;
            };
            this.state
                .lock()
                .executing
                .insert(job.job_id.clone(), (job.attempt, job.lease.clone()));
            let started_at = now_ms();
            let t0 = Instant::now();
            let run = this.execute(&job, &token);
            tokio::pin!(run);
            // A quick job's start travels with its result; a longer one says `started` once.
            let mut said_started = false;
            let (status, result, error) = tokio::select! {
                done = &mut run => done,
                _ = tokio::time::sleep(this.opts.started_delay) => {
                    let started = StartedMsg {
                        v: VERSION,
                        job_id: job.job_id.clone(),
                        worker_id: this.opts.id.clone(),
                        at: started_at,
                        lease: job.lease.clone(),
                    };
                    let _ = publish_json(this.bus.as_ref(), &this.bus.subjects().started(), &started).await;
                    said_started = true;
                    run.await
                }
            };
            this.finish(ResultMsg {
                v: VERSION,
                job_id: job.job_id.clone(),
                worker_id: this.opts.id.clone(),
                status,
                result,
                error,
                execution_ms: t0.elapsed().as_millis() as u64,
                started_at: (!said_started).then_some(started_at),
                lease: job.lease.clone(),
            });
        });
    }

    /// Remembers a job's result (to answer a re-delivery), publishes it and wakes a drain.
    fn finish(&self, msg: ResultMsg) {
        let payload = Bytes::from(serde_json::to_vec(&msg).unwrap_or_default());
        self.state.lock().remember(msg.job_id, payload.clone());
        self.results.send(
            self.result_subject.clone(),
            Some(self.results_subject.clone()),
            payload,
        );
        self.job_ended.notify_waiters();
    }

    /// Hands a job this draining worker will not run back to the host (see the module docs).
    fn hand_back(&self, job: &JobMsg, why: &str) {
        tracing::info!(job_id = %job.job_id, why, "handing a job back");
        self.finish(ResultMsg {
            v: VERSION,
            job_id: job.job_id.clone(),
            worker_id: self.opts.id.clone(),
            status: ResultStatus::Failed,
            result: None,
            error: Some(JobError::new(
                WORKER_DRAINED,
                format!("worker {} is stopping: {why}", self.opts.id),
            )),
            execution_ms: 0,
            started_at: None,
            lease: job.lease.clone(),
        });
    }

    async fn execute(
        &self,
        job: &JobMsg,
        token: &CancellationToken,
    ) -> (ResultStatus, Option<serde_json::Value>, Option<JobError>) {
        match &self.opts.mode {
            Mode::Echo => (ResultStatus::Succeeded, Some(job.payload.clone()), None),
            Mode::Exec(cmd) => run_command(cmd, job, token, &self.grace_over).await,
        }
    }

    /// Heartbeats every interval (and progress for the running jobs); heartbeats at once when
    /// the hosts send this instance its pass, which registers it.
    async fn heartbeat(self: Arc<Self>, mut passes: MessageStream, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.opts.heartbeat_interval);
        let subject = self.bus.subjects().heartbeat();
        let mut meter = CpuMeter { last: None };
        let mut cpu_load = 0.0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if self.opts.report_cpu {
                        cpu_load = meter.percent();
                    }
                    self.beat(&subject, cpu_load).await;
                    self.send_progress().await;
                }
                Some(msg) = passes.next() => {
                    if self.take_pass(&msg.payload) {
                        self.beat(&subject, cpu_load).await;
                    }
                }
            }
        }
    }

    async fn beat(&self, subject: &str, cpu_load: f64) {
        let hb = self.heartbeat_msg(cpu_load);
        if let Err(e) = publish_json(self.bus.as_ref(), subject, &hb).await {
            tracing::warn!(error = %e, "heartbeat not sent");
        }
    }

    /// Keeps the pass of a `pass` message for this instance; true when it is a new one.
    fn take_pass(&self, payload: &[u8]) -> bool {
        let msg = match serde_json::from_slice::<PassMsg>(payload) {
            Ok(m) if m.worker_id == self.opts.id && m.instance == self.instance => m,
            Ok(_) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a malformed pass");
                return false;
            }
        };
        let mut pass = self.pass.lock();
        if pass.as_deref() == Some(msg.pass.as_str()) {
            return false;
        }
        tracing::debug!(worker_id = %self.opts.id, "registered by the hosts");
        *pass = Some(msg.pass);
        true
    }

    /// A `progress` for each job whose command runs: the worker stands for it while it runs
    /// (a job with `heartbeat_timeout_sec` fails when these stop).
    async fn send_progress(&self) {
        let executing: Vec<(String, u32, Option<String>)> = self
            .state
            .lock()
            .executing
            .iter()
            .map(|(id, (attempt, lease))| (id.clone(), *attempt, lease.clone()))
            .collect();
        if executing.is_empty() {
            return;
        }
        let subject = self.bus.subjects().progress();
        for (job_id, attempt, lease) in executing {
            let msg = ProgressMsg {
                v: VERSION,
                job_id,
                worker_id: self.opts.id.clone(),
                attempt,
                lease,
                details: None,
            };
            if let Err(e) = publish_json(self.bus.as_ref(), &subject, &msg).await {
                tracing::warn!(error = %e, "progress not sent");
                return;
            }
        }
    }

    fn heartbeat_msg(&self, cpu_load: f64) -> HeartbeatMsg {
        HeartbeatMsg {
            v: VERSION,
            worker_id: self.opts.id.clone(),
            pool: self.opts.pool.clone(),
            topics: self.opts.topics.clone(),
            active_jobs: self.active(),
            max_parallel: self.opts.max_parallel,
            cpu_load,
            labels: self.opts.labels.clone(),
            capabilities: vec![
                match self.opts.mode {
                    Mode::Echo => "echo".into(),
                    Mode::Exec(_) => "exec".into(),
                },
                BATCH_CAPABILITY.into(),
            ],
            instance: Some(self.instance.clone()),
            draining: self.draining.is_cancelled(),
            pass: self.pass.lock().clone(),
        }
    }
}

/// The CPU this worker process (and the commands it ran) used since the last reading, as a
/// percentage of the machine. The machine's load average would be simpler, but it counts every
/// other process too: a busy neighbour would make an idle worker look overloaded.
struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    /// CPU seconds of this process and its reaped children, from /proc/self/stat.
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime are fields 14–17 of the line: 11–14 after the name.
        let ticks: f64 = fields
            .get(11..15)?
            .iter()
            .filter_map(|f| f.parse::<f64>().ok())
            .sum();
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (hz > 0.0).then(|| ticks / hz)
    }

    fn percent(&mut self) -> f64 {
        let Some(now_cpu) = Self::cpu_seconds() else {
            return 0.0;
        };
        let now = Instant::now();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let pct = match self.last {
            Some((at, cpu)) => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    ((now_cpu - cpu) / wall / cores * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, now_cpu));
        pct
    }
}

/// Runs `cmd` for `job` until it exits, `cancel` (a cancel of the job), the job's deadline, or
/// `grace_over` (the worker's drain ran out of time: the job is handed back).
async fn run_command(
    cmd: &str,
    job: &JobMsg,
    cancel: &CancellationToken,
    grace_over: &CancellationToken,
) -> (ResultStatus, Option<serde_json::Value>, Option<JobError>) {
    let refused = job
        .env
        .keys()
        .find(|k| *k != EFFECTIVE_CONFIG_ENV && env_refusal(k).is_some());
    if let Some(name) = refused {
        tracing::warn!(job_id = %job.job_id, env = %name, "refusing a job whose env is on the deny list");
        return (
            ResultStatus::Failed,
            None,
            Some(JobError::new(
                "env_refused",
                format!(
                    "the job's env sets `{name}`, which this worker does not apply (env deny list)"
                ),
            )),
        );
    }
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(&job.env)
        .env("CORETEX_JOB_ID", &job.job_id)
        .env("CORETEX_TOPIC", &job.topic)
        .env("CORETEX_ATTEMPT", job.attempt.to_string())
        .env("CORETEX_TRACE_ID", &job.trace_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a cancel kills the command's children too.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                ResultStatus::Failed,
                None,
                Some(JobError::new("spawn_failed", e.to_string())),
            );
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let input = serde_json::to_vec(&job.payload).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let pid = child.id();
    let deadline = job
        .deadline_at
        .map(|d| Duration::from_millis((d - now_ms()).max(0) as u64));
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let output = child.wait_with_output();
    tokio::select! {
        out = output => match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let trimmed = text.trim();
                let result = serde_json::from_str(trimmed)
                    .unwrap_or_else(|_| serde_json::Value::String(trimmed.to_string()));
                (ResultStatus::Succeeded, Some(result), None)
            }
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                let code = out.status.code().map_or("killed".to_string(), |c| format!("exit_{c}"));
                (ResultStatus::Failed, None, Some(JobError::new(code, tail.trim().to_string())))
            }
            Err(e) => (ResultStatus::Failed, None, Some(JobError::new("wait_failed", e.to_string()))),
        },
        _ = cancel.cancelled() => {
            kill_group(pid);
            (ResultStatus::Cancelled, None, Some(JobError::new("cancelled", "cancelled while running")))
        }
        _ = grace_over.cancelled() => {
            kill_group(pid);
            (ResultStatus::Failed, None, Some(JobError::new(WORKER_DRAINED,
                "the worker stopped it: its drain timeout ran out while the job was running")))
        }
        _ = timeout => {
            kill_group(pid);
            (ResultStatus::Timeout, None, Some(JobError::new("deadline_exceeded", "the job's deadline passed while running")))
        }
    }
}

/// SIGKILLs the command's whole process group.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (process_group(0) above); it touches no memory of ours.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(env: &[(&str, &str)]) -> JobMsg {
        serde_json::from_value(serde_json::json!({
            "job_id": "j1", "trace_id": "j1", "topic": "t", "attempt": 1,
            "env": env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn an_exec_worker_refuses_env_on_the_deny_list() {
        let token = CancellationToken::new();
        let (status, _, error) = run_command(
            "echo ran",
            &job(&[("LD_PRELOAD", "/tmp/evil.so")]),
            &token,
            &token,
        )
        .await;
        assert_eq!(status, ResultStatus::Failed);
        let error = error.unwrap();
        assert_eq!(error.code, "env_refused");
        assert!(error.message.contains("LD_PRELOAD"), "{}", error.message);
    }

    #[tokio::test]
    async fn an_exec_worker_applies_ordinary_env_and_the_effective_config() {
        let token = CancellationToken::new();
        let env = [("GREETING", "hi"), (EFFECTIVE_CONFIG_ENV, "{\"a\":1}")];
        let (status, result, error) = run_command(
            "printf '%s %s' \"$GREETING\" \"$CORETEX_EFFECTIVE_CONFIG\"",
            &job(&env),
            &token,
            &token,
        )
        .await;
        assert_eq!(status, ResultStatus::Succeeded, "{error:?}");
        assert_eq!(result, Some(serde_json::json!("hi {\"a\":1}")));
    }
}
