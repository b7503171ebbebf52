//! [`Fallback`]: what a node does on its own while Redis is unreachable: it numbers
//! publications itself in a local epoch (so its own subscribers keep receiving them, and see
//! the epoch change), and keeps what it accepted in a bounded outbox, replayed to Redis in
//! order once the breaker lets calls through again.
//!
//! Pure bookkeeping, no I/O: the broker's command task decides when to fall back and when to
//! replay, delivers what this returns, and runs the replayed operations against Redis.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use herald_core::{SequenceRequest, Sequenced, SequencedPublication, complete_message_frame};
use herald_protocol::Topic;

/// A topic's place in a numbering: its last offset and the epoch.
pub(crate) type Position = (u64, Arc<str>);

/// An operation accepted while Redis was unreachable, waiting to be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// A publication, to be numbered by the publish script.
    Publication(SequenceRequest),
    /// A forwarded operation (push, event), to be published on the bus as it is.
    Forward(Vec<u8>),
}

/// Why an operation was not kept: the outbox holds its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("redis is unreachable and this node's outbox is full ({capacity} operations); retry later")]
pub(crate) struct OutboxFull {
    /// The outbox's limit (`HERALD_REDIS_OUTBOX_SIZE`).
    pub(crate) capacity: usize,
}

/// Local numbering and the outbox (see the module documentation).
#[derive(Debug)]
pub(crate) struct Fallback {
    capacity: usize,
    /// The local epoch while this node numbers publications itself; `None`: Redis numbers.
    epoch: Option<Arc<str>>,
    /// Each topic's last local offset in `epoch`, and where the node was in Redis's numbering
    /// when it began numbering the topic itself (its last offset and epoch, if known).
    offsets: HashMap<Topic, (u64, Option<Position>)>,
    /// Publish ids seen in `epoch`, with their local offset.
    ids: HashMap<(Topic, String), u64>,
    outbox: VecDeque<Pending>,
    /// Topics this node numbered in a local epoch that are back under Redis's numbering, with
    /// where the node was before: the next publication Redis brings for each starts Redis's
    /// epoch here again, after what Redis retains since that position.
    returning: HashMap<Topic, Option<Position>>,
    /// Operations refused because the outbox was full, since start.
    refused: u64,
    /// Operations replayed to Redis, since start.
    replayed: u64,
}

impl Fallback {
    /// Redis numbers; an outbox of `capacity` operations for when it cannot.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            epoch: None,
            offsets: HashMap::new(),
            ids: HashMap::new(),
            outbox: VecDeque::new(),
            returning: HashMap::new(),
            refused: 0,
            replayed: 0,
        }
    }

    /// Whether this node numbers publications itself now (from the first one it accepted
    /// without Redis until its outbox is replayed).
    pub(crate) fn active(&self) -> bool {
        self.epoch.is_some()
    }

    /// Numbers `request` locally and keeps it for the replay. Starts local numbering in a new
    /// epoch (`new_epoch()`) if it was not on; `position()` is where this node is on the topic
    /// now, asked when the topic is first numbered locally. Returns the publication to deliver
    /// on this node (`None` for a duplicate of an id seen in this epoch) and the answer to the
    /// publisher.
    pub(crate) fn sequence(
        &mut self,
        request: &SequenceRequest,
        new_epoch: impl FnOnce() -> String,
        position: impl FnOnce() -> Option<Position>,
    ) -> Result<(Option<SequencedPublication>, Sequenced), OutboxFull> {
        let epoch = Arc::clone(self.epoch.get_or_insert_with(|| Arc::from(new_epoch())));
        let key = request
            .id
            .as_ref()
            .filter(|_| !request.dedupe_window.is_zero())
            .map(|id| (request.topic.clone(), id.clone()));
        if let Some(offset) = key.as_ref().and_then(|key| self.ids.get(key)) {
            let sequenced = Sequenced {
                offset: *offset,
                epoch,
                deduplicated: true,
            };
            return Ok((None, sequenced));
        }
        self.keep(Pending::Publication(request.clone()))?;
        if self.ids.len() >= self.capacity {
            // Bounded like the outbox: under a long outage the oldest ids are forgotten, which
            // only shortens how far back duplicates are recognised.
            self.ids.clear();
        }
        let (offset, _) = self
            .offsets
            .entry(request.topic.clone())
            .or_insert_with(|| (0, position()));
        *offset += 1;
        let offset = *offset;
        if let Some(key) = key {
            self.ids.insert(key, offset);
        }
        let publication = SequencedPublication {
            topic: request.topic.clone(),
            offset,
            epoch: Arc::clone(&epoch),
            priority: request.priority,
            frame: complete_message_frame(&request.frame_head, offset, &epoch),
        };
        let sequenced = Sequenced {
            offset,
            epoch,
            deduplicated: false,
        };
        Ok((Some(publication), sequenced))
    }

    /// Keeps a forwarded operation for the replay, behind what is already kept.
    pub(crate) fn forward(&mut self, message: Vec<u8>) -> Result<(), OutboxFull> {
        self.keep(Pending::Forward(message))
    }

    fn keep(&mut self, pending: Pending) -> Result<(), OutboxFull> {
        if self.outbox.len() >= self.capacity {
            self.refused += 1;
            return Err(OutboxFull {
                capacity: self.capacity,
            });
        }
        self.outbox.push_back(pending);
        Ok(())
    }

    /// The oldest operation not yet replayed.
    pub(crate) fn next_to_replay(&self) -> Option<Pending> {
        self.outbox.front().cloned()
    }

    /// The oldest operation reached Redis: drops it.
    pub(crate) fn replayed_one(&mut self) {
        if self.outbox.pop_front().is_some() {
            self.replayed += 1;
        }
    }

    /// Redis answers and the outbox is empty: Redis numbers again. The topics numbered
    /// locally switch to Redis's epoch with the next publication Redis brings for them.
    /// Returns whether local numbering was on.
    pub(crate) fn finish(&mut self) -> bool {
        debug_assert!(self.outbox.is_empty());
        if self.epoch.take().is_none() {
            return false;
        }
        self.returning.extend(
            self.offsets
                .drain()
                .map(|(topic, (_, before))| (topic, before)),
        );
        self.ids.clear();
        true
    }

    /// Whether a publication Redis numbered on `topic` must not be delivered now: the topic is
    /// numbered locally until the outbox is replayed (this node's subscribers already have
    /// what the replay brings back, in the local epoch).
    pub(crate) fn holds(&self, topic: &Topic) -> bool {
        self.active() && self.offsets.contains_key(topic)
    }

    /// When this is the first publication Redis brought for `topic` since local numbering
    /// ended: `Some` with where the node was in Redis's numbering before (if known); then it
    /// starts Redis's epoch here again. Forgets the topic.
    pub(crate) fn returns(&mut self, topic: &Topic) -> Option<Option<Position>> {
        self.returning.remove(topic)
    }

    /// Operations waiting to be replayed.
    pub(crate) fn depth(&self) -> usize {
        self.outbox.len()
    }

    /// The outbox's limit.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Operations refused because the outbox was full, since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    /// Operations replayed to Redis, since start.
    pub(crate) fn replayed(&self) -> u64 {
        self.replayed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_utils::Priority;

    use super::*;

    fn request(topic: &str, id: Option<&str>) -> SequenceRequest {
        SequenceRequest {
            topic: Topic::new(topic).expect("valid"),
            priority: Priority::Normal,
            id: id.map(str::to_owned),
            dedupe_window: Duration::from_secs(5),
            frame_head: format!(r#"{{"type":"message","topic":"{topic}","data":1,"offset":"#),
        }
    }

    #[test]
    fn publications_are_numbered_per_topic_in_one_local_epoch_and_kept_in_order() {
        let mut fallback = Fallback::new(10);
        assert!(!fallback.active());
        let mut epochs = 0;
        let mut new_epoch = || {
            epochs += 1;
            "local-1".to_owned()
        };
        let (a1, s1) = fallback
            .sequence(&request("a", None), &mut new_epoch, || None)
            .expect("kept");
        let (_, s2) = fallback
            .sequence(&request("b", None), &mut new_epoch, || None)
            .expect("kept");
        let (a2, s3) = fallback
            .sequence(&request("a", None), &mut new_epoch, || None)
            .expect("kept");
        assert_eq!(epochs, 1);
        assert!(fallback.active());
        assert_eq!((s1.offset, s2.offset, s3.offset), (1, 1, 2));
        assert_eq!(&*s3.epoch, "local-1");
        let a2 = a2.expect("delivered");
        assert_eq!(
            a2.frame.as_str(),
            r#"{"type":"message","topic":"a","data":1,"offset":2,"epoch":"local-1"}"#
        );
        assert_eq!(a1.map(|p| p.offset), Some(1));
        assert_eq!(fallback.depth(), 3);
        assert_eq!(
            fallback.next_to_replay(),
            Some(Pending::Publication(request("a", None)))
        );
    }

    #[test]
    fn a_full_outbox_refuses_and_counts_and_replay_frees_room() {
        let mut fallback = Fallback::new(2);
        let epoch = || "e".to_owned();
        fallback
            .sequence(&request("a", None), epoch, || None)
            .expect("kept");
        fallback.forward(b"push".to_vec()).expect("kept");
        assert_eq!(
            fallback.sequence(&request("a", None), epoch, || None),
            Err(OutboxFull { capacity: 2 })
        );
        assert_eq!(
            fallback.forward(b"x".to_vec()),
            Err(OutboxFull { capacity: 2 })
        );
        assert_eq!(fallback.refused(), 2);
        fallback.replayed_one();
        let (_, again) = fallback
            .sequence(&request("a", None), epoch, || None)
            .expect("room again");
        assert_eq!(again.offset, 2, "a refused publication takes no offset");
        assert_eq!(fallback.replayed(), 1);
        assert_eq!(
            fallback.next_to_replay(),
            Some(Pending::Forward(b"push".to_vec()))
        );
    }

    #[test]
    fn a_zero_outbox_refuses_everything() {
        let mut fallback = Fallback::new(0);
        assert!(
            fallback
                .sequence(&request("a", None), || "e".to_owned(), || None)
                .is_err()
        );
        assert!(fallback.forward(Vec::new()).is_err());
    }

    #[test]
    fn a_publish_id_is_deduplicated_within_the_local_epoch_and_not_kept_twice() {
        let mut fallback = Fallback::new(10);
        let epoch = || "e".to_owned();
        let (first, s1) = fallback
            .sequence(&request("a", Some("x")), epoch, || None)
            .expect("kept");
        let (again, s2) = fallback
            .sequence(&request("a", Some("x")), epoch, || None)
            .expect("answered");
        assert!(first.is_some());
        assert!(again.is_none(), "a duplicate is not delivered");
        assert!(s2.deduplicated);
        assert_eq!(s2.offset, s1.offset);
        assert_eq!(fallback.depth(), 1);
    }

    #[test]
    fn remembered_ids_are_bounded_like_the_outbox() {
        let mut fallback = Fallback::new(2);
        let epoch = || "e".to_owned();
        for id in ["x", "y", "z"] {
            fallback
                .sequence(&request("a", Some(id)), epoch, || None)
                .expect("kept");
            fallback.replayed_one();
        }
        assert!(fallback.ids.len() <= 2);
        let (again, _) = fallback
            .sequence(&request("a", Some("x")), epoch, || None)
            .expect("kept");
        assert!(again.is_some(), "x was forgotten, so it is delivered again");
    }

    #[test]
    fn finishing_hands_the_local_topics_back_to_redis_once_each() {
        let mut fallback = Fallback::new(10);
        let a = Topic::new("a").expect("valid");
        let other = Topic::new("other").expect("valid");
        let before: Position = (7, Arc::from("redis-epoch"));
        let at = before.clone();
        fallback
            .sequence(&request("a", None), || "e1".to_owned(), move || Some(at))
            .expect("kept");
        fallback
            .sequence(
                &request("a", None),
                || "e1".to_owned(),
                || panic!("asked once"),
            )
            .expect("kept");
        fallback.replayed_one();
        assert!(
            fallback.holds(&a),
            "redis's publications on a wait for the replay"
        );
        assert!(!fallback.holds(&other));
        fallback.replayed_one();
        assert!(fallback.finish());
        assert!(!fallback.active());
        assert!(!fallback.holds(&a));
        assert_eq!(fallback.returns(&a), Some(Some(before)));
        assert_eq!(fallback.returns(&a), None, "only the first one");
        assert!(!fallback.finish(), "already finished");
        // A second outage numbers in a new epoch from 1.
        let (_, s) = fallback
            .sequence(&request("a", None), || "e2".to_owned(), || None)
            .expect("kept");
        assert_eq!((s.offset, &*s.epoch), (1, "e2"));
    }
}
