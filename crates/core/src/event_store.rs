//! The [`EventStore`] seam: where a cluster keeps every user's pending critical events, so that
//! they outlive the node that accepted them, reach a connection of the user on any node, and an
//! acknowledgement on one node removes them on all.
//!
//! Without one (the embedded default) each node keeps the pending events of the events it
//! accepted in its own memory, and nothing here is called. With one, each node still keeps a
//! copy of the pending events of the users it holds connections of, for their delivery and
//! redelivery; the store is the authority on what is pending.

use std::{sync::Weak, time::Duration};

use crate::{
    ids::{ThreadId, UserId},
    outbox::Frame,
};

/// A pending critical event, as a store keeps it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The user it is for.
    pub user: UserId,
    /// Its id, unique among the user's pending events.
    pub id: String,
    /// Only connections bound to this thread (and those bound to none) receive it.
    pub thread: Option<ThreadId>,
    /// The encoded `event` frame.
    pub frame: Frame,
    /// When it was accepted, in wall-clock milliseconds since the Unix epoch (its time-to-live
    /// counts from here on every node).
    pub created_unix_ms: u64,
}

/// What [`EventStore::append`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Kept; the user now has `pending` events awaiting an ack, this one included.
    Stored {
        /// The user's pending events.
        pending: usize,
    },
    /// An event with this id is already pending: nothing was changed.
    Duplicate {
        /// The user's pending events.
        pending: usize,
    },
    /// The user already has the maximum of pending events: refused.
    Full,
}

/// Why a store could not perform a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventStoreError {
    /// The store cannot be reached or did not answer in time; the text says why.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

/// How a store answers a call: once, from any task.
pub type EventStoreReply<T> = Box<dyn FnOnce(Result<T, EventStoreError>) + Send>;

/// A cluster-wide store of pending critical events.
///
/// # Contract
///
/// - No method blocks: each answers through its `reply` exactly once, from any task (a
///   networked store queues the call for its own I/O task). Calls of one node are performed in
///   the order they were made.
/// - [`append`](Self::append) keeps the event unless an event with its id is pending for the
///   user (then [`Appended::Duplicate`]) or the user has `limit` pending events
///   ([`Appended::Full`]). Events older than `ttl` are dropped first and never returned.
/// - [`pending`](Self::pending) answers the user's pending events, oldest first.
/// - [`acknowledge`](Self::acknowledge) removes those of `ids` that a connection bound to
///   `thread` receives (all of them for `None`), answers the ids it removed, and tells every
///   *other* attached node, whose [`AckedElsewhere`] handle then drops its copies.
pub trait EventStore: Send + Sync + 'static {
    /// Connects this node: acknowledgements made on other nodes reach `local` from now on.
    fn attach(&self, local: AckedElsewhere);

    /// A name unique in the cluster, part of the ids this node generates for events.
    fn node(&self) -> &str;

    /// Keeps `event` until it is acknowledged or `ttl` has passed since it was created (its
    /// creation time is also the time "now" of the call).
    fn append(
        &self,
        event: StoredEvent,
        limit: usize,
        ttl: Duration,
        reply: EventStoreReply<Appended>,
    );

    /// The user's pending events no older than `ttl` at `now_unix_ms` (wall clock), oldest
    /// first.
    fn pending(
        &self,
        user: &UserId,
        now_unix_ms: u64,
        ttl: Duration,
        reply: EventStoreReply<Vec<StoredEvent>>,
    );

    /// Removes the user's events `ids` that a connection bound to `thread` receives; answers
    /// the ids removed.
    fn acknowledge(
        &self,
        user: &UserId,
        thread: Option<&ThreadId>,
        ids: Vec<String>,
        reply: EventStoreReply<Vec<String>>,
    );
}

/// Drops this node's copies of events acknowledged on another node.
pub(crate) trait Forget: Send + Sync {
    /// The user's events `ids` were acknowledged elsewhere.
    fn forget(&self, user: &UserId, ids: &[String]);
}

/// The handle through which an [`EventStore`] tells a node that events were acknowledged on
/// another node. Holds the node weakly: a node that went away is told nothing.
#[derive(Clone)]
pub struct AckedElsewhere {
    node: Weak<dyn Forget>,
}

impl std::fmt::Debug for AckedElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckedElsewhere").finish_non_exhaustive()
    }
}

impl AckedElsewhere {
    pub(crate) fn new(node: Weak<dyn Forget>) -> Self {
        Self { node }
    }

    /// The user's events `ids` were acknowledged on another node: this node stops delivering
    /// and redelivering them.
    pub fn acknowledged(&self, user: &UserId, ids: &[String]) {
        if let Some(node) = self.node.upgrade() {
            node.forget(user, ids);
        }
    }
}
