//! The [`HealthCheck`] seam and what a check answers: a [`CheckResult`].

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

/// One component's health. `herald-core` implements it for the gateway, the service for the
/// memory monitor; the [`HealthChecker`](crate::HealthChecker) asks every check on every
/// health request.
pub trait HealthCheck: Send + Sync {
    /// The component's name: its key under `components` in `/health`. Unique per checker.
    fn name(&self) -> &'static str;

    /// The component's health now. Runs on every probe request, so it must be cheap and must
    /// not block: read a snapshot, do not measure.
    fn check(&self) -> CheckResult;
}

impl<T: HealthCheck + ?Sized> HealthCheck for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn check(&self) -> CheckResult {
        (**self).check()
    }
}

/// How a component is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Working as intended.
    Ok,
    /// Working, with less headroom or fewer features than intended (e.g. memory high).
    Degraded,
    /// Not working. A required check failing makes the process not ready.
    Failing,
    /// Shutting down on purpose: not ready, but nothing is wrong.
    Draining,
}

/// What a check answers: a status, an optional message for people, and named values.
///
/// Serialized flat, as `/health` shows a component:
/// `{"status":"ok","connections":3,"maxConnections":10000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// How the component is doing.
    pub status: CheckStatus,
    /// Why, for people; absent when there is nothing to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Named measurements (counts, bytes), keyed by camelCase names other than `status` and
    /// `message`.
    #[serde(flatten)]
    pub values: BTreeMap<&'static str, u64>,
}

impl CheckResult {
    /// A result with `status`, no message and no values.
    pub fn new(status: CheckStatus) -> Self {
        Self {
            status,
            message: None,
            values: BTreeMap::new(),
        }
    }

    /// The same result with `message`.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The same result with the value `name` set to `value`.
    #[must_use]
    pub fn with_value(mut self, name: &'static str, value: u64) -> Self {
        self.values.insert(name, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::check::{CheckResult, CheckStatus};

    #[track_caller]
    fn check(result: &CheckResult, expected: &str) {
        assert_eq!(serde_json::to_string(result).expect("serializes"), expected);
    }

    #[test]
    fn a_bare_result_is_its_status() {
        check(&CheckResult::new(CheckStatus::Ok), r#"{"status":"ok"}"#);
    }

    #[test]
    fn values_and_message_sit_beside_the_status() {
        check(
            &CheckResult::new(CheckStatus::Degraded)
                .with_message("memory at 90% of the budget")
                .with_value("usedBytes", 90)
                .with_value("limitBytes", 100),
            r#"{"status":"degraded","message":"memory at 90% of the budget","limitBytes":100,"usedBytes":90}"#,
        );
    }

    #[test]
    fn statuses_are_snake_case() {
        check(
            &CheckResult::new(CheckStatus::Failing),
            r#"{"status":"failing"}"#,
        );
        check(
            &CheckResult::new(CheckStatus::Draining),
            r#"{"status":"draining"}"#,
        );
    }
}
