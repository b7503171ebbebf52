//! `RequestKind`: the `type` names of client requests, shared by the parser and its errors.

use std::fmt;

/// The `type` of a client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `auth`.
    Auth,
    /// `subscribe`.
    Subscribe,
    /// `unsubscribe`.
    Unsubscribe,
    /// `batch_subscribe`.
    BatchSubscribe,
    /// `batch_unsubscribe`.
    BatchUnsubscribe,
    /// `publish`.
    Publish,
    /// `ping`.
    Ping,
    /// `pong`.
    Pong,
    /// `get_preferences`.
    GetPreferences,
    /// `update_preferences`.
    UpdatePreferences,
    /// `ack`.
    Ack,
}

impl RequestKind {
    /// Every request kind, in the order of docs/protocol.md's table.
    pub const ALL: [Self; 11] = [
        Self::Auth,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::BatchSubscribe,
        Self::BatchUnsubscribe,
        Self::Publish,
        Self::Ping,
        Self::Pong,
        Self::GetPreferences,
        Self::UpdatePreferences,
        Self::Ack,
    ];

    /// The kind named by a frame's `type`, if it is a known one.
    pub fn from_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The `type` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::BatchSubscribe => "batch_subscribe",
            Self::BatchUnsubscribe => "batch_unsubscribe",
            Self::Publish => "publish",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::GetPreferences => "get_preferences",
            Self::UpdatePreferences => "update_preferences",
            Self::Ack => "ack",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
