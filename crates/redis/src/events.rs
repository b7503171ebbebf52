//! [`RedisEventStore`]: core's [`EventStore`] over Redis, so that a critical event accepted on
//! any node outlives that node, reaches the user on every node, and an acknowledgement on one
//! node removes it on all.
//!
//! Keys, per user (the user id in braces, so on Redis Cluster one user's keys share a slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>events:<len>:{<user>}` | list | the ids of the user's pending events, oldest first |
//! | `<prefix>event:<len>:{<user>}` | hash | id → `<created ms> <thread length>:<thread><frame>` |
//!
//! Both expire the event time-to-live after the user's last event; events older than it are
//! dropped from the head of the list whenever the user's events are appended or read. Each
//! call is one script, atomic in Redis: append (expiry, duplicate id, the per-user limit, then
//! `RPUSH`/`HSET`), read, and acknowledge, which removes the ids the acknowledging connection
//! receives and `PUBLISH`es them on `<prefix>acks` as `<len>:<node><len>:<user>` followed by
//! `<len>:<id>` per id; every other node drops its copies.
//!
//! Every Redis call of this module goes through the store's one task ([`Store`]) and one time
//! bound (through the node's circuit breaker); a call that fails or times out is answered with
//! [`EventStoreError::Unavailable`], so the gateway refuses the event (HTTP 503) instead of
//! accepting what it could not keep.

use std::time::Duration;

use herald_core::{
    AckedElsewhere, Appended, EventStore, EventStoreError, EventStoreReply, Frame, StoredEvent,
    ThreadId, UserId,
};
use redis::Script;

use crate::{
    guard::RedisBreaker,
    link::{RedisBrokerError, RedisSettings},
    store::{self, Commands, Store, user_key},
};

/// Drops the user's events older than the time-to-live from the head of the list.
/// `KEYS`: list, hash. `ARGV[1]`: now (ms), `ARGV[2]`: time-to-live (ms).
const TRIM: &str = r"
local list, data = KEYS[1], KEYS[2]
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
while true do
  local head = redis.call('LINDEX', list, 0)
  if not head then break end
  local record = redis.call('HGET', data, head)
  local created = record and tonumber(string.match(record, '^(%d+)'))
  if created and now - created < ttl then break end
  redis.call('LPOP', list)
  redis.call('HDEL', data, head)
end
";

/// `ARGV[3]`: id, `ARGV[4]`: record, `ARGV[5]`: limit. Returns `{0: duplicate, 1: stored,
/// 2: full; pending}`.
const APPEND: &str = r"
local id, record, limit = ARGV[3], ARGV[4], tonumber(ARGV[5])
local count = redis.call('LLEN', list)
if redis.call('HEXISTS', data, id) == 1 then return {0, count} end
if count >= limit then return {2, count} end
redis.call('RPUSH', list, id)
redis.call('HSET', data, id, record)
redis.call('PEXPIRE', list, ttl)
redis.call('PEXPIRE', data, ttl)
return {1, count + 1}
";

/// Returns `{id, record, id, record, ...}`, oldest first.
const PENDING: &str = r"
local out = {}
for _, id in ipairs(redis.call('LRANGE', list, 0, -1)) do
  local record = redis.call('HGET', data, id)
  if record then
    out[#out + 1] = id
    out[#out + 1] = record
  end
end
return out
";

/// `KEYS`: list, hash. `ARGV[1]`: channel, `ARGV[2]`: message head, `ARGV[3]`: the
/// connection's thread (empty: none), `ARGV[4..]`: ids. Returns the ids removed.
const ACKNOWLEDGE: &str = r"
local list, data = KEYS[1], KEYS[2]
local bound = ARGV[3]
local removed, message = {}, {ARGV[2]}
for i = 4, #ARGV do
  local id = ARGV[i]
  local record = redis.call('HGET', data, id)
  if record then
    local _, stop, len = string.find(record, '^%d+ (%d+):')
    local thread = string.sub(record, stop + 1, stop + tonumber(len))
    if bound == '' or thread == '' or thread == bound then
      redis.call('HDEL', data, id)
      redis.call('LREM', list, 1, id)
      removed[#removed + 1] = id
      message[#message + 1] = #id .. ':' .. id
    end
  end
end
if #removed > 0 then
  redis.call('PUBLISH', ARGV[1], table.concat(message))
end
return removed
";

/// A call for the store's task.
enum Call {
    Append {
        event: StoredEvent,
        limit: usize,
        ttl: Duration,
        reply: EventStoreReply<Appended>,
    },
    Pending {
        user: UserId,
        now_unix_ms: u64,
        ttl: Duration,
        reply: EventStoreReply<Vec<StoredEvent>>,
    },
    Acknowledge {
        user: UserId,
        thread: Option<ThreadId>,
        ids: Vec<String>,
        reply: EventStoreReply<Vec<String>>,
    },
}

impl Call {
    /// Answers the call with `error` without performing it.
    fn refuse(self, error: EventStoreError) {
        match self {
            Self::Append { reply, .. } => reply(Err(error)),
            Self::Pending { reply, .. } => reply(Err(error)),
            Self::Acknowledge { reply, .. } => reply(Err(error)),
        }
    }
}

/// Core's event store over Redis. Cheap to clone; its tasks run until the runtime stops.
#[derive(Clone)]
pub struct RedisEventStore {
    store: Store<Events>,
}

impl std::fmt::Debug for RedisEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventStore")
            .field("node", &self.store.settings().node_id)
            .finish_non_exhaustive()
    }
}

impl RedisEventStore {
    /// Opens the store's connections to Redis (lazily: they connect at their first call),
    /// subscribes to the acknowledgement channel when Redis answers, and starts the store's
    /// tasks on the current tokio runtime. Every call goes through `breaker`, the broker's
    /// ([`crate::RedisBroker::breaker`]); a Redis that is down now is subscribed to once it
    /// answers. Fails only on a URL that cannot be used.
    pub async fn connect(
        settings: RedisSettings,
        breaker: RedisBreaker,
    ) -> Result<Self, RedisBrokerError> {
        let channel = acks_channel(&settings.key_prefix);
        let events = Events {
            append: Script::new(&format!("{TRIM}{APPEND}")),
            pending: Script::new(&format!("{TRIM}{PENDING}")),
            acknowledge: Script::new(ACKNOWLEDGE),
        };
        let store = Store::connect(settings, breaker, channel, events).await?;
        Ok(Self { store })
    }
}

impl EventStore for RedisEventStore {
    fn attach(&self, local: AckedElsewhere) {
        self.store.attach(local);
    }

    fn node(&self) -> &str {
        &self.store.settings().node_id
    }

    fn append(
        &self,
        event: StoredEvent,
        limit: usize,
        ttl: Duration,
        reply: EventStoreReply<Appended>,
    ) {
        self.store.queue(Call::Append {
            event,
            limit,
            ttl,
            reply,
        });
    }

    fn pending(
        &self,
        user: &UserId,
        now_unix_ms: u64,
        ttl: Duration,
        reply: EventStoreReply<Vec<StoredEvent>>,
    ) {
        self.store.queue(Call::Pending {
            user: user.clone(),
            now_unix_ms,
            ttl,
            reply,
        });
    }

    fn acknowledge(
        &self,
        user: &UserId,
        thread: Option<&ThreadId>,
        ids: Vec<String>,
        reply: EventStoreReply<Vec<String>>,
    ) {
        self.store.queue(Call::Acknowledge {
            user: user.clone(),
            thread: thread.cloned(),
            ids,
            reply,
        });
    }
}

fn acks_channel(prefix: &str) -> String {
    format!("{prefix}acks")
}

/// The event store's part of its [`Store`]: its scripts, made once for its task, and the
/// acknowledgements other nodes publish.
struct Events {
    append: Script,
    pending: Script,
    acknowledge: Script,
}

impl store::Kind for Events {
    type Call = Call;
    type Local = AckedElsewhere;
    /// The acknowledged ids.
    type Change<'a> = Vec<&'a str>;

    const CHANGE: &'static str = "an acknowledgement";

    fn refuse(call: Call) {
        call.refuse(EventStoreError::Unavailable(
            "redis: the event store's queue is full".to_owned(),
        ));
    }

    async fn perform(&self, settings: &RedisSettings, commands: &mut Commands, call: Call) {
        let prefix = settings.key_prefix.as_str();
        match call {
            Call::Append {
                event,
                limit,
                ttl,
                reply,
            } => {
                let mut invocation = self.append.prepare_invoke();
                invocation
                    .key(user_key(prefix, "events", &event.user))
                    .key(user_key(prefix, "event", &event.user))
                    .arg(event.created_unix_ms)
                    .arg(millis(ttl))
                    .arg(&event.id)
                    .arg(record(&event))
                    .arg(limit);
                let answer: Result<(u8, usize), String> = commands.invoke(&invocation).await;
                reply(
                    answer
                        .map(|(kind, pending)| match kind {
                            0 => Appended::Duplicate { pending },
                            1 => Appended::Stored { pending },
                            _ => Appended::Full,
                        })
                        .map_err(EventStoreError::Unavailable),
                );
            }
            Call::Pending {
                user,
                now_unix_ms,
                ttl,
                reply,
            } => {
                let mut invocation = self.pending.prepare_invoke();
                invocation
                    .key(user_key(prefix, "events", &user))
                    .key(user_key(prefix, "event", &user))
                    .arg(now_unix_ms)
                    .arg(millis(ttl));
                let answer: Result<Vec<String>, String> = commands.invoke(&invocation).await;
                reply(
                    answer
                        .map(|flat| {
                            flat.chunks_exact(2)
                                .filter_map(|pair| parse_record(&user, &pair[0], &pair[1]))
                                .collect()
                        })
                        .map_err(EventStoreError::Unavailable),
                );
            }
            Call::Acknowledge {
                user,
                thread,
                ids,
                reply,
            } => {
                let mut invocation = self.acknowledge.prepare_invoke();
                invocation
                    .key(user_key(prefix, "events", &user))
                    .key(user_key(prefix, "event", &user))
                    .arg(acks_channel(prefix))
                    .arg(store::head(&settings.node_id, &user))
                    .arg(thread.as_ref().map_or("", ThreadId::as_str));
                for id in &ids {
                    invocation.arg(id);
                }
                let answer: Result<Vec<String>, String> = commands.invoke(&invocation).await;
                reply(answer.map_err(EventStoreError::Unavailable));
            }
        }
    }

    /// Reads the ids of an acknowledgement, each a `<len>:<id>` field.
    fn read(rest: &str) -> Option<Vec<&str>> {
        let mut rest = rest;
        let mut ids = Vec::new();
        while let Some(id) = store::next_field(&mut rest) {
            ids.push(id);
        }
        Some(ids)
    }

    fn tell(local: &AckedElsewhere, user: &UserId, ids: Vec<&str>) {
        let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
        local.acknowledged(user, &ids);
    }
}

/// The hash value of an event: `<created ms> <thread length>:<thread><frame>`.
fn record(event: &StoredEvent) -> String {
    let thread = event.thread.as_ref().map_or("", ThreadId::as_str);
    format!(
        "{} {}:{thread}{}",
        event.created_unix_ms,
        thread.len(),
        event.frame.as_str()
    )
}

/// Reads a hash value back; `None` for one that is not Herald's.
fn parse_record(user: &UserId, id: &str, record: &str) -> Option<StoredEvent> {
    let (created, rest) = record.split_once(' ')?;
    let (len, rest) = rest.split_once(':')?;
    let (thread, frame) = rest.split_at_checked(len.parse().ok()?)?;
    Some(StoredEvent {
        user: user.clone(),
        id: id.to_owned(),
        thread: (!thread.is_empty()).then(|| ThreadId::new(thread)),
        frame: Frame::from(frame.to_owned()),
        created_unix_ms: created.parse().ok()?,
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_they_were_written() {
        let event = StoredEvent {
            user: UserId::new("alice"),
            id: "e1".to_owned(),
            thread: Some(ThreadId::new("t:1 2")),
            frame: Frame::from(r#"{"type":"event","id":"e1"}"#.to_owned()),
            created_unix_ms: 1_700_000_000_000,
        };
        let back = parse_record(&event.user, "e1", &record(&event)).expect("reads");
        assert_eq!(back.thread, event.thread);
        assert_eq!(back.frame.as_str(), event.frame.as_str());
        assert_eq!(back.created_unix_ms, event.created_unix_ms);
        let none = StoredEvent {
            thread: None,
            ..event
        };
        let back = parse_record(&none.user, "e1", &record(&none)).expect("reads");
        assert_eq!(back.thread, None);
        assert!(parse_record(&none.user, "e1", "garbage").is_none());
    }

    #[test]
    fn acknowledgements_read_back() {
        let message = format!("{}2:e13:e:2", store::head("node:1", &UserId::new("al:ice")));
        assert_eq!(
            store::read_change::<Events>(&message),
            Some(("node:1", "al:ice", vec!["e1", "e:2"]))
        );
        assert_eq!(store::read_change::<Events>("x"), None);
    }
}
