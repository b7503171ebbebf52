//! Herald's core: connections, subscriptions, fan-out and authentication, transport-agnostic.
//!
//! `core` decides who receives a frame and in what order; it never touches a socket. A
//! transport (the WebSocket one lives in `herald-service`) asks the [`Gateway`] to admit and
//! [`open`](Gateway::open) a connection, feeds the resulting [`Session`] the client's text frames
//! and writes what the connection's [`Outbox`] yields. The HTTP API calls the gateway's
//! operations ([`Gateway::publish`], [`Gateway::send_to_user`], ...), and a sweeper calls
//! [`Gateway::sweep`] a few times a second for heartbeats and timeouts.
//!
//! Seams: time comes from a [`herald_utils::Clock`], tokens are checked by an [`Authenticator`]
//! ([`JwtAuthenticator`] by default), preferences live in a [`PreferenceStore`].
//!
//! Architecture invariants: no sockets and no tokio runtime in here; a connection is removed
//! from every index by exactly one path (dropping its [`Session`]); a publication is encoded
//! once and shared by every subscriber's queue.

mod auth;
mod connection;
mod events;
mod gateway;
mod history;
mod ids;
mod operations;
mod outbox;
mod preferences;
mod rate;
mod subscription;
#[cfg(test)]
mod tests;

pub use crate::{
    auth::{AuthError, Authenticator, JwtAuthenticator, JwtSettings, Principal, TopicPattern},
    connection::{Connection, ConnectionManager, LimitExceeded, LimitPolicy, Slot, UserPlace},
    events::{Emitter, EventOutcome, EventTarget},
    gateway::{
        Admission, ConnectionSummary, Gateway, GatewayError, GatewayParts, GatewaySettings,
        GatewayStats, PublishOutcome, Refusal, Session, SweepReport, TopicHistory, unix_ms,
    },
    history::{HistoryEntry, HistoryStore, InMemoryHistoryStore},
    ids::{ConnectionId, IsolationKey, ThreadId, UserId},
    operations::{Outcome, Request},
    outbox::{Frame, Offer, Outbox},
    preferences::{InMemoryPreferenceStore, PreferenceStore},
    subscription::{Published, SubscribeError, SubscriptionManager, TopicInfo, TopicPosition},
};
