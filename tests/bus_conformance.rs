//! The bus conformance suite: the delivery rules the rest of Coretex relies on from a [`Bus`],
//! checked against both backends — the in-process [`MemoryBus`] and [`NatsBus`] on a real NATS
//! server with JetStream (`NATS_URL`, else a private `nats-server -js` the tests start) — so the embedded default
//! can never drift from the real thing.
//!
//! Each check is written once, as an `async fn` over a [`Deployment`]; `conformance!` turns it
//! into one test per backend (`memory::<check>`, `nats::<check>`). A deployment hands out
//! connections that behave as separate replicas: for NATS each is its own client, for memory each
//! is the one shared bus. Every test has a subject prefix of its own, so tests run in parallel on
//! one server, and a NATS test deletes its JetStream stream when done, passed or failed. When
//! NATS is not reachable the NATS tests fail and say so; they never skip.
//!
//! Every receive is bounded by a timeout, so a broken backend fails instead of hanging. That a
//! message is *not* received is shown without guessing at a sleep where order allows it: a marker
//! published after the unwanted message, on the same connection, must be the next one to arrive.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_trait::async_trait;
use bytes::Bytes;
use coretex::bus::memory::MemoryBus;
use coretex::bus::nats::NatsBus;
use coretex::bus::{Message, MessageStream, SCHEDULER_GROUP, SharedBus, Subjects, publish_json};
use coretex::protocol::{
    CancelMsg, ConfigChangedMsg, HeartbeatMsg, JobMsg, ResultMsg, StartedMsg, SubmitMsg,
};
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::timeout;

#[path = "common/servers.rs"]
mod servers;

/// The longest any expected message may take to arrive.
const WAIT: Duration = Duration::from_secs(5);

/// The NATS tests' ack wait: the 30 s default would make each redelivery check take half a minute.
const NATS_ACK_WAIT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Backends

/// One isolated bus deployment (a subject prefix of its own) under test.
#[async_trait]
trait Deployment: Send + Sync {
    /// A new connection to the deployment: another replica, as far as the bus can tell.
    async fn connect(&self) -> SharedBus;
    /// How long a taken, unacked worker event waits before it is delivered again.
    fn redelivery_after(&self) -> Duration;
    /// Removes what the test left on the server.
    async fn tear_down(&self);
}

type Dep = Arc<dyn Deployment>;

fn unique_subjects() -> Subjects {
    Subjects::new(&format!("t{}", uuid::Uuid::new_v4().simple()))
}

/// The in-process bus: one instance is the whole deployment, so every "connection" shares it.
struct Memory(Arc<MemoryBus>);

impl Memory {
    async fn open() -> Self {
        Memory(Arc::new(MemoryBus::new(unique_subjects())))
    }
}

#[async_trait]
impl Deployment for Memory {
    async fn connect(&self) -> SharedBus {
        self.0.clone()
    }

    fn redelivery_after(&self) -> Duration {
        Duration::ZERO
    }

    async fn tear_down(&self) {}
}

/// NATS with JetStream: every connection is a client of its own on the real server.
struct Nats {
    url: String,
    subjects: Subjects,
    admin: NatsBus,
}

impl Nats {
    async fn open() -> Self {
        let url = servers::nats_url();
        let subjects = unique_subjects();
        let admin = Self::connect_to(&url, &subjects).await;
        Nats {
            url,
            subjects,
            admin,
        }
    }

    async fn connect_to(url: &str, subjects: &Subjects) -> NatsBus {
        match NatsBus::connect(url, subjects.clone()).await {
            // One event per pull, so that "a held event does not hold back the next one" can be
            // observed between two consumers; the host pulls in batches.
            Ok(bus) => bus.with_ack_wait(NATS_ACK_WAIT).with_events_batch(1),
            Err(e) => panic!(
                "NATS is not reachable at {url} ({e}): the NATS bus conformance tests need a \
                 NATS server with JetStream enabled (`nats-server -js`): the tests start a \
                 private one unless NATS_URL names another"
            ),
        }
    }
}

#[async_trait]
impl Deployment for Nats {
    async fn connect(&self) -> SharedBus {
        Arc::new(Self::connect_to(&self.url, &self.subjects).await)
    }

    fn redelivery_after(&self) -> Duration {
        NATS_ACK_WAIT
    }

    async fn tear_down(&self) {
        let js = jetstream::new(self.admin.client().clone());
        match js.get_stream(self.subjects.events_stream()).await {
            Ok(_) => self
                .admin
                .delete_events_stream()
                .await
                .expect("deleting the test's events stream"),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
                _ => panic!("looking up the test's events stream: {e}"),
            },
        }
    }
}

/// Runs one check on a deployment, then tears the deployment down whether the check passed or not.
async fn run<F, Fut>(deployment: impl Deployment + 'static, check: F)
where
    F: FnOnce(Dep) -> Fut,
    Fut: Future<Output = ()>,
{
    let deployment: Dep = Arc::new(deployment);
    let outcome = AssertUnwindSafe(check(deployment.clone()))
        .catch_unwind()
        .await;
    deployment.tear_down().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One test per check and backend: `memory::<check>` and `nats::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        conformance!(@backend memory, Memory; $($check),*);
        conformance!(@backend nats, Nats; $($check),*);
    };
    (@backend $module:ident, $backend:ident; $($check:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::run(super::$backend::open().await, super::$check).await;
                }
            )*
        }
    };
}

conformance!(
    a_connected_bus_reports_connected_and_flushes,
    a_message_up_to_max_payload_is_carried_and_a_larger_one_refused,
    every_subscriber_gets_every_message_in_publish_order,
    a_subscriber_gets_only_its_exact_subject,
    a_message_published_before_subscribing_is_not_received,
    a_dropped_subscription_leaves_the_others_receiving,
    each_queued_message_goes_to_exactly_one_group_member,
    a_plain_subscriber_beside_a_queue_group_gets_every_message,
    every_queue_group_gets_every_message,
    worker_events_published_before_any_consumer_are_delivered_later,
    only_started_and_result_of_the_own_prefix_are_worker_events,
    worker_events_also_reach_plain_subscribers,
    consumers_share_worker_events_each_to_one,
    a_worker_event_is_delivered_again_until_acked,
    an_unacked_worker_event_goes_to_another_consumer_when_its_taker_goes_away,
    an_acked_worker_event_is_not_delivered_again,
    protocol_messages_round_trip_through_the_bus,
);

// ---------------------------------------------------------------------------------------------
// Helpers

async fn publish(bus: &SharedBus, subject: &str, body: &str) {
    bus.publish(subject, Bytes::from(body.to_string()))
        .await
        .unwrap_or_else(|e| panic!("publishing {body:?} to {subject}: {e}"));
}

async fn flush(bus: &SharedBus) {
    bus.flush().await.expect("flush");
}

/// The next message of `stream`, failing the test if none comes within [`WAIT`].
async fn next(stream: &mut MessageStream, what: &str) -> Message {
    next_within(stream, WAIT, what).await
}

async fn next_within(stream: &mut MessageStream, wait: Duration, what: &str) -> Message {
    match timeout(wait, stream.next()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing received within {wait:?}"),
    }
}

fn body(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).expect("a UTF-8 test payload")
}

async fn subscribe(bus: &SharedBus, subject: &str) -> MessageStream {
    bus.subscribe(subject).await.expect("subscribe")
}

async fn queue_subscribe(bus: &SharedBus, subject: &str, group: &str) -> MessageStream {
    bus.queue_subscribe(subject, group)
        .await
        .expect("queue_subscribe")
}

async fn consume_worker_events(bus: &SharedBus) -> MessageStream {
    bus.consume_worker_events()
        .await
        .expect("consume_worker_events")
}

/// Receives `n` messages from the streams together, each with the index of its stream.
async fn receive_from_all(
    streams: Vec<MessageStream>,
    n: usize,
    what: &str,
) -> Vec<(usize, Message)> {
    let mut merged = futures::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |m| (i, m)).boxed()),
    );
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match timeout(WAIT, merged.next()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("{what}: the streams ended after {} of {n}", got.len()),
            Err(_) => panic!("{what}: only {} of {n} received within {WAIT:?}", got.len()),
        }
    }
    got
}

/// Asserts the messages are `msg-0` … `msg-{n-1}`, each exactly once.
fn assert_each_once(messages: &[(usize, Message)], n: usize) {
    let bodies: Vec<String> = messages.iter().map(|(_, m)| body(m)).collect();
    let distinct: BTreeSet<&String> = bodies.iter().collect();
    assert_eq!(
        distinct.len(),
        bodies.len(),
        "a message was delivered twice: {bodies:?}"
    );
    let expected: BTreeSet<String> = (0..n).map(|i| format!("msg-{i}")).collect();
    assert_eq!(
        distinct,
        expected.iter().collect(),
        "not every message arrived"
    );
}

fn count_of(messages: &[(usize, Message)], stream: usize) -> usize {
    messages.iter().filter(|(i, _)| *i == stream).count()
}

// ---------------------------------------------------------------------------------------------
// Connection

async fn a_connected_bus_reports_connected_and_flushes(d: Dep) {
    let bus = d.connect().await;
    assert!(bus.is_connected(), "{} bus is not connected", bus.backend());
    bus.flush().await.expect("flush with nothing published");
    publish(&bus, &bus.subjects().heartbeat(), "beat").await;
    bus.flush().await.expect("flush after a publish");
    assert!(bus.subjects().prefix().starts_with('t'));
}

/// Both buses carry messages up to the same `max_payload` (NATS's default, 1 MiB; the embedded
/// bus's is configured to match), and refuse a larger one at publish, saying so.
async fn a_message_up_to_max_payload_is_carried_and_a_larger_one_refused(d: Dep) {
    let bus = d.connect().await;
    let max = bus.max_payload();
    assert_eq!(
        max,
        coretex::limits::EMBEDDED_BUS_MAX_PAYLOAD,
        "{}",
        bus.backend()
    );
    let subject = bus.subjects().heartbeat();
    let mut sub = subscribe(&bus, &subject).await;
    flush(&bus).await;
    let refused = bus
        .publish(&subject, Bytes::from(vec![b'x'; max + 1]))
        .await;
    assert!(
        matches!(refused, Err(coretex::bus::BusError::TooLarge { size, max: m }) if size == max + 1 && m == max),
        "{}: {refused:?}",
        bus.backend()
    );
    bus.publish(&subject, Bytes::from(vec![b'y'; max]))
        .await
        .expect("a message at max_payload");
    let m = next(&mut sub, "the message at max_payload").await;
    assert_eq!(m.payload.len(), max);
}

// ---------------------------------------------------------------------------------------------
// subscribe

async fn every_subscriber_gets_every_message_in_publish_order(d: Dep) {
    let (publisher, other) = (d.connect().await, d.connect().await);
    let subject = publisher.subjects().heartbeat();
    let mut here = subscribe(&publisher, &subject).await;
    let mut there = subscribe(&other, &subject).await;
    flush(&other).await;

    for i in 0..50 {
        publish(&publisher, &subject, &format!("msg-{i}")).await;
    }
    for (name, stream) in [
        ("same connection", &mut here),
        ("other connection", &mut there),
    ] {
        for i in 0..50 {
            let m = next(stream, name).await;
            assert_eq!(m.subject, subject);
            assert_eq!(
                body(&m),
                format!("msg-{i}"),
                "{name} subscriber, message {i}"
            );
        }
    }
}

async fn a_subscriber_gets_only_its_exact_subject(d: Dep) {
    let bus = d.connect().await;
    let subjects = bus.subjects().clone();
    let subject = subjects.cancel();
    let mut stream = subscribe(&bus, &subject).await;

    let elsewhere = Subjects::new(&format!("{}other", subjects.prefix()));
    for near_miss in [
        format!("{subject}.more"),
        subject[..subject.rfind('.').unwrap()].to_string(),
        subjects.submit(),
        elsewhere.cancel(),
        Subjects::new("").cancel(),
    ] {
        publish(&bus, &near_miss, &format!("to {near_miss}")).await;
    }
    publish(&bus, &subject, "marker").await;

    let m = next(&mut stream, "exact subject").await;
    assert_eq!(
        body(&m),
        "marker",
        "a message for another subject was received"
    );
    assert_eq!(m.subject, subject);
}

async fn a_message_published_before_subscribing_is_not_received(d: Dep) {
    let bus = d.connect().await;
    let subject = bus.subjects().config_changed();
    publish(&bus, &subject, "too early").await;
    let mut stream = subscribe(&bus, &subject).await;
    publish(&bus, &subject, "marker").await;

    let m = next(&mut stream, "late subscriber").await;
    assert_eq!(body(&m), "marker", "plain subjects are not durable");
}

async fn a_dropped_subscription_leaves_the_others_receiving(d: Dep) {
    let bus = d.connect().await;
    let subject = bus.subjects().cancel();
    let gone = subscribe(&bus, &subject).await;
    let mut kept = subscribe(&bus, &subject).await;
    let mut queued = queue_subscribe(&bus, &subject, "g").await;
    let gone_member = queue_subscribe(&bus, &subject, "g").await;
    drop((gone, gone_member));

    for i in 0..10 {
        publish(&bus, &subject, &format!("msg-{i}")).await;
    }
    for i in 0..10 {
        assert_eq!(
            body(&next(&mut kept, "kept subscriber").await),
            format!("msg-{i}")
        );
        assert_eq!(
            body(&next(&mut queued, "last group member").await),
            format!("msg-{i}"),
            "a dropped group member must not take messages"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// queue_subscribe

async fn each_queued_message_goes_to_exactly_one_group_member(d: Dep) {
    let (publisher, other) = (d.connect().await, d.connect().await);
    let subject = publisher.subjects().submit();
    let first = queue_subscribe(&publisher, &subject, SCHEDULER_GROUP).await;
    let second = queue_subscribe(&other, &subject, SCHEDULER_GROUP).await;
    flush(&other).await;

    for i in 0..100 {
        publish(&publisher, &subject, &format!("msg-{i}")).await;
    }
    let got = receive_from_all(vec![first, second], 100, "queue group").await;
    assert_each_once(&got, 100);
    let (a, b) = (count_of(&got, 0), count_of(&got, 1));
    assert!(a > 0 && b > 0, "one member got everything: {a} and {b}");
}

async fn a_plain_subscriber_beside_a_queue_group_gets_every_message(d: Dep) {
    let bus = d.connect().await;
    let subject = bus.subjects().submit();
    let members = vec![
        queue_subscribe(&bus, &subject, SCHEDULER_GROUP).await,
        queue_subscribe(&bus, &subject, SCHEDULER_GROUP).await,
    ];
    let mut plain = subscribe(&bus, &subject).await;

    for i in 0..100 {
        publish(&bus, &subject, &format!("msg-{i}")).await;
    }
    for i in 0..100 {
        assert_eq!(
            body(&next(&mut plain, "plain subscriber").await),
            format!("msg-{i}")
        );
    }
    let got = receive_from_all(members, 100, "queue group").await;
    assert_each_once(&got, 100);
}

async fn every_queue_group_gets_every_message(d: Dep) {
    let bus = d.connect().await;
    let subject = bus.subjects().submit();
    let mut first = queue_subscribe(&bus, &subject, "first").await;
    let mut second = queue_subscribe(&bus, &subject, "second").await;

    for i in 0..20 {
        publish(&bus, &subject, &format!("msg-{i}")).await;
    }
    for (name, stream) in [("first group", &mut first), ("second group", &mut second)] {
        for i in 0..20 {
            assert_eq!(
                body(&next(stream, name).await),
                format!("msg-{i}"),
                "{name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Worker events

async fn worker_events_published_before_any_consumer_are_delivered_later(d: Dep) {
    let bus = d.connect().await;
    let (started, result) = (bus.subjects().started(), bus.subjects().result());
    // NATS keeps worker events in a JetStream stream, which must exist before they are published
    // (`serve` creates it at start, so a worker's events wait while no host runs). Creating a
    // consumer once creates it; it is dropped again so none exists when the events come.
    drop(consume_worker_events(&bus).await);

    publish(&bus, &started, "msg-0").await;
    publish(&bus, &result, "msg-1").await;
    flush(&bus).await;

    let consumer = d.connect().await;
    let mut events = consume_worker_events(&consumer).await;
    for (i, subject) in [started, result].into_iter().enumerate() {
        let mut m = next(&mut events, "worker event kept while nobody consumed").await;
        assert_eq!(
            body(&m),
            format!("msg-{i}"),
            "worker events out of publish order"
        );
        assert_eq!(m.subject, subject);
        m.take_ack().ack().await.expect("ack");
    }
}

async fn only_started_and_result_of_the_own_prefix_are_worker_events(d: Dep) {
    let bus = d.connect().await;
    let subjects = bus.subjects().clone();
    let mut events = consume_worker_events(&bus).await;

    let elsewhere = Subjects::new(&format!("{}other", subjects.prefix()));
    for subject in [
        subjects.submit(),
        subjects.heartbeat(),
        subjects.cancel(),
        subjects.config_changed(),
        subjects.worker_jobs("w-1"),
        format!("{}.more", subjects.result()),
        elsewhere.started(),
        elsewhere.result(),
    ] {
        publish(&bus, &subject, &format!("to {subject}")).await;
    }
    publish(&bus, &subjects.result(), "marker").await;

    let mut m = next(&mut events, "worker events").await;
    assert_eq!(
        body(&m),
        "marker",
        "a message that is no worker event was consumed"
    );
    m.take_ack().ack().await.expect("ack");
}

async fn worker_events_also_reach_plain_subscribers(d: Dep) {
    let bus = d.connect().await;
    let (started, result) = (bus.subjects().started(), bus.subjects().result());
    let mut events = consume_worker_events(&bus).await;
    let mut watch_started = subscribe(&bus, &started).await;
    let mut watch_result = subscribe(&bus, &result).await;

    publish(&bus, &started, "started").await;
    publish(&bus, &result, "result").await;

    assert_eq!(
        body(&next(&mut watch_started, "started subscriber").await),
        "started"
    );
    assert_eq!(
        body(&next(&mut watch_result, "result subscriber").await),
        "result"
    );
    for expected in ["started", "result"] {
        let mut m = next(&mut events, "worker events").await;
        assert_eq!(
            body(&m),
            expected,
            "the durable consumer still gets each event"
        );
        m.take_ack().ack().await.expect("ack");
    }
}

async fn consumers_share_worker_events_each_to_one(d: Dep) {
    let (publisher, first, second) = (d.connect().await, d.connect().await, d.connect().await);
    // Two replicas starting together race to create the shared durable consumer.
    let (a, b) = tokio::join!(
        consume_worker_events(&first),
        consume_worker_events(&second)
    );
    let subject = publisher.subjects().result();

    // One consumer holds its event unacked; the other one is served the next event meanwhile.
    publish(&publisher, &subject, "held").await;
    let (mut a, mut b) = (a, b);
    let mut held = next(&mut a, "first consumer").await;
    assert_eq!(body(&held), "held");
    publish(&publisher, &subject, "next").await;
    let mut m = next(&mut b, "second consumer, while the first holds an event").await;
    assert_eq!(body(&m), "next", "the held event was delivered twice");
    m.take_ack().ack().await.expect("ack");
    held.take_ack().ack().await.expect("ack");

    for i in 0..100 {
        publish(&publisher, &subject, &format!("msg-{i}")).await;
    }
    let mut got = receive_from_all(vec![a, b], 100, "shared worker events").await;
    for (_, m) in &mut got {
        m.take_ack().ack().await.expect("ack");
    }
    assert_each_once(&got, 100);
}

async fn a_worker_event_is_delivered_again_until_acked(d: Dep) {
    let bus = d.connect().await;
    let subject = bus.subjects().started();
    let mut events = consume_worker_events(&bus).await;
    let again = WAIT + d.redelivery_after();
    publish(&bus, &subject, "event").await;

    let m = next(&mut events, "first delivery").await;
    assert_eq!(body(&m), "event");
    drop(m);

    let mut m = next_within(&mut events, again, "after the message was dropped unacked").await;
    assert_eq!(body(&m), "event");
    let ack = m.take_ack();
    drop(m);
    drop(ack);

    let mut m = next_within(&mut events, again, "after its ack was dropped").await;
    assert_eq!(body(&m), "event");
    m.take_ack().ack().await.expect("ack");

    tokio::time::sleep(2 * d.redelivery_after()).await;
    publish(&bus, &subject, "marker").await;
    let mut m = next(&mut events, "after the ack").await;
    assert_eq!(body(&m), "marker", "an acked event was delivered again");
    m.take_ack().ack().await.expect("ack");
}

async fn an_unacked_worker_event_goes_to_another_consumer_when_its_taker_goes_away(d: Dep) {
    let survivor = d.connect().await;
    let subject = survivor.subjects().result();
    {
        let dying = d.connect().await;
        let mut events = consume_worker_events(&dying).await;
        publish(&survivor, &subject, "event").await;
        let m = next(&mut events, "the replica that dies").await;
        assert_eq!(body(&m), "event");
        // The replica dies holding the event: message, consumer and connection all go.
    }

    let mut events = consume_worker_events(&survivor).await;
    let again = WAIT + d.redelivery_after();
    let mut m = next_within(&mut events, again, "the surviving replica").await;
    assert_eq!(body(&m), "event");
    m.take_ack().ack().await.expect("ack");
}

async fn an_acked_worker_event_is_not_delivered_again(d: Dep) {
    let publisher = d.connect().await;
    let subject = publisher.subjects().result();
    {
        let exiting = d.connect().await;
        let mut events = consume_worker_events(&exiting).await;
        publish(&publisher, &subject, "event").await;
        let mut m = next(&mut events, "the replica that exits").await;
        assert_eq!(body(&m), "event");
        m.take_ack().ack().await.expect("ack");
        // The replica exits right after storing the event's effect and acking it.
    }
    tokio::time::sleep(2 * d.redelivery_after()).await;

    let mut events = consume_worker_events(&publisher).await;
    publish(&publisher, &subject, "marker").await;
    let mut m = next(&mut events, "the next replica").await;
    assert_eq!(body(&m), "marker", "an acked event was delivered again");
    m.take_ack().ack().await.expect("ack");
}

// ---------------------------------------------------------------------------------------------
// Protocol messages

/// Publishes `msg` with [`publish_json`] and checks it arrives on `stream` as it was sent.
async fn assert_round_trip<T>(bus: &SharedBus, stream: &mut MessageStream, subject: &str, msg: T)
where
    T: Serialize + DeserializeOwned,
{
    publish_json(bus.as_ref(), subject, &msg)
        .await
        .unwrap_or_else(|e| panic!("publish_json to {subject}: {e}"));
    let mut m = next(stream, subject).await;
    assert_eq!(m.subject, subject);
    let back: T = serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("{subject}: the payload does not parse back: {e}"));
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&msg).unwrap(),
        "{subject}: the message changed on the way"
    );
    m.take_ack().ack().await.expect("ack");
}

fn parse<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid protocol fixture")
}

async fn protocol_messages_round_trip_through_the_bus(d: Dep) {
    let bus = d.connect().await;
    let s = bus.subjects().clone();
    let at = "2030-01-02T03:04:05.678Z";

    let submit: SubmitMsg = parse(json!({"v": 1, "kind": "submit", "job": {
        "id": "j-1", "topic": "resize", "payload": {"w": 64, "name": "ünïcode"},
        "priority": "critical", "tenant_id": "acme", "labels": {"placement.gpu": "yes"},
        "env": {"K": "V"}, "deadline_ms": 60000, "trace_id": "tr-1", "attempt": 2,
        "created_at": at}}));
    let mut stream = queue_subscribe(&bus, &s.submit(), SCHEDULER_GROUP).await;
    assert_round_trip(&bus, &mut stream, &s.submit(), submit).await;

    let job: JobMsg = parse(
        json!({"v": 1, "kind": "job", "job_id": "j-1", "trace_id": "tr-1",
        "topic": "resize", "attempt": 1, "payload": [1, 2.5, null, "x"], "env": {"A": "b"},
        "labels": {"team": "x"}, "priority": "batch", "deadline_at": at, "lease": "1.2.ab.cd"}),
    );
    let worker = s.worker_jobs("w-1");
    let mut stream = subscribe(&bus, &worker).await;
    assert_round_trip(&bus, &mut stream, &worker, job).await;

    let heartbeat: HeartbeatMsg = parse(json!({"v": 1, "kind": "heartbeat", "worker_id": "w-1",
        "pool": "gpu", "topics": ["resize"], "active_jobs": 3, "max_parallel": 8,
        "cpu_load": 42.5, "labels": {"zone": "a"}, "capabilities": ["cuda"]}));
    let mut stream = subscribe(&bus, &s.heartbeat()).await;
    assert_round_trip(&bus, &mut stream, &s.heartbeat(), heartbeat).await;

    let cancel: CancelMsg = parse(json!({"v": 1, "kind": "cancel", "job_id": "j-1",
        "reason": "user asked"}));
    let mut stream = subscribe(&bus, &s.cancel()).await;
    assert_round_trip(&bus, &mut stream, &s.cancel(), cancel).await;

    let changed: ConfigChangedMsg = parse(json!({"v": 1, "kind": "config_changed",
        "scope": "tenant:acme"}));
    let mut stream = subscribe(&bus, &s.config_changed()).await;
    assert_round_trip(&bus, &mut stream, &s.config_changed(), changed).await;

    let mut events = consume_worker_events(&bus).await;
    let started: StartedMsg = parse(json!({"v": 1, "kind": "started", "job_id": "j-1",
        "worker_id": "w-1", "at": at, "lease": "1.2.ab.cd"}));
    assert_round_trip(&bus, &mut events, &s.started(), started).await;
    let result: ResultMsg = parse(json!({"v": 1, "kind": "result", "job_id": "j-1",
        "worker_id": "w-1", "status": "failed", "result": {"partial": true},
        "error": {"code": "E_BOOM", "message": "boom"}, "execution_ms": 1234,
        "lease": "1.2.ab.cd"}));
    assert_round_trip(&bus, &mut events, &s.result(), result).await;
}
