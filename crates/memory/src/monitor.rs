//! [`MemoryMonitor`]: samples a probe when told to, and keeps the latest reading and level.

use std::sync::{Arc, Mutex, PoisonError};

use crate::{
    level::{LevelTracker, MemoryLevel, Thresholds, Transition},
    probe::{MemoryProbe, MemoryReading},
};

/// The memory of the process as last sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    /// The last reading.
    pub reading: MemoryReading,
    /// The level after it.
    pub level: MemoryLevel,
}

/// Owns the probe and the [`LevelTracker`]: one periodic task calls [`sample`](Self::sample),
/// and everything else (stats, metrics, health) reads [`latest`](Self::latest), so the probe
/// is read on one schedule (jemalloc statistics are refreshed per read, not per request).
///
/// The level is judged on `used_bytes` against `limit_bytes` of each reading; a reading with
/// no limit leaves the level as it was.
pub struct MemoryMonitor {
    probe: Arc<dyn MemoryProbe>,
    state: Mutex<State>,
}

struct State {
    tracker: LevelTracker,
    latest: MemoryStatus,
}

impl MemoryMonitor {
    /// A monitor of `probe` against `thresholds`, which takes its first sample now.
    pub fn new(probe: Arc<dyn MemoryProbe>, thresholds: Thresholds) -> Self {
        let monitor = Self {
            probe,
            state: Mutex::new(State {
                tracker: LevelTracker::new(thresholds),
                latest: MemoryStatus::default(),
            }),
        };
        monitor.sample();
        monitor
    }

    /// Reads the probe, moves the level, and answers the change of level, if any.
    pub fn sample(&self) -> Option<Transition> {
        let reading = self.probe.read();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let transition = reading
            .limit_bytes
            .and_then(|limit| state.tracker.observe(reading.used_bytes, limit));
        state.latest = MemoryStatus {
            reading,
            level: state.tracker.level(),
        };
        transition
    }

    /// The last sample.
    pub fn latest(&self) -> MemoryStatus {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latest
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

    use crate::{
        level::{MemoryLevel, Thresholds, Transition},
        monitor::{MemoryMonitor, MemoryStatus},
        probe::{FakeProbe, MemoryReading},
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
}
