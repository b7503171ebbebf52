//! What every handler shares: the [`App`] (configuration, gateway, metrics, memory, health,
//! tasks) and the [`Role`] of the listener a request came in on.

use std::sync::Arc;

use herald_config::BaseConfig;
use herald_core::Gateway;
use herald_monitoring::{HealthChecker, MetricsReporter};
use tokio_util::task::TaskTracker;

use crate::{capacity::Capacity, checks::EventLoopLag, pressure::Memory};

/// Everything a request handler needs.
pub(crate) struct App {
    /// The configuration the process started with.
    pub(crate) config: BaseConfig,
    /// This node's name: `HERALD_NODE_ID`, else made from the host name and process id.
    pub(crate) node_id: String,
    /// Connections, subscriptions and fan-out.
    pub(crate) gateway: Gateway,
    /// Renders `/metrics`.
    pub(crate) metrics: MetricsReporter,
    /// The process's memory and the degradation acting on it, ticked by the housekeeping.
    pub(crate) memory: Arc<Memory>,
    /// How late timers run, measured by the housekeeping's tick.
    pub(crate) lag: Arc<EventLoopLag>,
    /// The capacity forecast, fed by the housekeeping.
    pub(crate) capacity: Capacity,
    /// The checks behind `/health*`.
    pub(crate) health: HealthChecker,
    /// The WebSocket sessions and the fan-out worker, so shutdown can drain them.
    pub(crate) sessions: TaskTracker,
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
