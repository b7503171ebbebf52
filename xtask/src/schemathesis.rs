//! `cargo xtask ci`'s contract check: schemathesis, installed into a virtual environment under
//! `target/`, sends generated requests from docs/openapi.yaml to the real `herald` binary and
//! fails on any 5xx and on any response that breaks the document's schemas.

use std::{
    env, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{
    Result,
    bench::{free_port, stop, wait_until_listening},
};

/// The schemathesis release the run is pinned to (its command line changed between majors).
const VERSION: &str = "4.32.5";
/// The API key the server is started with.
const API_KEY: &str = "schemathesis-key";
/// Generated requests per operation: about 10 s in all on a 2-core machine.
const MAX_EXAMPLES: &str = "20";
/// A fixed seed, so a failure in CI is reproducible and a pass is not luck.
const SEED: &str = "1";

/// Runs schemathesis against `target/debug/herald` (built by `ci` before the tests), with the
/// checks `not_a_server_error` and `response_schema_conformance`.
pub(crate) fn schemathesis(root: &Path) -> Result {
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let out = target_dir.join("schemathesis");
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let tool = install(&out.join("venv"))?;

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log = out.join("herald.log");
    let log_file =
        fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut server = Command::new(target_dir.join("debug").join("herald"))
        .env_clear()
        .env("HERALD_LISTEN", addr.to_string())
        .env("HERALD_JWT_SECRET", "schemathesis-secret-0123456789abcdef")
        .env("HERALD_API_KEYS", API_KEY)
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| {
            format!("cannot start herald (built by `cargo build -p herald-service`?): {e}")
        })?;
    let run = wait_until_listening(&mut server, addr, &log).and_then(|()| {
        let url = format!("http://{addr}");
        let authorization = format!("Authorization: Bearer {API_KEY}");
        let args = [
            "run",
            "docs/openapi.yaml",
            "--url",
            &url,
            "--header",
            &authorization,
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            "--generation-database",
            "none",
            // An event stream lasts as long as its reader: no response to check ever ends.
            "--exclude-path",
            "/dashboard/stream",
            "--request-timeout",
            "10",
            "--no-color",
        ];
        println!("$ {} {}", tool.display(), args.join(" "));
        let status = Command::new(&tool)
            .args(args)
            .current_dir(root)
            .status()
            .map_err(|e| format!("cannot run schemathesis: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "schemathesis found responses that break docs/openapi.yaml or a 5xx ({status}); \
                 the server's log is {}",
                log.display()
            ))
        }
    });
    stop(&mut server);
    run
}

/// The `schemathesis` command of a virtual environment at `venv`, created and installed into
/// when missing (with `python3-venv` from apt when `python3 -m venv` cannot run).
fn install(venv: &Path) -> Result<PathBuf> {
    let tool = venv.join("bin").join("schemathesis");
    let pip = venv.join("bin").join("pip");
    if installed_version(&pip).as_deref() == Some(VERSION) {
        return Ok(tool);
    }
    if !pip.is_file() && run(Command::new("python3").arg("-m").arg("venv").arg(venv)).is_err() {
        println!("xtask: `python3 -m venv` failed; installing python3-venv");
        let _ = fs::remove_dir_all(venv);
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args(["install", "-y", "python3-venv"]))?;
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    run(Command::new(&pip).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("schemathesis=={VERSION}"),
    ]))?;
    Ok(tool)
}

/// The version of schemathesis `pip` has installed, if any.
fn installed_version(pip: &Path) -> Option<String> {
    let output = Command::new(pip)
        .args(["show", "--disable-pip-version-check", "schemathesis"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8(output.stdout)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .map(str::to_owned)
}

/// Runs `command`, echoing it first; an error unless it exits with success.
fn run(command: &mut Command) -> Result {
    let shown = format!("{command:?}");
    println!("$ {shown}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}
