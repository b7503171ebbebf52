//! The routes for probes and scrapers: `/health/live`, `/health/ready`, `/health` and
//! `/metrics`. They need no API key; put them on the admin listener to keep them private.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use super::routes::{Call, Reply, ready};
use crate::{app::App, respond::json_response};

/// `{"status": ...}`: the answer of the liveness and readiness probes.
#[derive(Debug, Serialize)]
struct Status {
    /// `ok` (alive), `ready`, or `shutting_down`.
    status: &'static str,
}

/// The answer of `GET /health`: the overall status and each component's.
#[derive(Debug, Serialize)]
struct Health {
    /// `ok`, or `shutting_down` while draining.
    status: &'static str,
    /// Per-component detail.
    components: Components,
}

/// The components `GET /health` reports on.
#[derive(Debug, Serialize)]
struct Components {
    /// The gateway: connections and their limit.
    gateway: GatewayHealth,
}

/// The gateway's part of `GET /health`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayHealth {
    /// `ok`, or `draining` while shutting down.
    status: &'static str,
    /// Live connections.
    connections: usize,
    /// `HERALD_MAX_CONNECTIONS`.
    max_connections: usize,
}

/// `GET /health/live`: the process answers.
pub(super) fn live(_: Call) -> Reply {
    ready(Ok(json_response(StatusCode::OK, &Status { status: "ok" })))
}

/// `GET /health/ready`: 200 until shutdown begins, then 503.
pub(super) fn readiness(call: Call) -> Reply {
    let answer = if call.app.gateway.is_shutting_down() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status {
                status: "shutting_down",
            },
        )
    } else {
        json_response(StatusCode::OK, &Status { status: "ready" })
    };
    ready(Ok(answer))
}

/// `GET /health`: readiness with per-component detail.
pub(super) fn health(call: Call) -> Reply {
    ready(Ok(health_response(&call.app)))
}

/// The answer of [`health`]: 200, or 503 while draining.
fn health_response(app: &App) -> Response<Full<Bytes>> {
    let stats = app.gateway.stats();
    let up = !app.gateway.is_shutting_down();
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if up { "ok" } else { "shutting_down" },
        components: Components {
            gateway: GatewayHealth {
                status: if up { "ok" } else { "draining" },
                connections: stats.connections,
                max_connections: app.config.max_connections,
            },
        },
    };
    json_response(status, &body)
}

/// `GET /metrics`: Prometheus text format; the gauges of the gateway's counts are set first.
pub(super) fn metrics(call: Call) -> Reply {
    let app = &call.app;
    let stats = app.gateway.stats();
    metrics::gauge!("herald_connections").set(stats.connections as f64);
    metrics::gauge!("herald_users").set(stats.users as f64);
    metrics::gauge!("herald_subscriptions").set(stats.subscriptions as f64);
    metrics::gauge!("herald_topics").set(stats.topics as f64);
    let mut response = Response::new(Full::new(Bytes::from(app.metrics.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    ready(Ok(response))
}
