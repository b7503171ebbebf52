//! `MetricsReporter::install` sets the process's global recorder, once; a test binary of its
//! own, so no other test shares that recorder.

use herald_monitoring::{LatencyHistogram, MetricsError, MetricsReporter, Stats};

#[test]
fn the_installed_reporter_renders_what_the_macros_record_and_a_second_install_fails() {
    let reporter = MetricsReporter::install().expect("first install");
    metrics::counter!("herald_handshake_timeouts_total").increment(2);
    let text = reporter.render(&Stats::default(), &LatencyHistogram::new());
    assert!(text.contains("herald_handshake_timeouts_total 2"), "{text}");
    assert!(text.contains("herald_connections 0"), "{text}");
    assert!(matches!(
        MetricsReporter::install(),
        Err(MetricsError::AlreadyInstalled)
    ));
}
