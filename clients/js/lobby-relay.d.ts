// Types of lobby-relay.js, the JavaScript client of lobby-relay
// (docs/clients.md). Checked with the module by `tsc -p clients/js`.

/** The wire protocol version this client speaks (docs/protocol.md). */
export const PROTOCOL_VERSION: 1;
/** This file's version. */
export const CLIENT_VERSION: string;

/** Where the resume state is kept across a page reload: `sessionStorage` fits. */
export interface RelayStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Exponential backoff with full jitter: attempt n (n >= 2) waits a random
 * time between 0 and min(maxDelay, initialDelay * multiplier^(n-2)) ms; the
 * first attempt after a drop goes at once. */
export interface BackoffOptions {
  /** Default 250 ms. */
  initialDelay?: number;
  /** The cap. Default 2000 ms. */
  maxDelay?: number;
  /** Default 2. */
  multiplier?: number;
}

export interface LobbyRelayOptions {
  /** A WebSocket constructor; default `globalThis.WebSocket` (browsers,
   * Node 22, Node 20 with `--experimental-websocket`). */
  WebSocket?: { new (url: string): WebSocket };
  /** A player token (JWT) for a relay with `--auth`: presented in an `auth`
   * message on each new connection, before join or resume. A function is
   * asked again on each connection (for a fresh token). */
  authToken?: string | (() => string | Promise<string>);
  /** Join with `"resume":true` (default true): a dropped connection then
   * takes its seat back, with every delivery it missed. */
  resume?: boolean;
  /** Join (and resume) with `"host":true` (default true): `joined`,
   * `ready` and `resumed` then name the lobby's host seat and its epoch,
   * and `hostChanged` tells when the host changes (docs/protocol.md,
   * "Host"). */
  host?: boolean;
  /** Join with `"spectators":true` (default true; watch() too): `joined`
   * (and `watching`) then carry the lobby's count of spectators, and the
   * `spectators` event tells when it changes (at most once a second).
   * Not asked again by a resume (the relay reads it in joins only). */
  spectators?: boolean;
  /** After the seat is lost (grace period over, or a drop without resume),
   * join the same passphrase (or queue: a quick match again) again, as a
   * new player. Default false. */
  rejoinOnSeatLost?: boolean;
  /** Most game messages waiting for the seat while reconnecting; past it
   * send() throws `queue_full`. Default 256. */
  queueLimit?: number;
  /** Most sent game messages kept to send again after a resume (those the
   * relay says it never took). Default 256. */
  resendLimit?: number;
  /** A connection attempt that has not opened after this many ms fails.
   * Default 10000. */
  connectTimeout?: number;
  /** ping() rejects after this many ms. Default 10000. */
  pingTimeout?: number;
  backoff?: BackoffOptions;
  /** Keeps the resume state (passphrase, token, count) here so that a page
   * reload can resume: opt-in, e.g. `sessionStorage`. */
  storage?: RelayStorage;
  /** The key in `storage`. Default "lobby-relay.resume". */
  storageKey?: string;
}

export interface JoinOptions {
  /** Overrides the client's `resume` option for this join. */
  resume?: boolean;
  /** Overrides the client's `host` option for this join (default true):
   * sent as `"host":true` in the join and in its resumes. */
  host?: boolean;
  /** A resume token kept by the game (`resumeState.token`): the client
   * first tries to take that seat back, and joins anew if it is gone. */
  token?: string;
  /** The delivery count that goes with `token` (`resumeState.received`). */
  received?: number;
}

export interface WatchOptions {
  /** Watch this many whole seconds behind the game (`"delay":N`; the relay
   * refuses more than its `--max-spectator-delay`, 120 s by default, with
   * `invalid_message`). */
  delay?: number;
  /** Overrides the client's `host` option: `watching` names the host and
   * its epoch, and `hostChanged` follows it. */
  host?: boolean;
}

export interface ResumeState {
  /** The lobby's passphrase; "" for a quick-match seat (see `queue`). */
  passphrase: string;
  /** The queue of a quick-match seat (`joinQueue(queue, { token, received })`). */
  queue?: string;
  token: string;
  received: number;
}

/** "idle" (never connected, or left while disconnected), "connecting",
 * "open", "reconnecting" (after a drop, until the seat is back), "closed". */
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Seat number (as a string) to user id, for signed-in members (`--auth`). */
export type Users = Record<string, string>;

export interface JoinedMessage {
  type: "joined";
  players: number;
  capacity: number;
  seat: number;
  /** The queue, for a quick match (joinQueue). */
  queue?: string;
  resumeToken?: string;
  users?: Users;
  /** The host's seat and epoch (joined with `host`). */
  host?: number;
  epoch?: number;
  /** The lobby's spectators (joined with `spectators`). */
  spectators?: number;
}
/** The answer to watch() and watchQueue(): the lobby as it is. */
export interface WatchingMessage {
  type: "watching";
  players: number;
  capacity: number;
  /** The lobby's spectators, this one included. */
  spectators: number;
  /** The queue, for watchQueue(). */
  queue?: string;
  users?: Users;
  /** The host's seat and epoch (watched with `host`). */
  host?: number;
  epoch?: number;
  /** The delay asked for, in seconds. */
  delay?: number;
}
/** The count of spectators changed (a player that asked, or a spectator).
 * Not a delivery (not counted for resume, never replayed). */
export interface SpectatorsEvent { type: "spectators"; count: number }
export interface ResumedMessage {
  type: "resumed";
  seat: number;
  players: number;
  capacity: number;
  replayed: number;
  sent: number;
  resumeToken: string;
  /** The host as it is now (resumed with `host`). */
  host?: number;
  epoch?: number;
}
export interface ReadyEvent { type: "ready"; players: number; users?: Users; host?: number; epoch?: number }
/** The host's seat was freed: `host` is the new host's seat; `epoch` grew.
 * Not a delivery (not counted for resume, never replayed). */
export interface HostChangedEvent { type: "hostChanged"; host: number; epoch: number }
export interface PlayerJoinedEvent { type: "playerJoined"; players: number; seat: number; users?: Users }
export interface PlayerLeftEvent { type: "playerLeft"; players: number; seat: number }
export interface PlayerAwayEvent { type: "playerAway"; seat: number; grace: number }
export interface PlayerBackEvent { type: "playerBack"; seat: number }

/** A game message from another member: a JSON object (text frame) or bytes
 * (binary frame). */
export type GameMessage =
  | { kind: "json"; type: string; data: { type: string; [field: string]: unknown }; text: string }
  | { kind: "binary"; data: Uint8Array };

export interface ErrorEvent {
  /** The protocol's code (`lobby_full`, `unavailable`, ...) or the
   * client's `resend_incomplete`. */
  code: string;
  /** For people; may change. */
  message: string;
  /** The client stops (a refused player token). */
  fatal: boolean;
  /** The join or resume is tried again (`unavailable`, `rate_limited`). */
  willRetry: boolean;
  /** With willRetry: in this many ms. */
  retryIn?: number;
}
export interface ReconnectingEvent {
  /** 1 for the first attempt after a drop. */
  attempt: number;
  /** ms until the attempt. */
  delay: number;
  /** The close code of the connection that ended (1006: it failed). */
  code: number;
  reason: string;
}
export interface ResumedEvent extends ResumedMessage {
  /** Game messages sent again: sent before the drop, never taken. */
  resent: number;
}
export interface SeatLostEvent {
  /** "invalid_resume_token": the relay no longer holds the seat (grace
   * period over, buffer full); "disconnected": the connection dropped and
   * the seat was not resumable. */
  reason: "invalid_resume_token" | "disconnected";
  seat: number | null;
  code: number | null;
  /** Queued game messages dropped with the seat. */
  dropped: number;
  /** A join of the same passphrase follows. */
  rejoining: boolean;
}
export interface ClosedEvent {
  code: number;
  reason: string;
  /** close() was called. */
  byClient: boolean;
}

/** A WebSocket frame as it went on the wire, for debugging tools (the
 * playground's raw frames panel): every frame the client sends or
 * receives, protocol messages included, in order. It carries secrets as
 * they are (the player token in `auth`, resume tokens in `join` answers,
 * `resume` and `resumed`): mask them before showing or logging. */
export interface FrameEvent {
  direction: "in" | "out";
  /** The frame's text, or its bytes (a binary frame; do not modify them). */
  data: string | Uint8Array;
  /** For a received frame that counts for resume (a delivery): its number
   * in this seat, 1, 2, ... (`received` after it); otherwise null. */
  delivery: number | null;
}

export interface LobbyRelayEvents {
  joined: JoinedMessage;
  ready: ReadyEvent;
  playerJoined: PlayerJoinedEvent;
  playerLeft: PlayerLeftEvent;
  playerAway: PlayerAwayEvent;
  playerBack: PlayerBackEvent;
  hostChanged: HostChangedEvent;
  /** The answer to watch() or watchQueue(), and to each watch again after a drop. */
  watching: WatchingMessage;
  spectators: SpectatorsEvent;
  message: GameMessage;
  error: ErrorEvent;
  reconnecting: ReconnectingEvent;
  resumed: ResumedEvent;
  seatLost: SeatLostEvent;
  closed: ClosedEvent;
  authenticated: { type: "authenticated"; user: string };
  frame: FrameEvent;
}

/** What send() takes: an object with a string `type`, its JSON text, or bytes. */
export type Sendable = { type: string; [field: string]: unknown } | string | ArrayBuffer | ArrayBufferView;

export class LobbyRelayError extends Error {
  constructor(code: string, message: string);
  /** The protocol's code (`queue_full` from joinQueue() is the relay's: too
   * many lobbies in that queue), or the client's: `already_joined`,
   * `queue_full` (from send()), `not_in_lobby`, `spectating` (send() by a
   * spectator),
   * `not_connected`, `ping_timeout`, `closed`, `left`, `invalid_message`,
   * `invalid_url`. */
  code: string;
  /** The text that came with the code. */
  text: string;
}

/** Trimmed and ASCII lower-cased, as the relay reads a passphrase. */
export function normalizePassphrase(passphrase: string): string;

/** `new LobbyRelayClient(url, options)`, then `join(passphrase, options)`. */
export function connect(
  url: string | string[],
  passphrase: string,
  options?: LobbyRelayOptions & JoinOptions,
): Promise<LobbyRelayClient>;

export class LobbyRelayClient {
  /** `url`: the relay's WebSocket URL, or a list tried in turn (one URL per
   * connection attempt). Nothing connects before join(). */
  constructor(url: string | string[], options?: LobbyRelayOptions);
  readonly state: ClientState;
  /** In the seat (or watching) on an open connection right now. */
  readonly inLobby: boolean;
  /** A spectator: from watch() or watchQueue() until leave(). */
  readonly spectating: boolean;
  /** The lobby's spectators, as last told (joined, watching, the
   * `spectators` event); null when unknown. */
  readonly spectators: number | null;
  readonly seat: number | null;
  readonly players: number;
  readonly capacity: number | null;
  /** The lobby's host seat, as last told (joined, ready, resumed,
   * hostChanged); null when unknown (not joined with `host`). */
  readonly host: number | null;
  /** The host's epoch, as last told; null when unknown. */
  readonly epoch: number | null;
  readonly node: string | null;
  readonly queued: number;
  readonly received: number;
  readonly resumable: boolean;
  readonly resumeState: ResumeState | null;
  on<K extends keyof LobbyRelayEvents>(name: K, listener: (event: LobbyRelayEvents[K]) => void): () => void;
  off<K extends keyof LobbyRelayEvents>(name: K, listener: (event: LobbyRelayEvents[K]) => void): void;
  once<K extends keyof LobbyRelayEvents>(name: K): Promise<LobbyRelayEvents[K]>;
  join(passphrase: string, options?: JoinOptions): Promise<JoinedMessage | ResumedMessage>;
  /** Quick match: a seat in the queue's open lobby or a new one. */
  joinQueue(queue: string, options?: JoinOptions): Promise<JoinedMessage | ResumedMessage>;
  /** Watches the lobby of `passphrase` as a spectator (no seat, no resume:
   * after a drop it watches again). send() then throws `spectating`. */
  watch(passphrase: string, options?: WatchOptions): Promise<WatchingMessage>;
  /** Watches the game of `queue` that filled last. */
  watchQueue(queue: string, options?: WatchOptions): Promise<WatchingMessage>;
  send(message: Sendable): void;
  leave(): void;
  close(): void;
  /** Opens a connection without joining (to ping() before a join);
   * resolves once open. Outside a lobby a dropped connection is not
   * reconnected: `closed` follows. */
  open(): Promise<void>;
  ping(): Promise<number>;
}
