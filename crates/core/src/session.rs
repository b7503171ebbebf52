//! The [`Session`]: one connection's life on the server side, from opening through
//! authentication and its client frames to the one cleanup path when it is dropped.

use std::{cell::Cell, sync::Arc};

use herald_protocol::{
    ClientFrame, ClientRequest, CloseCode, ConnectedData, ErrorCode, ErrorDetail, ProtocolError,
    RefreshResult, RequestKind, ServerMessage, StreamPosition, SubscribeResult, Topic,
    parse_client_frame,
};
use herald_utils::Priority;
use serde_json::{Map, Value, json, value::RawValue};

use crate::{
    auth::Principal,
    connection::{Connection, LimitExceeded, LimitPolicy, NO_DEADLINE, Slot, UserPlace},
    error::GatewayError,
    history::HistoryEntry,
    ids::{IsolationKey, ThreadId, UserId},
    node::Node,
    operations::{Operation, PublishReply},
    outbox::{Frame, Outbox},
    preferences::batching_preference,
    publish::Publication,
    rate::ABUSE_THRESHOLD,
    subscription::{SubscribeError, TopicPosition},
    time::duration_ms,
};

/// One connection's server side: handles its client frames and, when dropped, runs the one
/// cleanup path that removes it from every index.
///
/// The transport owns the session for as long as the socket lives, feeds it every text frame
/// with [`Session::on_text`] and writes what [`Connection::outbox`] yields.
pub struct Session {
    node: Arc<Node>,
    connection: Arc<Connection>,
    principal: Option<Principal>,
    /// Client requests refused in a row by the rate limit or a tier quota (4008 at the abuse
    /// threshold); an accepted client write (`publish`, `update_preferences`) clears it.
    refusals: Cell<u32>,
    /// WebSocket messages the client sent (text, binary, ping, pong and close), as counted by
    /// the transport; logged with `closed`.
    frames_in: u32,
    /// Frames the transport took from the outbox to write; logged with `closed`.
    frames_out: u32,
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
        self.node.cleanup(&self.connection);
    }
}

impl Session {
    /// Opens the session of an admitted connection holding `slot`: indexes it and, with a
    /// `principal` from the handshake, registers it and queues `connected` at once; without
    /// one it must send `auth` within the auth timeout. `place` is the place under the user's
    /// limit promised at the handshake, if any.
    pub(crate) fn open(
        node: Arc<Node>,
        slot: Slot,
        thread: Option<ThreadId>,
        principal: Option<Principal>,
        place: Option<UserPlace>,
    ) -> Self {
        let now = node.now_ms();
        let settings = &node.settings;
        let connection = Arc::new(Connection::new(
            node.connections.next_id(),
            thread,
            Outbox::new(settings.max_queue_size, settings.max_queue_bytes),
            node.unix_ms(),
            now,
        ));
        connection.set_deadline_ms(now.saturating_add(duration_ms(settings.auth_timeout)));
        node.connections.insert(Arc::clone(&connection));
        // Admitted before a shutdown began but opened after it: `begin_shutdown` may not have
        // seen this connection, so it closes itself the same way.
        if node.is_shutting_down() {
            connection.outbox().close(CloseCode::GoingAway);
        }
        node.counters.connections_opened.increment();
        tracing::info!(connection_id = %connection.id(), "connected");
        let mut session = Self {
            node,
            connection,
            principal: None,
            refusals: Cell::new(0),
            frames_in: 0,
            frames_out: 0,
            _slot: slot,
        };
        if let Some(principal) = principal {
            session.authenticate(principal, None, place);
        }
        session
    }

    /// The connection.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Whether the connection has authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.principal.is_some()
    }

    /// Counts one WebSocket message from the client (any kind); the transport calls this.
    pub fn count_frame_in(&mut self) {
        self.frames_in = self.frames_in.saturating_add(1);
    }

    /// Counts `frames` taken from the outbox to be written; the transport calls this.
    pub fn count_frames_out(&mut self, frames: usize) {
        let frames = u32::try_from(frames).unwrap_or(u32::MAX);
        self.frames_out = self.frames_out.saturating_add(frames);
    }

    /// WebSocket messages the client sent, as counted with [`Session::count_frame_in`].
    pub fn frames_in(&self) -> u32 {
        self.frames_in
    }

    /// Frames written to the client, as counted with [`Session::count_frames_out`].
    pub fn frames_out(&self) -> u32 {
        self.frames_out
    }

    /// How long the connection has been open, in milliseconds (the gateway's wall clock).
    pub fn duration_ms(&self) -> u64 {
        self.node
            .unix_ms()
            .saturating_sub(self.connection.connected_at_unix_ms())
    }

    /// Records inbound activity (any frame, including WebSocket pings and pongs).
    pub fn touch(&self) {
        self.connection.touch(self.node.now_ms());
    }

    /// Handles one inbound text frame: parse, route, and queue the reply.
    pub fn on_text(&mut self, text: &str) {
        self.touch();
        let frame = match parse_client_frame(text, &self.node.settings.limits) {
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
                let unsubscribed = self.node.topics.unsubscribe(&self.connection, &topic);
                self.log_unsubscribed(&topic, unsubscribed);
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
                        let unsubscribed = self.node.topics.unsubscribe(&self.connection, topic);
                        self.log_unsubscribed(topic, unsubscribed);
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
                let max = tier_quota(&self.node.settings.tier_publish_bytes, &principal);
                if data.get().len() > max {
                    let message = format!(
                        "tier `{}` may publish at most {max} bytes of data; this is {}",
                        principal.tier,
                        data.get().len()
                    );
                    self.reply_error(message_id, ErrorCode::PayloadTooLarge, message);
                    self.strike();
                    return;
                }
                self.refusals.set(0);
                self.on_publish(topic, data, id, message_id);
            }
            ClientRequest::Ping => self.reply(ServerMessage::Pong {
                timestamp,
                message_id,
            }),
            // A pong needs no answer, but one that carries a `messageId` gets its one reply
            // like every other request.
            ClientRequest::Pong => self.ack(message_id, json!({})),
            ClientRequest::GetPreferences => {
                let connection = Arc::clone(&self.connection);
                let node = Arc::downgrade(&self.node);
                self.node.preferences.get(
                    &principal.user,
                    Box::new(move |result| {
                        let Some(node) = node.upgrade() else {
                            return;
                        };
                        let message = match result {
                            Ok(data) => ServerMessage::Preferences {
                                message_id,
                                data: Value::Object(data),
                            },
                            Err(error) => {
                                node.counters.broker_failures.increment();
                                ServerMessage::error(
                                    message_id,
                                    ErrorCode::Unavailable,
                                    error.to_string(),
                                )
                            }
                        };
                        reply_to(&connection, &node, message);
                    }),
                );
            }
            ClientRequest::UpdatePreferences { patch } => {
                self.refusals.set(0);
                self.on_update_preferences(&principal.user, patch, message_id)
            }
            ClientRequest::Ack { ids } => self.on_ack(ids, message_id),
        }
    }

    /// Queues the client's publication for the fan-out worker, which queues the `ack` (or
    /// error) to this connection once it is performed; a full queue is refused at once.
    fn on_publish(
        &self,
        topic: Topic,
        data: Box<RawValue>,
        id: Option<String>,
        message_id: Option<String>,
    ) {
        let operation = Operation::Publish(
            Publication {
                topic,
                data,
                priority: Priority::Normal,
                id,
            },
            PublishReply::Ack {
                connection: Arc::clone(&self.connection),
                message_id: message_id.clone(),
            },
        );
        if let Err(error) = self.node.enqueue(operation) {
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

    /// Takes a token of the user's tier rate; when none is left, replies `rate_limited` with
    /// `retryAfter`, and closes 4008 after too many refusals in a row.
    fn within_rate(&mut self, principal: &Principal, message_id: Option<&str>) -> bool {
        let per_minute = self.node.messages_per_minute(principal);
        match self
            .node
            .rate
            .try_take(&principal.user, per_minute, self.node.now_ms())
        {
            Ok(()) => true,
            Err(wait_ms) => {
                self.node.counters.rate_limited.increment();
                tracing::info!(
                    connection_id = %self.connection.id(),
                    user = %principal.user,
                    tier = %principal.tier,
                    retry_after_ms = wait_ms,
                    messages_per_minute = per_minute,
                    refusals = self.refusals.get() + 1,
                    "rate limited"
                );
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
                self.strike();
                false
            }
        }
    }

    fn on_auth(&mut self, token: &str, message_id: Option<String>) {
        let refusal = match self
            .node
            .authenticator
            .authenticate(token, self.node.unix_ms())
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

    /// Registers the connection under its user and queues `connected` (then the `auth` ack),
    /// then the user's pending events. `place` is the one promised at the handshake, if any.
    fn authenticate(
        &mut self,
        principal: Principal,
        message_id: Option<String>,
        place: Option<UserPlace>,
    ) {
        let node = Arc::clone(&self.node);
        let limit = node.user_limit(&principal);
        let policy = node.settings.user_limit_policy;
        let refuse = |session: &Self, message_id: Option<String>, exceeded: LimitExceeded| {
            session.reply_error(message_id, ErrorCode::LimitExceeded, exceeded.to_string());
            session.connection.outbox().close(CloseCode::Refused);
        };
        // Under `reject` the place is promised before `connected` and the ack are queued, so
        // that of several concurrent `auth`s none is acknowledged and then refused.
        let place = match place {
            None if policy == LimitPolicy::Reject => {
                match node.connections.reserve_user_place(&principal.user, limit) {
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
        self.connection.set_last_ping_ms(node.now_ms());
        let connection = Arc::clone(&self.connection);
        node.preferences.get(
            &principal.user,
            Box::new(move |result| {
                // Unreadable preferences leave batching on, the default.
                if let Ok(preferences) = result {
                    connection.set_batching(batching_preference(&preferences));
                }
            }),
        );
        self.reply(ServerMessage::Connected {
            data: ConnectedData {
                connection_id: self.connection.id().to_string(),
                user_id: principal.user.to_string(),
                tier: principal.tier.to_string(),
                heartbeat_interval: duration_ms(node.settings.heartbeat_interval),
                max_payload: node.settings.limits.max_frame_bytes as u64,
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
        let registered = node.events.register(
            &self.connection,
            &key,
            node.now_ms(),
            &node.counters,
            || {
                node.connections
                    .register_user(&self.connection, key.clone(), limit, policy, place)
            },
        );
        if let Err(exceeded) = registered {
            refuse(self, message_id, exceeded);
            return;
        }
        node.fetch_pending(&self.connection, key, false);
        tracing::info!(
            connection_id = %self.connection.id(),
            user = %principal.user,
            tier = %principal.tier,
            "authenticated"
        );
        self.principal = Some(principal);
    }

    fn refresh(&mut self, principal: Principal, message_id: Option<String>) {
        self.set_expiry(&principal);
        let expires_at = principal.expires_at_ms;
        self.principal = Some(principal);
        self.ack(message_id, RefreshResult { expires_at }.to_value());
    }

    /// Moves the connection's deadline to the token's expiry: the wall-clock time left until
    /// it, both read from the gateway's clock, turned into a deadline on the gateway clock.
    fn set_expiry(&self, principal: &Principal) {
        let remaining = principal.close_at_ms.saturating_sub(self.node.unix_ms());
        let deadline = self.node.now_ms().saturating_add(remaining);
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
        let node = &self.node;
        let limit = tier_quota(&node.settings.tier_subscriptions, principal)
            .min(node.settings.max_subscriptions_per_connection);
        node.topics
            .subscribe(
                &self.connection,
                topic,
                limit,
                node.now_ms(),
                since,
                |position: &TopicPosition, replay: Option<Vec<HistoryEntry>>| {
                    // `recovered` tells a resuming client that the replay below closes its gap.
                    let recovered = since.is_some() && replay.is_some();
                    if since.is_some() {
                        let resumes = if recovered {
                            &node.counters.resumes_recovered
                        } else {
                            &node.counters.resumes_unrecovered
                        };
                        resumes.increment();
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
                        self.connection.outbox().offer(
                            entry.frame,
                            Priority::Normal,
                            &node.counters,
                        );
                    }
                    (result, position.last_offset, recovered)
                },
            )
            // Logged once the topic's lock is released.
            .map(|(result, offset, recovered)| {
                tracing::debug!(
                    connection_id = %self.connection.id(),
                    topic = %topic,
                    offset,
                    resumed = since.is_some(),
                    recovered,
                    "subscribed"
                );
                result
            })
            .map_err(|SubscribeError::LimitReached { limit }| {
                self.strike();
                ProtocolError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "subscription limit of {limit} per connection reached (tier `{}`)",
                        principal.tier
                    ),
                )
            })
    }

    /// Removes the acknowledged events here and, in a cluster, from the shared store (which
    /// tells the other nodes); the `ack` counts the events removed.
    fn on_ack(&self, ids: Vec<String>, message_id: Option<String>) {
        let Some(key) = self.connection.key() else {
            self.ack(message_id, json!({ "acknowledged": 0 }));
            return;
        };
        let acknowledged =
            self.node
                .events
                .acknowledge(key, &ids, self.node.now_ms(), &self.node.counters);
        let Some(store) = self.node.event_store() else {
            self.ack(message_id, json!({ "acknowledged": acknowledged }));
            return;
        };
        let connection = Arc::clone(&self.connection);
        let node = Arc::downgrade(&self.node);
        store.acknowledge(
            &key.user,
            key.thread.as_ref(),
            ids,
            Box::new(move |result| {
                let Some(node) = node.upgrade() else {
                    return;
                };
                let message = match result {
                    Ok(removed) => message_id.map(|message_id| ServerMessage::Ack {
                        message_id,
                        data: json!({ "acknowledged": removed.len().max(acknowledged) }),
                    }),
                    Err(error) => {
                        node.counters.broker_failures.increment();
                        tracing::warn!(%error, "an acknowledgement did not reach the event store");
                        Some(ServerMessage::error(
                            message_id,
                            ErrorCode::Unavailable,
                            error.to_string(),
                        ))
                    }
                };
                if let Some(message) = message {
                    reply_to(&connection, &node, message);
                }
            }),
        );
    }

    fn on_update_preferences(
        &self,
        user: &UserId,
        patch: Map<String, Value>,
        message_id: Option<String>,
    ) {
        let connection = Arc::clone(&self.connection);
        let node = Arc::downgrade(&self.node);
        let owner = user.clone();
        self.node.preferences.update(
            user,
            patch,
            Box::new(move |result| {
                let Some(node) = node.upgrade() else {
                    return;
                };
                let updated = match result {
                    Ok(updated) => updated,
                    Err(error) => {
                        node.counters.broker_failures.increment();
                        let message = ServerMessage::error(
                            message_id,
                            ErrorCode::Unavailable,
                            error.to_string(),
                        );
                        reply_to(&connection, &node, message);
                        return;
                    }
                };
                let batching = batching_preference(&updated);
                let updated = Value::Object(updated);
                let push = Frame::from(
                    ServerMessage::Preferences {
                        message_id: None,
                        data: updated.clone(),
                    }
                    .encode(),
                );
                for other in node.connections.user_connections(&owner) {
                    other.set_batching(batching);
                    if other.id() != connection.id() {
                        other
                            .outbox()
                            .offer(push.clone(), Priority::Critical, &node.counters);
                    }
                }
                if let Some(message_id) = message_id {
                    let ack = ServerMessage::Ack {
                        message_id,
                        data: updated,
                    };
                    reply_to(&connection, &node, ack);
                }
            }),
        );
    }

    fn log_unsubscribed(&self, topic: &Topic, unsubscribed: bool) {
        tracing::debug!(
            connection_id = %self.connection.id(),
            topic = %topic,
            unsubscribed,
            "unsubscribed"
        );
    }

    fn ack(&self, message_id: Option<String>, data: Value) {
        if let Some(message_id) = message_id {
            self.reply(ServerMessage::Ack { message_id, data });
        }
    }

    /// Counts a request refused by the rate limit or a tier quota; at [`ABUSE_THRESHOLD`]
    /// refusals in a row the connection is closed 4008 (it keeps breaking its limits).
    fn strike(&self) {
        let refusals = self.refusals.get() + 1;
        self.refusals.set(refusals);
        if refusals >= ABUSE_THRESHOLD {
            self.connection.outbox().close(CloseCode::RateLimited);
        }
    }

    fn reply_error(&self, message_id: Option<String>, code: ErrorCode, message: impl Into<String>) {
        self.reply(ServerMessage::error(message_id, code, message));
    }

    /// Queues a reply. Replies are never shed; when even a reply cannot be queued, the
    /// connection is closed 4009.
    fn reply(&self, message: ServerMessage) {
        self.connection.outbox().offer(
            Frame::from(message.encode()),
            Priority::Critical,
            &self.node.counters,
        );
    }
}

/// Queues a reply from a store's answer, like [`Session::reply`].
fn reply_to(connection: &Connection, node: &Node, message: ServerMessage) {
    connection.outbox().offer(
        Frame::from(message.encode()),
        Priority::Critical,
        &node.counters,
    );
}

/// The principal's tier's value in a per-tier table; a tier the table lacks (only possible
/// with settings built by hand) has no tier limit, the global one applies.
fn tier_quota(table: &std::collections::HashMap<String, usize>, principal: &Principal) -> usize {
    table.get(&*principal.tier).copied().unwrap_or(usize::MAX)
}
