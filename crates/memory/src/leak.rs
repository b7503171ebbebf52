//! [`LeakDetector`]: judges the monitor's window for memory that grows and is not given back.

use std::{fmt, time::Duration};

use herald_utils::CircularBuffer;

use crate::{relief::SourceSize, sample::Sample};

/// Bytes in a mebibyte, for rates and messages.
const MIB: f64 = 1024.0 * 1024.0;

/// How serious a growth is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeakSeverity {
    /// No growth worth a word, or too few samples to tell.
    #[default]
    None,
    /// Slow growth, or growth that each cleanup gives back: worth watching, not acting on.
    Low,
    /// Growth that would take a large share of the budget within hours.
    Medium,
    /// Growth that would take a quarter of the budget within an hour: find the source now.
    High,
    /// Growth that would exhaust the budget within an hour.
    Critical,
}

impl LeakSeverity {
    /// The severity's name in logs: `none`, `low`, `medium`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for LeakSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The growth rates at or above which each severity starts, in one unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeverityScale {
    /// Where [`LeakSeverity::Low`] starts.
    pub low: f64,
    /// Where [`LeakSeverity::Medium`] starts.
    pub medium: f64,
    /// Where [`LeakSeverity::High`] starts.
    pub high: f64,
    /// Where [`LeakSeverity::Critical`] starts.
    pub critical: f64,
}

impl SeverityScale {
    /// The severity of `rate`: the highest whose start it reaches; none below `low` (and for
    /// a falling or NaN rate).
    pub fn grade(&self, rate: f64) -> LeakSeverity {
        [
            (self.critical, LeakSeverity::Critical),
            (self.high, LeakSeverity::High),
            (self.medium, LeakSeverity::Medium),
            (self.low, LeakSeverity::Low),
        ]
        .into_iter()
        .find(|&(start, _)| rate >= start)
        .map_or(LeakSeverity::None, |(_, severity)| severity)
    }
}

/// What the [`LeakDetector`] calls a leak. [`Default`] gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakSettings {
    /// Samples the window must hold before its slope is judged (default 10).
    pub min_samples: usize,
    /// Time the window must span before its slope is judged (default 60 s), so a start-up
    /// ramp of a few seconds is not a leak.
    pub min_span: Duration,
    /// Consecutive cleanup cycles whose post-cleanup floors must each rise before memory
    /// counts as retained (default 3, so four floors).
    pub retention_cycles: usize,
    /// Severity by growth in percent of the budget per hour, used when the budget is known
    /// (default: low 2 %, medium 10 %, high 25 %, critical 100 %, the budget gone within the
    /// hour).
    pub percent_per_hour: SeverityScale,
    /// Severity by growth in bytes per minute, used when no budget is known (default: low
    /// 256 KiB, medium 1 MiB, high 4 MiB, critical 16 MiB per minute).
    pub bytes_per_minute: SeverityScale,
    /// Floors within this many bytes of each other count as flat (default 1 MiB) ..., and
    /// floors that rose in each of the last cycles count as retained memory only when they
    /// rose by more than this in all.
    pub floor_tolerance_bytes: u64,
    /// ... or within this many basis points of the budget, when that is more (default 100,
    /// 1 % of the budget).
    pub floor_tolerance_bp: u64,
}

impl LeakSettings {
    /// [`min_samples`](Self::min_samples) by default.
    pub const MIN_SAMPLES: usize = 10;
    /// [`min_span`](Self::min_span) by default.
    pub const MIN_SPAN: Duration = Duration::from_secs(60);
    /// [`retention_cycles`](Self::retention_cycles) by default.
    pub const RETENTION_CYCLES: usize = 3;
    /// [`percent_per_hour`](Self::percent_per_hour) by default.
    pub const PERCENT_PER_HOUR: SeverityScale = SeverityScale {
        low: 2.0,
        medium: 10.0,
        high: 25.0,
        critical: 100.0,
    };
    /// [`bytes_per_minute`](Self::bytes_per_minute) by default.
    pub const BYTES_PER_MINUTE: SeverityScale = SeverityScale {
        low: 0.25 * MIB,
        medium: MIB,
        high: 4.0 * MIB,
        critical: 16.0 * MIB,
    };
    /// [`floor_tolerance_bytes`](Self::floor_tolerance_bytes) by default.
    pub const FLOOR_TOLERANCE_BYTES: u64 = 1024 * 1024;
    /// [`floor_tolerance_bp`](Self::floor_tolerance_bp) by default.
    pub const FLOOR_TOLERANCE_BP: u64 = 100;

    /// The bytes by which floors may differ and still count as flat, against `budget`.
    fn floor_tolerance(&self, budget: Option<u64>) -> u64 {
        let share = budget.map_or(0, |budget| {
            let share = u128::from(budget) * u128::from(self.floor_tolerance_bp) / 10_000;
            u64::try_from(share).unwrap_or(u64::MAX)
        });
        self.floor_tolerance_bytes.max(share)
    }

    /// The severity of a growth of `bytes_per_minute`, against `budget` when known.
    fn grade(&self, bytes_per_minute: f64, budget: Option<u64>) -> LeakSeverity {
        match percent_per_hour(bytes_per_minute, budget) {
            Some(percent) => self.percent_per_hour.grade(percent),
            None => self.bytes_per_minute.grade(bytes_per_minute),
        }
    }
}

impl Default for LeakSettings {
    fn default() -> Self {
        Self {
            min_samples: Self::MIN_SAMPLES,
            min_span: Self::MIN_SPAN,
            retention_cycles: Self::RETENTION_CYCLES,
            percent_per_hour: Self::PERCENT_PER_HOUR,
            bytes_per_minute: Self::BYTES_PER_MINUTE,
            floor_tolerance_bytes: Self::FLOOR_TOLERANCE_BYTES,
            floor_tolerance_bp: Self::FLOOR_TOLERANCE_BP,
        }
    }
}

/// How much one [`MemorySources`](crate::MemorySources) component grew since the detector
/// first saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceGrowth {
    /// The component, as it names itself.
    pub name: &'static str,
    /// Its size when first seen, in bytes.
    pub first_bytes: u64,
    /// Its size when last seen, in bytes.
    pub last_bytes: u64,
}

impl SourceGrowth {
    /// Bytes gained since first seen (0 when it shrank).
    pub fn grown_bytes(&self) -> u64 {
        self.last_bytes.saturating_sub(self.first_bytes)
    }
}

/// The detector's verdict on the window, for logs and stats.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakFinding {
    /// How serious: the worse of the window's slope and the retained memory.
    pub severity: LeakSeverity,
    /// The least-squares slope of "used" bytes over the window's sample times, in bytes per
    /// minute (negative when falling); `None` until the window holds
    /// [`min_samples`](LeakSettings::min_samples) over [`min_span`](LeakSettings::min_span).
    pub growth_bytes_per_minute: Option<f64>,
    /// The same slope in percent of the budget per hour, where the budget is known.
    pub growth_percent_per_hour: Option<f64>,
    /// The rise of the post-cleanup floors over the last
    /// [`retention_cycles`](LeakSettings::retention_cycles) cycles when each of them rose
    /// (memory that cleanup does not give back); 0 otherwise.
    pub retained_bytes: u64,
    /// Whether recent cleanups bring "used" back to a flat floor: growth between cleanups is
    /// then bursts that are freed, and the slope alone is graded [`LeakSeverity::Low`] at most.
    pub floors_flat: bool,
    /// The component that grew most since the detector first saw it, if any grew.
    pub source: Option<SourceGrowth>,
    /// What an operator should do, in one sentence.
    pub recommendation: String,
}

/// Judges a window of samples for leaks: the growth slope of "used" bytes (least squares over
/// the sample times, not their indexes), and the memory retained across cleanup cycles (the
/// floors "used" falls back to right after each cleanup: floors that keep rising are memory
/// no cleanup gives back).
///
/// It keeps the first and last size of each [`SourceSize`] it is shown, so a finding names
/// the component that grew most. Growth between cleanups that each cleanup gives back
/// (a sawtooth of bursts) is graded low at most.
#[derive(Debug, Clone)]
pub struct LeakDetector {
    settings: LeakSettings,
    /// First and last size per component, in the order first seen.
    sources: Vec<SourceGrowth>,
}

impl LeakDetector {
    /// A detector that has seen no component yet.
    pub fn new(settings: LeakSettings) -> Self {
        Self {
            settings,
            sources: Vec::new(),
        }
    }

    /// What it calls a leak.
    pub fn settings(&self) -> &LeakSettings {
        &self.settings
    }

    /// Records each component's size now: the first size of a component is kept, the last
    /// one replaced.
    pub fn observe_sources(&mut self, sizes: &[SourceSize]) {
        for size in sizes {
            match self.sources.iter_mut().find(|s| s.name == size.name) {
                Some(known) => known.last_bytes = size.bytes,
                None => self.sources.push(SourceGrowth {
                    name: size.name,
                    first_bytes: size.bytes,
                    last_bytes: size.bytes,
                }),
            }
        }
    }

    /// The component that grew most, if any grew at all (the first seen wins a tie).
    pub fn likely_source(&self) -> Option<SourceGrowth> {
        self.sources.iter().filter(|s| s.grown_bytes() > 0).fold(
            None,
            |best: Option<SourceGrowth>, &s| match best {
                Some(b) if b.grown_bytes() >= s.grown_bytes() => Some(b),
                _ => Some(s),
            },
        )
    }

    /// Judges `window` (samples, oldest first) and `floors` (the samples taken right after
    /// each cleanup, oldest first). The budget is the newest sample's `limit_bytes`.
    pub fn assess(
        &self,
        window: &CircularBuffer<Sample>,
        floors: &CircularBuffer<Sample>,
    ) -> LeakFinding {
        let budget = window.latest().and_then(|s| s.reading.limit_bytes);
        let slope = self.slope_bytes_per_minute(window);
        let floors_flat = self.floors_flat(window, floors, budget);
        let (retained_bytes, retained_rate) = self.retained(floors);

        let slope_severity = slope.map_or(LeakSeverity::None, |rate| {
            let severity = self.settings.grade(rate, budget);
            if floors_flat {
                severity.min(LeakSeverity::Low)
            } else {
                severity
            }
        });
        let retained_severity =
            retained_rate.map_or(LeakSeverity::None, |rate| self.settings.grade(rate, budget));
        let severity = slope_severity.max(retained_severity);
        let source = self.likely_source();
        let growth_percent_per_hour = slope.and_then(|rate| percent_per_hour(rate, budget));
        LeakFinding {
            severity,
            growth_bytes_per_minute: slope,
            growth_percent_per_hour,
            retained_bytes,
            floors_flat,
            source,
            recommendation: recommendation(severity, slope, retained_bytes, source),
        }
    }

    /// The least-squares slope of "used" bytes over sample times, per minute; `None` while
    /// the window is too short to tell.
    fn slope_bytes_per_minute(&self, window: &CircularBuffer<Sample>) -> Option<f64> {
        let (oldest, newest) = (window.oldest()?, window.latest()?);
        if window.len() < self.settings.min_samples.max(2)
            || newest.at.saturating_duration_since(oldest.at) < self.settings.min_span
        {
            return None;
        }
        let mut points = CircularBuffer::new(window.len());
        for sample in window.iter() {
            points.push((
                sample.seconds_since(oldest.at),
                sample.reading.used_bytes as f64,
            ));
        }
        points.slope().map(|per_second| per_second * 60.0)
    }

    /// Whether the floors taken during the window (at least two) stayed within the tolerance
    /// of the first of them.
    fn floors_flat(
        &self,
        window: &CircularBuffer<Sample>,
        floors: &CircularBuffer<Sample>,
        budget: Option<u64>,
    ) -> bool {
        let Some(start) = window.oldest().map(|s| s.at) else {
            return false;
        };
        let mut recent = floors.iter().filter(|floor| floor.at >= start);
        let Some(first) = recent.next() else {
            return false;
        };
        let tolerance = self.settings.floor_tolerance(budget);
        let ceiling = first.reading.used_bytes.saturating_add(tolerance);
        let mut rest = recent.peekable();
        rest.peek().is_some() && rest.all(|floor| floor.reading.used_bytes <= ceiling)
    }

    /// The bytes the last [`retention_cycles`](LeakSettings::retention_cycles) cleanups failed
    /// to give back, and that as bytes per minute, when every one of their floors rose and the
    /// rise exceeds the tolerance; `(0, None)` otherwise.
    fn retained(&self, floors: &CircularBuffer<Sample>) -> (u64, Option<f64>) {
        let cycles = self.settings.retention_cycles.max(1);
        if floors.len() < cycles + 1 {
            return (0, None);
        }
        let last: Vec<&Sample> = floors.iter().skip(floors.len() - cycles - 1).collect();
        let each_rose = last
            .windows(2)
            .all(|pair| pair[1].reading.used_bytes > pair[0].reading.used_bytes);
        let (first, newest) = (last[0], last[cycles]);
        let retained =
            newest.reading.used_bytes - first.reading.used_bytes.min(newest.reading.used_bytes);
        // Only the absolute tolerance here: rises in every cycle are already unlike noise, and
        // the rate, graded like the slope, says whether they matter.
        if !each_rose || retained <= self.settings.floor_tolerance_bytes {
            return (0, None);
        }
        let minutes = newest.seconds_since(first.at) / 60.0;
        let rate = (minutes > 0.0).then(|| retained as f64 / minutes);
        (retained, rate)
    }
}

impl Default for LeakDetector {
    fn default() -> Self {
        Self::new(LeakSettings::default())
    }
}

/// `bytes_per_minute` as percent of `budget` per hour; `None` without a (non-zero) budget.
fn percent_per_hour(bytes_per_minute: f64, budget: Option<u64>) -> Option<f64> {
    let budget = budget.filter(|&b| b > 0)? as f64;
    Some(bytes_per_minute * 60.0 / budget * 100.0)
}

/// One sentence for the operator.
fn recommendation(
    severity: LeakSeverity,
    slope: Option<f64>,
    retained_bytes: u64,
    source: Option<SourceGrowth>,
) -> String {
    if severity == LeakSeverity::None {
        return "no sustained memory growth: nothing to do".to_owned();
    }
    let mut text = format!("{severity} memory growth");
    if let Some(rate) = slope {
        text.push_str(&format!(" of {:.2} MiB/min", rate / MIB));
    }
    if retained_bytes > 0 {
        text.push_str(&format!(
            ", {:.1} MiB retained across cleanups",
            retained_bytes as f64 / MIB
        ));
    }
    match source {
        Some(source) => text.push_str(&format!(
            "; likely source {} (+{:.1} MiB): {}",
            source.name,
            source.grown_bytes() as f64 / MIB,
            hint(source.name)
        )),
        None => text.push_str(
            "; no reporting component grew: look outside them (allocator fragmentation, \
             buffers) with a heap profile",
        ),
    }
    if severity >= LeakSeverity::High {
        text.push_str("; take a heap profile now, before degradation starts shedding");
    }
    text
}

/// What to look at for a component, by its name.
fn hint(name: &str) -> &'static str {
    match name {
        "connections" => "check the connection limits and the idle and stale timeouts",
        "queues" => "look for slow consumers and lower the outbound queue bounds",
        "history" => "lower the history size or time-to-live",
        "pending_events" => {
            "check that clients acknowledge critical events, and the events' time-to-live"
        }
        "dedupe" => "lower dedupe_cache_size or dedupe_window_ms",
        _ => "check its bounds and its expiry",
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex, PoisonError},
        time::Duration,
    };

    use herald_utils::ManualClock;

    use crate::{
        leak::{LeakFinding, LeakSeverity},
        level::Thresholds,
        monitor::{MemoryMonitor, MonitorSettings},
        probe::{FakeProbe, MemoryReading},
        relief::{CleanupReport, MemorySources, SourceSize},
    };

    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;

    /// Component sizes a test sets.
    #[derive(Clone, Default)]
    struct FakeSources(Arc<Mutex<Vec<SourceSize>>>);

    impl FakeSources {
        fn set(&self, sizes: &[(&'static str, u64)]) {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = sizes
                .iter()
                .map(|&(name, bytes)| SourceSize { name, bytes })
                .collect();
        }
    }

    impl MemorySources for FakeSources {
        fn sizes(&self) -> Vec<SourceSize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    /// A monitor over a fake probe on a manual clock, with the default window (600 samples).
    struct Run {
        probe: FakeProbe,
        clock: ManualClock,
        monitor: MemoryMonitor,
        sources: FakeSources,
        budget: Option<u64>,
    }

    impl Run {
        fn new(budget: Option<u64>, first_used: u64) -> Self {
            let probe = FakeProbe::new(reading(first_used, budget));
            let clock = ManualClock::at_unix_ms(1_700_000_000_000);
            let monitor = MemoryMonitor::with_clock(
                Arc::new(probe.clone()),
                Thresholds::new(85, 95).expect("valid"),
                Arc::new(clock.clone()),
                MonitorSettings::default(),
            );
            Self {
                probe,
                clock,
                monitor,
                sources: FakeSources::default(),
                budget,
            }
        }

        /// `after` later, "used" is `used`: one sample and one leak check.
        fn tick(&self, after: Duration, used: u64) -> LeakFinding {
            self.clock.advance(after);
            self.probe.set(reading(used, self.budget));
            self.monitor.sample();
            self.monitor.check_leaks(&self.sources)
        }

        /// A cleanup pass brought "used" down to `used` (after one more second).
        fn cleanup(&self, used: u64) {
            self.clock.advance(Duration::from_secs(1));
            self.probe.set(reading(used, self.budget));
            self.monitor.after_cleanup(CleanupReport::default());
        }
    }

    fn reading(used_bytes: u64, limit_bytes: Option<u64>) -> MemoryReading {
        MemoryReading {
            used_bytes,
            resident_bytes: used_bytes,
            allocated_bytes: Some(used_bytes),
            limit_bytes,
        }
    }

    /// Grows "used" by `mib_per_minute` from 200 MiB, one sample a second for ten minutes.
    #[track_caller]
    fn check_steady(budget: Option<u64>, mib_per_minute: u64, expected: LeakSeverity) {
        let run = Run::new(budget, 200 * MIB);
        let mut finding = None;
        for second in 1..=600 {
            let used = 200 * MIB + mib_per_minute * MIB * second / 60;
            finding = Some(run.tick(Duration::from_secs(1), used));
        }
        let finding = finding.expect("ticked");
        assert_eq!(finding.severity, expected, "{finding:?}");
        let slope = finding.growth_bytes_per_minute.expect("a full window");
        let wanted = (mib_per_minute * MIB) as f64;
        assert!(
            (slope - wanted).abs() < wanted * 0.01 + 1.0,
            "{slope} vs {wanted}"
        );
    }

    #[test]
    fn a_strong_steady_slope_is_high() {
        // 5 MiB/min is 29 % of a 1 GiB budget per hour.
        check_steady(Some(GIB), 5, LeakSeverity::High);
    }

    #[test]
    fn a_slope_that_exhausts_the_budget_within_the_hour_is_critical() {
        check_steady(Some(GIB), 20, LeakSeverity::Critical);
    }

    #[test]
    fn a_moderate_slope_is_medium() {
        // 2 MiB/min is 11.7 % of the budget per hour.
        check_steady(Some(GIB), 2, LeakSeverity::Medium);
    }

    #[test]
    fn a_slow_slope_is_low() {
        // 1 MiB/min is 5.9 % of a 1 GiB budget per hour... against 4 GiB, 1.5 %: none.
        check_steady(Some(GIB), 1, LeakSeverity::Low);
        check_steady(Some(4 * GIB), 1, LeakSeverity::None);
    }

    #[test]
    fn flat_memory_is_no_leak() {
        check_steady(Some(GIB), 0, LeakSeverity::None);
    }

    #[test]
    fn without_a_budget_the_slope_is_graded_in_bytes_per_minute() {
        check_steady(None, 5, LeakSeverity::High);
        check_steady(None, 1, LeakSeverity::Medium);
    }

    #[test]
    fn a_short_window_tells_nothing_yet() {
        let run = Run::new(Some(GIB), 200 * MIB);
        let mut finding = None;
        for second in 1..=30 {
            finding = Some(run.tick(Duration::from_secs(1), 200 * MIB + second * 10 * MIB));
        }
        let finding = finding.expect("ticked");
        assert_eq!(finding.growth_bytes_per_minute, None);
        assert_eq!(finding.severity, LeakSeverity::None);
    }

    #[test]
    fn the_slope_follows_sample_times_not_indexes() {
        // Samples 1 s and 5 s apart alternately, "used" growing 1 MiB per minute of time: a
        // slope per index would be wrong by a factor of three.
        let run = Run::new(Some(GIB), 0);
        let mut elapsed = 0;
        let mut finding = None;
        for i in 0..200 {
            let step = if i % 2 == 0 { 1 } else { 5 };
            elapsed += step;
            finding = Some(run.tick(Duration::from_secs(step), MIB * elapsed / 60));
        }
        let slope = finding
            .and_then(|f| f.growth_bytes_per_minute)
            .expect("enough samples");
        assert!((slope - MIB as f64).abs() < 0.01 * MIB as f64, "{slope}");
    }

    /// Ten one-minute cycles: bursts of 2 MiB/s for 30 s on top of a floor, then cleanup
    /// brings "used" back to the floor, which rises by `floor_rise` each cycle.
    fn sawtooth(floor_rise: u64) -> LeakFinding {
        let run = Run::new(Some(GIB), 300 * MIB);
        let mut finding = None;
        for cycle in 0..10 {
            let floor = 300 * MIB + cycle * floor_rise;
            for second in 1..=59 {
                let burst = 2 * MIB * second.min(30);
                finding = Some(run.tick(Duration::from_secs(1), floor + burst));
            }
            run.cleanup(floor + floor_rise);
        }
        finding.expect("ticked")
    }

    #[test]
    fn a_sawtooth_of_freed_bursts_is_not_a_leak() {
        let finding = sawtooth(0);
        assert!(finding.severity <= LeakSeverity::Low, "{finding:?}");
        assert!(finding.floors_flat);
        assert_eq!(finding.retained_bytes, 0);
    }

    #[test]
    fn floors_that_keep_rising_are_retained_memory() {
        // 3 MiB kept per one-minute cycle: 17.6 % of the budget per hour.
        let finding = sawtooth(3 * MIB);
        assert_eq!(finding.retained_bytes, 9 * MIB, "{finding:?}");
        assert!(!finding.floors_flat);
        assert_eq!(finding.severity, LeakSeverity::Medium, "{finding:?}");
    }

    #[test]
    fn a_leaking_source_is_named_with_severity_high() {
        let run = Run::new(Some(GIB), 300 * MIB);
        let mut finding = None;
        for second in 0..=600 {
            // `history` leaks 5 MiB a minute; `queues` goes up and down; `connections` stays.
            let history = 10 * MIB + 5 * MIB * second / 60;
            let queues = if second % 20 < 10 { 8 * MIB } else { 2 * MIB };
            run.sources.set(&[
                ("connections", 50 * MIB),
                ("queues", queues),
                ("history", history),
            ]);
            finding = Some(run.tick(Duration::from_secs(1), 240 * MIB + queues + history));
        }
        let finding = finding.expect("ticked");
        assert_eq!(finding.severity, LeakSeverity::High, "{finding:?}");
        let source = finding.source.expect("a source grew");
        assert_eq!(source.name, "history");
        assert_eq!(source.grown_bytes(), 50 * MIB);
        assert!(
            finding.recommendation.contains("history"),
            "{}",
            finding.recommendation
        );
        assert_eq!(run.monitor.latest_leak(), Some(finding));
    }

    #[test]
    fn no_growth_recommends_nothing() {
        let quiet = Run::new(Some(GIB), MIB).tick(Duration::from_secs(1), MIB);
        assert_eq!(quiet.severity, LeakSeverity::None);
        assert!(quiet.source.is_none());
        assert!(quiet.recommendation.contains("nothing to do"));
    }
}
