//! The task behind a [`crate::Client`]: it owns the socket and every piece of state, opens
//! connections, reconnects on its backoff schedule, resubscribes, answers heartbeats, refreshes
//! the token and turns server frames into [`ClientEvent`]s.

use std::{
    collections::HashMap,
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use herald_protocol::{
    ClientFrame, ClientRequest, ConnectedData, ErrorDetail, PublishResponse, ServerMessage,
    SubscribeResult, Topic,
};
use serde_json::{Map, Value, value::RawValue};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _, handshake::client::Request},
};

use crate::{
    backoff::Jitter,
    book::{EventVerdict, MessageVerdict, SeenEvents, Topics},
    config::{AckMode, ClientConfig},
    error::ClientError,
    event::{ClientEvent, ConnectionState, CriticalEvent, EventDone, Push, TopicMessage},
    token::{SharedProvider, TokenError, remaining_validity, token_expiry_ms, unix_now_ms},
};

/// A WebSocket connection to Herald.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// What opening a connection yields.
pub(crate) type DialFuture =
    Pin<Box<dyn Future<Output = Result<Socket, tungstenite::Error>> + Send>>;
/// Opens a connection for an upgrade request; a seam so tests can fail attempts without I/O.
pub(crate) type Dial = Arc<dyn Fn(Request) -> DialFuture + Send + Sync>;
/// A token fetch in flight.
type TokenFetch = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;
/// A one-shot answer to a [`crate::Client`] request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// Opens real connections with tokio-tungstenite.
pub(crate) fn tungstenite_dial() -> Dial {
    Arc::new(|request| {
        Box::pin(async move {
            tokio_tungstenite::connect_async(request)
                .await
                .map(|(socket, _)| socket)
        })
    })
}

/// What a [`crate::Client`] asks of its driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Subscribe now (or on the next connection) and after every reconnect.
    Subscribe {
        /// The topic.
        topic: Topic,
        /// Answered with the subscribe ack.
        reply: Reply<SubscribeResult>,
    },
    /// Stop resubscribing and unsubscribe.
    Unsubscribe {
        /// The topic.
        topic: Topic,
        /// Answered with `unsubscribed`.
        reply: Reply<bool>,
    },
    /// Publish from the client.
    Publish {
        /// The topic.
        topic: Topic,
        /// The payload.
        data: Box<RawValue>,
        /// The dedupe id.
        id: Option<String>,
        /// Answered with the publish ack.
        reply: Reply<PublishResponse>,
    },
    /// `get_preferences`.
    GetPreferences {
        /// Answered with the preferences.
        reply: Reply<Map<String, Value>>,
    },
    /// `update_preferences`.
    UpdatePreferences {
        /// The keys to replace (`null` removes one).
        patch: Map<String, Value>,
        /// Answered with the preferences after the change.
        reply: Reply<Map<String, Value>>,
    },
    /// Close for good.
    Close,
}

/// A request waiting for its reply, by `messageId`.
#[derive(Debug)]
enum Waiting {
    /// A subscribe (or resubscribe); the callers waiting for its ack.
    Subscribe(Topic, Vec<Reply<SubscribeResult>>),
    /// An unsubscribe.
    Unsubscribe(Reply<bool>),
    /// A publish.
    Publish(Reply<PublishResponse>),
    /// `get_preferences` or `update_preferences`.
    Preferences(Reply<Map<String, Value>>),
    /// A token refresh (`auth` on the open connection).
    Refresh,
}

/// How a connection, or an attempt at one, ended.
#[derive(Debug)]
enum Ended {
    /// The application closed the client.
    Closed,
    /// The connection ended or could not be opened.
    Lost {
        /// The close code (401 at the upgrade counts as 4001).
        code: Option<u16>,
        /// The close reason or what failed.
        reason: String,
        /// Whether it must not be retried whatever the code (a bad URL, a refused upgrade
        /// that a retry cannot fix).
        fatal: bool,
        /// How long the connection was authenticated; zero when it never was.
        lasted: Duration,
    },
}

impl Ended {
    /// A failure before a connection was established.
    fn early(code: Option<u16>, reason: impl Into<String>, fatal: bool) -> Self {
        Self::Lost {
            code,
            reason: reason.into(),
            fatal,
            lasted: Duration::ZERO,
        }
    }
}

/// What woke a connection up.
enum Input {
    /// A WebSocket message, or the end of the stream.
    Socket(Option<Result<Message, tungstenite::Error>>),
    /// A command; `None` when every [`crate::Client`] handle is gone.
    Command(Option<Command>),
    /// The application finished with a critical event.
    Done(EventDone),
    /// The heartbeat deadline passed.
    Heartbeat,
    /// Time to refresh the token.
    RefreshDue,
    /// A token fetch finished.
    Token(Result<String, TokenError>),
}

/// The token in use and when to replace it.
#[derive(Debug, Clone)]
struct CachedToken {
    /// The JWT.
    token: String,
    /// When to refresh it (its `exp` less the margin); `None` when its expiry is unknown.
    refresh_at: Option<Instant>,
    /// Its `exp`, in ms since the Unix epoch.
    expires_at_ms: Option<u64>,
}

/// The driver's state; see the module docs.
pub(crate) struct Driver {
    /// The configuration.
    config: ClientConfig,
    /// Where tokens come from.
    provider: SharedProvider,
    /// How connections are opened.
    dial: Dial,
    /// Requests from the application.
    commands: mpsc::Receiver<Command>,
    /// Events to the application.
    events: mpsc::Sender<ClientEvent>,
    /// Given to each critical event to report back.
    done_tx: mpsc::UnboundedSender<EventDone>,
    /// What the critical events report.
    done_rx: mpsc::UnboundedReceiver<EventDone>,
    /// The subscribed topics and their positions.
    topics: Topics,
    /// Callers of `subscribe` waiting for the next connection, by topic.
    waiting: HashMap<String, Vec<Reply<SubscribeResult>>>,
    /// The critical events handed to the application.
    seen: SeenEvents,
    /// The token in use.
    token: Option<CachedToken>,
    /// A token fetch in flight, shared by refreshes and reconnects so a token is fetched once.
    fetch: Option<TokenFetch>,
    /// Attempts since the last stable connection.
    attempt: u32,
    /// Tokens refused in a row (401 at the upgrade, close 4001).
    auth_failures: u32,
    /// Randomness for the backoff.
    jitter: Jitter,
    /// The last `messageId` number used.
    next_id: u64,
}

impl Driver {
    /// A driver; [`Driver::run`] does the work.
    pub(crate) fn new(
        config: ClientConfig,
        provider: SharedProvider,
        dial: Dial,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<ClientEvent>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let seen = SeenEvents::new(config.remembered_events);
        Self {
            config,
            provider,
            dial,
            commands,
            events,
            done_tx,
            done_rx,
            topics: Topics::default(),
            waiting: HashMap::new(),
            seen,
            token: None,
            fetch: None,
            attempt: 0,
            auth_failures: 0,
            jitter: Jitter::from_entropy(),
            next_id: 0,
        }
    }

    /// Uses `jitter` for the backoff, for repeatable tests.
    #[cfg(test)]
    pub(crate) fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Connects, and reconnects after every drop, until the application closes the client or a
    /// close code says not to come back.
    pub(crate) async fn run(mut self) {
        loop {
            self.emit(ClientEvent::State(ConnectionState::Connecting {
                attempt: self.attempt,
            }))
            .await;
            let ended = self.connect_and_serve().await;
            let Ended::Lost {
                code,
                reason,
                fatal,
                lasted,
            } = ended
            else {
                return self.finish(Some(1000), "closed by the application").await;
            };
            self.emit(ClientEvent::State(ConnectionState::Disconnected {
                code,
                reason: reason.clone(),
            }))
            .await;
            if matches!(code, Some(4001 | 4003)) {
                // Refused or expired: the next attempt needs a new token.
                self.token = None;
            }
            if code == Some(4001) {
                self.auth_failures += 1;
            }
            let terminal = fatal
                || code.is_some_and(|code| self.config.is_terminal(code))
                || self.auth_failures >= 3;
            if terminal {
                return self.finish(code, &reason).await;
            }
            if lasted >= self.config.backoff.reset_period() {
                self.attempt = 0;
            }
            self.attempt = self.attempt.saturating_add(1);
            let delay = self
                .config
                .backoff
                .delay(self.attempt, self.jitter.next_unit());
            self.emit(ClientEvent::State(ConnectionState::Reconnecting {
                attempt: self.attempt,
                delay,
            }))
            .await;
            if self.wait_offline(Instant::now() + delay).await.is_err() {
                return self.finish(Some(1000), "closed by the application").await;
            }
        }
    }

    /// Ends the client: fails every waiting caller and reports the close.
    async fn finish(&mut self, code: Option<u16>, reason: &str) {
        for (_, waiters) in self.waiting.drain() {
            for waiter in waiters {
                let _ = waiter.send(Err(ClientError::Closed));
            }
        }
        self.emit(ClientEvent::State(ConnectionState::Closed {
            code,
            reason: reason.to_owned(),
        }))
        .await;
    }

    /// Gets a token, opens a connection and serves it until it ends.
    async fn connect_and_serve(&mut self) -> Ended {
        let token = match self.current_token().await {
            Ok(token) => token,
            Err(error) => {
                let reason = format!("token provider failed: {error}");
                self.emit(ClientEvent::Error(ClientError::Token(error)))
                    .await;
                return Ended::early(None, reason, false);
            }
        };
        let request = match self.upgrade_request(&token) {
            Ok(request) => request,
            Err(ended) => return ended,
        };
        let dial = (self.dial)(request);
        let socket = match tokio::time::timeout(self.config.connect_timeout, dial).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => return refused_upgrade(&error),
            Err(_) => {
                return Ended::early(None, "timed out opening the connection", false);
            }
        };
        self.serve(socket).await
    }

    /// The token to connect with: the cached one while it is fresh, else the one being
    /// fetched, else a new fetch.
    async fn current_token(&mut self) -> Result<String, TokenError> {
        if let Some(cached) = &self.token
            && cached.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(cached.token.clone());
        }
        let fetch = self.fetch.take().unwrap_or_else(|| self.start_fetch());
        let token = fetch.await?;
        self.cache(token.clone());
        Ok(token)
    }

    /// Starts asking the provider for a token.
    fn start_fetch(&self) -> TokenFetch {
        let provider = Arc::clone(&self.provider);
        Box::pin(async move { provider.token().await })
    }

    /// Keeps `token` as the one in use.
    fn cache(&mut self, token: String) {
        let now_ms = unix_now_ms();
        let refresh_at = remaining_validity(&token, now_ms)
            .map(|left| Instant::now() + left.saturating_sub(self.config.refresh_before_expiry));
        let expires_at_ms = token_expiry_ms(&token);
        self.token = Some(CachedToken {
            token,
            refresh_at,
            expires_at_ms,
        });
    }

    /// The upgrade request: the URL with `?thread=`, the token as a bearer header, and the
    /// `herald.v1` subprotocol.
    fn upgrade_request(&self, token: &str) -> Result<Request, Ended> {
        let url = match &self.config.thread {
            Some(thread) => {
                let join = if self.config.url.contains('?') {
                    '&'
                } else {
                    '?'
                };
                format!("{}{join}thread={}", self.config.url, percent_encode(thread))
            }
            None => self.config.url.clone(),
        };
        let mut request = url
            .into_client_request()
            .map_err(|error| Ended::early(None, format!("invalid url: {error}"), true))?;
        let bearer = format!("Bearer {token}").parse().map_err(|_| {
            Ended::early(Some(4001), "the token is not a valid header value", false)
        })?;
        request.headers_mut().insert("authorization", bearer);
        request
            .headers_mut()
            .insert("sec-websocket-protocol", http_value("herald.v1"));
        Ok(request)
    }

    /// Waits until `until` without a connection, serving commands; `Err` when the
    /// application closed the client.
    async fn wait_offline(&mut self, until: Instant) -> Result<(), ()> {
        loop {
            tokio::select! {
                () = sleep_until(until) => return Ok(()),
                command = self.commands.recv() => match command {
                    None | Some(Command::Close) => return Err(()),
                    Some(command) => self.command_offline(command),
                },
                Some(done) = self.done_rx.recv() => self.seen.finished(&done.id, done.ack),
            }
        }
    }

    /// Serves a command while there is no connection.
    fn command_offline(&mut self, command: Command) {
        match command {
            Command::Subscribe { topic, reply } => {
                self.topics.add(topic.as_str());
                self.waiting
                    .entry(topic.as_str().to_owned())
                    .or_default()
                    .push(reply);
            }
            Command::Unsubscribe { topic, reply } => {
                self.forget_topic(topic.as_str());
                let _ = reply.send(Ok(false));
            }
            Command::Publish { reply, .. } => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            Command::GetPreferences { reply } | Command::UpdatePreferences { reply, .. } => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            // Handled by the callers, which stop.
            Command::Close => {}
        }
    }

    /// Stops resubscribing `topic`; whoever waited for its next subscription gets
    /// `NotConnected`.
    fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
        for waiter in self.waiting.remove(topic).unwrap_or_default() {
            let _ = waiter.send(Err(ClientError::NotConnected));
        }
    }

    /// Hands `event` to the application; if it went away, the client keeps working for the
    /// requests it may still make.
    async fn emit(&mut self, event: ClientEvent) {
        let _ = self.events.send(event).await;
    }

    /// Serves one open connection until it ends.
    async fn serve(&mut self, mut socket: Socket) -> Ended {
        let mut connection = Connection::new(&self.config);
        let ended = loop {
            let input = self.next_input(&mut socket, &connection).await;
            let step = match input {
                Input::Socket(Some(Ok(message))) => {
                    connection.heard();
                    self.on_socket_message(&mut socket, &mut connection, message)
                        .await
                }
                Input::Socket(Some(Err(error))) => Err(connection.lost(error.to_string())),
                Input::Socket(None) => Err(connection.lost("connection closed")),
                Input::Command(None | Some(Command::Close)) => {
                    let _ = socket.close(None).await;
                    Err(Ended::Closed)
                }
                Input::Command(Some(command)) => {
                    self.on_command(&mut socket, &mut connection, command).await
                }
                Input::Done(done) => self.on_done(&mut socket, done).await,
                Input::Heartbeat => match connection.heartbeat() {
                    Beat::Stale => Err(connection.lost("no frame from the server in time")),
                    Beat::Ping => send(&mut socket, ClientRequest::Ping, None).await,
                    Beat::Wait => Ok(()),
                },
                Input::RefreshDue => {
                    connection.refresh_due = None;
                    if self.fetch.is_none() {
                        self.fetch = Some(self.start_fetch());
                    }
                    Ok(())
                }
                Input::Token(result) => {
                    self.fetch = None;
                    self.on_refresh_token(&mut socket, &mut connection, result)
                        .await
                }
            };
            if let Err(ended) = step {
                break ended;
            }
        };
        // A failed write knows neither the close frame nor how long the connection lasted.
        let ended = match ended {
            Ended::Lost {
                code: None,
                reason,
                fatal: false,
                ..
            } => connection.lost(reason),
            other => other,
        };
        self.connection_lost(std::mem::take(&mut connection.waiting));
        ended
    }

    /// Waits for whatever happens next on a connection.
    async fn next_input(&mut self, socket: &mut Socket, connection: &Connection) -> Input {
        let heartbeat_at = connection.heartbeat_at();
        let refresh_at = connection.refresh_due.filter(|_| self.fetch.is_none());
        let fetching = self.fetch.is_some();
        let fetch = &mut self.fetch;
        tokio::select! {
            message = socket.next() => Input::Socket(message),
            command = self.commands.recv() => Input::Command(command),
            Some(done) = self.done_rx.recv() => Input::Done(done),
            () = sleep_until(heartbeat_at) => Input::Heartbeat,
            () = sleep_until_some(refresh_at) => Input::RefreshDue,
            result = poll_fn(|cx| match fetch.as_mut() {
                Some(future) => future.as_mut().poll(cx),
                None => Poll::Pending,
            }), if fetching => Input::Token(result),
        }
    }

    /// Handles one WebSocket message.
    async fn on_socket_message(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        message: Message,
    ) -> Result<(), Ended> {
        match message {
            Message::Text(text) => {
                for frame in decode_frames(text.as_str()) {
                    self.on_frame(socket, connection, frame).await?;
                }
                Ok(())
            }
            Message::Close(frame) => {
                if let Some(frame) = frame {
                    connection.close = Some((u16::from(frame.code), frame.reason.to_string()));
                }
                // tungstenite answers the close; the stream ends next.
                Ok(())
            }
            // Protocol pings are answered by tungstenite; Herald sends no binary frames.
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    /// Handles one server frame (batches are already unpacked).
    async fn on_frame(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        frame: ServerMessage,
    ) -> Result<(), Ended> {
        match frame {
            ServerMessage::Connected { data } => self.on_connected(socket, connection, data).await,
            ServerMessage::Ack { message_id, data } => {
                self.on_ack(connection, &message_id, data).await;
                Ok(())
            }
            ServerMessage::Error { message_id, error } => {
                self.on_error(connection, message_id.as_deref(), error)
                    .await;
                Ok(())
            }
            ServerMessage::Message {
                topic,
                data,
                offset,
                epoch,
            } => {
                match self.topics.on_message(topic.as_str(), offset, &epoch) {
                    MessageVerdict::Deliver => {
                        self.emit(ClientEvent::Message(TopicMessage {
                            topic: topic.as_str().to_owned(),
                            data,
                            offset,
                            epoch,
                        }))
                        .await;
                    }
                    MessageVerdict::Gap(_) => {
                        // Frames were shed: the replay after the ack closes the gap.
                        self.send_subscribe(socket, connection, topic, Vec::new())
                            .await?;
                    }
                    MessageVerdict::Repeat | MessageVerdict::Ignore => {}
                }
                Ok(())
            }
            ServerMessage::Push { data, scope } => {
                self.emit(ClientEvent::Push(Push { data, scope })).await;
                Ok(())
            }
            ServerMessage::Event {
                event,
                id,
                data,
                thread_id,
                run_id,
            } => match self.seen.on_event(&id) {
                EventVerdict::Deliver => {
                    let ack_on_drop = self.config.ack_mode == AckMode::AfterHandler;
                    let event = CriticalEvent::new(
                        event,
                        id,
                        data,
                        thread_id,
                        run_id,
                        self.done_tx.clone(),
                        ack_on_drop,
                    );
                    self.emit(ClientEvent::Event(event)).await;
                    Ok(())
                }
                EventVerdict::AckAgain => {
                    send(socket, ClientRequest::Ack { ids: vec![id] }, None).await
                }
                EventVerdict::InHandling => Ok(()),
            },
            // Never nested by the server; `decode_frames` flattened what came.
            ServerMessage::Batch { .. } => Ok(()),
            ServerMessage::Ping { .. } => send(socket, ClientRequest::Pong, None).await,
            ServerMessage::Pong { .. } => Ok(()),
            ServerMessage::Preferences { message_id, data } => {
                let preferences = match data {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                let waiting = message_id.and_then(|id| connection.waiting.remove(&id));
                match waiting {
                    Some(Waiting::Preferences(reply)) => {
                        let _ = reply.send(Ok(preferences));
                    }
                    _ => self.emit(ClientEvent::Preferences(preferences)).await,
                }
                Ok(())
            }
        }
    }

    /// The connection is authenticated: report it, resubscribe, schedule the refresh.
    async fn on_connected(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        data: ConnectedData,
    ) -> Result<(), Ended> {
        connection.connected(&self.config, data.heartbeat_interval);
        connection.refresh_due = self.token.as_ref().and_then(|t| t.refresh_at);
        self.auth_failures = 0;
        self.emit(ClientEvent::State(ConnectionState::Connected(data)))
            .await;
        let topics: Vec<String> = self.topics.names().map(str::to_owned).collect();
        for name in topics {
            let waiters = self.waiting.remove(&name).unwrap_or_default();
            match Topic::new(&name) {
                Ok(topic) => {
                    self.send_subscribe(socket, connection, topic, waiters)
                        .await?
                }
                // Topics are validated before they are added, so this cannot happen; drop it.
                Err(_) => self.forget_topic(&name),
            }
        }
        Ok(())
    }

    /// Sends `subscribe` for `topic` from its last position.
    async fn send_subscribe(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        topic: Topic,
        waiters: Vec<Reply<SubscribeResult>>,
    ) -> Result<(), Ended> {
        let since = self.topics.since(topic.as_str());
        let id = self.message_id();
        connection
            .waiting
            .insert(id.clone(), Waiting::Subscribe(topic.clone(), waiters));
        send(socket, ClientRequest::Subscribe { topic, since }, Some(id)).await
    }

    /// Answers whoever waits for `message_id`.
    async fn on_ack(&mut self, connection: &mut Connection, message_id: &str, data: Value) {
        let Some(waiting) = connection.waiting.remove(message_id) else {
            return;
        };
        match waiting {
            Waiting::Subscribe(_, waiters) => {
                let result = decode::<SubscribeResult>(data);
                if let Ok(ack) = &result
                    && let Some(reset) = self.topics.on_subscribed(ack)
                {
                    self.emit(ClientEvent::Reset(reset)).await;
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
            Waiting::Unsubscribe(reply) => {
                let unsubscribed = data
                    .get("unsubscribed")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| ClientError::UnexpectedReply(data.to_string()));
                let _ = reply.send(unsubscribed);
            }
            Waiting::Publish(reply) => {
                let _ = reply.send(decode(data));
            }
            Waiting::Preferences(reply) => {
                let _ = reply.send(decode(data));
            }
            Waiting::Refresh => {
                let expires_at = data.get("expiresAt").and_then(Value::as_u64);
                let known = self.token.as_ref().and_then(|t| t.expires_at_ms);
                if let Some(expires_at) = expires_at.or(known) {
                    self.emit(ClientEvent::TokenRefreshed { expires_at }).await;
                }
                connection.refresh_due = self.token.as_ref().and_then(|t| t.refresh_at);
            }
        }
    }

    /// Fails whoever waits for `message_id`, or reports the error.
    async fn on_error(
        &mut self,
        connection: &mut Connection,
        message_id: Option<&str>,
        detail: ErrorDetail,
    ) {
        let error = ClientError::from_detail(detail);
        let waiting = message_id.and_then(|id| connection.waiting.remove(id));
        match waiting {
            Some(Waiting::Subscribe(topic, waiters)) => {
                if waiters.is_empty() {
                    self.emit(ClientEvent::Error(error.clone())).await;
                }
                // The server will not serve the topic: stop resubscribing it.
                self.topics.remove(topic.as_str());
                for waiter in waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
            Some(Waiting::Unsubscribe(reply)) => {
                let _ = reply.send(Err(error));
            }
            Some(Waiting::Publish(reply)) => {
                let _ = reply.send(Err(error));
            }
            Some(Waiting::Preferences(reply)) => {
                let _ = reply.send(Err(error));
            }
            // A refused refresh closes the connection (4001); say why first.
            Some(Waiting::Refresh) | None => self.emit(ClientEvent::Error(error)).await,
        }
    }

    /// Serves a command on an open connection.
    async fn on_command(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        command: Command,
    ) -> Result<(), Ended> {
        if !connection.authenticated {
            self.command_offline(command);
            return Ok(());
        }
        let id = self.message_id();
        let (request, waiting) = match command {
            Command::Subscribe { topic, reply } => {
                self.topics.add(topic.as_str());
                return self
                    .send_subscribe(socket, connection, topic, vec![reply])
                    .await;
            }
            Command::Unsubscribe { topic, reply } => {
                self.forget_topic(topic.as_str());
                (
                    ClientRequest::Unsubscribe { topic },
                    Waiting::Unsubscribe(reply),
                )
            }
            Command::Publish {
                topic,
                data,
                id: dedupe,
                reply,
            } => (
                ClientRequest::Publish {
                    topic,
                    data,
                    id: dedupe,
                },
                Waiting::Publish(reply),
            ),
            Command::GetPreferences { reply } => {
                (ClientRequest::GetPreferences, Waiting::Preferences(reply))
            }
            Command::UpdatePreferences { patch, reply } => (
                ClientRequest::UpdatePreferences { patch },
                Waiting::Preferences(reply),
            ),
            // Handled by the caller, which stops.
            Command::Close => return Ok(()),
        };
        connection.waiting.insert(id.clone(), waiting);
        send(socket, request, Some(id)).await
    }

    /// The application finished with a critical event; acknowledge it (with every other one
    /// finished meanwhile) when it asked to.
    async fn on_done(&mut self, socket: &mut Socket, first: EventDone) -> Result<(), Ended> {
        let mut ids = Vec::new();
        let mut next = Some(first);
        while let Some(done) = next {
            self.seen.finished(&done.id, done.ack);
            if done.ack {
                ids.push(done.id);
            }
            next = if ids.len() < herald_protocol::MAX_ACK_IDS {
                self.done_rx.try_recv().ok()
            } else {
                None
            };
        }
        if ids.is_empty() {
            return Ok(());
        }
        send(socket, ClientRequest::Ack { ids }, None).await
    }

    /// A refresh token arrived: send it with `auth`, or report why there is none.
    async fn on_refresh_token(
        &mut self,
        socket: &mut Socket,
        connection: &mut Connection,
        result: Result<String, TokenError>,
    ) -> Result<(), Ended> {
        match result {
            Ok(token) => {
                // Kept at once: a reconnect before the ack uses it instead of fetching again.
                self.cache(token.clone());
                let id = self.message_id();
                connection.waiting.insert(id.clone(), Waiting::Refresh);
                send(socket, ClientRequest::Auth { token }, Some(id)).await
            }
            Err(error) => {
                self.emit(ClientEvent::Error(ClientError::Token(error)))
                    .await;
                connection.refresh_due = Some(Instant::now() + Duration::from_secs(5));
                Ok(())
            }
        }
    }

    /// After a connection ended: requests in flight fail, subscribe callers wait for the next
    /// connection, resubscriptions in flight are forgotten.
    fn connection_lost(&mut self, waiting: HashMap<String, Waiting>) {
        self.topics.connection_lost();
        for (_, waiting) in waiting {
            match waiting {
                Waiting::Subscribe(topic, waiters) => {
                    if self.topics.contains(topic.as_str()) {
                        self.waiting
                            .entry(topic.as_str().to_owned())
                            .or_default()
                            .extend(waiters);
                    } else {
                        for waiter in waiters {
                            let _ = waiter.send(Err(ClientError::ConnectionLost));
                        }
                    }
                }
                Waiting::Unsubscribe(reply) => {
                    let _ = reply.send(Err(ClientError::ConnectionLost));
                }
                Waiting::Publish(reply) => {
                    let _ = reply.send(Err(ClientError::ConnectionLost));
                }
                Waiting::Preferences(reply) => {
                    let _ = reply.send(Err(ClientError::ConnectionLost));
                }
                Waiting::Refresh => {}
            }
        }
    }

    /// The next `messageId`.
    fn message_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }
}

/// What the heartbeat timer found.
enum Beat {
    /// Nothing arrived for the stale timeout.
    Stale,
    /// Nothing arrived for a while: ask with a `ping`.
    Ping,
    /// Something arrived meanwhile.
    Wait,
}

/// One open connection's state.
struct Connection {
    /// Requests waiting for their replies, by `messageId`.
    waiting: HashMap<String, Waiting>,
    /// When the last frame arrived.
    last_heard: Instant,
    /// Whether a `ping` went out since then.
    pinged: bool,
    /// Silence before a `ping`.
    ping_after: Duration,
    /// Silence before the connection counts as dead.
    stale_after: Duration,
    /// When the `connected` frame came; `None` before.
    authenticated_at: Option<Instant>,
    /// Whether `connected` came.
    authenticated: bool,
    /// The close frame's code and reason, once one came.
    close: Option<(u16, String)>,
    /// When to refresh the token; `None` while a refresh is under way or none is needed.
    refresh_due: Option<Instant>,
}

impl Connection {
    /// A connection just opened; until `connected` says otherwise, the server's default
    /// heartbeat (30 s) is assumed.
    fn new(config: &ClientConfig) -> Self {
        let mut connection = Self {
            waiting: HashMap::new(),
            last_heard: Instant::now(),
            pinged: false,
            ping_after: Duration::ZERO,
            stale_after: Duration::ZERO,
            authenticated_at: None,
            authenticated: false,
            close: None,
            refresh_due: None,
        };
        connection.set_heartbeat(config, 30_000);
        connection
    }

    /// `connected` came with the server's heartbeat interval.
    fn connected(&mut self, config: &ClientConfig, heartbeat_ms: u64) {
        self.authenticated = true;
        self.authenticated_at = Some(Instant::now());
        self.set_heartbeat(config, heartbeat_ms);
    }

    /// Derives the ping and stale delays from the server's heartbeat interval.
    fn set_heartbeat(&mut self, config: &ClientConfig, heartbeat_ms: u64) {
        let heartbeat = Duration::from_millis(heartbeat_ms.max(1));
        self.ping_after = config.ping_after.unwrap_or(heartbeat);
        self.stale_after = config
            .stale_after
            .unwrap_or(heartbeat * 2 + Duration::from_secs(5));
    }

    /// A frame arrived.
    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.pinged = false;
    }

    /// When the heartbeat timer should next look.
    fn heartbeat_at(&self) -> Instant {
        let stale = self.last_heard + self.stale_after;
        if self.pinged {
            stale
        } else {
            stale.min(self.last_heard + self.ping_after)
        }
    }

    /// What the heartbeat timer found.
    fn heartbeat(&mut self) -> Beat {
        let now = Instant::now();
        if now >= self.last_heard + self.stale_after {
            Beat::Stale
        } else if !self.pinged && now >= self.last_heard + self.ping_after {
            self.pinged = true;
            Beat::Ping
        } else {
            Beat::Wait
        }
    }

    /// The connection ended with `reason` unless a close frame said why.
    fn lost(&self, reason: impl Into<String>) -> Ended {
        let (code, reason) = match &self.close {
            Some((code, why)) => (Some(*code), why.clone()),
            None => (None, reason.into()),
        };
        Ended::Lost {
            code,
            reason,
            fatal: false,
            lasted: self
                .authenticated_at
                .map_or(Duration::ZERO, |at| at.elapsed()),
        }
    }
}

/// Sends one request; a failed write ends the connection.
async fn send(
    socket: &mut Socket,
    request: ClientRequest,
    message_id: Option<String>,
) -> Result<(), Ended> {
    let mut frame = ClientFrame::new(request);
    frame.message_id = message_id;
    socket
        .send(Message::text(frame.encode()))
        .await
        .map_err(|error| Ended::early(None, format!("write failed: {error}"), false))
}

/// The frames of one text message, batches unpacked in order. A frame the client cannot
/// decode (a newer server's type) is skipped, and so is only that element of a batch.
fn decode_frames(text: &str) -> Vec<ServerMessage> {
    match ServerMessage::decode(text) {
        Ok(ServerMessage::Batch { data }) => data,
        Ok(frame) => vec![frame],
        Err(_) => {
            #[derive(serde::Deserialize)]
            struct RawBatch {
                #[serde(rename = "type")]
                kind: String,
                data: Vec<Box<RawValue>>,
            }
            match serde_json::from_str::<RawBatch>(text) {
                Ok(batch) if batch.kind == "batch" => batch
                    .data
                    .iter()
                    .filter_map(|item| ServerMessage::decode(item.get()).ok())
                    .collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// Decodes an ack's `data`.
fn decode<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, ClientError> {
    let text = data.to_string();
    serde_json::from_value(data).map_err(|_| ClientError::UnexpectedReply(text))
}

/// How a failed connection attempt ends: a 401 is a refused token (as 4001), 400, 403 and
/// 426 cannot be fixed by retrying, anything else is retried.
fn refused_upgrade(error: &tungstenite::Error) -> Ended {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let reason = format!("upgrade refused with {status}: {body}");
            match status {
                401 => Ended::early(Some(4001), reason, false),
                400 | 403 | 426 => Ended::early(None, reason, true),
                _ => Ended::early(None, reason, false),
            }
        }
        tungstenite::Error::Url(error) => Ended::early(None, format!("invalid url: {error}"), true),
        other => Ended::early(None, format!("cannot connect: {other}"), false),
    }
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A header value from a static ASCII string.
fn http_value(value: &'static str) -> tungstenite::http::HeaderValue {
    tungstenite::http::HeaderValue::from_static(value)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
