//! `BaseConfig::load`: the layers (defaults, profile, file, environment, overrides) applied in
//! order, then the rules that involve more than one setting.

use std::{fmt, path::Path};

use crate::{
    base::BaseConfig,
    choice::Profile,
    error::ConfigError,
    origin::Origin,
    settings::{self, Raw, Setting},
};

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

    /// The layer that set `key` (a TOML key), or `None` for an unknown key.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        let setting = settings::by_key(key)?;
        Some(self.origins.get(setting.key).unwrap_or(&Origin::Default))
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
        parse_into(self, setting, raw, origin)?;
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
        let pairs = [
            (
                ("tls_cert_file", self.tls_cert_file.is_some()),
                ("tls_key_file", self.tls_key_file.is_some()),
            ),
            (
                ("admin_tls_cert_file", self.admin_tls_cert_file.is_some()),
                ("admin_tls_key_file", self.admin_tls_key_file.is_some()),
            ),
        ];
        for (cert, key) in pairs {
            if cert.1 != key.1 {
                let (missing, present) = if cert.1 {
                    (key.0, cert.0)
                } else {
                    (cert.0, key.0)
                };
                let env = |key: &str| settings::by_key(key).map_or("", |s| s.env);
                return Err(ConfigError::Missing {
                    env: env(missing),
                    key: missing,
                    reason: format!(
                        "{} ({present}) is set, and TLS needs both the certificate chain and its private key",
                        env(present)
                    ),
                });
            }
        }
        if self.admin_tls_cert_file.is_some() && self.admin_listen.is_none() {
            return Err(ConfigError::Missing {
                env: "HERALD_ADMIN_LISTEN",
                key: "admin_listen",
                reason: "HERALD_ADMIN_TLS_CERT_FILE (admin_tls_cert_file) is set, but there is no admin listener to serve TLS on".to_owned(),
            });
        }
        // Without its key the server could verify no token and would turn every client away:
        // refusing to start says so at once, where the operator is looking.
        let algorithm = self.jwt_algorithm;
        if algorithm.uses_public_key() && self.jwt_public_key_file.is_none() {
            return Err(missing_key(
                "jwt_public_key_file",
                format!(
                    "HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}, which verifies tokens with a PEM public key; set HERALD_JWT_PUBLIC_KEY_FILE to the key's path"
                ),
            ));
        }
        if !algorithm.uses_public_key() && self.jwt_secret.is_none() {
            return Err(missing_key(
                "jwt_secret",
                format!(
                    "HERALD_JWT_ALGORITHM (jwt_algorithm) is {algorithm}, which verifies tokens with a shared secret; set HERALD_JWT_SECRET to a random string of {MIN_HS256_SECRET_BYTES} bytes or more"
                ),
            ));
        }
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
    parse_into(&mut scratch, setting, raw, origin)?;
    Ok((scratch.profile, origin.clone()))
}

/// Parses `raw` as `setting` into `config`; a refusal names the setting, the value (redacted
/// for secrets) and the layer it came from.
fn parse_into(
    config: &mut BaseConfig,
    setting: &Setting,
    raw: &Raw<'_>,
    origin: &Origin,
) -> Result<(), ConfigError> {
    setting
        .apply(config, raw)
        .map_err(|expected| ConfigError::InvalidValue {
            env: setting.env,
            key: setting.key,
            value: setting.shown(raw),
            origin: origin.clone(),
            expected,
        })
}

/// The warning for a `HERALD_*` variable that is not a setting, with a likely intended name.
fn unknown_env_warning(name: &str) -> String {
    match settings::suggest(name, |s| s.env) {
        Some(suggestion) => format!("unknown setting {name}; did you mean {suggestion}?"),
        None => format!("unknown setting {name}"),
    }
}

/// The error for a missing key to verify tokens with: `reason` says why it is needed and how to
/// set it; the way to try Herald without one follows.
fn missing_key(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Missing {
        env: settings::by_key(key).map_or("", |s| s.env),
        key,
        reason: format!("{reason}, or run `herald --dev` for a local try-out"),
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

#[cfg(test)]
mod tests;
