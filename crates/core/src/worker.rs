//! The fan-out worker: takes operations from the operation queue, highest priority first,
//! performs each on this node's connections, hands it to the broker for the other nodes, and
//! answers whoever waits for it.

use herald_protocol::{ErrorCode, ServerMessage, Topic};
use herald_utils::Priority;
use serde_json::json;

use crate::{
    broker::Envelope,
    error::GatewayError,
    node::Node,
    operations::{Operation, PublishReply, Queued, Reply},
    outbox::Frame,
    publish::PublishOutcome,
};

/// Operations the worker takes per turn before yielding to other tasks.
const OPERATION_BATCH: usize = 64;

/// Performs queued operations until shutdown has begun and the queue is empty.
pub(crate) async fn run(node: &Node) {
    let mut batch = Vec::with_capacity(OPERATION_BATCH);
    loop {
        node.operations.pop_batch(OPERATION_BATCH, &mut batch);
        if batch.is_empty() {
            if node.is_shutting_down() {
                return;
            }
            node.operations.wait().await;
            continue;
        }
        for queued in batch.drain(..) {
            perform(node, queued);
        }
        tokio::task::yield_now().await;
    }
}

/// Performs one operation and answers it. Every frame queued here for a publication, push or
/// event is counted as delivered, once per operation.
fn perform(node: &Node, queued: Queued) {
    let connections = &node.connections;
    let counters = &node.counters;
    let Queued {
        operation,
        accepted,
    } = queued;
    match operation {
        Operation::Publish(publication, reply) => {
            let topic = publication.topic.clone();
            let result = if node.is_shutting_down() {
                Err(GatewayError::ShuttingDown)
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
                Ok(outcome)
            };
            match reply {
                PublishReply::Caller(sender) => answer(sender, result),
                PublishReply::Ack {
                    connection,
                    message_id,
                } => {
                    if let Some(reply) = publish_reply(&topic, message_id, result) {
                        connection.outbox().offer(
                            Frame::from(reply.encode()),
                            Priority::Critical,
                            counters,
                        );
                    }
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
