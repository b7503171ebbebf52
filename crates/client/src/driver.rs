//! The task behind a [`crate::Client`]: it owns every piece of state and runs the connection
//! lifecycle: get a token, open a connection, serve it (the session module), and after a drop
//! wait out the backoff and do it again, until the application closes the client or a close
//! code says not to come back. Between connections it serves commands offline.

use std::collections::HashMap;

use herald_protocol::SubscribeResult;
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until},
};

use crate::{
    backoff::Jitter,
    book::{SeenEvents, Topics},
    config::ClientConfig,
    dial::{Dial, upgrade_request},
    error::ClientError,
    event::{ClientEvent, ConnectionState, EventDone},
    link::Ended,
    refresh::Tokens,
    requests::{Command, Reply, Waiting},
    token::SharedProvider,
};

/// The driver's state; see the module docs.
pub(crate) struct Driver {
    /// The configuration.
    pub(crate) config: ClientConfig,
    /// How connections are opened.
    dial: Dial,
    /// Requests from the application.
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Events to the application.
    events: mpsc::Sender<ClientEvent>,
    /// Given to each critical event to report back.
    pub(crate) done_tx: mpsc::UnboundedSender<EventDone>,
    /// What the critical events report.
    pub(crate) done_rx: mpsc::UnboundedReceiver<EventDone>,
    /// The subscribed topics and their positions.
    pub(crate) topics: Topics,
    /// Callers of `subscribe` waiting for the next connection, by topic.
    pub(crate) waiting: HashMap<String, Vec<Reply<SubscribeResult>>>,
    /// The critical events handed to the application.
    pub(crate) seen: SeenEvents,
    /// The token in use and the fetch of the next one.
    pub(crate) tokens: Tokens,
    /// Attempts since the last stable connection.
    attempt: u32,
    /// Tokens refused in a row (401 at the upgrade, close 4001).
    pub(crate) auth_failures: u32,
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
        let tokens = Tokens::new(provider, config.refresh_before_expiry);
        Self {
            config,
            dial,
            commands,
            events,
            done_tx,
            done_rx,
            topics: Topics::default(),
            waiting: HashMap::new(),
            seen,
            tokens,
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
                self.tokens.forget();
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
        let token = match self.tokens.current().await {
            Ok(token) => token,
            Err(error) => {
                let reason = format!("token provider failed: {error}");
                self.emit(ClientEvent::Error(ClientError::Token(error)))
                    .await;
                return Ended::early(None, reason, false);
            }
        };
        let request = match upgrade_request(&self.config, &token) {
            Ok(request) => request,
            Err(ended) => return ended,
        };
        let dial = (self.dial)(request);
        let socket = match tokio::time::timeout(self.config.connect_timeout, dial).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(ended)) => return ended,
            Err(_) => {
                return Ended::early(None, "timed out opening the connection", false);
            }
        };
        self.serve(socket).await
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

    /// Serves a command while there is no (authenticated) connection.
    pub(crate) fn command_offline(&mut self, command: Command) {
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
    pub(crate) fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
        for waiter in self.waiting.remove(topic).unwrap_or_default() {
            let _ = waiter.send(Err(ClientError::NotConnected));
        }
    }

    /// Hands `event` to the application; if it went away, the client keeps working for the
    /// requests it may still make.
    pub(crate) async fn emit(&mut self, event: ClientEvent) {
        let _ = self.events.send(event).await;
    }

    /// After a connection ended: requests in flight fail, subscribe callers wait for the next
    /// connection, resubscriptions in flight are forgotten.
    pub(crate) fn connection_lost(&mut self, waiting: HashMap<String, Waiting>) {
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
                other => other.fail(&ClientError::ConnectionLost),
            }
        }
    }

    /// The next `messageId`.
    pub(crate) fn message_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }
}
