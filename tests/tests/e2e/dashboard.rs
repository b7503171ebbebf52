//! `/dashboard` in a real headless Chromium against the real binary: the page follows live
//! traffic, shows nothing without a valid key, and its stream is keyed, bounded in time by
//! shutdown, and served on the admin listener when there is one.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context as _;
use herald_tests::{
    API_KEY, Browser, Problem, SECRET, TIMEOUT, TestServer, WsClient, raw_exchange,
    read_until_closed, read_until_contains,
};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, process::Command, task::JoinSet};

/// Subscribers the traffic test opens.
const CLIENTS: usize = 4;
/// Publications it sends to their topic.
const MESSAGES: usize = 25;

/// The `data-value` of the element `id` (what the page shows, unformatted).
fn value_of(id: &str) -> String {
    format!("document.getElementById('{id}')?.dataset.value ?? null")
}

/// Fails on any problem but those `allowed` says are expected.
#[track_caller]
fn assert_no_problems(problems: &[Problem], allowed: impl Fn(&Problem) -> bool) {
    let unexpected: Vec<_> = problems.iter().filter(|p| !allowed(p)).collect();
    assert!(
        unexpected.is_empty(),
        "the page reported errors: {unexpected:#?}"
    );
}

#[tokio::test]
async fn the_dashboard_follows_live_traffic() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let browser = Browser::launch().await?;
    browser
        .navigate(&format!("http://{}/dashboard?key={API_KEY}", server.addr))
        .await?;
    browser
        .wait_for(&value_of("connections"), &json!("0"))
        .await?;
    // The key left the address bar (and the history entry) and stays in the tab's storage.
    assert_eq!(browser.evaluate("location.search").await?, json!(""));
    assert_eq!(
        browser
            .evaluate("sessionStorage.getItem('herald.dashboard.key')")
            .await?,
        json!(API_KEY)
    );

    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (mut client, _) = WsClient::connect_as(&server, &format!("user-{i}")).await?;
        client.subscribe("dash:1").await?;
        clients.push(client);
    }
    browser
        .wait_for(&value_of("connections"), &json!(CLIENTS.to_string()))
        .await?;
    browser
        .wait_for(&value_of("users"), &json!(CLIENTS.to_string()))
        .await?;
    for i in 0..MESSAGES {
        server.publish("dash:1", json!({ "n": i })).await?;
    }
    let expected = (CLIENTS * MESSAGES).to_string();
    browser
        .wait_for(&value_of("deliveries-total"), &json!(expected))
        .await?;
    browser
        .wait_for(&value_of("published-total"), &json!(MESSAGES.to_string()))
        .await?;
    assert_eq!(
        server.stats().await?["messages"]["delivered"],
        json!(CLIENTS * MESSAGES)
    );
    // The rate went up while the publications flowed, and the charts were drawn.
    browser
        .wait_for(
            "Number(document.getElementById('chart-deliveries').dataset.peak) > 0",
            &json!(true),
        )
        .await?;
    for chart in [
        "chart-connections",
        "chart-deliveries",
        "chart-latency",
        "chart-memory",
    ] {
        let painted = format!(
            "(() => {{ const c = document.getElementById('{chart}'); \
             return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v !== 0); }})()"
        );
        assert_eq!(browser.evaluate(&painted).await?, json!(true), "{chart}");
    }
    for id in [
        "latency-p50",
        "latency-p99",
        "memory-used",
        "degradation",
        "leak",
    ] {
        let shown = browser
            .evaluate(&format!("document.getElementById('{id}').textContent"))
            .await?;
        assert!(
            shown.as_str().is_some_and(|s| !s.is_empty()),
            "#{id} shows {shown}"
        );
    }

    // Clients leaving show too.
    for client in clients.drain(..CLIENTS / 2) {
        client.close().await?;
    }
    browser
        .wait_for(
            &value_of("connections"),
            &json!((CLIENTS - CLIENTS / 2).to_string()),
        )
        .await?;

    let png = browser.screenshot().await?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_no_problems(&browser.problems(), |_| false);
    Ok(())
}

#[tokio::test]
async fn without_a_valid_key_the_page_shows_no_figures() -> anyhow::Result<()> {
    let server = TestServer::start(&[]).await?;
    let browser = Browser::launch().await?;
    let hidden = "document.getElementById('figures').hidden";
    let figures = "[...document.querySelectorAll('#figures [id]')]\
        .filter(e => !e.children.length).map(e => e.textContent).join('')";

    // No key: the form asks for one, and nothing is shown.
    browser
        .navigate(&format!("http://{}/dashboard", server.addr))
        .await?;
    browser
        .wait_for("document.getElementById('key-form').hidden", &json!(false))
        .await?;
    assert_eq!(browser.evaluate(hidden).await?, json!(true));
    assert_eq!(browser.evaluate(figures).await?, json!(""));

    // A wrong key: the stream answers 401, the page says so and still shows nothing.
    browser
        .navigate(&format!("http://{}/dashboard?key=wrong-key", server.addr))
        .await?;
    browser
        .wait_for(
            "document.getElementById('error').textContent.includes('401')",
            &json!(true),
        )
        .await?;
    assert_eq!(browser.evaluate(hidden).await?, json!(true));
    assert_eq!(browser.evaluate(figures).await?, json!(""));
    assert_eq!(
        browser.evaluate(&value_of("connections")).await?,
        Value::Null
    );
    assert_eq!(
        browser
            .evaluate("sessionStorage.getItem('herald.dashboard.key')")
            .await?,
        Value::Null,
        "a refused key is forgotten"
    );
    // The browser logs the refused request itself; the page's script raised nothing.
    assert_no_problems(&browser.problems(), |p| {
        p.source == "network" && p.text.contains("401")
    });
    Ok(())
}

#[tokio::test]
async fn the_stream_needs_the_key_and_ends_when_the_server_drains() -> anyhow::Result<()> {
    let mut server = TestServer::start(&[("HERALD_SHUTDOWN_GRACE_MS", "30000")]).await?;
    for bearer in [None, Some("wrong-key")] {
        let (status, _, body) = server
            .request_raw("GET", "/dashboard/stream", Default::default(), bearer)
            .await?;
        assert_eq!(status, 401, "{bearer:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // The page itself holds no figures and needs no key.
    let (status, headers, page) = server.request_text("GET", "/dashboard", None).await?;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str()?.starts_with("text/html"));
    assert!(headers.contains_key("content-security-policy"));
    assert!(page.contains("dashboard/dashboard.js"));

    let mut stream = TcpStream::connect(server.addr).await?;
    let head = format!(
        "GET /dashboard/stream HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    // The head, then the first event (in a chunk of its own: `size\r\ndata: {...}\n\n\r\n`).
    let event = read_until_contains(&mut stream, "}\n\n").await?;
    assert!(event.starts_with("HTTP/1.1 200"), "{event}");
    assert!(event.contains("content-type: text/event-stream"), "{event}");
    let data = event
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .ok_or_else(|| anyhow::anyhow!("no data line in {event}"))?;
    let snapshot: Value = serde_json::from_str(data)?;
    for field in [
        "connections",
        "messages",
        "latency",
        "memory",
        "degradation",
        "leak",
        "health",
    ] {
        assert!(
            snapshot.get(field).is_some(),
            "{field} missing from {snapshot}"
        );
    }

    // A drain ends the stream with an `end` event long before the 30 s grace, and the process
    // exits: an open dashboard does not hold the shutdown up.
    server.sigterm().await?;
    let rest =
        String::from_utf8_lossy(&read_until_closed(&mut stream, TIMEOUT).await?).into_owned();
    assert!(rest.contains("event: end"), "{rest}");
    let status = server.wait_exit(Duration::from_secs(5)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn with_an_admin_listener_the_dashboard_lives_there() -> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_ADMIN_LISTEN", "127.0.0.1:0")]).await?;
    let admin = server
        .admin_addr
        .ok_or_else(|| anyhow::anyhow!("no admin listener reported"))?;
    for path in [
        "/dashboard",
        "/dashboard/dashboard.js",
        "/dashboard/dashboard.css",
    ] {
        assert_eq!(server.get_at(admin, path).await?.0, 200, "{path}");
        assert_eq!(server.get_at(server.addr, path).await?.0, 404, "{path}");
    }
    let head = format!(
        "GET /dashboard/stream HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {API_KEY}\r\n\
         Connection: close\r\n\r\n"
    );
    let (answer, _) = raw_exchange(&server, &head).await?;
    assert_eq!(answer.status, 404, "not on the public listener: {answer:?}");
    Ok(())
}

/// The dashboard's screenshot in docs/operations.md is this test's, under `herald-bench` load:
/// `cargo xtask dashboard-screenshot` runs it with `HERALD_BENCH_BIN` (the load generator to
/// run; without it the test makes its own, smaller load) and `HERALD_DASHBOARD_SCREENSHOT`
/// (where to write the PNG).
#[tokio::test]
async fn under_load_the_dashboard_renders_a_small_screenshot() -> anyhow::Result<()> {
    let bench = std::env::var_os("HERALD_BENCH_BIN").map(PathBuf::from);
    let server = TestServer::start(&[
        // As `cargo xtask bench` starts Herald: per-user limits stay out of the way.
        ("HERALD_MAX_CONNECTIONS", "100000"),
        ("HERALD_TIERS", "free:10000:1000000"),
    ])
    .await?;
    let browser = Browser::launch().await?;
    browser
        .navigate(&format!("http://{}/dashboard?key={API_KEY}", server.addr))
        .await?;
    browser
        .wait_for(&value_of("connections"), &json!("0"))
        .await?;

    // Dropped at the end of the test: every reader and the generator stop.
    let mut load = JoinSet::new();
    // The picture for the docs waits for the charts to fill half their minute.
    let settle = Duration::from_secs(if bench.is_some() { 30 } else { 3 });
    let connections = match &bench {
        Some(bench) => {
            let mut generator = bench_load(bench, &server)?;
            load.spawn(async move {
                let _ = generator.wait().await;
            });
            BENCH_CONNECTIONS
        }
        None => {
            for i in 0..OWN_CONNECTIONS {
                let (mut client, _) = WsClient::connect_as(&server, &format!("load-{i}")).await?;
                client.subscribe("load:1").await?;
                load.spawn(async move { while client.recv().await.is_ok() {} });
            }
            OWN_CONNECTIONS
        }
    };
    let png = tokio::select! {
        png = capture_under_load(&browser, connections, settle) => png?,
        stopped = publish_until_stopped(&server), if bench.is_none() => {
            stopped?;
            anyhow::bail!("the publisher stopped")
        }
    };
    drop(load);

    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() < 300_000, "the screenshot is {} bytes", png.len());
    assert_no_problems(&browser.problems(), |_| false);
    if let Some(path) = std::env::var_os("HERALD_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &png).with_context(|| format!("cannot write {path:?}"))?;
    }
    Ok(())
}

/// Connections `herald-bench` opens for the screenshot.
const BENCH_CONNECTIONS: usize = 500;
/// Connections the test's own load opens.
const OWN_CONNECTIONS: usize = 20;

/// Waits until the page shows `connections` and deliveries flowing, lets the charts take
/// shape for `settle`, and takes the screenshot.
async fn capture_under_load(
    browser: &Browser,
    connections: usize,
    settle: Duration,
) -> anyhow::Result<Vec<u8>> {
    browser
        .wait_for(
            &format!("Number({}) >= {connections}", value_of("connections")),
            &json!(true),
        )
        .await?;
    browser
        .wait_for(
            &format!("Number({}) > 0", value_of("deliveries-rate")),
            &json!(true),
        )
        .await?;
    tokio::time::sleep(settle).await;
    browser.screenshot().await
}

/// `herald-bench p2p` against `server` for a minute (killed when dropped): a connection per
/// topic, 5,000 publications a second in all.
fn bench_load(bench: &PathBuf, server: &TestServer) -> anyhow::Result<tokio::process::Child> {
    Command::new(bench)
        .args(["--addr", &server.addr.to_string()])
        .args(["--api-key", API_KEY, "--jwt-secret", SECRET])
        .args(["p2p", "--connections", &BENCH_CONNECTIONS.to_string()])
        .args(["--rate", "5000", "--duration-secs", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bench.display()))
}

/// Publishes batches of ten to the own load's topic every 20 ms; returns only on an error.
async fn publish_until_stopped(server: &TestServer) -> anyhow::Result<()> {
    let messages: Vec<Value> = (0..10)
        .map(|n| json!({"topic": "load:1", "data": {"n": n}}))
        .collect();
    loop {
        server.publish_batch(&messages).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
