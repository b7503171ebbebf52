//! [`ProgressiveDegradation`]: what the process gives up, step by step, as the memory level
//! rises, and what it takes back when memory recovers.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use herald_config::{ChangeReason, RuntimeConfig, RuntimeConfigError, RuntimeKey};
use herald_utils::Clock;

use crate::{
    level::{MemoryLevel, Thresholds, Transition},
    monitor::MemoryStatus,
    relief::Relief,
};

/// How degradation acts. [`Default`] gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DegradationSettings {
    /// The least time spent at a level before falling to a lower one (default 30 s), so usage
    /// hovering around a threshold does not switch relief on and off. Rising is immediate.
    pub min_dwell: Duration,
    /// The fraction of their bounds that history and caches are trimmed to on entering level
    /// 1 or above (default 0.5): [`Relief::trim`].
    pub trim_fraction: f64,
    /// `message_batch_delay_ms` from level 1 on (default 10 ms): fewer, larger writes cost
    /// less per frame. Raised only when the current value is lower.
    pub batch_delay_ms: u64,
    /// Connections closed per step at level 2 while usage is at or above the critical
    /// threshold (default 50): [`Relief::close_idlest`].
    pub close_per_step: usize,
    /// The cleanup interval is divided by this above level 0 (default 4); see
    /// [`ProgressiveDegradation::cleanup_interval`].
    pub cleanup_speedup: u32,
}

impl DegradationSettings {
    /// [`min_dwell`](Self::min_dwell) by default.
    pub const MIN_DWELL: Duration = Duration::from_secs(30);
    /// [`trim_fraction`](Self::trim_fraction) by default.
    pub const TRIM_FRACTION: f64 = 0.5;
    /// [`batch_delay_ms`](Self::batch_delay_ms) by default.
    pub const BATCH_DELAY_MS: u64 = 10;
    /// [`close_per_step`](Self::close_per_step) by default.
    pub const CLOSE_PER_STEP: usize = 50;
    /// [`cleanup_speedup`](Self::cleanup_speedup) by default.
    pub const CLEANUP_SPEEDUP: u32 = 4;
    /// The shortest cleanup interval [`ProgressiveDegradation::cleanup_interval`] answers,
    /// the lower bound of `memory_cleanup_interval_ms`.
    pub const MIN_CLEANUP_INTERVAL: Duration = Duration::from_secs(1);
}

impl Default for DegradationSettings {
    fn default() -> Self {
        Self {
            min_dwell: Self::MIN_DWELL,
            trim_fraction: Self::TRIM_FRACTION,
            batch_delay_ms: Self::BATCH_DELAY_MS,
            close_per_step: Self::CLOSE_PER_STEP,
            cleanup_speedup: Self::CLEANUP_SPEEDUP,
        }
    }
}

/// One thing a step did, for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum ReliefAction {
    /// [`Relief::trim`] to `fraction` of the bounds, which freed about `freed_bytes`.
    Trimmed {
        /// The fraction asked for.
        fraction: f64,
        /// Bytes freed, by the relief's estimate.
        freed_bytes: u64,
    },
    /// `message_batch_delay_ms` raised.
    BatchDelayRaised {
        /// The value before, restored on recovery.
        from_ms: u64,
        /// The value set.
        to_ms: u64,
    },
    /// `message_batch_delay_ms` put back to its value before degradation.
    BatchDelayRestored {
        /// The value restored.
        to_ms: u64,
    },
    /// `message_batch_delay_ms` was changed by someone else (an operator) while degraded, and
    /// that value is left in place.
    BatchDelayLeft {
        /// The value found, and kept.
        current_ms: u64,
    },
    /// A runtime change was refused (a value out of range); nothing changed.
    ConfigRefused(RuntimeConfigError),
    /// [`Relief::refuse_connections`] switched on (`true`) or off.
    RefuseConnections(bool),
    /// [`Relief::shed_optional`] shed this many frames.
    ShedOptional {
        /// Frames shed.
        frames: u64,
    },
    /// [`Relief::trim`]`(1.0)` on the way back to level 0: the caps trimming set (the dedupe
    /// cache's size) are lifted.
    CapsLifted,
    /// [`Relief::close_idlest`] asked for `asked` and closed `closed`.
    ClosedIdlest {
        /// Connections asked for.
        asked: usize,
        /// Connections asked to close.
        closed: usize,
    },
}

/// What one [`ProgressiveDegradation::step`] found and did, for logging.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The degradation level after the step.
    pub level: MemoryLevel,
    /// When that level was entered, in milliseconds since the Unix epoch (from the clock).
    pub since_unix_ms: u64,
    /// The change of level this step made, if any.
    pub transition: Option<Transition>,
    /// A lower level is due but the dwell time keeps this one for this much longer.
    pub held_for: Option<Duration>,
    /// What was done, in order.
    pub actions: Vec<ReliefAction>,
    /// Run a cleanup pass now (set on each rise of level), whatever the cleanup interval says.
    pub cleanup_now: bool,
}

impl StepReport {
    /// Whether the step changed nothing and did nothing (no need to log it).
    pub fn is_quiet(&self) -> bool {
        self.transition.is_none() && self.actions.is_empty()
    }
}

/// The change degradation made to `message_batch_delay_ms`, to undo on recovery.
#[derive(Debug, Clone, Copy)]
struct BatchDelayChange {
    /// The value before.
    before_ms: u64,
    /// The value degradation set.
    set_ms: u64,
}

/// Acts on memory pressure through [`Relief`] and the live [`RuntimeConfig`], following the
/// level of each [`MemoryStatus`] (the monitor's level, with its percent hysteresis) plus a
/// minimum dwell time before leaving a level.
///
/// - **Level 1 (high)**, on entry: [`Relief::trim`] to
///   [`trim_fraction`](DegradationSettings::trim_fraction); `message_batch_delay_ms` raised to
///   [`batch_delay_ms`](DegradationSettings::batch_delay_ms) when lower
///   ([`ChangeReason::Degradation`] `{ level: 1 }`); a cleanup pass now
///   ([`StepReport::cleanup_now`]) and sooner from then on ([`cleanup_interval`](Self::cleanup_interval)).
/// - **Level 2 (critical)**: also [`Relief::refuse_connections`]`(true)` on entry, and on
///   entry and on each later step while usage is at or above the critical threshold
///   [`Relief::trim`] (history grows back while publications go on), [`Relief::shed_optional`]
///   and [`Relief::close_idlest`]`(`[`close_per_step`](DegradationSettings::close_per_step)`)`.
///   Relief implementations must never shed or drop critical frames (critical events, replies):
///   those are not this crate's concern and are never among what it gives up.
/// - **Falling below level 2**: `refuse_connections(false)`.
/// - **Back to level 0**: [`Relief::trim`]`(1.0)`, which lifts the caps trimming set, and
///   `message_batch_delay_ms` back to its value before degradation
///   (`{ level: 0 }`), unless it no longer holds the value degradation set: someone (an
///   operator, through `PATCH /api/config/runtime`) changed it meanwhile, and their value is
///   left in place.
///
/// A level is entered at once (0 to 2 in one step does the actions of both); it is left only
/// after [`min_dwell`](DegradationSettings::min_dwell) at it, and then straight to the level
/// the status shows (2 to 0 in one step undoes everything).
pub struct ProgressiveDegradation {
    relief: Arc<dyn Relief>,
    runtime: Arc<RuntimeConfig>,
    clock: Arc<dyn Clock>,
    thresholds: Thresholds,
    settings: DegradationSettings,
    level: MemoryLevel,
    since: Instant,
    since_unix_ms: u64,
    refusing: bool,
    batch_delay: Option<BatchDelayChange>,
}

impl ProgressiveDegradation {
    /// Degradation at level 0 since now, acting through `relief` and `runtime`, judging
    /// "above critical" by `thresholds` (the monitor's, [`MemoryMonitor::thresholds`](crate::MemoryMonitor::thresholds)).
    pub fn new(
        relief: Arc<dyn Relief>,
        runtime: Arc<RuntimeConfig>,
        clock: Arc<dyn Clock>,
        thresholds: Thresholds,
        settings: DegradationSettings,
    ) -> Self {
        let (since, since_unix_ms) = (clock.now(), clock.unix_ms());
        Self {
            relief,
            runtime,
            clock,
            thresholds,
            settings,
            level: MemoryLevel::Normal,
            since,
            since_unix_ms,
            refusing: false,
            batch_delay: None,
        }
    }

    /// The degradation level now.
    pub fn level(&self) -> MemoryLevel {
        self.level
    }

    /// When the level now was entered, in milliseconds since the Unix epoch.
    pub fn since_unix_ms(&self) -> u64 {
        self.since_unix_ms
    }

    /// Whether cleanup should run sooner than its interval: any level above 0.
    pub fn cleanup_due_sooner(&self) -> bool {
        self.level > MemoryLevel::Normal
    }

    /// The cleanup interval to use now: `configured` at level 0, else `configured` divided by
    /// [`cleanup_speedup`](DegradationSettings::cleanup_speedup), but not under one second.
    pub fn cleanup_interval(&self, configured: Duration) -> Duration {
        if !self.cleanup_due_sooner() {
            return configured;
        }
        (configured / self.settings.cleanup_speedup.max(1))
            .max(DegradationSettings::MIN_CLEANUP_INTERVAL)
            .min(configured)
    }

    /// Follows `status` (the monitor's latest, after each sample): moves the level, subject to
    /// the dwell time, and acts; reports what it did.
    pub fn step(&mut self, status: MemoryStatus) -> StepReport {
        let now = self.clock.now();
        let target = status.level;
        let from = self.level;
        let mut actions = Vec::new();
        let mut held_for = None;
        let mut cleanup_now = false;

        if target > from {
            self.enter(target, from, now, &mut actions);
            cleanup_now = true;
        } else if target < from {
            let dwelt = now.saturating_duration_since(self.since);
            if dwelt >= self.settings.min_dwell {
                self.leave(target, now, &mut actions);
            } else {
                held_for = Some(self.settings.min_dwell - dwelt);
            }
        } else if from == MemoryLevel::Critical && self.above_critical(status) {
            self.critical_relief(&mut actions);
        }

        StepReport {
            level: self.level,
            since_unix_ms: self.since_unix_ms,
            transition: (self.level != from).then_some(Transition {
                from,
                to: self.level,
            }),
            held_for,
            actions,
            cleanup_now,
        }
    }

    /// Rises from `from` to `to` and does each newly entered level's entry actions.
    fn enter(
        &mut self,
        to: MemoryLevel,
        from: MemoryLevel,
        now: Instant,
        actions: &mut Vec<ReliefAction>,
    ) {
        self.set_level(to, now);
        if from < MemoryLevel::High {
            // Level 2's relief trims too, on every step: trim here only when stopping at 1.
            if to < MemoryLevel::Critical {
                let fraction = self.settings.trim_fraction;
                let freed_bytes = self.relief.trim(fraction);
                actions.push(ReliefAction::Trimmed {
                    fraction,
                    freed_bytes,
                });
            }
            self.raise_batch_delay(to, actions);
        }
        if to == MemoryLevel::Critical {
            if !self.refusing {
                self.relief.refuse_connections(true);
                self.refusing = true;
                actions.push(ReliefAction::RefuseConnections(true));
            }
            self.critical_relief(actions);
        }
    }

    /// Falls to `to` and undoes what the levels left behind did.
    fn leave(&mut self, to: MemoryLevel, now: Instant, actions: &mut Vec<ReliefAction>) {
        self.set_level(to, now);
        if to < MemoryLevel::Critical && self.refusing {
            self.relief.refuse_connections(false);
            self.refusing = false;
            actions.push(ReliefAction::RefuseConnections(false));
        }
        if to == MemoryLevel::Normal {
            self.restore_batch_delay(actions);
            self.relief.trim(1.0);
            actions.push(ReliefAction::CapsLifted);
        }
    }

    /// The level-2 relief repeated on each step: trim again (what level 1 does, for history
    /// that grew back), shed optional frames, close the idlest.
    fn critical_relief(&self, actions: &mut Vec<ReliefAction>) {
        let fraction = self.settings.trim_fraction;
        let freed_bytes = self.relief.trim(fraction);
        actions.push(ReliefAction::Trimmed {
            fraction,
            freed_bytes,
        });
        let frames = self.relief.shed_optional();
        actions.push(ReliefAction::ShedOptional { frames });
        let asked = self.settings.close_per_step;
        let closed = self.relief.close_idlest(asked);
        actions.push(ReliefAction::ClosedIdlest { asked, closed });
    }

    /// Raises `message_batch_delay_ms` to the setting when it is lower, remembering the value
    /// before (unless an earlier rise is still in place).
    fn raise_batch_delay(&mut self, level: MemoryLevel, actions: &mut Vec<ReliefAction>) {
        let target = self.settings.batch_delay_ms;
        let current = self.runtime.get(RuntimeKey::MessageBatchDelayMs);
        if self.batch_delay.is_some() || current >= target {
            return;
        }
        let reason = ChangeReason::Degradation {
            level: level.number(),
        };
        match self
            .runtime
            .set(RuntimeKey::MessageBatchDelayMs, target, reason)
        {
            Ok(before_ms) => {
                self.batch_delay = Some(BatchDelayChange {
                    before_ms,
                    set_ms: target,
                });
                actions.push(ReliefAction::BatchDelayRaised {
                    from_ms: before_ms,
                    to_ms: target,
                });
            }
            Err(error) => actions.push(ReliefAction::ConfigRefused(error)),
        }
    }

    /// Puts `message_batch_delay_ms` back, unless someone changed it meanwhile.
    fn restore_batch_delay(&mut self, actions: &mut Vec<ReliefAction>) {
        let Some(change) = self.batch_delay.take() else {
            return;
        };
        let current = self.runtime.get(RuntimeKey::MessageBatchDelayMs);
        if current != change.set_ms {
            actions.push(ReliefAction::BatchDelayLeft {
                current_ms: current,
            });
            return;
        }
        let reason = ChangeReason::Degradation { level: 0 };
        match self
            .runtime
            .set(RuntimeKey::MessageBatchDelayMs, change.before_ms, reason)
        {
            Ok(_) => actions.push(ReliefAction::BatchDelayRestored {
                to_ms: change.before_ms,
            }),
            Err(error) => actions.push(ReliefAction::ConfigRefused(error)),
        }
    }

    /// Whether `status` is at or above the critical threshold.
    fn above_critical(&self, status: MemoryStatus) -> bool {
        status
            .pressure_bp()
            .is_some_and(|bp| bp >= self.thresholds.enter_bp(MemoryLevel::Critical))
    }

    /// Moves to `level` as of `now`.
    fn set_level(&mut self, level: MemoryLevel, now: Instant) {
        self.level = level;
        self.since = now;
        self.since_unix_ms = self.clock.unix_ms();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex, PoisonError},
        time::Duration,
    };

    use herald_config::{BaseConfig, ChangeReason, RuntimeConfig, RuntimeKey};
    use herald_utils::ManualClock;

    use crate::{
        degradation::{DegradationSettings, ProgressiveDegradation, ReliefAction, StepReport},
        level::{
            MemoryLevel::{self, Critical, High, Normal},
            Thresholds,
        },
        monitor::MemoryStatus,
        probe::MemoryReading,
        relief::Relief,
    };

    /// One call made on the relief.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Trim(f64),
        Refuse(bool),
        Shed,
        Close(usize),
    }

    /// A relief that records its calls and answers fixed amounts.
    #[derive(Default)]
    struct RecordingRelief(Mutex<Vec<Call>>);

    impl RecordingRelief {
        fn record(&self, call: Call) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(call);
        }

        /// The calls since the last `take`.
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    impl Relief for RecordingRelief {
        fn trim(&self, fraction: f64) -> u64 {
            self.record(Call::Trim(fraction));
            1_000
        }

        fn refuse_connections(&self, refuse: bool) {
            self.record(Call::Refuse(refuse));
        }

        fn shed_optional(&self) -> u64 {
            self.record(Call::Shed);
            7
        }

        fn close_idlest(&self, count: usize) -> usize {
            self.record(Call::Close(count));
            count.min(3)
        }
    }

    const BUDGET: u64 = 1_000;
    const START_UNIX_MS: u64 = 1_700_000_000_000;

    struct Run {
        relief: Arc<RecordingRelief>,
        runtime: Arc<RuntimeConfig>,
        clock: ManualClock,
        degradation: ProgressiveDegradation,
    }

    impl Run {
        /// Degradation at 85 % and 95 %, with the default settings, the batch delay at
        /// `batch_delay_ms`.
        fn new(batch_delay_ms: u64) -> Self {
            let relief = Arc::new(RecordingRelief::default());
            let runtime = Arc::new(RuntimeConfig::new(&BaseConfig::default()));
            runtime
                .set(
                    RuntimeKey::MessageBatchDelayMs,
                    batch_delay_ms,
                    ChangeReason::Operator,
                )
                .expect("in range");
            let clock = ManualClock::at_unix_ms(START_UNIX_MS);
            let degradation = ProgressiveDegradation::new(
                Arc::clone(&relief) as Arc<dyn Relief>,
                Arc::clone(&runtime),
                Arc::new(clock.clone()),
                Thresholds::new(85, 95).expect("valid"),
                DegradationSettings::default(),
            );
            Self {
                relief,
                runtime,
                clock,
                degradation,
            }
        }

        /// `after` later, the monitor says `level` at `used` of 1000 bytes.
        fn step(&mut self, after: Duration, level: MemoryLevel, used: u64) -> StepReport {
            self.clock.advance(after);
            self.degradation.step(MemoryStatus {
                reading: MemoryReading {
                    used_bytes: used,
                    limit_bytes: Some(BUDGET),
                    ..MemoryReading::default()
                },
                level,
            })
        }

        fn batch_delay(&self) -> u64 {
            self.runtime.get(RuntimeKey::MessageBatchDelayMs)
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn rising_to_high_trims_raises_the_batch_delay_and_asks_for_cleanup() {
        let mut run = Run::new(2);
        let report = run.step(SECOND, High, 870);
        assert_eq!(report.level, High);
        assert_eq!(report.since_unix_ms, START_UNIX_MS + 1_000);
        assert!(report.cleanup_now);
        assert_eq!(
            report.actions,
            [
                ReliefAction::Trimmed {
                    fraction: 0.5,
                    freed_bytes: 1_000
                },
                ReliefAction::BatchDelayRaised {
                    from_ms: 2,
                    to_ms: 10
                },
            ]
        );
        assert_eq!(run.relief.take(), [Call::Trim(0.5)]);
        assert_eq!(run.batch_delay(), 10);
        assert!(run.degradation.cleanup_due_sooner());
        assert_eq!(
            run.degradation.cleanup_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );

        // Staying high does nothing more.
        let report = run.step(SECOND, High, 880);
        assert!(report.is_quiet() && !report.cleanup_now, "{report:?}");
        assert_eq!(run.relief.take(), []);
    }

    #[test]
    fn rising_to_critical_refuses_sheds_and_closes_on_each_step_above_the_threshold() {
        let mut run = Run::new(0);
        run.step(SECOND, High, 870);
        run.relief.take();

        let report = run.step(SECOND, Critical, 960);
        assert_eq!(report.level, Critical);
        assert_eq!(report.since_unix_ms, START_UNIX_MS + 2_000);
        assert!(report.cleanup_now);
        assert_eq!(
            run.relief.take(),
            [
                Call::Refuse(true),
                Call::Trim(0.5),
                Call::Shed,
                Call::Close(50)
            ]
        );
        assert!(report.actions.contains(&ReliefAction::ClosedIdlest {
            asked: 50,
            closed: 3
        }));

        // Still above 95 %: trim, shed and close again, without refusing twice.
        run.step(SECOND, Critical, 955);
        assert_eq!(
            run.relief.take(),
            [Call::Trim(0.5), Call::Shed, Call::Close(50)]
        );
        // Critical but under the threshold (the hysteresis band): nothing more.
        let report = run.step(SECOND, Critical, 920);
        assert!(report.is_quiet(), "{report:?}");
        assert_eq!(run.relief.take(), []);
        assert_eq!(run.degradation.since_unix_ms(), START_UNIX_MS + 2_000);
    }

    #[test]
    fn a_jump_from_normal_to_critical_does_both_levels() {
        let mut run = Run::new(0);
        let report = run.step(SECOND, Critical, 990);
        assert_eq!(
            report.transition.map(|t| (t.from, t.to)),
            Some((Normal, Critical))
        );
        assert_eq!(
            run.relief.take(),
            [
                Call::Refuse(true),
                Call::Trim(0.5),
                Call::Shed,
                Call::Close(50)
            ]
        );
        assert_eq!(run.batch_delay(), 10);
    }

    #[test]
    fn no_level_is_left_within_the_dwell_time() {
        let mut run = Run::new(0);
        run.step(SECOND, Critical, 990);
        run.relief.take();
        // Usage falls at once, and flaps: the level holds for 30 s from entry.
        let report = run.step(SECOND, Normal, 100);
        assert_eq!(report.level, Critical);
        assert_eq!(report.held_for, Some(Duration::from_secs(29)));
        run.step(SECOND * 10, High, 870);
        run.step(SECOND * 10, Normal, 100);
        let report = run.step(SECOND * 8, Normal, 100);
        assert_eq!(report.level, Critical);
        assert_eq!(report.held_for, Some(SECOND));
        assert_eq!(run.relief.take(), []);
        assert_eq!(run.batch_delay(), 10);

        // 30 s after entry it may fall, and straight to normal.
        let report = run.step(SECOND, Normal, 100);
        assert_eq!(report.level, Normal);
        assert_eq!(
            report.transition.map(|t| (t.from, t.to)),
            Some((Critical, Normal))
        );
        assert_eq!(run.relief.take(), [Call::Refuse(false), Call::Trim(1.0)]);
    }

    #[test]
    fn recovery_lifts_the_refusal_and_restores_the_batch_delay() {
        let mut run = Run::new(3);
        run.step(SECOND, Critical, 990);
        run.relief.take();
        assert_eq!(run.batch_delay(), 10);

        // Down to high after the dwell: the refusal is lifted, the batch delay stays.
        let report = run.step(SECOND * 30, High, 870);
        assert_eq!(report.level, High);
        assert_eq!(report.actions, [ReliefAction::RefuseConnections(false)]);
        assert_eq!(run.relief.take(), [Call::Refuse(false)]);
        assert_eq!(run.batch_delay(), 10);

        // Down to normal, another dwell later: the batch delay is back.
        assert_eq!(run.step(SECOND * 29, Normal, 100).level, High);
        let report = run.step(SECOND, Normal, 100);
        assert_eq!(report.level, Normal);
        assert_eq!(
            report.actions,
            [
                ReliefAction::BatchDelayRestored { to_ms: 3 },
                ReliefAction::CapsLifted
            ]
        );
        assert_eq!(run.batch_delay(), 3);
        assert!(!run.degradation.cleanup_due_sooner());
        assert_eq!(
            run.degradation.cleanup_interval(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(run.relief.take(), [Call::Trim(1.0)]);
    }

    #[test]
    fn an_operators_batch_delay_survives_recovery() {
        let mut run = Run::new(0);
        run.step(SECOND, High, 870);
        run.runtime
            .set(RuntimeKey::MessageBatchDelayMs, 25, ChangeReason::Operator)
            .expect("in range");
        let report = run.step(SECOND * 30, Normal, 100);
        assert_eq!(
            report.actions,
            [
                ReliefAction::BatchDelayLeft { current_ms: 25 },
                ReliefAction::CapsLifted
            ]
        );
        assert_eq!(run.batch_delay(), 25);
    }

    #[test]
    fn a_batch_delay_already_high_enough_is_left_alone() {
        let mut run = Run::new(40);
        let report = run.step(SECOND, High, 870);
        assert!(
            !report
                .actions
                .iter()
                .any(|a| matches!(a, ReliefAction::BatchDelayRaised { .. }))
        );
        run.step(SECOND * 30, Normal, 100);
        assert_eq!(run.batch_delay(), 40);
    }

    #[test]
    fn the_sped_up_cleanup_interval_is_never_under_a_second() {
        let mut run = Run::new(0);
        run.step(SECOND, High, 870);
        assert_eq!(
            run.degradation.cleanup_interval(Duration::from_secs(2)),
            SECOND
        );
        assert_eq!(
            run.degradation.cleanup_interval(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }
}
