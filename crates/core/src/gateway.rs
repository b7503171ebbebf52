//! The [`Gateway`]: admission, the per-connection [`Session`] that handles client frames, the
//! server-side operations of the HTTP API, and the heartbeat/stale sweep.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use herald_config::{BaseConfig, RuntimeConfig, UserLimitPolicy};
use herald_protocol::{
    ClientFrame, ClientRequest, CloseCode, ConnectedData, ErrorCode, ErrorDetail, EventName,
    ProtocolError, PushScope, RefreshResult, RequestKind, ServerMessage, StreamPosition,
    SubscribeResult, Topic, parse_client_frame,
};
use herald_utils::{CircularBuffer, Clock, LruCache, Priority};
use serde_json::{Map, Value, json, value::RawValue};

use crate::{
    auth::{AuthError, Authenticator, Principal},
    connection::{
        Connection, ConnectionManager, LimitExceeded, LimitPolicy, NO_DEADLINE, Slot, UserPlace,
    },
    events::{EventOutcome, PendingEvent, PendingEvents},
    history::{HistoryEntry, HistoryStore},
    ids::{ConnectionId, IsolationKey, ThreadId, UserId},
    operations::{Completion, Operation, OperationQueue, Outcome, Request},
    outbox::{Frame, Offer, Outbox},
    preferences::PreferenceStore,
    rate::{ABUSE_THRESHOLD, RateLimiter},
    subscription::{SubscribeError, SubscriptionManager, TopicInfo, TopicPosition},
};

/// Operations the fan-out worker takes per turn before yielding to other tasks.
const OPERATION_BATCH: usize = 64;
/// How often [`Gateway::sweep`] also purges history, idle topics, dedupe ids and rate buckets.
const MAINTENANCE_INTERVAL_MS: u64 = 1_000;
/// What a refused caller is told to wait before retrying, in milliseconds.
const RETRY_AFTER_MS: u64 = 1000;

/// The immutable settings the gateway runs with, taken from [`BaseConfig`].
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Time to authenticate after the upgrade (close 4001 after it).
    pub auth_timeout: Duration,
    /// Interval of server pings.
    pub heartbeat_interval: Duration,
    /// Close 4000 a connection silent for this long.
    pub stale_timeout: Duration,
    /// Largest inbound message, in bytes.
    pub max_payload_bytes: usize,
    /// Connections in all.
    pub max_connections: usize,
    /// Topics one connection may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// Outbound queue per connection, in frames.
    pub max_queue_size: usize,
    /// Outbound queue per connection, in bytes.
    pub max_queue_bytes: usize,
    /// What to do at a user's connection limit.
    pub user_limit_policy: LimitPolicy,
    /// Connection quota per tier.
    pub tier_connections: HashMap<String, usize>,
    /// Client writes (`publish`, `update_preferences`) per minute per tier.
    pub tier_messages_per_minute: HashMap<String, u32>,
    /// How long a topic without subscribers keeps its offsets after its last publication.
    pub topic_retention: Duration,
    /// Publications and sends accepted but not yet fanned out.
    pub operation_queue_size: usize,
    /// Unacknowledged critical events kept per user.
    pub max_pending_events: usize,
    /// Redelivery delay of an unacknowledged critical event.
    pub event_ack_timeout: Duration,
    /// How long an unacknowledged critical event is kept.
    pub event_ttl: Duration,
}

impl GatewaySettings {
    /// The settings of `config`.
    pub fn from_config(config: &BaseConfig) -> Self {
        Self {
            auth_timeout: config.auth_timeout,
            heartbeat_interval: config.heartbeat_interval,
            stale_timeout: config.stale_timeout,
            max_payload_bytes: config.max_payload_bytes,
            max_connections: config.max_connections,
            max_subscriptions_per_connection: config.max_subscriptions_per_connection,
            max_queue_size: config.max_queue_size,
            max_queue_bytes: config.max_queue_bytes,
            user_limit_policy: match config.user_limit_policy {
                UserLimitPolicy::EvictOldest => LimitPolicy::EvictOldest,
                UserLimitPolicy::Reject => LimitPolicy::Reject,
            },
            tier_connections: config
                .tiers
                .iter()
                .map(|(name, quota)| (name.to_owned(), quota.max_connections as usize))
                .collect(),
            tier_messages_per_minute: config
                .tiers
                .iter()
                .map(|(name, quota)| (name.to_owned(), quota.messages_per_minute))
                .collect(),
            topic_retention: config.history_ttl,
            operation_queue_size: config.operation_queue_size,
            max_pending_events: config.max_pending_events,
            event_ack_timeout: config.event_ack_timeout,
            event_ttl: config.event_ttl,
        }
    }
}

/// The seams the gateway is built from.
pub struct GatewayParts {
    /// Immutable settings.
    pub settings: GatewaySettings,
    /// Live-tunable settings.
    pub runtime: Arc<RuntimeConfig>,
    /// Token verification.
    pub authenticator: Arc<dyn Authenticator>,
    /// Where preferences live.
    pub preferences: Arc<dyn PreferenceStore>,
    /// Where topic history lives.
    pub history: Arc<dyn HistoryStore>,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
}

/// Why a connection was refused at the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server is full or shutting down (HTTP 503, `unavailable`).
    #[error("server unavailable: {0}")]
    Unavailable(&'static str),
    /// The token in the header or query was refused (HTTP 401, `unauthorized`).
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// The user is at their limit and the policy is `reject` (HTTP 429, `limit_exceeded`).
    #[error(transparent)]
    LimitExceeded(#[from] LimitExceeded),
    /// A malformed connection option, e.g. `?thread=` (HTTP 400, `bad_request`).
    #[error("{0}")]
    BadRequest(String),
}

impl Refusal {
    /// The contract's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::BadRequest(_) => ErrorCode::BadRequest,
        }
    }
}

/// A connection that passed the handshake checks and holds a slot; [`Gateway::open`] turns it
/// into a [`Session`] once the transport is ready.
#[derive(Debug)]
pub struct Admission {
    slot: Slot,
    principal: Option<Principal>,
    /// The place under the user's limit promised at the handshake (policy `reject`).
    place: Option<UserPlace>,
    thread: Option<ThreadId>,
}

/// Why an HTTP API operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No such connection.
    #[error("no connection {0}")]
    UnknownConnection(String),
    /// The gateway is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The user already has the maximum of unacknowledged critical events.
    #[error("user has {limit} unacknowledged events; retry after the client acknowledges some")]
    TooManyPending {
        /// The per-user limit.
        limit: usize,
    },
    /// The operation queue is full; retry after the given time.
    #[error("server busy: operation queue full, retry in {retry_after_ms} ms")]
    Overloaded {
        /// Suggested wait before retrying, in milliseconds.
        retry_after_ms: u64,
    },
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Live connections (authenticated or not).
    pub connections: usize,
    /// Users with at least one authenticated connection.
    pub users: usize,
    /// Connection-topic subscriptions.
    pub subscriptions: usize,
    /// Known topics.
    pub topics: usize,
    /// Publications accepted (not counting duplicates).
    pub published: u64,
    /// Frames queued to connections for publications and pushes.
    pub delivered: u64,
    /// Frames shed from full queues.
    pub shed: u64,
    /// Critical events awaiting an ack, all users.
    pub pending_events: usize,
}

/// One connection as `GET /api/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// Its id.
    pub id: ConnectionId,
    /// Its user, once authenticated.
    pub user: Option<UserId>,
    /// Its thread, if bound to one.
    pub thread: Option<ThreadId>,
    /// Its subscriptions, sorted.
    pub topics: Vec<Topic>,
    /// Milliseconds since its last inbound frame.
    pub idle_ms: u64,
    /// When it was accepted, in ms since the Unix epoch.
    pub connected_at_unix_ms: u64,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Server pings queued.
    pub pings: usize,
    /// Connections closed 4000 for silence.
    pub stale: usize,
    /// Connections closed 4001 for not authenticating in time.
    pub auth_timeouts: usize,
    /// Connections closed 4003 for an expired token.
    pub expired: usize,
    /// Topics dropped after their retention.
    pub topics_dropped: usize,
}

/// A page of a topic's history, as `GET /api/topics/{topic}/history` returns it.
#[derive(Debug, Clone)]
pub struct TopicHistory {
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// `(offset, data)` of retained publications, oldest first.
    pub messages: Vec<(u64, Box<RawValue>)>,
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The publication's offset (the original one for a duplicate).
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// Whether the id was already published within the dedupe window.
    pub deduplicated: bool,
    /// Connections it was queued to.
    pub delivered: usize,
}

/// The gateway: cheap to clone, shared by the transport, the HTTP API and the sweeper.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Fan-out latency samples kept for `/api/stats` percentiles.
const LATENCY_SAMPLES: usize = 1024;

type DedupeKey = (Topic, Box<str>);
/// `(topic, publish id)` to `(offset, epoch)`, with the dedupe window as time-to-live.
type DedupeCache = LruCache<DedupeKey, (u64, Arc<str>), Arc<dyn Clock>>;

struct Inner {
    settings: GatewaySettings,
    runtime: Arc<RuntimeConfig>,
    authenticator: Arc<dyn Authenticator>,
    preferences: Arc<dyn PreferenceStore>,
    clock: Arc<dyn Clock>,
    origin: Instant,
    connections: ConnectionManager,
    topics: SubscriptionManager,
    dedupe: Mutex<DedupeCache>,
    shutting_down: AtomicBool,
    operations: OperationQueue,
    events: PendingEvents,
    rate: RateLimiter,
    /// Gateway time of the last index-wide clean-up (0: never).
    last_maintenance_ms: AtomicU64,
    event_counter: AtomicU64,
    epoch_seed: u64,
    /// Recent publish-to-queued (fan-out) durations in microseconds.
    fanout_latency_us: Mutex<CircularBuffer<f64>>,
    published: AtomicU64,
    delivered: AtomicU64,
    shed: AtomicU64,
}

impl Gateway {
    /// Builds a gateway from its parts.
    pub fn new(parts: GatewayParts) -> Self {
        let origin = parts.clock.now();
        let epoch_seed = unix_ms();
        let dedupe = LruCache::new(parts.runtime.dedupe_cache_size(), Arc::clone(&parts.clock));
        Self {
            inner: Arc::new(Inner {
                connections: ConnectionManager::new(parts.settings.max_connections),
                topics: SubscriptionManager::new(epoch_seed, parts.history),
                operations: OperationQueue::new(parts.settings.operation_queue_size),
                events: PendingEvents::default(),
                rate: RateLimiter::default(),
                last_maintenance_ms: AtomicU64::new(0),
                event_counter: AtomicU64::new(0),
                epoch_seed,
                settings: parts.settings,
                runtime: parts.runtime,
                authenticator: parts.authenticator,
                preferences: parts.preferences,
                clock: parts.clock,
                origin,
                dedupe: Mutex::new(dedupe),
                shutting_down: AtomicBool::new(false),
                fanout_latency_us: Mutex::new(CircularBuffer::new(LATENCY_SAMPLES)),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                shed: AtomicU64::new(0),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }

    /// The live-tunable settings.
    pub fn runtime(&self) -> &Arc<RuntimeConfig> {
        &self.inner.runtime
    }

    /// Checks a new connection at the handshake: capacity, the token when it came with the
    /// request, the thread option and (policy `reject`) the user's limit.
    pub fn admit(&self, token: Option<&str>, thread: Option<&str>) -> Result<Admission, Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::Unavailable("shutting down"));
        }
        let thread = match thread {
            Some(id) => {
                herald_protocol::validate_id(id)
                    .map_err(|e| Refusal::BadRequest(format!("thread: {e}")))?;
                Some(ThreadId::new(id))
            }
            None => None,
        };
        let principal = match token {
            Some(token) => Some(self.inner.authenticator.authenticate(token, unix_ms())?),
            None => None,
        };
        // Under `reject` the place is promised now, so that of several concurrent handshakes
        // the surplus gets its 429 here rather than a 101 followed by 4030.
        let place = match &principal {
            Some(principal) if self.inner.settings.user_limit_policy == LimitPolicy::Reject => {
                let limit = self.user_limit(principal);
                Some(
                    self.inner
                        .connections
                        .reserve_user_place(&principal.user, limit)?,
                )
            }
            _ => None,
        };
        let slot = self
            .inner
            .connections
            .try_reserve()
            .ok_or(Refusal::Unavailable("server full"))?;
        Ok(Admission {
            slot,
            principal,
            place,
            thread,
        })
    }

    /// Opens a session for an admitted connection whose transport is ready.
    ///
    /// With a token from the handshake the connection is registered and `connected` queued at
    /// once; otherwise it must send `auth` within the auth timeout.
    pub fn open(&self, admission: Admission) -> Session {
        let inner = &self.inner;
        let now = self.now_ms();
        let connection = Arc::new(Connection::new(
            inner.connections.next_id(),
            admission.thread,
            Outbox::new(
                inner.settings.max_queue_size,
                inner.settings.max_queue_bytes,
            ),
            unix_ms(),
            now,
        ));
        connection.set_deadline_ms(now.saturating_add(duration_ms(inner.settings.auth_timeout)));
        inner.connections.insert(Arc::clone(&connection));
        // Admitted before a shutdown began but opened after it: `begin_shutdown` may not have
        // seen this connection, so it closes itself the same way.
        if self.is_shutting_down() {
            connection.outbox().close(CloseCode::GoingAway);
        }
        metrics::counter!("herald_connections_opened_total").increment(1);
        let mut session = Session {
            gateway: self.clone(),
            connection,
            principal: None,
            refusals: 0,
            _slot: admission.slot,
        };
        if let Some(principal) = admission.principal {
            session.authenticate(principal, None, admission.place);
        }
        session
    }

    /// Queues `request` for the fan-out worker and waits for its outcome.
    ///
    /// This is how ingest (the HTTP API) publishes and sends: bursts wait in the bounded
    /// operation queue, `critical` requests go first, and a full queue is refused with
    /// [`GatewayError::Overloaded`] (HTTP 429) rather than lost.
    pub async fn submit(&self, request: Request) -> Result<Outcome, GatewayError> {
        if self.is_shutting_down() {
            return Err(GatewayError::ShuttingDown);
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.enqueue(Operation {
            request,
            completion: Completion::Caller(sender),
        })?;
        receiver.await.unwrap_or(Err(GatewayError::ShuttingDown))
    }

    /// The fan-out worker: performs queued operations, highest priority first, until shutdown
    /// has begun and the queue is empty. The service runs it as one task.
    pub async fn run_operations(&self) {
        let mut batch = Vec::with_capacity(OPERATION_BATCH);
        loop {
            self.inner.operations.pop_batch(OPERATION_BATCH, &mut batch);
            if batch.is_empty() {
                if self.is_shutting_down() {
                    return;
                }
                self.inner.operations.wait().await;
                continue;
            }
            for operation in batch.drain(..) {
                self.perform(operation);
            }
            metrics::gauge!("herald_operation_queue_depth").set(self.inner.operations.len() as f64);
            tokio::task::yield_now().await;
        }
    }

    fn enqueue(&self, operation: Operation) -> Result<(), GatewayError> {
        self.inner.operations.push(operation).map_err(|_| {
            metrics::counter!("herald_operation_queue_rejected_total").increment(1);
            GatewayError::Overloaded {
                retry_after_ms: RETRY_AFTER_MS,
            }
        })
    }

    fn perform(&self, operation: Operation) {
        let outcome = match operation.request {
            Request::Publish {
                topic,
                data,
                priority,
                id,
            } => self
                .publish(&topic, &data, priority, id.as_deref())
                .map(Outcome::Published),
            Request::Broadcast {
                data,
                priority,
                exclude,
            } => Ok(Outcome::Delivered(
                self.broadcast(&data, priority, &exclude),
            )),
            Request::Event {
                user,
                event,
                data,
                thread,
                run,
                id,
            } => self
                .send_event(
                    &user,
                    event,
                    &data,
                    thread.as_ref(),
                    run.as_deref(),
                    id.as_deref(),
                )
                .map(Outcome::Event),
            Request::SendToUser {
                user,
                thread,
                data,
                priority,
            } => Ok(Outcome::Delivered(self.send_to_user(
                &user,
                thread.as_ref(),
                &data,
                priority,
            ))),
        };
        match operation.completion {
            Completion::Caller(sender) => {
                // The caller may have gone away (its HTTP connection closed); nothing to do then.
                let _ = sender.send(outcome);
            }
            Completion::Ack {
                connection,
                message_id,
                topic,
            } => {
                let reply = match outcome {
                    Ok(Outcome::Published(outcome)) => message_id.map(|message_id| ServerMessage::Ack {
                        message_id,
                        data: json!({"topic": topic, "offset": outcome.offset, "epoch": &*outcome.epoch,
                                     "deduplicated": outcome.deduplicated}),
                    }),
                    Ok(Outcome::Delivered(_) | Outcome::Event(_)) => None,
                    Err(error) => Some(ServerMessage::error(message_id, ErrorCode::Unavailable, error.to_string())),
                };
                if let Some(reply) = reply {
                    connection
                        .outbox()
                        .offer(Frame::from(reply.encode()), Priority::Critical);
                }
            }
        }
    }

    /// Publishes `data` to `topic` now, bypassing the operation queue: dedupe by `id`, assign the next offset, encode once and
    /// queue to every subscriber at `priority`.
    pub fn publish(
        &self,
        topic: &Topic,
        data: &RawValue,
        priority: Priority,
        id: Option<&str>,
    ) -> Result<PublishOutcome, GatewayError> {
        if self.is_shutting_down() {
            return Err(GatewayError::ShuttingDown);
        }
        let inner = &self.inner;
        let started = inner.clock.now();
        let now = self.now_ms();
        let dedupe = |next_offset: u64, epoch: &Arc<str>| {
            let id = id?;
            let window = inner.runtime.dedupe_window();
            let mut cache = inner.dedupe.lock().unwrap_or_else(PoisonError::into_inner);
            let capacity = inner.runtime.dedupe_cache_size();
            if cache.capacity() != capacity {
                cache.resize(capacity);
            }
            let key = (topic.clone(), Box::from(id));
            if let Some((offset, seen_epoch)) = cache.get(&key)
                && seen_epoch == epoch
            {
                return Some(*offset);
            }
            if !window.is_zero() {
                cache.insert_with_ttl(key, (next_offset, Arc::clone(epoch)), window);
            }
            None
        };
        let published = inner
            .topics
            .publish(topic, priority, now, dedupe, |offset, epoch| {
                let message = ServerMessage::Message {
                    topic: topic.clone(),
                    data: data.to_owned(),
                    offset,
                    epoch: epoch.to_owned(),
                };
                Frame::from(message.encode())
            });
        if published.deduplicated {
            metrics::counter!("herald_messages_deduplicated_total").increment(1);
        } else {
            inner.published.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_messages_published_total").increment(1);
            self.count_delivery(published.delivered, published.shed);
            let elapsed = inner.clock.now().saturating_duration_since(started);
            metrics::histogram!("herald_fanout_latency_seconds").record(elapsed.as_secs_f64());
            let micros = elapsed.as_secs_f64() * 1e6;
            inner
                .fanout_latency_us
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(micros);
        }
        Ok(PublishOutcome {
            offset: published.offset,
            epoch: published.epoch,
            deduplicated: published.deduplicated,
            delivered: published.delivered,
        })
    }

    /// Sends a `push` (scope `broadcast`) to every authenticated connection but `exclude`.
    pub fn broadcast(
        &self,
        data: &RawValue,
        priority: Priority,
        exclude: &[ConnectionId],
    ) -> usize {
        let frame = push_frame(data, PushScope::Broadcast);
        let (mut delivered, mut shed) = (0, 0);
        self.inner.connections.for_each(|connection| {
            if connection.key().is_some() && !exclude.contains(&connection.id()) {
                offer_counting(connection, &frame, priority, &mut delivered, &mut shed);
            }
        });
        self.count_delivery(delivered, shed);
        delivered
    }

    /// Sends a `push` (scope `user`) to `user`'s connections; with `thread`, to those bound to
    /// that thread and those bound to none.
    pub fn send_to_user(
        &self,
        user: &UserId,
        thread: Option<&ThreadId>,
        data: &RawValue,
        priority: Priority,
    ) -> usize {
        let frame = push_frame(data, PushScope::User);
        let (mut delivered, mut shed) = (0, 0);
        for connection in self.inner.connections.user_connections(user) {
            if connection
                .key()
                .is_some_and(|key| key.receives(user, thread))
            {
                offer_counting(&connection, &frame, priority, &mut delivered, &mut shed);
            }
        }
        self.count_delivery(delivered, shed);
        delivered
    }

    /// Sends a `push` (scope `connection`) to one connection.
    pub fn send_to_connection(
        &self,
        id: ConnectionId,
        data: &RawValue,
        priority: Priority,
    ) -> Result<usize, GatewayError> {
        let connection = self.authenticated(id)?;
        let frame = push_frame(data, PushScope::Connection);
        let (mut delivered, mut shed) = (0, 0);
        offer_counting(&connection, &frame, priority, &mut delivered, &mut shed);
        self.count_delivery(delivered, shed);
        Ok(delivered)
    }

    /// Sends a critical event to `user` now (bypassing the operation queue): it is kept until a
    /// connection of the user acknowledges it, delivered to the user's connections that receive
    /// `thread`, and to connections that connect later.
    pub fn send_event(
        &self,
        user: &UserId,
        event: EventName,
        data: &RawValue,
        thread: Option<&ThreadId>,
        run: Option<&str>,
        id: Option<&str>,
    ) -> Result<EventOutcome, GatewayError> {
        let inner = &self.inner;
        let now = self.now_ms();
        let mut events = inner.events.lock();
        let pending = events.entry(user.clone()).or_default();
        if let Some(id) = id
            && pending.iter().any(|e| &*e.id == id)
        {
            // A retried send of an event still pending: already kept and delivered.
            return Ok(EventOutcome {
                id: id.to_owned(),
                delivered: 0,
                pending: pending.len(),
            });
        }
        let limit = inner.settings.max_pending_events;
        if pending.len() >= limit {
            if pending.is_empty() {
                events.remove(user);
            }
            metrics::counter!("herald_events_rejected_total").increment(1);
            return Err(GatewayError::TooManyPending { limit });
        }
        let id: Arc<str> = match id {
            Some(id) => Arc::from(id),
            None => {
                let n = inner.event_counter.fetch_add(1, Ordering::Relaxed);
                Arc::from(format!("evt-{:x}-{n:x}", inner.epoch_seed))
            }
        };
        let frame = Frame::from(
            ServerMessage::Event {
                event,
                id: id.to_string(),
                data: data.to_owned(),
                thread_id: thread.map(|t| t.as_str().to_owned()),
                run_id: run.map(str::to_owned),
            }
            .encode(),
        );
        let (mut delivered, mut shed) = (0, 0);
        for connection in inner.connections.user_connections(user) {
            if connection
                .key()
                .is_some_and(|key| key.receives(user, thread))
            {
                offer_counting(
                    &connection,
                    &frame,
                    Priority::Critical,
                    &mut delivered,
                    &mut shed,
                );
            }
        }
        pending.push_back(PendingEvent {
            id: Arc::clone(&id),
            thread: thread.cloned(),
            frame,
            created_ms: now,
            delivered_ms: (delivered > 0).then_some(now),
        });
        let outcome = EventOutcome {
            id: id.to_string(),
            delivered,
            pending: pending.len(),
        };
        drop(events);
        self.count_delivery(delivered, shed);
        metrics::counter!("herald_events_sent_total").increment(1);
        Ok(outcome)
    }

    /// Removes the events `ids` of `connection`'s user that the connection could receive;
    /// returns how many were pending.
    fn acknowledge(&self, connection: &Connection, ids: &[String]) -> usize {
        let Some(key) = connection.key() else {
            return 0;
        };
        let now = self.now_ms();
        let mut events = self.inner.events.lock();
        let Some(pending) = events.get_mut(&key.user) else {
            return 0;
        };
        let before = pending.len();
        pending.retain(|event| {
            let acked = key.receives(&key.user, event.thread.as_ref())
                && ids.iter().any(|id| **id == *event.id);
            if acked {
                let seconds = now.saturating_sub(event.created_ms) as f64 / 1000.0;
                metrics::histogram!("herald_event_ack_latency_seconds").record(seconds);
            }
            !acked
        });
        let acked = before - pending.len();
        if pending.is_empty() {
            events.remove(&key.user);
        }
        acked
    }

    /// Redelivers, in order, the pending events of users whose oldest delivered event waited
    /// longer than the ack timeout, and drops events past their time-to-live.
    fn sweep_events(&self, now: u64) {
        let inner = &self.inner;
        let timeout = duration_ms(inner.settings.event_ack_timeout);
        let ttl = duration_ms(inner.settings.event_ttl);
        let mut events = inner.events.lock();
        events.retain(|user, pending| {
            let before = pending.len();
            pending.retain(|event| now.saturating_sub(event.created_ms) < ttl);
            let expired = before - pending.len();
            if expired > 0 {
                metrics::counter!("herald_events_expired_total").increment(expired as u64);
                tracing::warn!(user = %user, expired, "critical events expired unacknowledged");
            }
            let due = pending.iter().any(|e| {
                e.delivered_ms
                    .is_some_and(|at| now.saturating_sub(at) >= timeout)
            });
            if due {
                let connections = inner.connections.user_connections(user);
                for event in pending.iter_mut() {
                    let mut sent = false;
                    for connection in &connections {
                        if connection
                            .key()
                            .is_some_and(|key| key.receives(user, event.thread.as_ref()))
                        {
                            sent |= matches!(
                                connection
                                    .outbox()
                                    .offer(event.frame.clone(), Priority::Critical),
                                Offer::Queued { .. }
                            );
                        }
                    }
                    if sent {
                        event.delivered_ms = Some(now);
                        metrics::counter!("herald_events_redelivered_total").increment(1);
                    }
                }
            }
            !pending.is_empty()
        });
    }

    /// Closes a connection with 4010.
    pub fn disconnect(&self, id: ConnectionId) -> Result<(), GatewayError> {
        let connection = self
            .inner
            .connections
            .get(id)
            .ok_or_else(|| GatewayError::UnknownConnection(id.to_string()))?;
        connection.outbox().close(CloseCode::DisconnectedByApi);
        Ok(())
    }

    /// Lists connections, optionally only `user`'s, oldest first.
    pub fn connections(&self, user: Option<&UserId>) -> Vec<ConnectionSummary> {
        let now = self.now_ms();
        let mut list = match user {
            Some(user) => self.inner.connections.user_connections(user),
            None => self.inner.connections.all(),
        };
        list.sort_by_key(|c| c.id());
        list.iter()
            .map(|c| ConnectionSummary {
                id: c.id(),
                user: c.key().map(|k| k.user.clone()),
                thread: c.thread().cloned(),
                topics: c.topics(),
                idle_ms: now.saturating_sub(c.last_activity_ms()),
                connected_at_unix_ms: c.connected_at_unix_ms(),
            })
            .collect()
    }

    /// A topic's subscribers and position, if known.
    pub fn topic(&self, topic: &Topic) -> Option<TopicInfo> {
        self.inner.topics.topic(topic)
    }

    /// A topic's epoch and at most `limit` retained publications after offset `after`, as
    /// `(offset, data)` pairs, oldest first; `None` for an unknown topic.
    pub fn history(&self, topic: &Topic, after: u64, limit: usize) -> Option<TopicHistory> {
        let (epoch, entries) = self
            .inner
            .topics
            .history(topic, after, limit, self.now_ms())?;
        let messages = entries
            .into_iter()
            .filter_map(|entry| match ServerMessage::decode(entry.frame.as_str()) {
                Ok(ServerMessage::Message { data, .. }) => Some((entry.offset, data)),
                // History holds only encoded `message` frames.
                _ => None,
            })
            .collect();
        Some(TopicHistory { epoch, messages })
    }

    /// Current counts and totals.
    pub fn stats(&self) -> GatewayStats {
        let inner = &self.inner;
        GatewayStats {
            connections: inner.connections.len(),
            users: inner.connections.user_count(),
            subscriptions: inner.topics.subscription_count(),
            topics: inner.topics.topic_count(),
            published: inner.published.load(Ordering::Relaxed),
            delivered: inner.delivered.load(Ordering::Relaxed),
            shed: inner.shed.load(Ordering::Relaxed),
            pending_events: inner.events.total(),
        }
    }

    /// Median and 99th percentile of recent fan-out latencies (publish accepted to queued for
    /// every subscriber), in microseconds; zeros before the first publication.
    pub fn fanout_latency_us(&self) -> (u64, u64) {
        let samples = self
            .inner
            .fanout_latency_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Latencies are non-negative and far below u64::MAX microseconds, so `as` is exact enough.
        let at = |p: f64| samples.percentile(p).map_or(0, |v| v.round() as u64);
        (at(50.0), at(99.0))
    }

    /// One pass of the heartbeat and timeout sweep; call it about every quarter second.
    ///
    /// Queues a server `ping` to connections due one, and closes connections that did not
    /// authenticate in time (4001), whose token expired (4003) or that were silent for the
    /// stale timeout (4000). Also drops topics past their retention, and expired dedupe ids.
    pub fn sweep(&self) -> SweepReport {
        let inner = &self.inner;
        let now = self.now_ms();
        let heartbeat = duration_ms(inner.settings.heartbeat_interval);
        let stale = duration_ms(inner.settings.stale_timeout);
        let ping = Frame::from(
            ServerMessage::Ping {
                timestamp: Some(unix_ms()),
            }
            .encode(),
        );
        let mut report = SweepReport::default();
        inner.connections.for_each(|connection| {
            let outbox = connection.outbox();
            if outbox.close_requested().is_some() {
                return;
            }
            let authenticated = connection.key().is_some();
            if now >= connection.deadline_ms() {
                let (code, counter) = if authenticated {
                    (CloseCode::TokenExpired, &mut report.expired)
                } else {
                    (CloseCode::Unauthenticated, &mut report.auth_timeouts)
                };
                if outbox.close(code) {
                    *counter += 1;
                }
            } else if now.saturating_sub(connection.last_activity_ms()) >= stale {
                if outbox.close(CloseCode::Stale) {
                    report.stale += 1;
                }
            } else if authenticated && now.saturating_sub(connection.last_ping_ms()) >= heartbeat {
                connection.set_last_ping_ms(now);
                if let Offer::Queued { shed } = outbox.offer(ping.clone(), Priority::Critical) {
                    inner.shed.fetch_add(shed as u64, Ordering::Relaxed);
                    report.pings += 1;
                }
            }
        });
        self.sweep_events(now);
        // The index-wide clean-ups walk every topic under its shard's lock: once a second is
        // plenty, and keeps them off the fan-out path the rest of the time.
        let last = inner.last_maintenance_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= MAINTENANCE_INTERVAL_MS || last == 0 {
            inner
                .last_maintenance_ms
                .store(now.max(1), Ordering::Relaxed);
            inner.topics.history_store().purge(now);
            inner.rate.forget_full(now);
            report.topics_dropped = inner
                .topics
                .sweep_idle(now, duration_ms(inner.settings.topic_retention));
            inner
                .dedupe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .purge_expired();
        }
        report
    }

    /// Starts a graceful shutdown: refuse new connections and publications, and ask every
    /// connection to flush its queue and close with 1001.
    pub fn begin_shutdown(&self) {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.connections.for_each(|connection| {
            connection.outbox().close(CloseCode::GoingAway);
        });
        self.inner.operations.wake();
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Milliseconds on the gateway clock since the gateway was built.
    pub fn now_ms(&self) -> u64 {
        duration_ms(
            self.inner
                .clock
                .now()
                .saturating_duration_since(self.inner.origin),
        )
    }

    fn authenticated(&self, id: ConnectionId) -> Result<Arc<Connection>, GatewayError> {
        self.inner
            .connections
            .get(id)
            .filter(|c| c.key().is_some())
            .ok_or_else(|| GatewayError::UnknownConnection(id.to_string()))
    }

    fn messages_per_minute(&self, principal: &Principal) -> u32 {
        self.inner
            .settings
            .tier_messages_per_minute
            .get(&*principal.tier)
            .copied()
            .unwrap_or(u32::MAX)
    }

    fn user_limit(&self, principal: &Principal) -> usize {
        let tier = self
            .inner
            .settings
            .tier_connections
            .get(&*principal.tier)
            .copied()
            .unwrap_or(usize::MAX);
        tier.min(self.inner.runtime.max_connections_per_user())
            .max(1)
    }

    fn count_delivery(&self, delivered: usize, shed: usize) {
        self.inner
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        metrics::counter!("herald_messages_delivered_total").increment(delivered as u64);
        if shed > 0 {
            self.inner.shed.fetch_add(shed as u64, Ordering::Relaxed);
        }
    }

    /// The one cleanup path: removes the connection from every index. Idempotent.
    fn cleanup(&self, connection: &Connection) {
        self.inner.topics.remove_all(connection);
        self.inner.connections.remove(connection);
        metrics::counter!("herald_connections_closed_total").increment(1);
    }
}

/// Batching is on unless the preferences say `"batching": false`.
fn batching_preference(preferences: &Map<String, Value>) -> bool {
    preferences.get("batching") != Some(&Value::Bool(false))
}

fn push_frame(data: &RawValue, scope: PushScope) -> Frame {
    Frame::from(
        ServerMessage::Push {
            data: data.to_owned(),
            scope,
        }
        .encode(),
    )
}

fn offer_counting(
    connection: &Connection,
    frame: &Frame,
    priority: Priority,
    delivered: &mut usize,
    shed: &mut usize,
) {
    if let Offer::Queued { shed: n } = connection.outbox().offer(frame.clone(), priority) {
        *delivered += 1;
        *shed += n;
    }
}

/// Wall-clock milliseconds since the Unix epoch (tokens and timestamps are wall-clock).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One connection's server side: handles its client frames and, when dropped, runs the one
/// cleanup path that removes it from every index.
///
/// The transport owns the session for as long as the socket lives, feeds it every text frame
/// with [`Session::on_text`] and writes what [`Connection::outbox`] yields.
pub struct Session {
    gateway: Gateway,
    connection: Arc<Connection>,
    principal: Option<Principal>,
    /// Client writes refused in a row by the rate limit (4008 at the abuse threshold).
    refusals: u32,
    _slot: Slot,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.gateway.cleanup(&self.connection);
    }
}

impl Session {
    /// The connection.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Whether the connection has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.principal.is_some()
    }

    /// Records inbound activity (any frame, including WebSocket pings and pongs).
    pub fn touch(&self) {
        self.connection.touch(self.gateway.now_ms());
    }

    /// Handles one inbound text frame: parse, route, and queue the reply.
    pub fn on_text(&mut self, text: &str) {
        self.touch();
        let max = self.gateway.inner.settings.max_payload_bytes;
        let frame = match parse_client_frame(text, max) {
            Ok(frame) => frame,
            Err(error) => {
                let unauthenticated_request =
                    self.principal.is_none() && error.kind.is_some_and(|k| k != RequestKind::Ping);
                if unauthenticated_request {
                    self.reply_error(
                        error.message_id,
                        ErrorCode::Unauthorized,
                        "authenticate first",
                    );
                } else {
                    self.reply(error.to_server_message());
                }
                return;
            }
        };
        self.handle(frame);
    }

    fn handle(&mut self, frame: ClientFrame) {
        let ClientFrame {
            message_id,
            timestamp,
            request,
        } = frame;
        let Some(principal) = self.principal.clone() else {
            match request {
                ClientRequest::Auth { token } => self.on_auth(&token, message_id),
                ClientRequest::Ping => self.reply(ServerMessage::Pong {
                    timestamp,
                    message_id,
                }),
                _ => self.reply_error(message_id, ErrorCode::Unauthorized, "authenticate first"),
            }
            return;
        };
        match request {
            ClientRequest::Auth { token } => self.on_auth(&token, message_id),
            ClientRequest::Subscribe { topic, since } => {
                self.on_subscribe(&principal, &topic, since, message_id)
            }
            ClientRequest::Unsubscribe { topic } => {
                let unsubscribed = self
                    .gateway
                    .inner
                    .topics
                    .unsubscribe(&self.connection, &topic);
                self.ack(
                    message_id,
                    json!({"topic": topic, "unsubscribed": unsubscribed}),
                );
            }
            ClientRequest::BatchSubscribe { topics } => {
                let results: Vec<Value> = topics
                    .iter()
                    .map(|topic| match self.subscribe(&principal, topic, None) {
                        Ok(result) => result,
                        Err(error) => json!({"topic": topic, "error": error.detail()}),
                    })
                    .collect();
                self.ack(message_id, json!({ "results": results }));
            }
            ClientRequest::BatchUnsubscribe { topics } => {
                let results: Vec<Value> = topics
                    .iter()
                    .map(|topic| {
                        let unsubscribed = self
                            .gateway
                            .inner
                            .topics
                            .unsubscribe(&self.connection, topic);
                        json!({"topic": topic, "unsubscribed": unsubscribed})
                    })
                    .collect();
                self.ack(message_id, json!({ "results": results }));
            }
            ClientRequest::Publish { .. } | ClientRequest::UpdatePreferences { .. }
                if !self.within_rate(&principal, message_id.as_deref()) => {}
            ClientRequest::Publish { topic, data, id } => {
                if !principal.may_publish(topic.as_str()) {
                    let message = format!("not allowed to publish to `{topic}`");
                    self.reply_error(message_id, ErrorCode::Forbidden, message);
                    return;
                }
                let operation = Operation {
                    request: Request::Publish {
                        topic: topic.clone(),
                        data,
                        priority: Priority::Normal,
                        id,
                    },
                    completion: Completion::Ack {
                        connection: Arc::clone(&self.connection),
                        message_id: message_id.clone(),
                        topic,
                    },
                };
                if let Err(error) = self.gateway.enqueue(operation) {
                    let retry_after = match error {
                        GatewayError::Overloaded { retry_after_ms } => Some(retry_after_ms),
                        _ => None,
                    };
                    self.reply(ServerMessage::Error {
                        message_id,
                        error: ErrorDetail {
                            code: ErrorCode::RateLimited,
                            message: error.to_string(),
                            retry_after,
                        },
                    });
                }
            }
            ClientRequest::Ping => self.reply(ServerMessage::Pong {
                timestamp,
                message_id,
            }),
            // A pong needs no answer, but one that carries a `messageId` gets its one reply
            // like every other request.
            ClientRequest::Pong => self.ack(message_id, json!({})),
            ClientRequest::GetPreferences => {
                let data = Value::Object(self.gateway.inner.preferences.get(&principal.user));
                self.reply(ServerMessage::Preferences { message_id, data });
            }
            ClientRequest::UpdatePreferences { patch } => {
                self.on_update_preferences(&principal.user, patch, message_id)
            }
            ClientRequest::Ack { ids } => {
                let acknowledged = self.gateway.acknowledge(&self.connection, &ids);
                self.ack(message_id, json!({ "acknowledged": acknowledged }));
            }
        }
    }

    /// Takes a token of the user's tier rate; when none is left, replies `rate_limited` with
    /// `retryAfter`, and closes 4008 after too many refusals in a row.
    fn within_rate(&mut self, principal: &Principal, message_id: Option<&str>) -> bool {
        let per_minute = self.gateway.messages_per_minute(principal);
        match self
            .gateway
            .inner
            .rate
            .try_take(&principal.user, per_minute, self.gateway.now_ms())
        {
            Ok(()) => {
                self.refusals = 0;
                true
            }
            Err(wait_ms) => {
                self.refusals += 1;
                metrics::counter!("herald_rate_limited_total").increment(1);
                self.reply(ServerMessage::Error {
                    message_id: message_id.map(str::to_owned),
                    error: ErrorDetail {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "tier `{}` allows {per_minute} messages per minute",
                            principal.tier
                        ),
                        retry_after: Some(wait_ms),
                    },
                });
                if self.refusals >= ABUSE_THRESHOLD {
                    self.connection.outbox().close(CloseCode::RateLimited);
                }
                false
            }
        }
    }

    fn on_auth(&mut self, token: &str, message_id: Option<String>) {
        let refusal = match self
            .gateway
            .inner
            .authenticator
            .authenticate(token, unix_ms())
        {
            Ok(principal) => match &self.principal {
                Some(current) if current.user != principal.user => {
                    Some("a refresh token must be for the same user".to_owned())
                }
                Some(_) => {
                    self.refresh(principal, message_id);
                    return;
                }
                None => {
                    self.authenticate(principal, message_id, None);
                    return;
                }
            },
            Err(error) => Some(error.to_string()),
        };
        if let Some(message) = refusal {
            self.reply_error(message_id, ErrorCode::Unauthorized, message);
            self.connection.outbox().close(CloseCode::Unauthenticated);
        }
    }

    /// Registers the connection under its user and queues `connected` (then the `auth` ack).
    /// `place` is the one promised at the handshake, if any.
    fn authenticate(
        &mut self,
        principal: Principal,
        message_id: Option<String>,
        place: Option<UserPlace>,
    ) {
        let gateway = self.gateway.clone();
        let inner = &gateway.inner;
        let limit = gateway.user_limit(&principal);
        let policy = inner.settings.user_limit_policy;
        let refuse = |session: &Self, message_id: Option<String>, exceeded: LimitExceeded| {
            session.reply_error(message_id, ErrorCode::LimitExceeded, exceeded.to_string());
            session.connection.outbox().close(CloseCode::Refused);
        };
        // Under `reject` the place is promised before `connected` and the ack are queued, so
        // that of several concurrent `auth`s none is acknowledged and then refused.
        let place = match place {
            None if policy == LimitPolicy::Reject => {
                match inner.connections.reserve_user_place(&principal.user, limit) {
                    Ok(place) => Some(place),
                    Err(exceeded) => {
                        refuse(self, message_id, exceeded);
                        return;
                    }
                }
            }
            place => place,
        };
        // `connected` and the `auth` ack go first: nothing reaches the connection before it is
        // registered below.
        self.set_expiry(&principal);
        self.connection.set_last_ping_ms(gateway.now_ms());
        self.connection
            .set_batching(batching_preference(&inner.preferences.get(&principal.user)));
        self.reply(ServerMessage::Connected {
            data: ConnectedData {
                connection_id: self.connection.id().to_string(),
                user_id: principal.user.to_string(),
                tier: principal.tier.to_string(),
                heartbeat_interval: duration_ms(inner.settings.heartbeat_interval),
                max_payload: inner.settings.max_payload_bytes as u64,
            },
        });
        self.ack(
            message_id.clone(),
            RefreshResult {
                expires_at: principal.expires_at_ms,
            }
            .to_value(),
        );
        let key = IsolationKey {
            user: principal.user.clone(),
            thread: self.connection.thread().cloned(),
            connection: self.connection.id(),
        };
        // Registering and receiving the pending events happen under the user's events lock, so
        // an event sent meanwhile is either among them or delivered live afterwards, never both
        // out of order nor neither.
        let mut events = inner.events.lock();
        if let Err(exceeded) =
            inner
                .connections
                .register_user(&self.connection, key.clone(), limit, policy, place)
        {
            drop(events);
            refuse(self, message_id, exceeded);
            return;
        }
        if let Some(pending) = events.get_mut(&principal.user) {
            let now = gateway.now_ms();
            for event in pending
                .iter_mut()
                .filter(|e| key.receives(&principal.user, e.thread.as_ref()))
            {
                self.connection
                    .outbox()
                    .offer(event.frame.clone(), Priority::Critical);
                event.delivered_ms = Some(now);
            }
        }
        drop(events);
        self.principal = Some(principal);
    }

    fn refresh(&mut self, principal: Principal, message_id: Option<String>) {
        self.set_expiry(&principal);
        let expires_at = principal.expires_at_ms;
        self.principal = Some(principal);
        self.ack(message_id, RefreshResult { expires_at }.to_value());
    }

    /// Moves the connection's deadline to the token's expiry, on the gateway clock.
    fn set_expiry(&self, principal: &Principal) {
        let remaining = principal.close_at_ms.saturating_sub(unix_ms());
        let deadline = self.gateway.now_ms().saturating_add(remaining);
        self.connection
            .set_deadline_ms(if principal.close_at_ms == u64::MAX {
                NO_DEADLINE
            } else {
                deadline
            });
    }

    fn on_subscribe(
        &self,
        principal: &Principal,
        topic: &Topic,
        since: Option<StreamPosition>,
        message_id: Option<String>,
    ) {
        // The ack is queued under the topic's lock, before any live message of the topic.
        match self.subscribe_with(principal, topic, since.as_ref(), |result| {
            if let Some(message_id) = message_id.clone() {
                self.reply(ServerMessage::Ack {
                    message_id,
                    data: result,
                });
            }
        }) {
            Ok(()) => {}
            Err(error) => self.reply(ServerMessage::error(message_id, error.code, error.message)),
        }
    }

    fn subscribe(
        &self,
        principal: &Principal,
        topic: &Topic,
        since: Option<&StreamPosition>,
    ) -> Result<Value, ProtocolError> {
        self.subscribe_with(principal, topic, since, |result| result)
    }

    fn subscribe_with<R>(
        &self,
        principal: &Principal,
        topic: &Topic,
        since: Option<&StreamPosition>,
        then: impl FnOnce(Value) -> R,
    ) -> Result<R, ProtocolError> {
        if !principal.may_subscribe(topic.as_str()) {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to `{topic}`"),
            ));
        }
        let gateway = &self.gateway.inner;
        let limit = gateway.settings.max_subscriptions_per_connection;
        gateway
            .topics
            .subscribe(
                &self.connection,
                topic,
                limit,
                self.gateway.now_ms(),
                since,
                |position: &TopicPosition, replay: Option<Vec<HistoryEntry>>| {
                    // `recovered` tells a resuming client that the replay below closes its gap.
                    let recovered = since.is_some() && replay.is_some();
                    if since.is_some() {
                        let label = if recovered { "true" } else { "false" };
                        metrics::counter!("herald_resumes_total", "recovered" => label)
                            .increment(1);
                    }
                    let result = then(
                        SubscribeResult {
                            topic: topic.clone(),
                            offset: position.last_offset,
                            epoch: position.epoch.to_string(),
                            recovered,
                        }
                        .to_value(),
                    );
                    for entry in replay.into_iter().flatten() {
                        self.connection
                            .outbox()
                            .offer(entry.frame, Priority::Normal);
                    }
                    result
                },
            )
            .map_err(|SubscribeError::LimitReached { limit }| {
                ProtocolError::new(
                    ErrorCode::LimitExceeded,
                    format!("subscription limit of {limit} per connection reached"),
                )
            })
    }

    fn on_update_preferences(
        &self,
        user: &UserId,
        patch: Map<String, Value>,
        message_id: Option<String>,
    ) {
        let updated = self.gateway.inner.preferences.update(user, patch);
        let batching = batching_preference(&updated);
        let updated = Value::Object(updated);
        let push = Frame::from(
            ServerMessage::Preferences {
                message_id: None,
                data: updated.clone(),
            }
            .encode(),
        );
        for other in self.gateway.inner.connections.user_connections(user) {
            other.set_batching(batching);
            if other.id() != self.connection.id() {
                other.outbox().offer(push.clone(), Priority::Critical);
            }
        }
        self.ack(message_id, updated);
    }

    fn ack(&self, message_id: Option<String>, data: Value) {
        if let Some(message_id) = message_id {
            self.reply(ServerMessage::Ack { message_id, data });
        }
    }

    fn reply_error(&self, message_id: Option<String>, code: ErrorCode, message: impl Into<String>) {
        self.reply(ServerMessage::error(message_id, code, message));
    }

    /// Queues a reply. Replies are never shed; when even a reply cannot be queued, the
    /// connection is closed 4009.
    fn reply(&self, message: ServerMessage) {
        self.connection
            .outbox()
            .offer(Frame::from(message.encode()), Priority::Critical);
    }
}
