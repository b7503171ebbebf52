//! The `herald` binary: loads the configuration, sets up logging and runs the gateway until
//! SIGTERM or SIGINT.
//!
//! This is the composition root. It is the only crate that reads environment variables, picks
//! the implementations of core's seams (clock, authenticator, stores) and knows about hyper and
//! tungstenite.

mod cli;
mod http;
mod server;
mod ws;

use std::process::ExitCode;

use clap::Parser;
use herald_config::{BaseConfig, LogFormat};
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
