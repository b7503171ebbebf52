//! The one hash that spreads topics over shards, shared by the topic index and the in-memory
//! history store.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;

/// The shard of `key` among `shards` shards: an index below `shards` (0 when `shards` is 0).
///
/// Deterministic (foldhash with a fixed seed), so a key always maps to the same shard; the
/// topic index and the history store size their shard arrays independently. This hash only
/// spreads keys over locks: the maps inside the shards hash with std's keyed SipHash, so keys
/// chosen to share a shard cost lock contention, never a map's lookups. foldhash, because this
/// runs twice per publication and SipHash cost 200 instructions a time.
pub(crate) fn shard_of<K: Hash + ?Sized>(key: &K, shards: usize) -> usize {
    const SPREAD: FixedState = FixedState::with_seed(0x6865_7261_6c64);
    let shards = u64::try_from(shards.max(1)).unwrap_or(u64::MAX);
    // The remainder is below `shards`, itself a `usize`, so the conversion cannot fail.
    usize::try_from(SPREAD.hash_one(key) % shards).unwrap_or(0)
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
