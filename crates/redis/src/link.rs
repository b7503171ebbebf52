//! How a node reaches Redis: its settings ([`RedisSettings`]), the error when they cannot be
//! used ([`RedisBrokerError`]), and the two lazily connecting connections the broker and every
//! store open the same way (one for commands, one subscriber whose pushes come through a
//! channel).

use std::time::Duration;

use herald_core::BrokerError;
use herald_utils::BreakerSettings;
use redis::{
    Client, IntoConnectionInfo as _, ProtocolVersion, PushInfo, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::mpsc;

use crate::guard::RedisBreaker;

/// How a node joins a cluster over Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; RESP3 is always used.
    pub url: String,
    /// The start of every key and channel.
    pub key_prefix: String,
    /// This node's id on the bus (operations it forwarded are not delivered back to it).
    pub node_id: String,
    /// How long one command may take before it counts as failed.
    pub command_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Publications kept per topic in the shared history (0: none).
    pub history_size: usize,
    /// How long a topic's offsets, epoch and history outlive its last publication.
    pub history_retention: Duration,
    /// When the circuit breaker around every Redis call opens and closes.
    pub breaker: BreakerSettings,
    /// Operations kept while Redis is unreachable, replayed when it is back (0: none kept,
    /// every publication is refused while the breaker is open).
    pub outbox_size: usize,
}

/// Why the broker or a store could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisBrokerError {
    /// The URL or the client configuration is not usable.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// A node's two connections to Redis for one user of them (the broker, or a store).
///
/// Both connect at their first call, so a node starts without Redis, and reconnect on their
/// own; the subscriber resubscribes a new connection to what it was subscribed to.
pub(crate) struct Connections {
    /// For commands: scripts, `PUBLISH`, reads.
    pub(crate) commands: ConnectionManager,
    /// For `SUBSCRIBE` and the keep-alive `PING`; its messages arrive on [`Self::pushes`].
    pub(crate) subscriber: ConnectionManager,
    /// What the subscriber's connection pushes: messages, and notices of disconnection.
    pub(crate) pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl Connections {
    /// Opens both connections to the configured Redis. Fails only on a URL that cannot be
    /// used.
    pub(crate) fn open(settings: &RedisSettings) -> Result<Self, RedisBrokerError> {
        let (push_sender, pushes) = mpsc::unbounded_channel::<PushInfo>();
        Ok(Self {
            commands: manager(settings, None)?,
            subscriber: manager(settings, Some(push_sender))?,
            pushes,
        })
    }
}

/// Subscribes `subscriber` to `channel`, the first contact with Redis: connecting and
/// subscribing, each bounded by the connect timeout, through `breaker`.
pub(crate) async fn subscribe_at_start(
    settings: &RedisSettings,
    breaker: &RedisBreaker,
    subscriber: &mut ConnectionManager,
    channel: &str,
) -> Result<(), BrokerError> {
    breaker
        .call(settings.connect_timeout * 2, subscriber.subscribe(channel))
        .await
}

/// A connection manager to the configured Redis (RESP3), each command bounded by the command
/// timeout; with `pushes`, a subscriber that resubscribes after a reconnect.
fn manager(
    settings: &RedisSettings,
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<ConnectionManager, RedisBrokerError> {
    let info = settings.url.as_str().into_connection_info()?;
    let redis_settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(redis_settings))?;
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.command_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    if let Some(pushes) = pushes {
        config = config
            .set_push_sender(pushes)
            .set_automatic_resubscription();
    }
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}
