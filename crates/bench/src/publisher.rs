//! Publishing over HTTP/1.1 keep-alive: one hyper connection per publisher task, Herald's
//! `POST /api/publish` or `/api/publish/batch` (retrying what a 429 refused), or nchan's
//! `POST /pub/<id>` with the raw body.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::{
    client::{Target, TargetKind, connect_tcp},
    frame::payload,
};

/// Attempts per message before a refusal counts as a publish error.
const MAX_ATTEMPTS: u32 = 40;
/// Longest pause between two attempts, whatever Retry-After says: the bench wants to know
/// when the server has room again, not to sit out a whole second.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// How long a request may take before the publisher gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How Herald publications are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PublishMode {
    /// `POST /api/publish/batch` with every publication due (Herald's default: fewer HTTP
    /// round trips per publication; nchan has no batch endpoint).
    Batch,
    /// One request per publication (`/api/publish`, or nchan's `/pub/<id>`).
    Single,
}

/// One publication to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Publication {
    /// Topic index.
    pub(crate) topic: u64,
    /// Sequence number in the topic, from 1.
    pub(crate) seq: u64,
    /// Send time to stamp, in Unix nanoseconds.
    pub(crate) sent_ns: u64,
}

/// Totals of one publisher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PublishCounts {
    /// Publications the server accepted.
    pub(crate) published: u64,
    /// Attempts refused with 429 (or `rate_limited` in a batch) and made again.
    pub(crate) retries: u64,
    /// Publications given up on (other errors, or too many refusals).
    pub(crate) errors: u64,
}

impl std::ops::AddAssign for PublishCounts {
    fn add_assign(&mut self, other: Self) {
        self.published += other.published;
        self.retries += other.retries;
        self.errors += other.errors;
    }
}

/// One keep-alive HTTP connection to the server.
pub(crate) struct Http {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

/// A response: status, headers and the whole body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Http {
    /// Opens a connection to the target.
    pub(crate) async fn connect(target: &Target) -> anyhow::Result<Self> {
        let stream = connect_tcp(target.addr, 0).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("http handshake")?;
        tokio::spawn(async move {
            // The connection ends when the sender is dropped or the server closes it; a
            // request in flight reports the error.
            let _ = connection.await;
        });
        Ok(Self {
            target: target.clone(),
            sender,
            host: target.addr.to_string(),
        })
    }

    async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        if self.sender.is_closed() {
            *self = Self::connect(&self.target).await?;
        }
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if self.target.kind == TargetKind::Herald {
            request = request.header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.target.api_key),
            );
        }
        let request = request.body(Full::new(body))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(answer) => Ok(answer?),
            Err(_) => bail!("{path}: no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// A publisher task's connection and its way of publishing.
pub(crate) struct Publisher {
    http: Http,
    mode: PublishMode,
    size: usize,
    /// What it did so far.
    pub(crate) counts: PublishCounts,
    /// The first error seen, for the report.
    pub(crate) first_error: Option<String>,
}

/// What became of one publication after its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Published,
    Retry(Option<Duration>),
    Failed,
}

impl Publisher {
    /// Connects a publisher; `mode` is forced to `Single` for nchan, which has no batch API.
    pub(crate) async fn connect(
        target: &Target,
        mode: PublishMode,
        size: usize,
    ) -> anyhow::Result<Self> {
        let mode = match target.kind {
            TargetKind::Herald => mode,
            TargetKind::Nchan => PublishMode::Single,
        };
        Ok(Self {
            http: Http::connect(target).await?,
            mode,
            size,
            counts: PublishCounts::default(),
            first_error: None,
        })
    }

    /// Publishes `publications` in order (one request for a batch, else one each), retrying
    /// refusals with backoff. Returns how many of them the server accepted, per position:
    /// `accepted[i]` is whether `publications[i]` was.
    pub(crate) async fn publish(&mut self, publications: &[Publication]) -> Vec<bool> {
        let mut accepted = vec![false; publications.len()];
        let mut pending: Vec<usize> = (0..publications.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let fates = match self.mode {
                PublishMode::Batch => self.send_batch(publications, &pending).await,
                PublishMode::Single => {
                    let mut fates = Vec::with_capacity(pending.len());
                    for &i in &pending {
                        fates.push(self.send_one(&publications[i]).await);
                    }
                    fates
                }
            };
            let mut wait = None;
            let mut again = Vec::new();
            for (&i, fate) in pending.iter().zip(fates) {
                match fate {
                    Fate::Published => {
                        accepted[i] = true;
                        self.counts.published += 1;
                    }
                    Fate::Retry(after) if attempt < MAX_ATTEMPTS => {
                        self.counts.retries += 1;
                        again.push(i);
                        wait = wait.max(after);
                    }
                    Fate::Retry(_) | Fate::Failed => self.counts.errors += 1,
                }
            }
            if !again.is_empty() {
                // Exponential backoff from 1 ms, capped by Retry-After and MAX_BACKOFF.
                let backoff = Duration::from_millis(1 << attempt.min(8));
                let pause = wait.map_or(backoff, |w| w.min(backoff)).min(MAX_BACKOFF);
                tokio::time::sleep(pause).await;
            }
            pending = again;
        }
        accepted
    }

    fn note_error(&mut self, error: impl FnOnce() -> String) -> Fate {
        if self.first_error.is_none() {
            self.first_error = Some(error());
        }
        Fate::Failed
    }

    async fn send_one(&mut self, publication: &Publication) -> Fate {
        let data = payload(
            publication.seq,
            publication.topic,
            publication.sent_ns,
            self.size,
        );
        let topic = self.http.target.topic_name(publication.topic);
        let (path, body) = match self.http.target.kind {
            TargetKind::Herald => (
                "/api/publish".to_owned(),
                format!(r#"{{"topic":"{topic}","data":{data}}}"#),
            ),
            TargetKind::Nchan => (format!("/pub/{topic}"), data),
        };
        match self
            .http
            .request(http::Method::POST, &path, Bytes::from(body))
            .await
        {
            Ok(answer) if answer.status.is_success() => Fate::Published,
            Ok(answer) if is_refusal(answer.status) => Fate::Retry(retry_after(&answer.headers)),
            Ok(answer) => self.note_error(|| describe(&path, &answer)),
            Err(error) => self.note_error(|| format!("{path}: {error:#}")),
        }
    }

    async fn send_batch(&mut self, publications: &[Publication], pending: &[usize]) -> Vec<Fate> {
        let mut body = String::with_capacity(pending.len() * (self.size + 48) + 16);
        body.push_str(r#"{"messages":["#);
        for (n, &i) in pending.iter().enumerate() {
            let p = &publications[i];
            if n > 0 {
                body.push(',');
            }
            body.push_str(r#"{"topic":""#);
            body.push_str(&self.http.target.topic_name(p.topic));
            body.push_str(r#"","data":"#);
            body.push_str(&payload(p.seq, p.topic, p.sent_ns, self.size));
            body.push('}');
        }
        body.push_str("]}");
        let path = "/api/publish/batch";
        let answer = match self
            .http
            .request(http::Method::POST, path, Bytes::from(body))
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                let fate = self.note_error(|| format!("{path}: {error:#}"));
                return vec![fate; pending.len()];
            }
        };
        if is_refusal(answer.status) {
            return vec![Fate::Retry(retry_after(&answer.headers)); pending.len()];
        }
        if !answer.status.is_success() {
            let fate = self.note_error(|| describe(path, &answer));
            return vec![fate; pending.len()];
        }
        let results = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|mut v| match v.get_mut("results")?.take() {
                Value::Array(items) => Some(items),
                _ => None,
            });
        let Some(results) = results.filter(|r| r.len() == pending.len()) else {
            let fate = self
                .note_error(|| format!("{path}: unexpected answer {}", describe(path, &answer)));
            return vec![fate; pending.len()];
        };
        results
            .iter()
            .map(|item| {
                if item.get("offset").is_some() {
                    return Fate::Published;
                }
                let error = &item["error"];
                if error["code"] == "rate_limited" {
                    let after = error["retryAfter"].as_u64().map(Duration::from_millis);
                    return Fate::Retry(after);
                }
                self.note_error(|| format!("{path}: item refused: {item}"))
            })
            .collect()
    }
}

/// 429, or 503 with Retry-After: the server asks to come back later.
fn is_refusal(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The Retry-After header, in seconds as HTTP has it.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn describe(path: &str, answer: &Answer) -> String {
    let body = String::from_utf8_lossy(&answer.body);
    let body: String = body.chars().take(200).collect();
    format!("{path}: HTTP {}: {body}", answer.status)
}

/// Waits until nchan reports `expected[k]` subscribers on every topic index `k` (they become
/// active asynchronously after the upgrade), polling its channel info, for at most `limit`.
pub(crate) async fn wait_for_nchan_subscribers(
    target: &Target,
    expected: &[u64],
    limit: Duration,
) -> anyhow::Result<()> {
    let mut http = Http::connect(target).await?;
    let deadline = tokio::time::Instant::now() + limit;
    for (k, &want) in expected.iter().enumerate() {
        if want == 0 {
            continue;
        }
        let path = format!("/pub/{}", target.topic_name(k as u64));
        loop {
            let answer = http.request(http::Method::GET, &path, Bytes::new()).await?;
            let have = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|info| info["subscribers"].as_u64())
                .unwrap_or(0);
            if answer.status.is_success() && have >= want {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "nchan channel {path} has {have} of {want} subscribers after {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_429_and_503_are_retried() {
        assert!(is_refusal(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_refusal(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!is_refusal(StatusCode::BAD_REQUEST));
        assert!(!is_refusal(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
