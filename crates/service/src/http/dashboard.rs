//! `/dashboard`: a live page for operators, served from the binary itself.
//!
//! The page, its style sheet and its script are compiled in (`assets/dashboard/`) and hold no
//! figures, so they are served without a key. The figures come from `GET /dashboard/stream`,
//! which needs the API key like `/api/*` (`Authorization: Bearer <key>`, checked in `mod.rs`):
//! server-sent events, one snapshot a second, the `/api/stats` body plus the health report.
//! The page reads the stream with `fetch`, so the key travels in the header, never in a URL.
//!
//! The stream ends with an `end` event once shutdown begins, so an open dashboard never holds
//! up a drain (it ends within one period of the drain's start).

use std::{sync::Arc, time::Duration};

use herald_monitoring::HealthReport;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Full, combinators::UnsyncBoxBody};
use serde::Serialize;

use super::{
    answer::Body,
    api::{StatsAnswer, stats_answer},
    events::{Events, Next},
    routes::{Call, Reply, ready},
};
use crate::app::App;

/// The page.
const PAGE: &str = include_str!("../../assets/dashboard/index.html");
/// Its style sheet.
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");
/// Its script.
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");

/// How often the stream sends a snapshot.
const PERIOD: Duration = Duration::from_secs(1);

/// What the page may load: its own script, style and stream, nothing from elsewhere, and no
/// inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `GET /dashboard`: the page (no figures in it).
pub(super) fn page(_: Call) -> Reply {
    ready(Ok(asset(PAGE, "text/html; charset=utf-8")))
}

/// `GET /dashboard/dashboard.css`.
pub(super) fn style(_: Call) -> Reply {
    ready(Ok(asset(STYLE, "text/css; charset=utf-8")))
}

/// `GET /dashboard/dashboard.js`.
pub(super) fn script(_: Call) -> Reply {
    ready(Ok(asset(SCRIPT, "text/javascript; charset=utf-8")))
}

/// A compiled-in file with its content type and the headers that keep the page to itself:
/// the policy above, no referrer (the page's address may carry `?key=` for a moment), no
/// sniffing, and revalidation (a new binary may serve a new page).
fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(Full::new(text.into())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One event of the stream.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot<'a> {
    /// Milliseconds since the stream opened, on the monotonic clock: the page divides counter
    /// deltas by its deltas to get rates.
    elapsed_ms: u64,
    /// The `/api/stats` body.
    #[serde(flatten)]
    stats: StatsAnswer<'a>,
    /// The `/health` report: overall status and every check.
    health: HealthReport,
}

/// The `end` event's body.
#[derive(Serialize)]
struct End {
    /// Why the stream ended: `shutting_down`.
    reason: &'static str,
}

/// `GET /dashboard/stream` (API key): a snapshot at once and then every second, as
/// server-sent events, until the client goes or shutdown begins.
pub(super) fn stream(call: Call) -> Reply {
    let app = call.app;
    let opened = tokio::time::Instant::now();
    let events = Events::new(PERIOD, move || next(&app, opened));
    let mut response = Response::new(Body::Stream(UnsyncBoxBody::new(events)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer answers (nginx) would hold the events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    ready(Ok(response))
}

/// The event to send now: the snapshot, or `end` once shutdown began.
fn next(app: &Arc<App>, opened: tokio::time::Instant) -> Next {
    if app.gateway.is_shutting_down() {
        return Next::End(to_json(&End {
            reason: "shutting_down",
        }));
    }
    let snapshot = Snapshot {
        elapsed_ms: u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
        stats: stats_answer(app),
        health: app.health.report(),
    };
    Next::Data(to_json(&snapshot))
}

/// Compact JSON (one line, as an event's `data:` needs).
fn to_json(value: &impl Serialize) -> String {
    // Serializing these plain data types cannot fail; an empty object is a safe fallback.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page and its files reach nothing outside the binary: no absolute URL, and the
    /// page's references are the routes that serve them.
    #[test]
    fn the_assets_load_nothing_from_elsewhere() {
        for (name, text) in [("page", PAGE), ("style", STYLE), ("script", SCRIPT)] {
            for scheme in ["://", "@import", "url("] {
                assert!(
                    !text.contains(scheme),
                    "the {name} mentions {scheme}; it must load nothing from elsewhere"
                );
            }
        }
        assert!(PAGE.contains(r#"src="dashboard/dashboard.js""#));
        assert!(PAGE.contains(r#"href="dashboard/dashboard.css""#));
        assert!(SCRIPT.contains("'dashboard/stream'"));
    }

    #[test]
    fn the_page_holds_no_inline_script_or_style() {
        assert!(
            !PAGE.contains("<script>"),
            "inline script breaks the policy"
        );
        assert!(!PAGE.contains("<style"), "inline style breaks the policy");
        assert!(!PAGE.contains(" style="), "inline style breaks the policy");
    }
}
