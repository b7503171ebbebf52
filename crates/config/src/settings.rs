//! The table of operator settings: names, meanings, ranges, parsers and printers.
//!
//! Every setting is one [`Setting`] row, so the environment name, the TOML key, the accepted
//! range, the parser, the printer and the documentation cannot drift apart. Loading, error
//! messages, `--print-config` and [`settings_reference_markdown`] all read this table.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use crate::{
    base::BaseConfig,
    choice::ChoiceError,
    net::IpBlock,
    runtime::RuntimeKey,
    secret::Secret,
    tiers::{TierQuotas, parse_digits},
};

/// A value as one layer gave it, before parsing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw<'a> {
    /// Text from the environment or the command line.
    Text(&'a str),
    /// A typed value from the TOML file (or a profile).
    Toml(&'a toml::Value),
}

impl Raw<'_> {
    /// How the value appears in an error message.
    fn shown(&self) -> String {
        match self {
            Self::Text(text) => format!("{text:?}"),
            Self::Toml(value) => describe_toml(value),
        }
    }
}

/// What a number counts, printed after ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A plain count.
    Count,
    /// Bytes.
    Bytes,
    /// Milliseconds; the field is a `Duration`.
    Millis,
    /// A percentage.
    Percent,
}

impl Unit {
    /// The suffix of a range in messages and docs.
    pub(crate) const fn suffix(self) -> &'static str {
        match self {
            Self::Count => "",
            Self::Bytes => " (bytes)",
            Self::Millis => " (milliseconds)",
            Self::Percent => " (percent)",
        }
    }
}

/// What values a setting accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// An integer in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
        /// What the number counts.
        unit: Unit,
    },
    /// Anything else, described for the docs.
    Other(&'static str),
}

/// Parses a layer's value into the config; the error is the "expected ..." part of a message.
type Apply = fn(&Setting, &mut BaseConfig, &Raw<'_>) -> Result<(), String>;

/// Prints the effective value as TOML, or `None` when the setting is unset.
type Render = fn(&BaseConfig) -> Option<String>;

/// One operator setting.
pub(crate) struct Setting {
    /// The TOML key and command-line override name.
    pub(crate) key: &'static str,
    /// The environment variable: `HERALD_` and the key in upper case.
    pub(crate) env: &'static str,
    /// One-line meaning, for docs and `--print-config`.
    pub(crate) doc: &'static str,
    /// Accepted values.
    pub(crate) kind: Kind,
    /// Whether the value must never be shown.
    pub(crate) secret: bool,
    /// Stores a parsed value.
    apply: Apply,
    /// Prints the effective value.
    pub(crate) render: Render,
}

impl Setting {
    /// Parses `raw` and stores it in `config`.
    pub(crate) fn apply(&self, config: &mut BaseConfig, raw: &Raw<'_>) -> Result<(), String> {
        (self.apply)(self, config, raw)
    }

    /// The value as shown in an error message: quoted, or redacted for secrets.
    pub(crate) fn shown(&self, raw: &Raw<'_>) -> String {
        if self.secret {
            format!("{:?}", Secret::REDACTED)
        } else {
            raw.shown()
        }
    }

    /// Parses an integer within this setting's range.
    fn int<T: TryFrom<u64>>(&self, raw: &Raw<'_>) -> Result<T, String> {
        let Kind::Int { min, max, unit } = self.kind else {
            return Err("expected a value of another kind".to_owned());
        };
        let not_integer = || {
            if min == 0 {
                "expected a non-negative integer".to_owned()
            } else {
                "expected a positive integer".to_owned()
            }
        };
        let number = match raw {
            Raw::Text(text) => match parse_digits(text) {
                Some(n) => Some(n),
                // All digits but too large for u64: out of range rather than malformed.
                None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => None,
                None => return Err(not_integer()),
            },
            Raw::Toml(toml::Value::Integer(n)) => u64::try_from(*n).ok(),
            Raw::Toml(_) => return Err(not_integer()),
        };
        number
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("expected an integer from {min} to {max}{}", unit.suffix()))
    }

    /// Parses a number of milliseconds within this setting's range.
    fn millis(&self, raw: &Raw<'_>) -> Result<Duration, String> {
        self.int::<u64>(raw).map(Duration::from_millis)
    }

    /// Parses an optional integer: empty text means unset.
    fn optional_int<T: TryFrom<u64>>(&self, raw: &Raw<'_>) -> Result<Option<T>, String> {
        if is_empty_text(raw) {
            Ok(None)
        } else {
            self.int(raw).map(Some)
        }
    }
}

/// Finds a setting by TOML key.
pub(crate) fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// Finds a setting by environment variable.
pub(crate) fn by_env(env: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == env)
}

/// The known name closest to `name`, when it is close enough to be a typo of it.
pub(crate) fn suggest(name: &str, field: fn(&Setting) -> &'static str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    SETTINGS
        .iter()
        .map(|s| {
            let candidate = field(s);
            (
                edit_distance(&name, &candidate.to_ascii_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, _)| *distance <= 3)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over bytes; names are ASCII, so bytes are characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Builds a `Kind::Int`.
const fn int(min: u64, max: u64, unit: Unit) -> Kind {
    Kind::Int { min, max, unit }
}

/// Builds the `Kind::Int` of a runtime-tunable setting from its runtime range, the one source.
const fn runtime(key: RuntimeKey, unit: Unit) -> Kind {
    let (min, max) = key.bounds();
    Kind::Int { min, max, unit }
}

/// Every setting, in documentation order.
pub(crate) static SETTINGS: &[Setting] = &[
    Setting {
        key: "profile",
        env: "HERALD_PROFILE",
        doc: "set of built-in values between the defaults and the file",
        kind: Kind::Other("`production`, `staging` or `ci`"),
        secret: false,
        apply: |_, c, v| {
            c.profile = choice(v)?;
            Ok(())
        },
        render: |c| Some(toml_string(c.profile.as_str())),
    },
    Setting {
        key: "listen",
        env: "HERALD_LISTEN",
        doc: "address of the main listener (WebSocket, HTTP API, and metrics and health unless `admin_listen` is set)",
        kind: Kind::Other("IP address and port, e.g. `0.0.0.0:8080` or `[::]:8080`"),
        secret: false,
        apply: |_, c, v| {
            c.listen = socket_addr(v)?;
            Ok(())
        },
        render: |c| Some(toml_string(&c.listen.to_string())),
    },
    Setting {
        key: "admin_listen",
        env: "HERALD_ADMIN_LISTEN",
        doc: "separate listener for `/metrics` and `/health*`; unset serves them on the main listener",
        kind: Kind::Other("IP address and port, different from `listen`; empty for none"),
        secret: false,
        apply: |_, c, v| {
            c.admin_listen = if is_empty_text(v) {
                None
            } else {
                Some(socket_addr(v)?)
            };
            Ok(())
        },
        render: |c| c.admin_listen.map(|a| toml_string(&a.to_string())),
    },
    Setting {
        key: "tls_cert_file",
        env: "HERALD_TLS_CERT_FILE",
        doc: "PEM certificate chain (leaf first) for TLS on the main listener; reread on SIGHUP; needs `tls_key_file`",
        kind: Kind::Other("file path; empty for plaintext"),
        secret: false,
        apply: |_, c, v| {
            c.tls_cert_file = optional_path(v)?;
            Ok(())
        },
        render: |c| c.tls_cert_file.as_deref().map(path_string),
    },
    Setting {
        key: "tls_key_file",
        env: "HERALD_TLS_KEY_FILE",
        doc: "PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`; reread on SIGHUP",
        kind: Kind::Other("file path; empty for plaintext"),
        secret: false,
        apply: |_, c, v| {
            c.tls_key_file = optional_path(v)?;
            Ok(())
        },
        render: |c| c.tls_key_file.as_deref().map(path_string),
    },
    Setting {
        key: "admin_tls_cert_file",
        env: "HERALD_ADMIN_TLS_CERT_FILE",
        doc: "PEM certificate chain for TLS on the admin listener; reread on SIGHUP; needs `admin_listen` and `admin_tls_key_file`",
        kind: Kind::Other("file path; empty for plaintext"),
        secret: false,
        apply: |_, c, v| {
            c.admin_tls_cert_file = optional_path(v)?;
            Ok(())
        },
        render: |c| c.admin_tls_cert_file.as_deref().map(path_string),
    },
    Setting {
        key: "admin_tls_key_file",
        env: "HERALD_ADMIN_TLS_KEY_FILE",
        doc: "PEM private key of `admin_tls_cert_file`; reread on SIGHUP",
        kind: Kind::Other("file path; empty for plaintext"),
        secret: false,
        apply: |_, c, v| {
            c.admin_tls_key_file = optional_path(v)?;
            Ok(())
        },
        render: |c| c.admin_tls_key_file.as_deref().map(path_string),
    },
    Setting {
        key: "tcp_keepalive_idle_ms",
        env: "HERALD_TCP_KEEPALIVE_IDLE_MS",
        doc: "idle time before the kernel probes a silent connection (TCP keepalive); 0 turns keepalive off",
        kind: int(0, 7_200_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.tcp_keepalive_idle = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.tcp_keepalive_idle)),
    },
    Setting {
        key: "tcp_keepalive_interval_ms",
        env: "HERALD_TCP_KEEPALIVE_INTERVAL_MS",
        doc: "time between unanswered keepalive probes",
        kind: int(1_000, 600_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.tcp_keepalive_interval = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.tcp_keepalive_interval)),
    },
    Setting {
        key: "tcp_keepalive_probes",
        env: "HERALD_TCP_KEEPALIVE_PROBES",
        doc: "unanswered keepalive probes after which the kernel drops the connection",
        kind: int(1, 100, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.tcp_keepalive_probes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.tcp_keepalive_probes.to_string()),
    },
    Setting {
        key: "tcp_user_timeout_ms",
        env: "HERALD_TCP_USER_TIMEOUT_MS",
        doc: "TCP_USER_TIMEOUT: sent data left unacknowledged this long drops the connection; 0 leaves the kernel's default (minutes)",
        kind: int(0, 3_600_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.tcp_user_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.tcp_user_timeout)),
    },
    Setting {
        key: "max_connections_per_ip",
        env: "HERALD_MAX_CONNECTIONS_PER_IP",
        doc: "open connections one client address may hold; more are closed at accept; 0 means no limit",
        kind: int(0, 10_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_connections_per_ip = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_connections_per_ip.to_string()),
    },
    Setting {
        key: "connection_rate_per_ip",
        env: "HERALD_CONNECTION_RATE_PER_IP",
        doc: "new connections per second one client address may open (bursts of as many); more are closed at accept; 0 means no limit",
        kind: int(0, 1_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.connection_rate_per_ip = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.connection_rate_per_ip.to_string()),
    },
    Setting {
        key: "trusted_proxies",
        env: "HERALD_TRUSTED_PROXIES",
        doc: "proxies whose `X-Forwarded-For` names the client for the per-address limits; others' is ignored",
        kind: Kind::Other("list of IP addresses or CIDR blocks (`10.0.0.0/8`, `::1`)"),
        secret: false,
        apply: |_, c, v| {
            c.trusted_proxies = list(v, |item| item.parse::<IpBlock>())?;
            Ok(())
        },
        render: |c| {
            let blocks: Vec<String> = c.trusted_proxies.iter().map(IpBlock::to_string).collect();
            Some(toml_array(blocks.iter().map(String::as_str)))
        },
    },
    Setting {
        key: "api_publish_rate_per_key",
        env: "HERALD_API_PUBLISH_RATE_PER_KEY",
        doc: "messages per second one API key may publish (`/api/publish`, each item of `/api/publish/batch`; bursts of as many); more is a 429; 0 means no limit",
        kind: int(0, 10_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.api_publish_rate_per_key = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.api_publish_rate_per_key.to_string()),
    },
    Setting {
        key: "jwt_secret",
        env: "HERALD_JWT_SECRET",
        doc: "HS256 secret; required when `jwt_algorithm` is `HS256`",
        kind: Kind::Other("any non-empty string (32 bytes or more advised)"),
        secret: true,
        apply: |_, c, v| {
            c.jwt_secret = optional_text(v)?.map(Secret::new);
            Ok(())
        },
        render: |c| c.jwt_secret.as_ref().map(|_| toml_string(Secret::REDACTED)),
    },
    Setting {
        key: "jwt_algorithm",
        env: "HERALD_JWT_ALGORITHM",
        doc: "the only signature algorithm accepted; tokens with another `alg` are refused",
        kind: Kind::Other("`HS256`, `RS256` or `ES256`"),
        secret: false,
        apply: |_, c, v| {
            c.jwt_algorithm = choice(v)?;
            Ok(())
        },
        render: |c| Some(toml_string(c.jwt_algorithm.as_str())),
    },
    Setting {
        key: "jwt_public_key_file",
        env: "HERALD_JWT_PUBLIC_KEY_FILE",
        doc: "PEM public key for RS256 or ES256; required with those algorithms",
        kind: Kind::Other("file path; empty for none"),
        secret: false,
        apply: |_, c, v| {
            c.jwt_public_key_file = optional_text(v)?.map(PathBuf::from);
            Ok(())
        },
        render: |c| {
            c.jwt_public_key_file
                .as_ref()
                .map(|p| toml_string(&p.to_string_lossy()))
        },
    },
    Setting {
        key: "jwt_issuer",
        env: "HERALD_JWT_ISSUER",
        doc: "required `iss` claim; unchecked when unset",
        kind: Kind::Other("string; empty for none"),
        secret: false,
        apply: |_, c, v| {
            c.jwt_issuer = optional_text(v)?.map(str::to_owned);
            Ok(())
        },
        render: |c| c.jwt_issuer.as_deref().map(toml_string),
    },
    Setting {
        key: "jwt_audience",
        env: "HERALD_JWT_AUDIENCE",
        doc: "required `aud` claim; unchecked when unset",
        kind: Kind::Other("string; empty for none"),
        secret: false,
        apply: |_, c, v| {
            c.jwt_audience = optional_text(v)?.map(str::to_owned);
            Ok(())
        },
        render: |c| c.jwt_audience.as_deref().map(toml_string),
    },
    Setting {
        key: "jwt_leeway_ms",
        env: "HERALD_JWT_LEEWAY_MS",
        doc: "clock leeway for `exp` and `nbf`",
        kind: int(0, 300_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.jwt_leeway = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.jwt_leeway)),
    },
    Setting {
        key: "default_topics",
        env: "HERALD_DEFAULT_TOPICS",
        doc: "topic patterns for tokens without a `topics` claim",
        kind: Kind::Other("list of patterns (`chat:*`, `user:{sub}`, `*`)"),
        secret: false,
        apply: |_, c, v| {
            c.default_topics = list(v, |item| {
                check_token(item, "topic patterns").map(|()| item.to_owned())
            })?;
            Ok(())
        },
        render: |c| Some(toml_array(c.default_topics.iter().map(String::as_str))),
    },
    Setting {
        key: "api_keys",
        env: "HERALD_API_KEYS",
        doc: "keys accepted as `Authorization: Bearer` on `/api/*`; none means `/api/*` answers 401",
        kind: Kind::Other("list of keys without spaces"),
        secret: true,
        apply: |_, c, v| {
            c.api_keys = list(v, |item| {
                check_token(item, "API keys").map(|()| Secret::new(item))
            })?;
            Ok(())
        },
        render: |c| Some(toml_array(c.api_keys.iter().map(|_| Secret::REDACTED))),
    },
    Setting {
        key: "allowed_origins",
        env: "HERALD_ALLOWED_ORIGINS",
        doc: "browser origins allowed besides same-origin, compared exactly (scheme and host lower-cased); `*` for any",
        kind: Kind::Other("list of `scheme://host[:port]`, or `*`"),
        secret: false,
        apply: |_, c, v| {
            c.allowed_origins = list(v, normalize_origin)?;
            Ok(())
        },
        render: |c| Some(toml_array(c.allowed_origins.iter().map(String::as_str))),
    },
    Setting {
        key: "auth_timeout_ms",
        env: "HERALD_AUTH_TIMEOUT_MS",
        doc: "time to authenticate after the upgrade before close 4001",
        kind: int(100, 300_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.auth_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.auth_timeout)),
    },
    Setting {
        key: "handshake_timeout_ms",
        env: "HERALD_HANDSHAKE_TIMEOUT_MS",
        doc: "time for the HTTP request head to arrive; a stalled upgrade is dropped",
        kind: int(100, 300_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.handshake_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.handshake_timeout)),
    },
    Setting {
        key: "heartbeat_interval_ms",
        env: "HERALD_HEARTBEAT_INTERVAL_MS",
        doc: "interval of server `ping` messages",
        kind: int(100, 3_600_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.heartbeat_interval = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.heartbeat_interval)),
    },
    Setting {
        key: "stale_timeout_ms",
        env: "HERALD_STALE_TIMEOUT_MS",
        doc: "close (4000) a connection with no inbound frame for this long; must exceed `heartbeat_interval_ms`",
        kind: int(200, 7_200_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.stale_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.stale_timeout)),
    },
    Setting {
        key: "max_payload_bytes",
        env: "HERALD_MAX_PAYLOAD_BYTES",
        doc: "largest inbound WebSocket message; one byte more closes 1009",
        kind: int(1, 67_108_864, Unit::Bytes),
        secret: false,
        apply: |s, c, v| {
            c.max_payload_bytes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_payload_bytes.to_string()),
    },
    Setting {
        key: "echo_path",
        env: "HERALD_ECHO_PATH",
        doc: "path of a WebSocket echo endpoint for conformance suites (Autobahn): no token, text and binary messages echoed; unset serves none",
        kind: Kind::Other(
            "absolute path other than `/ws` (letters, digits, `/-._~`); empty for none",
        ),
        secret: false,
        apply: |_, c, v| {
            c.echo_path = optional_text(v)?.map(echo_path).transpose()?;
            Ok(())
        },
        render: |c| c.echo_path.as_deref().map(toml_string),
    },
    Setting {
        key: "max_http_body_bytes",
        env: "HERALD_MAX_HTTP_BODY_BYTES",
        doc: "largest HTTP API request body; more is a 413",
        kind: int(1, 67_108_864, Unit::Bytes),
        secret: false,
        apply: |s, c, v| {
            c.max_http_body_bytes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_http_body_bytes.to_string()),
    },
    Setting {
        key: "max_json_depth",
        env: "HERALD_MAX_JSON_DEPTH",
        doc: "deepest nesting of arrays and objects in a client frame or an HTTP API body; deeper is a `bad_request` (HTTP 400)",
        kind: int(1, 120, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_json_depth = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_json_depth.to_string()),
    },
    Setting {
        key: "max_batch_topics",
        env: "HERALD_MAX_BATCH_TOPICS",
        doc: "most topics in one `batch_subscribe` or `batch_unsubscribe`; more is a `bad_request`",
        kind: int(1, 10_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_batch_topics = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_batch_topics.to_string()),
    },
    Setting {
        key: "max_publish_batch",
        env: "HERALD_MAX_PUBLISH_BATCH",
        doc: "most items in one `POST /api/publish/batch`; more is a 400 `bad_request` for the whole batch",
        kind: int(1, 100_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_publish_batch = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_publish_batch.to_string()),
    },
    Setting {
        key: "max_connections",
        env: "HERALD_MAX_CONNECTIONS",
        doc: "connections in all; beyond it the handshake answers 503",
        kind: int(1, 10_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_connections = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_connections.to_string()),
    },
    Setting {
        key: "max_connections_per_user",
        env: "HERALD_MAX_CONNECTIONS_PER_USER",
        doc: "cap on one user's connections above the tier quotas (runtime-tunable)",
        kind: runtime(RuntimeKey::MaxConnectionsPerUser, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_connections_per_user = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_connections_per_user.to_string()),
    },
    Setting {
        key: "user_limit_policy",
        env: "HERALD_USER_LIMIT_POLICY",
        doc: "over the per-user limit: close the oldest (4029) or refuse the new connection",
        kind: Kind::Other("`evict_oldest` or `reject`"),
        secret: false,
        apply: |_, c, v| {
            c.user_limit_policy = choice(v)?;
            Ok(())
        },
        render: |c| Some(toml_string(c.user_limit_policy.as_str())),
    },
    Setting {
        key: "max_subscriptions_per_connection",
        env: "HERALD_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        doc: "topics one connection may subscribe to",
        kind: int(1, 1_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_subscriptions_per_connection = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_subscriptions_per_connection.to_string()),
    },
    Setting {
        key: "max_queue_size",
        env: "HERALD_MAX_QUEUE_SIZE",
        doc: "outbound queue per connection, in messages",
        kind: int(1, 1_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_queue_size = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_queue_size.to_string()),
    },
    Setting {
        key: "max_queue_bytes",
        env: "HERALD_MAX_QUEUE_BYTES",
        doc: "outbound queue per connection, in bytes",
        kind: int(1024, 1_073_741_824, Unit::Bytes),
        secret: false,
        apply: |s, c, v| {
            c.max_queue_bytes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_queue_bytes.to_string()),
    },
    Setting {
        key: "operation_queue_size",
        env: "HERALD_OPERATION_QUEUE_SIZE",
        doc: "publications and sends accepted but not yet fanned out; when full the API answers 429",
        kind: int(1, 10_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.operation_queue_size = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.operation_queue_size.to_string()),
    },
    Setting {
        key: "history_size",
        env: "HERALD_HISTORY_SIZE",
        doc: "publications kept per topic for resume; 0 keeps none",
        kind: int(0, 1_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.history_size = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.history_size.to_string()),
    },
    Setting {
        key: "history_ttl_ms",
        env: "HERALD_HISTORY_TTL_MS",
        doc: "how long publications are kept for resume",
        kind: int(0, 86_400_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.history_ttl = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.history_ttl)),
    },
    Setting {
        key: "history_max_bytes",
        env: "HERALD_HISTORY_MAX_BYTES",
        doc: "bytes of topic history kept across all topics; past it the least recently published topics' history is dropped",
        kind: int(1_048_576, 68_719_476_736, Unit::Bytes),
        secret: false,
        apply: |s, c, v| {
            c.history_max_bytes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.history_max_bytes.to_string()),
    },
    Setting {
        key: "max_pending_events",
        env: "HERALD_MAX_PENDING_EVENTS",
        doc: "critical events awaiting an ack per user; when full the events API answers 429",
        kind: int(1, 100_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.max_pending_events = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.max_pending_events.to_string()),
    },
    Setting {
        key: "event_ack_timeout_ms",
        env: "HERALD_EVENT_ACK_TIMEOUT_MS",
        doc: "time a delivered critical event waits for an `ack` before it is delivered again",
        kind: int(100, 3600000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.event_ack_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.event_ack_timeout)),
    },
    Setting {
        key: "event_ttl_ms",
        env: "HERALD_EVENT_TTL_MS",
        doc: "how long an unacknowledged critical event is kept; older ones are dropped and counted in herald_events_expired_total",
        kind: int(1000, 604800000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.event_ttl = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.event_ttl)),
    },
    Setting {
        key: "dedupe_window_ms",
        env: "HERALD_DEDUPE_WINDOW_MS",
        doc: "a publish repeating an `id` within this window is not delivered again (runtime-tunable)",
        kind: runtime(RuntimeKey::DedupeWindowMs, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.dedupe_window = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.dedupe_window)),
    },
    Setting {
        key: "dedupe_cache_size",
        env: "HERALD_DEDUPE_CACHE_SIZE",
        doc: "publish ids remembered for dedupe (runtime-tunable)",
        kind: runtime(RuntimeKey::DedupeCacheSize, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.dedupe_cache_size = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.dedupe_cache_size.to_string()),
    },
    Setting {
        key: "message_batch_size",
        env: "HERALD_MESSAGE_BATCH_SIZE",
        doc: "frames a writer takes from a connection's queue at a time and may coalesce into one `batch` frame (runtime-tunable)",
        kind: runtime(RuntimeKey::MessageBatchSize, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.message_batch_size = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.message_batch_size.to_string()),
    },
    Setting {
        key: "message_batch_delay_ms",
        env: "HERALD_MESSAGE_BATCH_DELAY_MS",
        doc: "time a writer waits to fill a batch; 0 sends at once (runtime-tunable)",
        kind: runtime(RuntimeKey::MessageBatchDelayMs, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.message_batch_delay = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.message_batch_delay)),
    },
    Setting {
        key: "compression_enabled",
        env: "HERALD_COMPRESSION_ENABLED",
        doc: "accept a client's permessage-deflate offer (RFC 7692); off, every frame goes plain",
        kind: Kind::Other("`true` or `false`"),
        secret: false,
        apply: |_, c, v| {
            c.compression_enabled = boolean(v)?;
            Ok(())
        },
        render: |c| Some(c.compression_enabled.to_string()),
    },
    Setting {
        key: "compression_threshold_bytes",
        env: "HERALD_COMPRESSION_THRESHOLD_BYTES",
        doc: "smallest outbound message worth compressing (runtime-tunable)",
        kind: runtime(RuntimeKey::CompressionThresholdBytes, Unit::Bytes),
        secret: false,
        apply: |s, c, v| {
            c.compression_threshold_bytes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.compression_threshold_bytes.to_string()),
    },
    Setting {
        key: "memory_cleanup_interval_ms",
        env: "HERALD_MEMORY_CLEANUP_INTERVAL_MS",
        doc: "interval of the memory cleanup sweep (runtime-tunable)",
        kind: runtime(RuntimeKey::MemoryCleanupIntervalMs, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.memory_cleanup_interval = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.memory_cleanup_interval)),
    },
    Setting {
        key: "shutdown_grace_ms",
        env: "HERALD_SHUTDOWN_GRACE_MS",
        doc: "drain time after SIGTERM",
        kind: int(0, 600_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.shutdown_grace = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.shutdown_grace)),
    },
    Setting {
        key: "memory_limit_bytes",
        env: "HERALD_MEMORY_LIMIT_BYTES",
        doc: "memory budget for pressure levels; unset means the cgroup limit, else physical memory",
        kind: int(1_048_576, 1 << 50, Unit::Bytes),
        secret: false,
        apply: |s, c, v| {
            c.memory_limit_bytes = s.optional_int(v)?;
            Ok(())
        },
        render: |c| c.memory_limit_bytes.map(|n| n.to_string()),
    },
    Setting {
        key: "memory_high_percent",
        env: "HERALD_MEMORY_HIGH_PERCENT",
        doc: "share of the memory budget where degradation starts",
        kind: int(1, 100, Unit::Percent),
        secret: false,
        apply: |s, c, v| {
            c.memory_high_percent = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.memory_high_percent.to_string()),
    },
    Setting {
        key: "memory_critical_percent",
        env: "HERALD_MEMORY_CRITICAL_PERCENT",
        doc: "share of the memory budget treated as critical; must exceed `memory_high_percent`",
        kind: int(1, 100, Unit::Percent),
        secret: false,
        apply: |s, c, v| {
            c.memory_critical_percent = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.memory_critical_percent.to_string()),
    },
    Setting {
        key: "memory_level_hold_ms",
        env: "HERALD_MEMORY_LEVEL_HOLD_MS",
        doc: "least time at a memory degradation level before falling back to a lower one",
        kind: int(0, 3_600_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.memory_level_hold = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.memory_level_hold)),
    },
    Setting {
        key: "redis_url",
        env: "HERALD_REDIS_URL",
        doc: "the Redis that joins this node to a cluster (shared offsets, history, dedupe, pushes); unset runs one node in memory",
        kind: Kind::Other("`redis://[user:password@]host:port[/db]`; empty for none"),
        secret: true,
        apply: |_, c, v| {
            let url = optional_text(v)?;
            if let Some(url) = url
                && !(url.starts_with("redis://") || url.starts_with("rediss://"))
            {
                return Err("expected a redis:// URL".to_owned());
            }
            c.redis_url = url.map(Secret::new);
            Ok(())
        },
        render: |c| c.redis_url.as_ref().map(|_| toml_string(Secret::REDACTED)),
    },
    Setting {
        key: "redis_key_prefix",
        env: "HERALD_REDIS_KEY_PREFIX",
        doc: "start of every Redis key and channel Herald uses",
        kind: Kind::Other("1 to 64 bytes without whitespace, `{` or `}`"),
        secret: false,
        apply: |_, c, v| {
            let prefix = text(v)?;
            if prefix.is_empty()
                || prefix.len() > 64
                || prefix
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '{' || ch == '}')
            {
                return Err("expected 1 to 64 bytes without whitespace, `{` or `}`".to_owned());
            }
            prefix.clone_into(&mut c.redis_key_prefix);
            Ok(())
        },
        render: |c| Some(toml_string(&c.redis_key_prefix)),
    },
    Setting {
        key: "node_id",
        env: "HERALD_NODE_ID",
        doc: "this node's name in the cluster (`/api/stats`, logs, the bus); unset makes one from the host name and process id",
        kind: Kind::Other("1 to 64 bytes without whitespace; empty for a generated one"),
        secret: false,
        apply: |_, c, v| {
            let id = optional_text(v)?;
            if let Some(id) = id
                && (id.len() > 64 || id.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
            {
                return Err("expected 1 to 64 bytes without whitespace".to_owned());
            }
            c.node_id = id.map(str::to_owned);
            Ok(())
        },
        render: |c| c.node_id.as_deref().map(toml_string),
    },
    Setting {
        key: "redis_command_timeout_ms",
        env: "HERALD_REDIS_COMMAND_TIMEOUT_MS",
        doc: "time a Redis command may take before it counts as failed",
        kind: int(10, 60_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.redis_command_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.redis_command_timeout)),
    },
    Setting {
        key: "redis_connect_timeout_ms",
        env: "HERALD_REDIS_CONNECT_TIMEOUT_MS",
        doc: "time connecting to Redis may take",
        kind: int(10, 60_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.redis_connect_timeout = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.redis_connect_timeout)),
    },
    Setting {
        key: "redis_breaker_failures",
        env: "HERALD_REDIS_BREAKER_FAILURES",
        doc: "consecutive failed Redis calls that open the circuit breaker (local fallback)",
        kind: int(1, 1_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.redis_breaker_failures = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.redis_breaker_failures.to_string()),
    },
    Setting {
        key: "redis_breaker_open_ms",
        env: "HERALD_REDIS_BREAKER_OPEN_MS",
        doc: "time the open breaker refuses Redis calls before it lets probes through",
        kind: int(10, 600_000, Unit::Millis),
        secret: false,
        apply: |s, c, v| {
            c.redis_breaker_open = s.millis(v)?;
            Ok(())
        },
        render: |c| Some(millis(c.redis_breaker_open)),
    },
    Setting {
        key: "redis_breaker_probes",
        env: "HERALD_REDIS_BREAKER_PROBES",
        doc: "probe calls let through at once while half-open, and successes that close the breaker",
        kind: int(1, 100, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.redis_breaker_probes = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.redis_breaker_probes.to_string()),
    },
    Setting {
        key: "redis_outbox_size",
        env: "HERALD_REDIS_OUTBOX_SIZE",
        doc: "operations a node keeps while Redis is unreachable, replayed in order when it is back; a publish past it is refused (503)",
        kind: int(0, 10_000_000, Unit::Count),
        secret: false,
        apply: |s, c, v| {
            c.redis_outbox_size = s.int(v)?;
            Ok(())
        },
        render: |c| Some(c.redis_outbox_size.to_string()),
    },
    Setting {
        key: "tiers",
        env: "HERALD_TIERS",
        doc: "quota table by token `tier` claim; must contain `free`; replaces the whole default table",
        kind: Kind::Other(
            "env `name:max_connections:messages_per_minute[:max_subscriptions:max_publish_bytes],...`; \
             TOML `[tiers.NAME]` tables; max_connections 1 to 10000, messages_per_minute 1 to 1000000, \
             max_subscriptions 1 to 1000000, max_publish_bytes 1 to 67108864 (the last two optional: \
             left out, only the global caps apply)",
        ),
        secret: false,
        apply: |_, c, v| {
            c.tiers = match v {
                Raw::Text(text) => TierQuotas::parse_text(text)?,
                Raw::Toml(value) => TierQuotas::parse_toml(value)?,
            };
            Ok(())
        },
        render: |c| {
            let tiers: Vec<String> = c
                .tiers
                .iter()
                .map(|(name, q)| {
                    format!(
                        "{name} = {{ max_connections = {}, messages_per_minute = {}, \
                         max_subscriptions = {}, max_publish_bytes = {} }}",
                        q.max_connections,
                        q.messages_per_minute,
                        q.max_subscriptions,
                        q.max_publish_bytes
                    )
                })
                .collect();
            Some(format!("{{ {} }}", tiers.join(", ")))
        },
    },
    Setting {
        key: "log",
        env: "HERALD_LOG",
        doc: "log filter, e.g. `info,herald_core=debug`",
        kind: Kind::Other("non-empty filter (syntax checked by the service)"),
        secret: false,
        apply: |_, c, v| {
            let filter = text(v)?;
            if filter.trim().is_empty() {
                return Err("expected a non-empty log filter, e.g. info".to_owned());
            }
            filter.clone_into(&mut c.log);
            Ok(())
        },
        render: |c| Some(toml_string(&c.log)),
    },
    Setting {
        key: "log_format",
        env: "HERALD_LOG_FORMAT",
        doc: "log lines on stderr as text, or one JSON object per line",
        kind: Kind::Other("`text` or `json`"),
        secret: false,
        apply: |_, c, v| {
            c.log_format = choice(v)?;
            Ok(())
        },
        render: |c| Some(toml_string(c.log_format.as_str())),
    },
];

/// Whether a value is empty text, which unsets an optional setting.
fn is_empty_text(raw: &Raw<'_>) -> bool {
    match raw {
        Raw::Text(text) => text.trim().is_empty(),
        Raw::Toml(toml::Value::String(text)) => text.trim().is_empty(),
        Raw::Toml(_) => false,
    }
}

/// An optional file path: empty text means unset.
fn optional_path(raw: &Raw<'_>) -> Result<Option<PathBuf>, String> {
    Ok(optional_text(raw)?.map(PathBuf::from))
}

/// A path as a TOML string.
fn path_string(path: &std::path::Path) -> String {
    toml_string(&path.to_string_lossy())
}

/// A string value.
fn text<'a>(raw: &Raw<'a>) -> Result<&'a str, String> {
    match *raw {
        Raw::Text(text) => Ok(text),
        Raw::Toml(toml::Value::String(text)) => Ok(text),
        Raw::Toml(_) => Err("expected a string".to_owned()),
    }
}

/// An optional string value: empty (or blank) text means unset.
fn optional_text<'a>(raw: &Raw<'a>) -> Result<Option<&'a str>, String> {
    let value = text(raw)?;
    Ok(Some(value).filter(|v| !v.trim().is_empty()))
}

/// A switch: a TOML boolean, or the text `true` or `false`.
fn boolean(raw: &Raw<'_>) -> Result<bool, String> {
    match *raw {
        Raw::Toml(toml::Value::Boolean(value)) => Ok(*value),
        Raw::Text("true") => Ok(true),
        Raw::Text("false") => Ok(false),
        _ => Err("expected `true` or `false`".to_owned()),
    }
}

/// One of a choice enum's words.
fn choice<T: FromStr<Err = ChoiceError>>(raw: &Raw<'_>) -> Result<T, String> {
    text(raw)?.parse().map_err(|e: ChoiceError| e.expected())
}

/// An IP address and port.
fn socket_addr(raw: &Raw<'_>) -> Result<SocketAddr, String> {
    text(raw)?.parse().map_err(|_| {
        "expected an IP address and port, e.g. 127.0.0.1:8080 or [::1]:8080".to_owned()
    })
}

/// An echo endpoint's path: absolute, plain (no query, no escapes) and not the WebSocket's own.
fn echo_path(path: &str) -> Result<String, String> {
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if path.starts_with('/') && plain && path != "/ws" {
        Ok(path.to_owned())
    } else {
        Err("expected an absolute path other than /ws, of letters, digits and /-._~".to_owned())
    }
}

/// A list: comma-separated text (spaces around items ignored, empty items dropped), or a TOML
/// array of strings, or a TOML string as a list of one (an empty string is an empty list).
fn list<T>(raw: &Raw<'_>, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    match raw {
        Raw::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(item)
            .collect(),
        Raw::Toml(toml::Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Raw::Toml(toml::Value::String(text)) => item(text).map(|i| vec![i]),
        Raw::Toml(toml::Value::Array(values)) => values
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| "expected an array of strings".to_owned())
                    .and_then(&item)
            })
            .collect(),
        Raw::Toml(_) => Err("expected an array of strings".to_owned()),
    }
}

/// A list item that is a single token: non-empty, without whitespace or control characters.
/// The item itself is not echoed, because it may be a secret.
fn check_token(item: &str, what: &str) -> Result<(), String> {
    if item.is_empty() || item.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "expected {what} that are non-empty and free of spaces and control characters"
        ))
    } else {
        Ok(())
    }
}

/// Checks an allowed origin (`*` or `scheme://host[:port]`) and lower-cases it, because
/// browsers serialize the `Origin` header with a lower-case scheme and host.
fn normalize_origin(item: &str) -> Result<String, String> {
    if item == "*" {
        return Ok(item.to_owned());
    }
    let bad = || {
        format!(
            "expected `*` or origins of the form scheme://host[:port] without a path, e.g. https://app.example.com; `{item}` is not"
        )
    };
    let (scheme, authority) = item.split_once("://").ok_or_else(bad)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let inside_ok = !inside.is_empty()
            && inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !inside_ok {
            return Err(bad());
        }
        match after {
            "" => (inside, None),
            _ => (inside, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        && (authority.starts_with('[') || !host.contains(':'));
    let port_ok = port.is_none_or(|p| parse_digits(p).is_some_and(|n| (1..=65_535).contains(&n)));
    if scheme_ok && host_ok && port_ok {
        Ok(item.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

/// A duration as TOML milliseconds.
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// A TOML basic string with every character TOML forbids escaped.
pub(crate) fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Writing to a String cannot fail.
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
fn toml_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(toml_string).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML value as an error message shows it, without relying on the serializer.
fn describe_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("{text:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(describe_toml).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(table) => {
            let entries: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{k} = {}", describe_toml(v)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choice::Profile;

    #[test]
    fn env_names_are_the_upper_case_keys() {
        for s in SETTINGS {
            assert_eq!(s.env, format!("HERALD_{}", s.key.to_ascii_uppercase()));
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in SETTINGS.iter().enumerate() {
            for b in &SETTINGS[i + 1..] {
                assert_ne!(a.key, b.key);
            }
        }
    }

    #[test]
    fn runtime_keys_are_settings_with_the_same_range() {
        for key in RuntimeKey::ALL {
            let setting = by_key(key.name()).unwrap();
            let Kind::Int { min, max, .. } = setting.kind else {
                panic!("{} is not an integer setting", key.name());
            };
            assert_eq!(min..=max, key.range());
        }
    }

    #[test]
    fn profile_keys_are_integer_settings_in_range() {
        for profile in Profile::ALL {
            for (key, value) in profile.settings() {
                let setting = by_key(key).unwrap();
                let Kind::Int { min, max, .. } = setting.kind else {
                    panic!("{key} is not an integer setting");
                };
                assert!((min..=max).contains(value), "{key} = {value}");
            }
        }
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(
            suggest("HERALD_MAX_PAYLOAD_BYTE", |s| s.env),
            Some("HERALD_MAX_PAYLOAD_BYTES")
        );
        assert_eq!(suggest("listn", |s| s.key), Some("listen"));
        assert_eq!(suggest("HERALD_TEST_REDIS", |s| s.env), None);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "abd"), 1);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[track_caller]
    fn check_origin(item: &str, expected: Option<&str>) {
        assert_eq!(normalize_origin(item).ok().as_deref(), expected, "{item}");
    }

    #[test]
    fn origins_are_checked_and_lower_cased() {
        check_origin("*", Some("*"));
        check_origin("https://example.com", Some("https://example.com"));
        check_origin(
            "HTTPS://App.Example.com:8443",
            Some("https://app.example.com:8443"),
        );
        check_origin("http://[::1]:8080", Some("http://[::1]:8080"));
        check_origin("http://[::1]", Some("http://[::1]"));
        check_origin("http://127.0.0.1:3000", Some("http://127.0.0.1:3000"));
        for bad in [
            "example.com",
            "https://example.com/",
            "https://example.com/app",
            "https://",
            "https://example.com:",
            "https://example.com:0",
            "https://example.com:70000",
            "https://user@example.com",
            "https://*.example.com",
            "https://example.com?x",
            "1http://example.com",
            "http://[::1",
            "http://[::1]8080",
            "http://a:b:c",
            "",
        ] {
            check_origin(bad, None);
        }
    }

    #[test]
    fn echo_paths_are_plain_absolute_paths_other_than_the_websockets() {
        for good in ["/echo", "/", "/conformance/echo-1", "/a.b_c~d"] {
            assert_eq!(echo_path(good).as_deref(), Ok(good));
        }
        for bad in [
            "echo",
            "/ws",
            "/echo?x=1",
            "/echo#x",
            "/e%20cho",
            "/e cho",
            "/ü",
        ] {
            assert!(echo_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_strings_escape_what_toml_forbids() {
        assert_eq!(toml_string("a\"b\\c\n\u{7}"), r#""a\"b\\c\n\u0007""#);
        let parsed: toml::Table =
            toml::from_str(&format!("k = {}", toml_string("x\u{1}\"\t"))).unwrap();
        assert_eq!(parsed["k"].as_str(), Some("x\u{1}\"\t"));
    }
}
