//! The topic index: who is subscribed to what, each topic's offsets and epoch, and the fan-out
//! of a publication to its subscribers.
//!
//! Topics are spread over shards by hash; each topic has its own lock, so a publish to one topic
//! never waits for another topic, and never for a socket (fan-out only queues shared frames).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use herald_protocol::{StreamPosition, Topic};
use herald_utils::Priority;

use crate::{
    broker::{SequencedDelivery, SequencedPublication},
    connection::{Connection, offer_each},
    counters::Counters,
    history::{HistoryEntry, HistoryStore},
    ids::{ConnectionId, Hex},
    outbox::Frame,
    shard::shard_of,
    sizes::compact,
};

/// Bytes one known topic holds besides its history, by estimate: its shard entry, its state
/// and its epoch (a short string).
pub(crate) const TOPIC_BYTES: usize = std::mem::size_of::<(Topic, Arc<TopicState>)>()
    + std::mem::size_of::<TopicState>()
    + std::mem::size_of::<TopicInner>()
    + 64;

/// Bytes one subscription holds, by estimate: its entry in the topic's subscriber map and in
/// the connection's topic set.
pub(crate) const SUBSCRIPTION_BYTES: usize =
    std::mem::size_of::<(ConnectionId, Arc<Connection>)>() + 1 + std::mem::size_of::<Topic>();

const SHARDS: usize = 64;

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscribeError {
    /// The connection already holds the maximum number of subscriptions.
    #[error("subscription limit of {limit} per connection reached")]
    LimitReached {
        /// The per-connection limit.
        limit: usize,
    },
}

/// A topic's position: its last offset and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPosition {
    /// The offset of the last publication (0 before the first).
    pub last_offset: u64,
    /// The epoch of the topic's history.
    pub epoch: Arc<str>,
}

/// What a publication did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Published {
    /// Accepted: given the next offset, retained in history and queued to every subscriber.
    Accepted {
        /// The offset it was given.
        offset: u64,
        /// The topic's epoch.
        epoch: Arc<str>,
        /// The encoded `message` frame, shared by every subscriber's queue.
        frame: Frame,
        /// How many connections it was queued to.
        delivered: usize,
    },
    /// A duplicate of an earlier publication of the dedupe window: nothing was queued.
    Duplicate {
        /// The earlier publication's offset.
        offset: u64,
        /// The topic's epoch.
        epoch: Arc<str>,
    },
}

/// A topic, as `Gateway::topic` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Current subscriber count.
    pub subscribers: usize,
    /// Last offset and epoch.
    pub position: TopicPosition,
}

struct TopicState {
    inner: Mutex<TopicInner>,
}

struct TopicInner {
    /// The epoch of the topic's history: this node's own, or the sequencer's once a sequenced
    /// publication arrived.
    epoch: Arc<str>,
    last_offset: u64,
    /// Gateway-clock milliseconds of the last publication.
    last_publish_ms: u64,
    subscribers: Subscribers,
    /// Set when the state was dropped from its shard; holders of a stale `Arc` retry.
    removed: bool,
}

/// A topic's subscribers. Most topics have one (each user's own topic, a conversation one
/// client watches), kept inline: no allocation of its own. Two or more are a map, boxed, so
/// that a topic's state stays small either way.
#[derive(Default)]
enum Subscribers {
    /// Nobody.
    #[default]
    None,
    /// One connection.
    One(Arc<Connection>),
    /// Two or more connections. Boxed on purpose: inline, the map (48 bytes) would take
    /// a topic's state from jemalloc's 80-byte class to its 128-byte one.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<ConnectionId, Arc<Connection>>>),
}

impl Subscribers {
    /// Adds `connection`; returns whether it was new.
    fn insert(&mut self, connection: &Arc<Connection>) -> bool {
        match self {
            Self::None => {
                *self = Self::One(Arc::clone(connection));
                true
            }
            Self::One(one) if one.id() == connection.id() => false,
            Self::One(one) => {
                let mut map = HashMap::with_capacity(2);
                map.insert(one.id(), Arc::clone(one));
                map.insert(connection.id(), Arc::clone(connection));
                *self = Self::Many(Box::new(map));
                true
            }
            Self::Many(map) => map
                .insert(connection.id(), Arc::clone(connection))
                .is_none(),
        }
    }

    /// Removes the connection `id`; returns whether it was there. A map left with one
    /// subscriber goes back inline.
    fn remove(&mut self, id: ConnectionId) -> bool {
        match self {
            Self::None => false,
            Self::One(one) => {
                let removed = one.id() == id;
                if removed {
                    *self = Self::None;
                }
                removed
            }
            Self::Many(map) => {
                let removed = map.remove(&id).is_some();
                if map.len() <= 1 {
                    let last = map.drain().next();
                    *self = last.map_or(Self::None, |(_, last)| Self::One(last));
                }
                removed
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::One(_) => 1,
            Self::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::None)
    }

    /// Gives back a map's spare capacity; returns the estimated bytes freed.
    fn compact(&mut self) -> usize {
        match self {
            Self::Many(map) => compact(map),
            Self::None | Self::One(_) => 0,
        }
    }
}

impl TopicState {
    fn lock(&self) -> MutexGuard<'_, TopicInner> {
        // Every critical section leaves the state consistent, so poison is ignored.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Shard = RwLock<HashMap<Topic, Arc<TopicState>>>;

/// The sharded topic index.
pub(crate) struct SubscriptionManager {
    shards: Box<[Shard]>,
    subscriptions: AtomicUsize,
    topics: AtomicUsize,
    epoch_seed: u64,
    epoch_counter: AtomicU64,
    history: Arc<dyn HistoryStore>,
}

impl std::fmt::Debug for SubscriptionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionManager")
            .field("topics", &self.topic_count())
            .field("subscriptions", &self.subscription_count())
            .finish()
    }
}

impl SubscriptionManager {
    /// An empty index. `epoch_seed` makes epochs unique across restarts (e.g. start time);
    /// `history` retains publications for resume.
    pub(crate) fn new(epoch_seed: u64, history: Arc<dyn HistoryStore>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            history,
            subscriptions: AtomicUsize::new(0),
            topics: AtomicUsize::new(0),
            epoch_seed,
            epoch_counter: AtomicU64::new(0),
        }
    }

    /// Subscribes `connection` to `topic`, at most `limit` topics per connection.
    ///
    /// `on_subscribed` runs under the topic's lock with the topic's position, before any later
    /// publication can be queued to the connection: whatever it queues (the `ack`, a replay)
    /// precedes every live message. Subscribing twice is not an error. `now_ms` is the gateway
    /// clock, used to age a topic created here.
    pub(crate) fn subscribe<R>(
        &self,
        connection: &Arc<Connection>,
        topic: &Topic,
        limit: usize,
        now_ms: u64,
        since: Option<&StreamPosition>,
        on_subscribed: impl FnOnce(&TopicPosition, Option<Vec<HistoryEntry>>) -> R,
    ) -> Result<R, SubscribeError> {
        let mut topics = connection.lock_topics();
        let fresh = !topics.contains(topic);
        if fresh && topics.len() >= limit {
            return Err(SubscribeError::LimitReached { limit });
        }
        loop {
            let state = self.get_or_create(topic, now_ms);
            let mut inner = state.lock();
            if inner.removed {
                continue;
            }
            if inner.subscribers.insert(connection) {
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            topics.insert(topic.clone());
            let position = TopicPosition {
                last_offset: inner.last_offset,
                epoch: Arc::clone(&inner.epoch),
            };
            // A resume in the same epoch replays what history still holds after `since`.
            let replay = since
                .filter(|since| *since.epoch == *inner.epoch)
                .and_then(|since| {
                    self.history
                        .since(topic, since.offset, inner.last_offset, now_ms)
                });
            return Ok(on_subscribed(&position, replay));
        }
    }

    /// Unsubscribes `connection` from `topic`; returns whether it was subscribed.
    pub(crate) fn unsubscribe(&self, connection: &Connection, topic: &Topic) -> bool {
        let removed = connection.lock_topics().remove(topic);
        if removed {
            self.detach(connection, topic);
        }
        removed
    }

    /// Removes every subscription of `connection` (part of the one cleanup path).
    pub(crate) fn remove_all(&self, connection: &Connection) {
        let topics = std::mem::take(&mut *connection.lock_topics());
        for topic in topics.iter() {
            self.detach(connection, topic);
        }
    }

    /// Publishes to `topic`: assigns the next offset, builds the frame once with `encode(offset,
    /// epoch)`, retains it in history and queues it to every subscriber at `priority`.
    ///
    /// `dedupe(next_offset, epoch)` runs first, under the topic's lock, so two publications
    /// with the same id cannot both pass it; when it returns the offset of an earlier
    /// publication, nothing is published and that offset is returned as a duplicate.
    /// Subscribers receive a topic's frames in offset order, because offsets are assigned and
    /// frames queued under the topic's lock.
    pub(crate) fn publish(
        &self,
        topic: &Topic,
        priority: Priority,
        now_ms: u64,
        counters: &Counters,
        dedupe: impl FnOnce(u64, &Arc<str>) -> Option<u64>,
        encode: impl FnOnce(u64, &Arc<str>) -> Frame,
    ) -> Published {
        loop {
            let state = self.get_or_create(topic, now_ms);
            let mut inner = state.lock();
            if inner.removed {
                continue;
            }
            let epoch = Arc::clone(&inner.epoch);
            if let Some(offset) = dedupe(inner.last_offset + 1, &epoch) {
                return Published::Duplicate { offset, epoch };
            }
            inner.last_offset += 1;
            inner.last_publish_ms = now_ms;
            let offset = inner.last_offset;
            let frame = encode(offset, &epoch);
            self.history.append(
                topic,
                HistoryEntry {
                    offset,
                    frame: frame.unstamped(),
                    published_ms: now_ms,
                },
            );
            let delivered = offer_to_subscribers(&inner.subscribers, &frame, priority, counters);
            return Published::Accepted {
                offset,
                epoch,
                frame,
                delivered,
            };
        }
    }

    /// Queues a publication accepted by another node (its frame already encoded, with that
    /// node's offset and epoch) to this node's subscribers of `topic`, under the topic's lock;
    /// returns how many queued it. A topic nobody here subscribes to is not created.
    pub(crate) fn deliver(
        &self,
        topic: &Topic,
        frame: &Frame,
        priority: Priority,
        counters: &Counters,
    ) -> usize {
        let Some(state) = self.lookup(topic) else {
            return 0;
        };
        let inner = state.lock();
        if inner.removed {
            return 0;
        }
        offer_to_subscribers(&inner.subscribers, frame, priority, counters)
    }

    /// Delivers a publication numbered by the cluster's sequencer: when it is the topic's next
    /// offset (in its epoch; a new epoch starts the topic afresh here, history included), it
    /// becomes the topic's last, is retained in history and queued to every subscriber, all
    /// under the topic's lock. See [`SequencedDelivery`] for the other outcomes.
    pub(crate) fn deliver_sequenced(
        &self,
        publication: &SequencedPublication,
        accept_gap: bool,
        now_ms: u64,
        counters: &Counters,
    ) -> SequencedDelivery {
        let SequencedPublication {
            topic,
            offset,
            epoch,
            priority,
            frame,
        } = publication;
        loop {
            let state = self.get_or_create(topic, now_ms);
            let mut inner = state.lock();
            if inner.removed {
                continue;
            }
            let same_epoch = inner.epoch == *epoch;
            let last_offset = if same_epoch { inner.last_offset } else { 0 };
            if *offset <= last_offset {
                return SequencedDelivery::Stale;
            }
            if *offset > last_offset + 1 && !accept_gap {
                return SequencedDelivery::Gap { last_offset };
            }
            if !same_epoch {
                self.history.remove(topic);
                inner.epoch = Arc::clone(epoch);
            }
            inner.last_offset = *offset;
            inner.last_publish_ms = now_ms;
            self.history.append(
                topic,
                HistoryEntry {
                    offset: *offset,
                    frame: frame.clone(),
                    published_ms: now_ms,
                },
            );
            let delivered = offer_to_subscribers(&inner.subscribers, frame, *priority, counters);
            return SequencedDelivery::Delivered(delivered);
        }
    }

    /// A topic's subscriber count and position, if the topic is known.
    pub(crate) fn topic(&self, topic: &Topic) -> Option<TopicInfo> {
        let state = self.lookup(topic)?;
        let inner = state.lock();
        Some(TopicInfo {
            subscribers: inner.subscribers.len(),
            position: TopicPosition {
                last_offset: inner.last_offset,
                epoch: Arc::clone(&inner.epoch),
            },
        })
    }

    /// Drops topics without subscribers whose last publication is older than `retain_ms`
    /// (gateway clock). Returns how many were dropped.
    pub(crate) fn sweep_idle(&self, now_ms: u64, retain_ms: u64) -> usize {
        let mut dropped = 0;
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            map.retain(|topic, state| {
                let mut inner = state.lock();
                let idle = inner.subscribers.is_empty()
                    && now_ms.saturating_sub(inner.last_publish_ms) >= retain_ms;
                if idle {
                    inner.removed = true;
                    self.history.remove(topic);
                    dropped += 1;
                }
                !idle
            });
        }
        self.topics.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    /// Gives back the spare capacity of the shards and of each topic's subscriber map; returns
    /// the estimated bytes freed. Takes each shard's write lock once, then each topic's lock.
    pub(crate) fn compact(&self) -> usize {
        let mut freed = 0;
        for shard in &self.shards {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            freed += compact(&mut map);
            for state in map.values() {
                freed += state.lock().subscribers.compact();
            }
        }
        freed
    }

    /// A topic's epoch and up to `limit` retained publications after `after`, oldest first;
    /// `None` for an unknown topic.
    pub(crate) fn history(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Option<(Arc<str>, Vec<HistoryEntry>)> {
        let state = self.lookup(topic)?;
        let inner = state.lock();
        Some((
            Arc::clone(&inner.epoch),
            self.history.page(topic, after, limit, now_ms),
        ))
    }

    /// The history store.
    pub(crate) fn history_store(&self) -> &Arc<dyn HistoryStore> {
        &self.history
    }

    /// Subscriptions in all (connection-topic pairs).
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Topics currently known.
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.load(Ordering::Relaxed)
    }

    fn detach(&self, connection: &Connection, topic: &Topic) {
        let shard = self.shard(topic);
        let Some(state) = self.lookup(topic) else {
            return;
        };
        let now_empty_and_unused = {
            let mut inner = state.lock();
            if inner.subscribers.remove(connection.id()) {
                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            inner.subscribers.is_empty() && inner.last_offset == 0
        };
        if now_empty_and_unused {
            // A topic nobody listens to and nobody published to holds nothing worth keeping.
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(current) = map.get(topic)
                && Arc::ptr_eq(current, &state)
            {
                let mut inner = state.lock();
                if inner.subscribers.is_empty() && inner.last_offset == 0 {
                    inner.removed = true;
                    drop(inner);
                    map.remove(topic);
                    self.topics.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn lookup(&self, topic: &Topic) -> Option<Arc<TopicState>> {
        self.shard(topic)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    fn get_or_create(&self, topic: &Topic, now_ms: u64) -> Arc<TopicState> {
        let shard = self.shard(topic);
        if let Some(state) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return Arc::clone(state);
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        let state = map.entry(topic.clone()).or_insert_with(|| {
            self.topics.fetch_add(1, Ordering::Relaxed);
            Arc::new(TopicState {
                inner: Mutex::new(TopicInner {
                    epoch: self.new_epoch(),
                    last_offset: 0,
                    last_publish_ms: now_ms,
                    subscribers: Subscribers::None,
                    removed: false,
                }),
            })
        });
        Arc::clone(state)
    }

    fn new_epoch(&self) -> Arc<str> {
        let n = self.epoch_counter.fetch_add(1, Ordering::Relaxed);
        // `format!("{:x}-{n:x}")` without the formatter (a topic is made per first subscriber).
        let (seed, n) = (Hex::new(self.epoch_seed, 1), Hex::new(n, 1));
        let mut epoch = String::with_capacity(seed.as_str().len() + 1 + n.as_str().len());
        epoch.push_str(seed.as_str());
        epoch.push('-');
        epoch.push_str(n.as_str());
        Arc::from(epoch)
    }

    fn shard(&self, topic: &Topic) -> &Shard {
        &self.shards[shard_of(topic, SHARDS)]
    }
}

/// Offers `frame` to every subscriber of a topic whose lock the caller holds; returns how many
/// queued it. The one fan-out loop: a reference-count increment per subscriber, no copy.
fn offer_to_subscribers(
    subscribers: &Subscribers,
    frame: &Frame,
    priority: Priority,
    counters: &Counters,
) -> usize {
    match subscribers {
        Subscribers::None => 0,
        Subscribers::One(one) => offer_each(std::iter::once(one), frame, priority, counters),
        Subscribers::Many(map) => offer_each(map.values(), frame, priority, counters),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{history::InMemoryHistoryStore, outbox::Outbox};

    fn index() -> SubscriptionManager {
        SubscriptionManager::new(1, Arc::new(InMemoryHistoryStore::new(16, 60_000, 1 << 20)))
    }

    fn connection(id: u64) -> Arc<Connection> {
        Arc::new(Connection::new(
            ConnectionId::new(id),
            None,
            Outbox::new(16, 1 << 16),
            0,
            0,
        ))
    }

    fn publish(index: &SubscriptionManager, topic: &Topic) -> usize {
        let published = index.publish(
            topic,
            Priority::Normal,
            0,
            &Counters::default(),
            |_, _| None,
            |offset, _| Frame::from(format!("{{\"offset\":{offset}}}")),
        );
        match published {
            Published::Accepted { delivered, .. } => delivered,
            Published::Duplicate { .. } => panic!("not a duplicate"),
        }
    }

    fn subscribe(index: &SubscriptionManager, connection: &Arc<Connection>, topic: &Topic) {
        index
            .subscribe(connection, topic, 16, 0, None, |_, _| ())
            .expect("under the limit");
    }

    fn is_inline(index: &SubscriptionManager, topic: &Topic) -> bool {
        let state = index.lookup(topic).expect("a known topic");
        let subscribers = state.lock();
        !matches!(subscribers.subscribers, Subscribers::Many(_))
    }

    /// A topic's state is one allocation of jemalloc's 80-byte class (its `Arc`'s two counts
    /// and the state) whatever its subscribers: 112 bytes and a 96-byte map when the map was
    /// kept inline (2,667 bytes per idle connection before, `herald-bench idle`).
    #[test]
    fn a_topics_state_stays_small() {
        let size = std::mem::size_of::<TopicState>() + 2 * std::mem::size_of::<usize>();
        eprintln!("a topic's state is {size} bytes with its counts");
        assert!(
            size <= 80,
            "a topic's state is {size} bytes with its counts"
        );
    }

    #[test]
    fn one_subscriber_is_inline_and_more_share_every_publication() {
        let index = index();
        let topic = Topic::new("room").expect("a valid topic");
        let (a, b, c) = (connection(1), connection(2), connection(3));
        subscribe(&index, &a, &topic);
        subscribe(&index, &a, &topic);
        assert!(is_inline(&index, &topic));
        assert_eq!(publish(&index, &topic), 1);
        subscribe(&index, &b, &topic);
        subscribe(&index, &c, &topic);
        assert!(!is_inline(&index, &topic));
        assert_eq!(publish(&index, &topic), 3);
        assert_eq!(index.subscription_count(), 3);
        assert_eq!(index.topic(&topic).map(|t| t.subscribers), Some(3));
        assert!(index.unsubscribe(&a, &topic));
        assert!(!index.unsubscribe(&a, &topic));
        assert_eq!(publish(&index, &topic), 2);
        index.remove_all(&b);
        assert!(is_inline(&index, &topic));
        assert_eq!(publish(&index, &topic), 1);
        assert_eq!(c.outbox().len(), 3);
        assert_eq!(a.outbox().len(), 2);
        index.remove_all(&c);
        assert_eq!(publish(&index, &topic), 0);
        assert_eq!(index.topic(&topic).map(|t| t.subscribers), Some(0));
        assert_eq!(index.subscription_count(), 0);
    }

    #[test]
    fn a_topic_nobody_published_to_goes_with_its_only_subscriber() {
        let index = index();
        let topic = Topic::new("quiet").expect("a valid topic");
        let a = connection(1);
        subscribe(&index, &a, &topic);
        assert_eq!(index.topic_count(), 1);
        index.remove_all(&a);
        assert_eq!(index.topic_count(), 0);
        assert!(index.topic(&topic).is_none());
    }
}
