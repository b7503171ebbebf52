//! [`ClientConfig`]: where to connect and how the client behaves around drops, tokens,
//! heartbeats and acknowledgements.

use std::{sync::Arc, time::Duration};

use herald_protocol::CloseCode;
use tokio_rustls::rustls;

use crate::backoff::Backoff;

/// When critical events are acknowledged.
///
/// # Example
///
/// ```
/// use herald_client::{AckMode, ClientConfig};
///
/// let config = ClientConfig::new("ws://127.0.0.1:8080/ws").ack_mode(AckMode::Manual);
/// assert_eq!(config.acks(), AckMode::Manual);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// When the application drops the [`crate::CriticalEvent`], that is after its handler
    /// returned (not when the handler panicked).
    #[default]
    AfterHandler,
    /// Only when the application calls [`crate::CriticalEvent::ack`].
    Manual,
}

/// Whom a `wss://` connection trusts.
#[derive(Debug, Clone)]
pub(crate) enum Tls {
    /// A complete rustls configuration.
    Config(Arc<rustls::ClientConfig>),
    /// These roots, with aws-lc-rs and the safe default protocol versions.
    Roots(rustls::RootCertStore),
}

/// How to build a [`crate::Client`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use herald_client::{Backoff, ClientConfig};
///
/// let config = ClientConfig::new("ws://127.0.0.1:8080/ws")
///     .thread("conversation-7")
///     .backoff(Backoff::default().initial(Duration::from_millis(200)))
///     .refresh_before_expiry(Duration::from_secs(60));
/// assert_eq!(config.url(), "ws://127.0.0.1:8080/ws");
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The WebSocket URL.
    pub(crate) url: String,
    /// The thread to bind the connection to.
    pub(crate) thread: Option<String>,
    /// Reconnection backoff.
    pub(crate) backoff: Backoff,
    /// When critical events are acknowledged.
    pub(crate) ack_mode: AckMode,
    /// How long before `exp` the token is refreshed.
    pub(crate) refresh_before_expiry: Duration,
    /// Silence after which the client pings; `None`: the server's heartbeat interval.
    pub(crate) ping_after: Option<Duration>,
    /// Silence after which the connection counts as dead; `None`: twice the server's
    /// heartbeat interval plus 5 s.
    pub(crate) stale_after: Option<Duration>,
    /// How long opening a connection (TCP and upgrade) may take.
    pub(crate) connect_timeout: Duration,
    /// Close codes after which the client reconnects although docs/protocol.md says not to.
    pub(crate) reconnect_after: Vec<u16>,
    /// How many critical event ids are remembered to drop repeats.
    pub(crate) remembered_events: usize,
    /// How many events may wait for the application before the client stops reading.
    pub(crate) event_capacity: usize,
    /// How long a request (subscribe, unsubscribe, publish, preferences) may wait for its
    /// reply.
    pub(crate) request_timeout: Duration,
    /// Whom `wss://` trusts; `None`: the platform's roots.
    pub(crate) tls: Option<Tls>,
}

impl ClientConfig {
    /// A configuration for `url` (`ws://host:port/ws`) with the defaults: backoff 0.5 s
    /// doubling to 30 s, acknowledgements after the handler, refresh 30 s before expiry,
    /// pings and stale detection from the server's heartbeat interval, 10 s to connect, 10 s
    /// for a request's reply, and for `wss://` the platform's trusted root certificates.
    ///
    /// # Example
    ///
    /// ```
    /// let config = herald_client::ClientConfig::new("ws://127.0.0.1:8080/ws");
    /// assert_eq!(config.url(), "ws://127.0.0.1:8080/ws");
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            thread: None,
            backoff: Backoff::default(),
            ack_mode: AckMode::AfterHandler,
            refresh_before_expiry: Duration::from_secs(30),
            ping_after: None,
            stale_after: None,
            connect_timeout: Duration::from_secs(10),
            reconnect_after: Vec::new(),
            remembered_events: 10_000,
            event_capacity: 1_024,
            request_timeout: Duration::from_secs(10),
            tls: None,
        }
    }

    /// The WebSocket URL.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(herald_client::ClientConfig::new("ws://h/ws").url(), "ws://h/ws");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Binds the connection to one thread of the user (`?thread=`).
    ///
    /// # Example
    ///
    /// ```
    /// let config = herald_client::ClientConfig::new("ws://h/ws").thread("t1");
    /// ```
    #[must_use]
    pub fn thread(mut self, thread: impl Into<String>) -> Self {
        self.thread = Some(thread.into());
        self
    }

    /// Sets the reconnection backoff.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// use herald_client::{Backoff, ClientConfig};
    /// let config = ClientConfig::new("ws://h/ws").backoff(Backoff::default().max(Duration::from_secs(5)));
    /// ```
    #[must_use]
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets when critical events are acknowledged.
    ///
    /// # Example
    ///
    /// ```
    /// use herald_client::{AckMode, ClientConfig};
    /// let config = ClientConfig::new("ws://h/ws").ack_mode(AckMode::Manual);
    /// ```
    #[must_use]
    pub const fn ack_mode(mut self, ack_mode: AckMode) -> Self {
        self.ack_mode = ack_mode;
        self
    }

    /// When critical events are acknowledged.
    ///
    /// # Example
    ///
    /// ```
    /// use herald_client::{AckMode, ClientConfig};
    /// assert_eq!(ClientConfig::new("ws://h/ws").acks(), AckMode::AfterHandler);
    /// ```
    pub const fn acks(&self) -> AckMode {
        self.ack_mode
    }

    /// Sets how long before the token's `exp` the client asks its provider for a new one and
    /// refreshes it in place (with an `auth` message).
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = herald_client::ClientConfig::new("ws://h/ws")
    ///     .refresh_before_expiry(Duration::from_secs(120));
    /// ```
    #[must_use]
    pub const fn refresh_before_expiry(mut self, margin: Duration) -> Self {
        self.refresh_before_expiry = margin;
        self
    }

    /// Sets the silence after which the client sends a `ping` (default: the server's
    /// heartbeat interval).
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = herald_client::ClientConfig::new("ws://h/ws").ping_after(Duration::from_secs(10));
    /// ```
    #[must_use]
    pub const fn ping_after(mut self, silence: Duration) -> Self {
        self.ping_after = Some(silence);
        self
    }

    /// Sets the silence after which the connection counts as dead and is replaced (default:
    /// twice the server's heartbeat interval plus 5 s).
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = herald_client::ClientConfig::new("ws://h/ws").stale_after(Duration::from_secs(20));
    /// ```
    #[must_use]
    pub const fn stale_after(mut self, silence: Duration) -> Self {
        self.stale_after = Some(silence);
        self
    }

    /// Sets how long opening a connection (TCP connect and upgrade) may take.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = herald_client::ClientConfig::new("ws://h/ws").connect_timeout(Duration::from_secs(3));
    /// ```
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnects after close code `code` although docs/protocol.md says not to, for
    /// applications whose backends close connections on purpose to make them come back (for
    /// example 4010, `DELETE /api/connections/{id}`).
    ///
    /// # Example
    ///
    /// ```
    /// let config = herald_client::ClientConfig::new("ws://h/ws").reconnect_after_close(4010);
    /// assert!(!config.is_terminal(4010));
    /// ```
    #[must_use]
    pub fn reconnect_after_close(mut self, code: u16) -> Self {
        self.reconnect_after.push(code);
        self
    }

    /// Whether close code `code` ends the client for good: the codes docs/protocol.md says
    /// not to reconnect after (1002, 1003, 1007, 1008, 1009, 4010, 4029), less those given to
    /// [`ClientConfig::reconnect_after_close`]. 4001 is not terminal here: the client gets a
    /// new token and tries again (three refused tokens in a row end it).
    ///
    /// # Example
    ///
    /// ```
    /// let config = herald_client::ClientConfig::new("ws://h/ws");
    /// assert!(config.is_terminal(4029));
    /// assert!(!config.is_terminal(1001));
    /// assert!(!config.is_terminal(4001));
    /// assert!(!config.is_terminal(1006));
    /// ```
    pub fn is_terminal(&self, code: u16) -> bool {
        if self.reconnect_after.contains(&code) {
            return false;
        }
        match CloseCode::from_code(code) {
            Some(CloseCode::Unauthenticated) => false,
            Some(close) => !close.should_reconnect(),
            // 1002 is tungstenite's own (protocol error) and absent from CloseCode.
            None => code == 1002,
        }
    }

    /// Sets how many critical event ids are remembered to drop repeats (default 10 000).
    ///
    /// # Example
    ///
    /// ```
    /// let config = herald_client::ClientConfig::new("ws://h/ws").remembered_events(1_000);
    /// ```
    #[must_use]
    pub const fn remembered_events(mut self, count: usize) -> Self {
        self.remembered_events = count;
        self
    }

    /// Sets how many events may wait for the application (default 1024); when they are
    /// all waiting, the client stops reading the socket until the application catches up.
    ///
    /// # Example
    ///
    /// ```
    /// let config = herald_client::ClientConfig::new("ws://h/ws").event_capacity(64);
    /// ```
    #[must_use]
    pub const fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Sets how long a request (subscribe, unsubscribe, publish, preferences) may wait for
    /// its reply before it fails with [`crate::ClientError::TimedOut`] (default 10 s). The
    /// time counts from the call, so a subscribe that waits for the next connection fails
    /// too when none comes in time; the topic stays subscribed for the connections to come.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = herald_client::ClientConfig::new("ws://h/ws").request_timeout(Duration::from_secs(3));
    /// ```
    #[must_use]
    pub const fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Makes `wss://` connections trust exactly `roots` (for example a private CA), instead of
    /// the platform's trusted roots. TLS runs on rustls with the aws-lc-rs provider.
    ///
    /// # Example
    ///
    /// ```
    /// use herald_client::{ClientConfig, rustls::RootCertStore};
    ///
    /// let roots = RootCertStore::empty(); // Add your CA: roots.add(ca_der)?
    /// let config = ClientConfig::new("wss://herald.internal/ws").tls_roots(roots);
    /// ```
    #[must_use]
    pub fn tls_roots(mut self, roots: rustls::RootCertStore) -> Self {
        self.tls = Some(Tls::Roots(roots));
        self
    }

    /// Uses `config` for `wss://` connections (client certificates, pinned roots, ALPN...).
    /// Build it on the re-exported [`crate::rustls`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use herald_client::{ClientConfig, rustls};
    ///
    /// let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    /// let tls = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .expect("aws-lc-rs supports the default versions")
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let config = ClientConfig::new("wss://herald.internal/ws").tls(Arc::new(tls));
    /// ```
    #[must_use]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(Tls::Config(config));
        self
    }
}
