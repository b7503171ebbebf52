//! A Rust client for the Herald WebSocket gateway that keeps docs/protocol.md's promises for
//! the application: it reconnects with exponential backoff and full jitter, resubscribes every
//! topic with `since {offset, epoch}` so missed messages are replayed from history, drops
//! repeats by offset, tells the application when a topic could not be recovered (another
//! epoch, or history no longer holds the gap), hands each critical event to the application
//! once and acknowledges it after the handler is done, refreshes the token before it expires,
//! and notices a dead connection by its silence.
//!
//! - [`Client::connect`] starts a connection from a [`ClientConfig`] and a [`TokenProvider`];
//!   the [`Client`] handle subscribes, publishes and reads or changes preferences, and
//!   [`Events`] yields every [`ClientEvent`] in order: connection state changes
//!   ([`ConnectionState`]), topic messages, critical events, pushes, resets, notices.
//! - the `backend` module (feature `backend`) calls Herald's HTTP API from a Rust backend.
//!
//! ```no_run
//! use herald_client::{Client, ClientConfig, ClientEvent, ConnectionState, TokenError};
//!
//! # async fn run() -> Result<(), herald_client::ClientError> {
//! let config = ClientConfig::new("ws://127.0.0.1:8080/ws");
//! let (client, mut events) = Client::connect(config, || async {
//!     Ok::<_, TokenError>(std::env::var("HERALD_TOKEN").map_err(TokenError::new)?)
//! });
//! client.subscribe("chat:1").await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         ClientEvent::Message(message) => println!("{} #{}", message.topic, message.offset),
//!         ClientEvent::Event(event) => println!("{}", event.name), // Acknowledged on drop.
//!         ClientEvent::Reset(reset) => println!("refetch {}", reset.topic),
//!         ClientEvent::State(ConnectionState::Closed { .. }) => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! `wss://` URLs are served over TLS (rustls with the aws-lc-rs provider, re-exported as
//! [`rustls`]), trusting the platform's roots unless [`ClientConfig::tls_roots`] or
//! [`ClientConfig::tls`] says otherwise. A request that gets no reply within
//! [`ClientConfig::request_timeout`] fails with [`ClientError::TimedOut`]. Time is read through
//! `tokio::time`, so tests can run the client on a paused clock; the one wall-clock read
//! compares a token's `exp` with now.
//!
//! Inside, one driver task per client (`driver.rs`: the connection lifecycle and backoff)
//! opens connections (`dial.rs`), serves the open one (`session.rs`: frames in, commands out,
//! heartbeats, acks) with its state in `link.rs`, tracks requests awaiting replies
//! (`requests.rs`), refreshes the token (`refresh.rs`) and speaks the wire format
//! (`wire.rs`).

mod backoff;
mod book;
mod client;
mod config;
mod dial;
mod driver;
mod error;
mod event;
mod link;
mod refresh;
mod requests;
mod session;
mod token;
mod wire;

#[cfg(feature = "backend")]
pub mod backend;

#[cfg(test)]
mod tests;

pub use herald_protocol as protocol;
/// The rustls this crate speaks TLS with, to build a [`ClientConfig::tls`] configuration.
pub use tokio_rustls::rustls;

pub use crate::{
    backoff::Backoff,
    client::{Client, Events},
    config::{AckMode, ClientConfig},
    error::ClientError,
    event::{ClientEvent, ConnectionState, CriticalEvent, Push, TopicMessage, TopicReset},
    token::{TokenError, TokenFuture, TokenProvider, token_expiry_ms},
};
