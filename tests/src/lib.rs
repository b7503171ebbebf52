//! Helpers for Herald's end-to-end tests: start the real `herald` binary on a free port, talk to
//! it with a real WebSocket client, a real HTTP client and raw TCP, and mint JWTs.
//!
//! The binary is `$HERALD_BIN`, or the `herald` cargo built into the same target directory and
//! profile as the tests ([`herald_bin`]); `cargo xtask ci` builds it before the tests run.
//!
//! - `server.rs`: [`TestServer`], [`run_herald`] and the HTTP API calls.
//! - `client.rs`: [`WsClient`] and what a test reads off a WebSocket.
//! - `raw.rs`: hand-written HTTP and WebSocket frames over TCP ([`raw_exchange`],
//!   [`try_upgrade`], [`client_frame`], [`read_server_frame`]).
//! - `tokens.rs`: [`token`], [`sign`], [`refused_tokens`] and the wall clock.
//! - `browser.rs`: [`Browser`], a headless Chromium driven over the DevTools protocol.
//! - `tls.rs`: a test certificate authority, certificate files, and `wss://` and `https://`
//!   clients that trust only it.
//! - `redis.rs`: [`RedisServer`], a real `redis-server` the test starts and faults, and
//!   [`Cluster`], several nodes joined through it.
//! - `static_site.rs`: [`StaticSite`], files served over HTTP for pages Herald does not serve.
//! - `proxy.rs`: [`DropProxy`], a TCP relay that cuts every connection through it on demand.
//! - `python.rs`: [`python_websockets`], Python's `websockets` client in a virtual environment
//!   under the target directory, for interoperability tests.

mod browser;
mod client;
mod proxy;
mod python;
mod raw;
mod redis;
mod server;
mod static_site;
mod tls;
mod tokens;

use std::time::Duration;

pub use crate::{
    browser::{Browser, CHROMIUM, Problem},
    client::{
        Ended, WsClient, assert_error, connection_id, frames_in, read_until_ended, slow_subscriber,
    },
    proxy::DropProxy,
    python::python_websockets,
    raw::{
        RawAnswer, SAMPLE_KEY, ServerFrame, client_frame, raw_exchange, read_close_code, read_head,
        read_server_frame, read_until_closed, read_until_contains, try_upgrade, upgrade_head,
        upgrade_head_for,
    },
    redis::{Cluster, RedisServer},
    server::{TestServer, herald_bin, metric, run_herald},
    static_site::StaticSite,
    tls::{
        Leaf, TestCa, TlsFiles, Wss, https_get, peer_leaf, tls_connect, wss_connect, wss_recv,
        wss_send,
    },
    tokens::{now_ms, now_secs, refused_tokens, sign, token},
};

/// The HS256 secret every test server uses.
pub const SECRET: &str = "herald-end-to-end-test-secret-0123456789";
/// The API key every test server accepts.
pub const API_KEY: &str = "test-api-key";
/// How long any single expectation may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
