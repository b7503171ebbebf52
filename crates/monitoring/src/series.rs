//! [`SERIES`]: what `/metrics` exports from a [`Stats`] snapshot, one line per series.

use crate::stats::Stats;

/// Every series exported from a [`Stats`] snapshot.
///
/// Mapping a new `Stats` field is one line: a `gauge` for a count now, a `counter` for a
/// count since start (named `..._total`), with the metric name its doc comment gives.
/// Latency is not here: the fan-out histogram (`herald_fanout_latency_seconds`) exports it.
#[rustfmt::skip] // A table: one series per line, so mapping a field is a one-line change.
pub(crate) const SERIES: &[Series] = &[
    gauge("herald_connections", "Live connections (authenticated or not).", |s| s.connections),
    gauge("herald_users", "Users with at least one authenticated connection.", |s| s.users),
    gauge("herald_subscriptions", "Connection-topic subscriptions.", |s| s.subscriptions),
    gauge("herald_topics", "Known topics.", |s| s.topics),
    gauge("herald_events_pending", "Critical events awaiting an acknowledgement.", |s| s.events.pending),
    gauge("herald_memory_resident_bytes", "Resident set size of the process.", |s| s.memory.rss_bytes),
    gauge("herald_memory_used_bytes", "Memory judged against the budget.", |s| s.memory.used_bytes),
    gauge_if_known("herald_memory_limit_bytes", "The memory budget.", |s| s.memory.limit_bytes),
    counter("herald_messages_published_total", "Publications accepted (not counting duplicates).", |s| s.messages.published),
    counter("herald_messages_deduplicated_total", "Publications answered as duplicates.", |s| s.messages.deduplicated),
    counter("herald_messages_delivered_total", "Frames queued to connections.", |s| s.messages.delivered),
    counter("herald_messages_shed_total", "Frames shed from full queues.", |s| s.messages.shed),
];

/// One exported series: a metric without labels, read from a [`Stats`] field.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series {
    /// The metric name.
    pub(crate) name: &'static str,
    /// The `# HELP` text.
    pub(crate) help: &'static str,
    /// Gauge or counter.
    pub(crate) kind: Kind,
    /// How to read the value; `None` leaves the series out (or at its last value).
    pub(crate) value: Value,
}

/// The Prometheus type of a [`Series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A count now.
    Gauge,
    /// A count since start, exported at its absolute value.
    Counter,
}

/// How a [`Series`] reads its value from a [`Stats`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    /// A value that is always known.
    Always(fn(&Stats) -> u64),
    /// A value that may be unknown; the series is not exported until it is known.
    IfKnown(fn(&Stats) -> Option<u64>),
}

impl Series {
    /// The value in `stats`, if known.
    pub(crate) fn read(&self, stats: &Stats) -> Option<u64> {
        match self.value {
            Value::Always(read) => Some(read(stats)),
            Value::IfKnown(read) => read(stats),
        }
    }
}

const fn gauge(name: &'static str, help: &'static str, read: fn(&Stats) -> u64) -> Series {
    Series {
        name,
        help,
        kind: Kind::Gauge,
        value: Value::Always(read),
    }
}

const fn gauge_if_known(
    name: &'static str,
    help: &'static str,
    read: fn(&Stats) -> Option<u64>,
) -> Series {
    Series {
        name,
        help,
        kind: Kind::Gauge,
        value: Value::IfKnown(read),
    }
}

const fn counter(name: &'static str, help: &'static str, read: fn(&Stats) -> u64) -> Series {
    Series {
        name,
        help,
        kind: Kind::Counter,
        value: Value::Always(read),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::series::{Kind, SERIES};

    #[test]
    fn every_series_is_named_by_the_house_rules() {
        let mut seen = HashSet::new();
        for series in SERIES {
            let name = series.name;
            assert!(seen.insert(name), "{name} exported twice");
            assert!(name.starts_with("herald_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(
                series.kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}"
            );
            assert!(!series.help.is_empty(), "{name} has no help");
        }
    }
}
