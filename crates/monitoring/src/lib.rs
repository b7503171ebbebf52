//! Statistics, metrics and health for Herald: the one snapshot of counts that `/api/stats` and
//! `/metrics` both read, the [`StatsSource`] seam that fills it, the [`MetricsReporter`] that
//! renders `/metrics`, the [`HealthChecker`] behind `/health`, `/health/live` and
//! `/health/ready`, and the capacity [`Forecaster`] that projects connections and deliveries
//! 15 minutes ahead.
//!
//! Of the Herald crates it depends only on `herald-utils` (the forecaster's
//! [`CircularBuffer`](herald_utils::CircularBuffer)): `herald-core` implements [`StatsSource`] and
//! [`HealthCheck`] for its gateway, and the service wires them up. `/api/stats` is the
//! [`Stats`] snapshot as JSON; `/metrics` is the same snapshot through [`Stats::samples`].
//!
//! Architecture invariant: nothing here speaks HTTP. The answers are serde types with an
//! `is_ready` verdict, and the service maps them onto status codes.

mod check;
mod forecast;
mod health;
mod latency;
mod reporter;
mod stats;

pub use crate::{
    check::{CheckResult, CheckStatus, HealthCheck},
    forecast::{
        Crossing, FORECAST_HORIZON, Forecast, Forecast15, ForecastSettings, Forecaster, Trend,
    },
    health::{
        HealthChecker, HealthReport, LiveResponse, OverallStatus, ReadyResponse, ReadyStatus,
    },
    latency::{DELIVERY_LATENCY_METRIC, LatencyHistogram, RECENT_SAMPLES},
    reporter::{MetricsError, MetricsReporter},
    stats::{
        BrokerStats, ConnectionTotals, EventStats, HistoryStats, LatencyStats, MemoryStats,
        MessageStats, MetricKind, OperationStats, RedisStats, ResumeStats, Sample, ShedStats,
        Stats, StatsSource,
    },
};
