//! Herald's configuration: the immutable [`BaseConfig`] and the live-tunable [`RuntimeConfig`].
//!
//! [`BaseConfig`] holds every operator setting (docs/configuration.md). It is built
//! once at start-up by [`BaseConfig::load`] from layers, lowest to highest: built-in defaults,
//! the [`Profile`], the TOML file, the `HERALD_*` environment and command-line overrides. Every
//! value is validated there, so the rest of the gateway can trust it: a bad value is a
//! [`ConfigError`] naming the environment variable, the TOML key and the value, and so is a
//! missing key to verify tokens with (the HS256 secret, or the RS256/ES256 public key file).
//!
//! [`RuntimeConfig`] holds the few values an operator (`PATCH /api/config/runtime`) or the memory
//! degradation logic may change while the gateway runs. Reads are one atomic load; writes are
//! bounds-checked, logged and announced to subscribers.
//!
//! Architecture invariant: this crate reads no environment variable and no file other than the
//! config file it is handed. The service collects the environment and passes it in through
//! [`Sources`], which keeps loading deterministic and testable.

mod base;
mod choice;
mod error;
mod load;
mod net;
mod origin;
mod print;
mod runtime;
mod secret;
mod settings;
mod tiers;

pub use crate::{
    base::BaseConfig,
    choice::{ChoiceError, JwtAlgorithm, LogFormat, Profile, UserLimitPolicy},
    error::ConfigError,
    load::Sources,
    net::IpBlock,
    origin::Origin,
    print::settings_reference_markdown,
    runtime::{ChangeReason, RuntimeConfig, RuntimeConfigError, RuntimeKey, RuntimeSnapshot},
    secret::Secret,
    tiers::{TierQuota, TierQuotas},
};
