// Unit tests of lobby-relay.js against a scripted fake WebSocket (no relay):
// what goes on the wire in which order, the backoff's bounds, the queue's
// bound, the resend after a resume. `node --test clients/js/test/unit.mjs`
// (tests/js_client.rs runs it; the behaviour against real relays is tested
// there).

import test from "node:test";
import assert from "node:assert/strict";
import { LobbyRelayClient, LobbyRelayError, normalizePassphrase } from "../lobby-relay.js";

/** A WebSocket stand-in: records what the client sends; the test plays the relay. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.binaryType = "blob";
    FakeSocket.all.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(typeof data === "string" ? JSON.parse(data) : { binary: [...data] });
  }
  close(code = 1000, reason = "") {
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  // The relay's side.
  open() { this.readyState = 1; this.onopen?.({}); }
  receive(message) { this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: "" }); }
  static last() { return FakeSocket.all[FakeSocket.all.length - 1]; }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** A client on a fake socket, joined to `p` (seat 1, resumable). */
async function joined(options = {}) {
  FakeSocket.all = [];
  const events = [];
  const client = new LobbyRelayClient(["ws://one/", "ws://two/"], { WebSocket: FakeSocket, ...options });
  for (const name of ["joined", "ready", "message", "error", "reconnecting", "resumed", "seatLost", "closed"]) {
    client.on(name, (e) => events.push([name, e]));
  }
  const join = client.join("Jump-Rocket");
  const socket = FakeSocket.last();
  socket.open();
  assert.deepEqual(socket.sent, [{ type: "join", passphrase: "Jump-Rocket", resume: true, host: true, spectators: true }]);
  socket.receive({ type: "joined", players: 1, capacity: 2, seat: 1, resumeToken: "tok-1" });
  assert.equal((await join).seat, 1);
  return { client, socket, events };
}

test("a drop is resumed on the next URL with the count, then the queue goes out in order", async () => {
  const { client, socket, events } = await joined();
  socket.receive({ type: "ready", players: 2 });
  socket.receive({ type: "move", n: 1 });
  client.send({ type: "mine", n: 1 });
  client.send({ type: "mine", n: 2 });
  socket.drop();
  assert.equal(client.state, "reconnecting");
  client.send({ type: "mine", n: 3 });   // queued
  assert.equal(client.queued, 1);
  await tick();
  const second = FakeSocket.last();
  assert.notEqual(second, socket);
  assert.equal(second.url, "ws://two/");
  second.open();
  assert.deepEqual(second.sent, [{ type: "resume", token: "tok-1", received: 2, host: true }]);
  // The relay took only the first of our two sends: the second goes again.
  second.receive({ type: "resumed", seat: 1, players: 2, capacity: 2, replayed: 1, sent: 1, resumeToken: "tok-2" });
  assert.deepEqual(second.sent.slice(1), [{ type: "mine", n: 2 }, { type: "mine", n: 3 }]);
  const names = events.map(([n]) => n);
  assert.deepEqual(names, ["joined", "ready", "message", "reconnecting", "resumed"]);
  assert.equal(events[3][1].attempt, 1);
  assert.equal(events[3][1].delay, 0);
  assert.equal(events[4][1].resent, 1);
  assert.equal(client.resumeState.token, "tok-2");
  client.close();
});

test("after the relay dropped a game message, nothing is sent twice on resume", async () => {
  const { client, socket, events } = await joined();
  client.send({ type: "mine", n: 1 });
  client.send({ type: "mine", n: 2 });
  socket.receive({ type: "error", code: "rate_limited", message: "too fast" });
  socket.drop();
  await tick();
  const second = FakeSocket.last();
  second.open();
  second.receive({ type: "resumed", seat: 1, players: 2, capacity: 2, replayed: 0, sent: 1, resumeToken: "tok-2" });
  assert.deepEqual(second.sent, [{ type: "resume", token: "tok-1", received: 0, host: true }]);
  assert.equal(events.find(([n]) => n === "resumed")[1].resent, 0);
  client.close();
});

test("the queue is bounded: past queueLimit send() throws queue_full", async () => {
  const { client, socket } = await joined({ queueLimit: 2 });
  socket.drop();
  client.send({ type: "a" });
  client.send(new Uint8Array([1, 2]));
  assert.throws(() => client.send({ type: "c" }), (e) => e instanceof LobbyRelayError && e.code === "queue_full");
  assert.equal(client.queued, 2);
  client.close();
});

test("backoff: full jitter under the capped exponential delay", async () => {
  const { client, socket, events } = await joined({ backoff: { initialDelay: 40, maxDelay: 100, multiplier: 2 } });
  socket.drop();
  for (let i = 0; i < 6; i++) {
    await tick(110);
    FakeSocket.last().drop();   // the attempt fails
  }
  const delays = events.filter(([n]) => n === "reconnecting").map(([, e]) => [e.attempt, e.delay]);
  assert.ok(delays.length >= 6, JSON.stringify(delays));
  assert.deepEqual(delays[0], [1, 0]);
  for (const [attempt, delay] of delays.slice(1)) {
    const cap = Math.min(100, 40 * 2 ** (attempt - 2));
    assert.ok(delay >= 0 && delay <= cap, `attempt ${attempt}: ${delay} > ${cap}`);
  }
  client.close();
});

test("unavailable and rate_limited answers to a join are tried again", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, backoff: { initialDelay: 10, maxDelay: 20 } });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const join = client.join("p-q-r", { resume: false });
  const socket = FakeSocket.last();
  socket.open();
  socket.receive({ type: "error", code: "unavailable", message: "redis" });
  await tick(30);
  socket.receive({ type: "error", code: "rate_limited", message: "slow down" });
  await tick(30);
  assert.deepEqual(socket.sent, Array(3).fill({ type: "join", passphrase: "p-q-r", host: true, spectators: true }));
  socket.receive({ type: "joined", players: 1, capacity: 2, seat: 1 });
  assert.equal((await join).seat, 1);
  assert.deepEqual(errors.map((e) => [e.code, e.willRetry]), [["unavailable", true], ["rate_limited", true]]);
  assert.equal(client.resumable, false);
  client.close();
});

test("a refused resume is a lost seat; rejoinOnSeatLost joins again", async () => {
  const { client, socket, events } = await joined({ rejoinOnSeatLost: true });
  socket.drop();
  await tick();
  const second = FakeSocket.last();
  second.open();
  second.receive({ type: "error", code: "invalid_resume_token", message: "gone" });
  assert.deepEqual(second.sent[1], { type: "join", passphrase: "Jump-Rocket", resume: true, host: true, spectators: true });
  const lost = events.find(([n]) => n === "seatLost")[1];
  assert.equal(lost.reason, "invalid_resume_token");
  assert.equal(lost.rejoining, true);
  client.close();
});

test("without resume a drop loses the seat; with rejoinOnSeatLost the client joins again", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, resume: false, rejoinOnSeatLost: true });
  const lost = [];
  client.on("seatLost", (e) => lost.push(e));
  const join = client.join("p-q-r");
  FakeSocket.last().open();
  FakeSocket.last().receive({ type: "joined", players: 1, capacity: 2, seat: 1 });
  await join;
  client.send({ type: "before" });
  FakeSocket.last().drop(1012);
  client.send({ type: "queued" });
  assert.deepEqual(lost, [{ reason: "disconnected", seat: 1, code: 1012, dropped: 0, rejoining: true }]);
  await tick();
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", passphrase: "p-q-r", host: true, spectators: true }]);
  FakeSocket.last().receive({ type: "joined", players: 2, capacity: 2, seat: 2 });
  assert.deepEqual(FakeSocket.last().sent.at(-1), { type: "queued" });
  client.close();
});

test("4002 (the seat went on another connection) stops the client", async () => {
  const { client, socket, events } = await joined();
  socket.drop(4002);
  await tick(10);
  assert.equal(client.state, "closed");
  assert.equal(FakeSocket.all.length, 1, "no new connection");
  assert.deepEqual(events.map(([n]) => n), ["joined", "closed"]);
});

test("a kept resume state resumes after a reload; leave forgets it", async () => {
  const items = new Map();
  const storage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v), removeItem: (k) => items.delete(k) };
  const { client, socket } = await joined({ storage });
  socket.receive({ type: "ready", players: 2 });
  // The page reloads: a new client, the same storage.
  FakeSocket.all = [];
  const again = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, storage });
  const join = again.join("jump-rocket");
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "resume", token: "tok-1", received: 1, host: true }]);
  FakeSocket.last().receive({ type: "resumed", seat: 1, players: 2, capacity: 2, replayed: 0, sent: 0, resumeToken: "tok-9" });
  assert.equal((await join).type, "resumed");
  again.leave();
  assert.equal(items.size, 0);
  assert.deepEqual(FakeSocket.last().sent.at(-1), { type: "leave" });
  void client;
});

test("what the relay would refuse is refused before sending", () => {
  assert.equal(normalizePassphrase("  Jump-ROCKET "), "jump-rocket");
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  assert.throws(() => client.send({ type: "move" }), (e) => e.code === "not_in_lobby");
  assert.throws(() => client.send({ type: "join" }), (e) => e.code === "invalid_message");
  // Node 20 without --experimental-websocket has no WebSocket: say so.
  if (typeof globalThis.WebSocket !== "function") {
    assert.throws(() => new LobbyRelayClient("ws://one/"), /experimental-websocket/);
  }
});

test("frame events: every frame in order, deliveries numbered", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  const frames = [];
  client.on("frame", (f) => frames.push([f.direction, typeof f.data === "string" ? f.data : [...f.data], f.delivery]));
  const join = client.join("p");
  const socket = FakeSocket.last();
  socket.open();
  socket.receive({ type: "joined", players: 1, capacity: 2, seat: 1, resumeToken: "t" });
  await join;
  socket.receive({ type: "ready", players: 2 });
  client.send({ type: "move" });
  socket.onmessage({ data: new Uint8Array([7, 8]).buffer });
  socket.receive("not json");
  assert.deepEqual(frames, [
    ["out", '{"type":"join","passphrase":"p","resume":true,"host":true,"spectators":true}', null],
    ["in", '{"type":"joined","players":1,"capacity":2,"seat":1,"resumeToken":"t"}', null],
    ["in", '{"type":"ready","players":2}', 1],
    ["out", '{"type":"move"}', null],
    ["in", [7, 8], 2],
    ["in", "not json", null],
  ]);
  assert.equal(client.received, 2);
  client.close();
});

test("open() connects without joining: ping before a join, join on that connection", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  const opened = client.open();
  assert.equal(client.state, "connecting");
  const socket = FakeSocket.last();
  socket.open();
  await opened;
  assert.equal(client.state, "open");
  const ping = client.ping();
  assert.equal(socket.sent[0].type, "ping");
  socket.receive({ type: "pong", t: socket.sent[0].t, node: "b" });
  assert.equal(typeof (await ping), "number");
  assert.equal(client.node, "b");
  const join = client.join("p");
  assert.equal(FakeSocket.all.length, 1, "the same connection");
  assert.deepEqual(socket.sent[1], { type: "join", passphrase: "p", resume: true, host: true, spectators: true });
  // leave() before the answer calls the join off: a late `joined` is ignored.
  client.leave();
  await assert.rejects(join, (e) => e.code === "left");
  assert.deepEqual(socket.sent[2], { type: "leave" });
  socket.receive({ type: "joined", players: 1, capacity: 2, seat: 1 });
  assert.equal(client.seat, null);
  assert.equal(client.inLobby, false);
  // Outside a lobby a drop is not reconnected.
  const closed = client.once("closed");
  socket.drop(1006);
  assert.equal((await closed).code, 1006);
  assert.equal(client.state, "closed");
  await tick(10);
  assert.equal(FakeSocket.all.length, 1, "no new connection");
  // open() again: a new connection; one that fails rejects.
  const again = client.open();
  FakeSocket.last().drop(1006);
  await assert.rejects(again, (e) => e.code === "not_connected");
});

test("leave() while reconnecting: the attempt under way goes on outside the lobby", async () => {
  const { client, socket } = await joined();
  socket.drop();
  assert.equal(client.state, "reconnecting");
  await tick();
  const attempt = FakeSocket.last();
  assert.notEqual(attempt, socket);
  client.leave();
  assert.equal(client.state, "connecting");
  attempt.open();
  assert.equal(client.state, "open");
  assert.deepEqual(attempt.sent, [], "no resume, no join");
  client.close();
});

test("host: asked for by default, tracked from joined, ready, hostChanged and resumed; hostChanged is no delivery", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  const changes = [];
  const frames = [];
  client.on("hostChanged", (e) => changes.push(e));
  client.on("frame", (f) => { if (f.direction === "in") frames.push([JSON.parse(f.data).type, f.delivery]); });
  const join = client.join("p");
  const socket = FakeSocket.last();
  socket.open();
  assert.deepEqual(socket.sent, [{ type: "join", passphrase: "p", resume: true, host: true, spectators: true }]);
  assert.equal(client.host, null);
  socket.receive({ type: "joined", players: 1, capacity: 3, seat: 2, host: 1, epoch: 1, resumeToken: "t1" });
  const m = await join;
  assert.deepEqual([m.host, m.epoch], [1, 1]);
  assert.deepEqual([client.host, client.epoch], [1, 1]);
  socket.receive({ type: "playerLeft", players: 1, seat: 1 });
  socket.receive({ type: "hostChanged", host: 2, epoch: 2 });
  assert.deepEqual(changes, [{ type: "hostChanged", host: 2, epoch: 2 }]);
  assert.deepEqual([client.host, client.epoch], [2, 2]);
  socket.receive({ type: "ready", players: 3, host: 2, epoch: 2 });
  // playerLeft and ready are deliveries; hostChanged is not.
  assert.equal(client.received, 2);
  assert.deepEqual(frames, [["joined", null], ["playerLeft", 1], ["hostChanged", null], ["ready", 2]]);
  // A hostChanged cannot be sent as a game message (the relay reserves it).
  assert.throws(() => client.send({ type: "hostChanged", host: 1 }), (e) => e.code === "invalid_message");
  // The resume asks again, and `resumed` names the host as it is now.
  socket.drop();
  await tick();
  const second = FakeSocket.last();
  second.open();
  assert.deepEqual(second.sent, [{ type: "resume", token: "t1", received: 2, host: true }]);
  second.receive({ type: "resumed", seat: 2, players: 3, capacity: 3, replayed: 0, sent: 0, host: 3, epoch: 3, resumeToken: "t2" });
  assert.deepEqual([client.host, client.epoch], [3, 3]);
  assert.equal(client.received, 2);
  client.leave();
  assert.deepEqual([client.host, client.epoch], [null, null]);
  client.close();
});

test("host: false sends no host field, in the join or the resume", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, host: false });
  const join = client.join("p");
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", passphrase: "p", resume: true, spectators: true }]);
  FakeSocket.last().receive({ type: "joined", players: 1, capacity: 2, seat: 1, resumeToken: "t" });
  await join;
  assert.equal(client.host, null);
  FakeSocket.last().drop();
  await tick();
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "resume", token: "t", received: 0 }]);
  client.close();
  // Per join, too.
  FakeSocket.all = [];
  const other = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  other.joinQueue("duel", { host: false, resume: false }).catch(() => {});
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", queue: "duel", spectators: true }]);
  other.close();
});

test("joinQueue: a queue join, resolved with joined (queue, host); a lost seat queues again", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, rejoinOnSeatLost: true });
  const lost = [];
  client.on("seatLost", (e) => lost.push(e));
  const join = client.joinQueue("duel");
  const socket = FakeSocket.last();
  socket.open();
  assert.deepEqual(socket.sent, [{ type: "join", queue: "duel", resume: true, host: true, spectators: true }]);
  socket.receive({ type: "joined", players: 2, capacity: 2, seat: 2, queue: "duel", host: 1, epoch: 1, resumeToken: "q1" });
  const m = await join;
  assert.deepEqual([m.seat, m.queue, m.host, m.epoch], [2, "duel", 1, 1]);
  assert.deepEqual(client.resumeState, { passphrase: "", queue: "duel", token: "q1", received: 0 });
  // already joined: a second joinQueue is refused.
  await assert.rejects(client.joinQueue("duel"), (e) => e.code === "already_joined");
  // The seat is lost (the resume refused): the client queues again, not a passphrase join.
  socket.drop();
  await tick();
  const second = FakeSocket.last();
  second.open();
  assert.deepEqual(second.sent, [{ type: "resume", token: "q1", received: 0, host: true }]);
  second.receive({ type: "error", code: "invalid_resume_token", message: "gone" });
  assert.equal(lost.length, 1);
  assert.equal(lost[0].rejoining, true);
  assert.deepEqual(second.sent[1], { type: "join", queue: "duel", resume: true, host: true, spectators: true });
  client.close();
});

test("joinQueue: invalid_queue and queue_full reject like other join refusals", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  const errors = [];
  client.on("error", (e) => errors.push([e.code, e.willRetry]));
  const bad = client.joinQueue("x");
  const socket = FakeSocket.last();
  socket.open();
  socket.receive({ type: "error", code: "invalid_queue", message: "3 to 64 characters" });
  await assert.rejects(bad, (e) => e instanceof LobbyRelayError && e.code === "invalid_queue");
  const full = client.joinQueue("duel");
  assert.deepEqual(socket.sent[1], { type: "join", queue: "duel", resume: true, host: true, spectators: true });
  socket.receive({ type: "error", code: "queue_full", message: "too many lobbies" });
  await assert.rejects(full, (e) => e instanceof LobbyRelayError && e.code === "queue_full");
  assert.deepEqual(errors, [["invalid_queue", false], ["queue_full", false]]);
  assert.equal(client.state, "open", "the connection stays open");
  // And the same connection can join afterwards.
  const ok = client.join("p");
  socket.receive({ type: "joined", players: 1, capacity: 2, seat: 1 });
  assert.equal((await ok).seat, 1);
  client.close();
});

test("joinQueue: a kept quick-match seat is resumed after a reload, a passphrase join does not take it", async () => {
  const items = new Map();
  const storage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v), removeItem: (k) => items.delete(k) };
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, storage });
  const join = client.joinQueue("Duel");
  FakeSocket.last().open();
  FakeSocket.last().receive({ type: "joined", players: 1, capacity: 2, seat: 1, queue: "duel", resumeToken: "q1" });
  await join;
  assert.deepEqual(JSON.parse(items.get("lobby-relay.resume")), { queue: "duel", token: "q1", received: 0 });
  // A page with the same storage joining a passphrase "duel" joins anew.
  FakeSocket.all = [];
  const other = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, storage });
  other.join("duel").catch(() => {});
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", passphrase: "duel", resume: true, host: true, spectators: true }]);
  other.leave();
  // The kept state was forgotten by that leave; keep it again and reload.
  items.set("lobby-relay.resume", JSON.stringify({ queue: "duel", token: "q1", received: 0 }));
  FakeSocket.all = [];
  const again = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, storage });
  again.joinQueue("duel").catch(() => {});
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "resume", token: "q1", received: 0, host: true }]);
  again.close();
  client.close();
});

test("watch: a spectate join (delay, host), resolved with watching; deliveries come as events, send() is refused locally", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket, storage: { getItem: () => { throw new Error("read"); }, setItem: () => { throw new Error("kept"); }, removeItem: () => {} } });
  const events = [];
  for (const name of ["watching", "spectators", "ready", "message", "hostChanged"]) client.on(name, (e) => events.push([name, e]));
  const frames = [];
  client.on("frame", (f) => frames.push([f.direction, f.delivery]));
  const watch = client.watch("Jump-Rocket", { delay: 30 });
  const socket = FakeSocket.last();
  socket.open();
  // No resume asked (a spectator has none), host and spectators by default.
  assert.deepEqual(socket.sent, [{ type: "join", passphrase: "Jump-Rocket", spectate: true, delay: 30, host: true, spectators: true }]);
  socket.receive({ type: "watching", players: 2, capacity: 2, spectators: 1, host: 1, epoch: 1, delay: 30 });
  const watching = await watch;
  assert.equal(watching.type, "watching");
  assert.equal(watching.spectators, 1);
  assert.equal(client.spectating, true);
  assert.equal(client.spectators, 1);
  assert.equal(client.seat, null);
  assert.equal(client.host, 1);
  assert.equal(client.resumable, false);
  assert.equal(client.resumeState, null);
  socket.receive({ type: "move", n: 1 });
  socket.receive({ type: "spectators", count: 2 });
  socket.receive({ type: "move", n: 2 });
  socket.receive({ type: "hostChanged", host: 2, epoch: 2 });
  assert.equal(client.spectators, 2);
  assert.equal(client.host, 2);
  assert.deepEqual(events.map(([n, e]) => n === "message" ? e.data.n : n),
    ["watching", 1, "spectators", 2, "hostChanged"]);
  assert.deepEqual(events[2][1], { type: "spectators", count: 2 });
  // watching and spectators are no deliveries.
  assert.deepEqual(frames.filter(([d]) => d === "in").map(([, n]) => n), [null, 1, null, 2, null]);
  // send() while watching: refused before anything goes out.
  const before = socket.sent.length;
  assert.throws(() => client.send({ type: "move" }), (e) => e instanceof LobbyRelayError && e.code === "spectating");
  assert.throws(() => client.send(new Uint8Array([1])), (e) => e.code === "spectating");
  assert.equal(socket.sent.length, before);
  // watching and spectators are reserved for games too.
  client.leave();
  assert.deepEqual(socket.sent.slice(before), [{ type: "leave" }]);
  assert.equal(client.spectating, false);
  assert.equal(client.spectators, null);
  assert.throws(() => client.send({ type: "watching" }), (e) => e.code === "invalid_message");
  assert.throws(() => client.send({ type: "spectators" }), (e) => e.code === "invalid_message");
  client.close();
});

test("watch: after a drop the spectator watches again (no resume), with the join's backoff", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient(["ws://one/", "ws://two/"], { WebSocket: FakeSocket, spectators: false, backoff: { initialDelay: 20, maxDelay: 40 } });
  const events = [];
  for (const name of ["watching", "reconnecting", "seatLost", "error"]) client.on(name, (e) => events.push([name, e]));
  const watch = client.watchQueue("duel", { host: false });
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", queue: "duel", spectate: true }]);
  FakeSocket.last().receive({ type: "watching", players: 2, capacity: 2, spectators: 1, queue: "duel" });
  assert.equal((await watch).queue, "duel");
  FakeSocket.last().receive({ type: "m", n: 1 });
  FakeSocket.last().drop();
  assert.equal(client.state, "reconnecting");
  assert.equal(client.spectating, true);
  assert.throws(() => client.send({ type: "m" }), (e) => e.code === "spectating");
  await tick();
  // The first attempt at once, on the next URL: a watch, not a resume.
  FakeSocket.last().open();
  assert.equal(FakeSocket.last().url, "ws://two/");
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", queue: "duel", spectate: true }]);
  // Then with the backoff: the attempt fails, the next waits.
  FakeSocket.last().drop();
  await tick(60);
  FakeSocket.last().open();
  assert.deepEqual(FakeSocket.last().sent, [{ type: "join", queue: "duel", spectate: true }]);
  FakeSocket.last().receive({ type: "watching", players: 2, capacity: 2, spectators: 1, queue: "duel" });
  assert.equal(client.state, "open");
  assert.equal(client.inLobby, true);
  assert.equal(client.received, 0);
  const reconnecting = events.filter(([n]) => n === "reconnecting").map(([, e]) => e);
  assert.deepEqual(reconnecting.map((e) => e.attempt), [1, 2]);
  assert.equal(reconnecting[0].delay, 0);
  assert.ok(reconnecting[1].delay <= 20, JSON.stringify(reconnecting));
  assert.deepEqual(events.map(([n]) => n), ["watching", "reconnecting", "reconnecting", "watching"]);
  client.close();
});

test("watch: nothing_to_watch and spectators_full reject; spectators counts from joined and events for a player", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  const watch = client.watch("nobody-here-yet");
  FakeSocket.last().open();
  FakeSocket.last().receive({ type: "error", code: "nothing_to_watch", message: "no game" });
  await assert.rejects(watch, (e) => e instanceof LobbyRelayError && e.code === "nothing_to_watch");
  assert.equal(client.spectating, false);
  const full = client.watch("p");
  FakeSocket.last().receive({ type: "error", code: "spectators_full", message: "full" });
  await assert.rejects(full, (e) => e.code === "spectators_full");
  // A player: the count from joined, then the events; no delivery.
  const counts = [];
  client.on("spectators", (e) => counts.push(e.count));
  const join = client.join("p", { resume: false });
  assert.deepEqual(FakeSocket.last().sent.at(-1), { type: "join", passphrase: "p", host: true, spectators: true });
  FakeSocket.last().receive({ type: "joined", players: 1, capacity: 2, seat: 1, spectators: 3 });
  await join;
  assert.equal(client.spectators, 3);
  FakeSocket.last().receive({ type: "spectators", count: 1 });
  FakeSocket.last().receive({ type: "ready", players: 2 });
  assert.deepEqual(counts, [1]);
  assert.equal(client.spectators, 1);
  assert.equal(client.received, 1, "ready counts, spectators does not");
  client.send({ type: "move" });
  assert.deepEqual(FakeSocket.last().sent.at(-1), { type: "move" });
  client.close();
});

test("watch: a watch again after a drop that is refused (the game is over) ends the watch, the connection open", async () => {
  FakeSocket.all = [];
  const client = new LobbyRelayClient("ws://one/", { WebSocket: FakeSocket });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const watch = client.watch("p");
  FakeSocket.last().open();
  FakeSocket.last().receive({ type: "watching", players: 2, capacity: 2, spectators: 1 });
  await watch;
  FakeSocket.last().drop();
  await tick();
  FakeSocket.last().open();
  FakeSocket.last().receive({ type: "error", code: "nothing_to_watch", message: "no game" });
  assert.deepEqual(errors.map((e) => [e.code, e.willRetry]), [["nothing_to_watch", false]]);
  assert.equal(client.spectating, false);
  assert.equal(client.inLobby, false);
  assert.equal(client.state, "open");
  assert.throws(() => client.send({ type: "m" }), (e) => e.code === "not_in_lobby");
  client.close();
});
