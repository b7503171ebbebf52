//! The [`MemoryProbe`] seam and its [`MemoryReading`].

use std::sync::{Arc, Mutex, PoisonError};

use crate::level::usage_bp;

/// One reading of the process's memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryReading {
    /// The memory judged against the budget: live allocations where the allocator reports
    /// them, else the resident set.
    pub used_bytes: u64,
    /// The resident set size (what the kernel charges the process).
    pub resident_bytes: u64,
    /// Bytes in live allocations, where the allocator reports them.
    pub allocated_bytes: Option<u64>,
    /// The budget `used_bytes` is judged against, where known.
    pub limit_bytes: Option<u64>,
}

impl MemoryReading {
    /// `used_bytes` as basis points (hundredths of a percent) of `limit_bytes`, rounded down:
    /// 8_550 is 85.5 %; above 10_000 when over the budget. `None` when no budget is known (or
    /// it is zero).
    pub fn pressure_bp(&self) -> Option<u64> {
        usage_bp(self.used_bytes, self.limit_bytes?)
    }

    /// `used_bytes` as a percent of `limit_bytes`, with one decimal (rounded down): the
    /// `memory.pressurePercent` of `/api/stats`. `None` when no budget is known.
    pub fn pressure_percent(&self) -> Option<f64> {
        // Tenths of a percent, then one division, so 85.5 prints as 85.5 and not 85.499999.
        self.pressure_bp().map(|bp| (bp / 10) as f64 / 10.0)
    }
}

/// Where memory readings come from.
pub trait MemoryProbe: Send + Sync + 'static {
    /// Reads the process's memory now.
    fn read(&self) -> MemoryReading;
}

impl<P: MemoryProbe + ?Sized> MemoryProbe for Arc<P> {
    fn read(&self) -> MemoryReading {
        (**self).read()
    }
}

/// A probe that reports what a test set; clones share the reading.
#[derive(Debug, Clone, Default)]
pub struct FakeProbe {
    reading: Arc<Mutex<MemoryReading>>,
}

impl FakeProbe {
    /// A probe reporting `reading` until [`set`](Self::set) changes it.
    pub fn new(reading: MemoryReading) -> Self {
        Self {
            reading: Arc::new(Mutex::new(reading)),
        }
    }

    /// Changes what this probe and its clones report.
    pub fn set(&self, reading: MemoryReading) {
        *self.reading.lock().unwrap_or_else(PoisonError::into_inner) = reading;
    }
}

impl MemoryProbe for FakeProbe {
    fn read(&self) -> MemoryReading {
        *self.reading.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_probe_reports_what_was_set_through_any_clone() {
        let probe = FakeProbe::default();
        let clone = probe.clone();
        let reading = MemoryReading {
            used_bytes: 10,
            resident_bytes: 20,
            allocated_bytes: Some(10),
            limit_bytes: Some(100),
        };
        clone.set(reading);
        assert_eq!(probe.read(), reading);
    }

    #[track_caller]
    fn check_pressure(used_bytes: u64, limit_bytes: Option<u64>, expected: Option<f64>) {
        let reading = MemoryReading {
            used_bytes,
            limit_bytes,
            ..MemoryReading::default()
        };
        assert_eq!(reading.pressure_percent(), expected);
    }

    #[test]
    fn pressure_is_used_over_the_budget_with_one_decimal() {
        check_pressure(855, Some(1_000), Some(85.5));
        check_pressure(8_559, Some(10_000), Some(85.5));
        check_pressure(0, Some(10), Some(0.0));
        check_pressure(3, Some(2), Some(150.0));
    }

    #[test]
    fn pressure_needs_a_budget() {
        check_pressure(10, None, None);
        check_pressure(10, Some(0), None);
    }
}
