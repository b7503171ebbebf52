//! One scenario's result as a JSON line, and the side-by-side table of a results file.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::histogram::Percentiles;

/// One scenario's result: the JSON object printed on one stdout line.
///
/// Every field is present in every line (`null` where it does not apply), so tools can read
/// them as one table. Latencies are microseconds; `latency_*` is the delivery latency for
/// `fanout`, `p2p` and `curve`, the connect-and-subscribe time for `idle`, and the whole cycle
/// for `churn`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Report {
    /// `herald` or `nchan`.
    pub(crate) target: String,
    /// `fanout`, `p2p`, `idle`, `churn` or `curve`.
    pub(crate) scenario: String,
    /// The scenario's parameters as given.
    pub(crate) params: Value,
    /// Client connections that were up.
    pub(crate) connections: u64,
    /// Client connections that could not be set up.
    pub(crate) connect_failures: u64,
    /// Connections the server closed (or lost) during the run.
    pub(crate) disconnects: u64,
    /// Publications the server accepted.
    pub(crate) published: u64,
    /// Publications refused with 429 and sent again.
    pub(crate) publish_retries: u64,
    /// Publications that failed for good.
    pub(crate) publish_errors: u64,
    /// Accepted publications per second, over the publishing time.
    pub(crate) publish_rate: Option<f64>,
    /// Deliveries owed: accepted publications times their topic's subscribers.
    pub(crate) expected: u64,
    /// Unique deliveries received.
    pub(crate) deliveries: u64,
    /// Measured time in seconds: first publication to last delivery (connect phase for
    /// `idle`, all cycles for `churn`).
    pub(crate) duration_s: f64,
    /// Unique deliveries per second over `duration_s`.
    pub(crate) deliveries_per_s: Option<f64>,
    /// Median latency.
    pub(crate) latency_p50_us: Option<u64>,
    /// 99th percentile latency.
    pub(crate) latency_p99_us: Option<u64>,
    /// 99.9th percentile latency.
    pub(crate) latency_p999_us: Option<u64>,
    /// Largest latency.
    pub(crate) latency_max_us: Option<u64>,
    /// Owed deliveries that never arrived.
    pub(crate) lost: u64,
    /// Deliveries received more than once.
    pub(crate) duplicates: u64,
    /// Deliveries that arrived after a later one of the same topic.
    pub(crate) reordered: u64,
    /// Deliveries for a topic the client did not subscribe to, or unparsable frames.
    pub(crate) misrouted: u64,
    /// `churn`: cycles completed.
    pub(crate) cycles: Option<u64>,
    /// `churn`: cycles per second.
    pub(crate) cycles_per_s: Option<f64>,
    /// `churn`: cycles that failed.
    pub(crate) cycle_failures: Option<u64>,
    /// Server CPU (user + system) over the measured time, in seconds.
    pub(crate) server_cpu_s: Option<f64>,
    /// Server CPU per delivery, microseconds.
    pub(crate) cpu_per_delivery_us: Option<f64>,
    /// Server CPU per connection set up (`idle`) or per cycle (`churn`), microseconds.
    pub(crate) cpu_per_connection_us: Option<f64>,
    /// `idle`: server CPU while the connections sat idle, percent of one core.
    pub(crate) idle_cpu_percent: Option<f64>,
    /// Server resident memory before, bytes.
    pub(crate) server_rss_before: Option<u64>,
    /// Server resident memory after, bytes (`idle`: connected and settled; `churn`: settled).
    pub(crate) server_rss_after: Option<u64>,
    /// `idle`: (after - before) / connections.
    pub(crate) bytes_per_connection: Option<f64>,
    /// This generator's own CPU over the measured time, percent of one core: near 100 means
    /// the generator, not the server, set the pace.
    pub(crate) generator_cpu_percent: Option<f64>,
    /// Times the publisher stopped waiting for its flow-control window.
    pub(crate) window_stalls: u64,
    /// What went wrong, if anything.
    pub(crate) problems: Vec<String>,
    /// No loss, duplicate, reordering, misrouting, failure or disconnect.
    pub(crate) ok: bool,
}

impl Report {
    /// Fills the latency fields.
    pub(crate) fn set_latency(&mut self, latency: Percentiles, count: u64) {
        if count == 0 {
            return;
        }
        self.latency_p50_us = Some(latency.p50);
        self.latency_p99_us = Some(latency.p99);
        self.latency_p999_us = Some(latency.p999);
        self.latency_max_us = Some(latency.max);
    }

    /// Adds the integrity problems the counters show, then sets `ok`.
    pub(crate) fn judge(&mut self) {
        let mut found = Vec::new();
        for (count, what) in [
            (self.lost, "deliveries lost"),
            (self.duplicates, "duplicate deliveries"),
            (self.reordered, "deliveries out of order"),
            (self.misrouted, "misrouted or malformed frames"),
            (self.connect_failures, "connections failed"),
            (self.disconnects, "connections dropped"),
            (self.publish_errors, "publications failed"),
            (self.cycle_failures.unwrap_or(0), "cycles failed"),
        ] {
            if count > 0 {
                found.push(format!("{count} {what}"));
            }
        }
        found.append(&mut self.problems);
        self.problems = found;
        self.ok = self.problems.is_empty();
    }

    /// A one-line human summary for stderr.
    pub(crate) fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rate) = self.deliveries_per_s {
            parts.push(format!("{} deliveries/s", group(rate)));
        }
        if let Some(rate) = self.cycles_per_s {
            parts.push(format!("{} cycles/s", group(rate)));
        }
        if let (Some(p50), Some(p99)) = (self.latency_p50_us, self.latency_p99_us) {
            parts.push(format!("p50 {p50} us, p99 {p99} us"));
        }
        if let Some(cpu) = self.cpu_per_delivery_us {
            parts.push(format!("{cpu:.2} us server cpu/delivery"));
        }
        if let Some(cpu) = self.cpu_per_connection_us {
            parts.push(format!("{cpu:.1} us server cpu/connection"));
        }
        if let Some(bytes) = self.bytes_per_connection {
            parts.push(format!("{} bytes/connection", group(bytes)));
        }
        parts.push(format!(
            "lost {} dup {} reordered {}",
            self.lost, self.duplicates, self.reordered
        ));
        let mut line = format!("{} {}: {}", self.target, self.scenario, parts.join(", "));
        if !self.ok {
            let _ = write!(line, " -- PROBLEMS: {}", self.problems.join("; "));
        }
        line
    }
}

/// `1234567.8` as `1,234,568`.
fn group(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Reads a results file: `{"results": [...]}`, a JSON array, or one object per line.
pub(crate) fn parse_results(text: &str) -> anyhow::Result<Vec<Report>> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let list = match value {
            Value::Object(mut object) => object.remove("results").unwrap_or(Value::Null),
            other => other,
        };
        if let Value::Array(items) = list {
            return items
                .into_iter()
                .map(|item| Ok(serde_json::from_value(item)?))
                .collect();
        }
    }
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// Width of the row labels.
const LABEL_WIDTH: usize = 28;

/// One table row: a label and how to show a report's value.
type Row = (&'static str, fn(&Report) -> String);

/// Renders the reports as a table per scenario, one column per target.
pub(crate) fn table(reports: &[Report]) -> String {
    // Scenario (and curve point) in order of first appearance, then targets in order.
    let mut groups: Vec<(String, Vec<&Report>)> = Vec::new();
    for report in reports {
        let key = match report.scenario.as_str() {
            "curve" => format!("curve, {} subscribers", report.connections),
            other => other.to_owned(),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(report),
            None => groups.push((key, vec![report])),
        }
    }
    let mut out = String::new();
    for (key, list) in groups {
        // Every group holds at least the report that created it.
        let scenario = list.first().map_or("", |r| r.scenario.as_str());
        let rows: &[Row] = match scenario {
            "idle" => IDLE_ROWS,
            "churn" => CHURN_ROWS,
            _ => DELIVERY_ROWS,
        };
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|(_, show)| list.iter().map(|report| show(report)).collect())
            .collect();
        // Every column is as wide as its widest cell, plus a gap.
        let width = cells
            .iter()
            .flatten()
            .map(String::len)
            .chain(list.iter().map(|r| r.target.len()))
            .max()
            .unwrap_or(0)
            .max(12)
            + 3;
        let _ = writeln!(out, "\n== {key} ==");
        let _ = write!(out, "{:<LABEL_WIDTH$}", "");
        for report in &list {
            let _ = write!(out, "{:>width$}", report.target);
        }
        out.push('\n');
        for ((label, _), row) in rows.iter().zip(&cells) {
            let _ = write!(out, "{label:<LABEL_WIDTH$}");
            for cell in row {
                let _ = write!(out, "{cell:>width$}");
            }
            out.push('\n');
        }
        for report in &list {
            if !report.ok {
                let _ = writeln!(out, "  {}: {}", report.target, report.problems.join("; "));
            }
        }
    }
    out
}

fn opt_f(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn opt_group(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), group)
}

fn mib(value: Option<u64>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |v| format!("{:.1} MiB", v as f64 / 1_048_576.0),
    )
}

fn latency(r: &Report) -> String {
    match (
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_p999_us,
        r.latency_max_us,
    ) {
        (Some(a), Some(b), Some(c), Some(d)) => format!("{a}/{b}/{c}/{d}"),
        _ => "-".to_owned(),
    }
}

const DELIVERY_ROWS: &[Row] = &[
    ("subscribers", |r| group(r.connections as f64)),
    ("published", |r| group(r.published as f64)),
    ("publish rate /s", |r| opt_group(r.publish_rate)),
    ("deliveries", |r| group(r.deliveries as f64)),
    ("deliveries/s", |r| opt_group(r.deliveries_per_s)),
    ("latency us p50/p99/p999/max", latency),
    ("lost/dup/reordered", |r| {
        format!("{}/{}/{}", r.lost, r.duplicates, r.reordered)
    }),
    ("server cpu s", |r| opt_f(r.server_cpu_s, 2)),
    ("server cpu/delivery us", |r| {
        opt_f(r.cpu_per_delivery_us, 3)
    }),
    ("server rss before", |r| mib(r.server_rss_before)),
    ("server rss after", |r| mib(r.server_rss_after)),
    ("generator cpu %", |r| opt_f(r.generator_cpu_percent, 0)),
    ("publish retries (429)", |r| group(r.publish_retries as f64)),
];

const IDLE_ROWS: &[Row] = &[
    ("connections", |r| group(r.connections as f64)),
    ("connect time s", |r| format!("{:.2}", r.duration_s)),
    ("connect us p50/p99/p999/max", latency),
    ("server rss before", |r| mib(r.server_rss_before)),
    ("server rss after", |r| mib(r.server_rss_after)),
    ("bytes/connection", |r| opt_group(r.bytes_per_connection)),
    ("server cpu/connection us", |r| {
        opt_f(r.cpu_per_connection_us, 1)
    }),
    ("idle server cpu %", |r| opt_f(r.idle_cpu_percent, 2)),
    ("dropped", |r| group(r.disconnects as f64)),
];

const CHURN_ROWS: &[Row] = &[
    ("cycles", |r| {
        r.cycles.map_or_else(|| "-".to_owned(), |c| group(c as f64))
    }),
    ("cycles/s", |r| opt_group(r.cycles_per_s)),
    ("cycle us p50/p99/p999/max", latency),
    ("server cpu/cycle us", |r| opt_f(r.cpu_per_connection_us, 1)),
    ("server rss before", |r| mib(r.server_rss_before)),
    ("server rss after", |r| mib(r.server_rss_after)),
    ("generator cpu %", |r| opt_f(r.generator_cpu_percent, 0)),
    ("failed cycles", |r| {
        r.cycle_failures
            .map_or_else(|| "-".to_owned(), |c| c.to_string())
    }),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, scenario: &str) -> Report {
        Report {
            target: target.to_owned(),
            scenario: scenario.to_owned(),
            connections: 10,
            deliveries_per_s: Some(1234.5),
            ..Report::default()
        }
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1234.5), "1,235");
        assert_eq!(group(1_234_567.0), "1,234,567");
        assert_eq!(group(-1234.0), "-1,234");
    }

    #[test]
    fn judging_lists_every_integrity_problem() {
        let mut clean = report("herald", "fanout");
        clean.judge();
        assert!(clean.ok);
        let mut bad = Report {
            lost: 2,
            reordered: 1,
            problems: vec!["publish error: x".to_owned()],
            ..report("herald", "fanout")
        };
        bad.judge();
        assert!(!bad.ok);
        assert_eq!(
            bad.problems,
            [
                "2 deliveries lost",
                "1 deliveries out of order",
                "publish error: x"
            ]
        );
    }

    #[test]
    fn results_files_in_every_shape_parse_back() {
        let reports = vec![report("herald", "fanout"), report("nchan", "fanout")];
        let lines: Vec<String> = reports
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        let object = format!(r#"{{"mode":"smoke","results":[{}]}}"#, lines.join(","));
        let array = format!("[{}]", lines.join(","));
        let jsonl = lines.join("\n");
        for text in [object, array, jsonl] {
            assert_eq!(parse_results(&text).unwrap(), reports);
        }
    }

    #[test]
    fn table_puts_targets_side_by_side_per_scenario() {
        let table = table(&[
            report("herald", "fanout"),
            report("nchan", "fanout"),
            report("herald", "idle"),
        ]);
        assert!(table.contains("== fanout =="));
        assert!(table.contains("== idle =="));
        let header = table
            .lines()
            .find(|l| l.contains("herald") && l.contains("nchan"));
        assert!(header.is_some(), "{table}");
        let rate = table
            .lines()
            .find(|l| l.starts_with("deliveries/s"))
            .unwrap();
        assert_eq!(rate.matches("1,235").count(), 2, "{rate}");
    }

    #[test]
    fn wide_cells_never_run_into_each_other() {
        let wide = Report {
            latency_p50_us: Some(1_081_343),
            latency_p99_us: Some(2_228_223),
            latency_p999_us: Some(2_359_295),
            latency_max_us: Some(2_364_316),
            ..report("nchan", "fanout")
        };
        let table = table(&[wide.clone(), wide]);
        let line = table.lines().find(|l| l.starts_with("latency")).unwrap();
        assert_eq!(line.split_whitespace().count(), 5, "{line}");
    }
}
