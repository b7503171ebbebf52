//! Project automation, run as `cargo xtask <task>` (the cargo-xtask convention).
//!
//! `cargo xtask ci` is the one command CI and developers run; it installs the tools it needs when
//! they are missing, so a fresh machine passes with nothing but a Rust toolchain.
//!
//! This crate has no dependencies on purpose: it must build in seconds on a fresh machine.

#![allow(clippy::print_stdout)] // A task runner reports to its terminal.

mod apt;
mod autobahn;
mod bench;
mod fuzz;
mod js;
mod schemathesis;
#[cfg(test)]
mod tidy;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

type Result<T = (), E = String> = std::result::Result<T, E>;

/// The browser the dashboard's end-to-end tests drive (`herald_tests::CHROMIUM`).
const CHROMIUM: &str = "/usr/bin/chromium";

/// The Redis server the cluster's end-to-end tests start (`herald_tests::RedisServer`).
const REDIS_SERVER: &str = "/usr/bin/redis-server";

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci      everything CI checks: fmt, clippy, the browser client (npm), tests, schemathesis, autobahn
          (where Python 2.7 exists), a fuzz pass, rustdoc,
          cargo-deny, bench --smoke
  fuzz SECONDS
          every fuzz target of fuzz/ for SECONDS each (installs cargo-fuzz 0.13.2)
  schemathesis
          the HTTP API against docs/openapi.yaml, on target/debug/herald (built first)
  autobahn [--full]
          the Autobahn|Testsuite fuzzing client against the echo endpoint of target/debug/herald
          (built first): every non-compression case and some compression ones, or with --full
          every case (about 15 minutes); needs a Python 2.7 (pyenv's is found)
  bench   load benchmarks of Herald (and nginx + nchan): fanout, p2p, idle, churn, curve;
          `cargo xtask bench --help` for the options
  dashboard-screenshot
          docs/images/dashboard.png: the dashboard in headless Chromium while herald-bench
          loads a release build of Herald
";

/// `cargo xtask autobahn [--full]`: builds the binary, then runs the suite's quick or full
/// scope against it.
fn autobahn_task(args: &[String]) -> Result {
    let scope = match args.first().map(String::as_str) {
        None => autobahn::Scope::Quick,
        Some("--full") => autobahn::Scope::Full,
        Some(other) => return Err(format!("autobahn: unknown option `{other}`\n\n{USAGE}")),
    };
    cargo(
        &[
            "build",
            "--locked",
            "--package",
            "herald-service",
            "--bin",
            "herald",
        ],
        &[],
    )?;
    autobahn::autobahn(&project_root(), scope)
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::bench(&args[1..]),
        Some("dashboard-screenshot") => dashboard_screenshot(),
        Some("fuzz") => fuzz::fuzz_task(&args[1..]),
        Some("schemathesis") => schemathesis::schemathesis(&project_root()),
        Some("autobahn") => autobahn_task(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Everything CI checks, in the order a developer should fix failures.
fn ci() -> Result {
    let root = project_root();
    env::set_current_dir(&root).map_err(|e| format!("cannot enter {}: {e}", root.display()))?;

    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The dashboard's end-to-end tests drive a headless Chromium; they fail without one.
    if !Path::new(CHROMIUM).is_file() {
        println!("xtask: {CHROMIUM} is missing; installing Debian's chromium");
        apt::install(&["chromium"])?;
    }
    // The cluster's end-to-end tests start real Redis servers; they fail without one.
    if !Path::new(REDIS_SERVER).is_file() {
        println!("xtask: {REDIS_SERVER} is missing; installing Debian's redis-server");
        apt::install(&["redis-server"])?;
    }
    // The browser client's module, which its end-to-end test loads, and its unit tests.
    js::build_and_test(&root)?;
    // The end-to-end tests start the release-free debug binary; build it first so the tests never
    // race its compilation.
    cargo(
        &[
            "build",
            "--locked",
            "--package",
            "herald-service",
            "--bin",
            "herald",
        ],
        &[],
    )?;
    if has_cargo_tool("nextest") {
        cargo(
            &[
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
            ],
            &[],
        )?;
        // nextest does not run doctests.
        cargo(&["test", "--workspace", "--locked", "--doc"], &[])?;
    } else {
        cargo(&["test", "--workspace", "--locked"], &[])?;
    }
    // The HTTP API against its contract, on the binary built above.
    schemathesis::schemathesis(&root)?;
    // WebSocket conformance of the same binary's reader and writer, where Python 2.7 exists.
    match autobahn::python2() {
        Ok(_) => autobahn::autobahn(&root, autobahn::Scope::Quick)?,
        Err(missing) => println!("xtask: autobahn skipped: {missing}"),
    }
    // A short fuzz pass over every parser target; a crash fails CI.
    fuzz::fuzz(&root, fuzz::CI_SECONDS)?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    ensure_cargo_tool("deny", "cargo-deny", "0.20.2")?;
    // cargo-deny reads the metadata of every platform's dependencies (Windows and UEFI crates
    // included), which a build for this one never downloads: fetch them from the registry
    // first, or a fresh machine fails offline.
    cargo(&["fetch", "--locked"], &[])?;
    // Advisories need the RustSec git database, which needs network; CI here has none.
    cargo(
        &["deny", "--offline", "check", "bans", "licenses", "sources"],
        &[],
    )?;
    // Last, because it is the slowest: nothing published may be lost, duplicated or reordered.
    bench::bench(&["--smoke".to_owned()])?;
    println!("xtask: ci passed");
    Ok(())
}

/// Writes docs/images/dashboard.png: the dashboard's end-to-end screenshot test, run against
/// a release build of Herald under `herald-bench p2p` load (500 connections, 5,000
/// publications a second).
fn dashboard_screenshot() -> Result {
    let root = project_root();
    env::set_current_dir(&root).map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    if !Path::new(CHROMIUM).is_file() {
        apt::install(&["chromium"])?;
    }
    cargo(
        &[
            "build",
            "--release",
            "--locked",
            "--package",
            "herald-service",
            "--package",
            "herald-bench",
            "--bin",
            "herald",
            "--bin",
            "herald-bench",
        ],
        &[],
    )?;
    let release = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("release");
    let herald = release.join("herald");
    let bench = release.join("herald-bench");
    let picture = root.join("docs/images/dashboard.png");
    cargo(
        &[
            "test",
            "--locked",
            "--package",
            "herald-tests",
            "--test",
            "e2e",
            "--",
            "--exact",
            "dashboard::under_load_the_dashboard_renders_a_small_screenshot",
        ],
        &[
            ("HERALD_BIN", &herald.to_string_lossy()),
            ("HERALD_BENCH_BIN", &bench.to_string_lossy()),
            ("HERALD_DASHBOARD_SCREENSHOT", &picture.to_string_lossy()),
        ],
    )?;
    println!("xtask: wrote {}", picture.display());
    Ok(())
}

/// Runs `cargo <args>` from the project root, echoing the command first.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let shown: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    println!("$ {} cargo {}", shown.join(" "), args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed with {status}", args.join(" ")))
    }
}

/// Whether `cargo <tool>` is installed.
fn has_cargo_tool(tool: &str) -> bool {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args([tool, "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Installs a cargo tool from crates.io when it is missing (takes minutes, so only once).
fn ensure_cargo_tool(tool: &str, package: &str, version: &str) -> Result {
    if has_cargo_tool(tool) {
        return Ok(());
    }
    println!("xtask: `cargo {tool}` is missing; installing {package} {version}");
    cargo(&["install", "--locked", package, "--version", version], &[])
}

/// The workspace root: the parent of this crate's manifest directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
