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
//! Every Redis call of this module goes through the store's one task ([`Store`]) and the
//! command timeout; a call that fails or times out is answered with
//! [`PreferenceError::Unavailable`].

use std::collections::BTreeMap;

use herald_core::{ChangedElsewhere, PreferenceError, PreferenceReply, PreferenceStore, UserId};
use redis::Script;
use serde_json::{Map, Value};

use crate::{
    guard::RedisBreaker,
    link::{RedisBrokerError, RedisSettings},
    store::{self, Commands, Store, user_key},
};

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
    store: Store<Preferences>,
}

impl std::fmt::Debug for RedisPreferenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPreferenceStore")
            .finish_non_exhaustive()
    }
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
        let preferences = Preferences {
            update: Script::new(UPDATE),
        };
        let store = Store::connect(settings, breaker, channel, preferences).await?;
        Ok(Self { store })
    }
}

impl PreferenceStore for RedisPreferenceStore {
    fn attach(&self, local: ChangedElsewhere) {
        self.store.attach(local);
    }

    fn get(&self, user: &UserId, reply: PreferenceReply) {
        self.store.queue(Call::Get(user.clone(), reply));
    }

    fn update(&self, user: &UserId, patch: Map<String, Value>, reply: PreferenceReply) {
        self.store.queue(Call::Update(user.clone(), patch, reply));
    }
}

fn changes_channel(prefix: &str) -> String {
    format!("{prefix}prefs")
}

/// The preference store's part of its [`Store`]: its script, made once for its task, and the
/// changes other nodes publish.
struct Preferences {
    update: Script,
}

impl store::Kind for Preferences {
    type Call = Call;
    type Local = ChangedElsewhere;
    /// The user's preferences after the change.
    type Change<'a> = Map<String, Value>;

    const CHANGE: &'static str = "a preference change";

    fn refuse(call: Call) {
        let (Call::Get(_, reply) | Call::Update(_, _, reply)) = call;
        reply(Err(PreferenceError::Unavailable(
            "redis: the preference store's queue is full".to_owned(),
        )));
    }

    async fn perform(&self, settings: &RedisSettings, commands: &mut Commands, call: Call) {
        let prefix = settings.key_prefix.as_str();
        let (answer, reply) = match call {
            Call::Get(user, reply) => {
                let mut command = redis::cmd("HGETALL");
                command.arg(user_key(prefix, "prefs", &user));
                (commands.query(&command).await, reply)
            }
            Call::Update(user, patch, reply) => {
                let mut invocation = self.update.prepare_invoke();
                invocation
                    .key(user_key(prefix, "prefs", &user))
                    .arg(changes_channel(prefix))
                    .arg(store::head(&settings.node_id, &user));
                for (key, value) in &patch {
                    let text = if value.is_null() {
                        String::new()
                    } else {
                        value.to_string()
                    };
                    invocation.arg(key).arg(text);
                }
                (commands.invoke(&invocation).await, reply)
            }
        };
        reply(
            answer
                .map(preferences)
                .map_err(PreferenceError::Unavailable),
        );
    }

    /// Reads the preferences after the change, one JSON object.
    fn read(rest: &str) -> Option<Map<String, Value>> {
        serde_json::from_str(rest).ok()
    }

    fn tell(local: &ChangedElsewhere, user: &UserId, preferences: Map<String, Value>) {
        local.changed(user, preferences);
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
        let mut message = store::head("node:1", &UserId::new("al:ice"));
        message.push_str(r#"{"theme":"dark","a\/b":[1]}"#);
        let (node, user, preferences) = store::read_change::<Preferences>(&message).expect("reads");
        assert_eq!((node, user), ("node:1", "al:ice"));
        assert_eq!(
            Value::Object(preferences),
            json!({"theme": "dark", "a/b": [1]})
        );
        assert!(store::read_change::<Preferences>("5:node").is_none());
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
