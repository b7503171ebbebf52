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
    /// Makes generated ids unique across restarts (the gateway's start time).
    id_seed: u64,
    next_id: AtomicU64,
}

impl PendingEvents {
    /// No pending events; at most `limit` per user, redelivered after `ack_timeout`, kept for
    /// `ttl`. Generated ids start with `id_seed`.
    pub(crate) fn new(limit: usize, ack_timeout: Duration, ttl: Duration, id_seed: u64) -> Self {
        Self {
            users: Mutex::default(),
            limit,
            ack_timeout_ms: duration_ms(ack_timeout),
            ttl_ms: duration_ms(ttl),
            id_seed,
            next_id: AtomicU64::new(0),
        }
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
        let id: Arc<str> = match id {
            Some(id) => Arc::from(id),
            None => {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                Arc::from(format!("evt-{:x}-{n:x}", self.id_seed))
            }
        };
        let frame = Frame::from(
            ServerMessage::Event {
                event,
                id: id.to_string(),
                data,
                thread_id: thread.as_ref().map(|t| t.as_str().to_owned()),
                run_id: run,
            }
            .encode(),
        );
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
    /// users whose oldest delivered event waited longer than the ack timeout.
    pub(crate) fn sweep(&self, now_ms: u64, connections: &ConnectionManager, counters: &Counters) {
        let mut users = self.lock();
        users.retain(|user, pending| {
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
