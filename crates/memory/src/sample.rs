//! [`Sample`]: one timed memory reading, the unit of the monitor's window.

use std::time::Instant;

use crate::probe::MemoryReading;

/// One reading and when it was taken, by the monitor's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When the probe was read (monotonic, from the monitor's `Clock`).
    pub at: Instant,
    /// The wall-clock time of the read, in milliseconds since the Unix epoch (for logs).
    pub unix_ms: u64,
    /// What the probe answered.
    pub reading: MemoryReading,
}

impl Sample {
    /// Seconds from `origin` to this sample; negative when the sample is older.
    pub fn seconds_since(&self, origin: Instant) -> f64 {
        if self.at >= origin {
            (self.at - origin).as_secs_f64()
        } else {
            -(origin - self.at).as_secs_f64()
        }
    }
}
