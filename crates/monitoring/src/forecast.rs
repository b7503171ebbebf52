//! The capacity [`Forecaster`]: least-squares trends of connections and deliveries per second
//! over a sliding window of samples, projected a horizon ahead.

use std::time::{Duration, Instant};

use herald_utils::CircularBuffer;
use serde::Serialize;

/// The horizon of [`Forecaster::forecast_15_min`] and [`Forecaster::crossing`]: 15 minutes.
pub const FORECAST_HORIZON: Duration = Duration::from_secs(15 * 60);

/// How many samples a [`Forecaster`] keeps and over how long a window it fits its trends.
///
/// The defaults suit one sample every 5 seconds over 15 minutes.
/// The window is the shorter of [`window`](Self::window) and the last
/// [`capacity`](Self::capacity) samples, so a faster tick needs a larger capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForecastSettings {
    /// The most samples kept per series. Default 180 (15 minutes at one sample per 5 s).
    pub capacity: usize,
    /// Only samples this recent (relative to the newest observation) enter a fit, and a series
    /// reaches full confidence only once its samples span this long. Default 15 minutes.
    pub window: Duration,
    /// The fewest samples in the window before a series has a trend at all; below it the
    /// forecast is `None`. Default 3; values under 2 are treated as 2.
    pub min_samples: usize,
}

impl Default for ForecastSettings {
    fn default() -> Self {
        Self {
            capacity: 180,
            window: Duration::from_secs(15 * 60),
            min_samples: 3,
        }
    }
}

/// Learns how connections and deliveries grow and projects them ahead.
///
/// The service feeds it one sample per tick with [`observe`](Self::observe), reading the time
/// from its `Clock`; nothing here reads a clock. Deliveries arrive as the monotone
/// `deliveries_total` counter and become a deliveries-per-second series: one rate per pair of
/// successive samples, placed at the middle of their interval.
///
/// Each series is fitted by least squares over the window ([`Trend`]); the forecast is the
/// fitted line extended `horizon` past the newest observation, never below zero.
#[derive(Debug, Clone)]
pub struct Forecaster {
    settings: ForecastSettings,
    /// The first observation's instant: sample times are seconds since it.
    origin: Option<Instant>,
    /// The newest observation: seconds since `origin` and the deliveries total then.
    last: Option<(f64, u64)>,
    /// `(seconds since origin, connections)`.
    connections: CircularBuffer<(f64, f64)>,
    /// `(seconds since origin at the interval's middle, deliveries per second)`.
    delivery_rates: CircularBuffer<(f64, f64)>,
}

/// One series' least-squares fit over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// The moving average: the mean of the samples in the window.
    pub mean: f64,
    /// The fitted line's slope, in the series' unit per second.
    pub slope_per_second: f64,
    /// The fitted line's value at the newest observation (time 0 of the forecast).
    pub intercept: f64,
    /// The coefficient of determination of the fit, from 0 to 1; 1 when every sample lies on
    /// the line (including a flat series).
    pub r_squared: f64,
    /// `r_squared × min(1, span / window)`: a perfect fit over half the window scores 0.5.
    pub confidence: f64,
    /// Samples in the window.
    pub samples: usize,
    /// Time from the oldest to the newest sample in the window.
    pub span: Duration,
}

/// Where connections and deliveries per second are headed, `horizon` past the newest
/// observation. Serialized camelCase: `{"connectionsIn":…,"deliveriesPerSecondIn":…,
/// "confidence":…}`; see [`Forecast15`] for the 15-minute shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    /// Connections expected, rounded, never negative.
    pub connections_in: u64,
    /// Deliveries per second expected, finite and never negative.
    pub deliveries_per_second_in: f64,
    /// The lower of the two series' [`Trend::confidence`], from 0 to 1.
    pub confidence: f64,
}

/// A [`Forecast`] for [`FORECAST_HORIZON`], serialized as
/// `{"connectionsIn15Min":…,"deliveriesPerSecondIn15Min":…,"confidence":…}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Forecast15 {
    /// Connections expected in 15 minutes.
    #[serde(rename = "connectionsIn15Min")]
    pub connections_in_15_min: u64,
    /// Deliveries per second expected in 15 minutes.
    #[serde(rename = "deliveriesPerSecondIn15Min")]
    pub deliveries_per_second_in_15_min: f64,
    /// From 0 to 1, as [`Forecast::confidence`].
    pub confidence: f64,
}

/// The connections forecast reaches a limit within [`FORECAST_HORIZON`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crossing {
    /// The limit asked about.
    pub max_connections: u64,
    /// Connections expected at the horizon, at least `max_connections`.
    pub connections_in_15_min: u64,
    /// When the fitted line reaches the limit, from the newest observation; zero when it is
    /// already there.
    pub after: Duration,
    /// The connections [`Trend::confidence`], from 0 to 1. Callers decide how much to trust.
    pub confidence: f64,
}

impl Forecaster {
    /// An empty forecaster.
    pub fn new(settings: ForecastSettings) -> Self {
        Self {
            settings,
            origin: None,
            last: None,
            connections: CircularBuffer::new(settings.capacity),
            delivery_rates: CircularBuffer::new(settings.capacity),
        }
    }

    /// The settings it was built with.
    pub const fn settings(&self) -> &ForecastSettings {
        &self.settings
    }

    /// Records one tick: the time `at` (from the caller's clock), the live `connections` and the
    /// `deliveries_total` counter since start.
    ///
    /// A sample at or before the previous one is ignored, since a rate needs time to pass.
    /// A total lower than the previous one (a counter reset) gives no rate for that interval
    /// and becomes the new baseline, so rates are never negative.
    pub fn observe(&mut self, at: Instant, connections: u64, deliveries_total: u64) {
        let origin = *self.origin.get_or_insert(at);
        let now = at.saturating_duration_since(origin).as_secs_f64();
        if let Some((previous, previous_total)) = self.last {
            if now <= previous {
                return;
            }
            if let Some(delivered) = deliveries_total.checked_sub(previous_total) {
                let rate = delivered as f64 / (now - previous);
                self.delivery_rates.push(((previous + now) / 2.0, rate));
            }
        }
        self.last = Some((now, deliveries_total));
        self.connections.push((now, connections as f64));
    }

    /// The connections trend; `None` until the window holds enough samples.
    pub fn connections_trend(&self) -> Option<Trend> {
        self.trend(&self.connections)
    }

    /// The deliveries-per-second trend; `None` until the window holds enough rates (one fewer
    /// than the observations).
    pub fn deliveries_trend(&self) -> Option<Trend> {
        self.trend(&self.delivery_rates)
    }

    /// Both series `horizon` past the newest observation; `None` until both have a trend.
    pub fn forecast(&self, horizon: Duration) -> Option<Forecast> {
        let connections = self.connections_trend()?;
        let deliveries = self.deliveries_trend()?;
        Some(Forecast {
            connections_in: to_count(project(&connections, horizon)),
            deliveries_per_second_in: project(&deliveries, horizon),
            confidence: connections.confidence.min(deliveries.confidence),
        })
    }

    /// [`forecast`](Self::forecast) for [`FORECAST_HORIZON`], in the shape `/api/stats`
    /// serves.
    pub fn forecast_15_min(&self) -> Option<Forecast15> {
        let forecast = self.forecast(FORECAST_HORIZON)?;
        Some(Forecast15 {
            connections_in_15_min: forecast.connections_in,
            deliveries_per_second_in_15_min: forecast.deliveries_per_second_in,
            confidence: forecast.confidence,
        })
    }

    /// Whether connections are forecast to reach `max_connections` within
    /// [`FORECAST_HORIZON`]; `None` when not, or when there is no connections trend yet.
    ///
    /// Only the connections trend counts, so deliveries need not have a trend. The crossing
    /// carries its confidence rather than being withheld when it is low.
    pub fn crossing(&self, max_connections: u64) -> Option<Crossing> {
        let trend = self.connections_trend()?;
        let at_horizon = to_count(project(&trend, FORECAST_HORIZON));
        if at_horizon < max_connections {
            return None;
        }
        let gap = max_connections as f64 - trend.intercept;
        let after = if gap <= 0.0 || trend.slope_per_second <= 0.0 {
            Duration::ZERO
        } else {
            // The line reaches the limit by the horizon (checked above), so this is at most
            // 15 minutes, up to rounding; the clamp keeps it there and off NaN.
            let seconds = (gap / trend.slope_per_second).clamp(0.0, FORECAST_HORIZON.as_secs_f64());
            Duration::try_from_secs_f64(seconds).unwrap_or(FORECAST_HORIZON)
        };
        Some(Crossing {
            max_connections,
            connections_in_15_min: at_horizon,
            after,
            confidence: trend.confidence,
        })
    }

    /// Fits `series` over the window ending at the newest observation.
    fn trend(&self, series: &CircularBuffer<(f64, f64)>) -> Option<Trend> {
        let (now, _) = self.last?;
        let window = self.settings.window.as_secs_f64();
        let start = now - window;
        let points = || series.iter().copied().filter(move |&(x, _)| x >= start);
        let fit = Fit::of(points)?;
        if fit.samples < self.settings.min_samples.max(2) {
            return None;
        }
        let coverage = if window > 0.0 {
            (fit.span / window).min(1.0)
        } else {
            1.0
        };
        let confidence = sanitize_unit(fit.r_squared * coverage);
        Some(Trend {
            mean: fit.mean_y,
            slope_per_second: fit.slope,
            intercept: fit.mean_y + fit.slope * (now - fit.mean_x),
            r_squared: fit.r_squared,
            confidence,
            samples: fit.samples,
            span: Duration::try_from_secs_f64(fit.span).unwrap_or(Duration::MAX),
        })
    }
}

impl Default for Forecaster {
    fn default() -> Self {
        Self::new(ForecastSettings::default())
    }
}

/// A least-squares line through `(x, y)` points.
struct Fit {
    samples: usize,
    mean_x: f64,
    mean_y: f64,
    slope: f64,
    r_squared: f64,
    /// `max x − min x`, in seconds.
    span: f64,
}

impl Fit {
    /// The fit of the points `points` yields (called twice), or `None` with fewer than two distinct `x`.
    ///
    /// Deviations are taken from the means, as [`CircularBuffer::slope`] does, so the
    /// precision does not depend on how long the forecaster has run.
    fn of<I: Iterator<Item = (f64, f64)>>(points: impl Fn() -> I) -> Option<Self> {
        let (samples, sum_x, sum_y, min_x, max_x, max_abs_y) = points().fold(
            (0usize, 0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, 0.0f64),
            |(n, sx, sy, lo, hi, big), (x, y)| {
                (
                    n + 1,
                    sx + x,
                    sy + y,
                    lo.min(x),
                    hi.max(x),
                    big.max(y.abs()),
                )
            },
        );
        if samples < 2 {
            return None;
        }
        let n = samples as f64;
        let (mean_x, mean_y) = (sum_x / n, sum_y / n);
        let (sxx, sxy, syy) = points().fold((0.0, 0.0, 0.0), |(sxx, sxy, syy), (x, y)| {
            let (dx, dy) = (x - mean_x, y - mean_y);
            (sxx + dx * dx, sxy + dx * dy, syy + dy * dy)
        });
        if !(sxx > 0.0 && sxx.is_finite()) {
            return None;
        }
        let slope = sxy / sxx;
        // A series that varies by no more than rounding (relative 1e-12) is flat and fits
        // exactly; without this, the rounding of the mean would make its R² arbitrary.
        let flat = syy <= n * (1e-12 * max_abs_y).powi(2);
        let r_squared = if flat {
            1.0
        } else {
            sanitize_unit(sxy * sxy / (sxx * syy))
        };
        Some(Self {
            samples,
            mean_x,
            mean_y,
            slope: if slope.is_finite() { slope } else { 0.0 },
            r_squared,
            span: max_x - min_x,
        })
    }
}

/// The trend's value `horizon` past the newest observation, finite and never negative.
fn project(trend: &Trend, horizon: Duration) -> f64 {
    let value = trend.intercept + trend.slope_per_second * horizon.as_secs_f64();
    if value.is_nan() {
        return 0.0;
    }
    value.clamp(0.0, f64::MAX)
}

/// A non-negative finite value rounded to a count; the cast saturates at `u64::MAX`.
fn to_count(value: f64) -> u64 {
    value.round() as u64
}

/// `value` clamped into `0..=1`, with NaN as 0.
fn sanitize_unit(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests;
