//! `herald-bench`: Herald's own load generator, also pointed at nginx + nchan for comparison.
//!
//! Scenarios: `fanout` (S subscribers on K topics, M publications, at a rate or as fast as
//! flow control allows), `p2p` (N connections each on its own topic, at a fixed total rate),
//! `idle` (N idle connections: server memory per connection), `churn` (connect -> subscribe ->
//! close loops) and `curve` (fanout cost per delivery at several subscriber counts).
//! Each prints one JSON object per line on stdout (see [`report::Report`]) and a summary on
//! stderr; `report FILE` prints a results file as a table. `cargo xtask bench` starts the
//! servers, pins them and this generator to separate cores, and runs it all.
//!
//! Every publication carries `{"seq","k","ts","pad"}` (sequence number, topic index, send
//! time), from which subscribers compute latency and detect loss, duplicates and reordering.

#![allow(clippy::print_stdout)] // The results are JSON lines on stdout: printing them is the job.

mod churn;
mod client;
mod fanout;
mod floor;
mod frame;
mod histogram;
mod pacer;
mod procfs;
mod publisher;
mod report;
mod tracker;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    client::{Target, TargetKind},
    procfs::Server,
    publisher::PublishMode,
    report::Report,
};

/// Herald's load generator (also drives nginx + nchan for comparison).
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario shares.
#[derive(Debug, Args)]
struct Common {
    /// The server under test.
    #[arg(long, value_enum, default_value_t = TargetKind::Herald, global = true)]
    target: TargetKind,
    /// Its address.
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    addr: SocketAddr,
    /// Herald's API key (for `POST /api/publish`).
    #[arg(long, default_value = "", global = true)]
    api_key: String,
    /// Herald's HS256 secret, to mint client tokens.
    #[arg(long, global = true)]
    jwt_secret: Option<String>,
    /// The server's pid: its CPU time and RSS (with its children's) are read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Clock ticks per second of /proc CPU times (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100, global = true)]
    clk_tck: u64,
    /// Exit with status 1 when anything was lost, duplicated, reordered, failed or dropped.
    #[arg(long, global = true)]
    strict: bool,
    /// Publishing (or cycling) stops after this many seconds, whatever is left.
    #[arg(long, default_value_t = 600, global = true)]
    max_secs: u64,
    /// Connections being set up at once.
    /// (Herald listens with a backlog of 128, tokio's default: more at once overflows its
    /// accept queue and costs one-second SYN retransmits.)
    #[arg(long, default_value_t = 100, global = true)]
    connect_concurrency: usize,
    /// Read buffer per client connection, in bytes.
    #[arg(long, default_value_t = 8192, global = true)]
    read_buffer: usize,
    /// Runtime worker threads (1: a single-threaded runtime, for a generator pinned to one
    /// core).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// The name the reports give the target (default: `herald` or `nchan`), for runs of one
    /// server in several setups side by side (`floor`, `herald+redis`, `herald 2 cores`).
    #[arg(long, global = true)]
    label: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S subscribers on K topics receive M publications (at --rate, or as fast as the
    /// flow-control window allows).
    Fanout(FanoutArgs),
    /// N connections, each subscribed to its own topic, at a fixed total publication rate.
    P2p(P2pArgs),
    /// N idle subscribed connections: server memory per connection and idle CPU.
    Idle(IdleArgs),
    /// Loops of connect -> subscribe -> close: cycles per second and server cost per cycle.
    Churn(ChurnArgs),
    /// Fanout on one topic at several subscriber counts: server CPU per delivery at each.
    Curve(CurveArgs),
    /// Serves the churn client at --addr with fixed bytes and no state: the floor under a
    /// server's churn cost (see `floor.rs`). Runs until killed.
    Floor,
    /// Prints a results file (JSON lines, an array, or {"results": [...]}) as a table.
    Report {
        /// The results file.
        file: PathBuf,
    },
}

/// `fanout` options.
#[derive(Debug, Args, Serialize)]
struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Topics (subscriber i is on topic i % topics).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Publications in all.
    #[arg(long, default_value_t = 1_000)]
    messages: u64,
    #[command(flatten)]
    publish: PublishArgs,
    /// Publications per second in all (default: as fast as the window allows).
    #[arg(long)]
    rate: Option<f64>,
}

/// How publications are made.
#[derive(Debug, Args, Serialize)]
struct PublishArgs {
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Herald: `batch` (POST /api/publish/batch) or `single` (POST /api/publish). nchan
    /// always publishes one at a time.
    #[arg(long, value_enum, default_value_t = PublishMode::Batch)]
    publish: PublishMode,
    /// Publications per batch request at most.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Flow control: publications a topic's publisher may be ahead of its average subscriber.
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Publisher tasks, each with its own keep-alive connection (at most one per topic).
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Seconds to wait for missing deliveries once nothing arrives any more.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

/// `p2p` options.
#[derive(Debug, Args, Serialize)]
struct P2pArgs {
    /// Connections, each subscribed to its own topic.
    #[arg(long, default_value_t = 2_000)]
    connections: usize,
    /// Publications per second in all.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    #[command(flatten)]
    publish: PublishArgs,
}

/// `idle` options.
#[derive(Debug, Args, Serialize)]
struct IdleArgs {
    /// Connections (each subscribed to its own topic).
    #[arg(long, default_value_t = 18_000)]
    connections: usize,
    /// Pause after the last connection before reading the server's memory, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Seconds to hold the connections idle while measuring server CPU.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
}

/// `churn` options.
#[derive(Debug, Args, Serialize)]
struct ChurnArgs {
    /// Connect -> subscribe -> close cycles in all.
    #[arg(long, default_value_t = 5_000)]
    cycles: u64,
    /// Cycles in progress at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Pause after the last cycle before reading the server's memory, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
}

/// `curve` options.
#[derive(Debug, Args, Serialize)]
struct CurveArgs {
    /// Subscriber counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,18000")]
    points: Vec<usize>,
    /// Deliveries to aim for at each point (publications = deliveries / subscribers).
    #[arg(long, default_value_t = 4_000_000)]
    deliveries: u64,
    /// Publications per point at least.
    #[arg(long, default_value_t = 50)]
    min_messages: u64,
    /// Pause between points so the server finishes closing the previous connections, in
    /// milliseconds.
    #[arg(long, default_value_t = 1_000)]
    settle_ms: u64,
    #[command(flatten)]
    publish: PublishArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Report { file } = &cli.scenario {
        return match print_table(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("herald-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = if cli.common.threads <= 1 || matches!(cli.scenario, Scenario::Floor) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.common.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.scenario, Scenario::Floor) {
        return match runtime.block_on(floor::serve(cli.common.addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("herald-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(&cli)) {
        Ok(reports) => {
            let failed = reports.iter().any(|r| !r.ok);
            if failed && cli.common.strict {
                eprintln!("herald-bench: integrity check failed (--strict)");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("herald-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_table(file: &PathBuf) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let reports = report::parse_results(&text)
        .with_context(|| format!("{} is not a results file", file.display()))?;
    print!("{}", report::table(&reports));
    Ok(())
}

/// Runs the chosen scenario; prints and returns its reports.
async fn run(cli: &Cli) -> anyhow::Result<Vec<Report>> {
    let common = &cli.common;
    let target = Target::new(
        common.target,
        common.addr,
        common.api_key.clone(),
        common.jwt_secret.as_deref(),
        common.read_buffer,
    )?
    .with_label(common.label.clone());
    let server = common
        .server_pid
        .map(|pid| Server::new(pid, common.clk_tck));
    let generator = Server::new(std::process::id(), common.clk_tck);
    let max_run = Duration::from_secs(common.max_secs);
    let mut reports = Vec::new();
    match &cli.scenario {
        Scenario::Fanout(args) => {
            let plan = fanout_plan(
                common,
                &args.publish,
                args.subscribers,
                args.topics,
                args.messages,
                args.rate,
            );
            let outcome = fanout::run(&target, &plan, server, generator).await?;
            reports.push(delivery_report(
                &target,
                "fanout",
                json!(args),
                &outcome,
                server,
            ));
        }
        Scenario::P2p(args) => {
            let messages = (args.rate * args.duration_secs).round() as u64;
            let plan = fanout_plan(
                common,
                &args.publish,
                args.connections,
                args.connections,
                messages,
                Some(args.rate),
            );
            let outcome = fanout::run(&target, &plan, server, generator).await?;
            reports.push(delivery_report(
                &target,
                "p2p",
                json!(args),
                &outcome,
                server,
            ));
        }
        Scenario::Curve(args) => {
            for (n, &subscribers) in args.points.iter().enumerate() {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
                }
                let messages = (args.deliveries / subscribers.max(1) as u64).max(args.min_messages);
                let plan = fanout_plan(common, &args.publish, subscribers, 1, messages, None);
                // Fresh topics per point: nchan would replay its buffer to new subscribers.
                let point_target = target.with_topic_prefix(&format!("c{n}_"));
                let outcome = fanout::run(&point_target, &plan, server, generator).await?;
                let params = json!({"subscribers": subscribers, "messages": messages, "publish": &args.publish});
                let report = delivery_report(&target, "curve", params, &outcome, server);
                emit(&report);
                reports.push(report);
            }
            return Ok(reports);
        }
        Scenario::Idle(args) => {
            let plan = fanout_plan(
                common,
                &PublishArgs::idle(),
                args.connections,
                args.connections,
                0,
                None,
            );
            let settle = Duration::from_millis(args.settle_ms);
            let hold = Duration::from_secs(args.hold_secs);
            let outcome = fanout::idle(&target, &plan, server, settle, hold).await?;
            reports.push(idle_report(&target, json!(args), &outcome, server));
        }
        Scenario::Churn(args) => {
            let plan = churn::Plan {
                cycles: args.cycles,
                concurrency: args.concurrency,
                settle: Duration::from_millis(args.settle_ms),
                max_run,
            };
            let outcome = churn::run(&target, plan, server, generator).await;
            reports.push(churn_report(&target, json!(args), &outcome, server));
        }
        Scenario::Report { .. } | Scenario::Floor => {}
    }
    for report in &reports {
        emit(report);
    }
    Ok(reports)
}

/// Prints a report: the JSON line on stdout, the summary on stderr.
fn emit(report: &Report) {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(error) => eprintln!("herald-bench: cannot encode the report: {error}"),
    }
    eprintln!("herald-bench: {}", report.summary());
}

impl PublishArgs {
    /// Publishing settings for scenarios that do not publish.
    fn idle() -> Self {
        Self {
            size: 0,
            publish: PublishMode::Single,
            batch: 1,
            window: 1,
            publishers: 1,
            drain_secs: 0,
        }
    }
}

fn fanout_plan(
    common: &Common,
    publish: &PublishArgs,
    subscribers: usize,
    topics: usize,
    messages: u64,
    rate: Option<f64>,
) -> fanout::Plan {
    fanout::Plan {
        subscribers,
        topics: topics.max(1),
        messages,
        size: publish.size,
        rate: rate.filter(|r| *r > 0.0),
        batch: publish.batch.max(1),
        window: publish.window.max(1),
        publishers: publish.publishers.max(1),
        mode: publish.publish,
        connect_concurrency: common.connect_concurrency.max(1),
        drain: Duration::from_secs(publish.drain_secs),
        max_run: Duration::from_secs(common.max_secs),
    }
}

fn base_report(target: &Target, scenario: &str, params: Value) -> Report {
    Report {
        target: target.name().to_owned(),
        scenario: scenario.to_owned(),
        params,
        ..Report::default()
    }
}

fn percent(cpu_s: f64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| cpu_s / seconds * 100.0)
}

fn per_second(count: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| count as f64 / seconds)
}

fn delivery_report(
    target: &Target,
    scenario: &str,
    params: Value,
    outcome: &fanout::Outcome,
    server: Option<Server>,
) -> Report {
    let mut report = base_report(target, scenario, params);
    report.connections = outcome.connected;
    report.connect_failures = outcome.connect_failures;
    report.disconnects = outcome.disconnects;
    report.published = outcome.publish.published;
    report.publish_retries = outcome.publish.retries;
    report.publish_errors = outcome.publish.errors;
    report.publish_rate = per_second(outcome.publish.published, outcome.publish_s);
    report.expected = outcome.expected;
    report.deliveries = outcome.counts.unique;
    report.duration_s = outcome.duration_s;
    report.deliveries_per_s = per_second(outcome.counts.unique, outcome.duration_s);
    report.set_latency(outcome.latency.percentiles(), outcome.latency.count());
    report.lost = outcome.lost;
    report.duplicates = outcome.counts.duplicates;
    report.reordered = outcome.counts.reordered;
    report.misrouted = outcome.counts.misrouted + outcome.malformed;
    report.window_stalls = outcome.window_stalls;
    report.generator_cpu_percent = percent(outcome.generator_cpu_s, outcome.duration_s);
    if let (Some(server), Some([_, before, after])) = (server, outcome.samples) {
        let cpu = server.cpu_seconds(before, after);
        report.server_cpu_s = Some(cpu);
        report.cpu_per_delivery_us =
            (outcome.counts.unique > 0).then(|| cpu * 1e6 / outcome.counts.unique as f64);
        report.server_rss_before = Some(before.rss_bytes);
        report.server_rss_after = Some(after.rss_bytes);
    }
    report.problems.clone_from(&outcome.problems);
    report.judge();
    report
}

fn idle_report(
    target: &Target,
    params: Value,
    outcome: &fanout::Outcome,
    server: Option<Server>,
) -> Report {
    let mut report = base_report(target, "idle", params);
    report.connections = outcome.connected;
    report.connect_failures = outcome.connect_failures;
    report.disconnects = outcome.disconnects;
    report.duration_s = outcome.duration_s;
    report.set_latency(
        outcome.connect_latency.percentiles(),
        outcome.connect_latency.count(),
    );
    if let (Some(server), Some([before, _, connected]), Some(idle)) =
        (server, outcome.samples, outcome.idle)
    {
        let connect_cpu = server.cpu_seconds(before, connected);
        report.server_cpu_s = Some(connect_cpu);
        report.cpu_per_connection_us =
            (outcome.connected > 0).then(|| connect_cpu * 1e6 / outcome.connected as f64);
        if idle.hold_s > 0.0 {
            report.idle_cpu_percent =
                Some(server.cpu_seconds(idle.settled, idle.held) / idle.hold_s * 100.0);
        }
        report.server_rss_before = Some(before.rss_bytes);
        report.server_rss_after = Some(idle.settled.rss_bytes);
        report.bytes_per_connection = (outcome.connected > 0).then(|| {
            (idle.settled.rss_bytes as f64 - before.rss_bytes as f64) / outcome.connected as f64
        });
    }
    report.problems.clone_from(&outcome.problems);
    report.judge();
    report
}

fn churn_report(
    target: &Target,
    params: Value,
    outcome: &churn::Outcome,
    server: Option<Server>,
) -> Report {
    let mut report = base_report(target, "churn", params);
    report.duration_s = outcome.duration_s;
    report.cycles = Some(outcome.cycles);
    report.cycles_per_s = per_second(outcome.cycles, outcome.duration_s);
    report.cycle_failures = Some(outcome.failures);
    report.generator_cpu_percent = percent(outcome.generator_cpu_s, outcome.duration_s);
    report.set_latency(outcome.latency.percentiles(), outcome.latency.count());
    if let (Some(server), Some([before, after, settled])) = (server, outcome.samples) {
        let cpu = server.cpu_seconds(before, after);
        report.server_cpu_s = Some(cpu);
        report.cpu_per_connection_us =
            (outcome.cycles > 0).then(|| cpu * 1e6 / outcome.cycles as f64);
        report.server_rss_before = Some(before.rss_bytes);
        report.server_rss_after = Some(settled.rss_bytes);
    }
    if let Some(failure) = &outcome.first_failure {
        report.problems.push(failure.clone());
    }
    report.judge();
    report
}
