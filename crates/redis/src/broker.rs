//! [`RedisBroker`]: core's [`Broker`] and [`Sequencer`] over one Redis, which makes several
//! Herald nodes one system.
//!
//! Two connections per node: a command connection (the publish script, forwarded operations,
//! history fetches), used by one task in the order the gateway handed work over (what is
//! queued at the moment goes as one pipeline, so one round trip carries many publications), and a
//! subscriber connection on the bus channel (RESP3 push messages, resubscribed automatically
//! after a reconnect). The receiver task delivers what the bus brings in order; when a
//! publication's offset shows that some were missed (pub/sub is at-most-once, e.g. during a
//! reconnect), it fetches them from the topic's history stream first.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use herald_core::{
    Broker, BrokerError, Envelope, Frame, LocalDelivery, SequenceReply, SequenceRequest, Sequenced,
    SequencedDelivery, SequencedPublication, Sequencer,
};
use herald_monitoring::RedisStats;
use herald_protocol::Topic;
use herald_utils::{BreakerState, Clock};
use redis::{
    AsyncCommands as _, PushInfo, PushKind, RedisError, Script, Value, aio::ConnectionManager,
};
use tokio::sync::mpsc;

use crate::{
    fallback::{Fallback, Pending},
    guard::RedisBreaker,
    link::{self, Connections, RedisBrokerError, RedisSettings},
    script::{PublishArgs, publish_script},
    wire::{BusMessage, Keys, decode, encode_envelope},
};

/// Work queued for the command task before callers are refused.
const COMMAND_QUEUE: usize = 10_000;
/// How often the subscriber connection is pinged, which also drives its reconnection.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Commands the command task sends to Redis in one pipeline at most.
///
/// The task takes every command queued when it is ready for more, up to this many, and sends
/// them as one pipeline: one round trip for all of them instead of one each. The bound keeps
/// one pipeline from holding Redis (which runs one command at a time, every other client
/// waiting) for long: about 12 us per publish script (`redis-benchmark` with `EVALSHA`,
/// pipelined), so 3 ms for 256, well inside the command timeout; and it bounds how many
/// callers one failed round trip fails at once. Beyond it, a longer pipeline saves little:
/// a round trip on a local network is a small part of the time Redis spends on 256 scripts.
const PIPELINE: usize = 256;
/// How often the command task tries to replay the outbox when no work arrives.
const REPLAY_INTERVAL: Duration = Duration::from_millis(200);
/// Bus messages the receiver delivers before it lets the connections' writers run: enough
/// for the burst one pipeline of publish scripts brings back ([`PIPELINE`]); a longer burst
/// is taken in several turns.
const RECEIVE_BATCH: usize = PIPELINE;

/// Core's broker and sequencer over Redis. Cheap to clone; the tasks it spawned run until the
/// runtime stops.
#[derive(Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.shared.settings.node_id)
            .finish_non_exhaustive()
    }
}

/// What the broker and its tasks share.
struct Shared {
    settings: RedisSettings,
    keys: Keys,
    breaker: RedisBreaker,
    commands: mpsc::Sender<Command>,
    /// This node's delivery, once the gateway attached.
    local: Mutex<Option<LocalDelivery>>,
    /// Local numbering and the outbox while Redis is unreachable. Held while delivering a
    /// publication on this node, so local and Redis numbering never interleave on a topic.
    fallback: Mutex<Fallback>,
    /// Makes local epochs unique.
    clock: Arc<dyn Clock>,
    /// Local epochs made so far.
    local_epochs: AtomicU64,
    /// Whether the bus connection is up and subscribed: the last keep-alive answered and no
    /// disconnection was seen since.
    bus_connected: AtomicBool,
}

impl Shared {
    fn local(&self) -> Option<LocalDelivery> {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fallback(&self) -> MutexGuard<'_, Fallback> {
        self.fallback.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new local epoch: the time, this node and a count, so it differs from Redis's epochs
    /// (`<seconds>-<microseconds>`), from other nodes' and from this node's earlier ones.
    fn local_epoch(&self) -> String {
        let count = self.local_epochs.fetch_add(1, Ordering::Relaxed) + 1;
        // FNV-1a of the node id: short, and the same on every call.
        let node = self
            .settings
            .node_id
            .bytes()
            .fold(0x811c_9dc5_u32, |hash, byte| {
                (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
            });
        format!("{:x}-n{node:x}-{count}", self.clock.unix_ms())
    }
}

/// Work for the command task.
enum Command {
    /// Run the publish script and answer.
    Sequence(SequenceRequest, SequenceReply),
    /// Publish a forwarded operation on the bus.
    Forward(Vec<u8>),
}

impl RedisBroker {
    /// Connects to Redis, subscribes to the bus and starts the broker's tasks on the current
    /// tokio runtime; the breaker ages on `clock`. Fails only when the URL is not usable: a
    /// Redis that cannot be reached within the connect timeout is logged, the breaker starts
    /// open, and the node joins when Redis answers (the connections reconnect on their own).
    pub async fn connect(
        settings: RedisSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RedisBrokerError> {
        let Connections {
            commands: connection,
            mut subscriber,
            pushes,
        } = Connections::open(&settings)?;
        let keys = Keys::new(&settings.key_prefix);
        let breaker = RedisBreaker::new(Arc::clone(&clock), settings.breaker);
        let subscribed = link::subscribe_at_start(&settings, &breaker, &mut subscriber, &keys.bus())
            .await
            .inspect_err(|error| {
                tracing::warn!(
                    %error,
                    "redis is unreachable at start: serving this node's clients alone (circuit breaker open) until it answers"
                );
                breaker.trip();
            })
            .is_ok();
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let settings_outbox = settings.outbox_size;
        let shared = Arc::new(Shared {
            settings,
            keys,
            breaker,
            commands,
            local: Mutex::new(None),
            fallback: Mutex::new(Fallback::new(settings_outbox)),
            clock,
            local_epochs: AtomicU64::new(0),
            bus_connected: AtomicBool::new(subscribed),
        });
        tokio::spawn(run_commands(
            Arc::downgrade(&shared),
            connection.clone(),
            queue,
        ));
        tokio::spawn(receive(Arc::downgrade(&shared), connection, pushes));
        tokio::spawn(keep_alive(Arc::downgrade(&shared), subscriber, subscribed));
        Ok(Self { shared })
    }

    /// This node's id on the bus.
    pub fn node_id(&self) -> &str {
        &self.shared.settings.node_id
    }

    /// The circuit breaker every Redis call of this broker goes through. A store over the same
    /// Redis clones it and runs its commands through [`RedisBreaker::call`], so the node has
    /// one breaker and one state.
    pub fn breaker(&self) -> &RedisBreaker {
        &self.shared.breaker
    }
}

impl Broker for RedisBroker {
    fn attach(&self, local: LocalDelivery) {
        *self
            .shared
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(local);
    }

    fn publish(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        let Some(message) = encode_envelope(&self.shared.settings.node_id, envelope) else {
            // Publications go through the sequencer; the gateway never forwards one here.
            return Ok(());
        };
        self.shared
            .commands
            .try_send(Command::Forward(message))
            .map_err(|_| BrokerError::Unavailable("redis command queue full".to_owned()))
    }

    fn sequencer(&self) -> Option<Arc<dyn Sequencer>> {
        Some(Arc::new(self.clone()))
    }

    fn redis_stats(&self) -> Option<RedisStats> {
        let breaker = &self.shared.breaker;
        let state = breaker.state();
        let fallback = self.shared.fallback();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Some(RedisStats {
            breaker: state.as_str(),
            breaker_state: u64::from(state.code()),
            opened: breaker.entered(BreakerState::Open),
            half_opened: breaker.entered(BreakerState::HalfOpen),
            closed: breaker.entered(BreakerState::Closed),
            local_fallback: fallback.active(),
            bus_connected: self.shared.bus_connected.load(Ordering::Relaxed),
            outbox_depth: count(fallback.depth()),
            outbox_capacity: count(fallback.capacity()),
            outbox_refused: fallback.refused(),
            outbox_replayed: fallback.replayed(),
        })
    }
}

impl Sequencer for RedisBroker {
    fn sequence(&self, request: SequenceRequest, reply: SequenceReply) {
        if let Err(refused) = self
            .shared
            .commands
            .try_send(Command::Sequence(request, reply))
        {
            let (mpsc::error::TrySendError::Full(command)
            | mpsc::error::TrySendError::Closed(command)) = refused;
            if let Command::Sequence(_, reply) = command {
                reply(Err(BrokerError::Unavailable(
                    "redis command queue full".to_owned(),
                )));
            }
        }
    }
}

/// The command task: performs queued work in the order it was queued, every command queued
/// at the moment (up to [`PIPELINE`]) in one Redis pipeline.
///
/// While Redis is unreachable (the breaker is not closed) publications are numbered and
/// delivered on this node and kept in the outbox with forwarded operations; from then until
/// the outbox is replayed, new work queues behind it, so Redis receives everything in the
/// order this node accepted it.
async fn run_commands(
    shared: std::sync::Weak<Shared>,
    mut connection: ConnectionManager,
    mut queue: mpsc::Receiver<Command>,
) {
    let script = publish_script();
    let mut replay = tokio::time::interval(REPLAY_INTERVAL);
    replay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(PIPELINE);
    loop {
        // `recv_many` is cancel safe: when the tick wins, nothing was taken from the queue.
        tokio::select! {
            received = queue.recv_many(&mut batch, PIPELINE) => if received == 0 {
                return;
            },
            _ = replay.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        replay_outbox(&shared, &script, &mut connection).await;
        if !batch.is_empty() {
            perform(&shared, &script, &mut connection, &mut batch).await;
        }
    }
}

/// Performs a batch of commands, in order: on this node while it falls back, else as one
/// pipeline whose replies are matched to the commands in order. Empties `batch`.
///
/// A pipeline is one call for the circuit breaker: one round trip to Redis, so one success or
/// one failure, whatever its length (counting each command would let a single slow round trip
/// of a full batch open the breaker). When it fails (a timeout, a lost connection, or the
/// breaker refused it), every command of the batch is handled as a failed single call was: in
/// order, on this node if the breaker is no longer closed, else answered with the error (a
/// publication 503, a forward logged as not reaching the other nodes). An error Redis
/// answered to one command (a script error) fails that command alone, answered with the
/// error: Redis is up, and the other commands of the pipeline went through.
async fn perform(
    shared: &Shared,
    script: &Script,
    connection: &mut ConnectionManager,
    batch: &mut Vec<Command>,
) {
    if shared.falling_back() {
        for command in batch.drain(..) {
            perform_locally(shared, command);
        }
        return;
    }
    let pipe = pipeline(shared, script, batch);
    match send(shared, connection, pipe).await {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            for command in batch.drain(..) {
                let reply = replies.next().unwrap_or_else(|| {
                    Err(BrokerError::Unavailable(
                        "redis: the pipeline's reply is missing".to_owned(),
                    ))
                });
                match (command, reply) {
                    (Command::Sequence(_, reply), result) => reply(result.and_then(sequenced)),
                    (Command::Forward(_), Ok(_)) => {}
                    (Command::Forward(_), Err(error)) => {
                        tracing::warn!(%error, "an operation did not reach the other nodes");
                    }
                }
            }
        }
        Err(error) => {
            for command in batch.drain(..) {
                failed(shared, command, error.clone());
            }
        }
    }
}

/// Performs a command on this node: Redis is unreachable or the outbox is not replayed yet.
fn perform_locally(shared: &Shared, command: Command) {
    match command {
        Command::Sequence(request, reply) => reply(sequence_locally(shared, &request)),
        Command::Forward(message) => keep_forward(shared, message),
    }
}

/// A command Redis did not perform: on this node when the breaker is no longer closed, else
/// its caller hears the error (a forwarded operation's loss is logged).
fn failed(shared: &Shared, command: Command, error: BrokerError) {
    if shared.breaker.state() != BreakerState::Closed {
        perform_locally(shared, command);
        return;
    }
    match command {
        Command::Sequence(_, reply) => reply(Err(error)),
        Command::Forward(_) => {
            tracing::warn!(%error, "an operation did not reach the other nodes");
        }
    }
}

/// The pipeline of `batch`'s commands, in order (built before any await: a caller's reply is
/// `Send` but not `Sync`, so the batch cannot be borrowed across one).
fn pipeline(shared: &Shared, script: &Script, batch: &[Command]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    if batch
        .iter()
        .any(|command| matches!(command, Command::Sequence(..)))
    {
        // `EVALSHA` in a pipeline does not load a script Redis lacks (after a restart it has
        // none), so the pipeline loads it first: a hash and a lookup when Redis has it.
        pipe.load_script(script).ignore();
    }
    let bus = shared.keys.bus();
    for command in batch {
        match command {
            Command::Sequence(request, _) => {
                let args = PublishArgs {
                    keys: &shared.keys,
                    request,
                    history_size: shared.settings.history_size,
                    retention: shared.settings.history_retention,
                };
                pipe.invoke_script(&args.invocation(script));
            }
            Command::Forward(message) => {
                pipe.cmd("PUBLISH").arg(&bus).arg(message);
            }
        }
    }
    pipe
}

/// Sends a pipeline through the breaker, bounded by the command timeout; the replies, one per
/// command in order (an error Redis answered to a command is that command's `Err`).
async fn send(
    shared: &Shared,
    connection: &mut ConnectionManager,
    pipe: redis::Pipeline,
) -> Result<Vec<Result<Value, BrokerError>>, BrokerError> {
    let replies: Vec<Value> = shared
        .breaker
        .call(
            shared.settings.command_timeout,
            pipe.query_async(connection),
        )
        .await?;
    Ok(replies
        .into_iter()
        .map(|reply| match reply {
            Value::ServerError(error) => Err(BrokerError::Unavailable(format!(
                "redis: {}",
                RedisError::from(error)
            ))),
            reply => Ok(reply),
        })
        .collect())
}

/// Reads the publish script's reply.
fn sequenced(reply: Value) -> Result<Sequenced, BrokerError> {
    let (offset, epoch, deduplicated): (u64, String, u8) = redis::from_redis_value(reply)
        .map_err(|error| BrokerError::Unavailable(format!("redis: {error}")))?;
    Ok(Sequenced {
        offset,
        epoch: Arc::from(epoch),
        deduplicated: deduplicated == 1,
    })
}

impl Shared {
    /// Whether work goes to the outbox now: local numbering is on or something waits there.
    fn falling_back(&self) -> bool {
        let fallback = self.fallback();
        fallback.active() || fallback.depth() > 0
    }
}

/// Numbers a publication on this node (Redis is unreachable), delivers it to this node's
/// subscribers and keeps it for the replay; refused when the outbox is full.
fn sequence_locally(shared: &Shared, request: &SequenceRequest) -> Result<Sequenced, BrokerError> {
    let mut fallback = shared.fallback();
    let was_active = fallback.active();
    let local = shared.local();
    let position = || local.as_ref().and_then(|l| l.position(&request.topic));
    let (publication, sequenced) = fallback
        .sequence(request, || shared.local_epoch(), position)
        .map_err(|full| {
            tracing::debug!(%full, "a publication was refused");
            BrokerError::Unavailable(full.to_string())
        })?;
    if !was_active {
        tracing::warn!(
            epoch = %sequenced.epoch,
            "redis is unreachable: numbering publications on this node in a local epoch until the outbox is replayed"
        );
    }
    if let (Some(publication), Some(local)) = (publication, &local) {
        local.deliver_sequenced(&publication, true);
    }
    Ok(sequenced)
}

/// Keeps a forwarded operation for the replay; when the outbox is full it is lost for the
/// other nodes (this node delivered it), which is logged and counted.
fn keep_forward(shared: &Shared, message: Vec<u8>) {
    if let Err(full) = shared.fallback().forward(message) {
        tracing::warn!(%full, "an operation did not reach the other nodes");
    }
}

/// Publishes a forwarded operation on the bus; gives it back with the error when it failed.
async fn forward(
    shared: &Shared,
    connection: &mut ConnectionManager,
    message: Vec<u8>,
) -> Result<(), (BrokerError, Vec<u8>)> {
    let channel = shared.keys.bus();
    shared
        .breaker
        .call(
            shared.settings.command_timeout,
            connection.publish::<_, _, ()>(channel, &message),
        )
        .await
        .map_err(|error| (error, message))
}

/// Replays the outbox to Redis, oldest first, while Redis takes it; once it is empty and the
/// breaker closed, Redis numbers publications again.
async fn replay_outbox(shared: &Shared, script: &Script, connection: &mut ConnectionManager) {
    loop {
        let next = {
            let mut fallback = shared.fallback();
            let next = fallback.next_to_replay();
            if next.is_none() && shared.breaker.state() == BreakerState::Closed && fallback.finish()
            {
                tracing::info!(
                    replayed = fallback.replayed(),
                    "the outbox is replayed: redis numbers publications again"
                );
            }
            next
        };
        let replayed = match next {
            None => return,
            Some(Pending::Publication(request)) => sequence(shared, script, connection, &request)
                .await
                .map(drop),
            Some(Pending::Forward(message)) => forward(shared, connection, message)
                .await
                .map_err(|(error, _)| error),
        };
        if let Err(error) = replayed {
            tracing::debug!(%error, "the outbox replay waits for redis");
            return;
        }
        shared.fallback().replayed_one();
    }
}

/// Runs the publish script for one request (the outbox replay).
async fn sequence(
    shared: &Shared,
    script: &Script,
    connection: &mut ConnectionManager,
    request: &SequenceRequest,
) -> Result<Sequenced, BrokerError> {
    let args = PublishArgs {
        keys: &shared.keys,
        request,
        history_size: shared.settings.history_size,
        retention: shared.settings.history_retention,
    };
    let invocation = args.invocation(script);
    let reply: Value = shared
        .breaker
        .call(
            shared.settings.command_timeout,
            invocation.invoke_async(connection),
        )
        .await?;
    sequenced(reply)
}

/// The receiver task: delivers the bus's messages in order, closing offset gaps from the
/// shared history first.
///
/// It takes every message the bus brought at the moment (up to [`RECEIVE_BATCH`]), delivers
/// them one after another, and only then lets other tasks run: the writers of the connections
/// they were queued to then send each connection what queued for it in one socket write, as
/// the fan-out worker's turns do in memory, instead of one write per publication.
async fn receive(
    shared: std::sync::Weak<Shared>,
    mut connection: ConnectionManager,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    while pushes.recv_many(&mut batch, RECEIVE_BATCH).await > 0 {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for push in batch.drain(..) {
            receive_one(&shared, &mut connection, push).await;
        }
        drop(shared);
        tokio::task::yield_now().await;
    }
}

/// Delivers one message from the bus (or notes that the bus connection dropped).
async fn receive_one(shared: &Shared, connection: &mut ConnectionManager, push: PushInfo) {
    match push.kind {
        PushKind::Message => {}
        PushKind::Disconnection => {
            shared.bus_connected.store(false, Ordering::Relaxed);
            tracing::warn!(
                "redis: the bus connection dropped; reconnecting (missed publications are fetched from history when the next one shows the gap)"
            );
            return;
        }
        _ => return,
    }
    let Some(Value::BulkString(payload)) = push.data.get(1) else {
        return;
    };
    let Some(message) = decode(payload) else {
        tracing::warn!("redis: a bus message Herald cannot read was ignored");
        return;
    };
    let Some(local) = shared.local() else {
        return;
    };
    match message {
        BusMessage::Forwarded { node, envelope } => {
            if node != shared.settings.node_id {
                local.deliver(&envelope);
            }
        }
        BusMessage::Publication(publication) => {
            deliver_in_order(shared, connection, &local, &publication).await;
        }
    }
}

/// Delivers a publication; when the node lacks the ones before it, fetches them from the
/// topic's history stream and delivers them first. What the stream no longer holds (or cannot
/// give now) stays a gap: subscribers see it in the offsets, and resumes across it are refused.
///
/// A topic this node numbers itself until its outbox is replayed is left alone (its
/// subscribers get the replayed publications in the local epoch already). The first
/// publication after that switches the topic back to Redis's epoch, preceded by what Redis
/// retains after the node's position in that epoch before it fell back (all it retains when
/// the epoch is another): publications that were in flight then are not lost here.
async fn deliver_in_order(
    shared: &Shared,
    connection: &mut ConnectionManager,
    local: &LocalDelivery,
    publication: &SequencedPublication,
) {
    let (after, returning) = {
        let mut fallback = shared.fallback();
        if fallback.holds(&publication.topic) {
            return;
        }
        match fallback.returns(&publication.topic) {
            Some(before) => {
                let after = before
                    .filter(|(_, epoch)| *epoch == publication.epoch)
                    .map_or(0, |(offset, _)| offset);
                (after, true)
            }
            None => match local.deliver_sequenced(publication, false) {
                SequencedDelivery::Gap { last_offset } => (last_offset, false),
                _ => return,
            },
        }
    };
    let fetched = fetch(
        shared,
        connection,
        &publication.topic,
        after,
        publication.offset,
    )
    .await;
    match fetched {
        Ok(missing) => {
            let mut expected = after + 1;
            let mut switch = returning;
            for earlier in missing.iter().filter(|p| p.epoch == publication.epoch) {
                deliver_bus(shared, local, earlier, switch || earlier.offset != expected);
                switch = false;
                expected = earlier.offset + 1;
            }
        }
        Err(error) => {
            tracing::warn!(%error, topic = %publication.topic, "missed publications could not be fetched");
        }
    }
    deliver_bus(shared, local, publication, true);
}

/// Delivers a publication Redis numbered, unless this node numbers its topic itself until
/// its outbox is replayed.
fn deliver_bus(
    shared: &Shared,
    local: &LocalDelivery,
    publication: &SequencedPublication,
    accept_gap: bool,
) -> SequencedDelivery {
    let fallback = shared.fallback();
    if fallback.holds(&publication.topic) {
        return SequencedDelivery::Stale;
    }
    local.deliver_sequenced(publication, accept_gap)
}

/// The topic's retained publications after `after` and before `before`, oldest first.
async fn fetch(
    shared: &Shared,
    connection: &mut ConnectionManager,
    topic: &Topic,
    after: u64,
    before: u64,
) -> Result<Vec<SequencedPublication>, BrokerError> {
    if before <= after + 1 {
        return Ok(Vec::new());
    }
    let mut command = redis::cmd("XRANGE");
    command
        .arg(shared.keys.history(topic))
        .arg(format!("{}-0", after + 1))
        .arg(format!("{}-0", before - 1));
    let entries: Value = shared
        .breaker
        .call(
            shared.settings.command_timeout,
            command.query_async(connection),
        )
        .await?;
    Ok(history_entries(topic, &entries))
}

/// Reads `XRANGE`'s answer: `[[id, [field, value, ...]], ...]`; entries that do not read as
/// Herald's are skipped.
fn history_entries(topic: &Topic, entries: &Value) -> Vec<SequencedPublication> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let [id, fields] = parts.as_slice() else {
                return None;
            };
            let offset = text(id)?.split_once('-')?.0.parse().ok()?;
            let pairs: Vec<(&Value, &Value)> = match fields {
                Value::Array(flat) => flat
                    .chunks_exact(2)
                    .map(|pair| (&pair[0], &pair[1]))
                    .collect(),
                Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
                _ => return None,
            };
            let field = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| text(k) == Some(name))
                    .and_then(|(_, v)| text(v))
            };
            Some(SequencedPublication {
                topic: topic.clone(),
                offset,
                epoch: Arc::from(field("e")?),
                priority: field("p")?.parse().ok()?,
                frame: Frame::from(field("f")?.to_owned()),
            })
        })
        .collect()
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Pings the subscriber connection every second, through the breaker: a dropped connection is
/// noticed and re-established (and resubscribed) even when nothing is published, and an open
/// breaker is probed once its open time has passed. Subscribes first when that failed at start.
async fn keep_alive(
    shared: std::sync::Weak<Shared>,
    mut subscriber: ConnectionManager,
    mut subscribed: bool,
) {
    let mut interval = tokio::time::interval(KEEP_ALIVE);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let timeout = shared.settings.command_timeout;
        let breaker = shared.breaker.clone();
        let bus = shared.keys.bus();
        let result = if subscribed {
            breaker
                .call(
                    timeout,
                    redis::cmd("PING").query_async::<()>(&mut subscriber),
                )
                .await
        } else {
            let result = breaker.call(timeout, subscriber.subscribe(&bus)).await;
            if result.is_ok() {
                tracing::info!("redis answers: subscribed to the bus");
                subscribed = true;
            }
            result
        };
        // An answer on the bus connection means it is connected and subscribed: the
        // connection manager resubscribes a new connection before handing it out.
        shared
            .bus_connected
            .store(result.is_ok(), Ordering::Relaxed);
        drop(shared);
        if let Err(error) = result {
            tracing::debug!(%error, "redis: the bus connection did not answer");
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_utils::Priority;

    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn history_entries_read_as_publications_and_foreign_ones_are_skipped() {
        let topic = Topic::new("t").expect("valid");
        let entry =
            |id: &str, fields: Vec<Value>| Value::Array(vec![bulk(id), Value::Array(fields)]);
        let answer = Value::Array(vec![
            entry(
                "3-0",
                vec![
                    bulk("e"),
                    bulk("ab"),
                    bulk("p"),
                    bulk("high"),
                    bulk("f"),
                    bulk("{}"),
                ],
            ),
            entry("4-0", vec![bulk("x"), bulk("y")]),
            Value::Int(1),
        ]);
        assert_eq!(
            history_entries(&topic, &answer),
            vec![SequencedPublication {
                topic: topic.clone(),
                offset: 3,
                epoch: Arc::from("ab"),
                priority: Priority::High,
                frame: Frame::from("{}".to_owned()),
            }]
        );
    }
}
