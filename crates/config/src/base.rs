//! `BaseConfig`: every immutable setting, loaded once from defaults, profile, file, environment and overrides.

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    choice::{JwtAlgorithm, LogFormat, Profile, UserLimitPolicy},
    error::ConfigError,
    secret::Secret,
    settings::{self, Raw, SETTINGS, Setting},
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
    /// `HERALD_JWT_SECRET` / `jwt_secret`: the HS256 secret. When it is unset with HS256 the
    /// server starts but refuses every WebSocket token (and `load` adds a warning).
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
    /// `HERALD_MAX_HTTP_BODY_BYTES` / `max_http_body_bytes`: largest HTTP API body.
    /// Default 1 MiB, range 1 to 64 MiB.
    pub max_http_body_bytes: usize,
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
    /// `HERALD_TIERS` / `tiers`: the quota table, always containing `free`.
    pub tiers: TierQuotas,
    /// `HERALD_LOG` / `log`: the log filter, non-empty. Default `info`.
    pub log: String,
    /// `HERALD_LOG_FORMAT` / `log_format`: text or JSON lines. Default text.
    pub log_format: LogFormat,
    /// Which layer set each setting, by TOML key; absent means the built-in default.
    origins: BTreeMap<&'static str, Origin>,
    /// Problems worth logging that did not stop the load.
    warnings: Vec<String>,
}

/// Where the layers come from. Only the service builds this: it owns the command line and the
/// process environment.
#[derive(Clone, Default)]
pub struct Sources<'a> {
    /// The TOML file given with `--config`, if any.
    pub file: Option<&'a Path>,
    /// The whole process environment as `(name, value)`; names without the `HERALD_` prefix
    /// are ignored. When a name repeats, the last value wins.
    pub env: Vec<(String, String)>,
    /// Command-line overrides as `(toml key, value)`, e.g. `("listen", "0.0.0.0:80")`. Values
    /// are written as in the environment (lists comma-separated). The last one of a key wins.
    pub overrides: Vec<(String, String)>,
}

impl fmt::Debug for Sources<'_> {
    /// Shows names only: environment values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("file", &self.file)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field(
                "overrides",
                &self.overrides.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The layer a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The profile's value.
    Profile(Profile),
    /// The TOML file at this path.
    File(PathBuf),
    /// A `HERALD_*` environment variable.
    Env,
    /// A command-line override.
    Override,
}

impl Origin {
    /// Where the value was given, as an error message adds it after the setting's name.
    /// Empty for the environment, whose variable the message already names.
    pub(crate) fn location(&self) -> String {
        match self {
            Self::Default | Self::Env => String::new(),
            Self::Profile(profile) => format!(" in profile {profile}"),
            Self::File(path) => format!(" in config file {}", path.display()),
            Self::Override => " on the command line".to_owned(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::Profile(profile) => write!(f, "profile {profile}"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env => f.write_str("environment"),
            Self::Override => f.write_str("command line"),
        }
    }
}

/// The environment variable prefix of every setting.
const ENV_PREFIX: &str = "HERALD_";

/// HS256 keys shorter than the hash output are refused by RFC 7518 section 3.2.
const MIN_HS256_SECRET_BYTES: usize = 32;

/// One layer's values, in the order they are applied.
type Layer<'a> = (Origin, Vec<(&'static Setting, Raw<'a>)>);

impl BaseConfig {
    /// Loads and validates every setting from `sources`.
    ///
    /// Layers, lowest to highest: built-in defaults, the profile, the TOML file, `HERALD_*`
    /// environment variables, command-line overrides. Unknown keys in the file or on the
    /// command line are errors; unknown `HERALD_*` variables are only [`warnings`](Self::warnings).
    /// Empty text unsets an optional setting (e.g. `HERALD_ADMIN_LISTEN=`), so a higher layer
    /// can clear what a lower one set.
    pub fn load(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let file = match sources.file {
            Some(path) => Some((path, read_file(path)?)),
            None => None,
        };

        let mut layers: Vec<Layer<'_>> = Vec::new();
        if let Some((path, table)) = &file {
            let mut entries = Vec::new();
            for (key, value) in table {
                let Some(setting) = settings::by_key(key) else {
                    return Err(ConfigError::UnknownKey {
                        key: key.clone(),
                        path: path.to_path_buf(),
                        suggestion: settings::suggest(key, |s| s.key),
                    });
                };
                entries.push((setting, Raw::Toml(value)));
            }
            layers.push((Origin::File(path.to_path_buf()), entries));
        }

        let mut entries = Vec::new();
        for (name, value) in &sources.env {
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            match settings::by_env(name) {
                Some(setting) => entries.push((setting, Raw::Text(value))),
                None => warnings.push(unknown_env_warning(name)),
            }
        }
        layers.push((Origin::Env, entries));

        let mut entries = Vec::new();
        for (key, value) in &sources.overrides {
            let Some(setting) = settings::by_key(key) else {
                return Err(ConfigError::UnknownOverride {
                    key: key.clone(),
                    suggestion: settings::suggest(key, |s| s.key),
                });
            };
            entries.push((setting, Raw::Text(value)));
        }
        layers.push((Origin::Override, entries));

        let mut config = Self::default();
        config.apply_profile(choose_profile(&layers)?)?;
        for (origin, entries) in &layers {
            for (setting, raw) in entries {
                config.apply(setting, raw, origin)?;
            }
        }
        config.check()?;
        warnings.extend(config.advice());
        config.warnings = warnings;
        Ok(config)
    }

    /// Problems worth logging that did not stop the load, e.g. `unknown setting HERALD_FOO`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The layer that set `key` (a TOML key), or `None` for an unknown key.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        let setting = settings::by_key(key)?;
        Some(self.origins.get(setting.key).unwrap_or(&Origin::Default))
    }

    /// Every effective setting as valid TOML, with secrets redacted: what
    /// `herald --print-config` shows.
    ///
    /// Each setting is preceded by a comment with its meaning, environment variable and origin.
    /// Unset optional settings appear as comments. Read back with `--config`, the output gives
    /// the same configuration, except that secrets are the literal `<redacted>`.
    pub fn to_toml_redacted(&self) -> String {
        let mut out = format!(
            "# Effective Herald configuration (profile {}). Secrets are redacted.\n",
            self.profile
        );
        let mut tiers_comment = String::new();
        for setting in SETTINGS {
            let comment = format!(
                "# {}.\n# {}, from {}.\n",
                capitalize(setting.doc),
                setting.env,
                self.origins.get(setting.key).unwrap_or(&Origin::Default)
            );
            if setting.key == "tiers" {
                // Tables must follow every top-level key, so the quota table goes last.
                tiers_comment = comment;
                continue;
            }
            out.push('\n');
            out.push_str(&comment);
            // Writing to a String cannot fail.
            let _ = match (setting.render)(self) {
                Some(value) => writeln!(out, "{} = {value}", setting.key),
                None => writeln!(out, "# {} is not set", setting.key),
            };
        }
        out.push('\n');
        out.push_str(&tiers_comment);
        let tables: Vec<String> = self
            .tiers
            .iter()
            .map(|(name, quota)| {
                format!(
                    "[tiers.{name}]\nmax_connections = {}\nmessages_per_minute = {}\n",
                    quota.max_connections, quota.messages_per_minute
                )
            })
            .collect();
        out.push_str(&tables.join("\n"));
        out
    }

    /// Applies the profile's values on top of the defaults.
    fn apply_profile(&mut self, (profile, origin): (Profile, Origin)) -> Result<(), ConfigError> {
        self.profile = profile;
        if origin != Origin::Default {
            self.origins.insert("profile", origin);
        }
        let origin = Origin::Profile(profile);
        for (key, value) in profile.settings() {
            // A test checks that every profile key is a setting; skipping a stray one is safer
            // than failing a start-up over it.
            let Some(setting) = settings::by_key(key) else {
                continue;
            };
            let value = toml::Value::Integer(i64::try_from(*value).unwrap_or(i64::MAX));
            self.apply(setting, &Raw::Toml(&value), &origin)?;
        }
        Ok(())
    }

    /// Parses one layer's value of one setting and records its origin.
    fn apply(
        &mut self,
        setting: &'static Setting,
        raw: &Raw<'_>,
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        setting
            .apply(self, raw)
            .map_err(|expected| ConfigError::InvalidValue {
                env: setting.env,
                key: setting.key,
                value: setting.shown(raw),
                origin: origin.clone(),
                expected,
            })?;
        self.origins.insert(setting.key, origin.clone());
        Ok(())
    }

    /// Checks the rules that involve more than one setting.
    fn check(&self) -> Result<(), ConfigError> {
        if self.stale_timeout <= self.heartbeat_interval {
            return Err(conflict(
                "stale_timeout_ms",
                self.stale_timeout.as_millis().to_string(),
                "must be greater than",
                "heartbeat_interval_ms",
                self.heartbeat_interval.as_millis().to_string(),
            ));
        }
        if self.memory_critical_percent <= self.memory_high_percent {
            return Err(conflict(
                "memory_critical_percent",
                self.memory_critical_percent.to_string(),
                "must be greater than",
                "memory_high_percent",
                self.memory_high_percent.to_string(),
            ));
        }
        if let Some(admin) = self.admin_listen
            && admin == self.listen
            && admin.port() != 0
        {
            return Err(conflict(
                "admin_listen",
                format!("{:?}", admin.to_string()),
                "must differ from",
                "listen",
                format!("{:?}", self.listen.to_string()),
            ));
        }
        let algorithm = self.jwt_algorithm;
        if algorithm.uses_public_key() && self.jwt_public_key_file.is_none() {
            return Err(ConfigError::Missing {
                env: "HERALD_JWT_PUBLIC_KEY_FILE",
                key: "jwt_public_key_file",
                reason: format!(
                    "HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}, which verifies tokens with a PEM public key"
                ),
            });
        }
        // A missing HS256 secret is not an error: the server still starts (health, metrics and
        // the HTTP API work), refuses every WebSocket token, and `advice` warns about it. That
        // lets the embedded defaults run with no configuration at all.
        Ok(())
    }

    /// Warnings about settings that are valid but probably not what the operator meant.
    fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        let algorithm = self.jwt_algorithm;
        if algorithm.uses_public_key() && self.jwt_secret.is_some() {
            advice.push(format!(
                "HERALD_JWT_SECRET (jwt_secret) is ignored: HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}, which uses HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file)"
            ));
        }
        if !algorithm.uses_public_key() {
            if self.jwt_public_key_file.is_some() {
                advice.push(format!(
                    "HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file) is ignored: HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}"
                ));
            }
            if self.jwt_secret.is_none() {
                advice.push(format!(
                    "HERALD_JWT_SECRET (jwt_secret) is not set: HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}, so every WebSocket token will be refused"
                ));
            }
            if let Some(secret) = &self.jwt_secret
                && secret.expose().len() < MIN_HS256_SECRET_BYTES
            {
                advice.push(format!(
                    "HERALD_JWT_SECRET (jwt_secret) is shorter than {MIN_HS256_SECRET_BYTES} bytes, the minimum RFC 7518 sets for {algorithm}"
                ));
            }
        }
        advice
    }
}

impl Default for BaseConfig {
    /// The production defaults of PROTOCOL.md, unvalidated.
    fn default() -> Self {
        Self {
            profile: Profile::Production,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
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
            max_http_body_bytes: 1_048_576,
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
            compression_threshold_bytes: 1_024,
            memory_cleanup_interval: Duration::from_millis(180_000),
            shutdown_grace: Duration::from_millis(5_000),
            memory_limit_bytes: None,
            memory_high_percent: 85,
            memory_critical_percent: 95,
            tiers: TierQuotas::default(),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            origins: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

/// Reads and parses the config file; both failures name the file.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The profile named by the highest layer that names one, parsed; `production` otherwise.
fn choose_profile(layers: &[Layer<'_>]) -> Result<(Profile, Origin), ConfigError> {
    let named = layers.iter().rev().find_map(|(origin, entries)| {
        entries
            .iter()
            .rev()
            .find(|(setting, _)| setting.key == "profile")
            .map(|(setting, raw)| (origin, *setting, raw))
    });
    let Some((origin, setting, raw)) = named else {
        return Ok((Profile::Production, Origin::Default));
    };
    // Parsing into a scratch config reuses the one parser and its error message.
    let mut scratch = BaseConfig::default();
    setting
        .apply(&mut scratch, raw)
        .map_err(|expected| ConfigError::InvalidValue {
            env: setting.env,
            key: setting.key,
            value: setting.shown(raw),
            origin: origin.clone(),
            expected,
        })?;
    Ok((scratch.profile, origin.clone()))
}

/// The warning for a `HERALD_*` variable that is not a setting, with a likely intended name.
fn unknown_env_warning(name: &str) -> String {
    match settings::suggest(name, |s| s.env) {
        Some(suggestion) => format!("unknown setting {name}; did you mean {suggestion}?"),
        None => format!("unknown setting {name}"),
    }
}

/// A cross-field error; both keys are known settings.
fn conflict(
    key: &'static str,
    value: String,
    rule: &'static str,
    other_key: &'static str,
    other_value: String,
) -> ConfigError {
    let env = |key: &str| settings::by_key(key).map_or("", |s| s.env);
    ConfigError::Conflict {
        env: env(key),
        key,
        value: value.into_boxed_str(),
        rule,
        other_env: env(other_key),
        other_key,
        other_value: other_value.into_boxed_str(),
    }
}

/// The doc line as a sentence start.
fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests;
