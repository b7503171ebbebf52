//! The fan-out worker: takes operations from the operation queue, highest priority first,
//! performs each on this node's connections, hands it to the broker for the other nodes, and
//! answers whoever waits for it.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use herald_protocol::{ErrorCode, ServerMessage, Topic};
use herald_utils::Priority;
use serde_json::json;

use crate::{
    broker::{BrokerError, Envelope, Sequenced},
    error::GatewayError,
    event_store::{Appended, EventStore},
    events::{EventOutcome, EventSend},
    node::Node,
    operations::{Operation, PublishReply, Queued, Reply},
    outbox::{Frame, HeldWakes},
    publish::{PublishOutcome, Publisher},
};

/// Operations the worker takes per turn before yielding to other tasks.
const OPERATION_BATCH: usize = 64;

/// A publisher's answer, held until the worker's turn ends.
type Answer = (Reply<PublishOutcome>, Result<PublishOutcome, GatewayError>);

/// Performs queued operations until shutdown has begun and the queue is empty.
///
/// Ordered for delivery latency, given that the runtime runs the task woken last first (its
/// LIFO slot) and every other woken task behind the ones already runnable, such as the rest
/// of a burst of HTTP requests that arrived together:
/// - the HTTP publishers of a turn are answered at its end, once every publication of the turn
///   is queued to its subscribers, and the transports those publications filled are woken
///   after the answers ([`HeldWakes`]), so that a delivery's socket write runs right after the
///   turn, before the answers' writes and the rest of the burst, instead of behind them;
/// - the worker yields once every [`OPERATION_BATCH`] operations, not after every turn: the
///   runtime runs a yielded task again only after its next I/O poll, which would leave every
///   publication of a burst but the first waiting behind the whole burst.
///
/// A publisher is answered when its publication is queued, never later than the turn it is
/// performed in.
pub(crate) async fn run(node: &Arc<Node>) {
    let mut batch = Vec::with_capacity(OPERATION_BATCH);
    let mut answers: Vec<Answer> = Vec::with_capacity(OPERATION_BATCH);
    // Operations performed since the worker last yielded (waiting for work that is already
    // signalled does not give the thread up, so it does not count).
    let mut unbroken = 0;
    loop {
        // An API caller performing its operation in place wakes the worker when it is done.
        let Some(turn) = node.operations.worker_turn() else {
            node.operations.wait().await;
            continue;
        };
        node.operations.pop_batch(OPERATION_BATCH, &mut batch);
        if batch.is_empty() {
            drop(turn);
            if node.is_shutting_down() {
                return;
            }
            node.operations.wait().await;
            continue;
        }
        unbroken += batch.len();
        let held = HeldWakes::hold();
        answers.extend(batch.drain(..).filter_map(|queued| perform(node, queued)));
        for (sender, result) in answers.drain(..) {
            answer(sender, result);
        }
        drop(held);
        drop(turn);
        if unbroken >= OPERATION_BATCH {
            unbroken = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Takes an API caller's operations (one, or a publish batch's): performs them all in place,
/// in one turn in the caller's task, when the queue is empty and nobody performs operations;
/// else queues each for the worker, where each may be refused alone (the queue is full), and
/// `refused` is told its index and why. Once it returns, the operations performed in place
/// have sent their replies.
///
/// This spares an operation on an idle gateway two task switches, the queue and the worker's
/// wake-up, and overtakes nothing, since nothing waits and no turn is under way. The caller's
/// task then steps aside once, so that the transports the operations filled write before the
/// caller's own answer does, as they do after a worker's turn. A batch goes in one turn and
/// one step aside, not one per item: the transports write its frames together.
pub(crate) async fn submit(
    node: &Arc<Node>,
    operations: impl IntoIterator<Item = Operation>,
    mut refused: impl FnMut(usize, GatewayError),
) {
    let Some(turn) = node.operations.caller_turn() else {
        for (index, operation) in operations.into_iter().enumerate() {
            if let Err(error) = node.enqueue(operation) {
                refused(index, error);
            }
        }
        return;
    };
    let held = HeldWakes::hold();
    for operation in operations {
        // The callers wait in this task, which cannot run before the turn ends: answering
        // each at once wakes nobody early.
        if let Some((sender, result)) = perform(node, node.accept(operation)) {
            answer(sender, result);
        }
    }
    drop(held);
    drop(turn);
    StepAside { stepped: false }.await;
}

/// Pending once, with the task woken at once: the runtime runs it again behind the tasks
/// already runnable (the transports just woken), without waiting for its next I/O poll as
/// `tokio::task::yield_now` does.
struct StepAside {
    stepped: bool,
}

impl Future for StepAside {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stepped {
            return Poll::Ready(());
        }
        self.stepped = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Performs one operation and answers it, but for an HTTP publisher, whose answer it returns
/// for the end of the turn. Every frame queued here for a publication, push or event is
/// counted as delivered, once per operation.
fn perform(node: &Arc<Node>, queued: Queued) -> Option<Answer> {
    let connections = &node.connections;
    let counters = &node.counters;
    let Queued {
        operation,
        accepted,
    } = queued;
    match operation {
        Operation::Publish(publication, reply) => {
            let topic = publication.topic.clone();
            if node.is_shutting_down() {
                answer_publish(node, &topic, reply, Err(GatewayError::ShuttingDown));
            } else if let Some(sequencer) = node.sequencer() {
                // The cluster numbers it; every node, this one included, delivers it when the
                // broker brings it back. The caller is answered with the cluster's position.
                let request = Publisher::sequence_request(publication, &node.runtime);
                let node = Arc::downgrade(node);
                sequencer.sequence(
                    request,
                    Box::new(move |result| {
                        // A gateway that went away drops the reply; its caller hears
                        // "shutting down".
                        if let Some(node) = node.upgrade() {
                            let result = sequenced_outcome(&node, result);
                            answer_publish(&node, &topic, reply, result);
                        }
                    }),
                );
            } else {
                let (outcome, envelope) = node.publisher.publish(
                    publication,
                    accepted,
                    &node.topics,
                    &node.runtime,
                    node.now_ms(),
                    counters,
                );
                finish(node, envelope, outcome.delivered);
                match reply {
                    PublishReply::Caller(sender) => return Some((sender, Ok(outcome))),
                    ack => answer_publish(node, &topic, ack, Ok(outcome)),
                }
            }
        }
        Operation::Broadcast(broadcast, sender) => {
            let (delivered, envelope) = broadcast.deliver(connections, counters);
            finish(node, Some(envelope), delivered.connections);
            answer(sender, Ok(delivered));
        }
        Operation::UserSend(send, sender) => {
            let (delivered, envelope) = send.deliver(connections, counters);
            finish(node, Some(envelope), delivered.connections);
            answer(sender, Ok(delivered));
        }
        Operation::ConnectionSend(send, sender) => {
            let result = send.deliver(connections, counters);
            if let Ok(delivered) = &result {
                finish(node, None, delivered.connections);
            }
            answer(sender, result);
        }
        Operation::Event(send, sender) => {
            if let Some(store) = node.event_store() {
                store_event(node, store.as_ref(), send, sender);
            } else {
                let result = node
                    .events
                    .send(send, connections, counters, node.now_ms())
                    .map(|(outcome, envelope)| {
                        finish(node, envelope, outcome.delivered);
                        outcome
                    });
                answer(sender, result);
            }
        }
    }
    None
}

/// Sends an event through the cluster's event store: the caller is answered once the store
/// kept it (then this node delivers it and forwards it to the others), or with why it could
/// not be kept (the user's limit, or the store unavailable: nothing is delivered then).
fn store_event(
    node: &Arc<Node>,
    store: &dyn EventStore,
    send: EventSend,
    sender: Reply<EventOutcome>,
) {
    let event = node.events.prepare(send, node.unix_ms());
    let limit = node.events.limit();
    let weak = Arc::downgrade(node);
    store.append(
        event.clone(),
        limit,
        node.settings.event_ttl,
        Box::new(move |result| {
            // A gateway that went away drops the reply; its caller hears "shutting down".
            let Some(node) = weak.upgrade() else {
                return;
            };
            let result = match result {
                Ok(Appended::Stored { pending }) => {
                    let id = event.id.clone();
                    let (delivered, envelope) =
                        node.events
                            .accept(event, &node.connections, &node.counters, node.now_ms());
                    finish(&node, Some(envelope), delivered);
                    Ok(EventOutcome {
                        id,
                        delivered,
                        pending,
                    })
                }
                Ok(Appended::Duplicate { pending }) => Ok(EventOutcome {
                    id: event.id,
                    delivered: 0,
                    pending,
                }),
                Ok(Appended::Full) => {
                    node.counters.events_rejected.increment();
                    Err(GatewayError::TooManyPending { limit })
                }
                Err(error) => {
                    node.counters.broker_failures.increment();
                    tracing::warn!(%error, "a critical event could not be kept; refused");
                    Err(GatewayError::Unavailable(error.to_string()))
                }
            };
            answer(sender, result);
        }),
    );
}

/// The outcome of a publication the cluster's sequencer numbered, counted like a local one.
/// Its deliveries are counted where each node delivers it, so `delivered` is 0 here.
fn sequenced_outcome(
    node: &Node,
    result: Result<Sequenced, BrokerError>,
) -> Result<PublishOutcome, GatewayError> {
    match result {
        Ok(sequenced) => {
            if sequenced.deduplicated {
                node.counters.deduplicated.increment();
            } else {
                node.counters.published.increment();
            }
            Ok(PublishOutcome {
                offset: sequenced.offset,
                epoch: sequenced.epoch,
                deduplicated: sequenced.deduplicated,
                delivered: 0,
            })
        }
        Err(error) => {
            node.counters.broker_failures.increment();
            tracing::warn!(%error, "the broker did not sequence a publication");
            Err(GatewayError::Unavailable(error.to_string()))
        }
    }
}

/// Answers a publication: the HTTP caller, or the publishing connection's `ack` or `error`.
fn answer_publish(
    node: &Node,
    topic: &Topic,
    reply: PublishReply,
    result: Result<PublishOutcome, GatewayError>,
) {
    match reply {
        PublishReply::Caller(sender) => answer(sender, result),
        PublishReply::Ack {
            connection,
            message_id,
        } => {
            if let Some(reply) = publish_reply(topic, message_id, result) {
                connection.outbox().offer(
                    Frame::from(reply.encode()),
                    Priority::Critical,
                    &node.counters,
                );
            }
        }
    }
}

/// Counts an operation's local deliveries and hands its envelope to the other nodes.
fn finish(node: &Node, envelope: Option<Envelope>, delivered: usize) {
    node.counters.delivered.add(delivered);
    if let Some(envelope) = envelope {
        node.forward(&envelope);
    }
}

/// Sends a result to its caller. The caller may have gone away (its HTTP connection closed);
/// there is nothing to do then.
fn answer<T>(sender: Reply<T>, result: Result<T, GatewayError>) {
    let _ = sender.send(result);
}

/// The reply a client's `publish` gets: an `ack` with the position when it carried a
/// `messageId`, an `unavailable` error whether or not it did.
fn publish_reply(
    topic: &Topic,
    message_id: Option<String>,
    result: Result<PublishOutcome, GatewayError>,
) -> Option<ServerMessage> {
    match result {
        Ok(outcome) => message_id.map(|message_id| ServerMessage::Ack {
            message_id,
            data: json!({"topic": topic, "offset": outcome.offset, "epoch": &*outcome.epoch,
                         "deduplicated": outcome.deduplicated}),
        }),
        Err(error) => Some(ServerMessage::error(
            message_id,
            ErrorCode::Unavailable,
            error.to_string(),
        )),
    }
}
