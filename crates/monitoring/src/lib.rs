//! Statistics and health for Herald: the one snapshot of counts that `/api/stats` and
//! `/metrics` both read, and the [`StatsSource`] seam that fills it.
//!
//! It knows no other Herald crate; `herald-core` implements [`StatsSource`] for its gateway,
//! and the service renders the snapshot: as JSON for `/api/stats`, and through
//! [`Stats::samples`] for `/metrics`.

mod stats;

pub use crate::stats::{
    BrokerStats, ConnectionTotals, EventStats, HistoryStats, LatencyStats, MemoryStats,
    MessageStats, MetricKind, OperationStats, ResumeStats, Sample, ShedStats, Stats, StatsSource,
};
