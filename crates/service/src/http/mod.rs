//! The HTTP side of the listener: the route table, the API-key check of `/api/*`, and the
//! routes of the contract (API, health, metrics, the dashboard, and the WebSocket upgrade that
//! hyper parsed).
//!
//! Every error is `{"error": {code, message}}` with a fitting status (`respond::ApiError`);
//! malformed input is never a 500. A request refused before its body is read gets its answer
//! with `Connection: close` while the rest of the body is discarded (`linger`).

mod answer;
mod api;
mod body;
mod dashboard;
mod events;
mod health;
mod linger;
#[cfg(test)]
mod openapi;
mod routes;

use std::sync::Arc;

use herald_protocol::ErrorCode;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;

use self::{
    answer::{Body, refusal},
    routes::{Call, Listener, Reply, Route, ready},
};
use crate::{
    abuse::{Refusal, Standing},
    app::{App, Role},
    respond::{ApiError, bearer_token},
    ws,
};

/// The route outside `/api/` that needs the API key for every check's figures.
const DETAILED_HEALTH: &str = "/health/detailed";
/// The route outside `/api/` that needs the API key for the dashboard's figures.
const DASHBOARD_STREAM: &str = "/dashboard/stream";

/// Every route, by method and path pattern. Paths under `/api/`, [`DETAILED_HEALTH`] and
/// [`DASHBOARD_STREAM`] also need the API key.
#[rustfmt::skip] // A table reads best one row per line.
const ROUTES: &[Route] = &[
    Route::main(Method::GET, "/ws", upgrade),
    Route::main(Method::POST, "/api/publish", api::publish),
    Route::main(Method::POST, "/api/publish/batch", api::publish_batch),
    Route::main(Method::POST, "/api/broadcast", api::broadcast),
    Route::main(Method::POST, "/api/users/{userId}/events", api::user_event),
    Route::main(Method::POST, "/api/users/{userId}/send", api::user_send),
    Route::main(Method::POST, "/api/connections/{id}/send", api::connection_send),
    Route::main(Method::DELETE, "/api/connections/{id}", api::disconnect),
    Route::main(Method::GET, "/api/connections", api::connections),
    Route::main(Method::GET, "/api/topics/{topic}", api::topic),
    Route::main(Method::GET, "/api/topics/{topic}/history", api::history),
    Route::main(Method::GET, "/api/stats", api::stats),
    Route::main(Method::GET, "/api/config/runtime", api::runtime_config),
    Route::main(Method::PATCH, "/api/config/runtime", api::patch_runtime_config),
    Route::admin(Method::GET, "/health/live", health::live),
    Route::admin(Method::GET, "/health/ready", health::readiness),
    Route::admin(Method::GET, "/health", health::health),
    Route::admin(Method::GET, DETAILED_HEALTH, health::detailed),
    Route::admin(Method::GET, "/metrics", health::metrics),
    Route::admin(Method::GET, "/dashboard", dashboard::page),
    Route::admin(Method::GET, "/dashboard/dashboard.css", dashboard::style),
    Route::admin(Method::GET, "/dashboard/dashboard.js", dashboard::script),
    Route::admin(Method::GET, DASHBOARD_STREAM, dashboard::stream),
];

/// Whether a request for `path` must carry an API key where its route is served: the API,
/// [`DETAILED_HEALTH`] and [`DASHBOARD_STREAM`].
fn keyed(path: &str) -> bool {
    routes::segments(path).next() == Some("api")
        || path == DETAILED_HEALTH
        || path == DASHBOARD_STREAM
}

/// Paths whose requests count against `api_publish_rate_per_key`.
const PUBLISH_PATHS: [&str; 2] = ["/api/publish", "/api/publish/batch"];

/// Answers one request that hyper parsed, on a listener of `role`; `standing` is how the
/// connection counts against the per-address limits, and its shield holds the publish rate of
/// each API key.
pub(crate) async fn handle(
    app: &Arc<App>,
    role: Role,
    standing: Arc<Standing>,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path();
    let needs_key = match routes::segments(path).next() {
        // The admin listener does not serve the API: a 404 there, key or not.
        Some("api") => Listener::Main.served_by(role),
        _ => keyed(path),
    };
    if needs_key {
        let key = match check_api_key(app, request.headers()) {
            Ok(key) => key,
            Err(error) => return refuse(app, request, error),
        };
        // Before the body is read: a caller over its rate costs no parsing.
        if request.method() == Method::POST
            && PUBLISH_PATHS.contains(&path)
            && let Err(Refusal::PublishRate(wait)) = standing.shield().check_publish(key)
        {
            let message = "this API key is over its publish rate (HERALD_API_PUBLISH_RATE_PER_KEY)";
            let mut response = refuse(app, request, ApiError::new(ErrorCode::RateLimited, message));
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
    }
    let Some((route, params)) = routes::find(ROUTES, role, request.method(), path) else {
        let error = ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {} {path}", request.method()),
        );
        return refuse(app, request, error);
    };
    let call = Call {
        app: Arc::clone(app),
        request,
        params,
        standing,
    };
    (route.handler)(call).await.unwrap_or_else(refusal)
}

/// `GET /ws` after other requests on a keep-alive connection (the first request of a
/// connection is answered by `conn` directly).
fn upgrade(call: Call) -> Reply {
    ready(Ok(
        ws::upgrade(&call.app, call.request, &call.standing).map(Body::from)
    ))
}

/// Answers `error` to a request whose body is not read: a body still arriving is discarded
/// while the answer goes out, and the connection closes after it.
fn refuse(app: &App, request: Request<Incoming>, error: ApiError) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let max = app.config.max_http_body_bytes;
    let error = if linger::discard(body, &parts.headers, linger::Progress::Unread, max) {
        error.closing()
    } else {
        error
    };
    refusal(error)
}

/// Checks the `Authorization: Bearer <key>` of an `/api/*` request; the key's position in
/// `api_keys` identifies it without copying it.
fn check_api_key(app: &App, headers: &HeaderMap) -> Result<usize, ApiError> {
    let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    if app.config.api_keys.is_empty() {
        return Err(unauthorized(NO_API_KEYS));
    }
    match bearer_token(headers) {
        Some(key) => match app.config.api_keys.iter().position(|k| k.matches(key)) {
            Some(index) => Ok(index),
            None => Err(unauthorized("invalid API key")),
        },
        None => Err(unauthorized(
            "missing API key: send Authorization: Bearer <key>",
        )),
    }
}

/// The 401 message while no API key is configured: the caller cannot fix it, the operator can.
const NO_API_KEYS: &str = "no API keys are configured (HERALD_API_KEYS); the HTTP API is closed";
