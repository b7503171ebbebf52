//! Per-user rate limits on client writes (`publish`, `update_preferences`): a token bucket per
//! user holding one minute of the tier's `messages_per_minute`, refilled continuously, read on
//! the gateway clock.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use crate::{ids::UserId, sizes::compact};

/// Consecutive refusals after which a connection is closed 4008 (rate limit abused).
pub(crate) const ABUSE_THRESHOLD: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: u64,
    capacity: f64,
}

/// Every user's bucket.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<UserId, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from `user`'s bucket of `per_minute` tokens; `Err(wait_ms)` when empty.
    pub(crate) fn try_take(&self, user: &UserId, per_minute: u32, now_ms: u64) -> Result<(), u64> {
        let capacity = f64::from(per_minute.max(1));
        let per_ms = capacity / 60_000.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(user.clone()).or_insert(Bucket {
            tokens: capacity,
            updated_ms: now_ms,
            capacity,
        });
        // The tier may differ between a user's tokens; the latest one applies.
        bucket.capacity = capacity;
        let elapsed = now_ms.saturating_sub(bucket.updated_ms) as f64;
        bucket.tokens = (bucket.tokens + elapsed * per_ms).min(capacity);
        bucket.updated_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        // `as` saturates; the wait is small and positive.
        Err(((1.0 - bucket.tokens) / per_ms).ceil() as u64)
    }

    /// Forgets buckets that have refilled completely: they hold nothing a new one would not.
    /// Then gives back the map's spare capacity. Returns the buckets forgotten and the
    /// estimated bytes freed.
    pub(crate) fn forget_full(&self, now_ms: u64) -> (usize, usize) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let before = buckets.len();
        buckets.retain(|_, bucket| {
            let elapsed = now_ms.saturating_sub(bucket.updated_ms) as f64;
            bucket.tokens + elapsed * bucket.capacity / 60_000.0 < bucket.capacity
        });
        let forgotten = before - buckets.len();
        // A user id is a short string on the heap besides its entry.
        let entry = std::mem::size_of::<(UserId, Bucket)>() + 32;
        (forgotten, forgotten * entry + compact(&mut buckets))
    }

    /// Users with a bucket.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_minute_of_burst_then_refills_continuously() {
        let limiter = RateLimiter::default();
        let user = UserId::new("u");
        for _ in 0..30 {
            assert_eq!(limiter.try_take(&user, 30, 0), Ok(()));
        }
        // Empty: one token comes back every two seconds at 30 per minute.
        assert_eq!(limiter.try_take(&user, 30, 0), Err(2_000));
        assert_eq!(limiter.try_take(&user, 30, 1_000), Err(1_000));
        assert_eq!(limiter.try_take(&user, 30, 2_000), Ok(()));
        // Buckets are per user.
        assert_eq!(limiter.try_take(&UserId::new("v"), 30, 2_000), Ok(()));
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let limiter = RateLimiter::default();
        let user = UserId::new("u");
        assert_eq!(limiter.try_take(&user, 60, 0), Ok(()));
        limiter.forget_full(500);
        assert_eq!(limiter.len(), 1);
        limiter.forget_full(1_000);
        assert_eq!(limiter.len(), 0);
    }
}
