//! [`Stats`]: every count Herald reports, taken at one instant from one source of truth.

use serde::Serialize;

/// A snapshot of every count, as `GET /api/stats` returns it (camelCase JSON) and `/metrics`
/// exports it. Counts marked "since start" only grow.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Live connections (authenticated or not).
    pub connections: u64,
    /// Users with at least one authenticated connection.
    pub users: u64,
    /// Connection-topic subscriptions.
    pub subscriptions: u64,
    /// Known topics.
    pub topics: u64,
    /// Publications and deliveries.
    pub messages: MessageStats,
    /// Critical events.
    pub events: EventStats,
    /// Fan-out latency.
    pub latency: LatencyStats,
    /// The process's memory.
    pub memory: MemoryStats,
}

/// Publications and deliveries, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStats {
    /// Publications accepted (not counting duplicates).
    pub published: u64,
    /// Publications answered as duplicates of one in the dedupe window.
    pub deduplicated: u64,
    /// Frames queued to connections for publications, pushes and events.
    pub delivered: u64,
    /// Frames shed from full queues, whatever they carried.
    pub shed: u64,
}

/// Critical events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStats {
    /// Events awaiting an acknowledgement now, all users.
    pub pending: u64,
}

/// Recent fan-out latency: publish accepted to queued for every subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencyStats {
    /// Median, in microseconds (0 before the first publication).
    #[serde(rename = "p50Us")]
    pub p50_us: u64,
    /// 99th percentile, in microseconds (0 before the first publication).
    #[serde(rename = "p99Us")]
    pub p99_us: u64,
}

/// The process's memory, from the memory probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Bytes judged against the budget.
    pub used_bytes: u64,
    /// The budget, where known.
    pub limit_bytes: Option<u64>,
}

/// Where a [`Stats`] snapshot comes from; the gateway is one.
pub trait StatsSource: Send + Sync {
    /// Every count, now.
    fn stats(&self) -> Stats;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialize_in_the_api_shape() {
        let json = serde_json_shape(&Stats::default());
        for key in [
            "\"connections\"",
            "\"messages\":{\"published\"",
            "\"p50Us\"",
            "\"rssBytes\"",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
    }

    fn serde_json_shape(stats: &Stats) -> String {
        serde_json::to_string(stats).unwrap_or_default()
    }
}
