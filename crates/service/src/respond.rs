//! HTTP answers shared by the API and the WebSocket handshake: [`ApiError`], the one error type
//! behind the contract's `{"error": {code, message}}` shape, JSON bodies, and reading the
//! request's credentials and query.

use bytes::Bytes;
use herald_core::GatewayError;
use herald_protocol::{ApiErrorBody, ErrorCode, ProtocolError};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::head::Headers;

/// Seconds a client is told to wait (`Retry-After`) when the server is draining or a user has
/// too many unacknowledged events.
const RETRY_LATER_SECS: u64 = 5;

/// A refused HTTP request: the contract's error body, its status, when to retry and whether
/// the connection closes after the answer.
///
/// Every error answer of the HTTP API is built here, so the shape `{"error": {code, message}}`,
/// the status of each code and the `Retry-After` header are decided in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ApiErrorBody,
    /// `Retry-After`, in whole seconds.
    retry_after_secs: Option<u64>,
    /// Whether the answer carries `Connection: close` (the request's body is left unread).
    close: bool,
}

impl ApiError {
    /// An error with the status of its code.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::with_status(status_of(code), code, message)
    }

    /// An error with a status other than its code's (a handshake's 426, for instance).
    pub(crate) fn with_status(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            body: ApiErrorBody::new(code, message),
            retry_after_secs: None,
            close: false,
        }
    }

    /// `payload_too_large` for a body over `max` bytes.
    pub(crate) fn payload_too_large(max: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("body larger than {max} bytes"),
        )
    }

    /// The same error, answered with `Connection: close`.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The contract's body, for answers that carry errors item by item (a batch).
    pub(crate) fn into_body(self) -> ApiErrorBody {
        self.body
    }

    /// The HTTP answer.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status, &self.body);
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<ProtocolError> for ApiError {
    fn from(error: ProtocolError) -> Self {
        Self::new(error.code, error.message)
    }
}

impl From<GatewayError> for ApiError {
    /// 404, 503 or 429, with `Retry-After` where waiting helps.
    fn from(error: GatewayError) -> Self {
        let (code, retry_after_secs) = match &error {
            GatewayError::UnknownConnection(_) => (ErrorCode::NotFound, None),
            GatewayError::ShuttingDown => (ErrorCode::Unavailable, Some(RETRY_LATER_SECS)),
            GatewayError::Unavailable(_) => (ErrorCode::Unavailable, Some(RETRY_LATER_SECS)),
            GatewayError::Overloaded { retry_after_ms } => (
                ErrorCode::RateLimited,
                Some(retry_after_ms.div_ceil(1000).max(1)),
            ),
            GatewayError::TooManyPending { .. } => {
                (ErrorCode::LimitExceeded, Some(RETRY_LATER_SECS))
            }
        };
        Self {
            retry_after_secs,
            ..Self::new(code, error.to_string())
        }
    }
}

/// The status the contract gives `code`.
fn status_of(code: ErrorCode) -> StatusCode {
    // Every code's status is a valid one (400 to 503); 500 is the fallback a bug would get.
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `{"error": {code, message}}` with `status`.
pub(crate) fn error_response(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response<Full<Bytes>> {
    ApiError::with_status(status, code, message).into_response()
}

/// `body` as JSON with `status`.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Serializing these plain data types cannot fail; an empty object is a safe fallback.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    encoded_json_response(status, bytes)
}

/// JSON text already encoded, with `status`.
pub(crate) fn encoded_json_response(
    status: StatusCode,
    json: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(json.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The credentials of an `Authorization: Bearer <credentials>` header. The scheme name is
/// case-insensitive (RFC 9110, section 11.1), so `bearer` and `BEARER` count too.
pub(crate) fn bearer_token(headers: &impl Headers) -> Option<&str> {
    let value = headers.text(&header::AUTHORIZATION)?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
}

/// The percent-decoded value of `name` in a query string (`+` is a space).
///
/// A key or value with nothing to decode (a JWT in `?token=` has none) is compared or copied
/// as it is: this runs on every WebSocket handshake.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    let plain = |text: &str| !text.contains(['%', '+']);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let matches = if plain(key) {
            key == name
        } else {
            percent_decode(&key.replace('+', " ")) == name
        };
        matches.then(|| {
            if plain(value) {
                value.to_owned()
            } else {
                percent_decode(&value.replace('+', " "))
            }
        })
    })
}

/// Decodes `%XX` escapes; malformed escapes are kept as written, invalid UTF-8 is replaced.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll, Waker},
    };

    use hyper::body::Body as _;

    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param("token=a.b.c&thread=t%201", "thread").as_deref(),
            Some("t 1")
        );
        assert_eq!(
            query_param("token=a.b.c", "token").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(
            query_param("t%68read=x+y&b=2", "thread").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param("a=1&token=", "token").as_deref(), Some(""));
        assert_eq!(query_param("a=1&token", "token").as_deref(), Some(""));
        assert_eq!(percent_decode("chat%3A1"), "chat:1");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }

    #[track_caller]
    fn check_error(error: ApiError, status: u16, body: &str, retry_after: Option<&str>) {
        let response = error.into_response();
        assert_eq!(response.status().as_u16(), status);
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
        };
        assert_eq!(header(header::RETRY_AFTER).as_deref(), retry_after);
        assert_eq!(
            header(header::CONTENT_TYPE).as_deref(),
            Some("application/json")
        );
        let bytes =
            Pin::new(&mut response.into_body()).poll_frame(&mut Context::from_waker(Waker::noop()));
        let Poll::Ready(Some(Ok(frame))) = bytes else {
            panic!("no body")
        };
        assert_eq!(frame.into_data().unwrap(), body.as_bytes());
    }

    #[test]
    fn gateway_errors_map_to_status_and_retry_after() {
        check_error(
            GatewayError::Overloaded {
                retry_after_ms: 1_001,
            }
            .into(),
            429,
            r#"{"error":{"code":"rate_limited","message":"server busy: operation queue full, retry in 1001 ms"}}"#,
            Some("2"),
        );
        check_error(
            GatewayError::Overloaded { retry_after_ms: 0 }.into(),
            429,
            r#"{"error":{"code":"rate_limited","message":"server busy: operation queue full, retry in 0 ms"}}"#,
            Some("1"),
        );
        check_error(
            GatewayError::ShuttingDown.into(),
            503,
            r#"{"error":{"code":"unavailable","message":"server is shutting down"}}"#,
            Some("5"),
        );
        check_error(
            GatewayError::TooManyPending { limit: 3 }.into(),
            429,
            r#"{"error":{"code":"limit_exceeded","message":"user has 3 unacknowledged events; retry after the client acknowledges some"}}"#,
            Some("5"),
        );
        check_error(
            GatewayError::UnknownConnection("7".to_owned()).into(),
            404,
            r#"{"error":{"code":"not_found","message":"no connection 7"}}"#,
            None,
        );
    }

    #[test]
    fn protocol_errors_and_limits_keep_their_code_and_status() {
        check_error(
            ProtocolError::bad_request("topic: empty").into(),
            400,
            r#"{"error":{"code":"bad_request","message":"topic: empty"}}"#,
            None,
        );
        check_error(
            ApiError::payload_too_large(1024),
            413,
            r#"{"error":{"code":"payload_too_large","message":"body larger than 1024 bytes"}}"#,
            None,
        );
        let response = ApiError::payload_too_large(1).closing().into_response();
        assert_eq!(
            response
                .headers()
                .get(header::CONNECTION)
                .map(HeaderValue::as_bytes),
            Some(&b"close"[..])
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            bearer_token(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(with("bearer a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(with("BEARER  a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(with("Basic dXNlcjpwYXNz"), None);
        assert_eq!(with("Bearer"), None);
        assert_eq!(bearer_token(&http::HeaderMap::new()), None);
    }
}
