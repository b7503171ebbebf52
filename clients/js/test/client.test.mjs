// Unit tests of the browser client's bookkeeping, run by `node --test` against the built module
// with a scripted WebSocket: resubscription with `since`, repeats dropped by offset, resets,
// events acknowledged after their handler, backoff bounds and terminal close codes. The real
// browser test (Chromium against the real binary) is tests/tests/e2e/browser_client.rs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HeraldClient, backoffBound, tokenExpiryMs } from "../dist/herald-client.js";

/** A WebSocket whose server side the test plays. */
class ScriptedSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.all.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.();
    });
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code) {
    this.readyState = 3;
    this.closedWith = code;
  }
  /** The server sends `frame`. */
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  /** The server closes the connection. */
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** The last frame of `type` the client sent. */
  last(type) {
    return [...this.sent].reverse().find((f) => f.type === type);
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

function client(extra = {}) {
  ScriptedSocket.all = [];
  let tokens = 0;
  const herald = new HeraldClient({
    url: "ws://herald.test/ws",
    getToken: () => `token-${++tokens}`,
    WebSocket: ScriptedSocket,
    random: () => 0, // no waiting between attempts
    ...extra,
  });
  return { herald, tokenCalls: () => tokens };
}

async function connected(socket, user = "alice") {
  await tick();
  socket.deliver({ type: "connected", data: { connectionId: "1", userId: user, heartbeatInterval: 30000 } });
}

test("the backoff bound doubles from the initial delay up to the maximum", () => {
  assert.deepEqual([1, 2, 3, 4].map((a) => backoffBound(a)), [500, 1000, 2000, 4000]);
  assert.equal(backoffBound(30), 30000);
  assert.equal(backoffBound(3, { initialMs: 100, maxMs: 250, multiplier: 3 }), 250);
});

test("the expiry of a token is read from its payload", () => {
  const payload = btoa(JSON.stringify({ sub: "a", exp: 1700000000 })).replace(/=+$/, "");
  assert.equal(tokenExpiryMs(`h.${payload}.s`), 1700000000000);
  assert.equal(tokenExpiryMs("not-a-jwt"), undefined);
});

test("authenticates by message and resubscribes with since after a drop, dropping repeats", async () => {
  const { herald, tokenCalls } = client();
  const messages = [];
  herald.on("message", (m) => messages.push(m.offset));
  herald.connect();
  const subscribed = herald.subscribe("chat:1");
  await tick();
  const first = ScriptedSocket.all[0];
  assert.deepEqual(first.sent[0], { type: "auth", messageId: "auth", data: { token: "token-1" } });
  await connected(first);
  const sub = first.last("subscribe");
  assert.deepEqual(sub.data, { topic: "chat:1" });
  first.deliver({ type: "ack", messageId: sub.messageId, data: { topic: "chat:1", offset: 0, epoch: "e1", recovered: false } });
  assert.equal((await subscribed).offset, 0);
  first.deliver({ type: "batch", data: [
    { type: "message", topic: "chat:1", data: 1, offset: 1, epoch: "e1" },
    { type: "message", topic: "chat:1", data: 2, offset: 2, epoch: "e1" },
  ] });
  first.drop(1001, "server shutting down");
  assert.equal(herald.state, "reconnecting");
  await tick();
  await tick();
  const second = ScriptedSocket.all[1];
  assert.ok(second, "reconnected");
  await connected(second);
  const resume = second.last("subscribe");
  assert.deepEqual(resume.data, { topic: "chat:1", since: { offset: 2, epoch: "e1" } });
  second.deliver({ type: "ack", messageId: resume.messageId, data: { topic: "chat:1", offset: 3, epoch: "e1", recovered: true } });
  // A replay that overlaps what was handled: only offset 3 is new.
  for (const offset of [2, 3]) {
    second.deliver({ type: "message", topic: "chat:1", data: offset, offset, epoch: "e1" });
  }
  assert.deepEqual(messages, [1, 2, 3]);
  assert.equal(tokenCalls(), 2, "a fresh token for each connection");
  herald.close();
});

test("a topic that could not be recovered is reported as a reset", async () => {
  const { herald } = client();
  const resets = [];
  herald.on("reset", (r) => resets.push(r));
  herald.connect();
  herald.subscribe("chat:1");
  await tick();
  let socket = ScriptedSocket.all[0];
  await connected(socket);
  let sub = socket.last("subscribe");
  socket.deliver({ type: "ack", messageId: sub.messageId, data: { topic: "chat:1", offset: 5, epoch: "e1", recovered: false } });
  await tick();
  socket.drop(1013, "server overloaded");
  await tick();
  await tick();
  socket = ScriptedSocket.all[1];
  await connected(socket);
  sub = socket.last("subscribe");
  assert.deepEqual(sub.data.since, { offset: 5, epoch: "e1" });
  socket.deliver({ type: "ack", messageId: sub.messageId, data: { topic: "chat:1", offset: 0, epoch: "e2", recovered: false } });
  await tick();
  assert.deepEqual(resets, [{ topic: "chat:1", previous: { offset: 5, epoch: "e1" }, current: { offset: 0, epoch: "e2" } }]);
  herald.close();
});

test("a gap in live offsets is closed by subscribing again from the last offset", async () => {
  const { herald } = client();
  herald.connect();
  herald.subscribe("t");
  await tick();
  const socket = ScriptedSocket.all[0];
  await connected(socket);
  const sub = socket.last("subscribe");
  socket.deliver({ type: "ack", messageId: sub.messageId, data: { topic: "t", offset: 0, epoch: "e", recovered: false } });
  await tick();
  socket.deliver({ type: "message", topic: "t", data: 1, offset: 1, epoch: "e" });
  socket.deliver({ type: "message", topic: "t", data: 4, offset: 4, epoch: "e" });
  assert.deepEqual(socket.last("subscribe").data, { topic: "t", since: { offset: 1, epoch: "e" } });
  herald.close();
});

test("another epoch on a live subscription resubscribes once and the ack reports the reset", async () => {
  const { herald } = client();
  const resets = [];
  const messages = [];
  herald.on("reset", (r) => resets.push(r));
  herald.on("message", (m) => messages.push([m.epoch, m.offset]));
  herald.connect();
  herald.subscribe("t");
  await tick();
  const socket = ScriptedSocket.all[0];
  await connected(socket);
  const sub = socket.last("subscribe");
  socket.deliver({ type: "ack", messageId: sub.messageId, data: { topic: "t", offset: 0, epoch: "e1", recovered: false } });
  await tick();
  socket.deliver({ type: "message", topic: "t", data: 1, offset: 1, epoch: "e1" });
  socket.deliver({ type: "message", topic: "t", data: 2, offset: 7, epoch: "e2" });
  socket.deliver({ type: "message", topic: "t", data: 3, offset: 8, epoch: "e2" });
  const resubscribes = socket.sent.filter((f) => f.type === "subscribe");
  assert.equal(resubscribes.length, 2, "one resubscription for the epoch change");
  const again = resubscribes[1];
  assert.deepEqual(again.data, { topic: "t", since: { offset: 1, epoch: "e1" } });
  socket.deliver({ type: "ack", messageId: again.messageId, data: { topic: "t", offset: 8, epoch: "e2", recovered: false } });
  await tick();
  socket.deliver({ type: "message", topic: "t", data: 4, offset: 9, epoch: "e2" });
  assert.deepEqual(resets, [{ topic: "t", previous: { offset: 1, epoch: "e1" }, current: { offset: 8, epoch: "e2" } }]);
  assert.deepEqual(messages, [["e1", 1], ["e2", 9]]);
  herald.close();
});

test("a critical event is acknowledged after its handler resolves, and a repeat only acknowledged", async () => {
  const { herald } = client();
  const handled = [];
  let finish;
  herald.on("event", (e) => new Promise((resolve) => { finish = () => { handled.push(e.id); resolve(); }; }));
  herald.connect();
  await tick();
  const socket = ScriptedSocket.all[0];
  await connected(socket);
  socket.deliver({ type: "event", event: "agent_started", id: "evt-1", data: {} });
  await tick();
  assert.equal(socket.last("ack"), undefined, "not acknowledged while the handler runs");
  finish();
  await tick();
  const ack = socket.last("ack");
  assert.deepEqual(ack.data, { ids: ["evt-1"] });
  socket.deliver({ type: "ack", messageId: ack.messageId, data: { acknowledged: 1 } });
  socket.deliver({ type: "event", event: "agent_started", id: "evt-1", data: {} });
  await tick();
  assert.deepEqual(handled, ["evt-1"], "the handler ran once");
  assert.equal(socket.sent.filter((f) => f.type === "ack").length, 2, "the repeat is acknowledged too");
  herald.close();
});

test("publish errors are typed, with the retry delay", async () => {
  const { herald } = client();
  herald.connect();
  await tick();
  const socket = ScriptedSocket.all[0];
  await connected(socket);
  const published = herald.publish("chat:1", { text: "hi" }, { id: "m-1" });
  const frame = socket.last("publish");
  assert.deepEqual(frame.data, { topic: "chat:1", data: { text: "hi" }, id: "m-1" });
  socket.deliver({ type: "error", messageId: frame.messageId, error: { code: "rate_limited", message: "slow down", retryAfter: 1999 } });
  await assert.rejects(published, (e) => e.code === "rate_limited" && e.retryAfterMs === 1999);
  herald.close();
});

test("no reconnect after a close code that says not to", async () => {
  const { herald } = client();
  const states = [];
  herald.on("state", (s) => states.push(s.state));
  herald.connect();
  await tick();
  const socket = ScriptedSocket.all[0];
  await connected(socket);
  socket.drop(4010, "disconnected by the api");
  await tick();
  await tick();
  assert.equal(herald.state, "closed");
  assert.equal(ScriptedSocket.all.length, 1);
  assert.deepEqual(states, ["connecting", "connected", "closed"]);
});

test("reconnection delays are jittered below the exponential bound", async () => {
  ScriptedSocket.all = [];
  const delays = [];
  const herald = new HeraldClient({
    url: "ws://herald.test/ws",
    getToken: () => "t",
    WebSocket: ScriptedSocket,
    random: () => 0.999,
    backoff: { initialMs: 1, maxMs: 4 },
  });
  herald.on("state", (s) => { if (s.state === "reconnecting") delays.push(s.delayMs); });
  herald.connect();
  for (let i = 0; i < 4; i++) {
    await tick();
    ScriptedSocket.all[i].drop(1006, "");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.deepEqual(delays, [0, 1, 3, 3]);
  herald.close();
});

test("a request without a reply fails with timed_out and the connection stays up", async () => {
  const { herald } = client({ requestTimeoutMs: 30 });
  herald.connect();
  await tick();
  const socket = ScriptedSocket.all[0];
  await connected(socket);
  const started = Date.now();
  await assert.rejects(herald.publish("chat:1", { text: "hi" }), (error) => {
    assert.equal(error.code, "timed_out");
    return true;
  });
  assert.ok(Date.now() - started >= 25, "it waited for the timeout");
  assert.equal(herald.state, "connected");
  // A late reply is ignored; the next request still gets its own.
  const late = socket.last("publish");
  socket.deliver({ type: "ack", messageId: late.messageId, data: { topic: "chat:1", offset: 1, epoch: "e1" } });
  const next = herald.publish("chat:1", { text: "again" });
  await tick();
  const sent = socket.last("publish");
  socket.deliver({ type: "ack", messageId: sent.messageId, data: { topic: "chat:1", offset: 2, epoch: "e1", deduplicated: false } });
  assert.equal((await next).offset, 2);
  herald.close();
});
