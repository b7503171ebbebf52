//! Request tracking: the [`Command`]s a [`crate::Client`] sends its driver, and the requests
//! sent on a connection that wait for their reply by `messageId` ([`Pending`]).

use std::collections::HashMap;

use herald_protocol::{PublishResponse, SubscribeResult, Topic};
use serde_json::{Map, Value, value::RawValue};
use tokio::sync::oneshot;

use crate::error::ClientError;

/// A one-shot answer to a [`crate::Client`] request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What a [`crate::Client`] asks of its driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Subscribe now (or on the next connection) and after every reconnect.
    Subscribe {
        /// The topic.
        topic: Topic,
        /// Answered with the subscribe ack.
        reply: Reply<SubscribeResult>,
    },
    /// Stop resubscribing and unsubscribe.
    Unsubscribe {
        /// The topic.
        topic: Topic,
        /// Answered with `unsubscribed`.
        reply: Reply<bool>,
    },
    /// Publish from the client.
    Publish {
        /// The topic.
        topic: Topic,
        /// The payload.
        data: Box<RawValue>,
        /// The dedupe id.
        id: Option<String>,
        /// Answered with the publish ack.
        reply: Reply<PublishResponse>,
    },
    /// `get_preferences`.
    GetPreferences {
        /// Answered with the preferences.
        reply: Reply<Map<String, Value>>,
    },
    /// `update_preferences`.
    UpdatePreferences {
        /// The keys to replace (`null` removes one).
        patch: Map<String, Value>,
        /// Answered with the preferences after the change.
        reply: Reply<Map<String, Value>>,
    },
    /// Close for good.
    Close,
}

/// A request waiting for its reply, by `messageId`.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A subscribe (or resubscribe); the callers waiting for its ack.
    Subscribe(Topic, Vec<Reply<SubscribeResult>>),
    /// An unsubscribe.
    Unsubscribe(Reply<bool>),
    /// A publish.
    Publish(Reply<PublishResponse>),
    /// `get_preferences` or `update_preferences`.
    Preferences(Reply<Map<String, Value>>),
    /// A token refresh (`auth` on the open connection).
    Refresh,
}

impl Waiting {
    /// Fails the caller of a one-caller request with `error`; subscribes and refreshes are
    /// not answered here (their callers may outlive the connection).
    pub(crate) fn fail(self, error: &ClientError) {
        match self {
            Self::Unsubscribe(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Self::Publish(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Self::Preferences(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Self::Subscribe(..) | Self::Refresh => {}
        }
    }

    /// Whether nobody waits for the reply any more: the caller of a one-caller request gave
    /// up (its request timed out or its future was dropped). Subscribes and refreshes are
    /// never abandoned: their replies change the client's state.
    fn abandoned(&self) -> bool {
        match self {
            Self::Unsubscribe(reply) => reply.is_closed(),
            Self::Publish(reply) => reply.is_closed(),
            Self::Preferences(reply) => reply.is_closed(),
            Self::Subscribe(..) | Self::Refresh => false,
        }
    }
}

/// The requests of one connection waiting for their replies.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// By `messageId`.
    by_id: HashMap<String, Waiting>,
}

impl Pending {
    /// Remembers `waiting` under `id`, forgetting first the requests whose callers gave up, so
    /// a server that never answers cannot grow the table without bound.
    pub(crate) fn insert(&mut self, id: String, waiting: Waiting) {
        self.by_id.retain(|_, waiting| !waiting.abandoned());
        self.by_id.insert(id, waiting);
    }

    /// The request waiting for `id`, if any.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Waiting> {
        self.by_id.remove(id)
    }

    /// Every waiting request, leaving none.
    pub(crate) fn take(&mut self) -> HashMap<String, Waiting> {
        std::mem::take(&mut self.by_id)
    }

    /// How many requests wait (abandoned ones included until the next insert).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_whose_callers_gave_up_are_forgotten_on_the_next_insert() {
        let mut pending = Pending::default();
        let (gone, answer) = oneshot::channel();
        drop(answer);
        pending.insert("1".into(), Waiting::Publish(gone));
        let (kept, _answer) = oneshot::channel();
        pending.insert("2".into(), Waiting::Publish(kept));
        pending.insert("3".into(), Waiting::Refresh);
        assert_eq!(pending.len(), 2);
        assert!(pending.remove("1").is_none());
        assert!(pending.remove("2").is_some());
    }
}
