//! [`Counters`]: every total the gateway keeps, in one place, as atomics.
//!
//! Each count has exactly one home here; whatever reports it (`/api/stats`, `/metrics`) reads
//! it through [`Counters::fill`] into a [`herald_monitoring::Stats`], so two reports can never
//! disagree. Levels (connections, pending events, queue depth) are not kept here: they are read
//! from the structures that hold them when the snapshot is taken.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_monitoring::Stats;
use herald_utils::Priority;

/// One total since start.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub(crate) fn add(&self, n: usize) {
        if n > 0 {
            let n = u64::try_from(n).unwrap_or(u64::MAX);
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds one.
    pub(crate) fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The total so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every total of one gateway. See [`herald_monitoring::Stats`] for what each one means and
/// the metric it is exported as.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: Counter,
    pub(crate) deduplicated: Counter,
    /// Publication, push and event frames queued to connections (not replies, pings, replays).
    pub(crate) delivered: Counter,
    /// Frames shed from full outboxes, by the shed frame's priority (`Priority::index`).
    shed: [Counter; 4],
    pub(crate) slow_consumer_closes: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) resumes_recovered: Counter,
    pub(crate) resumes_unrecovered: Counter,
    pub(crate) events_sent: Counter,
    pub(crate) events_rejected: Counter,
    pub(crate) events_redelivered: Counter,
    pub(crate) events_expired: Counter,
    pub(crate) events_acknowledged: Counter,
    pub(crate) connections_opened: Counter,
    pub(crate) connections_closed: Counter,
    /// Connections asked to close 1013 by memory relief (`close_idlest`).
    pub(crate) degradation_closes: Counter,
    pub(crate) operations_rejected: Counter,
    pub(crate) history_dropped: Counter,
    pub(crate) broker_failures: Counter,
}

impl Counters {
    /// Counts one frame of `priority` shed from an outbox.
    pub(crate) fn shed(&self, priority: Priority) {
        self.shed[priority.index()].increment();
    }

    /// Copies every total into `stats`, leaving the levels it also holds untouched.
    pub(crate) fn fill(&self, stats: &mut Stats) {
        let messages = &mut stats.messages;
        messages.published = self.published.get();
        messages.deduplicated = self.deduplicated.get();
        messages.delivered = self.delivered.get();
        let shed = &mut messages.shed_by_priority;
        shed.low = self.shed[Priority::Low.index()].get();
        shed.normal = self.shed[Priority::Normal.index()].get();
        shed.high = self.shed[Priority::High.index()].get();
        shed.critical = self.shed[Priority::Critical.index()].get();
        messages.shed = shed.total();
        messages.slow_consumer_closes = self.slow_consumer_closes.get();
        messages.rate_limited = self.rate_limited.get();
        stats.resumes.recovered = self.resumes_recovered.get();
        stats.resumes.unrecovered = self.resumes_unrecovered.get();
        let events = &mut stats.events;
        events.sent = self.events_sent.get();
        events.rejected = self.events_rejected.get();
        events.redelivered = self.events_redelivered.get();
        events.expired = self.events_expired.get();
        events.acknowledged = self.events_acknowledged.get();
        stats.connection_totals.opened = self.connections_opened.get();
        stats.connection_totals.closed = self.connections_closed.get();
        stats.connection_totals.degradation_closes = self.degradation_closes.get();
        stats.operations.rejected = self.operations_rejected.get();
        stats.history.dropped = self.history_dropped.get();
        stats.broker.failures = self.broker_failures.get();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_frames_are_counted_by_priority_and_in_the_total() {
        let counters = Counters::default();
        counters.shed(Priority::Low);
        counters.shed(Priority::Low);
        counters.shed(Priority::High);
        let mut stats = Stats::default();
        counters.fill(&mut stats);
        assert_eq!(stats.messages.shed, 3);
        assert_eq!(
            (
                stats.messages.shed_by_priority.low,
                stats.messages.shed_by_priority.normal,
                stats.messages.shed_by_priority.high
            ),
            (2, 0, 1)
        );
    }

    #[test]
    fn fill_keeps_the_levels_of_the_snapshot() {
        let counters = Counters::default();
        counters.published.add(2);
        counters.events_sent.increment();
        let mut stats = Stats {
            connections: 7,
            ..Stats::default()
        };
        stats.events.pending = 4;
        counters.fill(&mut stats);
        assert_eq!(
            (
                stats.connections,
                stats.events.pending,
                stats.messages.published,
                stats.events.sent
            ),
            (7, 4, 2, 1)
        );
    }
}
