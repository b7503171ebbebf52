//! Sub-millisecond wake-ups for publishers that publish at a fixed rate.
//!
//! tokio's timer has a resolution of one millisecond, so rate-limited publishers that sleep
//! with it wake on the same tick: at 20,000 publications per second from 16 publishers, the
//! server under test received a burst of 16 requests every millisecond and the measured latency
//! was mostly the burst's own queue, the same for every server. The pacer is one thread that
//! sleeps on a condition variable with a deadline (the kernel's high-resolution timer, about
//! 50 us of slack for a normal thread) and wakes each waiting publisher at its own time, so
//! publishers whose schedules are offset from each other send their requests spread over the
//! millisecond, as independent publishers would.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread,
};

use tokio::{sync::oneshot, time::Instant};

/// Wakes tasks at given instants with sub-millisecond precision; see the module's comment.
///
/// Dropping it stops its thread; waits still pending then end at once.
#[derive(Debug)]
pub(crate) struct Pacer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Pending wake-ups, earliest first; the sequence number keeps equal instants in order.
    due: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
    stopped: bool,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Pacer {
    /// Starts the pacer's thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || thread_shared.run())?;
        Ok(Self { shared })
    }

    /// Completes at `at` (within the timer's slack), or at once if `at` has passed or the
    /// pacer is stopped.
    pub(crate) async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.stopped {
                return;
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let earliest = state.due.peek().is_none_or(|Reverse(first)| at < first.at);
            state.due.push(Reverse(Entry { at, seq, wake }));
            if earliest {
                self.shared.changed.notify_one();
            }
        }
        // An error means the pacer stopped and dropped the entry: the wait is over either way.
        let _ = woken.await;
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        state.due.clear();
        self.shared.changed.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every change is one push or pop.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pacer's thread: wakes what is due, then sleeps until the earliest pending instant
    /// or until an earlier one is added.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            while state
                .due
                .peek()
                .is_some_and(|Reverse(first)| first.at <= now)
            {
                if let Some(Reverse(entry)) = state.due.pop() {
                    // A waiter that went away (its task ended) needs no wake-up.
                    let _ = entry.wake.send(());
                }
            }
            state = match state.due.peek().map(|Reverse(first)| first.at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(state, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Eight waiters 125 us apart, all after the same millisecond tick; returns when each was
    /// due and when it woke.
    async fn eight_waiters(pacer: &Arc<Pacer>) -> Vec<(Instant, Instant)> {
        let start = Instant::now();
        let waits: Vec<_> = (0..8u32)
            .map(|i| {
                let pacer = Arc::clone(pacer);
                let at = start + Duration::from_micros(2_100 + 125 * u64::from(i));
                tokio::spawn(async move {
                    pacer.sleep_until(at).await;
                    (at, Instant::now())
                })
            })
            .collect();
        let mut woken = Vec::new();
        for wait in waits {
            woken.push(wait.await.unwrap());
        }
        woken
    }

    #[tokio::test]
    async fn wakes_each_waiter_at_its_own_time_within_a_fraction_of_a_millisecond() {
        let pacer = Arc::new(Pacer::start().unwrap());
        // tokio's timer would wake the waiters due between 2.1 and 2.975 ms on its
        // millisecond ticks, in one or two groups. The pacer wakes them in turn, about 125 us
        // apart. A stall of the test machine can bunch one attempt's wake-ups, so three tries.
        let mut gaps = Vec::new();
        for _ in 0..3 {
            let woken = eight_waiters(&pacer).await;
            for (at, when) in &woken {
                assert!(when >= at, "woken before its time");
            }
            gaps = woken.windows(2).map(|w| w[1].1 - w[0].1).collect();
            let apart = gaps
                .iter()
                .filter(|gap| **gap >= Duration::from_micros(60))
                .count();
            if apart >= 5 {
                return;
            }
        }
        panic!("the waiters woke together: gaps {gaps:?}");
    }

    #[tokio::test]
    async fn a_past_instant_or_a_stopped_pacer_does_not_wait() {
        let pacer = Pacer::start().unwrap();
        pacer.sleep_until(Instant::now()).await;
        let shared = Arc::clone(&pacer.shared);
        drop(pacer);
        assert!(shared.lock().stopped);
        let stopped = Pacer { shared };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::time::timeout(Duration::from_secs(5), stopped.sleep_until(far))
            .await
            .expect("a stopped pacer must not wait");
    }

    #[tokio::test]
    async fn an_earlier_wait_added_later_is_not_held_behind_a_later_one() {
        let pacer = Arc::new(Pacer::start().unwrap());
        let late = {
            let pacer = Arc::clone(&pacer);
            tokio::spawn(async move {
                pacer
                    .sleep_until(Instant::now() + Duration::from_secs(3600))
                    .await;
            })
        };
        tokio::task::yield_now().await;
        let begun = Instant::now();
        pacer.sleep_until(begun + Duration::from_millis(5)).await;
        assert!(begun.elapsed() < Duration::from_secs(60));
        late.abort();
    }
}
