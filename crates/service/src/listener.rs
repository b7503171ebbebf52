//! The listening sockets: binding them with the options a gateway needs, and the accept loop
//! that admits each connection (`abuse`) and hands it to `conn`, through TLS when the listener
//! has it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use herald_config::BaseConfig;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    abuse::Shield,
    app::{App, Role},
    tls::Tls,
};

/// Pending connections the kernel queues for `accept` (tokio's default is 128).
const LISTEN_BACKLOG: u32 = 4096;
/// How long the accept loop waits after a failed `accept` (out of file descriptors and the
/// like) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How accepted sockets find dead peers (`tcp_*` settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadPeers {
    /// Keepalive probes: idle time, interval and count; `None` turns keepalive off.
    keepalive: Option<(Duration, Duration, u32)>,
    /// `TCP_USER_TIMEOUT`; `None` leaves the kernel's default.
    user_timeout: Option<Duration>,
}

impl DeadPeers {
    /// The settings of `config`.
    pub(crate) fn from_config(config: &BaseConfig) -> Self {
        Self {
            keepalive: (!config.tcp_keepalive_idle.is_zero()).then_some((
                config.tcp_keepalive_idle,
                config.tcp_keepalive_interval,
                config.tcp_keepalive_probes,
            )),
            user_timeout: (!config.tcp_user_timeout.is_zero()).then_some(config.tcp_user_timeout),
        }
    }

    /// Sets the options on `socket`.
    fn apply(&self, socket: SockRef<'_>) -> std::io::Result<()> {
        if let Some((idle, interval, probes)) = self.keepalive {
            let keepalive = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(interval)
                .with_retries(probes);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// Binds a listening socket on `addr`.
pub(crate) fn bind(addr: SocketAddr, dead_peers: &DeadPeers) -> anyhow::Result<TcpListener> {
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
    // setsockopt per connection; frames are batched by the writer, not by Nagle. So do the
    // keepalive options and TCP_USER_TIMEOUT (`an_accepted_socket_finds_dead_peers` checks).
    socket
        .set_nodelay(true)
        .with_context(|| format!("cannot configure {addr}"))?;
    dead_peers
        .apply(SockRef::from(&socket))
        .with_context(|| format!("cannot configure keepalive on {addr}"))?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    // A deep accept queue absorbs reconnect storms (the kernel caps it at somaxconn).
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// What a listener puts in front of its connections.
#[derive(Clone)]
pub(crate) struct Edge {
    /// The listener's role.
    pub(crate) role: Role,
    /// TLS, when the listener terminates it.
    pub(crate) tls: Option<Arc<Tls>>,
    /// The per-address limits.
    pub(crate) shield: Arc<Shield>,
    /// Set on each accepted socket, where the listener's options are not inherited.
    #[cfg(not(target_os = "linux"))]
    pub(crate) dead_peers: DeadPeers,
}

/// Accepts connections on `listener` and serves each (`conn::serve`, tracked by `http`) until
/// `stop`. A connection over a per-address limit is closed at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    edge: Edge,
    app: Arc<App>,
    stop: CancellationToken,
    http: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(client) = edge.shield.accept(peer.ip()) else {
            // Counted by the shield; the socket is all it cost.
            continue;
        };
        // Elsewhere accepted sockets may not inherit the listener's options.
        #[cfg(not(target_os = "linux"))]
        {
            let _ = stream.set_nodelay(true);
            let _ = edge.dead_peers.apply(SockRef::from(&stream));
        }
        let app = Arc::clone(&app);
        match &edge.tls {
            None => http.spawn(crate::conn::serve(
                app,
                edge.role,
                stream,
                client,
                stop.clone(),
            )),
            Some(tls) => http.spawn(crate::conn::serve_tls(
                app,
                edge.role,
                stream,
                tls.acceptor(),
                client,
                stop.clone(),
            )),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted by a listener bound with `config`'s dead-peer options, and the
    /// client's end of it.
    async fn accepted_with(config: &BaseConfig) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = bind(
            "127.0.0.1:0".parse().expect("an address"),
            &DeadPeers::from_config(config),
        )
        .expect("binds");
        let addr = listener.local_addr().expect("bound");
        let client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let (accepted, _) = listener.accept().await.expect("accepts");
        (client, accepted)
    }

    #[tokio::test]
    async fn an_accepted_socket_finds_dead_peers() {
        let mut config = BaseConfig::default();
        config.tcp_keepalive_idle = Duration::from_secs(7);
        config.tcp_keepalive_interval = Duration::from_secs(3);
        config.tcp_keepalive_probes = 4;
        config.tcp_user_timeout = Duration::from_millis(12_500);
        let (_client, accepted) = accepted_with(&config).await;
        #[cfg(not(target_os = "linux"))]
        DeadPeers::from_config(&config)
            .apply(SockRef::from(&accepted))
            .expect("applies");
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().ok(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            socket.tcp_keepalive_interval().ok(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(socket.tcp_keepalive_retries().ok(), Some(4));
        assert_eq!(
            socket.tcp_user_timeout().ok().flatten(),
            Some(Duration::from_millis(12_500))
        );
        assert!(socket.tcp_nodelay().expect("TCP_NODELAY"));
    }

    #[tokio::test]
    async fn zero_turns_keepalive_and_the_user_timeout_off() {
        let mut config = BaseConfig::default();
        config.tcp_keepalive_idle = Duration::ZERO;
        config.tcp_user_timeout = Duration::ZERO;
        let (_client, accepted) = accepted_with(&config).await;
        let socket = SockRef::from(&accepted);
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(socket.tcp_user_timeout().ok().flatten(), None);
    }
}
