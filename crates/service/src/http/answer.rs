//! The body of every HTTP answer: a whole body ([`Body::Full`], what almost every route
//! answers, with no allocation beyond its bytes and an exact `Content-Length`) or a stream
//! that stays open ([`Body::Stream`], the dashboard's server-sent events).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{Full, combinators::UnsyncBoxBody};
use hyper::body::{Frame, SizeHint};
use serde::Serialize;

use crate::respond::{ApiError, encoded_json_response, json_response};

/// An answer's body.
pub(crate) enum Body {
    /// The whole body at once.
    Full(Full<Bytes>),
    /// Frames produced while the connection stays open; boxed, since only a long-lived route
    /// pays for it.
    Stream(UnsyncBoxBody<Bytes, Infallible>),
}

impl From<Full<Bytes>> for Body {
    fn from(body: Full<Bytes>) -> Self {
        Self::Full(body)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Both variants are `Unpin`: `Full` holds bytes, the stream is boxed.
        match self.get_mut() {
            Self::Full(body) => Pin::new(body).poll_frame(cx),
            Self::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(body) => body.is_end_stream(),
            Self::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(body) => body.size_hint(),
            Self::Stream(body) => body.size_hint(),
        }
    }
}

/// `body` as JSON with `status` (`respond::json_response` with this module's body).
pub(super) fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    json_response(status, body).map(Body::Full)
}

/// JSON text already encoded (a directly written answer), with `status`.
pub(super) fn encoded_json(status: StatusCode, json: String) -> Response<Body> {
    encoded_json_response(status, json).map(Body::Full)
}

/// The answer to a refused request.
pub(super) fn refusal(error: ApiError) -> Response<Body> {
    error.into_response().map(Body::Full)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use hyper::body::Body as _;

    use super::*;

    #[tokio::test]
    async fn a_full_body_keeps_its_length_and_bytes() {
        let body = Body::from(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.map(|b| b.to_bytes());
        assert_eq!(bytes.ok().as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn a_stream_yields_its_frames_in_order() {
        let frames = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]));
        let body = Body::Stream(UnsyncBoxBody::new(frames));
        assert_eq!(body.size_hint().exact(), None);
        let bytes = body.collect().await.map(|b| b.to_bytes());
        assert_eq!(bytes.ok().as_deref(), Some(&b"ab"[..]));
    }
}
