//! The `herald` binary: loads the configuration, sets up logging and runs the gateway until
//! SIGTERM or SIGINT.
//!
//! This is the composition root. It is the only crate that reads environment variables, picks
//! the implementations of core's seams (clock, authenticator, stores) and knows about hyper and
//! tungstenite.

mod app;
mod cli;
mod conn;
mod http;
mod prefixed;
mod respond;
mod server;
mod ws;

use std::process::ExitCode;

use clap::Parser;
use herald_config::{BaseConfig, LogFormat};
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options. Background threads purge freed pages on a timer, so RSS falls
/// back after a burst (connection churn, a large fan-out) instead of staying at its peak until
/// the next allocation; dirty pages are returned within a second.
// SAFETY: jemalloc reads `malloc_conf` (prefixed `_rjem_` by tikv-jemallocator) once, as a
// `const char *` to a NUL-terminated string. A `&u8` is a thin pointer with that layout, and it
// points at the first byte of a 'static, NUL-terminated byte string. Nothing else defines the
// symbol. `malloc_conf_is_applied` checks that jemalloc saw it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match BaseConfig::load(cli.sources()) {
        Ok(config) => config,
        Err(error) => {
            // Logging is configured by the config that failed to load: report plainly.
            eprintln!("herald: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        #[allow(clippy::print_stdout)] // `--print-config` prints the config: that is its job.
        {
            print!("{}", config.to_toml_redacted());
        }
        return ExitCode::SUCCESS;
    }
    if let Err(error) = init_logging(&config) {
        eprintln!("herald: configuration error: {error}");
        return ExitCode::from(2);
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `HERALD_LOG`, as text or one JSON object per line.
fn init_logging(config: &BaseConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|e| format!("invalid value {:?} for HERALD_LOG (log): {e}", config.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn malloc_conf_is_applied() {
        assert_eq!(
            tikv_jemalloc_ctl::opt::background_thread::read().ok(),
            Some(true)
        );
    }
}
