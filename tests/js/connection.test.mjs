// Unit tests for StreamConnection (the DOM-free half of turbo-tasks.js).
// Run with: node --test tests/js/
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  Progress, StreamConnection, addSocketHeader, parseOffset,
} from "../../turbo_tasks/static/turbo_tasks/turbo-tasks.js";

// A tiny deterministic scheduler standing in for setTimeout/clearTimeout.
class FakeTimers {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.pending = new Map(); // id -> { at, fn, delay }
    this.setTimeout = (fn, delay = 0) => {
      const id = this.nextId++;
      this.pending.set(id, { at: this.now + delay, fn, delay });
      return id;
    };
    this.clearTimeout = (id) => this.pending.delete(id);
  }
  delays() {
    return [...this.pending.values()].map((t) => t.delay);
  }
  // Run every timer due within `ms`, in time order (including ones they schedule).
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const due = [...this.pending].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at || a[0] - b[0]);
      if (due.length === 0) break;
      const [id, t] = due[0];
      this.pending.delete(id);
      this.now = t.at;
      t.fn();
    }
    this.now = end;
  }
}

class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    FakeWebSocket.instances.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.closed = true;
  }
  // Test-side triggers.
  open() { this.onopen?.({}); }
  receive(frame) { this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) }); }
  serverClose() { this.onclose?.({ code: 1006 }); }
  fail() { this.onerror?.({}); }
}

function setup(options = {}) {
  FakeWebSocket.instances = [];
  const timers = new FakeTimers();
  const warnings = [];
  const conn = new StreamConnection({
    url: "ws://example.test/ws/turbo/",
    WebSocket: FakeWebSocket,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5, // jitter factor 1.0 -> exact delays
    logger: { warn: (...a) => warnings.push(a), error: (...a) => warnings.push(a) },
    ...options,
  });
  const sockets = FakeWebSocket.instances;
  const last = () => sockets[sockets.length - 1];
  return { conn, timers, sockets, last, warnings };
}

function listener() {
  const events = [];
  return {
    events,
    onMessage: (html) => events.push(["message", html]),
    onSubscribed: () => events.push(["subscribed"]),
    onRejected: (reason) => events.push(["rejected", reason]),
    onDisconnected: () => events.push(["disconnected"]),
    onReset: () => events.push(["reset"]),
    onRevoked: () => events.push(["revoked"]),
  };
}

const sub = (stream) => ({ type: "subscribe", stream });
const unsub = (stream) => ({ type: "unsubscribe", stream });

test("no socket until the first registration; subscribes queued while connecting are sent on open", () => {
  const { conn, sockets, last } = setup();
  assert.equal(sockets.length, 0);
  conn.register("a", listener());
  conn.register("b", listener());
  assert.equal(sockets.length, 1);
  assert.equal(last().url, "ws://example.test/ws/turbo/");
  assert.deepEqual(last().sent, []);
  last().open();
  assert.deepEqual(last().sent, [sub("a"), sub("b")]);
  conn.register("c", listener());
  assert.deepEqual(last().sent, [sub("a"), sub("b"), sub("c")]);
  assert.equal(sockets.length, 1);
});

test("reference counting: one subscribe per name, unsubscribe only after the last listener leaves", () => {
  const { conn, timers, last } = setup();
  const l1 = listener();
  const l2 = listener();
  conn.register("a", l1);
  last().open();
  conn.register("a", l2);
  conn.register("keep", listener());
  assert.deepEqual(last().sent, [sub("a"), sub("keep")]);
  conn.unregister("a", l1);
  timers.advance(1000);
  assert.deepEqual(last().sent, [sub("a"), sub("keep")]);
  conn.unregister("a", l2);
  assert.deepEqual(last().sent, [sub("a"), sub("keep")], "unsubscribe is deferred");
  timers.advance(0);
  assert.deepEqual(last().sent, [sub("a"), sub("keep"), unsub("a")]);
  assert.equal(last().closed, false, "other subscriptions keep the socket open");
});

test("a re-register before the deferred unsubscribe fires cancels it (Turbo Drive swap)", () => {
  const { conn, timers, last } = setup();
  const oldEl = listener();
  const newEl = listener();
  conn.register("a", oldEl);
  last().open();
  last().receive({ type: "subscribed", stream: "a" });
  conn.unregister("a", oldEl);
  conn.register("a", newEl);
  timers.advance(1000);
  assert.deepEqual(last().sent, [sub("a")]);
  assert.equal(last().closed, false);
  assert.deepEqual(newEl.events, [["subscribed"]], "late joiner learns the confirmed status");
});

test("last unsubscribe closes the socket on purpose; no reconnect; a new registration reopens", () => {
  const { conn, timers, sockets, last } = setup();
  const l = listener();
  conn.register("a", l);
  last().open();
  conn.unregister("a", l);
  timers.advance(0);
  assert.deepEqual(last().sent, [sub("a"), unsub("a")]);
  assert.equal(last().closed, true);
  last().serverClose(); // handlers are detached; must not schedule a reconnect
  assert.equal(timers.pending.size, 0);
  timers.advance(60000);
  assert.equal(sockets.length, 1);
  conn.register("b", listener());
  assert.equal(sockets.length, 2);
  last().open();
  assert.deepEqual(last().sent, [sub("b")]);
});

test("messages go only to listeners of that stream; unknown streams and bad frames are ignored", () => {
  const { conn, last, warnings } = setup();
  const a1 = listener();
  const a2 = listener();
  const b = listener();
  conn.register("a", a1);
  conn.register("a", a2);
  conn.register("b", b);
  last().open();
  last().receive({ type: "message", stream: "a", html: "<turbo-stream>1</turbo-stream>" });
  last().receive({ type: "message", stream: "zzz", html: "<turbo-stream>x</turbo-stream>" });
  last().receive({ type: "message", stream: "a", html: 42 });
  assert.doesNotThrow(() => last().receive("not json{"));
  assert.doesNotThrow(() => last().receive("null"));
  assert.doesNotThrow(() => last().receive({ type: "error", reason: "invalid JSON" }));
  assert.doesNotThrow(() => last().onmessage({ data: new ArrayBuffer(4) }));
  assert.deepEqual(a1.events, [["message", "<turbo-stream>1</turbo-stream>"]]);
  assert.deepEqual(a2.events, [["message", "<turbo-stream>1</turbo-stream>"]]);
  assert.deepEqual(b.events, []);
  assert.equal(warnings.length, 2, "invalid JSON and the error frame are warned about");
});

test("subscribed and rejected reach the stream's listeners; a throwing listener does not stop others", () => {
  const { conn, last } = setup();
  const bad = { onSubscribed() { throw new Error("boom"); } };
  const a = listener();
  const b = listener();
  conn.register("a", bad);
  conn.register("a", a);
  conn.register("b", b);
  last().open();
  last().receive({ type: "subscribed", stream: "a" });
  last().receive({ type: "rejected", stream: "b", reason: "forbidden" });
  assert.deepEqual(a.events, [["subscribed"]]);
  assert.deepEqual(b.events, [["rejected", "forbidden"]]);
  const lateB = listener();
  conn.register("b", lateB);
  assert.deepEqual(lateB.events, [["rejected", "forbidden"]]);
});

test("reconnects with growing backoff and re-subscribes every registered name", () => {
  const { conn, timers, sockets, last } = setup();
  const a = listener();
  const gone = listener();
  conn.register("a", a);
  conn.register("b", listener());
  conn.register("gone", gone);
  last().open();
  last().receive({ type: "subscribed", stream: "a" });
  conn.unregister("gone", gone); // deferred unsubscribe still pending when the socket dies
  last().serverClose();
  assert.deepEqual(a.events, [["subscribed"], ["disconnected"]]);
  assert.deepEqual(timers.delays().sort((x, y) => x - y), [0, 500]);

  // Each failed attempt doubles the delay.
  timers.advance(499);
  assert.equal(sockets.length, 1);
  timers.advance(1);
  assert.equal(sockets.length, 2);
  last().serverClose();
  assert.deepEqual(timers.delays(), [1000]);
  timers.advance(1000);
  assert.equal(sockets.length, 3);
  last().fail();
  assert.deepEqual(timers.delays(), [2000]);
  timers.advance(2000);
  assert.equal(sockets.length, 4);

  last().open();
  assert.deepEqual(last().sent, [sub("a"), sub("b")]);
  assert.deepEqual(timers.delays(), [10000, 10000], "only the two subscribes' reply timers");
});

test("backoff is capped and jittered", () => {
  const { conn, timers, last } = setup({ random: () => 0.999, maxDelay: 4000 });
  conn.register("a", listener());
  const seen = [];
  for (let i = 0; i < 6; i++) {
    last().serverClose();
    seen.push(timers.delays()[0]);
    timers.advance(seen[i]);
  }
  assert.deepEqual(seen.map(Math.round), [750, 1499, 2998, 4000, 4000, 4000]);

  const low = setup({ random: () => 0 });
  low.conn.register("a", listener());
  low.last().serverClose();
  assert.deepEqual(low.timers.delays(), [250]);
});

test("a successful open resets the backoff", () => {
  const { conn, timers, last } = setup();
  conn.register("a", listener());
  last().serverClose();
  timers.advance(500);
  last().serverClose();
  timers.advance(1000);
  last().serverClose();
  assert.deepEqual(timers.delays(), [2000]);
  timers.advance(2000);
  last().open();
  last().serverClose();
  assert.deepEqual(timers.delays(), [500]);
});

test("close and error for one failure schedule a single reconnect and one socket", () => {
  const { conn, timers, sockets, last } = setup();
  conn.register("a", listener());
  const first = last();
  first.open();
  first.fail();
  first.serverClose();
  first.fail();
  assert.equal(first.closed, true);
  assert.equal(timers.pending.size, 1);
  // Registering during backoff does not bypass the timer.
  conn.register("b", listener());
  assert.equal(sockets.length, 1);
  timers.advance(500);
  assert.equal(sockets.length, 2);
  // Late events from the old socket are ignored.
  first.onclose?.({});
  first.onopen?.({});
  assert.equal(timers.pending.size, 0);
  last().open();
  assert.deepEqual(last().sent, [sub("a"), sub("b")]);
  assert.deepEqual(first.sent, [sub("a")]);
});

test("a throwing WebSocket constructor is retried with backoff", () => {
  let fail = true;
  class Flaky extends FakeWebSocket {
    constructor(url) {
      if (fail) throw new SyntaxError("bad url");
      super(url);
    }
  }
  const { conn, timers, sockets, warnings } = setup({ WebSocket: Flaky });
  conn.register("a", listener());
  assert.equal(sockets.length, 0);
  assert.equal(warnings.length, 1);
  assert.deepEqual(timers.delays(), [500]);
  fail = false;
  timers.advance(500);
  assert.equal(sockets.length, 1);
});

test("a subscribe left unanswered replaces the socket, then subscribes again", () => {
  // E.g. a consumer stuck on a Redis call: the socket stays open but nothing comes back.
  const { conn, timers, sockets, last, warnings } = setup({ replyTimeout: 3000 });
  const a = listener();
  conn.register("a", a);
  last().open();
  timers.advance(2999);
  assert.equal(sockets.length, 1);
  timers.advance(1);
  assert.equal(sockets[0].closed, true);
  assert.match(String(warnings.at(-1)), /no reply to subscribe/);
  timers.advance(500); // the first backoff step
  assert.equal(sockets.length, 2);
  last().open();
  assert.deepEqual(last().sent, [sub("a")]);
  last().receive({ type: "subscribed", stream: "a" });
  timers.advance(60000);
  assert.equal(sockets.length, 2, "an answered subscribe keeps the socket");
  assert.deepEqual(a.events, [["subscribed"]]);
});

test("a rejection also counts as the reply", () => {
  const { conn, timers, sockets, last } = setup({ replyTimeout: 3000 });
  conn.register("a", listener());
  last().open();
  last().receive({ type: "rejected", stream: "a", reason: "forbidden" });
  timers.advance(60000);
  assert.equal(sockets.length, 1);
  assert.equal(last().closed, false);
});

test("no reply is awaited for a name that was unregistered or a socket that was replaced", () => {
  const { conn, timers, sockets, last } = setup({ replyTimeout: 3000 });
  const a = listener();
  conn.register("a", a);
  conn.register("keep", listener());
  last().open();
  last().receive({ type: "subscribed", stream: "keep" });
  conn.unregister("a", a);
  timers.advance(60000);
  assert.equal(sockets.length, 1, "the dropped name's timer is gone");
  assert.equal(last().closed, false);

  conn.register("b", listener());
  last().serverClose(); // before b's reply
  timers.advance(500);
  assert.equal(sockets.length, 2);
  timers.advance(2999); // the old socket's timer must not touch the new one
  assert.equal(last().closed, false);
});

// -- catch-up --------------------------------------------------------------------------

const A = "0123456789abcdef";
const B = "fedcba9876543210";
const msg = (stream, html, offset) => ({ type: "message", stream, html, offset });

test("offsets are parsed strictly", () => {
  assert.deepEqual(parseOffset(`${A}.12`), [A, 12n]);
  for (const bad of [null, "", "x.1", `${A}.`, `${A}.1.2`, `${A}.-1`, 5]) {
    assert.equal(parseOffset(bad), null, String(bad));
  }
});

test("progress: the mark moves only over messages without a gap", () => {
  const p = new Progress(`${A}.3`);
  p.applied(`${A}.5`); // 4 not here yet (another worker's)
  assert.equal(p.offset, `${A}.3`);
  p.applied(`${A}.4`);
  assert.equal(p.offset, `${A}.5`, "the gap filled: over 4 and 5");
  p.applied(`${A}.2`);
  assert.equal(p.offset, `${A}.5`, "old news");
  p.applied(`${A}.10`);
  assert.equal(p.offset, `${A}.5`, "compared as numbers, gap 6-9 open");
  p.caughtUp(`${A}.9`); // the server replayed up to 9
  assert.equal(p.offset, `${A}.10`);
  p.applied(`${B}.1`);
  assert.equal(p.offset, `${B}.1`, "another epoch starts over");
  p.applied("garbage");
  assert.equal(p.offset, `${B}.1`);
});

test("the first subscribe carries the rendered since; after a reconnect, the last applied offset", () => {
  const { conn, timers, last } = setup();
  const a = listener();
  conn.register("a", a, `${A}.4`);
  last().open();
  assert.deepEqual(last().sent, [{ ...sub("a"), since: `${A}.4` }]);
  last().receive(msg("a", "<p>5</p>", `${A}.5`));
  last().receive({ type: "subscribed", stream: "a", offset: `${A}.5` });
  last().receive(msg("a", "<p>7</p>", `${A}.7`));
  last().receive(msg("a", "<p>6</p>", `${A}.6`)); // two workers: pushed out of order
  last().receive(msg("a", "<p>9</p>", `${A}.9`)); // 8 is still on its way when...
  last().serverClose(); // ...the socket drops
  timers.advance(500);
  last().open();
  assert.deepEqual(last().sent, [{ ...sub("a"), since: `${A}.7` }], "8 is asked for again");
  assert.deepEqual(
    a.events.map((e) => e[0]),
    ["message", "subscribed", "message", "message", "message", "disconnected"],
  );
});

test("without catch-up (no offsets) subscribes carry no since", () => {
  const { conn, timers, last } = setup();
  conn.register("a", listener());
  last().open();
  last().receive({ type: "message", stream: "a", html: "<p>x</p>" });
  last().serverClose();
  timers.advance(500);
  last().open();
  assert.deepEqual(last().sent, [sub("a")]);
});

test("reset: listeners reload once, the stream is not caught up until then, and a reconnect meanwhile asks with the same since", () => {
  const { conn, timers, last } = setup();
  const a = listener();
  conn.register("a", a, `${A}.4`);
  last().open();
  last().receive({ type: "reset", stream: "a" });
  last().receive({ type: "subscribed", stream: "a", offset: `${A}.90` });
  last().receive(msg("a", "<p>91</p>", `${A}.91`)); // applied, but the page is still stale
  assert.deepEqual(a.events, [["reset"], ["message", "<p>91</p>"]]);
  last().serverClose();
  timers.advance(500);
  last().open();
  assert.deepEqual(last().sent, [{ ...sub("a"), since: `${A}.4` }]);
});

test("after a reset, the reloaded page's new since starts the stream over", () => {
  const { conn, last } = setup();
  const before = listener();
  conn.register("a", before, `${A}.4`);
  last().open();
  last().receive({ type: "reset", stream: "a" });
  // The refreshed page renders the same signed name (same second) with a new since.
  const after = listener();
  conn.register("a", after, `${A}.95`);
  assert.deepEqual(last().sent.at(-1), { ...sub("a"), since: `${A}.95` });
  assert.deepEqual(after.events, []);
  last().receive({ type: "subscribed", stream: "a", offset: `${A}.95` });
  assert.deepEqual(after.events, [["subscribed"]]);
});

test("rebase (a morphed since attribute) re-subscribes from the new offset", () => {
  const { conn, last } = setup();
  conn.register("a", listener(), `${A}.4`);
  last().open();
  last().receive({ type: "reset", stream: "a" });
  conn.rebase("a", `${A}.99`);
  assert.deepEqual(last().sent.at(-1), { ...sub("a"), since: `${A}.99` });
});

test("hello gives the connection its socket id, forgotten when the socket is lost", () => {
  const { conn, last } = setup();
  conn.register("a", listener());
  last().open();
  assert.equal(conn.socketId, null);
  last().receive({ type: "hello", socket_id: "abc_DEF-123" });
  assert.equal(conn.socketId, "abc_DEF-123");
  last().serverClose();
  assert.equal(conn.socketId, null);
});

test("a spared frame (empty html, exclude_sender) reaches no listener but advances the offset", () => {
  const { conn, timers, last } = setup();
  const l = listener();
  const inc = "0123456789abcdef";
  conn.register("a", l, `${inc}.1`);
  last().open();
  last().receive({ type: "message", stream: "a", html: "", offset: `${inc}.2` });
  last().receive({ type: "message", stream: "a", html: "<p>3</p>", offset: `${inc}.3` });
  assert.deepEqual(l.events, [["message", "<p>3</p>"]]);
  last().serverClose();
  timers.advance(60000);
  last().open();
  assert.deepEqual(last().sent.at(-1), { type: "subscribe", stream: "a", since: `${inc}.3` });
});

test("revoked: listeners are told, and the stream is not re-subscribed after a reconnect", () => {
  const { conn, timers, last } = setup();
  const l = listener();
  conn.register("a", l);
  conn.register("b", listener());
  last().open();
  last().receive({ type: "subscribed", stream: "a" });
  last().receive({ type: "revoked", stream: "a" });
  assert.deepEqual(l.events, [["subscribed"], ["revoked"]]);
  const late = listener();
  conn.register("a", late);
  assert.deepEqual(late.events, [["revoked"]]);
  last().serverClose();
  timers.advance(60000);
  last().open();
  assert.deepEqual(last().sent, [sub("b")]);
});

test("a stream rendered again after a revocation asks the server again, from the new render", () => {
  const { conn, timers, last } = setup();
  const inc = "0123456789abcdef";
  const old = listener();
  conn.register("a", old, `${inc}.1`);
  last().open();
  last().receive({ type: "revoked", stream: "a" });
  conn.unregister("a", old); // Turbo replaced the page: the old element leaves...
  const fresh = listener();
  conn.register("a", fresh, `${inc}.9`); // ...the new one registers before the unsubscribe
  timers.advance(0);
  assert.deepEqual(last().sent, [
    { type: "subscribe", stream: "a", since: `${inc}.1` },
    { type: "subscribe", stream: "a", since: `${inc}.9` },
  ]);
  assert.deepEqual(fresh.events, []);
});

test("the socket header goes only to same-origin requests, and only with a socket id", () => {
  const origin = "https://app.example";
  const request = (url) => ({ detail: { url: new URL(url), fetchOptions: { headers: {} } } });
  const same = request("https://app.example/rooms/1/messages");
  addSocketHeader(same, "sock1", origin);
  assert.deepEqual(same.detail.fetchOptions.headers, { "X-Turbo-Tasks-Socket": "sock1" });
  const other = request("https://evil.example/collect");
  addSocketHeader(other, "sock1", origin);
  assert.deepEqual(other.detail.fetchOptions.headers, {});
  const early = request("https://app.example/x");
  addSocketHeader(early, null, origin);
  assert.deepEqual(early.detail.fetchOptions.headers, {});
  const headers = new Headers();
  addSocketHeader({ detail: { url: "/relative", fetchOptions: { headers } } }, "sock2", origin);
  assert.equal(headers.get("X-Turbo-Tasks-Socket"), "sock2");
});
