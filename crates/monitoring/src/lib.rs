//! Statistics, health checks and metrics reporting for Herald.
//!
//! This crate will hold the `StatisticsCollector`, the `HealthChecker` (per-component readiness),
//! the `MetricsReporter` and a capacity `Forecaster`. It knows `herald-utils` and `herald-config`
//! only; `herald-core` implements its `StatsSource` and `HealthCheck` traits.
//!
//! Nothing is implemented yet: the crate exists so that the workspace layout is the one users
//! were promised.
