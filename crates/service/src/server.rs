//! The listener: accepts TCP connections, serves HTTP/1.1 on them with hyper, and drains
//! everything on SIGTERM or SIGINT.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use herald_config::{BaseConfig, JwtAlgorithm, RuntimeConfig};
use herald_core::{
    Gateway, GatewayParts, GatewaySettings, InMemoryHistoryStore, InMemoryPreferenceStore,
    JwtAuthenticator, JwtSettings,
};
use herald_utils::SystemClock;
use jsonwebtoken::{Algorithm, DecodingKey};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::{
    net::{TcpListener, TcpSocket},
    signal::unix::{Signal, SignalKind, signal},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::app::{App, Role};

/// How often the heartbeat and timeout sweep runs; token expiry is enforced within this.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Bucket bounds of every latency histogram, in seconds (10 us to 60 s).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Pending connections the kernel queues for `accept` (tokio's default is 128).
const LISTEN_BACKLOG: u32 = 4096;
/// Users whose preferences the in-memory store remembers.
const PREFERENCE_USERS: usize = 100_000;

/// Runs the server until a shutdown signal, then drains within `shutdown_grace`.
///
/// Draining: readiness turns false at once and new upgrades and publications are refused
/// (503), while the listeners keep answering so probes see it; every WebSocket flushes its
/// queue and closes with 1001; the fan-out worker finishes the accepted operations. Then the
/// listeners stop and open HTTP connections are closed gracefully.
pub(crate) async fn run(config: BaseConfig) -> anyhow::Result<()> {
    let bind = |addr: SocketAddr| -> anyhow::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .with_context(|| format!("cannot create a socket for {addr}"))?;
        // Restarts must not wait for TIME_WAIT sockets of the previous process.
        socket
            .set_reuseaddr(true)
            .with_context(|| format!("cannot configure {addr}"))?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which saves a
        // setsockopt per connection; frames are batched by the writer, not by Nagle.
        socket
            .set_nodelay(true)
            .with_context(|| format!("cannot configure {addr}"))?;
        socket
            .bind(addr)
            .with_context(|| format!("cannot listen on {addr}"))?;
        // A deep accept queue absorbs reconnect storms (the kernel caps it at somaxconn).
        socket
            .listen(LISTEN_BACKLOG)
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let listener = bind(config.listen).context("HERALD_LISTEN (listen)")?;
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(bind(addr).context("HERALD_ADMIN_LISTEN (admin_listen)")?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    // The handlers are installed before "listening" is announced: a SIGTERM sent as soon as
    // the server is up must drain it, not kill it with the default disposition.
    let signals = ShutdownSignals::install()?;
    if let Some(admin) = &admin_listener {
        let admin_addr = admin
            .local_addr()
            .context("admin listener has no local address")?;
        tracing::info!(addr = %admin_addr, "admin listening");
    }
    tracing::info!(%addr, "listening");

    // Fixed buckets make every histogram a Prometheus histogram: recording is a bucket
    // increment, where the default summaries keep samples that the upkeep then sorts (a
    // stall every few seconds at tens of thousands of samples per second).
    let metrics = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS_SECONDS)
        .context("cannot configure the metrics buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let gateway = build_gateway(&config)?;
    let sessions = TaskTracker::new();
    let app = Arc::new(App {
        config,
        gateway,
        metrics,
        sessions: sessions.clone(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.wait(shutdown.clone()));
    tokio::spawn(housekeeping(Arc::clone(&app), shutdown.clone()));
    let worker = app.gateway.clone();
    // The fan-out worker finishes the operations already accepted before the process exits.
    sessions.spawn(async move { worker.run_operations().await });

    let stop_listening = CancellationToken::new();
    let http = TaskTracker::new();
    let main_role = if admin_listener.is_some() {
        Role::Public
    } else {
        Role::All
    };
    let mut listeners = vec![tokio::spawn(accept_loop(
        listener,
        main_role,
        Arc::clone(&app),
        stop_listening.clone(),
        http.clone(),
    ))];
    if let Some(admin) = admin_listener {
        listeners.push(tokio::spawn(accept_loop(
            admin,
            Role::Admin,
            Arc::clone(&app),
            stop_listening.clone(),
            http.clone(),
        )));
    }

    shutdown.cancelled().await;
    let grace = app.config.shutdown_grace;
    tracing::info!(
        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        "shutting down"
    );
    let deadline = tokio::time::Instant::now() + grace;
    app.gateway.begin_shutdown();
    sessions.close();
    if tokio::time::timeout_at(deadline, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed; dropping the remaining connections");
    }
    stop_listening.cancel();
    for listener in listeners {
        let _ = listener.await;
    }
    http.close();
    // Idle keep-alive connections close at once; a request in flight gets the rest of the grace.
    let _ = tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + Duration::from_millis(100)),
        http.wait(),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections on `listener` and serves each (`conn::serve`) until `stop`.
async fn accept_loop(
    listener: TcpListener,
    role: Role,
    app: Arc<App>,
    stop: CancellationToken,
    http: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
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
        // Elsewhere accepted sockets may not inherit the listener's TCP_NODELAY.
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        http.spawn(crate::conn::serve(
            Arc::clone(&app),
            role,
            stream,
            stop.clone(),
        ));
    }
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
