//! Memory readings for Herald: the [`MemoryProbe`] seam, the probes behind it, the [`Budget`]
//! memory is judged against, the [`MemoryLevel`] that follows from both, leak detection, and
//! progressive degradation under pressure.
//!
//! A probe tells how much memory the process holds; the gateway and the service read memory
//! only through it, so tests drive memory pressure with [`FakeProbe`]. The production probe is
//! [`SystemProbe`]: the process's resident set ([`ProcessProbe`]), the cgroup v2 limit
//! ([`CgroupProbe`]), physical memory, and with the `jemalloc` feature the allocator's live
//! bytes (`JemallocProbe`). [`MemoryMonitor`] samples a probe on the caller's schedule, keeps
//! the latest reading and level ([`LevelTracker`], with hysteresis), a window of timed
//! [`Sample`]s and the floors after each cleanup, which its [`LeakDetector`] judges.
//! [`ProgressiveDegradation`] follows the level and acts through the [`Relief`] seam and the
//! live `RuntimeConfig`.
//!
//! The service's housekeeping, once a second: [`MemoryMonitor::sample`], then
//! [`ProgressiveDegradation::step`] with [`MemoryMonitor::latest`], then
//! [`MemoryMonitor::check_leaks`]; when a cleanup is due (its interval from
//! [`ProgressiveDegradation::cleanup_interval`], or [`StepReport::cleanup_now`]),
//! [`Cleanup::cleanup`] and [`MemoryMonitor::after_cleanup`] with its report.
//!
//! Architecture invariant: this crate reads no environment variables, spawns nothing and
//! reads the time only through `herald_utils::Clock`; the probes read files under a root they
//! are given, so tests point them at fixtures. Of Herald's crates it knows only the leaves
//! `herald-utils` (clock, window) and `herald-config` (the runtime config degradation tunes);
//! `herald-core` implements [`Relief`], [`MemorySources`] and [`Cleanup`] and takes a probe as
//! one of its seams.

mod budget;
mod cgroup;
mod degradation;
mod error;
mod files;
#[cfg(test)]
mod fixtures;
#[cfg(feature = "jemalloc")]
mod jemalloc;
mod leak;
mod level;
mod monitor;
mod probe;
mod process;
mod relief;
mod sample;
mod system;

#[cfg(feature = "jemalloc")]
pub use crate::jemalloc::{JemallocProbe, JemallocStats};
pub use crate::{
    budget::{Budget, BudgetSource},
    cgroup::{CgroupMemory, CgroupProbe},
    degradation::{DegradationSettings, ProgressiveDegradation, ReliefAction, StepReport},
    error::ProbeError,
    leak::{LeakDetector, LeakFinding, LeakSettings, LeakSeverity, SeverityScale, SourceGrowth},
    level::{LevelTracker, MemoryLevel, ThresholdError, Thresholds, Transition},
    monitor::{MemoryMonitor, MemoryStatus, MonitorSettings},
    probe::{FakeProbe, MemoryProbe, MemoryReading},
    process::ProcessProbe,
    relief::{Cleanup, CleanupReport, MemorySources, Relief, SourceSize},
    sample::Sample,
    system::SystemProbe,
};
