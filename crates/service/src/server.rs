//! The listener: accepts TCP connections, serves HTTP/1.1 on them with hyper, and drains
//! everything on SIGTERM or SIGINT.

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context as _;
use herald_config::{BaseConfig, JwtAlgorithm, RuntimeConfig};
use herald_core::{
    Gateway, GatewayParts, GatewaySettings, InMemoryHistoryStore, InMemoryPreferenceStore,
    JwtAuthenticator, JwtSettings,
};
use herald_utils::SystemClock;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use jsonwebtoken::{Algorithm, DecodingKey};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How often the heartbeat and timeout sweep runs; token expiry is enforced within this.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Users whose preferences the in-memory store remembers.
const PREFERENCE_USERS: usize = 100_000;

/// Everything a request handler needs.
pub(crate) struct App {
    pub(crate) config: BaseConfig,
    pub(crate) gateway: Gateway,
    pub(crate) metrics: PrometheusHandle,
    /// Every connection task, HTTP and WebSocket, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
}

/// Runs the server until a shutdown signal, then drains within `shutdown_grace`.
pub(crate) async fn run(config: BaseConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (HERALD_LISTEN)", config.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    // The handlers are installed before "listening" is announced: a SIGTERM sent as soon as
    // the server is up must drain it, not kill it with the default disposition.
    let signals = ShutdownSignals::install()?;
    tracing::info!(%addr, "listening");

    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let gateway = build_gateway(&config)?;
    let tracker = TaskTracker::new();
    let app = Arc::new(App {
        config,
        gateway,
        metrics,
        tracker: tracker.clone(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.wait(shutdown.clone()));
    tokio::spawn(housekeeping(Arc::clone(&app), shutdown.clone()));
    let worker = app.gateway.clone();
    // The fan-out worker finishes the operations already accepted before the process exits.
    tracker.spawn(async move { worker.run_operations().await });

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let shutdown = shutdown.clone();
        let header_timeout = app.config.handshake_timeout;
        tracker.spawn(async move {
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(crate::http::handle(&app, request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "http connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }

    // Readiness turns false, new upgrades are refused, and every WebSocket flushes its queue
    // and closes with 1001.
    app.gateway.begin_shutdown();
    drop(listener);
    tracker.close();
    let grace = app.config.shutdown_grace;
    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace period elapsed; dropping the remaining connections");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Builds the gateway and its seams from the configuration.
fn build_gateway(config: &BaseConfig) -> anyhow::Result<Gateway> {
    let algorithm = match config.jwt_algorithm {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    };
    let key = match (&config.jwt_public_key_file, &config.jwt_secret) {
        (Some(path), _) if config.jwt_algorithm.uses_public_key() => {
            Some(JwtSettings::public_key(algorithm, path).map_err(|e| {
                anyhow::anyhow!("HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file): {e}")
            })?)
        }
        (_, Some(secret)) if !config.jwt_algorithm.uses_public_key() => {
            Some(DecodingKey::from_secret(secret.expose().as_bytes()))
        }
        _ => None,
    };
    let authenticator = JwtAuthenticator::new(JwtSettings {
        algorithm,
        key,
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        leeway_ms: u64::try_from(config.jwt_leeway.as_millis()).unwrap_or(u64::MAX),
        default_topics: config.default_topics.clone(),
        tiers: config
            .tiers
            .iter()
            .map(|(name, _)| name.to_owned())
            .collect(),
    });
    Ok(Gateway::new(GatewayParts {
        settings: GatewaySettings::from_config(config),
        runtime: Arc::new(RuntimeConfig::new(config)),
        authenticator: Arc::new(authenticator),
        preferences: Arc::new(InMemoryPreferenceStore::new(PREFERENCE_USERS)),
        history: Arc::new(InMemoryHistoryStore::new(
            config.history_size,
            u64::try_from(config.history_ttl.as_millis()).unwrap_or(u64::MAX),
            config.history_max_bytes,
        )),
        clock: Arc::new(SystemClock),
    }))
}

/// The periodic work: the heartbeat/timeout sweep and the metrics upkeep.
async fn housekeeping(app: Arc<App>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let report = app.gateway.sweep();
        if report != herald_core::SweepReport::default() {
            tracing::debug!(?report, "sweep");
        }
        ticks += 1;
        if ticks.is_multiple_of(20) {
            app.metrics.run_upkeep();
        }
    }
}

/// Resident memory of this process in bytes, from `/proc/self/statm` (0 where unavailable).
pub(crate) fn rss_bytes() -> u64 {
    const PAGE_SIZE: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE_SIZE)
}

/// The SIGTERM and SIGINT handlers, installed up front.
struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs both handlers; from now on the signals no longer end the process by default.
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// Cancels `shutdown` on the first SIGTERM or SIGINT.
    async fn wait(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    }
}
