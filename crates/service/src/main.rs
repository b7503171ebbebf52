//! The `herald` binary: loads the configuration, sets up logging and runs the gateway until
//! SIGTERM or SIGINT.
//!
//! This is the composition root. It is the only crate that reads environment variables, picks
//! the implementations of core's seams (clock, authenticator, stores) and knows about hyper and
//! tungstenite. Its modules depend on each other without loops: `main` uses `cli`, `dev` and
//! `server`; `server` wires `jwt`, `tls`, `abuse`, `listener` and `signals`; `listener` hands
//! connections to `conn`, which serves them with `ws` or `http`; `app` and `respond` are
//! shared by all.

mod abuse;
mod app;
mod capacity;
mod checks;
mod cli;
mod conn;
mod dev;
mod head;
mod http;
mod jwt;
mod listener;
mod prefixed;
mod pressure;
mod respond;
mod server;
mod signals;
mod tls;
mod ws;

use std::process::ExitCode;

use clap::Parser;
use herald_config::{BaseConfig, LogFormat};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::Cli,
    dev::DevMode,
    jwt::JwtSettings,
    tls::{Tls, TlsFiles},
};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options. Background threads purge freed pages on a timer, so RSS falls
/// back after a burst (connection churn, a large fan-out) instead of staying at its peak until
/// the next allocation; dirty pages are returned within a second. The thread caches are
/// garbage-collected every MiB allocated instead of every 64 KiB: at the default, a request's
/// few KiB of allocations brought a collection round every few requests (700 instructions per
/// HTTP publication in callgrind), and the idle memory per connection is the same either way.
// SAFETY: jemalloc reads `malloc_conf` (prefixed `_rjem_` by tikv-jemallocator) once, as a
// `const char *` to a NUL-terminated string. A `&u8` is a thin pointer with that layout, and it
// points at the first byte of a 'static, NUL-terminated byte string. Nothing else defines the
// symbol. `malloc_conf_is_applied` checks that jemalloc saw it.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_gc_incr_bytes:1048576\0"
        [0];

/// Exit status for a configuration that cannot run; the message names the setting.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dev = if cli.dev {
        match DevMode::generate() {
            Ok(dev) => Some(dev),
            Err(error) => {
                eprintln!("herald: --dev: cannot generate credentials: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let overrides = dev.as_ref().map(DevMode::overrides).unwrap_or_default();
    let config = match BaseConfig::load(cli.sources(overrides)) {
        Ok(config) => config,
        Err(error) => {
            // Logging is configured by the config that failed to load: report plainly.
            eprintln!("herald: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if dev.is_some()
        && let Err(message) = dev::check_loopback(&config)
    {
        eprintln!("herald: configuration error: {message}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // The key file is read now: a bad one is a configuration error, before anything listens.
    let jwt = match JwtSettings::from_config(&config) {
        Ok(jwt) => jwt,
        Err(error) => {
            eprintln!("herald: configuration error: {}", error_chain(&error));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // So are the TLS certificates and keys: a missing file or a key that is not the
    // certificate's refuses to start, naming the setting.
    let tls = match load_tls(&config) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("herald: configuration error: {}", error_chain(&error));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        #[allow(clippy::print_stdout)] // `--print-config` prints the config: that is its job.
        {
            print!("{}", config.to_toml_redacted());
        }
        return ExitCode::SUCCESS;
    }
    // Held until `main` returns: dropping it flushes the log lines still queued.
    let _log_writer = match init_logging(&config) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("herald: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
    let announce = |addr| {
        if let Some(dev) = &dev {
            dev.announce(addr);
        }
    };
    match runtime.block_on(server::run(config, jwt, tls, announce)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The TLS of the main and the admin listener, where configured.
fn load_tls(config: &BaseConfig) -> Result<server::ListenerTls, tls::TlsError> {
    Ok(server::ListenerTls {
        main: TlsFiles::main(config).map(Tls::load).transpose()?,
        admin: TlsFiles::admin(config).map(Tls::load).transpose()?,
    })
}

/// `error` and its sources, joined with `: ` on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Logs to stderr, filtered by `HERALD_LOG`, as text or one JSON object per line.
///
/// Lines are written to stderr by a background thread, so a connection's lifecycle events
/// cost the task that logs them no system call; the returned guard flushes what is still
/// queued when it is dropped. When the queue is full (a burst of lines faster than stderr
/// takes them), the logging task waits rather than losing lines.
fn init_logging(config: &BaseConfig) -> Result<WorkerGuard, String> {
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|e| format!("invalid value {:?} for HERALD_LOG (log): {e}", config.log))?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(guard)
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
