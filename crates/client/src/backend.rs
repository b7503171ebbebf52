//! Herald's HTTP API for Rust backends (feature `backend`): publish, batch publish, critical
//! events, user sends, broadcasts, topic state and history, and closing a connection, with
//! typed answers and errors ([`BackendError`], `429` with its `Retry-After`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_client::backend::Backend;
//! use herald_client::protocol::{EventName, EventRequest};
//!
//! let herald = Backend::new("http://127.0.0.1:8080", "backend-key");
//! let ack = herald.publish("chat:1", &serde_json::json!({"text": "hello"})).await?;
//! println!("offset {} in epoch {}", ack.offset, ack.epoch);
//! let event = EventRequest {
//!     event: EventName::AgentStarted,
//!     data: serde_json::value::to_raw_value(&serde_json::json!({"run": "r1"}))?,
//!     thread_id: None,
//!     run_id: Some("r1".into()),
//!     id: None,
//! };
//! herald.send_event("alice", &event).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use herald_protocol::{
    ApiErrorBody, BroadcastRequest, DeliveredResponse, ErrorCode, EventRequest, EventResponse,
    PublishBatchResponse, PublishRequest, PublishResponse, UserSendRequest,
};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

/// A handle on Herald's HTTP API, with one pooled HTTP/1.1 client; cheap to clone.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), herald_client::backend::BackendError> {
/// let herald = herald_client::backend::Backend::new("http://127.0.0.1:8080", "backend-key");
/// let topic = herald.topic("chat:1").await?;
/// println!("{} subscribers", topic.subscribers);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Backend {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The `Authorization` header value.
    bearer: String,
    /// How long one request may take.
    timeout: Duration,
    /// The HTTP client.
    http: Client<HttpConnector, Full<Bytes>>,
}

/// Why an HTTP API call failed.
///
/// # Example
///
/// ```no_run
/// # async fn run(herald: herald_client::backend::Backend) {
/// use herald_client::backend::BackendError;
///
/// match herald.publish("chat:1", &1).await {
///     Err(BackendError::RateLimited { retry_after, .. }) => tokio::time::sleep(retry_after).await,
///     Err(other) => eprintln!("{other}"),
///     Ok(_) => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// `429`: the operation queue is full (`rate_limited`) or a per-user limit was reached
    /// (`limit_exceeded`, e.g. too many pending events); retry after `retry_after`.
    #[error("{code}: {message} (retry after {retry_after:?})")]
    RateLimited {
        /// `rate_limited` or `limit_exceeded`.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// From `Retry-After` (one second when absent).
        retry_after: Duration,
    },
    /// Any other error answer: `bad_request`, `unauthorized`, `not_found`,
    /// `payload_too_large`, `unavailable` (with `retry_after` from `Retry-After`), ...
    #[error("{status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code of the body (`internal` when the body had none).
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// From `Retry-After`, when the answer carried one (503).
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or its answer not read (connection refused, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// A 200 answer whose body did not have the documented shape.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The request could not be built (a payload that does not serialize).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// `GET /api/topics/{topic}`: a topic's state on this server.
///
/// # Example
///
/// ```no_run
/// # async fn run(herald: herald_client::backend::Backend) -> Result<(), herald_client::backend::BackendError> {
/// let info = herald.topic("chat:1").await?;
/// if info.epoch.is_none() {
///     println!("the server does not know chat:1");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// Its epoch; `None` when the server does not know the topic.
    pub epoch: Option<String>,
    /// The offset of its last publication (0 when none in this epoch).
    pub last_offset: u64,
    /// How many connections are subscribed.
    pub subscribers: u64,
}

/// `GET /api/topics/{topic}/history`: retained publications, oldest first.
///
/// # Example
///
/// ```no_run
/// # async fn run(herald: herald_client::backend::Backend) -> Result<(), herald_client::backend::BackendError> {
/// let history = herald.history("chat:1", 0, Some(100)).await?;
/// for entry in &history.messages {
///     println!("{}: {}", entry.offset, entry.data.get());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    /// The topic.
    pub topic: String,
    /// The topic's epoch.
    pub epoch: String,
    /// The publications after `since`, oldest first.
    pub messages: Vec<HistoryEntry>,
}

/// One retained publication.
///
/// # Example
///
/// ```
/// let entry: herald_client::backend::HistoryEntry =
///     serde_json::from_str(r#"{"offset":3,"data":{"x":1}}"#).unwrap();
/// assert_eq!(entry.offset, 3);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its offset.
    pub offset: u64,
    /// Its payload (equivalent JSON, not byte for byte; see docs/protocol.md).
    pub data: Box<RawValue>,
}

impl Backend {
    /// A handle on the API at `base_url` (`http://host:port`) with API key `api_key`; each
    /// request may take 10 s.
    ///
    /// # Example
    ///
    /// ```
    /// let herald = herald_client::backend::Backend::new("http://127.0.0.1:8080/", "key");
    /// ```
    pub fn new(base_url: &str, api_key: &str) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            bearer: format!("Bearer {api_key}"),
            timeout: Duration::from_secs(10),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sets how long one request may take.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let herald = herald_client::backend::Backend::new("http://h:8080", "key")
    ///     .timeout(Duration::from_secs(2));
    /// ```
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `POST /api/publish` of `data` to `topic`, priority `normal`, no dedupe id.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend) -> Result<(), herald_client::backend::BackendError> {
    /// let ack = herald.publish("chat:1", &"hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        topic: &str,
        data: &impl Serialize,
    ) -> Result<PublishResponse, BackendError> {
        let body = serde_json::json!({ "topic": topic, "data": data });
        self.call("POST", "/api/publish", Some(&body)).await
    }

    /// `POST /api/publish` with every field of the body (priority, dedupe id).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend) -> Result<(), Box<dyn std::error::Error>> {
    /// use herald_client::protocol::{PublishRequest, Topic};
    /// let request = PublishRequest {
    ///     topic: Topic::new("chat:1")?,
    ///     data: serde_json::value::to_raw_value(&"hi")?,
    ///     priority: None,
    ///     id: Some("m-1".into()),
    /// };
    /// let ack = herald.publish_request(&request).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_request(
        &self,
        request: &PublishRequest,
    ) -> Result<PublishResponse, BackendError> {
        self.call("POST", "/api/publish", Some(request)).await
    }

    /// `POST /api/publish/batch`: items succeed or fail one by one, answered in order.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend, a: herald_client::protocol::PublishRequest) -> Result<(), herald_client::backend::BackendError> {
    /// let answer = herald.publish_batch(&[a]).await?;
    /// println!("{} results", answer.results.len());
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch(
        &self,
        messages: &[PublishRequest],
    ) -> Result<PublishBatchResponse, BackendError> {
        let body = serde_json::json!({ "messages": messages });
        self.call("POST", "/api/publish/batch", Some(&body)).await
    }

    /// `POST /api/users/{user}/events`: a critical event, kept until the user acknowledges it.
    /// Retrying with the same `id` is safe.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend, event: herald_client::protocol::EventRequest) -> Result<(), herald_client::backend::BackendError> {
    /// let answer = herald.send_event("alice", &event).await?;
    /// println!("event {} pending with {} others", answer.id, answer.pending - 1);
    /// # Ok(()) }
    /// ```
    pub async fn send_event(
        &self,
        user: &str,
        event: &EventRequest,
    ) -> Result<EventResponse, BackendError> {
        let path = format!("/api/users/{}/events", crate::dial::percent_encode(user));
        self.call("POST", &path, Some(event)).await
    }

    /// `POST /api/users/{user}/send`: a live-only push to the user's connections.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend, send: herald_client::protocol::UserSendRequest) -> Result<(), herald_client::backend::BackendError> {
    /// let delivered = herald.send_to_user("alice", &send).await?.delivered;
    /// # Ok(()) }
    /// ```
    pub async fn send_to_user(
        &self,
        user: &str,
        request: &UserSendRequest,
    ) -> Result<DeliveredResponse, BackendError> {
        let path = format!("/api/users/{}/send", crate::dial::percent_encode(user));
        self.call("POST", &path, Some(request)).await
    }

    /// `POST /api/broadcast`: a live-only push to every connection but the excluded ones.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend, request: herald_client::protocol::BroadcastRequest) -> Result<(), herald_client::backend::BackendError> {
    /// let delivered = herald.broadcast(&request).await?.delivered;
    /// # Ok(()) }
    /// ```
    pub async fn broadcast(
        &self,
        request: &BroadcastRequest,
    ) -> Result<DeliveredResponse, BackendError> {
        self.call("POST", "/api/broadcast", Some(request)).await
    }

    /// `GET /api/topics/{topic}`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend) -> Result<(), herald_client::backend::BackendError> {
    /// let last = herald.topic("chat:1").await?.last_offset;
    /// # Ok(()) }
    /// ```
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo, BackendError> {
        let path = format!("/api/topics/{}", crate::dial::percent_encode(topic));
        self.call::<TopicInfo, ()>("GET", &path, None).await
    }

    /// `GET /api/topics/{topic}/history?since=&limit=`: publications after offset `since`,
    /// at most `limit` of them; page forward with the last offset received.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend) -> Result<(), herald_client::backend::BackendError> {
    /// let page = herald.history("chat:1", 41, Some(50)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        topic: &str,
        since: u64,
        limit: Option<u64>,
    ) -> Result<History, BackendError> {
        let mut path = format!(
            "/api/topics/{}/history?since={since}",
            crate::dial::percent_encode(topic)
        );
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        self.call::<History, ()>("GET", &path, None).await
    }

    /// `DELETE /api/connections/{id}`: closes the connection with 4010 after its queued
    /// frames; answers whether it was closed.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(herald: herald_client::backend::Backend) -> Result<(), herald_client::backend::BackendError> {
    /// herald.disconnect("0000000000000003").await?;
    /// # Ok(()) }
    /// ```
    pub async fn disconnect(&self, connection_id: &str) -> Result<bool, BackendError> {
        #[derive(Deserialize)]
        struct Closed {
            closed: bool,
        }
        let path = format!(
            "/api/connections/{}",
            crate::dial::percent_encode(connection_id)
        );
        let answer: Closed = self.call::<Closed, ()>("DELETE", &path, None).await?;
        Ok(answer.closed)
    }

    /// Sends one request with the API key and decodes a 200 answer as `T`.
    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, BackendError> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body)
                .map_err(|error| BackendError::InvalidRequest(error.to_string()))?,
            None => Vec::new(),
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("authorization", &self.bearer)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|error| BackendError::InvalidRequest(error.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| BackendError::Transport(error.to_string()))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| BackendError::Transport(error.to_string()))?
                .to_bytes();
            Ok::<_, BackendError>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                BackendError::Transport(format!("no answer within {:?}", self.timeout))
            })??;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|error| {
                BackendError::Decode(format!("{error}: {}", String::from_utf8_lossy(&body)))
            });
        }
        Err(api_error(status, retry_after, &body))
    }
}

/// The error an answer other than 200 stands for.
fn api_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> BackendError {
    let (code, message) = match serde_json::from_slice::<ApiErrorBody>(body) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            ErrorCode::Internal,
            String::from_utf8_lossy(body).into_owned(),
        ),
    };
    if status == 429 {
        BackendError::RateLimited {
            code,
            message,
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        }
    } else {
        BackendError::Api {
            status,
            code,
            message,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_is_rate_limited_with_its_retry_after() {
        let body = br#"{"error":{"code":"limit_exceeded","message":"too many pending events"}}"#;
        assert_eq!(
            api_error(429, Some(Duration::from_secs(5)), body),
            BackendError::RateLimited {
                code: ErrorCode::LimitExceeded,
                message: "too many pending events".into(),
                retry_after: Duration::from_secs(5),
            }
        );
        assert!(matches!(
            api_error(429, None, b"{}"),
            BackendError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(1)
        ));
    }

    #[test]
    fn other_statuses_keep_their_code_and_message() {
        let body = br#"{"error":{"code":"not_found","message":"no connection 00ff"}}"#;
        assert_eq!(
            api_error(404, None, body),
            BackendError::Api {
                status: 404,
                code: ErrorCode::NotFound,
                message: "no connection 00ff".into(),
                retry_after: None,
            }
        );
        assert!(matches!(
            api_error(502, None, b"bad gateway"),
            BackendError::Api { code: ErrorCode::Internal, ref message, .. } if message == "bad gateway"
        ));
    }
}
