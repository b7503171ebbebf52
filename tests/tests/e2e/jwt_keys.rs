//! Public-key tokens: with `HERALD_JWT_ALGORITHM=ES256` the server reads the PEM key file
//! named by `HERALD_JWT_PUBLIC_KEY_FILE` at start-up and accepts tokens signed with its private
//! key only; a key file it cannot use stops the start with one line naming the setting.

use std::path::PathBuf;

use herald_tests::{TestServer, WsClient, now_secs, run_herald, sign, try_upgrade};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// A P-256 key pair made for these tests (`openssl ecparam -name prime256v1`).
const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeJDXd2MQmCVrdP1H
IRUJl8hIcTEEanW8FdWyA/PAWB2hRANCAATKwywzWas47RonB7Z7/Y7iMoOsuVRG
+Bb41a01SrFqukdixFOUN95FoVy+kMIqsrVlSGuenb+6dcQu2Q3iPIuQ
-----END PRIVATE KEY-----
";
/// The public half of [`PRIVATE_PEM`].
const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEysMsM1mrOO0aJwe2e/2O4jKDrLlU
RvgW+NWtNUqxarpHYsRTlDfeRaFcvpDCKrK1ZUhrnp2/unXELtkN4jyLkA==
-----END PUBLIC KEY-----
";

/// A file under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("herald-e2e-{}-{name}", std::process::id()));
        std::fs::write(&path, contents)?;
        Ok(Self(path))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn es256_tokens_are_verified_with_the_key_file() -> anyhow::Result<()> {
    let key = TempFile::new("es256-public.pem", PUBLIC_PEM)?;
    let server = TestServer::start(&[
        ("HERALD_JWT_ALGORITHM", "ES256"),
        ("HERALD_JWT_PUBLIC_KEY_FILE", key.path()),
    ])
    .await?;
    let claims = json!({"sub": "alice", "exp": now_secs() + 60, "topics": ["*"]});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(PRIVATE_PEM.as_bytes())?,
    )?;
    let mut client =
        WsClient::connect_with(&server.ws_url(&format!("?token={token}")), &[]).await?;
    let connected = client.recv().await?;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["data"]["userId"], "alice");

    // An HS256 token, whatever secret signed it, is another algorithm: refused.
    let answer = try_upgrade(&server, &format!("?token={}", sign(&claims)), &[]).await?;
    answer.assert_refused(401, "unauthorized");
    Ok(())
}

#[tokio::test]
async fn an_unusable_key_file_stops_the_start_naming_the_setting() -> anyhow::Result<()> {
    let garbage = TempFile::new("garbage.pem", "not a key")?;
    for (path, reason) in [
        ("/nonexistent/herald-key.pem", "cannot read"),
        (garbage.path(), "is not a valid PEM public key"),
    ] {
        let output = run_herald(
            &[],
            &[
                ("HERALD_JWT_ALGORITHM", "ES256"),
                ("HERALD_JWT_PUBLIC_KEY_FILE", path),
            ],
        )
        .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("HERALD_JWT_PUBLIC_KEY_FILE (jwt_public_key_file)"),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{stderr}");
    }
    Ok(())
}
