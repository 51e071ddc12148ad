// Compile-time checks of lobby-relay.d.ts (tsc -p clients/js): the API as
// a TypeScript game uses it. Not run.
import {
  LobbyRelayClient, LobbyRelayError, GameMessage, connect, normalizePassphrase,
} from "../lobby-relay.js";

export async function game(url: string): Promise<void> {
  const relay = new LobbyRelayClient([url, url], { resume: true, backoff: { maxDelay: 1000 } });
  relay.on("frame", (f) => {
    const size: number = typeof f.data === "string" ? f.data.length : f.data.byteLength;
    console.log(f.direction === "in" ? "<-" : "->", f.delivery ?? "", size);
  });
  await relay.open();
  console.log(await relay.ping(), relay.node);
  relay.on("ready", (e) => console.log(e.players));
  relay.on("message", (m: GameMessage) => {
    if (m.kind === "json") console.log(m.type, m.data.type, m.text.length);
    else console.log(m.data.byteLength);
  });
  relay.on("reconnecting", (e) => console.log(e.attempt, e.delay, e.code));
  relay.on("error", (e) => console.log(e.code, e.willRetry));
  const joined = await relay.join(normalizePassphrase(" Jump-Rocket "), { resume: true, host: true });
  if (joined.type === "resumed") console.log(joined.replayed);
  else console.log(joined.host, joined.epoch, joined.queue);
  relay.on("hostChanged", (e) => {
    const host: number = e.host;
    const epoch: number = e.epoch;
    console.log(host, epoch, relay.host, relay.epoch);
  });
  relay.send({ type: "move", x: 1 });
  relay.send('{"type":"move"}');
  relay.send(new Uint8Array([1, 2]));
  const rtt: number = await relay.ping();
  const away = await relay.once("playerAway");
  console.log(rtt, away.grace, relay.seat, relay.resumeState?.token);
  try {
    relay.leave();
  } catch (e) {
    if (e instanceof LobbyRelayError) console.log(e.code);
  }
  relay.close();
  (await connect(url, "jump-rocket", { storage: sessionStorage })).close();
  const matched = new LobbyRelayClient(url, { host: false });
  const seated = await matched.joinQueue("duel", { resume: true });
  const queue: string | undefined = seated.type === "joined" ? seated.queue : matched.resumeState?.queue;
  console.log(queue, matched.host === null);
  const spectator = new LobbyRelayClient(url, { spectators: true });
  spectator.on("spectators", (e) => {
    const count: number = e.count;
    console.log(count, spectator.spectators);
  });
  spectator.on("watching", (w) => console.log(w.players, w.spectators, w.delay));
  const watching = await spectator.watch("jump-rocket", { delay: 30, host: true });
  const watchers: number = watching.spectators;
  const latest = await spectator.watchQueue("duel");
  const spectating: boolean = spectator.spectating;
  console.log(watchers, latest.queue, spectating, joined.type === "joined" ? joined.spectators : 0);
}
