//! Request bodies: at most `max_http_body_bytes` are read and decoded as JSON; a body over the
//! limit is a 413 and what is left of it is discarded (`linger`) before the connection closes.

use bytes::{Bytes, BytesMut};
use herald_protocol::{ErrorCode, parse_body};
use http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::linger::{self, Progress};
use crate::{app::App, respond::ApiError};

/// Reads a JSON body of at most `max_http_body_bytes` and decodes it with
/// `protocol::parse_body` under the gateway's limits (a bad body is a 400).
pub(super) async fn read_json<T: DeserializeOwned>(
    app: &App,
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let max = app.config.max_http_body_bytes;
    let (parts, body) = request.into_parts();
    let refuse = |rest: Incoming, progress: Progress| {
        let error = ApiError::payload_too_large(max);
        if linger::discard(rest, &parts.headers, progress, max) {
            error.closing()
        } else {
            error
        }
    };
    if linger::declared_length(&parts.headers).is_some_and(|len| len > max as u64) {
        return Err(refuse(body, Progress::Unread));
    }
    let bytes = match read_limited(body, max).await {
        Ok(bytes) => bytes,
        Err(Unread::OverLimit(rest)) => return Err(refuse(rest, Progress::PartlyRead)),
        Err(Unread::Failed(error)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("cannot read body: {error}"),
            ));
        }
    };
    parse_body(&bytes, &app.gateway.settings().limits).map_err(ApiError::from)
}

/// Why a body was not read whole.
enum Unread {
    /// It is larger than the limit; this is the rest of it, not yet read.
    OverLimit(Incoming),
    /// The client closed or sent a malformed body.
    Failed(hyper::Error),
}

/// Reads the whole body if it has at most `max` bytes (trailers are ignored).
async fn read_limited(mut body: Incoming, max: usize) -> Result<Bytes, Unread> {
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Unread::Failed)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if bytes.len() + data.len() > max {
            return Err(Unread::OverLimit(body));
        }
        bytes.extend_from_slice(data);
    }
    Ok(bytes.freeze())
}
