//! `herald --dev`: loopback only, and the credentials it prints work as printed: a WebSocket
//! connects with the token and receives what an HTTP publish with the API key sends.

use std::process::Stdio;

use herald_tests::{TIMEOUT, WsClient, herald_bin, run_herald};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    process::Command,
};

/// What a person copies from the dev-mode banner.
#[derive(Debug, Default)]
struct Banner {
    /// The server's `host:port`, from the printed `curl` line.
    addr: String,
    /// The printed API key.
    api_key: String,
    /// The printed token for `alice`.
    token: String,
}

/// Reads the banner off herald's stdout, up to its last line (the browser snippet's
/// `ws.onopen`).
async fn read_banner(stdout: tokio::process::ChildStdout) -> anyhow::Result<Banner> {
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Banner::default();
    let mut printed = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            let text = line.trim();
            if let Some(key) = text.strip_prefix("HERALD_API_KEYS=") {
                key.clone_into(&mut banner.api_key);
            }
            if text.starts_with("token for \"alice\"") {
                text.rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .clone_into(&mut banner.token);
            }
            if let Some(rest) = text.strip_prefix("curl -sS http://") {
                rest.split('/')
                    .next()
                    .unwrap_or_default()
                    .clone_into(&mut banner.addr);
            }
            let done = text.starts_with("ws.onopen");
            printed.push(line);
            if done {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("stdout ended after {printed:#?}")
    };
    tokio::time::timeout(TIMEOUT, read).await??;
    anyhow::ensure!(
        !banner.addr.is_empty() && !banner.api_key.is_empty() && !banner.token.is_empty(),
        "incomplete banner {banner:?}: {printed:#?}"
    );
    Ok(banner)
}

/// `POST path` with `body` and a bearer key over a fresh connection; status and JSON answer.
async fn post(addr: &str, path: &str, key: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8(response)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status: {head}"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn dev_mode_prints_a_token_and_key_that_work() -> anyhow::Result<()> {
    let mut child = Command::new(herald_bin()?)
        .arg("--dev")
        .env_clear()
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let banner = read_banner(stdout).await?;
    assert!(banner.addr.starts_with("127.0.0.1:"), "{banner:?}");

    let url = format!("ws://{}/ws?token={}", banner.addr, banner.token);
    let mut client = WsClient::connect_with(&url, &[]).await?;
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["data"]["userId"], "alice", "{connected}");
    client.subscribe("demo").await?;

    let publish = json!({"topic": "demo", "data": {"hello": "world"}});
    let (status, answer) = post(&banner.addr, "/api/publish", &banner.api_key, &publish).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["offset"], 1, "{answer}");
    let message = client.recv_data().await?;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["data"], json!({"hello": "world"}));

    // The printed key is the only one.
    let (status, answer) = post(&banner.addr, "/api/publish", "guess", &publish).await?;
    assert_eq!(status, 401, "{answer}");
    Ok(())
}

#[tokio::test]
async fn dev_mode_refuses_a_non_loopback_address() -> anyhow::Result<()> {
    for (args, env) in [
        (&["--dev"][..], &[("HERALD_LISTEN", "0.0.0.0:0")][..]),
        (&["--dev", "--listen", "0.0.0.0:0"][..], &[][..]),
        (
            &["--dev"][..],
            &[
                ("HERALD_LISTEN", "127.0.0.1:0"),
                ("HERALD_ADMIN_LISTEN", "0.0.0.0:0"),
            ][..],
        ),
    ] {
        let output = run_herald(args, env).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("--dev listens on loopback only"),
            "{stderr}"
        );
        assert!(stderr.contains("0.0.0.0:0"), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "no credentials printed: {output:?}"
        );
    }
    Ok(())
}
