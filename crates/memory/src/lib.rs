//! Memory readings for Herald: the [`MemoryProbe`] seam and what a reading means.
//!
//! A probe tells how much memory the process holds; the gateway and the service read memory
//! only through it, so tests drive memory pressure with [`FakeProbe`]. It knows
//! `herald-utils` and `herald-config` only; `herald-core` takes a probe as one of its seams.

mod probe;

pub use crate::probe::{FakeProbe, MemoryProbe, MemoryReading};
