//! The sweep: heartbeats, the auth timeout, token expiry and stale connections, the
//! redelivery and expiry of critical events, and (once a second) the index-wide clean-ups.
//! One pass over every connection replaces a timer per connection.

use std::sync::atomic::Ordering;

use herald_protocol::{CloseCode, ServerMessage};
use herald_utils::Priority;

use crate::{node::Node, outbox::Frame, time::duration_ms};

/// How often the sweep also purges history, idle topics, dedupe ids and rate buckets.
const MAINTENANCE_INTERVAL_MS: u64 = 1_000;

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Server pings queued.
    pub pings: usize,
    /// Connections closed 4000 for silence.
    pub stale: usize,
    /// Connections closed 4001 for not authenticating in time.
    pub auth_timeouts: usize,
    /// Connections closed 4003 for an expired token.
    pub expired: usize,
    /// Topics dropped after their retention.
    pub topics_dropped: usize,
}

/// One pass of the sweep at the node's current time.
pub(crate) fn sweep(node: &Node) -> SweepReport {
    let now = node.now_ms();
    let heartbeat = duration_ms(node.settings.heartbeat_interval);
    let stale = duration_ms(node.settings.stale_timeout);
    let ping = Frame::from(
        ServerMessage::Ping {
            timestamp: Some(node.unix_ms()),
        }
        .encode(),
    );
    let mut report = SweepReport::default();
    node.connections.for_each(|connection| {
        let outbox = connection.outbox();
        if outbox.close_requested().is_some() {
            return;
        }
        let authenticated = connection.key().is_some();
        if now >= connection.deadline_ms() {
            let (code, counter) = if authenticated {
                (CloseCode::TokenExpired, &mut report.expired)
            } else {
                (CloseCode::Unauthenticated, &mut report.auth_timeouts)
            };
            if outbox.close(code) {
                *counter += 1;
            }
        } else if now.saturating_sub(connection.last_activity_ms()) >= stale {
            if outbox.close(CloseCode::Stale) {
                report.stale += 1;
            }
        } else if authenticated && now.saturating_sub(connection.last_ping_ms()) >= heartbeat {
            connection.set_last_ping_ms(now);
            if outbox
                .offer(ping.clone(), Priority::Critical, &node.counters)
                .is_queued()
            {
                report.pings += 1;
            }
        }
    });
    node.events.sweep(now, &node.connections, &node.counters);
    // The index-wide clean-ups walk every topic under its shard's lock: once a second is
    // plenty, and keeps them off the fan-out path the rest of the time.
    let last = node.last_maintenance_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= MAINTENANCE_INTERVAL_MS || last == 0 {
        report.topics_dropped = node.maintain(now).topics_dropped;
    }
    report
}
