//! Memory monitoring, leak detection and progressive degradation for Herald.
//!
//! This crate will hold the `MemoryProbe` seam (jemalloc, RSS and cgroup readings, and a fake for
//! tests), the `MemoryMonitor`, the `LeakDetector` built on growth slopes of
//! `herald_utils::CircularBuffer`, and `ProgressiveDegradation`, which steps runtime settings down
//! under pressure and back up with hysteresis. It knows `herald-utils` and `herald-config` only;
//! `herald-core` plugs into it through small traits.
//!
//! Nothing is implemented yet: the crate exists so that the workspace layout is the one users
//! were promised.
