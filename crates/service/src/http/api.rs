//! The `/api/*` routes of the contract: publishing, pushes, events, connections, topics, stats
//! and the runtime configuration. Request bodies are the protocol's types, decoded by
//! `body::read_json`; answers are the protocol's response types or the serde types below.

use std::collections::BTreeMap;

use herald_config::{ChangeReason, RuntimeConfigError, RuntimeKey};
use herald_core::{
    Broadcast, ConnectionId, ConnectionSend, ConnectionSummary, Delivered, EventSend, EventTarget,
    GatewayError, Publication, PublishOutcome, ThreadId, UserId, UserSend,
};
use herald_memory::LeakSeverity;
use herald_protocol::{
    BroadcastRequest, ConnectionSendRequest, DeliveredResponse, ErrorCode, EventRequest,
    EventResponse, ProtocolError, PublishBatchRequest, PublishBatchResponse, PublishBatchResult,
    PublishRequest, PublishResponse, Topic, UserSendRequest,
};
use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, value::RawValue};

use super::{
    answer::{encoded_json, json},
    body::read_json,
    routes::{Answer, Call, Reply, ready},
};
use crate::{
    app::App,
    respond::{ApiError, percent_decode, query_param},
};

/// `POST /api/publish`: `{topic, data, priority?, id?}` to `{topic, offset, epoch,
/// deduplicated}`, once the frame is queued for every subscriber.
pub(super) fn publish(call: Call) -> Reply {
    Box::pin(async move {
        let body: PublishRequest = read_json(&call.app, call.request).await?;
        let topic = body.topic.clone();
        let outcome = call.app.gateway.publish(publication(body)).await?;
        Ok(encoded_json(
            StatusCode::OK,
            published(topic, outcome).encode(),
        ))
    })
}

/// `POST /api/publish/batch`: `{messages: [...]}`; every item succeeds or fails alone.
pub(super) fn publish_batch(call: Call) -> Reply {
    Box::pin(async move {
        let app = &call.app;
        let body: PublishBatchRequest = read_json(app, call.request).await?;
        // The valid items go to the gateway together, so a batch costs one trip (one turn).
        let limits = &app.gateway.settings().limits;
        let mut publications = Vec::new();
        let decoded: Vec<Result<Topic, ApiError>> = body
            .items(limits)?
            .map(|item| {
                let request = item.map_err(ApiError::from)?;
                let topic = request.topic.clone();
                publications.push(publication(request));
                Ok(topic)
            })
            .collect();
        let mut outcomes = app.gateway.publish_batch(publications).await.into_iter();
        let results = decoded
            .into_iter()
            .map(|decoded| {
                let published = decoded.and_then(|topic| {
                    // One outcome per publication, in order; the fallback is never taken.
                    let outcome = outcomes.next().unwrap_or(Err(GatewayError::ShuttingDown))?;
                    Ok(published(topic, outcome))
                });
                match published {
                    Ok(answer) => PublishBatchResult::Published(answer),
                    Err(error) => PublishBatchResult::Failed(error.into_body()),
                }
            })
            .collect();
        Ok(json(StatusCode::OK, &PublishBatchResponse { results }))
    })
}

/// `POST /api/broadcast`: a `push` to every connection but `exclude`.
pub(super) fn broadcast(call: Call) -> Reply {
    Box::pin(async move {
        let body: BroadcastRequest = read_json(&call.app, call.request).await?;
        let exclude = body
            .exclude
            .iter()
            .filter_map(|id| ConnectionId::parse(id))
            .collect();
        let broadcast = Broadcast {
            data: body.data,
            priority: body.priority.unwrap_or_default(),
            exclude,
        };
        delivered(call.app.gateway.broadcast(broadcast).await?)
    })
}

/// `POST /api/users/{userId}/send`: a `push` to the user's connections (of one thread).
pub(super) fn user_send(call: Call) -> Reply {
    Box::pin(async move {
        let body: UserSendRequest = read_json(&call.app, call.request).await?;
        let send = UserSend {
            user: UserId::new(&percent_decode(call.params.get("userId"))),
            thread: body.thread_id.as_deref().map(ThreadId::new),
            data: body.data,
            priority: body.priority.unwrap_or_default(),
        };
        delivered(call.app.gateway.send_to_user(send).await?)
    })
}

/// `POST /api/users/{userId}/events`: a critical event, kept until acknowledged.
pub(super) fn user_event(call: Call) -> Reply {
    Box::pin(async move {
        let body: EventRequest = read_json(&call.app, call.request).await?;
        let event = EventSend {
            user: UserId::new(&percent_decode(call.params.get("userId"))),
            event: body.event,
            data: body.data,
            target: EventTarget {
                thread: body.thread_id.as_deref().map(ThreadId::new),
                run: body.run_id,
                id: body.id,
            },
        };
        let outcome = call.app.gateway.send_event(event).await?;
        Ok(json(
            StatusCode::OK,
            &EventResponse {
                id: outcome.id,
                delivered: outcome.delivered as u64,
                pending: outcome.pending as u64,
            },
        ))
    })
}

/// `POST /api/connections/{id}/send`: a `push` to one connection (404 if unknown).
pub(super) fn connection_send(call: Call) -> Reply {
    Box::pin(async move {
        let body: ConnectionSendRequest = read_json(&call.app, call.request).await?;
        let id = connection_id(call.params.get("id"))?;
        let send = ConnectionSend {
            connection: id,
            data: body.data,
            priority: body.priority.unwrap_or_default(),
        };
        delivered(call.app.gateway.send_to_connection(send).await?)
    })
}

/// The answer of `DELETE /api/connections/{id}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Disconnected {
    /// The closed connection.
    connection_id: String,
    /// Always `true`: the connection is closing with 4010.
    closed: bool,
}

/// `DELETE /api/connections/{id}`: closes the connection with 4010 (404 if unknown).
pub(super) fn disconnect(call: Call) -> Reply {
    ready(disconnect_answer(&call))
}

/// The answer of [`disconnect`].
fn disconnect_answer(call: &Call) -> Answer {
    let id = connection_id(call.params.get("id"))?;
    call.app.gateway.disconnect(id).map_err(not_found)?;
    Ok(json(
        StatusCode::OK,
        &Disconnected {
            connection_id: id.to_string(),
            closed: true,
        },
    ))
}

/// The answer of `GET /api/connections`.
#[derive(Debug, Serialize)]
struct ConnectionList<'a> {
    /// The node that answered: the list holds this node's connections only.
    node: &'a str,
    /// Oldest first.
    connections: Vec<ConnectionEntry<'a>>,
}

/// One connection of `GET /api/connections`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionEntry<'a> {
    /// Its id.
    connection_id: String,
    /// Its user (`null` before authentication).
    user_id: Option<&'a str>,
    /// Its thread, if bound to one.
    thread_id: Option<&'a str>,
    /// Its subscriptions, sorted.
    topics: &'a [Topic],
    /// Milliseconds since its last inbound frame.
    idle_ms: u64,
    /// When it was accepted, in milliseconds since the Unix epoch.
    connected_at: u64,
}

impl<'a> From<&'a ConnectionSummary> for ConnectionEntry<'a> {
    fn from(c: &'a ConnectionSummary) -> Self {
        Self {
            connection_id: c.id.to_string(),
            user_id: c.user.as_ref().map(UserId::as_str),
            thread_id: c.thread.as_ref().map(ThreadId::as_str),
            topics: &c.topics,
            idle_ms: c.idle_ms,
            connected_at: c.connected_at_unix_ms,
        }
    }
}

/// `GET /api/connections?userId=`: every connection, or one user's.
pub(super) fn connections(call: Call) -> Reply {
    let query = call.request.uri().query().unwrap_or("");
    let user = query_param(query, "userId").map(|u| UserId::new(&u));
    let list = call.app.gateway.connections(user.as_ref());
    let body = ConnectionList {
        node: &call.app.node_id,
        connections: list.iter().map(ConnectionEntry::from).collect(),
    };
    ready(Ok(json(StatusCode::OK, &body)))
}

/// The answer of `GET /api/topics/{topic}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicInfo {
    /// The topic, decoded.
    topic: Topic,
    /// Current subscribers.
    subscribers: usize,
    /// The last offset (0 before the first publication).
    last_offset: u64,
    /// The history's epoch; `null` for a topic never used.
    epoch: Option<String>,
}

/// `GET /api/topics/{topic}`: subscribers, last offset and epoch (zeros for an unknown topic).
pub(super) fn topic(call: Call) -> Reply {
    ready(topic_answer(&call))
}

/// The answer of [`topic`].
fn topic_answer(call: &Call) -> Answer {
    let topic = topic_param(call)?;
    let info = call.app.gateway.topic(&topic);
    let body = TopicInfo {
        subscribers: info.as_ref().map_or(0, |i| i.subscribers),
        last_offset: info.as_ref().map_or(0, |i| i.position.last_offset),
        epoch: info.map(|i| i.position.epoch.to_string()),
        topic,
    };
    Ok(json(StatusCode::OK, &body))
}

/// The answer of `GET /api/topics/{topic}/history`.
#[derive(Debug, Serialize)]
struct HistoryPage<'a> {
    /// The topic, decoded.
    topic: &'a Topic,
    /// The history's epoch; `null` for a topic never used.
    epoch: Option<&'a str>,
    /// Retained publications after `since`, oldest first.
    messages: Vec<HistoryEntry<'a>>,
}

/// One retained publication, its data relayed verbatim.
#[derive(Debug, Serialize)]
struct HistoryEntry<'a> {
    /// Its offset.
    offset: u64,
    /// Its payload, as published.
    data: &'a RawValue,
}

/// `GET /api/topics/{topic}/history?since=N&limit=L`: retained publications after offset N,
/// at most L of them.
pub(super) fn history(call: Call) -> Reply {
    ready(history_answer(&call))
}

/// The answer of [`history`].
fn history_answer(call: &Call) -> Answer {
    let topic = topic_param(call)?;
    let query = call.request.uri().query().unwrap_or("");
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query_param(query, name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{name} must be a non-negative integer"),
                    )
                })
            })
            .transpose()
    };
    let since = number("since")?.unwrap_or(0);
    let limit = number("limit")?.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let history = call.app.gateway.history(&topic, since, limit);
    let page = HistoryPage {
        topic: &topic,
        epoch: history.as_ref().map(|h| &*h.epoch),
        messages: history
            .iter()
            .flat_map(|h| &h.messages)
            .map(|(offset, data)| HistoryEntry {
                offset: *offset,
                data,
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &page))
}

/// The answer of `GET /api/stats`: the gateway's [`herald_monitoring::Stats`] snapshot (the
/// same counters `/metrics` exports), the degradation level and the leak detector's verdict.
/// The dashboard's stream sends the same object every second.
#[derive(Debug, Serialize)]
pub(super) struct StatsAnswer<'a> {
    /// The node that answered: every count is this node's own (docs/operations.md).
    node: &'a str,
    /// Every count.
    #[serde(flatten)]
    stats: herald_monitoring::Stats,
    /// The memory degradation level.
    degradation: DegradationAnswer,
    /// The leak detector's last verdict.
    leak: LeakAnswer,
    /// Connections and deliveries per second 15 minutes ahead; `null` until the window holds
    /// a few samples (5 s apart).
    forecast: Option<herald_monitoring::Forecast15>,
}

/// `degradation` of `GET /api/stats`.
#[derive(Debug, Serialize)]
struct DegradationAnswer {
    /// 0 (normal), 1 (high) or 2 (critical).
    level: u8,
    /// The level's name: `normal`, `high` or `critical`.
    name: &'static str,
    /// When the level was entered, in milliseconds since the Unix epoch.
    since: u64,
}

/// `leak` of `GET /api/stats`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LeakAnswer {
    /// `none`, `low`, `medium`, `high` or `critical`.
    severity: &'static str,
    /// Growth of used memory over the monitor's window, in bytes per minute (least squares);
    /// absent until the window spans a minute.
    slope_bytes_per_minute: Option<i64>,
    /// Memory that the last cleanup cycles did not give back.
    retained_bytes: u64,
    /// The component that grew most, if any grew.
    source: Option<&'static str>,
    /// What to do about it.
    recommendation: Option<String>,
}

/// `GET /api/stats`: counts, totals, latency, memory, the degradation level and leaks.
pub(super) fn stats(call: Call) -> Reply {
    ready(Ok(json(StatusCode::OK, &stats_answer(&call.app))))
}

/// The body of `GET /api/stats`, read now.
pub(super) fn stats_answer(app: &App) -> StatsAnswer<'_> {
    let degradation = app.memory.degradation();
    let leak = app.memory.leak();
    StatsAnswer {
        node: &app.node_id,
        stats: app.gateway.stats(),
        degradation: DegradationAnswer {
            level: degradation.level.number(),
            name: degradation.level.as_str(),
            since: degradation.since_unix_ms,
        },
        leak: LeakAnswer {
            severity: leak.as_ref().map_or("none", |l| l.severity.as_str()),
            // Rounded to whole bytes; far inside i64.
            slope_bytes_per_minute: leak
                .as_ref()
                .and_then(|l| l.growth_bytes_per_minute)
                .map(|slope| slope.round() as i64),
            retained_bytes: leak.as_ref().map_or(0, |l| l.retained_bytes),
            source: leak
                .as_ref()
                .and_then(|l| l.source.as_ref())
                .map(|s| s.name),
            recommendation: leak
                .filter(|l| l.severity > LeakSeverity::None)
                .map(|l| l.recommendation),
        },
        forecast: app.capacity.forecast(),
    }
}

/// `GET /api/config/runtime`: the live-tunable settings.
pub(super) fn runtime_config(call: Call) -> Reply {
    ready(Ok(json(
        StatusCode::OK,
        &call.app.gateway.runtime().snapshot(),
    )))
}

/// `PATCH /api/config/runtime`: applies every key of the body or none (400).
pub(super) fn patch_runtime_config(call: Call) -> Reply {
    Box::pin(async move {
        let patch: BTreeMap<String, Value> = read_json(&call.app, call.request).await?;
        let mut changes = Vec::with_capacity(patch.len());
        for (name, value) in &patch {
            let key: RuntimeKey = name
                .parse()
                .map_err(|e: RuntimeConfigError| bad_request(e))?;
            let value = value.as_u64().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("{name} must be a non-negative integer"),
                )
            })?;
            changes.push((key, value));
        }
        let runtime = call.app.gateway.runtime();
        runtime
            .apply(&changes, ChangeReason::Operator)
            .map_err(bad_request)?;
        Ok(json(StatusCode::OK, &runtime.snapshot()))
    })
}

/// Queues one publication and waits until it is queued for every subscriber.
/// The publication a publish request asks for.
fn publication(request: PublishRequest) -> Publication {
    Publication {
        topic: request.topic,
        data: request.data,
        priority: request.priority.unwrap_or_default(),
        id: request.id,
    }
}

/// The answer to a publication to `topic` that the gateway took.
fn published(topic: Topic, outcome: PublishOutcome) -> PublishResponse {
    PublishResponse {
        topic,
        offset: outcome.offset,
        epoch: outcome.epoch.to_string(),
        deduplicated: outcome.deduplicated,
    }
}

/// `{delivered}` for a push.
fn delivered(delivered: Delivered) -> Answer {
    Ok(json(
        StatusCode::OK,
        &DeliveredResponse {
            delivered: delivered.connections as u64,
        },
    ))
}

/// The decoded, validated `{topic}` of the path.
fn topic_param(call: &Call) -> Result<Topic, ApiError> {
    let name = percent_decode(call.params.get("topic"));
    Topic::new(&name).map_err(|e| bad_request(format!("topic: {e}")))
}

/// The `{id}` of the path; an id that cannot exist is a 404 like an unknown one.
fn connection_id(raw: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(raw)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no connection {raw}")))
}

/// Any gateway error about an addressed connection is a 404.
fn not_found(error: GatewayError) -> ApiError {
    ApiError::new(ErrorCode::NotFound, error.to_string())
}

/// A 400 `bad_request` saying `error`.
fn bad_request(error: impl ToString) -> ApiError {
    ApiError::from(ProtocolError::bad_request(error.to_string()))
}
