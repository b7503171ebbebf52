//! [`ClientError`]: why a request of the client failed, typed by the protocol's error codes.

use std::time::Duration;

use herald_protocol::{ErrorCode, ErrorDetail};

/// Why a request failed.
///
/// # Example
///
/// ```no_run
/// # async fn send(client: herald_client::Client) {
/// use herald_client::ClientError;
///
/// match client.publish("chat:1", &"hi").await {
///     Ok(ack) => println!("offset {}", ack.offset),
///     Err(ClientError::RateLimited { retry_after, .. }) => {
///         tokio::time::sleep(retry_after).await;
///     }
///     Err(ClientError::NotConnected) => println!("try again once connected"),
///     Err(other) => println!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// `rate_limited`: the tier's write budget or the server's operation queue; retry after
    /// `retry_after`.
    #[error("rate limited: {message} (retry after {retry_after:?})")]
    RateLimited {
        /// The server's message.
        message: String,
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// Any other `error` reply: `forbidden`, `bad_request`, `limit_exceeded`,
    /// `unavailable`, ...
    #[error("{code}: {message}")]
    Refused {
        /// The error code; branch on it.
        code: ErrorCode,
        /// The server's message, for people.
        message: String,
    },
    /// The client is not connected right now; nothing was sent.
    #[error("not connected")]
    NotConnected,
    /// The connection ended before the reply came; the request may or may not have been
    /// performed.
    #[error("connection lost before the reply")]
    ConnectionLost,
    /// No reply came within [`crate::ClientConfig::request_timeout`]; the request may or may
    /// not have been performed (a subscribe stays registered for the connections to come).
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The server's reply did not have the shape docs/protocol.md gives it.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// The request could not be encoded (for example a payload that is not valid JSON).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The token provider failed.
    #[error("token provider failed: {0}")]
    Token(#[from] crate::TokenError),
}

impl ClientError {
    /// The error an `error` frame's detail stands for.
    ///
    /// # Example
    ///
    /// ```
    /// use herald_client::{ClientError, protocol::{ErrorCode, ErrorDetail}};
    ///
    /// let mut detail = ErrorDetail::new(ErrorCode::RateLimited, "slow down");
    /// detail.retry_after = Some(1500);
    /// assert_eq!(
    ///     ClientError::from_detail(detail),
    ///     ClientError::RateLimited {
    ///         message: "slow down".into(),
    ///         retry_after: std::time::Duration::from_millis(1500),
    ///     }
    /// );
    /// ```
    pub fn from_detail(detail: ErrorDetail) -> Self {
        match (detail.code, detail.retry_after) {
            (ErrorCode::RateLimited, retry_after) => Self::RateLimited {
                message: detail.message,
                // The contract always sends `retryAfter` with `rate_limited`; one second is
                // the server's own default wait when it does not.
                retry_after: Duration::from_millis(retry_after.unwrap_or(1_000)),
            },
            (code, _) => Self::Refused {
                code,
                message: detail.message,
            },
        }
    }

    /// The protocol error code, for the errors the server sent.
    ///
    /// # Example
    ///
    /// ```
    /// use herald_client::{ClientError, protocol::ErrorCode};
    ///
    /// let error = ClientError::Refused { code: ErrorCode::Forbidden, message: "no".into() };
    /// assert_eq!(error.code(), Some(ErrorCode::Forbidden));
    /// assert_eq!(ClientError::NotConnected.code(), None);
    /// ```
    pub const fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::RateLimited { .. } => Some(ErrorCode::RateLimited),
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}
