//! The signals: SIGTERM and SIGINT (drain and stop) and SIGHUP (read the TLS certificates
//! again), all installed before the server announces that it listens.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::tls::Tls;

/// The SIGTERM and SIGINT handlers, installed up front.
pub(crate) struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs both handlers; from now on the signals no longer end the process by default.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// Cancels `shutdown` on the first SIGTERM or SIGINT.
    pub(crate) async fn wait(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    }
}

/// The SIGHUP handler, installed up front, so a SIGHUP never ends the process.
pub(crate) struct ReloadSignal(Signal);

impl ReloadSignal {
    /// Installs the handler.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self(
            signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        ))
    }

    /// On every SIGHUP until `shutdown`, reads each listener's certificate and key again. A
    /// pair that cannot be used is logged and leaves the listener on its current one; either
    /// way open connections keep theirs. Counted in `herald_tls_reloads_total{result}`.
    pub(crate) async fn run(mut self, listeners: Vec<Arc<Tls>>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = self.0.recv() => if received.is_none() { return },
            }
            if listeners.is_empty() {
                tracing::info!("SIGHUP received: no TLS listener, nothing to reload");
            }
            for tls in &listeners {
                let file = tls.cert_file().display().to_string();
                let result = match tls.reload() {
                    Ok(()) => {
                        tracing::info!(%file, "SIGHUP: TLS certificate reloaded");
                        "ok"
                    }
                    Err(error) => {
                        tracing::error!(
                            %file,
                            "SIGHUP: TLS certificate not reloaded, the current one stays: {error}"
                        );
                        "error"
                    }
                };
                metrics::counter!("herald_tls_reloads_total", "result" => result).increment(1);
            }
        }
    }
}
