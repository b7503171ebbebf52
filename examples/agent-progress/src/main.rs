//! The agent-progress example's backend: serves a page that shows a fake agent's five critical
//! events live through Herald's browser client, mints demo tokens, starts runs (the events go
//! through `herald_client::backend::Backend`, Herald's HTTP API) and drops the user's
//! connections on request, to show that every event still arrives once and in order.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use herald_client::{
    backend::{Backend, BackendError},
    protocol::{EventName, EventRequest},
};
use herald_utils::{Clock as _, SystemClock};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, server::conn::http1};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use jsonwebtoken::{EncodingKey, Header};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

/// The page, with `__HERALD_WS_URL__` replaced by Herald's WebSocket URL when served.
const PAGE: &str = include_str!("../page.html");
/// How long a minted demo token is valid; the browser client refreshes it before `exp`.
const TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// The pause between two events of a run, long enough to press "Drop connection" mid-run.
const STEP_DELAY: Duration = Duration::from_millis(1500);
/// How many times one event is sent before the run gives up (the same `id` each time, so a
/// retry after a lost answer is not a duplicate).
const SEND_ATTEMPTS: u32 = 3;

/// The settings, from environment variables.
#[derive(Debug, Clone)]
struct Config {
    /// `PORT`: where this backend listens on 127.0.0.1 (default 3000).
    port: u16,
    /// `HERALD_URL`: Herald's HTTP API (default `http://127.0.0.1:8080`, `herald --dev`'s).
    herald_url: String,
    /// `HERALD_WS_URL`: what the page connects to (default `HERALD_URL`'s host, `ws://.../ws`).
    ws_url: String,
    /// `HERALD_API_KEY`: one of Herald's `HERALD_API_KEYS`.
    api_key: String,
    /// `HERALD_JWT_SECRET`: Herald's HS256 secret, to mint demo tokens.
    jwt_secret: String,
    /// `HERALD_CLIENT_JS`: the built browser client (default clients/js/dist/herald-client.js).
    client_js: PathBuf,
}

impl Config {
    /// Reads the settings; an error names the missing or invalid variable.
    #[allow(clippy::disallowed_methods)]
    // The ban keeps the server's configuration in herald-service; this example is a separate
    // program whose only configuration is its environment.
    fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let required = |name: &str| {
            var(name).ok_or_else(|| {
                format!("{name} is not set: use the values `herald --dev` prints (see examples/agent-progress/README.md)")
            })
        };
        let port = match var("PORT") {
            Some(port) => port
                .parse()
                .map_err(|_| format!("PORT is not a port number: {port}"))?,
            None => 3000,
        };
        let herald_url = var("HERALD_URL")
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned())
            .trim_end_matches('/')
            .to_owned();
        let ws_url = var("HERALD_WS_URL").unwrap_or_else(|| ws_url_of(&herald_url));
        let client_js = var("HERALD_CLIENT_JS").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../clients/js/dist/herald-client.js")
            },
            PathBuf::from,
        );
        Ok(Self {
            port,
            herald_url,
            ws_url,
            api_key: required("HERALD_API_KEY")?,
            jwt_secret: required("HERALD_JWT_SECRET")?,
            client_js,
        })
    }
}

/// `http://h:p` → `ws://h:p/ws`, `https://h` → `wss://h/ws`.
fn ws_url_of(http_url: &str) -> String {
    let url = http_url.trim_end_matches('/');
    match url.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}/ws"),
        None => format!("ws://{}/ws", url.strip_prefix("http://").unwrap_or(url)),
    }
}

/// Mints an HS256 token for `user`, issued at `now` (seconds since the Unix epoch) and valid
/// for [`TOKEN_LIFETIME`]. Demo only: a real backend authenticates the user first.
fn mint_token(secret: &str, user: &str, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = json!({
        "sub": user,
        "iat": now,
        "exp": now + TOKEN_LIFETIME.as_secs(),
        "topics": [],
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The five events of a fake run, in order, with their payloads.
fn run_steps(run_id: &str) -> [(EventName, serde_json::Value); 5] {
    [
        (
            EventName::AgentStarted,
            json!({"runId": run_id, "text": "Started: what is the weather in Paris?"}),
        ),
        (
            EventName::AgentThinking,
            json!({"runId": run_id, "text": "I should look up the forecast."}),
        ),
        (
            EventName::ToolExecuting,
            json!({"runId": run_id, "tool": "weather", "input": {"city": "Paris"}}),
        ),
        (
            EventName::ToolCompleted,
            json!({"runId": run_id, "tool": "weather", "output": {"tempC": 18, "sky": "cloudy"}}),
        ),
        (
            EventName::AgentCompleted,
            json!({"runId": run_id, "text": "18 °C and cloudy in Paris."}),
        ),
    ]
}

/// `user=` of a query string, when it is a plain name; `alice` when absent.
fn user_of(query: Option<&str>) -> Result<String, String> {
    let value = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("user="));
    match value {
        None | Some("") => Ok("alice".to_owned()),
        Some(user)
            if user.len() <= 64
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(user.to_owned())
        }
        Some(_) => Err("user must be 1 to 64 letters, digits, '-' or '_'".to_owned()),
    }
}

/// The backend's shared state.
struct App {
    /// The settings.
    config: Config,
    /// Herald's HTTP API.
    herald: Backend,
    /// A plain HTTP client, for the one call `Backend` lacks (listing connections).
    http: Client<HttpConnector, Full<Bytes>>,
    /// Numbers the runs of this process.
    runs: AtomicU64,
}

/// One connection of `GET /api/connections`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionInfo {
    /// Its id.
    connection_id: String,
}

/// The answer of `GET /api/connections`.
#[derive(Deserialize)]
struct Connections {
    /// The connections, oldest first.
    connections: Vec<ConnectionInfo>,
}

impl App {
    /// The state for `config`.
    fn new(config: Config) -> Self {
        let herald = Backend::new(&config.herald_url, &config.api_key);
        Self {
            config,
            herald,
            http: Client::builder(TokioExecutor::new()).build_http(),
            runs: AtomicU64::new(0),
        }
    }

    /// Answers one request.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let query = request.uri().query().map(str::to_owned);
        let route = (request.method().clone(), request.uri().path().to_owned());
        let user = match user_of(query.as_deref()) {
            Ok(user) => user,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        match (&route.0, route.1.as_str()) {
            (&Method::GET, "/") => self.page(),
            (&Method::GET, "/herald-client.js") => self.client_js().await,
            (&Method::GET, "/token") => self.token(&user),
            (&Method::POST, "/run") => self.start_run(user),
            (&Method::POST, "/drop") => self.drop_connections(&user).await,
            _ => text(StatusCode::NOT_FOUND, "not found".to_owned()),
        }
    }

    /// `GET /`: the page, pointed at Herald's WebSocket URL.
    fn page(&self) -> Response<Full<Bytes>> {
        // A JSON string is a JavaScript string literal; `<` escaped so it cannot end the script.
        let url = serde_json::Value::from(self.config.ws_url.as_str())
            .to_string()
            .replace('<', "\\u003c");
        respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            PAGE.replace("__HERALD_WS_URL__", &url),
        )
    }

    /// `GET /herald-client.js`: the built browser client, read at every request.
    async fn client_js(&self) -> Response<Full<Bytes>> {
        let path = self.config.client_js.clone();
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read(path)
        })
        .await
        .unwrap_or_else(|error| Err(std::io::Error::other(error)));
        match read {
            Ok(bytes) => respond(StatusCode::OK, "text/javascript; charset=utf-8", bytes),
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "cannot read {}: {error}; build the browser client first: cd clients/js && npm ci && npm run build",
                    path.display()
                ),
            ),
        }
    }

    /// `GET /token?user=`: a short-lived token for anyone who asks. Demo only: a real backend
    /// mints tokens for the user its own session authenticated.
    fn token(&self, user: &str) -> Response<Full<Bytes>> {
        let now = SystemClock.unix_ms() / 1000;
        match mint_token(&self.config.jwt_secret, user, now) {
            Ok(token) => text(StatusCode::OK, token),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }

    /// `POST /run?user=`: starts a fake run in the background and answers its id.
    fn start_run(self: Arc<Self>, user: String) -> Response<Full<Bytes>> {
        let number = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        // The start time keeps ids apart across restarts of this process (Herald keeps events
        // that were not acknowledged, and an event id names one event).
        let run_id = format!("run-{:x}-{number}", SystemClock.unix_ms());
        let answer = json!({ "runId": run_id }).to_string();
        tokio::spawn(async move { self.run_agent(&user, &run_id).await });
        respond(StatusCode::ACCEPTED, "application/json", answer)
    }

    /// Sends the five events of a run to `user`, [`STEP_DELAY`] apart.
    async fn run_agent(&self, user: &str, run_id: &str) {
        for (step, (event, data)) in run_steps(run_id).into_iter().enumerate() {
            if step > 0 {
                tokio::time::sleep(STEP_DELAY).await;
            }
            let data = match serde_json::value::to_raw_value(&data) {
                Ok(data) => data,
                Err(error) => {
                    eprintln!("{run_id}: cannot encode {event:?}: {error}");
                    return;
                }
            };
            let request = EventRequest {
                event,
                data,
                thread_id: None,
                run_id: Some(run_id.to_owned()),
                id: Some(format!("{run_id}-{step}")),
            };
            if let Err(error) = self.send(user, &request).await {
                eprintln!("{run_id}: {event:?} not sent, run abandoned: {error}");
                return;
            }
            eprintln!("{run_id}: sent {event:?} to {user}");
        }
    }

    /// Sends one event, retrying a few times; the fixed id makes a retry safe.
    async fn send(&self, user: &str, request: &EventRequest) -> Result<(), BackendError> {
        let mut attempt = 1;
        loop {
            match self.herald.send_event(user, request).await {
                Ok(_) => return Ok(()),
                Err(error) if attempt >= SEND_ATTEMPTS => return Err(error),
                Err(BackendError::RateLimited { retry_after, .. }) => {
                    tokio::time::sleep(retry_after).await;
                }
                Err(BackendError::Transport(_) | BackendError::Api { .. }) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
            attempt += 1;
        }
    }

    /// `POST /drop?user=`: closes every connection of `user` from the server side
    /// (`DELETE /api/connections/{id}`, close code 4010), as a network loss would end them.
    async fn drop_connections(&self, user: &str) -> Response<Full<Bytes>> {
        let ids = match self.connections_of(user).await {
            Ok(ids) => ids,
            Err(message) => return text(StatusCode::BAD_GATEWAY, message),
        };
        let mut closed = 0;
        for id in &ids {
            match self.herald.disconnect(id).await {
                Ok(true) => closed += 1,
                // Gone meanwhile: nothing to close.
                Ok(false) | Err(BackendError::Api { status: 404, .. }) => {}
                Err(error) => return text(StatusCode::BAD_GATEWAY, error.to_string()),
            }
        }
        respond(
            StatusCode::OK,
            "application/json",
            json!({ "closed": closed }).to_string(),
        )
    }

    /// `GET /api/connections?userId=`: the ids of `user`'s connections.
    async fn connections_of(&self, user: &str) -> Result<Vec<String>, String> {
        let request = Request::get(format!(
            "{}/api/connections?userId={user}",
            self.config.herald_url
        ))
        .header("authorization", format!("Bearer {}", self.config.api_key))
        .body(Full::new(Bytes::new()))
        .map_err(|error| error.to_string())?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| format!("Herald: {error}"))?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map_err(|error| format!("Herald: {error}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "Herald answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            serde_json::from_slice::<Connections>(&body)
                .map_err(|error| format!("unexpected answer from Herald: {error}"))
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "Herald did not answer within 10 s".to_owned())??;
        Ok(answer
            .connections
            .into_iter()
            .map(|connection| connection.connection_id)
            .collect())
    }
}

/// A response with a body of type `content_type`.
fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    // The demo's page and tokens must never come from a cache.
    response.headers_mut().insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

/// A plain-text response.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("agent-progress: {message}");
            return ExitCode::FAILURE;
        }
    };
    if !config.client_js.is_file() {
        eprintln!(
            "agent-progress: warning: {} is missing; build it with `cd clients/js && npm ci && npm run build`",
            config.client_js.display()
        );
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("agent-progress: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "agent-progress: open http://{addr}/ (Herald API {}, WebSocket {})",
        config.herald_url, config.ws_url
    );
    let app = Arc::new(App::new(config));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("agent-progress: accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.handle(request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("agent-progress: connection: {error}");
            }
        });
    }
}

#[cfg(test)]
mod tests;
