//! WebSocket close codes of docs/protocol.md, with their reasons and reconnect advice.

/// A close code the server sends, one per row of docs/protocol.md's close code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the server is shutting down. Reconnect with backoff.
    GoingAway,
    /// 1003: the client sent a binary frame. Do not reconnect.
    UnsupportedData,
    /// 1007: the client sent invalid UTF-8. Do not reconnect.
    InvalidPayload,
    /// 1008: the client broke a policy. Do not reconnect.
    PolicyViolation,
    /// 1009: a message was larger than the payload limit. Do not reconnect.
    MessageTooBig,
    /// 1013: the server is overloaded and shedding connections. Reconnect with backoff.
    TryAgainLater,
    /// 4000: no inbound frame within the stale timeout. Reconnect.
    Stale,
    /// 4001: not authenticated in time, or a bad token. Reconnect only with a new token.
    Unauthenticated,
    /// 4003: the token expired. Reconnect with a new token.
    TokenExpired,
    /// 4008: the client kept breaking the rate limit. Reconnect later.
    RateLimited,
    /// 4009: the outbound queue filled with what cannot be shed. Reconnect and resume with `since`.
    SlowConsumer,
    /// 4010: a backend disconnected the connection through the HTTP API. Do not reconnect.
    DisconnectedByApi,
    /// 4029: the user's connection limit evicted this connection for a newer one. Do not reconnect.
    Replaced,
    /// 4030: the user's connection limit refused this connection (policy `reject`). Reconnect later.
    Refused,
}

impl CloseCode {
    /// Every close code, in the order of docs/protocol.md's table.
    pub const ALL: [Self; 14] = [
        Self::GoingAway,
        Self::UnsupportedData,
        Self::InvalidPayload,
        Self::PolicyViolation,
        Self::MessageTooBig,
        Self::TryAgainLater,
        Self::Stale,
        Self::Unauthenticated,
        Self::TokenExpired,
        Self::RateLimited,
        Self::SlowConsumer,
        Self::DisconnectedByApi,
        Self::Replaced,
        Self::Refused,
    ];

    /// The numeric close code.
    pub const fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::UnsupportedData => 1003,
            Self::InvalidPayload => 1007,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::TryAgainLater => 1013,
            Self::Stale => 4000,
            Self::Unauthenticated => 4001,
            Self::TokenExpired => 4003,
            Self::RateLimited => 4008,
            Self::SlowConsumer => 4009,
            Self::DisconnectedByApi => 4010,
            Self::Replaced => 4029,
            Self::Refused => 4030,
        }
    }

    /// The close code with this number, if it is one of the table's.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|close| close.code() == code)
    }

    /// The short reason sent in the close frame; always ASCII and at most 123 bytes, the room
    /// RFC 6455 leaves for a reason in a control frame.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "server shutting down",
            Self::UnsupportedData => "binary frames are not supported",
            Self::InvalidPayload => "invalid utf-8",
            Self::PolicyViolation => "policy violation",
            Self::MessageTooBig => "message larger than the payload limit",
            Self::TryAgainLater => "server overloaded",
            Self::Stale => "no activity within the stale timeout",
            Self::Unauthenticated => "not authenticated",
            Self::TokenExpired => "token expired",
            Self::RateLimited => "rate limit abused",
            Self::SlowConsumer => "slow consumer",
            Self::DisconnectedByApi => "disconnected by the api",
            Self::Replaced => "replaced by a newer connection",
            Self::Refused => "connection limit reached",
        }
    }

    /// Whether docs/protocol.md tells the client to reconnect (possibly later, with backoff or with
    /// a new token). 4001 counts as no: the client must first get a new token.
    pub const fn should_reconnect(self) -> bool {
        match self {
            Self::GoingAway
            | Self::TryAgainLater
            | Self::Stale
            | Self::TokenExpired
            | Self::RateLimited
            | Self::SlowConsumer
            | Self::Refused => true,
            Self::UnsupportedData
            | Self::InvalidPayload
            | Self::PolicyViolation
            | Self::MessageTooBig
            | Self::Unauthenticated
            | Self::DisconnectedByApi
            | Self::Replaced => false,
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(close: CloseCode) -> Self {
        close.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_protocol_table() {
        let codes: Vec<u16> = CloseCode::ALL.iter().map(|close| close.code()).collect();
        assert_eq!(
            codes,
            [
                1001, 1003, 1007, 1008, 1009, 1013, 4000, 4001, 4003, 4008, 4009, 4010, 4029, 4030
            ]
        );
    }

    #[test]
    fn every_code_round_trips_through_its_number() {
        for close in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(close.code()), Some(close));
        }
        assert_eq!(CloseCode::from_code(1000), None);
    }

    #[test]
    fn reasons_fit_a_control_frame() {
        for close in CloseCode::ALL {
            let reason = close.reason();
            assert!(
                !reason.is_empty() && reason.len() <= 123 && reason.is_ascii(),
                "{close:?}"
            );
        }
    }

    #[test]
    fn reconnect_advice_follows_the_table() {
        let reconnect: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|close| close.should_reconnect())
            .map(|close| close.code())
            .collect();
        assert_eq!(reconnect, [1001, 1013, 4000, 4003, 4008, 4009, 4030]);
    }
}
