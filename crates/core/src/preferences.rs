//! User preferences: the [`PreferenceStore`] seam and its bounded in-memory implementation.

use std::sync::{Mutex, PoisonError};

use herald_utils::{LruCache, SystemClock};
use serde_json::{Map, Value};

use crate::ids::UserId;

/// Where users' preferences live; shared by all of a user's connections.
pub trait PreferenceStore: Send + Sync + 'static {
    /// The user's preferences (an empty object when none were set).
    fn get(&self, user: &UserId) -> Map<String, Value>;

    /// Merges `patch` into the user's preferences: top-level keys replace, `null` removes a
    /// key. Returns the preferences after the change.
    fn update(&self, user: &UserId, patch: Map<String, Value>) -> Map<String, Value>;
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

impl PreferenceStore for InMemoryPreferenceStore {
    fn get(&self, user: &UserId) -> Map<String, Value> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.get(user).cloned().unwrap_or_default()
    }

    fn update(&self, user: &UserId, patch: Map<String, Value>) -> Map<String, Value> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current = users.remove(user).unwrap_or_default();
        for (key, value) in patch {
            if value.is_null() {
                current.remove(&key);
            } else {
                current.insert(key, value);
            }
        }
        if !current.is_empty() {
            users.insert(user.clone(), current.clone());
        }
        current
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
        store.update(&alice, object(json!({"theme": "dark", "lang": "en"})));
        let after = store.update(
            &alice,
            object(json!({"theme": "light", "lang": null, "batching": false})),
        );
        assert_eq!(
            Value::Object(after),
            json!({"theme": "light", "batching": false})
        );
        assert_eq!(store.get(&UserId::new("bob")), Map::new());
    }

    #[test]
    fn least_recent_users_are_forgotten_past_capacity() {
        let store = InMemoryPreferenceStore::new(1);
        store.update(&UserId::new("a"), object(json!({"x": 1})));
        store.update(&UserId::new("b"), object(json!({"x": 2})));
        assert!(store.get(&UserId::new("a")).is_empty());
        assert_eq!(Value::Object(store.get(&UserId::new("b"))), json!({"x": 2}));
    }
}
