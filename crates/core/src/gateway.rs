//! The [`Gateway`]: the API of the core. Admission at the handshake and the opening of
//! sessions, the typed operations of the HTTP API (each through the operation queue), the
//! fan-out worker, the read-only queries, the stats, the sweep and the shutdown.

use std::{sync::Arc, time::Instant};

use herald_config::RuntimeConfig;
use herald_monitoring::{
    CheckResult, CheckStatus, HealthCheck, LatencyHistogram, MemoryStats, Stats, StatsSource,
};
use herald_protocol::{CloseCode, ErrorCode, ServerMessage, Topic};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::{
    auth::{AuthError, Principal},
    connection::{LimitExceeded, LimitPolicy, Slot, UserPlace},
    error::GatewayError,
    events::{EventOutcome, EventSend},
    ids::{ConnectionId, ThreadId, UserId},
    node::Node,
    operations::{Operation, PublishReply, Reply},
    parts::{GatewayParts, GatewaySettings},
    publish::{Publication, PublishOutcome},
    push::{Broadcast, ConnectionSend, Delivered, UserSend},
    session::Session,
    subscription::TopicInfo,
    sweep::{SweepReport, sweep},
    worker,
};

/// The gateway: cheap to clone, shared by the transport, the HTTP API, the fan-out worker and
/// the sweeper.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) node: Arc<Node>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("connections", &self.node.connections.len())
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

/// Why a connection was refused at the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server is full, shutting down or under memory pressure (HTTP 503, `unavailable`).
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
/// into a [`Session`] once the transport is ready. Dropping it releases the slot.
#[derive(Debug)]
pub struct Admission {
    slot: Slot,
    principal: Option<Principal>,
    /// The place under the user's limit promised at the handshake (policy `reject`).
    place: Option<UserPlace>,
    thread: Option<ThreadId>,
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
    /// When it was accepted, in ms since the Unix epoch (the gateway clock's wall time).
    pub connected_at_unix_ms: u64,
}

/// A page of a topic's history, as `GET /api/topics/{topic}/history` returns it.
#[derive(Debug, Clone)]
pub struct TopicHistory {
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// `(offset, data)` of retained publications, oldest first.
    pub messages: Vec<(u64, Box<RawValue>)>,
}

impl Gateway {
    /// Builds a gateway from its parts and attaches it to its broker.
    pub fn new(parts: GatewayParts) -> Self {
        Self {
            node: Node::start(parts),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &GatewaySettings {
        &self.node.settings
    }

    /// The live-tunable settings.
    pub fn runtime(&self) -> &Arc<RuntimeConfig> {
        &self.node.runtime
    }

    /// Checks a new connection at the handshake: shutdown and memory pressure (see
    /// [`Relief::refuse_connections`](herald_memory::Relief::refuse_connections)), capacity, the token when it came with the
    /// request (judged at the clock's wall-clock time), the thread option and (policy
    /// `reject`) the user's limit.
    pub fn admit(&self, token: Option<&str>, thread: Option<&str>) -> Result<Admission, Refusal> {
        let node = &self.node;
        if node.is_shutting_down() {
            return Err(Refusal::Unavailable("shutting down"));
        }
        if node.is_refusing() {
            return Err(Refusal::Unavailable("memory pressure"));
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
            Some(token) => Some(node.authenticator.authenticate(token, node.unix_ms())?),
            None => None,
        };
        // Under `reject` the place is promised now, so that of several concurrent handshakes
        // the surplus gets its 429 here rather than a 101 followed by 4030.
        let place = match &principal {
            Some(principal) if node.settings.user_limit_policy == LimitPolicy::Reject => {
                let limit = node.user_limit(principal);
                Some(
                    node.connections
                        .reserve_user_place(&principal.user, limit)?,
                )
            }
            _ => None,
        };
        let slot = node
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
        let Admission {
            slot,
            principal,
            place,
            thread,
        } = admission;
        Session::open(Arc::clone(&self.node), slot, thread, principal, place)
    }

    /// Publishes to a topic: dedupe by id, the next offset, encode once, retain in history,
    /// queue to every subscriber, then to the other nodes.
    ///
    /// Goes through the bounded operation queue, ordered by the publication's priority:
    /// resolves once the worker has queued the frame to every subscriber of this node (not
    /// once it is written). [`GatewayError::Overloaded`] when the queue is full (HTTP 429),
    /// [`GatewayError::ShuttingDown`] during a shutdown.
    pub async fn publish(&self, publication: Publication) -> Result<PublishOutcome, GatewayError> {
        self.submit(|reply| Operation::Publish(publication, PublishReply::Caller(reply)))
            .await
    }

    /// Publishes each of `publications` as [`publish`](Self::publish) does, in order, and
    /// returns their results in the same order, one per publication. On an idle gateway they
    /// are performed together, in place; otherwise each goes through the queue and may be
    /// refused alone ([`GatewayError::Overloaded`]).
    pub async fn publish_batch(
        &self,
        publications: Vec<Publication>,
    ) -> Vec<Result<PublishOutcome, GatewayError>> {
        if self.is_shutting_down() {
            return publications
                .iter()
                .map(|_| Err(GatewayError::ShuttingDown))
                .collect();
        }
        let mut replies = Vec::with_capacity(publications.len());
        let operations: Vec<Operation> = publications
            .into_iter()
            .map(|publication| {
                let (sender, receiver) = oneshot::channel();
                replies.push(Ok(receiver));
                Operation::Publish(publication, PublishReply::Caller(sender))
            })
            .collect();
        worker::submit(&self.node, operations, |index, error| {
            replies[index] = Err(error);
        })
        .await;
        let mut outcomes = Vec::with_capacity(replies.len());
        for reply in replies {
            outcomes.push(match reply {
                Ok(receiver) => replied(receiver).await,
                Err(error) => Err(error),
            });
        }
        outcomes
    }

    /// Sends a `push` (scope `broadcast`) to every authenticated connection but the excluded
    /// ones, here and on the other nodes; through the operation queue like
    /// [`publish`](Self::publish).
    pub async fn broadcast(&self, broadcast: Broadcast) -> Result<Delivered, GatewayError> {
        self.submit(|reply| Operation::Broadcast(broadcast, reply))
            .await
    }

    /// Sends a `push` (scope `user`) to a user's connections (with a thread: those bound to it
    /// and those bound to none), here and on the other nodes; through the operation queue.
    pub async fn send_to_user(&self, send: UserSend) -> Result<Delivered, GatewayError> {
        self.submit(|reply| Operation::UserSend(send, reply)).await
    }

    /// Sends a `push` (scope `connection`) to one authenticated connection of this node;
    /// through the operation queue. [`GatewayError::UnknownConnection`] when there is no such
    /// authenticated connection.
    pub async fn send_to_connection(
        &self,
        send: ConnectionSend,
    ) -> Result<Delivered, GatewayError> {
        self.submit(|reply| Operation::ConnectionSend(send, reply))
            .await
    }

    /// Sends a critical event to a user: kept until a connection of the user acknowledges it,
    /// queued (as `critical`) to the user's connections that receive its thread, redelivered
    /// after the ack timeout, and delivered to connections that register later. Through the
    /// operation queue, ahead of every other priority.
    /// [`GatewayError::TooManyPending`] when the user has the maximum pending.
    pub async fn send_event(&self, event: EventSend) -> Result<EventOutcome, GatewayError> {
        self.submit(|reply| Operation::Event(event, reply)).await
    }

    /// Performs an operation, built around its reply channel, in place when the gateway is
    /// idle or through the operation queue, and waits for its result.
    async fn submit<T>(
        &self,
        operation: impl FnOnce(Reply<T>) -> Operation,
    ) -> Result<T, GatewayError> {
        if self.is_shutting_down() {
            return Err(GatewayError::ShuttingDown);
        }
        let (sender, receiver) = oneshot::channel();
        let mut taken = Ok(());
        worker::submit(&self.node, [operation(sender)], |_, error| {
            taken = Err(error)
        })
        .await;
        taken?;
        replied(receiver).await
    }

    /// The fan-out worker: performs queued operations, highest priority first, until shutdown
    /// has begun and the queue is empty. The service runs it as one task.
    pub async fn run_operations(&self) {
        worker::run(&self.node).await;
    }

    /// Closes a connection with 4010 (its transport then drops the session, which cleans up).
    pub fn disconnect(&self, id: ConnectionId) -> Result<(), GatewayError> {
        let connection = self
            .node
            .connections
            .get(id)
            .ok_or_else(|| GatewayError::UnknownConnection(id.to_string()))?;
        connection.outbox().close(CloseCode::DisconnectedByApi);
        Ok(())
    }

    /// Lists this node's connections, optionally only `user`'s, oldest first.
    pub fn connections(&self, user: Option<&UserId>) -> Vec<ConnectionSummary> {
        let node = &self.node;
        let now = node.now_ms();
        let mut list = match user {
            Some(user) => node.connections.user_connections(user),
            None => node.connections.all(),
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
        self.node.topics.topic(topic)
    }

    /// A topic's epoch and at most `limit` retained publications after offset `after`, as
    /// `(offset, data)` pairs, oldest first; `None` for an unknown topic.
    pub fn history(&self, topic: &Topic, after: u64, limit: usize) -> Option<TopicHistory> {
        let (epoch, entries) = self
            .node
            .topics
            .history(topic, after, limit, self.node.now_ms())?;
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

    /// Records that a socket write carried a live publication's frame that the gateway
    /// accepted at `accepted` ([`Frame::accepted`](crate::Frame::accepted)): the delivery
    /// latency, measured on the gateway's clock. A transport calls it once per write, with the
    /// earliest acceptance among the frames the write carried.
    pub fn record_delivery(&self, accepted: Instant) {
        self.node.record_delivery(accepted);
    }

    /// The delivery latency histogram, for `/metrics`.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.node.latency
    }

    /// Every count, now: the levels read from the indexes, the totals from the gateway's
    /// counters, the recent delivery latency and memory from the memory probe.
    pub fn stats(&self) -> Stats {
        let node = &self.node;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let memory = node.memory.read();
        let mut stats = Stats {
            connections: count(node.connections.len()),
            users: count(node.connections.user_count()),
            subscriptions: count(node.topics.subscription_count()),
            topics: count(node.topics.topic_count()),
            latency: node.latency.stats(),
            memory: MemoryStats {
                rss_bytes: memory.resident_bytes,
                used_bytes: memory.used_bytes,
                allocated_bytes: memory.allocated_bytes,
                limit_bytes: memory.limit_bytes,
                pressure_percent: memory.pressure_percent(),
            },
            ..Stats::default()
        };
        stats.events.pending = count(node.events.total());
        stats.operations.queued = count(node.operations.len());
        stats.history.bytes = count(node.topics.history_store().bytes());
        stats.redis = node.redis_stats();
        node.counters.fill(&mut stats);
        stats
    }

    /// One pass of the heartbeat and timeout sweep; call it about every quarter second.
    ///
    /// Queues a server `ping` to connections due one, and closes connections that did not
    /// authenticate in time (4001), whose token expired (4003) or that were silent for the
    /// stale timeout (4000). Redelivers and expires critical events, and (once a second) drops
    /// topics past their retention, expired history and dedupe ids, and full rate buckets.
    pub fn sweep(&self) -> SweepReport {
        sweep(&self.node)
    }

    /// Starts a graceful shutdown: refuse new connections and operations, and ask every
    /// connection to flush its queue and close with 1001. The worker finishes the operations
    /// already queued (publications among them are refused) and then returns.
    pub fn begin_shutdown(&self) {
        if !self.node.begin_shutdown() {
            return;
        }
        self.node.connections.for_each(|connection| {
            connection.outbox().close(CloseCode::GoingAway);
        });
        self.node.operations.wake();
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.node.is_shutting_down()
    }
}

impl StatsSource for Gateway {
    fn stats(&self) -> Stats {
        Self::stats(self)
    }
}

/// The gateway's part of `/health`: `draining` once shutdown began (not ready, nothing wrong),
/// `degraded` while the operation queue is nine tenths full, else `ok`, with its connections,
/// their limit and the queue's depth.
impl HealthCheck for Gateway {
    fn name(&self) -> &'static str {
        "gateway"
    }

    fn check(&self) -> CheckResult {
        let settings = &self.node.settings;
        let queued = self.node.operations.len();
        // Nine tenths full: publishers are about to get 429s.
        let backlogged =
            queued.saturating_mul(10) >= settings.operation_queue_size.saturating_mul(9);
        let result = if self.is_shutting_down() {
            CheckResult::new(CheckStatus::Draining)
        } else if backlogged {
            CheckResult::new(CheckStatus::Degraded)
                .with_message("the operation queue is nearly full: fan-out cannot keep up")
        } else {
            CheckResult::new(CheckStatus::Ok)
        };
        result
            .with_value("connections", self.node.connections.len() as u64)
            .with_value("maxConnections", settings.max_connections as u64)
            .with_value("operationsQueued", queued as u64)
            .with_value("operationQueueSize", settings.operation_queue_size as u64)
    }
}

/// What an operation's reply carries. Every operation performed is answered; a dropped reply
/// means the operation was dropped unperformed, which only happens when the gateway goes away.
async fn replied<T>(
    receiver: oneshot::Receiver<Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    receiver.await.unwrap_or(Err(GatewayError::ShuttingDown))
}
