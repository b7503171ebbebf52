//! [`Node`]: one gateway's shared state (indexes, stores, seams, counters), the small helpers
//! on it, and the local delivery of other nodes' envelopes. Sessions, the sweep, the fan-out
//! worker and the broker all work on it.

use std::{
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use herald_config::RuntimeConfig;
use herald_memory::MemoryProbe;
use herald_monitoring::{LatencyHistogram, RedisStats};
use herald_protocol::{ServerMessage, Topic};
use herald_utils::{Clock, Priority};
use serde_json::{Map, Value};

use crate::{
    auth::{Authenticator, Principal},
    broker::{
        Broker, Deliver, Envelope, LocalDelivery, SequencedDelivery, SequencedPublication,
        Sequencer,
    },
    connection::{Connection, ConnectionManager},
    counters::Counters,
    error::GatewayError,
    event_store::{AckedElsewhere, EventStore, Forget},
    events::{Incoming, PendingEvents},
    ids::{IsolationKey, UserId},
    operations::{Operation, OperationQueue, Queued},
    outbox::Frame,
    parts::{GatewayParts, GatewaySettings},
    preferences::{Changed, ChangedElsewhere, PreferenceStore, batching_preference},
    publish::{DEDUPE_ENTRY_BYTES, Publisher},
    rate::RateLimiter,
    subscription::{SubscriptionManager, TOPIC_BYTES},
    time::duration_ms,
};

/// What one pass of [`Node::maintain`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Maintenance {
    /// Entries dropped: history entries, topics, dedupe ids, rate buckets.
    pub(crate) entries: usize,
    /// Bytes they and the maps' spare capacity held, by estimate.
    pub(crate) bytes: usize,
    /// Topics dropped after their retention.
    pub(crate) topics_dropped: usize,
}

/// What a refused caller is told to wait before retrying, in milliseconds.
const RETRY_AFTER_MS: u64 = 1000;

/// One gateway's shared state.
pub(crate) struct Node {
    pub(crate) settings: GatewaySettings,
    pub(crate) runtime: Arc<RuntimeConfig>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) preferences: Arc<dyn PreferenceStore>,
    clock: Arc<dyn Clock>,
    /// The gateway clock's zero: `now_ms` counts from here.
    origin: Instant,
    pub(crate) connections: ConnectionManager,
    pub(crate) topics: SubscriptionManager,
    pub(crate) publisher: Publisher,
    pub(crate) events: PendingEvents,
    /// Where the cluster keeps pending events, if it does.
    event_store: Option<Arc<dyn EventStore>>,
    pub(crate) rate: RateLimiter,
    pub(crate) operations: OperationQueue,
    pub(crate) counters: Counters,
    /// Delivery latency: publication accepted to frame written, reported by the transport.
    pub(crate) latency: LatencyHistogram,
    broker: Arc<dyn Broker>,
    /// The broker's sequencer, when the cluster numbers publications (asked once).
    sequencer: Option<Arc<dyn Sequencer>>,
    pub(crate) memory: Arc<dyn MemoryProbe>,
    shutting_down: AtomicBool,
    /// Set by memory relief: new connections are refused while it is.
    refusing: AtomicBool,
    /// Gateway time of the sweep's last index-wide clean-up (0: never).
    pub(crate) last_maintenance_ms: AtomicU64,
    /// The connections whose fetch of pending events the event store could not answer,
    /// asked again at the next clean-up.
    unfetched: Mutex<Vec<(Weak<Connection>, IsolationKey)>>,
    /// This node, for the answers of its stores.
    me: Weak<Self>,
}

impl Node {
    /// The node of a new gateway, attached to its broker.
    pub(crate) fn start(parts: GatewayParts) -> Arc<Self> {
        let GatewayParts {
            settings,
            runtime,
            authenticator,
            preferences,
            history,
            events: event_store,
            clock,
            broker,
            memory,
        } = parts;
        let origin = clock.now();
        let sequencer = broker.sequencer();
        // The start time makes epochs and generated event ids unique across restarts.
        let seed = clock.unix_ms();
        let node = Arc::new_cyclic(|me| Self {
            connections: ConnectionManager::new(settings.max_connections),
            topics: SubscriptionManager::new(seed, history),
            publisher: Publisher::new(&runtime, Arc::clone(&clock)),
            events: PendingEvents::new(
                settings.max_pending_events,
                settings.event_ack_timeout,
                settings.event_ttl,
                seed,
                event_store.as_deref().map(EventStore::node),
            ),
            event_store,
            rate: RateLimiter::default(),
            operations: OperationQueue::new(settings.operation_queue_size),
            counters: Counters::default(),
            latency: LatencyHistogram::new(),
            last_maintenance_ms: AtomicU64::new(0),
            unfetched: Mutex::default(),
            me: me.clone(),
            shutting_down: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            settings,
            runtime,
            authenticator,
            preferences,
            clock,
            origin,
            broker,
            sequencer,
            memory,
        });
        let weak: Weak<dyn Deliver> = Arc::downgrade(&node) as Weak<dyn Deliver>;
        node.broker.attach(LocalDelivery::new(weak));
        let weak: Weak<dyn Changed> = Arc::downgrade(&node) as Weak<dyn Changed>;
        node.preferences.attach(ChangedElsewhere::new(weak));
        if let Some(store) = &node.event_store {
            let weak: Weak<dyn Forget> = Arc::downgrade(&node) as Weak<dyn Forget>;
            store.attach(AckedElsewhere::new(weak));
        }
        node
    }

    /// The cluster's store of pending events, when it has one.
    pub(crate) fn event_store(&self) -> Option<&Arc<dyn EventStore>> {
        self.event_store.as_ref()
    }

    /// With an event store: asks it for the user's pending events and queues to the
    /// connection, in order, those this node did not have (it queued those it had when the
    /// connection registered). A fetch the store cannot answer is asked again at the next
    /// clean-up (once a second) for as long as the connection is open; `retry` says this is
    /// such a second try (logged quietly).
    pub(crate) fn fetch_pending(
        &self,
        connection: &Arc<Connection>,
        key: IsolationKey,
        retry: bool,
    ) {
        let Some(store) = &self.event_store else {
            return;
        };
        let me = self.me.clone();
        let target = Arc::downgrade(connection);
        let user = key.user.clone();
        store.pending(
            &user,
            self.unix_ms(),
            self.settings.event_ttl,
            Box::new(move |result| {
                let (Some(node), Some(connection)) = (me.upgrade(), target.upgrade()) else {
                    return;
                };
                // A connection that closed meanwhile takes nothing in.
                if node.connections.get(connection.id()).is_none() {
                    return;
                }
                match result {
                    Ok(events) => {
                        node.events.take_in(
                            &connection,
                            &key,
                            events,
                            node.now_ms(),
                            node.unix_ms(),
                            &node.counters,
                        );
                    }
                    Err(error) => {
                        node.counters.broker_failures.increment();
                        if retry {
                            tracing::debug!(%error, user = %key.user, "pending events could not be fetched again");
                        } else {
                            tracing::warn!(%error, user = %key.user, "pending events could not be fetched; asked again every second");
                        }
                        node.unfetched
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((Arc::downgrade(&connection), key));
                    }
                }
            }),
        );
    }

    /// Records the delivery latency of a live publication accepted at `accepted`, now.
    pub(crate) fn record_delivery(&self, accepted: Instant) {
        self.latency
            .record(self.clock.now().saturating_duration_since(accepted));
    }

    /// The cluster's sequencer, when the broker numbers publications.
    pub(crate) fn sequencer(&self) -> Option<&Arc<dyn Sequencer>> {
        self.sequencer.as_ref()
    }

    /// Milliseconds on the gateway clock since the gateway was built.
    pub(crate) fn now_ms(&self) -> u64 {
        duration_ms(self.clock.now().saturating_duration_since(self.origin))
    }

    /// Wall-clock milliseconds since the Unix epoch, from the gateway's clock: token expiry
    /// and timestamps on the wire.
    pub(crate) fn unix_ms(&self) -> u64 {
        self.clock.unix_ms()
    }

    /// Whether a shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Marks the shutdown as begun; returns whether this call was the first.
    pub(crate) fn begin_shutdown(&self) -> bool {
        !self.shutting_down.swap(true, Ordering::AcqRel)
    }

    /// Whether memory relief asked to refuse new connections.
    pub(crate) fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Starts or stops refusing new connections (memory relief).
    pub(crate) fn set_refusing(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::Release);
    }

    /// The index-wide clean-ups, once: dedupe ids past the window, history past its
    /// time-to-live or over its byte budget, topics without subscribers past their retention,
    /// full rate buckets, then the spare capacity of every map. The sweep runs it once a second
    /// and the memory monitor's cleanup pass whenever it wants; both come here.
    pub(crate) fn maintain(&self, now_ms: u64) -> Maintenance {
        self.last_maintenance_ms
            .store(now_ms.max(1), Ordering::Relaxed);
        let history = self.topics.history_store();
        let history_before = history.bytes();
        let history_dropped = history.purge(now_ms);
        self.counters.history_dropped.add(history_dropped);
        let topics_dropped = self
            .topics
            .sweep_idle(now_ms, duration_ms(self.settings.topic_retention));
        // Dropping a topic drops its history too, so the bytes are read after both.
        let history_freed = history_before.saturating_sub(history.bytes());
        let dedupe_dropped = self.publisher.purge_expired();
        let (buckets_dropped, buckets_freed) = self.rate.forget_full(now_ms);
        let unfetched = std::mem::take(
            &mut *self
                .unfetched
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (connection, key) in unfetched {
            if let Some(connection) = connection.upgrade() {
                self.fetch_pending(&connection, key, true);
            }
        }
        Maintenance {
            entries: history_dropped + topics_dropped + dedupe_dropped + buckets_dropped,
            bytes: history_freed
                + topics_dropped * TOPIC_BYTES
                + dedupe_dropped * DEDUPE_ENTRY_BYTES
                + buckets_freed
                + self.compact(),
            topics_dropped,
        }
    }

    /// Gives back the spare capacity of the connection, topic and event indexes; returns the
    /// estimated bytes freed. (The history store and the rate buckets compact their own maps.)
    pub(crate) fn compact(&self) -> usize {
        self.connections.compact() + self.topics.compact() + self.events.compact()
    }

    /// `operation`, accepted now (for one performed in place, without the queue).
    pub(crate) fn accept(&self, operation: Operation) -> Queued {
        Queued {
            operation,
            accepted: self.clock.now(),
        }
    }

    /// Queues `operation` for the fan-out worker, or refuses it (counted) when the queue is
    /// full.
    pub(crate) fn enqueue(&self, operation: Operation) -> Result<(), GatewayError> {
        self.operations
            .push(operation, self.clock.now())
            .map_err(|_| {
                self.counters.operations_rejected.increment();
                GatewayError::Overloaded {
                    retry_after_ms: RETRY_AFTER_MS,
                }
            })
    }

    /// The broker's link to the cluster's Redis, if it has one (for the stats).
    pub(crate) fn redis_stats(&self) -> Option<RedisStats> {
        self.broker.redis_stats()
    }

    /// Hands an operation this node accepted and delivered to the broker, for the other nodes.
    /// A failure costs only the other nodes' copies: it is counted and logged.
    pub(crate) fn forward(&self, envelope: &Envelope) {
        if let Err(error) = self.broker.publish(envelope) {
            self.counters.broker_failures.increment();
            tracing::warn!(%error, "broker did not take an operation for the other nodes");
        }
    }

    /// The user's connection limit: the tier's quota, capped by the live per-user maximum.
    pub(crate) fn user_limit(&self, principal: &Principal) -> usize {
        let tier = self
            .settings
            .tier_connections
            .get(&*principal.tier)
            .copied()
            .unwrap_or(usize::MAX);
        tier.min(self.runtime.max_connections_per_user()).max(1)
    }

    /// The client writes per minute the user's tier allows.
    pub(crate) fn messages_per_minute(&self, principal: &Principal) -> u32 {
        self.settings
            .tier_messages_per_minute
            .get(&*principal.tier)
            .copied()
            .unwrap_or(u32::MAX)
    }

    /// The one cleanup path: removes the connection from every index. Idempotent.
    pub(crate) fn cleanup(&self, connection: &Connection) {
        self.topics.remove_all(connection);
        self.connections.remove(connection);
        // What was still queued will never be written: free it now, not when the last
        // reference to the connection goes.
        connection.outbox().discard();
        self.counters.connections_closed.increment();
    }
}

impl Deliver for Node {
    /// Delivers another node's operation to this node's connections, through the same
    /// functions this node's own operations use.
    fn deliver(&self, envelope: &Envelope) -> usize {
        let counters = &self.counters;
        let delivered = match envelope {
            Envelope::Publication {
                topic,
                priority,
                frame,
                ..
            } => self.topics.deliver(topic, frame, *priority, counters),
            Envelope::Broadcast { priority, frame } => {
                self.connections
                    .offer_to_all(&[], frame, *priority, counters)
            }
            Envelope::User {
                user,
                thread,
                priority,
                frame,
            } => self
                .connections
                .offer_to_user(user, thread.as_ref(), frame, *priority, counters),
            Envelope::Event {
                user,
                thread,
                id,
                frame,
            } => {
                if self.event_store.is_some() {
                    self.events.receive(
                        Incoming {
                            user,
                            thread: thread.as_ref(),
                            id,
                            frame,
                        },
                        &self.connections,
                        counters,
                        self.now_ms(),
                    )
                } else {
                    self.connections.offer_to_user(
                        user,
                        thread.as_ref(),
                        frame,
                        Priority::Critical,
                        counters,
                    )
                }
            }
        };
        counters.delivered.add(delivered);
        delivered
    }

    /// Delivers a publication the cluster numbered, this node's own included.
    fn deliver_sequenced(
        &self,
        publication: &SequencedPublication,
        accept_gap: bool,
    ) -> SequencedDelivery {
        let outcome =
            self.topics
                .deliver_sequenced(publication, accept_gap, self.now_ms(), &self.counters);
        if let SequencedDelivery::Delivered(delivered) = outcome {
            self.counters.delivered.add(delivered);
        }
        outcome
    }

    fn position(&self, topic: &Topic) -> Option<(u64, Arc<str>)> {
        self.topics
            .topic(topic)
            .map(|info| (info.position.last_offset, info.position.epoch))
    }
}

impl Forget for Node {
    fn forget(&self, user: &UserId, ids: &[String]) {
        self.events.forget(user, ids);
    }
}

impl Changed for Node {
    fn changed(&self, user: &UserId, preferences: Map<String, Value>) {
        let batching = batching_preference(&preferences);
        let push = Frame::from(
            ServerMessage::Preferences {
                message_id: None,
                data: Value::Object(preferences),
            }
            .encode(),
        );
        for connection in self.connections.user_connections(user) {
            connection.set_batching(batching);
            connection
                .outbox()
                .offer(push.clone(), Priority::Critical, &self.counters);
        }
    }
}
