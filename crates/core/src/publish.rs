//! Publishing to a topic: the [`Publication`] request, dedupe by id within the window, the
//! offset and history (through the topic index), and encoding once, with the frame marked
//! with the publication's acceptance for the delivery latency.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use herald_config::RuntimeConfig;
use herald_protocol::{Topic, encode_message, encode_message_head};
use herald_utils::{Clock, LruCache, Priority};
use serde_json::value::RawValue;

use crate::{
    broker::{Envelope, SequenceRequest},
    counters::Counters,
    outbox::Frame,
    sizes::scaled,
    subscription::{Published, SubscriptionManager},
};

/// A publication to a topic, as the HTTP API (`POST /api/publish`) or a client `publish`
/// requests it.
#[derive(Debug)]
pub struct Publication {
    /// The topic.
    pub topic: Topic,
    /// The payload, relayed to subscribers byte for byte.
    pub data: Box<RawValue>,
    /// Shedding priority at the subscribers' queues; also orders the operation queue.
    pub priority: Priority,
    /// A publish id: a second publication with the same id to the same topic within the
    /// dedupe window is answered with the first one's offset and not delivered again.
    pub id: Option<String>,
}

/// The answer to a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The publication's offset (the original one for a duplicate).
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// Whether the id was already published within the dedupe window.
    pub deduplicated: bool,
    /// Connections of this node it was queued to (0 for a duplicate).
    pub delivered: usize,
}

type DedupeKey = (Topic, Box<str>);
/// `(topic, publish id)` to `(offset, epoch)`, with the dedupe window as time-to-live.
type DedupeCache = LruCache<DedupeKey, (u64, Arc<str>), Arc<dyn Clock>>;

/// Bytes one dedupe entry holds, by estimate: its key and value, its expiry, the cache's list
/// links and hash slot, and 32 bytes of publish id on the heap.
pub(crate) const DEDUPE_ENTRY_BYTES: usize = std::mem::size_of::<DedupeKey>()
    + std::mem::size_of::<(u64, Arc<str>)>()
    + std::mem::size_of::<Option<Instant>>()
    + 3 * std::mem::size_of::<usize>()
    + 32;

/// What publishing keeps besides the topic index: the dedupe window.
pub(crate) struct Publisher {
    dedupe: Mutex<DedupeCache>,
    /// The most dedupe entries memory relief allows for the time being (`usize::MAX`: the
    /// runtime's size applies).
    dedupe_limit: AtomicUsize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher with an empty dedupe cache of the runtime's size, aging on `clock`.
    pub(crate) fn new(runtime: &RuntimeConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            dedupe: Mutex::new(LruCache::new(runtime.dedupe_cache_size(), clock)),
            dedupe_limit: AtomicUsize::new(usize::MAX),
        }
    }

    /// Publishes now: dedupe by id, assign the next offset, encode once, retain in history and
    /// queue to every subscriber of this node. Returns the outcome and, unless it was a
    /// duplicate, the envelope for the other nodes.
    pub(crate) fn publish(
        &self,
        publication: Publication,
        accepted: Instant,
        topics: &SubscriptionManager,
        runtime: &RuntimeConfig,
        now_ms: u64,
        counters: &Counters,
    ) -> (PublishOutcome, Option<Envelope>) {
        let Publication {
            topic,
            data,
            priority,
            id,
        } = publication;
        let dedupe = |next_offset: u64, epoch: &Arc<str>| {
            self.check_duplicate(runtime, &topic, id.as_deref()?, next_offset, epoch)
        };
        let encode = |offset: u64, epoch: &Arc<str>| {
            Frame::from(encode_message(&topic, &data, offset, epoch)).stamped(accepted)
        };
        match topics.publish(&topic, priority, now_ms, counters, dedupe, encode) {
            Published::Duplicate { offset, epoch } => {
                counters.deduplicated.increment();
                let outcome = PublishOutcome {
                    offset,
                    epoch,
                    deduplicated: true,
                    delivered: 0,
                };
                (outcome, None)
            }
            Published::Accepted {
                offset,
                epoch,
                frame,
                delivered,
            } => {
                counters.published.increment();
                let outcome = PublishOutcome {
                    offset,
                    epoch: Arc::clone(&epoch),
                    deduplicated: false,
                    delivered,
                };
                let envelope = Envelope::Publication {
                    topic,
                    offset,
                    epoch,
                    priority,
                    frame,
                };
                (outcome, Some(envelope))
            }
        }
    }

    /// The request a cluster's [`Sequencer`](crate::broker::Sequencer) numbers in place of
    /// [`publish`](Self::publish): the frame encoded once, up to its offset, and the live
    /// dedupe window.
    pub(crate) fn sequence_request(
        publication: Publication,
        runtime: &RuntimeConfig,
    ) -> SequenceRequest {
        let Publication {
            topic,
            data,
            priority,
            id,
        } = publication;
        // The sequencer appends offset and epoch (`complete_message_frame`).
        let frame_head = encode_message_head(&topic, &data, 0);
        SequenceRequest {
            topic,
            priority,
            id,
            dedupe_window: runtime.dedupe_window(),
            frame_head,
        }
    }

    /// The earlier offset when `(topic, id)` was published within the window in this epoch;
    /// otherwise remembers `next_offset` for it and returns `None`. Runs under the topic's
    /// lock, so two publications with the same id cannot both pass.
    fn check_duplicate(
        &self,
        runtime: &RuntimeConfig,
        topic: &Topic,
        id: &str,
        next_offset: u64,
        epoch: &Arc<str>,
    ) -> Option<u64> {
        let window = runtime.dedupe_window();
        let mut cache = self.dedupe.lock().unwrap_or_else(PoisonError::into_inner);
        let capacity = self.dedupe_capacity(runtime);
        if cache.capacity() != capacity {
            cache.resize(capacity);
        }
        let key = (topic.clone(), Box::from(id));
        if let Some((offset, seen_epoch)) = cache.get(&key)
            && seen_epoch == epoch
        {
            return Some(*offset);
        }
        if !window.is_zero() {
            cache.insert_with_ttl(key, (next_offset, Arc::clone(epoch)), window);
        }
        None
    }

    /// The dedupe cache's capacity now: the runtime's size, capped while memory relief limits
    /// it.
    fn dedupe_capacity(&self, runtime: &RuntimeConfig) -> usize {
        runtime
            .dedupe_cache_size()
            .min(self.dedupe_limit.load(Ordering::Relaxed))
    }

    /// Memory relief: caps the dedupe cache at `fraction` of the runtime's size until the next
    /// call (1.0 lifts the cap), evicting the least recently used ids over it now; returns how
    /// many were evicted. A smaller cache only shortens how far back duplicates are recognised.
    pub(crate) fn limit_dedupe(&self, fraction: f64, runtime: &RuntimeConfig) -> usize {
        let limit = if fraction.is_nan() || fraction >= 1.0 {
            usize::MAX
        } else {
            scaled(runtime.dedupe_cache_size(), fraction)
        };
        self.dedupe_limit.store(limit, Ordering::Relaxed);
        let mut cache = self.dedupe.lock().unwrap_or_else(PoisonError::into_inner);
        let before = cache.len();
        let capacity = self.dedupe_capacity(runtime);
        if cache.capacity() != capacity {
            cache.resize(capacity);
        }
        before.saturating_sub(cache.len())
    }

    /// Forgets publish ids past the dedupe window; returns how many.
    pub(crate) fn purge_expired(&self) -> usize {
        self.dedupe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .purge_expired()
    }

    /// Publish ids remembered now (expired ones not yet purged included).
    pub(crate) fn dedupe_len(&self) -> usize {
        self.dedupe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::ServerMessage;

    use super::*;
    use crate::broker::complete_message_frame;

    #[test]
    fn a_frame_head_completed_with_offset_and_epoch_is_the_encoded_message() {
        let topic = Topic::new("chat:1").expect("valid topic");
        let data = RawValue::from_string(r#"{"text":"hi \"there\"","n":[1,2]}"#.to_owned())
            .expect("valid JSON");
        // As serde writes it (`ServerMessage::encode` takes the direct path itself).
        let whole = serde_json::to_string(&ServerMessage::Message {
            topic: topic.clone(),
            data: data.clone(),
            offset: 42,
            epoch: "18c-7".to_owned(),
        })
        .unwrap_or_default();
        let head = encode_message_head(&topic, &data, 0);
        assert!(head.ends_with("\"offset\":"), "{head}");
        assert_eq!(
            complete_message_frame(&head, 42, "18c-7").as_str(),
            whole.as_str()
        );
    }
}
