//! The browser client (clients/js): installs Node.js and npm from Debian when missing, then
//! `npm ci`, builds the module (`tsc`) and runs its unit tests (`node --test`). The end-to-end
//! browser test (tests/tests/e2e/browser_client.rs) loads the built module, so this runs
//! before the Rust tests.

use std::{path::Path, process::Command};

use crate::{Result, apt};

/// Builds and tests the browser client in `root/clients/js`.
pub(crate) fn build_and_test(root: &Path) -> Result {
    if !has_npm() {
        println!("xtask: npm is missing; installing Debian's nodejs and npm");
        apt::install(&["nodejs", "npm"])?;
    }
    let dir = root.join("clients/js");
    for args in [
        &["ci", "--no-audit", "--no-fund"][..],
        &["run", "build"],
        &["test"],
    ] {
        npm(&dir, args)?;
    }
    Ok(())
}

/// Whether `npm` runs.
fn has_npm() -> bool {
    Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Runs `npm <args>` in `dir`, echoing it first.
fn npm(dir: &Path, args: &[&str]) -> Result {
    println!("$ (cd {}) npm {}", dir.display(), args.join(" "));
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`npm {}` failed with {status}", args.join(" ")))
    }
}
