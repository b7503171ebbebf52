//! One open connection's state ([`Link`]): its heartbeat (when to ping, when it is stale),
//! whether it is authenticated, the requests waiting on it, and how it ended ([`Ended`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::{config::ClientConfig, requests::Pending};

/// How a connection, or an attempt at one, ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The application closed the client.
    Closed,
    /// The connection ended or could not be opened.
    Lost {
        /// The close code (401 at the upgrade counts as 4001).
        code: Option<u16>,
        /// The close reason or what failed.
        reason: String,
        /// Whether it must not be retried whatever the code (a bad URL, a refused upgrade
        /// that a retry cannot fix).
        fatal: bool,
        /// How long the connection was authenticated; zero when it never was.
        lasted: Duration,
    },
}

impl Ended {
    /// A failure before a connection was established.
    pub(crate) fn early(code: Option<u16>, reason: impl Into<String>, fatal: bool) -> Self {
        Self::Lost {
            code,
            reason: reason.into(),
            fatal,
            lasted: Duration::ZERO,
        }
    }
}

/// What the heartbeat timer found.
pub(crate) enum Beat {
    /// Nothing arrived for the stale timeout.
    Stale,
    /// Nothing arrived for a while: ask with a `ping`.
    Ping,
    /// Something arrived meanwhile.
    Wait,
}

/// One open connection's state.
pub(crate) struct Link {
    /// Requests waiting for their replies, by `messageId`.
    pub(crate) waiting: Pending,
    /// When the last frame arrived.
    last_heard: Instant,
    /// Whether a `ping` went out since then.
    pinged: bool,
    /// Silence before a `ping`.
    ping_after: Duration,
    /// Silence before the connection counts as dead.
    stale_after: Duration,
    /// When the `connected` frame came; `None` before.
    authenticated_at: Option<Instant>,
    /// Whether `connected` came.
    pub(crate) authenticated: bool,
    /// The close frame's code and reason, once one came.
    pub(crate) close: Option<(u16, String)>,
    /// When to refresh the token; `None` while a refresh is under way or none is needed.
    pub(crate) refresh_due: Option<Instant>,
}

impl Link {
    /// A connection just opened; until `connected` says otherwise, the server's default
    /// heartbeat (30 s) is assumed.
    pub(crate) fn new(config: &ClientConfig) -> Self {
        let mut link = Self {
            waiting: Pending::default(),
            last_heard: Instant::now(),
            pinged: false,
            ping_after: Duration::ZERO,
            stale_after: Duration::ZERO,
            authenticated_at: None,
            authenticated: false,
            close: None,
            refresh_due: None,
        };
        link.set_heartbeat(config, 30_000);
        link
    }

    /// `connected` came with the server's heartbeat interval.
    pub(crate) fn connected(&mut self, config: &ClientConfig, heartbeat_ms: u64) {
        self.authenticated = true;
        self.authenticated_at = Some(Instant::now());
        self.set_heartbeat(config, heartbeat_ms);
    }

    /// Derives the ping and stale delays from the server's heartbeat interval.
    fn set_heartbeat(&mut self, config: &ClientConfig, heartbeat_ms: u64) {
        let heartbeat = Duration::from_millis(heartbeat_ms.max(1));
        self.ping_after = config.ping_after.unwrap_or(heartbeat);
        self.stale_after = config
            .stale_after
            .unwrap_or(heartbeat * 2 + Duration::from_secs(5));
    }

    /// A frame arrived.
    pub(crate) fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.pinged = false;
    }

    /// When the heartbeat timer should next look.
    pub(crate) fn heartbeat_at(&self) -> Instant {
        let stale = self.last_heard + self.stale_after;
        if self.pinged {
            stale
        } else {
            stale.min(self.last_heard + self.ping_after)
        }
    }

    /// What the heartbeat timer found.
    pub(crate) fn heartbeat(&mut self) -> Beat {
        let now = Instant::now();
        if now >= self.last_heard + self.stale_after {
            Beat::Stale
        } else if !self.pinged && now >= self.last_heard + self.ping_after {
            self.pinged = true;
            Beat::Ping
        } else {
            Beat::Wait
        }
    }

    /// The connection ended with `reason` unless a close frame said why.
    pub(crate) fn lost(&self, reason: impl Into<String>) -> Ended {
        let (code, reason) = match &self.close {
            Some((code, why)) => (Some(*code), why.clone()),
            None => (None, reason.into()),
        };
        Ended::Lost {
            code,
            reason,
            fatal: false,
            lasted: self
                .authenticated_at
                .map_or(Duration::ZERO, |at| at.elapsed()),
        }
    }
}
