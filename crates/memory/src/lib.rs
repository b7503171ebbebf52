//! Memory readings for Herald: the [`MemoryProbe`] seam, the probes behind it, the [`Budget`]
//! memory is judged against, and the [`MemoryLevel`] that follows from both.
//!
//! A probe tells how much memory the process holds; the gateway and the service read memory
//! only through it, so tests drive memory pressure with [`FakeProbe`]. The production probe is
//! [`SystemProbe`]: the process's resident set ([`ProcessProbe`]), the cgroup v2 limit
//! ([`CgroupProbe`]), physical memory, and with the `jemalloc` feature the allocator's live
//! bytes (`JemallocProbe`). [`MemoryMonitor`] samples a probe on the caller's schedule and
//! keeps the latest reading and level ([`LevelTracker`], with hysteresis).
//!
//! Architecture invariant: this crate reads no environment variables and spawns nothing; the
//! probes read files under a root they are given, so tests point them at fixtures. It knows
//! no other Herald crate; `herald-core` and the service take a probe as one of their seams.

mod budget;
mod cgroup;
mod degradation;
mod error;
mod files;
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
