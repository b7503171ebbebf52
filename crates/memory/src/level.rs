//! [`MemoryLevel`] and the [`LevelTracker`] state machine that moves between levels with
//! hysteresis.

use std::fmt;

/// How close memory use is to the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryLevel {
    /// Below the high threshold (or falling back from above it, past the hysteresis margin).
    #[default]
    Normal,
    /// At or above the high threshold: time to shed optional work.
    High,
    /// At or above the critical threshold: time to refuse new work.
    Critical,
}

impl MemoryLevel {
    /// The level's name in logs and health answers: `normal`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The level as a degradation step: 0 (normal), 1 (high) or 2 (critical), as in
    /// `/api/stats` and `ChangeReason::Degradation`.
    pub fn number(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::High => 1,
            Self::Critical => 2,
        }
    }
}

impl fmt::Display for MemoryLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the levels start, as percents of the budget.
///
/// A level is entered when usage reaches its threshold, and left only when usage falls
/// [`HYSTERESIS_PERCENT`](Self::HYSTERESIS_PERCENT) points below it (or to half the threshold,
/// when that is closer), so usage hovering at a threshold does not flap between levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The high threshold in basis points (hundredths of a percent) of the budget.
    high_bp: u64,
    /// The critical threshold in basis points of the budget.
    critical_bp: u64,
}

/// Why thresholds were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory thresholds high {high}% and critical {critical}% must be from 1 to 100, high below critical"
)]
pub struct ThresholdError {
    /// The high percent given.
    pub high: u8,
    /// The critical percent given.
    pub critical: u8,
}

impl Thresholds {
    /// The margin, in percentage points, by which usage must fall below a threshold to leave
    /// its level.
    pub const HYSTERESIS_PERCENT: u8 = 5;

    /// Thresholds at `high` and `critical` percent of the budget (herald-config's
    /// `memory_high_percent` and `memory_critical_percent`): both from 1 to 100, high below
    /// critical.
    pub fn new(high: u8, critical: u8) -> Result<Self, ThresholdError> {
        if high == 0 || critical > 100 || high >= critical {
            return Err(ThresholdError { high, critical });
        }
        Ok(Self {
            high_bp: u64::from(high) * 100,
            critical_bp: u64::from(critical) * 100,
        })
    }

    /// The usage, in basis points (hundredths of a percent) of the budget, at or above which
    /// `level` is entered; 0 for [`MemoryLevel::Normal`].
    pub fn enter_bp(self, level: MemoryLevel) -> u64 {
        match level {
            MemoryLevel::Normal => 0,
            MemoryLevel::High => self.high_bp,
            MemoryLevel::Critical => self.critical_bp,
        }
    }

    /// The usage (in basis points) below which `level` is left.
    fn exit_bp(self, level: MemoryLevel) -> u64 {
        let enter = self.enter_bp(level);
        enter - (u64::from(Self::HYSTERESIS_PERCENT) * 100).min(enter / 2)
    }
}

/// A change of level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The level before.
    pub from: MemoryLevel,
    /// The level now.
    pub to: MemoryLevel,
}

/// The current [`MemoryLevel`], moved by each observation of usage against the budget.
///
/// Usage at or above a threshold enters that level (or the highest such level) at once;
/// a level is kept until usage falls below its exit point (see [`Thresholds`]), and then the
/// tracker drops to the highest level whose exit point usage still reaches.
#[derive(Debug, Clone)]
pub struct LevelTracker {
    thresholds: Thresholds,
    level: MemoryLevel,
}

impl LevelTracker {
    /// A tracker at [`MemoryLevel::Normal`].
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            level: MemoryLevel::Normal,
        }
    }

    /// The level now.
    pub fn level(&self) -> MemoryLevel {
        self.level
    }

    /// The thresholds this tracker judges against.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Judges `used_bytes` against `budget_bytes` and moves the level; answers the change, if
    /// any. A zero budget tells nothing, and leaves the level as it is.
    pub fn observe(&mut self, used_bytes: u64, budget_bytes: u64) -> Option<Transition> {
        let usage_bp = usage_bp(used_bytes, budget_bytes)?;
        let next = self.next_level(usage_bp);
        let from = std::mem::replace(&mut self.level, next);
        (from != next).then_some(Transition { from, to: next })
    }

    /// The level for `usage_bp`: the highest level entered or kept.
    fn next_level(&self, usage_bp: u64) -> MemoryLevel {
        [MemoryLevel::Critical, MemoryLevel::High]
            .into_iter()
            .find(|&level| {
                let kept = level <= self.level && usage_bp >= self.thresholds.exit_bp(level);
                usage_bp >= self.thresholds.enter_bp(level) || kept
            })
            .unwrap_or(MemoryLevel::Normal)
    }
}

/// `used_bytes` as basis points (hundredths of a percent) of `budget_bytes`, rounded down and
/// saturating; `None` for a zero budget, which tells nothing.
pub(crate) fn usage_bp(used_bytes: u64, budget_bytes: u64) -> Option<u64> {
    if budget_bytes == 0 {
        return None;
    }
    let usage_bp = u128::from(used_bytes) * 10_000 / u128::from(budget_bytes);
    Some(u64::try_from(usage_bp).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::level::{
        LevelTracker,
        MemoryLevel::{self, Critical, High, Normal},
        Thresholds, Transition,
    };

    const BUDGET: u64 = 10_000;

    /// Feeds usages (in basis points of the budget) to a tracker at 85 % and 95 %, and
    /// compares the level after each.
    #[track_caller]
    fn check(usages_bp: &[u64], expected: &[MemoryLevel]) {
        let mut tracker = LevelTracker::new(Thresholds::new(85, 95).expect("valid"));
        let levels: Vec<MemoryLevel> = usages_bp
            .iter()
            .map(|&usage| {
                tracker.observe(usage, BUDGET);
                tracker.level()
            })
            .collect();
        assert_eq!(levels, expected);
    }

    #[test]
    fn levels_are_entered_at_their_thresholds() {
        check(
            &[8_499, 8_500, 9_499, 9_500],
            &[Normal, High, High, Critical],
        );
    }

    #[test]
    fn a_jump_goes_straight_to_critical() {
        check(&[0, 9_900], &[Normal, Critical]);
    }

    #[test]
    fn high_is_left_only_five_points_below_its_threshold() {
        check(&[8_500, 8_100, 8_000, 7_999], &[High, High, High, Normal]);
    }

    #[test]
    fn critical_is_left_five_points_below_and_falls_to_high() {
        check(
            &[9_500, 9_100, 9_000, 8_999],
            &[Critical, Critical, Critical, High],
        );
    }

    #[test]
    fn a_drop_from_critical_can_reach_normal() {
        check(&[9_600, 1_000], &[Critical, Normal]);
    }

    #[test]
    fn hovering_at_a_threshold_does_not_flap() {
        check(&[8_500, 8_499, 8_500, 8_499], &[High, High, High, High]);
    }

    #[test]
    fn usage_above_the_budget_is_critical() {
        let mut tracker = LevelTracker::new(Thresholds::new(85, 95).expect("valid"));
        let change = tracker.observe(u64::MAX, 1);
        assert_eq!(
            change,
            Some(Transition {
                from: Normal,
                to: Critical
            })
        );
    }

    #[test]
    fn a_zero_budget_keeps_the_level() {
        let mut tracker = LevelTracker::new(Thresholds::new(85, 95).expect("valid"));
        tracker.observe(9_000, BUDGET);
        assert_eq!(tracker.observe(0, 0), None);
        assert_eq!(tracker.level(), High);
    }

    #[test]
    fn low_thresholds_can_still_be_left() {
        let mut tracker = LevelTracker::new(Thresholds::new(2, 3).expect("valid"));
        tracker.observe(200, BUDGET);
        assert_eq!(tracker.level(), High);
        tracker.observe(100, BUDGET);
        assert_eq!(tracker.level(), High);
        tracker.observe(99, BUDGET);
        assert_eq!(tracker.level(), Normal);
    }

    #[test]
    fn thresholds_must_be_ordered_percents() {
        for (high, critical) in [(0, 95), (85, 101), (95, 95), (96, 95)] {
            let error = Thresholds::new(high, critical).expect_err("invalid");
            assert_eq!((error.high, error.critical), (high, critical));
        }
        assert!(Thresholds::new(1, 100).is_ok());
    }

    proptest! {
        #[test]
        fn levels_change_only_at_thresholds_and_exit_points(
            (high, critical) in (1u8..100).prop_flat_map(|high| (Just(high), high + 1..=100)),
            usages in prop::collection::vec(0u64..12_000, 1..60),
        ) {
            let thresholds = Thresholds::new(high, critical).expect("generated in range");
            let mut tracker = LevelTracker::new(thresholds);
            for usage in usages {
                let before = tracker.level();
                let change = tracker.observe(usage, BUDGET);
                let after = tracker.level();
                prop_assert_eq!(change.is_some(), before != after);
                // Entering a level needs usage at its threshold.
                if after > before {
                    prop_assert!(usage >= thresholds.enter_bp(after));
                }
                // Leaving a level needs usage below its exit point, and the level reached
                // must not have been entered or kept by this usage.
                if after < before {
                    prop_assert!(usage < thresholds.exit_bp(before));
                    prop_assert!(usage < thresholds.enter_bp(before));
                }
                // The thresholds themselves always win, whatever the history.
                if usage >= thresholds.enter_bp(Critical) {
                    prop_assert_eq!(after, Critical);
                }
                if usage < thresholds.exit_bp(High) {
                    prop_assert_eq!(after, Normal);
                }
                // Any level above normal is held only down to its exit point.
                if after > Normal {
                    prop_assert!(usage >= thresholds.exit_bp(after));
                }
                // In the dead band below a threshold, nothing moves up or down past it.
                if usage >= thresholds.exit_bp(before) && usage < thresholds.enter_bp(Critical) {
                    prop_assert!(after >= before);
                }
            }
        }
    }
}
