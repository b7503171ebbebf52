//! Cost of one delivery-latency record, from one thread and from several at once: every
//! delivery's socket write records, on whichever core its connection's task runs.

use std::{
    hint::black_box,
    sync::Barrier,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use herald_monitoring::LatencyHistogram;

/// Records per thread per measured batch.
const RECORDS: u64 = 10_000;

/// `threads` threads recording `iters` batches into one histogram at once; the time is the
/// slowest thread's, per batch of one thread.
#[allow(clippy::disallowed_methods)] // Times real threads, as criterion does, on the system clock.
fn concurrent(latency: &LatencyHistogram, threads: usize, iters: u64) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let began = Instant::now();
                    for i in 0..iters * RECORDS {
                        latency.record(black_box(Duration::from_micros(i % 500)));
                    }
                    began.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_default())
            .max()
            .unwrap_or_default()
    })
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency_record");
    group.throughput(criterion::Throughput::Elements(RECORDS));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for threads in [1, 2, 4, 8].into_iter().filter(|&t| t <= cores) {
        let latency = LatencyHistogram::new();
        group.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| concurrent(&latency, threads, iters));
        });
    }
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
