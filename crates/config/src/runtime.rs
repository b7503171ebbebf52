//! `RuntimeConfig`: the few values an operator or the degradation logic may change while Herald runs.

use std::{
    fmt,
    ops::RangeInclusive,
    str::FromStr,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::sync::watch;

use crate::base::BaseConfig;

/// A live-tunable setting. The names (`message_batch_size`, ...) are the keys of
/// `PATCH /api/config/runtime` and part of the contract.
///
/// Variants are declared in name order, so [`RuntimeKey::ALL`], `Ord` and the JSON of a
/// [`RuntimeSnapshot`] agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuntimeKey {
    /// `compression_threshold_bytes`: smallest outbound message worth compressing, in bytes.
    /// Range 0 to 67108864.
    CompressionThresholdBytes,
    /// `dedupe_cache_size`: publish ids remembered for dedupe. Range 0 to 10000000.
    DedupeCacheSize,
    /// `dedupe_window_ms`: the publish dedupe window, in milliseconds. Range 0 to 3600000.
    DedupeWindowMs,
    /// `max_connections_per_user`: cap on one user's connections above the tier quotas.
    /// Range 1 to 10000.
    MaxConnectionsPerUser,
    /// `memory_cleanup_interval_ms`: interval of the memory cleanup sweep, in milliseconds.
    /// Range 1000 to 86400000.
    MemoryCleanupIntervalMs,
    /// `message_batch_delay_ms`: how long a writer waits to fill a batch, in milliseconds.
    /// Range 0 to 10000.
    MessageBatchDelayMs,
    /// `message_batch_size`: frames a writer sends per flush at most. Range 1 to 10000.
    MessageBatchSize,
}

/// How many runtime keys there are.
const COUNT: usize = RuntimeKey::ALL.len();

impl RuntimeKey {
    /// Every key, in name order.
    pub const ALL: [Self; 7] = [
        Self::CompressionThresholdBytes,
        Self::DedupeCacheSize,
        Self::DedupeWindowMs,
        Self::MaxConnectionsPerUser,
        Self::MemoryCleanupIntervalMs,
        Self::MessageBatchDelayMs,
        Self::MessageBatchSize,
    ];

    /// The snake_case name used in the HTTP API and as the TOML key.
    pub const fn name(self) -> &'static str {
        match self {
            Self::CompressionThresholdBytes => "compression_threshold_bytes",
            Self::DedupeCacheSize => "dedupe_cache_size",
            Self::DedupeWindowMs => "dedupe_window_ms",
            Self::MaxConnectionsPerUser => "max_connections_per_user",
            Self::MemoryCleanupIntervalMs => "memory_cleanup_interval_ms",
            Self::MessageBatchDelayMs => "message_batch_delay_ms",
            Self::MessageBatchSize => "message_batch_size",
        }
    }

    /// The accepted values, the same as the base setting of the same name.
    pub const fn range(self) -> RangeInclusive<u64> {
        let (min, max) = self.bounds();
        RangeInclusive::new(min, max)
    }

    /// The range as `(min, max)`, usable in constants.
    pub(crate) const fn bounds(self) -> (u64, u64) {
        match self {
            Self::CompressionThresholdBytes => (0, 67_108_864),
            Self::DedupeCacheSize => (0, 10_000_000),
            Self::DedupeWindowMs => (0, 3_600_000),
            Self::MaxConnectionsPerUser => (1, 10_000),
            Self::MemoryCleanupIntervalMs => (1_000, 86_400_000),
            Self::MessageBatchDelayMs => (0, 10_000),
            Self::MessageBatchSize => (1, 10_000),
        }
    }

    /// The position of the key in [`RuntimeKey::ALL`] and in the value arrays.
    const fn index(self) -> usize {
        self as usize
    }

    /// The key's value in `base`, clamped into its range.
    fn initial(self, base: &BaseConfig) -> u64 {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let value = match self {
            Self::CompressionThresholdBytes => count(base.compression_threshold_bytes),
            Self::DedupeCacheSize => count(base.dedupe_cache_size),
            Self::DedupeWindowMs => millis(base.dedupe_window),
            Self::MaxConnectionsPerUser => count(base.max_connections_per_user),
            Self::MemoryCleanupIntervalMs => millis(base.memory_cleanup_interval),
            Self::MessageBatchDelayMs => millis(base.message_batch_delay),
            Self::MessageBatchSize => count(base.message_batch_size),
        };
        let (min, max) = self.bounds();
        value.clamp(min, max)
    }
}

impl fmt::Display for RuntimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RuntimeKey {
    type Err = RuntimeConfigError;

    /// Parses a snake_case name exactly, as the HTTP API sends it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|key| key.name() == s)
            .ok_or_else(|| RuntimeConfigError::UnknownKey(s.to_owned()))
    }
}

/// Why a runtime value changed; logged with every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// An operator, through `PATCH /api/config/runtime`.
    Operator,
    /// The memory degradation logic, entering or leaving `level`.
    Degradation {
        /// The degradation level that asked for the change (0 is normal).
        level: u8,
    },
    /// A return to the initial values.
    Reset,
}

impl fmt::Display for ChangeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator => f.write_str("operator"),
            Self::Degradation { level } => write!(f, "degradation level {level}"),
            Self::Reset => f.write_str("reset"),
        }
    }
}

/// Why a runtime change was refused. The messages are fit for an HTTP 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeConfigError {
    /// The key is not a runtime setting.
    #[error(
        "unknown runtime config key {0:?}: expected one of compression_threshold_bytes, dedupe_cache_size, dedupe_window_ms, max_connections_per_user, memory_cleanup_interval_ms, message_batch_delay_ms, message_batch_size"
    )]
    UnknownKey(String),
    /// The value lies outside the key's range; nothing was changed.
    #[error("{key} must be from {} to {}, got {value}", .range.start(), .range.end())]
    OutOfRange {
        /// The key that was being set.
        key: RuntimeKey,
        /// The refused value.
        value: u64,
        /// The accepted values.
        range: RangeInclusive<u64>,
    },
}

/// The runtime values at one moment, one per [`RuntimeKey`].
///
/// Serializes as a flat JSON object in key-name order, e.g.
/// `{"compression_threshold_bytes":1024,...,"message_batch_size":10}`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSnapshot([u64; COUNT]);

impl RuntimeSnapshot {
    /// The value of `key`.
    pub fn get(&self, key: RuntimeKey) -> u64 {
        self.0[key.index()]
    }

    /// Every key and its value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (RuntimeKey, u64)> + '_ {
        RuntimeKey::ALL.into_iter().map(|key| (key, self.get(key)))
    }
}

impl fmt::Debug for RuntimeSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k.name(), v)))
            .finish()
    }
}

impl Serialize for RuntimeSnapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(COUNT))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key.name(), &value)?;
        }
        map.end()
    }
}

/// The live-tunable values, shared as `Arc<RuntimeConfig>`.
///
/// Reads ([`get`](Self::get) and the typed accessors) are one atomic load each, for the hot
/// path. Writes are bounds-checked, serialized by a small lock, logged at info level with key,
/// old value, new value and reason, and announced on a [`watch`] channel. Each value is read
/// independently, so a reader racing an [`apply`](Self::apply) may see some of its values
/// before the others; every value it sees is within range.
pub struct RuntimeConfig {
    /// The current values, indexed by [`RuntimeKey::index`].
    values: [AtomicU64; COUNT],
    /// The values at construction, restored by [`reset`](Self::reset).
    initial: [u64; COUNT],
    /// Serializes writers, so each notification carries the state after its own change and
    /// a slower writer cannot publish an older snapshot over a newer one.
    write_lock: Mutex<()>,
    /// Change notifications; holds the latest snapshot.
    changes: watch::Sender<RuntimeSnapshot>,
}

impl RuntimeConfig {
    /// Starts from the base fields of the same names. A hand-built `base` with a value out of
    /// range (a loaded one never has one) is clamped into the range.
    pub fn new(base: &BaseConfig) -> Self {
        let initial = RuntimeKey::ALL.map(|key| key.initial(base));
        Self {
            values: initial.map(AtomicU64::new),
            initial,
            write_lock: Mutex::new(()),
            changes: watch::Sender::new(RuntimeSnapshot(initial)),
        }
    }

    /// The current value of `key`: one atomic load.
    pub fn get(&self, key: RuntimeKey) -> u64 {
        // Acquire pairs with the Release store in `store`; each value stands alone, so no
        // stronger ordering is needed.
        self.values[key.index()].load(Ordering::Acquire)
    }

    /// Frames a writer sends per flush at most (at least 1).
    pub fn message_batch_size(&self) -> usize {
        self.count(RuntimeKey::MessageBatchSize)
    }

    /// How long a writer waits to fill a batch; zero sends at once.
    pub fn message_batch_delay(&self) -> Duration {
        self.millis(RuntimeKey::MessageBatchDelayMs)
    }

    /// Smallest outbound message worth compressing, in bytes.
    pub fn compression_threshold_bytes(&self) -> usize {
        self.count(RuntimeKey::CompressionThresholdBytes)
    }

    /// Publish ids remembered for dedupe.
    pub fn dedupe_cache_size(&self) -> usize {
        self.count(RuntimeKey::DedupeCacheSize)
    }

    /// The publish dedupe window.
    pub fn dedupe_window(&self) -> Duration {
        self.millis(RuntimeKey::DedupeWindowMs)
    }

    /// Cap on one user's connections above the tier quotas (at least 1).
    pub fn max_connections_per_user(&self) -> usize {
        self.count(RuntimeKey::MaxConnectionsPerUser)
    }

    /// Interval of the memory cleanup sweep.
    pub fn memory_cleanup_interval(&self) -> Duration {
        self.millis(RuntimeKey::MemoryCleanupIntervalMs)
    }

    /// Sets one value and returns the old one. Out of range, nothing changes.
    pub fn set(
        &self,
        key: RuntimeKey,
        value: u64,
        reason: ChangeReason,
    ) -> Result<u64, RuntimeConfigError> {
        check(key, value)?;
        let _guard = self.lock();
        let old = self.get(key);
        if self.store(key, value, reason) {
            self.notify();
        }
        Ok(old)
    }

    /// Sets several values: all of them, or none when any is out of range. A key given twice
    /// takes its last value.
    pub fn apply(
        &self,
        changes: &[(RuntimeKey, u64)],
        reason: ChangeReason,
    ) -> Result<(), RuntimeConfigError> {
        for &(key, value) in changes {
            check(key, value)?;
        }
        let _guard = self.lock();
        let mut changed = false;
        for &(key, value) in changes {
            changed |= self.store(key, value, reason);
        }
        if changed {
            self.notify();
        }
        Ok(())
    }

    /// Restores every value to its initial (base) value.
    pub fn reset(&self, reason: ChangeReason) {
        let _guard = self.lock();
        let mut changed = false;
        for key in RuntimeKey::ALL {
            changed |= self.store(key, self.initial[key.index()], reason);
        }
        if changed {
            self.notify();
        }
    }

    /// Every current value.
    pub fn snapshot(&self) -> RuntimeSnapshot {
        RuntimeSnapshot(RuntimeKey::ALL.map(|key| self.get(key)))
    }

    /// The initial (base) values, which [`reset`](Self::reset) restores.
    pub fn initial(&self) -> RuntimeSnapshot {
        RuntimeSnapshot(self.initial)
    }

    /// A receiver that sees a new snapshot after every change that alters a value. The
    /// current snapshot counts as seen.
    pub fn subscribe(&self) -> watch::Receiver<RuntimeSnapshot> {
        self.changes.subscribe()
    }

    /// Takes the writer lock. The lock guards no data, so a writer that panicked while
    /// holding it left nothing inconsistent and the poison is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores one checked value and logs it; returns whether it changed. Callers hold the lock.
    fn store(&self, key: RuntimeKey, value: u64, reason: ChangeReason) -> bool {
        let old = self.values[key.index()].swap(value, Ordering::Release);
        if old == value {
            return false;
        }
        tracing::info!(key = key.name(), old, new = value, %reason, "runtime config changed");
        true
    }

    /// Publishes the current values. Callers hold the lock.
    fn notify(&self) {
        // `send_replace` stores the value even when nobody subscribes yet.
        self.changes.send_replace(self.snapshot());
    }

    /// A value as a count.
    fn count(&self, key: RuntimeKey) -> usize {
        usize::try_from(self.get(key)).unwrap_or(usize::MAX)
    }

    /// A value as milliseconds.
    fn millis(&self, key: RuntimeKey) -> Duration {
        Duration::from_millis(self.get(key))
    }
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RuntimeConfig")
            .field(&self.snapshot())
            .finish()
    }
}

/// Refuses a value outside the key's range.
fn check(key: RuntimeKey, value: u64) -> Result<(), RuntimeConfigError> {
    let range = key.range();
    if range.contains(&value) {
        Ok(())
    } else {
        Err(RuntimeConfigError::OutOfRange { key, value, range })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn config() -> RuntimeConfig {
        RuntimeConfig::new(&BaseConfig::default())
    }

    #[test]
    fn runtime_config_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<RuntimeConfig>();
        assert_send_sync::<RuntimeSnapshot>();
    }

    #[test]
    fn starts_from_the_base_values() {
        let base = BaseConfig {
            message_batch_size: 32,
            message_batch_delay: Duration::from_millis(7),
            ..BaseConfig::default()
        };
        let runtime = RuntimeConfig::new(&base);
        assert_eq!(runtime.message_batch_size(), 32);
        assert_eq!(runtime.message_batch_delay(), Duration::from_millis(7));
        assert_eq!(runtime.compression_threshold_bytes(), 1024);
        assert_eq!(runtime.dedupe_cache_size(), 5000);
        assert_eq!(runtime.dedupe_window(), Duration::from_secs(5));
        assert_eq!(runtime.max_connections_per_user(), 25);
        assert_eq!(runtime.memory_cleanup_interval(), Duration::from_secs(180));
    }

    #[test]
    fn out_of_range_base_values_are_clamped() {
        let base = BaseConfig {
            message_batch_size: 0,
            memory_cleanup_interval: Duration::from_secs(365 * 86_400),
            ..BaseConfig::default()
        };
        let runtime = RuntimeConfig::new(&base);
        assert_eq!(runtime.message_batch_size(), 1);
        assert_eq!(
            runtime.memory_cleanup_interval(),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn keys_parse_from_their_names_only() {
        for key in RuntimeKey::ALL {
            assert_eq!(key.name().parse(), Ok(key));
            assert_eq!(key.to_string(), key.name());
        }
        assert_eq!(
            "batch_size".parse::<RuntimeKey>(),
            Err(RuntimeConfigError::UnknownKey("batch_size".to_owned()))
        );
        assert!("MESSAGE_BATCH_SIZE".parse::<RuntimeKey>().is_err());
    }

    #[test]
    fn all_is_in_name_order() {
        let names: Vec<&str> = RuntimeKey::ALL.iter().map(|k| k.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        for (i, key) in RuntimeKey::ALL.iter().enumerate() {
            assert_eq!(key.index(), i);
        }
    }

    #[test]
    fn error_messages_are_fit_for_http() {
        let err = "nope".parse::<RuntimeKey>().unwrap_err();
        assert!(
            err.to_string().starts_with(
                r#"unknown runtime config key "nope": expected one of compression_threshold_bytes"#
            ),
            "{err}"
        );
        let err = config()
            .set(RuntimeKey::MessageBatchSize, 0, ChangeReason::Operator)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "message_batch_size must be from 1 to 10000, got 0"
        );
    }

    #[test]
    fn set_returns_the_old_value_and_stores_the_new() {
        let runtime = config();
        let old = runtime
            .set(RuntimeKey::MessageBatchSize, 64, ChangeReason::Operator)
            .unwrap();
        assert_eq!(old, 10);
        assert_eq!(runtime.get(RuntimeKey::MessageBatchSize), 64);
        assert_eq!(runtime.message_batch_size(), 64);
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let runtime = config();
        let before = runtime.snapshot();
        let err = runtime
            .apply(
                &[
                    (RuntimeKey::MessageBatchSize, 20),
                    (RuntimeKey::MaxConnectionsPerUser, 0),
                ],
                ChangeReason::Operator,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            RuntimeConfigError::OutOfRange {
                key: RuntimeKey::MaxConnectionsPerUser,
                value: 0,
                ..
            }
        ));
        assert_eq!(runtime.snapshot(), before);

        runtime
            .apply(
                &[
                    (RuntimeKey::MessageBatchSize, 20),
                    (RuntimeKey::MaxConnectionsPerUser, 3),
                    (RuntimeKey::MessageBatchSize, 30),
                ],
                ChangeReason::Degradation { level: 2 },
            )
            .unwrap();
        assert_eq!(runtime.message_batch_size(), 30);
        assert_eq!(runtime.max_connections_per_user(), 3);
    }

    #[test]
    fn reset_restores_the_initial_values() {
        let runtime = config();
        let initial = runtime.snapshot();
        runtime
            .apply(
                &[
                    (RuntimeKey::DedupeWindowMs, 1),
                    (RuntimeKey::CompressionThresholdBytes, 0),
                ],
                ChangeReason::Operator,
            )
            .unwrap();
        assert_ne!(runtime.snapshot(), initial);
        runtime.reset(ChangeReason::Reset);
        assert_eq!(runtime.snapshot(), initial);
        assert_eq!(runtime.initial(), initial);
    }

    #[test]
    fn snapshot_serializes_as_a_flat_map_in_name_order() {
        // TOML stands in for JSON here: both serialize a map entry by entry, in the order given.
        let text = toml::to_string(&config().snapshot()).unwrap();
        assert_eq!(
            text,
            "compression_threshold_bytes = 1024\n\
             dedupe_cache_size = 5000\n\
             dedupe_window_ms = 5000\n\
             max_connections_per_user = 25\n\
             memory_cleanup_interval_ms = 180000\n\
             message_batch_delay_ms = 0\n\
             message_batch_size = 10\n"
        );
    }

    #[test]
    fn subscribers_see_changes_but_not_no_ops() {
        let runtime = config();
        let mut rx = runtime.subscribe();
        assert!(!rx.has_changed().unwrap());

        runtime
            .set(RuntimeKey::MessageBatchSize, 10, ChangeReason::Operator)
            .unwrap();
        assert!(
            !rx.has_changed().unwrap(),
            "setting the same value is no change"
        );

        runtime
            .set(RuntimeKey::MessageBatchSize, 11, ChangeReason::Operator)
            .unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().get(RuntimeKey::MessageBatchSize), 11);

        let _ = runtime.apply(&[(RuntimeKey::MessageBatchSize, 0)], ChangeReason::Operator);
        assert!(
            !rx.has_changed().unwrap(),
            "a refused apply changes nothing"
        );

        runtime.reset(ChangeReason::Reset);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().get(RuntimeKey::MessageBatchSize), 10);
    }

    #[test]
    fn concurrent_sets_leave_the_last_snapshot_current() {
        let runtime = Arc::new(config());
        let rx = runtime.subscribe();
        let threads: Vec<_> = RuntimeKey::ALL
            .into_iter()
            .map(|key| {
                let runtime = Arc::clone(&runtime);
                std::thread::spawn(move || {
                    let (min, max) = key.bounds();
                    for value in (min..=max).take(200) {
                        runtime.set(key, value, ChangeReason::Operator).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*rx.borrow(), runtime.snapshot());
    }

    /// A key and a value inside its range.
    fn in_range() -> impl Strategy<Value = (RuntimeKey, u64)> {
        (0..COUNT, any::<u64>()).prop_map(|(i, v)| {
            let key = RuntimeKey::ALL[i];
            let (min, max) = key.bounds();
            (key, min + v % (max - min + 1))
        })
    }

    /// A key and a value outside its range (below it when the range allows, else above).
    fn out_of_range() -> impl Strategy<Value = (RuntimeKey, u64)> {
        (0..COUNT, any::<u64>(), any::<bool>()).prop_map(|(i, v, below)| {
            let key = RuntimeKey::ALL[i];
            let (min, max) = key.bounds();
            let value = if below && min > 0 {
                v % min
            } else {
                max + 1 + v % (u64::MAX - max)
            };
            (key, value)
        })
    }

    proptest! {
        #[test]
        fn values_in_range_are_stored_and_read_back((key, value) in in_range()) {
            let runtime = config();
            runtime.set(key, value, ChangeReason::Operator).unwrap();
            prop_assert_eq!(runtime.get(key), value);
            prop_assert_eq!(runtime.snapshot().get(key), value);
        }

        #[test]
        fn values_out_of_range_are_refused_and_change_nothing((key, value) in out_of_range()) {
            let runtime = config();
            let before = runtime.snapshot();
            let refused = runtime.set(key, value, ChangeReason::Operator);
            prop_assert_eq!(
                refused,
                Err(RuntimeConfigError::OutOfRange { key, value, range: key.range() })
            );
            prop_assert_eq!(runtime.snapshot(), before);
        }
    }
}
