//! Memory pressure, as the service runs it: once a second the monitor samples, progressive
//! degradation follows the level (acting on the gateway through its `Relief`), the leak
//! detector judges the window, and a cleanup pass runs on its interval (sooner under
//! pressure). [`Memory`] is also what the stats, metrics and health answers read.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use herald_config::BaseConfig;
use herald_core::Gateway;
use herald_memory::{
    Cleanup as _, DegradationSettings, LeakFinding, LeakSeverity, MemoryLevel, MemoryMonitor,
    MemoryStatus, ProgressiveDegradation, ReliefAction, SystemProbe, Thresholds,
};
use herald_utils::SystemClock;
use tokio::time::Instant;

/// The process's memory: the monitor, the degradation that acts on its level, and when the
/// last cleanup ran.
pub(crate) struct Memory {
    monitor: Arc<MemoryMonitor>,
    degradation: Mutex<ProgressiveDegradation>,
    last_cleanup: Mutex<Instant>,
    /// Ticks so far, for the leak check's own pace.
    ticks: AtomicU64,
}

/// The degradation level and since when, for `/api/stats`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Degradation {
    /// The level.
    pub(crate) level: MemoryLevel,
    /// When it was entered, in milliseconds since the Unix epoch.
    pub(crate) since_unix_ms: u64,
}

impl Memory {
    /// The degradation that relieves `gateway` at the levels of `monitor`, held at a level for
    /// at least `HERALD_MEMORY_LEVEL_HOLD_MS`.
    pub(crate) fn new(config: &BaseConfig, monitor: Arc<MemoryMonitor>, gateway: &Gateway) -> Self {
        let degradation = ProgressiveDegradation::new(
            Arc::new(gateway.clone()),
            Arc::clone(gateway.runtime()),
            Arc::new(SystemClock),
            monitor.thresholds(),
            DegradationSettings {
                min_dwell: config.memory_level_hold,
                ..DegradationSettings::default()
            },
        );
        Self {
            monitor,
            degradation: Mutex::new(degradation),
            last_cleanup: Mutex::new(Instant::now()),
            ticks: AtomicU64::new(0),
        }
    }

    /// The last sample.
    pub(crate) fn status(&self) -> MemoryStatus {
        self.monitor.latest()
    }

    /// The degradation level now.
    pub(crate) fn degradation(&self) -> Degradation {
        let degradation = self.lock_degradation();
        Degradation {
            level: degradation.level(),
            since_unix_ms: degradation.since_unix_ms(),
        }
    }

    /// The leak detector's last verdict.
    pub(crate) fn leak(&self) -> Option<LeakFinding> {
        self.monitor.latest_leak()
    }

    /// One second's work: sample, follow the level, clean up when due, and every
    /// [`LEAK_CHECK_TICKS`] judge leaks.
    pub(crate) fn tick(&self, gateway: &Gateway) {
        self.monitor.sample();
        let status = self.monitor.latest();
        let mut degradation = self.lock_degradation();
        let report = degradation.step(status);
        let interval = degradation.cleanup_interval(gateway.runtime().memory_cleanup_interval());
        drop(degradation);
        if !report.is_quiet() {
            let reading = status.reading;
            let actions = describe(&report.actions);
            let (level, name) = (report.level.number(), report.level.as_str());
            let (used, limit) = (reading.used_bytes, reading.limit_bytes);
            let pressure = status.pressure_percent();
            // A change of level is news; relief repeated at level 2 is the same story.
            if report.transition.is_some() {
                tracing::warn!(level, name, used_bytes = used, limit_bytes = limit,
                    pressure_percent = pressure, %actions, "memory degradation level changed");
            } else {
                tracing::info!(level, name, used_bytes = used, limit_bytes = limit,
                    pressure_percent = pressure, %actions, "memory relief");
            }
        }
        if self
            .ticks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(LEAK_CHECK_TICKS)
        {
            self.check_leaks(gateway);
        }
        let mut last_cleanup = self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if report.cleanup_now || last_cleanup.elapsed() >= interval {
            let cleaned = gateway.cleanup();
            self.monitor.after_cleanup(cleaned);
            *last_cleanup = Instant::now();
            tracing::debug!(
                entries = cleaned.entries,
                bytes = cleaned.bytes,
                "memory cleanup"
            );
        }
        drop(last_cleanup);
        metrics::gauge!("herald_degradation_level").set(f64::from(report.level.number()));
    }

    /// Shows the leak detector every component's size (a walk of every connection's queue)
    /// and logs a verdict of `medium` or worse once per change.
    fn check_leaks(&self, gateway: &Gateway) {
        let before = self.monitor.latest_leak().map(|leak| leak.severity);
        let leak = self.monitor.check_leaks(gateway);
        if leak.severity >= LeakSeverity::Medium && before != Some(leak.severity) {
            tracing::warn!(
                severity = leak.severity.as_str(),
                growth_bytes_per_minute = leak.growth_bytes_per_minute,
                retained_bytes = leak.retained_bytes,
                source = leak.source.as_ref().map(|s| s.name),
                recommendation = %leak.recommendation,
                "memory keeps growing"
            );
        }
        metrics::gauge!("herald_leak_severity").set(severity_number(leak.severity));
    }

    fn lock_degradation(&self) -> MutexGuard<'_, ProgressiveDegradation> {
        // Each step leaves the state consistent, so poison is ignored.
        self.degradation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The memory monitor over the system's probe: jemalloc's live allocations judged against
/// `HERALD_MEMORY_LIMIT_BYTES`, else the cgroup's limit, else physical memory, the resident
/// set beside them. A source this machine lacks is left out, and said so.
pub(crate) fn monitor(config: &BaseConfig) -> anyhow::Result<Arc<MemoryMonitor>> {
    let (probe, missing) = SystemProbe::detect(Path::new("/"), config.memory_limit_bytes);
    for error in missing {
        tracing::info!(%error, "memory source not used");
    }
    match probe.budget() {
        Some(budget) => tracing::info!(
            bytes = budget.bytes,
            source = ?budget.source,
            "memory budget"
        ),
        None => tracing::warn!("no memory budget known: memory levels stay normal"),
    }
    let thresholds = Thresholds::new(config.memory_high_percent, config.memory_critical_percent)
        .context("HERALD_MEMORY_HIGH_PERCENT / HERALD_MEMORY_CRITICAL_PERCENT")?;
    Ok(Arc::new(MemoryMonitor::new(Arc::new(probe), thresholds)))
}

/// The severity as the `herald_leak_severity` gauge: 0 none to 4 critical.
pub(crate) fn severity_number(severity: LeakSeverity) -> f64 {
    match severity {
        LeakSeverity::None => 0.0,
        LeakSeverity::Low => 1.0,
        LeakSeverity::Medium => 2.0,
        LeakSeverity::High => 3.0,
        LeakSeverity::Critical => 4.0,
    }
}

/// A step's actions in a log field: `trimmed 0.5 (1048576 B), refusing, shed 12, closed 3/50`.
fn describe(actions: &[ReliefAction]) -> String {
    let parts: Vec<String> = actions
        .iter()
        .map(|action| match action {
            ReliefAction::Trimmed {
                fraction,
                freed_bytes,
            } => format!("trimmed {fraction} ({freed_bytes} B)"),
            ReliefAction::BatchDelayRaised { from_ms, to_ms } => {
                format!("batch delay {from_ms} -> {to_ms} ms")
            }
            ReliefAction::BatchDelayRestored { to_ms } => format!("batch delay back to {to_ms} ms"),
            ReliefAction::BatchDelayLeft { current_ms } => {
                format!("batch delay left at the operator's {current_ms} ms")
            }
            ReliefAction::ConfigRefused(error) => format!("runtime change refused: {error}"),
            ReliefAction::RefuseConnections(true) => "refusing new connections".to_owned(),
            ReliefAction::RefuseConnections(false) => "accepting connections again".to_owned(),
            ReliefAction::ShedOptional { frames } => format!("shed {frames} frames"),
            ReliefAction::CapsLifted => "cache caps lifted".to_owned(),
            ReliefAction::ClosedIdlest { asked, closed } => {
                format!("closed {closed} of {asked} idlest")
            }
        })
        .collect();
    parts.join(", ")
}

/// Ticks between two leak checks: the verdict is about minutes of samples, and showing the
/// detector each component's size walks every connection's queue.
const LEAK_CHECK_TICKS: u64 = 10;

/// How long [`Memory::tick`] waits between two runs.
pub(crate) const TICK: Duration = Duration::from_secs(1);
