//! A real `redis-server` for the cluster tests: started by the test on a free port, killed
//! when dropped, and faulted on demand (killed and restarted on the same port, paused with
//! `SIGSTOP` and resumed with `SIGCONT`); and [`Cluster`], several `herald` nodes joined
//! through it.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    process::{Child, Command},
};

use crate::{TIMEOUT, TestServer};

/// A `redis-server` process on a port of its own, without persistence, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// The `redis-server` binary: `/usr/bin/redis-server`, else the first on `PATH`.
fn redis_server_bin() -> anyhow::Result<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/redis-server");
    if fixed.is_file() {
        return Ok(fixed);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .context(
            "redis-server is not installed: the cluster tests start their own Redis; install it \
             with `apt-get install redis-server` (cargo xtask ci does)",
        )
}

/// A port free right now on the loopback.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

impl RedisServer {
    /// Starts a Redis on a free port and waits until it answers `PING`.
    pub async fn start() -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut server = Self { child: None, addr };
        server.spawn().await?;
        Ok(server)
    }

    /// A Redis on a free port that is not started yet ([`restart`](Self::restart) starts
    /// it): for a node that starts before its Redis.
    pub fn unstarted() -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Ok(Self { child: None, addr })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(redis_server_bin()?)
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server")?;
        self.child = Some(child);
        self.wait_until(true).await
    }

    /// Waits until Redis answers `PING` (`true`) or stops answering it (`false`).
    async fn wait_until(&self, answering: bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.pings().await != answering {
            if tokio::time::Instant::now() > deadline {
                bail!("redis at {} never became answering={answering}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Whether Redis answers `PING` within 200 ms.
    async fn pings(&self) -> bool {
        let ping = async {
            let mut stream = TcpStream::connect(self.addr).await.ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut answer = [0_u8; 7];
            stream.read_exact(&mut answer).await.ok()?;
            Some(&answer == b"+PONG\r\n")
        };
        tokio::time::timeout(Duration::from_millis(200), ping)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// Kills Redis with `SIGKILL` (everything it held is lost: it has no persistence) and waits
    /// until the port no longer answers.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("redis is not running")?;
        child.kill().await.context("cannot kill redis-server")?;
        self.wait_until(false).await
    }

    /// Starts Redis again on the same port, empty (or for the first time, when
    /// [`unstarted`](Self::unstarted)).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    /// Pauses Redis with `SIGSTOP`: connections stay open and calls hang.
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    /// Resumes a paused Redis with `SIGCONT`.
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await?;
        self.wait_until(true).await
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("redis is not running")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused Redis must be resumed to die promptly; SIGKILL works either way.
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Several `herald` nodes joined through one Redis, named `node-0`, `node-1`, ...
pub struct Cluster {
    /// The nodes, in the order of their names.
    pub nodes: Vec<TestServer>,
}

impl Cluster {
    /// Starts `n` nodes on `redis`, each with `env` added.
    pub async fn start(
        redis: &RedisServer,
        n: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let url = redis.url();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("node-{i}");
            let mut all = vec![
                ("HERALD_REDIS_URL", url.as_str()),
                ("HERALD_NODE_ID", name.as_str()),
            ];
            all.extend_from_slice(env);
            nodes.push(TestServer::start(&all).await?);
        }
        Ok(Self { nodes })
    }
}
