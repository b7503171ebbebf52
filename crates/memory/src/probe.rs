//! The [`MemoryProbe`] seam and its [`MemoryReading`].

use std::sync::{Arc, Mutex, PoisonError};

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
}
