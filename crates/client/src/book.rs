//! The client's bookkeeping, free of I/O: where each subscribed topic stands (for `since`,
//! repeats and gaps) and which critical events the application has already been handed.

use std::collections::{HashMap, VecDeque, hash_map::Entry};

use herald_protocol::{StreamPosition, SubscribeResult};

use crate::event::TopicReset;

/// What to do with a `message` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MessageVerdict {
    /// Hand it to the application; its position is now the topic's.
    Deliver,
    /// Already delivered (a replay overlapping what arrived live): drop it.
    Repeat,
    /// Offsets were skipped (frames shed from the queue): drop it and resubscribe with
    /// `since` set to this position; the replay brings the gap and this message.
    Gap(StreamPosition),
    /// Dropped while a resubscription that will replay it is under way, or for a topic the
    /// application no longer wants.
    Ignore,
}

/// Where one subscribed topic stands.
#[derive(Debug, Clone, Default)]
struct TopicState {
    /// The position of the last message delivered (or of the subscribe ack); `None` until
    /// the first ack.
    position: Option<StreamPosition>,
    /// A resubscription with `since` is in flight to close a gap.
    resyncing: bool,
}

/// Every topic the application subscribed to, in subscription order.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    /// The topics' states.
    states: HashMap<String, TopicState>,
    /// Subscription order, for resubscribing in the order the application asked.
    order: Vec<String>,
}

impl Topics {
    /// Adds `topic` (kept on a repeat subscription).
    pub(crate) fn add(&mut self, topic: &str) {
        if let Entry::Vacant(entry) = self.states.entry(topic.to_owned()) {
            entry.insert(TopicState::default());
            self.order.push(topic.to_owned());
        }
    }

    /// Forgets `topic`; it is no longer resubscribed. Whether it was known.
    pub(crate) fn remove(&mut self, topic: &str) -> bool {
        self.order.retain(|t| t != topic);
        self.states.remove(topic).is_some()
    }

    /// Whether the application wants `topic`.
    pub(crate) fn contains(&self, topic: &str) -> bool {
        self.states.contains_key(topic)
    }

    /// The topics, in subscription order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// The `since` to send when subscribing to `topic` now.
    pub(crate) fn since(&self, topic: &str) -> Option<StreamPosition> {
        self.states.get(topic).and_then(|s| s.position.clone())
    }

    /// Every resubscription in flight is answered by the next connection instead.
    pub(crate) fn connection_lost(&mut self) {
        for state in self.states.values_mut() {
            state.resyncing = false;
        }
    }

    /// Judges a `message` frame and, when it is delivered, moves the topic's position.
    pub(crate) fn on_message(&mut self, topic: &str, offset: u64, epoch: &str) -> MessageVerdict {
        let Some(state) = self.states.get_mut(topic) else {
            return MessageVerdict::Ignore;
        };
        if let Some(last) = &state.position {
            let same_epoch = last.epoch == epoch;
            if same_epoch && offset <= last.offset {
                return MessageVerdict::Repeat;
            }
            // A skipped offset, or another epoch under a live subscription (a node that
            // changed its numbering, for example one falling back to local numbering while its
            // Redis is away): subscribe again from the position kept; the ack replays the gap
            // or reports the reset. Only an epoch's first message after a position where
            // nothing was delivered yet cannot hide a loss.
            let gap = if same_epoch {
                offset > last.offset + 1
            } else {
                !(last.offset == 0 && offset == 1)
            };
            if gap {
                if state.resyncing {
                    return MessageVerdict::Ignore;
                }
                state.resyncing = true;
                return MessageVerdict::Gap(last.clone());
            }
        }
        state.position = Some(StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        });
        MessageVerdict::Deliver
    }

    /// Takes a subscribe ack into account; the reset to report when the topic had a position
    /// and the server could not replay what followed it.
    pub(crate) fn on_subscribed(&mut self, result: &SubscribeResult) -> Option<TopicReset> {
        let state = self.states.get_mut(result.topic.as_str())?;
        state.resyncing = false;
        let current = StreamPosition {
            offset: result.offset,
            epoch: result.epoch.clone(),
        };
        match (&state.position, result.recovered) {
            // Replayed (or up to date): the replay continues from the position kept.
            (Some(_), true) => None,
            (None, _) => {
                state.position = Some(current);
                None
            }
            (Some(previous), false) => {
                let reset = TopicReset {
                    topic: result.topic.as_str().to_owned(),
                    previous: previous.clone(),
                    current: current.clone(),
                };
                state.position = Some(current);
                Some(reset)
            }
        }
    }
}

/// What to do with an `event` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventVerdict {
    /// New: hand it to the application.
    Deliver,
    /// The application finished with it already: acknowledge it again, do not deliver it.
    AckAgain,
    /// The application is still handling it: its acknowledgement is on the way.
    InHandling,
}

/// The critical events handed to the application, newest last, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct SeenEvents {
    /// Each remembered id and whether the application is done with it.
    done: HashMap<String, bool>,
    /// Remembered ids, oldest first.
    order: VecDeque<String>,
    /// How many ids to remember.
    capacity: usize,
}

impl SeenEvents {
    /// Remembers at most `capacity` ids (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            done: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Judges an `event` frame's id, remembering it when it is new.
    pub(crate) fn on_event(&mut self, id: &str) -> EventVerdict {
        match self.done.get(id) {
            Some(true) => EventVerdict::AckAgain,
            Some(false) => EventVerdict::InHandling,
            None => {
                if self.order.len() >= self.capacity
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.done.remove(&oldest);
                }
                self.done.insert(id.to_owned(), false);
                self.order.push_back(id.to_owned());
                EventVerdict::Deliver
            }
        }
    }

    /// The application finished with `id`: acknowledged (`true`), or let go so that a
    /// redelivery reaches it again (`false`).
    pub(crate) fn finished(&mut self, id: &str, acked: bool) {
        if acked {
            if let Some(done) = self.done.get_mut(id) {
                *done = true;
            }
        } else if self.done.remove(id).is_some() {
            self.order.retain(|known| known != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::Topic;

    use super::*;

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    fn ack(topic: &str, offset: u64, epoch: &str, recovered: bool) -> SubscribeResult {
        SubscribeResult {
            topic: Topic::new(topic).unwrap_or_else(|e| panic!("{e}")),
            offset,
            epoch: epoch.into(),
            recovered,
        }
    }

    #[test]
    fn first_ack_sets_the_position_and_messages_advance_it() {
        let mut topics = Topics::default();
        topics.add("t");
        assert_eq!(topics.since("t"), None);
        assert_eq!(topics.on_subscribed(&ack("t", 4, "e", false)), None);
        assert_eq!(topics.since("t"), Some(at(4, "e")));
        assert_eq!(topics.on_message("t", 5, "e"), MessageVerdict::Deliver);
        assert_eq!(topics.since("t"), Some(at(5, "e")));
    }

    #[test]
    fn repeats_are_dropped_by_offset() {
        let mut topics = Topics::default();
        topics.add("t");
        topics.on_subscribed(&ack("t", 0, "e", false));
        for offset in 1..=3 {
            assert_eq!(topics.on_message("t", offset, "e"), MessageVerdict::Deliver);
        }
        // A replay after a reconnect that overlaps what arrived live.
        assert_eq!(topics.on_message("t", 2, "e"), MessageVerdict::Repeat);
        assert_eq!(topics.on_message("t", 3, "e"), MessageVerdict::Repeat);
        assert_eq!(topics.on_message("t", 4, "e"), MessageVerdict::Deliver);
    }

    #[test]
    fn a_gap_asks_for_one_resubscription_and_the_replay_closes_it() {
        let mut topics = Topics::default();
        topics.add("t");
        topics.on_subscribed(&ack("t", 0, "e", false));
        assert_eq!(topics.on_message("t", 1, "e"), MessageVerdict::Deliver);
        assert_eq!(
            topics.on_message("t", 4, "e"),
            MessageVerdict::Gap(at(1, "e"))
        );
        // Later live messages wait for the replay instead of asking again.
        assert_eq!(topics.on_message("t", 5, "e"), MessageVerdict::Ignore);
        assert_eq!(topics.on_subscribed(&ack("t", 5, "e", true)), None);
        for offset in 2..=5 {
            assert_eq!(topics.on_message("t", offset, "e"), MessageVerdict::Deliver);
        }
    }

    #[test]
    fn another_epoch_on_a_live_subscription_resubscribes_and_the_ack_reports_the_reset() {
        let mut topics = Topics::default();
        topics.add("t");
        topics.on_subscribed(&ack("t", 0, "e1", false));
        assert_eq!(topics.on_message("t", 1, "e1"), MessageVerdict::Deliver);
        assert_eq!(topics.on_message("t", 2, "e1"), MessageVerdict::Deliver);
        // The numbering changed under the connection: ask once, wait for the ack.
        assert_eq!(
            topics.on_message("t", 3, "e2"),
            MessageVerdict::Gap(at(2, "e1"))
        );
        assert_eq!(topics.on_message("t", 4, "e2"), MessageVerdict::Ignore);
        let reset = topics.on_subscribed(&ack("t", 4, "e2", false));
        assert_eq!(
            reset,
            Some(TopicReset {
                topic: "t".into(),
                previous: at(2, "e1"),
                current: at(4, "e2"),
            })
        );
        assert_eq!(topics.on_message("t", 5, "e2"), MessageVerdict::Deliver);
        // A topic nothing was delivered on yet may start its epoch's offset 1 in another
        // epoch than its subscribe ack named (a cluster numbers it on first publication).
        topics.add("fresh");
        topics.on_subscribed(&ack("fresh", 0, "local", false));
        assert_eq!(
            topics.on_message("fresh", 1, "shared"),
            MessageVerdict::Deliver
        );
        assert_eq!(
            topics.on_message("fresh", 2, "shared"),
            MessageVerdict::Deliver
        );
    }

    #[test]
    fn resubscribing_after_a_reconnect_sends_since_and_reports_an_epoch_change() {
        let mut topics = Topics::default();
        topics.add("a");
        topics.add("b");
        topics.on_subscribed(&ack("a", 0, "e1", false));
        topics.on_subscribed(&ack("b", 0, "e1", false));
        topics.on_message("a", 1, "e1");
        topics.on_message("a", 2, "e1");
        topics.connection_lost();
        assert_eq!(topics.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(topics.since("a"), Some(at(2, "e1")));
        assert_eq!(topics.since("b"), Some(at(0, "e1")));
        // The server restarted: new epoch, nothing replayed.
        let reset = topics.on_subscribed(&ack("a", 0, "e2", false));
        assert_eq!(
            reset,
            Some(TopicReset {
                topic: "a".into(),
                previous: at(2, "e1"),
                current: at(0, "e2"),
            })
        );
        assert!(reset.is_some_and(|r| r.epoch_changed()));
        assert_eq!(topics.on_message("a", 1, "e2"), MessageVerdict::Deliver);
        // A recovered resume keeps the position; the replay follows.
        assert_eq!(topics.on_subscribed(&ack("b", 3, "e1", true)), None);
        assert_eq!(topics.since("b"), Some(at(0, "e1")));
    }

    #[test]
    fn forgotten_topics_are_not_delivered_nor_resubscribed() {
        let mut topics = Topics::default();
        topics.add("t");
        topics.add("t");
        assert_eq!(topics.names().count(), 1);
        assert!(topics.remove("t"));
        assert!(!topics.contains("t"));
        assert_eq!(topics.on_message("t", 1, "e"), MessageVerdict::Ignore);
        assert_eq!(topics.on_subscribed(&ack("t", 1, "e", false)), None);
        assert_eq!(topics.names().count(), 0);
    }

    #[test]
    fn events_are_delivered_once_and_acknowledged_again_when_redelivered() {
        let mut seen = SeenEvents::new(10);
        assert_eq!(seen.on_event("e1"), EventVerdict::Deliver);
        assert_eq!(seen.on_event("e1"), EventVerdict::InHandling);
        seen.finished("e1", true);
        assert_eq!(seen.on_event("e1"), EventVerdict::AckAgain);
        // A handler that let go of an event gets it again.
        assert_eq!(seen.on_event("e2"), EventVerdict::Deliver);
        seen.finished("e2", false);
        assert_eq!(seen.on_event("e2"), EventVerdict::Deliver);
    }

    #[test]
    fn remembered_events_are_bounded_oldest_first() {
        let mut seen = SeenEvents::new(2);
        for id in ["a", "b", "c"] {
            assert_eq!(seen.on_event(id), EventVerdict::Deliver);
            seen.finished(id, true);
        }
        assert_eq!(seen.on_event("c"), EventVerdict::AckAgain);
        assert_eq!(seen.on_event("b"), EventVerdict::AckAgain);
        assert_eq!(seen.on_event("a"), EventVerdict::Deliver);
    }
}
