// lobby-relay.js: the JavaScript client of lobby-relay (browsers and Node).
//
// One dependency-free ES module; its types are in lobby-relay.d.ts, and
// docs/clients.md is its guide. It speaks the wire protocol of
// docs/protocol.md (version 1) and does for a game what its connection
// manager would: join a lobby by passphrase (or by quick match, a queue),
// hand the lobby's events and game messages to the game, send game messages, and survive dropped
// connections by resuming the seat (with every message missed, none twice),
// on whichever node answers.
//
//   import { LobbyRelayClient } from "./lobby-relay.js";
//   const relay = new LobbyRelayClient("wss://relay.example/ws");
//   relay.on("ready", () => startGame());
//   relay.on("message", (m) => { if (m.kind === "json") apply(m.data); });
//   await relay.join("jump-rocket");
//   relay.send({ type: "playerMove", x: 1, y: 2 });
//
// The relay serves this file at /client.js and /client/v1.js.

/** @typedef {import("./lobby-relay").LobbyRelayOptions} LobbyRelayOptions */
/** @typedef {import("./lobby-relay").JoinOptions} JoinOptions */
/** @typedef {import("./lobby-relay").WatchOptions} WatchOptions */
/** @typedef {import("./lobby-relay").WatchingMessage} WatchingMessage */
/** @typedef {import("./lobby-relay").LobbyRelayEvents} LobbyRelayEvents */
/** @typedef {import("./lobby-relay").ClientState} ClientState */
/** @typedef {import("./lobby-relay").ResumeState} ResumeState */
/** @typedef {import("./lobby-relay").RelayStorage} RelayStorage */
/** @typedef {import("./lobby-relay").JoinedMessage} JoinedMessage */
/** @typedef {import("./lobby-relay").ResumedMessage} ResumedMessage */
/** @typedef {import("./lobby-relay").Sendable} Sendable */
/** @typedef {{ new (url: string): WebSocket }} WebSocketConstructor */
/** @typedef {string | Uint8Array} Frame */

/** The wire protocol version this client speaks (docs/protocol.md). */
export const PROTOCOL_VERSION = 1;

/** This file's version (also in its URL on the relay: /client/v1.js). */
export const CLIENT_VERSION = "1.0.0";

// Types a game message may not have (the relay answers `reserved_type`).
const RESERVED_TYPES = new Set([
  "join", "leave", "ping", "joined", "ready", "playerJoined", "playerLeft", "pong", "error",
  "resume", "resumed", "playerAway", "playerBack", "auth", "authenticated", "hostChanged",
  "watching", "spectators",
]);
// What the relay sends that is not a delivery (not counted for resume):
// answers to this connection, and `hostChanged` and `spectators` (state,
// not history: never replayed). Everything else received in a seat is.
const NOT_DELIVERIES = new Set([
  "joined", "resumed", "watching", "pong", "error", "authenticated", "hostChanged", "spectators",
]);
// Lobby events, each its own event of the client.
const LOBBY_EVENTS = new Set(["ready", "playerJoined", "playerLeft", "playerAway", "playerBack"]);
// Answers to a join or resume that are tried again later, not failures.
const RETRIED = new Set(["unavailable", "rate_limited"]);
// A refused player token: the relay closes with 1008; trying again is futile.
const TOKEN_ERRORS = new Set(["token_required", "token_invalid", "token_expired", "token_not_yet_valid"]);
// The relay's close for a seat taken over by another connection of ours.
const CLOSE_TAKEN_OVER = 4002;
// The relay's close when it is full: wait at least this long.
const CLOSE_NODE_FULL = 1013;
const NODE_FULL_DELAY_MS = 1000;

const DEFAULTS = {
  resume: true,
  host: true,
  spectators: true,
  rejoinOnSeatLost: false,
  queueLimit: 256,
  resendLimit: 256,
  connectTimeout: 10000,
  pingTimeout: 10000,
  storageKey: "lobby-relay.resume",
  backoff: { initialDelay: 250, maxDelay: 2000, multiplier: 2 },
};

/**
 * An error of the relay (its `code` is the protocol's) or of this client
 * (codes `already_joined`, `queue_full`, `not_in_lobby`, `spectating`, `not_connected`,
 * `ping_timeout`, `closed`, `left`, `invalid_message`, `invalid_url`).
 */
export class LobbyRelayError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "LobbyRelayError";
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.text = message;
  }
}

/**
 * The passphrase as the relay reads it: trimmed, ASCII lower-cased.
 * @param {string} passphrase
 * @returns {string}
 */
export function normalizePassphrase(passphrase) {
  return passphrase.trim().replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

/**
 * Starts a client and joins `passphrase`: `connect(url, passphrase, options)`
 * is `new LobbyRelayClient(url, options)` then `join(passphrase)`; it
 * resolves to the client once joined (or resumed).
 * @param {string | string[]} url
 * @param {string} passphrase
 * @param {LobbyRelayOptions & JoinOptions} [options]
 * @returns {Promise<LobbyRelayClient>}
 */
export async function connect(url, passphrase, options = {}) {
  const client = new LobbyRelayClient(url, options);
  await client.join(passphrase, options);
  return client;
}

/**
 * The game's connection to a relay: one WebSocket at a time, one lobby at a
 * time, reconnected and resumed after a drop. See docs/clients.md.
 */
export class LobbyRelayClient {
  /** @type {string[]} */ #urls;
  #urlIndex = 0;
  /** @type {WebSocketConstructor} */ #WebSocket;
  /** @type {Required<Omit<LobbyRelayOptions, "WebSocket" | "storage" | "authToken" | "backoff">>} */ #options;
  /** @type {{ initialDelay: number, maxDelay: number, multiplier: number }} */ #backoff;
  /** @type {LobbyRelayOptions["authToken"]} */ #authToken;
  /** @type {RelayStorage | null} */ #storage;
  /** @type {Map<string, Set<(event: any) => void>>} */ #listeners = new Map();

  /** @type {WebSocket | null} */ #ws = null;
  /** @type {ClientState} */ #state = "idle";
  /** close() was called. */
  #closing = false;
  /** A failure ends the client (a refused token, a bad URL). */
  #fatal = false;
  /** @type {ReturnType<typeof setTimeout> | null} */ #timer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */ #connectTimer = null;
  #attempt = 0;
  /** This socket presented the player token and the relay accepted it. */
  #authed = false;
  /** @type {string | null} */ #node = null;

  // The lobby the game wants to be in (from join(), joinQueue(), watch() or
  // watchQueue() until leave()): by passphrase, or by quick match (a
  // queue); as a player, or as a spectator (`spectate`, with its `delay`).
  /** @type {{ passphrase: string | null, queue: string | null, resume: boolean, host: boolean, spectate: boolean, delay: number | null } | null} */
  #lobby = null;
  /** @type {"join" | "resume" | "auth" | null} */ #pending = null;
  /** @type {Array<{ resolve: (m: any) => void, reject: (e: Error) => void }>} */
  #waiters = [];
  /** open() calls waiting for the connection. */
  /** @type {Array<{ resolve: () => void, reject: (e: Error) => void }>} */
  #openWaiters = [];

  // The seat: held from `joined` until left or lost; `#inSeat` while this
  // socket is in it.
  #inSeat = false;
  /** @type {number | null} */ #seat = null;
  #players = 0;
  /** @type {number | null} */ #capacity = null;
  /** The lobby's host seat and its epoch (joined with `host`). */
  /** @type {number | null} */ #host = null;
  /** @type {number | null} */ #epoch = null;
  /** The lobby's spectators, as last told (`joined`, `watching`, `spectators`). */
  /** @type {number | null} */ #spectators = null;
  /** @type {string | null} */ #token = null;
  #received = 0;
  #sent = 0;
  /** Whether `#sent` and `#unacked` still match what the relay took. */
  #resendable = true;
  /**
   * Game messages sent in this seat, the latest `resendLimit` of them.
   * @type {Frame[]}
   */
  #unacked = [];
  /**
   * Game messages waiting for the seat (while reconnecting).
   * @type {Frame[]}
   */
  #queue = [];

  #pingSeq = 0;
  /** @type {Map<number, { start: number, resolve: (rtt: number) => void, reject: (e: Error) => void, timer: ReturnType<typeof setTimeout> }>} */
  #pings = new Map();

  /**
   * @param {string | string[]} url the relay's WebSocket URL (`ws://host:8765/ws`); a
   *   list is tried in turn, one URL per connection attempt
   * @param {LobbyRelayOptions} [options]
   */
  constructor(url, options = {}) {
    this.#urls = Array.isArray(url) ? [...url] : [url];
    if (this.#urls.length === 0) throw new TypeError("LobbyRelayClient: no URL");
    const WS = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError(
        "LobbyRelayClient: no WebSocket here. Node 20 has one with `node --experimental-websocket` " +
          "(Node 22 by default); or pass any WebSocket-compatible constructor as options.WebSocket.",
      );
    }
    this.#WebSocket = WS;
    this.#options = {
      resume: options.resume ?? DEFAULTS.resume,
      host: options.host ?? DEFAULTS.host,
      spectators: options.spectators ?? DEFAULTS.spectators,
      rejoinOnSeatLost: options.rejoinOnSeatLost ?? DEFAULTS.rejoinOnSeatLost,
      queueLimit: options.queueLimit ?? DEFAULTS.queueLimit,
      resendLimit: options.resendLimit ?? DEFAULTS.resendLimit,
      connectTimeout: options.connectTimeout ?? DEFAULTS.connectTimeout,
      pingTimeout: options.pingTimeout ?? DEFAULTS.pingTimeout,
      storageKey: options.storageKey ?? DEFAULTS.storageKey,
    };
    this.#backoff = { ...DEFAULTS.backoff, ...options.backoff };
    this.#authToken = options.authToken;
    this.#storage = options.storage ?? null;
  }

  // -------------------------------------------------------------------------
  // What the game reads
  // -------------------------------------------------------------------------

  /** @returns {ClientState} */
  get state() { return this.#state; }
  /** Whether this client holds its seat (or watches, as a spectator) on an
   * open connection right now. */
  get inLobby() { return this.#inSeat; }
  /** Whether this client is a spectator (from watch() or watchQueue() until
   * leave(), reconnections included). */
  get spectating() { return this.#lobby !== null && this.#lobby.spectate; }
  /** The lobby's spectators, as last told (a player that asked, with the
   * `spectators` option, or a spectator); null when unknown. */
  get spectators() { return this.#spectators; }
  /** Our seat (1..capacity), kept while reconnecting; null outside a lobby. */
  get seat() { return this.#seat; }
  get players() { return this.#players; }
  get capacity() { return this.#capacity; }
  /** The lobby's host seat, as last told (joined with `host`); null when unknown. */
  get host() { return this.#host; }
  /** The host's epoch, as last told: it only grows while the lobby exists. */
  get epoch() { return this.#epoch; }
  /** The id of the node this connection is on (known after a ping). */
  get node() { return this.#node; }
  /** Game messages waiting for the seat (sent while reconnecting). */
  get queued() { return this.#queue.length; }
  /** Deliveries received in this seat (what a resume presents). */
  get received() { return this.#received; }
  /** Whether the seat can be resumed after a drop (joined with resume). */
  get resumable() { return this.#token !== null; }

  /**
   * What a resume needs, for a game that keeps it itself (pass it back as
   * `join(passphrase, { token, received })`, or `joinQueue(queue, {...})`
   * for a quick-match seat, whose state has `queue` and an empty
   * `passphrase`); null without a resumable seat.
   * @returns {ResumeState | null}
   */
  get resumeState() {
    if (this.#lobby === null || this.#token === null) return null;
    if (this.#lobby.queue !== null) {
      return { passphrase: "", queue: this.#lobby.queue, token: this.#token, received: this.#received };
    }
    return { passphrase: /** @type {string} */ (this.#lobby.passphrase), token: this.#token, received: this.#received };
  }

  // -------------------------------------------------------------------------
  // Events
  // -------------------------------------------------------------------------

  /**
   * Calls `listener` on each event `name`; returns a function that stops it.
   * @template {keyof LobbyRelayEvents} K
   * @param {K} name
   * @param {(event: LobbyRelayEvents[K]) => void} listener
   * @returns {() => void}
   */
  on(name, listener) {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => this.off(name, listener);
  }

  /**
   * @template {keyof LobbyRelayEvents} K
   * @param {K} name
   * @param {(event: LobbyRelayEvents[K]) => void} listener
   */
  off(name, listener) {
    this.#listeners.get(name)?.delete(listener);
  }

  /**
   * The next event `name`, as a promise.
   * @template {keyof LobbyRelayEvents} K
   * @param {K} name
   * @returns {Promise<LobbyRelayEvents[K]>}
   */
  once(name) {
    return new Promise((resolve) => {
      const stop = this.on(name, (event) => {
        stop();
        resolve(event);
      });
    });
  }

  /**
   * @template {keyof LobbyRelayEvents} K
   * @param {K} name
   * @param {LobbyRelayEvents[K]} event
   */
  #emit(name, event) {
    for (const listener of [...(this.#listeners.get(name) ?? [])]) {
      try {
        listener(event);
      } catch (e) {
        // A listener's bug must not break the connection: reported as an
        // uncaught error, as an EventTarget does.
        setTimeout(() => { throw e; }, 0);
      }
    }
  }

  // -------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------

  /**
   * Joins (or creates) the lobby of `passphrase`; resolves with `joined`
   * (or `resumed`, when a kept resume token took the seat back). Rejects
   * with a {@link LobbyRelayError} for a refusal (`invalid_passphrase`,
   * `lobby_full`, `token_*`, ...); `unavailable` and `rate_limited` are
   * tried again with backoff, and so is a connection that fails.
   * @param {string} passphrase
   * @param {JoinOptions} [options]
   * @returns {Promise<JoinedMessage | ResumedMessage>}
   */
  join(passphrase, options = {}) {
    return this.#startJoin(passphrase, null, options, false);
  }

  /**
   * Quick match: a seat in the oldest lobby of `queue` with room, or a new
   * one (`{"type":"join","queue":...}`). The same options and the same
   * result as join(); `joined` carries `queue`. Rejects with `invalid_queue`
   * or `queue_full` (the relay's: too many lobbies in that queue) as join()
   * does with its refusals. A lost seat rejoined (`rejoinOnSeatLost`) queues
   * again.
   * @param {string} queue
   * @param {JoinOptions} [options]
   * @returns {Promise<JoinedMessage | ResumedMessage>}
   */
  joinQueue(queue, options = {}) {
    return this.#startJoin(null, queue, options, false);
  }

  /**
   * Watches the game of `passphrase` as a spectator
   * (`{"type":"join","passphrase":...,"spectate":true}`): no seat; every
   * game message and lobby event of the lobby, as the players get them
   * (`delay` seconds later with that option). Resolves with `watching`.
   * Rejects with `nothing_to_watch` (no player in that lobby),
   * `spectators_full`, or the other refusals of a join. send() throws
   * `spectating`. A spectator has no resume: after a drop the client
   * watches again, with the backoff of a join. leave() stops watching.
   * @param {string} passphrase
   * @param {WatchOptions} [options]
   * @returns {Promise<WatchingMessage>}
   */
  watch(passphrase, options = {}) {
    return /** @type {Promise<any>} */ (this.#startJoin(passphrase, null, options, true));
  }

  /**
   * Watches the game of `queue` that filled last (quick match), as watch().
   * The game is chosen again on each reconnection.
   * @param {string} queue
   * @param {WatchOptions} [options]
   * @returns {Promise<WatchingMessage>}
   */
  watchQueue(queue, options = {}) {
    return /** @type {Promise<any>} */ (this.#startJoin(null, queue, options, true));
  }

  /**
   * @param {string | null} passphrase
   * @param {string | null} queue
   * @param {JoinOptions & WatchOptions} options
   * @param {boolean} spectate
   * @returns {Promise<JoinedMessage | ResumedMessage>}
   */
  #startJoin(passphrase, queue, options, spectate) {
    if (this.#lobby !== null) {
      return Promise.reject(new LobbyRelayError("already_joined", "this client is in a lobby: leave() first"));
    }
    // A spectator takes no resume token.
    const resume = !spectate && (options.resume ?? this.#options.resume);
    const host = options.host ?? this.#options.host;
    const delay = spectate && typeof options.delay === "number" ? options.delay : null;
    this.#lobby = { passphrase, queue, resume, host, spectate, delay };
    this.#closing = false;
    this.#fatal = false;
    this.#token = null;
    this.#received = 0;
    this.#spectators = null;
    if (spectate) {
      // Nothing kept to resume.
    } else if (resume && typeof options.token === "string") {
      this.#token = options.token;
      this.#received = options.received ?? 0;
    } else if (resume) {
      const kept = this.#loadKept();
      if (kept) {
        this.#token = kept.token;
        this.#received = kept.received;
      }
    }
    const joined = new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
    this.#attempt = 0;
    this.#request();
    return /** @type {Promise<JoinedMessage | ResumedMessage>} */ (joined);
  }

  /**
   * Sends a game message to the other members: an object with a string
   * `type` (sent as JSON), a string of such JSON (sent as it is), or bytes
   * (a binary frame). While reconnecting it waits in a queue of at most
   * `queueLimit` messages and goes out after the resume, in order; past
   * that bound send() throws `queue_full`. Throws `not_in_lobby` outside a
   * lobby and `invalid_message` for what the relay would refuse.
   * @param {Sendable} message
   */
  send(message) {
    const frame = encode(message);
    if (this.#lobby === null) throw new LobbyRelayError("not_in_lobby", "join a lobby first");
    if (this.#lobby.spectate) {
      throw new LobbyRelayError("spectating", "a spectator sends no game messages (the relay would refuse them)");
    }
    if (this.#inSeat && this.#isOpen()) {
      this.#write(frame);
      return;
    }
    if (this.#queue.length >= this.#options.queueLimit) {
      throw new LobbyRelayError(
        "queue_full",
        `${this.#queue.length} messages already wait for the connection (queueLimit)`,
      );
    }
    this.#queue.push(frame);
  }

  /**
   * Leaves the lobby: the seat is given up at once (the others get
   * `playerLeft`), queued messages are dropped, a kept token is forgotten.
   * A spectator stops watching. The connection stays open for another
   * join() or watch().
   */
  leave() {
    if (this.#lobby === null) return;
    if (this.#isOpen() && (this.#inSeat || this.#pending === "join" || this.#pending === "resume")) {
      this.#sendControl({ type: "leave" });
    }
    this.#forgetLobby(new LobbyRelayError("left", "leave() was called before the join completed"));
    this.#clearTimer();
    if (this.#ws === null) {
      if (this.#state !== "closed") this.#state = "idle";
    } else if (this.#state === "reconnecting") {
      // A connection attempt is under way: it goes on, outside a lobby.
      this.#state = this.#isOpen() ? "open" : "connecting";
    }
  }

  /**
   * Leaves the lobby (if any) and closes the connection for good (close
   * 1000); `closed` follows. A later join() opens a new connection.
   */
  close() {
    this.leave();
    this.#closing = true;
    this.#clearTimer();
    const socket = this.#ws;
    if (socket && socket.readyState < 2) {
      socket.close(1000, "client closed");
    } else {
      this.#ws = null;
      this.#stopped(1000, "client closed", true);
    }
  }

  /**
   * Opens a connection now, without joining: to ping() before a join (the
   * round trip, the node), or to learn early that the relay answers.
   * Resolves once the connection is open (at once if it is); rejects with
   * `not_connected` if it ends first. A later join() goes on it. Outside a
   * lobby a connection is not reconnected: if it drops, the client emits
   * `closed`, and the next open() or join() connects again.
   * @returns {Promise<void>}
   */
  open() {
    if (this.#isOpen()) return Promise.resolve();
    /** @type {Promise<void>} */
    const opened = new Promise((resolve, reject) => this.#openWaiters.push({ resolve, reject }));
    if (this.#ws === null && this.#timer === null) {
      this.#closing = false;
      this.#fatal = false;
      this.#open();
    }
    return opened;
  }

  /**
   * The protocol's ping: resolves to the round trip in milliseconds (and
   * learns the id of the node this connection is on: `node`). Rejects with
   * `not_connected` without an open connection, `ping_timeout` after
   * `pingTimeout` ms.
   * @returns {Promise<number>}
   */
  ping() {
    if (!this.#isOpen()) {
      return Promise.reject(new LobbyRelayError("not_connected", "no open connection to ping on"));
    }
    const t = ++this.#pingSeq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pings.delete(t);
        reject(new LobbyRelayError("ping_timeout", `no pong within ${this.#options.pingTimeout} ms`));
      }, this.#options.pingTimeout);
      this.#pings.set(t, { start: now(), resolve, reject, timer });
      this.#sendControl({ type: "ping", t, node: true });
    });
  }

  // -------------------------------------------------------------------------
  // The connection
  // -------------------------------------------------------------------------

  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === 1;
  }

  /** Sends the join or the resume now if the connection allows, else connects. */
  #request() {
    if (this.#lobby === null) return;
    if (!this.#isOpen()) {
      if (this.#ws === null && this.#timer === null) this.#open();
      return;
    }
    if (this.#authToken !== undefined && !this.#authed) {
      this.#pending = "auth";
      Promise.resolve(typeof this.#authToken === "function" ? this.#authToken() : this.#authToken).then(
        (token) => { if (this.#pending === "auth" && this.#isOpen()) this.#sendControl({ type: "auth", token }); },
        (e) => this.#fail(new LobbyRelayError("token_required", `authToken() failed: ${e}`)),
      );
      return;
    }
    if (this.#token !== null) {
      this.#pending = "resume";
      /** @type {Record<string, unknown>} */
      const resume = { type: "resume", token: this.#token, received: this.#received };
      if (this.#lobby.host) resume.host = true;
      this.#sendControl(resume);
    } else {
      this.#pending = "join";
      /** @type {Record<string, unknown>} */
      const join = { type: "join" };
      if (this.#lobby.queue !== null) join.queue = this.#lobby.queue;
      else join.passphrase = this.#lobby.passphrase;
      if (this.#lobby.spectate) join.spectate = true;
      if (this.#lobby.delay !== null) join.delay = this.#lobby.delay;
      if (this.#lobby.resume) join.resume = true;
      if (this.#lobby.host) join.host = true;
      if (this.#options.spectators) join.spectators = true;
      this.#sendControl(join);
    }
  }

  #open() {
    const url = this.#urls[this.#urlIndex % this.#urls.length];
    this.#urlIndex += 1;
    if (this.#state !== "reconnecting") this.#state = "connecting";
    this.#authed = false;
    /** @type {WebSocket} */
    let socket;
    try {
      socket = new this.#WebSocket(url);
    } catch (e) {
      // A malformed URL: nothing to retry.
      this.#fail(new LobbyRelayError("invalid_url", String(e)));
      return;
    }
    socket.binaryType = "arraybuffer";
    this.#ws = socket;
    this.#connectTimer = setTimeout(() => {
      if (socket !== this.#ws || socket.readyState === 1) return;
      this.#ws = null;
      try { socket.close(); } catch (_) { /* never opened */ }
      this.#dropped(1006, `no connection within ${this.#options.connectTimeout} ms`);
    }, this.#options.connectTimeout);
    socket.onopen = () => {
      if (socket !== this.#ws) return;
      this.#clearConnectTimer();
      if (this.#state !== "reconnecting") this.#state = "open";
      this.#settleOpen(null);
      this.#request();
    };
    socket.onmessage = (event) => {
      if (socket !== this.#ws) return;   // given up: as lost on the wire
      if (typeof event.data === "string") this.#onText(event.data);
      else this.#onBinary(event.data);
    };
    // A socket that fails fires `error`, then `close` (1006) in browsers;
    // Node 20's (undici) may fire `error` alone: the first of the two ends
    // the socket.
    socket.onerror = () => {
      if (socket !== this.#ws) return;
      this.#ws = null;
      this.#clearConnectTimer();
      try { socket.close(); } catch (_) { /* already failed */ }
      this.#dropped(1006, "the connection failed");
    };
    socket.onclose = (event) => {
      if (socket !== this.#ws) return;
      this.#ws = null;
      this.#clearConnectTimer();
      this.#dropped(event.code, event.reason);
    };
  }

  /**
   * The current socket ended (or never opened).
   * @param {number} code
   * @param {string} reason
   */
  #dropped(code, reason) {
    this.#authed = false;
    this.#rejectPings(new LobbyRelayError("not_connected", `the connection closed (${code})`));
    this.#settleOpen(new LobbyRelayError("not_connected", `the connection closed (${code})`));
    if (this.#closing || this.#fatal) {
      this.#stopped(code, reason, this.#closing);
      return;
    }
    if (code === CLOSE_TAKEN_OVER) {
      // Our seat went on with another connection of ours: stop.
      this.#forgetLobby(new LobbyRelayError("closed", "the seat was resumed on another connection"));
      this.#stopped(code, reason, false);
      return;
    }
    const hadSeat = this.#inSeat;
    this.#inSeat = false;
    this.#pending = null;
    if (this.#lobby === null) {
      // Not in a lobby: nothing to come back to.
      this.#stopped(code, reason, false);
      return;
    }
    if (this.#lobby.spectate) {
      // No resume for a spectator: it watches again (what was sent
      // meanwhile is not replayed to it).
      this.#received = 0;
      this.#retryLater(code, reason);
      return;
    }
    if (hadSeat && this.#token === null) {
      // Not resumable: the relay gave the seat up with the connection.
      this.#seatLost("disconnected", code);
      if (this.#lobby === null) {
        this.#stopped(code, reason, false);
        return;
      }
    }
    this.#retryLater(code, reason);
  }

  /**
   * Plans the next connection attempt: the first at once, the next after
   * the backoff (full jitter up to the capped exponential delay).
   * @param {number} code
   * @param {string} reason
   */
  #retryLater(code, reason) {
    let delay = this.#nextDelay();
    if (code === CLOSE_NODE_FULL) delay = Math.max(delay, NODE_FULL_DELAY_MS);
    this.#state = "reconnecting";
    this.#clearTimer();
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#request();
    }, delay);
    this.#emit("reconnecting", { attempt: this.#attempt, delay, code, reason });
  }

  /** The delay before attempt `#attempt` (counted from 1), then counts it. */
  #nextDelay() {
    const n = this.#attempt;
    this.#attempt += 1;
    if (n === 0) return 0;
    const { initialDelay, maxDelay, multiplier } = this.#backoff;
    const cap = Math.min(maxDelay, initialDelay * Math.pow(multiplier, n - 1));
    return Math.round(Math.random() * cap);
  }

  /**
   * The client stops: `closed`.
   * @param {number} code
   * @param {string} reason
   * @param {boolean} byClient
   */
  #stopped(code, reason, byClient) {
    this.#clearTimer();
    this.#settleOpen(new LobbyRelayError("closed", `the client stopped (${code})`));
    const wasClosed = this.#state === "closed";
    this.#state = "closed";
    if (!wasClosed) this.#emit("closed", { code, reason, byClient });
  }

  /**
   * A failure that ends the client (token refused, bad URL).
   * @param {LobbyRelayError} error
   */
  #fail(error) {
    this.#forgetLobby(error);
    this.#fatal = true;
    const socket = this.#ws;
    if (socket && socket.readyState < 2) socket.close(1000, error.code);
    else this.#stopped(1000, error.code, false);
  }

  // -------------------------------------------------------------------------
  // What the relay sends
  // -------------------------------------------------------------------------

  /** @param {string} text */
  #onText(text) {
    /** @type {any} */
    let m;
    try {
      m = JSON.parse(text);
    } catch (_) {
      m = null;   // the relay sends JSON only; game messages are JSON objects too
    }
    if (m === null || typeof m !== "object") {
      this.#emit("frame", { direction: "in", data: text, delivery: null });
      return;
    }
    const type = typeof m.type === "string" ? m.type : "";
    const counted = this.#inSeat && !NOT_DELIVERIES.has(type);
    if (counted) this.#count();
    this.#emit("frame", { direction: "in", data: text, delivery: counted ? this.#received : null });
    switch (type) {
      case "joined": return this.#onJoined(m);
      case "resumed": return this.#onResumed(m);
      case "watching": return this.#onWatching(m);
      case "spectators":
        if (!this.#inSeat || typeof m.count !== "number") return;
        this.#spectators = m.count;
        this.#emit("spectators", { type: "spectators", count: m.count });
        return;
      case "pong": return this.#onPong(m);
      case "error": return this.#onError(m);
      case "hostChanged":
        if (!this.#inSeat) return;
        this.#setHost(m);
        this.#emit("hostChanged", { type: "hostChanged", host: m.host, epoch: m.epoch });
        return;
      case "authenticated":
        this.#authed = true;
        this.#emit("authenticated", m);
        if (this.#pending === "auth") this.#request();
        return;
    }
    if (LOBBY_EVENTS.has(type)) {
      if (typeof m.players === "number") this.#players = m.players;
      if (type === "ready") this.#setHost(m);
      this.#emit(/** @type {"ready"} */ (type), m);
      return;
    }
    this.#emit("message", { kind: "json", type, data: m, text });
  }

  /** @param {ArrayBuffer | ArrayBufferView} data */
  #onBinary(data) {
    const counted = this.#inSeat;
    if (counted) this.#count();
    const bytes = data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    this.#emit("frame", { direction: "in", data: bytes, delivery: counted ? this.#received : null });
    this.#emit("message", { kind: "binary", data: bytes });
  }

  #count() {
    this.#received += 1;
    this.#keep();
  }

  /**
   * The seat is this socket's now (a `joined` or a `resumed`).
   * @param {JoinedMessage | ResumedMessage} m
   * @param {string | null} token
   */
  #takeSeat(m, token) {
    this.#pending = null;
    this.#attempt = 0;
    this.#inSeat = true;
    this.#state = "open";
    this.#seat = m.seat;
    this.#players = m.players;
    this.#capacity = m.capacity;
    this.#token = token;
    this.#host = null;
    this.#epoch = null;
    this.#setHost(m);
  }

  /**
   * The host as a message names it (`host` and `epoch`, where present).
   * @param {{ host?: unknown, epoch?: unknown }} m
   */
  #setHost(m) {
    if (typeof m.host === "number" && typeof m.epoch === "number") {
      this.#host = m.host;
      this.#epoch = m.epoch;
    }
  }

  /** @param {JoinedMessage} m */
  #onJoined(m) {
    // A join called off by leave() (sent after it: the relay gives the
    // seat up again).
    if (this.#lobby === null) return;
    this.#takeSeat(m, typeof m.resumeToken === "string" ? m.resumeToken : null);
    // (A resumed seat keeps the count it knew: resume does not ask again.)
    this.#spectators = typeof m.spectators === "number" ? m.spectators : null;
    this.#received = 0;
    this.#sent = 0;
    this.#unacked = [];
    this.#resendable = true;
    this.#keep();
    this.#emit("joined", m);
    this.#settle(m);
    this.#flushQueue();
  }

  /** @param {WatchingMessage} m */
  #onWatching(m) {
    if (this.#lobby === null || !this.#lobby.spectate) return;   // called off by leave()
    this.#pending = null;
    this.#attempt = 0;
    this.#inSeat = true;
    this.#state = "open";
    this.#seat = null;
    this.#players = m.players;
    this.#capacity = m.capacity;
    this.#token = null;
    this.#host = null;
    this.#epoch = null;
    this.#setHost(m);
    this.#spectators = typeof m.spectators === "number" ? m.spectators : null;
    this.#received = 0;
    this.#emit("watching", m);
    this.#settle(/** @type {any} */ (m));
  }

  /** @param {ResumedMessage} m */
  #onResumed(m) {
    if (this.#lobby === null) return;   // called off by leave(), as a join
    this.#takeSeat(m, m.resumeToken);
    this.#keep();
    // What we sent that the relay never took (swallowed by the dropped
    // connection) goes again first, then what waited meanwhile.
    // (Unless the relay dropped some of them since the join: then which
    // ones it took is unknown, and none goes again rather than twice.)
    const missing = this.#resendable ? Math.max(0, this.#sent - m.sent) : 0;
    this.#resendable = true;
    const again = this.#unacked.slice(Math.max(0, this.#unacked.length - missing));
    const lost = missing - again.length;
    this.#sent = m.sent;
    this.#unacked = this.#unacked.slice(0, this.#unacked.length - again.length);
    for (const frame of again) this.#write(frame);
    this.#emit("resumed", { ...m, resent: again.length });
    if (lost > 0) {
      this.#emit("error", {
        code: "resend_incomplete",
        message: `${lost} messages sent before the drop never reached the relay and were no longer kept (resendLimit)`,
        fatal: false,
        willRetry: false,
      });
    }
    this.#settle(m);
    this.#flushQueue();
  }

  /** @param {any} m */
  #onPong(m) {
    if (typeof m.node === "string") this.#node = m.node;
    const ping = typeof m.t === "number" ? this.#pings.get(m.t) : undefined;
    if (!ping) return;
    this.#pings.delete(m.t);
    clearTimeout(ping.timer);
    ping.resolve(now() - ping.start);
  }

  /** @param {{ code: string, message: string }} m */
  #onError(m) {
    const code = String(m.code);
    const message = String(m.message);
    const request = this.#pending;
    if (TOKEN_ERRORS.has(code)) {
      // The relay closes with 1008 next; the same token would be refused again.
      this.#emit("error", { code, message, fatal: true, willRetry: false });
      this.#fail(new LobbyRelayError(code, message));
      return;
    }
    // The seat cannot be taken back: `invalid_resume_token` (or a refusal
    // of a malformed resume, say a kept token tampered with).
    if (request === "resume" && !RETRIED.has(code)) {
      this.#pending = null;
      this.#emit("error", { code, message, fatal: false, willRetry: false });
      this.#seatLost("invalid_resume_token", null);
      return;
    }
    if ((request === "join" || request === "resume") && RETRIED.has(code)) {
      this.#pending = null;
      const delay = Math.max(this.#nextDelay(), 1);
      this.#emit("error", { code, message, fatal: false, willRetry: true, retryIn: delay });
      this.#clearTimer();
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.#request();
      }, delay);
      return;
    }
    if (request === "join" || request === "auth") {
      this.#pending = null;
      this.#emit("error", { code, message, fatal: false, willRetry: false });
      this.#forgetLobby(new LobbyRelayError(code, message));
      // (A join again after a drop, refused: the connection stays, outside a lobby.)
      if (this.#isOpen() && this.#state === "reconnecting") this.#state = "open";
      return;
    }
    // About a game message (or a seat_lost, after which the relay closes
    // with 4001 and the close decides). A game message refused as
    // `rate_limited` or `unavailable` was dropped: the count of what the
    // relay took no longer says which of ours it has.
    if (RETRIED.has(code)) {
      this.#resendable = false;
      this.#unacked = [];
    }
    this.#emit("error", { code, message, fatal: false, willRetry: false });
  }

  /**
   * The seat is gone (the grace period ran out, or the relay gave it up).
   * @param {"invalid_resume_token" | "disconnected"} reason
   * @param {number | null} code the close code, for a drop
   */
  #seatLost(reason, code) {
    const lobby = this.#lobby;
    // A join() that started from a kept token wanted the lobby, not the
    // seat: it joins again whatever rejoinOnSeatLost says.
    const joining = this.#waiters.length > 0;
    const rejoin = lobby !== null && (joining || this.#options.rejoinOnSeatLost);
    const dropped = this.#queue.length;
    const seat = this.#seat;
    this.#token = null;
    this.#inSeat = false;
    this.#seat = null;
    this.#host = null;
    this.#epoch = null;
    this.#received = 0;
    this.#sent = 0;
    this.#unacked = [];
    this.#queue = [];
    this.#forgetKept();
    this.#emit("seatLost", { reason, seat, code, dropped, rejoining: rejoin });
    if (rejoin) {
      if (this.#isOpen()) this.#request();
    } else {
      this.#forgetLobby(new LobbyRelayError("seat_lost", "the seat could not be taken back"));
      if (this.#isOpen()) this.#state = "open";
    }
  }

  // -------------------------------------------------------------------------
  // Helpers
  // -------------------------------------------------------------------------

  /** @param {Record<string, unknown>} message */
  #sendControl(message) {
    if (this.#ws === null) return;
    const text = JSON.stringify(message);
    this.#ws.send(text);
    this.#emit("frame", { direction: "out", data: text, delivery: null });
  }

  /** @param {Frame} frame */
  #write(frame) {
    /** @type {WebSocket} */ (this.#ws).send(frame);
    this.#emit("frame", { direction: "out", data: frame, delivery: null });
    this.#sent += 1;
    if (this.#token !== null) {
      this.#unacked.push(frame);
      if (this.#unacked.length > this.#options.resendLimit) this.#unacked.shift();
    }
  }

  #flushQueue() {
    const queue = this.#queue;
    this.#queue = [];
    for (const frame of queue) {
      if (!this.#inSeat || !this.#isOpen()) {
        this.#queue.push(frame);
        continue;
      }
      this.#write(frame);
    }
  }

  /** @param {JoinedMessage | ResumedMessage} m */
  #settle(m) {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.resolve(m);
  }

  /**
   * Gives the lobby up on this side: its seat, queue, token, kept state.
   * @param {Error} error what a pending join() rejects with
   */
  #forgetLobby(error) {
    const waiters = this.#waiters;
    this.#waiters = [];
    this.#lobby = null;
    this.#pending = null;
    this.#inSeat = false;
    this.#seat = null;
    this.#players = 0;
    this.#capacity = null;
    this.#host = null;
    this.#epoch = null;
    this.#spectators = null;
    this.#token = null;
    this.#received = 0;
    this.#sent = 0;
    this.#unacked = [];
    this.#queue = [];
    this.#forgetKept();
    for (const w of waiters) w.reject(error);
  }

  /**
   * Settles the open() calls: resolved (null) or rejected.
   * @param {Error | null} error
   */
  #settleOpen(error) {
    const waiters = this.#openWaiters;
    this.#openWaiters = [];
    for (const w of waiters) {
      if (error === null) w.resolve();
      else w.reject(error);
    }
  }

  /** @param {Error} error */
  #rejectPings(error) {
    for (const ping of this.#pings.values()) {
      clearTimeout(ping.timer);
      ping.reject(error);
    }
    this.#pings.clear();
  }

  #clearTimer() {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #clearConnectTimer() {
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
  }

  // options.storage: the resume state kept across a page reload (opt-in).

  #keep() {
    if (this.#storage === null || this.#lobby === null || this.#lobby.spectate || this.#token === null) return;
    const name = this.#lobby.queue !== null
      ? { queue: normalizePassphrase(this.#lobby.queue) }
      : { passphrase: normalizePassphrase(/** @type {string} */ (this.#lobby.passphrase)) };
    const kept = { ...name, token: this.#token, received: this.#received };
    try {
      this.#storage.setItem(this.#options.storageKey, JSON.stringify(kept));
    } catch (_) { /* storage full or refused: resume within this page still works */ }
  }

  /**
   * The kept state of the lobby being joined (the same passphrase, or the
   * same queue), if any.
   * @returns {{ token: string, received: number } | null}
   */
  #loadKept() {
    if (this.#storage === null || this.#lobby === null || this.#lobby.spectate) return null;
    const { passphrase, queue } = this.#lobby;
    try {
      const kept = JSON.parse(this.#storage.getItem(this.#options.storageKey) ?? "null");
      const same = queue !== null
        ? typeof kept?.queue === "string" && kept.queue === normalizePassphrase(queue)
        : typeof kept?.passphrase === "string" && kept.passphrase === normalizePassphrase(/** @type {string} */ (passphrase));
      if (kept && same
          && typeof kept.token === "string" && Number.isInteger(kept.received)) {
        return { token: kept.token, received: kept.received };
      }
    } catch (_) { /* unreadable: join anew */ }
    return null;
  }

  #forgetKept() {
    if (this.#storage === null) return;
    try {
      this.#storage.removeItem(this.#options.storageKey);
    } catch (_) { /* nothing to forget */ }
  }
}

/**
 * A game message as the frame that carries it; throws `invalid_message`
 * for what the relay would refuse (its `reserved_type`, `invalid_json`,
 * `invalid_message`), which would also spoil the count of sent messages.
 * @param {Sendable} message
 * @returns {Frame}
 */
function encode(message) {
  if (message instanceof ArrayBuffer) return new Uint8Array(message.slice(0));
  if (ArrayBuffer.isView(message)) {
    return new Uint8Array(message.buffer.slice(message.byteOffset, message.byteOffset + message.byteLength));
  }
  /** @type {unknown} */
  let object = message;
  let text = null;
  if (typeof message === "string") {
    text = message;
    try {
      object = JSON.parse(message);
    } catch (_) {
      throw new LobbyRelayError("invalid_message", "a text game message must be a JSON object");
    }
  }
  if (object === null || typeof object !== "object" || Array.isArray(object)) {
    throw new LobbyRelayError("invalid_message", "a game message is an object, a JSON object's text, or bytes");
  }
  const type = /** @type {{ type?: unknown }} */ (object).type;
  if (typeof type !== "string") {
    throw new LobbyRelayError("invalid_message", "a game message needs a string `type`");
  }
  if (RESERVED_TYPES.has(type)) {
    throw new LobbyRelayError("invalid_message", `\`${type}\` is a type of the protocol, not of a game message`);
  }
  return text ?? JSON.stringify(object);
}

function now() {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

// The class as declared in lobby-relay.d.ts: tsc fails here if the two part.
/** @type {typeof import("./lobby-relay").LobbyRelayClient} */
const declared = LobbyRelayClient;
void declared;
