//! User preferences: the [`PreferenceStore`] seam and its bounded in-memory implementation.
//!
//! The seam answers through a callback, so that a networked store (shared by the nodes of a
//! cluster) can answer from its own I/O task, while the in-memory store answers before the call
//! returns, as cheaply as a direct call.

use std::sync::{Mutex, PoisonError, Weak};

use herald_utils::{LruCache, SystemClock};
use serde_json::{Map, Value};

use crate::ids::UserId;

/// Why a store could not read or change preferences.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreferenceError {
    /// The store cannot be reached or did not answer in time; the text says why.
    #[error("preference store unavailable: {0}")]
    Unavailable(String),
}

/// How a [`PreferenceStore`] answers: once, with the user's preferences or why not.
pub type PreferenceReply = Box<dyn FnOnce(Result<Map<String, Value>, PreferenceError>) + Send>;

/// Where users' preferences live; shared by all of a user's connections (on every node, for a
/// shared store).
///
/// # Contract
///
/// Neither method blocks: each calls `reply` exactly once, before returning (in memory) or
/// later from any task (a networked store); calls of one node are performed in the order they
/// were made. A store shared by several nodes tells every *other* attached node of each
/// change through its [`ChangedElsewhere`] handle, in the order the changes were made.
pub trait PreferenceStore: Send + Sync + 'static {
    /// Connects this node: changes made on other nodes reach `local` from now on. A store that
    /// only this node uses has nothing to tell and ignores it.
    fn attach(&self, local: ChangedElsewhere) {
        drop(local);
    }

    /// Answers the user's preferences (an empty object when none were set).
    fn get(&self, user: &UserId, reply: PreferenceReply);

    /// Merges `patch` into the user's preferences: top-level keys replace, `null` removes a
    /// key. Answers the preferences after the change.
    fn update(&self, user: &UserId, patch: Map<String, Value>, reply: PreferenceReply);
}

/// Preferences in process memory, for the most recently active `capacity` users.
///
/// Bounded: when more users than `capacity` have preferences, the least recently used user's
/// preferences are forgotten (they read as empty again). A persistent store replaces this one
/// where preferences must survive restarts.
#[derive(Debug)]
pub struct InMemoryPreferenceStore {
    users: Mutex<LruCache<UserId, Map<String, Value>>>,
}

impl InMemoryPreferenceStore {
    /// A store remembering at most `capacity` users' preferences.
    pub fn new(capacity: usize) -> Self {
        Self {
            users: Mutex::new(LruCache::new(capacity, SystemClock)),
        }
    }
}

impl InMemoryPreferenceStore {
    /// The user's preferences (an empty object when none were set).
    pub fn read(&self, user: &UserId) -> Map<String, Value> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.get(user).cloned().unwrap_or_default()
    }

    /// Merges `patch` into the user's preferences; returns them after the change.
    pub fn merge(&self, user: &UserId, patch: Map<String, Value>) -> Map<String, Value> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current = users.remove(user).unwrap_or_default();
        merge_patch(&mut current, patch);
        if !current.is_empty() {
            users.insert(user.clone(), current.clone());
        }
        current
    }
}

impl PreferenceStore for InMemoryPreferenceStore {
    fn get(&self, user: &UserId, reply: PreferenceReply) {
        reply(Ok(self.read(user)));
    }

    fn update(&self, user: &UserId, patch: Map<String, Value>, reply: PreferenceReply) {
        reply(Ok(self.merge(user, patch)));
    }
}

/// Receives the preferences other nodes changed.
pub(crate) trait Changed: Send + Sync {
    /// The user's preferences are now `preferences`.
    fn changed(&self, user: &UserId, preferences: Map<String, Value>);
}

/// The handle through which a shared [`PreferenceStore`] tells a node that a user's
/// preferences were changed on another node: the node applies them to the user's connections
/// here and pushes them the `preferences` frame. Holds the node weakly: a node that went away
/// is told nothing.
#[derive(Clone)]
pub struct ChangedElsewhere {
    node: Weak<dyn Changed>,
}

impl std::fmt::Debug for ChangedElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangedElsewhere").finish_non_exhaustive()
    }
}

impl ChangedElsewhere {
    pub(crate) fn new(node: Weak<dyn Changed>) -> Self {
        Self { node }
    }

    /// The user's preferences were changed on another node and are now `preferences`.
    pub fn changed(&self, user: &UserId, preferences: Map<String, Value>) {
        if let Some(node) = self.node.upgrade() {
            node.changed(user, preferences);
        }
    }
}

/// Batching is on unless the preferences say `"batching": false`.
pub(crate) fn batching_preference(preferences: &Map<String, Value>) -> bool {
    preferences.get("batching") != Some(&Value::Bool(false))
}

/// The merge rule every store follows: each top-level key of `patch` replaces the one in
/// `current`, and a `null` removes it.
pub fn merge_patch(current: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            current.remove(&key);
        } else {
            current.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn update_merges_top_level_keys_and_null_removes() {
        let store = InMemoryPreferenceStore::new(10);
        let alice = UserId::new("alice");
        store.merge(&alice, object(json!({"theme": "dark", "lang": "en"})));
        let after = store.merge(
            &alice,
            object(json!({"theme": "light", "lang": null, "batching": false})),
        );
        assert_eq!(
            Value::Object(after),
            json!({"theme": "light", "batching": false})
        );
        assert_eq!(store.read(&UserId::new("bob")), Map::new());
    }

    #[test]
    fn the_seam_answers_before_returning() {
        let store = InMemoryPreferenceStore::new(10);
        let alice = UserId::new("alice");
        let answer = std::sync::Arc::new(Mutex::new(None));
        let seen = std::sync::Arc::clone(&answer);
        store.update(
            &alice,
            object(json!({"theme": "dark"})),
            Box::new(move |result| {
                *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(result)
            }),
        );
        let got = answer.lock().unwrap_or_else(PoisonError::into_inner).take();
        assert_eq!(got, Some(Ok(object(json!({"theme": "dark"})))));
    }

    #[test]
    fn least_recent_users_are_forgotten_past_capacity() {
        let store = InMemoryPreferenceStore::new(1);
        store.merge(&UserId::new("a"), object(json!({"x": 1})));
        store.merge(&UserId::new("b"), object(json!({"x": 2})));
        assert!(store.read(&UserId::new("a")).is_empty());
        assert_eq!(
            Value::Object(store.read(&UserId::new("b"))),
            json!({"x": 2})
        );
    }
}
