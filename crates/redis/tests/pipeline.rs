//! The broker's command task against a real `redis-server` the test starts: publications and
//! forwarded operations queued together go to Redis as one pipeline, numbered in the order
//! they were handed over, each caller answered with its own reply; a failed pipeline answers
//! every caller on this node, in order, and its publications reach Redis once it is back.
//!
//! The tests run on tokio's current-thread runtime: everything a test queues without awaiting
//! is in the command queue before the command task runs, so what one pipeline holds is
//! deterministic.

use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use herald_core::{Broker as _, Envelope, Frame, SequenceRequest, Sequenced, Sequencer as _};
use herald_protocol::Topic;
use herald_redis::{RedisBroker, RedisSettings};
use herald_utils::{BreakerSettings, BreakerState, Priority, SystemClock};
use redis::{AsyncCommands as _, aio::MultiplexedConnection};
use tokio::sync::mpsc;

/// How long a test waits for anything before it fails.
const PATIENCE: Duration = Duration::from_secs(20);
const PREFIX: &str = "t:";

/// A `redis-server` on a free port, without persistence, killed when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while redis.try_connection().await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    async fn try_connection(&self) -> Option<MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str()).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .ok()?;
        Some(connection)
    }

    async fn connection(&self) -> MultiplexedConnection {
        self.try_connection().await.expect("redis answers")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }

    /// Read events Redis processed since start (`INFO stats`): a command sent after the
    /// previous one's reply is always a read of its own.
    async fn reads(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut self.connection().await)
            .await
            .expect("INFO answers");
        info.lines()
            .find_map(|line| line.strip_prefix("total_reads_processed:"))
            .and_then(|count| count.trim().parse().ok())
            .expect("INFO stats has total_reads_processed")
    }

    /// The frames in a topic's history stream, oldest first.
    async fn history(&self, topic: &str) -> Vec<(u64, String)> {
        let key = format!("{PREFIX}history:{}:{{{topic}}}", topic.len());
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut self.connection().await)
            .await
            .expect("XRANGE answers");
        entries
            .into_iter()
            .map(|(id, fields)| {
                let offset = id.split_once('-').expect("<offset>-0").0.parse();
                (offset.expect("a number"), fields["f"].clone())
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn broker(redis: &Redis, command_timeout: Duration, failures: u32) -> RedisBroker {
    let settings = RedisSettings {
        url: redis.url.clone(),
        key_prefix: PREFIX.to_owned(),
        node_id: "node-a".to_owned(),
        command_timeout,
        connect_timeout: Duration::from_secs(2),
        history_size: 10_000,
        history_retention: Duration::from_secs(600),
        breaker: BreakerSettings {
            failure_threshold: failures,
            open_for: Duration::from_millis(300),
            half_open_probes: 1,
        },
        outbox_size: 10_000,
    };
    RedisBroker::connect(settings, Arc::new(SystemClock))
        .await
        .expect("a usable URL")
}

fn request(topic: &str, index: usize, id: Option<String>) -> SequenceRequest {
    SequenceRequest {
        topic: Topic::new(topic).expect("valid"),
        priority: Priority::Normal,
        id,
        dedupe_window: Duration::from_secs(60),
        frame_head: format!(r#"{{"type":"message","topic":"{topic}","data":{index},"offset":"#),
    }
}

type Replies = mpsc::UnboundedReceiver<(String, usize, Result<Sequenced, String>)>;

/// Hands `count` publications over round-robin on `topics` without awaiting (the `i`-th of a
/// topic carries data `i`, from 1); returns where the replies arrive.
fn publish_all(broker: &RedisBroker, topics: &[&str], count: usize, ids: bool) -> Replies {
    let (sender, replies) = mpsc::unbounded_channel();
    let mut sent: HashMap<&str, usize> = HashMap::new();
    for n in 0..count {
        let topic = topics[n % topics.len()];
        let index = sent.entry(topic).or_default();
        *index += 1;
        let index = *index;
        let id = ids.then(|| format!("{topic}-{index}"));
        let sender = sender.clone();
        let name = topic.to_owned();
        broker.sequence(
            request(topic, index, id),
            Box::new(move |result| {
                let _ = sender.send((name, index, result.map_err(|e| e.to_string())));
            }),
        );
    }
    replies
}

async fn collect(
    mut replies: Replies,
    count: usize,
) -> Vec<(String, usize, Result<Sequenced, String>)> {
    let mut all = Vec::with_capacity(count);
    while all.len() < count {
        let reply = tokio::time::timeout(PATIENCE, replies.recv())
            .await
            .expect("every caller is answered")
            .expect("the senders live until answered");
        all.push(reply);
    }
    all
}

fn frame(topic: &str, index: usize, offset: u64, epoch: &str) -> String {
    format!(
        r#"{{"type":"message","topic":"{topic}","data":{index},"offset":{offset},"epoch":"{epoch}"}}"#
    )
}

#[tokio::test]
async fn publications_queued_together_are_numbered_in_order_in_one_round_trip_per_pipeline() {
    let redis = Redis::start().await;
    let broker = broker(&redis, Duration::from_secs(5), 3).await;
    // The command connection connects on its first command.
    let warm = collect(publish_all(&broker, &["warm"], 1, false), 1).await;
    assert!(warm[0].2.is_ok(), "{warm:?}");
    let mut bus = redis::Client::open(redis.url.as_str())
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("a subscriber");
    bus.subscribe(format!("{PREFIX}bus"))
        .await
        .expect("subscribed");
    let mut bus = bus.into_on_message();

    let topics = ["a", "b", "c", "d", "e", "f"];
    let count = 600;
    let before = redis.reads().await;
    let replies = publish_all(&broker, &topics, count, false);
    // A push queued behind them all: forwarded operations keep their place among publications.
    broker
        .publish(&Envelope::Broadcast {
            priority: Priority::Normal,
            frame: Frame::from("last".to_owned()),
        })
        .expect("queued");
    let replies = collect(replies, count).await;
    let reads = redis.reads().await - before;

    let mut epochs: HashMap<String, Arc<str>> = HashMap::new();
    for (topic, index, result) in &replies {
        let sequenced = result.as_ref().expect("numbered by redis");
        assert_eq!(
            sequenced.offset,
            u64::try_from(*index).expect("small"),
            "{topic}: the {index}th publication handed over is the {index}th numbered"
        );
        assert!(!sequenced.deduplicated);
        let epoch = epochs
            .entry(topic.clone())
            .or_insert_with(|| Arc::clone(&sequenced.epoch));
        assert_eq!(*epoch, sequenced.epoch, "one epoch per topic");
    }
    for topic in topics {
        let history = redis.history(topic).await;
        let expected: Vec<(u64, String)> = (1..=count / topics.len())
            .map(|i| {
                let offset = u64::try_from(i).expect("small");
                (offset, frame(topic, i, offset, &epochs[topic]))
            })
            .collect();
        assert_eq!(
            history, expected,
            "{topic}'s history holds each once, in order"
        );
    }
    // The bus carried them in the order they were handed over, the push last.
    let mut next: HashMap<String, u64> = HashMap::new();
    for _ in 0..count {
        let message = tokio::time::timeout(PATIENCE, bus.next())
            .await
            .expect("the bus carries every publication")
            .expect("the subscription lives");
        let payload: Vec<u8> = message.get_payload().expect("bytes");
        let text = String::from_utf8(payload).expect("utf-8");
        let topic = topics
            .iter()
            .find(|t| text.contains(&format!(r#""topic":"{t}""#)))
            .expect("a publication of the test");
        let offset = next.entry((*topic).to_owned()).or_insert(0);
        *offset += 1;
        assert!(
            text.contains(&format!(r#""offset":{offset},"#)),
            "{topic} in order on the bus: {text}"
        );
    }
    let push = tokio::time::timeout(PATIENCE, bus.next())
        .await
        .expect("the push follows")
        .expect("the subscription lives");
    let push: Vec<u8> = push.get_payload().expect("bytes");
    assert!(
        push.starts_with(b"B") && push.ends_with(b"last"),
        "{push:?}"
    );

    // One command at a time would need a read per command; a pipeline of up to 256 commands
    // arrives in a few reads (Redis reads 16 KiB at a time).
    assert!(
        reads < u64::try_from(count / 4).expect("small"),
        "{reads} reads for {count} publications: not pipelined"
    );
    assert_eq!(broker.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn an_error_redis_answers_to_one_command_fails_that_command_alone() {
    let redis = Redis::start().await;
    let broker = broker(&redis, Duration::from_secs(5), 1).await;
    // A topic whose hash is another type: its publish script fails with WRONGTYPE.
    let _: () = redis
        .connection()
        .await
        .set(format!("{PREFIX}topic:3:{{bad}}"), "not a hash")
        .await
        .expect("SET answers");
    let (sender, replies) = mpsc::unbounded_channel();
    for (topic, index) in [("ok", 1), ("bad", 1), ("ok", 2)] {
        let sender = sender.clone();
        broker.sequence(
            request(topic, index, None),
            Box::new(move |result| {
                let _ = sender.send((topic.to_owned(), index, result.map_err(|e| e.to_string())));
            }),
        );
    }
    let replies = collect(replies, 3).await;
    let offsets: Vec<(&str, Result<u64, &str>)> = replies
        .iter()
        .map(|(topic, _, result)| {
            (
                topic.as_str(),
                result.as_ref().map(|s| s.offset).map_err(String::as_str),
            )
        })
        .collect();
    assert_eq!(offsets[0], ("ok", Ok(1)));
    assert_eq!(offsets[2], ("ok", Ok(2)));
    let ("bad", Err(error)) = offsets[1] else {
        panic!("the bad topic's publication fails: {offsets:?}");
    };
    assert!(error.contains("WRONGTYPE"), "{error}");
    assert_eq!(
        broker.breaker().state(),
        BreakerState::Closed,
        "an error Redis answered does not count against the breaker"
    );
}

#[tokio::test]
async fn a_pipeline_that_times_out_is_answered_on_this_node_in_order_and_replayed_later() {
    let redis = Redis::start().await;
    let broker = broker(&redis, Duration::from_millis(300), 1).await;
    let warm = collect(publish_all(&broker, &["warm"], 1, false), 1).await;
    assert!(warm[0].2.is_ok(), "{warm:?}");

    redis.signal("-STOP");
    let topics = ["a", "b", "c"];
    let count = 300;
    // With ids, what Redis numbered before the timeout and the replay are one publication each.
    let replies = collect(publish_all(&broker, &topics, count, true), count).await;
    let mut local_epoch = None;
    for (topic, index, result) in &replies {
        let sequenced = result.as_ref().expect("accepted on this node");
        assert_eq!(
            sequenced.offset,
            u64::try_from(*index).expect("small"),
            "{topic}: numbered on this node in the order handed over"
        );
        let epoch = local_epoch.get_or_insert_with(|| Arc::clone(&sequenced.epoch));
        assert_eq!(*epoch, sequenced.epoch, "one local epoch");
    }
    let stats = broker.redis_stats().expect("a redis broker");
    assert!(stats.local_fallback);
    // At least the test's publications (the warm-up one too, had it timed out on a slow host).
    assert!(
        stats.outbox_depth >= u64::try_from(count).expect("small"),
        "{stats:?}"
    );

    redis.signal("-CONT");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = broker.redis_stats().expect("a redis broker");
        if stats.outbox_depth == 0 && !stats.local_fallback {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox is never replayed: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for topic in topics {
        let history = redis.history(topic).await;
        let data: Vec<String> = history
            .iter()
            .map(|(_, frame)| {
                let start = frame.find(r#""data":"#).expect("data") + 7;
                frame[start..]
                    .split(',')
                    .next()
                    .expect("a field")
                    .to_owned()
            })
            .collect();
        let expected: Vec<String> = (1..=count / topics.len()).map(|i| i.to_string()).collect();
        assert_eq!(
            data, expected,
            "{topic}: each publication once in Redis, in order"
        );
        let offsets: Vec<u64> = history.iter().map(|(offset, _)| *offset).collect();
        let expected: Vec<u64> =
            (1..=u64::try_from(count / topics.len()).expect("small")).collect();
        assert_eq!(offsets, expected);
    }
}
