//! What every handler shares: the [`App`] (configuration, gateway, metrics, tasks) and the
//! [`Role`] of the listener a request came in on.

use herald_config::BaseConfig;
use herald_core::Gateway;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;

/// Everything a request handler needs.
pub(crate) struct App {
    /// The configuration the process started with.
    pub(crate) config: BaseConfig,
    /// Connections, subscriptions and fan-out.
    pub(crate) gateway: Gateway,
    /// Renders `/metrics`.
    pub(crate) metrics: PrometheusHandle,
    /// The WebSocket sessions and the fan-out worker, so shutdown can drain them.
    pub(crate) sessions: TaskTracker,
}

impl App {
    /// Resident memory of this process in bytes (0 where unknown): the one place the service
    /// reads memory, so that a `herald_memory::MemoryProbe` held here can replace the reading.
    pub(crate) fn resident_memory_bytes(&self) -> u64 {
        statm_resident_bytes()
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Everything: WebSocket, API, metrics and health (no admin listener configured).
    All,
    /// WebSocket and API only: metrics and health live on the admin listener.
    Public,
    /// Metrics and health only.
    Admin,
}

/// Resident memory of this process in bytes, from `/proc/self/statm` (0 where unavailable).
fn statm_resident_bytes() -> u64 {
    const PAGE_SIZE: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE_SIZE)
}
