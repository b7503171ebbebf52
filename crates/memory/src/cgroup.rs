//! [`CgroupProbe`]: what the kernel charges the process's cgroup (v2) and the limit it enforces.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::{
    error::ProbeError,
    files::{read_text, single_u64},
    probe::{MemoryProbe, MemoryReading},
};

/// Reads the memory of the cgroup v2 this process belongs to.
///
/// The cgroup is the `0::<path>` line of `/proc/self/cgroup`, found under the cgroup v2 mount at
/// `/sys/fs/cgroup`. Inside a container with its own cgroup namespace the path is `/` and the
/// mount shows the container's cgroup. cgroup v1 (and the v1 memory controller of hybrid
/// hosts) is not supported: [`discover`](Self::discover) fails there.
#[derive(Debug, Clone)]
pub struct CgroupProbe {
    /// The cgroup v2 mount.
    mount: PathBuf,
    /// The process's cgroup, relative to the mount (empty for the mount's own cgroup).
    cgroup: PathBuf,
}

/// One reading of a cgroup's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// `memory.current`: everything charged to the cgroup, all its processes, page cache and
    /// kernel memory included.
    pub current_bytes: u64,
    /// `memory.current` less the `inactive_file` pages of `memory.stat`: the working set, the
    /// part the kernel cannot reclaim cheaply (what Kubernetes evicts on).
    pub working_set_bytes: u64,
    /// The smallest `memory.max` of the cgroup and its parents; `None` when every one is `max`.
    pub limit_bytes: Option<u64>,
}

impl CgroupProbe {
    /// Finds the cgroup of the process whose `/proc` and `/sys` are under `root` (`/` in
    /// production, a fixture in tests), and checks that its `memory.current` can be read.
    pub fn discover(root: &Path) -> Result<Self, ProbeError> {
        let membership = root.join("proc/self/cgroup");
        let membership_text = read_text(&membership)?;
        let path = cgroup_v2_path(&membership_text).ok_or(ProbeError::Parse {
            path: membership,
            what: "cgroup v2 line (0::/path)",
        })?;
        let probe = Self {
            mount: root.join("sys/fs/cgroup"),
            cgroup: PathBuf::from(path.trim_start_matches('/')),
        };
        probe.current_bytes()?;
        Ok(probe)
    }

    /// The cgroup's memory now.
    pub fn memory(&self) -> Result<CgroupMemory, ProbeError> {
        let current_bytes = self.current_bytes()?;
        let stat_path = self.mount.join(&self.cgroup).join("memory.stat");
        let inactive_file =
            stat_field(&read_text(&stat_path)?, "inactive_file").ok_or(ProbeError::Parse {
                path: stat_path,
                what: "inactive_file line",
            })?;
        Ok(CgroupMemory {
            current_bytes,
            working_set_bytes: current_bytes.saturating_sub(inactive_file),
            limit_bytes: self.limit_bytes()?,
        })
    }

    /// The limit the kernel enforces on this process: the smallest `memory.max` of its cgroup
    /// and every parent that has one (`None` when all are `max`). Read anew on every call,
    /// so a limit changed at run time is seen.
    pub fn limit_bytes(&self) -> Result<Option<u64>, ProbeError> {
        let mut limit = u64::MAX;
        for dir in self.cgroup.ancestors() {
            let path = self.mount.join(dir).join("memory.max");
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // The root cgroup has no memory.max, and a parent may not enable the controller.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ProbeError::Read { path, source }),
            };
            let max = parse_memory_max(&text).ok_or(ProbeError::Parse {
                path,
                what: "byte count or \"max\"",
            })?;
            limit = limit.min(max);
        }
        Ok((limit != u64::MAX).then_some(limit))
    }

    fn current_bytes(&self) -> Result<u64, ProbeError> {
        let path = self.mount.join(&self.cgroup).join("memory.current");
        single_u64(&read_text(&path)?).ok_or(ProbeError::Parse {
            path,
            what: "byte count",
        })
    }
}

impl MemoryProbe for CgroupProbe {
    /// "Used" is the working set, "resident" is `memory.current`, the limit is the smallest
    /// `memory.max` up the tree. All zero (no limit) if the files stopped being readable.
    fn read(&self) -> MemoryReading {
        let memory = self.memory().ok();
        MemoryReading {
            used_bytes: memory.map_or(0, |m| m.working_set_bytes),
            resident_bytes: memory.map_or(0, |m| m.current_bytes),
            allocated_bytes: None,
            limit_bytes: memory.and_then(|m| m.limit_bytes),
        }
    }
}

/// The cgroup v2 path in the text of `/proc/self/cgroup`: the `0::<path>` line.
fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/'))
}

/// `memory.max`: a byte count, or `max` (no limit) as `u64::MAX`.
fn parse_memory_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        bytes => bytes.parse().ok(),
    }
}

/// The value of the `name <bytes>` line of `memory.stat`.
fn stat_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::{
        cgroup::{CgroupMemory, CgroupProbe, cgroup_v2_path, parse_memory_max, stat_field},
        error::ProbeError,
        fixtures::{MIB, fixture},
        probe::{MemoryProbe, MemoryReading},
    };

    #[track_caller]
    fn check(name: &str, expected: CgroupMemory) {
        let probe = CgroupProbe::discover(&fixture(name)).expect("fixture has a cgroup");
        assert_eq!(probe.memory().expect("fixture is complete"), expected);
    }

    #[track_caller]
    fn check_error(name: &str, expected: &str) {
        let error = CgroupProbe::discover(&fixture(name))
            .and_then(|probe| probe.memory())
            .expect_err("fixture is broken");
        assert!(error.to_string().contains(expected), "{error}");
    }

    #[test]
    fn the_smallest_limit_up_the_tree_applies() {
        check(
            "cgroup-limited",
            CgroupMemory {
                current_bytes: 100 * MIB,
                working_set_bytes: 60 * MIB,
                limit_bytes: Some(512 * MIB),
            },
        );
    }

    #[test]
    fn max_everywhere_is_no_limit() {
        check(
            "cgroup-unlimited",
            CgroupMemory {
                current_bytes: 30_000_000,
                working_set_bytes: 29_000_000,
                limit_bytes: None,
            },
        );
    }

    #[test]
    fn cgroup_v1_is_not_supported() {
        check_error("cgroup-v1", "no cgroup v2 line (0::/path)");
    }

    #[test]
    fn malformed_files_are_parse_errors() {
        check_error("malformed", "no byte count in");
    }

    #[test]
    fn a_missing_memory_current_is_a_read_error() {
        let error = CgroupProbe::discover(&fixture("no-such-root")).expect_err("no files");
        assert!(matches!(error, ProbeError::Read { .. }), "{error:?}");
    }

    #[test]
    fn the_reading_uses_the_working_set_as_used() {
        let probe = CgroupProbe::discover(&fixture("cgroup-limited")).expect("fixture");
        assert_eq!(
            probe.read(),
            MemoryReading {
                used_bytes: 60 * MIB,
                resident_bytes: 100 * MIB,
                allocated_bytes: None,
                limit_bytes: Some(512 * MIB),
            }
        );
    }

    #[test]
    fn the_v2_line_is_found_among_v1_lines() {
        assert_eq!(cgroup_v2_path("1:cpu:/a\n0::/b/c\n"), Some("/b/c"));
        assert_eq!(cgroup_v2_path("0::relative\n"), None);
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn memory_max_is_bytes_or_max() {
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
        assert_eq!(parse_memory_max("max\n"), Some(u64::MAX));
        assert_eq!(parse_memory_max("infinite\n"), None);
    }

    #[test]
    fn a_stat_field_needs_its_exact_name() {
        let stat = "active_file 10\ninactive_file 20\n";
        assert_eq!(stat_field(stat, "inactive_file"), Some(20));
        assert_eq!(stat_field(stat, "file"), None);
        assert_eq!(stat_field("inactive_file\n", "inactive_file"), None);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_on_any_text(text in any::<String>()) {
            let _ = cgroup_v2_path(&text);
            let _ = parse_memory_max(&text);
            let _ = stat_field(&text, "inactive_file");
        }
    }
}
