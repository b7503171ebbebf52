//! [`DropProxy`]: a TCP relay in front of a server that can cut every connection through it at
//! once, as a flaky network does, so a client that dials the proxy sees abrupt drops (no close
//! frame) it must recover from; it can also send new connections to another server, as a load
//! balancer does when a node goes away.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{AbortHandle, JoinHandle},
};

/// Relays connections from its own address to a target; [`DropProxy::sever_all`] cuts them.
pub struct DropProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where new connections are relayed to.
    target: Arc<Mutex<SocketAddr>>,
    /// The relays of the open connections.
    relays: Arc<Mutex<Vec<AbortHandle>>>,
    /// The accept loop, stopped when the proxy is dropped.
    acceptor: JoinHandle<()>,
}

impl DropProxy {
    /// A proxy on a free loopback port relaying to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let relays: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let target = Arc::new(Mutex::new(target));
        let acceptor = tokio::spawn({
            let (relays, target) = (Arc::clone(&relays), Arc::clone(&target));
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let target = *target.lock().unwrap_or_else(PoisonError::into_inner);
                    let relay = tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    relays
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(relay.abort_handle());
                }
            }
        });
        Ok(Self {
            addr,
            target,
            relays,
            acceptor,
        })
    }

    /// `ws://` URL of the proxy's `/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Relays the connections accepted from now on to `target`.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = target;
    }

    /// Cuts every connection relayed so far: both sockets are dropped mid-stream, without a
    /// WebSocket close. Answers how many were still open.
    pub fn sever_all(&self) -> usize {
        let relays =
            std::mem::take(&mut *self.relays.lock().unwrap_or_else(PoisonError::into_inner));
        relays
            .into_iter()
            .filter(|relay| !relay.is_finished())
            .map(|relay| relay.abort())
            .count()
    }
}

impl Drop for DropProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.sever_all();
    }
}
