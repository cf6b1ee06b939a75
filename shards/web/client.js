// A dependency-free browser client for the zombie-proof-ws server (docs/PROTOCOL.md).
// It mirrors client/reconnecting.py:
//  * every connection starts with `welcome`; the session is resumed with
//    ?resume=<token>&last_seq=<n> (the token rotates on every welcome);
//  * stream messages (with `seq`) are delivered exactly once, in order;
//  * every sent message gets a `cseq` and stays in an outbox until the server
//    acknowledges it (welcome.last_cseq / heartbeat_ack.last_cseq); after a resume the
//    unacknowledged ones are re-sent, in order, before anything new;
//  * `heartbeat` every interval/2 and dead-server detection after interval + timeout
//    of silence;
//  * reconnects with full-jitter exponential backoff, at the time a server_shutdown
//    asks for, at least `base` later after 1013, never after a terminal close;
//  * follows a cluster redirect (first message {type:"redirect", url}, then close
//    4002, or the link just ends) at once: no backoff, no retry counted. The next
//    attempt goes to the redirect URL's scheme, host, port and path with this client's
//    own query and current resume/last_seq (the redirect's query is ignored, so a stale
//    token in it cannot win). A URL that is not ws:// or wss:// with a host, or a
//    message after the redirect, is terminal (gave_up "bad redirect: …", code 1002).
//    More than MAX_REDIRECTS (5) redirects without a welcome: the next one is a failed
//    attempt (backoff and maxRetries apply, reason "redirect loop: …"). Any attempt
//    that is not redirected (a welcome, a failure, a cut loop) sends the next one to
//    the original URL again (the owner may have died) and restarts the count;
//  * session, token, last_seq and the outbox live in sessionStorage, so a page reload
//    resumes the same session.
//
// Usage:
//   import { ReconnectingClient } from "/client.js";
//   const client = new ReconnectingClient("ws://host:port/rooms/lobby-game");
//   client.addEventListener("message", (e) => console.log(e.detail.message));
//   client.start();
//   client.send({ type: "move", n: 2 });
//
// Events (CustomEvent, data in `detail`): connected {welcome}, resumed {welcome,
// replayedCount}, session_lost {oldSession, resumeError, unacked}, message {message},
// away {reason, code, delayMs}, gave_up {reason, code}. `away` follows every attempt
// that ends without giving up; a followed redirect is one with code 4002, delayMs 0
// and reason "redirected to <url without its query>" (a redirect is never a message).

export const DEFAULTS = Object.freeze({
  connectTimeoutMs: 10000, // TCP + handshake + welcome
  backoffBaseMs: 1000,
  backoffCapMs: 30000,
  maxRetries: 10, // consecutive failed attempts; null retries forever
  heartbeat: true,
  minHeartbeatMs: 50,
  storage: null, // defaults to window.sessionStorage; false disables persistence
  storageKey: null, // defaults to "zpws:" + url
  random: Math.random,
});

const CONTROL_TYPES = new Set(["welcome", "heartbeat_ack", "server_shutdown", "redirect"]);
// Redirects followed at once, in a row, without a welcome; the next one is a failed attempt.
export const MAX_REDIRECTS = 5;
export const REDIRECT_CODE = 4002;
// Closes after which the client gives up (PROTOCOL.md, "Close codes").
const TERMINAL = new Set([1000, 1002, 1003, 1007, 1008, 1009, 4000]);
// A client close in 4001-4499 is an application close after which the session goes
// away (not a leave): used when the page unloads, so a reload resumes.
export const PAGE_UNLOAD_CODE = 4001;

export function isTerminal(code) {
  if (code == null) return false;
  if (TERMINAL.has(code)) return true;
  if (code >= 4500 && code <= 4999) return true;
  if (code >= 3000 && code <= 3999) return true;
  return false;
}

/** Full jitter: uniform(0, min(cap, base * 2**attempt)). */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 62));
  return random() * ceiling;
}

/** The redirect message's url if it is ws:// or wss:// with a host, else throws. */
export function redirectTarget(message) {
  const url = message.url;
  if (typeof url !== "string") throw new Error(`url is ${JSON.stringify(url) ?? "undefined"}, not a string`);
  let parsed = null;
  try {
    // The authority must follow "//" at once: the URL parser would read "ws:///a/b"
    // as host "a".
    if (/^wss?:\/\/[^/?#\\\s]/i.test(url)) parsed = new URL(url);
  } catch (_) {
    /* not a URL (a bad port, say) */
  }
  if (!parsed || (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") || !parsed.hostname) {
    throw new Error(`url ${JSON.stringify(url.slice(0, 200))} is not ws:// or wss:// with a host`);
  }
  return url;
}

// A page may only close with 1000 or 3000-4999 (close() throws on 1002 or 1007): the
// client gives up after these anyway, so it leaves (1000) and names the code in the reason.
function closeForError(ws, code, reason) {
  try {
    ws.close(1000, `${code} ${reason}`.slice(0, 120));
  } catch (_) {
    /* already closing */
  }
}

// A URL without its query (which may hold a resume token), for reasons and logs.
function where(url) {
  const parsed = new URL(url);
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
}

function retryAfterHint(reason) {
  const m = /retry_after_ms\s*[=:]\s*(\d+)/.exec(reason || "");
  return m ? Number(m[1]) : null;
}

export class ReconnectingClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    const storage = this.options.storage;
    this._storage =
      storage === false ? null : storage || (typeof sessionStorage !== "undefined" ? sessionStorage : null);
    this._key = this.options.storageKey || "zpws:" + url;
    this.session = null;
    this.token = null;
    this.lastSeq = 0;
    this._nextCseq = 1;
    this._outbox = []; // [{cseq, message}] in cseq order
    this._allowJump = false;
    this._ws = null;
    this._ready = false;
    this._sentUpto = 0;
    this._closing = false;
    this._timers = new Set();
    this._attempt = 0;
    this._redirect = null; // where the next attempt goes, if redirected
    this._redirects = 0; // redirects followed in a row (no welcome, no wait between)
    this.duplicatesDropped = 0;
    this.gaps = 0;
    this.redirectsFollowed = 0;
    this._restore();
    this._onPageHide = () => this._unload();
  }

  get connected() {
    return this._ready;
  }

  get outboxSize() {
    return this._outbox.length;
  }

  /** Connect (and keep reconnecting). Returns this. */
  start() {
    if (typeof window !== "undefined") window.addEventListener("pagehide", this._onPageHide);
    this._connect();
    return this;
  }

  /** Queue `message` in the outbox and send it when connected. Returns its cseq. */
  send(message) {
    if (this._closing) throw new Error("the client is closed");
    if (!message || typeof message !== "object" || !("type" in message)) {
      throw new TypeError("message must be an object with a 'type'");
    }
    const cseq = this._nextCseq++;
    this._outbox.push({ cseq, message: { ...message, cseq } });
    this._save();
    this._flush();
    return cseq;
  }

  /** Leave for good: close 1000 (the server ends the session) and forget it. */
  close() {
    this._stop();
    if (this._ws) this._ws.close(1000, "client closed");
    this._forget();
  }

  // ---------------------------------------------------------------- internals
  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  _later(fn, ms) {
    const id = setTimeout(() => {
      this._timers.delete(id);
      fn();
    }, ms);
    this._timers.add(id);
    return id;
  }

  _clearTimers() {
    for (const id of this._timers) clearTimeout(id);
    this._timers.clear();
  }

  _stop() {
    this._closing = true;
    this._clearTimers();
    if (typeof window !== "undefined") window.removeEventListener("pagehide", this._onPageHide);
  }

  _unload() {
    // The page goes away (reload, navigation): close with an application code so the
    // session goes *away* for the grace window instead of leaving (a browser's own
    // close would be 1001, a graceful leave). Keep the stored state for the reload.
    this._save();
    this._stop();
    if (this._ws) this._ws.close(PAGE_UNLOAD_CODE, "page unload");
  }

  _restore() {
    if (!this._storage) return;
    try {
      const saved = JSON.parse(this._storage.getItem(this._key) || "null");
      if (saved && saved.session && saved.token) {
        this.session = saved.session;
        this.token = saved.token;
        this.lastSeq = saved.lastSeq || 0;
        this._nextCseq = saved.nextCseq || 1;
        this._outbox = Array.isArray(saved.outbox) ? saved.outbox : [];
      }
    } catch (_) {
      /* unreadable: start fresh */
    }
  }

  _save() {
    if (!this._storage || !this.session) return;
    try {
      this._storage.setItem(
        this._key,
        JSON.stringify({
          session: this.session,
          token: this.token,
          lastSeq: this.lastSeq,
          nextCseq: this._nextCseq,
          outbox: this._outbox,
        }),
      );
    } catch (_) {
      /* quota or privacy mode: keep running without persistence */
    }
  }

  _forget() {
    if (this._storage) this._storage.removeItem(this._key);
  }

  _resumeUrl() {
    const url = new URL(this.url);
    if (this._redirect) {
      // The redirect's scheme, host, port and path; this client's own query.
      const target = new URL(this._redirect);
      target.search = url.search;
      target.hash = url.hash;
      return this._withResume(target);
    }
    return this._withResume(url);
  }

  _withResume(url) {
    url.searchParams.delete("resume");
    url.searchParams.delete("last_seq");
    if (this.token) {
      url.searchParams.set("resume", this.token);
      url.searchParams.set("last_seq", String(this.lastSeq));
    }
    return url.toString();
  }

  _connect() {
    if (this._closing) return;
    let ws;
    try {
      ws = new WebSocket(this._resumeUrl());
    } catch (err) {
      this._ended({ reason: "connect failed: " + err, code: null, welcomed: false });
      return;
    }
    this._ws = ws;
    const link = {
      ws,
      welcomed: false,
      redirect: null, // the first message was a redirect to this URL
      shutdown: null, // {reason, delayMs}
      lastInbound: 0,
      silentLimitMs: Infinity,
      done: false,
      timers: [],
    };
    const finish = (ended) => {
      if (link.done) return;
      link.done = true;
      for (const id of link.timers) {
        clearTimeout(id);
        clearInterval(id);
      }
      if (this._ws === ws) {
        this._ws = null;
        this._ready = false;
      }
      this._ended(ended);
    };
    link.timers.push(
      setTimeout(() => {
        if (!link.welcomed) {
          try {
            ws.close();
          } catch (_) {}
          const redirected = link.redirect ? `redirected to ${where(link.redirect)} but not closed; ` : "";
          finish({
            reason: `${redirected}no welcome within ${this.options.connectTimeoutMs} ms (connect timeout)`,
            code: null,
            welcomed: false,
          });
        }
      }, this.options.connectTimeoutMs),
    );
    ws.onmessage = (event) => {
      if (link.done) return;
      link.lastInbound = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        closeForError(ws, 1007, "undecodable frame");
        return finish({ reason: "undecodable frame", code: 1007, welcomed: link.welcomed, terminal: true });
      }
      if (link.redirect) {
        closeForError(ws, 1002, "message after redirect");
        return finish({ reason: "bad redirect: a message followed it", code: 1002, welcomed: false, terminal: true });
      }
      if (!link.welcomed && message && message.type === "redirect") {
        try {
          link.redirect = redirectTarget(message);
        } catch (err) {
          closeForError(ws, 1002, "bad redirect");
          return finish({ reason: "bad redirect: " + err.message, code: 1002, welcomed: false, terminal: true });
        }
        return; // the close (4002) follows
      }
      if (!link.welcomed) {
        if (!message || message.type !== "welcome") {
          closeForError(ws, 1002, "first message is not a welcome");
          return finish({ reason: "bad welcome", code: 1002, welcomed: false, terminal: true });
        }
        link.welcomed = true;
        this._onWelcome(message, link);
        return;
      }
      this._dispatch(message, link);
    };
    ws.onclose = (event) => finish(this._closed(event.code, event.reason, link));
    ws.onerror = () => {}; // onclose follows with the code
  }

  _closed(code, reason, link) {
    const welcomed = link.welcomed;
    if (link.redirect && (code === REDIRECT_CODE || code === 1005 || code === 1006 || code == null)) {
      // Any other close after a redirect is the server's last word: classified below.
      const redirect = link.redirect;
      return { reason: "redirected to " + where(redirect), code: REDIRECT_CODE, welcomed, redirect };
    }
    if (code === 4000) {
      return { reason: `session replaced by a newer connection (${code})`, code, welcomed, terminal: true };
    }
    if (link.shutdown) {
      return {
        reason: "server shutdown: " + link.shutdown.reason,
        code,
        welcomed,
        reconnectAfterMs: link.shutdown.delayMs,
      };
    }
    if (code === 1006 || code === 1005 || code == null) {
      return { reason: link.dead ? "server silent (heartbeat timeout)" : "connection lost", code: 1006, welcomed };
    }
    if (isTerminal(code)) {
      return { reason: `closed by server: ${code}${reason ? " (" + reason + ")" : ""}`, code, welcomed, terminal: true };
    }
    if (code === 1013) {
      return { reason: `closed by server: 1013 (${reason})`, code, welcomed, overloaded: true, retryAfterMs: retryAfterHint(reason) };
    }
    return { reason: `closed by server: ${code}${reason ? " (" + reason + ")" : ""}`, code, welcomed };
  }

  _ended(ended) {
    if (this._closing) return;
    if (ended.redirect) {
      this._redirects += 1;
      if (this._redirects <= MAX_REDIRECTS) {
        // Not a failure: the room lives on another node. Go there now, without a
        // backoff and without counting a retry.
        this._redirect = ended.redirect;
        this.redirectsFollowed += 1;
        this._emit("away", { reason: ended.reason, code: REDIRECT_CODE, delayMs: 0 });
        this._later(() => this._connect(), 0);
        return;
      }
      const last = where(ended.redirect);
      ended = {
        reason: `redirect loop: more than ${MAX_REDIRECTS} redirects without a welcome (the last to ${last})`,
        code: ended.code,
        welcomed: false,
      };
    }
    // Anything but a redirect: the next attempt goes to the original URL (the owner may
    // have died; the load balancer knows the new one).
    this._redirect = null;
    this._redirects = 0;
    if (ended.welcomed) this._attempt = 0;
    if (ended.terminal) return this._giveUp(ended.reason, ended.code);
    const o = this.options;
    let delayMs;
    if (ended.reconnectAfterMs != null) {
      delayMs = ended.reconnectAfterMs;
    } else {
      if (o.maxRetries != null && this._attempt >= o.maxRetries) {
        return this._giveUp(`gave up after ${this._attempt} retries; last: ${ended.reason}`, ended.code);
      }
      delayMs = backoffDelay(this._attempt, o.backoffBaseMs, o.backoffCapMs, o.random);
      if (ended.overloaded) delayMs = Math.max(o.backoffBaseMs, delayMs, ended.retryAfterMs || 0);
      this._attempt += 1;
    }
    this._emit("away", { reason: ended.reason, code: ended.code ?? null, delayMs });
    this._later(() => this._connect(), delayMs);
  }

  _giveUp(reason, code) {
    this._stop();
    this._emit("gave_up", { reason, code: code ?? null });
  }

  _onWelcome(welcome, link) {
    const old = this.session;
    const lastCseq = Number(welcome.last_cseq || 0);
    if (welcome.resumed && old != null) {
      this._ack(lastCseq);
      this._sentUpto = lastCseq;
      this._nextCseq = Math.max(this._nextCseq, lastCseq + 1);
      this._allowJump = Boolean(welcome.replay_gap);
      this.session = welcome.session;
      this.token = welcome.token;
      this._ready = true;
      this._save();
      this._emit("resumed", { welcome, replayedCount: this._outbox.length });
    } else {
      if (old != null) {
        const unacked = this._outbox.map(({ message }) => {
          const { cseq, ...rest } = message;
          return rest;
        });
        this._outbox = [];
        this._nextCseq = 1;
        this._emit("session_lost", {
          oldSession: old,
          resumeError: welcome.resume_error || "not_resumed",
          unacked,
        });
      }
      this.lastSeq = 0;
      this._allowJump = false;
      this._sentUpto = 0;
      this.session = welcome.session;
      this.token = welcome.token;
      this._ready = true;
      this._save();
      this._emit("connected", { welcome });
    }
    const hb = welcome.heartbeat || {};
    const interval = Number(hb.interval_ms || 0);
    const timeout = Number(hb.timeout_ms || 0);
    if (this.options.heartbeat && interval > 0) {
      link.silentLimitMs = interval + timeout;
      const period = Math.max(this.options.minHeartbeatMs, interval / 2);
      link.timers.push(
        setInterval(() => {
          if (link.ws.readyState === WebSocket.OPEN) {
            link.ws.send(JSON.stringify({ type: "heartbeat", ts: Date.now() }));
          }
        }, period),
      );
      const watch = () => {
        const silent = Date.now() - link.lastInbound;
        if (silent >= link.silentLimitMs) {
          link.dead = true;
          link.ws.close(); // no close handshake to wait for: report it now
          link.ws.onclose({ code: 1006, reason: "" });
          return;
        }
        link.timers.push(setTimeout(watch, link.silentLimitMs - silent));
      };
      link.timers.push(setTimeout(watch, link.silentLimitMs));
    }
    this._flush();
  }

  _dispatch(message, link) {
    if (!message || typeof message !== "object") return;
    const kind = message.type;
    const seq = message.seq;
    if (kind === "heartbeat_ack") {
      if (Number.isInteger(message.last_cseq)) {
        this._ack(message.last_cseq);
        this._save();
      }
    } else if (kind === "server_shutdown") {
      const after = Number(message.reconnect_after_ms);
      link.shutdown = { reason: String(message.reason || ""), delayMs: Number.isFinite(after) ? Math.max(0, after) : 0 };
    } else if (CONTROL_TYPES.has(kind)) {
      // an unexpected second welcome: ignore
    } else if (Number.isInteger(seq)) {
      if (seq <= this.lastSeq) {
        this.duplicatesDropped += 1;
        return;
      }
      if (seq !== this.lastSeq + 1 && !this._allowJump) {
        this.gaps += 1;
        console.error(`stream gap: seq ${seq} after ${this.lastSeq}`);
      }
      this._allowJump = false;
      this.lastSeq = seq;
      this._save();
      this._emit("message", { message });
    } else {
      this._emit("message", { message });
    }
  }

  _ack(lastCseq) {
    while (this._outbox.length && this._outbox[0].cseq <= lastCseq) this._outbox.shift();
  }

  _flush() {
    const ws = this._ws;
    if (!this._ready || !ws || ws.readyState !== WebSocket.OPEN) return;
    for (const { cseq, message } of this._outbox) {
      if (cseq <= this._sentUpto) continue;
      ws.send(JSON.stringify(message));
      this._sentUpto = cseq;
    }
  }
}
