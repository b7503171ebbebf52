//! What an operator reads about the settings: the effective configuration as TOML
//! (`--print-config`) and the reference table of docs/configuration.md.

use std::fmt::Write as _;

use crate::{
    base::BaseConfig,
    choice::Profile,
    origin::Origin,
    settings::{Kind, SETTINGS},
};

impl BaseConfig {
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
                    "[tiers.{name}]\nmax_connections = {}\nmessages_per_minute = {}\n\
                     max_subscriptions = {}\nmax_publish_bytes = {}\n",
                    quota.max_connections,
                    quota.messages_per_minute,
                    quota.max_subscriptions,
                    quota.max_publish_bytes
                )
            })
            .collect();
        out.push_str(&tables.join("\n"));
        out
    }
}

/// A Markdown table of every setting, ready for docs/configuration.md.
///
/// Columns: environment variable, TOML key, default, accepted values, meaning, and the values
/// of the `staging` and `ci` profiles where they differ from the default. Generated from the
/// same table the loader uses, so a test can check that the docs are current.
pub fn settings_reference_markdown() -> String {
    let defaults = BaseConfig::default();
    let mut out = String::from(
        "| environment variable | TOML key | default | accepted values | meaning | staging | ci |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let default = if s.key == "tiers" {
            format!("`{}`", defaults.tiers.to_text())
        } else {
            (s.render)(&defaults).map_or_else(
                || "none".to_owned(),
                // Plain strings are shown as an operator writes them in the environment.
                |v| match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(inner) if !inner.contains(['"', '\\']) => format!("`{inner}`"),
                    _ => format!("`{v}`"),
                },
            )
        };
        let accepted = match s.kind {
            Kind::Int { min, max, unit } => format!("{min} to {max}{}", unit.suffix()),
            Kind::Other(text) => text.to_owned(),
        };
        let profile_value = |profile: Profile| {
            profile
                .settings()
                .iter()
                .find(|(key, _)| *key == s.key)
                .map_or_else(String::new, |(_, value)| format!("`{value}`"))
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} | {} | {} |",
            s.env,
            s.key,
            default.replace('|', "\\|"),
            accepted.replace('|', "\\|"),
            s.doc.replace('|', "\\|"),
            profile_value(Profile::Staging),
            profile_value(Profile::Ci),
        );
    }
    out
}

/// The doc line as a sentence start.
fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_table_has_a_row_per_setting() {
        let markdown = settings_reference_markdown();
        assert_eq!(markdown.lines().count(), SETTINGS.len() + 2);
        assert!(markdown.contains(
            "| `HERALD_MAX_PAYLOAD_BYTES` | `max_payload_bytes` | `102400` | 1 to 67108864 (bytes) |"
        ));
        assert!(markdown.contains("| `5000` |\n"), "ci column of heartbeat");
        assert!(markdown.contains("| `HERALD_PROFILE` | `profile` | `production` |"));
        assert!(markdown.contains("| `HERALD_ADMIN_LISTEN` | `admin_listen` | none |"));
    }
}
