//! How memory pressure acts on the gateway: [`Relief`], [`MemorySources`] and [`Cleanup`] from
//! `herald-memory`, implemented for [`Gateway`]. Each step is a walk of the indexes done here
//! or by the structure it touches (outboxes, the connection and topic indexes, history, the
//! dedupe cache); none adds anything to the delivery path.

use herald_memory::{Cleanup, CleanupReport, MemorySources, Relief, SourceSize};
use herald_protocol::CloseCode;

use crate::{
    connection::CONNECTION_BYTES, gateway::Gateway, publish::DEDUPE_ENTRY_BYTES, session::Session,
    subscription::SUBSCRIPTION_BYTES,
};

/// What memory pressure takes from the gateway, step by step. Critical frames and pending
/// critical events are never among it.
impl Relief for Gateway {
    /// Trims every topic's history to `fraction` of its per-topic bound and the whole history to
    /// `fraction` of its byte budget (newest kept; the dropped entries are counted as
    /// `herald_history_dropped_total`), caps the dedupe cache at `fraction` of its size until
    /// the next `trim` (1.0 lifts the cap), and compacts the indexes. Returns the estimated
    /// bytes freed.
    fn trim(&self, fraction: f64) -> u64 {
        let node = &self.node;
        let history = node.topics.history_store().trim(fraction);
        node.counters
            .history_dropped
            .add(usize::try_from(history.entries).unwrap_or(usize::MAX));
        let dedupe = node.publisher.limit_dedupe(fraction, &node.runtime);
        let freed = dedupe * DEDUPE_ENTRY_BYTES + node.compact();
        history.bytes.saturating_add(count(freed))
    }

    /// While `refuse` is set, [`Gateway::admit`] refuses new connections with
    /// `Refusal::Unavailable("memory pressure")`; connections already open are untouched.
    fn refuse_connections(&self, refuse: bool) {
        let was = self.node.is_refusing();
        self.node.set_refusing(refuse);
        match (was, refuse) {
            (false, true) => tracing::warn!("memory pressure: refusing new connections"),
            (true, false) => tracing::info!("memory pressure eased: accepting new connections"),
            _ => {}
        }
    }

    /// Sheds every queued `low` and `normal` frame from every connection's queue, counted in
    /// `herald_messages_shed_total` by priority like any other shed frame; `high` and
    /// `critical` frames stay queued.
    fn shed_optional(&self) -> u64 {
        let node = &self.node;
        count(node.connections.shed_optional(&node.counters))
    }

    /// Asks the `count` connections idle longest (authenticated or not) to close with 1013
    /// (try again later), counted as `herald_degradation_closes_total`. Their users' pending
    /// critical events stay pending and are delivered again when they reconnect.
    fn close_idlest(&self, count: usize) -> usize {
        let node = &self.node;
        let closed = node
            .connections
            .close_idlest(count, CloseCode::TryAgainLater);
        node.counters.degradation_closes.add(closed);
        if closed > 0 {
            tracing::warn!(closed, "memory pressure: closed the idlest connections");
        }
        closed
    }
}

/// Every component's own size estimate, from its counts; walks the outboxes and the pending
/// events once, so it is for a once-a-second reading, not for the delivery path.
impl MemorySources for Gateway {
    /// By name, each an estimate from the component's own counts:
    ///
    /// - `connections`: live connections × (the `Connection`, its reference counts, its id
    ///   and user index entries and its `Session`, by `size_of`);
    /// - `subscriptions`: subscriptions × (an entry in the topic's subscriber map and in the
    ///   connection's topic set);
    /// - `queues`: bytes of frames queued in every outbox (a frame shared by several queues
    ///   counts in each, so this is an upper bound);
    /// - `history`: the history store's [`bytes`](crate::HistoryStore::bytes);
    /// - `pending_events`: the pending critical events' frames and entries;
    /// - `dedupe`: remembered publish ids × (key, value, expiry, list links and hash slot, and
    ///   32 bytes of id).
    fn sizes(&self) -> Vec<SourceSize> {
        let node = &self.node;
        let size = |name, n: usize| SourceSize {
            name,
            bytes: count(n),
        };
        let per_connection = CONNECTION_BYTES + std::mem::size_of::<Session>();
        vec![
            size("connections", node.connections.len() * per_connection),
            size(
                "subscriptions",
                node.topics.subscription_count() * SUBSCRIPTION_BYTES,
            ),
            size("queues", node.connections.queued_bytes()),
            size("history", node.topics.history_store().bytes()),
            size("pending_events", node.events.bytes()),
            size("dedupe", node.publisher.dedupe_len() * DEDUPE_ENTRY_BYTES),
        ]
    }
}

/// The memory monitor's cleanup pass: the same function as the sweep's once-a-second
/// clean-ups (expired dedupe ids, history past its time-to-live or over its budget, topics
/// past their retention, full rate buckets, map compaction).
impl Cleanup for Gateway {
    fn cleanup(&self) -> CleanupReport {
        let node = &self.node;
        let done = node.maintain(node.now_ms());
        CleanupReport {
            entries: count(done.entries),
            bytes: count(done.bytes),
        }
    }
}

/// A `usize` count as `u64` (saturating).
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
