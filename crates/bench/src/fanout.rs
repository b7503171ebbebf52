//! The publish/subscribe engine behind `fanout`, `p2p`, `curve` and `idle`: connect the
//! subscribers, publish with flow control or at a fixed rate, wait for the deliveries, and
//! count what arrived, when, and what did not.
//!
//! Each topic is published by exactly one publisher task, one request at a time, so the order
//! a topic's publications were accepted in is their sequence order: that is what makes loss,
//! duplicate and reorder detection exact.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{Target, TargetKind, unix_ns},
    frame::{self, Kind},
    histogram::Histogram,
    pacer::Pacer,
    procfs::{Sample, Server},
    publisher::{Publication, PublishCounts, PublishMode, Publisher, wait_for_nchan_subscribers},
    tracker::{Counts, Tracker, Verdict},
};

/// How often a long connect phase reports progress on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Attempts to connect one subscriber before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 3;
/// How long the publisher waits for the flow-control window before it stops waiting for that
/// topic (a subscriber died, or the server lost something).
const WINDOW_STALL: Duration = Duration::from_secs(5);
/// How often the drain phase checks whether everything arrived.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How long nchan may take to report its subscribers active.
const NCHAN_SUBSCRIBE_LIMIT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Subscriber connections; subscriber `i` subscribes to topic `i % topics`.
    pub(crate) subscribers: usize,
    /// Topics.
    pub(crate) topics: usize,
    /// Publications in all, spread evenly over the topics.
    pub(crate) messages: u64,
    /// Payload size in bytes.
    pub(crate) size: usize,
    /// Publications per second in all, or `None` for as fast as the window allows.
    pub(crate) rate: Option<f64>,
    /// Publications per request at most (Herald batch mode).
    pub(crate) batch: usize,
    /// Flow control: a topic's publisher stays at most this many publications ahead of the
    /// average subscriber of that topic.
    pub(crate) window: u64,
    /// Publisher tasks (each with its own keep-alive connection).
    pub(crate) publishers: usize,
    /// Batch or single requests (Herald).
    pub(crate) mode: PublishMode,
    /// Connections being set up at once.
    pub(crate) connect_concurrency: usize,
    /// How long to wait for missing deliveries once nothing arrives any more.
    pub(crate) drain: Duration,
    /// Publishing stops at this deadline even if messages are left.
    pub(crate) max_run: Duration,
}

/// What a run measured.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Subscribers connected and subscribed.
    pub(crate) connected: u64,
    /// Subscribers that could not connect or subscribe.
    pub(crate) connect_failures: u64,
    /// Subscribers whose connection ended before the run did.
    pub(crate) disconnects: u64,
    /// Publisher totals.
    pub(crate) publish: PublishCounts,
    /// Deliveries the accepted publications should have made.
    pub(crate) expected: u64,
    /// Subscriber totals.
    pub(crate) counts: Counts,
    /// Expected deliveries that never arrived.
    pub(crate) lost: u64,
    /// Frames that could not be parsed.
    pub(crate) malformed: u64,
    /// From the first publication to the last delivery, in seconds.
    pub(crate) duration_s: f64,
    /// From the first to the last publication request, in seconds.
    pub(crate) publish_s: f64,
    /// Times the publisher gave up waiting for the window.
    pub(crate) window_stalls: u64,
    /// Delivery latency, microseconds.
    pub(crate) latency: Arc<Histogram>,
    /// Connect-and-subscribe time, microseconds.
    pub(crate) connect_latency: Arc<Histogram>,
    /// The server before connecting, before publishing and after the last delivery.
    pub(crate) samples: Option<[Sample; 3]>,
    /// This generator's own CPU from the first publication to the last delivery, in seconds:
    /// near `duration_s` means the generator, not the server, was the bottleneck.
    pub(crate) generator_cpu_s: f64,
    /// Idle phase: resident memory after the connections settled and CPU over the hold.
    pub(crate) idle: Option<IdleOutcome>,
    /// First errors seen, for the report.
    pub(crate) problems: Vec<String>,
}

/// What the `idle` scenario adds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleOutcome {
    /// After every connection was up and the server settled.
    pub(crate) settled: Sample,
    /// At the end of the hold.
    pub(crate) held: Sample,
    /// Seconds held.
    pub(crate) hold_s: f64,
}

/// State shared by the subscribers and the publishers of one run.
struct Shared {
    latency: Arc<Histogram>,
    connect_latency: Arc<Histogram>,
    /// Unique deliveries so far.
    unique: AtomicU64,
    /// Unix nanoseconds of the last unique delivery.
    last_delivery_ns: AtomicU64,
    /// Subscriber connections that ended early.
    disconnects: AtomicU64,
    /// Frames that did not parse.
    malformed: AtomicU64,
    topics: Vec<TopicState>,
}

/// Flow-control state of one topic.
struct TopicState {
    /// Unique deliveries of this topic, over all its subscribers.
    delivered: AtomicU64,
    /// The publisher wants a wake-up when `delivered` reaches this (u64::MAX: nobody waits).
    wake_at: AtomicU64,
    notify: Notify,
    /// Subscribers of this topic that connected.
    subscribers: AtomicU64,
}

impl Shared {
    fn new(topics: usize) -> Self {
        Self {
            latency: Arc::new(Histogram::new()),
            connect_latency: Arc::new(Histogram::new()),
            unique: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            topics: (0..topics)
                .map(|_| TopicState {
                    delivered: AtomicU64::new(0),
                    wake_at: AtomicU64::new(u64::MAX),
                    notify: Notify::new(),
                    subscribers: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn delivered(&self, topic: usize, now_ns: u64) {
        self.unique.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now_ns, Ordering::Relaxed);
        let Some(state) = self.topics.get(topic) else {
            return;
        };
        let delivered = state.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        if delivered >= state.wake_at.load(Ordering::SeqCst)
            && state.wake_at.swap(u64::MAX, Ordering::SeqCst) != u64::MAX
        {
            state.notify.notify_one();
        }
    }
}

/// How a subscriber task ended.
struct SubscriberEnd {
    tracker: Tracker,
    topic: usize,
    connected: bool,
    /// Why the connection ended before the stop signal, if it did.
    dropped: Option<String>,
}

/// Connected subscribers, running.
struct Subscribers {
    handles: Vec<JoinHandle<SubscriberEnd>>,
    stop: watch::Sender<bool>,
    connected: u64,
    failures: u64,
    first_failure: Option<String>,
}

impl Subscribers {
    /// Stops every subscriber and collects what each saw.
    async fn finish(self) -> Vec<SubscriberEnd> {
        let _ = self.stop.send(true);
        let mut ends = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            // A subscriber task does not panic; a join error leaves its counts out.
            if let Ok(end) = handle.await {
                ends.push(end);
            }
        }
        ends
    }
}

/// Connects `plan.subscribers` clients (subscriber `i` on topic `i % topics`) and waits until
/// each is subscribed or failed.
async fn connect_all(
    target: &Target,
    plan: &Plan,
    shared: &Arc<Shared>,
) -> anyhow::Result<Subscribers> {
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let mut handles = Vec::with_capacity(plan.subscribers);
    for index in 0..plan.subscribers {
        let topic = index % plan.topics.max(1);
        handles.push(tokio::spawn(subscriber(
            target.clone(),
            index,
            topic,
            Arc::clone(shared),
            Arc::clone(&gate),
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let (mut connected, mut failures, mut first_failure) = (0u64, 0u64, None);
    let mut progress = Instant::now();
    let deadline = progress + plan.max_run;
    loop {
        let result = match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(result)) => result,
            Ok(None) => break,
            Err(_) => {
                // The stragglers count as failed; the stop signal ends them later.
                let pending = (plan.subscribers as u64).saturating_sub(connected + failures);
                failures += pending;
                first_failure.get_or_insert(format!(
                    "{pending} connections still pending after {:?}",
                    plan.max_run
                ));
                break;
            }
        };
        match result {
            Ok(()) => connected += 1,
            Err(error) => {
                failures += 1;
                first_failure.get_or_insert(error);
            }
        }
        if connected + failures == plan.subscribers as u64 {
            break;
        }
        if progress.elapsed() >= PROGRESS_EVERY {
            progress = Instant::now();
            eprintln!(
                "herald-bench: {connected}/{} subscribers connected ({failures} failed)",
                plan.subscribers
            );
        }
    }
    // nchan activates subscribers asynchronously; wait for them when something will be
    // published (an idle run only holds the connections).
    if target.kind == TargetKind::Nchan && plan.messages > 0 {
        let expected: Vec<u64> = shared
            .topics
            .iter()
            .map(|t| t.subscribers.load(Ordering::SeqCst))
            .collect();
        wait_for_nchan_subscribers(target, &expected, NCHAN_SUBSCRIBE_LIMIT).await?;
    }
    Ok(Subscribers {
        handles,
        stop,
        connected,
        failures,
        first_failure,
    })
}

/// One subscriber: connect (within the gate), report ready, then count deliveries until told
/// to stop.
async fn subscriber(
    target: Target,
    index: usize,
    topic: usize,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberEnd {
    let mut end = SubscriberEnd {
        tracker: Tracker::new(topic as u64),
        topic,
        connected: false,
        dropped: None,
    };
    let connecting = {
        // The gate only closes when the run is over; then there is nothing to connect for.
        let Ok(_permit) = gate.acquire().await else {
            return end;
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match target.subscribe(index, topic as u64).await {
                Ok(ws) => {
                    shared
                        .connect_latency
                        .record(started.elapsed().as_micros() as u64);
                    break Ok(ws);
                }
                Err(error) if attempt >= CONNECT_ATTEMPTS => break Err(format!("{error:#}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
            }
        }
    };
    let mut ws = match connecting {
        Ok(ws) => ws,
        Err(error) => {
            let _ = ready.send(Err(format!("subscriber {index}: {error}")));
            return end;
        }
    };
    end.connected = true;
    if let Some(state) = shared.topics.get(topic) {
        state.subscribers.fetch_add(1, Ordering::SeqCst);
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    let mut error_frame = None;
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                end.dropped = Some(format!("closed by the server: {frame:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                end.dropped = Some(format!("connection error: {error}"));
                break;
            }
            None => {
                end.dropped = Some("connection ended".to_owned());
                break;
            }
        };
        let now_ns = unix_ns();
        let tracker = &mut end.tracker;
        let result = frame::scan(text.as_str(), &mut |delivery| {
            if tracker.record(&delivery) == Verdict::New {
                shared
                    .latency
                    .record(now_ns.saturating_sub(delivery.sent_ns) / 1_000);
                shared.delivered(topic, now_ns);
            }
        });
        match result {
            Ok(Kind::Ping) => {
                // Herald closes connections that stay silent past its stale timeout.
                let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
            }
            Ok(Kind::Error) => {
                error_frame
                    .get_or_insert_with(|| text.as_str().chars().take(200).collect::<String>());
            }
            Ok(_) => {}
            Err(_) => {
                shared.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(error) = error_frame {
        end.dropped.get_or_insert(format!("error frame: {error}"));
    }
    if end.dropped.is_some() {
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
    }
    end
}

/// Runs a publish/subscribe scenario.
pub(crate) async fn run(
    target: &Target,
    plan: &Plan,
    server: Option<Server>,
    generator: Server,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared::new(plan.topics.max(1)));
    let before_connect = server.map(|s| s.sample());
    let subscribers = connect_all(target, plan, &shared).await?;
    let mut outcome = Outcome {
        connected: subscribers.connected,
        connect_failures: subscribers.failures,
        latency: Arc::clone(&shared.latency),
        connect_latency: Arc::clone(&shared.connect_latency),
        ..Outcome::default()
    };
    if let Some(failure) = &subscribers.first_failure {
        outcome.problems.push(format!(
            "{} subscribers failed to connect; first: {failure}",
            subscribers.failures
        ));
    }
    if subscribers.connected == 0 {
        subscribers.finish().await;
        anyhow::bail!(
            "no subscriber could connect: {}",
            outcome.problems.first().map_or("", String::as_str)
        );
    }

    let before = server.map(|s| s.sample());
    let generator_before = generator.sample();
    let start = Instant::now();
    let start_ns = unix_ns();
    let deadline = start + plan.max_run;
    let (counts, accepted, stalls, errors) =
        publish_all(target, plan, &shared, start, deadline).await?;
    outcome.publish_s = start.elapsed().as_secs_f64();
    outcome.publish = counts;
    outcome.window_stalls = stalls;
    outcome.problems.extend(errors);

    // Deliveries the accepted publications owe: one per subscriber of their topic.
    outcome.expected = accepted
        .iter()
        .zip(&shared.topics)
        .map(|(n, t)| n * t.subscribers.load(Ordering::SeqCst))
        .sum();
    drain(&shared, outcome.expected, plan.drain, deadline + plan.drain).await;
    let after = server.map(|s| s.sample());
    outcome.generator_cpu_s = generator.cpu_seconds(generator_before, generator.sample());
    let last = shared.last_delivery_ns.load(Ordering::Relaxed);
    outcome.duration_s = if last > start_ns {
        (last - start_ns) as f64 / 1e9
    } else {
        start.elapsed().as_secs_f64()
    };
    if let (Some(a), Some(b), Some(c)) = (before_connect, before, after) {
        outcome.samples = Some([a, b, c]);
    }

    for end in subscribers.finish().await {
        if !end.connected {
            continue;
        }
        outcome.counts += end.tracker.counts;
        let owed = accepted.get(end.topic).copied().unwrap_or(0);
        outcome.lost += owed.saturating_sub(end.tracker.counts.unique);
        if let Some(reason) = end.dropped {
            outcome.disconnects += 1;
            if outcome.disconnects == 1 {
                outcome
                    .problems
                    .push(format!("a subscriber dropped: {reason}"));
            }
        }
    }
    outcome.malformed = shared.malformed.load(Ordering::Relaxed);
    Ok(outcome)
}

/// Waits until `expected` unique deliveries arrived, or nothing arrived for `quiet`, or
/// `deadline`.
async fn drain(shared: &Shared, expected: u64, quiet: Duration, deadline: Instant) {
    let mut seen = shared.unique.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let now_seen = shared.unique.load(Ordering::Relaxed);
        if now_seen >= expected {
            return;
        }
        if now_seen != seen {
            seen = now_seen;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() >= quiet || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Runs the publisher tasks; returns their totals, the accepted publications per topic, the
/// window stalls and the first errors.
async fn publish_all(
    target: &Target,
    plan: &Plan,
    shared: &Arc<Shared>,
    start: Instant,
    deadline: Instant,
) -> anyhow::Result<(PublishCounts, Vec<u64>, u64, Vec<String>)> {
    let topics = plan.topics.max(1);
    let tasks = plan.publishers.clamp(1, topics);
    let mut handles = Vec::with_capacity(tasks);
    let pacer = match plan.rate {
        Some(_) => Some(Arc::new(Pacer::start()?)),
        None => None,
    };
    for task in 0..tasks {
        // Topic k belongs to task k % tasks; its share of the messages is spread evenly.
        let owned: Vec<(usize, u64)> = (task..topics)
            .step_by(tasks)
            .map(|k| (k, share(plan.messages, topics, k)))
            .collect();
        let task_messages: u64 = owned.iter().map(|(_, n)| n).sum();
        let rate = plan
            .rate
            .map(|r| r * task_messages as f64 / plan.messages.max(1) as f64);
        // At a fixed rate, task `task` of `tasks` starts `task / tasks` of its interval late, so
        // the tasks' publications interleave evenly instead of leaving together.
        let phase = rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(task as f64 / (tasks as f64 * r.max(f64::MIN_POSITIVE)))
        });
        let publisher = Publisher::connect(target, plan.mode, plan.size).await?;
        handles.push(tokio::spawn(publish_task(
            publisher,
            owned,
            PaceSettings {
                rate: rate.zip(pacer.clone()),
                batch: plan.batch.max(1),
                window: plan.window,
                start: start + phase,
                deadline,
            },
            Arc::clone(shared),
        )));
    }
    let mut counts = PublishCounts::default();
    let mut accepted = vec![0u64; topics];
    let mut stalls = 0;
    let mut errors = Vec::new();
    for handle in handles {
        let result = handle.await?;
        counts += result.counts;
        stalls += result.stalls;
        for (k, n) in result.accepted {
            accepted[k] += n;
        }
        if let Some(error) = result.first_error {
            errors.push(format!("publish error: {error}"));
        }
    }
    if Instant::now() >= deadline {
        errors.push(format!(
            "publishing hit the {:?} time limit",
            deadline - start
        ));
    }
    Ok((counts, accepted, stalls, errors))
}

/// Publications of topic `k` when `messages` are spread over `topics`.
fn share(messages: u64, topics: usize, k: usize) -> u64 {
    let topics = topics as u64;
    messages / topics + u64::from((k as u64) < messages % topics)
}

/// How a publisher task paces itself.
#[derive(Debug)]
struct PaceSettings {
    /// This task's publications per second and the pacer that times them, or `None` for as
    /// fast as the window allows.
    rate: Option<(f64, Arc<Pacer>)>,
    batch: usize,
    window: u64,
    start: Instant,
    deadline: Instant,
}

/// What one publisher task did.
struct TaskResult {
    counts: PublishCounts,
    accepted: Vec<(usize, u64)>,
    stalls: u64,
    first_error: Option<String>,
}

/// Publishes the owned topics' messages round-robin: `owned` is (topic, messages) pairs.
async fn publish_task(
    mut publisher: Publisher,
    owned: Vec<(usize, u64)>,
    pace: PaceSettings,
    shared: Arc<Shared>,
) -> TaskResult {
    let mut cursor = RoundRobin::new(&owned);
    let mut accepted: Vec<(usize, u64)> = owned.iter().map(|&(k, _)| (k, 0)).collect();
    let mut windowless = vec![false; owned.len()];
    let mut stalls = 0;
    let mut sent: u64 = 0;
    let mut batch: Vec<(usize, Publication)> = Vec::with_capacity(pace.batch);
    loop {
        if Instant::now() >= pace.deadline {
            break;
        }
        let mut room = pace.batch;
        if let Some((rate, pacer)) = &pace.rate {
            let rate = *rate;
            let due = (pace.start.elapsed().as_secs_f64() * rate) as u64;
            if due <= sent {
                let next = pace.start + Duration::from_secs_f64((sent + 1) as f64 / rate);
                pacer.sleep_until(next.min(pace.deadline)).await;
                continue;
            }
            room = room.min((due - sent) as usize);
        }
        batch.clear();
        while batch.len() < room {
            let Some((slot, topic, seq)) = cursor.next() else {
                break;
            };
            batch.push((
                slot,
                Publication {
                    topic: topic as u64,
                    seq,
                    sent_ns: 0,
                },
            ));
        }
        if batch.is_empty() {
            break;
        }
        for &(slot, publication) in &batch {
            if !windowless[slot]
                && !wait_for_window(
                    &shared,
                    publication.topic as usize,
                    publication.seq,
                    pace.window,
                )
                .await
            {
                windowless[slot] = true;
                stalls += 1;
            }
        }
        // Stamped when the request leaves. (Stamping the scheduled time instead would charge
        // the timer's millisecond granularity to the server; a publisher that falls behind
        // shows as a publish rate below the target instead.)
        let sent_ns = unix_ns();
        for (_, publication) in &mut batch {
            publication.sent_ns = sent_ns;
        }
        let publications: Vec<Publication> = batch.iter().map(|&(_, p)| p).collect();
        let results = publisher.publish(&publications).await;
        for (&(slot, _), ok) in batch.iter().zip(results) {
            if ok {
                accepted[slot].1 += 1;
            }
        }
        sent += batch.len() as u64;
    }
    TaskResult {
        counts: publisher.counts,
        accepted,
        stalls,
        first_error: publisher.first_error,
    }
}

/// Waits until publishing `seq` on `topic` keeps the publisher within `window` publications of
/// the topic's average subscriber. Returns false when it gave up after [`WINDOW_STALL`]
/// without any progress.
async fn wait_for_window(shared: &Shared, topic: usize, seq: u64, window: u64) -> bool {
    let Some(state) = shared.topics.get(topic) else {
        return true;
    };
    let subscribers = state.subscribers.load(Ordering::SeqCst);
    let need = seq
        .saturating_sub(window.max(1))
        .saturating_mul(subscribers);
    let mut last = state.delivered.load(Ordering::SeqCst);
    loop {
        if last >= need {
            return true;
        }
        state.wake_at.store(need, Ordering::SeqCst);
        // Checked again after publishing `wake_at`, so a delivery in between is not missed.
        if state.delivered.load(Ordering::SeqCst) >= need {
            state.wake_at.store(u64::MAX, Ordering::SeqCst);
            return true;
        }
        let woke = tokio::time::timeout(WINDOW_STALL, state.notify.notified()).await;
        let now = state.delivered.load(Ordering::SeqCst);
        if woke.is_err() && now == last {
            state.wake_at.store(u64::MAX, Ordering::SeqCst);
            return false;
        }
        last = now;
    }
}

/// Yields (slot, topic, seq) round-robin over topics with messages left.
struct RoundRobin {
    /// (topic, next seq, last seq) per slot.
    slots: Vec<(usize, u64, u64)>,
    at: usize,
}

impl RoundRobin {
    fn new(owned: &[(usize, u64)]) -> Self {
        Self {
            slots: owned.iter().map(|&(k, n)| (k, 1, n)).collect(),
            at: 0,
        }
    }

    fn next(&mut self) -> Option<(usize, usize, u64)> {
        for _ in 0..self.slots.len() {
            let slot = self.at;
            self.at = (self.at + 1) % self.slots.len();
            let (topic, next, last) = &mut self.slots[slot];
            if *next <= *last {
                let seq = *next;
                *next += 1;
                return Some((slot, *topic, seq));
            }
        }
        None
    }
}

/// Connects `connections` idle clients (client `i` subscribed to its own topic), measures the
/// server once they settled, holds them for `hold`, and checks that they all stayed.
pub(crate) async fn idle(
    target: &Target,
    plan: &Plan,
    server: Option<Server>,
    settle: Duration,
    hold: Duration,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared::new(plan.topics.max(1)));
    let before = server.map(|s| s.sample());
    let started = Instant::now();
    let subscribers = connect_all(target, plan, &shared).await?;
    let connect_s = started.elapsed().as_secs_f64();
    let connected_sample = server.map(|s| s.sample());
    tokio::time::sleep(settle).await;
    let settled = server.map(|s| s.sample());
    let hold_started = Instant::now();
    tokio::time::sleep(hold).await;
    let held = server.map(|s| s.sample());
    let hold_s = hold_started.elapsed().as_secs_f64();
    let mut outcome = Outcome {
        connected: subscribers.connected,
        connect_failures: subscribers.failures,
        latency: Arc::clone(&shared.latency),
        connect_latency: Arc::clone(&shared.connect_latency),
        duration_s: connect_s,
        ..Outcome::default()
    };
    if let Some(failure) = &subscribers.first_failure {
        outcome.problems.push(format!(
            "{} connections failed; first: {failure}",
            subscribers.failures
        ));
    }
    if let (Some(before), Some(connected), Some(settled), Some(held)) =
        (before, connected_sample, settled, held)
    {
        outcome.samples = Some([before, before, connected]);
        outcome.idle = Some(IdleOutcome {
            settled,
            held,
            hold_s,
        });
    }
    for end in subscribers.finish().await {
        if let (true, Some(reason)) = (end.connected, end.dropped) {
            outcome.disconnects += 1;
            if outcome.disconnects == 1 {
                outcome
                    .problems
                    .push(format!("an idle connection dropped: {reason}"));
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_shared_evenly_over_topics() {
        assert_eq!(
            (0..3).map(|k| share(10, 3, k)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..4).map(|k| share(2, 4, k)).sum::<u64>(), 2);
        assert_eq!(share(7, 1, 0), 7);
    }

    #[test]
    fn round_robin_visits_every_topic_in_sequence_order() {
        let mut cursor = RoundRobin::new(&[(0, 2), (3, 1), (6, 3)]);
        let order: Vec<(usize, u64)> = std::iter::from_fn(|| cursor.next())
            .map(|(_, topic, seq)| (topic, seq))
            .collect();
        assert_eq!(order, [(0, 1), (3, 1), (6, 1), (0, 2), (6, 2), (6, 3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn window_waits_for_deliveries_then_gives_up_when_they_stop() {
        let shared = Arc::new(Shared::new(1));
        shared.topics[0].subscribers.store(2, Ordering::SeqCst);
        // Within the window: no wait.
        assert!(wait_for_window(&shared, 0, 3, 4).await);
        // Seq 6 with window 4 needs 2 publications delivered to both subscribers.
        let waiter = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { wait_for_window(&shared, 0, 6, 4).await })
        };
        tokio::task::yield_now().await;
        for _ in 0..4 {
            shared.delivered(0, 1);
        }
        assert!(waiter.await.unwrap());
        // Nothing more arrives: after the stall limit the publisher stops waiting.
        assert!(!wait_for_window(&shared, 0, 100, 4).await);
    }
}
