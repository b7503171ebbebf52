//! A headless Chromium driven over the Chrome DevTools Protocol, for tests of pages Herald
//! serves (the dashboard): launch it, open one page, navigate, evaluate JavaScript, wait for a
//! value, take a screenshot, and collect every script error and console error the page had.
//!
//! Debian's `chromium` ([`CHROMIUM`]) is required: a missing browser is a failure that says how
//! to install it, never a skip (`cargo xtask ci` installs it). The browser runs in a process
//! group of its own, killed with everything in it when the [`Browser`] is dropped, and its
//! profile lives in a fresh directory removed then.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::TIMEOUT;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The page's size in CSS pixels, as a laptop shows it.
const VIEWPORT: (u32, u32) = (1280, 900);
/// How often [`Browser::wait_for`] evaluates its expression again.
const POLL: Duration = Duration::from_millis(50);

/// Something the page reported that a test may fail on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it came from: `exception` (an uncaught script error), `console` (a
    /// `console.error` or failed `console.assert`) or a `Log` entry's source (`network`,
    /// `javascript`, `security`, ...).
    pub source: String,
    /// What it said.
    pub text: String,
}

/// The socket to the browser, the calls awaiting an answer, and what the page reported.
type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A headless Chromium with one page open, killed when dropped.
pub struct Browser {
    /// The browser's process group and profile, removed when dropped.
    _process: Process,
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    problems: Arc<Mutex<Vec<Problem>>>,
    reader: JoinHandle<()>,
    next_id: AtomicU64,
    /// The page's DevTools session.
    session: String,
}

impl Browser {
    /// Starts [`CHROMIUM`] headless and opens a blank page with the Runtime, Log and Page
    /// domains enabled; fails, saying how to install it, when the browser is missing.
    pub async fn launch() -> anyhow::Result<Self> {
        if !Path::new(CHROMIUM).is_file() {
            bail!(
                "{CHROMIUM} is missing: the dashboard tests need Debian's chromium \
                 (`apt-get install chromium`; `cargo xtask ci` installs it when missing)"
            );
        }
        let profile = fresh_profile_dir()?;
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1),
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so dropping the browser kills its helpers too.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {CHROMIUM}"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let process = Process { child, profile };
        let url = devtools_url(stderr).await?;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("cannot connect to DevTools at {url}"))?;
        let (sink, stream) = ws.split();
        let pending: Pending = Arc::default();
        let problems = Arc::default();
        let reader = tokio::spawn(read_messages(
            stream,
            Arc::clone(&pending),
            Arc::clone(&problems),
        ));
        let mut browser = Self {
            _process: process,
            sink: tokio::sync::Mutex::new(sink),
            pending,
            problems,
            reader,
            next_id: AtomicU64::new(1),
            session: String::new(),
        };
        let target = browser
            .call_browser("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().context("no targetId")?;
        let attached = browser
            .call_browser(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_owned();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({})).await?;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await?;
        Ok(browser)
    }

    /// Opens `url` in the page and waits until it has loaded (`document.readyState` is
    /// `complete`).
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let answer = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = answer["errorText"].as_str() {
            bail!("cannot open {url}: {error}");
        }
        self.wait_for("document.readyState", &json!("complete"))
            .await
    }

    /// The value of the JavaScript `expression` in the page (promises are awaited); fails when
    /// it throws.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            bail!("`{expression}` threw: {}", exception_text(details));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Waits until `expression` evaluates to `expected`; fails at once when the page throws an
    /// uncaught exception, else after [`TIMEOUT`] with the last value it had and the page's
    /// problems.
    pub async fn wait_for(&self, expression: &str, expected: &Value) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let value = self.evaluate(expression).await?;
            if value == *expected {
                return Ok(());
            }
            let problems = self.problems();
            if let Some(thrown) = problems.iter().find(|p| p.source == "exception") {
                bail!(
                    "the page threw while waiting for `{expression}`: {}",
                    thrown.text
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "`{expression}` was {value} after {TIMEOUT:?}, not {expected}; the page \
                     reported {:?}",
                    self.problems()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A PNG of the page as it is shown now.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let answer = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let data = answer["data"].as_str().context("no screenshot data")?;
        decode_base64(data).context("the screenshot is not base64")
    }

    /// Every script error and console error the page reported so far.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls `method` in the page's session.
    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params, Some(&self.session)).await
    }

    /// Calls `method` on the browser itself.
    async fn call_browser(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params, None).await
    }

    /// Sends one command and waits at most [`TIMEOUT`] for its answer.
    async fn send(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(command.to_string()))
            .await
            .with_context(|| format!("cannot send {method} to the browser"))?;
        let answer = tokio::time::timeout(TIMEOUT, rx)
            .await
            .with_context(|| format!("the browser did not answer {method} within {TIMEOUT:?}"))?
            .map_err(|_| anyhow!("the browser closed before answering {method}"))?;
        if let Some(error) = answer.get("error") {
            bail!("{method} failed: {error}");
        }
        Ok(answer["result"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The process goes with its own `Drop`; the reader would only wait for its socket.
        self.reader.abort();
    }
}

/// The browser's process and its profile directory: the group is killed and the directory
/// removed when dropped, whether the launch finished or not.
struct Process {
    child: Child,
    profile: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills `child`'s process group (the browser and its helpers) and reaps the browser.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A new, empty directory for the browser's profile.
fn fresh_profile_dir() -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "herald-chromium-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Reads the browser's stderr until `DevTools listening on ws://...` and returns the address;
/// fails with what it printed when it exits first or takes longer than [`TIMEOUT`].
async fn devtools_url(stderr: std::process::ChildStderr) -> anyhow::Result<String> {
    let (tx, rx) = oneshot::channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&seen);
    // A thread, since the pipe is a blocking one; it reads the rest of stderr to the end so
    // the browser never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.trim().to_owned());
                }
            } else if tx.is_some() {
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        }
    });
    let printed = || {
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    };
    match tokio::time::timeout(TIMEOUT, rx).await {
        Ok(Ok(url)) => Ok(url),
        Ok(Err(_)) => bail!(
            "{CHROMIUM} exited before listening; it printed:\n{}",
            printed()
        ),
        Err(_) => bail!(
            "{CHROMIUM} did not print its DevTools address within {TIMEOUT:?}; it printed:\n{}",
            printed()
        ),
    }
}

/// Routes the browser's messages: answers to their callers, the page's errors to `problems`.
async fn read_messages(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    pending: Pending,
    problems: Arc<Mutex<Vec<Problem>>>,
) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(id) = value["id"].as_u64() {
            let waiter = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(value);
            }
            continue;
        }
        if let Some(problem) = problem_in(&value) {
            problems
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(problem);
        }
    }
}

/// The problem an event reports, if it reports one.
fn problem_in(event: &Value) -> Option<Problem> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(Problem {
            source: "exception".to_owned(),
            text: exception_text(&params["exceptionDetails"]),
        }),
        "Runtime.consoleAPICalled"
            if matches!(params["type"].as_str(), Some("error" | "assert")) =>
        {
            let text = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|arg| match &arg["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => arg["description"].as_str().unwrap_or("").to_owned(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ");
            Some(Problem {
                source: "console".to_owned(),
                text,
            })
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => Some(Problem {
            source: params["entry"]["source"]
                .as_str()
                .unwrap_or("log")
                .to_owned(),
            text: params["entry"]["text"].as_str().unwrap_or("").to_owned(),
        }),
        _ => None,
    }
}

/// The message of an exception's details: the error's description, else the text.
fn exception_text(details: &Value) -> String {
    details["exception"]["description"]
        .as_str()
        .or_else(|| details["text"].as_str())
        .unwrap_or("an exception without a message")
        .to_owned()
}

/// Decodes standard base64 (with or without padding); `None` on any other character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut count = 0;
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            // The top byte of what is buffered; the cast keeps exactly those 8 bits.
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_devtools_sends() {
        assert_eq!(decode_base64("aGVyYWxk").as_deref(), Some(&b"herald"[..]));
        assert_eq!(decode_base64("aGVyYWw=").as_deref(), Some(&b"heral"[..]));
        assert_eq!(decode_base64("aGVyYQ==").as_deref(), Some(&b"hera"[..]));
        assert_eq!(
            decode_base64("iVBORw0KGgo=").as_deref(),
            Some(&b"\x89PNG\r\n\x1a\n"[..])
        );
        assert_eq!(decode_base64("a?b"), None);
    }

    #[test]
    fn errors_and_exceptions_are_problems_other_events_are_not() {
        let exception = json!({"method": "Runtime.exceptionThrown", "params": {"exceptionDetails":
            {"text": "Uncaught", "exception": {"description": "TypeError: x is undefined"}}}});
        assert_eq!(
            problem_in(&exception).map(|p| p.text),
            Some("TypeError: x is undefined".to_owned())
        );
        let console = json!({"method": "Runtime.consoleAPICalled", "params": {"type": "error",
            "args": [{"type": "string", "value": "boom"}, {"type": "number", "value": 3}]}});
        assert_eq!(
            problem_in(&console).map(|p| p.text),
            Some("boom 3".to_owned())
        );
        let network = json!({"method": "Log.entryAdded", "params": {"entry":
            {"level": "error", "source": "network", "text": "401"}}});
        assert_eq!(
            problem_in(&network).map(|p| p.source),
            Some("network".to_owned())
        );
        let log =
            json!({"method": "Runtime.consoleAPICalled", "params": {"type": "log", "args": []}});
        assert_eq!(problem_in(&log), None);
        let warning =
            json!({"method": "Log.entryAdded", "params": {"entry": {"level": "warning"}}});
        assert_eq!(problem_in(&warning), None);
    }
}
