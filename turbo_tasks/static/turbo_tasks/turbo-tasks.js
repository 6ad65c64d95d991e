// turbo_tasks client: <turbo-channels-stream-source signed-stream-name="..."> elements,
// all fed by ONE websocket per page. Protocol: docs/ref/protocol.md.
//
// Two parts: StreamConnection owns the socket and the subscriptions and touches no DOM
// (everything it needs is injected, so it is unit-tested under Node), and a thin custom
// element that adapts it to Turbo's stream-source API.

// A subscription (one per signed name) is shared by every listener registered for that name.
// Listener interface (all optional): onMessage(html), onSubscribed(), onRejected(reason),
// onReset(), onRevoked(), onDisconnected().
//
// The server's `hello` gives the connection its socket id (`socketId`, null while not
// connected); the page sends it with its Turbo requests (X-Turbo-Tasks-Socket) so frames
// sent with exclude_sender skip this page.
//
// Catch-up: a subscription remembers the offset up to which it has applied every message
// (at first the `since` the page was rendered with) and re-subscribes with it after every
// reconnect, so the server replays what the page missed. When the server cannot (`reset`),
// listeners are told to reload the page's state, and the subscription is not "subscribed"
// (caught up) until they have.

// "<inc>.<seq>" -> [inc, seq], or null.
export function parseOffset(value) {
  const match = typeof value === "string" && /^([0-9a-f]{16})\.(\d{1,18})$/.exec(value);
  return match ? [match[1], BigInt(match[2])] : null;
}

// Out-of-order messages kept above the mark; past this many the mark still holds (a
// reconnect then replays a little more, which Turbo absorbs).
const MAX_AHEAD = 10000;

// The offset up to which a subscription has every message. Two workers can push a stream's
// messages out of order (103 arrives before 102): resuming from 103 would skip 102, so the
// mark only moves over messages without a gap, and keeps those that arrived early.
export class Progress {
  constructor(offset = null) {
    this.offset = offset;
    this.ahead = new Set(); // seqs above the mark, same epoch
  }

  // A message was applied.
  applied(offset) {
    const got = parseOffset(offset);
    if (!got) return;
    const mark = parseOffset(this.offset);
    if (!mark || mark[0] !== got[0]) return this._restart(offset); // another epoch
    if (got[1] <= mark[1]) return;
    if (this.ahead.size >= MAX_AHEAD) this.ahead.clear();
    this.ahead.add(got[1]);
    this._advance(mark[0], mark[1]);
  }

  // The server says every message up to `offset` was sent (`subscribed`).
  caughtUp(offset) {
    const got = parseOffset(offset);
    if (!got) return;
    const mark = parseOffset(this.offset);
    if (!mark || mark[0] !== got[0]) return this._restart(offset);
    if (got[1] > mark[1]) this._advance(got[0], got[1]);
  }

  rebase(offset) { this._restart(offset); }

  _restart(offset) {
    this.offset = offset;
    this.ahead.clear();
  }

  _advance(inc, seq) {
    let next = seq;
    while (this.ahead.has(next + 1n)) this.ahead.delete(++next);
    for (const early of this.ahead) if (early <= next) this.ahead.delete(early);
    this.offset = `${inc}.${next}`;
  }
}
export class StreamConnection {
  constructor({
    url,
    WebSocket = globalThis.WebSocket,
    setTimeout: st = globalThis.setTimeout,
    clearTimeout: ct = globalThis.clearTimeout,
    random = Math.random,
    baseDelay = 500,
    maxDelay = 30000,
    unsubscribeDelay = 0,
    // The server answers every subscribe (subscribed or rejected). A socket that stays open
    // but answers nothing (a stuck consumer) is replaced after this long.
    replyTimeout = 10000,
    logger = globalThis.console,
  } = {}) {
    Object.assign(this, {
      url, WebSocket, random, baseDelay, maxDelay, unsubscribeDelay, replyTimeout, logger,
    });
    // Wrapped so the browser's timer functions are never called with `this` = connection
    // (that throws "Illegal invocation").
    this.setTimeout = (fn, ms) => st(fn, ms);
    this.clearTimeout = (id) => ct(id);
    // name -> { listeners: Set, state: null | "subscribed" | "rejected" | "reset", reason,
    //           sent, progress, resetSince, unsubscribeTimer, replyTimer }
    this.subscriptions = new Map();
    this.socket = null;
    this.isOpen = false;
    this.socketId = null;
    this.reconnectTimer = null;
    this.attempts = 0; // consecutive failed connects since the last successful open
  }

  // `since`: the offset the page was rendered with (its `since` attribute), if any.
  register(name, listener, since = null) {
    let sub = this.subscriptions.get(name);
    if (!sub) {
      sub = {
        listeners: new Set(), state: null, reason: null, sent: false,
        progress: new Progress(since || null),
        unsubscribeTimer: null, replyTimer: null,
      };
      this.subscriptions.set(name, sub);
    }
    // An element replaced by an identical one (Turbo Drive visit, element moved) revives the
    // pending unsubscribe's subscription instead of churning unsubscribe + subscribe.
    if (sub.unsubscribeTimer !== null) {
      this.clearTimeout(sub.unsubscribeTimer);
      sub.unsubscribeTimer = null;
    }
    sub.listeners.add(listener);
    // The page was reloaded after a reset and rendered this stream again (within the same
    // second its signed name is the same): start over from the new render's offset.
    if (sub.state === "reset" && since && since !== sub.resetSince) this.rebase(name, since);
    // Rendered again after a revocation: ask again (the server checks the user anew),
    // from the new render's offset; the old one stopped at the revocation.
    if (sub.state === "revoked" && sub.listeners.size === 1) {
      sub.state = null;
      sub.sent = false;
      if (since) sub.progress.rebase(since);
    }
    if (this.isOpen && !sub.sent) this._subscribe(name, sub);
    // A late joiner must learn the current status; the server will not repeat it.
    if (sub.state === "subscribed") this._call(listener, "onSubscribed");
    else if (sub.state === "rejected") this._call(listener, "onRejected", sub.reason);
    else if (sub.state === "reset") this._call(listener, "onReset");
    else if (sub.state === "revoked") this._call(listener, "onRevoked");
    // Lazily (re)open, but never bypass a pending backoff timer.
    if (!this.socket && this.reconnectTimer === null) this._connect();
  }

  // Catch up from `since` (a new render's offset) instead of the last applied frame.
  rebase(name, since) {
    const sub = this.subscriptions.get(name);
    if (!sub || !since) return;
    sub.progress.rebase(since);
    sub.state = null;
    if (this.isOpen) this._subscribe(name, sub);
  }

  unregister(name, listener) {
    const sub = this.subscriptions.get(name);
    if (!sub || !sub.listeners.delete(listener) || sub.listeners.size > 0) return;
    if (sub.unsubscribeTimer !== null) return;
    sub.unsubscribeTimer = this.setTimeout(() => {
      sub.unsubscribeTimer = null;
      if (sub.listeners.size > 0) return;
      this._stopWaiting(sub);
      this.subscriptions.delete(name);
      if (this.isOpen && sub.sent) this._send({ type: "unsubscribe", stream: name });
      if (this.subscriptions.size === 0) this._shutdown();
    }, this.unsubscribeDelay);
  }

  // Nobody is listening any more: close on purpose (no reconnect). register() reopens.
  _shutdown() {
    if (this.reconnectTimer !== null) this.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.attempts = 0;
    if (this.socket) this._drop(this.socket);
  }

  _connect() {
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (error) {
      // e.g. a malformed URL: treat like a failed connect so backoff still applies.
      this.logger?.warn?.("turbo-tasks: cannot open websocket", error);
      this._scheduleReconnect();
      return;
    }
    this.socket = ws;
    // Every handler checks it still belongs to the current socket: a stale socket's late
    // events must not tear down its successor or schedule a second reconnect.
    ws.onopen = () => { if (ws === this.socket) this._onOpen(); };
    ws.onmessage = (event) => { if (ws === this.socket) this._onMessage(event); };
    ws.onclose = () => { if (ws === this.socket) this._onLost(ws); };
    ws.onerror = () => { if (ws === this.socket) this._onLost(ws); };
  }

  _onOpen() {
    this.isOpen = true;
    this.attempts = 0;
    for (const [name, sub] of this.subscriptions) {
      // Names only waiting for their deferred unsubscribe are not worth re-subscribing.
      if (sub.listeners.size > 0 && sub.state !== "revoked") this._subscribe(name, sub);
    }
  }

  // close and error both land here; browsers usually fire both for one failure.
  _onLost(ws) {
    // _drop closes it too: error without close can leave a socket half-alive.
    this._drop(ws);
    for (const sub of this.subscriptions.values()) {
      const wasSubscribed = sub.state === "subscribed";
      // A reset still waiting for its page refresh stays a reset: the same since will be
      // refused again after the reconnect, so nothing is marked caught up meanwhile. A
      // revoked stream stays revoked.
      if (sub.state !== "reset" && sub.state !== "revoked") sub.state = null;
      if (wasSubscribed) for (const l of [...sub.listeners]) this._call(l, "onDisconnected");
    }
    if (this.subscriptions.size > 0) this._scheduleReconnect();
  }

  // Forget a socket: detach its handlers, close it, reset per-socket state.
  _drop(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch { /* already closing */ }
    if (this.socket === ws) this.socket = null;
    this.isOpen = false;
    this.socketId = null;
    for (const sub of this.subscriptions.values()) {
      sub.sent = false;
      this._stopWaiting(sub);
    }
  }

  _scheduleReconnect() {
    if (this.reconnectTimer !== null) return;
    // Exponential backoff with ±50% jitter, so a server restart is not met by every open
    // page reconnecting in lockstep.
    const exp = Math.min(this.maxDelay, this.baseDelay * 2 ** this.attempts);
    const delay = Math.min(this.maxDelay, exp * (0.5 + this.random()));
    this.attempts += 1;
    this.reconnectTimer = this.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.socket && this.subscriptions.size > 0) this._connect();
    }, delay);
  }

  _subscribe(name, sub) {
    sub.sent = true;
    const frame = { type: "subscribe", stream: name };
    if (sub.progress.offset) frame.since = sub.progress.offset;
    this._send(frame);
    const ws = this.socket;
    this._stopWaiting(sub);
    sub.replyTimer = this.setTimeout(() => {
      sub.replyTimer = null;
      if (ws !== this.socket || (sub.state !== null && sub.state !== "reset")) return;
      this.logger?.warn?.("turbo-tasks: no reply to subscribe; reconnecting", name);
      this._onLost(ws);
    }, this.replyTimeout);
  }

  _stopWaiting(sub) {
    if (sub.replyTimer !== null) this.clearTimeout(sub.replyTimer);
    sub.replyTimer = null;
  }

  _send(frame) {
    try { this.socket.send(JSON.stringify(frame)); } catch (e) { this.logger?.warn?.("turbo-tasks: send failed", e); }
  }

  _onMessage(event) {
    if (typeof event.data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      this.logger?.warn?.("turbo-tasks: ignoring invalid JSON from server", event.data);
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "error") return void this.logger?.warn?.("turbo-tasks: server error:", frame.reason);
    if (frame.type === "hello") {
      this.socketId = typeof frame.socket_id === "string" ? frame.socket_id : null;
      return;
    }
    const sub = this.subscriptions.get(frame.stream);
    if (!sub) return; // stale frame for a name we already dropped
    // Copy: a listener may unregister (or register) while we iterate.
    const listeners = [...sub.listeners];
    if (frame.type === "message") {
      if (typeof frame.html !== "string") return;
      // Empty: a frame this page was spared (exclude_sender); only its offset counts.
      if (frame.html) for (const l of listeners) this._call(l, "onMessage", frame.html);
      // Applied: the next subscribe asks for what follows it.
      if (sub.state !== "reset") sub.progress.applied(frame.offset);
    } else if (frame.type === "subscribed") {
      this._stopWaiting(sub);
      if (sub.state === "reset") return; // live again, but stale until the page reloads
      sub.state = "subscribed";
      sub.progress.caughtUp(frame.offset);
      for (const l of listeners) this._call(l, "onSubscribed");
    } else if (frame.type === "reset") {
      sub.state = "reset";
      sub.resetSince = sub.progress.offset;
      for (const l of listeners) this._call(l, "onReset");
    } else if (frame.type === "rejected") {
      this._stopWaiting(sub);
      sub.state = "rejected";
      sub.reason = String(frame.reason);
      for (const l of listeners) this._call(l, "onRejected", sub.reason);
    } else if (frame.type === "revoked") {
      // No more frames: the user lost access. Not re-subscribed until the page renders
      // the stream again (a reconnect would only be refused).
      this._stopWaiting(sub);
      sub.state = "revoked";
      for (const l of listeners) this._call(l, "onRevoked");
    }
  }

  // One misbehaving listener must not starve the others or break the socket handler.
  _call(listener, method, ...args) {
    try { listener[method]?.(...args); } catch (e) { this.logger?.error?.(`turbo-tasks: ${method} threw`, e); }
  }
}

// ---- Browser part -------------------------------------------------------------------

let connection = null;

// The page's single connection. The first element decides the URL (its `url` attribute,
// else <meta name="turbo-tasks-url">, else /ws/turbo/); later `url` attributes are ignored
// because there is only one socket.
export function getConnection(urlHint) {
  if (!connection) {
    const meta = document.querySelector('meta[name="turbo-tasks-url"]');
    const raw = urlHint || meta?.content || "/ws/turbo/";
    const url = new URL(raw, window.location.href);
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    connection = new StreamConnection({ url: url.href });
  }
  return connection;
}

// Same-origin Turbo requests (form submissions, visits, frame loads) name this page's socket,
// so the server can keep frames sent with exclude_sender from it. Never sent to other
// origins: whoever holds the id can make this page miss those frames.
export function addSocketHeader(event, socketId, origin) {
  const detail = event?.detail;
  const headers = detail?.fetchOptions?.headers;
  if (!socketId || !headers || typeof headers !== "object") return;
  let url;
  try { url = new URL(detail.url, origin); } catch { return; }
  if (url.origin !== origin) return;
  if (typeof headers.set === "function") headers.set("X-Turbo-Tasks-Socket", socketId);
  else headers["X-Turbo-Tasks-Socket"] = socketId;
}

// Turbo is a separate script that may evaluate after this one; turbo-stream being defined
// means its module has run (it sets window.Turbo in the same evaluation).
function whenTurboReady() {
  if (window.Turbo) return Promise.resolve(window.Turbo);
  return customElements.whenDefined("turbo-stream").then(() => window.Turbo);
}

let refreshQueued = false;

function refreshPage(Turbo) {
  if (refreshQueued || !Turbo) return;
  refreshQueued = true;
  // Streams reset by one reconnect arrive in one burst: let them all land first.
  setTimeout(() => {
    refreshQueued = false;
    Turbo.renderStreamMessage('<turbo-stream action="refresh" scroll="preserve"></turbo-stream>');
  }, 0);
}

// In Node (unit tests) HTMLElement is undefined; the stand-in keeps the class declarable.
const Base = globalThis.HTMLElement ?? class {};

export class TurboChannelsStreamSourceElement extends Base {
  static get observedAttributes() { return ["since"]; }

  // A morphing refresh keeps this element and updates its `since` in place.
  attributeChangedCallback(attribute, previous, value) {
    if (attribute === "since" && value && value !== previous && this._connection) {
      this._connection.rebase(this._name, value);
    }
  }

  connectedCallback() {
    this.style.display = "none";
    const name = this.getAttribute("signed-stream-name");
    if (!name) {
      console.warn("turbo-tasks: <turbo-channels-stream-source> without signed-stream-name", this);
      return;
    }
    // A token per connection, so a disconnect (or reconnect) before Turbo is ready cancels
    // this attempt rather than racing it.
    const token = (this._token = {});
    whenTurboReady().then((Turbo) => {
      if (this._token !== token || !this.isConnected) return;
      if (!Turbo) {
        console.warn("turbo-tasks: turbo-stream is defined but window.Turbo is missing");
        return;
      }
      // Attach to Turbo before subscribing, so no frame arrives with nobody to apply it.
      Turbo.connectStreamSource(this);
      this._turbo = Turbo;
      this._name = name;
      this._connection = getConnection(this.getAttribute("url"));
      this._connection.register(name, this, this.getAttribute("since"));
    });
  }

  disconnectedCallback() {
    this._token = null;
    if (this._turbo) this._turbo.disconnectStreamSource(this);
    if (this._connection) this._connection.unregister(this._name, this);
    this._turbo = this._connection = null;
    this.removeAttribute("connected");
  }

  // Listener interface for StreamConnection.
  onMessage(html) {
    // Turbo's stream-source listener only acts on MessageEvents with string data.
    this.dispatchEvent(new MessageEvent("message", { data: html }));
  }

  onSubscribed() {
    this.removeAttribute("data-rejected");
    this.removeAttribute("data-revoked");
    this.setAttribute("connected", "");
    this._emit("turbo-tasks:subscribed", {});
  }

  onRejected(reason) {
    this.removeAttribute("connected");
    this.setAttribute("data-rejected", reason);
    this._emit("turbo-tasks:rejected", { reason });
  }

  // The user no longer passes the stream's permission check: no more frames.
  onRevoked() {
    this.removeAttribute("connected");
    this.setAttribute("data-revoked", "");
    this._emit("turbo-tasks:revoked", {});
  }

  // The server cannot replay what this page missed: reload the page's state through Turbo
  // (morphing where the page opts in with <meta name="turbo-refresh-method" content="morph">),
  // keeping the scroll position. Once per reset, however many streams reset together.
  onReset() {
    this.removeAttribute("connected");
    this._emit("turbo-tasks:reset", {});
    refreshPage(this._turbo);
  }

  onDisconnected() { this.removeAttribute("connected"); }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { bubbles: true, detail: { stream: this._name, ...detail } }));
  }
}

if (typeof customElements !== "undefined" && globalThis.HTMLElement) {
  if (!customElements.get("turbo-channels-stream-source")) {
    customElements.define("turbo-channels-stream-source", TurboChannelsStreamSourceElement);
  }
  // Debugging handle: TurboTasks.connection is null until the first element connects.
  window.TurboTasks = { get connection() { return connection; }, getConnection };
  document.addEventListener("turbo:before-fetch-request", (event) => {
    addSocketHeader(event, connection?.socketId, window.location.origin);
  });
}
