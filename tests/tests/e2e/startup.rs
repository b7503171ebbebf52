//! Start-up, configuration errors, liveness and signal handling.

use herald_tests::{TestServer, run_herald};

#[tokio::test]
async fn live_answers_200_and_sigterm_exits_zero() -> anyhow::Result<()> {
    let mut server = TestServer::start(&[]).await?;
    let (status, _, _) = server.request("GET", "/health/live", None, false).await?;
    assert_eq!(status, 200);
    let exit = server.terminate().await?;
    assert!(exit.success(), "exit status {exit}");
    Ok(())
}

/// Runs herald with only `env` and returns its exit code and stderr.
async fn run_with_env(env: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let output = run_herald(&[], env).await?;
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
async fn no_secret_exits_non_zero_with_one_line_naming_it_and_the_fix() -> anyhow::Result<()> {
    for env in [
        &[][..],
        &[("HERALD_JWT_ALGORITHM", "HS256"), ("HERALD_API_KEYS", "k")][..],
        &[("HERALD_JWT_SECRET", "")][..],
    ] {
        let (code, stderr) = run_with_env(env).await?;
        assert_eq!(code, 2, "{env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{env:?}: {stderr}");
        assert!(
            lines[0].starts_with("herald: configuration error: missing HERALD_JWT_SECRET"),
            "{stderr}"
        );
        assert!(lines[0].contains("set HERALD_JWT_SECRET"), "{stderr}");
        assert!(lines[0].contains("herald --dev"), "{stderr}");
    }
    // The public-key algorithms need their key file instead.
    let (code, stderr) = run_with_env(&[("HERALD_JWT_ALGORITHM", "RS256")]).await?;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("missing HERALD_JWT_PUBLIC_KEY_FILE"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn print_config_redacts_secrets() -> anyhow::Result<()> {
    let output = run_herald(
        &["--print-config"],
        &[
            ("HERALD_JWT_SECRET", "super-secret-value-that-must-not-leak"),
            ("HERALD_API_KEYS", "key-one, key-two"),
        ],
    )
    .await?;
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout)?;
    assert!(printed.contains("max_payload_bytes = 102400"), "{printed}");
    assert!(!printed.contains("super-secret"), "{printed}");
    assert!(!printed.contains("key-one"), "{printed}");
    Ok(())
}
