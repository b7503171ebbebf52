//! The HTTP side of the listener: routing, the `/api/*` routes of the contract, health and
//! metrics. Errors are `{"error": {code, message}}` with a fitting status; malformed input is
//! never a 500.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use herald_config::{ChangeReason, RuntimeKey};
use herald_core::{ConnectionId, GatewayError, Outcome, ThreadId, UserId};
use herald_protocol::{
    ApiErrorBody, BroadcastRequest, ConnectionSendRequest, DeliveredResponse, ErrorCode,
    EventRequest, EventResponse, ProtocolError, PublishBatchRequest, PublishBatchResponse,
    PublishBatchResult, PublishRequest, PublishResponse, Topic, UserSendRequest, parse_body,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    app::{App, Role},
    respond::{bearer_token, error_response, json_response, percent_decode, query_param},
    ws,
};

/// Routes one request.
pub(crate) async fn handle(
    app: &Arc<App>,
    role: Role,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    let public = role != Role::Admin;
    let admin = role != Role::Public;
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["ws"]) if public => ws::upgrade(app, request),
        ("GET", ["health", "live"]) if admin => {
            json_response(StatusCode::OK, &json!({"status": "ok"}))
        }
        ("GET", ["health", "ready"]) if admin => ready(app),
        ("GET", ["health"]) if admin => health(app),
        ("GET", ["metrics"]) if admin => metrics(app),
        (_, ["api", ..]) if public => {
            if let Err(response) = check_api_key(app, &request) {
                return response;
            }
            api(app, request, &method, &segments[1..]).await
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            &format!("no route for {method} {path}"),
        ),
    }
}

async fn api(
    app: &Arc<App>,
    request: Request<Incoming>,
    method: &Method,
    segments: &[&str],
) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("").to_owned();
    let result = match (method.as_str(), segments) {
        ("POST", ["publish"]) => match read_json::<PublishRequest>(app, request).await {
            Ok(body) => match publish(app, body).await {
                Ok(answer) => Ok(json_response(StatusCode::OK, &answer)),
                Err(error) => return gateway_error_response(&error),
            },
            Err(response) => return response,
        },
        ("POST", ["publish", "batch"]) => {
            match read_json::<PublishBatchRequest>(app, request).await {
                Ok(body) => {
                    // Every item is queued before any is awaited, so a batch costs one trip.
                    let pending = body.items().map(|item| async move {
                        match item {
                            Ok(request) => match publish(app, request).await {
                                Ok(answer) => PublishBatchResult::Published(answer),
                                Err(error) => {
                                    PublishBatchResult::Failed(gateway_error_body(&error))
                                }
                            },
                            Err(error) => PublishBatchResult::Failed(error.to_api_body()),
                        }
                    });
                    let results = futures_util::future::join_all(pending).await;
                    Ok(json_response(
                        StatusCode::OK,
                        &PublishBatchResponse { results },
                    ))
                }
                Err(response) => return response,
            }
        }
        ("POST", ["broadcast"]) => match read_json::<BroadcastRequest>(app, request).await {
            Ok(body) => {
                let exclude = body
                    .exclude
                    .iter()
                    .filter_map(|id| ConnectionId::parse(id))
                    .collect();
                let request = herald_core::Request::Broadcast {
                    data: body.data,
                    priority: body.priority.unwrap_or_default(),
                    exclude,
                };
                return delivered_response(app.gateway.submit(request).await);
            }
            Err(response) => return response,
        },
        ("POST", ["users", user, "send"]) => match read_json::<UserSendRequest>(app, request).await
        {
            Ok(body) => {
                let request = herald_core::Request::SendToUser {
                    user: UserId::new(&percent_decode(user)),
                    thread: body.thread_id.as_deref().map(ThreadId::new),
                    data: body.data,
                    priority: body.priority.unwrap_or_default(),
                };
                return delivered_response(app.gateway.submit(request).await);
            }
            Err(response) => return response,
        },
        ("POST", ["connections", id, "send"]) => {
            match read_json::<ConnectionSendRequest>(app, request).await {
                Ok(body) => connection_id(id).and_then(|id| {
                    app.gateway
                        .send_to_connection(id, &body.data, body.priority.unwrap_or_default())
                        .map(|delivered| {
                            json_response(
                                StatusCode::OK,
                                &DeliveredResponse {
                                    delivered: delivered as u64,
                                },
                            )
                        })
                        .map_err(|e| ProtocolError::new(ErrorCode::NotFound, e.to_string()))
                }),
                Err(response) => return response,
            }
        }
        ("DELETE", ["connections", id]) => connection_id(id).and_then(|id| {
            app.gateway
                .disconnect(id)
                .map(|()| {
                    json_response(
                        StatusCode::OK,
                        &json!({"connectionId": id.to_string(), "closed": true}),
                    )
                })
                .map_err(|e| ProtocolError::new(ErrorCode::NotFound, e.to_string()))
        }),
        ("GET", ["connections"]) => Ok(connections(app, &query)),
        ("GET", ["topics", topic]) => topic_info(app, topic),
        ("GET", ["topics", topic, "history"]) => history(app, topic, &query),
        ("POST", ["users", user, "events"]) => {
            match read_json::<EventRequest>(app, request).await {
                Ok(body) => {
                    let request = herald_core::Request::Event {
                        user: UserId::new(&percent_decode(user)),
                        event: body.event,
                        data: body.data,
                        thread: body.thread_id.as_deref().map(ThreadId::new),
                        run: body.run_id,
                        id: body.id,
                    };
                    return match app.gateway.submit(request).await {
                        Ok(Outcome::Event(outcome)) => json_response(
                            StatusCode::OK,
                            &EventResponse {
                                id: outcome.id,
                                delivered: outcome.delivered as u64,
                                pending: outcome.pending as u64,
                            },
                        ),
                        Ok(_) => gateway_error_response(&GatewayError::ShuttingDown),
                        Err(error) => gateway_error_response(&error),
                    };
                }
                Err(response) => return response,
            }
        }
        ("GET", ["stats"]) => Ok(json_response(StatusCode::OK, &stats(app))),
        ("GET", ["config", "runtime"]) => Ok(json_response(
            StatusCode::OK,
            &app.gateway.runtime().snapshot(),
        )),
        ("PATCH", ["config", "runtime"]) => {
            match read_json::<BTreeMap<String, Value>>(app, request).await {
                Ok(patch) => patch_runtime(app, &patch),
                Err(response) => return response,
            }
        }
        _ => {
            let path = segments.join("/");
            Err(ProtocolError::new(
                ErrorCode::NotFound,
                format!("no route for {method} /api/{path}"),
            ))
        }
    };
    result.unwrap_or_else(|error| protocol_error_response(&error))
}

async fn publish(app: &App, body: PublishRequest) -> Result<PublishResponse, GatewayError> {
    let topic = body.topic.clone();
    let request = herald_core::Request::Publish {
        topic: body.topic,
        data: body.data,
        priority: body.priority.unwrap_or_default(),
        id: body.id,
    };
    match app.gateway.submit(request).await? {
        Outcome::Published(outcome) => Ok(PublishResponse {
            topic,
            offset: outcome.offset,
            epoch: outcome.epoch.to_string(),
            deduplicated: outcome.deduplicated,
        }),
        // A publish request always yields a publish outcome.
        Outcome::Delivered(_) | Outcome::Event(_) => Err(GatewayError::ShuttingDown),
    }
}

fn delivered_response(result: Result<Outcome, GatewayError>) -> Response<Full<Bytes>> {
    match result {
        Ok(Outcome::Delivered(delivered))
        | Ok(Outcome::Published(herald_core::PublishOutcome { delivered, .. }))
        | Ok(Outcome::Event(herald_core::EventOutcome { delivered, .. })) => json_response(
            StatusCode::OK,
            &DeliveredResponse {
                delivered: delivered as u64,
            },
        ),
        Err(error) => gateway_error_response(&error),
    }
}

/// The contract's error body for a gateway error.
fn gateway_error_body(error: &GatewayError) -> ApiErrorBody {
    let code = match error {
        GatewayError::UnknownConnection(_) => ErrorCode::NotFound,
        GatewayError::ShuttingDown => ErrorCode::Unavailable,
        GatewayError::Overloaded { .. } => ErrorCode::RateLimited,
        GatewayError::TooManyPending { .. } => ErrorCode::LimitExceeded,
    };
    ApiErrorBody::new(code, error.to_string())
}

/// 404, 503 or 429 (with Retry-After) for a gateway error.
fn gateway_error_response(error: &GatewayError) -> Response<Full<Bytes>> {
    let body = gateway_error_body(error);
    let status =
        StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = json_response(status, &body);
    let retry_after_ms = match error {
        GatewayError::Overloaded { retry_after_ms } => Some(*retry_after_ms),
        GatewayError::ShuttingDown | GatewayError::TooManyPending { .. } => Some(5_000),
        GatewayError::UnknownConnection(_) => None,
    };
    if let Some(ms) = retry_after_ms {
        let seconds = ms.div_ceil(1000).max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn connections(app: &App, query: &str) -> Response<Full<Bytes>> {
    let user = query_param(query, "userId").map(|u| UserId::new(&u));
    let list: Vec<Value> = app
        .gateway
        .connections(user.as_ref())
        .into_iter()
        .map(|c| {
            json!({
                "connectionId": c.id.to_string(),
                "userId": c.user.as_ref().map(UserId::as_str),
                "threadId": c.thread.as_ref().map(ThreadId::as_str),
                "topics": c.topics,
                "idleMs": c.idle_ms,
                "connectedAt": c.connected_at_unix_ms,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "connections": list }))
}

fn topic_info(app: &App, raw: &str) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let name = percent_decode(raw);
    let topic = Topic::new(&name).map_err(|e| ProtocolError::bad_request(format!("topic: {e}")))?;
    let (subscribers, last_offset, epoch) = match app.gateway.topic(&topic) {
        Some(info) => (
            info.subscribers,
            info.position.last_offset,
            Some(info.position.epoch.to_string()),
        ),
        None => (0, 0, None),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"topic": topic, "subscribers": subscribers, "lastOffset": last_offset, "epoch": epoch}),
    ))
}

fn history(app: &App, raw: &str, query: &str) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let name = percent_decode(raw);
    let topic = Topic::new(&name).map_err(|e| ProtocolError::bad_request(format!("topic: {e}")))?;
    let number = |name: &str| -> Result<Option<u64>, ProtocolError> {
        query_param(query, name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ProtocolError::bad_request(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    };
    let since = number("since")?.unwrap_or(0);
    let limit = number("limit")?.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    /// One retained publication, its data relayed verbatim.
    #[derive(Serialize)]
    struct Entry {
        offset: u64,
        data: Box<serde_json::value::RawValue>,
    }
    #[derive(Serialize)]
    struct Page<'a> {
        topic: &'a Topic,
        epoch: Option<&'a str>,
        messages: Vec<Entry>,
    }
    let history = app.gateway.history(&topic, since, limit);
    let page = Page {
        topic: &topic,
        epoch: history.as_ref().map(|h| &*h.epoch),
        messages: history
            .as_ref()
            .map(|h| {
                h.messages
                    .iter()
                    .map(|(offset, data)| Entry {
                        offset: *offset,
                        data: data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(json_response(StatusCode::OK, &page))
}

fn stats(app: &App) -> Value {
    let stats = app.gateway.stats();
    let latency = app.gateway.fanout_latency_us();
    json!({
        "connections": stats.connections,
        "users": stats.users,
        "subscriptions": stats.subscriptions,
        "topics": stats.topics,
        "messages": {"published": stats.published, "delivered": stats.delivered, "shed": stats.shed},
        "events": {"pending": stats.pending_events},
        "latency": {"p50Us": latency.0, "p99Us": latency.1},
        "memory": {"rssBytes": crate::app::rss_bytes()},
        "degradation": {"level": 0},
    })
}

fn patch_runtime(
    app: &App,
    patch: &BTreeMap<String, Value>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let mut changes = Vec::with_capacity(patch.len());
    for (name, value) in patch {
        let key: RuntimeKey = name
            .parse()
            .map_err(|e: herald_config::RuntimeConfigError| {
                ProtocolError::bad_request(e.to_string())
            })?;
        let value = value.as_u64().ok_or_else(|| {
            ProtocolError::bad_request(format!("{name} must be a non-negative integer"))
        })?;
        changes.push((key, value));
    }
    let runtime = app.gateway.runtime();
    runtime
        .apply(&changes, ChangeReason::Operator)
        .map_err(|e| ProtocolError::bad_request(e.to_string()))?;
    Ok(json_response(StatusCode::OK, &runtime.snapshot()))
}

fn ready(app: &App) -> Response<Full<Bytes>> {
    if app.gateway.is_shutting_down() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "shutting_down"}),
        )
    } else {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    }
}

fn health(app: &App) -> Response<Full<Bytes>> {
    let stats = app.gateway.stats();
    let ready = !app.gateway.is_shutting_down();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({
            "status": if ready { "ok" } else { "shutting_down" },
            "components": {
                "gateway": {
                    "status": if ready { "ok" } else { "draining" },
                    "connections": stats.connections,
                    "maxConnections": app.config.max_connections,
                },
            },
        }),
    )
}

fn metrics(app: &App) -> Response<Full<Bytes>> {
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
    response
}

#[allow(clippy::result_large_err)] // The error is the response itself.
fn check_api_key(app: &App, request: &Request<Incoming>) -> Result<(), Response<Full<Bytes>>> {
    match bearer_token(request.headers()) {
        Some(key) if app.config.api_keys.iter().any(|k| k.matches(key)) => Ok(()),
        Some(_) => Err(error_response(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "invalid API key",
        )),
        None => Err(error_response(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing API key: send Authorization: Bearer <key>",
        )),
    }
}

/// Reads a JSON body of at most `max_http_body_bytes` and decodes it.
async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    request: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let max = app.config.max_http_body_bytes;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            &format!("body larger than {max} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("cannot read body: {error}"),
            ));
        }
    };
    parse_body(&bytes).map_err(|error| protocol_error_response(&error))
}

fn connection_id(raw: &str) -> Result<ConnectionId, ProtocolError> {
    ConnectionId::parse(raw)
        .ok_or_else(|| ProtocolError::new(ErrorCode::NotFound, format!("no connection {raw}")))
}

fn protocol_error_response(error: &ProtocolError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, &error.to_api_body())
}
