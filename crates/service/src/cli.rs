//! Command-line flags. Every setting also has a `HERALD_*` variable and a TOML key; flags are the
//! highest layer.

use std::path::PathBuf;

use clap::Parser;
use herald_config::Sources;

/// Herald, a real-time WebSocket gateway.
///
/// Every setting can come from a TOML file (--config), a HERALD_* environment variable, or a
/// flag; see docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub(crate) struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// Built-in defaults to start from: production, staging or ci.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Address of the listener, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Any setting by its TOML key, e.g. --set max_connections=5000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Run locally with throwaway credentials: loopback only (HERALD_LISTEN, default
    /// 127.0.0.1:8080); a new JWT secret and API key at every start, printed with a ready token
    /// and commands to paste. They replace any configured ones.
    #[arg(long)]
    pub(crate) dev: bool,
}

impl Cli {
    /// The configuration layers: the file, the process environment, these flags, and then
    /// `extra` overrides (as `(toml key, value)`), which win over everything.
    pub(crate) fn sources(&self, extra: Vec<(String, String)>) -> Sources<'_> {
        let mut overrides = Vec::new();
        if let Some(profile) = &self.profile {
            overrides.push(("profile".to_owned(), profile.clone()));
        }
        if let Some(listen) = &self.listen {
            overrides.push(("listen".to_owned(), listen.clone()));
        }
        overrides.extend(self.set.iter().cloned());
        overrides.extend(extra);
        Sources {
            file: self.config.as_deref(),
            // Non-UTF-8 variables cannot be Herald settings; skip them instead of panicking.
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            overrides,
        }
    }
}

/// Parses one `--set KEY=VALUE`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}
