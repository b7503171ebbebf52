//! `JemallocProbe` in a binary whose global allocator is jemalloc.
#![cfg(feature = "jemalloc")]

use herald_memory::{JemallocProbe, MemoryProbe};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The test harness allocates and frees on its own threads meanwhile.
const SLACK: u64 = 1024 * 1024;

#[test]
fn live_allocations_are_counted_and_freed_ones_are_not() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let probe = JemallocProbe::new().expect("jemalloc is the allocator");
    let before = probe.stats().expect("stats").allocated_bytes;
    let block = vec![1u8; SIZE as usize];
    let during = probe.stats().expect("stats");
    assert!(
        during.allocated_bytes + SLACK >= before + SIZE,
        "{before} -> {during:?}"
    );
    assert!(during.active_bytes >= during.allocated_bytes, "{during:?}");
    assert!(during.resident_bytes + SLACK >= SIZE, "{during:?}");
    let reading = probe.read();
    assert_eq!(reading.allocated_bytes, Some(reading.used_bytes));
    drop(block);
    let after = probe.stats().expect("stats").allocated_bytes;
    assert!(
        after + SIZE <= during.allocated_bytes + SLACK,
        "{during:?} -> {after}"
    );
}
