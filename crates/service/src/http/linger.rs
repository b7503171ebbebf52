//! Lingering close for request bodies the server refuses (a body over the limit, a request
//! without a valid API key, an unknown route): the rest of the body is read and thrown away,
//! within bounds, so that the answer reaches a client that is still sending.
//!
//! Why: when a server closes a socket whose receive buffer holds unread data, or that data
//! keeps arriving, the kernel answers with a TCP reset instead of a FIN. A client still
//! writing its body then gets `EPIPE`/`ECONNRESET` and never reads the 413 that was already
//! on its way. nginx's lingering close solves this by reading and discarding for a while
//! before closing; this is the same idea inside hyper: the refusal is answered at once with
//! `Connection: close`, and a background task keeps consuming the request body. hyper goes on
//! reading the body from the socket while someone polls it, and closes the connection
//! (flushing the answer, then a FIN) once the body has ended, so nothing unread is left
//! behind. It works alike for `Content-Length` and chunked bodies, and needs nothing from
//! the per-connection code.

use std::time::Duration;

use http::{HeaderMap, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};

/// How long the rest of a refused body is read, at most. A client on a slow link that is
/// still sending after this is cut off (and may see a reset instead of the answer).
pub(super) const LINGER_TIME: Duration = Duration::from_secs(5);

/// How many bytes of a refused body are read and discarded at most, beyond the configured
/// body limit (`max_http_body_bytes`). A body announced larger than that is not read at all.
pub(super) const LINGER_EXTRA_BYTES: u64 = 16 * 1024 * 1024;

/// How much of a refused body the handler had read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Nothing: a client that sent `Expect: 100-continue` has not been asked for the body.
    Unread,
    /// Part of it: any `100 Continue` is already sent.
    PartlyRead,
}

/// Discards what is left of a refused request body in the background. Returns whether the
/// answer must close the connection (`Connection: close`): always, unless no body was left.
///
/// `max_body_bytes` is the body limit; at most [`LINGER_EXTRA_BYTES`] more are read.
#[must_use = "the answer must close the connection when this returns true"]
pub(super) fn discard(
    body: Incoming,
    headers: &HeaderMap,
    progress: Progress,
    max_body_bytes: usize,
) -> bool {
    if body.is_end_stream() {
        return false;
    }
    let budget = u64::try_from(max_body_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(LINGER_EXTRA_BYTES);
    if progress == Progress::Unread {
        if expects_continue(headers) {
            // The client waits for `100 Continue` before sending; dropping the body makes
            // hyper answer without it, so no body comes and nothing needs draining.
            record(Outcome::NotSent, 0);
            return true;
        }
        if declared_length(headers).is_some_and(|len| len > budget) {
            record(Outcome::TooLarge, 0);
            return true;
        }
    }
    tokio::spawn(drain(body, budget));
    true
}

/// The body length a request announced with `Content-Length`.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether the request asks for `100 Continue` before sending its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads `body` to its end, within [`LINGER_TIME`] and `budget` bytes, and drops the data.
async fn drain(mut body: Incoming, budget: u64) {
    let mut discarded: u64 = 0;
    let reading = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Outcome::Failed;
            };
            if let Some(data) = frame.data_ref() {
                discarded = discarded.saturating_add(data.len() as u64);
                if discarded > budget {
                    return Outcome::TooLarge;
                }
            }
        }
        Outcome::Drained
    };
    let outcome = tokio::time::timeout(LINGER_TIME, reading)
        .await
        .unwrap_or(Outcome::TimedOut);
    record(outcome, discarded);
}

/// How a lingering close ended, the `outcome` label of `herald_http_lingering_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The body was read to its end: the connection closes cleanly.
    Drained,
    /// The body was (or was announced) larger than the limit plus [`LINGER_EXTRA_BYTES`].
    TooLarge,
    /// The client was still sending after [`LINGER_TIME`].
    TimedOut,
    /// The client closed or broke the body's framing.
    Failed,
    /// The client waited for `100 Continue`, so it never sent the body.
    NotSent,
}

impl Outcome {
    /// The metric label.
    const fn label(self) -> &'static str {
        match self {
            Self::Drained => "drained",
            Self::TooLarge => "too_large",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
            Self::NotSent => "not_sent",
        }
    }
}

/// Counts a lingering close and the bytes it threw away.
fn record(outcome: Outcome, discarded: u64) {
    tracing::debug!(outcome = outcome.label(), discarded, "refused request body");
    metrics::counter!("herald_http_lingering_closes_total", "outcome" => outcome.label())
        .increment(1);
    metrics::counter!("herald_http_lingering_discarded_bytes_total").increment(discarded);
}
