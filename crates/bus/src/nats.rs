//! The NATS bus. Core NATS for submissions (queue group), direct dispatch, heartbeats and
//! cancels; a JetStream work-queue stream for worker events, so results survive a host restart.
//!
//! Connections authenticate as the server asks ([`NatsAuth`]): a credentials file, user and
//! password or a token in the URL (`nats://user:pass@host`, `nats://token@host`), an nkey seed;
//! and speak TLS for a `tls://` URL or a CA given to verify the server with (a client
//! certificate too, for a server that verifies clients). Which subjects each user may use is
//! the server's business: the README lays out the permissions of hosts and workers.

use std::path::PathBuf;
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

/// How a connection proves who it is, and how it is encrypted (see the module docs). Credentials
/// in the URL come on top; at most one way to authenticate may be given.
#[derive(Clone, Default)]
pub struct NatsAuth {
    /// A credentials file: a user JWT and its nkey seed, as `nsc` writes them.
    pub creds_file: Option<PathBuf>,
    /// An nkey seed (`SU…`), or the path of a file holding one.
    pub nkey: Option<String>,
    /// CA certificates (PEM) to verify the server with; TLS is then required.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its private key (PEM), for a server that verifies clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The prefix of this connection's reply subjects, instead of `_INBOX`: a worker's own
    /// ([`Subjects::worker_inbox`]), so that a permission can grant it that and no other
    /// connection's replies.
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsAuth {
    /// Says which credentials are set, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey", &self.nkey.as_ref().map(|_| "…"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

/// The credentials a NATS URL carries.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    None,
    UserPassword(String, String),
    Token(String),
}

/// `url` without its credentials, and the credentials. Several URLs may be given, separated by
/// commas (the servers of a cluster); their credentials must agree.
fn split_credentials(url: &str) -> BusResult<(Vec<String>, UrlCredentials)> {
    let mut found = UrlCredentials::None;
    let mut addrs = Vec::new();
    for one in url
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(with_scheme)
    {
        let mut parsed = url::Url::parse(&one)
            .map_err(|e| BusError::Unavailable(format!("{}: {e}", redacted(&one))))?;
        let creds = match (parsed.username(), parsed.password()) {
            ("", None) => UrlCredentials::None,
            (user, Some(pass)) => {
                UrlCredentials::UserPassword(percent_decoded(user), percent_decoded(pass))
            }
            (token, None) => UrlCredentials::Token(percent_decoded(token)),
        };
        // Userinfo cannot be cleared from a URL that has none (or no host): nothing to do then.
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        match (&found, creds) {
            (_, UrlCredentials::None) => {}
            (UrlCredentials::None, c) => found = c,
            (f, c) if *f == c => {}
            _ => {
                return Err(BusError::Unavailable(
                    "the NATS URLs carry different credentials".into(),
                ));
            }
        }
        addrs.push(parsed.to_string());
    }
    if addrs.is_empty() {
        return Err(BusError::Unavailable("no NATS URL".into()));
    }
    Ok((addrs, found))
}

/// One URL of a list, trimmed, with `nats://` before it when it names no scheme (`host:4222`, as
/// async-nats takes it).
fn with_scheme(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_string()
    } else {
        format!("nats://{url}")
    }
}

/// A URL's percent-encoded userinfo, decoded (a password may hold `@` or `:` encoded).
fn percent_decoded(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: Vec<u8> = bytes.clone().take(2).collect();
            let decoded = std::str::from_utf8(&hex)
                .ok()
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(d) = decoded {
                out.push(d);
                bytes.nth(1);
                continue;
            }
        }
        out.push(b);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A NATS URL (or several) as it may be logged: its credentials replaced by `***`.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(with_scheme)
        .map(|one| match url::Url::parse(&one) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) if one.contains('@') => "<a NATS URL with credentials>".to_string(),
            Err(_) => one,
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsAuth {
    /// The client options for `url`, and the server addresses to dial (credentials taken out).
    async fn options(&self, url: &str) -> BusResult<(async_nats::ConnectOptions, Vec<String>)> {
        let (addrs, in_url) = split_credentials(url)?;
        let given = [
            in_url != UrlCredentials::None,
            self.creds_file.is_some(),
            self.nkey.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(BusError::Unavailable(
                "give one way to authenticate to NATS: credentials in the URL, a creds file or \
                 an nkey"
                    .into(),
            ));
        }
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .name("coretex");
        o = match in_url {
            UrlCredentials::None => o,
            UrlCredentials::UserPassword(user, pass) => o.user_and_password(user, pass),
            UrlCredentials::Token(token) => o.token(token),
        };
        if let Some(path) = &self.creds_file {
            o = o.credentials_file(path).await.map_err(|e| {
                BusError::Unavailable(format!("NATS credentials file {}: {e}", path.display()))
            })?;
        }
        if let Some(nkey) = &self.nkey {
            o = o.nkey(nkey_seed(nkey)?);
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(prefix) = &self.inbox_prefix {
            o = o.custom_inbox_prefix(prefix);
        }
        Ok((o, addrs))
    }
}

/// An nkey seed given as itself or as the path of a file that holds it (its first line that
/// looks like a seed).
fn nkey_seed(given: &str) -> BusResult<String> {
    let path = std::path::Path::new(given);
    if !path.is_file() {
        return Ok(given.trim().to_string());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| BusError::Unavailable(format!("nkey file {}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with('S') && l.len() > 50)
        .map(str::to_string)
        .ok_or_else(|| {
            BusError::Unavailable(format!("nkey file {}: no seed in it", path.display()))
        })
}

impl NatsBus {
    /// Connects without credentials; see [`NatsBus::connect_with`].
    pub async fn connect(url: &str, subjects: Subjects) -> BusResult<Self> {
        Self::connect_with(url, &NatsAuth::default(), subjects).await
    }

    /// Connects as `auth` says (and as `url`'s credentials, if any), failing fast when NATS is
    /// down or refuses; afterwards the client reconnects by itself and buffers publishes
    /// meanwhile. No error names a credential.
    pub async fn connect_with(url: &str, auth: &NatsAuth, subjects: Subjects) -> BusResult<Self> {
        let (options, addrs) = auth.options(url).await?;
        let client = options.connect(addrs).await.map_err(unavailable)?;
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

    /// As the server said when the client connected (`INFO`), kept by the client in an atomic
    /// it updates on every `INFO`: `server_info()` would clone the whole `ServerInfo` (a dozen
    /// strings), and this is asked once per job accepted and once per message published.
    fn max_payload(&self) -> usize {
        self.client.max_payload()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url() {
        let (addrs, creds) = split_credentials("nats://host:p%40ss@127.0.0.1:4222").unwrap();
        assert_eq!(addrs, ["nats://127.0.0.1:4222"]);
        assert_eq!(
            creds,
            UrlCredentials::UserPassword("host".into(), "p@ss".into())
        );
        let (addrs, creds) = split_credentials("tls://s3cret@nats.example:4443").unwrap();
        assert_eq!(addrs, ["tls://nats.example:4443"]);
        assert_eq!(creds, UrlCredentials::Token("s3cret".into()));
        let (addrs, creds) = split_credentials("127.0.0.1:4222, nats://b:4222").unwrap();
        assert_eq!(addrs, ["nats://127.0.0.1:4222", "nats://b:4222"]);
        assert_eq!(creds, UrlCredentials::None);
        assert!(split_credentials("nats://a:1@x,nats://b:2@y").is_err());
        assert!(split_credentials("").is_err());
    }

    #[test]
    fn a_redacted_url_names_no_credential() {
        for url in [
            "nats://host:s3cret@127.0.0.1:4222",
            "nats://s3cret@127.0.0.1:4222",
            "s3cret@127.0.0.1:4222,nats://u:s3cret@b",
        ] {
            let r = redacted(url);
            assert!(!r.contains("s3cret"), "{r}");
            assert!(r.contains("127.0.0.1:4222"), "{r}");
        }
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[tokio::test]
    async fn one_way_to_authenticate_at_a_time() {
        let auth = NatsAuth {
            nkey: Some("SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4".into()),
            ..Default::default()
        };
        let e = auth.options("nats://u:p@127.0.0.1:4222").await.err();
        assert!(e.is_some_and(|e| e.to_string().contains("one way")));
        let creds = NatsAuth {
            creds_file: Some("/nonexistent/user.creds".into()),
            ..Default::default()
        };
        let e = creds.options("nats://127.0.0.1:4222").await.err();
        assert!(e.is_some_and(|e| e.to_string().contains("/nonexistent/user.creds")));
    }

    #[test]
    fn an_nkey_seed_is_taken_as_given_or_from_its_file() {
        let seed = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4";
        assert_eq!(nkey_seed(seed).unwrap(), seed);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seed.nk");
        std::fs::write(&file, format!("# the worker's seed\n{seed}\n")).unwrap();
        assert_eq!(nkey_seed(file.to_str().unwrap()).unwrap(), seed);
        std::fs::write(&file, "nothing").unwrap();
        assert!(nkey_seed(file.to_str().unwrap()).is_err());
    }
}
