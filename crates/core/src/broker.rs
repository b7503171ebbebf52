//! The [`Broker`] seam: how the operations one node accepts reach the connections of every
//! other node, and [`InMemoryBroker`], the in-process implementation.
//!
//! The node that accepts an operation (a publication, a push to every connection or to a user,
//! a critical event) performs it on its own connections first, inside the critical section that
//! orders it, and then hands it to its broker as an [`Envelope`]. The broker carries the
//! envelope to every *other* node, whose broker hands it to that node's [`LocalDelivery`].
//! In a single process the embedded [`InMemoryBroker`] does this with direct calls.
//!
//! A shared broker (e.g. over Redis, outside `core`) also offers a [`Sequencer`]: then the
//! broker, not the node, is the authority on a topic's offsets, epoch and dedupe ids. The
//! origin hands a publication to the sequencer instead of numbering it, and *every* node (the
//! origin included) delivers the [`SequencedPublication`] it gets back from the broker through
//! [`LocalDelivery::deliver_sequenced`], in offset order, which also feeds its local history.

use std::{
    fmt,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use herald_monitoring::RedisStats;
use herald_protocol::{Topic, complete_message};
use herald_utils::Priority;

use crate::{
    ids::{ThreadId, UserId},
    outbox::Frame,
};

/// Publish/subscribe between the nodes of a Herald cluster.
///
/// # Contract
///
/// - The gateway calls [`attach`](Self::attach) once, when it is built, with the handle
///   through which the broker delivers other nodes' envelopes to this node.
/// - The gateway calls [`publish`](Self::publish) from its fan-out worker for every operation
///   it accepted and already delivered to its own connections, one call at a time, in the
///   order the worker performed them, and never while holding a lock.
/// - `publish` must deliver the envelope to every other attached node, and must not deliver
///   it back to this node (its connections already have it). Each receiving node must get the
///   envelopes of one origin in the order that origin published them, so a topic's messages
///   keep their offset order and a user's events their send order.
///
///   Why the origin delivers its own operations itself: it does so inside the critical
///   section that orders them (the topic's lock, where the offset is assigned and a resuming
///   subscriber is handed over from history to live messages; the user's events lock, where a
///   connection that registers receives the pending events). A round trip through the broker
///   would split that section in two and open a window for gaps and duplicates; it would also
///   make the delivered counts, and local delivery itself, depend on the network.
/// - `publish` must not block: a networked broker queues the envelope for its own I/O task
///   and returns. An error means the other nodes may not get the envelope; this node's
///   connections have it regardless, and the gateway counts the failure
///   (`herald_broker_failures_total`) and logs it.
/// - The frames inside an envelope are final wire bytes: a receiving node queues them to its
///   connections as they are, so a publication is encoded once in the whole cluster.
///
/// Not carried: sends to one connection (connection ids are local to a node) and the
/// broadcast's `exclude` list (it names connections of the origin node). Pending critical
/// events stay with the node that accepted them, unless the gateway has an
/// [`EventStore`](crate::EventStore), which keeps them for the whole cluster.
///
/// # Shared sequencing
///
/// A broker that returns a [`Sequencer`] from [`sequencer`](Self::sequencer) takes over a
/// topic's offsets, epoch and dedupe window for the whole cluster. The gateway then never
/// numbers a publication itself and never hands an [`Envelope::Publication`] to
/// [`publish`](Self::publish): it hands the publication to the sequencer, and the broker
/// delivers the numbered result to every node, the origin included, through
/// [`LocalDelivery::deliver_sequenced`]. A broker without one (the default) leaves all of that
/// to each node, and the single-node path pays nothing for the option.
pub trait Broker: Send + Sync + 'static {
    /// Connects this node: from now on the broker hands other nodes' envelopes to `local`.
    /// Attaching again replaces the previous handle.
    fn attach(&self, local: LocalDelivery);

    /// Carries `envelope`, accepted and delivered by this node, to every other node.
    fn publish(&self, envelope: &Envelope) -> Result<(), BrokerError>;

    /// The cluster-wide authority on offsets, epochs and dedupe ids, if this broker is one.
    /// Asked once, when the gateway is built.
    fn sequencer(&self) -> Option<Arc<dyn Sequencer>> {
        None
    }

    /// The state of this broker's link to the cluster's Redis (circuit breaker, outbox), for
    /// `/api/stats` and `/metrics`; `None` for a broker without one.
    fn redis_stats(&self) -> Option<RedisStats> {
        None
    }
}

/// Numbers publications for the whole cluster: dedupe by id, the topic's next offset and its
/// epoch, the shared history, and the delivery of the result to every node.
///
/// # Contract
///
/// - [`sequence`](Self::sequence) must not block; it calls `reply` exactly once, from any
///   task, with the publication's position (or the earlier one for a duplicate), or with an
///   error when the publication was not accepted (then no node delivers it).
/// - The gateway calls it from its fan-out worker, one call at a time; publications of one
///   node must be numbered in the order they were handed over.
/// - An accepted publication reaches every node's [`LocalDelivery::deliver_sequenced`] as a
///   [`SequencedPublication`] whose frame is `frame_head`, the offset and the epoch (see
///   [`complete_message_frame`]), in offset order per topic; a node that misses some (the bus
///   is at-most-once) learns it from [`SequencedDelivery::Gap`] and fetches them first.
pub trait Sequencer: Send + Sync + 'static {
    /// Numbers `request` and answers through `reply`.
    fn sequence(&self, request: SequenceRequest, reply: SequenceReply);
}

/// A publication handed to a [`Sequencer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceRequest {
    /// The topic.
    pub topic: Topic,
    /// Shedding priority at the subscribers' queues.
    pub priority: Priority,
    /// The publish id, for dedupe across the cluster.
    pub id: Option<String>,
    /// How long the id is remembered (the live dedupe window; zero: not at all).
    pub dedupe_window: Duration,
    /// The encoded `message` frame up to and including `"offset":`; the sequencer appends the
    /// offset and the epoch ([`complete_message_frame`]).
    pub frame_head: String,
}

/// Where a [`Sequencer`] put a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// Its offset (the earlier publication's for a duplicate).
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// Whether the id was already published within the dedupe window.
    pub deduplicated: bool,
}

/// How a [`Sequencer`] answers: called once, with the position or why it was not accepted.
pub type SequenceReply = Box<dyn FnOnce(Result<Sequenced, BrokerError>) + Send>;

/// A publication numbered by a [`Sequencer`], as every node delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedPublication {
    /// The topic.
    pub topic: Topic,
    /// Its offset in the topic's cluster-wide numbering.
    pub offset: u64,
    /// The topic's cluster-wide epoch.
    pub epoch: Arc<str>,
    /// Shedding priority at the subscribers' queues.
    pub priority: Priority,
    /// The complete `message` frame.
    pub frame: Frame,
}

/// What [`LocalDelivery::deliver_sequenced`] did with a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequencedDelivery {
    /// Retained in this node's history and queued to this many of its connections.
    Delivered(usize),
    /// Already delivered here (its offset is not after the topic's last): dropped.
    Stale,
    /// Publications between the topic's last offset here and this one are missing; nothing
    /// was done. Deliver offsets `last_offset + 1` up to this one's first, or deliver this one
    /// with `accept_gap` when they are gone for good.
    Gap {
        /// The topic's last offset delivered here in this publication's epoch (0: none).
        last_offset: u64,
    },
}

/// The complete `message` frame from the head a [`SequenceRequest`] carries, its offset and
/// its epoch.
pub fn complete_message_frame(head: &str, offset: u64, epoch: &str) -> Frame {
    // The most digits of a `u64`, the epoch's key, quotes and the closing brace.
    let mut text = String::with_capacity(head.len() + 20 + 12 + epoch.len());
    text.push_str(head);
    complete_message(&mut text, offset, epoch);
    Frame::from(text)
}

/// An operation accepted by one node, as it travels to the others.
///
/// Cloning is cheap: every field is reference-counted or small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A publication: offset and epoch assigned by the origin, frame encoded once.
    Publication {
        /// The topic.
        topic: Topic,
        /// Its offset in the origin's numbering of the topic.
        offset: u64,
        /// The origin's epoch of the topic.
        epoch: Arc<str>,
        /// Shedding priority at the subscribers' queues.
        priority: Priority,
        /// The encoded `message` frame.
        frame: Frame,
    },
    /// A `push` to every authenticated connection.
    Broadcast {
        /// Shedding priority.
        priority: Priority,
        /// The encoded `push` frame (scope `broadcast`).
        frame: Frame,
    },
    /// A `push` to a user's connections.
    User {
        /// The user.
        user: UserId,
        /// When set, only connections bound to this thread or to none receive it.
        thread: Option<ThreadId>,
        /// Shedding priority.
        priority: Priority,
        /// The encoded `push` frame (scope `user`).
        frame: Frame,
    },
    /// A critical event to a user's connections (queued as `critical`, never shed).
    Event {
        /// The user.
        user: UserId,
        /// When set, only connections bound to this thread or to none receive it.
        thread: Option<ThreadId>,
        /// The event's id, which clients acknowledge.
        id: Arc<str>,
        /// The encoded `event` frame.
        frame: Frame,
    },
}

/// Why a broker could not carry an envelope to the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot reach the other nodes now (connection lost, outbound buffer full);
    /// the text says why.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Where a broker delivers envelopes from other nodes: this node's connections.
///
/// Given to [`Broker::attach`] by the gateway. It does not keep the gateway alive: once the
/// gateway is dropped, [`deliver`](Self::deliver) reaches nobody.
#[derive(Clone)]
pub struct LocalDelivery {
    node: Weak<dyn Deliver>,
}

impl fmt::Debug for LocalDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalDelivery")
            .field("attached", &(self.node.strong_count() > 0))
            .finish()
    }
}

impl LocalDelivery {
    pub(crate) fn new(node: Weak<dyn Deliver>) -> Self {
        Self { node }
    }

    /// Queues the envelope's frame to this node's connections that should receive it (a
    /// topic's subscribers, every authenticated connection, or a user's connections that
    /// receive the thread); returns how many queued it.
    ///
    /// Call it from one task per origin node, in the order the origin published, and never
    /// with an envelope this node published itself.
    pub fn deliver(&self, envelope: &Envelope) -> usize {
        self.node.upgrade().map_or(0, |node| node.deliver(envelope))
    }

    /// Delivers a publication numbered by this node's [`Sequencer`] (this node's own
    /// publications included): under the topic's lock, adopts its epoch when it changed,
    /// retains it in the local history (so `since` resumes work from memory) and queues it to
    /// the topic's subscribers, if it is the next offset of the topic here.
    ///
    /// A publication that is not the next one is reported as [`SequencedDelivery::Gap`] and
    /// left alone, unless `accept_gap` says the missing ones are gone for good; then the
    /// subscribers see the gap in the offsets, and resumes across it are refused.
    /// Call it from one task, in the order the broker numbered the publications.
    pub fn deliver_sequenced(
        &self,
        publication: &SequencedPublication,
        accept_gap: bool,
    ) -> SequencedDelivery {
        self.node
            .upgrade()
            .map_or(SequencedDelivery::Delivered(0), |node| {
                node.deliver_sequenced(publication, accept_gap)
            })
    }

    /// The topic's position on this node: the last offset delivered and its epoch, if the
    /// node knows the topic.
    pub fn position(&self, topic: &Topic) -> Option<(u64, Arc<str>)> {
        self.node.upgrade().and_then(|node| node.position(topic))
    }
}

/// What a [`LocalDelivery`] delivers to: the gateway's node, behind a trait so that this module
/// does not depend on the gateway.
pub(crate) trait Deliver: Send + Sync {
    /// See [`LocalDelivery::deliver`].
    fn deliver(&self, envelope: &Envelope) -> usize;

    /// See [`LocalDelivery::deliver_sequenced`].
    fn deliver_sequenced(
        &self,
        publication: &SequencedPublication,
        accept_gap: bool,
    ) -> SequencedDelivery;

    /// See [`LocalDelivery::position`].
    fn position(&self, topic: &Topic) -> Option<(u64, Arc<str>)>;
}

/// The in-process broker: connects the gateways of one process.
///
/// Each gateway gets its own endpoint; [`peer`](Self::peer) makes another endpoint on the same
/// bus. With one gateway (the embedded default) there is nobody to forward to and `publish`
/// returns at once. Delivery to the other endpoints is a direct call, in the publisher's task,
/// so it is ordered and never fails.
pub struct InMemoryBroker {
    bus: Arc<Bus>,
    endpoint: u64,
}

/// The endpoints of one in-process bus.
#[derive(Default)]
struct Bus {
    /// Attached endpoints and their local delivery; read lock-free on every publish.
    nodes: ArcSwap<Vec<(u64, LocalDelivery)>>,
    next_endpoint: AtomicU64,
}

impl fmt::Debug for InMemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryBroker")
            .field("endpoint", &self.endpoint)
            .field("attached", &self.bus.nodes.load().len())
            .finish()
    }
}

impl Default for InMemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryBroker {
    /// An endpoint on a new bus of its own.
    pub fn new() -> Self {
        let bus = Arc::new(Bus::default());
        let endpoint = bus.next_endpoint.fetch_add(1, Ordering::Relaxed);
        Self { bus, endpoint }
    }

    /// Another endpoint on the same bus, for another gateway of this process.
    pub fn peer(&self) -> Self {
        Self {
            bus: Arc::clone(&self.bus),
            endpoint: self.bus.next_endpoint.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Broker for InMemoryBroker {
    fn attach(&self, local: LocalDelivery) {
        self.bus.nodes.rcu(|nodes| {
            let mut nodes: Vec<(u64, LocalDelivery)> = nodes
                .iter()
                .filter(|(endpoint, _)| *endpoint != self.endpoint)
                .cloned()
                .collect();
            nodes.push((self.endpoint, local.clone()));
            nodes
        });
    }

    fn publish(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        for (endpoint, node) in self.bus.nodes.load().iter() {
            if *endpoint != self.endpoint {
                node.deliver(envelope);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A node that records what it was handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Envelope>>);

    impl Deliver for Recorder {
        fn deliver(&self, envelope: &Envelope) -> usize {
            let mut seen = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.push(envelope.clone());
            seen.len()
        }

        fn deliver_sequenced(
            &self,
            _publication: &SequencedPublication,
            _accept_gap: bool,
        ) -> SequencedDelivery {
            SequencedDelivery::Stale
        }

        fn position(&self, _topic: &Topic) -> Option<(u64, Arc<str>)> {
            None
        }
    }

    fn attach(broker: &InMemoryBroker) -> Arc<Recorder> {
        let recorder = Arc::new(Recorder::default());
        // The same allocation as `recorder`, which keeps the broker's weak handle alive.
        let node: Arc<dyn Deliver> = Arc::clone(&recorder) as Arc<dyn Deliver>;
        broker.attach(LocalDelivery::new(Arc::downgrade(&node)));
        recorder
    }

    fn seen(recorder: &Recorder) -> usize {
        recorder
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn broadcast(text: &str) -> Envelope {
        Envelope::Broadcast {
            priority: Priority::Normal,
            frame: Frame::from(text.to_owned()),
        }
    }

    #[test]
    fn envelopes_reach_every_other_endpoint_in_order_and_never_their_origin() {
        let a = InMemoryBroker::new();
        let b = a.peer();
        let c = a.peer();
        let (seen_a, seen_b, seen_c) = (attach(&a), attach(&b), attach(&c));
        assert_eq!(a.publish(&broadcast("1")), Ok(()));
        assert_eq!(a.publish(&broadcast("2")), Ok(()));
        assert_eq!(b.publish(&broadcast("3")), Ok(()));
        assert_eq!((seen(&seen_a), seen(&seen_b), seen(&seen_c)), (1, 2, 3));
        let got = seen_c.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(got, [broadcast("1"), broadcast("2"), broadcast("3")]);
    }

    #[test]
    fn a_lone_endpoint_forwards_to_nobody_and_reattaching_replaces() {
        let alone = InMemoryBroker::new();
        let first = attach(&alone);
        assert_eq!(alone.publish(&broadcast("x")), Ok(()));
        assert_eq!(seen(&first), 0);
        let other = alone.peer();
        let replaced = attach(&alone);
        other.publish(&broadcast("y")).ok();
        assert_eq!((seen(&first), seen(&replaced)), (0, 1));
    }

    #[test]
    fn a_dropped_node_receives_nothing() {
        let node: Arc<dyn Deliver> = Arc::new(Recorder::default());
        let local = LocalDelivery::new(Arc::downgrade(&node));
        assert_eq!(local.deliver(&broadcast("1")), 1);
        drop(node);
        assert_eq!(local.deliver(&broadcast("2")), 0);
    }
}
