//! TLS on the listeners: `wss://` and `https://` with a certificate the test made, SIGHUP
//! reload with an open connection surviving, and the start-up errors of unusable files.

use herald_tests::{
    TestCa, TestServer, TlsFiles, https_get, run_herald, tls_connect, token, wss_connect, wss_recv,
    wss_send,
};
use serde_json::json;

#[tokio::test]
async fn wss_and_https_are_served_with_the_configured_certificate() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let leaf = ca.issue()?;
    let files = TlsFiles::write("serve", &leaf)?;
    let admin_leaf = ca.issue()?;
    let admin_files = TlsFiles::write("serve-admin", &admin_leaf)?;
    let server = TestServer::start(&[
        ("HERALD_TLS_CERT_FILE", &files.cert_str()),
        ("HERALD_TLS_KEY_FILE", &files.key_str()),
        ("HERALD_ADMIN_LISTEN", "127.0.0.1:0"),
        ("HERALD_ADMIN_TLS_CERT_FILE", &admin_files.cert_str()),
        ("HERALD_ADMIN_TLS_KEY_FILE", &admin_files.key_str()),
    ])
    .await?;
    let connector = ca.connector()?;
    let (mut ws, presented, connected) =
        wss_connect(&connector, server.addr, &token("alice", json!({}))).await?;
    assert_eq!(presented, leaf.der, "the main listener's certificate");
    assert_eq!(connected["data"]["userId"], "alice");
    wss_send(
        &mut ws,
        &json!({"type": "subscribe", "messageId": "s", "data": {"topic": "chat"}}),
    )
    .await?;
    assert_eq!(wss_recv(&mut ws).await?["type"], "ack");
    wss_send(
        &mut ws,
        &json!({"type": "publish", "messageId": "p", "data": {"topic": "chat", "data": {"n": 1}}}),
    )
    .await?;
    // The message and the ack, perhaps in one `batch` frame.
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = wss_recv(&mut ws).await?;
        match frame["type"].as_str() {
            Some("batch") => got.extend(frame["data"].as_array().cloned().unwrap_or_default()),
            _ => got.push(frame),
        }
    }
    got.sort_by_key(|frame| frame["type"].to_string());
    assert_eq!(got[0]["type"], "ack", "{got:?}");
    assert_eq!(got[1]["data"], json!({"n": 1}), "{got:?}");
    // HTTP on both listeners is HTTPS.
    let admin = server.admin_addr.expect("an admin listener");
    let (status, body) = https_get(&connector, admin, "/health/live").await?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = https_get(&connector, server.addr, "/api/stats").await?;
    assert_eq!(status, 401, "served, and the API key is still required");
    let admin_tls = tls_connect(&connector, admin).await?;
    assert_eq!(
        herald_tests::peer_leaf(&admin_tls),
        Some(admin_leaf.der),
        "the admin listener's own certificate"
    );
    // Plaintext on a TLS listener gets no answer.
    assert!(server.publish("chat", json!(1)).await.is_err());
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_survive() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let first = ca.issue()?;
    let files = TlsFiles::write("reload", &first)?;
    let mut server = TestServer::start(&[
        ("HERALD_TLS_CERT_FILE", &files.cert_str()),
        ("HERALD_TLS_KEY_FILE", &files.key_str()),
    ])
    .await?;
    let connector = ca.connector()?;
    let (mut open, presented, _) =
        wss_connect(&connector, server.addr, &token("alice", json!({}))).await?;
    assert_eq!(presented, first.der);

    // A pair that cannot be used is refused and the current one stays.
    std::fs::write(files.key(), "not a key")?;
    server.sighup().await?;
    let line = server.log_line_containing("not reloaded").await?;
    assert!(
        line.to_string().contains("holds no PEM private key"),
        "{line}"
    );
    let (_, presented, _) = wss_connect(&connector, server.addr, &token("bob", json!({}))).await?;
    assert_eq!(presented, first.der, "still the first certificate");

    let second = ca.issue()?;
    files.replace(&second)?;
    server.sighup().await?;
    server
        .log_line_containing("TLS certificate reloaded")
        .await?;
    let (_, presented, _) =
        wss_connect(&connector, server.addr, &token("carol", json!({}))).await?;
    assert_eq!(
        presented, second.der,
        "a new connection sees the new certificate"
    );

    // The connection opened before both reloads still works.
    wss_send(
        &mut open,
        &json!({"type": "ping", "messageId": "still-here"}),
    )
    .await?;
    let pong = wss_recv(&mut open).await?;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["messageId"], "still-here");
    Ok(())
}

#[tokio::test]
async fn a_missing_file_or_a_key_of_another_certificate_refuses_to_start() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let leaf = ca.issue()?;
    let files = TlsFiles::write("refuse", &leaf)?;
    let secret = ("HERALD_JWT_SECRET", herald_tests::SECRET);
    let missing = files.cert().with_file_name("absent.pem");
    let output = run_herald(
        &[],
        &[
            secret,
            ("HERALD_TLS_CERT_FILE", &missing.to_string_lossy()),
            ("HERALD_TLS_KEY_FILE", &files.key_str()),
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("HERALD_TLS_CERT_FILE (tls_cert_file): cannot read")
            && stderr.contains("absent.pem"),
        "{stderr}"
    );
    let other = ca.issue()?;
    std::fs::write(files.key(), &other.key_pem)?;
    let output = run_herald(
        &[],
        &[
            secret,
            ("HERALD_TLS_CERT_FILE", &files.cert_str()),
            ("HERALD_TLS_KEY_FILE", &files.key_str()),
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "HERALD_TLS_KEY_FILE (tls_key_file): the private key does not match the certificate of HERALD_TLS_CERT_FILE (tls_cert_file)"
        ),
        "{stderr}"
    );
    Ok(())
}
