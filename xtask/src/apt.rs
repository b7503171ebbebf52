//! Debian packages a task needs, installed with `apt-get` when missing: one helper for every
//! task (Chromium for the dashboard's browser tests, nginx + nchan for the benchmarks, and any
//! other system package a test needs, such as `redis-server`).

use std::process::Command;

use crate::Result;

/// Installs `packages` with `apt-get install -y --no-install-recommends` (non-interactive).
/// A fresh machine may have no package lists yet, so a failed install runs `apt-get update`
/// once and tries again. Echoes each command, as the other tasks do.
pub(crate) fn install(packages: &[&str]) -> Result {
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install()
        .or_else(|_| run(Command::new("apt-get").arg("update")).and_then(|()| install()))
        .map_err(|error| format!("cannot install {}: {error}", packages.join(" ")))
}

/// Runs `command`, echoing it first; an error unless it exits with success.
fn run(command: &mut Command) -> Result {
    let shown: Vec<_> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let shown = shown.join(" ");
    println!("$ {shown}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed with {status}"))
    }
}
