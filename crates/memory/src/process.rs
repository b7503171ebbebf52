//! [`ProcessProbe`]: the process's resident set size, from `/proc/self/status`.

use std::path::{Path, PathBuf};

use crate::{
    error::ProbeError,
    files::{kib_field, read_text},
    probe::{MemoryProbe, MemoryReading},
};

/// Reads the resident set size of this process: the `VmRSS` line of `/proc/self/status`.
///
/// `VmRSS` is in kB, so no page size is needed (`/proc/self/statm` counts pages, and 4096 bytes
/// is not the page size everywhere). It counts anonymous, file-backed and shared pages mapped
/// by the process, which is what the kernel charges it.
#[derive(Debug, Clone)]
pub struct ProcessProbe {
    status: PathBuf,
}

impl ProcessProbe {
    /// A probe of the `/proc` under `root` (`/` in production, a fixture in tests).
    ///
    /// Reads once, and fails when `<root>/proc/self/status` cannot be read or has no `VmRSS`
    /// line (no `/proc`, or not Linux).
    pub fn new(root: &Path) -> Result<Self, ProbeError> {
        let probe = Self {
            status: root.join("proc/self/status"),
        };
        probe.resident_bytes()?;
        Ok(probe)
    }

    /// The resident set size now, in bytes.
    pub fn resident_bytes(&self) -> Result<u64, ProbeError> {
        kib_field(&read_text(&self.status)?, "VmRSS").ok_or_else(|| ProbeError::Parse {
            path: self.status.clone(),
            what: "VmRSS line in kB",
        })
    }
}

impl MemoryProbe for ProcessProbe {
    /// "Used" and "resident" are both the resident set size (0 if the file stopped being
    /// readable after [`ProcessProbe::new`]); no allocation count, no limit.
    fn read(&self) -> MemoryReading {
        let resident = self.resident_bytes().unwrap_or(0);
        MemoryReading {
            used_bytes: resident,
            resident_bytes: resident,
            allocated_bytes: None,
            limit_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        error::ProbeError,
        fixtures::fixture,
        probe::{MemoryProbe, MemoryReading},
        process::ProcessProbe,
    };

    #[test]
    fn reads_vm_rss_as_used_and_resident() {
        let probe = ProcessProbe::new(&fixture("cgroup-limited")).expect("fixture is complete");
        assert_eq!(
            probe.read(),
            MemoryReading {
                used_bytes: 51_200 * 1024,
                resident_bytes: 51_200 * 1024,
                allocated_bytes: None,
                limit_bytes: None,
            }
        );
    }

    #[test]
    fn a_root_without_proc_is_an_error_naming_the_file() {
        let error = ProcessProbe::new(&fixture("no-such-root")).expect_err("nothing to read");
        assert!(matches!(error, ProbeError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains("proc/self/status"), "{error}");
    }

    #[test]
    fn a_status_without_vm_rss_is_a_parse_error() {
        let error = ProcessProbe::new(&fixture("malformed")).expect_err("no VmRSS");
        assert!(
            matches!(
                error,
                ProbeError::Parse {
                    what: "VmRSS line in kB",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let probe = ProcessProbe::new(Path::new("/")).expect("/proc is mounted");
        assert!(probe.read().resident_bytes > 0);
    }
}
