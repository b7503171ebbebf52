//! `cargo xtask autobahn [--full]`: the Autobahn|Testsuite fuzzing client (`wstest -m
//! fuzzingclient`), every case or the quick scope `ci` runs (permessage-deflate's 12.* and 13.*
//! in part), against the echo endpoint of the real `herald` binary, which uses the same frame
//! reader, inflating layer and writer as `/ws`; fails on any case that is not passed strictly
//! (`OK`, or `INFORMATIONAL` where the suite only reports): a `NON-STRICT` case fails the run.
//!
//! The suite is Python 2 only. It is installed with pip into `target/autobahn/site` from the
//! first Python 2.7 found (`python2.7` on `PATH`, else pyenv's); a machine without one cannot
//! run it, which `ci` reports and moves on from (the suite is not a Debian package).

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

/// The suite's release (its last, for Python 2.7).
const VERSION: &str = "25.10.1";

/// The compression cases of the quick run (`ci`): each kind of payload and each offer once with
/// small messages, and the large, barely compressible messages that once came back truncated.
const QUICK_COMPRESSION_CASES: &[&str] = &[
    "12.1.1", "12.1.9", "12.2.9", "12.3.9", "12.4.9", "12.5.9", "12.5.18", "13.1.1", "13.2.1",
    "13.3.1", "13.4.1", "13.5.1", "13.6.1", "13.7.1",
];

/// Whether this machine has what the suite needs; `None` says why not.
pub(crate) fn python2() -> std::result::Result<PathBuf, String> {
    if let Some(found) = which("python2.7") {
        // pyenv's shim answers even when no 2.7 is selected; ask it to run.
        if Command::new(&found)
            .arg("-c")
            .arg("pass")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(found);
        }
    }
    let root = env::var_os("PYENV_ROOT").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".pyenv"),
        PathBuf::from,
    );
    let versions = root.join("versions");
    let mut candidates: Vec<PathBuf> = fs::read_dir(&versions)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with("2.7"))
                })
                .map(|path| path.join("bin").join("python2.7"))
                .filter(|python| python.is_file())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .ok_or_else(|| "no Python 2.7 (python2.7 on PATH, or pyenv's)".to_owned())
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// How much of the suite runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every case (about 15 minutes against a debug build on two cores).
    Full,
    /// Every case but the compression ones, and [`QUICK_COMPRESSION_CASES`] of those (about a
    /// minute): what `ci` runs.
    Quick,
}

impl Scope {
    /// The spec's `cases`, as JSON.
    fn cases(self) -> String {
        match self {
            Self::Full => r#"["*"]"#.to_owned(),
            Self::Quick => {
                let mut cases: Vec<String> = (1..=11).map(|n| format!(r#""{n}.*""#)).collect();
                cases.extend(
                    QUICK_COMPRESSION_CASES
                        .iter()
                        .map(|case| format!(r#""{case}""#)),
                );
                format!("[{}]", cases.join(", "))
            }
        }
    }
}

/// Runs the suite's `scope` against `target/debug/herald` (built by the caller).
pub(crate) fn autobahn(root: &Path, scope: Scope) -> Result {
    let python = python2()?;
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let out = target_dir.join("autobahn");
    let reports = out.join("reports");
    let _ = fs::remove_dir_all(&reports);
    fs::create_dir_all(&reports)
        .map_err(|e| format!("cannot create {}: {e}", reports.display()))?;
    let site = out.join("site");
    install(&python, &site)?;

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let spec = out.join("fuzzingclient.json");
    let spec_text = format!(
        r#"{{"outdir": "{}", "servers": [{{"agent": "herald", "url": "ws://{addr}/echo"}}], "cases": {}, "exclude-cases": [], "exclude-agent-cases": {{}}}}"#,
        reports.display(),
        scope.cases()
    );
    fs::write(&spec, spec_text).map_err(|e| format!("cannot write {}: {e}", spec.display()))?;

    let log = out.join("herald.log");
    let log_file =
        fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut server = Command::new(target_dir.join("debug").join("herald"))
        .env_clear()
        .env("HERALD_LISTEN", addr.to_string())
        .env("HERALD_JWT_SECRET", "autobahn-secret-0123456789abcdefghij")
        .env("HERALD_ECHO_PATH", "/echo")
        // Cases 9.* send messages of up to 16 MiB.
        .env("HERALD_MAX_PAYLOAD_BYTES", "67108864")
        // 12.* and 13.* expect every message that shrinks to be compressed.
        .env("HERALD_COMPRESSION_THRESHOLD_BYTES", "0")
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| {
            format!("cannot start herald (built by `cargo build -p herald-service`?): {e}")
        })?;
    let run = wait_until_listening(&mut server, addr, &log).and_then(|()| {
        let script = format!(
            "import site, sys; site.addsitedir({site:?}); \
             sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', {spec:?}]; \
             from autobahntestsuite.wstest import run; sys.exit(run())",
            site = site.display().to_string(),
            spec = spec.display().to_string(),
        );
        let wstest_log = out.join("wstest.log");
        let wstest_file = fs::File::create(&wstest_log)
            .map_err(|e| format!("cannot create {}: {e}", wstest_log.display()))?;
        println!("$ wstest -m fuzzingclient -s {}", spec.display());
        let status = Command::new(&python)
            .arg("-c")
            .arg(script)
            .stdout(wstest_file)
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run wstest: {e}"))?;
        if !status.success() {
            return Err(format!(
                "wstest failed ({status}); its log is {}",
                wstest_log.display()
            ));
        }
        judge(&reports.join("index.json"))
    });
    stop(&mut server);
    run
}

/// Installs the suite into `site` unless this release is there already.
fn install(python: &Path, site: &Path) -> Result {
    let marker = site.join(format!(".installed-{VERSION}"));
    if marker.is_file() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(site);
    let command = format!(
        "{} -m pip install --target {} autobahntestsuite=={VERSION}",
        python.display(),
        site.display()
    );
    println!("$ {command}");
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
        ])
        .arg(site)
        .arg(format!("autobahntestsuite=={VERSION}"))
        .status()
        .map_err(|e| format!("cannot run {command}: {e}"))?;
    if !status.success() {
        return Err(format!("{command} failed with {status}"));
    }
    fs::write(&marker, VERSION).map_err(|e| format!("cannot write {}: {e}", marker.display()))
}

/// Reads the suite's `index.json` (through `python3`, which this crate's lack of a JSON
/// dependency makes the simplest reader) and fails on any case not passed strictly.
fn judge(index: &Path) -> Result {
    let script = "import json, sys\n\
                  for agent in json.load(open(sys.argv[1])).values():\n\
                  \x20   for case, r in agent.items():\n\
                  \x20       print(case, r['behavior'], r['behaviorClose'])\n";
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(index)
        .output()
        .map_err(|e| format!("cannot read {}: {e}", index.display()))?;
    if !output.status.success() {
        return Err(format!(
            "cannot read {}: {}",
            index.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut cases = 0;
    let mut broken = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(case), Some(behavior), Some(close)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        cases += 1;
        if let Some(problem) = verdict(case, behavior, close) {
            broken.push(problem);
        }
    }
    if cases == 0 {
        return Err(format!("{} lists no case", index.display()));
    }
    println!(
        "xtask: autobahn: {cases} cases, {} not passed strictly, reports in {}",
        broken.len(),
        index.parent().unwrap_or(index).display()
    );
    if broken.is_empty() {
        Ok(())
    } else {
        broken.sort();
        Err(format!(
            "autobahn cases not passed strictly:\n  {}",
            broken.join("\n  ")
        ))
    }
}

/// `None` when a case's result passes strictly; otherwise what is wrong with it.
fn verdict(case: &str, behavior: &str, close: &str) -> Option<String> {
    let passes = |result: &str| matches!(result, "OK" | "INFORMATIONAL");
    if passes(behavior) && passes(close) {
        return None;
    }
    Some(format!("{case}: {behavior}, close {close}"))
}

#[cfg(test)]
mod tests {
    use super::{Scope, verdict};

    #[test]
    fn the_quick_scope_names_every_non_compression_group_and_some_compression_cases() {
        let cases = Scope::Quick.cases();
        assert!(cases.starts_with(r#"["1.*", "2.*""#), "{cases}");
        assert!(cases.contains(r#""11.*", "12.1.1""#), "{cases}");
        assert!(!cases.contains(r#""12.*""#), "{cases}");
        assert_eq!(Scope::Full.cases(), r#"["*"]"#);
    }

    #[test]
    fn only_strict_passes() {
        assert_eq!(verdict("1.1.1", "OK", "OK"), None);
        assert_eq!(verdict("7.1.6", "INFORMATIONAL", "INFORMATIONAL"), None);
        // 6.4.3 and 6.4.4 (invalid UTF-8 in one frame sent in chops) were once passed only
        // non-strictly; they are refused at the chop now, and a regression fails the run.
        for case in ["6.4.1", "6.4.3", "6.4.4"] {
            assert_eq!(
                verdict(case, "NON-STRICT", "OK"),
                Some(format!("{case}: NON-STRICT, close OK"))
            );
        }
        assert!(verdict("6.4.3", "FAILED", "OK").is_some());
        assert!(verdict("5.1", "OK", "FAILED").is_some());
        assert!(verdict("2.1", "UNIMPLEMENTED", "OK").is_some());
    }
}
