//! [`MetricsReporter`]: owns the Prometheus recorder and renders `/metrics`, the
//! [`Stats`] snapshot included.

use std::{sync::Arc, time::Duration};

use metrics::{Key, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusRecorder};

use crate::{
    latency::LatencyHistogram,
    stats::{MetricKind, Stats},
};

/// Bucket bounds of every histogram, in seconds (10 us to 60 s); every histogram Herald
/// records is a latency.
///
/// Fixed buckets make every histogram a Prometheus histogram: recording is a bucket
/// increment, where the default summaries keep samples that the upkeep then sorts (a stall
/// every few seconds at tens of thousands of samples per second).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The metadata the [`Stats`] series are registered with (the exporter ignores it).
const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The process's Prometheus recorder: every `metrics::counter!`, `gauge!` and `histogram!`
/// lands in it once [`install`](Self::install)ed, and [`render`](Self::render) writes it out
/// with the [`Stats`] snapshot, so `/api/stats` and `/metrics` read the same numbers.
///
/// The [`Stats`] counts become gauges (counts now) and counters (counts since start, set to
/// their absolute value); which and under what names is [`Stats::samples`], beside the fields.
#[derive(Debug, Clone)]
pub struct MetricsReporter {
    recorder: Arc<PrometheusRecorder>,
}

/// Why the metrics recorder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter refused its configuration.
    #[error("cannot configure the metrics exporter: {0}")]
    Build(#[from] BuildError),
    /// Another global recorder is installed already; the process has at most one.
    #[error("a metrics recorder is already installed")]
    AlreadyInstalled,
}

impl MetricsReporter {
    /// The `Content-Type` of [`render`](Self::render)'s text (Prometheus exposition 0.0.4).
    pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// How often [`run_upkeep`](Self::run_upkeep) should run.
    pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

    /// Builds the recorder and installs it as the process's global one. Call once, before
    /// anything records a metric (metrics recorded earlier are lost).
    pub fn install() -> Result<Self, MetricsError> {
        let reporter = Self::build()?;
        metrics::set_global_recorder(Arc::clone(&reporter.recorder))
            .map_err(|_| MetricsError::AlreadyInstalled)?;
        Ok(reporter)
    }

    /// A reporter whose recorder is not installed: only what is registered on it directly
    /// (the [`Stats`] series, or a `metrics::with_local_recorder` scope) shows.
    fn build() -> Result<Self, MetricsError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS_SECONDS)?
            .build_recorder();
        Ok(Self {
            recorder: Arc::new(recorder),
        })
    }

    /// Sets the [`Stats`] series from `stats`, then renders every metric as Prometheus text,
    /// the delivery `latency` histogram last.
    ///
    /// A reading that is unknown is left out until it is known. Counters only grow: a
    /// snapshot lower than one rendered before leaves the counter where it was.
    pub fn render(&self, stats: &Stats, latency: &LatencyHistogram) -> String {
        for sample in stats.samples() {
            let key = match sample.label {
                Some((name, value)) => Key::from_parts(sample.name, vec![Label::new(name, value)]),
                None => Key::from_static_name(sample.name),
            };
            match sample.kind {
                // Gauges are levels far below 2^53: exact as f64.
                MetricKind::Gauge => self
                    .recorder
                    .register_gauge(&key, &METADATA)
                    .set(sample.value as f64),
                MetricKind::Counter => self
                    .recorder
                    .register_counter(&key, &METADATA)
                    .absolute(sample.value),
            }
        }
        let mut text = self.recorder.handle().render();
        latency.write_prometheus(&mut text);
        text
    }

    /// Drains histogram samples into their buckets and drops idle series; run it every
    /// [`UPKEEP_INTERVAL`](Self::UPKEEP_INTERVAL), or histograms grow between scrapes.
    pub fn run_upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        latency::LatencyHistogram,
        reporter::MetricsReporter,
        stats::{EventStats, MemoryStats, MessageStats, ShedStats, Stats},
    };

    fn reporter() -> MetricsReporter {
        MetricsReporter::build().expect("the buckets are valid")
    }

    fn stats() -> Stats {
        Stats {
            connections: 3,
            users: 2,
            subscriptions: 5,
            topics: 4,
            messages: MessageStats {
                published: 7,
                deduplicated: 1,
                delivered: 21,
                shed: 2,
                shed_by_priority: ShedStats {
                    low: 2,
                    ..ShedStats::default()
                },
                ..MessageStats::default()
            },
            events: EventStats {
                pending: 6,
                ..EventStats::default()
            },
            memory: MemoryStats {
                rss_bytes: 4096,
                used_bytes: 1024,
                allocated_bytes: None,
                limit_bytes: Some(8192),
                pressure_percent: Some(12.5),
            },
            ..Stats::default()
        }
    }

    /// Renders `stats` on `reporter` and checks that every expected line is in the text.
    #[track_caller]
    fn check(reporter: &MetricsReporter, stats: &Stats, expected: &[&str]) {
        let text = reporter.render(stats, &LatencyHistogram::new());
        let lines: Vec<&str> = text.lines().collect();
        for line in expected {
            assert!(lines.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn counts_now_are_gauges() {
        check(
            &reporter(),
            &stats(),
            &[
                "# TYPE herald_connections gauge",
                "herald_connections 3",
                "herald_users 2",
                "herald_subscriptions 5",
                "herald_topics 4",
                "herald_events_pending 6",
                "herald_memory_rss_bytes 4096",
                "herald_memory_used_bytes 1024",
                "herald_memory_limit_bytes 8192",
            ],
        );
    }

    #[test]
    fn counts_since_start_are_counters() {
        check(
            &reporter(),
            &stats(),
            &[
                "# TYPE herald_messages_published_total counter",
                "herald_messages_published_total 7",
                "herald_messages_deduplicated_total 1",
                "herald_messages_delivered_total 21",
                "herald_messages_shed_total{priority=\"low\"} 2",
                "herald_messages_shed_total{priority=\"normal\"} 0",
            ],
        );
    }

    #[test]
    fn every_render_reads_the_new_snapshot() {
        let reporter = reporter();
        reporter.render(&stats(), &LatencyHistogram::new());
        let mut later = stats();
        later.connections = 1;
        later.messages.published = 9;
        check(
            &reporter,
            &later,
            &["herald_connections 1", "herald_messages_published_total 9"],
        );
    }

    #[test]
    fn an_unknown_limit_is_left_out() {
        let mut stats = stats();
        stats.memory.limit_bytes = None;
        let text = reporter().render(&stats, &LatencyHistogram::new());
        assert!(!text.contains("herald_memory_limit_bytes"), "{text}");
    }

    #[test]
    fn histograms_use_the_latency_buckets() {
        let reporter = reporter();
        metrics::with_local_recorder(&*reporter.recorder, || {
            metrics::histogram!("herald_event_ack_latency_seconds").record(0.000_2);
        });
        check(
            &reporter,
            &Stats::default(),
            &[
                "herald_event_ack_latency_seconds_bucket{le=\"0.0001\"} 0",
                "herald_event_ack_latency_seconds_bucket{le=\"0.00025\"} 1",
                "herald_event_ack_latency_seconds_count 1",
            ],
        );
    }

    #[test]
    fn the_delivery_latency_histogram_is_rendered_with_the_rest() {
        let latency = LatencyHistogram::new();
        latency.record(Duration::from_micros(300));
        let text = reporter().render(&stats(), &latency);
        assert!(text.contains("herald_connections 3"), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "herald_delivery_latency_seconds_count 1"),
            "{text}"
        );
    }
}
