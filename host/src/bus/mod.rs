//! The bus: how Coretex processes and workers talk (SPEC §4), behind one trait with two backends.
//!
//! * [`nats::NatsBus`]: the real one, over `async-nats`. Worker events (`sys.job.started`,
//!   `sys.job.result`) are captured by a JetStream work-queue stream, so a result a worker sends
//!   while no `serve` runs waits in NATS, and one a replica took but did not ack (it died) is
//!   delivered again. Workers still publish with a plain core-NATS publish: the protocol stays
//!   "publish JSON to a subject" for a worker in any language.
//! * [`memory::MemoryBus`]: the in-process default with the same delivery rules.
//!
//! Subjects are named in one place, [`Subjects`].

pub mod memory;
pub mod nats;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::Serialize;

pub type SharedBus = Arc<dyn Bus>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
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
    pub fn heartbeat(&self) -> String {
        format!("{}sys.heartbeat", self.prefix)
    }
    pub fn cancel(&self) -> String {
        format!("{}sys.job.cancel", self.prefix)
    }
    pub fn job_events(&self) -> String {
        format!("{}sys.job.events", self.prefix)
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
        assert_eq!(s.events_stream(), "CORETEX_t1_EVENTS");
        assert_eq!(Subjects::new("").heartbeat(), "sys.heartbeat");
    }
}
