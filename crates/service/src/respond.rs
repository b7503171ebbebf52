//! HTTP answers shared by the API and the WebSocket handshake: JSON bodies, the contract's error
//! shape, and reading the request's credentials and query.

use bytes::Bytes;
use herald_protocol::{ApiErrorBody, ErrorCode};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

/// `{"error": {code, message}}` with `status`.
pub(crate) fn error_response(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response<Full<Bytes>> {
    json_response(status, &ApiErrorBody::new(code, message))
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Serializing these plain data types cannot fail; an empty object is a safe fallback.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The credentials of an `Authorization: Bearer <credentials>` header. The scheme name is
/// case-insensitive (RFC 9110, section 11.1), so `bearer` and `BEARER` count too.
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
}

/// The percent-decoded value of `name` in a query string (`+` is a space).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(&value.replace('+', " ")))
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
        assert_eq!(percent_decode("chat%3A1"), "chat:1");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
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
