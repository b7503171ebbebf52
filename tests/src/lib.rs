//! Helpers for Herald's end-to-end tests: start the real `herald` binary on a free port, talk to
//! it with a real WebSocket client, a real HTTP client and raw TCP, and mint JWTs.
//!
//! The binary is `$HERALD_BIN`, or the `herald` cargo built into the same target directory and
//! profile as the tests ([`herald_bin`]); `cargo xtask ci` builds it before the tests run.
//!
//! - `server.rs`: [`TestServer`], [`run_herald`] and the HTTP API calls.
//! - `client.rs`: [`WsClient`] and what a test reads off a WebSocket.
//! - `raw.rs`: hand-written HTTP over TCP ([`raw_exchange`], [`try_upgrade`]).
//! - `tokens.rs`: [`token`], [`sign`], [`refused_tokens`] and the wall clock.
//! - `browser.rs`: [`Browser`], a headless Chromium driven over the DevTools protocol.
//! - `static_site.rs`: [`StaticSite`], files served over HTTP for pages Herald does not serve.

mod browser;
mod client;
mod raw;
mod server;
mod static_site;
mod tokens;

use std::time::Duration;

pub use crate::{
    browser::{Browser, CHROMIUM, Problem},
    client::{
        Ended, WsClient, assert_error, connection_id, frames_in, read_until_ended, slow_subscriber,
    },
    raw::{
        RawAnswer, SAMPLE_KEY, raw_exchange, read_head, read_until_closed, read_until_contains,
        try_upgrade, upgrade_head,
    },
    server::{TestServer, herald_bin, metric, run_herald},
    static_site::StaticSite,
    tokens::{now_ms, now_secs, refused_tokens, sign, token},
};

/// The HS256 secret every test server uses.
pub const SECRET: &str = "herald-end-to-end-test-secret-0123456789";
/// The API key every test server accepts.
pub const API_KEY: &str = "test-api-key";
/// How long any single expectation may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
