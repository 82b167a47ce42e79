//! The in-process bus: exact-subject routing, queue groups served round-robin, and a durable
//! queue for worker events that keeps messages while nobody consumes and takes back any message
//! dropped without an ack — the delivery rules of the NATS bus, inside one process.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::*;
use crate::limits::EMBEDDED_BUS_MAX_PAYLOAD;

struct Sub {
    tx: mpsc::UnboundedSender<Message>,
    group: Option<String>,
}

#[derive(Default)]
struct Events {
    queue: Mutex<VecDeque<(String, Bytes)>>,
    ready: Notify,
}

pub struct MemoryBus {
    subs: Mutex<HashMap<String, Vec<Sub>>>,
    round_robin: Mutex<HashMap<(String, String), usize>>,
    events: Arc<Events>,
    subjects: Subjects,
    max_payload: usize,
}

impl MemoryBus {
    /// A bus that carries messages of up to [`EMBEDDED_BUS_MAX_PAYLOAD`] bytes, as NATS does by
    /// default.
    pub fn new(subjects: Subjects) -> Self {
        MemoryBus {
            subs: Mutex::new(HashMap::new()),
            round_robin: Mutex::new(HashMap::new()),
            events: Arc::new(Events::default()),
            subjects,
            max_payload: EMBEDDED_BUS_MAX_PAYLOAD,
        }
    }

    /// Sets the largest message the bus carries (its `max_payload`).
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    fn add_sub(&self, subject: &str, group: Option<&str>) -> MessageStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subs
            .lock()
            .entry(subject.to_string())
            .or_default()
            .push(Sub {
                tx,
                group: group.map(str::to_string),
            });
        Box::pin(UnboundedReceiverStream::new(rx))
    }

    fn is_worker_event(&self, subject: &str) -> bool {
        subject == self.subjects.started()
            || subject == self.subjects.result()
            || subject == self.subjects.results()
    }
}

/// Puts the message back at the head of the queue unless it was acked.
struct RequeueUnlessAcked {
    events: Arc<Events>,
    msg: Option<(String, Bytes)>,
    acked: AtomicBool,
}

#[async_trait]
impl Acker for RequeueUnlessAcked {
    async fn ack(self: Box<Self>) -> BusResult<()> {
        self.acked.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for RequeueUnlessAcked {
    fn drop(&mut self) {
        if !self.acked.load(Ordering::Acquire)
            && let Some(m) = self.msg.take()
        {
            self.events.queue.lock().push_front(m);
            self.events.ready.notify_one();
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> BusResult<()> {
        if payload.len() > self.max_payload {
            return Err(BusError::TooLarge {
                size: payload.len(),
                max: self.max_payload,
            });
        }
        // A worker event is kept for the durable consumers and, as on NATS (where the stream
        // captures a plain publish), still reaches the subject's subscribers.
        if self.is_worker_event(subject) {
            self.events
                .queue
                .lock()
                .push_back((subject.to_string(), payload.clone()));
            self.events.ready.notify_one();
        }
        let mut subs = self.subs.lock();
        let Some(list) = subs.get_mut(subject) else {
            return Ok(());
        };
        list.retain(|s| !s.tx.is_closed());
        let mut groups: HashMap<&str, Vec<&Sub>> = HashMap::new();
        for s in list.iter() {
            match &s.group {
                None => {
                    let _ =
                        s.tx.send(Message::new(subject.to_string(), payload.clone()));
                }
                Some(g) => groups.entry(g.as_str()).or_default().push(s),
            }
        }
        let mut rr = self.round_robin.lock();
        for (group, members) in groups {
            let next = rr
                .entry((subject.to_string(), group.to_string()))
                .or_default();
            *next = next.wrapping_add(1);
            // A group is made of at least one member, so there is always one to take.
            if let Some(member) = members.get(*next % members.len()) {
                let _ = member
                    .tx
                    .send(Message::new(subject.to_string(), payload.clone()));
            }
        }
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> BusResult<MessageStream> {
        Ok(self.add_sub(subject, None))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> BusResult<MessageStream> {
        Ok(self.add_sub(subject, Some(group)))
    }

    async fn consume_worker_events(&self) -> BusResult<MessageStream> {
        let events = self.events.clone();
        Ok(Box::pin(futures::stream::unfold(
            events,
            |events| async move {
                loop {
                    let next = events.queue.lock().pop_front();
                    if let Some((subject, payload)) = next {
                        let acker = RequeueUnlessAcked {
                            events: events.clone(),
                            msg: Some((subject.clone(), payload.clone())),
                            acked: AtomicBool::new(false),
                        };
                        let msg = Message::durable(subject, payload, Box::new(acker));
                        return Some((msg, events));
                    }
                    events.ready.notified().await;
                }
            },
        )))
    }

    async fn flush(&self) -> BusResult<()> {
        Ok(())
    }
}
