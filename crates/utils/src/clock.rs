//! The `Clock` seam: where "now" comes from, so time-based logic can be driven by tests.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Where "now" comes from.
///
/// Everything in Herald that ages (TTLs, heartbeats, stale sweeps, leak slopes) asks a `Clock`
/// instead of calling `Instant::now()`, so a test can move time exactly with a [`ManualClock`]
/// instead of sleeping.
/// Production code uses [`SystemClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current monotonic instant.
    ///
    /// Successive calls on the same clock never go backwards.
    fn now(&self) -> Instant;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// The operating system's monotonic clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The production clock is the one place allowed to read the ambient time.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when a test calls [`ManualClock::advance`].
///
/// Clones share the same time: advancing one advances all of them, so a test can keep a clone
/// while the code under test owns another.
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The instant the clock was created at; `now()` is this plus `elapsed_ns`.
    origin: Instant,
    /// Nanoseconds advanced so far, shared between clones.
    elapsed_ns: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock frozen at the current system instant until [`advance`](Self::advance) is called.
    pub fn new() -> Self {
        Self {
            origin: SystemClock.now(),
            elapsed_ns: Arc::default(),
        }
    }

    /// Moves this clock and all its clones forward by `by`.
    ///
    /// The total advance saturates at `u64::MAX` nanoseconds (about 584 years) instead of
    /// wrapping, so time never goes backwards.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // The closure always returns `Some`, so the update cannot fail and the result carries
        // nothing worth reading.
        let _ = self
            .elapsed_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ns| {
                Some(ns.saturating_add(by))
            });
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let elapsed = Duration::from_nanos(self.elapsed_ns.load(Ordering::Relaxed));
        // An `Instant` holds at least 64-bit seconds on every supported platform, so adding at
        // most 584 years does not overflow; the fallback only keeps this path panic-free.
        self.origin.checked_add(elapsed).unwrap_or(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use crate::clock::{Clock, ManualClock, SystemClock};

    #[test]
    fn manual_clock_stands_still_until_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - start, Duration::from_millis(1500));
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let start = clock.now();
        other.advance(Duration::from_secs(3));
        assert_eq!(clock.now() - start, Duration::from_secs(3));
    }

    #[test]
    fn manual_clock_saturates_instead_of_wrapping() {
        let clock = ManualClock::new();
        let start = clock.now();
        clock.advance(Duration::MAX);
        let far = clock.now();
        clock.advance(Duration::from_secs(1));
        assert!(clock.now() >= far);
        assert!(far > start);
    }

    #[test]
    fn arc_dyn_clock_delegates() {
        let manual = ManualClock::new();
        let shared: Arc<dyn Clock> = Arc::new(manual.clone());
        let start = shared.now();
        manual.advance(Duration::from_millis(7));
        assert_eq!(shared.now() - start, Duration::from_millis(7));
    }

    #[test]
    fn system_clock_never_goes_backwards() {
        let first = SystemClock.now();
        assert!(SystemClock.now() >= first);
    }
}
