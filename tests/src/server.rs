//! The `herald` binary under test: where cargo put it, a running server on a free port with an
//! HTTP client for its API, and one-shot runs that only check how it exits.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::{API_KEY, SECRET, TIMEOUT};

/// A running `herald` process, killed when dropped.
pub struct TestServer {
    /// The process, until `wait_exit` takes it.
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin listener's address, when `HERALD_ADMIN_LISTEN` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Its stderr (JSON log lines) from after the `listening` line on.
    stderr_lines: mpsc::UnboundedReceiver<String>,
    /// The HTTP client for its API.
    http: Client<HttpConnector, Full<Bytes>>,
}

/// The `herald` binary: `$HERALD_BIN` when set, else the one cargo built next to this test.
///
/// A test executable lives in `<target>/<profile>/deps/`, and cargo puts the binary in
/// `<target>/<profile>/`, so this finds it wherever `CARGO_TARGET_DIR` and the profile point.
/// Fails, saying how to build it, when the binary is not there.
pub fn herald_bin() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("HERALD_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().context("cannot find the test executable")?;
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .with_context(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
            profile_dir.join(format!("herald{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !bin.is_file() {
        bail!(
            "{} is missing: run `cargo build -p herald-service --bin herald` with the same \
             target directory and profile as the tests, or set HERALD_BIN (cargo xtask ci builds it)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `herald args...` to its exit with only `env` in its environment (no secret, no API
/// key), for what start-up accepts and refuses.
pub async fn run_herald(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let bin = herald_bin()?;
    let run = Command::new(&bin)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TIMEOUT, run)
        .await
        .with_context(|| format!("{} did not exit within {TIMEOUT:?}", bin.display()))?
        .with_context(|| format!("cannot run {}", bin.display()))
}

/// The value of the Prometheus line for `series` (the name and its labels, as printed) in a
/// `/metrics` text, if there is one.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

impl TestServer {
    /// Starts herald with the test secret and API key plus `env` (which wins).
    pub async fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = herald_bin()?;
        let mut child = Command::new(&bin)
            .env_clear()
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_API_KEYS", API_KEY)
            .env("HERALD_LOG_FORMAT", "json")
            .env("HERALD_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut admin_addr = None;
        let addr = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = rx.recv().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if value["message"] == "admin listening" {
                    admin_addr = value["addr"].as_str().and_then(|a| a.parse().ok());
                }
                if value["message"] == "listening" {
                    return value["addr"].as_str().and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .context("herald did not start listening in time")?
        .context("herald exited before listening")?;
        Ok(Self {
            child: Some(child),
            addr,
            admin_addr,
            stderr_lines: rx,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// `ws://addr/ws` plus `query` (e.g. `?token=...`).
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// Sends an HTTP request; `api` adds the API key. Returns status, headers and JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        api: bool,
    ) -> anyhow::Result<(u16, http::HeaderMap, Value)> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.request_raw(method, path, bytes, api.then_some(API_KEY))
            .await
    }

    /// Sends raw bytes with an optional bearer key; status, headers and JSON body.
    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, http::HeaderMap, Value)> {
        let uri = format!("http://{}{path}", self.addr);
        let (status, headers, bytes) = self.exchange(method, &uri, body, bearer).await?;
        Ok((status, headers, json_or_null(&bytes)))
    }

    /// Sends `method path` (no body) with an optional bearer key and returns status, headers
    /// and the body as text, for answers that are not JSON (e.g. `/metrics`).
    pub async fn request_text(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, http::HeaderMap, String)> {
        let uri = format!("http://{}{path}", self.addr);
        let (status, headers, bytes) = self.exchange(method, &uri, Bytes::new(), bearer).await?;
        Ok((status, headers, String::from_utf8(bytes.to_vec())?))
    }

    /// `GET path` on another listener of this server (e.g. the admin one); status and JSON body.
    pub async fn get_at(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Value)> {
        let uri = format!("http://{addr}{path}");
        let (status, _, bytes) = self.exchange("GET", &uri, Bytes::new(), None).await?;
        Ok((status, json_or_null(&bytes)))
    }

    /// The one place that sends an HTTP request: JSON content type, optional bearer key,
    /// answered within [`TIMEOUT`].
    async fn exchange(
        &self,
        method: &str,
        uri: &str,
        body: Bytes,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(key) = bearer {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = builder.body(Full::new(body))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request)).await??;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, bytes))
    }

    /// `GET /api/stats`.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        self.expect_ok("GET", "/api/stats", None).await
    }

    /// `POST /api/publish` and the answer's body, retrying while the server answers 429.
    pub async fn publish(&self, topic: &str, data: Value) -> anyhow::Result<Value> {
        self.post("/api/publish", &json!({"topic": topic, "data": data}))
            .await
    }

    /// `POST /api/publish/batch` of `messages` (each `{topic, data, ...}`) and the answer's
    /// body; fails unless the server answers 200.
    pub async fn publish_batch(&self, messages: &[Value]) -> anyhow::Result<Value> {
        let body = json!({ "messages": messages });
        self.expect_ok("POST", "/api/publish/batch", Some(&body))
            .await
    }

    /// `POST /api/users/{user}/send` of `data`, to the user's connections bound to `thread`
    /// (and the unbound ones) or to all of them, and the answer's body (`{"delivered": n}`);
    /// fails unless the server answers 200.
    pub async fn send_to_user(
        &self,
        user: &str,
        data: Value,
        thread: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut body = json!({ "data": data });
        if let Some(thread) = thread {
            body["threadId"] = json!(thread);
        }
        self.post(&format!("/api/users/{user}/send"), &body).await
    }

    /// `POST /api/users/{user}/events` with `body`, retrying while the server answers 429.
    pub async fn send_event(&self, user: &str, body: &Value) -> anyhow::Result<Value> {
        self.post(&format!("/api/users/{user}/events"), body).await
    }

    /// POSTs `body` to an API route with the API key until it is not refused with 429, and
    /// returns the answer's body; fails on any other status but 200.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        loop {
            let (status, _, answer) = self.request("POST", path, Some(body), true).await?;
            match status {
                200 => return Ok(answer),
                429 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => bail!("{path} answered {status}: {answer}"),
            }
        }
    }

    /// `PATCH /api/config/runtime` with `values` and the runtime config it answers; fails
    /// unless the server answers 200.
    pub async fn patch_runtime(&self, values: &Value) -> anyhow::Result<Value> {
        self.expect_ok("PATCH", "/api/config/runtime", Some(values))
            .await
    }

    /// Sends an API request with the API key and returns the answer's body; fails unless the
    /// server answers 200.
    async fn expect_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, _, answer) = self.request(method, path, body, true).await?;
        if status != 200 {
            bail!("{method} {path} answered {status}: {answer}");
        }
        Ok(answer)
    }

    /// Waits until `predicate` holds for `/api/stats`, or fails after [`TIMEOUT`].
    pub async fn wait_for_stats(
        &self,
        predicate: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let stats = self.stats().await?;
            if predicate(&stats) {
                return Ok(stats);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("stats never matched; last: {stats}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.sigterm().await?;
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// Sends SIGTERM without waiting for the exit (see [`TestServer::wait_exit`]).
    pub async fn sigterm(&self) -> anyhow::Result<()> {
        self.signal("-TERM").await
    }

    /// Kills the process with SIGKILL, as a crash would, without waiting for the exit: its
    /// connections drop without a close frame and everything it held in memory is gone.
    pub async fn sigkill(&self) -> anyhow::Result<()> {
        self.signal("-KILL").await
    }

    /// Sends SIGHUP (reload the TLS certificates).
    pub async fn sighup(&self) -> anyhow::Result<()> {
        self.signal("-HUP").await
    }

    /// A TCP connection to the server from the loopback address `source` (any of 127/8), so a
    /// test can be several clients by address.
    pub async fn tcp_from(
        &self,
        source: std::net::Ipv4Addr,
    ) -> anyhow::Result<tokio::net::TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        Ok(tokio::time::timeout(TIMEOUT, socket.connect(self.addr)).await??)
    }

    /// Sends `signal` (`-TERM`, `-KILL`, `-HUP`) to the process.
    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("already stopped")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill {signal} failed");
        }
        Ok(())
    }

    /// Starts another herald on `addr` (the port of a server that was stopped), like
    /// [`TestServer::start`] with `env`; retries while the port is not free yet.
    pub async fn start_at(addr: SocketAddr, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let listen = addr.to_string();
        let mut env = env.to_vec();
        env.push(("HERALD_LISTEN", &listen));
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match Self::start(&env).await {
                Ok(server) => return Ok(server),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits at most `limit` for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        tokio::time::timeout(limit, child.wait())
            .await
            .with_context(|| format!("herald did not exit within {limit:?}"))?
            .context("cannot wait for herald")
    }

    /// The next stderr line (JSON log) that contains `needle`.
    pub async fn log_line_containing(&mut self, needle: &str) -> anyhow::Result<Value> {
        tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.stderr_lines.recv().await {
                if line.contains(needle) {
                    return Ok(serde_json::from_str(&line).unwrap_or(Value::String(line)));
                }
            }
            Err(anyhow!("herald's stderr ended"))
        })
        .await?
    }
}

/// A body as JSON, or `Value::Null` when it is empty or not JSON.
fn json_or_null(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}
