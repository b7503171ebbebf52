//! The `Clock` seam: where "now" comes from, monotonic and wall-clock, so time-based logic can
//! be driven by tests.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Where "now" comes from.
///
/// Everything in Herald that ages (TTLs, heartbeats, stale sweeps, leak slopes) asks a `Clock`
/// for [`now`](Self::now) instead of calling `Instant::now()`, and everything that needs the
/// calendar time (token expiry, timestamps on the wire) asks it for [`unix_ms`](Self::unix_ms)
/// instead of calling `SystemTime::now()`, so a test can move both exactly with a
/// [`ManualClock`] instead of sleeping.
/// Production code uses [`SystemClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current monotonic instant.
    ///
    /// Successive calls on the same clock never go backwards.
    fn now(&self) -> Instant;

    /// The current wall-clock time, in milliseconds since the Unix epoch.
    ///
    /// Unlike [`now`](Self::now) this may jump (the system clock can be set); use it only where
    /// the calendar matters, never to measure durations.
    fn unix_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn unix_ms(&self) -> u64 {
        (**self).unix_ms()
    }
}

/// The operating system's clocks: monotonic `Instant` and wall-clock `SystemTime`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The production clock is the one place allowed to read the ambient time.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Instant {
        Instant::now()
    }

    // The production clock is the one place allowed to read the ambient wall-clock time.
    #[allow(clippy::disallowed_methods)]
    fn unix_ms(&self) -> u64 {
        // A system clock set before 1970 reads as the epoch itself rather than failing.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// A clock that moves only when a test calls [`ManualClock::advance`].
///
/// Monotonic and wall-clock time move together: `advance(d)` adds `d` to both.
/// Clones share the same time: advancing one advances all of them, so a test can keep a clone
/// while the code under test owns another.
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The instant the clock was created at; `now()` is this plus `elapsed_ns`.
    origin: Instant,
    /// The wall-clock time at creation, in ms since the Unix epoch; `unix_ms()` is this plus
    /// `elapsed_ns` in whole milliseconds.
    origin_unix_ms: u64,
    /// Nanoseconds advanced so far, shared between clones.
    elapsed_ns: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock frozen at the current system instant and wall-clock time until
    /// [`advance`](Self::advance) is called.
    pub fn new() -> Self {
        Self::at_unix_ms(SystemClock.unix_ms())
    }

    /// A clock frozen at the current system instant and at wall-clock time `unix_ms`
    /// (milliseconds since the Unix epoch), for tests whose dates must not depend on when
    /// they run.
    pub fn at_unix_ms(unix_ms: u64) -> Self {
        Self {
            origin: SystemClock.now(),
            origin_unix_ms: unix_ms,
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

    fn unix_ms(&self) -> u64 {
        let elapsed_ms = self.elapsed_ns.load(Ordering::Relaxed) / 1_000_000;
        self.origin_unix_ms.saturating_add(elapsed_ms)
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
        let start_unix_ms = clock.unix_ms();
        clock.advance(Duration::MAX);
        let far = clock.now();
        let far_unix_ms = clock.unix_ms();
        clock.advance(Duration::from_secs(1));
        assert!(clock.now() >= far);
        assert!(far > start);
        assert!(clock.unix_ms() >= far_unix_ms);
        assert!(far_unix_ms > start_unix_ms);
    }

    #[test]
    fn manual_wall_time_starts_where_asked_and_moves_with_advance() {
        let clock = ManualClock::at_unix_ms(978_307_200_000);
        assert_eq!(clock.unix_ms(), 978_307_200_000);
        clock.clone().advance(Duration::from_micros(2_500_900));
        // Whole milliseconds only: 2.5009 s is 2500 ms.
        assert_eq!(clock.unix_ms(), 978_307_202_500);
    }

    #[test]
    fn arc_dyn_clock_delegates() {
        let manual = ManualClock::at_unix_ms(1_000);
        let shared: Arc<dyn Clock> = Arc::new(manual.clone());
        let start = shared.now();
        manual.advance(Duration::from_millis(7));
        assert_eq!(shared.now() - start, Duration::from_millis(7));
        assert_eq!(shared.unix_ms(), 1_007);
    }

    #[test]
    fn system_clock_never_goes_backwards() {
        let first = SystemClock.now();
        assert!(SystemClock.now() >= first);
    }

    #[test]
    fn system_wall_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z: a reading before it means the epoch arithmetic is wrong.
        assert!(SystemClock.unix_ms() > 1_577_836_800_000);
    }
}
