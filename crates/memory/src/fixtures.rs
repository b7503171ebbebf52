//! Test fixtures: fake `/proc` and `/sys` trees under `tests/fixtures`, shared by the probes'
//! tests.

use std::path::{Path, PathBuf};

/// One mebibyte.
pub(crate) const MIB: u64 = 1024 * 1024;

/// The root of the fixture tree `name` (`tests/fixtures/<name>`).
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
