//! The NATS bus. Core NATS for submissions (queue group), direct dispatch, heartbeats and
//! cancels; a JetStream work-queue stream for worker events, so results survive a host restart.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::*;

pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    ack_wait: Duration,
    events_batch: usize,
    /// Copies of the worker-event stream a JetStream cluster keeps.
    stream_replicas: usize,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// The durable consumer all replicas share.
const EVENTS_CONSUMER: &str = "coretex-events";

/// How long [`Bus::flush`] waits for its round trip through the server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a taken worker event may stay unacked before JetStream delivers it again: long
/// enough for a replica to store the effect of one event, short enough that the events a dead
/// replica had taken are not held up for long.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);

/// How many worker events one pull asks for. One per pull would cost a round trip to the server
/// per event (the whole throughput of the host); a batch lets a replica hold up to this many at
/// once, which is harmless because the applier takes each into its own task as it arrives —
/// they are acked long before `ack_wait`, unless the store is down, and then their redelivery
/// is wanted.
const DEFAULT_EVENTS_BATCH: usize = 256;

impl NatsBus {
    /// Connects, failing fast when NATS is down; afterwards the client reconnects by itself
    /// and buffers publishes meanwhile. `url` may name several seed servers of one cluster,
    /// comma-separated (`nats://a:4222,nats://b:4222`): the client connects to one that
    /// answers, learns the rest of the cluster from it, and moves to a surviving node when its
    /// own goes down.
    pub async fn connect(url: &str, subjects: Subjects) -> BusResult<Self> {
        let seeds = seed_urls(url)?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .name("coretex")
            .connect(seeds)
            .await
            .map_err(unavailable)?;
        let js = jetstream::new(client.clone());
        Ok(NatsBus {
            client,
            js,
            subjects,
            ack_wait: DEFAULT_ACK_WAIT,
            events_batch: DEFAULT_EVENTS_BATCH,
            stream_replicas: 1,
        })
    }

    /// Sets how many servers of a JetStream cluster keep a copy of the worker-event stream (1
    /// unless set; 3 on a three-node cluster survives the loss of any one node). Applied when
    /// [`NatsBus::ensure_events_stream`] creates or updates the stream.
    pub fn with_stream_replicas(mut self, replicas: usize) -> Self {
        self.stream_replicas = replicas.max(1);
        self
    }

    /// Sets how long a taken worker event may stay unacked before it is delivered again
    /// (10 s unless set). It is fixed when the durable consumer is first created: a consumer
    /// that already exists keeps its own.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets how many worker events one pull asks for (256 unless set).
    pub fn with_events_batch(mut self, n: usize) -> Self {
        self.events_batch = n.max(1);
        self
    }

    /// The underlying NATS client (tests use it to inspect the server).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Creates the worker-event stream if it does not exist. Called by `serve` at start, so
    /// events published from then on are kept even while no host runs.
    pub async fn ensure_events_stream(&self) -> BusResult<stream::Stream> {
        // Created, or brought up to date (a stream made by an older version may lack a subject).
        self.js
            .create_or_update_stream(stream::Config {
                name: self.subjects.events_stream(),
                subjects: vec![
                    self.subjects.started(),
                    self.subjects.result(),
                    self.subjects.results(),
                ],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(7 * 24 * 3600),
                num_replicas: self.stream_replicas,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        self.js
            .get_stream(self.subjects.events_stream())
            .await
            .map_err(unavailable)
    }

    /// Removes the worker-event stream (tests clean up after themselves with it).
    pub async fn delete_events_stream(&self) -> BusResult<()> {
        self.js
            .delete_stream(self.subjects.events_stream())
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

/// The seed servers of a comma-separated URL list, each checked.
fn seed_urls(url: &str) -> BusResult<Vec<async_nats::ServerAddr>> {
    let seeds = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Unavailable(format!("NATS URL `{u}`: {e}")))
        })
        .collect::<BusResult<Vec<_>>>()?;
    if seeds.is_empty() {
        return Err(BusError::Unavailable("no NATS URL given".into()));
    }
    Ok(seeds)
}

/// Acks a worker event and waits for JetStream to confirm: a plain ack is only queued on the
/// connection, and is lost when the process exits right after acking (the event is then
/// handled twice). The confirmation comes back through the client's one shared reply
/// subscription (a request), not through a subscription made and dropped per ack as
/// async-nats's `double_ack` does: that cost the server a SUB and an UNSUB per event.
struct JsAcker {
    client: async_nats::Client,
    reply: async_nats::Subject,
}

/// What an ack sends (`AckKind::Ack` on the wire).
const ACK: &[u8] = b"+ACK";

#[async_trait]
impl Acker for JsAcker {
    async fn ack(self: Box<Self>) -> BusResult<()> {
        self.client
            .request(self.reply, Bytes::from_static(ACK))
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

fn plain(m: async_nats::Message) -> Message {
    Message::new(m.subject.to_string(), m.payload)
}

#[async_trait]
impl Bus for NatsBus {
    fn backend(&self) -> &'static str {
        "nats"
    }

    fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// As the server said when the client connected (`INFO`).
    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> BusResult<()> {
        let max = self.max_payload();
        if payload.len() > max {
            return Err(BusError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        self.client
            .publish(subject.to_string(), payload)
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, subject: &str) -> BusResult<MessageStream> {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(unavailable)?;
        Ok(Box::pin(sub.map(plain)))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> BusResult<MessageStream> {
        let sub = self
            .client
            .queue_subscribe(subject.to_string(), group.to_string())
            .await
            .map_err(unavailable)?;
        Ok(Box::pin(sub.map(plain)))
    }

    async fn consume_worker_events(&self) -> BusResult<MessageStream> {
        let stream = self.ensure_events_stream().await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                EVENTS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(EVENTS_CONSUMER.to_string()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.events_batch)
            .heartbeat(Duration::from_secs(15))
            .messages()
            .await
            .map_err(unavailable)?;
        let client = self.client.clone();
        Ok(Box::pin(messages.filter_map(move |m| {
            let client = client.clone();
            async move {
                match m {
                    Ok(m) => {
                        let m = m.message;
                        let subject = m.subject.to_string();
                        // JetStream gives every delivery an ack subject; one without has
                        // nothing to ack.
                        Some(match m.reply {
                            Some(reply) => Message::durable(
                                subject,
                                m.payload,
                                Box::new(JsAcker { client, reply }),
                            ),
                            None => Message::new(subject, m.payload),
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "worker event stream error");
                        None
                    }
                }
            }
        })))
    }

    /// A client flush alone returns once the bytes are written to the socket, before the server
    /// has read them: a subscription made here could then still miss a message another
    /// connection publishes next. A message to a fresh inbox of this connection, received back,
    /// proves the server has processed everything this connection sent before it.
    async fn flush(&self) -> BusResult<()> {
        if !self.is_connected() {
            return Err(BusError::Unavailable("not connected to NATS".into()));
        }
        let round_trip = async {
            let inbox = self.client.new_inbox();
            let mut echo = self
                .client
                .subscribe(inbox.clone())
                .await
                .map_err(unavailable)?;
            self.client
                .publish(inbox, Bytes::new())
                .await
                .map_err(unavailable)?;
            self.client.flush().await.map_err(unavailable)?;
            echo.next()
                .await
                .map(drop)
                .ok_or_else(|| BusError::Unavailable("NATS connection closed".into()))
        };
        tokio::time::timeout(FLUSH_TIMEOUT, round_trip)
            .await
            .unwrap_or_else(|_| {
                Err(BusError::Unavailable(format!(
                    "NATS did not answer within {FLUSH_TIMEOUT:?}"
                )))
            })
    }
}
