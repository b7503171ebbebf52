//! The service's own health checks: what the process knows that no other crate does.

use std::sync::Arc;

use herald_memory::{MemoryLevel, MemoryMonitor};
use herald_monitoring::{CheckResult, CheckStatus, HealthCheck};

/// The memory level as last sampled: `ok` while normal, `degraded` when high, `failing` when
/// critical, with the readings behind it.
pub(crate) struct MemoryHealth {
    monitor: Arc<MemoryMonitor>,
}

impl MemoryHealth {
    /// A check reading `monitor`'s last sample.
    pub(crate) fn new(monitor: Arc<MemoryMonitor>) -> Self {
        Self { monitor }
    }
}

impl HealthCheck for MemoryHealth {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn check(&self) -> CheckResult {
        let status = self.monitor.latest();
        let check = match status.level {
            MemoryLevel::Normal => CheckStatus::Ok,
            MemoryLevel::High => CheckStatus::Degraded,
            MemoryLevel::Critical => CheckStatus::Failing,
        };
        let reading = status.reading;
        let result = CheckResult::new(check)
            .with_message(format!("memory level {}", status.level))
            .with_value("usedBytes", reading.used_bytes)
            .with_value("residentBytes", reading.resident_bytes);
        match reading.limit_bytes {
            Some(limit) => result.with_value("limitBytes", limit),
            None => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_memory::{FakeProbe, MemoryReading, Thresholds};

    use super::*;

    fn health_at(used_bytes: u64) -> CheckResult {
        let probe = FakeProbe::new(MemoryReading {
            used_bytes,
            resident_bytes: used_bytes * 2,
            allocated_bytes: Some(used_bytes),
            limit_bytes: Some(100),
        });
        let thresholds = Thresholds::new(85, 95).expect("85 < 95");
        MemoryHealth::new(Arc::new(MemoryMonitor::new(Arc::new(probe), thresholds))).check()
    }

    #[test]
    fn the_memory_check_follows_the_level() {
        let json = |used| serde_json::to_string(&health_at(used)).expect("serializable");
        assert!(json(10).starts_with(r#"{"status":"ok""#), "{}", json(10));
        assert!(
            json(90).starts_with(r#"{"status":"degraded""#),
            "{}",
            json(90)
        );
        assert!(
            json(97).starts_with(r#"{"status":"failing""#),
            "{}",
            json(97)
        );
        assert!(json(97).contains(r#""limitBytes":100"#), "{}", json(97));
    }
}
