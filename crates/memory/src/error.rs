//! [`ProbeError`]: why a memory source could not be read.

use std::{io, path::PathBuf};

/// Why a memory source is unavailable: a file missing or unreadable, contents not in the
/// expected format, or allocator statistics that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A file could not be read (missing, no permission, not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file, under the probe's root.
        path: PathBuf,
        /// What the read returned.
        #[source]
        source: io::Error,
    },
    /// A file was read but did not hold what the probe looks for.
    #[error("no {what} in {}", path.display())]
    Parse {
        /// The file, under the probe's root.
        path: PathBuf,
        /// What was missing or malformed, e.g. "VmRSS line".
        what: &'static str,
    },
    /// A jemalloc control call failed.
    #[cfg(feature = "jemalloc")]
    #[error("jemalloc statistics unavailable: {0}")]
    Jemalloc(tikv_jemalloc_ctl::Error),
    /// An allocation did not show in jemalloc's statistics: jemalloc is linked but is not the
    /// global allocator, so its statistics say nothing about this process.
    #[cfg(feature = "jemalloc")]
    #[error(
        "jemalloc is not the global allocator: a 1 MiB allocation did not show in its statistics"
    )]
    NotTheAllocator,
}
