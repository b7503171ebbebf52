//! The browser client (clients/js) in a real headless Chromium against the real binary: a
//! connection dropped by the server in the middle of a stream of topic messages and critical
//! events ends with every message seen once and in order (the gap closed from history by
//! `since`) and every event handled once and acknowledged; a server killed and restarted is
//! reported as a reset (the history was in memory) and everything after it arrives once.

use std::path::Path;

use anyhow::Context as _;
use herald_tests::{Browser, StaticSite, TestServer, token};
use serde_json::{Value, json};

/// The built module; `cargo xtask ci` builds it (`npm ci && npm run build` in clients/js).
const CLIENT_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../clients/js/dist/herald-client.js"
);
const PAGE: &str = include_str!("../../pages/browser-client.html");

/// Loads the test page in a fresh browser and starts alice's client on `server`; answers the
/// subscribe ack's offset.
async fn start_page(server: &TestServer) -> anyhow::Result<(StaticSite, Browser, Value)> {
    let site = page_site().await?;
    let browser = Browser::launch().await?;
    browser.navigate(&site.url("/")).await?;
    let offset = browser
        .evaluate(&format!(
            "window.start({}, {})",
            json!(server.ws_url("")),
            json!(token("alice", json!({})))
        ))
        .await?;
    Ok((site, browser, offset))
}

async fn page_site() -> anyhow::Result<StaticSite> {
    let module = std::fs::read(Path::new(CLIENT_JS)).with_context(|| {
        format!(
            "{CLIENT_JS} is missing: build the browser client first \
             (`npm ci && npm run build` in clients/js; `cargo xtask ci` does)"
        )
    })?;
    StaticSite::serve(vec![
        ("/", "text/html; charset=utf-8", PAGE.as_bytes().to_vec()),
        (
            "/herald-client.js",
            "text/javascript; charset=utf-8",
            module,
        ),
    ])
    .await
}

/// Publishes `{"n": n}` to `chat:1` for each `n`, and a critical event `e{n}` for each tenth.
async fn stream(server: &TestServer, numbers: std::ops::RangeInclusive<u64>) -> anyhow::Result<()> {
    for n in numbers {
        server.publish("chat:1", json!({"n": n})).await?;
        if n % 10 == 0 {
            let event = json!({"event": "tool_executing", "id": format!("e{n}"), "data": {"n": n}});
            server.send_event("alice", &event).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_every_message_once_and_every_event_acknowledged()
-> anyhow::Result<()> {
    let server = TestServer::start(&[("HERALD_ALLOWED_ORIGINS", "*")]).await?;
    let site = page_site().await?;
    let browser = Browser::launch().await?;
    browser.navigate(&site.url("/")).await?;
    let ws_url = server.ws_url("");
    let offset = browser
        .evaluate(&format!(
            "window.start({}, {})",
            json!(ws_url),
            json!(token("alice", json!({})))
        ))
        .await?;
    assert_eq!(offset, json!(0));

    stream(&server, 1..=20).await?;
    browser
        .wait_for("window.log.messages.length >= 5", &json!(true))
        .await?;
    // The server drops the connection mid-stream; publishing goes on meanwhile.
    let (_, _, listed) = server
        .request("GET", "/api/connections?userId=alice", None, true)
        .await?;
    let id = listed["connections"][0]["connectionId"]
        .as_str()
        .context("alice's connection")?
        .to_owned();
    let (status, _, _) = server
        .request("DELETE", &format!("/api/connections/{id}"), None, true)
        .await?;
    assert_eq!(status, 200);
    stream(&server, 21..=40).await?;

    let every: Vec<u64> = (1..=40).collect();
    browser
        .wait_for("window.log.messages", &json!(every))
        .await?;
    browser
        .wait_for("window.log.events", &json!(["e10", "e20", "e30", "e40"]))
        .await?;
    server
        .wait_for_stats(|stats: &Value| stats["events"]["pending"] == 0)
        .await?;
    let stats = server.stats().await?;
    assert_eq!(stats["events"]["acknowledged"], 4, "{stats}");
    let states = browser.evaluate("window.log.states").await?;
    let connected = states
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| *s == "connected").count());
    assert_eq!(connected, 2, "one reconnection: {states}");
    assert_eq!(browser.evaluate("window.log.resets").await?, json!([]));
    assert_eq!(browser.evaluate("window.log.errors").await?, json!([]));
    assert_eq!(browser.problems(), vec![], "the page reported problems");
    Ok(())
}

#[tokio::test]
async fn a_killed_and_restarted_server_is_a_reset_and_everything_after_it_arrives_once()
-> anyhow::Result<()> {
    let env = [("HERALD_ALLOWED_ORIGINS", "*")];
    let server = TestServer::start(&env).await?;
    let addr = server.addr;
    let (_site, browser, offset) = start_page(&server).await?;
    assert_eq!(offset, json!(0));
    stream(&server, 1..=20).await?;
    let first: Vec<u64> = (1..=20).collect();
    browser
        .wait_for("window.log.messages", &json!(first))
        .await?;
    server
        .wait_for_stats(|stats: &Value| {
            stats["events"]["acknowledged"] == 2 && stats["events"]["pending"] == 0
        })
        .await?;
    let old_epoch = browser.evaluate("window.log.positions[0][0]").await?;

    // The server dies (no close frame, its memory gone) and comes back on the same address.
    server.sigkill().await?;
    drop(server);
    let restarted = TestServer::start_at(addr, &env).await?;
    browser
        .wait_for("window.log.resets", &json!(["chat:1"]))
        .await?;
    let reset = browser.evaluate("window.log.resetDetails[0]").await?;
    assert_eq!(
        reset["previous"],
        json!({"offset": 20, "epoch": old_epoch}),
        "{reset}"
    );
    assert_ne!(reset["current"]["epoch"], old_epoch, "{reset}");
    assert_eq!(reset["current"]["offset"], 0, "{reset}");
    let new_epoch = reset["current"]["epoch"].clone();

    stream(&restarted, 21..=40).await?;
    let every: Vec<u64> = (1..=40).collect();
    browser
        .wait_for("window.log.messages", &json!(every))
        .await?;
    browser
        .wait_for("window.log.events", &json!(["e10", "e20", "e30", "e40"]))
        .await?;
    restarted
        .wait_for_stats(|stats: &Value| stats["events"]["pending"] == 0)
        .await?;
    let stats = restarted.stats().await?;
    assert_eq!(stats["events"]["acknowledged"], 2, "{stats}");
    // The new epoch's offsets start again at 1, once each and in order.
    let positions = browser.evaluate("window.log.positions.slice(20)").await?;
    let expected: Vec<Value> = (1..=20).map(|offset| json!([new_epoch, offset])).collect();
    assert_eq!(positions, json!(expected));
    let states = browser.evaluate("window.log.states").await?;
    let connected = states
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| *s == "connected").count());
    assert_eq!(connected, 2, "one reconnection: {states}");
    assert_eq!(browser.evaluate("window.log.errors").await?, json!([]));
    // Chromium logs the attempts made while the server was down as refused connections;
    // anything else the page reported is a failure.
    let problems: Vec<_> = browser
        .problems()
        .into_iter()
        .filter(|problem| {
            !(problem.source == "network" && problem.text.contains("ERR_CONNECTION_REFUSED"))
        })
        .collect();
    assert_eq!(problems, vec![], "the page reported problems");
    Ok(())
}
