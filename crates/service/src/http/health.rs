//! The routes for probes and scrapers: `/health/live`, `/health/ready`, `/health` and
//! `/metrics`. They need no API key; put them on the admin listener to keep them private.

use bytes::Bytes;
use std::collections::BTreeMap;

use herald_monitoring::{CheckResult, MetricsReporter, OverallStatus};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use super::{
    answer::{Body, json},
    routes::{Call, Reply, ready},
};

/// 200 when ready, else 503.
fn status(is_ready: bool) -> StatusCode {
    if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /health/live`: the process answers (`{"status":"ok"}`).
pub(super) fn live(call: Call) -> Reply {
    ready(Ok(json(StatusCode::OK, &call.app.health.live())))
}

/// `GET /health/ready`: 200 `{"status":"ready"}` until shutdown begins or a required check
/// fails, then 503 with `shutting_down` or `not_ready` and the failing checks.
pub(super) fn readiness(call: Call) -> Reply {
    let answer = call.app.health.ready();
    ready(Ok(json(status(answer.is_ready()), &answer)))
}

/// `GET /health`: readiness with every check's status, values and message.
pub(super) fn health(call: Call) -> Reply {
    let report = call.app.health.report();
    ready(Ok(json(status(report.is_ready()), &report)))
}

/// The answer of `GET /health/detailed`: the overall status and every check by name.
#[derive(Serialize)]
struct Detailed<'a> {
    /// The worst of the checks.
    status: OverallStatus,
    /// Every check's status, message and figures.
    checks: &'a BTreeMap<&'static str, CheckResult>,
}

/// `GET /health/detailed` (API key): every check with its status, message and figures; 200
/// when ready, else 503.
pub(super) fn detailed(call: Call) -> Reply {
    let report = call.app.health.report();
    let body = Detailed {
        status: report.status,
        checks: &report.components,
    };
    ready(Ok(json(status(report.is_ready()), &body)))
}

/// `GET /metrics`: Prometheus text, the gateway's [`Stats`](herald_monitoring::Stats) snapshot
/// included, so it reads the same counters as `/api/stats`.
pub(super) fn metrics(call: Call) -> Reply {
    let app = &call.app;
    let text = app
        .metrics
        .render(&app.gateway.stats(), app.gateway.latency());
    let mut response = Response::new(Body::from(Full::new(Bytes::from(text))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(MetricsReporter::CONTENT_TYPE),
    );
    ready(Ok(response))
}
