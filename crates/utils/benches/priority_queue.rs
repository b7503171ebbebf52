//! Throughput of the outbound `PriorityQueue`: push, pop, shedding, and a heap baseline.

use std::{cmp::Reverse, collections::BinaryHeap, hint::black_box};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald_utils::{Priority, PriorityQueue};

/// Items per measured batch; the production default queue size (`HERALD_MAX_QUEUE_SIZE`).
const N: usize = 1000;

/// A deterministic mix of priorities, weighted towards `Normal` as real traffic is.
fn priority_of(i: usize) -> Priority {
    match i % 8 {
        0 => Priority::Low,
        1..=5 => Priority::Normal,
        6 => Priority::High,
        _ => Priority::Critical,
    }
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("priority_queue");
    group.throughput(Throughput::Elements(N as u64));

    // Fill then drain, reusing the queue so lane growth is paid once, as on a live connection.
    group.bench_function("lanes/push_then_pop_1000", |b| {
        let mut queue = PriorityQueue::new(N, usize::MAX);
        b.iter(|| {
            for i in 0..N {
                let evicted = queue.push(i, priority_of(i), 300);
                black_box(evicted.is_ok());
            }
            while let Some(item) = queue.pop() {
                black_box(item);
            }
        });
    });

    // The same work on a binary heap keyed by (priority, sequence), standing in for a
    // heap-based queue such as the `priority-queue` crate (which also hashes every key).
    group.bench_function("binary_heap/push_then_pop_1000", |b| {
        let mut heap = BinaryHeap::new();
        let mut seq = 0u64;
        b.iter(|| {
            for i in 0..N {
                seq += 1;
                heap.push((priority_of(i), Reverse(seq), i, 300usize));
            }
            while let Some(item) = heap.pop() {
                black_box(item);
            }
        });
    });

    // Steady state of a writer keeping up: one push, one pop, at a depth of 100.
    group.bench_function("lanes/interleaved_1000", |b| {
        let mut queue = PriorityQueue::new(N, usize::MAX);
        for i in 0..100 {
            let _ = queue.push(i, priority_of(i), 300);
        }
        b.iter(|| {
            for i in 0..N {
                let evicted = queue.push(i, priority_of(i), 300);
                black_box(evicted.is_ok());
                black_box(queue.pop());
            }
        });
    });

    // A slow consumer: the queue is full of low items and each normal push sheds one.
    group.bench_function("lanes/push_evicting_1000", |b| {
        b.iter_batched_ref(
            || {
                let mut queue = PriorityQueue::new(N, usize::MAX);
                for i in 0..N {
                    let _ = queue.push(i, Priority::Low, 300);
                }
                queue
            },
            |queue| {
                for i in 0..N {
                    let evicted = queue.push(i, Priority::Normal, 300);
                    black_box(evicted.map(|e| e.len()).ok());
                }
            },
            BatchSize::SmallInput,
        );
    });

    // The queue is full of items the incoming one may not shed: every push is rejected.
    group.bench_function("lanes/push_rejected_1000", |b| {
        let mut queue = PriorityQueue::new(N, usize::MAX);
        for i in 0..N {
            let _ = queue.push(i, Priority::Critical, 300);
        }
        b.iter(|| {
            for i in 0..N {
                black_box(queue.push(i, Priority::High, 300).is_err());
            }
        });
    });

    group.finish();
}

criterion_group!(benches, push_pop);
criterion_main!(benches);
