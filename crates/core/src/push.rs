//! Pushes: live-only sends (no offset, not stored) to every connection ([`Broadcast`]), to a
//! user's connections ([`UserSend`]) or to one connection ([`ConnectionSend`]).

use herald_protocol::{PushScope, ServerMessage};
use herald_utils::Priority;
use serde_json::value::RawValue;

use crate::{
    broker::Envelope,
    connection::ConnectionManager,
    counters::Counters,
    error::GatewayError,
    ids::{ConnectionId, ThreadId, UserId},
    outbox::Frame,
};

/// A `push` (scope `broadcast`) to every authenticated connection, as
/// `POST /api/broadcast` requests it.
#[derive(Debug)]
pub struct Broadcast {
    /// The payload, relayed byte for byte.
    pub data: Box<RawValue>,
    /// Shedding priority at the connections' queues; also orders the operation queue.
    pub priority: Priority,
    /// Connections of this node left out.
    pub exclude: Vec<ConnectionId>,
}

/// A `push` (scope `user`) to a user's connections, as `POST /api/users/{userId}/send`
/// requests it.
#[derive(Debug)]
pub struct UserSend {
    /// The user.
    pub user: UserId,
    /// When set, only the user's connections bound to this thread or to none receive it.
    pub thread: Option<ThreadId>,
    /// The payload, relayed byte for byte.
    pub data: Box<RawValue>,
    /// Shedding priority; also orders the operation queue.
    pub priority: Priority,
}

/// A `push` (scope `connection`) to one authenticated connection, as
/// `POST /api/connections/{id}/send` requests it.
#[derive(Debug)]
pub struct ConnectionSend {
    /// The connection (of this node).
    pub connection: ConnectionId,
    /// The payload, relayed byte for byte.
    pub data: Box<RawValue>,
    /// Shedding priority; also orders the operation queue.
    pub priority: Priority,
}

/// How many connections of this node a push was queued to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The connections that queued it.
    pub connections: usize,
}

impl Broadcast {
    /// Queues the push to this node's connections; returns the count and the envelope for the
    /// other nodes (without `exclude`, which names this node's connections).
    pub(crate) fn deliver(
        self,
        connections: &ConnectionManager,
        counters: &Counters,
    ) -> (Delivered, Envelope) {
        let frame = push_frame(self.data, PushScope::Broadcast);
        let delivered = connections.offer_to_all(&self.exclude, &frame, self.priority, counters);
        let envelope = Envelope::Broadcast {
            priority: self.priority,
            frame,
        };
        (
            Delivered {
                connections: delivered,
            },
            envelope,
        )
    }
}

impl UserSend {
    /// Queues the push to the user's connections of this node that receive the thread;
    /// returns the count and the envelope for the other nodes.
    pub(crate) fn deliver(
        self,
        connections: &ConnectionManager,
        counters: &Counters,
    ) -> (Delivered, Envelope) {
        let frame = push_frame(self.data, PushScope::User);
        let delivered = connections.offer_to_user(
            &self.user,
            self.thread.as_ref(),
            &frame,
            self.priority,
            counters,
        );
        let envelope = Envelope::User {
            user: self.user,
            thread: self.thread,
            priority: self.priority,
            frame,
        };
        (
            Delivered {
                connections: delivered,
            },
            envelope,
        )
    }
}

impl ConnectionSend {
    /// Queues the push to the connection, which must be authenticated. Connection ids are
    /// local to a node, so this never travels to other nodes.
    pub(crate) fn deliver(
        self,
        connections: &ConnectionManager,
        counters: &Counters,
    ) -> Result<Delivered, GatewayError> {
        let connection = connections
            .get(self.connection)
            .filter(|connection| connection.key().is_some())
            .ok_or_else(|| GatewayError::UnknownConnection(self.connection.to_string()))?;
        let frame = push_frame(self.data, PushScope::Connection);
        let queued = connection
            .outbox()
            .offer(frame, self.priority, counters)
            .is_queued();
        Ok(Delivered {
            connections: usize::from(queued),
        })
    }
}

/// The `push` frame of `data`, encoded once for every receiver.
fn push_frame(data: Box<RawValue>, scope: PushScope) -> Frame {
    Frame::from(ServerMessage::Push { data, scope }.encode())
}
