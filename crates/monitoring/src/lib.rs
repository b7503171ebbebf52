//! Statistics and health for Herald: the one snapshot of counts that `/api/stats` and
//! `/metrics` both read, and the [`StatsSource`] seam that fills it.
//!
//! It knows `herald-utils` and `herald-config` only; `herald-core` implements
//! [`StatsSource`] for its gateway, and the service renders the snapshot.

mod stats;

pub use crate::stats::{EventStats, LatencyStats, MemoryStats, MessageStats, Stats, StatsSource};
