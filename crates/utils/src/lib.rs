//! Small, dependency-light building blocks shared by Herald's crates.
//!
//! `herald-utils` is a leaf crate: it knows nothing about sockets, the protocol or configuration,
//! so every higher crate can use it, and it can be used outside Herald.
//! It holds:
//!
//! - [`CircuitBreaker`], the closed / open / half-open state machine that guards calls to a
//!   dependency that may fail (the cluster's Redis);
//! - [`Clock`], the seam through which everything reads the time, monotonic and wall-clock, with
//!   the production [`SystemClock`] and the test double [`ManualClock`];
//! - [`Priority`], the four message priorities of the wire protocol;
//! - [`PriorityQueue`], the bounded per-connection outbound queue that sheds lower priorities
//!   first;
//! - [`LruCache`], a bounded LRU cache with per-entry TTLs, used for the publish-dedupe window;
//! - [`CircularBuffer`], a sliding window of samples with statistics (mean, percentiles,
//!   least-squares slope) for latency and memory-growth tracking.
//!
//! Architecture invariant: nothing here reads the ambient time except [`SystemClock`], and no
//! operation panics on any input.

mod breaker;
mod circular_buffer;
mod clock;
mod lru_cache;
mod priority;
mod priority_queue;

pub use crate::{
    breaker::{BreakerSettings, BreakerState, CircuitBreaker, Permit, Refused, Transition},
    circular_buffer::CircularBuffer,
    clock::{Clock, ManualClock, SystemClock},
    lru_cache::LruCache,
    priority::{ParsePriorityError, Priority},
    priority_queue::{Drain, Evicted, PriorityQueue, RejectReason, Rejected},
};
