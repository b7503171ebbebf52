//! The [`OperationQueue`]: a bounded priority queue between ingest (the HTTP API, client
//! publishes) and fan-out, so bursts are absorbed, `critical` work goes first, and a full queue
//! is a visible refusal (HTTP 429, `rate_limited`) instead of a silent loss.

use std::sync::{Arc, Mutex, PoisonError};

use herald_protocol::{EventName, Topic};
use herald_utils::{Priority, PriorityQueue};
use serde_json::value::RawValue;
use tokio::sync::{Notify, oneshot};

use crate::{
    connection::Connection,
    events::EventOutcome,
    gateway::{GatewayError, PublishOutcome},
    ids::{ConnectionId, ThreadId, UserId},
};

/// Work the fan-out performs for a caller.
#[derive(Debug)]
pub enum Request {
    /// Publish to a topic (see [`crate::Gateway::publish`]).
    Publish {
        /// The topic.
        topic: Topic,
        /// The payload, relayed verbatim.
        data: Box<RawValue>,
        /// Shedding priority at the subscribers' queues.
        priority: Priority,
        /// Publish id for dedupe.
        id: Option<String>,
    },
    /// A `push` to every connection but `exclude` (see [`crate::Gateway::broadcast`]).
    Broadcast {
        /// The payload.
        data: Box<RawValue>,
        /// Shedding priority.
        priority: Priority,
        /// Connections left out.
        exclude: Vec<ConnectionId>,
    },
    /// A critical event to a user (see [`crate::Gateway::send_event`]).
    Event {
        /// The user.
        user: UserId,
        /// The event name.
        event: EventName,
        /// The payload.
        data: Box<RawValue>,
        /// The thread, if any.
        thread: Option<ThreadId>,
        /// The agent run, if any.
        run: Option<String>,
        /// A stable id; generated when absent.
        id: Option<String>,
    },
    /// A `push` to a user, optionally one thread (see [`crate::Gateway::send_to_user`]).
    SendToUser {
        /// The user.
        user: UserId,
        /// The thread, if any.
        thread: Option<ThreadId>,
        /// The payload.
        data: Box<RawValue>,
        /// Shedding priority.
        priority: Priority,
    },
}

impl Request {
    /// The priority the queue orders this request by.
    pub fn priority(&self) -> Priority {
        match self {
            Self::Publish { priority, .. }
            | Self::Broadcast { priority, .. }
            | Self::SendToUser { priority, .. } => *priority,
            Self::Event { .. } => Priority::Critical,
        }
    }
}

/// What a performed [`Request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A publication's result.
    Published(PublishOutcome),
    /// How many connections a push was queued to.
    Delivered(usize),
    /// A critical event's result.
    Event(EventOutcome),
}

/// Who waits for an operation's outcome.
#[derive(Debug)]
pub(crate) enum Completion {
    /// An async caller (the HTTP API).
    Caller(oneshot::Sender<Result<Outcome, GatewayError>>),
    /// A client's `publish`: the ack (or error) goes to its connection.
    Ack {
        connection: Arc<Connection>,
        message_id: Option<String>,
        topic: Topic,
    },
}

/// A queued request and who waits for it.
#[derive(Debug)]
pub(crate) struct Operation {
    pub(crate) request: Request,
    pub(crate) completion: Completion,
}

/// The operation queue refused an operation because it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueFull;

/// The bounded queue and the signal that wakes the fan-out worker.
#[derive(Debug)]
pub(crate) struct OperationQueue {
    queue: Mutex<PriorityQueue<Operation>>,
    capacity: usize,
    notify: Notify,
}

impl OperationQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(PriorityQueue::new(capacity, usize::MAX)),
            capacity,
            notify: Notify::new(),
        }
    }

    /// Queues `operation`, or refuses it (dropping it) when the queue is full. Never sheds
    /// accepted work.
    pub(crate) fn push(&self, operation: Operation) -> Result<(), QueueFull> {
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            return Err(QueueFull);
        }
        let priority = operation.request.priority();
        // Below capacity nothing is shed, and the byte budget is unbounded, so this succeeds.
        if queue.push(operation, priority, 0).is_err() {
            return Err(QueueFull);
        }
        drop(queue);
        self.notify.notify_one();
        Ok(())
    }

    /// Moves up to `max` operations, highest priority first, into `out`.
    pub(crate) fn pop_batch(&self, max: usize, out: &mut Vec<Operation>) {
        let mut queue = self.lock();
        while out.len() < max {
            let Some((operation, _)) = queue.pop() else {
                break;
            };
            out.push(operation);
        }
    }

    /// Operations waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits until an operation may be waiting. Wake-ups are not lost: a push between the
    /// caller's check and this wait leaves a permit.
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Wakes the worker (at shutdown, so it can notice and finish).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PriorityQueue<Operation>> {
        // Each critical section leaves the queue consistent, so poison is ignored.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
