//! [`RedisBreaker`]: the circuit breaker every Redis call of a node goes through (the publish
//! script, forwarded operations, history fetches, the bus keep-alive, and any store that shares
//! it), with its transitions logged.

use std::{sync::Arc, time::Duration};

use herald_core::BrokerError;
use herald_utils::{BreakerSettings, BreakerState, CircuitBreaker, Clock, Transition};
use redis::{ErrorKind, RedisError};

/// The breaker around one node's Redis. Cheap to clone; clones share one state, so a failure
/// seen by one call path opens it for all of them.
///
/// A store over the same Redis shares the broker's breaker
/// ([`RedisBroker::breaker`](crate::RedisBroker::breaker)) and runs each of its commands
/// through [`call`](Self::call): then one outage opens one breaker, and the node reports one
/// state.
#[derive(Clone)]
pub struct RedisBreaker {
    inner: Arc<CircuitBreaker<Arc<dyn Clock>>>,
}

impl std::fmt::Debug for RedisBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBreaker")
            .field("state", &self.state())
            .finish()
    }
}

impl RedisBreaker {
    /// A closed breaker on `clock`; every transition is logged (a warning when it opens).
    pub fn new(clock: Arc<dyn Clock>, settings: BreakerSettings) -> Self {
        let inner = CircuitBreaker::new(clock, settings).with_observer(log_transition);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.inner.state()
    }

    /// How many times it entered `state` since start.
    pub fn entered(&self, state: BreakerState) -> u64 {
        self.inner.entered(state)
    }

    /// The settings in force.
    pub fn settings(&self) -> BreakerSettings {
        self.inner.settings()
    }

    /// Opens it now (Redis is known to be unreachable).
    pub fn trip(&self) {
        self.inner.trip();
    }

    /// Runs one Redis command through the breaker, for at most `timeout`.
    ///
    /// Refused at once while the breaker is open. A timeout, or an error that means Redis did
    /// not answer (I/O, a dropped connection), counts as a failure; an error Redis answered
    /// with (a wrong type, a script error) counts as a success, since Redis is up, and is
    /// returned as it is.
    pub async fn call<T>(
        &self,
        timeout: Duration,
        work: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BrokerError> {
        let permit = self.inner.try_call().map_err(|refused| {
            BrokerError::Unavailable(format!(
                "redis circuit breaker {}; retry in {} ms",
                refused.state,
                refused.retry_after.as_millis()
            ))
        })?;
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(value)) => {
                permit.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                if redis_answered(&error) {
                    permit.succeeded();
                } else {
                    permit.failed();
                }
                Err(BrokerError::Unavailable(format!("redis: {error}")))
            }
            Err(_) => {
                permit.failed();
                Err(BrokerError::Unavailable(format!(
                    "redis: no answer within {timeout:?}"
                )))
            }
        }
    }
}

/// Whether the error came from a Redis that answered (so the link is up).
fn redis_answered(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
    ) && !error.is_unrecoverable_error()
}

fn log_transition(transition: Transition) {
    let Transition { from, to } = transition;
    match to {
        BreakerState::Open => tracing::warn!(
            %from, %to,
            "redis circuit breaker opened: publications are delivered on this node only and kept in the outbox until redis is back"
        ),
        BreakerState::HalfOpen => {
            tracing::info!(%from, %to, "redis circuit breaker half-open: probing redis");
        }
        BreakerState::Closed => tracing::info!(
            %from, %to,
            "redis circuit breaker closed: redis answers again; replaying the outbox"
        ),
    }
}

#[cfg(test)]
mod tests {
    use herald_utils::ManualClock;

    use super::*;

    fn breaker(failures: u32) -> RedisBreaker {
        RedisBreaker::new(
            Arc::new(ManualClock::new()),
            BreakerSettings {
                failure_threshold: failures,
                open_for: Duration::from_secs(60),
                half_open_probes: 1,
            },
        )
    }

    fn io_error() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test]
    async fn io_errors_and_timeouts_open_it_and_then_calls_are_refused_without_running() {
        let breaker = breaker(2);
        let failed = breaker
            .call(Duration::from_secs(1), async { Err::<(), _>(io_error()) })
            .await;
        assert!(failed.is_err());
        assert_eq!(breaker.state(), BreakerState::Closed);
        let timed_out = breaker
            .call(
                Duration::from_millis(1),
                std::future::pending::<Result<(), _>>(),
            )
            .await;
        assert_eq!(
            timed_out,
            Err(BrokerError::Unavailable(
                "redis: no answer within 1ms".to_owned()
            ))
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        let ran = std::sync::atomic::AtomicBool::new(false);
        let refused = breaker
            .call(Duration::from_secs(1), async {
                ran.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
            .await;
        let Err(BrokerError::Unavailable(text)) = refused else {
            panic!("refused while open");
        };
        assert!(
            text.starts_with("redis circuit breaker open; retry in"),
            "{text}"
        );
        assert!(!ran.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn an_error_redis_answered_with_does_not_count_against_it() {
        let breaker = breaker(1);
        let answered = RedisError::from((ErrorKind::UnexpectedReturnType, "WRONGTYPE-like answer"));
        let result = breaker
            .call(Duration::from_secs(1), async { Err::<(), _>(answered) })
            .await;
        assert!(result.is_err());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
