//! `BaseConfig`: every immutable setting, as fields with their production defaults.
//!
//! Loading and validating it is `load.rs`'s job; printing it is `print.rs`'s.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    choice::{JwtAlgorithm, LogFormat, Profile, UserLimitPolicy},
    net::IpBlock,
    origin::Origin,
    secret::Secret,
    tiers::TierQuotas,
};

/// Every setting that is fixed for the life of the process.
///
/// Build it with [`BaseConfig::load`], which validates every value. [`BaseConfig::default`]
/// gives the production defaults without validation, for tests and embedders. Keys ending in `_ms` drop the suffix here
/// because the fields are typed (`heartbeat_interval_ms` is `heartbeat_interval: Duration`).
#[derive(Debug, Clone)]
pub struct BaseConfig {
    /// `HERALD_PROFILE` / `profile`: the built-in values between the defaults and the file.
    pub profile: Profile,
    /// `HERALD_LISTEN` / `listen`: address of the main listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// `HERALD_ADMIN_LISTEN` / `admin_listen`: a separate listener for `/metrics` and `/health*`.
    /// `None` (the default) serves them on the main listener. Never equal to `listen` unless
    /// both use port 0.
    pub admin_listen: Option<SocketAddr>,
    /// `HERALD_TLS_CERT_FILE` / `tls_cert_file`: PEM certificate chain of the main listener.
    /// `None` (the default) serves plaintext. Set exactly when `tls_key_file` is (after
    /// `load`). This crate does not read it; the service does, and again on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// `HERALD_TLS_KEY_FILE` / `tls_key_file`: PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// `HERALD_ADMIN_TLS_CERT_FILE` / `admin_tls_cert_file`: PEM certificate chain of the admin
    /// listener. Set only with `admin_listen`, and exactly when `admin_tls_key_file` is.
    pub admin_tls_cert_file: Option<PathBuf>,
    /// `HERALD_ADMIN_TLS_KEY_FILE` / `admin_tls_key_file`: PEM private key of
    /// `admin_tls_cert_file`.
    pub admin_tls_key_file: Option<PathBuf>,
    /// `HERALD_TCP_KEEPALIVE_IDLE_MS` / `tcp_keepalive_idle_ms`: idle time before TCP keepalive
    /// probes start on an accepted socket; zero turns keepalive off. Default 30 s.
    pub tcp_keepalive_idle: Duration,
    /// `HERALD_TCP_KEEPALIVE_INTERVAL_MS` / `tcp_keepalive_interval_ms`: time between
    /// unanswered probes. Default 10 s, range 1 s to 10 min.
    pub tcp_keepalive_interval: Duration,
    /// `HERALD_TCP_KEEPALIVE_PROBES` / `tcp_keepalive_probes`: unanswered probes before the
    /// kernel drops the connection. Default 3, range 1 to 100.
    pub tcp_keepalive_probes: u32,
    /// `HERALD_TCP_USER_TIMEOUT_MS` / `tcp_user_timeout_ms`: `TCP_USER_TIMEOUT` of accepted
    /// sockets; zero leaves the kernel's default. Default 20 s.
    pub tcp_user_timeout: Duration,
    /// `HERALD_MAX_CONNECTIONS_PER_IP` / `max_connections_per_ip`: open connections per client
    /// address; zero (the default) means no limit.
    pub max_connections_per_ip: u32,
    /// `HERALD_CONNECTION_RATE_PER_IP` / `connection_rate_per_ip`: new connections per second
    /// per client address, in bursts of as many; zero (the default) means no limit.
    pub connection_rate_per_ip: u32,
    /// `HERALD_TRUSTED_PROXIES` / `trusted_proxies`: peers whose `X-Forwarded-For` names the
    /// client address for the per-address limits. Default empty.
    pub trusted_proxies: Vec<IpBlock>,
    /// `HERALD_API_PUBLISH_RATE_PER_KEY` / `api_publish_rate_per_key`: messages per second one
    /// API key may publish, in bursts of as many; zero (the default) means no limit.
    pub api_publish_rate_per_key: u32,
    /// `HERALD_JWT_SECRET` / `jwt_secret`: the HS256 secret. Always set when the algorithm is
    /// HS256 (after `load`).
    pub jwt_secret: Option<Secret>,
    /// `HERALD_JWT_ALGORITHM` / `jwt_algorithm`: the only accepted algorithm. Default HS256.
    pub jwt_algorithm: JwtAlgorithm,
    /// `HERALD_JWT_PUBLIC_KEY_FILE` / `jwt_public_key_file`: PEM public key for RS256/ES256.
    /// Always set when the algorithm needs it (after `load`). This crate does not read it; the
    /// service does, relative to its working directory.
    pub jwt_public_key_file: Option<PathBuf>,
    /// `HERALD_JWT_ISSUER` / `jwt_issuer`: the required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// `HERALD_JWT_AUDIENCE` / `jwt_audience`: the required `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// `HERALD_JWT_LEEWAY_MS` / `jwt_leeway_ms`: clock leeway for `exp` and `nbf`.
    /// Default 0, range 0 to 300 s.
    pub jwt_leeway: Duration,
    /// `HERALD_DEFAULT_TOPICS` / `default_topics`: topic patterns for tokens without a `topics`
    /// claim. Default empty. Items are non-empty and free of whitespace.
    pub default_topics: Vec<String>,
    /// `HERALD_API_KEYS` / `api_keys`: bearer keys for `/api/*`. Default empty (every `/api/*`
    /// request answers 401).
    pub api_keys: Vec<Secret>,
    /// `HERALD_ALLOWED_ORIGINS` / `allowed_origins`: origins allowed besides same-origin, each
    /// `*` or `scheme://host[:port]` with scheme and host lower-cased. Default empty.
    pub allowed_origins: Vec<String>,
    /// `HERALD_AUTH_TIMEOUT_MS` / `auth_timeout_ms`: time to authenticate after the upgrade.
    /// Default 10 s, range 100 ms to 300 s.
    pub auth_timeout: Duration,
    /// `HERALD_HANDSHAKE_TIMEOUT_MS` / `handshake_timeout_ms`: time for the HTTP request head
    /// to arrive. Default 10 s, range 100 ms to 300 s.
    pub handshake_timeout: Duration,
    /// `HERALD_HEARTBEAT_INTERVAL_MS` / `heartbeat_interval_ms`: server ping interval.
    /// Default 30 s, range 100 ms to 1 h.
    pub heartbeat_interval: Duration,
    /// `HERALD_STALE_TIMEOUT_MS` / `stale_timeout_ms`: silence after which a connection is
    /// closed 4000. Default 60 s, range 200 ms to 2 h, always greater than `heartbeat_interval`.
    pub stale_timeout: Duration,
    /// `HERALD_MAX_PAYLOAD_BYTES` / `max_payload_bytes`: largest inbound WebSocket message.
    /// Default 102400, range 1 to 64 MiB.
    pub max_payload_bytes: usize,
    /// `HERALD_ECHO_PATH` / `echo_path`: the path of the WebSocket echo endpoint for conformance
    /// suites, which needs no token. `None` (the default) serves none. Always absolute, plain
    /// (letters, digits, `/-._~`) and other than `/ws`.
    pub echo_path: Option<String>,
    /// `HERALD_MAX_HTTP_BODY_BYTES` / `max_http_body_bytes`: largest HTTP API body.
    /// Default 1 MiB, range 1 to 64 MiB.
    pub max_http_body_bytes: usize,
    /// `HERALD_MAX_JSON_DEPTH` / `max_json_depth`: deepest nesting of arrays and objects in a
    /// client frame or an HTTP API body. Default 64, range 1 to 120.
    pub max_json_depth: usize,
    /// `HERALD_MAX_BATCH_TOPICS` / `max_batch_topics`: most topics in one `batch_subscribe` or
    /// `batch_unsubscribe`. Default 100, range 1 to 10000.
    pub max_batch_topics: usize,
    /// `HERALD_MAX_PUBLISH_BATCH` / `max_publish_batch`: most items in one
    /// `POST /api/publish/batch`. Default 1000, range 1 to 100000.
    pub max_publish_batch: usize,
    /// `HERALD_MAX_CONNECTIONS` / `max_connections`: connections in all.
    /// Default 100000, range 1 to 10000000.
    pub max_connections: usize,
    /// `HERALD_MAX_CONNECTIONS_PER_USER` / `max_connections_per_user`: cap above the tier
    /// quotas; the initial runtime value. Default 25, range 1 to 10000.
    pub max_connections_per_user: usize,
    /// `HERALD_USER_LIMIT_POLICY` / `user_limit_policy`: what happens over the per-user limit.
    pub user_limit_policy: UserLimitPolicy,
    /// `HERALD_MAX_SUBSCRIPTIONS_PER_CONNECTION` / `max_subscriptions_per_connection`.
    /// Default 1000, range 1 to 1000000.
    pub max_subscriptions_per_connection: usize,
    /// `HERALD_MAX_QUEUE_SIZE` / `max_queue_size`: outbound messages queued per connection.
    /// Default 1000, range 1 to 1000000.
    pub max_queue_size: usize,
    /// `HERALD_MAX_QUEUE_BYTES` / `max_queue_bytes`: outbound bytes queued per connection.
    /// Default 4 MiB, range 1 KiB to 1 GiB.
    pub max_queue_bytes: usize,
    /// `HERALD_OPERATION_QUEUE_SIZE` / `operation_queue_size`: publications and sends accepted
    /// by the API but not yet fanned out. Full means HTTP 429 with Retry-After. Default 10000.
    pub operation_queue_size: usize,
    /// `HERALD_HISTORY_MAX_BYTES` / `history_max_bytes`: topic history kept across all topics.
    /// Default 64 MiB.
    pub history_max_bytes: usize,
    /// `HERALD_MAX_PENDING_EVENTS` / `max_pending_events`: unacknowledged critical events kept
    /// per user (seed: 50). Full means the events API answers 429.
    pub max_pending_events: usize,
    /// `HERALD_EVENT_ACK_TIMEOUT_MS` / `event_ack_timeout_ms`: redelivery delay of an
    /// unacknowledged critical event. Default 30 s.
    pub event_ack_timeout: Duration,
    /// `HERALD_EVENT_TTL_MS` / `event_ttl_ms`: how long an unacknowledged critical event is
    /// kept. Default 24 h.
    pub event_ttl: Duration,
    /// `HERALD_HISTORY_SIZE` / `history_size`: publications kept per topic for resume.
    /// Default 256, range 0 to 1000000.
    pub history_size: usize,
    /// `HERALD_HISTORY_TTL_MS` / `history_ttl_ms`: how long they are kept.
    /// Default 300 s, range 0 to 24 h.
    pub history_ttl: Duration,
    /// `HERALD_DEDUPE_WINDOW_MS` / `dedupe_window_ms`: publish dedupe window; the initial
    /// runtime value. Default 5 s, range 0 to 1 h.
    pub dedupe_window: Duration,
    /// `HERALD_DEDUPE_CACHE_SIZE` / `dedupe_cache_size`: publish ids remembered; the initial
    /// runtime value. Default 5000, range 0 to 10000000.
    pub dedupe_cache_size: usize,
    /// `HERALD_MESSAGE_BATCH_SIZE` / `message_batch_size`: frames per flush at most; the
    /// initial runtime value. Default 10, range 1 to 10000.
    pub message_batch_size: usize,
    /// `HERALD_MESSAGE_BATCH_DELAY_MS` / `message_batch_delay_ms`: wait to fill a batch; the
    /// initial runtime value. Default 0, range 0 to 10 s.
    pub message_batch_delay: Duration,
    /// `HERALD_COMPRESSION_ENABLED` / `compression_enabled`: whether the server accepts a
    /// client's permessage-deflate offer (RFC 7692). Default true.
    pub compression_enabled: bool,
    /// `HERALD_COMPRESSION_THRESHOLD_BYTES` / `compression_threshold_bytes`: smallest message
    /// worth compressing; the initial runtime value. Default 1024, range 0 to 64 MiB.
    pub compression_threshold_bytes: usize,
    /// `HERALD_MEMORY_CLEANUP_INTERVAL_MS` / `memory_cleanup_interval_ms`: cleanup sweep
    /// interval; the initial runtime value. Default 180 s, range 1 s to 24 h.
    pub memory_cleanup_interval: Duration,
    /// `HERALD_SHUTDOWN_GRACE_MS` / `shutdown_grace_ms`: drain time after SIGTERM.
    /// Default 5 s, range 0 to 600 s.
    pub shutdown_grace: Duration,
    /// `HERALD_MEMORY_LIMIT_BYTES` / `memory_limit_bytes`: the memory budget. `None` (the
    /// default) lets the memory crate use the cgroup limit, else physical memory.
    /// Range 1 MiB to 1 PiB.
    pub memory_limit_bytes: Option<u64>,
    /// `HERALD_MEMORY_HIGH_PERCENT` / `memory_high_percent`: where degradation starts.
    /// Default 85, range 1 to 100, always below `memory_critical_percent`.
    pub memory_high_percent: u8,
    /// `HERALD_MEMORY_CRITICAL_PERCENT` / `memory_critical_percent`: the critical level.
    /// Default 95, range 1 to 100.
    pub memory_critical_percent: u8,
    /// `HERALD_MEMORY_LEVEL_HOLD_MS` / `memory_level_hold_ms`: the least time memory stays at
    /// a degradation level before it may fall back, so the level does not flap.
    /// Default 30 s, range 0 to 1 h.
    pub memory_level_hold: Duration,
    /// `HERALD_REDIS_URL` / `redis_url`: the Redis that joins this node to a cluster
    /// (`redis://[user:password@]host:port[/db]`). `None` (the default) runs one node alone,
    /// entirely in memory. Secret: it may carry a password.
    pub redis_url: Option<Secret>,
    /// `HERALD_REDIS_KEY_PREFIX` / `redis_key_prefix`: the start of every Redis key and
    /// channel, so several clusters can share one Redis. Default `herald:`; no whitespace,
    /// `{` or `}`.
    pub redis_key_prefix: String,
    /// `HERALD_NODE_ID` / `node_id`: this node's name in the cluster, in `/api/stats`, logs and
    /// on the bus. `None` (the default): the service makes one from the host and process.
    pub node_id: Option<String>,
    /// `HERALD_REDIS_COMMAND_TIMEOUT_MS` / `redis_command_timeout_ms`: how long a Redis command
    /// may take before it counts as failed. Default 1 s, range 10 ms to 60 s.
    pub redis_command_timeout: Duration,
    /// `HERALD_REDIS_CONNECT_TIMEOUT_MS` / `redis_connect_timeout_ms`: how long connecting to
    /// Redis may take. Default 2 s, range 10 ms to 60 s.
    pub redis_connect_timeout: Duration,
    /// `HERALD_REDIS_BREAKER_FAILURES` / `redis_breaker_failures`: consecutive failed Redis
    /// calls that open the circuit breaker. Default 3, range 1 to 1000.
    pub redis_breaker_failures: u32,
    /// `HERALD_REDIS_BREAKER_OPEN_MS` / `redis_breaker_open_ms`: how long the open breaker
    /// refuses Redis calls before it lets probes through. Default 2 s, range 10 ms to 10 min.
    pub redis_breaker_open: Duration,
    /// `HERALD_REDIS_BREAKER_PROBES` / `redis_breaker_probes`: probes let through at once while
    /// half-open, and the successes that close the breaker. Default 1, range 1 to 100.
    pub redis_breaker_probes: u32,
    /// `HERALD_REDIS_OUTBOX_SIZE` / `redis_outbox_size`: operations kept while Redis is
    /// unreachable, replayed in order when it is back; past it a publish is refused.
    /// Default 10000, range 0 to 10000000.
    pub redis_outbox_size: usize,
    /// `HERALD_TIERS` / `tiers`: the quota table, always containing `free`.
    pub tiers: TierQuotas,
    /// `HERALD_LOG` / `log`: the log filter, non-empty. Default `info`.
    pub log: String,
    /// `HERALD_LOG_FORMAT` / `log_format`: text or JSON lines. Default text.
    pub log_format: LogFormat,
    /// Which layer set each setting, by TOML key; absent means the built-in default.
    pub(crate) origins: BTreeMap<&'static str, Origin>,
    /// Problems worth logging that did not stop the load.
    pub(crate) warnings: Vec<String>,
}

impl BaseConfig {
    /// Problems worth logging that did not stop the load, e.g. `unknown setting HERALD_FOO`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl Default for BaseConfig {
    /// The production defaults (docs/configuration.md), unvalidated.
    fn default() -> Self {
        Self {
            profile: Profile::Production,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            admin_tls_cert_file: None,
            admin_tls_key_file: None,
            tcp_keepalive_idle: Duration::from_millis(30_000),
            tcp_keepalive_interval: Duration::from_millis(10_000),
            tcp_keepalive_probes: 3,
            tcp_user_timeout: Duration::from_millis(20_000),
            max_connections_per_ip: 0,
            connection_rate_per_ip: 0,
            trusted_proxies: Vec::new(),
            api_publish_rate_per_key: 0,
            jwt_secret: None,
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::ZERO,
            default_topics: Vec::new(),
            api_keys: Vec::new(),
            allowed_origins: Vec::new(),
            auth_timeout: Duration::from_millis(10_000),
            handshake_timeout: Duration::from_millis(10_000),
            heartbeat_interval: Duration::from_millis(30_000),
            stale_timeout: Duration::from_millis(60_000),
            max_payload_bytes: 102_400,
            echo_path: None,
            max_http_body_bytes: 1_048_576,
            max_json_depth: 64,
            max_batch_topics: 100,
            max_publish_batch: 1000,
            max_connections: 100_000,
            max_connections_per_user: 25,
            user_limit_policy: UserLimitPolicy::EvictOldest,
            max_subscriptions_per_connection: 1_000,
            max_queue_size: 1_000,
            max_queue_bytes: 4_194_304,
            operation_queue_size: 10_000,
            history_max_bytes: 64 * 1024 * 1024,
            max_pending_events: 50,
            event_ack_timeout: Duration::from_secs(30),
            event_ttl: Duration::from_secs(24 * 60 * 60),
            history_size: 256,
            history_ttl: Duration::from_millis(300_000),
            dedupe_window: Duration::from_millis(5_000),
            dedupe_cache_size: 5_000,
            message_batch_size: 10,
            message_batch_delay: Duration::ZERO,
            compression_enabled: true,
            compression_threshold_bytes: 1_024,
            memory_cleanup_interval: Duration::from_millis(180_000),
            shutdown_grace: Duration::from_millis(5_000),
            memory_limit_bytes: None,
            memory_high_percent: 85,
            memory_critical_percent: 95,
            memory_level_hold: Duration::from_millis(30_000),
            redis_url: None,
            redis_key_prefix: "herald:".to_owned(),
            node_id: None,
            redis_command_timeout: Duration::from_millis(1_000),
            redis_connect_timeout: Duration::from_millis(2_000),
            redis_breaker_failures: 3,
            redis_breaker_open: Duration::from_millis(2_000),
            redis_breaker_probes: 1,
            redis_outbox_size: 10_000,
            tiers: TierQuotas::default(),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            origins: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}
