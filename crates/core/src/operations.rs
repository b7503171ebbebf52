//! The operation queue: a bounded priority queue between ingest (the HTTP API, client
//! publishes, the `Emitter`) and the fan-out worker, so bursts are absorbed, `critical` work
//! goes first, and a full queue is a visible refusal (HTTP 429, `rate_limited`) instead of a
//! silent loss. Each queued [`Operation`] carries its own typed reply.
//!
//! Operations are performed one turn at a time: whoever performs them holds the queue's
//! [`Turn`], the fan-out worker for what it takes from the queue, or an API caller that finds
//! the queue empty and nobody performing, for its own operation in place (no queue, no task
//! switch). Either way, nothing accepted earlier is overtaken and no two turns overlap.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use herald_utils::{Priority, PriorityQueue};
use tokio::sync::{Notify, oneshot};

use crate::{
    connection::Connection,
    error::GatewayError,
    events::{EventOutcome, EventSend},
    publish::{Publication, PublishOutcome},
    push::{Broadcast, ConnectionSend, Delivered, UserSend},
};

/// Where an API caller waits for the result of its operation.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, GatewayError>>;

/// Work the fan-out worker performs, and who waits for it.
#[derive(Debug)]
pub(crate) enum Operation {
    /// A publication, from the HTTP API or a client.
    Publish(Publication, PublishReply),
    /// A push to every authenticated connection.
    Broadcast(Broadcast, Reply<Delivered>),
    /// A push to a user's connections.
    UserSend(UserSend, Reply<Delivered>),
    /// A push to one connection.
    ConnectionSend(ConnectionSend, Reply<Delivered>),
    /// A critical event.
    Event(EventSend, Reply<EventOutcome>),
}

impl Operation {
    /// The priority the queue orders this operation by: the request's, and `critical` for
    /// events.
    fn priority(&self) -> Priority {
        match self {
            Self::Publish(publication, _) => publication.priority,
            Self::Broadcast(broadcast, _) => broadcast.priority,
            Self::UserSend(send, _) => send.priority,
            Self::ConnectionSend(send, _) => send.priority,
            Self::Event(..) => Priority::Critical,
        }
    }
}

/// Who waits for a publication's outcome.
#[derive(Debug)]
pub(crate) enum PublishReply {
    /// An async caller (the HTTP API).
    Caller(Reply<PublishOutcome>),
    /// A client's `publish`: the `ack` (when it carried a `messageId`) or the `error` goes to
    /// its connection.
    Ack {
        connection: Arc<Connection>,
        message_id: Option<String>,
    },
}

/// An operation as the queue holds it: with the instant the gateway accepted it, from which
/// a publication's delivery latency is measured.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The operation.
    pub(crate) operation: Operation,
    /// When [`OperationQueue::push`] took it, on the gateway's clock.
    pub(crate) accepted: Instant,
}

/// The operation queue refused an operation because it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueFull;

/// The bounded queue, the signal that wakes the fan-out worker, and the turn.
#[derive(Debug)]
pub(crate) struct OperationQueue {
    queue: Mutex<PriorityQueue<Queued>>,
    capacity: usize,
    notify: Notify,
    /// Whether someone holds the [`Turn`].
    performing: AtomicBool,
    /// Set by the worker before it asks for the turn, so that a caller's turn that turned it
    /// away wakes it when it ends.
    worker_waits: AtomicBool,
}

impl OperationQueue {
    /// An empty queue of at most `capacity` operations.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(PriorityQueue::new(capacity, usize::MAX)),
            capacity,
            notify: Notify::new(),
            performing: AtomicBool::new(false),
            worker_waits: AtomicBool::new(false),
        }
    }

    /// The fan-out worker's turn, unless a caller holds it (the caller wakes the worker when
    /// its turn ends).
    pub(crate) fn worker_turn(&self) -> Option<Turn<'_>> {
        // Announced before the attempt, and both sides use sequentially consistent
        // operations: either the attempt sees the caller's turn ended, or the caller's end
        // sees the announcement and wakes the worker.
        self.worker_waits.store(true, Ordering::SeqCst);
        let turn = self.take_turn(false)?;
        self.worker_waits.store(false, Ordering::SeqCst);
        Some(turn)
    }

    /// A caller's turn to perform its own operation in place: only when nobody holds the turn
    /// and nothing waits in the queue, so that it overtakes nothing accepted before it.
    pub(crate) fn caller_turn(&self) -> Option<Turn<'_>> {
        let turn = self.take_turn(true)?;
        // A push between this check and the caller's operation is performed after it, as
        // if it had come later, which it did.
        if self.len() == 0 { Some(turn) } else { None }
    }

    fn take_turn(&self, caller: bool) -> Option<Turn<'_>> {
        self.performing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            // Built only when taken: a `Turn` dropped ends the turn.
            .then(|| Turn {
                queue: self,
                caller,
            })
    }

    /// Queues `operation`, accepted at `accepted`, or refuses it (dropping it, so a waiting
    /// caller sees its reply channel closed) when the queue is full. Never sheds accepted work.
    pub(crate) fn push(&self, operation: Operation, accepted: Instant) -> Result<(), QueueFull> {
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            return Err(QueueFull);
        }
        let priority = operation.priority();
        // Below capacity nothing is shed, and the byte budget is unbounded, so this succeeds.
        let queued = Queued {
            operation,
            accepted,
        };
        if queue.push(queued, priority, 0).is_err() {
            return Err(QueueFull);
        }
        drop(queue);
        self.notify.notify_one();
        Ok(())
    }

    /// Moves up to `max` operations, highest priority first, into `out`.
    pub(crate) fn pop_batch(&self, max: usize, out: &mut Vec<Queued>) {
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

    fn lock(&self) -> MutexGuard<'_, PriorityQueue<Queued>> {
        // Each critical section leaves the queue consistent, so poison is ignored.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The right to perform operations, held by one performer at a time; ends when dropped.
#[must_use = "the turn ends when this is dropped"]
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    queue: &'a OperationQueue,
    /// Whether an API caller holds it (its end wakes a worker it turned away).
    caller: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let queue = self.queue;
        queue.performing.store(false, Ordering::SeqCst);
        if self.caller && queue.worker_waits.swap(false, Ordering::SeqCst) {
            queue.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::Topic;
    use herald_utils::{Clock, ManualClock};
    use serde_json::value::RawValue;

    use super::*;

    fn publication(priority: Priority, name: &str) -> Operation {
        let (reply, _) = oneshot::channel();
        Operation::Publish(
            Publication {
                topic: Topic::new(name).expect("valid topic"),
                data: RawValue::from_string("1".to_owned()).expect("valid JSON"),
                priority,
                id: None,
            },
            PublishReply::Caller(reply),
        )
    }

    fn topic_of(queued: &Queued) -> &str {
        match &queued.operation {
            Operation::Publish(publication, _) => publication.topic.as_str(),
            _ => "",
        }
    }

    #[test]
    fn a_full_queue_refuses_and_the_worker_takes_the_highest_priority_first() {
        let queue = OperationQueue::new(3);
        for (priority, name) in [
            (Priority::Low, "low"),
            (Priority::Critical, "critical"),
            (Priority::Normal, "normal"),
        ] {
            assert_eq!(
                queue.push(publication(priority, name), ManualClock::new().now()),
                Ok(())
            );
        }
        assert_eq!(
            queue.push(
                publication(Priority::Critical, "refused"),
                ManualClock::new().now()
            ),
            Err(QueueFull)
        );
        assert_eq!(queue.len(), 3);
        let mut out = Vec::new();
        queue.pop_batch(2, &mut out);
        let taken: Vec<&str> = out.iter().map(topic_of).collect();
        assert_eq!(taken, ["critical", "normal"]);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn turns_exclude_each_other_and_a_callers_turn_wakes_the_worker_it_turned_away() {
        let queue = OperationQueue::new(4);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let caller = queue.caller_turn();
        assert!(caller.is_some());
        assert!(queue.worker_turn().is_none());
        assert!(queue.caller_turn().is_none());
        // The worker, turned away, waits; the caller's turn ending wakes it.
        let mut wait = std::pin::pin!(queue.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drop(caller);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        let worker = queue.worker_turn();
        assert!(worker.is_some());
        assert!(queue.caller_turn().is_none());
        drop(worker);
        // A worker's turn ending wakes nobody: the worker goes on by itself.
        let mut wait = std::pin::pin!(queue.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn a_caller_gets_no_turn_while_anything_is_queued() {
        let queue = OperationQueue::new(4);
        assert_eq!(
            queue.push(
                publication(Priority::Low, "queued"),
                ManualClock::new().now()
            ),
            Ok(())
        );
        assert!(queue.caller_turn().is_none());
        // And the refused turn is not left taken.
        assert!(queue.worker_turn().is_some());
        let mut out = Vec::new();
        queue.pop_batch(4, &mut out);
        assert!(queue.caller_turn().is_some());
    }
}
