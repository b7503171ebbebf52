//! Python's `websockets` client, for interoperability tests: a virtual environment under the
//! target directory with a pinned `websockets` from PyPI, created on first use (`python3` with
//! its `venv` module must be installed; a missing one fails the test with how to install it).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::server::herald_bin;

/// The `websockets` release the tests run against.
const WEBSOCKETS: &str = "websockets==17.4";

/// The virtual environment's `python`, with the pinned `websockets` installed: made under
/// `<target>/py-websockets` when it is not there yet (built aside and renamed into place, so an
/// interrupted install is never taken for a finished one).
pub async fn python_websockets() -> anyhow::Result<PathBuf> {
    let bin = herald_bin()?;
    let target = bin
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in <target>/<profile>", bin.display()))?;
    let venv = target.join("py-websockets");
    let python = venv.join("bin").join("python");
    if python.is_file() {
        return Ok(python);
    }
    let building = target.join(format!("py-websockets.{}", std::process::id()));
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&building)
        .status()
        .await
        .context("cannot run python3: install it (Debian: apt-get install python3 python3-venv)")?;
    if !made.success() {
        bail!(
            "`python3 -m venv` failed: install python3-venv (Debian: apt-get install python3-venv)"
        );
    }
    let installed = Command::new(building.join("bin").join("pip"))
        .args(["install", "--quiet", WEBSOCKETS])
        .status()
        .await
        .context("cannot run the virtual environment's pip")?;
    if !installed.success() {
        bail!("`pip install {WEBSOCKETS}` failed (PyPI must be reachable the first time)");
    }
    if std::fs::rename(&building, &venv).is_err() {
        // Another test run finished first; its environment serves.
        let _ = std::fs::remove_dir_all(&building);
    }
    Ok(python)
}
