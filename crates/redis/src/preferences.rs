//! [`RedisPreferenceStore`]: core's [`PreferenceStore`] over Redis, so that every node reads
//! and changes the same preferences.
//!
//! One hash per user, `<prefix>prefs:<len>:{<user>}`: a field per top-level key, its value the
//! key's JSON text. An update is one script, atomic in Redis, with the merge rule of the
//! in-memory store ([`herald_core::merge_patch`]): each key of the patch replaces the stored
//! one and `null` removes it; the script answers the preferences after the change. Preferences
//! have no time-to-live in Redis: they stay until the user clears them (Redis's own memory
//! policy is the bound).
//!
//! Every Redis call of this module goes through one task ([`run_calls`]) and the command
//! timeout; a call that fails or times out is answered with [`PreferenceError::Unavailable`].

use std::{
    collections::BTreeMap,
    sync::{Arc, Weak},
};

use herald_core::{PreferenceError, PreferenceReply, PreferenceStore, UserId};
use redis::{Script, aio::ConnectionManager};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::{
    broker::{RedisBrokerError, RedisSettings},
    events::{bounded, open, user_key},
};

/// Calls queued for the store's task before callers are refused.
const CALL_QUEUE: usize = 10_000;

/// `KEYS[1]`: the user's hash. `ARGV`: pairs of key and JSON text (empty: remove the key).
/// Returns the hash after the change, as `HGETALL` does.
const UPDATE: &str = r"
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return redis.call('HGETALL', KEYS[1])
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
}

impl RedisPreferenceStore {
    /// Connects to Redis and starts the store's task on the current tokio runtime. Fails when
    /// Redis cannot be reached within the connect timeout.
    pub async fn connect(settings: RedisSettings) -> Result<Self, RedisBrokerError> {
        let bound = settings.connect_timeout * 2;
        let connection = tokio::time::timeout(bound, open(&settings, None))
            .await
            .map_err(|_| RedisBrokerError::ConnectTimeout(bound))??;
        let (calls, queue) = mpsc::channel(CALL_QUEUE);
        let shared = Arc::new(Shared { settings, calls });
        tokio::spawn(run_calls(Arc::downgrade(&shared), connection, queue));
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
        let prefix = shared.settings.key_prefix.as_str();
        let timeout = shared.settings.command_timeout;
        let (answer, reply) = match call {
            Call::Get(user, reply) => {
                let key = user_key(prefix, "prefs", &user);
                let answer = bounded(
                    timeout,
                    redis::cmd("HGETALL")
                        .arg(key)
                        .query_async::<BTreeMap<String, String>>(&mut connection),
                )
                .await;
                (answer, reply)
            }
            Call::Update(user, patch, reply) => {
                let mut invocation = update.prepare_invoke();
                invocation.key(user_key(prefix, "prefs", &user));
                for (key, value) in &patch {
                    let text = if value.is_null() {
                        String::new()
                    } else {
                        value.to_string()
                    };
                    invocation.arg(key).arg(text);
                }
                let answer = bounded(timeout, invocation.invoke_async(&mut connection)).await;
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
