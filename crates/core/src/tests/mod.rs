//! Gateway behaviour tests without sockets: sessions fed text frames, outboxes read directly,
//! time driven by a `ManualClock`, tokens checked by a fake authenticator, the operation queue
//! drained by polling the worker in the test's thread.
//!
//! Each area (one submodule) has one `check_*` helper, the one place that drives the gateway
//! for it, and tests that are one call to it with the client's frames and what the client must
//! see. Frames are compared with [`assert_frames`], which matches JSON *patterns*: a pattern
//! object names only the keys that matter (others are ignored), `null` means "absent", and the
//! string `"<any>"` matches any value that is present.

mod auth;
mod cleanup;
mod cluster;
mod dedupe;
mod event_store;
mod events;
mod fakes;
mod fanout;
mod isolation;
mod limits;
mod operations;
mod overflow;
mod preferences;
mod pressure;
mod requests;
mod seams;
mod shared_preferences;
mod shutdown;
mod time;

use std::{
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use herald_config::{BaseConfig, RuntimeConfig};
use herald_memory::{FakeProbe, MemoryReading};
use herald_monitoring::Stats;
use herald_protocol::{CloseCode, ServerMessage, Topic};
use herald_utils::{ManualClock, Priority};
use serde_json::{Value, json, value::RawValue};

use crate::{
    Broadcast, Broker, ConnectionId, ConnectionSend, Gateway, GatewayError, GatewayParts,
    GatewaySettings, HistoryStore, InMemoryBroker, InMemoryHistoryStore, InMemoryPreferenceStore,
    Publication, PublishOutcome, Session, ThreadId, UserId, UserSend,
    tests::fakes::{FakeAuthenticator, sign, token, token_with},
};

/// The wall-clock time every harness clock starts at (2023-11-14T22:13:20Z), so token dates
/// do not depend on when the tests run.
const T0_MS: u64 = 1_700_000_000_000;

/// `exp` of the default test tokens (2100-01-01), so `expiresAt` is known in advance.
const FAR_EXP: u64 = 4_102_444_800;

/// Matches any present value in a frame pattern.
const ANY: &str = "<any>";

/// What the harness's memory probe reports.
const MEMORY: MemoryReading = MemoryReading {
    used_bytes: 40 << 20,
    resident_bytes: 64 << 20,
    allocated_bytes: Some(40 << 20),
    limit_bytes: Some(512 << 20),
};

/// A gateway on a manual clock with the default configuration, plus the clock to move it.
struct Harness {
    gateway: Gateway,
    clock: ManualClock,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A harness whose settings `configure` adjusted first.
    fn with(configure: impl FnOnce(&mut GatewaySettings)) -> Self {
        Self::build(
            configure,
            ManualClock::at_unix_ms(T0_MS),
            Arc::new(InMemoryBroker::new()),
        )
    }

    /// A harness on `clock` and `broker`, whose settings `configure` adjusted first.
    fn build(
        configure: impl FnOnce(&mut GatewaySettings),
        clock: ManualClock,
        broker: Arc<dyn Broker>,
    ) -> Self {
        let base = BaseConfig::default();
        let history = InMemoryHistoryStore::new(base.history_size, 300_000, base.history_max_bytes);
        Self::build_with(configure, clock, broker, Arc::new(history))
    }

    /// Like [`build`](Self::build), with `history` as the history store.
    fn build_with(
        configure: impl FnOnce(&mut GatewaySettings),
        clock: ManualClock,
        broker: Arc<dyn Broker>,
        history: Arc<dyn HistoryStore>,
    ) -> Self {
        let preferences = Arc::new(InMemoryPreferenceStore::new(1_000));
        Self::build_full(configure, clock, broker, history, preferences, None)
    }

    /// Like [`build_with`](Self::build_with), with `preferences` as the preference store and
    /// `events` as the cluster's event store.
    fn build_full(
        configure: impl FnOnce(&mut GatewaySettings),
        clock: ManualClock,
        broker: Arc<dyn Broker>,
        history: Arc<dyn HistoryStore>,
        preferences: Arc<dyn crate::PreferenceStore>,
        events: Option<Arc<dyn crate::EventStore>>,
    ) -> Self {
        let base = BaseConfig::default();
        let mut settings = GatewaySettings::from_config(&base);
        configure(&mut settings);
        let tiers = base.tiers.iter().map(|(name, _)| name.to_owned()).collect();
        let gateway = Gateway::new(GatewayParts {
            settings,
            runtime: Arc::new(RuntimeConfig::new(&base)),
            authenticator: Arc::new(FakeAuthenticator::new(tiers)),
            preferences,
            history,
            events,
            clock: Arc::new(clock.clone()),
            broker,
            memory: Arc::new(FakeProbe::new(MEMORY)),
        });
        Self { gateway, clock }
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    /// A connection that has not authenticated yet.
    fn anonymous(&self) -> Session {
        self.open(None, None)
    }

    fn open(&self, token: Option<&str>, thread: Option<&str>) -> Session {
        let admission = self
            .gateway
            .admit(token, thread)
            .expect("connection admitted");
        self.gateway.open(admission)
    }

    /// A connection of `user` authenticated at the handshake, its `connected` frame consumed.
    fn connect(&self, user: &str) -> Session {
        self.connect_on(user, None)
    }

    /// Like [`connect`](Self::connect), bound to `thread`.
    fn connect_on(&self, user: &str, thread: Option<&str>) -> Session {
        let session = self.open(Some(&token(user)), thread);
        assert_frames(
            &frames(&session),
            &json!([{"type": "connected", "data": {"userId": user}}]),
        );
        session
    }

    /// Publishes through the operation queue, performed at once.
    fn publish(&self, topic_name: &str, data: &str, priority: Priority) -> PublishOutcome {
        self.publish_with_id(topic_name, data, priority, None)
            .expect("gateway accepts publications")
    }

    /// Publishes with a publish id through the operation queue, performed at once.
    fn publish_with_id(
        &self,
        topic_name: &str,
        data: &str,
        priority: Priority,
        id: Option<&str>,
    ) -> Result<PublishOutcome, GatewayError> {
        complete(
            &self.gateway,
            self.gateway.publish(Publication {
                topic: topic(topic_name),
                data: raw(data),
                priority,
                id: id.map(str::to_owned),
            }),
        )
    }

    /// A user push through the operation queue; how many connections queued it.
    fn send_to_user(
        &self,
        user: &str,
        thread: Option<&str>,
        data: &str,
        priority: Priority,
    ) -> usize {
        let send = UserSend {
            user: UserId::new(user),
            thread: thread.map(ThreadId::new),
            data: raw(data),
            priority,
        };
        complete(&self.gateway, self.gateway.send_to_user(send))
            .expect("user sends are accepted")
            .connections
    }

    /// A broadcast through the operation queue; how many connections queued it.
    fn broadcast(&self, data: &str, priority: Priority, exclude: &[ConnectionId]) -> usize {
        let broadcast = Broadcast {
            data: raw(data),
            priority,
            exclude: exclude.to_vec(),
        };
        complete(&self.gateway, self.gateway.broadcast(broadcast))
            .expect("broadcasts are accepted")
            .connections
    }

    /// A connection push through the operation queue; how many connections queued it.
    fn send_to_connection(
        &self,
        connection: ConnectionId,
        data: &str,
        priority: Priority,
    ) -> Result<usize, GatewayError> {
        let send = ConnectionSend {
            connection,
            data: raw(data),
            priority,
        };
        complete(&self.gateway, self.gateway.send_to_connection(send))
            .map(|delivered| delivered.connections)
    }

    fn stats(&self) -> Stats {
        self.gateway.stats()
    }
}

/// Builds the token a placeholder stands for.
type MakeToken = fn() -> String;

/// Replaces the token placeholders of a scripted client frame.
///
/// `{alice}`, `{bob}`: valid tokens; `{alice-renewed}`: alice, expiring a minute after
/// [`FAR_EXP`]; `{expired}`: alice's, expired a minute before [`T0_MS`]; `{forged}`: alice's,
/// signed with another secret; `{gold}`: alice's, with an unknown tier; `{no-publish}`,
/// `{no-topics}`, `{everything}`: alice's without a `publish` claim, without a `topics`
/// claim, and with `*` for both.
fn expand(frame: &str) -> String {
    let placeholders: [(&str, MakeToken); 9] = [
        ("{alice}", || token("alice")),
        ("{bob}", || token("bob")),
        ("{alice-renewed}", || {
            token_with("alice", &json!({"exp": FAR_EXP + 60}))
        }),
        ("{expired}", || {
            token_with("alice", &json!({"exp": T0_MS / 1000 - 60}))
        }),
        ("{forged}", || {
            sign(&json!({"sub": "alice", "exp": FAR_EXP}), "another-secret")
        }),
        ("{gold}", || token_with("alice", &json!({"tier": "gold"}))),
        ("{no-publish}", || {
            token_with("alice", &json!({"publish": null}))
        }),
        ("{no-topics}", || {
            token_with("alice", &json!({"topics": null}))
        }),
        ("{everything}", || {
            token_with("alice", &json!({"topics": ["*"], "publish": ["*"]}))
        }),
    ];
    let mut frame = frame.to_owned();
    for (placeholder, make) in placeholders {
        if frame.contains(placeholder) {
            frame = frame.replace(placeholder, &make());
        }
    }
    frame
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid test topic")
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid test JSON")
}

/// Every frame queued to the session, in the order the transport would write them, as text.
fn raw_frames(session: &Session) -> Vec<String> {
    session
        .connection()
        .outbox()
        .take_all()
        .iter()
        .map(|frame| String::from_utf8(frame.as_bytes().to_vec()).expect("frames are UTF-8"))
        .collect()
}

/// Every frame queued to the session, checked to decode as a `ServerMessage`.
fn frames(session: &Session) -> Vec<Value> {
    raw_frames(session)
        .iter()
        .map(|text| {
            if let Err(error) = ServerMessage::decode(text) {
                panic!("not a server message ({error}): {text}");
            }
            serde_json::from_str(text).expect("frames are JSON")
        })
        .collect()
}

/// Performs the operations queued so far as the service's fan-out worker does, by polling
/// [`Gateway::run_operations`] until it waits for more work.
fn run_operations(gateway: &Gateway) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut worker = pin!(gateway.run_operations());
    // Each poll performs one batch of operations (then yields) or finds the queue empty and
    // parks; a test queues far fewer operations than a few batches.
    for _ in 0..8 {
        if worker.as_mut().poll(&mut cx).is_ready() {
            break;
        }
    }
}

/// Drives one call of the gateway's API to its end: the call queues its operation (or is
/// refused at once), the worker performs it, and the call returns what the worker answered.
#[track_caller]
fn complete<F: Future>(gateway: &Gateway, call: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = pin!(call);
    if let Poll::Ready(output) = call.as_mut().poll(&mut cx) {
        return output;
    }
    run_operations(gateway);
    match call.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the worker did not perform the operation"),
    }
}

/// The close code the connection was asked to close with, if any.
fn close_code(session: &Session) -> Option<u16> {
    session
        .connection()
        .outbox()
        .close_requested()
        .map(CloseCode::code)
}

/// Whether `actual` matches `pattern` (see the module docs).
fn matches(actual: &Value, pattern: &Value) -> bool {
    match (pattern, actual) {
        (Value::String(any), _) if any == ANY => true,
        (Value::Object(pattern), Value::Object(actual)) => pattern.iter().all(|(key, want)| {
            actual
                .get(key)
                .map_or(want.is_null(), |got| matches(got, want))
        }),
        (Value::Array(pattern), Value::Array(actual)) => {
            pattern.len() == actual.len() && pattern.iter().zip(actual).all(|(p, a)| matches(a, p))
        }
        _ => pattern == actual,
    }
}

#[track_caller]
fn assert_frames(actual: &[Value], expected: &Value) {
    let actual = Value::Array(actual.to_vec());
    assert!(
        matches(&actual, expected),
        "frames differ\n     got: {actual}\nexpected: {expected}"
    );
}

/// Sends `subscribe` and returns the ack's `data`, asserting the ack is the only frame.
#[track_caller]
fn subscribe(session: &mut Session, topic_name: &str) -> Value {
    session.on_text(&format!(
        r#"{{"type":"subscribe","messageId":"sub-{topic_name}","data":{{"topic":"{topic_name}"}}}}"#
    ));
    let mut replies = frames(session);
    assert_frames(
        &replies,
        &json!([{"type": "ack", "messageId": format!("sub-{topic_name}")}]),
    );
    replies.remove(0)["data"].take()
}

/// The `(offset, epoch)` of every `message` frame queued to the session, asserting they are all
/// messages of `topic_name`.
#[track_caller]
fn offsets(session: &Session, topic_name: &str) -> Vec<(u64, String)> {
    frames(session)
        .iter()
        .map(|frame| {
            assert!(
                matches(frame, &json!({"type": "message", "topic": topic_name})),
                "expected a message of {topic_name}, got {frame}"
            );
            let epoch = frame["epoch"]
                .as_str()
                .expect("epoch is a string")
                .to_owned();
            (frame["offset"].as_u64().expect("offset is a number"), epoch)
        })
        .collect()
}

fn forbidden(message_id: &str) -> Value {
    json!({"type": "error", "messageId": message_id, "error": {"code": "forbidden"}})
}

#[track_caller]
fn assert_stats_empty(harness: &Harness) {
    let stats = harness.stats();
    assert_eq!(
        (stats.connections, stats.users, stats.subscriptions),
        (0, 0, 0),
        "after every session was dropped: {stats:?}"
    );
    assert_eq!(harness.gateway.connections(None), Vec::new());
}

/// Feeds `script` (frames with placeholders, see `expand`) to `session`, running the
/// operation queue after each, then compares every frame the session was sent with
/// `expected`, and its close request with `close`.
#[track_caller]
fn play(
    harness: &Harness,
    session: &mut Session,
    script: &[&str],
    expected: &Value,
    close: Option<u16>,
) {
    for frame in script {
        session.on_text(&expand(frame));
        run_operations(&harness.gateway);
    }
    let got = frames(session);
    assert!(
        matches(&Value::Array(got.clone()), expected),
        "script {script:?}\n     got: {}\nexpected: {expected}",
        Value::Array(got)
    );
    assert_eq!(close_code(session), close, "close code after {script:?}");
}
