//! The capacity forecast, as the service runs it: every few seconds the forecaster is fed the
//! connections and the deliveries so far; `/api/stats` shows where they are headed in 15
//! minutes, and a warning is logged when the connections are headed past `max_connections`.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use herald_core::Gateway;
use herald_monitoring::{Forecast15, ForecastSettings, Forecaster};
use tokio::time::Instant;

/// How often the forecaster is fed (its default window holds 15 minutes of these).
pub(crate) const TICK: Duration = Duration::from_secs(5);

/// Connections and deliveries per second, 15 minutes ahead.
pub(crate) struct Capacity {
    forecaster: Mutex<Forecaster>,
    /// Whether the last forecast crossed `max_connections` (a warning is logged on the way in).
    crossing: Mutex<bool>,
    max_connections: u64,
}

impl Capacity {
    /// A forecaster of the default window, warning about `max_connections`.
    pub(crate) fn new(max_connections: usize) -> Self {
        Self {
            forecaster: Mutex::new(Forecaster::new(ForecastSettings::default())),
            crossing: Mutex::new(false),
            max_connections: u64::try_from(max_connections).unwrap_or(u64::MAX),
        }
    }

    /// Feeds the gateway's counts now, and warns once when the forecast starts to cross
    /// `max_connections`.
    pub(crate) fn tick(&self, gateway: &Gateway) {
        let stats = gateway.stats();
        let mut forecaster = lock(&self.forecaster);
        forecaster.observe(
            Instant::now().into_std(),
            stats.connections,
            stats.messages.delivered,
        );
        let crossing = forecaster.crossing(self.max_connections);
        drop(forecaster);
        let mut was_crossing = lock(&self.crossing);
        if let Some(crossing) = &crossing
            && !*was_crossing
        {
            tracing::warn!(
                max_connections = crossing.max_connections,
                connections_in_15_min = crossing.connections_in_15_min,
                after_s = crossing.after.as_secs(),
                confidence = crossing.confidence,
                "connections are forecast to reach HERALD_MAX_CONNECTIONS"
            );
        }
        *was_crossing = crossing.is_some();
    }

    /// The 15-minute forecast, once the window holds enough samples.
    pub(crate) fn forecast(&self) -> Option<Forecast15> {
        lock(&self.forecaster).forecast_15_min()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves the value consistent, so poison is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
