//! The bus: how Coretex processes and workers talk (SPEC §4), behind one trait with two backends.
//!
//! * [`nats::NatsBus`]: the real one, over `async-nats`. Worker events (`sys.job.started`,
//!   `sys.job.result`) are captured by a JetStream work-queue stream, so a result a worker sends
//!   while no `serve` runs waits in NATS, and one a replica took but did not ack (it died) is
//!   delivered again. Workers still publish with a plain core-NATS publish: the protocol stays
//!   "publish JSON to a subject" for a worker in any language.
//! * [`memory::MemoryBus`]: the in-process default with the same delivery rules.
//!
//! Subjects are named in one place, [`Subjects`]; who may say what on them is [`auth`]'s.
//!
//! This is the `coretex-bus` crate: it depends on the domain (`coretex-core`) and nothing of the
//! host's (the leases' key comes in as bytes, from the store, through the host); the host
//! re-exports it as `coretex::bus`.

// Nothing a caller sends may panic the host: outside tests, failures are errors, not unwinds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
pub mod memory;
pub mod nats;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::Serialize;

// The domain modules, under the paths the backends name them by (`crate::protocol`, …).
use coretex_core::{limits, protocol, time};

pub type SharedBus = Arc<dyn Bus>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus carries no message this large (NATS's `max_payload`, or the embedded bus's).
    #[error("a message of {size} bytes is over the bus's max_payload of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

pub type BusResult<T> = Result<T, BusError>;

/// Acknowledges one durable delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(self: Box<Self>) -> BusResult<()>;
}

pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    acker: Option<Box<dyn Acker>>,
}

impl Message {
    pub fn new(subject: String, payload: Bytes) -> Self {
        Message {
            subject,
            payload,
            acker: None,
        }
    }

    pub fn durable(subject: String, payload: Bytes, acker: Box<dyn Acker>) -> Self {
        Message {
            subject,
            payload,
            acker: Some(acker),
        }
    }

    /// Splits off the acknowledgement (a no-op for plain deliveries), so the payload can be
    /// handled and the ack sent once the effect is stored.
    pub fn take_ack(&mut self) -> Ack {
        Ack(self.acker.take())
    }
}

/// A pending acknowledgement. Dropped without [`Ack::ack`], the message is delivered again.
pub struct Ack(Option<Box<dyn Acker>>);

impl Ack {
    pub async fn ack(self) -> BusResult<()> {
        match self.0 {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }
}

pub type MessageStream = Pin<Box<dyn Stream<Item = Message> + Send>>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    fn backend(&self) -> &'static str;
    fn subjects(&self) -> &Subjects;
    fn is_connected(&self) -> bool;
    /// The largest message the bus carries, in bytes: the NATS server's `max_payload`, or the
    /// embedded bus's configured equivalent. A larger publish fails with
    /// [`BusError::TooLarge`].
    fn max_payload(&self) -> usize;
    /// Fire-and-forget publish: queued to the connection, not awaited on the server.
    async fn publish(&self, subject: &str, payload: Bytes) -> BusResult<()>;
    /// Every subscriber of the subject gets every message.
    async fn subscribe(&self, subject: &str) -> BusResult<MessageStream>;
    /// Each message goes to one member of the group.
    async fn queue_subscribe(&self, subject: &str, group: &str) -> BusResult<MessageStream>;
    /// Durable, at-least-once, shared consumption of the worker events (started and result):
    /// kept while nobody consumes, each to one consumer, delivered again until acked.
    async fn consume_worker_events(&self) -> BusResult<MessageStream>;
    /// Waits until everything published so far has reached the server.
    async fn flush(&self) -> BusResult<()>;
}

/// A publish waiting in an [`Outbox`]: the item's JSON, the subject it goes to alone, and the
/// subject a batch of such items goes to (none: always alone).
struct Outgoing {
    single: Arc<str>,
    batch: Option<Arc<str>>,
    item: Bytes,
}

/// What an [`Outbox`]'s flusher takes: an item, or a caller waiting for what came before it.
enum Queued {
    Item(Outgoing),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Most items one batch message carries.
const MAX_OUTBOX_BATCH: usize = 256;

/// Coalesces publishes: items sent at about the same time to the same destination leave as one
/// message, `{"v":1,"kind":K,"K":[item, …]}` on the destination's batch subject, instead of one
/// message each. A flusher task takes the first waiting item, yields once so every task that is
/// ready to add its own can, and publishes everything queued by then, grouped by destination.
/// At a trickle every item leaves alone, on its single subject, in the shape a worker in any
/// language understands; under load a message carries tens or hundreds of items, and NATS,
/// JetStream and both ends handle one message where they would have handled each.
///
/// The batch is assembled from the items' JSON bytes as they are: nothing is parsed or
/// serialized twice. Order is kept per destination.
#[derive(Clone)]
pub struct Outbox {
    tx: tokio::sync::mpsc::UnboundedSender<Queued>,
}

impl Outbox {
    /// Starts the flusher. `kind` names the batch envelope and its list field.
    pub fn start(bus: SharedBus, kind: &'static str) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            let mut queued = Vec::new();
            let mut flushes = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut take = |q| match q {
                    Queued::Item(item) => queued.push(item),
                    Queued::Flush(done) => flushes.push(done),
                };
                take(first);
                tokio::task::yield_now().await;
                while let Ok(next) = rx.try_recv() {
                    take(next);
                }
                let max_bytes = bus.max_payload();
                for (single, batch, items) in group_by_destination(&mut queued) {
                    // One batch message per chunk, or each item alone on its single subject.
                    let messages: Vec<(&str, Bytes)> = match &batch {
                        Some(subject) if items.len() > 1 => chunks_within(&items, kind, max_bytes)
                            .into_iter()
                            .map(|chunk| match chunk {
                                [one] => (&*single, one.clone()),
                                chunk => (&**subject, batch_envelope(kind, chunk)),
                            })
                            .collect(),
                        _ => items.into_iter().map(|item| (&*single, item)).collect(),
                    };
                    let mut result = Ok(());
                    for (subject, body) in messages {
                        result = result.and(bus.publish(subject, body).await);
                    }
                    if let Err(e) = result {
                        tracing::warn!(subject = %single, error = %e, "publish failed; the reconciler recovers what it carried");
                    }
                }
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Outbox { tx }
    }

    /// Queues one item (a JSON object) for `single`, or for `batch` together with others.
    pub fn send(&self, single: Arc<str>, batch: Option<Arc<str>>, item: Bytes) {
        let _ = self.tx.send(Queued::Item(Outgoing {
            single,
            batch,
            item,
        }));
    }

    /// Waits until every item queued before this call has been published (handed to the bus:
    /// [`Bus::flush`] then waits for the server), for a process about to stop.
    pub async fn flush(&self) {
        let (done, published) = tokio::sync::oneshot::channel();
        if self.tx.send(Queued::Flush(done)).is_ok() {
            let _ = published.await;
        }
    }
}

/// Items for one destination: its single subject, its batch subject, the items in order.
type Group = (Arc<str>, Option<Arc<str>>, Vec<Bytes>);

/// Splits queued items by destination, keeping each destination's order.
fn group_by_destination(queued: &mut Vec<Outgoing>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for o in queued.drain(..) {
        match groups
            .iter_mut()
            .find(|(s, b, _)| *s == o.single && *b == o.batch)
        {
            Some(g) => g.2.push(o.item),
            None => groups.push((o.single, o.batch, vec![o.item])),
        }
    }
    groups
}

/// Splits items into runs of at most [`MAX_OUTBOX_BATCH`] whose batch envelope fits in
/// `max_bytes`; an item too large to share a message is a run of its own (sent alone, where the
/// bus refuses it if it is over the limit by itself).
fn chunks_within<'a>(items: &'a [Bytes], kind: &str, max_bytes: usize) -> Vec<&'a [Bytes]> {
    let mut chunks = Vec::new();
    let mut rest = items;
    while let Some((first, others)) = rest.split_first() {
        let mut size = envelope_overhead(kind) + first.len();
        // Every item but a chunk's first comes after a comma.
        let len = 1 + others
            .iter()
            .take(MAX_OUTBOX_BATCH - 1)
            .take_while(|item| {
                size += 1 + item.len();
                size <= max_bytes
            })
            .count();
        let (chunk, tail) = rest.split_at_checked(len).unwrap_or((rest, &[]));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// The bytes of an empty batch envelope of `kind`.
fn envelope_overhead(kind: &str) -> usize {
    batch_envelope(kind, &[]).len()
}

/// `{"v":1,"kind":K,"K":[items]}`, from the items' bytes.
fn batch_envelope(kind: &str, items: &[Bytes]) -> Bytes {
    let len: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut out = Vec::with_capacity(len + 2 * kind.len() + 32);
    out.extend_from_slice(b"{\"v\":1,\"kind\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Which job events a subscription takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Every terminal job event (`sys.job.events`, `sys.job.events.batch`).
    All,
    /// Only those of workflow steps' jobs (`sys.job.step_events`, `….batch`): the workflow
    /// engine's, so that the events of the many jobs no workflow waits on never reach it.
    Steps,
}

impl Feed {
    /// The single and the batch subject.
    fn subjects(self, s: &Subjects) -> (String, String) {
        match self {
            Feed::All => (s.job_events(), s.job_events_batch()),
            Feed::Steps => (s.step_events(), s.step_events_batch()),
        }
    }
}

/// Job events of `feed` from both its subjects (singles and batches), each message's events
/// together; malformed messages are skipped. With `group`, each event goes to one subscriber of
/// the queue group; without, to every subscriber. The stream never ends: a failed subscription
/// is retried every second, and one that ends (the bus reconnected) is made again.
pub fn job_events(
    bus: SharedBus,
    feed: Feed,
    group: Option<&'static str>,
) -> impl Stream<Item = Vec<crate::protocol::JobEventMsg>> + Send {
    use futures::StreamExt;
    type Events = Pin<Box<dyn Stream<Item = Vec<crate::protocol::JobEventMsg>> + Send>>;
    futures::stream::unfold(
        (bus, None::<Events>),
        move |(bus, mut current)| async move {
            loop {
                if let Some(events) = current.as_mut() {
                    if let Some(item) = events.next().await {
                        return Some((item, (bus, current)));
                    }
                    tracing::warn!("job event stream ended; resubscribing");
                    current = None;
                }
                match subscribe_job_events(bus.as_ref(), feed, group).await {
                    Ok(events) => current = Some(events),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot subscribe to job events; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        },
    )
}

async fn subscribe_job_events(
    bus: &dyn Bus,
    feed: Feed,
    group: Option<&str>,
) -> BusResult<Pin<Box<dyn Stream<Item = Vec<crate::protocol::JobEventMsg>> + Send>>> {
    use crate::protocol::{Batch, JobEventMsg};
    use futures::StreamExt;
    let (single, batch) = feed.subjects(bus.subjects());
    let (a, b) = match group {
        Some(g) => {
            futures::future::try_join(
                bus.queue_subscribe(&single, g),
                bus.queue_subscribe(&batch, g),
            )
            .await?
        }
        None => futures::future::try_join(bus.subscribe(&single), bus.subscribe(&batch)).await?,
    };
    let events = futures::stream::select(a, b).map(move |msg| {
        let parsed = if msg.subject == batch {
            serde_json::from_slice::<Batch<JobEventMsg>>(&msg.payload).map(|b| b.items)
        } else {
            serde_json::from_slice::<JobEventMsg>(&msg.payload).map(|e| vec![e])
        };
        parsed.unwrap_or_default()
    });
    Ok(Box::pin(events))
}

/// Serializes a message and publishes it.
pub async fn publish_json<T: Serialize>(bus: &dyn Bus, subject: &str, msg: &T) -> BusResult<()> {
    let payload = serde_json::to_vec(msg).map_err(|e| BusError::Unavailable(e.to_string()))?;
    bus.publish(subject, Bytes::from(payload)).await
}

/// The subject names of SPEC §4, under an optional prefix (which isolates deployments, and tests,
/// sharing one NATS server).
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    prefix: String,
}

/// The queue group the schedulers of all replicas share.
pub const SCHEDULER_GROUP: &str = "coretex-scheduler";

impl Subjects {
    /// `prefix` is prepended as given, plus a `.` when it does not end in one.
    pub fn new(prefix: &str) -> Self {
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        };
        Subjects { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn submit(&self) -> String {
        format!("{}sys.job.submit", self.prefix)
    }
    pub fn worker_jobs(&self, worker_id: &str) -> String {
        format!("{}worker.{worker_id}.jobs", self.prefix)
    }
    pub fn started(&self) -> String {
        format!("{}sys.job.started", self.prefix)
    }
    pub fn result(&self) -> String {
        format!("{}sys.job.result", self.prefix)
    }
    /// Several results in one message (`{"kind":"results","results":[…]}`), from workers that
    /// batch; kept by the same stream as single results.
    pub fn results(&self) -> String {
        format!("{}sys.job.results", self.prefix)
    }
    /// Several jobs for one worker (`{"kind":"jobs","jobs":[…]}`), sent only to workers whose
    /// heartbeat lists the `batch` capability.
    pub fn worker_batch(&self, worker_id: &str) -> String {
        format!("{}worker.{worker_id}.batch", self.prefix)
    }
    /// The prefix of a worker's reply subjects (`_INBOX.<prefix>worker.<id>`, instead of
    /// `_INBOX`), so that NATS permissions can give each worker its own replies and no one
    /// else's.
    pub fn worker_inbox(&self, worker_id: &str) -> String {
        format!("_INBOX.{}worker.{worker_id}", self.prefix)
    }
    /// Several job events in one message (`{"kind":"job_events","job_events":[…]}`).
    pub fn job_events_batch(&self) -> String {
        format!("{}sys.job.events.batch", self.prefix)
    }
    /// A worker's `progress` on a running job: core NATS, seen by every replica, not kept.
    pub fn progress(&self) -> String {
        format!("{}sys.job.progress", self.prefix)
    }
    pub fn heartbeat(&self) -> String {
        format!("{}sys.heartbeat", self.prefix)
    }
    pub fn cancel(&self) -> String {
        format!("{}sys.job.cancel", self.prefix)
    }
    pub fn job_events(&self) -> String {
        format!("{}sys.job.events", self.prefix)
    }
    /// The events of workflow steps' jobs once more, for the workflow engine alone (they are on
    /// `sys.job.events` too).
    pub fn step_events(&self) -> String {
        format!("{}sys.job.step_events", self.prefix)
    }
    pub fn step_events_batch(&self) -> String {
        format!("{}sys.job.step_events.batch", self.prefix)
    }
    pub fn config_changed(&self) -> String {
        format!("{}sys.config.changed", self.prefix)
    }
    /// A plugin was uploaded or deleted through the API; replicas reload from the store.
    pub fn plugins_changed(&self) -> String {
        format!("{}sys.plugins.changed", self.prefix)
    }

    /// The JetStream stream that keeps worker events: stream names allow no dots.
    pub fn events_stream(&self) -> String {
        let tag: String = self
            .prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("CORETEX_{tag}EVENTS")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_take_the_prefix() {
        let s = Subjects::new("t1");
        assert_eq!(s.submit(), "t1.sys.job.submit");
        assert_eq!(s.worker_jobs("w-1"), "t1.worker.w-1.jobs");
        assert_eq!(s.worker_inbox("w-1"), "_INBOX.t1.worker.w-1");
        assert_eq!(Subjects::new("").worker_inbox("w"), "_INBOX.worker.w");
        assert_eq!(s.events_stream(), "CORETEX_t1_EVENTS");
        assert_eq!(Subjects::new("").heartbeat(), "sys.heartbeat");
    }

    #[test]
    fn a_batch_envelope_is_the_items_in_a_list() {
        let body = batch_envelope("jobs", &[Bytes::from(r#"{"a":1}"#), Bytes::from("{}")]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v": 1, "kind": "jobs", "jobs": [{"a": 1}, {}]})
        );
    }

    #[test]
    fn batches_are_split_to_fit_the_bus() {
        let items: Vec<Bytes> = (0..10)
            .map(|i| Bytes::from(format!("{{\"i\":{i}}}")))
            .collect();
        let all = batch_envelope("jobs", &items).len();
        assert_eq!(chunks_within(&items, "jobs", all), vec![&items[..]]);
        let chunks = chunks_within(&items, "jobs", all - 1);
        assert_eq!(chunks.len(), 2);
        for chunk in &chunks {
            assert!(batch_envelope("jobs", chunk).len() < all);
        }
        assert_eq!(chunks.concat(), items);
        // An item over the limit by itself goes alone; its neighbours are not held back.
        let big = vec![
            items[0].clone(),
            Bytes::from(vec![b'x'; 100]),
            items[1].clone(),
        ];
        let chunks = chunks_within(&big, "jobs", 60);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        let many: Vec<Bytes> = (0..600).map(|_| Bytes::from_static(b"{}")).collect();
        let lens: Vec<usize> = chunks_within(&many, "jobs", usize::MAX)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(
            lens,
            [
                MAX_OUTBOX_BATCH,
                MAX_OUTBOX_BATCH,
                600 - 2 * MAX_OUTBOX_BATCH
            ]
        );
    }

    #[test]
    fn grouping_keeps_each_destinations_order() {
        let o = |s: &str, i: &'static str| Outgoing {
            single: s.into(),
            batch: Some(format!("{s}.b").into()),
            item: Bytes::from(i),
        };
        let mut q = vec![o("a", "1"), o("b", "2"), o("a", "3")];
        let g = group_by_destination(&mut q);
        assert_eq!(g.len(), 2);
        assert_eq!(&*g[0].0, "a");
        assert_eq!(g[0].2, vec![Bytes::from("1"), Bytes::from("3")]);
        assert_eq!(g[1].2, vec![Bytes::from("2")]);
        assert!(q.is_empty());
    }
}
