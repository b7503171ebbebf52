//! [`Stats`]: every count Herald reports, taken at one instant from one source of truth, and
//! the Prometheus samples it exports ([`Stats::samples`]).

use serde::Serialize;

/// A snapshot of every count, as `GET /api/stats` returns it (camelCase JSON) and `/metrics`
/// exports it ([`Stats::samples`]). Counts marked "since start" only grow.
///
/// Each field's doc names the Prometheus metric it is exported as; the two read the same
/// counters, so `/api/stats` and `/metrics` always agree.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Live connections (authenticated or not). Gauge `herald_connections`.
    pub connections: u64,
    /// Users with at least one authenticated connection. Gauge `herald_users`.
    pub users: u64,
    /// Connection-topic subscriptions. Gauge `herald_subscriptions`.
    pub subscriptions: u64,
    /// Known topics. Gauge `herald_topics`.
    pub topics: u64,
    /// Publications and deliveries.
    pub messages: MessageStats,
    /// Critical events.
    pub events: EventStats,
    /// Delivery latency (publication accepted to frame written).
    pub latency: LatencyStats,
    /// The process's memory.
    pub memory: MemoryStats,
    /// Connections opened and closed since start.
    pub connection_totals: ConnectionTotals,
    /// Subscribes that asked to resume from a position.
    pub resumes: ResumeStats,
    /// The operation queue between ingest and fan-out.
    pub operations: OperationStats,
    /// Topic history kept for resume.
    pub history: HistoryStats,
    /// Hand-over of accepted operations to other nodes.
    pub broker: BrokerStats,
    /// The node's link to the cluster's Redis: its circuit breaker and outbox. Absent (and
    /// not exported) on a single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStats>,
}

/// Publications and deliveries, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStats {
    /// Publications accepted (not counting duplicates).
    /// Counter `herald_messages_published_total`.
    pub published: u64,
    /// Publications answered as duplicates of one in the dedupe window.
    /// Counter `herald_messages_deduplicated_total`.
    pub deduplicated: u64,
    /// Publication, push and event frames queued to connections.
    /// Counter `herald_messages_delivered_total`.
    pub delivered: u64,
    /// Frames shed from full queues, whatever they carried (publications, pushes, replies,
    /// pings); the sum of [`shed_by_priority`](Self::shed_by_priority), which is what
    /// `/metrics` exports.
    pub shed: u64,
    /// [`shed`](Self::shed) by the priority of the shed frame.
    /// Counter `herald_messages_shed_total{priority="low"|"normal"|"high"|"critical"}`.
    pub shed_by_priority: ShedStats,
    /// Connections closed 4009 because their queue was full of frames that could not be shed.
    /// Counter `herald_slow_consumer_closes_total`.
    pub slow_consumer_closes: u64,
    /// Client writes (`publish`, `update_preferences`) refused by the tier's rate limit.
    /// Counter `herald_rate_limited_total`.
    pub rate_limited: u64,
}

/// Shed frames by their priority, since start; each field is one label value of
/// `herald_messages_shed_total{priority}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShedStats {
    /// `priority="low"`.
    pub low: u64,
    /// `priority="normal"`.
    pub normal: u64,
    /// `priority="high"`.
    pub high: u64,
    /// `priority="critical"` (always 0: critical frames are never shed; exported so a
    /// dashboard sees the invariant).
    pub critical: u64,
}

impl ShedStats {
    /// Every priority's count.
    pub fn total(&self) -> u64 {
        self.low + self.normal + self.high + self.critical
    }
}

/// Critical events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStats {
    /// Events awaiting an acknowledgement now, all users. Gauge `herald_events_pending`.
    pub pending: u64,
    /// Events accepted since start. Counter `herald_events_sent_total`.
    pub sent: u64,
    /// Events refused since start because the user had the maximum pending.
    /// Counter `herald_events_rejected_total`.
    pub rejected: u64,
    /// Deliveries of events again after the ack timeout, since start.
    /// Counter `herald_events_redelivered_total`.
    pub redelivered: u64,
    /// Events dropped unacknowledged after their time-to-live, since start.
    /// Counter `herald_events_expired_total`.
    pub expired: u64,
    /// Events acknowledged by a client, since start.
    /// Counter `herald_events_acknowledged_total`.
    pub acknowledged: u64,
}

/// Recent delivery latency: a publication accepted by the gateway to the socket write that
/// carried its frame to a subscriber, from [`LatencyHistogram::stats`](crate::LatencyHistogram::stats).
///
/// Not exported by [`Stats::samples`]: `/metrics` has the full histogram
/// `herald_delivery_latency_seconds`, rendered from the same [`LatencyHistogram`](crate::LatencyHistogram).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencyStats {
    /// Median, in microseconds (0 before the first publication).
    #[serde(rename = "p50Us")]
    pub p50_us: u64,
    /// 90th percentile, in microseconds (0 before the first publication).
    #[serde(rename = "p90Us")]
    pub p90_us: u64,
    /// 99th percentile, in microseconds (0 before the first publication).
    #[serde(rename = "p99Us")]
    pub p99_us: u64,
    /// 99.9th percentile, in microseconds (0 before the first publication).
    #[serde(rename = "p999Us")]
    pub p999_us: u64,
    /// Deliveries the percentiles are taken over: the most recent socket writes that carried a
    /// publication, at most [`RECENT_SAMPLES`](crate::RECENT_SAMPLES) per runtime thread that wrote.
    pub samples: u64,
}

/// The process's memory, from the memory probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// Resident set size in bytes. Gauge `herald_memory_rss_bytes`.
    pub rss_bytes: u64,
    /// Bytes judged against the budget. Gauge `herald_memory_used_bytes`.
    pub used_bytes: u64,
    /// Bytes in live allocations, where the allocator reports them.
    /// Gauge `herald_memory_allocated_bytes` (absent when unknown).
    pub allocated_bytes: Option<u64>,
    /// The budget, where known. Gauge `herald_memory_limit_bytes` (absent when unknown).
    pub limit_bytes: Option<u64>,
    /// `used_bytes` as a percent of `limit_bytes`, one decimal (absent when no budget is
    /// known). Not a series of its own: `/metrics` has the used and limit gauges.
    pub pressure_percent: Option<f64>,
}

/// Connections opened and closed, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionTotals {
    /// Connections opened (after a successful upgrade).
    /// Counter `herald_connections_opened_total`.
    pub opened: u64,
    /// Connections cleaned up, whatever the cause.
    /// Counter `herald_connections_closed_total`.
    pub closed: u64,
    /// Connections asked to close with 1013 (try again later) to relieve memory pressure, the
    /// idlest first; they are also among [`closed`](Self::closed) once cleaned up.
    /// Counter `herald_degradation_closes_total`.
    pub degradation_closes: u64,
}

/// Subscribes with `since`, since start; each field is one label value of
/// `herald_resumes_total{recovered}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeStats {
    /// The gap was replayed from history: `recovered="true"`.
    pub recovered: u64,
    /// The gap could not be replayed (another epoch, or history no longer holds it):
    /// `recovered="false"`.
    pub unrecovered: u64,
}

/// The operation queue between ingest (the HTTP API, client publishes) and fan-out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationStats {
    /// Operations waiting now. Gauge `herald_operation_queue_depth`.
    pub queued: u64,
    /// Operations refused since start because the queue was full (HTTP 429).
    /// Counter `herald_operation_queue_rejected_total`.
    pub rejected: u64,
}

/// Topic history kept for resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryStats {
    /// Bytes of retained frames now. Gauge `herald_history_bytes`.
    pub bytes: u64,
    /// Entries dropped since start for age or for the byte budget.
    /// Counter `herald_history_dropped_total`.
    pub dropped: u64,
}

/// Hand-over of accepted operations to other nodes through the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStats {
    /// Operations delivered on this node that the broker refused to forward to the other
    /// nodes, since start. Counter `herald_broker_failures_total`.
    pub failures: u64,
}

/// The link to the cluster's Redis: the circuit breaker around every call and the outbox of
/// what the node accepted while Redis was unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStats {
    /// The breaker now: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// The same as a number: 0 closed, 1 open, 2 half-open.
    /// Gauge `herald_redis_breaker_state`.
    pub breaker_state: u64,
    /// Times the breaker opened, since start.
    /// Counter `herald_redis_breaker_transitions_total{to="open"}`.
    pub opened: u64,
    /// Times it went half-open, since start.
    /// Counter `herald_redis_breaker_transitions_total{to="half_open"}`.
    pub half_opened: u64,
    /// Times it closed again, since start.
    /// Counter `herald_redis_breaker_transitions_total{to="closed"}`.
    pub closed: u64,
    /// Whether the node numbers publications itself now (a local epoch), until its outbox is
    /// replayed. Gauge `herald_redis_local_fallback` (0 or 1).
    pub local_fallback: bool,
    /// Whether the bus connection is up and subscribed (its last keep-alive ping, once a
    /// second, was answered). While it is not, other nodes' operations do not reach this one.
    /// Gauge `herald_redis_bus_connected` (0 or 1).
    pub bus_connected: bool,
    /// Operations accepted while Redis was unreachable, waiting to be replayed.
    /// Gauge `herald_redis_outbox_depth`.
    pub outbox_depth: u64,
    /// The outbox's limit (`HERALD_REDIS_OUTBOX_SIZE`). Gauge `herald_redis_outbox_capacity`.
    pub outbox_capacity: u64,
    /// Operations refused because the outbox was full, since start (publications answered
    /// 503). Counter `herald_redis_outbox_refused_total`.
    pub outbox_refused: u64,
    /// Operations replayed from the outbox to Redis, since start.
    /// Counter `herald_redis_outbox_replayed_total`.
    pub outbox_replayed: u64,
}

/// Whether a [`Sample`] is a counter (only grows) or a gauge (a level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A total since start; exported with its absolute value.
    Counter,
    /// A level now.
    Gauge,
}

/// One exported value of a [`Stats`]: a Prometheus metric name, at most one label, and the
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The metric name (`herald_...`; counters end in `_total`).
    pub name: &'static str,
    /// The label `(name, value)`, for metrics split by one bounded label.
    pub label: Option<(&'static str, &'static str)>,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The value.
    pub value: u64,
}

impl Stats {
    /// Every value `/metrics` exports, each under the name its field's doc gives.
    ///
    /// Optional memory readings that are unknown are left out. Latency percentiles are left
    /// out too: the histogram behind them is exported where it is recorded.
    pub fn samples(&self) -> Vec<Sample> {
        use MetricKind::{Counter, Gauge};
        let plain = |name, kind, value| Sample {
            name,
            label: None,
            kind,
            value,
        };
        let labelled = |name, label, kind, value| Sample {
            name,
            label: Some(label),
            kind,
            value,
        };
        let shed = "herald_messages_shed_total";
        let resumes = "herald_resumes_total";
        let mut samples = vec![
            plain("herald_connections", Gauge, self.connections),
            plain("herald_users", Gauge, self.users),
            plain("herald_subscriptions", Gauge, self.subscriptions),
            plain("herald_topics", Gauge, self.topics),
            plain(
                "herald_messages_published_total",
                Counter,
                self.messages.published,
            ),
            plain(
                "herald_messages_deduplicated_total",
                Counter,
                self.messages.deduplicated,
            ),
            plain(
                "herald_messages_delivered_total",
                Counter,
                self.messages.delivered,
            ),
            labelled(
                shed,
                ("priority", "low"),
                Counter,
                self.messages.shed_by_priority.low,
            ),
            labelled(
                shed,
                ("priority", "normal"),
                Counter,
                self.messages.shed_by_priority.normal,
            ),
            labelled(
                shed,
                ("priority", "high"),
                Counter,
                self.messages.shed_by_priority.high,
            ),
            labelled(
                shed,
                ("priority", "critical"),
                Counter,
                self.messages.shed_by_priority.critical,
            ),
            plain(
                "herald_slow_consumer_closes_total",
                Counter,
                self.messages.slow_consumer_closes,
            ),
            plain(
                "herald_rate_limited_total",
                Counter,
                self.messages.rate_limited,
            ),
            plain("herald_events_pending", Gauge, self.events.pending),
            plain("herald_events_sent_total", Counter, self.events.sent),
            plain(
                "herald_events_rejected_total",
                Counter,
                self.events.rejected,
            ),
            plain(
                "herald_events_redelivered_total",
                Counter,
                self.events.redelivered,
            ),
            plain("herald_events_expired_total", Counter, self.events.expired),
            plain(
                "herald_events_acknowledged_total",
                Counter,
                self.events.acknowledged,
            ),
            plain("herald_memory_rss_bytes", Gauge, self.memory.rss_bytes),
            plain("herald_memory_used_bytes", Gauge, self.memory.used_bytes),
            plain(
                "herald_connections_opened_total",
                Counter,
                self.connection_totals.opened,
            ),
            plain(
                "herald_connections_closed_total",
                Counter,
                self.connection_totals.closed,
            ),
            plain(
                "herald_degradation_closes_total",
                Counter,
                self.connection_totals.degradation_closes,
            ),
            labelled(
                resumes,
                ("recovered", "true"),
                Counter,
                self.resumes.recovered,
            ),
            labelled(
                resumes,
                ("recovered", "false"),
                Counter,
                self.resumes.unrecovered,
            ),
            plain(
                "herald_operation_queue_depth",
                Gauge,
                self.operations.queued,
            ),
            plain(
                "herald_operation_queue_rejected_total",
                Counter,
                self.operations.rejected,
            ),
            plain("herald_history_bytes", Gauge, self.history.bytes),
            plain(
                "herald_history_dropped_total",
                Counter,
                self.history.dropped,
            ),
            plain(
                "herald_broker_failures_total",
                Counter,
                self.broker.failures,
            ),
        ];
        if let Some(bytes) = self.memory.allocated_bytes {
            samples.push(plain("herald_memory_allocated_bytes", Gauge, bytes));
        }
        if let Some(bytes) = self.memory.limit_bytes {
            samples.push(plain("herald_memory_limit_bytes", Gauge, bytes));
        }
        if let Some(redis) = &self.redis {
            let transitions = "herald_redis_breaker_transitions_total";
            samples.extend([
                plain("herald_redis_breaker_state", Gauge, redis.breaker_state),
                labelled(transitions, ("to", "open"), Counter, redis.opened),
                labelled(transitions, ("to", "half_open"), Counter, redis.half_opened),
                labelled(transitions, ("to", "closed"), Counter, redis.closed),
                plain(
                    "herald_redis_local_fallback",
                    Gauge,
                    u64::from(redis.local_fallback),
                ),
                plain(
                    "herald_redis_bus_connected",
                    Gauge,
                    u64::from(redis.bus_connected),
                ),
                plain("herald_redis_outbox_depth", Gauge, redis.outbox_depth),
                plain("herald_redis_outbox_capacity", Gauge, redis.outbox_capacity),
                plain(
                    "herald_redis_outbox_refused_total",
                    Counter,
                    redis.outbox_refused,
                ),
                plain(
                    "herald_redis_outbox_replayed_total",
                    Counter,
                    redis.outbox_replayed,
                ),
            ]);
        }
        samples
    }
}

/// Where a [`Stats`] snapshot comes from; the gateway is one.
pub trait StatsSource: Send + Sync {
    /// Every count, now.
    fn stats(&self) -> Stats;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A snapshot whose every count differs, so a sample reading the wrong field shows.
    fn distinct() -> Stats {
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        Stats {
            connections: next(),
            users: next(),
            subscriptions: next(),
            topics: next(),
            messages: MessageStats {
                published: next(),
                deduplicated: next(),
                delivered: next(),
                shed: 0,
                shed_by_priority: ShedStats {
                    low: next(),
                    normal: next(),
                    high: next(),
                    critical: next(),
                },
                slow_consumer_closes: next(),
                rate_limited: next(),
            },
            events: EventStats {
                pending: next(),
                sent: next(),
                rejected: next(),
                redelivered: next(),
                expired: next(),
                acknowledged: next(),
            },
            latency: LatencyStats::default(),
            memory: MemoryStats {
                rss_bytes: next(),
                used_bytes: next(),
                allocated_bytes: Some(next()),
                limit_bytes: Some(next()),
                pressure_percent: Some(12.5),
            },
            connection_totals: ConnectionTotals {
                opened: next(),
                closed: next(),
                degradation_closes: next(),
            },
            resumes: ResumeStats {
                recovered: next(),
                unrecovered: next(),
            },
            operations: OperationStats {
                queued: next(),
                rejected: next(),
            },
            history: HistoryStats {
                bytes: next(),
                dropped: next(),
            },
            broker: BrokerStats { failures: next() },
            redis: Some(RedisStats {
                breaker: "half_open",
                breaker_state: 2,
                opened: next(),
                half_opened: next(),
                closed: next(),
                local_fallback: true,
                bus_connected: false,
                outbox_depth: next(),
                outbox_capacity: next(),
                outbox_refused: next(),
                outbox_replayed: next(),
            }),
        }
    }

    #[test]
    fn stats_serialize_in_the_api_shape() {
        let json = serde_json::to_string(&Stats::default()).unwrap_or_default();
        for key in [
            "\"connections\":0",
            "\"users\":0",
            "\"subscriptions\":0",
            "\"topics\":0",
            "\"messages\":{\"published\":0",
            "\"delivered\":0",
            "\"shed\":0",
            "\"events\":{\"pending\":0",
            "\"latency\":{\"p50Us\":0,\"p90Us\":0,\"p99Us\":0,\"p999Us\":0,\"samples\":0}",
            "\"memory\":{\"rssBytes\":0",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
    }

    #[test]
    fn every_sample_has_a_distinct_value_and_a_well_formed_name() {
        let samples = distinct().samples();
        // The Redis levels (a state code and two flags) cannot be distinct; the rest are.
        let levels = [
            "herald_redis_breaker_state",
            "herald_redis_local_fallback",
            "herald_redis_bus_connected",
        ];
        let counts: Vec<&Sample> = samples
            .iter()
            .filter(|s| !levels.contains(&s.name))
            .collect();
        let values: BTreeSet<u64> = counts.iter().map(|s| s.value).collect();
        // Every field but the derived `shed` total and the latency is exported once.
        assert_eq!(values.len(), counts.len(), "{samples:?}");
        assert_eq!(samples.len(), 43);
        for sample in &samples {
            assert!(sample.name.starts_with("herald_"), "{sample:?}");
            let total = sample.name.ends_with("_total");
            assert_eq!(total, sample.kind == MetricKind::Counter, "{sample:?}");
        }
        let names: BTreeSet<(&str, Option<(&str, &str)>)> =
            samples.iter().map(|s| (s.name, s.label)).collect();
        assert_eq!(
            names.len(),
            samples.len(),
            "a name and label exported twice"
        );
    }

    #[test]
    fn the_redis_link_is_reported_only_on_a_cluster_node() {
        let single = Stats::default();
        let json = serde_json::to_string(&single).unwrap_or_default();
        assert!(!json.contains("redis"), "{json}");
        assert!(
            single
                .samples()
                .iter()
                .all(|s| !s.name.starts_with("herald_redis_"))
        );
        let cluster = distinct();
        let json = serde_json::to_value(&cluster).unwrap_or_default();
        assert_eq!(json["redis"]["breaker"], "half_open");
        assert_eq!(json["redis"]["breakerState"], 2);
        assert_eq!(json["redis"]["localFallback"], true);
        let state = cluster
            .samples()
            .into_iter()
            .find(|s| s.name == "herald_redis_breaker_state")
            .map(|s| s.value);
        assert_eq!(state, Some(2));
    }

    #[test]
    fn exported_shed_samples_add_up_to_the_api_total() {
        let mut stats = distinct();
        stats.messages.shed = stats.messages.shed_by_priority.total();
        let exported: u64 = stats
            .samples()
            .iter()
            .filter(|s| s.name == "herald_messages_shed_total")
            .map(|s| s.value)
            .sum();
        assert_eq!(exported, stats.messages.shed);
    }

    #[test]
    fn unknown_memory_readings_are_not_exported() {
        let stats = Stats::default();
        assert!(
            !stats
                .samples()
                .iter()
                .any(|s| s.name == "herald_memory_limit_bytes"
                    || s.name == "herald_memory_allocated_bytes")
        );
    }
}
