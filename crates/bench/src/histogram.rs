//! A lock-free latency histogram shared by every subscriber task of a run.
//!
//! Buckets are log-linear (HdrHistogram style): values below 64 have a bucket each, and every
//! power of two above is split into 32 equal buckets, so a reported percentile is within about
//! 3% of the true value. Recording is one relaxed atomic increment, cheap enough for every
//! delivery on the generator's single core.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this have a bucket each.
const EXACT: u64 = 64;
/// Buckets per power of two above `EXACT`.
const SUB_BUCKETS: u64 = 32;
/// `log2(EXACT)`: the first power of two split into sub-buckets.
const FIRST_POWER: u32 = 6;
/// Total buckets: the exact ones plus 32 for each power of two from 2^6 to 2^63.
const BUCKETS: usize = (EXACT + (64 - FIRST_POWER as u64) * SUB_BUCKETS) as usize;

/// Counts of recorded values (microseconds in this crate) by bucket, plus the exact maximum.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

/// The percentiles a report shows, in the histogram's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// 99.9th percentile.
    pub(crate) p999: u64,
    /// Largest value recorded (exact).
    pub(crate) max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub(crate) fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// How many values were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0.0 to 1.0): the upper edge of the bucket holding the
    /// `ceil(q * count)`-th smallest value, never above the exact maximum. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        // The rank is at least 1 and at most `count`; float rounding cannot leave that range
        // because of the clamp.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let max = self.max.load(Ordering::Relaxed);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return upper_edge(index).min(max);
            }
        }
        max
    }

    /// p50, p99, p99.9 and the maximum.
    pub(crate) fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile(0.50),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// The bucket a value falls in.
fn bucket_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let power = 63 - value.leading_zeros(); // At least FIRST_POWER since value >= 64.
    let shift = power - (FIRST_POWER - 1);
    let mantissa = value >> shift; // In SUB_BUCKETS..2*SUB_BUCKETS.
    (EXACT + u64::from(power - FIRST_POWER) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
}

/// The largest value that falls in bucket `index`.
fn upper_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let power = (index - EXACT) / SUB_BUCKETS + u64::from(FIRST_POWER);
    let mantissa = (index - EXACT) % SUB_BUCKETS + SUB_BUCKETS;
    let shift = power - u64::from(FIRST_POWER - 1);
    // The top bucket's edge is u64::MAX: compute in u128 and saturate.
    let edge = (u128::from(mantissa + 1) << shift) - 1;
    u64::try_from(edge).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) so the model checks need no extra crate.
    fn values(seed: u64, n: usize, bound: u64) -> Vec<u64> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % bound
            })
            .collect()
    }

    #[test]
    fn small_values_are_exact() {
        let histogram = Histogram::new();
        for v in 1..=10 {
            histogram.record(v);
        }
        assert_eq!(histogram.quantile(0.5), 5);
        assert_eq!(histogram.percentiles().max, 10);
        assert_eq!(histogram.quantile(1.0), 10);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        assert_eq!(Histogram::new().percentiles(), Percentiles::default());
    }

    #[test]
    fn every_value_lands_in_a_bucket_whose_range_holds_it() {
        let mut samples = values(7, 10_000, u64::MAX);
        samples.extend([0, 63, 64, 65, 127, 128, u64::MAX, u64::MAX - 1, 1 << 40]);
        for value in samples {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS, "{value} -> {bucket}");
            assert!(upper_edge(bucket) >= value, "{value} above its bucket");
            if bucket > 0 {
                assert!(upper_edge(bucket - 1) < value, "{value} below its bucket");
            }
        }
    }

    #[test]
    fn quantiles_match_a_sorted_model_within_the_bucket_precision() {
        for (seed, bound) in [(1, 100), (2, 10_000), (3, 5_000_000), (4, 70)] {
            let samples = values(seed, 5_000, bound);
            let histogram = Histogram::new();
            for &v in &samples {
                histogram.record(v);
            }
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                let exact = sorted[rank - 1];
                let reported = histogram.quantile(q);
                assert!(reported >= exact, "q={q}: {reported} < {exact}");
                let tolerance = (exact / 32).max(1);
                assert!(
                    reported - exact <= tolerance,
                    "q={q}: {reported} too far above {exact}"
                );
            }
            assert_eq!(histogram.count(), samples.len() as u64);
        }
    }
}
