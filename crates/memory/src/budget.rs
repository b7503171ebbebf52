//! [`Budget`]: the bytes memory use is judged against, and where that figure comes from.

use std::{fmt, path::Path};

use crate::{
    error::ProbeError,
    files::{kib_field, read_text},
};

/// The memory budget: the limit "used" bytes are judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The budget in bytes.
    pub bytes: u64,
    /// Where it comes from.
    pub source: BudgetSource,
}

/// Where a [`Budget`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// The operator's setting (`HERALD_MEMORY_LIMIT_BYTES`).
    Configured,
    /// The cgroup's `memory.max`, the limit the kernel's OOM killer enforces.
    Cgroup,
    /// The machine's physical memory (`MemTotal`).
    Physical,
}

impl Budget {
    /// Picks the budget: the configured one when set; else the smaller of the cgroup limit
    /// and physical memory (a cgroup may be allowed more than the machine has); `None` when
    /// nothing is known.
    ///
    /// A configured budget wins even above the cgroup limit: the operator said so.
    pub fn pick(
        configured: Option<u64>,
        cgroup: Option<u64>,
        physical: Option<u64>,
    ) -> Option<Self> {
        if let Some(bytes) = configured {
            return Some(Self {
                bytes,
                source: BudgetSource::Configured,
            });
        }
        let cgroup = cgroup.map(|bytes| Self {
            bytes,
            source: BudgetSource::Cgroup,
        });
        let physical = physical.map(|bytes| Self {
            bytes,
            source: BudgetSource::Physical,
        });
        // On a tie the cgroup is named: it is the limit that is enforced.
        cgroup
            .into_iter()
            .chain(physical)
            .min_by_key(|budget| budget.bytes)
    }
}

impl fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Configured => "configured",
            Self::Cgroup => "cgroup memory.max",
            Self::Physical => "physical memory",
        })
    }
}

/// The machine's physical memory in bytes: `MemTotal` of `<root>/proc/meminfo` (`root` is `/`
/// in production, a fixture in tests).
pub(crate) fn physical_memory_bytes(root: &Path) -> Result<u64, ProbeError> {
    let path = root.join("proc/meminfo");
    kib_field(&read_text(&path)?, "MemTotal").ok_or(ProbeError::Parse {
        path,
        what: "MemTotal line in kB",
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::budget::{Budget, BudgetSource, physical_memory_bytes};

    #[track_caller]
    fn check(
        configured: Option<u64>,
        cgroup: Option<u64>,
        physical: Option<u64>,
        expected: Option<(u64, BudgetSource)>,
    ) {
        let picked = Budget::pick(configured, cgroup, physical);
        assert_eq!(picked.map(|b| (b.bytes, b.source)), expected);
    }

    #[test]
    fn the_configured_budget_wins() {
        check(
            Some(100),
            Some(50),
            Some(80),
            Some((100, BudgetSource::Configured)),
        );
    }

    #[test]
    fn the_cgroup_limit_applies_when_nothing_is_configured() {
        check(None, Some(50), Some(80), Some((50, BudgetSource::Cgroup)));
    }

    #[test]
    fn physical_memory_caps_a_larger_cgroup_limit() {
        check(
            None,
            Some(500),
            Some(80),
            Some((80, BudgetSource::Physical)),
        );
    }

    #[test]
    fn physical_memory_is_the_last_resort() {
        check(None, None, Some(80), Some((80, BudgetSource::Physical)));
    }

    #[test]
    fn a_tie_names_the_cgroup() {
        check(None, Some(80), Some(80), Some((80, BudgetSource::Cgroup)));
    }

    #[test]
    fn nothing_known_is_no_budget() {
        check(None, None, None, None);
    }

    #[test]
    fn physical_memory_is_mem_total() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let physical = physical_memory_bytes(&root.join("cgroup-limited"));
        assert_eq!(physical.ok(), Some(16_318_540 * 1024));
        let error = physical_memory_bytes(&root.join("malformed")).expect_err("no MemTotal");
        assert!(error.to_string().contains("MemTotal line in kB"), "{error}");
    }
}
