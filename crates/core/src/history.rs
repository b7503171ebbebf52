//! Topic history for resume: the [`HistoryStore`] seam and its bounded in-memory implementation.
//!
//! The topic index calls the store under the topic's lock, so an append and a replay never
//! interleave: a resuming subscriber gets exactly the publications it missed, then live ones.

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use herald_memory::CleanupReport;
use herald_protocol::Topic;
use herald_utils::CircularBuffer;

use crate::{
    outbox::Frame,
    shard::shard_of,
    sizes::{compact, scaled},
};

/// One retained publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its offset.
    pub offset: u64,
    /// The encoded `message` frame, replayed as is.
    pub frame: Frame,
    /// When it was published (gateway clock, milliseconds).
    pub published_ms: u64,
}

/// Where topic history lives. Called under the topic's lock.
pub trait HistoryStore: Send + Sync + 'static {
    /// Retains `entry` as the topic's newest publication.
    fn append(&self, topic: &Topic, entry: HistoryEntry);

    /// Every retained publication after `after`, oldest first, when the history still holds all
    /// of them (`after` up to `last_offset`); `None` when some were already dropped.
    fn since(
        &self,
        topic: &Topic,
        after: u64,
        last_offset: u64,
        now_ms: u64,
    ) -> Option<Vec<HistoryEntry>>;

    /// At most `limit` retained publications after `after`, oldest first.
    fn page(&self, topic: &Topic, after: u64, limit: usize, now_ms: u64) -> Vec<HistoryEntry>;

    /// Forgets a topic's history (the topic itself is being dropped).
    fn remove(&self, topic: &Topic);

    /// Drops entries past their time-to-live, then whole histories of the least recently
    /// published topics while over the byte budget. Returns how many entries were dropped (the
    /// gateway counts them as `herald_history_dropped_total`).
    fn purge(&self, now_ms: u64) -> usize;

    /// Bytes of retained frames.
    fn bytes(&self) -> usize;

    /// Memory relief: keeps at most `fraction` (0.0 to 1.0) of the store's bounds, and of what
    /// it holds now, the newest publications first, and gives back spare capacity. Returns what was dropped (the
    /// gateway counts the entries as `herald_history_dropped_total`). The bounds themselves
    /// are unchanged: later publications are retained as before.
    ///
    /// The default trims nothing, which suits a store that keeps its history outside the
    /// process.
    fn trim(&self, fraction: f64) -> CleanupReport {
        let _ = fraction;
        CleanupReport::default()
    }
}

/// History in process memory: the last `per_topic` publications of each topic, kept for
/// `ttl_ms`, at most `max_bytes` of frames in all.
#[derive(Debug)]
pub struct InMemoryHistoryStore {
    shards: Box<[Shard]>,
    per_topic: usize,
    ttl_ms: u64,
    max_bytes: usize,
    bytes: AtomicUsize,
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<Topic, CircularBuffer<HistoryEntry>>>;

impl InMemoryHistoryStore {
    /// A store keeping `per_topic` publications per topic (0 keeps none) for `ttl_ms`, at most
    /// `max_bytes` in all.
    pub fn new(per_topic: usize, ttl_ms: u64, max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_topic,
            ttl_ms,
            max_bytes,
            bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, topic: &Topic) -> MutexGuard<'_, HashMap<Topic, CircularBuffer<HistoryEntry>>> {
        // Each critical section leaves the map consistent, so poison is ignored.
        self.shards[shard_of(topic, SHARDS)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn live(&self, entry: &HistoryEntry, now_ms: u64) -> bool {
        now_ms.saturating_sub(entry.published_ms) < self.ttl_ms
    }

    /// Drops the `n` oldest entries of `buffer`; returns how many were dropped.
    fn drop_oldest(&self, buffer: &mut CircularBuffer<HistoryEntry>, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let freed: usize = buffer.iter().take(n).map(|e| e.frame.len()).sum();
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        let kept: Vec<HistoryEntry> = buffer.iter().skip(n).cloned().collect();
        let dropped = buffer.len() - kept.len();
        buffer.clear();
        for entry in kept {
            buffer.push(entry);
        }
        dropped
    }

    /// Drops whole histories of the least recently published topics while the store holds more
    /// than `budget` bytes; returns the entries and bytes dropped.
    fn shrink_to(&self, budget: usize) -> (usize, usize) {
        let mut dropped = (0, 0);
        if self.bytes() <= budget {
            return dropped;
        }
        let mut newest: Vec<(u64, Topic)> = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            newest.extend(map.iter().filter_map(|(topic, buffer)| {
                Some((buffer.latest()?.published_ms, topic.clone()))
            }));
        }
        newest.sort_unstable_by_key(|(published, _)| *published);
        for (_, topic) in newest {
            if self.bytes() <= budget {
                break;
            }
            if let Some(buffer) = self.shard(&topic).remove(&topic) {
                let freed: usize = buffer.iter().map(|e| e.frame.len()).sum();
                self.bytes.fetch_sub(freed, Ordering::Relaxed);
                dropped.0 += buffer.len();
                dropped.1 += freed;
            }
        }
        dropped
    }
}

/// A size as a `u64` count (saturating; sizes fit on every supported target).
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl HistoryStore for InMemoryHistoryStore {
    fn append(&self, topic: &Topic, entry: HistoryEntry) {
        if self.per_topic == 0 || self.ttl_ms == 0 {
            return;
        }
        let added = entry.frame.len();
        let mut shard = self.shard(topic);
        let buffer = shard
            .entry(topic.clone())
            .or_insert_with(|| CircularBuffer::new(self.per_topic));
        let removed = buffer.push(entry).map_or(0, |old| old.frame.len());
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_sub(removed, Ordering::Relaxed);
    }

    fn since(
        &self,
        topic: &Topic,
        after: u64,
        last_offset: u64,
        now_ms: u64,
    ) -> Option<Vec<HistoryEntry>> {
        if after > last_offset {
            return None;
        }
        if after == last_offset {
            return Some(Vec::new());
        }
        let shard = self.shard(topic);
        let buffer = shard.get(topic)?;
        let missed: Vec<HistoryEntry> = buffer
            .iter()
            .filter(|e| e.offset > after && self.live(e, now_ms))
            .cloned()
            .collect();
        // Complete only if the retained run starts right after `after` and reaches the end.
        let complete = missed.first().is_some_and(|e| e.offset == after + 1)
            && missed.last().is_some_and(|e| e.offset == last_offset)
            && missed.len() as u64 == last_offset - after;
        complete.then_some(missed)
    }

    fn page(&self, topic: &Topic, after: u64, limit: usize, now_ms: u64) -> Vec<HistoryEntry> {
        let shard = self.shard(topic);
        let Some(buffer) = shard.get(topic) else {
            return Vec::new();
        };
        buffer
            .iter()
            .filter(|e| e.offset > after && self.live(e, now_ms))
            .take(limit)
            .cloned()
            .collect()
    }

    fn remove(&self, topic: &Topic) {
        if let Some(buffer) = self.shard(topic).remove(topic) {
            let freed: usize = buffer.iter().map(|e| e.frame.len()).sum();
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    fn purge(&self, now_ms: u64) -> usize {
        let mut dropped = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, buffer| {
                // Entries are in publication order, so the expired ones are a prefix: most
                // sweeps find none and touch nothing.
                let expired = buffer.iter().take_while(|e| !self.live(e, now_ms)).count();
                dropped += self.drop_oldest(buffer, expired);
                !buffer.is_empty()
            });
            compact(&mut map);
        }
        dropped + self.shrink_to(self.max_bytes).0
    }

    fn trim(&self, fraction: f64) -> CleanupReport {
        let before = self.bytes();
        let keep = scaled(self.per_topic, fraction);
        let mut entries = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, buffer| {
                let excess = buffer.len().saturating_sub(keep);
                entries += self.drop_oldest(buffer, excess);
                !buffer.is_empty()
            });
            compact(&mut map);
        }
        // A fraction of what is held, not only of the bound: under a memory budget smaller than
        // the history's own, trimming to half the bound could free nothing.
        let target = scaled(self.max_bytes, fraction).min(scaled(before, fraction));
        let (over_budget, _) = self.shrink_to(target);
        CleanupReport {
            entries: count(entries + over_budget),
            bytes: count(before.saturating_sub(self.bytes())),
        }
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::new("t").expect("valid topic")
    }

    fn store_with(
        per_topic: usize,
        offsets: std::ops::RangeInclusive<u64>,
    ) -> InMemoryHistoryStore {
        let store = InMemoryHistoryStore::new(per_topic, 1_000, 1 << 20);
        for offset in offsets {
            store.append(
                &topic(),
                HistoryEntry {
                    offset,
                    frame: Frame::from(format!("m{offset}")),
                    published_ms: offset,
                },
            );
        }
        store
    }

    fn offsets(entries: Option<Vec<HistoryEntry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.offset).collect())
    }

    #[test]
    fn since_replays_exactly_the_missed_publications() {
        let store = store_with(4, 1..=6);
        assert_eq!(
            offsets(store.since(&topic(), 3, 6, 10)),
            Some(vec![4, 5, 6])
        );
        assert_eq!(offsets(store.since(&topic(), 6, 6, 10)), Some(vec![]));
        // Offsets 1 and 2 fell out of the four retained: a resume from 1 has a gap.
        assert_eq!(offsets(store.since(&topic(), 1, 6, 10)), None);
        assert_eq!(offsets(store.since(&topic(), 7, 6, 10)), None);
    }

    #[test]
    fn expired_entries_are_neither_replayed_nor_paged() {
        let store = store_with(10, 1..=3);
        // At 1002 ms entries published at 1 and 2 ms are past the 1000 ms time-to-live.
        assert_eq!(offsets(store.since(&topic(), 0, 3, 1_002)), None);
        assert_eq!(offsets(store.since(&topic(), 2, 3, 1_002)), Some(vec![3]));
        assert_eq!(store.page(&topic(), 0, 10, 1_002).len(), 1);
        assert_eq!(store.purge(1_002), 2);
        assert_eq!(store.bytes(), 2);
    }

    #[test]
    fn byte_budget_drops_least_recently_published_topics() {
        let store = InMemoryHistoryStore::new(10, 1_000_000, 10);
        let old = Topic::new("old").expect("valid");
        let new = Topic::new("new").expect("valid");
        store.append(
            &old,
            HistoryEntry {
                offset: 1,
                frame: Frame::from("x".repeat(8)),
                published_ms: 1,
            },
        );
        store.append(
            &new,
            HistoryEntry {
                offset: 1,
                frame: Frame::from("y".repeat(8)),
                published_ms: 2,
            },
        );
        store.purge(3);
        assert!(store.page(&old, 0, 10, 3).is_empty());
        assert_eq!(store.page(&new, 0, 10, 3).len(), 1);
        assert_eq!(store.bytes(), 8);
    }

    #[test]
    fn trim_keeps_the_newest_fraction_of_each_bound() {
        let store = InMemoryHistoryStore::new(10, 1_000_000, 40);
        let old = Topic::new("old").expect("valid");
        for offset in 1..=4 {
            store.append(
                &old,
                HistoryEntry {
                    offset,
                    frame: Frame::from("x".repeat(4)),
                    published_ms: offset,
                },
            );
        }
        for offset in 1..=6 {
            store.append(
                &topic(),
                HistoryEntry {
                    offset,
                    frame: Frame::from("y".repeat(4)),
                    published_ms: 10 + offset,
                },
            );
        }
        // Half of ten per topic keeps five of `t` and all of `old`: 36 bytes, over half of the
        // 40-byte budget, so the least recently published topic goes too.
        let report = store.trim(0.5);
        assert_eq!(
            report,
            CleanupReport {
                entries: 5,
                bytes: 20
            }
        );
        assert!(store.page(&old, 0, 10, 20).is_empty());
        assert_eq!(
            offsets(Some(store.page(&topic(), 0, 10, 20))),
            Some(vec![2, 3, 4, 5, 6])
        );
        assert_eq!(store.bytes(), 20);
        assert_eq!(store.trim(1.0), CleanupReport::default());
        assert_eq!(store.trim(f64::NAN), CleanupReport::default());
    }

    #[test]
    fn paging_is_bounded_and_ordered() {
        let store = store_with(10, 1..=5);
        let page: Vec<u64> = store
            .page(&topic(), 1, 2, 5)
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(page, vec![2, 3]);
    }
}
