//! What the gateway is built from: [`GatewaySettings`], taken from the base configuration, and
//! [`GatewayParts`], the settings plus every seam (clock, authenticator, stores, broker, memory
//! probe).

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_config::{BaseConfig, RuntimeConfig, UserLimitPolicy};
use herald_memory::MemoryProbe;
use herald_protocol::Limits;
use herald_utils::Clock;

use crate::{
    auth::Authenticator, broker::Broker, connection::LimitPolicy, event_store::EventStore,
    history::HistoryStore, preferences::PreferenceStore,
};

/// The immutable settings the gateway runs with, taken from [`BaseConfig`].
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Time to authenticate after the upgrade (close 4001 after it).
    pub auth_timeout: Duration,
    /// Interval of server pings.
    pub heartbeat_interval: Duration,
    /// Close 4000 a connection silent for this long.
    pub stale_timeout: Duration,
    /// The bounds on client frames: size (`max_payload_bytes`), nesting and batch sizes.
    pub limits: Limits,
    /// Connections in all.
    pub max_connections: usize,
    /// Topics one connection may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// Outbound queue per connection, in frames.
    pub max_queue_size: usize,
    /// Outbound queue per connection, in bytes.
    pub max_queue_bytes: usize,
    /// What to do at a user's connection limit.
    pub user_limit_policy: LimitPolicy,
    /// Connection quota per tier.
    pub tier_connections: HashMap<String, usize>,
    /// Client writes (`publish`, `update_preferences`) per minute per tier.
    pub tier_messages_per_minute: HashMap<String, u32>,
    /// Subscriptions per connection per tier (capped by `max_subscriptions_per_connection`).
    pub tier_subscriptions: HashMap<String, usize>,
    /// The largest client `publish` payload per tier, in bytes of its JSON text.
    pub tier_publish_bytes: HashMap<String, usize>,
    /// How long a topic without subscribers keeps its offsets after its last publication.
    pub topic_retention: Duration,
    /// Publications and sends accepted but not yet fanned out.
    pub operation_queue_size: usize,
    /// Unacknowledged critical events kept per user.
    pub max_pending_events: usize,
    /// Redelivery delay of an unacknowledged critical event.
    pub event_ack_timeout: Duration,
    /// How long an unacknowledged critical event is kept.
    pub event_ttl: Duration,
}

impl GatewaySettings {
    /// The settings of `config`.
    pub fn from_config(config: &BaseConfig) -> Self {
        Self {
            auth_timeout: config.auth_timeout,
            heartbeat_interval: config.heartbeat_interval,
            stale_timeout: config.stale_timeout,
            limits: Limits {
                max_frame_bytes: config.max_payload_bytes,
                max_json_depth: config.max_json_depth,
                max_batch_topics: config.max_batch_topics,
                max_publish_batch: config.max_publish_batch,
            },
            max_connections: config.max_connections,
            max_subscriptions_per_connection: config.max_subscriptions_per_connection,
            max_queue_size: config.max_queue_size,
            max_queue_bytes: config.max_queue_bytes,
            user_limit_policy: match config.user_limit_policy {
                UserLimitPolicy::EvictOldest => LimitPolicy::EvictOldest,
                UserLimitPolicy::Reject => LimitPolicy::Reject,
            },
            tier_connections: config
                .tiers
                .iter()
                .map(|(name, quota)| (name.to_owned(), quota.max_connections as usize))
                .collect(),
            tier_messages_per_minute: config
                .tiers
                .iter()
                .map(|(name, quota)| (name.to_owned(), quota.messages_per_minute))
                .collect(),
            tier_subscriptions: config
                .tiers
                .iter()
                .map(|(name, quota)| (name.to_owned(), quota.max_subscriptions as usize))
                .collect(),
            tier_publish_bytes: config
                .tiers
                .iter()
                .map(|(name, quota)| (name.to_owned(), quota.max_publish_bytes as usize))
                .collect(),
            topic_retention: config.history_ttl,
            operation_queue_size: config.operation_queue_size,
            max_pending_events: config.max_pending_events,
            event_ack_timeout: config.event_ack_timeout,
            event_ttl: config.event_ttl,
        }
    }
}

/// Everything the gateway is built from: its settings and its seams.
///
/// The service passes the production implementations (`SystemClock`, the JWT authenticator,
/// the in-memory stores and broker, a jemalloc or RSS probe); tests pass fakes.
pub struct GatewayParts {
    /// Immutable settings.
    pub settings: GatewaySettings,
    /// Live-tunable settings.
    pub runtime: Arc<RuntimeConfig>,
    /// Token verification; sees the token and the clock's wall-clock time.
    pub authenticator: Arc<dyn Authenticator>,
    /// Where preferences live.
    pub preferences: Arc<dyn PreferenceStore>,
    /// Where topic history lives.
    pub history: Arc<dyn HistoryStore>,
    /// Where the cluster keeps pending critical events; `None` (the embedded default): each
    /// node keeps those it accepted in its own memory.
    pub events: Option<Arc<dyn EventStore>>,
    /// Where time comes from, monotonic and wall-clock: the only clock the gateway reads.
    pub clock: Arc<dyn Clock>,
    /// How accepted operations reach the other nodes
    /// ([`InMemoryBroker`](crate::InMemoryBroker) within one process).
    pub broker: Arc<dyn Broker>,
    /// Where the memory section of the stats comes from.
    pub memory: Arc<dyn MemoryProbe>,
}

#[cfg(test)]
mod tests {
    use herald_config::{BaseConfig, Sources};
    use herald_protocol::{
        DEFAULT_MAX_BATCH_TOPICS, DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_PUBLISH_BATCH,
        MAX_JSON_DEPTH_CEILING,
    };

    use super::GatewaySettings;

    fn load_depth(depth: usize) -> Result<BaseConfig, herald_config::ConfigError> {
        BaseConfig::load(Sources {
            file: None,
            env: vec![
                ("HERALD_JWT_SECRET".to_owned(), "x".repeat(32)),
                ("HERALD_MAX_JSON_DEPTH".to_owned(), depth.to_string()),
            ],
            overrides: Vec::new(),
        })
    }

    #[test]
    fn the_configured_limits_default_to_the_protocol_crates_and_stop_at_its_ceiling() {
        let limits = GatewaySettings::from_config(&BaseConfig::default()).limits;
        assert_eq!(limits.max_json_depth, DEFAULT_MAX_JSON_DEPTH);
        assert_eq!(limits.max_batch_topics, DEFAULT_MAX_BATCH_TOPICS);
        assert_eq!(limits.max_publish_batch, DEFAULT_MAX_PUBLISH_BATCH);
        let deepest = load_depth(MAX_JSON_DEPTH_CEILING).unwrap();
        assert_eq!(
            GatewaySettings::from_config(&deepest).limits.max_json_depth,
            MAX_JSON_DEPTH_CEILING
        );
        assert!(load_depth(MAX_JSON_DEPTH_CEILING + 1).is_err());
    }
}
