//! `Origin`: which layer (default, profile, file, environment, command line) set a value.

use std::{fmt, path::PathBuf};

use crate::choice::Profile;

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
