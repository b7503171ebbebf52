//! The driver on tokio's paused clock, with connection attempts that fail without I/O: the
//! reconnection schedule, the token fetches it makes, and closing while it waits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    Backoff, Client, ClientConfig, ClientError, ClientEvent, ConnectionState, TokenError,
    backoff::Jitter,
    dial::{Dial, DialFuture},
};

/// A dial whose every attempt fails at once, as a refused TCP connection does.
fn refusing_dial() -> Dial {
    Arc::new(|_| -> DialFuture {
        Box::pin(async {
            Err(crate::dial::refused_upgrade(
                &tokio_tungstenite::tungstenite::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )),
            ))
        })
    })
}

/// A token provider that counts its calls and hands out a token valid for an hour.
fn counting_provider(calls: Arc<AtomicU32>) -> Arc<dyn crate::TokenProvider> {
    Arc::new(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TokenError>(token_expiring_in(3_600)) }
    })
}

/// An unsigned JWT-shaped token whose `exp` is `seconds` from now (wall clock).
fn token_expiring_in(seconds: u64) -> String {
    let exp = crate::token::unix_now_ms() / 1000 + seconds;
    let payload = format!("{{\"sub\":\"u\",\"exp\":{exp}}}");
    format!("e30.{}.sig", base64url(payload.as_bytes()))
}

/// Base64url without padding.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_follow_the_jittered_exponential_curve_up_to_the_max() {
    let backoff = Backoff::default()
        .initial(Duration::from_millis(100))
        .max(Duration::from_millis(1_000))
        .multiplier(2.0);
    let calls = Arc::new(AtomicU32::new(0));
    let config = ClientConfig::new("ws://127.0.0.1:9/ws").backoff(backoff);
    let (driver, client, mut events) = Client::driver(
        config,
        counting_provider(Arc::clone(&calls)),
        refusing_dial(),
    );
    tokio::spawn(driver.with_jitter(Jitter::seeded(42)).run());

    let mut announced: Option<(u32, Duration, Instant)> = None;
    let mut delays = Vec::new();
    while delays.len() < 12 {
        let Some(event) = events.recv().await else {
            panic!("the client stopped");
        };
        match event {
            ClientEvent::State(ConnectionState::Reconnecting { attempt, delay }) => {
                assert_eq!(attempt as usize, delays.len() + 1);
                assert!(delay <= backoff.bound(attempt), "{attempt}: {delay:?}");
                announced = Some((attempt, delay, Instant::now()));
            }
            ClientEvent::State(ConnectionState::Connecting { attempt }) => {
                if let Some((announced_attempt, delay, at)) = announced.take() {
                    assert_eq!(attempt, announced_attempt);
                    // On the paused clock the wait is the announced delay, rounded up to
                    // the timer's millisecond.
                    let waited = Instant::now() - at;
                    assert!(
                        waited >= delay && waited <= delay + Duration::from_millis(1),
                        "announced {delay:?}, waited {waited:?}"
                    );
                    delays.push(delay);
                }
            }
            _ => {}
        }
    }
    // The curve doubles from 100 ms and stops at the max; the jitter spreads below it.
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(1_000)));
    assert!(delays[4..].iter().any(|d| *d > Duration::from_millis(400)));
    assert!(delays[..2].iter().all(|d| *d <= Duration::from_millis(200)));
    // The token stays fresh, so it was fetched once for all those attempts.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    client.close().await;
}

#[tokio::test(start_paused = true)]
async fn requests_while_disconnected_fail_fast_or_wait_and_close_ends_the_stream() {
    let calls = Arc::new(AtomicU32::new(0));
    let config = ClientConfig::new("ws://127.0.0.1:9/ws")
        .backoff(Backoff::default().initial(Duration::from_secs(60)));
    let (driver, client, mut events) =
        Client::driver(config, counting_provider(calls), refusing_dial());
    tokio::spawn(driver.with_jitter(Jitter::seeded(1)).run());

    assert_eq!(
        client.publish("chat:1", &1).await,
        Err(ClientError::NotConnected)
    );
    assert!(matches!(
        client.subscribe("bad topic").await,
        Err(ClientError::InvalidRequest(_))
    ));
    // A subscribe waits for the next connection; closing fails it.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.subscribe("chat:1").await }
    });
    tokio::task::yield_now().await;
    client.close().await;
    assert_eq!(waiting.await.ok(), Some(Err(ClientError::Closed)));
    let mut last = None;
    while let Some(event) = events.recv().await {
        last = Some(event);
    }
    assert!(matches!(
        last,
        Some(ClientEvent::State(ConnectionState::Closed {
            code: Some(1000),
            ..
        }))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_url_closes_the_client_without_retrying() {
    let calls = Arc::new(AtomicU32::new(0));
    let config = ClientConfig::new("not a url");
    let (client, mut events) = Client::connect(config, move || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TokenError>("t".to_owned()) }
    });
    let mut states = Vec::new();
    while let Some(event) = events.recv().await {
        if let ClientEvent::State(state) = event {
            states.push(state);
        }
    }
    assert!(matches!(
        states.first(),
        Some(ConnectionState::Connecting { .. })
    ));
    assert!(matches!(
        states.last(),
        Some(ConnectionState::Closed { .. })
    ));
    assert!(
        !states
            .iter()
            .any(|s| matches!(s, ConnectionState::Reconnecting { .. }))
    );
    drop(client);
}

/// A server on loopback that accepts one WebSocket, says `connected` and then never answers
/// a request (it reads and drops them); the frames it read are counted.
async fn silent_server(read: Arc<AtomicU32>) -> std::net::SocketAddr {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{
        Message,
        handshake::server::{Request, Response},
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        // The client asks for `herald.v1` and insists on getting it. (The callback's error
        // type is tungstenite's, large or not.)
        #[allow(clippy::result_large_err)]
        let herald_v1 = |_: &Request, mut response: Response| {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static("herald.v1"),
            );
            Ok(response)
        };
        let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tcp, herald_v1).await else {
            return;
        };
        let connected = r#"{"type":"connected","data":{"connectionId":"c1","userId":"u","tier":"free","heartbeatInterval":600000,"maxPayload":65536}}"#;
        if socket.send(Message::text(connected)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.next().await {
            read.fetch_add(1, Ordering::SeqCst);
        }
    });
    addr
}

/// The connection is opened on the real clock (loopback I/O and a paused clock's jumps do not
/// mix); the requests then run on the paused clock.
#[tokio::test]
async fn requests_without_a_reply_fail_with_timed_out_after_the_configured_time() {
    let read = Arc::new(AtomicU32::new(0));
    let addr = silent_server(Arc::clone(&read)).await;
    let config = ClientConfig::new(format!("ws://{addr}/ws"))
        .connect_timeout(Duration::from_secs(600))
        .request_timeout(Duration::from_secs(2));
    let dial = crate::dial::network_dial(Ok(None));
    let (client, mut events) =
        Client::connect_with_dial(config, counting_provider(Arc::new(AtomicU32::new(0))), dial);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("connected within 10 s");
        match event {
            Some(ClientEvent::State(ConnectionState::Connected(_))) => break,
            Some(ClientEvent::State(ConnectionState::Closed { reason, .. })) => {
                panic!("closed: {reason}")
            }
            Some(_) => {}
            None => panic!("the client stopped"),
        }
    }
    tokio::time::pause();

    let started = Instant::now();
    let timeout = Err(ClientError::TimedOut(Duration::from_secs(2)));
    assert_eq!(client.publish("chat:1", &1).await.map(|_| ()), timeout);
    let waited = Instant::now() - started;
    assert!(
        waited >= Duration::from_secs(2)
            && waited <= Duration::from_secs(2) + Duration::from_millis(1),
        "{waited:?}"
    );
    assert_eq!(client.preferences().await.map(|_| ()), timeout);
    assert_eq!(client.subscribe("chat:1").await.map(|_| ()), timeout);
    assert_eq!(client.unsubscribe("chat:1").await.map(|_| ()), timeout);
    tokio::time::resume();
    // Every request was sent (the server read them); the connection is still up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "the server read {read:?} requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Some(Some(event)) = futures_util::FutureExt::now_or_never(events.recv()) {
        assert!(
            !matches!(
                event,
                ClientEvent::State(ConnectionState::Disconnected { .. })
            ),
            "{event:?}"
        );
    }
    client.close().await;
}

/// A loopback server for the measurement below: every connection gets `connected`; a
/// `subscribe` gets its ack and then `messages` message frames of about 256 bytes, written in
/// runs of 64 per flush.
async fn blasting_server(messages: u64) -> std::net::SocketAddr {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{
        Message,
        handshake::server::{Request, Response},
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)]
                let herald_v1 = |_: &Request, mut response: Response| {
                    response.headers_mut().insert(
                        "sec-websocket-protocol",
                        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("herald.v1"),
                    );
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tcp, herald_v1).await
                else {
                    return;
                };
                let connected = r#"{"type":"connected","data":{"connectionId":"c","userId":"u","tier":"free","heartbeatInterval":600000,"maxPayload":65536}}"#;
                if socket.send(Message::text(connected)).await.is_err() {
                    return;
                }
                while let Some(Ok(Message::Text(text))) = socket.next().await {
                    let Ok(request) = serde_json::from_str::<serde_json::Value>(text.as_str())
                    else {
                        return;
                    };
                    if request["type"] != "subscribe" {
                        continue;
                    }
                    let ack = serde_json::json!({"type": "ack", "messageId": request["messageId"],
                        "data": {"topic": "t", "offset": 0, "epoch": "e", "recovered": false}});
                    if socket.send(Message::text(ack.to_string())).await.is_err() {
                        return;
                    }
                    let pad = "x".repeat(180);
                    for offset in 1..=messages {
                        let frame = format!(
                            r#"{{"type":"message","topic":"t","data":{{"n":{offset},"pad":"{pad}"}},"offset":{offset},"epoch":"e"}}"#
                        );
                        if socket.feed(Message::text(frame)).await.is_err() {
                            return;
                        }
                        if offset % 64 == 0 && socket.flush().await.is_err() {
                            return;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The figures of docs/clients.md, "Driving the load generator through herald-client": the
/// client-side cost of one delivery and of one idle connection, herald-client against a bare
/// tokio-tungstenite reader that parses only the offset (what the load generator does). Run
/// `cargo test --release -p herald-client -- --ignored --nocapture cost_of`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that prints figures; run it in release"]
async fn cost_of_a_delivery_and_of_an_idle_connection() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    const MESSAGES: u64 = 300_000;
    const IDLE: usize = 1_000;
    let addr = blasting_server(MESSAGES).await;
    let url = format!("ws://{addr}/ws");

    // One subscriber receives MESSAGES frames as fast as it can read them.
    let (client, mut events) = Client::connect(ClientConfig::new(&url), || async {
        Ok::<_, TokenError>(token_expiring_in(3_600))
    });
    client.subscribe("t").await.expect("subscribed");
    let started = Instant::now();
    let mut received = 0;
    while received < MESSAGES {
        if let Some(ClientEvent::Message(_)) = events.recv().await {
            received += 1;
        }
    }
    let client_ns = (Instant::now() - started).as_nanos() as f64 / MESSAGES as f64;
    client.close().await;

    #[derive(serde::Deserialize)]
    struct Offset {
        offset: Option<u64>,
    }
    let (mut raw, _) = tokio_tungstenite::connect_async(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(&url)
            .map(|mut request| {
                request.headers_mut().insert(
                    "sec-websocket-protocol",
                    tokio_tungstenite::tungstenite::http::HeaderValue::from_static("herald.v1"),
                );
                request
            })
            .expect("a request"),
    )
    .await
    .expect("connected");
    raw.send(Message::text(
        r#"{"type":"subscribe","messageId":"s","data":{"topic":"t"}}"#,
    ))
    .await
    .expect("sent");
    let mut started = None;
    let mut received = 0;
    while received < MESSAGES {
        let Some(Ok(Message::Text(text))) = raw.next().await else {
            panic!("the raw reader lost its connection");
        };
        let parsed: Offset = serde_json::from_str(text.as_str()).expect("json");
        if text.as_str().contains("\"ack\"") {
            started = Some(Instant::now());
        } else if parsed.offset.is_some() {
            received += 1;
        }
    }
    let raw_ns = started.map_or(0.0, |at| {
        (Instant::now() - at).as_nanos() as f64 / MESSAGES as f64
    });
    drop(raw);

    // IDLE idle connections each way; the resident memory they add (the in-process server's
    // side of each connection is the same in both and included).
    let before = resident_bytes();
    let mut clients = Vec::new();
    for _ in 0..IDLE {
        let (client, mut events) = Client::connect(ClientConfig::new(&url), || async {
            Ok::<_, TokenError>(token_expiring_in(3_600))
        });
        while !matches!(
            events.recv().await,
            Some(ClientEvent::State(ConnectionState::Connected(_)))
        ) {}
        clients.push((client, events));
    }
    let client_bytes = (resident_bytes() - before) / IDLE as u64;
    let before = resident_bytes();
    let mut raws = Vec::new();
    for _ in 0..IDLE {
        let request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(&url)
                .map(|mut request| {
                    request.headers_mut().insert(
                        "sec-websocket-protocol",
                        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("herald.v1"),
                    );
                    request
                })
                .expect("a request");
        let (mut raw, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connected");
        let _connected = raw.next().await;
        raws.push(raw);
    }
    let raw_bytes = (resident_bytes().saturating_sub(before)) / IDLE as u64;
    eprintln!(
        "per delivery: herald-client {client_ns:.0} ns, raw reader {raw_ns:.0} ns; \
         per idle connection: herald-client {client_bytes} B, raw {raw_bytes} B"
    );
}
