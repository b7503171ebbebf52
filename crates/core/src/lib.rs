//! Herald's core: connections, subscriptions, fan-out, critical events and authentication,
//! transport-agnostic.
//!
//! `core` decides who receives a frame and in what order; it never touches a socket. A
//! transport (the WebSocket one lives in `herald-service`) asks the [`Gateway`] to
//! [`admit`](Gateway::admit) and [`open`](Gateway::open) a connection, feeds the resulting
//! [`Session`] the client's text frames and writes what the connection's [`Outbox`] yields.
//! The HTTP API calls the gateway's typed operations ([`Gateway::publish`],
//! [`Gateway::send_to_user`], ...), which all go through one bounded, priority-ordered
//! operation queue drained by [`Gateway::run_operations`]; a sweeper calls [`Gateway::sweep`]
//! a few times a second for heartbeats and timeouts.
//!
//! Seams, all in [`GatewayParts`]: time (monotonic and wall-clock) comes from a
//! [`herald_utils::Clock`], tokens are checked by an [`Authenticator`], other nodes are reached
//! through a [`Broker`] ([`InMemoryBroker`] within one process), history and preferences live
//! in a [`HistoryStore`] and a [`PreferenceStore`], pending critical events in each node's
//! memory or, across a cluster, in an [`EventStore`], and memory readings come from a
//! [`herald_memory::MemoryProbe`]. The gateway is a [`herald_monitoring::StatsSource`]: every
//! count it keeps is in its [`Stats`](herald_monitoring::Stats). Memory pressure acts on it
//! through `herald-memory`'s [`Relief`](herald_memory::Relief) (trim history and the dedupe
//! cache, refuse new connections, shed optional frames, close the idlest connections with 1013),
//! [`MemorySources`](herald_memory::MemorySources) (each component's size) and
//! [`Cleanup`](herald_memory::Cleanup) (the sweep's once-a-second clean-ups, on demand), all
//! implemented for [`Gateway`].
//!
//! Architecture invariants: no sockets and no tokio runtime in here; no ambient time (only the
//! clock); a connection is removed from every index by exactly one path (dropping its
//! [`Session`]); a publication is encoded once and shared by every subscriber's queue; every
//! count has one home, the gateway's counters.

mod auth;
mod broker;
mod connection;
mod counters;
mod emitter;
mod error;
mod event_store;
mod events;
mod gateway;
mod history;
mod ids;
mod node;
mod operations;
mod outbox;
mod parts;
mod preferences;
mod pressure;
mod publish;
mod push;
mod rate;
mod session;
mod shard;
mod sizes;
mod subscription;
mod sweep;
#[cfg(test)]
mod tests;
mod time;
mod worker;

pub use crate::{
    auth::{AuthError, Authenticator, Principal, TopicPattern},
    broker::{
        Broker, BrokerError, Envelope, InMemoryBroker, LocalDelivery, SequenceReply,
        SequenceRequest, Sequenced, SequencedDelivery, SequencedPublication, Sequencer,
        complete_message_frame,
    },
    connection::{Connection, LimitExceeded, LimitPolicy},
    emitter::Emitter,
    error::GatewayError,
    event_store::{
        AckedElsewhere, Appended, EventStore, EventStoreError, EventStoreReply, StoredEvent,
    },
    events::{EventOutcome, EventSend, EventTarget},
    gateway::{Admission, ConnectionSummary, Gateway, Refusal, TopicHistory},
    history::{HistoryEntry, HistoryStore, InMemoryHistoryStore},
    ids::{ConnectionId, IsolationKey, ThreadId, UserId},
    outbox::{Frame, Outbox},
    parts::{GatewayParts, GatewaySettings},
    preferences::{
        ChangedElsewhere, InMemoryPreferenceStore, PreferenceError, PreferenceReply,
        PreferenceStore, merge_patch,
    },
    publish::{Publication, PublishOutcome},
    push::{Broadcast, ConnectionSend, Delivered, UserSend},
    session::Session,
    subscription::{TopicInfo, TopicPosition},
    sweep::SweepReport,
};
