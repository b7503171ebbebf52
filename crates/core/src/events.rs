//! Critical events: the [`EventSend`] request, and every user's pending events, kept until a
//! connection of the user acknowledges them, with their delivery, acknowledgement, redelivery,
//! expiry and delivery to connections that register later.
//!
//! A user's pending list is locked while an event is appended and delivered, and while a new
//! connection of that user registers and receives the pending events, so a connection sees each
//! user's events in the order they were sent, with no gap and no duplicate at the hand-over.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_protocol::{EventName, ServerMessage};
use herald_utils::Priority;
use serde_json::value::RawValue;

use crate::{
    broker::Envelope,
    connection::{Connection, ConnectionManager},
    counters::Counters,
    error::GatewayError,
    event_store::StoredEvent,
    ids::{IsolationKey, ThreadId, UserId},
    outbox::Frame,
    sizes::compact,
    time::duration_ms,
};

/// A critical event to a user, as `POST /api/users/{userId}/events` or the `Emitter` sends it.
#[derive(Debug)]
pub struct EventSend {
    /// The user.
    pub user: UserId,
    /// The event name.
    pub event: EventName,
    /// The payload, relayed byte for byte.
    pub data: Box<RawValue>,
    /// Thread, run and id.
    pub target: EventTarget,
}

/// Where an event goes and how it is identified.
#[derive(Debug, Clone, Default)]
pub struct EventTarget {
    /// Only connections bound to this thread (and those bound to none) receive it.
    pub thread: Option<ThreadId>,
    /// The agent run it belongs to.
    pub run: Option<String>,
    /// A stable id; generated when absent. Sending an id that is still pending is a no-op.
    pub id: Option<String>,
}

/// The result of sending an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    /// The event's id (generated when the sender gave none).
    pub id: String,
    /// Connections of this node it was queued to now.
    pub delivered: usize,
    /// The user's events awaiting an ack, this one included.
    pub pending: usize,
}

/// An event another node accepted, as the bus brought it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    /// The user it is for.
    pub(crate) user: &'a UserId,
    /// The thread it is bound to, if any.
    pub(crate) thread: Option<&'a ThreadId>,
    /// Its id.
    pub(crate) id: &'a Arc<str>,
    /// The encoded `event` frame.
    pub(crate) frame: &'a Frame,
}

/// An event waiting for an acknowledgement.
#[derive(Debug, Clone)]
struct PendingEvent {
    id: Arc<str>,
    thread: Option<ThreadId>,
    frame: Frame,
    /// When it was sent (gateway clock, ms).
    created_ms: u64,
    /// When it was last queued to a connection (gateway clock, ms); `None` while undelivered.
    delivered_ms: Option<u64>,
}

type Users = HashMap<UserId, VecDeque<PendingEvent>>;

/// Every user's pending events, with the bounds that apply to them.
#[derive(Debug)]
pub(crate) struct PendingEvents {
    users: Mutex<Users>,
    /// Events kept per user; one more is refused.
    limit: usize,
    /// Redelivery delay of an unacknowledged event, in ms.
    ack_timeout_ms: u64,
    /// How long an unacknowledged event is kept, in ms.
    ttl_ms: u64,
    /// The start of generated ids: `evt-<seed>`, where the seed (the gateway's start time, and
    /// the node's name in a cluster) makes them unique across restarts and nodes.
    id_prefix: String,
    next_id: AtomicU64,
    /// Whether a shared store is the authority: then this node keeps copies only for the
    /// users it holds connections of.
    shared: bool,
}

impl PendingEvents {
    /// No pending events; at most `limit` per user, redelivered after `ack_timeout`, kept for
    /// `ttl`. Generated ids start with `id_seed` (and a hash of `node`, in a cluster).
    pub(crate) fn new(
        limit: usize,
        ack_timeout: Duration,
        ttl: Duration,
        id_seed: u64,
        node: Option<&str>,
    ) -> Self {
        let id_prefix = match node {
            None => format!("evt-{id_seed:x}"),
            Some(node) => {
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(node, &mut hasher);
                let node = std::hash::Hasher::finish(&hasher);
                format!("evt-{node:x}-{id_seed:x}")
            }
        };
        Self {
            users: Mutex::default(),
            limit,
            ack_timeout_ms: duration_ms(ack_timeout),
            ttl_ms: duration_ms(ttl),
            id_prefix,
            next_id: AtomicU64::new(0),
            shared: node.is_some(),
        }
    }

    /// The per-user limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A generated event id.
    fn generate_id(&self) -> Arc<str> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{n:x}", self.id_prefix))
    }

    /// Sends an event now: keeps it until acknowledged and queues it to the user's connections
    /// that receive its thread. Returns the outcome and, for a new event, the envelope for the
    /// other nodes. A retried send of an id still pending is answered without sending again.
    pub(crate) fn send(
        &self,
        send: EventSend,
        connections: &ConnectionManager,
        counters: &Counters,
        now_ms: u64,
    ) -> Result<(EventOutcome, Option<Envelope>), GatewayError> {
        let EventSend {
            user,
            event,
            data,
            target: EventTarget { thread, run, id },
        } = send;
        let mut users = self.lock();
        let pending = users.entry(user.clone()).or_default();
        if let Some(id) = id.as_deref()
            && pending.iter().any(|e| &*e.id == id)
        {
            let outcome = EventOutcome {
                id: id.to_owned(),
                delivered: 0,
                pending: pending.len(),
            };
            return Ok((outcome, None));
        }
        if pending.len() >= self.limit {
            if pending.is_empty() {
                users.remove(&user);
            }
            counters.events_rejected.increment();
            return Err(GatewayError::TooManyPending { limit: self.limit });
        }
        let id: Arc<str> = id.map_or_else(|| self.generate_id(), Arc::from);
        let frame = encode(event, &id, data, thread.as_ref(), run);
        let delivered =
            connections.offer_to_user(&user, thread.as_ref(), &frame, Priority::Critical, counters);
        pending.push_back(PendingEvent {
            id: Arc::clone(&id),
            thread: thread.clone(),
            frame: frame.clone(),
            created_ms: now_ms,
            delivered_ms: (delivered > 0).then_some(now_ms),
        });
        let outcome = EventOutcome {
            id: id.to_string(),
            delivered,
            pending: pending.len(),
        };
        drop(users);
        counters.events_sent.increment();
        let envelope = Envelope::Event {
            user,
            thread,
            id,
            frame,
        };
        Ok((outcome, Some(envelope)))
    }

    /// An event to be kept in a shared store before it is delivered: its id (generated when the
    /// sender gave none) and its frame.
    pub(crate) fn prepare(&self, send: EventSend, created_unix_ms: u64) -> StoredEvent {
        let EventSend {
            user,
            event,
            data,
            target: EventTarget { thread, run, id },
        } = send;
        let id: Arc<str> = id.map_or_else(|| self.generate_id(), Arc::from);
        let frame = encode(event, &id, data, thread.as_ref(), run);
        StoredEvent {
            user,
            id: id.to_string(),
            thread,
            frame,
            created_unix_ms,
        }
    }

    /// Delivers an event the shared store has just kept, like [`receive`](Self::receive):
    /// queues it to the user's connections here that receive its thread, keeping a copy for
    /// their redelivery when any did. Returns the connections it was queued to and the
    /// envelope for the other nodes.
    pub(crate) fn accept(
        &self,
        event: StoredEvent,
        connections: &ConnectionManager,
        counters: &Counters,
        now_ms: u64,
    ) -> (usize, Envelope) {
        let StoredEvent {
            user,
            id,
            thread,
            frame,
            ..
        } = event;
        let id: Arc<str> = Arc::from(id);
        let incoming = Incoming {
            user: &user,
            thread: thread.as_ref(),
            id: &id,
            frame: &frame,
        };
        let delivered = self.receive(incoming, connections, counters, now_ms);
        counters.events_sent.increment();
        let envelope = Envelope::Event {
            user,
            thread,
            id,
            frame,
        };
        (delivered, envelope)
    }

    /// Delivers an event another node accepted into a shared store: queues it to the user's
    /// connections here that receive its thread and, when any did, keeps a copy for their
    /// redelivery. An event already pending here (fetched from the store by a connection that
    /// registered meanwhile) is not delivered again. Returns the connections it was queued to.
    pub(crate) fn receive(
        &self,
        event: Incoming<'_>,
        connections: &ConnectionManager,
        counters: &Counters,
        now_ms: u64,
    ) -> usize {
        let Incoming {
            user,
            thread,
            id,
            frame,
        } = event;
        let mut users = self.lock();
        if users
            .get(user)
            .is_some_and(|pending| pending.iter().any(|e| e.id == *id))
        {
            return 0;
        }
        let delivered =
            connections.offer_to_user(user, thread, frame, Priority::Critical, counters);
        if delivered > 0 {
            users
                .entry(user.clone())
                .or_default()
                .push_back(PendingEvent {
                    id: Arc::clone(id),
                    thread: thread.cloned(),
                    frame: frame.clone(),
                    created_ms: now_ms,
                    delivered_ms: Some(now_ms),
                });
        }
        delivered
    }

    /// Takes in the user's pending events a shared store answered for a connection that has
    /// registered: each one this node did not have yet is kept and queued to the connection,
    /// and this node's copies are put in the store's order (those the store did not answer,
    /// sent since, after them). The events this node had were queued at registration or live
    /// since; once an event the node lacked is queued, every later one the connection
    /// receives is queued again after it, so the connection sees them all in order (a repeat
    /// is possible, a gap or an inversion is not). Returns the frames queued.
    pub(crate) fn take_in(
        &self,
        connection: &Connection,
        key: &IsolationKey,
        fetched: Vec<StoredEvent>,
        now_ms: u64,
        now_unix_ms: u64,
        counters: &Counters,
    ) -> usize {
        let mut users = self.lock();
        let mut local = users.remove(&key.user).unwrap_or_default();
        let mut merged = VecDeque::with_capacity(local.len().max(fetched.len()));
        let mut behind = false;
        let mut queued = 0;
        let mut offer = |event: &mut PendingEvent| {
            connection
                .outbox()
                .offer(event.frame.clone(), Priority::Critical, counters);
            event.delivered_ms = Some(now_ms);
            queued += 1;
        };
        for event in fetched {
            let receives = key.receives(&key.user, event.thread.as_ref());
            let had = local.iter().position(|e| *e.id == *event.id);
            if let Some(mut kept) = had.and_then(|at| local.remove(at)) {
                if behind && receives {
                    offer(&mut kept);
                }
                merged.push_back(kept);
                continue;
            }
            let age = now_unix_ms.saturating_sub(event.created_unix_ms);
            let mut taken = PendingEvent {
                id: Arc::from(event.id),
                thread: event.thread,
                frame: event.frame,
                created_ms: now_ms.saturating_sub(age),
                delivered_ms: None,
            };
            if receives {
                offer(&mut taken);
                behind = true;
            }
            merged.push_back(taken);
        }
        for mut newer in local {
            if behind && key.receives(&key.user, newer.thread.as_ref()) {
                offer(&mut newer);
            }
            merged.push_back(newer);
        }
        if !merged.is_empty() {
            users.insert(key.user.clone(), merged);
        }
        queued
    }

    /// Drops this node's copies of the user's events `ids`, acknowledged on another node.
    pub(crate) fn forget(&self, user: &UserId, ids: &[String]) {
        let mut users = self.lock();
        if let Some(pending) = users.get_mut(user) {
            pending.retain(|event| !ids.iter().any(|id| **id == *event.id));
            if pending.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Registers a connection with `register` under the user's events lock, then queues it the
    /// user's pending events it receives, in order. An event sent meanwhile is thus either
    /// among them or delivered live afterwards, never both and never neither.
    pub(crate) fn register<T, E>(
        &self,
        connection: &Connection,
        key: &IsolationKey,
        now_ms: u64,
        counters: &Counters,
        register: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut users = self.lock();
        let registered = register()?;
        if let Some(pending) = users.get_mut(&key.user) {
            for event in pending
                .iter_mut()
                .filter(|e| key.receives(&key.user, e.thread.as_ref()))
            {
                connection
                    .outbox()
                    .offer(event.frame.clone(), Priority::Critical, counters);
                event.delivered_ms = Some(now_ms);
            }
        }
        Ok(registered)
    }

    /// Removes the events `ids` of the connection's user that the connection could receive;
    /// returns how many were pending.
    pub(crate) fn acknowledge(
        &self,
        key: &IsolationKey,
        ids: &[String],
        now_ms: u64,
        counters: &Counters,
    ) -> usize {
        let mut users = self.lock();
        let Some(pending) = users.get_mut(&key.user) else {
            return 0;
        };
        let before = pending.len();
        pending.retain(|event| {
            let acked = key.receives(&key.user, event.thread.as_ref())
                && ids.iter().any(|id| **id == *event.id);
            if acked {
                let seconds = now_ms.saturating_sub(event.created_ms) as f64 / 1000.0;
                metrics::histogram!("herald_event_ack_latency_seconds").record(seconds);
            }
            !acked
        });
        let acked = before - pending.len();
        if pending.is_empty() {
            users.remove(&key.user);
        }
        counters.events_acknowledged.add(acked);
        acked
    }

    /// Drops events past their time-to-live, and redelivers, in order, the pending events of
    /// users whose oldest delivered event waited longer than the ack timeout. With a shared
    /// store, the copies of users without a connection here are dropped (the store keeps them
    /// for the connection that comes next, on any node).
    pub(crate) fn sweep(&self, now_ms: u64, connections: &ConnectionManager, counters: &Counters) {
        let mut users = self.lock();
        users.retain(|user, pending| {
            if self.shared && connections.user_connections(user).is_empty() {
                return false;
            }
            let before = pending.len();
            pending.retain(|event| now_ms.saturating_sub(event.created_ms) < self.ttl_ms);
            let expired = before - pending.len();
            if expired > 0 {
                counters.events_expired.add(expired);
                tracing::warn!(user = %user, expired, "critical events expired unacknowledged");
            }
            let due = pending.iter().any(|e| {
                e.delivered_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) >= self.ack_timeout_ms)
            });
            if due {
                for event in pending.iter_mut() {
                    let sent = connections.offer_to_user(
                        user,
                        event.thread.as_ref(),
                        &event.frame,
                        Priority::Critical,
                        counters,
                    );
                    if sent > 0 {
                        event.delivered_ms = Some(now_ms);
                        counters.events_redelivered.increment();
                    }
                }
            }
            !pending.is_empty()
        });
    }

    /// Bytes the pending events hold, by estimate: each event's frame and its entry.
    pub(crate) fn bytes(&self) -> usize {
        self.lock()
            .values()
            .flatten()
            .map(|event| event.frame.len() + std::mem::size_of::<PendingEvent>())
            .sum()
    }

    /// Gives back the spare capacity of the index by user; returns the estimated bytes freed.
    pub(crate) fn compact(&self) -> usize {
        compact(&mut self.lock())
    }

    /// Events awaiting an ack, all users.
    pub(crate) fn total(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Users> {
        // Each critical section leaves the map consistent, so poison is ignored.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `event` frame.
fn encode(
    event: EventName,
    id: &str,
    data: Box<RawValue>,
    thread: Option<&ThreadId>,
    run: Option<String>,
) -> Frame {
    Frame::from(
        ServerMessage::Event {
            event,
            id: id.to_owned(),
            data,
            thread_id: thread.map(|t| t.as_str().to_owned()),
            run_id: run,
        }
        .encode(),
    )
}
