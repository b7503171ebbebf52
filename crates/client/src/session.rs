//! The running session: serving one open connection until it ends. It reads server frames and
//! turns them into [`ClientEvent`]s (topic messages past the duplicate filter, critical events,
//! pushes, replies to the requests waiting on the connection), sends the application's
//! commands, acknowledges finished critical events, answers and sends heartbeats, and
//! refreshes the token in place.

use std::{future::poll_fn, time::Duration};

use futures_util::StreamExt as _;
use herald_protocol::{
    ClientRequest, ConnectedData, ErrorDetail, ServerMessage, SubscribeResult, Topic,
};
use serde_json::{Map, Value};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{
    book::{EventVerdict, MessageVerdict},
    config::AckMode,
    dial::Socket,
    driver::Driver,
    error::ClientError,
    event::{ClientEvent, ConnectionState, CriticalEvent, EventDone, Push, TopicMessage},
    link::{Beat, Ended, Link},
    requests::{Command, Reply, Waiting},
    token::TokenError,
    wire::{decode, decode_frames, send},
};

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

impl Driver {
    /// Serves one open connection until it ends.
    pub(crate) async fn serve(&mut self, mut socket: Socket) -> Ended {
        let mut connection = Link::new(&self.config);
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
                    self.tokens.start_fetch();
                    Ok(())
                }
                Input::Token(result) => {
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
        self.connection_lost(connection.waiting.take());
        ended
    }

    /// Waits for whatever happens next on a connection.
    async fn next_input(&mut self, socket: &mut Socket, connection: &Link) -> Input {
        let heartbeat_at = connection.heartbeat_at();
        let fetching = self.tokens.fetching();
        let refresh_at = connection.refresh_due.filter(|_| !fetching);
        let tokens = &mut self.tokens;
        tokio::select! {
            message = socket.next() => Input::Socket(message),
            command = self.commands.recv() => Input::Command(command),
            Some(done) = self.done_rx.recv() => Input::Done(done),
            () = sleep_until(heartbeat_at) => Input::Heartbeat,
            () = sleep_until_some(refresh_at) => Input::RefreshDue,
            result = poll_fn(|cx| tokens.poll_fetch(cx)), if fetching => Input::Token(result),
        }
    }

    /// Handles one WebSocket message.
    async fn on_socket_message(
        &mut self,
        socket: &mut Socket,
        connection: &mut Link,
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
        connection: &mut Link,
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
        connection: &mut Link,
        data: ConnectedData,
    ) -> Result<(), Ended> {
        connection.connected(&self.config, data.heartbeat_interval);
        connection.refresh_due = self.tokens.refresh_at();
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
        connection: &mut Link,
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
    async fn on_ack(&mut self, connection: &mut Link, message_id: &str, data: Value) {
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
                let known = self.tokens.expires_at_ms();
                if let Some(expires_at) = expires_at.or(known) {
                    self.emit(ClientEvent::TokenRefreshed { expires_at }).await;
                }
                connection.refresh_due = self.tokens.refresh_at();
            }
        }
    }

    /// Fails whoever waits for `message_id`, or reports the error.
    async fn on_error(
        &mut self,
        connection: &mut Link,
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
        connection: &mut Link,
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
        connection: &mut Link,
        result: Result<String, TokenError>,
    ) -> Result<(), Ended> {
        match result {
            Ok(token) => {
                // Kept at once: a reconnect before the ack uses it instead of fetching again.
                self.tokens.keep(token.clone());
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
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
