//! [`HealthChecker`]: asks every [`HealthCheck`] and answers `/health/live`,
//! `/health/ready` and `/health`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{CheckResult, CheckStatus, HealthCheck};

/// The process's health checks, and the three answers built from them:
///
/// - [`live`](Self::live): always ok while the process can answer; no check makes it fail,
///   because a restart cures none of them;
/// - [`ready`](Self::ready): false while any check is [draining](CheckStatus::Draining) or a
///   required check is [failing](CheckStatus::Failing);
/// - [`report`](Self::report): every check with its status, message and values.
///
/// A required check decides readiness; an informational one only shows in the report
/// (failing there makes the overall status degraded).
#[derive(Default)]
pub struct HealthChecker {
    checks: Vec<Registered>,
}

struct Registered {
    check: Box<dyn HealthCheck>,
    required: bool,
}

/// The `/health/live` answer: `{"status":"ok"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LiveResponse {
    /// Always [`CheckStatus::Ok`].
    pub status: CheckStatus,
}

/// The `/health/ready` answer, e.g. `{"status":"not_ready","failing":["broker"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyResponse {
    /// Whether the process takes traffic.
    pub status: ReadyStatus,
    /// The required checks that are failing, by name; absent when none is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
}

/// Whether the process takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Ready: answer 200.
    Ready,
    /// Draining for shutdown: answer 503.
    ShuttingDown,
    /// A required check is failing: answer 503.
    NotReady,
}

/// The `/health` answer, e.g.
/// `{"status":"ok","components":{"gateway":{"status":"ok","connections":3,"maxConnections":10000}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The worst of the components, as [`OverallStatus`] ranks them.
    pub status: OverallStatus,
    /// Every check's result, by name.
    pub components: BTreeMap<&'static str, CheckResult>,
}

/// The process's health as a whole, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverallStatus {
    /// Every check is ok.
    Ok,
    /// A check is degraded, or an informational check is failing; still ready.
    Degraded,
    /// A required check is failing: not ready.
    Failing,
    /// A check is draining: the process is shutting down, not ready.
    ShuttingDown,
}

impl HealthChecker {
    /// A checker with no checks: live, ready and ok.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check that decides readiness.
    #[must_use]
    pub fn required(self, check: impl HealthCheck + 'static) -> Self {
        self.with(check, true)
    }

    /// Adds a check that only shows in the report.
    #[must_use]
    pub fn informational(self, check: impl HealthCheck + 'static) -> Self {
        self.with(check, false)
    }

    fn with(mut self, check: impl HealthCheck + 'static, required: bool) -> Self {
        debug_assert!(
            self.checks.iter().all(|r| r.check.name() != check.name()),
            "two health checks named {}",
            check.name()
        );
        self.checks.push(Registered {
            check: Box::new(check),
            required,
        });
        self
    }

    /// The `/health/live` answer: always ok.
    pub fn live(&self) -> LiveResponse {
        LiveResponse {
            status: CheckStatus::Ok,
        }
    }

    /// The `/health/ready` answer, from every check.
    pub fn ready(&self) -> ReadyResponse {
        let mut shutting_down = false;
        let mut failing = Vec::new();
        for registered in &self.checks {
            match registered.overall(&registered.check.check()) {
                OverallStatus::ShuttingDown => shutting_down = true,
                OverallStatus::Failing => failing.push(registered.check.name()),
                OverallStatus::Ok | OverallStatus::Degraded => {}
            }
        }
        let status = if shutting_down {
            ReadyStatus::ShuttingDown
        } else if failing.is_empty() {
            ReadyStatus::Ready
        } else {
            ReadyStatus::NotReady
        };
        ReadyResponse { status, failing }
    }

    /// The `/health` answer, from every check.
    pub fn report(&self) -> HealthReport {
        let mut status = OverallStatus::Ok;
        let mut components = BTreeMap::new();
        for registered in &self.checks {
            let result = registered.check.check();
            status = status.max(registered.overall(&result));
            components.insert(registered.check.name(), result);
        }
        HealthReport { status, components }
    }
}

impl Registered {
    /// What `result` of this check means for the process.
    fn overall(&self, result: &CheckResult) -> OverallStatus {
        match result.status {
            CheckStatus::Ok => OverallStatus::Ok,
            CheckStatus::Degraded => OverallStatus::Degraded,
            CheckStatus::Failing if self.required => OverallStatus::Failing,
            CheckStatus::Failing => OverallStatus::Degraded,
            CheckStatus::Draining => OverallStatus::ShuttingDown,
        }
    }
}

impl ReadyResponse {
    /// Whether to answer 200 (else 503).
    pub fn is_ready(&self) -> bool {
        self.status == ReadyStatus::Ready
    }
}

impl HealthReport {
    /// Whether to answer 200 (else 503): the same verdict as [`HealthChecker::ready`].
    pub fn is_ready(&self) -> bool {
        self.status <= OverallStatus::Degraded
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use serde_json::{Value, json};

    use crate::{
        check::{CheckResult, CheckStatus, HealthCheck},
        health::HealthChecker,
    };

    /// A check that answers what the test sets; clones share it.
    #[derive(Clone)]
    struct Fixed {
        name: &'static str,
        result: Arc<Mutex<CheckResult>>,
    }

    impl Fixed {
        fn new(name: &'static str, status: CheckStatus) -> Self {
            Self {
                name,
                result: Arc::new(Mutex::new(CheckResult::new(status))),
            }
        }

        fn set(&self, result: CheckResult) {
            *self.result.lock().unwrap_or_else(PoisonError::into_inner) = result;
        }
    }

    impl HealthCheck for Fixed {
        fn name(&self) -> &'static str {
            self.name
        }

        fn check(&self) -> CheckResult {
            self.result
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    fn json(value: &impl serde::Serialize) -> Value {
        serde_json::to_value(value).expect("serializes")
    }

    /// Checks the ready and report bodies and that both give the same verdict.
    #[track_caller]
    fn check(checker: &HealthChecker, ready: Value, report: Value) {
        let (ready_answer, report_answer) = (checker.ready(), checker.report());
        assert_eq!(json(&ready_answer), ready);
        assert_eq!(json(&report_answer), report);
        assert_eq!(ready_answer.is_ready(), report_answer.is_ready());
    }

    fn gateway(status: CheckStatus, connections: u64) -> CheckResult {
        CheckResult::new(status)
            .with_value("connections", connections)
            .with_value("maxConnections", 10_000)
    }

    #[test]
    fn live_is_always_ok() {
        let checker = HealthChecker::new().required(Fixed::new("broker", CheckStatus::Failing));
        assert_eq!(json(&checker.live()), json!({"status": "ok"}));
    }

    #[test]
    fn no_checks_is_ready_and_ok() {
        check(
            &HealthChecker::new(),
            json!({"status": "ready"}),
            json!({"status": "ok", "components": {}}),
        );
    }

    #[test]
    fn the_gateway_keeps_todays_health_shape() {
        let gateway_check = Fixed::new("gateway", CheckStatus::Ok);
        gateway_check.set(gateway(CheckStatus::Ok, 3));
        let checker = HealthChecker::new().required(gateway_check.clone());
        check(
            &checker,
            json!({"status": "ready"}),
            json!({"status": "ok", "components": {"gateway":
                {"status": "ok", "connections": 3, "maxConnections": 10_000}}}),
        );
        gateway_check.set(gateway(CheckStatus::Draining, 1));
        check(
            &checker,
            json!({"status": "shutting_down"}),
            json!({"status": "shutting_down", "components": {"gateway":
                {"status": "draining", "connections": 1, "maxConnections": 10_000}}}),
        );
    }

    #[test]
    fn a_failing_required_check_makes_the_process_not_ready() {
        let checker = HealthChecker::new()
            .required(Fixed::new("gateway", CheckStatus::Ok))
            .required(Fixed::new("broker", CheckStatus::Failing));
        check(
            &checker,
            json!({"status": "not_ready", "failing": ["broker"]}),
            json!({"status": "failing", "components": {
                "broker": {"status": "failing"}, "gateway": {"status": "ok"}}}),
        );
    }

    #[test]
    fn a_failing_informational_check_only_degrades() {
        let memory = Fixed::new("memory", CheckStatus::Ok);
        memory.set(CheckResult::new(CheckStatus::Failing).with_message("memory critical"));
        let checker = HealthChecker::new()
            .required(Fixed::new("gateway", CheckStatus::Ok))
            .informational(memory);
        check(
            &checker,
            json!({"status": "ready"}),
            json!({"status": "degraded", "components": {
                "gateway": {"status": "ok"},
                "memory": {"status": "failing", "message": "memory critical"}}}),
        );
    }

    #[test]
    fn a_degraded_required_check_stays_ready() {
        let checker = HealthChecker::new().required(Fixed::new("gateway", CheckStatus::Degraded));
        check(
            &checker,
            json!({"status": "ready"}),
            json!({"status": "degraded", "components": {"gateway": {"status": "degraded"}}}),
        );
    }

    #[test]
    fn draining_wins_over_failing() {
        let checker = HealthChecker::new()
            .required(Fixed::new("gateway", CheckStatus::Draining))
            .required(Fixed::new("broker", CheckStatus::Failing));
        check(
            &checker,
            json!({"status": "shutting_down", "failing": ["broker"]}),
            json!({"status": "shutting_down", "components": {
                "broker": {"status": "failing"}, "gateway": {"status": "draining"}}}),
        );
    }

    #[test]
    fn a_shared_check_works_through_an_arc() {
        let shared = Arc::new(Fixed::new("gateway", CheckStatus::Ok));
        let checker = HealthChecker::new().required(Arc::clone(&shared));
        shared.set(CheckResult::new(CheckStatus::Draining));
        assert!(!checker.ready().is_ready());
    }
}
