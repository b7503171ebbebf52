//! [`LatencyHistogram`]: delivery latency (publication accepted to frame written), recorded
//! lock-free from every connection's writer into its thread's shard, as a log-linear histogram
//! since start and the most recent samples.

use std::{
    fmt::Write as _,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_utils::CircularBuffer;

use crate::stats::LatencyStats;

/// Sub-buckets per power of two: each bucket is at most 1/8 (12.5 %) of its lower bound wide.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The largest power of two tracked: 2^36 us is about 19 hours; longer latencies count in the
/// last bucket.
const MAX_EXPONENT: u32 = 36;
/// Buckets: one per microsecond below `SUB`, then `SUB` per power of two up to `MAX_EXPONENT`.
const BUCKETS: usize = (SUB + (MAX_EXPONENT + 1 - SUB_BITS) as u64 * SUB) as usize;

/// Recent samples kept for the percentiles of the stats, per recording thread (a window grows
/// only as its thread records).
pub const RECENT_SAMPLES: usize = 4096;

/// Shards of the histogram. Each recording thread takes one (the runtime's worker threads are
/// long-lived), so writers on different cores update different cache lines: with one shared
/// set of counters, two threads recording at once took 214 to 234 ns per record against 37 ns
/// alone (docs/benchmarks.md, "Scaling with cores"), and every delivery's write records. More
/// threads than shards share them.
const SHARDS: usize = 16;

/// The shard the next thread that records takes.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// This thread's shard, taken on its first record.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// The `le` bounds of the Prometheus rendering, in microseconds: powers of two from 8 us to
/// about 67 s. Each is a bucket boundary of the histogram, so the rendering is exact.
const PROMETHEUS_BOUNDS_EXPONENTS: std::ops::RangeInclusive<u32> = 3..=26;

/// The Prometheus name of the histogram.
pub const DELIVERY_LATENCY_METRIC: &str = "herald_delivery_latency_seconds";

/// Delivery latency: from a publication's acceptance by the gateway to the socket write that
/// carried its frame to a subscriber.
///
/// Recording is a few relaxed atomic additions and a push into the recent samples, all in the
/// recording thread's own shard (cache-line aligned), so every connection's writer records
/// without waiting on the others or sharing a cache line with writers on other cores; reading
/// sums the shards. Two views come out:
///
/// - [`stats`](Self::stats): p50, p90, p99 and p99.9 of the most recent samples (at most
///   [`RECENT_SAMPLES`] per recording thread), for `/api/stats` and the dashboard: what
///   latency is *now*;
/// - [`write_prometheus`](Self::write_prometheus): the cumulative histogram since start, for
///   Prometheus to take rates and quantiles over any window.
///
/// Buckets are log-linear (8 per power of two, exact below 8 us), so a percentile read from
/// them is within 12.5 % of the true value; the recent percentiles are exact over their
/// samples.
///
/// ```
/// use std::time::Duration;
/// use herald_monitoring::LatencyHistogram;
///
/// let latency = LatencyHistogram::new();
/// for us in 1..=100 {
///     latency.record(Duration::from_micros(us));
/// }
/// assert_eq!(latency.count(), 100);
/// assert_eq!(latency.stats().p50_us, 50);
/// ```
pub struct LatencyHistogram {
    shards: Box<[Shard]>,
}

/// One thread's part of the histogram, aligned so that no two shards share a cache line
/// (128 bytes: adjacent-line prefetching pairs 64-byte lines).
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_us: AtomicU64,
    recent_us: Mutex<CircularBuffer<f64>>,
}

impl Shard {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            recent_us: Mutex::new(CircularBuffer::new(RECENT_SAMPLES)),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, CircularBuffer<f64>> {
        // A push leaves the window consistent, so poison is ignored.
        self.recent_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
        }
    }

    /// Records one latency, in the calling thread's shard.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let shard = &self.shards[SHARD.with(|shard| *shard)];
        shard.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
        shard.sum_us.fetch_add(us, Ordering::Relaxed);
        // A writer that finds the window held (by a reader, or by a thread sharing the shard)
        // skips its sample rather than wait: the recent window is a sample of latencies, and
        // no writer ever blocks on it.
        if let Ok(mut recent) = shard.recent_us.try_lock() {
            // Microsecond counts are far below 2^53, so the conversion is exact.
            recent.push(us as f64);
        }
    }

    /// Latencies recorded since start.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.count.load(Ordering::Relaxed))
            .sum()
    }

    /// Percentiles (nearest rank) of the most recent samples of every recording thread; zeros
    /// before the first.
    pub fn stats(&self) -> LatencyStats {
        let mut recent = CircularBuffer::new(RECENT_SAMPLES * SHARDS);
        for shard in &self.shards {
            for &us in shard.recent().iter() {
                recent.push(us);
            }
        }
        // Latencies are non-negative whole microseconds, so `as` is exact.
        let at = |p: f64| recent.percentile(p).map_or(0, |v| v.round() as u64);
        LatencyStats {
            p50_us: at(50.0),
            p90_us: at(90.0),
            p99_us: at(99.0),
            p999_us: at(99.9),
            samples: recent.len() as u64,
        }
    }

    /// The `p`th percentile (0 to 100) of every latency since start, in microseconds, from the
    /// buckets: the upper bound of the bucket it falls in (within 12.5 %); `None` before the
    /// first.
    pub fn percentile_since_start(&self, p: f64) -> Option<u64> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the percentile among `total` values, at least the first.
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * total as f64)
            .ceil()
            .max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(index) - 1);
            }
        }
        Some(upper_bound(BUCKETS - 1) - 1)
    }

    /// Every bucket's count over the shards, now.
    fn counts(&self) -> Vec<u64> {
        let mut counts = vec![0; BUCKETS];
        for shard in &self.shards {
            for (count, bucket) in counts.iter_mut().zip(&shard.buckets) {
                *count += bucket.load(Ordering::Relaxed);
            }
        }
        counts
    }

    /// Appends the cumulative histogram as Prometheus text (`# TYPE`, `_bucket` lines with
    /// power-of-two bounds from 8 us to about 67 s, `_sum` and `_count`, in seconds).
    pub fn write_prometheus(&self, out: &mut String) {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        // `fmt::Write` for `String` never fails.
        let _ = writeln!(out, "# TYPE {DELIVERY_LATENCY_METRIC} histogram");
        let mut cumulative = 0;
        let mut next = 0;
        for exponent in PROMETHEUS_BOUNDS_EXPONENTS {
            let bound_us = 1u64 << exponent;
            while next < BUCKETS && upper_bound(next) <= bound_us {
                cumulative += counts[next];
                next += 1;
            }
            let bound_s = bound_us as f64 / 1e6;
            let _ = writeln!(
                out,
                "{DELIVERY_LATENCY_METRIC}_bucket{{le=\"{bound_s}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{DELIVERY_LATENCY_METRIC}_bucket{{le=\"+Inf\"}} {total}"
        );
        let sum_us: u64 = self
            .shards
            .iter()
            .map(|shard| shard.sum_us.load(Ordering::Relaxed))
            .sum();
        let sum_s = sum_us as f64 / 1e6;
        let _ = writeln!(out, "{DELIVERY_LATENCY_METRIC}_sum {sum_s}");
        let _ = writeln!(out, "{DELIVERY_LATENCY_METRIC}_count {total}");
    }
}

/// The bucket of `us` microseconds.
fn bucket_of(us: u64) -> usize {
    if us < SUB {
        // Below SUB (8) the value is its own bucket.
        return us as usize;
    }
    let exponent = (63 - us.leading_zeros()).min(MAX_EXPONENT);
    if exponent == MAX_EXPONENT && us >> MAX_EXPONENT > 1 {
        return BUCKETS - 1;
    }
    // The SUB_BITS bits below the leading one pick the sub-bucket.
    let sub = (us >> (exponent - SUB_BITS)) - SUB;
    (SUB + u64::from(exponent - SUB_BITS) * SUB + sub) as usize
}

/// The exclusive upper bound of bucket `index`, in microseconds.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index + 1;
    }
    let exponent = (index - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (index - SUB) % SUB;
    (SUB + sub + 1) << (exponent - u64::from(SUB_BITS))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The exclusive lower bound's counterpart: the smallest value of bucket `index`.
    fn lower_bound(index: usize) -> u64 {
        if index == 0 {
            0
        } else {
            upper_bound(index - 1)
        }
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        for index in 1..BUCKETS {
            assert_eq!(bucket_of(lower_bound(index)), index, "bucket {index}");
            assert_eq!(bucket_of(upper_bound(index) - 1), index, "bucket {index}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn every_prometheus_bound_is_a_bucket_boundary() {
        for exponent in PROMETHEUS_BOUNDS_EXPONENTS {
            let bound = 1u64 << exponent;
            assert!(
                (0..BUCKETS).any(|index| upper_bound(index) == bound),
                "2^{exponent} us"
            );
        }
    }

    proptest! {
        #[test]
        fn a_value_lands_in_a_bucket_at_most_an_eighth_wide(us in 0u64..(1 << 36)) {
            let index = bucket_of(us);
            prop_assert!(lower_bound(index) <= us && us < upper_bound(index));
            let width = upper_bound(index) - lower_bound(index);
            prop_assert!(width == 1 || width * 8 <= lower_bound(index));
        }

        #[test]
        fn percentiles_since_start_are_within_an_eighth(
            mut values in prop::collection::vec(1u64..10_000_000, 1..400),
            p in 1.0f64..100.0,
        ) {
            let latency = LatencyHistogram::new();
            for us in &values {
                latency.record(Duration::from_micros(*us));
            }
            values.sort_unstable();
            let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
            let exact = values[rank - 1];
            let estimate = latency.percentile_since_start(p).unwrap_or(0);
            prop_assert!(estimate >= exact, "{estimate} < {exact}");
            prop_assert!(estimate <= exact + exact / 8 + 1, "{estimate} vs {exact}");
        }
    }

    #[test]
    fn recent_percentiles_are_exact_over_the_recent_samples() {
        let latency = LatencyHistogram::new();
        assert_eq!(latency.stats(), LatencyStats::default());
        for us in 1..=1000 {
            latency.record(Duration::from_micros(us));
        }
        let stats = latency.stats();
        assert_eq!(stats.samples, 1000);
        assert_eq!(stats.p50_us, 500);
        assert_eq!(stats.p90_us, 900);
        assert_eq!(stats.p99_us, 990);
        // Nearest rank of 99.9 % of 1,000 is 999, or 1,000 after floating-point rounding.
        assert!((999..=1000).contains(&stats.p999_us), "{stats:?}");
    }

    #[test]
    fn the_recent_window_forgets_the_oldest_samples() {
        let latency = LatencyHistogram::new();
        for _ in 0..RECENT_SAMPLES {
            latency.record(Duration::from_secs(1));
        }
        for _ in 0..RECENT_SAMPLES {
            latency.record(Duration::from_micros(10));
        }
        assert_eq!(latency.stats().p999_us, 10);
        assert_eq!(latency.count(), 2 * RECENT_SAMPLES as u64);
        // Since start, half were a second.
        assert!(latency.percentile_since_start(75.0).unwrap_or(0) >= 1_000_000);
    }

    #[test]
    fn threads_record_into_their_own_shards_and_every_view_sums_them() {
        let latency = LatencyHistogram::new();
        let threads = 4;
        std::thread::scope(|scope| {
            for t in 0..threads {
                let latency = &latency;
                scope.spawn(move || {
                    for us in 1..=100 {
                        latency.record(Duration::from_micros(us * (t + 1)));
                    }
                });
            }
        });
        let used = latency
            .shards
            .iter()
            .filter(|shard| shard.count.load(Ordering::Relaxed) > 0)
            .count();
        // Four fresh threads take four different shards unless the shard counter wrapped
        // around between them (other tests' threads take shards too).
        assert!(used >= 2, "{used} shards used");
        assert_eq!(latency.count(), 400);
        let stats = latency.stats();
        assert_eq!(stats.samples, 400);
        // Nearest rank over every thread's samples together.
        let mut all: Vec<u64> = (1..=4u64)
            .flat_map(|t| (1..=100).map(move |us| us * t))
            .collect();
        all.sort_unstable();
        assert_eq!(stats.p50_us, all[199]);
        assert_eq!(stats.p90_us, all[359]);
        assert_eq!(stats.p999_us, 400);
        let mut text = String::new();
        latency.write_prometheus(&mut text);
        assert!(
            text.lines()
                .any(|l| l == "herald_delivery_latency_seconds_count 400")
        );
        let sum_us: u64 = (1..=4).map(|t| t * 5050).sum();
        let sum_line = format!(
            "herald_delivery_latency_seconds_sum {}",
            sum_us as f64 / 1e6
        );
        assert!(
            text.lines().any(|l| l == sum_line),
            "{sum_line} missing from\n{text}"
        );
    }

    #[test]
    fn a_shard_fills_cache_lines_of_its_own() {
        assert_eq!(std::mem::align_of::<Shard>(), 128);
        assert_eq!(std::mem::size_of::<Shard>() % 128, 0);
    }

    #[test]
    fn prometheus_text_is_a_cumulative_histogram_in_seconds() {
        let latency = LatencyHistogram::new();
        latency.record(Duration::from_micros(5));
        latency.record(Duration::from_micros(100));
        latency.record(Duration::from_micros(100));
        latency.record(Duration::from_secs(600));
        let mut text = String::new();
        latency.write_prometheus(&mut text);
        for line in [
            "# TYPE herald_delivery_latency_seconds histogram",
            "herald_delivery_latency_seconds_bucket{le=\"0.000008\"} 1",
            "herald_delivery_latency_seconds_bucket{le=\"0.000064\"} 1",
            "herald_delivery_latency_seconds_bucket{le=\"0.000128\"} 3",
            "herald_delivery_latency_seconds_bucket{le=\"67.108864\"} 3",
            "herald_delivery_latency_seconds_bucket{le=\"+Inf\"} 4",
            "herald_delivery_latency_seconds_sum 600.000205",
            "herald_delivery_latency_seconds_count 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
