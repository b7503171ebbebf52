//! [`GatewayError`]: why an operation of the gateway's API failed.

/// Why an operation of the gateway's API failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No such connection (or it has not authenticated yet).
    #[error("no connection {0}")]
    UnknownConnection(String),
    /// The gateway is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The user already has the maximum of unacknowledged critical events.
    #[error("user has {limit} unacknowledged events; retry after the client acknowledges some")]
    TooManyPending {
        /// The per-user limit.
        limit: usize,
    },
    /// A shared component the operation needs (the cluster's broker) cannot take it now; the
    /// text says why (HTTP 503 with Retry-After).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation queue is full; retry after the given time (HTTP 429).
    #[error("server busy: operation queue full, retry in {retry_after_ms} ms")]
    Overloaded {
        /// Suggested wait before retrying, in milliseconds.
        retry_after_ms: u64,
    },
}
