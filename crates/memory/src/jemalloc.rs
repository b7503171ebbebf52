//! [`JemallocProbe`]: live allocations and allocator pages, from jemalloc's statistics.

use std::fmt;

use tikv_jemalloc_ctl::{epoch, epoch_mib, stats};

use crate::{
    error::ProbeError,
    probe::{MemoryProbe, MemoryReading},
};

/// Reads jemalloc's statistics (`stats.allocated`, `stats.active`, `stats.resident`).
///
/// Only meaningful in a binary whose global allocator is tikv-jemallocator;
/// [`new`](Self::new) checks that it is. jemalloc caches its statistics until the epoch advances;
/// every read advances it first, so read from one periodic task, not per request.
#[derive(Clone, Copy)]
pub struct JemallocProbe {
    epoch: epoch_mib,
    allocated: stats::allocated_mib,
    active: stats::active_mib,
    resident: stats::resident_mib,
}

/// One reading of jemalloc's statistics, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JemallocStats {
    /// `stats.allocated`: bytes in live allocations, what the application holds.
    pub allocated_bytes: u64,
    /// `stats.active`: bytes in the pages that hold live allocations; above `allocated` by
    /// the fragmentation inside those pages.
    pub active_bytes: u64,
    /// `stats.resident`: bytes in the allocator's physically resident pages, metadata and
    /// unused dirty pages included. The process's resident set is larger still (stacks, code,
    /// memory not from the allocator).
    pub resident_bytes: u64,
}

impl JemallocProbe {
    /// Looks up the statistics once, and refuses when jemalloc is not the global allocator:
    /// it allocates (and frees) 1 MiB, of which at least half must show in `stats.allocated`
    /// (other threads allocate and free meanwhile). A linked but unused jemalloc still
    /// reports some bytes of its own, so zero is not the test.
    pub fn new() -> Result<Self, ProbeError> {
        const PROOF_BYTES: usize = 1024 * 1024;
        let probe = Self {
            epoch: epoch::mib().map_err(ProbeError::Jemalloc)?,
            allocated: stats::allocated::mib().map_err(ProbeError::Jemalloc)?,
            active: stats::active::mib().map_err(ProbeError::Jemalloc)?,
            resident: stats::resident::mib().map_err(ProbeError::Jemalloc)?,
        };
        let before = probe.stats()?.allocated_bytes;
        // Above jemalloc's thread-cache sizes, so it is counted at once; not written, so it
        // costs no page.
        let proof = std::hint::black_box(Vec::<u8>::with_capacity(PROOF_BYTES));
        let during = probe.stats()?.allocated_bytes;
        drop(proof);
        if during < before.saturating_add(PROOF_BYTES as u64 / 2) {
            return Err(ProbeError::NotTheAllocator);
        }
        Ok(probe)
    }

    /// Advances jemalloc's epoch, then reads its statistics.
    pub fn stats(&self) -> Result<JemallocStats, ProbeError> {
        self.epoch.advance().map_err(ProbeError::Jemalloc)?;
        let bytes = |read: tikv_jemalloc_ctl::Result<usize>| {
            read.map(|value| value as u64).map_err(ProbeError::Jemalloc)
        };
        Ok(JemallocStats {
            allocated_bytes: bytes(self.allocated.read())?,
            active_bytes: bytes(self.active.read())?,
            resident_bytes: bytes(self.resident.read())?,
        })
    }
}

impl MemoryProbe for JemallocProbe {
    /// "Used" and "allocated" are `stats.allocated`; "resident" is the allocator's resident
    /// pages (`stats.resident`), not the whole process's; no limit. All zero if jemalloc
    /// stopped answering.
    fn read(&self) -> MemoryReading {
        let stats = self.stats().ok();
        let allocated = stats.map_or(0, |s| s.allocated_bytes);
        MemoryReading {
            used_bytes: allocated,
            resident_bytes: stats.map_or(0, |s| s.resident_bytes),
            allocated_bytes: Some(allocated),
            limit_bytes: None,
        }
    }
}

impl fmt::Debug for JemallocProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JemallocProbe").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::{error::ProbeError, jemalloc::JemallocProbe};

    // This test binary allocates through the system allocator, though jemalloc is linked.
    // `tests/jemalloc.rs` covers the other case.
    #[test]
    fn jemalloc_that_is_not_the_allocator_is_refused() {
        let error = JemallocProbe::new().expect_err("the system allocator is in use");
        assert!(matches!(error, ProbeError::NotTheAllocator), "{error:?}");
    }
}
