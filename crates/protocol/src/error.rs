//! Error codes of the wire contract and the error a refused frame or body becomes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::request_kind::RequestKind;

/// An error code of docs/protocol.md, sent in `error` frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is malformed or breaks a rule of the contract.
    BadRequest,
    /// No valid token: not authenticated yet, or the token is bad or expired.
    Unauthorized,
    /// Authenticated, but the token's claims do not allow this.
    Forbidden,
    /// The addressed connection, topic or route does not exist.
    NotFound,
    /// Too many requests; retry later.
    RateLimited,
    /// The frame or body is larger than the configured limit.
    PayloadTooLarge,
    /// The user's connection limit refused a connection (policy `reject`).
    LimitExceeded,
    /// The server is full, draining or under memory pressure; retry later.
    Unavailable,
    /// A bug or an unexpected failure inside the server.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order docs/protocol.md lists them.
    pub const ALL: [Self; 9] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::RateLimited,
        Self::PayloadTooLarge,
        Self::LimitExceeded,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::LimitExceeded => "limit_exceeded",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that carries this code at the handshake or on the HTTP API.
    ///
    /// `limit_exceeded` is 429, as docs/protocol.md's handshake rule for policy `reject` requires.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::RateLimited | Self::LimitExceeded => 429,
            Self::PayloadTooLarge => 413,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of an `error` frame or of an HTTP error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people: a client developer should be able to act on it.
    pub message: String,
    /// When to retry, in milliseconds; omitted when absent. HTTP answers use the
    /// `Retry-After` header instead and leave this out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ErrorDetail {
    /// An error detail without `retryAfter`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Why a client frame or an HTTP body was refused, with what the reply needs to echo.
///
/// `message_id` holds the frame's `messageId` whenever the frame was a JSON object with a
/// string `messageId`, even if the rest of the frame (or the id itself) was bad, so the
/// `error` reply can carry it. `kind` is set when `type` named a known request, because the
/// server answers those with `unauthorized` before authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// The `messageId` to echo in the `error` reply.
    pub message_id: Option<String>,
    /// The request type, when `type` was a known one.
    pub kind: Option<RequestKind>,
    /// The error code for the reply.
    pub code: ErrorCode,
    /// A message a client developer can act on.
    pub message: String,
}

impl ProtocolError {
    /// An error with no `messageId` and no request kind.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            message_id: None,
            kind: None,
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` error with no `messageId` and no request kind.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The `error` object for a reply frame or an HTTP body.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail::new(self.code, self.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn codes_map_to_the_documented_http_statuses() {
        let statuses: Vec<u16> = ErrorCode::ALL
            .iter()
            .map(|code| code.http_status())
            .collect();
        assert_eq!(statuses, [400, 401, 403, 404, 429, 413, 429, 503, 500]);
    }
}
