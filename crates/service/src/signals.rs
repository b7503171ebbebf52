//! The shutdown signals: SIGTERM and SIGINT handlers, installed before the server announces
//! that it listens.

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

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
