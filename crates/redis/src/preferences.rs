//! [`RedisPreferenceStore`]: core's [`PreferenceStore`] over Redis, so that every node reads
//! and changes the same preferences.
//!
//! One hash per user, `<prefix>prefs:<len>:{<user>}`: a field per top-level key, its value the
//! key's JSON text. An update is one script, atomic in Redis, with the merge rule of the
//! in-memory store ([`herald_core::merge_patch`]): each key of the patch replaces the stored
//! one and `null` removes it; the script answers the preferences after the change and
//! `PUBLISH`es them on `<prefix>prefs` as `<len>:<node><len>:<user>` followed by the JSON
//! object, so every other node pushes them to the user's connections there, as the in-memory
//! store's node does to the user's other connections. Preferences have no time-to-live in
//! Redis: they stay until the user clears them (Redis's own memory policy is the bound).
//!
//! Every Redis call of this module goes through one task ([`run_calls`]) and the command
//! timeout; a call that fails or times out is answered with [`PreferenceError::Unavailable`].

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use herald_core::{ChangedElsewhere, PreferenceError, PreferenceReply, PreferenceStore, UserId};
use redis::{PushInfo, PushKind, Script, aio::ConnectionManager};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::{
    broker::{RedisBrokerError, RedisSettings},
    events::{field, next_field, user_key},
    guard::RedisBreaker,
    link::{self, bounded},
};

/// Calls queued for the store's task before callers are refused.
const CALL_QUEUE: usize = 10_000;

/// `KEYS[1]`: the user's hash. `ARGV[1]`: the change channel, `ARGV[2]`: the message head,
/// `ARGV[3..]`: pairs of key and JSON text (empty: remove the key). Publishes the head and the
/// preferences after the change as one JSON object; returns the hash, as `HGETALL` does.
const UPDATE: &str = r"
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local all = redis.call('HGETALL', KEYS[1])
local members = {}
for i = 1, #all, 2 do
  members[#members + 1] = cjson.encode(all[i]) .. ':' .. all[i + 1]
end
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '{' .. table.concat(members, ',') .. '}')
return all
";

/// A call for the store's task.
enum Call {
    Get(UserId, PreferenceReply),
    Update(UserId, Map<String, Value>, PreferenceReply),
}

/// Core's preference store over Redis. Cheap to clone; its task runs until the runtime stops.
#[derive(Clone)]
pub struct RedisPreferenceStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisPreferenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPreferenceStore")
            .finish_non_exhaustive()
    }
}

struct Shared {
    settings: RedisSettings,
    calls: mpsc::Sender<Call>,
    /// This node, once the gateway attached: told of changes made elsewhere.
    local: Mutex<Option<ChangedElsewhere>>,
    /// The node's circuit breaker, shared with its broker: one outage opens it for all.
    breaker: RedisBreaker,
}

impl RedisPreferenceStore {
    /// Opens the store's connections to Redis (lazily: they connect at their first call),
    /// subscribes to the change channel when Redis answers, and starts the store's tasks on
    /// the current tokio runtime. Every call goes through `breaker`, the broker's
    /// ([`crate::RedisBroker::breaker`]). Fails only on a URL that cannot be used.
    pub async fn connect(
        settings: RedisSettings,
        breaker: RedisBreaker,
    ) -> Result<Self, RedisBrokerError> {
        let channel = changes_channel(&settings.key_prefix);
        let (connection, subscription, pushes) =
            link::connect(&settings, &breaker, channel).await?;
        let (calls, queue) = mpsc::channel(CALL_QUEUE);
        let shared = Arc::new(Shared {
            settings,
            calls,
            local: Mutex::new(None),
            breaker: breaker.clone(),
        });
        tokio::spawn(run_calls(Arc::downgrade(&shared), connection, queue));
        tokio::spawn(receive_changes(Arc::downgrade(&shared), pushes));
        tokio::spawn(link::keep_alive(
            Arc::downgrade(&shared),
            breaker,
            subscription,
        ));
        Ok(Self { shared })
    }

    fn queue(&self, call: Call) {
        if let Err(refused) = self.shared.calls.try_send(call) {
            let (mpsc::error::TrySendError::Full(call) | mpsc::error::TrySendError::Closed(call)) =
                refused;
            let (Call::Get(_, reply) | Call::Update(_, _, reply)) = call;
            reply(Err(PreferenceError::Unavailable(
                "redis: the preference store's queue is full".to_owned(),
            )));
        }
    }
}

impl PreferenceStore for RedisPreferenceStore {
    fn attach(&self, local: ChangedElsewhere) {
        *self
            .shared
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(local);
    }

    fn get(&self, user: &UserId, reply: PreferenceReply) {
        self.queue(Call::Get(user.clone(), reply));
    }

    fn update(&self, user: &UserId, patch: Map<String, Value>, reply: PreferenceReply) {
        self.queue(Call::Update(user.clone(), patch, reply));
    }
}

/// The store's task: performs the calls one at a time, in the order they were made. Every
/// Redis call of the store is made here.
async fn run_calls(
    shared: Weak<Shared>,
    mut connection: ConnectionManager,
    mut queue: mpsc::Receiver<Call>,
) {
    let update = Script::new(UPDATE);
    while let Some(call) = queue.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let settings = &shared.settings;
        let prefix = settings.key_prefix.as_str();
        let timeout = settings.command_timeout;
        let (answer, reply) = match call {
            Call::Get(user, reply) => {
                let key = user_key(prefix, "prefs", &user);
                let answer = bounded(
                    &shared.breaker,
                    timeout,
                    redis::cmd("HGETALL")
                        .arg(key)
                        .query_async::<BTreeMap<String, String>>(&mut connection),
                )
                .await;
                (answer, reply)
            }
            Call::Update(user, patch, reply) => {
                let mut head = String::new();
                field(&mut head, &settings.node_id);
                field(&mut head, user.as_str());
                let mut invocation = update.prepare_invoke();
                invocation
                    .key(user_key(prefix, "prefs", &user))
                    .arg(changes_channel(prefix))
                    .arg(head);
                for (key, value) in &patch {
                    let text = if value.is_null() {
                        String::new()
                    } else {
                        value.to_string()
                    };
                    invocation.arg(key).arg(text);
                }
                let answer = bounded(
                    &shared.breaker,
                    timeout,
                    invocation.invoke_async(&mut connection),
                )
                .await;
                (answer, reply)
            }
        };
        reply(
            answer
                .map(preferences)
                .map_err(PreferenceError::Unavailable),
        );
    }
}

fn changes_channel(prefix: &str) -> String {
    format!("{prefix}prefs")
}

/// Reads a change message: the origin node, the user and the preferences after the change.
fn parse_change(message: &str) -> Option<(&str, &str, Map<String, Value>)> {
    let mut rest = message;
    let node = next_field(&mut rest)?;
    let user = next_field(&mut rest)?;
    let preferences = serde_json::from_str(rest).ok()?;
    Some((node, user, preferences))
}

/// Tells this node of the changes other nodes published.
async fn receive_changes(shared: Weak<Shared>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if push.kind != PushKind::Message {
            continue;
        }
        let Some(redis::Value::BulkString(payload)) = push.data.get(1) else {
            continue;
        };
        let Some((node, user, preferences)) =
            std::str::from_utf8(payload).ok().and_then(parse_change)
        else {
            tracing::warn!("redis: a preference change Herald cannot read was ignored");
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
            local.changed(&UserId::new(user), preferences);
        }
    }
}

/// The preferences from the user's hash; a field whose value is not JSON is skipped.
fn preferences(fields: BTreeMap<String, String>) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(key, text)| Some((key, serde_json::from_str(&text).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn change_messages_read_back() {
        let mut message = String::new();
        field(&mut message, "node:1");
        field(&mut message, "al:ice");
        message.push_str(r#"{"theme":"dark","a\/b":[1]}"#);
        let (node, user, preferences) = parse_change(&message).expect("reads");
        assert_eq!((node, user), ("node:1", "al:ice"));
        assert_eq!(
            Value::Object(preferences),
            json!({"theme": "dark", "a/b": [1]})
        );
        assert!(parse_change("5:node").is_none());
    }

    #[test]
    fn hash_fields_read_as_json_and_foreign_ones_are_skipped() {
        let fields = BTreeMap::from([
            ("theme".to_owned(), r#""dark""#.to_owned()),
            ("batching".to_owned(), "false".to_owned()),
            ("broken".to_owned(), "{".to_owned()),
        ]);
        assert_eq!(
            Value::Object(preferences(fields)),
            json!({"theme": "dark", "batching": false})
        );
    }
}
