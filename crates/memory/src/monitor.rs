//! [`MemoryMonitor`]: samples a probe when told to, keeps a window of timed samples, the
//! latest reading and level, and the floors after each cleanup, and asks the [`LeakDetector`]
//! about them.

use std::sync::{Arc, Mutex, PoisonError};

use herald_utils::{CircularBuffer, Clock, SystemClock};

use crate::{
    leak::{LeakDetector, LeakFinding, LeakSettings},
    level::{LevelTracker, MemoryLevel, Thresholds, Transition},
    probe::{MemoryProbe, MemoryReading},
    relief::{CleanupReport, MemorySources},
    sample::Sample,
};

/// The memory of the process as last sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    /// The last reading.
    pub reading: MemoryReading,
    /// The level after it.
    pub level: MemoryLevel,
}

impl MemoryStatus {
    /// Used bytes as a percent of the budget with one decimal (`memory.pressurePercent` of
    /// `/api/stats`); `None` when no budget is known. See [`MemoryReading::pressure_percent`].
    pub fn pressure_percent(&self) -> Option<f64> {
        self.reading.pressure_percent()
    }

    /// Used bytes in basis points of the budget; see [`MemoryReading::pressure_bp`].
    pub fn pressure_bp(&self) -> Option<u64> {
        self.reading.pressure_bp()
    }
}

/// How much a [`MemoryMonitor`] remembers, and what its detector calls a leak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorSettings {
    /// Samples kept in the window the leak slope is computed over (default 600: ten minutes
    /// at the service's one sample a second).
    pub window_capacity: usize,
    /// Post-cleanup floors kept (default 16).
    pub floor_capacity: usize,
    /// What the detector calls a leak.
    pub leak: LeakSettings,
}

impl MonitorSettings {
    /// [`window_capacity`](Self::window_capacity) by default.
    pub const WINDOW_CAPACITY: usize = 600;
    /// [`floor_capacity`](Self::floor_capacity) by default.
    pub const FLOOR_CAPACITY: usize = 16;
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            window_capacity: Self::WINDOW_CAPACITY,
            floor_capacity: Self::FLOOR_CAPACITY,
            leak: LeakSettings::default(),
        }
    }
}

/// Owns the probe, the [`LevelTracker`], the window of samples and the [`LeakDetector`]: one
/// periodic task (the service's housekeeping) drives it, and everything else (stats, metrics,
/// health, the gateway through the [`MemoryProbe`] impl) reads [`latest`](Self::latest), so
/// the probe is read on one schedule (jemalloc statistics are refreshed per read, not per
/// request).
///
/// The owner's schedule, each second:
///
/// 1. [`sample`](Self::sample): read the probe, move the level, push the sample;
/// 2. [`check_leaks`](Self::check_leaks) with the gateway's sizes (every sample, or less
///    often);
/// 3. after each cleanup pass (every cleanup interval, or sooner under pressure),
///    [`after_cleanup`](Self::after_cleanup) with its report, which samples again and keeps
///    that sample as the floor.
///
/// The level is judged on `used_bytes` against `limit_bytes` of each reading; a reading with
/// no limit leaves the level as it was. Time comes only from the [`Clock`].
pub struct MemoryMonitor {
    probe: Arc<dyn MemoryProbe>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

struct State {
    tracker: LevelTracker,
    latest: MemoryStatus,
    /// The last samples, oldest first.
    window: CircularBuffer<Sample>,
    /// The samples taken right after each cleanup, oldest first.
    floors: CircularBuffer<Sample>,
    /// What the last cleanup reported.
    last_cleanup: Option<CleanupReport>,
    detector: LeakDetector,
    /// The last verdict of [`MemoryMonitor::check_leaks`].
    leak: Option<LeakFinding>,
}

impl MemoryMonitor {
    /// A monitor of `probe` against `thresholds` on the system clock with the default
    /// [`MonitorSettings`], which takes its first sample now.
    pub fn new(probe: Arc<dyn MemoryProbe>, thresholds: Thresholds) -> Self {
        Self::with_clock(
            probe,
            thresholds,
            Arc::new(SystemClock),
            MonitorSettings::default(),
        )
    }

    /// A monitor of `probe` against `thresholds` that times its samples on `clock`, which
    /// takes its first sample now.
    pub fn with_clock(
        probe: Arc<dyn MemoryProbe>,
        thresholds: Thresholds,
        clock: Arc<dyn Clock>,
        settings: MonitorSettings,
    ) -> Self {
        let monitor = Self {
            probe,
            clock,
            state: Mutex::new(State {
                tracker: LevelTracker::new(thresholds),
                latest: MemoryStatus::default(),
                window: CircularBuffer::new(settings.window_capacity),
                floors: CircularBuffer::new(settings.floor_capacity),
                last_cleanup: None,
                detector: LeakDetector::new(settings.leak),
                leak: None,
            }),
        };
        monitor.sample();
        monitor
    }

    /// Reads the probe, moves the level, keeps the sample in the window, and answers the
    /// change of level, if any. The one entry point of the owner's schedule.
    pub fn sample(&self) -> Option<Transition> {
        self.take_sample().1
    }

    /// Records a cleanup pass that just finished: samples again (as [`sample`](Self::sample)
    /// does) and keeps that sample as the pass's floor, the used bytes cleanup fell back to.
    /// Floors that keep rising are memory retained across cleanups.
    pub fn after_cleanup(&self, report: CleanupReport) -> Option<Transition> {
        let (sample, transition) = self.take_sample();
        let mut state = self.lock();
        state.floors.push(sample);
        state.last_cleanup = Some(report);
        transition
    }

    /// Shows the detector every component's size now and judges the window; the verdict is
    /// also kept for [`latest_leak`](Self::latest_leak).
    pub fn check_leaks(&self, sources: &dyn MemorySources) -> LeakFinding {
        let sizes = sources.sizes();
        let mut state = self.lock();
        let state = &mut *state;
        state.detector.observe_sources(&sizes);
        let finding = state.detector.assess(&state.window, &state.floors);
        state.leak = Some(finding.clone());
        finding
    }

    /// The last sample.
    pub fn latest(&self) -> MemoryStatus {
        self.lock().latest
    }

    /// The last verdict of [`check_leaks`](Self::check_leaks); `None` before the first.
    pub fn latest_leak(&self) -> Option<LeakFinding> {
        self.lock().leak.clone()
    }

    /// What the last cleanup pass reported; `None` before the first.
    pub fn last_cleanup(&self) -> Option<CleanupReport> {
        self.lock().last_cleanup
    }

    /// The samples in the window, oldest first.
    pub fn window(&self) -> Vec<Sample> {
        self.lock().window.iter().copied().collect()
    }

    /// The thresholds the level is judged against (for
    /// [`ProgressiveDegradation`](crate::ProgressiveDegradation)).
    pub fn thresholds(&self) -> Thresholds {
        self.lock().tracker.thresholds()
    }

    /// Reads the probe and the clock, moves the level and pushes the sample.
    fn take_sample(&self) -> (Sample, Option<Transition>) {
        let reading = self.probe.read();
        let sample = Sample {
            at: self.clock.now(),
            unix_ms: self.clock.unix_ms(),
            reading,
        };
        let mut state = self.lock();
        let transition = reading
            .limit_bytes
            .and_then(|limit| state.tracker.observe(reading.used_bytes, limit));
        state.latest = MemoryStatus {
            reading,
            level: state.tracker.level(),
        };
        state.window.push(sample);
        (sample, transition)
    }

    /// The state; a panic while it was held left it consistent (each field is written whole).
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A monitor is itself a probe that answers the last sample without reading anything, so the
/// gateway's stats show the monitor's reading and never cost a read of `/proc` or jemalloc.
impl MemoryProbe for MemoryMonitor {
    fn read(&self) -> MemoryReading {
        self.latest().reading
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use herald_utils::ManualClock;

    use crate::{
        level::{MemoryLevel, Thresholds, Transition},
        monitor::{MemoryMonitor, MemoryStatus, MonitorSettings},
        probe::{FakeProbe, MemoryReading},
        relief::CleanupReport,
    };

    fn reading(used_bytes: u64, limit_bytes: Option<u64>) -> MemoryReading {
        MemoryReading {
            used_bytes,
            resident_bytes: used_bytes * 2,
            allocated_bytes: Some(used_bytes),
            limit_bytes,
        }
    }

    fn monitor(probe: &FakeProbe) -> MemoryMonitor {
        MemoryMonitor::new(
            Arc::new(probe.clone()),
            Thresholds::new(85, 95).expect("valid"),
        )
    }

    #[test]
    fn the_first_sample_is_taken_at_construction() {
        let probe = FakeProbe::new(reading(90, Some(100)));
        let latest = monitor(&probe).latest();
        assert_eq!(
            latest,
            MemoryStatus {
                reading: reading(90, Some(100)),
                level: MemoryLevel::High,
            }
        );
    }

    #[test]
    fn a_sample_answers_the_change_of_level() {
        let probe = FakeProbe::new(reading(10, Some(100)));
        let monitor = monitor(&probe);
        assert_eq!(monitor.sample(), None);
        probe.set(reading(96, Some(100)));
        assert_eq!(
            monitor.sample(),
            Some(Transition {
                from: MemoryLevel::Normal,
                to: MemoryLevel::Critical,
            })
        );
        assert_eq!(monitor.latest().level, MemoryLevel::Critical);
        assert_eq!(monitor.sample(), None);
    }

    #[test]
    fn a_reading_without_a_limit_keeps_the_level_and_is_still_kept() {
        let probe = FakeProbe::new(reading(96, Some(100)));
        let monitor = monitor(&probe);
        probe.set(reading(1, None));
        assert_eq!(monitor.sample(), None);
        assert_eq!(
            monitor.latest(),
            MemoryStatus {
                reading: reading(1, None),
                level: MemoryLevel::Critical,
            }
        );
    }

    fn clocked(probe: &FakeProbe, clock: &ManualClock, window_capacity: usize) -> MemoryMonitor {
        MemoryMonitor::with_clock(
            Arc::new(probe.clone()),
            Thresholds::new(85, 95).expect("valid"),
            Arc::new(clock.clone()),
            MonitorSettings {
                window_capacity,
                ..MonitorSettings::default()
            },
        )
    }

    #[test]
    fn the_window_keeps_the_last_samples_timed_on_the_clock() {
        let probe = FakeProbe::new(reading(0, Some(100)));
        let clock = ManualClock::at_unix_ms(5_000);
        let monitor = clocked(&probe, &clock, 3);
        for used in 1..=4 {
            clock.advance(Duration::from_secs(1));
            probe.set(reading(used, Some(100)));
            monitor.sample();
        }
        let window = monitor.window();
        let kept: Vec<(u64, u64)> = window
            .iter()
            .map(|s| (s.unix_ms, s.reading.used_bytes))
            .collect();
        assert_eq!(kept, [(7_000, 2), (8_000, 3), (9_000, 4)]);
        assert_eq!(window[2].at - window[0].at, Duration::from_secs(2));
    }

    #[test]
    fn after_cleanup_samples_again_and_keeps_the_report() {
        let probe = FakeProbe::new(reading(90, Some(100)));
        let clock = ManualClock::new();
        let monitor = clocked(&probe, &clock, 10);
        assert_eq!(monitor.last_cleanup(), None);
        probe.set(reading(50, Some(100)));
        let report = CleanupReport {
            entries: 3,
            bytes: 40,
        };
        assert_eq!(
            monitor.after_cleanup(report),
            Some(Transition {
                from: MemoryLevel::High,
                to: MemoryLevel::Normal,
            })
        );
        assert_eq!(monitor.last_cleanup(), Some(report));
        assert_eq!(monitor.latest().reading.used_bytes, 50);
        assert_eq!(monitor.window().len(), 2);
    }

    #[test]
    fn the_status_tells_the_pressure() {
        let probe = FakeProbe::new(reading(873, Some(1_000)));
        let status = monitor(&probe).latest();
        assert_eq!(status.pressure_percent(), Some(87.3));
        assert_eq!(status.pressure_bp(), Some(8_730));
        probe.set(reading(873, None));
        assert_eq!(monitor(&probe).latest().pressure_percent(), None);
    }
}
