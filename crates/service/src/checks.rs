//! The service's own health checks: what the process knows that no other crate does.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_core::Broker as _;
use herald_memory::MemoryLevel;
use herald_monitoring::{CheckResult, CheckStatus, HealthCheck, RedisStats};
use herald_redis::RedisBroker;

use crate::pressure::Memory;

/// The memory degradation level: `ok` at level 0, `degraded` at level 1, `failing` at level 2
/// (a required check, so readiness is 503 then), with the readings behind it.
pub(crate) struct MemoryHealth {
    memory: Arc<Memory>,
}

impl MemoryHealth {
    /// A check reading `memory`'s level and last sample.
    pub(crate) fn new(memory: Arc<Memory>) -> Self {
        Self { memory }
    }
}

/// The check of a degradation `level` with the readings behind it.
fn check(level: MemoryLevel, used: u64, resident: u64, limit: Option<u64>) -> CheckResult {
    let status = match level {
        MemoryLevel::Normal => CheckStatus::Ok,
        MemoryLevel::High => CheckStatus::Degraded,
        MemoryLevel::Critical => CheckStatus::Failing,
    };
    let result = CheckResult::new(status)
        .with_message(format!("memory level {level}"))
        .with_value("level", u64::from(level.number()))
        .with_value("usedBytes", used)
        .with_value("residentBytes", resident);
    match limit {
        Some(limit) => result.with_value("limitBytes", limit),
        None => result,
    }
}

impl HealthCheck for MemoryHealth {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn check(&self) -> CheckResult {
        let reading = self.memory.status().reading;
        check(
            self.memory.degradation().level,
            reading.used_bytes,
            reading.resident_bytes,
            reading.limit_bytes,
        )
    }
}

/// The link to the cluster's Redis: `ok` while the circuit breaker is closed, Redis numbers
/// publications and the bus is subscribed; `degraded` while the breaker is open or half-open,
/// the node still numbers publications itself (its outbox not yet replayed) or the bus is
/// down. Informational: a node without Redis
/// still serves its own clients, so it stays ready.
pub(crate) struct RedisHealth {
    broker: RedisBroker,
}

impl RedisHealth {
    /// A check reading `broker`'s breaker and outbox.
    pub(crate) fn new(broker: RedisBroker) -> Self {
        Self { broker }
    }
}

/// The check of the Redis link's state.
fn redis_check(stats: &RedisStats) -> CheckResult {
    let degraded = stats.breaker_state != 0 || stats.local_fallback || !stats.bus_connected;
    let message = if !degraded {
        "redis circuit breaker closed".to_owned()
    } else if stats.local_fallback {
        format!(
            "redis circuit breaker {}: publications are numbered and delivered on this node only; {} operations wait for redis",
            stats.breaker, stats.outbox_depth
        )
    } else if stats.breaker_state != 0 {
        format!("redis circuit breaker {}", stats.breaker)
    } else {
        "the redis bus is reconnecting: other nodes' operations do not reach this node".to_owned()
    };
    CheckResult::new(if degraded {
        CheckStatus::Degraded
    } else {
        CheckStatus::Ok
    })
    .with_message(message)
    .with_value("breakerState", stats.breaker_state)
    .with_value("opened", stats.opened)
    .with_value("closed", stats.closed)
    .with_value("localFallback", u64::from(stats.local_fallback))
    .with_value("busConnected", u64::from(stats.bus_connected))
    .with_value("outboxDepth", stats.outbox_depth)
    .with_value("outboxCapacity", stats.outbox_capacity)
    .with_value("outboxRefused", stats.outbox_refused)
}

impl HealthCheck for RedisHealth {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> CheckResult {
        self.broker.redis_stats().map_or_else(
            || CheckResult::new(CheckStatus::Ok),
            |stats| redis_check(&stats),
        )
    }
}

/// How late the runtime runs a timer: the housekeeping task's tick, measured against the
/// time it was due. A late tick means the worker threads are saturated (or blocked), and
/// every connection waits as long.
#[derive(Debug, Default)]
pub(crate) struct EventLoopLag {
    /// The last lag, in microseconds.
    micros: AtomicU64,
}

impl EventLoopLag {
    /// Lag from this level on makes the check `degraded`.
    const DEGRADED: Duration = Duration::from_millis(100);
    /// Lag from this level on makes the check `failing`.
    const FAILING: Duration = Duration::from_secs(1);

    /// Records a tick that ran `lag` after it was due.
    pub(crate) fn record(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.micros.store(micros, Ordering::Relaxed);
        // Lags are far below 2^53 microseconds: exact as f64.
        metrics::gauge!("herald_event_loop_lag_seconds").set(micros as f64 / 1e6);
    }

    fn last(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

impl HealthCheck for EventLoopLag {
    fn name(&self) -> &'static str {
        "event_loop"
    }

    fn check(&self) -> CheckResult {
        let lag = self.last();
        let status = if lag >= Self::FAILING {
            CheckStatus::Failing
        } else if lag >= Self::DEGRADED {
            CheckStatus::Degraded
        } else {
            CheckStatus::Ok
        };
        CheckResult::new(status)
            .with_message(format!("timers run {} ms late", lag.as_millis()))
            .with_value(
                "lagMicros",
                u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_loop_check_follows_the_lag() {
        let lag = Arc::new(EventLoopLag::default());
        let status = |lag: &Arc<EventLoopLag>| {
            serde_json::to_value(lag.check()).expect("serializable")["status"].clone()
        };
        assert_eq!(status(&lag), "ok");
        lag.record(Duration::from_millis(150));
        assert_eq!(status(&lag), "degraded");
        lag.record(Duration::from_secs(2));
        assert_eq!(status(&lag), "failing");
        assert_eq!(lag.check().values.get("lagMicros"), Some(&2_000_000));
    }

    #[test]
    fn the_redis_check_is_degraded_while_the_breaker_is_not_closed_or_the_outbox_waits() {
        let closed = RedisStats {
            breaker: "closed",
            bus_connected: true,
            outbox_capacity: 10,
            ..RedisStats::default()
        };
        let json = |stats: &RedisStats| serde_json::to_value(redis_check(stats)).expect("json");
        assert_eq!(json(&closed)["status"], "ok");
        let open = RedisStats {
            breaker: "open",
            breaker_state: 1,
            opened: 1,
            local_fallback: true,
            outbox_depth: 3,
            ..closed
        };
        let report = json(&open);
        assert_eq!(report["status"], "degraded", "{report}");
        assert_eq!(report["breakerState"], 1, "{report}");
        assert_eq!(report["outboxDepth"], 3, "{report}");
        let replaying = RedisStats {
            breaker: "closed",
            breaker_state: 0,
            ..open
        };
        assert_eq!(json(&replaying)["status"], "degraded");
        let unsubscribed = RedisStats {
            bus_connected: false,
            ..closed
        };
        assert_eq!(json(&unsubscribed)["status"], "degraded");
    }

    #[test]
    fn the_memory_check_follows_the_level() {
        let json =
            |level| serde_json::to_string(&check(level, 90, 180, Some(100))).expect("serializable");
        assert!(json(MemoryLevel::Normal).starts_with(r#"{"status":"ok""#));
        assert!(json(MemoryLevel::High).starts_with(r#"{"status":"degraded""#));
        let critical = json(MemoryLevel::Critical);
        assert!(critical.starts_with(r#"{"status":"failing""#), "{critical}");
        assert!(critical.contains(r#""level":2"#), "{critical}");
        assert!(critical.contains(r#""limitBytes":100"#), "{critical}");
    }
}
