//! The seams through which memory pressure acts on the process without this crate knowing it:
//! [`Relief`] (what can be given up), [`MemorySources`] (who holds what) and [`Cleanup`] (the
//! periodic pass that drops what has expired). `herald-core` implements them for its gateway;
//! the service wires them to the monitor.

/// Bytes one component of the process holds, by its own estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSize {
    /// The component: `connections`, `queues`, `history`, `pending_events`, `dedupe`, ...
    pub name: &'static str,
    /// Bytes it holds (an estimate, from its own counts).
    pub bytes: u64,
}

/// Components that report their own size, so a leak finding can name its likely source.
pub trait MemorySources: Send + Sync {
    /// Every component's size now.
    fn sizes(&self) -> Vec<SourceSize>;
}

/// What one cleanup pass dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Entries dropped (expired dedupe ids, history past its time-to-live, idle topics).
    pub entries: u64,
    /// Bytes those entries held, by estimate.
    pub bytes: u64,
}

/// The cleanup pass the memory monitor triggers every `HERALD_MEMORY_CLEANUP_INTERVAL_MS`,
/// and sooner under pressure.
pub trait Cleanup: Send + Sync {
    /// Drops what has expired and compacts what can be; never drops live data.
    fn cleanup(&self) -> CleanupReport;
}

/// What the process gives up under memory pressure, step by step. Critical events are never
/// among it.
pub trait Relief: Send + Sync {
    /// Level 1 and up: trims history and caches to what the pressure allows (`fraction` of
    /// their bounds, from 0.0 to 1.0); returns the estimated bytes freed. A cap it sets (a
    /// cache's size) lasts until the next call: `trim(1.0)`, on recovery, lifts it.
    fn trim(&self, fraction: f64) -> u64;
    /// Level 2: while `true`, new WebSocket handshakes are refused (HTTP 503, `Retry-After`).
    fn refuse_connections(&self, refuse: bool);
    /// Level 2: sheds `low` and `normal` frames from every outbound queue; returns how many.
    /// Never sheds critical frames (critical events, replies to the client): those are not
    /// this crate's to give up.
    fn shed_optional(&self) -> u64;
    /// Level 2: closes at most `count` of the idlest connections with 1013 (try again later);
    /// returns how many were asked to close.
    fn close_idlest(&self, count: usize) -> usize;
}
