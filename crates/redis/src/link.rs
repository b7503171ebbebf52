//! What the event and preference stores share of their link to Redis: lazily connecting
//! connection managers, every call through the node's circuit breaker, and a subscriber
//! connection kept alive (and subscribed once Redis answers) by a ping every second.

use std::{sync::Weak, time::Duration};

use redis::{
    Client, IntoConnectionInfo as _, ProtocolVersion, PushInfo, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::mpsc;

use crate::{
    broker::{RedisBrokerError, RedisSettings},
    guard::RedisBreaker,
};

/// How often a store's subscriber is pinged, which also drives its reconnection.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A store's link: its command connection, its subscription to `channel` and the pushes that
/// subscription brings. Both connections connect at their first call; the channel is
/// subscribed to now if Redis answers within the connect timeout, else by [`keep_alive`] once
/// it does. Fails only on a URL that cannot be used.
pub(crate) async fn connect(
    settings: &RedisSettings,
    breaker: &RedisBreaker,
    channel: String,
) -> Result<
    (
        ConnectionManager,
        Subscription,
        mpsc::UnboundedReceiver<PushInfo>,
    ),
    RedisBrokerError,
> {
    let (push_sender, pushes) = mpsc::unbounded_channel::<PushInfo>();
    let connection = open(settings, None)?;
    let subscriber = open(settings, Some(push_sender))?;
    let subscription = Subscription::start(settings, breaker, subscriber, channel).await;
    Ok((connection, subscription, pushes))
}

/// A connection manager to the configured Redis (RESP3), each command bounded by the command
/// timeout; with `pushes`, a subscriber that resubscribes after a reconnect.
pub(crate) fn open(
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

/// `work`, through the node's circuit breaker and bounded by `timeout`: refused at once while
/// the breaker is open; a failure is the message to answer with.
pub(crate) async fn bounded<T>(
    breaker: &RedisBreaker,
    timeout: Duration,
    work: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, String> {
    breaker
        .call(timeout, work)
        .await
        .map_err(|error| error.to_string())
}

/// A store's subscriber connection and the one channel it listens on.
pub(crate) struct Subscription {
    subscriber: ConnectionManager,
    channel: String,
    timeout: Duration,
    /// Whether the channel was subscribed to; the connection manager resubscribes a new
    /// connection to it from then on.
    subscribed: bool,
}

impl Subscription {
    /// Subscribes `subscriber` to `channel` if Redis answers within the connect timeout;
    /// otherwise [`keep_alive`] subscribes once it does.
    pub(crate) async fn start(
        settings: &RedisSettings,
        breaker: &RedisBreaker,
        mut subscriber: ConnectionManager,
        channel: String,
    ) -> Self {
        let subscribed = breaker
            .call(settings.connect_timeout * 2, subscriber.subscribe(&channel))
            .await
            .is_ok();
        Self {
            subscriber,
            channel,
            timeout: settings.command_timeout,
            subscribed,
        }
    }
}

/// Pings a store's subscriber connection every [`KEEP_ALIVE`] through the breaker, which
/// makes the connection manager notice a lost connection and reconnect (and resubscribe) even
/// when nothing is published; subscribes first if that has not happened yet. Ends with its
/// owner.
pub(crate) async fn keep_alive<T: Send + Sync + 'static>(
    owner: Weak<T>,
    breaker: RedisBreaker,
    mut subscription: Subscription,
) {
    let mut interval = tokio::time::interval(KEEP_ALIVE);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if owner.strong_count() == 0 {
            return;
        }
        let Subscription {
            subscriber,
            channel,
            timeout,
            subscribed,
        } = &mut subscription;
        let answered = if *subscribed {
            breaker
                .call(*timeout, redis::cmd("PING").query_async::<()>(subscriber))
                .await
        } else {
            let result = breaker
                .call(*timeout, subscriber.subscribe(&*channel))
                .await;
            *subscribed = result.is_ok();
            result
        };
        if let Err(error) = answered {
            tracing::debug!(%error, channel = %channel, "redis: a store's subscriber did not answer");
        }
    }
}
