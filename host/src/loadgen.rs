//! `coretex loadgen`: submits N jobs through the HTTP API and waits until every one is terminal,
//! learning of completions from the completion feed (`GET /api/v1/stream`) instead of polling
//! each job; only jobs the feed never reported are looked up at the end.
//!
//! Two modes: throughput (bulk submits of `batch` jobs from `concurrency` submitters) and
//! open-loop latency (`rate` single submits per second, whatever the answers' pace). Latency is
//! measured by the client from sending a job's submit to receiving its terminal event.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    pub gateway: String,
    pub api_key: Option<String>,
    pub jobs: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub topic: String,
    /// Open-loop latency mode: single submits at this many per second.
    pub rate: Option<f64>,
    /// How long to wait for the last completion.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub jobs: usize,
    pub ok: usize,
    pub failed: usize,
    /// Of the failed, submits the gateways refused (never accepted, so nothing to lose).
    pub rejected: usize,
    pub lost: usize,
    pub submit_per_s: f64,
    pub e2e_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loadgen jobs={} ok={} failed={} submit_per_s={:.0} e2e_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
            self.jobs,
            self.ok,
            self.failed,
            self.submit_per_s,
            self.e2e_per_s,
            self.p50_ms,
            self.p99_ms
        )?;
        if self.rejected > 0 {
            write!(f, " rejected={}", self.rejected)?;
        }
        if self.lost > 0 {
            write!(f, " lost={}", self.lost)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Ledger {
    /// Accepted jobs: when their submit was sent, and when their terminal event came.
    jobs: HashMap<String, (Instant, Option<(Instant, bool)>)>,
    /// Events that arrived before their submit's answer.
    early: HashMap<String, (Instant, bool)>,
    done: usize,
    rejected: usize,
}

impl Ledger {
    fn accepted(&mut self, id: String, sent: Instant) {
        let end = self.early.remove(&id);
        if end.is_some() {
            self.done += 1;
        }
        self.jobs.insert(id, (sent, end));
    }

    fn finished(&mut self, id: &str, at: Instant, ok: bool) {
        match self.jobs.get_mut(id) {
            Some((_, end @ None)) => {
                *end = Some((at, ok));
                self.done += 1;
            }
            Some(_) => {}
            None => {
                self.early.insert(id.to_string(), (at, ok));
            }
        }
    }
}

struct Client {
    http: reqwest::Client,
    /// One gateway, or several (replicas): submitter `i` talks to gateway `i mod n`.
    bases: Vec<String>,
    key: Option<String>,
}

impl Client {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.req_at(0, method, path)
    }

    fn req_at(&self, i: usize, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        // `run` refuses a `--gateway` that names none, so there is always a base to take.
        let base = self
            .bases
            .get(i % self.bases.len().max(1))
            .map_or("", String::as_str);
        let r = self.http.request(method, format!("{base}{path}"));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
}

pub async fn run(opts: LoadgenOptions) -> anyhow::Result<Summary> {
    if opts.jobs == 0 || opts.concurrency == 0 || opts.batch == 0 || opts.batch > 1000 {
        bail!("--jobs and --concurrency must be ≥ 1, --batch between 1 and 1000");
    }
    if opts.gateway.split(',').all(|g| g.trim().is_empty()) {
        bail!("--gateway must name at least one gateway URL");
    }
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(opts.concurrency)
            .build()?,
        bases: opts
            .gateway
            .split(',')
            .map(|g| g.trim().trim_end_matches('/').to_string())
            .filter(|g| !g.is_empty())
            .collect(),
        key: opts.api_key.clone(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // The completion feed first, so no completion is missed.
    let feed = client
        .req(reqwest::Method::GET, "/api/v1/stream")
        .send()
        .await
        .context("opening the completion feed")?
        .error_for_status()?;
    let feed_ledger = ledger.clone();
    let feed_task = tokio::spawn(async move {
        let mut bytes = feed.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = bytes.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            let done = read_events(&buf, |id, ok| feed_ledger.lock().finished(id, now, ok));
            buf.drain(..done);
        }
    });
    // Let the host's subscription settle before the first job can finish.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    match opts.rate {
        None => submit_bulk(&opts, &client, &ledger).await,
        Some(rate) => submit_open_loop(&opts, rate, &client, &ledger).await?,
    }
    let submit_secs = started.elapsed().as_secs_f64();

    let accepted = ledger.lock().jobs.len();
    let until = Instant::now() + opts.timeout;
    while ledger.lock().done < accepted && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    feed_task.abort();

    // Jobs the feed did not report: ask for them once.
    let missing: Vec<String> = ledger
        .lock()
        .jobs
        .iter()
        .filter(|(_, (_, end))| end.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let mut lost = 0;
    let mut late_ok = 0;
    let mut late_failed = 0;
    for id in &missing {
        let resp = client
            .req(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"))
            .send()
            .await?;
        let state = resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.get("state")?.as_str().map(str::to_string));
        match state.as_deref() {
            Some("SUCCEEDED") => late_ok += 1,
            Some("FAILED" | "CANCELLED" | "TIMEOUT" | "DENIED") => late_failed += 1,
            _ => lost += 1,
        }
    }

    let l = ledger.lock();
    let mut latencies: Vec<f64> = l
        .jobs
        .values()
        .filter_map(|(sent, end)| {
            end.filter(|(_, ok)| *ok)
                .map(|(at, _)| (at - *sent).as_secs_f64() * 1e3)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let ok = latencies.len() + late_ok;
    let failed = l.rejected
        + late_failed
        + l.jobs
            .values()
            .filter(|(_, e)| matches!(e, Some((_, false))))
            .count()
        + lost;
    let last = l
        .jobs
        .values()
        .filter_map(|(_, e)| e.map(|(at, _)| at))
        .max()
        .unwrap_or(started);
    let e2e_secs = (last - started).as_secs_f64().max(1e-9);
    Ok(Summary {
        jobs: opts.jobs,
        ok,
        failed,
        rejected: l.rejected,
        lost,
        submit_per_s: accepted as f64 / submit_secs.max(1e-9),
        e2e_per_s: (ok as f64) / e2e_secs,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// The fields of a job event the ledger needs, borrowed from the feed's buffer.
#[derive(Deserialize)]
struct FeedEvent<'a> {
    #[serde(borrow)]
    job_id: Cow<'a, str>,
    #[serde(borrow)]
    state: Cow<'a, str>,
}

/// Reads the complete Server-Sent Events at the start of `buf`, calling `seen(job id,
/// succeeded)` for each job event; answers how many bytes were read (a partial event stays).
fn read_events(buf: &[u8], mut seen: impl FnMut(&str, bool)) -> usize {
    let mut rest = buf;
    while let Some(end) = rest.windows(2).position(|w| w == b"\n\n")
        && let Some((event, tail)) = rest.split_at_checked(end)
    {
        rest = tail.strip_prefix(b"\n\n").unwrap_or(tail);
        for line in event.split(|b| *b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data:")
                && let Ok(ev) = serde_json::from_slice::<FeedEvent>(data)
            {
                seen(&ev.job_id, ev.state == "SUCCEEDED");
            }
        }
    }
    buf.len() - rest.len()
}

#[derive(Serialize)]
struct JobBody<'a> {
    topic: &'a str,
    payload: Payload,
}

#[derive(Serialize)]
struct Payload {
    i: usize,
}

fn job_body(topic: &str, i: usize) -> JobBody<'_> {
    JobBody {
        topic,
        payload: Payload { i },
    }
}

/// The parts of a submit's answer loadgen reads (one per job, or the `items` of a batch).
#[derive(Deserialize)]
struct Answer {
    job_id: Option<String>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    items: Vec<Answer>,
}

/// Throughput mode: `concurrency` submitters send batches until `jobs` are submitted.
async fn submit_bulk(opts: &LoadgenOptions, client: &Arc<Client>, ledger: &Arc<Mutex<Ledger>>) {
    let next = Arc::new(AtomicUsize::new(0));
    let submitters = (0..opts.concurrency).map(|k| {
        let (client, ledger, next, opts) =
            (client.clone(), ledger.clone(), next.clone(), opts.clone());
        tokio::spawn(async move {
            loop {
                let start = next.fetch_add(opts.batch, Ordering::Relaxed);
                if start >= opts.jobs {
                    return;
                }
                let end = (start + opts.batch).min(opts.jobs);
                let jobs: Vec<JobBody> = (start..end).map(|i| job_body(&opts.topic, i)).collect();
                let sent = Instant::now();
                let resp = client
                    .req_at(k, reqwest::Method::POST, "/api/v1/jobs/batch")
                    .json(&serde_json::json!({"jobs": jobs}))
                    .send()
                    .await;
                let items = match resp {
                    Ok(r) => r.json::<BatchAnswer>().await.map(|b| b.items),
                    Err(e) => Err(e),
                }
                .unwrap_or_default();
                let mut l = ledger.lock();
                let mut accepted = 0;
                for id in items.into_iter().filter_map(|a| a.job_id) {
                    l.accepted(id, sent);
                    accepted += 1;
                }
                l.rejected += (end - start) - accepted;
            }
        })
    });
    futures::future::join_all(submitters).await;
}

/// Latency mode: one submit every 1/rate seconds, at most `concurrency` in flight.
async fn submit_open_loop(
    opts: &LoadgenOptions,
    rate: f64,
    client: &Arc<Client>,
    ledger: &Arc<Mutex<Ledger>>,
) -> anyhow::Result<()> {
    if !rate.is_finite() || rate <= 0.0 {
        bail!("--rate must be a positive number");
    }
    let slots = Arc::new(Semaphore::new(opts.concurrency));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(opts.jobs);
    for i in 0..opts.jobs {
        tick.tick().await;
        let permit = slots.clone().acquire_owned().await?;
        let (client, ledger, topic) = (client.clone(), ledger.clone(), opts.topic.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let resp = client
                .req_at(i, reqwest::Method::POST, "/api/v1/jobs")
                .json(&job_body(&topic, i))
                .send()
                .await;
            let id = match resp {
                Ok(r) if r.status().is_success() => {
                    r.json::<Answer>().await.ok().and_then(|a| a.job_id)
                }
                _ => None,
            };
            let mut l = ledger.lock();
            match id {
                Some(id) => l.accepted(id, sent),
                None => l.rejected += 1,
            }
            drop(permit);
        }));
    }
    futures::future::join_all(tasks).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_before_its_answer_still_counts() {
        let mut l = Ledger::default();
        let t = Instant::now();
        l.finished("a", t, true);
        assert_eq!(l.done, 0);
        l.accepted("a".into(), t);
        assert_eq!(l.done, 1);
        l.finished("a", t, true);
        assert_eq!(l.done, 1, "a repeated event is counted once");
    }

    #[test]
    fn the_feed_is_read_event_by_event_and_a_partial_one_waits() {
        let feed = b"event: job\ndata: {\"v\":1,\"job_id\":\"a\",\"state\":\"SUCCEEDED\"}\n\n\
            : keep-alive\n\n\
            event: job\ndata:{\"job_id\":\"b\",\"state\":\"FAILED\",\"at\":\"x\"}\n\n\
            event: job\ndata: {\"job_id\":\"c\",";
        let mut seen = Vec::new();
        let done = read_events(feed, |id, ok| seen.push((id.to_string(), ok)));
        assert_eq!(seen, [("a".to_string(), true), ("b".to_string(), false)]);
        assert_eq!(&feed[done..], b"event: job\ndata: {\"job_id\":\"c\",");
        let mut rest = feed[done..].to_vec();
        rest.extend_from_slice(b"\"state\":\"SUCCEEDED\"}\n\n");
        seen.clear();
        assert_eq!(
            read_events(&rest, |id, ok| seen.push((id.to_string(), ok))),
            rest.len()
        );
        assert_eq!(seen, [("c".to_string(), true)]);
    }

    #[test]
    fn percentiles_of_a_sorted_sample() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
