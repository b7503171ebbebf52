//! The one hash that spreads topics over shards, shared by the topic index and the in-memory
//! history store.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

/// The shard of `key` among `shards` shards: an index below `shards` (0 when `shards` is 0).
///
/// Deterministic within a build (SipHash with fixed keys), so a key always maps to the same
/// shard; the topic index and the history store size their shard arrays independently.
pub(crate) fn shard_of<K: Hash + ?Sized>(key: &K, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    let shards = u64::try_from(shards.max(1)).unwrap_or(u64::MAX);
    // The remainder is below `shards`, itself a `usize`, so the conversion cannot fail.
    usize::try_from(hasher.finish() % shards).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_in_range_and_stable() {
        for shards in [1, 7, 64] {
            for key in ["a", "chat:1", "user:alice", ""] {
                let shard = shard_of(key, shards);
                assert!(shard < shards);
                assert_eq!(shard, shard_of(key, shards));
            }
        }
        assert_eq!(shard_of("a", 0), 0);
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let used: std::collections::BTreeSet<usize> = (0..1_000)
            .map(|n| shard_of(&format!("topic:{n}"), 16))
            .collect();
        assert_eq!(used.len(), 16);
    }
}
