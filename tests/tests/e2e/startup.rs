//! Start-up, configuration errors, liveness and signal handling.

use herald_tests::TestServer;
use tokio::process::Command;

#[tokio::test]
async fn live_answers_200_and_sigterm_exits_zero() -> anyhow::Result<()> {
    let mut server = TestServer::start(&[]).await?;
    let (status, _, _) = server.request("GET", "/health/live", None, false).await?;
    assert_eq!(status, 200);
    let exit = server.terminate().await?;
    assert!(exit.success(), "exit status {exit}");
    Ok(())
}

async fn run_with_env(env: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let bin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/herald");
    let output = Command::new(bin)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .await?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn invalid_settings_exit_non_zero_naming_the_setting() -> anyhow::Result<()> {
    for (value, expected) in [
        ("abc", "expected a positive integer"),
        ("0", "expected an integer from 1"),
    ] {
        let (code, stderr) = run_with_env(&[("HERALD_MAX_PAYLOAD_BYTES", value)]).await?;
        assert_ne!(code, 0);
        assert!(
            stderr.contains("HERALD_MAX_PAYLOAD_BYTES (max_payload_bytes)"),
            "{stderr}"
        );
        assert!(stderr.contains(expected), "{stderr}");
    }
    let (code, stderr) =
        run_with_env(&[("HERALD_CONFIG_TYPO", "1"), ("HERALD_LISTEN", "nope")]).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("HERALD_LISTEN (listen)"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn print_config_redacts_secrets() -> anyhow::Result<()> {
    let bin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/herald");
    let output = Command::new(bin)
        .arg("--print-config")
        .env_clear()
        .env("HERALD_JWT_SECRET", "super-secret-value-that-must-not-leak")
        .env("HERALD_API_KEYS", "key-one, key-two")
        .output()
        .await?;
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout)?;
    assert!(printed.contains("max_payload_bytes = 102400"), "{printed}");
    assert!(!printed.contains("super-secret"), "{printed}");
    assert!(!printed.contains("key-one"), "{printed}");
    Ok(())
}
