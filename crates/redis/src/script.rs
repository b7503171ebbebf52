//! The publish script: one atomic step in Redis per publication, which makes Redis the
//! authority on a topic's offsets, epoch and dedupe ids.
//!
//! In one `EVALSHA` it reads (or starts) the topic's epoch, checks the publish id
//! (`SET`-once with the dedupe window as time-to-live), increments the offset, completes the
//! frame the origin encoded up to `"offset":`, appends it to the topic's capped history stream,
//! renews the topic's time-to-live and `PUBLISH`es it on the bus, where every node, the origin
//! included, receives it in offset order. Being atomic, offsets on the bus are in the same
//! order as they were given.

use std::time::Duration;

use redis::Script;

use crate::wire::Keys;

/// `KEYS`: topic hash, history stream, dedupe key. `ARGV`: frame head, priority, dedupe window
/// (ms, 0: none), history size (0: none), retention (ms), bus channel, topic.
/// Returns `{offset, epoch, deduplicated (0 or 1)}`.
const PUBLISH: &str = r#"
local meta, history, dedupe = KEYS[1], KEYS[2], KEYS[3]
local head, priority, topic, channel = ARGV[1], ARGV[2], ARGV[7], ARGV[6]
local window, size, retain = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  local now = redis.call('TIME')
  epoch = string.format('%x-%x', tonumber(now[1]), tonumber(now[2]))
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
end
if window > 0 then
  local seen = redis.call('GET', dedupe)
  if seen then
    local seen_epoch, seen_offset = string.match(seen, '^(.*)|(%d+)$')
    if seen_epoch == epoch then
      return {tonumber(seen_offset), epoch, 1}
    end
  end
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
if window > 0 then
  redis.call('SET', dedupe, epoch .. '|' .. offset, 'PX', window)
end
local frame = head .. offset .. ',"epoch":"' .. epoch .. '"}'
if size > 0 then
  redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 'e', epoch, 'p', priority, 'f', frame)
  redis.call('PEXPIRE', history, retain)
end
redis.call('PEXPIRE', meta, retain)
local function field(value)
  value = tostring(value)
  return #value .. ':' .. value
end
redis.call('PUBLISH', channel,
  'P' .. field(offset) .. field(epoch) .. field(priority) .. field(topic) .. frame)
return {offset, epoch, 0}
"#;

/// The publish script, loaded once per connection by `EVALSHA` (and `EVAL` when Redis does not
/// know it yet).
pub(crate) fn publish_script() -> Script {
    Script::new(PUBLISH)
}

/// What one publication asks of the script.
#[derive(Debug)]
pub(crate) struct PublishArgs<'a> {
    /// Where the topic's keys are.
    pub(crate) keys: &'a Keys,
    /// The request from the gateway.
    pub(crate) request: &'a herald_core::SequenceRequest,
    /// Publications kept per topic (0: none).
    pub(crate) history_size: usize,
    /// How long a topic's offsets, epoch and history outlive its last publication.
    pub(crate) retention: Duration,
}

impl PublishArgs<'_> {
    /// The script invocation with its keys and arguments.
    pub(crate) fn invocation<'s>(&self, script: &'s Script) -> redis::ScriptInvocation<'s> {
        let request = self.request;
        let topic = &request.topic;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.topic(topic))
            .key(self.keys.history(topic))
            .key(self.keys.dedupe(topic, request.id.as_deref().unwrap_or("")))
            .arg(&request.frame_head)
            .arg(request.priority.as_str())
            .arg(if request.id.is_some() {
                millis(request.dedupe_window)
            } else {
                0
            })
            .arg(self.history_size)
            .arg(millis(self.retention).max(1))
            .arg(self.keys.bus())
            .arg(topic.as_str());
        invocation
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
