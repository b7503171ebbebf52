//! Herald over Redis: several nodes behind a load balancer as one system.
//!
//! [`RedisBroker`] implements core's [`Broker`](herald_core::Broker) and
//! [`Sequencer`](herald_core::Sequencer): Redis numbers every publication (offsets, epochs and
//! dedupe ids are the same on every node), keeps each topic's recent publications in a capped
//! stream, and carries publications, broadcasts, user pushes and critical events to every node
//! over one pub/sub channel. [`RedisEventStore`] keeps every user's pending critical events
//! (so they outlive the node that accepted them, and an ack on one node removes them on all)
//! and [`RedisPreferenceStore`] the users' preferences. The key and channel layout is in
//! `wire.rs`, `store.rs`, `events.rs`, `preferences.rs` and docs/operations.md.
//!
//! Architecture invariant: this crate knows core's seams and Redis, nothing of sockets, HTTP or
//! the environment; the service builds it from the configuration.

mod broker;
mod events;
mod fallback;
mod guard;
mod link;
mod preferences;
mod script;
mod store;
mod wire;

pub use crate::{
    broker::RedisBroker,
    events::RedisEventStore,
    guard::RedisBreaker,
    link::{RedisBrokerError, RedisSettings},
    preferences::RedisPreferenceStore,
};
