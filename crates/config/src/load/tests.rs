//! Tests of `BaseConfig::load`: layer precedence, list rules, every error and the printed TOML.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use super::*;
use crate::{
    choice::{JwtAlgorithm, LogFormat, UserLimitPolicy},
    secret::Secret,
    settings::SETTINGS,
    tiers::TierQuotas,
};

/// A 32-byte secret, so no test trips the short-secret warning by accident.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "herald-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads with a JWT secret in the environment (first, so the test's own entries win).
#[track_caller]
fn try_load(
    file: Option<&str>,
    env: &[(&str, &str)],
    overrides: &[(&str, &str)],
) -> Result<BaseConfig, ConfigError> {
    let file = file.map(TempFile::new);
    let mut all_env = pairs(&[("HERALD_JWT_SECRET", SECRET)]);
    all_env.extend(pairs(env));
    BaseConfig::load(Sources {
        file: file.as_ref().map(|f| f.0.as_path()),
        env: all_env,
        overrides: pairs(overrides),
    })
}

#[track_caller]
fn load(file: Option<&str>, env: &[(&str, &str)], overrides: &[(&str, &str)]) -> BaseConfig {
    try_load(file, env, overrides).unwrap()
}

/// Checks the exact message of a refused environment.
#[track_caller]
fn check_env_error(env: &[(&str, &str)], expected: &str) {
    let err = try_load(None, env, &[]).unwrap_err();
    assert_eq!(err.to_string(), expected);
}

/// Checks that a refused file's message contains `expected` and the file's path.
#[track_caller]
fn check_file_error(toml: &str, expected: &str) {
    let file = TempFile::new(toml);
    let err = BaseConfig::load(Sources {
        file: Some(&file.0),
        env: pairs(&[("HERALD_JWT_SECRET", SECRET)]),
        overrides: Vec::new(),
    })
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    assert!(
        message.contains(&file.0.display().to_string()),
        "{message:?} lacks the path"
    );
}

#[test]
fn no_settings_gives_the_protocol_defaults() {
    let config = load(None, &[], &[]);
    assert_eq!(config.profile, Profile::Production);
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.admin_listen, None);
    assert_eq!(config.jwt_algorithm, JwtAlgorithm::Hs256);
    assert_eq!(config.jwt_leeway, Duration::ZERO);
    assert_eq!(config.auth_timeout, Duration::from_secs(10));
    assert_eq!(config.handshake_timeout, Duration::from_secs(10));
    assert_eq!(config.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(config.stale_timeout, Duration::from_secs(60));
    assert_eq!(config.max_payload_bytes, 102_400);
    assert_eq!(config.max_http_body_bytes, 1_048_576);
    assert_eq!(config.max_connections, 100_000);
    assert_eq!(config.max_connections_per_user, 25);
    assert_eq!(config.user_limit_policy, UserLimitPolicy::EvictOldest);
    assert_eq!(config.max_queue_size, 1000);
    assert_eq!(config.history_size, 256);
    assert_eq!(config.history_ttl, Duration::from_secs(300));
    assert_eq!(config.dedupe_window, Duration::from_secs(5));
    assert_eq!(config.message_batch_delay, Duration::ZERO);
    assert_eq!(config.shutdown_grace, Duration::from_secs(5));
    assert_eq!(config.memory_limit_bytes, None);
    assert_eq!(config.tiers, TierQuotas::default());
    assert_eq!(config.log, "info");
    assert_eq!(config.log_format, LogFormat::Text);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    assert_eq!(config.origin("max_payload_bytes"), Some(&Origin::Default));
    assert_eq!(config.origin("no_such_key"), None);
}

#[test]
fn each_layer_overrides_the_one_below() {
    let key = "max_connections_per_user";
    let file = "profile = \"ci\"\nmax_connections_per_user = 7\n";
    let env = [("HERALD_MAX_CONNECTIONS_PER_USER", "8")];
    let over = [(key, "9")];

    let config = load(None, &[], &[]);
    assert_eq!(config.max_connections_per_user, 25);
    assert_eq!(config.origin(key), Some(&Origin::Default));

    let config = load(Some("profile = \"ci\"\n"), &[], &[]);
    assert_eq!(config.max_connections_per_user, 5);
    assert_eq!(config.origin(key), Some(&Origin::Profile(Profile::Ci)));

    let config = load(Some(file), &[], &[]);
    assert_eq!(config.max_connections_per_user, 7);
    assert!(matches!(config.origin(key), Some(Origin::File(_))));

    let config = load(Some(file), &env, &[]);
    assert_eq!(config.max_connections_per_user, 8);
    assert_eq!(config.origin(key), Some(&Origin::Env));

    let config = load(Some(file), &env, &over);
    assert_eq!(config.max_connections_per_user, 9);
    assert_eq!(config.origin(key), Some(&Origin::Override));
    // Settings the higher layers do not name keep the profile's value.
    assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
}

#[test]
fn the_highest_layer_naming_a_profile_chooses_it() {
    let file = Some("profile = \"staging\"\n");
    assert_eq!(load(file, &[], &[]).profile, Profile::Staging);
    let config = load(file, &[("HERALD_PROFILE", "ci")], &[]);
    assert_eq!(config.profile, Profile::Ci);
    assert_eq!(config.max_connections_per_user, 5);
    let config = load(
        file,
        &[("HERALD_PROFILE", "ci")],
        &[("profile", "production")],
    );
    assert_eq!(config.profile, Profile::Production);
    assert_eq!(config.max_connections_per_user, 25);
    assert_eq!(config.origin("profile"), Some(&Origin::Override));
}

#[test]
fn profiles_apply_their_documented_values() {
    let staging = load(None, &[("HERALD_PROFILE", "staging")], &[]);
    assert_eq!(staging.max_connections_per_user, 10);
    assert_eq!(staging.memory_cleanup_interval, Duration::from_secs(30));
    assert_eq!(staging.shutdown_grace, Duration::from_secs(5));
    assert_eq!(staging.heartbeat_interval, Duration::from_secs(30));

    let ci = load(None, &[("HERALD_PROFILE", "ci")], &[]);
    assert_eq!(ci.max_connections_per_user, 5);
    assert_eq!(ci.memory_cleanup_interval, Duration::from_secs(5));
    assert_eq!(ci.shutdown_grace, Duration::from_secs(1));
    assert_eq!(ci.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(ci.stale_timeout, Duration::from_secs(15));
    assert_eq!(ci.auth_timeout, Duration::from_secs(2));
    assert_eq!(ci.history_ttl, Duration::from_secs(60));
}

#[test]
fn env_lists_split_on_commas_and_drop_empty_items() {
    let config = load(None, &[("HERALD_DEFAULT_TOPICS", " a , b,, c ,")], &[]);
    assert_eq!(config.default_topics, ["a", "b", "c"]);
    let config = load(None, &[("HERALD_DEFAULT_TOPICS", "")], &[]);
    assert!(config.default_topics.is_empty());
    let config = load(None, &[], &[("default_topics", "x,user:{sub}")]);
    assert_eq!(config.default_topics, ["x", "user:{sub}"]);
}

#[test]
fn toml_lists_are_arrays_or_a_single_string() {
    let config = load(Some("default_topics = [\"a\", \"b:*\"]\n"), &[], &[]);
    assert_eq!(config.default_topics, ["a", "b:*"]);
    // A plain string is a list of one and is not split on commas.
    let config = load(Some("allowed_origins = \"https://a.example\"\n"), &[], &[]);
    assert_eq!(config.allowed_origins, ["https://a.example"]);
    let config = load(Some("default_topics = \"a,b\"\n"), &[], &[]);
    assert_eq!(config.default_topics, ["a,b"]);
    let config = load(Some("default_topics = \"\"\n"), &[], &[]);
    assert!(config.default_topics.is_empty());
}

#[test]
fn api_keys_are_secrets() {
    let config = load(None, &[("HERALD_API_KEYS", "k1, k2")], &[]);
    let keys: Vec<&str> = config.api_keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert!(config.api_keys[0].matches("k1"));
}

#[test]
fn typed_values_are_parsed() {
    let config = load(
        Some(
            "listen = \"0.0.0.0:80\"\nadmin_listen = \"[::1]:9090\"\njwt_issuer = \"me\"\n\
             memory_limit_bytes = 2097152\nlog_format = \"json\"\n",
        ),
        &[
            ("HERALD_USER_LIMIT_POLICY", "reject"),
            ("HERALD_JWT_LEEWAY_MS", "1500"),
            ("HERALD_TIERS", "free:1:2,gold:3:4"),
        ],
        &[("allowed_origins", "*, HTTPS://App.Example:443")],
    );
    assert_eq!(config.listen, "0.0.0.0:80".parse().unwrap());
    assert_eq!(config.admin_listen, Some("[::1]:9090".parse().unwrap()));
    assert_eq!(config.jwt_issuer.as_deref(), Some("me"));
    assert_eq!(config.memory_limit_bytes, Some(2_097_152));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.user_limit_policy, UserLimitPolicy::Reject);
    assert_eq!(config.jwt_leeway, Duration::from_millis(1500));
    assert_eq!(
        config.tiers.tier("gold").map(|q| q.max_connections),
        Some(3)
    );
    assert_eq!(
        config.tiers.tier("early"),
        None,
        "a tier table replaces the default"
    );
    assert_eq!(config.allowed_origins, ["*", "https://app.example:443"]);
}

#[test]
fn empty_text_unsets_an_optional_setting() {
    let file = Some("admin_listen = \"127.0.0.1:9000\"\nmemory_limit_bytes = 2097152\n");
    let config = load(
        file,
        &[
            ("HERALD_ADMIN_LISTEN", ""),
            ("HERALD_MEMORY_LIMIT_BYTES", ""),
        ],
        &[],
    );
    assert_eq!(config.admin_listen, None);
    assert_eq!(config.memory_limit_bytes, None);
}

#[test]
fn public_key_algorithms_need_the_key_file_not_the_secret() {
    let config = BaseConfig::load(Sources {
        env: pairs(&[
            ("HERALD_JWT_ALGORITHM", "RS256"),
            ("HERALD_JWT_PUBLIC_KEY_FILE", "/etc/herald/jwt.pem"),
        ]),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(config.jwt_algorithm, JwtAlgorithm::Rs256);
    assert_eq!(
        config.jwt_public_key_file.as_deref(),
        Some(Path::new("/etc/herald/jwt.pem"))
    );
}

#[test]
fn unknown_env_vars_are_warnings_with_suggestions() {
    let config = load(
        None,
        &[
            ("HERALD_MAX_PAYLOAD_BYTE", "5"),
            ("HERALD_SOMETHING_ELSE", "1"),
            ("PATH", "/bin"),
        ],
        &[],
    );
    assert_eq!(
        config.warnings(),
        [
            "unknown setting HERALD_MAX_PAYLOAD_BYTE; did you mean HERALD_MAX_PAYLOAD_BYTES?",
            "unknown setting HERALD_SOMETHING_ELSE",
        ]
    );
    assert_eq!(config.max_payload_bytes, 102_400);
}

#[test]
fn doubtful_jwt_settings_are_warnings() {
    let config = load(None, &[("HERALD_JWT_SECRET", "short")], &[]);
    assert_eq!(
        config.warnings(),
        [
            "HERALD_JWT_SECRET (jwt_secret) is shorter than 32 bytes, the minimum RFC 7518 sets for HS256"
        ]
    );
    let config = load(
        None,
        &[
            ("HERALD_JWT_ALGORITHM", "ES256"),
            ("HERALD_JWT_PUBLIC_KEY_FILE", "k.pem"),
        ],
        &[],
    );
    assert_eq!(config.warnings().len(), 1);
    assert!(config.warnings()[0].starts_with("HERALD_JWT_SECRET (jwt_secret) is ignored"));
}

#[test]
fn non_number_names_variable_key_and_value() {
    check_env_error(
        &[("HERALD_MAX_PAYLOAD_BYTES", "abc")],
        r#"invalid value "abc" for HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes): expected a positive integer"#,
    );
    check_env_error(
        &[("HERALD_HISTORY_SIZE", "-1")],
        r#"invalid value "-1" for HERALD_HISTORY_SIZE (history_size): expected a non-negative integer"#,
    );
}

#[test]
fn numbers_are_parsed_strictly() {
    for bad in ["+5", " 5", "5 ", "5.0", "1e3", "0x10", "5kb", ""] {
        let err = try_load(None, &[("HERALD_MAX_PAYLOAD_BYTES", bad)], &[]).unwrap_err();
        assert!(
            err.to_string().ends_with("expected a positive integer"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn zero_payload_limit_is_refused() {
    check_env_error(
        &[("HERALD_MAX_PAYLOAD_BYTES", "0")],
        r#"invalid value "0" for HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes): expected an integer from 1 to 67108864 (bytes)"#,
    );
}

#[test]
fn out_of_range_numbers_are_refused() {
    check_env_error(
        &[("HERALD_AUTH_TIMEOUT_MS", "99")],
        r#"invalid value "99" for HERALD_AUTH_TIMEOUT_MS (auth_timeout_ms): expected an integer from 100 to 300000 (milliseconds)"#,
    );
    check_env_error(
        &[("HERALD_MEMORY_HIGH_PERCENT", "101")],
        r#"invalid value "101" for HERALD_MEMORY_HIGH_PERCENT (memory_high_percent): expected an integer from 1 to 100 (percent)"#,
    );
    check_env_error(
        &[("HERALD_MAX_CONNECTIONS", "99999999999999999999999")],
        r#"invalid value "99999999999999999999999" for HERALD_MAX_CONNECTIONS (max_connections): expected an integer from 1 to 10000000"#,
    );
    check_env_error(
        &[("HERALD_MEMORY_LIMIT_BYTES", "1024")],
        r#"invalid value "1024" for HERALD_MEMORY_LIMIT_BYTES (memory_limit_bytes): expected an integer from 1048576 to 1125899906842624 (bytes)"#,
    );
}

#[test]
fn bad_choices_list_the_accepted_words() {
    check_env_error(
        &[("HERALD_JWT_ALGORITHM", "HS512")],
        r#"invalid value "HS512" for HERALD_JWT_ALGORITHM (jwt_algorithm): expected one of HS256, RS256, ES256"#,
    );
    check_env_error(
        &[("HERALD_USER_LIMIT_POLICY", "drop")],
        r#"invalid value "drop" for HERALD_USER_LIMIT_POLICY (user_limit_policy): expected one of evict_oldest, reject"#,
    );
    check_env_error(
        &[("HERALD_LOG_FORMAT", "xml")],
        r#"invalid value "xml" for HERALD_LOG_FORMAT (log_format): expected one of text, json"#,
    );
    check_env_error(
        &[("HERALD_PROFILE", "dev")],
        r#"invalid value "dev" for HERALD_PROFILE (profile): expected one of production, staging, ci"#,
    );
}

#[test]
fn bad_addresses_are_refused() {
    check_env_error(
        &[("HERALD_LISTEN", "localhost:80")],
        r#"invalid value "localhost:80" for HERALD_LISTEN (listen): expected an IP address and port, e.g. 127.0.0.1:8080 or [::1]:8080"#,
    );
}

#[test]
fn bad_origin_is_named() {
    check_env_error(
        &[(
            "HERALD_ALLOWED_ORIGINS",
            "https://ok.example, https://bad.example/path",
        )],
        r#"invalid value "https://ok.example, https://bad.example/path" for HERALD_ALLOWED_ORIGINS (allowed_origins): expected `*` or origins of the form scheme://host[:port] without a path, e.g. https://app.example.com; `https://bad.example/path` is not"#,
    );
}

#[test]
fn empty_log_filter_is_refused() {
    check_env_error(
        &[("HERALD_LOG", " ")],
        r#"invalid value " " for HERALD_LOG (log): expected a non-empty log filter, e.g. info"#,
    );
}

#[test]
fn tiers_without_free_are_refused() {
    check_env_error(
        &[("HERALD_TIERS", "gold:3:30")],
        r#"invalid value "gold:3:30" for HERALD_TIERS (tiers): expected a table that contains the tier `free` (the tier of tokens without a `tier` claim)"#,
    );
    check_file_error(
        "[tiers.gold]\nmax_connections = 3\nmessages_per_minute = 30\n",
        "for HERALD_TIERS (tiers) in config file",
    );
}

#[test]
fn stale_timeout_must_exceed_heartbeat() {
    check_env_error(
        &[
            ("HERALD_HEARTBEAT_INTERVAL_MS", "20000"),
            ("HERALD_STALE_TIMEOUT_MS", "20000"),
        ],
        "invalid value 20000 for HERALD_STALE_TIMEOUT_MS (stale_timeout_ms): must be greater than HERALD_HEARTBEAT_INTERVAL_MS (heartbeat_interval_ms), which is 20000",
    );
    // The ci profile lowers both, so a file raising only the heartbeat conflicts.
    let err = try_load(
        Some("profile = \"ci\"\nheartbeat_interval_ms = 20000\n"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Conflict {
            key: "stale_timeout_ms",
            other_key: "heartbeat_interval_ms",
            ..
        }
    ));
}

#[test]
fn critical_memory_must_exceed_high() {
    check_env_error(
        &[("HERALD_MEMORY_HIGH_PERCENT", "95")],
        "invalid value 95 for HERALD_MEMORY_CRITICAL_PERCENT (memory_critical_percent): must be greater than HERALD_MEMORY_HIGH_PERCENT (memory_high_percent), which is 95",
    );
}

#[test]
fn admin_listener_must_differ_from_main() {
    check_env_error(
        &[("HERALD_ADMIN_LISTEN", "127.0.0.1:8080")],
        r#"invalid value "127.0.0.1:8080" for HERALD_ADMIN_LISTEN (admin_listen): must differ from HERALD_LISTEN (listen), which is "127.0.0.1:8080""#,
    );
    // Port 0 picks a free port for each, as tests do.
    let config = load(
        None,
        &[
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
        &[],
    );
    assert_eq!(config.admin_listen, Some(config.listen));
}

/// Loads `env` alone (no secret added) and checks the exact message of the refusal.
#[track_caller]
fn check_missing_key(env: &[(&str, &str)], expected: &str) {
    let err = BaseConfig::load(Sources {
        env: pairs(env),
        ..Sources::default()
    })
    .unwrap_err();
    let message = err.to_string();
    assert_eq!(message, expected);
    assert_eq!(
        message.lines().count(),
        1,
        "the binary prints it as one line"
    );
}

#[test]
fn hs256_without_a_secret_is_refused_with_the_fix() {
    let expected = "missing HERALD_JWT_SECRET (jwt_secret): HERALD_JWT_ALGORITHM (jwt_algorithm) is HS256, which verifies tokens with a shared secret; set HERALD_JWT_SECRET to a random string of 32 bytes or more, or run `herald --dev` for a local try-out";
    check_missing_key(&[], expected);
    check_missing_key(&[("HERALD_JWT_ALGORITHM", "HS256")], expected);
    // Empty text unsets the secret, so it is missing too.
    check_missing_key(&[("HERALD_JWT_SECRET", "")], expected);
    // A public key does not stand in for the secret.
    check_missing_key(&[("HERALD_JWT_PUBLIC_KEY_FILE", "k.pem")], expected);
}

#[test]
fn public_key_algorithms_without_the_key_file_are_refused_with_the_fix() {
    for algorithm in ["RS256", "ES256"] {
        check_missing_key(
            &[
                ("HERALD_JWT_ALGORITHM", algorithm),
                ("HERALD_JWT_SECRET", SECRET),
            ],
            &format!(
                "missing HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file): HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}, which verifies tokens with a PEM public key; set HERALD_JWT_PUBLIC_KEY_FILE to the key's path, or run `herald --dev` for a local try-out"
            ),
        );
    }
}

#[test]
fn file_errors_name_the_file_and_key() {
    check_file_error(
        "max_payload_bytes = 0\n",
        "invalid value 0 for HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes) in config file",
    );
    check_file_error(
        "max_payload_bytes = \"1024\"\n",
        r#"invalid value "1024" for HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes) in config file"#,
    );
    check_file_error(
        "heartbeat_interval_ms = 1.5\n",
        "invalid value 1.5 for HERALD_HEARTBEAT_INTERVAL_MS (heartbeat_interval_ms) in config file",
    );
    check_file_error(
        "default_topics = [1, 2]\n",
        "(default_topics) in config file",
    );
    check_file_error(
        "max_payload_byte = 10\n",
        "unknown setting `max_payload_byte` in config file",
    );
    check_file_error(
        "max_payload_byte = 10\n",
        "; did you mean `max_payload_bytes`?",
    );
    check_file_error(
        "[server]\nlisten = \"0.0.0.0:1\"\n",
        "unknown setting `server`",
    );
    check_file_error("listen = \n", "is not valid TOML");
}

#[test]
fn unreadable_file_is_named() {
    let path = std::env::temp_dir().join("herald-config-test-does-not-exist.toml");
    let err = BaseConfig::load(Sources {
        file: Some(&path),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read config file {}: ", path.display())),
        "{err}"
    );
}

#[test]
fn file_values_win_over_the_profile_but_lose_to_env() {
    let config = load(
        Some("profile = \"ci\"\nauth_timeout_ms = 3000\nhistory_ttl_ms = 1000\n"),
        &[("HERALD_HISTORY_TTL_MS", "2000")],
        &[],
    );
    assert_eq!(config.auth_timeout, Duration::from_secs(3));
    assert_eq!(config.history_ttl, Duration::from_secs(2));
}

#[test]
fn unknown_override_is_an_error() {
    let err = try_load(None, &[], &[("lisen", "0.0.0.0:1")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown setting `lisen` on the command line; did you mean `listen`?"
    );
    let err = try_load(None, &[], &[("max_payload_bytes", "x")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid value "x" for HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes) on the command line: expected a positive integer"#
    );
}

#[test]
fn secrets_never_appear_in_errors_debug_or_toml() {
    let hidden = "s3cr3t-api-key-value";
    let config = load(
        None,
        &[
            ("HERALD_API_KEYS", &format!("{hidden},other")),
            (
                "HERALD_JWT_SECRET",
                &format!("{hidden}-and-more-bytes-to-be-long"),
            ),
        ],
        &[],
    );
    assert!(!format!("{config:?}").contains(hidden));
    let printed = config.to_toml_redacted();
    assert!(!printed.contains(hidden));
    assert!(printed.contains("jwt_secret = \"<redacted>\""));
    assert!(printed.contains("api_keys = [\"<redacted>\", \"<redacted>\"]"));

    let err = try_load(
        None,
        &[("HERALD_API_KEYS", &format!("{hidden}, bad key"))],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains(hidden), "{err}");
    assert!(
        err.starts_with(r#"invalid value "<redacted>" for HERALD_API_KEYS (api_keys)"#),
        "{err}"
    );

    let err = try_load(Some(&format!("jwt_secret = [\"{hidden}\"]\n")), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(!err.contains(hidden), "{err}");
}

/// The printed TOML without comments, which is what must survive a round trip.
fn settings_lines(printed: &str) -> Vec<&str> {
    printed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

#[test]
fn printed_toml_parses_back_to_the_same_settings() {
    let config = load(
        Some(
            "profile = \"staging\"\n[tiers.free]\nmax_connections = 2\nmessages_per_minute = 9\n[tiers.pro-plus]\nmax_connections = 4\nmessages_per_minute = 40\n",
        ),
        &[
            ("HERALD_ALLOWED_ORIGINS", "https://a.example,*"),
            ("HERALD_DEFAULT_TOPICS", "news,user:{sub}"),
            ("HERALD_JWT_ISSUER", "iss \"quoted\" \\ \u{1}"),
            ("HERALD_MEMORY_LIMIT_BYTES", "1073741824"),
            ("HERALD_API_KEYS", "k"),
        ],
        &[
            ("admin_listen", "[::1]:9100"),
            ("log", "info,herald_core=debug"),
        ],
    );
    let printed = config.to_toml_redacted();
    let table: toml::Table = toml::from_str(&printed).unwrap();
    assert_eq!(table["profile"].as_str(), Some("staging"));
    assert_eq!(table["max_connections_per_user"].as_integer(), Some(10));
    assert_eq!(
        table["jwt_issuer"].as_str(),
        Some("iss \"quoted\" \\ \u{1}")
    );
    assert!(
        !table.contains_key("jwt_public_key_file"),
        "unset settings are comments"
    );

    let file = TempFile::new(&printed);
    let reloaded = BaseConfig::load(Sources {
        file: Some(&file.0),
        ..Sources::default()
    })
    .unwrap();
    let reprinted = reloaded.to_toml_redacted();
    assert_eq!(settings_lines(&reprinted), settings_lines(&printed));
    assert_eq!(reloaded.tiers, config.tiers);
    assert_eq!(reloaded.jwt_issuer, config.jwt_issuer);
}

#[test]
fn printed_toml_says_where_each_value_came_from() {
    let config = load(
        None,
        &[("HERALD_PROFILE", "ci")],
        &[("listen", "0.0.0.0:1")],
    );
    let printed = config.to_toml_redacted();
    assert!(printed.starts_with("# Effective Herald configuration (profile ci)."));
    assert!(printed.contains("# HERALD_LISTEN, from command line.\nlisten = \"0.0.0.0:1\"\n"));
    assert!(
        printed
            .contains("# HERALD_SHUTDOWN_GRACE_MS, from profile ci.\nshutdown_grace_ms = 1000\n")
    );
    assert!(
        printed.contains("# HERALD_JWT_SECRET, from environment.\njwt_secret = \"<redacted>\"\n")
    );
    assert!(printed.contains("# HERALD_LOG, from built-in default.\nlog = \"info\"\n"));
    assert!(printed.contains("# admin_listen is not set\n"));
    assert!(printed.ends_with(
        "[tiers.mid]\nmax_connections = 15\nmessages_per_minute = 200\n\
         max_subscriptions = 500\nmax_publish_bytes = 65536\n"
    ));
}

#[test]
fn default_config_prints_every_default() {
    let printed = BaseConfig::default().to_toml_redacted();
    let table: toml::Table = toml::from_str(&printed).unwrap();
    let unset = [
        "admin_listen",
        "tls_cert_file",
        "tls_key_file",
        "admin_tls_cert_file",
        "admin_tls_key_file",
        "jwt_secret",
        "jwt_public_key_file",
        "jwt_issuer",
        "jwt_audience",
        "echo_path",
        "memory_limit_bytes",
        "redis_url",
        "node_id",
    ];
    for setting in SETTINGS {
        assert_eq!(
            table.contains_key(setting.key),
            !unset.contains(&setting.key),
            "{}",
            setting.key
        );
    }
    assert_eq!(table["max_payload_bytes"].as_integer(), Some(102_400));
    assert_eq!(table["user_limit_policy"].as_str(), Some("evict_oldest"));
    assert_eq!(table["jwt_algorithm"].as_str(), Some("HS256"));
}

#[test]
fn the_echo_path_is_unset_by_default_and_checked_when_set() {
    assert_eq!(load(None, &[], &[]).echo_path, None);
    let config = load(None, &[("HERALD_ECHO_PATH", "/echo")], &[]);
    assert_eq!(config.echo_path.as_deref(), Some("/echo"));
    check_env_error(
        &[("HERALD_ECHO_PATH", "/ws")],
        "invalid value \"/ws\" for HERALD_ECHO_PATH (echo_path): expected an absolute path \
         other than /ws, of letters, digits and /-._~",
    );
}

#[test]
fn sources_debug_hides_values() {
    let sources = Sources {
        env: pairs(&[("HERALD_JWT_SECRET", "hunter2")]),
        overrides: pairs(&[("jwt_secret", "hunter3")]),
        ..Sources::default()
    };
    let shown = format!("{sources:?}");
    assert!(shown.contains("HERALD_JWT_SECRET"));
    assert!(!shown.contains("hunter"));
}

mod never_panics {
    //! Every input reaches a configuration or a `ConfigError`.

    use proptest::prelude::*;

    use super::{SETTINGS, try_load};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any text for any setting, from the environment: a configuration or a `ConfigError`,
        /// never a panic.
        #[test]
        fn any_setting_with_any_text_loads_or_is_an_error(
            index in 0..SETTINGS.len(),
            text in any::<String>(),
        ) {
            let _ = try_load(None, &[(SETTINGS[index].env, text.as_str())], &[]);
            let _ = try_load(None, &[], &[(SETTINGS[index].key, text.as_str())]);
        }

        /// Any text as the TOML file: the same.
        #[test]
        fn any_file_loads_or_is_an_error(text in any::<String>()) {
            let _ = try_load(Some(&text), &[], &[]);
        }

        /// TOML files that set real keys to arbitrary TOML values: the same.
        #[test]
        fn real_keys_with_any_toml_value_load_or_are_an_error(
            index in 0..SETTINGS.len(),
            value in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
                Just("[1, \"a\"]".to_owned()),
                Just("{ a = 1 }".to_owned()),
            ],
        ) {
            let _ = try_load(Some(&format!("{} = {value}\n", SETTINGS[index].key)), &[], &[]);
        }
    }
}

#[test]
fn tls_needs_both_files_and_admin_tls_needs_the_admin_listener() {
    check_env_error(
        &[("HERALD_TLS_CERT_FILE", "cert.pem")],
        "missing HERALD_TLS_KEY_FILE (tls_key_file): HERALD_TLS_CERT_FILE (tls_cert_file) is set, and TLS needs both the certificate chain and its private key",
    );
    check_env_error(
        &[("HERALD_ADMIN_TLS_KEY_FILE", "key.pem")],
        "missing HERALD_ADMIN_TLS_CERT_FILE (admin_tls_cert_file): HERALD_ADMIN_TLS_KEY_FILE (admin_tls_key_file) is set, and TLS needs both the certificate chain and its private key",
    );
    check_env_error(
        &[
            ("HERALD_ADMIN_TLS_CERT_FILE", "cert.pem"),
            ("HERALD_ADMIN_TLS_KEY_FILE", "key.pem"),
        ],
        "missing HERALD_ADMIN_LISTEN (admin_listen): HERALD_ADMIN_TLS_CERT_FILE (admin_tls_cert_file) is set, but there is no admin listener to serve TLS on",
    );
    let config = load(
        None,
        &[
            ("HERALD_TLS_CERT_FILE", "cert.pem"),
            ("HERALD_TLS_KEY_FILE", "key.pem"),
        ],
        &[],
    );
    assert_eq!(config.tls_cert_file.as_deref(), Some(Path::new("cert.pem")));
    assert_eq!(config.admin_tls_cert_file, None);
}

#[test]
fn trusted_proxies_are_address_blocks() {
    let config = load(None, &[("HERALD_TRUSTED_PROXIES", "10.0.0.0/8, ::1")], &[]);
    let blocks: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(blocks, ["10.0.0.0/8", "::1"]);
    let err = try_load(None, &[("HERALD_TRUSTED_PROXIES", "10.0.0.0/40")], &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("HERALD_TRUSTED_PROXIES (trusted_proxies)"),
        "{err}"
    );
}

#[test]
fn redis_settings_are_parsed_and_checked() {
    let config = load(
        None,
        &[
            ("HERALD_REDIS_URL", "redis://:pw@127.0.0.1:6379/0"),
            ("HERALD_REDIS_KEY_PREFIX", "app1:"),
            ("HERALD_NODE_ID", "node-a"),
            ("HERALD_REDIS_COMMAND_TIMEOUT_MS", "250"),
        ],
        &[],
    );
    assert_eq!(
        config.redis_url.as_ref().map(Secret::expose),
        Some("redis://:pw@127.0.0.1:6379/0")
    );
    assert_eq!(config.redis_key_prefix, "app1:");
    assert_eq!(config.node_id.as_deref(), Some("node-a"));
    assert_eq!(config.redis_command_timeout, Duration::from_millis(250));
    assert!(
        !config.to_toml_redacted().contains(":pw@"),
        "the URL may hold a password"
    );
    check_env_error(
        &[("HERALD_REDIS_URL", "http://x")],
        r#"invalid value "<redacted>" for HERALD_REDIS_URL (redis_url): expected a redis:// URL"#,
    );
    check_env_error(
        &[("HERALD_REDIS_KEY_PREFIX", "a{b}")],
        r#"invalid value "a{b}" for HERALD_REDIS_KEY_PREFIX (redis_key_prefix): expected 1 to 64 bytes without whitespace, `{` or `}`"#,
    );
    check_env_error(
        &[("HERALD_NODE_ID", "a b")],
        r#"invalid value "a b" for HERALD_NODE_ID (node_id): expected 1 to 64 bytes without whitespace"#,
    );
}

#[test]
fn the_compression_switch_is_a_boolean_in_every_layer() {
    assert!(load(None, &[], &[]).compression_enabled);
    assert!(!load(None, &[("HERALD_COMPRESSION_ENABLED", "false")], &[]).compression_enabled);
    assert!(!load(Some("compression_enabled = false\n"), &[], &[]).compression_enabled);
    assert!(
        load(
            Some("compression_enabled = false\n"),
            &[],
            &[("compression_enabled", "true")]
        )
        .compression_enabled
    );
    check_env_error(
        &[("HERALD_COMPRESSION_ENABLED", "no")],
        r#"invalid value "no" for HERALD_COMPRESSION_ENABLED (compression_enabled): expected `true` or `false`"#,
    );
    check_file_error(
        "compression_enabled = \"false\"\n",
        "expected `true` or `false`",
    );
}
