//! Request bodies: at most `max_http_body_bytes` are read and decoded as JSON; a body over the
//! limit is a 413 and what is left of it is discarded (`linger`) before the connection closes.

use bytes::{Bytes, BytesMut};
use herald_protocol::{ErrorCode, parse_body};
use http::Request;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Incoming};
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
enum Unread<B: Body> {
    /// It is larger than the limit; this is the rest of it, not yet read.
    OverLimit(B),
    /// The client closed or sent a malformed body.
    Failed(B::Error),
}

/// Reads the whole body if it has at most `max` bytes (trailers are ignored).
///
/// A body that arrives as one frame, as most do, is kept as it came, without a copy; only a
/// body in several frames is joined into one buffer.
async fn read_limited<B: Body<Data = Bytes> + Unpin>(
    mut body: B,
    max: usize,
) -> Result<Bytes, Unread<B>> {
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Unread::Failed)?.into_data() else {
            continue;
        };
        let read = joined.as_ref().map_or(first.len(), BytesMut::len);
        if read + data.len() > max {
            return Err(Unread::OverLimit(body));
        }
        match &mut joined {
            Some(bytes) => bytes.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut bytes = BytesMut::with_capacity(first.len() + data.len());
                bytes.extend_from_slice(&first);
                bytes.extend_from_slice(&data);
                joined = Some(bytes);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    /// A body made of frames given in advance.
    type Frames = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// A body of `chunks`, one frame each, with a trailers frame in the middle.
    fn body(chunks: &[&'static str]) -> Frames {
        let mut frames: Vec<_> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
            .collect();
        frames.insert(
            frames.len() / 2,
            Ok(Frame::trailers(http::HeaderMap::new())),
        );
        StreamBody::new(stream::iter(frames))
    }

    async fn read(chunks: &[&'static str], max: usize) -> Option<Bytes> {
        read_limited(body(chunks), max).await.ok()
    }

    #[tokio::test]
    async fn a_body_is_read_whole_in_one_frame_or_several() {
        assert_eq!(read(&[], 10).await.as_deref(), Some(&b""[..]));
        assert_eq!(read(&[""], 10).await.as_deref(), Some(&b""[..]));
        assert_eq!(read(&["abc"], 10).await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(read(&["", "abc"], 10).await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(read(&["ab", "c"], 10).await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(
            read(&["a", "", "bc", "defg", "h"], 10).await.as_deref(),
            Some(&b"abcdefgh"[..])
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_whether_whole_or_in_frames() {
        assert_eq!(read(&["abcd"], 4).await.as_deref(), Some(&b"abcd"[..]));
        assert!(read(&["abcde"], 4).await.is_none());
        assert!(read(&["ab", "cde"], 4).await.is_none());
        assert!(read(&["a", "b", "c", "d", "e"], 4).await.is_none());
        assert_eq!(
            read(&["a", "b", "c", "d"], 4).await.as_deref(),
            Some(&b"abcd"[..])
        );
    }
}
