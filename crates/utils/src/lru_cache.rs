//! A bounded least-recently-used cache whose entries may expire, read through an injected clock.

use std::{
    borrow::Borrow,
    fmt,
    hash::Hash,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use crate::clock::{Clock, SystemClock};

/// A least-recently-used cache of at most `capacity` entries, each optionally with a time to live.
///
/// Built on the `lru` crate's sparse cache, so a large capacity reserves no memory up front.
/// Time comes from the injected [`Clock`], so tests drive expiry with a
/// [`ManualClock`](crate::ManualClock).
///
/// An entry inserted with a TTL is *expired* from the instant `inserted_at + ttl` on.
/// Expired entries are never returned; they are removed lazily, when [`get`](Self::get),
/// [`remove`](Self::remove) or an eviction meets them, or all at once by
/// [`purge_expired`](Self::purge_expired).
/// Until then they still count in [`len`](Self::len) and take a slot.
///
/// Herald uses it as the publish-dedupe window (key `(topic, publish id)`, value the offset),
/// which memory degradation may later shrink with [`resize`](Self::resize).
///
/// ```
/// use std::time::Duration;
/// use herald_utils::{Clock, LruCache, ManualClock};
///
/// let clock = ManualClock::new();
/// let mut seen = LruCache::new(2, clock.clone());
/// seen.insert_with_ttl("a", 1, Duration::from_secs(5));
/// assert_eq!(seen.get(&"a"), Some(&1));
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(seen.get(&"a"), None);
/// ```
pub struct LruCache<K, V, C: Clock = SystemClock> {
    /// The entries, most recently used first; its own bound is `max(capacity, 1)`.
    inner: lru::LruCache<K, Entry<V>>,
    /// The bound callers asked for; zero means the cache holds nothing.
    capacity: usize,
    /// Where expiry reads the time.
    clock: C,
}

/// A cached value and when it stops being valid.
struct Entry<V> {
    /// The caller's value.
    value: V,
    /// The first instant at which the entry is expired; `None` never expires.
    expires_at: Option<Instant>,
}

impl<V> Entry<V> {
    /// Whether the entry is still valid at `now`.
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|deadline| now < deadline)
    }
}

impl<K: Hash + Eq, V, C: Clock> LruCache<K, V, C> {
    /// An empty cache holding at most `capacity` entries, reading time from `clock`.
    ///
    /// No memory is reserved up front, whatever the capacity.
    /// A capacity of 0 makes a cache that holds nothing: every insert hands its entry straight
    /// back as evicted.
    pub fn new(capacity: usize, clock: C) -> Self {
        Self {
            inner: lru::LruCache::sparse(inner_cap(capacity)),
            capacity,
            clock,
        }
    }

    /// Inserts an entry that never expires (it can still be evicted); see
    /// [`insert_with_ttl`](Self::insert_with_ttl).
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.insert_entry(
            key,
            Entry {
                value,
                expires_at: None,
            },
        )
    }

    /// Inserts an entry that expires `ttl` from now, as the most recently used.
    ///
    /// If `key` is already cached, its value and expiry are replaced and nothing is evicted.
    /// Otherwise, when the cache is full, the least recently used entry makes room and is returned
    /// so the caller can count evictions; an entry that had already expired is dropped silently
    /// instead, since it was no longer in the cache as far as callers can tell.
    /// A TTL too large to represent as an instant means the entry never expires.
    pub fn insert_with_ttl(&mut self, key: K, value: V, ttl: Duration) -> Option<(K, V)> {
        let expires_at = self.clock.now().checked_add(ttl);
        self.insert_entry(key, Entry { value, expires_at })
    }

    /// Returns the live value for `key` and marks it most recently used.
    ///
    /// An expired entry found here is removed and `None` is returned.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let live = {
            let entry = self.inner.get(key)?;
            // Only entries with a deadline read the clock, so TTL-less caches never pay for it.
            entry.expires_at.is_none() || entry.is_live(self.clock.now())
        };
        if !live {
            self.inner.pop(key);
            return None;
        }
        // A second lookup, because returning the first borrow conditionally is rejected by the
        // current borrow checker when the other branch mutates the map.
        self.inner.peek(key).map(|entry| &entry.value)
    }

    /// Returns the live value for `key` without changing its recency.
    ///
    /// An expired entry is reported as absent but not removed (this takes `&self`).
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.inner.peek(key)?;
        let live = entry.expires_at.is_none() || entry.is_live(self.clock.now());
        live.then_some(&entry.value)
    }

    /// Whether `key` has a live entry; does not change its recency.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek(key).is_some()
    }

    /// Removes the entry for `key`, returning its value if it was still live.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.inner.pop(key)?;
        self.live_value(entry)
    }

    /// Entries held, *including* expired ones not yet removed; never more than
    /// [`capacity`](Self::capacity).
    ///
    /// Call [`purge_expired`](Self::purge_expired) first for an exact count of live entries.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no entries are held, expired or not.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The most entries the cache holds.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    /// Removes every expired entry and returns how many were removed.
    ///
    /// O(len); meant for a periodic sweep, not the hot path.
    pub fn purge_expired(&mut self) -> usize {
        let before = self.inner.len();
        let now = self.clock.now();
        self.inner.retain(|_, entry| entry.is_live(now));
        before - self.inner.len()
    }

    /// Changes the capacity, effective immediately.
    ///
    /// Shrinking below the current length first drops expired entries, then evicts the least
    /// recently used live ones until the cache fits; growing keeps every entry.
    /// Shrinking also returns the freed memory to the allocator.
    pub fn resize(&mut self, capacity: usize) {
        if self.inner.len() > capacity {
            self.purge_expired();
        }
        if capacity == 0 {
            self.inner.clear();
        }
        self.inner.resize(inner_cap(capacity));
        self.capacity = capacity;
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.inner.clear();
    }

    /// Inserts a prepared entry; shared by the two insert flavours.
    fn insert_entry(&mut self, key: K, entry: Entry<V>) -> Option<(K, V)> {
        if self.capacity == 0 {
            return Some((key, entry.value));
        }
        // `push` returns either the replaced entry of the same key, or the LRU entry it evicted
        // to make room. Only the evicted key is absent afterwards, which tells the two apart
        // without a lookup before every insert.
        let (old_key, old_entry) = self.inner.push(key, entry)?;
        if self.inner.contains(&old_key) {
            return None;
        }
        let value = self.live_value(old_entry)?;
        Some((old_key, value))
    }

    /// The entry's value if it is still live now.
    fn live_value(&self, entry: Entry<V>) -> Option<V> {
        let live = entry.expires_at.is_none() || entry.is_live(self.clock.now());
        live.then_some(entry.value)
    }
}

impl<K: Hash + Eq, V, C: Clock> fmt::Debug for LruCache<K, V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LruCache")
            .field("len", &self.inner.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The `lru` crate's bound for a requested capacity; it cannot be zero, so zero is handled by
/// [`LruCache`] itself and the inner cache merely stays empty.
fn inner_cap(capacity: usize) -> NonZeroUsize {
    NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use crate::{clock::ManualClock, lru_cache::LruCache};

    fn cache(capacity: usize) -> (LruCache<u32, u32, ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        (LruCache::new(capacity, clock.clone()), clock)
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn insert_returns_evicted_lru_entry() {
        let (mut cache, _) = cache(2);
        assert_eq!(cache.insert(1, 10), None);
        assert_eq!(cache.insert(2, 20), None);
        assert_eq!(cache.get(&1), Some(&10));
        assert_eq!(cache.insert(3, 30), Some((2, 20)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn replacing_a_key_evicts_nothing() {
        let (mut cache, _) = cache(2);
        assert_eq!(cache.insert(1, 10), None);
        assert_eq!(cache.insert(2, 20), None);
        assert_eq!(cache.insert(1, 11), None);
        assert_eq!(cache.peek(&1), Some(&11));
        assert_eq!(cache.insert(3, 30), Some((2, 20)));
    }

    #[test]
    fn ttl_entry_expires_at_deadline() {
        let (mut cache, clock) = cache(4);
        cache.insert_with_ttl(1, 10, 5 * SEC);
        clock.advance(5 * SEC - Duration::from_nanos(1));
        assert_eq!(cache.get(&1), Some(&10));
        clock.advance(Duration::from_nanos(1));
        assert!(!cache.contains(&1));
        assert_eq!(cache.peek(&1), None);
        assert_eq!(cache.len(), 1, "peek does not remove");
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.len(), 0, "get removes what it finds expired");
    }

    #[test]
    fn evicting_an_expired_entry_is_not_reported() {
        let (mut cache, clock) = cache(1);
        cache.insert_with_ttl(1, 10, SEC);
        clock.advance(SEC);
        assert_eq!(cache.insert(2, 20), None);
        assert_eq!(cache.peek(&2), Some(&20));
    }

    #[test]
    fn reinserting_refreshes_the_ttl() {
        let (mut cache, clock) = cache(2);
        cache.insert_with_ttl(1, 10, SEC);
        clock.advance(SEC / 2);
        cache.insert_with_ttl(1, 11, SEC);
        clock.advance(SEC / 2);
        assert_eq!(cache.get(&1), Some(&11));
        cache.insert(1, 12);
        clock.advance(100 * SEC);
        assert_eq!(cache.get(&1), Some(&12));
    }

    #[test]
    fn huge_ttl_never_expires() {
        let (mut cache, clock) = cache(1);
        cache.insert_with_ttl(1, 10, Duration::MAX);
        clock.advance(Duration::from_secs(1 << 40));
        assert_eq!(cache.get(&1), Some(&10));
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let (mut cache, _) = cache(0);
        assert_eq!(cache.insert(1, 10), Some((1, 10)));
        assert_eq!(cache.insert_with_ttl(2, 20, SEC), Some((2, 20)));
        assert!(cache.is_empty());
        assert_eq!(cache.get(&1), None);
    }

    #[test]
    fn remove_returns_only_live_values() {
        let (mut cache, clock) = cache(3);
        cache.insert(1, 10);
        cache.insert_with_ttl(2, 20, SEC);
        clock.advance(SEC);
        assert_eq!(cache.remove(&1), Some(10));
        assert_eq!(cache.remove(&2), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn purge_removes_exactly_the_expired() {
        let (mut cache, clock) = cache(4);
        cache.insert_with_ttl(1, 10, SEC);
        cache.insert_with_ttl(2, 20, 3 * SEC);
        cache.insert(3, 30);
        clock.advance(2 * SEC);
        assert_eq!(cache.purge_expired(), 1);
        assert_eq!(cache.len(), 2);
        assert!(cache.contains(&2) && cache.contains(&3));
    }

    #[test]
    fn shrinking_drops_expired_then_least_recent() {
        let (mut cache, clock) = cache(4);
        cache.insert(1, 10);
        cache.insert(2, 20);
        cache.insert_with_ttl(3, 30, SEC);
        cache.insert(4, 40);
        clock.advance(SEC);
        cache.resize(2);
        assert_eq!(cache.capacity(), 2);
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(&1));
        assert!(cache.contains(&2) && cache.contains(&4));
    }

    #[test]
    fn growing_keeps_entries_and_raises_the_bound() {
        let (mut cache, _) = cache(1);
        cache.insert(1, 10);
        cache.resize(3);
        assert_eq!(cache.insert(2, 20), None);
        assert_eq!(cache.insert(3, 30), None);
        assert_eq!(cache.len(), 3);
        cache.resize(0);
        assert!(cache.is_empty());
        assert_eq!(cache.insert(4, 40), Some((4, 40)));
    }

    #[test]
    fn borrowed_keys_work_for_lookups() {
        let mut cache = LruCache::new(2, ManualClock::new());
        cache.insert(String::from("topic"), 1);
        assert_eq!(cache.get("topic"), Some(&1));
        assert!(cache.contains("topic"));
        assert_eq!(cache.remove("topic"), Some(1));
    }

    /// One step of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        /// Insert, with a TTL in whole milliseconds when `Some`.
        Insert(u8, Option<u64>),
        Get(u8),
        Peek(u8),
        Contains(u8),
        Remove(u8),
        Advance(u64),
        Resize(usize),
        Purge,
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..8;
        prop_oneof![
            4 => (key.clone(), prop::option::of(0u64..6)).prop_map(|(k, t)| Op::Insert(k, t)),
            3 => key.clone().prop_map(Op::Get),
            1 => key.clone().prop_map(Op::Peek),
            1 => key.clone().prop_map(Op::Contains),
            1 => key.prop_map(Op::Remove),
            2 => (0u64..4).prop_map(Op::Advance),
            1 => (0usize..7).prop_map(Op::Resize),
            1 => Just(Op::Purge),
        ]
    }

    /// The obvious cache: a vector from least to most recently used, times in milliseconds.
    #[derive(Debug)]
    struct Model {
        /// `(key, value, expires_at_ms)`, least recently used first.
        entries: Vec<(u8, u32, Option<u64>)>,
        capacity: usize,
        now: u64,
    }

    impl Model {
        fn live(&self, expires_at: Option<u64>) -> bool {
            expires_at.is_none_or(|at| self.now < at)
        }

        fn position(&self, key: u8) -> Option<usize> {
            self.entries.iter().position(|e| e.0 == key)
        }

        fn insert(&mut self, key: u8, value: u32, ttl: Option<u64>) -> Option<(u8, u32)> {
            if self.capacity == 0 {
                return Some((key, value));
            }
            let expires_at = ttl.map(|t| self.now + t);
            if let Some(i) = self.position(key) {
                self.entries.remove(i);
                self.entries.push((key, value, expires_at));
                return None;
            }
            let mut evicted = None;
            if self.entries.len() == self.capacity {
                let (k, v, at) = self.entries.remove(0);
                evicted = self.live(at).then_some((k, v));
            }
            self.entries.push((key, value, expires_at));
            evicted
        }

        fn get(&mut self, key: u8) -> Option<u32> {
            let i = self.position(key)?;
            let entry = self.entries.remove(i);
            if !self.live(entry.2) {
                return None;
            }
            self.entries.push(entry);
            Some(entry.1)
        }

        fn peek(&self, key: u8) -> Option<u32> {
            let entry = self.entries[self.position(key)?];
            self.live(entry.2).then_some(entry.1)
        }

        fn remove(&mut self, key: u8) -> Option<u32> {
            let entry = self.entries.remove(self.position(key)?);
            self.live(entry.2).then_some(entry.1)
        }

        fn purge(&mut self) -> usize {
            let before = self.entries.len();
            let now = self.now;
            self.entries.retain(|e| e.2.is_none_or(|at| now < at));
            before - self.entries.len()
        }

        fn resize(&mut self, capacity: usize) {
            if self.entries.len() > capacity {
                self.purge();
            }
            while self.entries.len() > capacity {
                self.entries.remove(0);
            }
            self.capacity = capacity;
        }
    }

    proptest! {
        #[test]
        fn matches_model(capacity in 0usize..6, ops in prop::collection::vec(op(), 0..100)) {
            let (mut cache, clock) = cache(capacity);
            let mut model = Model { entries: Vec::new(), capacity, now: 0 };
            for (value, op) in (0u32..).zip(ops) {
                match op {
                    Op::Insert(k, ttl) => {
                        let got = match ttl {
                            Some(ms) => cache.insert_with_ttl(k.into(), value, Duration::from_millis(ms)),
                            None => cache.insert(k.into(), value),
                        };
                        let want = model.insert(k, value, ttl).map(|(k, v)| (u32::from(k), v));
                        prop_assert_eq!(got, want);
                    }
                    Op::Get(k) => prop_assert_eq!(cache.get(&k.into()).copied(), model.get(k)),
                    Op::Peek(k) => prop_assert_eq!(cache.peek(&k.into()).copied(), model.peek(k)),
                    Op::Contains(k) => prop_assert_eq!(cache.contains(&k.into()), model.peek(k).is_some()),
                    Op::Remove(k) => prop_assert_eq!(cache.remove(&k.into()), model.remove(k)),
                    Op::Advance(ms) => {
                        clock.advance(Duration::from_millis(ms));
                        model.now += ms;
                    }
                    Op::Resize(n) => {
                        cache.resize(n);
                        model.resize(n);
                    }
                    Op::Purge => prop_assert_eq!(cache.purge_expired(), model.purge()),
                }
                prop_assert!(cache.len() <= cache.capacity());
                prop_assert_eq!(cache.len(), model.entries.len());
                prop_assert_eq!(cache.capacity(), model.capacity);
            }
            // Recency order must match too: the cache evicts exactly the model's LRU entries.
            let order: Vec<u32> = cache.inner.iter().rev().map(|(k, _)| *k).collect();
            let want: Vec<u32> = model.entries.iter().map(|e| u32::from(e.0)).collect();
            prop_assert_eq!(order, want);
        }

        #[test]
        fn never_returns_an_expired_entry(
            ttls in prop::collection::vec(1u64..10, 1..20),
            advance in 0u64..12,
        ) {
            let (mut cache, clock) = cache(ttls.len());
            for (k, &ttl) in (0u32..).zip(&ttls) {
                cache.insert_with_ttl(k, k, Duration::from_millis(ttl));
            }
            clock.advance(Duration::from_millis(advance));
            for (k, &ttl) in (0u32..).zip(&ttls) {
                prop_assert_eq!(cache.get(&k).is_some(), advance < ttl);
            }
        }
    }
}
