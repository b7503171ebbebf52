//! [`Store`]: what every store over Redis (events, preferences) is built on: a command
//! connection served by one task from a bounded call queue, a subscription to the store's
//! channel whose messages tell this node of changes made on other nodes, and a keep-alive on
//! the subscriber; every Redis call through the node's circuit breaker. A [`Kind`] adds what
//! one store does: its calls and how it reads its channel's messages.
//!
//! A change message, `PUBLISH`ed by a store's scripts on its channel, starts with the origin
//! node and the user as `<len>:<node><len>:<user>` ([`head`]); what follows is the store's.
//! Per-user keys are `<prefix><kind>:<len>:{<user>}` ([`user_key`]), the user id in braces so
//! that on Redis Cluster one user's keys share a slot.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use herald_core::UserId;
use redis::{
    Cmd, FromRedisValue, PushInfo, PushKind, ScriptInvocation, Value, aio::ConnectionManager,
};
use tokio::sync::mpsc;

use crate::{
    guard::RedisBreaker,
    link::{self, Connections, RedisBrokerError, RedisSettings},
};

/// Calls queued for a store's task before callers are refused.
const CALL_QUEUE: usize = 10_000;
/// How often a store's subscriber is pinged, which also drives its reconnection.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// What one kind of store adds to [`Store`]: its calls, how its task performs them, and what
/// the messages on its channel tell this node.
pub(crate) trait Kind: Send + Sync + 'static {
    /// A call for the store's task; it carries the caller's reply.
    type Call: Send + 'static;
    /// This node, once the gateway attached: told of changes made elsewhere.
    type Local: Clone + Send + 'static;
    /// A change made elsewhere, read from the rest of a change message.
    type Change<'a>;

    /// What a message on the store's channel is, for the log: "an acknowledgement".
    const CHANGE: &'static str;

    /// Answers a call the store's task cannot take (its queue is full, or the task ended)
    /// without performing it.
    fn refuse(call: Self::Call);

    /// Performs one call (its Redis calls through `commands`) and answers it.
    fn perform(
        &self,
        settings: &RedisSettings,
        commands: &mut Commands,
        call: Self::Call,
    ) -> impl Future<Output = ()> + Send;

    /// Reads what follows the [`head`] of a change message; `None` for one that is not
    /// Herald's.
    fn read(rest: &str) -> Option<Self::Change<'_>>;

    /// Tells this node that `user`'s data changed on another node.
    fn tell(local: &Self::Local, user: &UserId, change: Self::Change<'_>);
}

/// A store over Redis, generic over what differs between stores ([`Kind`]). Cheap to clone;
/// its tasks run until the last clone is dropped or the runtime stops.
pub(crate) struct Store<K: Kind> {
    shared: Arc<Shared<K>>,
}

impl<K: Kind> Clone for Store<K> {
    // Derived, it would ask `K: Clone`, which a store's handle does not need.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What a store's handles and its tasks share.
struct Shared<K: Kind> {
    settings: RedisSettings,
    calls: mpsc::Sender<K::Call>,
    /// This node, once the gateway attached: told of changes made elsewhere.
    local: Mutex<Option<K::Local>>,
}

impl<K: Kind> Store<K> {
    /// Opens the store's connections to Redis (lazily: they connect at their first call),
    /// subscribes to `channel` when Redis answers, and starts the store's tasks on the current
    /// tokio runtime: `kind` performs the calls. Every call goes through `breaker`, the
    /// broker's ([`crate::RedisBroker::breaker`]); a Redis that is down now is subscribed to
    /// once it answers. Fails only on a URL that cannot be used.
    pub(crate) async fn connect(
        settings: RedisSettings,
        breaker: RedisBreaker,
        channel: String,
        kind: K,
    ) -> Result<Self, RedisBrokerError> {
        let Connections {
            commands,
            mut subscriber,
            pushes,
        } = Connections::open(&settings)?;
        let subscribed = link::subscribe_at_start(&settings, &breaker, &mut subscriber, &channel)
            .await
            .is_ok();
        let subscription = Subscription {
            subscriber,
            channel,
            timeout: settings.command_timeout,
            subscribed,
        };
        let commands = Commands {
            connection: commands,
            breaker: breaker.clone(),
            timeout: settings.command_timeout,
        };
        let (calls, queue) = mpsc::channel(CALL_QUEUE);
        let shared = Arc::new(Shared {
            settings,
            calls,
            local: Mutex::new(None),
        });
        tokio::spawn(run_calls(Arc::downgrade(&shared), kind, commands, queue));
        tokio::spawn(receive(Arc::downgrade(&shared), pushes));
        tokio::spawn(keep_alive(Arc::downgrade(&shared), breaker, subscription));
        Ok(Self { shared })
    }

    /// The settings the store was connected with.
    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.shared.settings
    }

    /// Connects this node: changes made on other nodes reach `local` from now on.
    pub(crate) fn attach(&self, local: K::Local) {
        *self
            .shared
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(local);
    }

    /// Hands `call` to the store's task, or refuses it at once when the queue is full.
    pub(crate) fn queue(&self, call: K::Call) {
        if let Err(refused) = self.shared.calls.try_send(call) {
            let (mpsc::error::TrySendError::Full(call) | mpsc::error::TrySendError::Closed(call)) =
                refused;
            K::refuse(call);
        }
    }
}

/// A store's command connection, as its task uses it: every call through the node's circuit
/// breaker, bounded by the command timeout, and refused at once while the breaker is open; a
/// failure is the message to answer the caller with.
pub(crate) struct Commands {
    connection: ConnectionManager,
    breaker: RedisBreaker,
    timeout: Duration,
}

impl Commands {
    /// Runs a script.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &mut self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, String> {
        self.breaker
            .call(self.timeout, invocation.invoke_async(&mut self.connection))
            .await
            .map_err(|error| error.to_string())
    }

    /// Runs a command.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> Result<T, String> {
        self.breaker
            .call(self.timeout, command.query_async(&mut self.connection))
            .await
            .map_err(|error| error.to_string())
    }
}

/// The head of a change message: the origin node and the user, as `<len>:<value>` fields.
pub(crate) fn head(node: &str, user: &UserId) -> String {
    let mut out = String::new();
    field(&mut out, node);
    field(&mut out, user.as_str());
    out
}

/// A per-user key: `<prefix><kind>:<byte length>:{<user>}`.
pub(crate) fn user_key(prefix: &str, kind: &str, user: &UserId) -> String {
    format!(
        "{prefix}{kind}:{}:{{{}}}",
        user.as_str().len(),
        user.as_str()
    )
}

/// Takes the next `<len>:<value>` field off the front of `rest`.
pub(crate) fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (len, tail) = rest.split_once(':')?;
    let (value, tail) = tail.split_at_checked(len.parse().ok()?)?;
    *rest = tail;
    Some(value)
}

/// Appends `value` to `out` as a `<len>:<value>` field.
fn field(out: &mut String, value: &str) {
    out.push_str(&value.len().to_string());
    out.push(':');
    out.push_str(value);
}

/// Reads a change message: the origin node, the user and what the store made of the rest.
pub(crate) fn read_change<K: Kind>(message: &str) -> Option<(&str, &str, K::Change<'_>)> {
    let mut rest = message;
    let node = next_field(&mut rest)?;
    let user = next_field(&mut rest)?;
    Some((node, user, K::read(rest)?))
}

/// The store's task: performs the calls one at a time, in the order they were made. Every
/// Redis call of the store, but the subscriber's, is made here.
async fn run_calls<K: Kind>(
    shared: Weak<Shared<K>>,
    kind: K,
    mut commands: Commands,
    mut queue: mpsc::Receiver<K::Call>,
) {
    while let Some(call) = queue.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        kind.perform(&shared.settings, &mut commands, call).await;
    }
}

/// Tells this node of the changes other nodes published on the store's channel.
async fn receive<K: Kind>(shared: Weak<Shared<K>>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if push.kind != PushKind::Message {
            continue;
        }
        let Some(Value::BulkString(payload)) = push.data.get(1) else {
            continue;
        };
        let Some((node, user, change)) =
            std::str::from_utf8(payload).ok().and_then(read_change::<K>)
        else {
            tracing::warn!("redis: {} Herald cannot read was ignored", K::CHANGE);
            continue;
        };
        if node == shared.settings.node_id {
            continue;
        }
        let local = shared
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(local) = local {
            K::tell(&local, &UserId::new(user), change);
        }
    }
}

/// A store's subscriber connection and the one channel it listens on.
struct Subscription {
    subscriber: ConnectionManager,
    channel: String,
    timeout: Duration,
    /// Whether the channel was subscribed to; the connection manager resubscribes a new
    /// connection to it from then on.
    subscribed: bool,
}

/// Pings a store's subscriber connection every [`KEEP_ALIVE`] through the breaker, which
/// makes the connection manager notice a lost connection and reconnect (and resubscribe) even
/// when nothing is published; subscribes first if that has not happened yet. Ends with its
/// owner.
async fn keep_alive<K: Kind>(
    owner: Weak<Shared<K>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_message_heads_read_back_and_keys_keep_users_apart() {
        let mut message = head("node:1", &UserId::new("al:ice"));
        message.push_str("rest");
        let mut rest = message.as_str();
        assert_eq!(next_field(&mut rest), Some("node:1"));
        assert_eq!(next_field(&mut rest), Some("al:ice"));
        assert_eq!(rest, "rest");
        assert_eq!(next_field(&mut "x"), None);
        assert_eq!(next_field(&mut "9:short"), None);
        assert_eq!(
            user_key("h:", "events", &UserId::new("a}b")),
            "h:events:3:{a}b}"
        );
    }
}
