//! Throughput of the TTL-aware `LruCache` on the publish-dedupe path: insert, hit and miss.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_utils::{LruCache, SystemClock};

/// Entries in the cache; a dedupe window of a busy node.
const CAPACITY: u64 = 10_000;
/// Operations per measured iteration.
const OPS: u64 = 1000;
/// The production dedupe window (`HERALD_DEDUPE_WINDOW_MS`).
const TTL: Duration = Duration::from_secs(5);

/// A full cache of keys `0..CAPACITY`, each with the dedupe TTL.
fn full_cache() -> LruCache<u64, u64> {
    let mut cache = LruCache::new(CAPACITY as usize, SystemClock);
    for k in 0..CAPACITY {
        let _ = cache.insert_with_ttl(k, k, TTL);
    }
    cache
}

fn lru(c: &mut Criterion) {
    let mut group = c.benchmark_group("lru_cache");
    group.throughput(Throughput::Elements(OPS));

    // Every insert is a new key into a full cache, so each one evicts the LRU entry.
    group.bench_function("insert_with_ttl_evicting", |b| {
        let mut cache = full_cache();
        let mut next = CAPACITY;
        b.iter(|| {
            for _ in 0..OPS {
                next += 1;
                black_box(cache.insert_with_ttl(next, next, TTL));
            }
        });
    });

    group.bench_function("get_hit", |b| {
        let mut cache = full_cache();
        let mut k = 0;
        b.iter(|| {
            for _ in 0..OPS {
                k = (k + 7919) % CAPACITY;
                black_box(cache.get(&k));
            }
        });
    });

    group.bench_function("get_miss", |b| {
        let mut cache = full_cache();
        let mut k = CAPACITY;
        b.iter(|| {
            for _ in 0..OPS {
                k += 1;
                black_box(cache.get(&k));
            }
        });
    });

    group.finish();
}

criterion_group!(benches, lru);
criterion_main!(benches);
