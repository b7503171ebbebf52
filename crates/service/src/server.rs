//! The composition root at run time: builds the gateway from its seams, binds the listeners,
//! runs the housekeeping, and drains everything on SIGTERM or SIGINT.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use herald_config::{BaseConfig, RuntimeConfig};
use herald_core::{
    Broker, EventStore, Gateway, GatewayParts, GatewaySettings, InMemoryBroker,
    InMemoryHistoryStore, InMemoryPreferenceStore, PreferenceStore,
};
use herald_memory::MemoryMonitor;
use herald_monitoring::{HealthChecker, MetricsReporter};
use herald_redis::{RedisBroker, RedisEventStore, RedisPreferenceStore, RedisSettings};
use herald_utils::{BreakerSettings, BreakerState, SystemClock};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    abuse::Shield,
    app::{App, Role},
    capacity::{self, Capacity},
    checks::{EventLoopLag, MemoryHealth, RedisHealth},
    jwt::{JwtAuthenticator, JwtSettings},
    listener::{DeadPeers, Edge, accept_loop, bind},
    pressure::{self, Memory},
    signals::{ReloadSignal, ShutdownSignals},
    tls::Tls,
};

/// How often the heartbeat and timeout sweep runs; token expiry is enforced within this.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Sweeps between two metrics upkeeps (`MetricsReporter::UPKEEP_INTERVAL`).
const UPKEEP_TICKS: u64 = 20;
/// Sweeps between two capacity-forecast samples (`capacity::TICK`).
const CAPACITY_TICKS: u64 = capacity::TICK.as_millis() as u64 / SWEEP_INTERVAL.as_millis() as u64;
/// Sweeps between two memory ticks (`pressure::TICK`: sample, degrade, judge leaks, clean up).
const MEMORY_TICKS: u64 = pressure::TICK.as_millis() as u64 / SWEEP_INTERVAL.as_millis() as u64;
/// Users whose preferences the in-memory store remembers.
const PREFERENCE_USERS: usize = 100_000;
/// How often the per-address and per-key rate state is trimmed (`Shield::upkeep`).
const SHIELD_UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The TLS of each listener, where configured (loaded, and checked, before the runtime starts).
pub(crate) struct ListenerTls {
    /// The main listener's.
    pub(crate) main: Option<Tls>,
    /// The admin listener's.
    pub(crate) admin: Option<Tls>,
}

/// Runs the server until a shutdown signal, then drains within `shutdown_grace`. Tokens are
/// verified with `jwt`, listeners with `tls` terminate TLS (reloaded on SIGHUP);
/// `on_listening` is called with the main listener's address once it accepts connections.
///
/// Draining: readiness turns false at once and new upgrades and publications are refused
/// (503), while the listeners keep answering so probes see it; every WebSocket flushes its
/// queue and closes with 1001; the fan-out worker finishes the accepted operations. Then the
/// listeners stop and open HTTP connections are closed gracefully.
pub(crate) async fn run(
    config: BaseConfig,
    jwt: JwtSettings,
    tls: ListenerTls,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let dead_peers = DeadPeers::from_config(&config);
    let listener = bind(config.listen, &dead_peers).context("HERALD_LISTEN (listen)")?;
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(bind(addr, &dead_peers).context("HERALD_ADMIN_LISTEN (admin_listen)")?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    let admin_addr = admin_listener
        .as_ref()
        .map(|admin| admin.local_addr())
        .transpose()
        .context("admin listener has no local address")?;
    // The handlers are installed before "listening" is announced: a SIGTERM sent as soon as
    // the server is up must drain it, not kill it with the default disposition.
    let signals = ShutdownSignals::install()?;
    let reload = ReloadSignal::install()?;

    let metrics = MetricsReporter::install().context("cannot install the metrics recorder")?;
    let monitor = pressure::monitor(&config)?;
    let node_id = node_id(&config);
    let (cluster, redis) = join_cluster(&config, &node_id).await?;
    let gateway = build_gateway(&config, jwt, Arc::clone(&monitor), cluster);
    let memory = Arc::new(Memory::new(&config, monitor, &gateway));
    let lag = Arc::new(EventLoopLag::default());
    let mut health = HealthChecker::new()
        .required(gateway.clone())
        .required(MemoryHealth::new(Arc::clone(&memory)))
        .informational(Arc::clone(&lag));
    if let Some(redis) = redis {
        health = health.informational(RedisHealth::new(redis));
    }
    let sessions = TaskTracker::new();
    let shield = Arc::new(Shield::new(&config, Arc::new(SystemClock)));
    let config_max_connections = config.max_connections;
    let app = Arc::new(App {
        config,
        node_id,
        gateway,
        metrics,
        memory,
        lag,
        capacity: Capacity::new(config_max_connections),
        health,
        sessions: sessions.clone(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.wait(shutdown.clone()));
    let main_tls = tls.main.map(Arc::new);
    let admin_tls = tls.admin.map(Arc::new);
    let reloadable = main_tls.iter().chain(&admin_tls).cloned().collect();
    tokio::spawn(reload.run(reloadable, shutdown.clone()));
    tokio::spawn(shield_upkeep(Arc::clone(&shield), shutdown.clone()));
    tokio::spawn(housekeeping(Arc::clone(&app), shutdown.clone()));
    let worker = app.gateway.clone();
    // The fan-out worker finishes the operations already accepted before the process exits.
    sessions.spawn(async move { worker.run_operations().await });

    if let Some(admin_addr) = admin_addr {
        tracing::info!(addr = %admin_addr, "admin listening");
    }
    tracing::info!(%addr, tls = main_tls.is_some(), "listening");
    if app.config.api_keys.is_empty() {
        tracing::warn!(
            "no API keys are configured (HERALD_API_KEYS): every /api/* request is refused with 401"
        );
    }
    on_listening(addr);

    let stop_listening = CancellationToken::new();
    let http = TaskTracker::new();
    let main_role = if admin_listener.is_some() {
        Role::Public
    } else {
        Role::All
    };
    let edge = |role, tls| Edge {
        role,
        tls,
        shield: Arc::clone(&shield),
        #[cfg(not(target_os = "linux"))]
        dead_peers,
    };
    let mut listeners = vec![tokio::spawn(accept_loop(
        listener,
        edge(main_role, main_tls),
        Arc::clone(&app),
        stop_listening.clone(),
        http.clone(),
    ))];
    if let Some(admin) = admin_listener {
        listeners.push(tokio::spawn(accept_loop(
            admin,
            edge(Role::Admin, admin_tls),
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
    if let Some(redis) = app.gateway.stats().redis
        && redis.outbox_depth > 0
    {
        tracing::warn!(
            operations = redis.outbox_depth,
            "redis is unreachable: operations this node accepted and delivered are not replayed and never reach the other nodes"
        );
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

/// This node's name: the configured one, else `<host name>-<process id>`.
fn node_id(config: &BaseConfig) -> String {
    if let Some(id) = &config.node_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "herald".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The seams a node shares with the other nodes of its cluster.
struct Shared {
    broker: Arc<dyn Broker>,
    preferences: Arc<dyn PreferenceStore>,
    events: Option<Arc<dyn EventStore>>,
}

/// The shared seams: over Redis when `HERALD_REDIS_URL` is set (many nodes as one: the broker,
/// pending critical events and preferences, all behind the broker's circuit breaker, which is
/// also returned for its health check), else the embedded ones (one node, nothing to forward,
/// events and preferences in memory).
async fn join_cluster(
    config: &BaseConfig,
    node_id: &str,
) -> anyhow::Result<(Shared, Option<RedisBroker>)> {
    let Some(url) = &config.redis_url else {
        let shared = Shared {
            broker: Arc::new(InMemoryBroker::new()),
            preferences: Arc::new(InMemoryPreferenceStore::new(PREFERENCE_USERS)),
            events: None,
        };
        return Ok((shared, None));
    };
    let history_size = if config.history_ttl.is_zero() {
        0
    } else {
        config.history_size
    };
    let settings = RedisSettings {
        url: url.expose().to_owned(),
        key_prefix: config.redis_key_prefix.clone(),
        node_id: node_id.to_owned(),
        command_timeout: config.redis_command_timeout,
        connect_timeout: config.redis_connect_timeout,
        history_size,
        history_retention: config.history_ttl,
        breaker: BreakerSettings {
            failure_threshold: config.redis_breaker_failures,
            open_for: config.redis_breaker_open,
            half_open_probes: config.redis_breaker_probes,
        },
        outbox_size: config.redis_outbox_size,
    };
    let context = "HERALD_REDIS_URL (redis_url)";
    let broker = RedisBroker::connect(settings.clone(), Arc::new(SystemClock))
        .await
        .context(context)?;
    let breaker = broker.breaker().clone();
    let events = RedisEventStore::connect(settings.clone(), breaker.clone())
        .await
        .context(context)?;
    let preferences = RedisPreferenceStore::connect(settings, breaker)
        .await
        .context(context)?;
    if broker.breaker().state() == BreakerState::Closed {
        tracing::info!(node = node_id, "joined the cluster over redis");
    }
    let shared = Shared {
        broker: Arc::new(broker.clone()),
        preferences: Arc::new(preferences),
        events: Some(Arc::new(events)),
    };
    Ok((shared, Some(broker)))
}

/// Builds the gateway and its seams from the configuration.
fn build_gateway(
    config: &BaseConfig,
    jwt: JwtSettings,
    memory: Arc<MemoryMonitor>,
    shared: Shared,
) -> Gateway {
    Gateway::new(GatewayParts {
        settings: GatewaySettings::from_config(config),
        runtime: Arc::new(RuntimeConfig::new(config)),
        authenticator: Arc::new(JwtAuthenticator::new(jwt)),
        preferences: shared.preferences,
        history: Arc::new(InMemoryHistoryStore::new(
            config.history_size,
            u64::try_from(config.history_ttl.as_millis()).unwrap_or(u64::MAX),
            config.history_max_bytes,
        )),
        events: shared.events,
        clock: Arc::new(SystemClock),
        broker: shared.broker,
        memory,
    })
}

/// Trims the per-address and per-key rate state every [`SHIELD_UPKEEP_INTERVAL`].
async fn shield_upkeep(shield: Arc<Shield>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SHIELD_UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => shield.upkeep(),
        }
    }
}

/// The periodic work: the heartbeat/timeout sweep, the memory sample and the metrics upkeep.
async fn housekeeping(app: Arc<App>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        let due = tokio::select! {
            () = shutdown.cancelled() => return,
            due = interval.tick() => due,
        };
        app.lag
            .record(tokio::time::Instant::now().saturating_duration_since(due));
        let report = app.gateway.sweep();
        if report != herald_core::SweepReport::default() {
            tracing::debug!(?report, "sweep");
        }
        ticks += 1;
        if ticks.is_multiple_of(MEMORY_TICKS) {
            app.memory.tick(&app.gateway);
        }
        if ticks.is_multiple_of(CAPACITY_TICKS) {
            app.capacity.tick(&app.gateway);
        }
        if ticks.is_multiple_of(UPKEEP_TICKS) {
            app.metrics.run_upkeep();
        }
    }
}
