//! [`CircuitBreaker`]: a closed / open / half-open state machine on a [`Clock`] that stops
//! calls to a failing dependency for a while and lets a few probes test it before trusting it
//! again.
//!
//! - **Closed**: every call is let through; `failure_threshold` consecutive failures open it.
//! - **Open**: no call is let through until `open_for` has passed since it opened; the first
//!   call asked for after that moves it to half-open.
//! - **Half-open**: up to `half_open_probes` calls are let through at once; that many
//!   successes close it, one failure opens it again (for another `open_for`).
//!
//! Each call is a [`Permit`]: the caller reports [`succeeded`](Permit::succeeded) or
//! [`failed`](Permit::failed); a permit dropped without a report (its future was cancelled)
//! counts as failed. Permits taken before the last transition are stale: what they report is
//! ignored, so a slow call that started while closed cannot reopen a breaker that already
//! moved on.

use std::{
    fmt,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::clock::Clock;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until the open time has passed.
    Open,
    /// A limited number of probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in the order of [`code`](Self::code).
    pub const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// The state as a number: 0 closed, 1 open, 2 half-open (a metric gauge's value).
    pub fn code(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// The state's name: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, as reported to the breaker's observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
}

/// When a breaker opens and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open a closed breaker (at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets probes through.
    pub open_for: Duration,
    /// Probes let through at once while half-open, and successes that close it (at least 1).
    pub half_open_probes: u32,
}

/// Called on every transition, after the breaker's lock is released.
type Observer = Box<dyn Fn(Transition) + Send + Sync>;

/// The closed / open / half-open state machine (see the module documentation).
///
/// Shared by reference (`Arc<CircuitBreaker<_>>`) between everything that calls the same
/// dependency: one failure count and one state for all of them.
pub struct CircuitBreaker<C: Clock> {
    clock: C,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    /// Transitions into each state, indexed by [`BreakerState::code`].
    entered: [AtomicU64; 3],
    observer: Option<Observer>,
}

impl<C: Clock> fmt::Debug for CircuitBreaker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Bumped on every transition; permits of an older generation report nothing.
    generation: u64,
    /// Consecutive failures while closed.
    failures: u32,
    /// When it last opened.
    opened_at: Option<Instant>,
    /// Probes let through and not yet reported, while half-open.
    probes_in_flight: u32,
    /// Probe successes while half-open.
    probe_successes: u32,
}

/// Why a call was not let through: the breaker is open (or half-open with every probe taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The breaker's state.
    pub state: BreakerState,
    /// How long until it lets a probe through (zero when half-open).
    pub retry_after: Duration,
}

/// One call let through by a [`CircuitBreaker`]; report how it went.
#[must_use = "report the call's outcome; dropping the permit counts as a failure"]
pub struct Permit<'a, C: Clock> {
    breaker: &'a CircuitBreaker<C>,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl<C: Clock> fmt::Debug for Permit<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Permit<'_, C> {
    /// The call succeeded.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.report(self.generation, self.probe, true);
    }

    /// The call failed (an error or a timeout).
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.report(self.generation, self.probe, false);
    }
}

impl<C: Clock> Drop for Permit<'_, C> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.report(self.generation, self.probe, false);
        }
    }
}

impl<C: Clock> CircuitBreaker<C> {
    /// A closed breaker. Thresholds below 1 are taken as 1.
    pub fn new(clock: C, settings: BreakerSettings) -> Self {
        let settings = BreakerSettings {
            failure_threshold: settings.failure_threshold.max(1),
            half_open_probes: settings.half_open_probes.max(1),
            ..settings
        };
        Self {
            clock,
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                failures: 0,
                opened_at: None,
                probes_in_flight: 0,
                probe_successes: 0,
            }),
            entered: Default::default(),
            observer: None,
        }
    }

    /// Calls `observer` on every transition (after the breaker's lock is released, from the
    /// task whose call or report caused it).
    #[must_use]
    pub fn with_observer(mut self, observer: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// The state now. An open breaker whose open time has passed reads as open until the
    /// next call is asked for.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// How many times the breaker entered `state`.
    pub fn entered(&self, state: BreakerState) -> u64 {
        self.entered[usize::from(state.code())].load(Ordering::Relaxed)
    }

    /// Consecutive failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.lock().failures
    }

    /// Asks to make one call: a [`Permit`] when it may go through, or why not.
    pub fn try_call(&self) -> Result<Permit<'_, C>, Refused> {
        let mut transition = None;
        let result = {
            let mut inner = self.lock();
            if inner.state == BreakerState::Open {
                let since = inner.opened_at.map_or(Duration::MAX, |at| {
                    self.clock.now().saturating_duration_since(at)
                });
                if since < self.settings.open_for {
                    return Err(Refused {
                        state: BreakerState::Open,
                        retry_after: self.settings.open_for - since,
                    });
                }
                transition = Some(self.enter(&mut inner, BreakerState::HalfOpen));
            }
            match inner.state {
                BreakerState::HalfOpen
                    if inner.probes_in_flight + inner.probe_successes
                        >= self.settings.half_open_probes =>
                {
                    Err(Refused {
                        state: BreakerState::HalfOpen,
                        retry_after: Duration::ZERO,
                    })
                }
                state => {
                    let probe = state == BreakerState::HalfOpen;
                    if probe {
                        inner.probes_in_flight += 1;
                    }
                    Ok(Permit {
                        breaker: self,
                        generation: inner.generation,
                        probe,
                        reported: false,
                    })
                }
            }
        };
        self.notify(transition);
        result
    }

    /// Opens the breaker now, whatever its state (for a dependency known to be down, e.g.
    /// unreachable at start); an open one starts its open time afresh.
    pub fn trip(&self) {
        let transition = {
            let mut inner = self.lock();
            if inner.state == BreakerState::Open {
                inner.opened_at = Some(self.clock.now());
                None
            } else {
                Some(self.enter(&mut inner, BreakerState::Open))
            }
        };
        self.notify(transition);
    }

    /// Records how a call went.
    fn report(&self, generation: u64, probe: bool, success: bool) {
        let transition = {
            let mut inner = self.lock();
            if inner.generation != generation {
                return;
            }
            match (inner.state, success) {
                (BreakerState::Closed, true) => {
                    inner.failures = 0;
                    None
                }
                (BreakerState::Closed, false) => {
                    inner.failures = inner.failures.saturating_add(1);
                    (inner.failures >= self.settings.failure_threshold)
                        .then(|| self.enter(&mut inner, BreakerState::Open))
                }
                (BreakerState::HalfOpen, true) => {
                    if probe {
                        inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                    }
                    inner.probe_successes += 1;
                    (inner.probe_successes >= self.settings.half_open_probes)
                        .then(|| self.enter(&mut inner, BreakerState::Closed))
                }
                (BreakerState::HalfOpen, false) => Some(self.enter(&mut inner, BreakerState::Open)),
                // Permits are never handed out while open, and each transition bumps the
                // generation, so no current permit reports while open.
                (BreakerState::Open, _) => None,
            }
        };
        self.notify(transition);
    }

    /// Moves to `to`, resetting what the new state counts.
    fn enter(&self, inner: &mut Inner, to: BreakerState) -> Transition {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        inner.failures = 0;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        if to == BreakerState::Open {
            inner.opened_at = Some(self.clock.now());
        }
        self.entered[usize::from(to.code())].fetch_add(1, Ordering::Relaxed);
        Transition { from, to }
    }

    fn notify(&self, transition: Option<Transition>) {
        if let (Some(transition), Some(observer)) = (transition, &self.observer) {
            observer(transition);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;
    use crate::ManualClock;

    fn settings(failures: u32, open_ms: u64, probes: u32) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: failures,
            open_for: Duration::from_millis(open_ms),
            half_open_probes: probes,
        }
    }

    fn fail(breaker: &CircuitBreaker<ManualClock>) {
        breaker.try_call().expect("let through").failed();
    }

    fn succeed(breaker: &CircuitBreaker<ManualClock>) {
        breaker.try_call().expect("let through").succeeded();
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::new(clock, settings(3, 1_000, 1));
        fail(&breaker);
        fail(&breaker);
        succeed(&breaker);
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.consecutive_failures(), 2);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.entered(BreakerState::Open), 1);
    }

    #[test]
    fn open_refuses_until_the_open_time_has_passed_then_lets_probes_through() {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::new(clock.clone(), settings(1, 1_000, 2));
        fail(&breaker);
        clock.advance(Duration::from_millis(400));
        let refused = breaker.try_call().expect_err("open");
        assert_eq!(refused.state, BreakerState::Open);
        assert_eq!(refused.retry_after, Duration::from_millis(600));
        clock.advance(Duration::from_millis(600));
        let first = breaker.try_call().expect("a probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let second = breaker.try_call().expect("a second probe");
        let third = breaker.try_call().expect_err("two probes at most");
        assert_eq!(third.state, BreakerState::HalfOpen);
        first.succeeded();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        second.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.entered(BreakerState::HalfOpen), 1);
        assert_eq!(breaker.entered(BreakerState::Closed), 1);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_another_open_time() {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::new(clock.clone(), settings(1, 1_000, 1));
        fail(&breaker);
        clock.advance(Duration::from_millis(1_000));
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(999));
        assert!(breaker.try_call().is_err());
        clock.advance(Duration::from_millis(1));
        succeed(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn tripping_opens_it_at_once_for_the_open_time() {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::new(clock.clone(), settings(5, 100, 1));
        breaker.trip();
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(60));
        breaker.trip();
        clock.advance(Duration::from_millis(60));
        assert!(
            breaker.try_call().is_err(),
            "tripping again restarted the open time"
        );
        clock.advance(Duration::from_millis(40));
        succeed(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.entered(BreakerState::Open), 1);
    }

    #[test]
    fn a_dropped_permit_counts_as_a_failure() {
        let breaker = CircuitBreaker::new(ManualClock::new(), settings(1, 1_000, 1));
        drop(breaker.try_call().expect("closed"));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn a_late_report_from_before_a_transition_is_ignored() {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::new(clock.clone(), settings(1, 1_000, 1));
        let slow = breaker.try_call().expect("closed");
        fail(&breaker);
        clock.advance(Duration::from_millis(1_000));
        succeed(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed);
        slow.failed();
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "the stale failure is ignored"
        );
    }

    #[test]
    fn the_observer_hears_every_transition_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let clock = ManualClock::new();
        let record = Arc::clone(&seen);
        let breaker = CircuitBreaker::new(clock.clone(), settings(1, 10, 1))
            .with_observer(move |t| record.lock().expect("not poisoned").push((t.from, t.to)));
        fail(&breaker);
        clock.advance(Duration::from_millis(10));
        succeed(&breaker);
        use BreakerState::{Closed, HalfOpen, Open};
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
        assert_eq!(
            BreakerState::ALL.map(BreakerState::code),
            [0, 1, 2],
            "the gauge's values"
        );
    }

    /// One step of a random schedule.
    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        Call(bool),
        Hold,
        Release(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..300).prop_map(Step::Advance),
            any::<bool>().prop_map(Step::Call),
            Just(Step::Hold),
            any::<bool>().prop_map(Step::Release),
        ]
    }

    proptest! {
        /// Under any schedule of calls, held permits, reports and time: a closed breaker never
        /// refuses; an open one refuses with a wait no longer than the open time; never more
        /// probes than allowed are out; the observer hears every transition, in an order that
        /// ends in the state the breaker reports, and the counters agree with it.
        #[test]
        fn keeps_its_invariants_under_any_schedule(
            failures in 1u32..4,
            open_ms in 1u64..500,
            probes in 1u32..3,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let clock = ManualClock::new();
            let heard = Arc::new(Mutex::new(Vec::<Transition>::new()));
            let record = Arc::clone(&heard);
            let breaker = CircuitBreaker::new(clock.clone(), settings(failures, open_ms, probes))
                .with_observer(move |t| record.lock().expect("not poisoned").push(t));
            let mut held = Vec::new();
            for step in steps {
                let before = breaker.state();
                let refused = match step {
                    Step::Advance(ms) => {
                        clock.advance(Duration::from_millis(ms));
                        None
                    }
                    Step::Call(ok) => match breaker.try_call() {
                        Ok(permit) => {
                            if ok { permit.succeeded() } else { permit.failed() }
                            None
                        }
                        Err(refused) => Some(refused),
                    },
                    Step::Hold => match breaker.try_call() {
                        Ok(permit) => {
                            held.push(permit);
                            None
                        }
                        Err(refused) => Some(refused),
                    },
                    Step::Release(ok) => {
                        if let Some(permit) = held.pop() {
                            if ok { permit.succeeded() } else { permit.failed() }
                        }
                        None
                    }
                };
                if let Some(refused) = refused {
                    prop_assert_ne!(before, BreakerState::Closed);
                    prop_assert!(refused.retry_after <= Duration::from_millis(open_ms));
                }
                prop_assert!(breaker.consecutive_failures() < failures);
                let inner = breaker.lock();
                match inner.state {
                    BreakerState::HalfOpen => {
                        prop_assert!(inner.probes_in_flight + inner.probe_successes <= probes);
                    }
                    BreakerState::Closed => prop_assert_eq!(inner.probes_in_flight, 0),
                    BreakerState::Open => prop_assert!(inner.opened_at.is_some()),
                }
                drop(inner);
                let heard = heard.lock().expect("not poisoned");
                let expected_state = heard.last().map_or(BreakerState::Closed, |t| t.to);
                prop_assert_eq!(breaker.state(), expected_state);
                for pair in heard.windows(2) {
                    prop_assert_eq!(pair[0].to, pair[1].from);
                }
                for state in BreakerState::ALL {
                    let into = heard.iter().filter(|t| t.to == state).count() as u64;
                    prop_assert_eq!(breaker.entered(state), into);
                }
            }
        }
    }
}
