//! Reconnection backoff: an exponential curve with full jitter, and the small random source
//! the jitter draws from.

use std::{
    hash::{BuildHasher as _, RandomState},
    time::Duration,
};

/// How long the client waits before reconnection attempt `n` (1 for the first after a drop):
/// a uniformly random delay between zero and `min(max, initial * multiplier^(n-1))` ("full
/// jitter"), so that many clients dropped at once do not come back at once.
///
/// The attempt count starts again from 1 once a connection has lasted [`Backoff::reset_after`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use herald_client::Backoff;
///
/// let backoff = Backoff::default()
///     .initial(Duration::from_millis(250))
///     .max(Duration::from_secs(10))
///     .multiplier(3.0);
/// assert_eq!(backoff.bound(1), Duration::from_millis(250));
/// assert_eq!(backoff.bound(2), Duration::from_millis(750));
/// assert_eq!(backoff.bound(10), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first attempt's upper bound.
    initial: Duration,
    /// The largest delay.
    max: Duration,
    /// How much the bound grows per attempt.
    multiplier: f64,
    /// How long a connection must last for the attempt count to start again.
    reset_after: Duration,
}

impl Default for Backoff {
    /// 0.5 s doubling to 30 s, as docs/protocol.md suggests; reset after a connection of 5 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            reset_after: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Sets the first attempt's upper bound.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let backoff = herald_client::Backoff::default().initial(Duration::from_millis(100));
    /// assert_eq!(backoff.bound(1), Duration::from_millis(100));
    /// ```
    #[must_use]
    pub const fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets the largest delay.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let backoff = herald_client::Backoff::default().max(Duration::from_secs(2));
    /// assert_eq!(backoff.bound(30), Duration::from_secs(2));
    /// ```
    #[must_use]
    pub const fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets how much the bound grows per attempt; values below 1 count as 1.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let backoff = herald_client::Backoff::default().multiplier(1.0);
    /// assert_eq!(backoff.bound(5), backoff.bound(1));
    /// ```
    #[must_use]
    pub const fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets how long a connection must last before the next drop counts as attempt 1 again.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let backoff = herald_client::Backoff::default().reset_after(Duration::from_secs(30));
    /// assert_eq!(backoff.reset_period(), Duration::from_secs(30));
    /// ```
    #[must_use]
    pub const fn reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }

    /// How long a connection must last before the attempt count starts again.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(herald_client::Backoff::default().reset_period(), Duration::from_secs(5));
    /// ```
    pub const fn reset_period(&self) -> Duration {
        self.reset_after
    }

    /// The upper bound of the delay before attempt `attempt` (1 for the first; 0 counts as 1):
    /// `min(max, initial * multiplier^(attempt-1))`.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let backoff = herald_client::Backoff::default();
    /// assert_eq!(backoff.bound(1), Duration::from_millis(500));
    /// assert_eq!(backoff.bound(3), Duration::from_secs(2));
    /// assert_eq!(backoff.bound(100), Duration::from_secs(30));
    /// ```
    pub fn bound(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let bound = self.initial.as_secs_f64() * factor;
        if !bound.is_finite() || bound >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(bound)
        }
    }

    /// The delay before attempt `attempt`: `bound(attempt)` scaled by `unit`, a number in
    /// `[0, 1)` (clamped into it).
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.bound(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A small pseudo-random source for the jitter (xorshift64*); jitter needs spread, not secrecy.
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    /// The generator's state; never zero.
    state: u64,
}

impl Jitter {
    /// Seeded from the standard library's per-process random hasher keys.
    pub(crate) fn from_entropy() -> Self {
        Self::seeded(RandomState::new().hash_one(0x9e37_79b9_7f4a_7c15_u64))
    }

    /// Seeded from `seed`, for repeatable tests.
    pub(crate) const fn seeded(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x2545_f491_4f6c_dd1d
            } else {
                seed
            },
        }
    }

    /// The next number in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let value = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // The top 53 bits fill an f64's mantissa exactly, so the result is below 1.
        (value >> 11) as f64 / (1_u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_follows_the_exponential_curve_up_to_the_max() {
        let backoff = Backoff::default()
            .initial(Duration::from_millis(100))
            .max(Duration::from_millis(1_000))
            .multiplier(2.0);
        let bounds: Vec<u64> = (0..=7)
            .map(|n| backoff.bound(n).as_millis() as u64)
            .collect();
        assert_eq!(bounds, [100, 100, 200, 400, 800, 1_000, 1_000, 1_000]);
        assert_eq!(backoff.bound(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn delays_are_spread_over_the_whole_bound() {
        let backoff = Backoff::default()
            .initial(Duration::from_millis(1_000))
            .max(Duration::from_millis(1_000));
        let mut jitter = Jitter::seeded(7);
        let delays: Vec<Duration> = (0..1_000)
            .map(|_| backoff.delay(1, jitter.next_unit()))
            .collect();
        assert!(delays.iter().all(|d| *d < Duration::from_millis(1_000)));
        // Full jitter: the delays cover the low and the high end of the range.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(900)));
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        let mut jitter = Jitter::seeded(0);
        for _ in 0..10_000 {
            let unit = jitter.next_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
        let mut a = Jitter::from_entropy();
        let mut b = Jitter::from_entropy();
        // Two clients of one process draw different delays.
        assert_ne!(
            (0..4).map(|_| a.next_unit()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next_unit()).collect::<Vec<_>>()
        );
    }
}
