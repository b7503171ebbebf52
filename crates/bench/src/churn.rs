//! The `churn` scenario: workers loop connect -> subscribe -> close, measuring cycles per
//! second, the cycle time, and what the server keeps (RSS) and spends (CPU) per cycle.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    client::{Target, close},
    histogram::Histogram,
    procfs::{Sample, Server},
};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Cycles in all.
    pub(crate) cycles: u64,
    /// Workers cycling at once (worker `w` subscribes to topic `w`).
    pub(crate) concurrency: usize,
    /// Pause after the last cycle before the final memory reading, so the server can finish
    /// its cleanup.
    pub(crate) settle: Duration,
    /// Cycling stops at this deadline even if cycles are left.
    pub(crate) max_run: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Cycles completed.
    pub(crate) cycles: u64,
    /// Cycles that failed at any step.
    pub(crate) failures: u64,
    /// The first failure, for the report.
    pub(crate) first_failure: Option<String>,
    /// Time for all cycles, in seconds.
    pub(crate) duration_s: f64,
    /// Cycle time, microseconds.
    pub(crate) latency: Arc<Histogram>,
    /// The server before, right after the last cycle, and after settling.
    pub(crate) samples: Option<[Sample; 3]>,
    /// This generator's own CPU over the cycles, in seconds.
    pub(crate) generator_cpu_s: f64,
}

/// Runs the churn loops.
pub(crate) async fn run(
    target: &Target,
    plan: Plan,
    server: Option<Server>,
    generator: Server,
) -> Outcome {
    let latency = Arc::new(Histogram::new());
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let before = server.map(|s| s.sample());
    let generator_before = generator.sample();
    let start = Instant::now();
    let deadline = start + plan.max_run;
    let mut workers = Vec::with_capacity(plan.concurrency);
    for worker in 0..plan.concurrency.max(1) {
        let target = target.clone();
        let latency = Arc::clone(&latency);
        let next = Arc::clone(&next);
        let failures = Arc::clone(&failures);
        workers.push(tokio::spawn(async move {
            let mut first_failure = None;
            loop {
                let cycle = next.fetch_add(1, Ordering::Relaxed);
                if cycle >= plan.cycles || Instant::now() >= deadline {
                    return first_failure;
                }
                let began = Instant::now();
                // Every cycle is a new user, so per-user state that outlives its connections
                // shows up as growth.
                let result = match target.subscribe(cycle as usize, worker as u64).await {
                    Ok(ws) => close(ws).await,
                    Err(error) => Err(error),
                };
                match result {
                    Ok(()) => latency.record(began.elapsed().as_micros() as u64),
                    Err(error) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_failure.get_or_insert_with(|| format!("cycle {cycle}: {error:#}"));
                    }
                }
            }
        }));
    }
    let mut first_failure = None;
    for worker in workers {
        if let Ok(Some(failure)) = worker.await {
            first_failure.get_or_insert(failure);
        }
    }
    let duration_s = start.elapsed().as_secs_f64();
    let after = server.map(|s| s.sample());
    let generator_cpu_s = generator.cpu_seconds(generator_before, generator.sample());
    tokio::time::sleep(plan.settle).await;
    let settled = server.map(|s| s.sample());
    let failures = failures.load(Ordering::Relaxed);
    Outcome {
        cycles: latency.count(),
        failures,
        first_failure,
        duration_s,
        latency,
        samples: match (before, after, settled) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        },
        generator_cpu_s,
    }
}
