//! Connections and the `ConnectionManager`: the index of live connections by id and by user,
//! the server-wide connection slots, the per-user limits, and the offer of one frame to every
//! connection of a user (or of the server) that should receive it.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use herald_protocol::{CloseCode, Topic};
use herald_utils::Priority;
use smallvec::SmallVec;

use crate::{
    counters::Counters,
    ids::{ConnectionId, IsolationKey, ThreadId, UserId},
    outbox::{Frame, Outbox},
    sizes::compact,
};

/// Bytes the gateway's indexes hold for one connection, by estimate: the connection, its
/// reference counts and its entries in the id and user indexes. Its `Session` and the
/// transport's task are not included.
pub(crate) const CONNECTION_BYTES: usize = std::mem::size_of::<Connection>()
    + 2 * std::mem::size_of::<usize>()
    + 2 * std::mem::size_of::<(ConnectionId, Arc<Connection>)>();

/// Sentinel for "no deadline".
pub(crate) const NO_DEADLINE: u64 = u64::MAX;

/// One client connection as the rest of the gateway sees it.
///
/// Shared (`Arc`) between its transport task, the topic indexes, the user index and the sweep.
pub struct Connection {
    id: ConnectionId,
    key: OnceLock<IsolationKey>,
    thread: Option<ThreadId>,
    outbox: Outbox,
    connected_at_unix_ms: u64,
    /// Gateway-clock milliseconds of the last inbound frame.
    last_activity_ms: AtomicU64,
    /// Gateway-clock milliseconds of the last server ping.
    last_ping_ms: AtomicU64,
    /// Before authentication: the auth deadline; after: the token's expiry (gateway clock).
    deadline_ms: AtomicU64,
    topics: Mutex<TopicSet>,
    /// Whether the writer may coalesce frames into `batch` frames (preference `batching`).
    batching: AtomicBool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("key", &self.key.get())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(
        id: ConnectionId,
        thread: Option<ThreadId>,
        outbox: Outbox,
        connected_at_unix_ms: u64,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            key: OnceLock::new(),
            thread,
            outbox,
            connected_at_unix_ms,
            last_activity_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            deadline_ms: AtomicU64::new(NO_DEADLINE),
            topics: Mutex::new(TopicSet::default()),
            batching: AtomicBool::new(true),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The isolation key, once the connection has authenticated.
    pub fn key(&self) -> Option<&IsolationKey> {
        self.key.get()
    }

    /// The thread from `?thread=`, if any.
    pub fn thread(&self) -> Option<&ThreadId> {
        self.thread.as_ref()
    }

    /// The outbound queue.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// When the connection was accepted, in milliseconds since the Unix epoch.
    pub fn connected_at_unix_ms(&self) -> u64 {
        self.connected_at_unix_ms
    }

    /// Topics the connection is subscribed to, sorted.
    pub fn topics(&self) -> Vec<Topic> {
        self.lock_topics().iter().cloned().collect()
    }

    /// Whether the writer may coalesce several queued frames into one `batch` frame; false when
    /// the user's preferences say `"batching": false`.
    pub fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    pub(crate) fn set_batching(&self, allowed: bool) {
        self.batching.store(allowed, Ordering::Relaxed);
    }

    /// Records inbound activity at gateway time `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_activity_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Gateway time of the last inbound frame.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_key(&self, key: IsolationKey) -> bool {
        self.key.set(key).is_ok()
    }

    pub(crate) fn last_ping_ms(&self) -> u64 {
        self.last_ping_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_last_ping_ms(&self, now_ms: u64) {
        self.last_ping_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_deadline_ms(&self, deadline_ms: u64) {
        self.deadline_ms.store(deadline_ms, Ordering::Relaxed);
    }

    pub(crate) fn lock_topics(&self) -> MutexGuard<'_, TopicSet> {
        // The set stays consistent under a panic (single insert/remove calls), so poison is ignored.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's subscriptions, sorted: one topic inline (most connections hold one, and a
/// `Vec` would allocate room for four), more on the heap at 16 bytes a topic, where a
/// `BTreeSet` would allocate a whole node for the first one.
#[derive(Debug, Default)]
pub(crate) struct TopicSet(SmallVec<[Topic; 1]>);

impl TopicSet {
    pub(crate) fn contains(&self, topic: &Topic) -> bool {
        self.0.binary_search(topic).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `topic`; returns whether it was new.
    pub(crate) fn insert(&mut self, topic: Topic) -> bool {
        let Err(at) = self.0.binary_search(&topic) else {
            return false;
        };
        self.0.insert(at, topic);
        true
    }

    /// Removes `topic`; returns whether it was there.
    pub(crate) fn remove(&mut self, topic: &Topic) -> bool {
        let Ok(at) = self.0.binary_search(topic) else {
            return false;
        };
        self.0.remove(at);
        back_inline(&mut self.0);
        true
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Topic> {
        self.0.iter()
    }
}

/// A user's registered connections, oldest first. Most users hold one, kept inline: no
/// allocation of its own (a `Vec` would allocate room for four).
#[derive(Debug, Default)]
struct UserConnections(SmallVec<[Arc<Connection>; 1]>);

impl UserConnections {
    fn as_slice(&self) -> &[Arc<Connection>] {
        &self.0
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `connection` as the newest.
    fn push(&mut self, connection: Arc<Connection>) {
        self.0.push(connection);
    }

    /// Takes the `count` oldest connections out.
    fn take_oldest(&mut self, count: usize) -> Vec<Arc<Connection>> {
        let taken = self.0.drain(..count.min(self.0.len())).collect();
        back_inline(&mut self.0);
        taken
    }

    /// Removes the connection `id`, if it is here.
    fn remove(&mut self, id: ConnectionId) {
        self.0.retain(|c| c.id() != id);
        back_inline(&mut self.0);
    }
}

/// Moves what is left back inline, freeing the heap, once it fits there again.
fn back_inline<T>(items: &mut SmallVec<[T; 1]>) {
    if items.spilled() && items.len() <= items.inline_size() {
        items.shrink_to_fit();
    }
}

/// A reserved place under `HERALD_MAX_CONNECTIONS`, released when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    count: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Places under per-user limits promised to admitted connections not yet registered, by user.
type Reserved = Arc<Mutex<HashMap<UserId, usize>>>;

fn lock_reserved(reserved: &Reserved) -> MutexGuard<'_, HashMap<UserId, usize>> {
    // Each critical section leaves the map consistent, so poison is ignored.
    reserved.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A place under a user's connection limit, promised at the handshake (policy `reject`) to a
/// connection that registers once its transport is ready; released when dropped.
///
/// Without it, concurrent handshakes of one user would all pass the limit check and the
/// surplus would be upgraded only to be closed 4030, instead of refused with HTTP 429.
#[derive(Debug)]
pub(crate) struct UserPlace {
    user: UserId,
    reserved: Reserved,
}

impl Drop for UserPlace {
    fn drop(&mut self) {
        let mut reserved = lock_reserved(&self.reserved);
        if let Some(count) = reserved.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                reserved.remove(&self.user);
            }
        }
    }
}

/// What to do when a user is at their connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// Close the user's oldest connection with 4029 and admit the new one.
    EvictOldest,
    /// Refuse the new connection.
    Reject,
}

/// The user is at their connection limit and the policy is [`LimitPolicy::Reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("user connection limit of {limit} reached")]
pub struct LimitExceeded {
    /// The limit that applied.
    pub limit: usize,
}

/// Every live connection, by id and by user.
#[derive(Debug)]
pub(crate) struct ConnectionManager {
    by_id: papaya::HashMap<ConnectionId, Arc<Connection>>,
    by_user: Mutex<HashMap<UserId, UserConnections>>,
    /// Lock order: `by_user` before `reserved`.
    reserved: Reserved,
    slots: Arc<AtomicUsize>,
    max_connections: usize,
    next_id: AtomicU64,
}

impl ConnectionManager {
    /// An empty manager admitting at most `max_connections` connections.
    pub(crate) fn new(max_connections: usize) -> Self {
        Self {
            by_id: papaya::HashMap::new(),
            by_user: Mutex::new(HashMap::new()),
            reserved: Arc::default(),
            slots: Arc::new(AtomicUsize::new(0)),
            max_connections,
            next_id: AtomicU64::new(1),
        }
    }

    /// Reserves a connection slot; `None` when the server is full.
    pub(crate) fn try_reserve(&self) -> Option<Slot> {
        let reserved = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            });
        reserved.ok().map(|_| Slot {
            count: Arc::clone(&self.slots),
        })
    }

    /// A fresh, never reused connection id.
    pub(crate) fn next_id(&self) -> ConnectionId {
        ConnectionId::new(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Adds a connection to the id index.
    pub(crate) fn insert(&self, connection: Arc<Connection>) {
        self.by_id.pin().insert(connection.id(), connection);
    }

    /// Looks a connection up by id.
    pub(crate) fn get(&self, id: ConnectionId) -> Option<Arc<Connection>> {
        self.by_id.pin().get(&id).cloned()
    }

    /// How many of `user`'s connections are registered.
    #[cfg(test)]
    pub(crate) fn user_connection_count(&self, user: &UserId) -> usize {
        self.lock_users().get(user).map_or(0, UserConnections::len)
    }

    /// Promises `user` a place under `limit`, counting registered connections and places
    /// already promised; refused when none is left.
    pub(crate) fn reserve_user_place(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<UserPlace, LimitExceeded> {
        let users = self.lock_users();
        let mut reserved = lock_reserved(&self.reserved);
        let taken = users.get(user).map_or(0, UserConnections::len)
            + reserved.get(user).copied().unwrap_or(0);
        if taken >= limit {
            return Err(LimitExceeded { limit });
        }
        *reserved.entry(user.clone()).or_default() += 1;
        drop(reserved);
        drop(users);
        Ok(UserPlace {
            user: user.clone(),
            reserved: Arc::clone(&self.reserved),
        })
    }

    fn taken_by_others(
        &self,
        users: &HashMap<UserId, UserConnections>,
        user: &UserId,
        place: Option<&UserPlace>,
    ) -> usize {
        let promised = lock_reserved(&self.reserved)
            .get(user)
            .copied()
            .unwrap_or(0)
            .saturating_sub(usize::from(place.is_some()));
        users.get(user).map_or(0, UserConnections::len) + promised
    }

    /// Registers `connection` under `key.user`, applying the per-user `limit` with `policy`,
    /// and consumes the `place` it was promised at the handshake, if any.
    ///
    /// With [`LimitPolicy::EvictOldest`] the oldest connections over the limit are removed from
    /// the user index at once, asked to close with 4029 and returned. With
    /// [`LimitPolicy::Reject`] places promised to other connections count as taken.
    pub(crate) fn register_user(
        &self,
        connection: &Arc<Connection>,
        key: IsolationKey,
        limit: usize,
        policy: LimitPolicy,
        place: Option<UserPlace>,
    ) -> Result<Vec<Arc<Connection>>, LimitExceeded> {
        let mut users = self.lock_users();
        let taken = self.taken_by_others(&users, &key.user, place.as_ref());
        // The place turns into the registration below, under the same lock, so no concurrent
        // check sees it counted twice or not at all.
        drop(place);
        let list = users.entry(key.user.clone()).or_default();
        let mut evicted = Vec::new();
        if taken >= limit {
            if policy == LimitPolicy::Reject {
                if list.is_empty() {
                    users.remove(&key.user);
                }
                return Err(LimitExceeded { limit });
            }
            let excess = (list.len() + 1).saturating_sub(limit.max(1));
            evicted = list.take_oldest(excess);
        }
        list.push(Arc::clone(connection));
        drop(users);
        connection.set_key(key);
        for old in &evicted {
            old.outbox().close(CloseCode::Replaced);
        }
        Ok(evicted)
    }

    /// Removes a connection from every index of this manager. Idempotent.
    pub(crate) fn remove(&self, connection: &Connection) {
        self.by_id.pin().remove(&connection.id());
        let Some(key) = connection.key() else { return };
        let mut users = self.lock_users();
        if let Some(list) = users.get_mut(&key.user) {
            list.remove(connection.id());
            if list.is_empty() {
                users.remove(&key.user);
            }
        }
    }

    /// The connections of `user`, oldest first (a snapshot, for cold paths).
    pub(crate) fn user_connections(&self, user: &UserId) -> Vec<Arc<Connection>> {
        self.lock_users()
            .get(user)
            .map(|list| list.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Offers `frame` at `priority` to every connection of `user` that receives traffic
    /// addressed to `thread` (see [`IsolationKey::receives`]); returns how many queued it.
    ///
    /// The one routing rule of user traffic (pushes, critical events and their redelivery).
    /// Each connection gets a clone of the same frame: a reference-count increment, no copy
    /// and no allocation.
    pub(crate) fn offer_to_user(
        &self,
        user: &UserId,
        thread: Option<&ThreadId>,
        frame: &Frame,
        priority: Priority,
        counters: &Counters,
    ) -> usize {
        let users = self.lock_users();
        let Some(list) = users.get(user) else {
            return 0;
        };
        let receivers = list.as_slice().iter().filter(|connection| {
            connection
                .key()
                .is_some_and(|key| key.receives(user, thread))
        });
        offer_each(receivers, frame, priority, counters)
    }

    /// Offers `frame` at `priority` to every authenticated connection but those in `exclude`;
    /// returns how many queued it.
    pub(crate) fn offer_to_all(
        &self,
        exclude: &[ConnectionId],
        frame: &Frame,
        priority: Priority,
        counters: &Counters,
    ) -> usize {
        let by_id = self.by_id.pin();
        let receivers = by_id
            .values()
            .filter(|connection| connection.key().is_some() && !exclude.contains(&connection.id()));
        offer_each(receivers, frame, priority, counters)
    }

    /// Every connection (a snapshot).
    pub(crate) fn all(&self) -> Vec<Arc<Connection>> {
        self.by_id.pin().values().cloned().collect()
    }

    /// Calls `f` for every connection without collecting them.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Connection>)) {
        for connection in self.by_id.pin().values() {
            f(connection);
        }
    }

    /// Sheds every queued `low` and `normal` frame from every connection's outbox (counted as
    /// shed, by priority); returns how many. A relief pass: one walk of the index.
    pub(crate) fn shed_optional(&self, counters: &Counters) -> usize {
        let mut shed = 0;
        self.for_each(|connection| shed += connection.outbox().shed_optional(counters));
        shed
    }

    /// Asks at most `count` connections, those idle longest (oldest last inbound frame, the
    /// older connection first among equals), to close with `code`, through [`Outbox::close`];
    /// connections already closing are passed over. Returns how many were asked.
    pub(crate) fn close_idlest(&self, count: usize, code: CloseCode) -> usize {
        if count == 0 {
            return 0;
        }
        let mut open = Vec::new();
        self.for_each(|connection| {
            if connection.outbox().close_requested().is_none() {
                open.push((
                    connection.last_activity_ms(),
                    connection.id(),
                    Arc::clone(connection),
                ));
            }
        });
        open.sort_unstable_by_key(|(idle_since, id, _)| (*idle_since, *id));
        open.iter()
            .take(count)
            .filter(|(_, _, connection)| connection.outbox().close(code))
            .count()
    }

    /// Bytes queued in every connection's outbox. A frame shared by several queues counts once
    /// per queue, so this is an upper bound of what the queues hold.
    pub(crate) fn queued_bytes(&self) -> usize {
        let mut bytes = 0;
        self.for_each(|connection| bytes += connection.outbox().queued_bytes());
        bytes
    }

    /// Gives back the spare capacity of the user index and of the promised places; returns the
    /// estimated bytes freed.
    pub(crate) fn compact(&self) -> usize {
        let users = compact(&mut self.lock_users());
        users + compact(&mut lock_reserved(&self.reserved))
    }

    /// Live connections (accepted and not yet cleaned up).
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Users with at least one authenticated connection.
    pub(crate) fn user_count(&self) -> usize {
        self.lock_users().len()
    }

    fn lock_users(&self) -> MutexGuard<'_, HashMap<UserId, UserConnections>> {
        // Each critical section leaves the map consistent, so poison is ignored.
        self.by_user.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Offers `frame` at `priority` to each of `connections`; returns how many queued it. The one
/// delivery loop of the gateway (topics, users, everyone): each connection gets a clone of the
/// same frame, a reference-count increment, and the outbox counts what it sheds.
pub(crate) fn offer_each<'a>(
    connections: impl Iterator<Item = &'a Arc<Connection>>,
    frame: &Frame,
    priority: Priority,
    counters: &Counters,
) -> usize {
    connections
        .filter(|connection| {
            connection
                .outbox()
                .offer(frame.clone(), priority, counters)
                .is_queued()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(
        manager: &ConnectionManager,
        user: &UserId,
        limit: usize,
        place: Option<UserPlace>,
    ) -> Result<Vec<Arc<Connection>>, LimitExceeded> {
        let connection = Arc::new(Connection::new(
            manager.next_id(),
            None,
            Outbox::new(16, 1 << 16),
            0,
            0,
        ));
        manager.insert(Arc::clone(&connection));
        let key = IsolationKey {
            user: user.clone(),
            thread: None,
            connection: connection.id(),
        };
        manager.register_user(&connection, key, limit, LimitPolicy::Reject, place)
    }

    #[test]
    fn promised_places_count_toward_the_user_limit() {
        let manager = ConnectionManager::new(100);
        let alice = UserId::new("alice");
        let first = manager.reserve_user_place(&alice, 2);
        let second = manager.reserve_user_place(&alice, 2);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            manager.reserve_user_place(&alice, 2).err(),
            Some(LimitExceeded { limit: 2 })
        );
        // Another user is not affected.
        assert!(manager.reserve_user_place(&UserId::new("bob"), 2).is_ok());
    }

    #[test]
    fn dropping_a_place_releases_it() {
        let manager = ConnectionManager::new(100);
        let alice = UserId::new("alice");
        let place = manager.reserve_user_place(&alice, 1);
        assert!(manager.reserve_user_place(&alice, 1).is_err());
        drop(place);
        assert!(manager.reserve_user_place(&alice, 1).is_ok());
        assert!(lock_reserved(&manager.reserved).is_empty());
    }

    #[test]
    fn registering_consumes_the_place_it_was_promised() {
        let manager = ConnectionManager::new(100);
        let alice = UserId::new("alice");
        let place = manager.reserve_user_place(&alice, 1).ok();
        assert!(register(&manager, &alice, 1, place).is_ok());
        assert!(lock_reserved(&manager.reserved).is_empty());
        assert_eq!(manager.user_connection_count(&alice), 1);
        assert!(manager.reserve_user_place(&alice, 1).is_err());
    }

    #[test]
    fn a_place_promised_to_another_connection_is_taken() {
        let manager = ConnectionManager::new(100);
        let alice = UserId::new("alice");
        let _promised = manager.reserve_user_place(&alice, 1);
        assert_eq!(
            register(&manager, &alice, 1, None).err(),
            Some(LimitExceeded { limit: 1 })
        );
        assert_eq!(manager.user_connection_count(&alice), 0);
    }

    fn ids(list: &UserConnections) -> Vec<u64> {
        list.as_slice().iter().map(|c| c.id().get()).collect()
    }

    fn bare(id: u64) -> Arc<Connection> {
        Arc::new(Connection::new(
            ConnectionId::new(id),
            None,
            Outbox::new(16, 1 << 16),
            0,
            0,
        ))
    }

    #[test]
    fn a_users_connections_stay_oldest_first_and_one_is_inline() {
        let mut list = UserConnections::default();
        assert!(list.is_empty());
        list.push(bare(1));
        assert!(!list.0.spilled());
        list.push(bare(2));
        list.push(bare(3));
        assert_eq!(ids(&list), [1, 2, 3]);
        list.remove(ConnectionId::new(2));
        list.remove(ConnectionId::new(7));
        assert_eq!(ids(&list), [1, 3]);
        let taken = list.take_oldest(1);
        assert_eq!(taken.iter().map(|c| c.id().get()).collect::<Vec<_>>(), [1]);
        assert!(!list.0.spilled());
        assert_eq!(ids(&list), [3]);
        list.push(bare(4));
        assert_eq!(list.take_oldest(5).len(), 2);
        assert!(list.is_empty());
        list.push(bare(5));
        list.remove(ConnectionId::new(5));
        assert!(list.is_empty());
    }

    #[test]
    fn a_user_leaves_the_index_with_their_last_connection() {
        let manager = ConnectionManager::new(100);
        let alice = UserId::new("alice");
        assert!(register(&manager, &alice, 3, None).is_ok());
        assert!(register(&manager, &alice, 3, None).is_ok());
        let list = manager.user_connections(&alice);
        assert_eq!(list.len(), 2);
        assert!(list[0].id() < list[1].id());
        manager.remove(&list[0]);
        assert_eq!(manager.user_connections(&alice)[0].id(), list[1].id());
        manager.remove(&list[1]);
        assert_eq!(manager.user_count(), 0);
        assert!(manager.user_connections(&alice).is_empty());
    }

    /// A connection is one allocation (its `Arc`'s two counts and the `Connection`, with its
    /// outbox) in jemalloc's 384-byte class, and a user's entry in the user index holds one
    /// connection without an allocation of its own.
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<Connection>() + 2 * std::mem::size_of::<usize>();
        eprintln!("a connection is {size} bytes with its counts");
        assert!(size <= 384, "a connection is {size} bytes with its counts");
        let entry = std::mem::size_of::<UserConnections>();
        assert!(entry <= 24, "a user's connections are {entry} bytes inline");
    }

    #[test]
    fn a_connections_topics_stay_sorted_and_one_is_inline() {
        let topic = |name: &str| Topic::new(name).expect("a valid topic");
        let mut set = TopicSet::default();
        assert!(set.insert(topic("m")));
        assert!(!set.insert(topic("m")));
        assert!(!set.0.spilled());
        assert!(set.insert(topic("z")));
        assert!(set.insert(topic("a")));
        let names = |set: &TopicSet| set.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&set), ["a", "m", "z"]);
        assert!(set.contains(&topic("z")) && !set.contains(&topic("b")));
        assert!(set.remove(&topic("m")));
        assert!(!set.remove(&topic("m")));
        assert!(set.remove(&topic("a")));
        assert!(!set.0.spilled());
        assert_eq!(names(&set), ["z"]);
        assert!(set.remove(&topic("z")));
        assert_eq!(set.len(), 0);
        assert!(set.insert(topic("b")));
        assert!(!set.0.spilled());
    }
}
