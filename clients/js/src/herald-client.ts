// Herald browser client: one ES module, no runtime dependencies.
//
// It keeps the promises of docs/protocol.md on the browser's WebSocket: it authenticates with an
// `auth` message (the token never goes into a URL), refreshes the token before it expires,
// reconnects with exponential backoff and full jitter, resubscribes every topic with
// `since {offset, epoch}` so that nothing published while it was away is missed, drops repeats
// by offset, tells the application when a topic's history could not be recovered, and
// acknowledges each critical event once the application's handler has finished with it.

/** Where the connection stands. */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** A change of [`ConnectionState`], as the `state` listener receives it. */
export interface StateChange {
  /** The new state. */
  state: ConnectionState;
  /** For `reconnecting`: which attempt comes next (1 for the first after a drop). */
  attempt?: number;
  /** For `reconnecting`: how long the client waits before it, in milliseconds. */
  delayMs?: number;
  /** For `reconnecting` and `closed`: the close code that ended the last connection. */
  code?: number;
  /** For `reconnecting` and `closed`: its reason text. */
  reason?: string;
}

/** A publication on a subscribed topic, delivered once and in offset order. */
export interface TopicMessage {
  /** The topic. */
  topic: string;
  /** The payload, as the publisher sent it. */
  data: unknown;
  /** Its offset in the topic's epoch. */
  offset: number;
  /** The topic's epoch. */
  epoch: string;
}

/** A critical agent event. */
export interface CriticalEvent {
  /** The event name (`agent_started`, `tool_executing`, ...). */
  event: string;
  /** Its stable id, which the client acknowledges. */
  id: string;
  /** The payload. */
  data: unknown;
  /** The thread it was sent to, if any. */
  threadId?: string;
  /** The run it belongs to, if the sender set one. */
  runId?: string;
}

/** A live-only send from a backend. */
export interface Push {
  /** The payload. */
  data: unknown;
  /** Who it was addressed to: `user`, `connection` or `broadcast`. */
  scope: string;
}

/**
 * A topic whose missed messages could not be replayed after a reconnect (another epoch, or
 * history no longer holds them): the application must refetch the topic's state.
 */
export interface TopicReset {
  /** The topic. */
  topic: string;
  /** The position the client had. */
  previous: { offset: number; epoch: string };
  /** The topic's position now; live messages continue after it. */
  current: { offset: number; epoch: string };
}

/** The answer to `subscribe`. */
export interface SubscribeResult {
  topic: string;
  offset: number;
  epoch: string;
  recovered: boolean;
}

/** The answer to `publish`. */
export interface PublishResult {
  topic: string;
  offset: number;
  epoch: string;
  deduplicated: boolean;
}

/** An `error` frame's content, or a request that could not be answered. */
export class HeraldError extends Error {
  /**
   * The error code: the protocol's (`rate_limited`, `forbidden`, `bad_request`, ...), or
   * `disconnected` when the connection dropped before the answer came.
   */
  readonly code: string;
  /** For `rate_limited`: how long to wait before retrying, in milliseconds. */
  readonly retryAfterMs?: number;

  constructor(code: string, message: string, retryAfterMs?: number) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Backoff between reconnection attempts: full jitter over an exponential curve. */
export interface BackoffOptions {
  /** The first delay's upper bound, in milliseconds (default 500). */
  initialMs?: number;
  /** The largest delay, in milliseconds (default 30 000). */
  maxMs?: number;
  /** How much the bound grows per attempt (default 2). */
  multiplier?: number;
}

/** How to build a [`HeraldClient`]. */
export interface HeraldClientOptions {
  /** The WebSocket URL, e.g. `wss://rt.example.com/ws`. */
  url: string;
  /** Returns a fresh JWT; called before each connection and before the token expires. */
  getToken: () => Promise<string> | string;
  /** Binds the connection to one thread of the user. */
  thread?: string;
  /** Reconnection backoff. */
  backoff?: BackoffOptions;
  /**
   * Acknowledge each critical event once its listeners have returned (and their promises
   * resolved); `false` leaves it to [`HeraldClient.ack`]. Default `true`.
   */
  autoAck?: boolean;
  /** Refresh the token this long before it expires, in milliseconds (default 30 000). */
  refreshBeforeExpiryMs?: number;
  /**
   * Close and reconnect when nothing arrived for this long, in milliseconds. Default: twice the
   * server's heartbeat interval plus 5 s.
   */
  staleTimeoutMs?: number;
  /**
   * Whether to reconnect after the server closed with `code`. Default: the protocol's close
   * code table, so not after 1002, 1003, 1007, 1008, 1009, 4010 (closed by a backend) or 4029
   * (replaced by a newer connection).
   */
  shouldReconnect?: (code: number) => boolean;
  /** Event ids remembered to drop repeats (default 10 000). */
  rememberedEvents?: number;
  /**
   * How long a request (`subscribe`, `publish`, preferences, `ack`, ...) waits for its reply
   * before it fails with the code `timed_out`, in milliseconds (default 10 000). The
   * connection stays up; a reply that arrives later is ignored.
   */
  requestTimeoutMs?: number;
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: typeof WebSocket;
  /** A random number in [0, 1) for the jitter (default `Math.random`). */
  random?: () => number;
}

/** The listeners a [`HeraldClient`] calls, by name. */
export interface HeraldListeners {
  state: (change: StateChange) => void;
  message: (message: TopicMessage) => void;
  event: (event: CriticalEvent) => void | Promise<void>;
  push: (push: Push) => void;
  reset: (reset: TopicReset) => void;
  preferences: (preferences: Record<string, unknown>) => void;
  error: (error: HeraldError) => void;
}

/** Close codes after which the protocol says not to reconnect (docs/protocol.md, close codes). */
const TERMINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 4010, 4029]);

/** The default reconnection policy: not after the protocol's terminal close codes. */
export function reconnectsAfter(code: number): boolean {
  return !TERMINAL_CLOSE_CODES.has(code);
}
/** Close codes that ask for a new token. */
const TOKEN_CLOSE_CODES = new Set([4001, 4003]);

/** Where a subscribed topic stands. */
interface Position {
  offset: number;
  epoch: string;
}

/** A request waiting for its reply. */
interface Pending {
  resolve: (data: any) => void;
  reject: (error: HeraldError) => void;
}

/**
 * The upper bound of the delay before reconnection `attempt` (1 for the first): `initial *
 * multiplier^(attempt-1)`, capped at `max`. The delay itself is uniform below it (full jitter).
 */
export function backoffBound(attempt: number, options: BackoffOptions = {}): number {
  const initial = options.initialMs ?? 500;
  const max = options.maxMs ?? 30_000;
  const multiplier = options.multiplier ?? 2;
  return Math.min(max, initial * Math.pow(multiplier, Math.max(0, attempt - 1)));
}

/** The `exp` claim of a JWT in milliseconds, read without verifying; `undefined` if none. */
export function tokenExpiryMs(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (payload === undefined) return undefined;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A connection to Herald that survives drops.
 *
 * ```js
 * const herald = new HeraldClient({ url: "wss://rt.example.com/ws", getToken });
 * herald.on("message", (m) => render(m.topic, m.data));
 * herald.on("event", async (e) => { await show(e); }); // acknowledged after it resolves
 * herald.connect();
 * await herald.subscribe("chat:1");
 * ```
 */
export class HeraldClient {
  private readonly options: HeraldClientOptions;
  private readonly listeners: { [K in keyof HeraldListeners]: Set<HeraldListeners[K]> } = {
    state: new Set(),
    message: new Set(),
    event: new Set(),
    push: new Set(),
    reset: new Set(),
    preferences: new Set(),
    error: new Set(),
  };
  private readonly positions = new Map<string, Position | null>();
  private readonly pending = new Map<string, Pending>();
  /** Callers of `subscribe` while disconnected, answered by the next connection's ack. */
  private readonly waiting = new Map<string, Pending[]>();
  private readonly seenEvents = new Set<string>();
  /** Topics subscribed again to close a gap, whose ack has not come yet. */
  private readonly resyncing = new Set<string>();
  private socket: WebSocket | undefined;
  private currentState: ConnectionState = "closed";
  private wanted = false;
  private attempt = 0;
  private nextId = 0;
  private authFailures = 0;
  private heartbeatMs = 30_000;
  private lastReceived = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private staleTimer: ReturnType<typeof setInterval> | undefined;
  private readonly onWake = () => this.wakeUp();

  constructor(options: HeraldClientOptions) {
    this.options = options;
  }

  /** The connection's state now. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** Calls `listener` for every `name` notification; returns a function that stops it. */
  on<K extends keyof HeraldListeners>(name: K, listener: HeraldListeners[K]): () => void {
    this.listeners[name].add(listener);
    return () => {
      this.listeners[name].delete(listener);
    };
  }

  /** Opens the connection, and keeps it open until [`close`](HeraldClient.close). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.authFailures = 0;
    if (typeof window !== "undefined") {
      window.addEventListener("online", this.onWake);
      document.addEventListener("visibilitychange", this.onWake);
    }
    void this.open();
  }

  /** Closes the connection for good; pending requests fail with `disconnected`. */
  close(): void {
    this.wanted = false;
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this.onWake);
      document.removeEventListener("visibilitychange", this.onWake);
    }
    this.clearTimers();
    const socket = this.socket;
    this.socket = undefined;
    socket?.close(1000);
    this.failPending();
    for (const list of this.waiting.values()) {
      for (const waiter of list) waiter.reject(new HeraldError("disconnected", "client closed"));
    }
    this.waiting.clear();
    this.setState({ state: "closed", code: 1000, reason: "closed by the application" });
  }

  /**
   * Subscribes to `topic`, now (or as soon as the client is connected) and after every
   * reconnect, resuming from the last message handled. Resolves with the subscribe ack.
   */
  subscribe(topic: string): Promise<SubscribeResult> {
    if (!this.positions.has(topic)) this.positions.set(topic, null);
    if (this.currentState === "connected") return this.resubscribe(topic);
    return new Promise((resolve, reject) => {
      const list = this.waiting.get(topic) ?? [];
      list.push({ resolve, reject });
      this.waiting.set(topic, list);
    });
  }

  /** Unsubscribes from `topic`; it is no longer resubscribed after a reconnect. */
  unsubscribe(topic: string): Promise<{ topic: string; unsubscribed: boolean }> {
    this.positions.delete(topic);
    for (const waiter of this.waiting.get(topic) ?? []) {
      waiter.reject(new HeraldError("unsubscribed", `unsubscribed from ${topic}`));
    }
    this.waiting.delete(topic);
    return this.request("unsubscribe", { topic });
  }

  /**
   * Publishes `data` to `topic` (the token's `publish` claim must allow it). Rejects with a
   * [`HeraldError`]: `rate_limited` carries `retryAfterMs`.
   */
  publish(topic: string, data: unknown, options: { id?: string } = {}): Promise<PublishResult> {
    const body: Record<string, unknown> = { topic, data };
    if (options.id !== undefined) body.id = options.id;
    return this.request("publish", body);
  }

  /** The user's preferences. */
  getPreferences(): Promise<Record<string, unknown>> {
    return this.request("get_preferences", undefined);
  }

  /** Replaces the given top-level keys (`null` removes one); resolves with the result. */
  updatePreferences(patch: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.request("update_preferences", patch);
  }

  /** Acknowledges critical events by id (only needed with `autoAck: false`). */
  ack(ids: string[]): Promise<{ acknowledged: number }> {
    return this.request("ack", { ids });
  }

  private subscribeData(topic: string): Record<string, unknown> {
    const since = this.positions.get(topic);
    return since ? { topic, since } : { topic };
  }

  private request<T>(type: string, data: unknown): Promise<T> {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1 || this.currentState !== "connected") {
      return Promise.reject(new HeraldError("disconnected", "not connected"));
    }
    const messageId = String(++this.nextId);
    const timeoutMs = this.options.requestTimeoutMs ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(messageId)) {
          reject(new HeraldError("timed_out", `no reply to ${type} within ${timeoutMs} ms`));
        }
      }, timeoutMs);
      this.pending.set(messageId, {
        resolve: (data) => {
          clearTimeout(timer);
          resolve(data);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      const frame: Record<string, unknown> = { type, messageId };
      if (data !== undefined) frame.data = data;
      socket.send(JSON.stringify(frame));
    });
  }

  private async open(): Promise<void> {
    if (!this.wanted) return;
    this.setState({ state: "connecting" });
    let token: string;
    try {
      token = await this.options.getToken();
    } catch (error) {
      this.emit("error", new HeraldError("token", `getToken failed: ${String(error)}`));
      this.scheduleReconnect(4001, "no token");
      return;
    }
    if (!this.wanted) return;
    const Socket = this.options.WebSocket ?? globalThis.WebSocket;
    const url = this.options.thread
      ? `${this.options.url}${this.options.url.includes("?") ? "&" : "?"}thread=${encodeURIComponent(this.options.thread)}`
      : this.options.url;
    const socket = new Socket(url, "herald.v1");
    this.socket = socket;
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "auth", messageId: "auth", data: { token } }));
    };
    socket.onmessage = (message: MessageEvent) => {
      if (socket !== this.socket) return;
      this.lastReceived = Date.now();
      let frame: any;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      const frames = frame && frame.type === "batch" && Array.isArray(frame.data) ? frame.data : [frame];
      for (const f of frames) this.handle(f, token);
    };
    socket.onclose = (event: CloseEvent) => {
      if (socket !== this.socket) return;
      this.socket = undefined;
      this.clearTimers();
      this.failPending();
      this.scheduleReconnect(event.code, event.reason);
    };
  }

  private handle(frame: any, token: string): void {
    switch (frame?.type) {
      case "connected":
        this.heartbeatMs = frame.data?.heartbeatInterval ?? this.heartbeatMs;
        this.attempt = 0;
        this.authFailures = 0;
        this.setState({ state: "connected" });
        this.startStaleCheck();
        this.scheduleRefresh(token);
        for (const topic of this.positions.keys()) {
          // Failures reach the waiters or the `error` listeners.
          this.resubscribe(topic).catch(() => undefined);
        }
        break;
      case "ack":
      case "preferences":
      case "pong": {
        if (frame.type === "preferences" && frame.messageId === undefined) {
          this.emit("preferences", frame.data ?? {});
          break;
        }
        const waiting = frame.messageId !== undefined ? this.pending.get(frame.messageId) : undefined;
        if (waiting) {
          this.pending.delete(frame.messageId);
          waiting.resolve(frame.data);
        }
        break;
      }
      case "error": {
        const error = new HeraldError(
          frame.error?.code ?? "internal",
          frame.error?.message ?? "",
          frame.error?.retryAfter,
        );
        const waiting = frame.messageId !== undefined ? this.pending.get(frame.messageId) : undefined;
        if (waiting) {
          this.pending.delete(frame.messageId);
          waiting.reject(error);
        } else {
          this.emit("error", error);
        }
        break;
      }
      case "message":
        this.onTopicMessage(frame);
        break;
      case "event":
        void this.onCriticalEvent(frame);
        break;
      case "push":
        this.emit("push", { data: frame.data, scope: frame.scope });
        break;
      case "ping":
        this.socket?.send(JSON.stringify({ type: "pong" }));
        break;
      default:
        break;
    }
  }

  /**
   * Subscribes `topic` from its last position, reporting a reset when its missed messages
   * could not be replayed, and answers whoever waited for the subscription.
   */
  private resubscribe(topic: string): Promise<SubscribeResult> {
    const previous = this.positions.get(topic) ?? null;
    const waiters = this.waiting.get(topic) ?? [];
    this.waiting.delete(topic);
    const answer = this.request<SubscribeResult>("subscribe", this.subscribeData(topic));
    answer.then(
      (ack) => {
        for (const waiter of waiters) waiter.resolve(ack);
        if (!this.positions.has(topic)) return;
        const known = this.positions.get(topic);
        if (!ack.recovered) {
          this.positions.set(topic, { offset: ack.offset, epoch: ack.epoch });
          if (previous) {
            this.emit("reset", {
              topic,
              previous,
              current: { offset: ack.offset, epoch: ack.epoch },
            });
          }
        } else if (!known) {
          this.positions.set(topic, { offset: ack.offset, epoch: ack.epoch });
        }
      },
      (error: HeraldError) => {
        if (error.code === "disconnected") {
          // Answered by the next connection instead.
          if (waiters.length > 0) this.waiting.set(topic, [...(this.waiting.get(topic) ?? []), ...waiters]);
        } else {
          for (const waiter of waiters) waiter.reject(error);
          if (waiters.length === 0) this.emit("error", error);
        }
      },
    );
    return answer;
  }

  private onTopicMessage(frame: any): void {
    const topic: string = frame.topic;
    if (!this.positions.has(topic)) return;
    const last = this.positions.get(topic);
    if (last) {
      const sameEpoch = last.epoch === frame.epoch;
      if (sameEpoch && frame.offset <= last.offset) return; // a repeat, e.g. a replay that overlaps
      // A skipped offset (frames shed from this connection's queue), or another epoch under a
      // live subscription (a node that changed its numbering): subscribe again from the last
      // position, once; the ack replays the gap (the replay repeats what follows it, which the
      // check above drops) or reports the reset. Only an epoch's first message after a
      // position where nothing was delivered yet cannot hide a loss.
      const gap = sameEpoch
        ? frame.offset > last.offset + 1
        : !(last.offset === 0 && frame.offset === 1);
      if (gap) {
        if (!this.resyncing.has(topic)) {
          this.resyncing.add(topic);
          this.resubscribe(topic)
            .catch(() => undefined)
            .finally(() => this.resyncing.delete(topic));
        }
        return;
      }
    }
    this.positions.set(topic, { offset: frame.offset, epoch: frame.epoch });
    this.emit("message", {
      topic,
      data: frame.data,
      offset: frame.offset,
      epoch: frame.epoch,
    });
  }

  private async onCriticalEvent(frame: any): Promise<void> {
    const id: string = frame.id;
    const event: CriticalEvent = { event: frame.event, id, data: frame.data };
    if (frame.threadId !== undefined) event.threadId = frame.threadId;
    if (frame.runId !== undefined) event.runId = frame.runId;
    if (!this.seenEvents.has(id)) {
      this.remember(id);
      try {
        await Promise.all([...this.listeners.event].map((listener) => listener(event)));
      } catch (error) {
        // Not acknowledged: the server delivers it again after its ack timeout.
        this.seenEvents.delete(id);
        this.emit("error", new HeraldError("handler", `event handler failed: ${String(error)}`));
        return;
      }
    }
    if (this.options.autoAck ?? true) {
      this.ack([id]).catch(() => {
        // Disconnected before the ack: the event comes again on the next connection, and the
        // remembered id acknowledges it without calling the handlers twice.
      });
    }
  }

  private remember(id: string): void {
    this.seenEvents.add(id);
    const limit = this.options.rememberedEvents ?? 10_000;
    if (this.seenEvents.size > limit) {
      const oldest = this.seenEvents.values().next().value;
      if (oldest !== undefined) this.seenEvents.delete(oldest);
    }
  }

  private scheduleReconnect(code: number, reason: string): void {
    if (!this.wanted) return;
    if (TOKEN_CLOSE_CODES.has(code)) this.authFailures += 1;
    const reconnect = (this.options.shouldReconnect ?? reconnectsAfter)(code);
    if (!reconnect || this.authFailures >= 3) {
      this.wanted = false;
      this.setState({ state: "closed", code, reason });
      return;
    }
    this.attempt += 1;
    const random = this.options.random ?? Math.random;
    const delayMs = Math.floor(random() * backoffBound(this.attempt, this.options.backoff));
    this.setState({ state: "reconnecting", attempt: this.attempt, delayMs, code, reason });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delayMs);
  }

  /** The page came back (visible again, or online): skip the rest of the backoff wait. */
  private wakeUp(): void {
    if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
    if (this.reconnectTimer !== undefined) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
      void this.open();
    }
  }

  private scheduleRefresh(token: string): void {
    const expiry = tokenExpiryMs(token);
    if (expiry === undefined) return;
    const delay = Math.max(0, expiry - (this.options.refreshBeforeExpiryMs ?? 30_000) - Date.now());
    this.refreshTimer = setTimeout(async () => {
      this.refreshTimer = undefined;
      try {
        const fresh = await this.options.getToken();
        await this.request("auth", { token: fresh });
        this.scheduleRefresh(fresh);
      } catch (error) {
        this.emit("error", new HeraldError("token", `token refresh failed: ${String(error)}`));
      }
    }, delay);
  }

  private startStaleCheck(): void {
    this.lastReceived = Date.now();
    const stale = this.options.staleTimeoutMs ?? 2 * this.heartbeatMs + 5_000;
    const every = Math.max(250, Math.min(stale / 4, this.heartbeatMs));
    this.staleTimer = setInterval(() => {
      const silent = Date.now() - this.lastReceived;
      if (silent >= stale) {
        // The network vanished without a close: give up on this socket and reconnect.
        const socket = this.socket;
        this.socket = undefined;
        this.clearTimers();
        this.failPending();
        socket?.close(4000);
        this.scheduleReconnect(4000, "no activity from the server");
      } else if (silent >= this.heartbeatMs) {
        this.socket?.send(JSON.stringify({ type: "ping" }));
      }
    }, every);
  }

  private clearTimers(): void {
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    if (this.staleTimer !== undefined) clearInterval(this.staleTimer);
    this.reconnectTimer = undefined;
    this.refreshTimer = undefined;
    this.staleTimer = undefined;
  }

  private failPending(): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const waiting of pending) waiting.reject(new HeraldError("disconnected", "connection closed"));
  }

  private setState(change: StateChange): void {
    this.currentState = change.state;
    this.emit("state", change);
  }

  private emit<K extends keyof HeraldListeners>(name: K, value: Parameters<HeraldListeners[K]>[0]): void {
    for (const listener of this.listeners[name]) {
      try {
        (listener as (value: unknown) => void)(value);
      } catch (error) {
        // One listener's failure must not stop the others or the client.
        console.error("herald listener failed", error);
      }
    }
  }
}
