//! [`StaticSite`]: a few files served over HTTP/1.1 on a free loopback port, for browser tests
//! of pages Herald does not serve itself (the browser client's test page).

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    task::JoinHandle,
};

/// Files by path, served until dropped. Every answer closes its connection.
pub struct StaticSite {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl StaticSite {
    /// Serves `files` (path, content type, body) on a free port of 127.0.0.1; any other path
    /// is answered 404.
    pub async fn serve(files: Vec<(&'static str, &'static str, Vec<u8>)>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let files: Arc<HashMap<&'static str, (&'static str, Vec<u8>)>> = Arc::new(
            files
                .into_iter()
                .map(|(path, kind, body)| (path, (kind, body)))
                .collect(),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let files = Arc::clone(&files);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("/");
                    let path = path.split('?').next().unwrap_or(path);
                    let answer = match files.get(path) {
                        Some((kind, body)) => {
                            let mut answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            answer.extend_from_slice(body);
                            answer
                        }
                        None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec(),
                    };
                    let _ = socket.write_all(&answer).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}
