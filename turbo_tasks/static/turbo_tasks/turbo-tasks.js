// turbo_tasks client: <turbo-channels-stream-source signed-stream-name="..."> elements,
// all fed by ONE websocket per page. Protocol: docs/protocol.md.
//
// Two parts: StreamConnection owns the socket and the subscriptions and touches no DOM
// (everything it needs is injected, so it is unit-tested under Node), and a thin custom
// element that adapts it to Turbo's stream-source API.

// A subscription (one per signed name) is shared by every listener registered for that name.
// Listener interface (all optional): onMessage(html), onSubscribed(), onRejected(reason),
// onDisconnected().
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
    // name -> { listeners: Set, state: null | "subscribed" | "rejected", reason, sent,
    //           unsubscribeTimer, replyTimer }
    this.subscriptions = new Map();
    this.socket = null;
    this.isOpen = false;
    this.reconnectTimer = null;
    this.attempts = 0; // consecutive failed connects since the last successful open
  }

  register(name, listener) {
    let sub = this.subscriptions.get(name);
    if (!sub) {
      sub = {
        listeners: new Set(), state: null, reason: null, sent: false,
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
    if (this.isOpen && !sub.sent) this._subscribe(name, sub);
    // A late joiner must learn the current status; the server will not repeat it.
    if (sub.state === "subscribed") this._call(listener, "onSubscribed");
    else if (sub.state === "rejected") this._call(listener, "onRejected", sub.reason);
    // Lazily (re)open, but never bypass a pending backoff timer.
    if (!this.socket && this.reconnectTimer === null) this._connect();
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
      if (sub.listeners.size > 0) this._subscribe(name, sub);
    }
  }

  // close and error both land here; browsers usually fire both for one failure.
  _onLost(ws) {
    // _drop closes it too: error without close can leave a socket half-alive.
    this._drop(ws);
    for (const sub of this.subscriptions.values()) {
      const wasSubscribed = sub.state === "subscribed";
      sub.state = null;
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
    this._send({ type: "subscribe", stream: name });
    const ws = this.socket;
    this._stopWaiting(sub);
    sub.replyTimer = this.setTimeout(() => {
      sub.replyTimer = null;
      if (ws !== this.socket || sub.state !== null) return;
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
    const sub = this.subscriptions.get(frame.stream);
    if (!sub) return; // stale frame for a name we already dropped
    // Copy: a listener may unregister (or register) while we iterate.
    const listeners = [...sub.listeners];
    if (frame.type === "message") {
      if (typeof frame.html !== "string") return;
      for (const l of listeners) this._call(l, "onMessage", frame.html);
    } else if (frame.type === "subscribed") {
      this._stopWaiting(sub);
      sub.state = "subscribed";
      for (const l of listeners) this._call(l, "onSubscribed");
    } else if (frame.type === "rejected") {
      this._stopWaiting(sub);
      sub.state = "rejected";
      sub.reason = String(frame.reason);
      for (const l of listeners) this._call(l, "onRejected", sub.reason);
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

// Turbo is a separate script that may evaluate after this one; turbo-stream being defined
// means its module has run (it sets window.Turbo in the same evaluation).
function whenTurboReady() {
  if (window.Turbo) return Promise.resolve(window.Turbo);
  return customElements.whenDefined("turbo-stream").then(() => window.Turbo);
}

// In Node (unit tests) HTMLElement is undefined; the stand-in keeps the class declarable.
const Base = globalThis.HTMLElement ?? class {};

export class TurboChannelsStreamSourceElement extends Base {
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
      this._connection.register(name, this);
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
    this.setAttribute("connected", "");
    this._emit("turbo-tasks:subscribed", {});
  }

  onRejected(reason) {
    this.removeAttribute("connected");
    this.setAttribute("data-rejected", reason);
    this._emit("turbo-tasks:rejected", { reason });
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
}
