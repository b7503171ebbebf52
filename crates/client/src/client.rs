//! [`Client`], the application's handle on a connection that survives drops, and [`Events`],
//! the stream of what happened.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use herald_protocol::{PublishResponse, SubscribeResult, Topic};
use serde::Serialize;
use serde_json::{Map, Value, value::RawValue};
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::ClientConfig,
    dial::{Dial, network_dial, tls_config},
    driver::Driver,
    error::ClientError,
    event::ClientEvent,
    requests::{Command, Reply},
    token::TokenProvider,
};

/// How many commands may wait for the driver.
const COMMAND_CAPACITY: usize = 256;

/// A Herald connection that reconnects, resumes and acknowledges on its own.
///
/// Cloning gives another handle on the same connection; the connection closes when
/// [`Client::close`] is called or every handle is dropped.
///
/// # Example
///
/// ```no_run
/// use herald_client::{Client, ClientConfig, ClientEvent, TokenError};
///
/// # async fn run() -> Result<(), herald_client::ClientError> {
/// let config = ClientConfig::new("ws://127.0.0.1:8080/ws");
/// let (client, mut events) = Client::connect(config, || async {
///     // Ask your backend for a JWT.
///     Ok::<_, TokenError>("eyJ...".to_owned())
/// });
/// let ack = client.subscribe("chat:1").await?;
/// println!("chat:1 is at offset {}", ack.offset);
/// while let Some(event) = events.recv().await {
///     if let ClientEvent::Message(message) = event {
///         println!("{}: {}", message.topic, message.data.get());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    /// Commands to the driver.
    commands: mpsc::Sender<Command>,
    /// How long a request may wait for its reply.
    request_timeout: Duration,
}

impl Client {
    /// Starts connecting in the background (on the current tokio runtime) and returns the
    /// handle and the stream of events. Keep reading the events: when
    /// [`ClientConfig::event_capacity`] of them wait unread, the client stops reading the
    /// socket (and so answering pings) until the application catches up.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run() {
    /// use herald_client::{Client, ClientConfig, TokenError};
    ///
    /// let (client, events) = Client::connect(ClientConfig::new("ws://127.0.0.1:8080/ws"), || async {
    ///     Ok::<_, TokenError>(std::env::var("HERALD_TOKEN").map_err(TokenError::new)?)
    /// });
    /// # }
    /// ```
    pub fn connect(config: ClientConfig, provider: impl TokenProvider) -> (Self, Events) {
        let dial = network_dial(tls_config(&config));
        Self::connect_with_dial(config, Arc::new(provider), dial)
    }

    /// [`Client::connect`] with the way connections are opened.
    pub(crate) fn connect_with_dial(
        config: ClientConfig,
        provider: Arc<dyn TokenProvider>,
        dial: Dial,
    ) -> (Self, Events) {
        let driver = Self::driver(config, provider, dial);
        tokio::spawn(driver.0.run());
        (driver.1, driver.2)
    }

    /// A driver with its handle and events, not yet started.
    pub(crate) fn driver(
        config: ClientConfig,
        provider: Arc<dyn TokenProvider>,
        dial: Dial,
    ) -> (Driver, Self, Events) {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let request_timeout = config.request_timeout;
        let driver = Driver::new(config, provider, dial, commands_rx, events_tx);
        (
            driver,
            Self {
                commands: commands_tx,
                request_timeout,
            },
            Events { events: events_rx },
        )
    }

    /// Subscribes to `topic` now, or on the next connection when there is none, and again
    /// after every reconnect with `since` set to the last message delivered, so the missed
    /// messages are replayed in order. Answers with the subscribe ack.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> Result<(), herald_client::ClientError> {
    /// let ack = client.subscribe("chat:1").await?;
    /// assert_eq!(ack.topic.as_str(), "chat:1");
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, topic: &str) -> Result<SubscribeResult, ClientError> {
        let topic = valid_topic(topic)?;
        self.ask(|reply| Command::Subscribe { topic, reply }).await
    }

    /// Unsubscribes from `topic`; it is no longer resubscribed. Answers whether the
    /// connection was subscribed (`false` as well when there was no connection).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> Result<(), herald_client::ClientError> {
    /// let was_subscribed = client.unsubscribe("chat:1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe(&self, topic: &str) -> Result<bool, ClientError> {
        let topic = valid_topic(topic)?;
        self.ask(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Publishes `data` to `topic` (the token's `publish` claim must allow it). Fails with
    /// [`ClientError::NotConnected`] when there is no connection, and with
    /// [`ClientError::RateLimited`] (with `retry_after`) past the tier's write budget.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> Result<(), herald_client::ClientError> {
    /// let ack = client.publish("chat:1", &serde_json::json!({"text": "hi"})).await?;
    /// println!("published at offset {}", ack.offset);
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        topic: &str,
        data: &impl Serialize,
    ) -> Result<PublishResponse, ClientError> {
        self.publish_inner(topic, data, None).await
    }

    /// [`Client::publish`] with a dedupe `id`: a second publish with the same id within the
    /// server's dedupe window is answered with the first offset and `deduplicated: true`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> Result<(), herald_client::ClientError> {
    /// let first = client.publish_with_id("chat:1", &"hi", "m-1").await?;
    /// let again = client.publish_with_id("chat:1", &"hi", "m-1").await?;
    /// assert!(again.deduplicated && again.offset == first.offset);
    /// # Ok(()) }
    /// ```
    pub async fn publish_with_id(
        &self,
        topic: &str,
        data: &impl Serialize,
        id: &str,
    ) -> Result<PublishResponse, ClientError> {
        self.publish_inner(topic, data, Some(id.to_owned())).await
    }

    /// Publishes with an optional dedupe id.
    async fn publish_inner(
        &self,
        topic: &str,
        data: &impl Serialize,
        id: Option<String>,
    ) -> Result<PublishResponse, ClientError> {
        let topic = valid_topic(topic)?;
        let data = raw_json(data)?;
        self.ask(|reply| Command::Publish {
            topic,
            data,
            id,
            reply,
        })
        .await
    }

    /// The user's preferences.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> Result<(), herald_client::ClientError> {
    /// let preferences = client.preferences().await?;
    /// println!("theme: {:?}", preferences.get("theme"));
    /// # Ok(()) }
    /// ```
    pub async fn preferences(&self) -> Result<Map<String, Value>, ClientError> {
        self.ask(|reply| Command::GetPreferences { reply }).await
    }

    /// Replaces the top-level keys of `patch` in the user's preferences (a `null` value
    /// removes its key) and answers with the result. `"batching": false` turns off `batch`
    /// frames; the client unpacks them either way.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) -> Result<(), herald_client::ClientError> {
    /// let mut patch = serde_json::Map::new();
    /// patch.insert("theme".into(), "dark".into());
    /// let preferences = client.update_preferences(patch).await?;
    /// assert_eq!(preferences["theme"], "dark");
    /// # Ok(()) }
    /// ```
    pub async fn update_preferences(
        &self,
        patch: Map<String, Value>,
    ) -> Result<Map<String, Value>, ClientError> {
        self.ask(|reply| Command::UpdatePreferences { patch, reply })
            .await
    }

    /// Closes the connection for good; the events end with
    /// [`crate::ConnectionState::Closed`]. Requests in flight fail.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(client: herald_client::Client) {
    /// client.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        // An error means the driver has already stopped: closed is what was asked.
        let _ = self.commands.send(Command::Close).await;
    }

    /// Sends a command and waits for its answer, for the request timeout at most (the driver
    /// forgets a request whose caller gave up).
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.commands
                .send(command(reply))
                .await
                .map_err(|_| ClientError::Closed)?;
            answer.await.map_err(|_| ClientError::Closed)?
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::TimedOut(self.request_timeout))?
    }
}

/// The events of a [`Client`], in order; ends after [`crate::ConnectionState::Closed`].
/// Also a [`futures_util::Stream`].
///
/// # Example
///
/// ```no_run
/// # async fn run(mut events: herald_client::Events) {
/// use futures_util::StreamExt as _;
///
/// while let Some(event) = events.next().await {
///     println!("{event:?}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Events {
    /// From the driver.
    events: mpsc::Receiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the client is closed and every event was read.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(mut events: herald_client::Events) {
    /// while let Some(event) = events.recv().await {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }
}

impl futures_util::Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// `topic` as a [`Topic`], or why it is not one.
fn valid_topic(topic: &str) -> Result<Topic, ClientError> {
    Topic::new(topic).map_err(|error| ClientError::InvalidRequest(format!("topic: {error}")))
}

/// `data` as raw JSON text.
fn raw_json(data: &impl Serialize) -> Result<Box<RawValue>, ClientError> {
    serde_json::value::to_raw_value(data)
        .map_err(|error| ClientError::InvalidRequest(format!("data: {error}")))
}
