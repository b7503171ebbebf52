//! Unit and property tests for the [`Forecaster`](crate::Forecaster).

use std::time::{Duration, Instant};

use herald_utils::{Clock, ManualClock};
use proptest::prelude::*;

use crate::forecast::{FORECAST_HORIZON, ForecastSettings, Forecaster};

const TICK: Duration = Duration::from_secs(5);

/// Feeds `samples` of `(connections, deliveries_total)` one tick apart.
fn fed(samples: impl IntoIterator<Item = (u64, u64)>) -> Forecaster {
    let start = ManualClock::new().now();
    let mut forecaster = Forecaster::default();
    for (i, (connections, total)) in samples.into_iter().enumerate() {
        forecaster.observe(start + TICK * i as u32, connections, total);
    }
    forecaster
}

/// A full 15-minute window: connections `1000 + 2/s`, deliveries `500 + 1/s` per second.
fn linear(i: u64) -> (u64, u64) {
    let t = i * 5;
    (1000 + 2 * t, 500 * t + t * t / 2)
}

#[track_caller]
fn assert_within(got: f64, want: f64, relative: f64) {
    assert!(
        (got - want).abs() <= relative * want.abs(),
        "{got} not within {relative} of {want}"
    );
}

#[test]
fn linear_series_is_predicted_within_one_percent() {
    let forecaster = fed((0..=180).map(linear));
    // The newest sample is at t = 900 s; the horizon adds 900 s more.
    let forecast = forecaster.forecast(FORECAST_HORIZON).unwrap();
    assert_within(forecast.connections_in as f64, 1000.0 + 2.0 * 1800.0, 0.01);
    assert_within(forecast.deliveries_per_second_in, 500.0 + 1800.0, 0.01);
    assert!(forecast.confidence > 0.98, "{}", forecast.confidence);
    let trend = forecaster.connections_trend().unwrap();
    assert_within(trend.slope_per_second, 2.0, 1e-9);
    assert_within(trend.intercept, 2800.0, 1e-9);
    assert_within(trend.mean, 1000.0 + 2.0 * 450.0 + 10.0, 0.01);
}

#[test]
fn flat_series_is_certain() {
    let forecaster = fed((0..=180).map(|i| (300, i * 50)));
    let forecast = forecaster.forecast(FORECAST_HORIZON).unwrap();
    assert_eq!(forecast.connections_in, 300);
    assert_within(forecast.deliveries_per_second_in, 10.0, 1e-9);
    assert!(forecast.confidence > 0.99, "{}", forecast.confidence);
}

#[test]
fn noise_lowers_the_confidence() {
    let noisy = fed((0..=180).map(|i| {
        let (connections, total) = linear(i);
        // Alternating +-1500 connections and bursts of deliveries around the same lines.
        let wobble = if i % 2 == 0 { 1500 } else { 0 };
        (connections + wobble, total + (i % 3) * 2000)
    }));
    let clean = fed((0..=180).map(linear))
        .forecast(FORECAST_HORIZON)
        .unwrap();
    let forecast = noisy.forecast(FORECAST_HORIZON).unwrap();
    assert!(
        forecast.confidence < clean.confidence - 0.3,
        "{} vs {}",
        forecast.confidence,
        clean.confidence
    );
    assert!(noisy.connections_trend().unwrap().r_squared < 0.9);
}

#[test]
fn short_window_gives_low_confidence() {
    let forecaster = fed((0..5).map(linear));
    let forecast = forecaster.forecast(FORECAST_HORIZON).unwrap();
    // Four rates over 15 s of a 900 s window: at most 15/900.
    assert!(forecast.confidence < 0.05, "{}", forecast.confidence);
    assert_within(forecast.connections_in as f64, 1000.0 + 2.0 * 920.0, 0.01);
}

#[test]
fn too_few_samples_give_no_forecast() {
    assert_eq!(fed([]).forecast(FORECAST_HORIZON), None);
    assert_eq!(fed((0..2).map(linear)).forecast(FORECAST_HORIZON), None);
    assert_eq!(fed((0..3).map(linear)).forecast_15_min(), None);
    assert!(fed((0..4).map(linear)).forecast_15_min().is_some());
}

#[test]
fn counter_reset_gives_no_negative_rate() {
    let forecaster = fed([
        (10, 1000),
        (10, 2000),
        (10, 3000),
        (10, 5),
        (10, 505),
        (10, 1005),
    ]);
    let trend = forecaster.deliveries_trend().unwrap();
    // The reset interval is skipped: four rates of 200/s and 100/s remain.
    assert_eq!(trend.samples, 4);
    assert!(trend.mean > 0.0);
    assert!(
        forecaster
            .delivery_rates
            .iter()
            .all(|&(_, rate)| rate >= 0.0)
    );
    let forecast = forecaster.forecast(FORECAST_HORIZON).unwrap();
    assert!(forecast.deliveries_per_second_in >= 0.0);
}

#[test]
fn falling_series_stops_at_zero() {
    let forecaster = fed((0..=180).map(|i| (1000 - i * 5, i * 10)));
    let forecast = forecaster.forecast(FORECAST_HORIZON).unwrap();
    assert_eq!(forecast.connections_in, 0);
}

#[test]
fn samples_out_of_order_are_ignored() {
    let start = ManualClock::new().now();
    let mut forecaster = Forecaster::default();
    forecaster.observe(start + TICK, 1, 10);
    forecaster.observe(start, 1_000_000, 0);
    forecaster.observe(start + TICK, 1_000_000, 0);
    assert_eq!(forecaster.connections.len(), 1);
    assert!(forecaster.delivery_rates.is_empty());
}

#[test]
fn old_samples_leave_the_window() {
    let settings = ForecastSettings {
        window: Duration::from_secs(60),
        ..ForecastSettings::default()
    };
    let start = ManualClock::new().now();
    let mut forecaster = Forecaster::new(settings);
    // A spike long ago, then a flat minute: the spike must not bend the trend.
    forecaster.observe(start, 100_000, 0);
    for i in 20..=32u32 {
        forecaster.observe(start + TICK * i, 100, u64::from(i) * 10);
    }
    let trend = forecaster.connections_trend().unwrap();
    assert_eq!(trend.samples, 13);
    assert_eq!(trend.span, Duration::from_secs(60));
    assert_eq!(trend.mean, 100.0);
}

#[test]
fn crossing_reports_when_the_limit_is_reached() {
    let forecaster = fed((0..=180).map(linear));
    // 2800 now, 2 per second: 4600 at the horizon; 3000 is reached after 100 s.
    let crossing = forecaster.crossing(3000).unwrap();
    assert_eq!(crossing.max_connections, 3000);
    assert_within(crossing.connections_in_15_min as f64, 4600.0, 0.01);
    assert_within(crossing.after.as_secs_f64(), 100.0, 0.01);
    assert!(crossing.confidence > 0.98);
    assert_eq!(forecaster.crossing(2000).unwrap().after, Duration::ZERO);
    assert_eq!(forecaster.crossing(5000), None);
    assert_eq!(fed([]).crossing(0), None);
}

#[test]
fn forecast_15_serializes_in_the_stats_shape() {
    let forecast = fed((0..=180).map(|i| (300, i * 50)))
        .forecast_15_min()
        .unwrap();
    let json = serde_json::to_value(forecast).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "connectionsIn15Min": 300,
            "deliveriesPerSecondIn15Min": forecast.deliveries_per_second_in_15_min,
            "confidence": forecast.confidence,
        })
    );
    let general = fed((0..=180).map(|i| (300, i * 50)))
        .forecast(FORECAST_HORIZON)
        .unwrap();
    let keys: Vec<String> = serde_json::to_value(general)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        ["confidence", "connectionsIn", "deliveriesPerSecondIn"]
    );
}

fn at(start: Instant, nanos: u64) -> Instant {
    start
        .checked_add(Duration::from_nanos(nanos))
        .unwrap_or(start)
}

/// Steps between samples: mostly forward by up to a minute, sometimes huge, zero or backwards.
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..60_000_000_000,
        1 => any::<i64>(),
        1 => Just(0i64),
        1 => -10_000_000_000i64..0,
    ]
}

/// Values: mostly small, sometimes anything, including `u64::MAX` and 0.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..100_000,
        1 => any::<u64>(),
        1 => Just(u64::MAX),
        1 => Just(0u64),
    ]
}

proptest! {
    #[test]
    fn forecast_is_never_negative_or_nan(
        samples in prop::collection::vec((step(), value(), value()), 0..80),
        horizon_nanos in any::<u64>(),
        capacity in 0usize..200,
        window_secs in 0u64..100_000,
        min_samples in 0usize..10,
        limit in any::<u64>(),
    ) {
        let settings = ForecastSettings {
            capacity,
            window: Duration::from_secs(window_secs),
            min_samples,
        };
        let start = ManualClock::new().now();
        let mut forecaster = Forecaster::new(settings);
        // Offsets from `start`, kept non-negative since an `Instant` cannot go before it.
        let mut offset = 0u64;
        for &(step, connections, total) in &samples {
            offset = offset.saturating_add_signed(step);
            forecaster.observe(at(start, offset), connections, total);
            for horizon in [Duration::ZERO, Duration::from_nanos(horizon_nanos), Duration::MAX] {
                if let Some(forecast) = forecaster.forecast(horizon) {
                    let rate = forecast.deliveries_per_second_in;
                    prop_assert!(rate.is_finite() && rate >= 0.0, "{}", rate);
                    prop_assert!((0.0..=1.0).contains(&forecast.confidence));
                }
            }
            for trend in [forecaster.connections_trend(), forecaster.deliveries_trend()]
                .into_iter()
                .flatten()
            {
                prop_assert!((0.0..=1.0).contains(&trend.confidence));
                prop_assert!((0.0..=1.0).contains(&trend.r_squared));
            }
            if let Some(crossing) = forecaster.crossing(limit) {
                prop_assert!(crossing.after <= FORECAST_HORIZON);
                prop_assert!(crossing.connections_in_15_min >= limit);
            }
            prop_assert!(forecaster.delivery_rates.iter().all(|&(_, r)| r >= 0.0));
        }
    }
}
