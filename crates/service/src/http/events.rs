//! A server-sent events body (`text/event-stream`) that sends the latest of something once per
//! period, read at the moment the connection can take it.
//!
//! Nothing is queued: an event is built only when hyper asks for the next frame, which it does
//! only while its write buffer has room, and ticks missed while a slow reader was not reading
//! are skipped, not caught up. A reader that stalls for a minute gets one event, the latest,
//! when it reads again, so a slow reader costs the same memory as a fast one.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::time::{Interval, MissedTickBehavior};

/// What the source of an [`Events`] stream has to send at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// A `data:` event with this JSON text (one line).
    Data(String),
    /// A last event named `end` with this JSON text; the stream ends after it.
    End(String),
}

/// A `text/event-stream` body: the first event at once, then one per period, each from
/// `source` at the moment it is sent.
pub(super) struct Events<F> {
    source: F,
    ticks: Interval,
    ended: bool,
}

impl<F: FnMut() -> Next> Events<F> {
    /// A stream that asks `source` for an event every `period`.
    pub(super) fn new(period: Duration, source: F) -> Self {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            source,
            ticks,
            ended: false,
        }
    }
}

/// One event in the wire format: optional `event:` line, one `data:` line, a blank line.
fn encode(next: Next) -> Bytes {
    let text = match next {
        Next::Data(json) => format!("data: {json}\n\n"),
        Next::End(json) => format!("event: end\ndata: {json}\n\n"),
    };
    Bytes::from(text)
}

impl<F: FnMut() -> Next + Unpin> Body for Events<F> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        ready!(this.ticks.poll_tick(cx));
        let next = (this.source)();
        this.ended = matches!(next, Next::End(_));
        Poll::Ready(Some(Ok(Frame::data(encode(next)))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, pin::pin};

    use super::*;

    const PERIOD: Duration = Duration::from_secs(1);

    /// A stream whose events count up, ending with `end` at the `end_at`-th.
    fn counting(end_at: u32) -> Events<impl FnMut() -> Next + Unpin> {
        let mut n = 0;
        Events::new(PERIOD, move || {
            n += 1;
            if n == end_at {
                Next::End(format!("{{\"n\":{n}}}"))
            } else {
                Next::Data(format!("{{\"n\":{n}}}"))
            }
        })
    }

    /// The next frame's text, or `None` at the end.
    async fn next<B: Body<Data = Bytes, Error = Infallible>>(body: Pin<&mut B>) -> Option<String> {
        let mut body = body;
        let frame = poll_fn(|cx| body.as_mut().poll_frame(cx)).await?;
        let data = frame.ok()?.into_data().ok()?;
        Some(String::from_utf8_lossy(&data).into_owned())
    }

    /// Whether the body has a frame ready without waiting.
    fn is_ready<B: Body>(body: Pin<&mut B>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        body.poll_frame(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_event_is_sent_at_once_then_one_per_period() {
        let mut body = pin!(counting(u32::MAX));
        assert_eq!(
            next(body.as_mut()).await.as_deref(),
            Some("data: {\"n\":1}\n\n")
        );
        assert!(!is_ready(body.as_mut()));
        tokio::time::advance(PERIOD).await;
        assert_eq!(
            next(body.as_mut()).await.as_deref(),
            Some("data: {\"n\":2}\n\n")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_reader_gets_only_the_latest_event() {
        let mut body = pin!(counting(u32::MAX));
        assert!(next(body.as_mut()).await.is_some());
        // A minute without reading: sixty ticks missed, none of them queued or built.
        tokio::time::advance(PERIOD * 60).await;
        assert_eq!(
            next(body.as_mut()).await.as_deref(),
            Some("data: {\"n\":2}\n\n")
        );
        assert!(!is_ready(body.as_mut()), "missed ticks are skipped");
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_event_ends_the_stream() {
        let mut body = pin!(counting(2));
        assert!(next(body.as_mut()).await.is_some());
        tokio::time::advance(PERIOD).await;
        assert_eq!(
            next(body.as_mut()).await.as_deref(),
            Some("event: end\ndata: {\"n\":2}\n\n")
        );
        assert!(body.is_end_stream());
        assert_eq!(next(body.as_mut()).await, None);
    }
}
