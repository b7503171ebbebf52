//! A fixed-capacity ring of the most recent samples, with statistics for numeric samples.

use std::collections::VecDeque;

/// Holds the last `capacity` values pushed, overwriting the oldest when full.
///
/// Used for sliding windows of samples: latencies (`CircularBuffer<f64>`, with
/// [`mean`](Self::mean), [`percentile`](Self::percentile) and friends) and timestamped readings
/// (`CircularBuffer<(f64, f64)>`, with [`slope`](Self::slope) for growth rates such as memory
/// bytes per second).
///
/// Memory grows with the samples actually held, never beyond `capacity`, so a large window costs
/// nothing until it fills.
///
/// ```
/// use herald_utils::CircularBuffer;
///
/// let mut window = CircularBuffer::new(3);
/// for latency in [4.0, 1.0, 3.0, 2.0] {
///     window.push(latency);
/// }
/// assert_eq!(window.iter().copied().collect::<Vec<_>>(), [1.0, 3.0, 2.0]);
/// assert_eq!(window.max(), Some(3.0));
/// assert_eq!(window.percentile(50.0), Some(2.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CircularBuffer<T> {
    /// The samples, oldest at the front.
    items: VecDeque<T>,
    /// The most samples kept; at least 1.
    capacity: usize,
}

impl<T> CircularBuffer<T> {
    /// An empty buffer keeping the last `capacity` values.
    ///
    /// A capacity of 0 is raised to 1, since a window of no samples cannot answer anything; check
    /// [`capacity`](Self::capacity) if the difference matters.
    /// Allocates nothing until the first push.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends `value` as the newest sample, returning the oldest one if it had to make room.
    pub fn push(&mut self, value: T) -> Option<T> {
        let overwritten = if self.items.len() == self.capacity {
            self.items.pop_front()
        } else {
            if self.items.len() == self.items.capacity() {
                // Grow geometrically but never past the window, so a nearly full buffer does not
                // reserve up to twice its capacity.
                let room = self.capacity - self.items.len();
                self.items.reserve_exact(self.items.len().max(4).min(room));
            }
            None
        };
        self.items.push_back(value);
        overwritten
    }

    /// The samples from oldest to newest.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator + '_ {
        self.items.iter()
    }

    /// Samples held, at most [`capacity`](Self::capacity).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most samples held; at least 1.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the next push overwrites the oldest sample.
    pub fn is_full(&self) -> bool {
        self.items.len() == self.capacity
    }

    /// Drops every sample, keeping the capacity and the allocation.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&T> {
        self.items.back()
    }

    /// The oldest sample still held.
    pub fn oldest(&self) -> Option<&T> {
        self.items.front()
    }
}

impl CircularBuffer<f64> {
    /// The arithmetic mean of the samples; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        if self.items.is_empty() {
            return None;
        }
        Some(self.items.iter().sum::<f64>() / self.items.len() as f64)
    }

    /// The smallest sample; `None` when empty. NaN samples are ignored unless all are NaN.
    pub fn min(&self) -> Option<f64> {
        self.items.iter().copied().reduce(f64::min)
    }

    /// The largest sample; `None` when empty. NaN samples are ignored unless all are NaN.
    pub fn max(&self) -> Option<f64> {
        self.items.iter().copied().reduce(f64::max)
    }

    /// The nearest-rank `p`th percentile: the smallest sample such that at least `p` percent of
    /// the samples are less than or equal to it.
    ///
    /// `p` is in `0.0..=100.0`; 0 gives the minimum and 100 the maximum.
    /// Returns `None` when the buffer is empty or `p` is outside that range (or NaN).
    /// Samples are ordered by [`f64::total_cmp`], so NaN samples rank above infinity.
    /// Costs O(len) time and one temporary copy of the samples.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.items.is_empty() || !(0.0..=100.0).contains(&p) {
            return None;
        }
        let n = self.items.len();
        // Nearest rank is ceil(p/100 * n), counted from 1; p = 0 takes the first rank. The float
        // lies in 0..=n, so the cast neither truncates nor saturates.
        let rank = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n);
        let mut sorted: Vec<f64> = self.items.iter().copied().collect();
        let (_, value, _) = sorted.select_nth_unstable_by(rank - 1, f64::total_cmp);
        Some(*value)
    }
}

impl CircularBuffer<(f64, f64)> {
    /// The least-squares slope `dy/dx` of `(x, y)` samples, e.g. bytes per second for
    /// `(seconds, bytes)` readings.
    ///
    /// Returns `None` with fewer than two samples or when every `x` is the same (the slope is
    /// undefined). Deviations are taken from the means, so large offsets such as Unix timestamps
    /// do not cost precision.
    pub fn slope(&self) -> Option<f64> {
        let n = self.items.len();
        if n < 2 {
            return None;
        }
        let n = n as f64;
        let mean_x = self.items.iter().map(|&(x, _)| x).sum::<f64>() / n;
        let mean_y = self.items.iter().map(|&(_, y)| y).sum::<f64>() / n;
        let (sxx, sxy) = self.items.iter().fold((0.0, 0.0), |(sxx, sxy), &(x, y)| {
            let dx = x - mean_x;
            (sxx + dx * dx, sxy + dx * (y - mean_y))
        });
        // A NaN variance (from a NaN `x`) is rejected too, rather than leaking out as the slope.
        if sxx <= 0.0 || sxx.is_nan() {
            return None;
        }
        Some(sxy / sxx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::circular_buffer::CircularBuffer;

    fn buffer_of(capacity: usize, samples: &[f64]) -> CircularBuffer<f64> {
        let mut buffer = CircularBuffer::new(capacity);
        for &s in samples {
            buffer.push(s);
        }
        buffer
    }

    #[track_caller]
    fn check_percentile(samples: &[f64], p: f64, expected: Option<f64>) {
        assert_eq!(
            buffer_of(samples.len().max(1), samples).percentile(p),
            expected
        );
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples = [15.0, 20.0, 35.0, 40.0, 50.0];
        check_percentile(&samples, 5.0, Some(15.0));
        check_percentile(&samples, 30.0, Some(20.0));
        check_percentile(&samples, 40.0, Some(20.0));
        check_percentile(&samples, 50.0, Some(35.0));
        check_percentile(&samples, 100.0, Some(50.0));
        check_percentile(&samples, 0.0, Some(15.0));
    }

    #[test]
    fn percentile_is_none_when_empty_or_out_of_range() {
        check_percentile(&[], 50.0, None);
        check_percentile(&[1.0], -0.1, None);
        check_percentile(&[1.0], 100.1, None);
        check_percentile(&[1.0], f64::NAN, None);
    }

    #[test]
    fn stats_are_none_when_empty() {
        let buffer = CircularBuffer::<f64>::new(4);
        assert_eq!(
            (buffer.mean(), buffer.min(), buffer.max()),
            (None, None, None)
        );
    }

    #[test]
    fn stats_cover_only_the_window() {
        let buffer = buffer_of(3, &[100.0, 1.0, 2.0, 6.0]);
        assert_eq!(buffer.mean(), Some(3.0));
        assert_eq!(buffer.min(), Some(1.0));
        assert_eq!(buffer.max(), Some(6.0));
    }

    #[test]
    fn push_overwrites_oldest_when_full() {
        let mut buffer = CircularBuffer::new(2);
        assert_eq!(buffer.push('a'), None);
        assert!(!buffer.is_full());
        assert_eq!(buffer.push('b'), None);
        assert!(buffer.is_full());
        assert_eq!(buffer.push('c'), Some('a'));
        assert_eq!((buffer.oldest(), buffer.latest()), (Some(&'b'), Some(&'c')));
        buffer.clear();
        assert!(buffer.is_empty());
        assert_eq!((buffer.oldest(), buffer.latest()), (None, None));
        assert_eq!(buffer.capacity(), 2);
    }

    #[test]
    fn zero_capacity_is_raised_to_one() {
        let mut buffer = CircularBuffer::new(0);
        assert_eq!(buffer.capacity(), 1);
        assert_eq!(buffer.push(1), None);
        assert_eq!(buffer.push(2), Some(1));
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn huge_capacity_reserves_nothing_up_front() {
        let mut buffer = CircularBuffer::new(usize::MAX);
        assert_eq!(buffer.items.capacity(), 0);
        buffer.push(1u8);
        assert!(buffer.items.capacity() < 64);
    }

    #[test]
    fn allocation_never_exceeds_a_small_window() {
        let mut buffer = CircularBuffer::new(5);
        for i in 0..20 {
            buffer.push(i);
            assert!(buffer.items.capacity() <= 8, "{}", buffer.items.capacity());
        }
    }

    #[track_caller]
    fn check_slope(points: &[(f64, f64)], expected: Option<f64>) {
        let mut buffer = CircularBuffer::new(points.len().max(1));
        for &p in points {
            buffer.push(p);
        }
        match (buffer.slope(), expected) {
            (Some(got), Some(want)) => assert!((got - want).abs() < 1e-9, "{got} != {want}"),
            (got, want) => assert_eq!(got, want),
        }
    }

    #[test]
    fn slope_of_a_line_is_its_gradient() {
        check_slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)], Some(2.0));
        check_slope(&[(10.0, 5.0), (20.0, 5.0)], Some(0.0));
        check_slope(&[(0.0, 0.0), (1.0, 1.0), (2.0, 0.0), (3.0, 1.0)], Some(0.2));
    }

    #[test]
    fn slope_keeps_precision_at_unix_timestamps() {
        let t0 = 1_800_000_000.0;
        check_slope(
            &[
                (t0, 1e9),
                (t0 + 1.0, 1e9 + 4096.0),
                (t0 + 2.0, 1e9 + 8192.0),
            ],
            Some(4096.0),
        );
    }

    #[test]
    fn slope_needs_two_distinct_x() {
        check_slope(&[], None);
        check_slope(&[(1.0, 1.0)], None);
        check_slope(&[(1.0, 1.0), (1.0, 9.0)], None);
        check_slope(&[(f64::NAN, 1.0), (1.0, 9.0)], None);
    }

    fn nearest_rank(samples: &[f64], p: f64) -> f64 {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        sorted[rank.max(1) - 1]
    }

    proptest! {
        #[test]
        fn holds_exactly_the_last_n_pushed(
            capacity in 1usize..16,
            values in prop::collection::vec(any::<i32>(), 0..60),
        ) {
            let mut buffer = CircularBuffer::new(capacity);
            for (i, &v) in values.iter().enumerate() {
                let overwritten = buffer.push(v);
                let expected = i.checked_sub(capacity).map(|old| values[old]);
                prop_assert_eq!(overwritten, expected);
                prop_assert!(buffer.len() <= capacity);
            }
            let tail = &values[values.len().saturating_sub(capacity)..];
            prop_assert_eq!(buffer.iter().copied().collect::<Vec<_>>(), tail);
            prop_assert_eq!(buffer.iter().rev().count(), tail.len());
            prop_assert_eq!(buffer.oldest(), tail.first());
            prop_assert_eq!(buffer.latest(), tail.last());
            prop_assert_eq!(buffer.is_full(), values.len() >= capacity);
        }

        #[test]
        fn stats_match_naive_model(
            capacity in 1usize..16,
            values in prop::collection::vec(-1e6f64..1e6, 1..40),
            p in 0.0f64..=100.0,
        ) {
            let buffer = buffer_of(capacity, &values);
            let window = &values[values.len().saturating_sub(capacity)..];
            let mean = window.iter().sum::<f64>() / window.len() as f64;
            prop_assert!((buffer.mean().unwrap() - mean).abs() < 1e-6);
            let min = window.iter().copied().fold(f64::INFINITY, f64::min);
            let max = window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert_eq!(buffer.min(), Some(min));
            prop_assert_eq!(buffer.max(), Some(max));
            prop_assert_eq!(buffer.percentile(p), Some(nearest_rank(window, p)));
        }

        #[test]
        fn slope_matches_textbook_formula(
            points in prop::collection::vec((-1000i32..1000, -1000i32..1000), 2..30),
        ) {
            let mut buffer = CircularBuffer::new(points.len());
            for &(x, y) in &points {
                buffer.push((f64::from(x), f64::from(y)));
            }
            // Integer inputs keep the naive sums exact, so the model has no rounding of its own.
            let n = points.len() as f64;
            let sx: f64 = points.iter().map(|&(x, _)| f64::from(x)).sum();
            let sy: f64 = points.iter().map(|&(_, y)| f64::from(y)).sum();
            let sxx: f64 = points.iter().map(|&(x, _)| f64::from(x) * f64::from(x)).sum();
            let sxy: f64 = points.iter().map(|&(x, y)| f64::from(x) * f64::from(y)).sum();
            let denominator = n * sxx - sx * sx;
            if denominator == 0.0 {
                prop_assert_eq!(buffer.slope(), None);
            } else {
                let want = (n * sxy - sx * sy) / denominator;
                let got = buffer.slope().unwrap();
                prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{} != {}", got, want);
            }
        }

        #[test]
        fn slope_recovers_an_exact_line(
            gradient in -1e4f64..1e4,
            intercept in -1e6f64..1e6,
            xs in prop::collection::btree_set(-10_000i32..10_000, 2..20),
        ) {
            let mut buffer = CircularBuffer::new(xs.len());
            for &x in &xs {
                let x = f64::from(x);
                buffer.push((x, gradient * x + intercept));
            }
            let got = buffer.slope().unwrap();
            prop_assert!((got - gradient).abs() <= 1e-6 * gradient.abs().max(1.0), "{} != {}", got, gradient);
        }
    }
}
