//! The operation queue: a bounded priority queue between ingest (the HTTP API, client
//! publishes, the `Emitter`) and the fan-out worker, so bursts are absorbed, `critical` work
//! goes first, and a full queue is a visible refusal (HTTP 429, `rate_limited`) instead of a
//! silent loss. Each queued [`Operation`] carries its own typed reply.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
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

/// The bounded queue and the signal that wakes the fan-out worker.
#[derive(Debug)]
pub(crate) struct OperationQueue {
    queue: Mutex<PriorityQueue<Queued>>,
    capacity: usize,
    notify: Notify,
}

impl OperationQueue {
    /// An empty queue of at most `capacity` operations.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(PriorityQueue::new(capacity, usize::MAX)),
            capacity,
            notify: Notify::new(),
        }
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
}
