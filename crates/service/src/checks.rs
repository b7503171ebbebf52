//! The service's own health checks: what the process knows that no other crate does.

use std::sync::Arc;

use herald_memory::MemoryLevel;
use herald_monitoring::{CheckResult, CheckStatus, HealthCheck};

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

#[cfg(test)]
mod tests {
    use super::*;

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
