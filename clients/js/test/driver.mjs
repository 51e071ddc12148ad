// One LobbyRelayClient in a Node process, driven by tests/js_client.rs:
// commands arrive on standard input, one JSON object a line; every event of
// the client and every command's outcome goes to standard output, one JSON
// object a line ({"ev": NAME, ...}). A test thus plays a game through the
// real module against real relay nodes, and kills nodes, cuts connections
// or stops Redis in between.
//
//   node --experimental-websocket clients/js/test/driver.mjs '<client JSON>'
//
// <client JSON>: {"urls": [...], "options": {...}} (options as the
// constructor takes them; "storage": true gives it an in-memory storage).
//
// Commands: {"op":"join","passphrase":P,"options":{...}},
// {"op":"joinQueue","queue":Q,"options":{...}}, {"op":"watch",
// "passphrase":P,"options":{...}}, {"op":"watchQueue","queue":Q,
// "options":{...}} (answered "watchOk" or "watchFailed"), {"op":"send",
// "json":{...}} | {"op":"send","text":"..."} | {"op":"send","hex":"00ff"},
// {"op":"sendNumbered","from":1,"to":100,"every":5} (game messages
// {"type":"n","n":i}), {"op":"ping"}, {"op":"leave"}, {"op":"close"},
// {"op":"state"}, {"op":"exit"}.

import { createInterface } from "node:readline";
import { LobbyRelayClient } from "../lobby-relay.js";

/** @param {Record<string, unknown>} event */
function out(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

/** @param {Uint8Array} bytes */
function hex(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** An in-memory stand-in for sessionStorage. */
function memoryStorage() {
  const items = new Map();
  return {
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => void items.set(k, String(v)),
    removeItem: (k) => void items.delete(k),
  };
}

const config = JSON.parse(process.argv[2] ?? "{}");
const options = { ...(config.options ?? {}) };
if (options.storage === true) options.storage = memoryStorage();
const client = new LobbyRelayClient(config.urls, options);

for (const name of ["joined", "ready", "playerJoined", "playerLeft", "playerAway", "playerBack",
  "hostChanged", "watching", "spectators", "error", "reconnecting", "resumed", "seatLost", "closed", "authenticated"]) {
  client.on(/** @type {any} */ (name), (event) => out({ ev: name, ...event }));
}
client.on("message", (m) => {
  if (m.kind === "json") out({ ev: "message", kind: "json", type: m.type, text: m.text });
  else out({ ev: "message", kind: "binary", hex: hex(m.data) });
});

/** @param {unknown} e */
function failure(e) {
  return e && typeof e === "object" && "code" in e ? { code: e.code, text: String(e.message) } : { code: "exception", text: String(e) };
}

/** @param {any} message */
function send(message) {
  try {
    client.send(message);
    return null;
  } catch (e) {
    return failure(e);
  }
}

const commands = {
  join: (c) => client.join(c.passphrase, c.options ?? {}).then(
    (m) => out({ ev: "joinOk", message: m }),
    (e) => out({ ev: "joinFailed", ...failure(e) }),
  ),
  joinQueue: (c) => client.joinQueue(c.queue, c.options ?? {}).then(
    (m) => out({ ev: "joinOk", message: m }),
    (e) => out({ ev: "joinFailed", ...failure(e) }),
  ),
  watch: (c) => client.watch(c.passphrase, c.options ?? {}).then(
    (m) => out({ ev: "watchOk", message: m }),
    (e) => out({ ev: "watchFailed", ...failure(e) }),
  ),
  watchQueue: (c) => client.watchQueue(c.queue, c.options ?? {}).then(
    (m) => out({ ev: "watchOk", message: m }),
    (e) => out({ ev: "watchFailed", ...failure(e) }),
  ),
  send: (c) => {
    const message = "json" in c ? c.json : "text" in c ? c.text : new Uint8Array(Buffer.from(c.hex, "hex"));
    const failed = send(message);
    out(failed ? { ev: "sendFailed", ...failed } : { ev: "sent" });
  },
  sendNumbered: (c) => {
    let n = c.from;
    const timer = setInterval(() => {
      const failed = send({ type: "n", n });
      if (failed) out({ ev: "sendFailed", n, ...failed });
      if (++n > c.to) {
        clearInterval(timer);
        out({ ev: "sentNumbered", to: c.to, queued: client.queued });
      }
    }, c.every);
  },
  ping: () => client.ping().then(
    (rtt) => out({ ev: "pingOk", rtt, node: client.node }),
    (e) => out({ ev: "pingFailed", ...failure(e) }),
  ),
  leave: () => { client.leave(); out({ ev: "left" }); },
  close: () => client.close(),
  state: () => out({
    ev: "state", state: client.state, seat: client.seat, players: client.players,
    inLobby: client.inLobby, queued: client.queued, received: client.received,
    resumable: client.resumable, node: client.node, host: client.host, epoch: client.epoch,
    spectating: client.spectating, spectators: client.spectators,
  }),
  exit: () => process.exit(0),
};

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "") return;
  const command = JSON.parse(line);
  const run = commands[command.op];
  if (!run) {
    process.stderr.write(`driver: unknown command ${line}\n`);
    process.exit(2);
  }
  run(command);
});
// The test ends: so does the driver.
process.stdin.on("end", () => process.exit(0));
out({ ev: "started" });
