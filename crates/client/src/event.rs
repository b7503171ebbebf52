//! What the client tells the application: [`ClientEvent`] and the values it carries, with the
//! acknowledgement handle of a critical event.

use std::time::Duration;

use herald_protocol::{ConnectedData, EventName, PushScope, StreamPosition};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// One thing that happened, in the order it happened: connection state changes, topic
/// messages (once each, in offset order), critical events, pushes, resets and notices.
///
/// # Example
///
/// ```no_run
/// # async fn run(mut events: herald_client::Events) {
/// use herald_client::{ClientEvent, ConnectionState};
///
/// while let Some(event) = events.recv().await {
///     match event {
///         ClientEvent::State(ConnectionState::Connected(info)) => {
///             println!("connected as {}", info.user_id)
///         }
///         ClientEvent::State(state) => println!("{state:?}"),
///         ClientEvent::Message(message) => println!("{} #{}", message.topic, message.offset),
///         ClientEvent::Event(event) => {
///             println!("{}", event.name);
///             // Acknowledged when `event` is dropped, after this arm.
///         }
///         ClientEvent::Reset(reset) => println!("refetch {}", reset.topic),
///         other => println!("{other:?}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub enum ClientEvent {
    /// The connection's state changed.
    State(ConnectionState),
    /// A publication on a subscribed topic; each offset is delivered once, in order.
    Message(TopicMessage),
    /// A critical agent event; acknowledged once the value is dropped (or by hand, see
    /// [`crate::AckMode`]).
    Event(CriticalEvent),
    /// A live-only send from a backend.
    Push(Push),
    /// A topic's missed messages could not be replayed (another epoch after a server restart,
    /// or history no longer holds them): the application must refetch the topic's state.
    Reset(TopicReset),
    /// The user's preferences, pushed after another connection of the user changed them.
    Preferences(serde_json::Map<String, serde_json::Value>),
    /// The token was refreshed in place; it now expires at this time (ms since the Unix
    /// epoch, with the server's leeway).
    TokenRefreshed {
        /// When the new token expires, in ms since the Unix epoch.
        expires_at: u64,
    },
    /// Something went wrong that no request is waiting for: an `error` frame without a
    /// `messageId`, a resubscription the server refused, or a token provider failure.
    Error(crate::ClientError),
}

/// Where the connection stands.
///
/// # Example
///
/// ```
/// use herald_client::ConnectionState;
///
/// let state = ConnectionState::Disconnected { code: Some(4010), reason: "disconnected by the api".into() };
/// assert!(matches!(state, ConnectionState::Disconnected { code: Some(4010), .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a connection: getting a token, the TCP connection and the upgrade.
    Connecting {
        /// Which attempt this is since the last stable connection (0 for the very first).
        attempt: u32,
    },
    /// Authenticated; the server's `connected` frame. Topics are being resubscribed.
    Connected(ConnectedData),
    /// The connection ended (or an attempt failed).
    Disconnected {
        /// The close code, when the server sent a close frame or refused the upgrade with a
        /// status the client maps onto one (401 is 4001); `None` when the connection just
        /// dropped, went stale, or could not be opened.
        code: Option<u16>,
        /// The close reason or what failed.
        reason: String,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// The attempt that comes next (1 for the first after a drop).
        attempt: u32,
        /// How long the client waits before it.
        delay: Duration,
    },
    /// Closed for good: by [`crate::Client::close`], or after a close code that says not to
    /// reconnect (docs/protocol.md). No further events follow.
    Closed {
        /// The close code that ended it (1000 when the application closed it).
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

/// A publication on a subscribed topic.
///
/// # Example
///
/// ```
/// # fn handle(message: herald_client::TopicMessage) -> Result<(), serde_json::Error> {
/// #[derive(serde::Deserialize)]
/// struct Chat { text: String }
/// let chat: Chat = message.json()?;
/// println!("{} said {}", message.topic, chat.text);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TopicMessage {
    /// The topic.
    pub topic: String,
    /// The payload exactly as the publisher sent it.
    pub data: Box<RawValue>,
    /// Its offset in the topic's epoch.
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: String,
}

impl TopicMessage {
    /// Decodes the payload as `T`.
    ///
    /// # Example
    ///
    /// ```
    /// # use herald_client::TopicMessage;
    /// let message = TopicMessage {
    ///     topic: "chat:1".into(),
    ///     data: serde_json::value::RawValue::from_string("[1,2]".into()).unwrap(),
    ///     offset: 1,
    ///     epoch: "e".into(),
    /// };
    /// assert_eq!(message.json::<Vec<u8>>().unwrap(), [1, 2]);
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// A live-only send from a backend (`push`): no offset, not stored, not replayed.
///
/// # Example
///
/// ```
/// # fn handle(push: herald_client::Push) {
/// let value: serde_json::Value = push.json().unwrap_or_default();
/// println!("{:?}: {value}", push.scope);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Push {
    /// The payload exactly as the backend sent it.
    pub data: Box<RawValue>,
    /// Who it was addressed to.
    pub scope: PushScope,
}

impl Push {
    /// Decodes the payload as `T`.
    ///
    /// # Example
    ///
    /// ```
    /// # use herald_client::Push;
    /// let push = Push {
    ///     data: serde_json::value::RawValue::from_string("true".into()).unwrap(),
    ///     scope: herald_client::protocol::PushScope::Broadcast,
    /// };
    /// assert!(push.json::<bool>().unwrap());
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// A topic whose missed messages could not be replayed after a (re)subscription: the server
/// answered `recovered: false`. When `previous.epoch != current.epoch` the server restarted
/// or forgot the topic; otherwise its history no longer held every message missed.
///
/// # Example
///
/// ```
/// # fn handle(reset: herald_client::TopicReset) {
/// if reset.epoch_changed() {
///     println!("{} starts afresh at offset {}", reset.topic, reset.current.offset);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReset {
    /// The topic.
    pub topic: String,
    /// The position the client had (the last message it delivered).
    pub previous: StreamPosition,
    /// The topic's position now; delivery continues after it.
    pub current: StreamPosition,
}

impl TopicReset {
    /// Whether the epoch changed (the server restarted or forgot the topic).
    ///
    /// # Example
    ///
    /// ```
    /// use herald_client::TopicReset;
    /// use herald_client::protocol::StreamPosition;
    ///
    /// let at = |offset, epoch: &str| StreamPosition { offset, epoch: epoch.into() };
    /// let reset = TopicReset { topic: "t".into(), previous: at(9, "a"), current: at(0, "b") };
    /// assert!(reset.epoch_changed());
    /// ```
    pub fn epoch_changed(&self) -> bool {
        self.previous.epoch != self.current.epoch
    }
}

/// What became of a critical event the application was handed.
#[derive(Debug)]
pub(crate) struct EventDone {
    /// The event's id.
    pub(crate) id: String,
    /// Whether to acknowledge it; `false` forgets it, so a redelivery reaches the
    /// application again.
    pub(crate) ack: bool,
}

/// A critical agent event (`event` frame), delivered at least once by the server and once to
/// the application by the client.
///
/// With [`crate::AckMode::AfterHandler`] (the default) it is acknowledged when this value is
/// dropped, that is once the application's handler is done with it; a handler that panics
/// does not acknowledge it, so the server delivers it again. With [`crate::AckMode::Manual`]
/// call [`CriticalEvent::ack`]; dropping it unacknowledged lets the server's redelivery reach
/// the application again.
///
/// # Example
///
/// ```no_run
/// # async fn handle(event: herald_client::CriticalEvent) {
/// println!("{} {} {}", event.name, event.id, event.data.get());
/// drop(event); // Acknowledged now (AckMode::AfterHandler).
/// # }
/// ```
#[derive(Debug)]
pub struct CriticalEvent {
    /// The event name.
    pub name: EventName,
    /// Its stable id.
    pub id: String,
    /// The payload exactly as the backend sent it.
    pub data: Box<RawValue>,
    /// The thread it was addressed to, if any.
    pub thread_id: Option<String>,
    /// The agent run it belongs to, if any.
    pub run_id: Option<String>,
    /// Where to report the outcome, and whether dropping acknowledges.
    done: Option<(mpsc::UnboundedSender<EventDone>, bool)>,
}

impl CriticalEvent {
    /// A delivered event; `ack_on_drop` says whether dropping it acknowledges it.
    pub(crate) fn new(
        name: EventName,
        id: String,
        data: Box<RawValue>,
        thread_id: Option<String>,
        run_id: Option<String>,
        done: mpsc::UnboundedSender<EventDone>,
        ack_on_drop: bool,
    ) -> Self {
        Self {
            name,
            id,
            data,
            thread_id,
            run_id,
            done: Some((done, ack_on_drop)),
        }
    }

    /// Decodes the payload as `T`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn handle(event: herald_client::CriticalEvent) -> Result<(), serde_json::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Tool { tool: String }
    /// let tool: Tool = event.json()?;
    /// # Ok(()) }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// Acknowledges the event now (sent at once when connected; when not, the server delivers
    /// it again on the next connection and the client acknowledges it without handing it to
    /// the application twice).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn handle(event: herald_client::CriticalEvent) {
    /// // With AckMode::Manual, after the event is safely stored:
    /// event.ack();
    /// # }
    /// ```
    pub fn ack(mut self) {
        self.finish(true);
    }

    /// Reports the outcome once.
    fn finish(&mut self, ack: bool) {
        if let Some((done, _)) = self.done.take() {
            // A closed channel means the client is gone; the server redelivers the event to
            // the next connection, so nothing is lost by ignoring it.
            let _ = done.send(EventDone {
                id: std::mem::take(&mut self.id),
                ack,
            });
        }
    }
}

impl Drop for CriticalEvent {
    fn drop(&mut self) {
        let ack_on_drop = self.done.as_ref().is_some_and(|(_, ack)| *ack);
        // A handler that panicked did not handle the event: let it come again.
        self.finish(ack_on_drop && !std::thread::panicking());
    }
}
