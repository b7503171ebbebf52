//! [`SystemProbe`]: the probe the service uses, combining the process's resident set, the
//! allocator's live bytes (with the `jemalloc` feature) and the budget.

use std::path::Path;

use crate::{
    budget::{Budget, physical_memory_bytes},
    cgroup::CgroupProbe,
    error::ProbeError,
    probe::{MemoryProbe, MemoryReading},
    process::ProcessProbe,
};

/// Every memory source this process has, combined into one reading:
///
/// - `resident_bytes`: the process's resident set ([`ProcessProbe`]), 0 without `/proc`;
/// - `allocated_bytes`: jemalloc's `stats.allocated`, when built with the `jemalloc` feature
///   and jemalloc is the global allocator;
/// - `used_bytes`: the allocated bytes where known, else the resident set. Live allocations
///   are what the gateway holds; the resident set also counts pages the allocator has not
///   returned to the kernel yet, so it lags behind a release of memory;
/// - `limit_bytes`: the [`Budget`]: the configured limit, else the smaller of the cgroup's
///   `memory.max` (read anew each time) and physical memory.
///
/// Built by [`detect`](Self::detect), which never fails: a missing source is left out and
/// reported.
#[derive(Debug)]
pub struct SystemProbe {
    process: Option<ProcessProbe>,
    cgroup: Option<CgroupProbe>,
    #[cfg(feature = "jemalloc")]
    allocator: Option<crate::jemalloc::JemallocProbe>,
    configured_limit: Option<u64>,
    physical_bytes: Option<u64>,
}

impl SystemProbe {
    /// Finds the sources of the process whose `/proc` and `/sys` are under `root` (`/` in
    /// production). `configured_limit` is herald-config's `memory_limit_bytes`
    /// (`HERALD_MEMORY_LIMIT_BYTES`). Answers the probe, and why each missing source is
    /// missing (worth a log line each).
    pub fn detect(root: &Path, configured_limit: Option<u64>) -> (Self, Vec<ProbeError>) {
        let mut missing = Vec::new();
        let probe = Self {
            process: found(ProcessProbe::new(root), &mut missing),
            cgroup: found(CgroupProbe::discover(root), &mut missing),
            #[cfg(feature = "jemalloc")]
            allocator: found(crate::jemalloc::JemallocProbe::new(), &mut missing),
            configured_limit,
            physical_bytes: found(physical_memory_bytes(root), &mut missing),
        };
        (probe, missing)
    }

    /// The budget now, and where it comes from; `None` when nothing is known.
    pub fn budget(&self) -> Option<Budget> {
        let cgroup_limit = self
            .cgroup
            .as_ref()
            .and_then(|cgroup| cgroup.limit_bytes().ok().flatten());
        Budget::pick(self.configured_limit, cgroup_limit, self.physical_bytes)
    }

    #[cfg(feature = "jemalloc")]
    fn allocated_bytes(&self) -> Option<u64> {
        let stats = self.allocator.as_ref()?.stats().ok()?;
        Some(stats.allocated_bytes)
    }

    #[cfg(not(feature = "jemalloc"))]
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
}

impl MemoryProbe for SystemProbe {
    fn read(&self) -> MemoryReading {
        let resident_bytes = self
            .process
            .as_ref()
            .and_then(|process| process.resident_bytes().ok())
            .unwrap_or(0);
        let allocated_bytes = self.allocated_bytes();
        MemoryReading {
            used_bytes: allocated_bytes.unwrap_or(resident_bytes),
            resident_bytes,
            allocated_bytes,
            limit_bytes: self.budget().map(|budget| budget.bytes),
        }
    }
}

/// The source, or `None` with the reason pushed onto `missing`.
fn found<T>(source: Result<T, ProbeError>, missing: &mut Vec<ProbeError>) -> Option<T> {
    source.map_err(|error| missing.push(error)).ok()
}

#[cfg(test)]
mod tests {
    use crate::{
        budget::{Budget, BudgetSource},
        fixtures::{MIB, fixture},
        probe::{MemoryProbe, MemoryReading},
        system::SystemProbe,
    };

    /// Detects `fixture` and compares the reading, the budget's source and what is missing.
    #[track_caller]
    fn check(
        name: &str,
        configured: Option<u64>,
        expected: MemoryReading,
        source: Option<BudgetSource>,
        missing: &[&str],
    ) {
        let (probe, errors) = SystemProbe::detect(&fixture(name), configured);
        // The allocator is not jemalloc in this test binary, whatever the features.
        let errors: Vec<String> = errors
            .iter()
            .map(ToString::to_string)
            .filter(|e| !e.contains("jemalloc"))
            .collect();
        assert_eq!(errors.len(), missing.len(), "{errors:?}");
        for (error, expected) in errors.iter().zip(missing) {
            assert!(error.contains(expected), "{error} lacks {expected}");
        }
        assert_eq!(probe.read(), expected);
        assert_eq!(probe.budget().map(|b| b.source), source);
    }

    #[test]
    fn in_a_limited_cgroup_the_budget_is_its_limit() {
        check(
            "cgroup-limited",
            None,
            MemoryReading {
                used_bytes: 50 * MIB,
                resident_bytes: 50 * MIB,
                allocated_bytes: None,
                limit_bytes: Some(512 * MIB),
            },
            Some(BudgetSource::Cgroup),
            &[],
        );
    }

    #[test]
    fn a_configured_limit_wins() {
        check(
            "cgroup-limited",
            Some(2048 * MIB),
            MemoryReading {
                used_bytes: 50 * MIB,
                resident_bytes: 50 * MIB,
                allocated_bytes: None,
                limit_bytes: Some(2048 * MIB),
            },
            Some(BudgetSource::Configured),
            &[],
        );
    }

    #[test]
    fn without_a_cgroup_limit_the_budget_is_physical_memory() {
        check(
            "cgroup-unlimited",
            None,
            MemoryReading {
                used_bytes: 20 * MIB,
                resident_bytes: 20 * MIB,
                allocated_bytes: None,
                limit_bytes: Some(8_000_000 * 1024),
            },
            Some(BudgetSource::Physical),
            &[],
        );
    }

    #[test]
    fn on_cgroup_v1_the_cgroup_is_reported_missing() {
        check(
            "cgroup-v1",
            None,
            MemoryReading {
                used_bytes: 10 * MIB,
                resident_bytes: 10 * MIB,
                allocated_bytes: None,
                limit_bytes: Some(4_000_000 * 1024),
            },
            Some(BudgetSource::Physical),
            &["cgroup v2 line"],
        );
    }

    #[test]
    fn with_nothing_readable_every_source_is_reported_and_the_reading_is_empty() {
        check(
            "malformed",
            None,
            MemoryReading::default(),
            None,
            &["VmRSS", "memory.current", "MemTotal"],
        );
    }

    #[test]
    fn the_budget_names_its_source() {
        let (probe, _) = SystemProbe::detect(&fixture("cgroup-limited"), None);
        assert_eq!(
            probe.budget(),
            Some(Budget {
                bytes: 512 * MIB,
                source: BudgetSource::Cgroup,
            })
        );
    }
}
