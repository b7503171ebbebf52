//! Identifiers: connection, user and thread ids, and the isolation key built from them.

use std::{fmt, sync::Arc};

/// A connection's id, unique within the process for its lifetime (never reused).
///
/// On the wire it is a 16-digit lower-case hex string (`connected.data.connectionId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// Wraps a raw id.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Parses the wire form (16 hex digits); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Self)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written directly: `{:016x}` goes through the formatter's padding machinery, which
        // cost over 1,000 instructions per connection on the connect path (callgrind).
        let hex = Hex::new(self.0, 16);
        f.write_str(hex.as_str())
    }
}

/// A `u64` in lower-case hex digits, zero-padded to a minimum width (at most 16), built on the
/// stack: what `format!("{value:0width$x}")` writes, without the formatter.
pub(crate) struct Hex {
    digits: [u8; 16],
    start: usize,
}

impl Hex {
    /// `value` in at least `min_digits` digits (16 at most).
    pub(crate) fn new(value: u64, min_digits: usize) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let min_digits = min_digits.clamp(1, 16);
        let mut digits = [b'0'; 16];
        let mut start = 16;
        let mut rest = value;
        while rest != 0 || 16 - start < min_digits {
            start -= 1;
            digits[start] = DIGITS[(rest & 0xf) as usize];
            rest >>= 4;
        }
        Self { digits, start }
    }

    /// The digits.
    pub(crate) fn as_str(&self) -> &str {
        // Every byte is one of `DIGITS`, ASCII, so this never fails.
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or_default()
    }
}

/// A user id: the token's `sub` claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Wraps a user id.
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A thread id: `?thread=` on the connection, `threadId` on events and user sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadId(Arc<str>);

impl ThreadId {
    /// Wraps a thread id.
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a connection belongs to: user, optional thread and the connection itself.
///
/// Built exactly once, when the connection authenticates (at the handshake or by its first
/// `auth` message), and then the only key used to register, route and clean up the connection.
/// A token refresh never changes it: a refresh for another user is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IsolationKey {
    /// The authenticated user.
    pub user: UserId,
    /// The thread the connection is bound to, if any.
    pub thread: Option<ThreadId>,
    /// The connection.
    pub connection: ConnectionId,
}

impl IsolationKey {
    /// Whether traffic addressed to `user`, optionally one `thread`, reaches this connection:
    /// same user, and either no thread on the message, or no thread on the connection, or the
    /// same thread.
    pub fn receives(&self, user: &UserId, thread: Option<&ThreadId>) -> bool {
        if &self.user != user {
            return false;
        }
        match (thread, &self.thread) {
            (None, _) | (_, None) => true,
            (Some(wanted), Some(bound)) => wanted == bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn hex_is_what_the_formatter_writes(value: u64, width in 0usize..=16) {
            let hex = Hex::new(value, width);
            let formatted = format!("{value:0width$x}");
            prop_assert_eq!(hex.as_str(), formatted.as_str());
        }
    }

    #[test]
    fn connection_id_round_trips_through_wire_form() {
        let id = ConnectionId::new(0xdead_beef);
        assert_eq!(id.to_string(), "00000000deadbeef");
        assert_eq!(ConnectionId::parse(&id.to_string()), Some(id));
        assert_eq!(ConnectionId::parse("deadbeef"), None);
        assert_eq!(ConnectionId::parse("zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn thread_routing_follows_the_contract() {
        let key = |thread: Option<&str>| IsolationKey {
            user: UserId::new("u1"),
            thread: thread.map(ThreadId::new),
            connection: ConnectionId::new(1),
        };
        let u1 = UserId::new("u1");
        let t1 = ThreadId::new("t1");
        let t2 = ThreadId::new("t2");
        assert!(key(None).receives(&u1, None));
        assert!(key(None).receives(&u1, Some(&t1)));
        assert!(key(Some("t1")).receives(&u1, Some(&t1)));
        assert!(key(Some("t1")).receives(&u1, None));
        assert!(!key(Some("t1")).receives(&u1, Some(&t2)));
        assert!(!key(None).receives(&UserId::new("u2"), None));
    }
}
