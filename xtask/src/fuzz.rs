//! `cargo xtask fuzz SECONDS`: runs every cargo-fuzz target of `fuzz/` (its own workspace) for
//! SECONDS each, on stable (`--sanitizer none`), from the seed corpus in `fuzz/corpus/<target>/`;
//! `cargo xtask ci` runs a short pass. A crash, a panic included, fails the task and leaves the
//! input under `target/fuzz/artifacts/<target>/`.

use std::{env, fs, path::Path};

use crate::{Result, cargo, ensure_cargo_tool};

/// Every fuzz target in `fuzz/Cargo.toml`.
pub(crate) const TARGETS: &[&str] = &["client_frame", "api_bodies", "config_file", "auth_token"];

/// Seconds per target in `cargo xtask ci`.
pub(crate) const CI_SECONDS: u64 = 10;

/// `cargo xtask fuzz SECONDS`.
pub(crate) fn fuzz_task(args: &[String]) -> Result {
    let [seconds] = args else {
        return Err("usage: cargo xtask fuzz SECONDS (per target)".to_owned());
    };
    let seconds = seconds
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("SECONDS must be a positive integer, not `{seconds}`"))?;
    fuzz(&crate::project_root(), seconds)
}

/// Runs every target for `seconds`. New inputs go to `target/fuzz/corpus/<target>/`, so the
/// committed seeds stay as they are.
pub(crate) fn fuzz(root: &Path, seconds: u64) -> Result {
    env::set_current_dir(root).map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    ensure_cargo_tool("fuzz", "cargo-fuzz", "0.13.2")?;
    let work = root.join("target").join("fuzz");
    for target in TARGETS {
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let corpus = corpus.display().to_string();
        let seeds = format!("fuzz/corpus/{target}");
        let max_time = format!("-max_total_time={seconds}");
        // libFuzzer takes the prefix as is: the trailing slash makes it a directory.
        let prefix = format!("-artifact_prefix={}/", artifacts.display());
        cargo(
            &[
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                target,
                &corpus,
                &seeds,
                "--",
                &max_time,
                &prefix,
            ],
            &[],
        )
        .map_err(|e| format!("fuzz target {target} failed (input in {prefix}): {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target has its source, its `[[bin]]` and a seed corpus, and nothing else is there.
    #[test]
    fn targets_match_the_fuzz_crate_and_have_seeds() {
        let root = crate::project_root();
        let manifest = fs::read_to_string(root.join("fuzz/Cargo.toml"))
            .unwrap_or_else(|e| panic!("fuzz/Cargo.toml: {e}"));
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml has {bins} targets");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is not a [[bin]] of fuzz/Cargo.toml"
            );
            assert!(
                root.join(format!("fuzz/fuzz_targets/{target}.rs"))
                    .is_file(),
                "fuzz/fuzz_targets/{target}.rs is missing"
            );
            let seeds = fs::read_dir(root.join(format!("fuzz/corpus/{target}")))
                .map(Iterator::count)
                .unwrap_or(0);
            assert!(seeds > 0, "fuzz/corpus/{target}/ has no seeds");
        }
    }

    #[test]
    fn seconds_must_be_a_positive_integer() {
        for bad in [
            &[][..],
            &["0".to_owned()],
            &["x".to_owned()],
            &["1".to_owned(), "2".to_owned()],
        ] {
            assert!(fuzz_task(bad).is_err(), "{bad:?}");
        }
    }
}
