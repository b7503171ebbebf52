//! Size estimates and the compaction of maps: what memory relief and the memory sources use to
//! say how much a structure holds and to give back what it no longer needs.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
    mem::size_of,
};

/// Spare slots a map may keep before [`compact`] gives them back.
const SPARE_SLOTS: usize = 16;

/// Gives a map's spare capacity back to the allocator when it is much larger than its
/// contents (more than twice its entries and [`SPARE_SLOTS`] slots spare); returns the
/// estimated bytes freed: one entry and one control byte per slot given back.
///
/// A map that grew for a burst keeps its capacity until then; calling this once a second or
/// under pressure costs one rehash of the survivors, and nothing when there is nothing to gain.
pub(crate) fn compact<K: Hash + Eq, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) -> usize {
    let before = map.capacity();
    if before <= map.len().saturating_mul(2).saturating_add(SPARE_SLOTS) {
        return 0;
    }
    map.shrink_to_fit();
    before.saturating_sub(map.capacity()) * (size_of::<(K, V)>() + 1)
}

/// `bound` scaled by `fraction` (clamped to 0.0..=1.0, rounded down); a `fraction` that is not a
/// number leaves the bound as it is.
pub(crate) fn scaled(bound: usize, fraction: f64) -> usize {
    if fraction.is_nan() || fraction >= 1.0 {
        return bound;
    }
    if fraction <= 0.0 {
        return 0;
    }
    // `as` saturates and `fraction < 1.0`, so the product stays below `bound`.
    (bound as f64 * fraction) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_only_maps_much_larger_than_their_contents() {
        let mut map: HashMap<u64, u64> = (0..1_000).map(|n| (n, n)).collect();
        assert_eq!(compact(&mut map), 0);
        map.retain(|n, _| *n < 10);
        assert!(compact(&mut map) > 0);
        assert!(map.capacity() < 100);
        assert_eq!(map.len(), 10);
    }

    #[test]
    fn scaling_clamps_the_fraction() {
        assert_eq!(
            [0.5, 0.0, -1.0, 1.0, 2.0, f64::NAN].map(|f| scaled(100, f)),
            [50, 0, 0, 100, 100, 100]
        );
    }
}
