//! The JavaScript client (`clients/js/lobby-relay.js`) in Node against real
//! relay nodes, in memory and on a real Redis.
//!
//! Each client under test is a Node process running
//! `clients/js/test/driver.mjs`: it holds one `LobbyRelayClient`, takes
//! commands on its standard input and reports every event of the client on
//! its standard output (one JSON object a line). The test plays the game,
//! and in between cuts connections (a [`TcpProxy`] it controls), kills
//! nodes, or stops Redis.
//!
//! - two clients join one passphrase, both get `joined` then `ready`; text,
//!   JSON and binary game messages cross both ways byte for byte; `ping`
//!   measures a round trip and names the node; `leave` gives the other
//!   `playerLeft`;
//! - the protocol's refusals reach the game with their codes (the join
//!   promise rejects; an `error` event), and so do the client's own
//!   (`not_in_lobby`, `invalid_message`); a refused player token stops the
//!   client; a good one signs it in;
//! - a connection cut from outside, and a node killed with SIGKILL: the
//!   client emits `reconnecting` then `resumed`, and the numbered messages
//!   both sides sent across the cut all arrive, once each, in order;
//! - the seat is lost after the grace period: `seatLost`, then (with
//!   `rejoinOnSeatLost`) a new `joined`;
//! - Redis down: the join gets `unavailable` and is tried again until Redis
//!   is back, then succeeds;
//! - quick match: two clients on two nodes call joinQueue at once and meet
//!   in one lobby; `invalid_queue` rejects; the host: when it leaves, the
//!   other gets `hostChanged` (epoch 2), not counted as a delivery (its
//!   resume after that is taken).
//! - spectators: a client on node b watches two players on node a and gets
//!   each one's messages, all, once, in order; the players get the
//!   `spectators` event (count 1), not counted as a delivery; the
//!   spectator's send() is refused by the client (`spectating`); a cut
//!   spectator watches again.
//!
//! And without a relay: `node --test clients/js/test/unit.mjs` (the client
//! against a scripted fake WebSocket), and `tsc -p clients/js` (the module
//! and its declarations agree).
//!
//! Needs `node` (20 or later; `--experimental-websocket` is passed where
//! its global WebSocket needs it) and, for the last test, `tsc` (Debian:
//! `node-typescript`); scripts/test.sh installs both.

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Node, RedisServer, Relays, TcpProxy, unique};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a test waits for any one event of a client.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// `node`, with `--experimental-websocket` where it has no global WebSocket
/// without it (Node 20).
fn node_command() -> Command {
    static NEEDS_FLAG: OnceLock<bool> = OnceLock::new();
    let needs_flag = *NEEDS_FLAG.get_or_init(|| {
        let probe = std::process::Command::new("node")
            .args([
                "-p",
                "[process.versions.node.split('.')[0], typeof WebSocket].join(' ')",
            ])
            .output();
        let output = match probe {
            Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`node` is not on PATH: the JavaScript client's tests run it. Run \
                 scripts/test.sh, which installs it, or `apt-get install -y nodejs`."
            ),
            Err(e) => panic!("cannot run `node`: {e}"),
        };
        let (major, websocket) = output.split_once(' ').unwrap_or((&output, ""));
        let major: u32 = major.parse().unwrap_or(0);
        assert!(
            major >= 20,
            "the JavaScript client's tests need Node 20 or later (a WebSocket); this is {output:?}"
        );
        websocket != "function"
    });
    let mut command = Command::new("node");
    if needs_flag {
        command.arg("--experimental-websocket");
    }
    command
}

/// One `LobbyRelayClient` in a Node process (`clients/js/test/driver.mjs`).
/// Every event it reports is kept, in order, in `seen`. Killed on drop; if
/// the test is failing then, what it saw and its standard error are
/// printed.
struct JsClient {
    name: String,
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl JsClient {
    /// Starts a client of `urls` with constructor `options`.
    async fn start(name: &str, urls: &[String], options: Value) -> JsClient {
        let config = json!({"urls": urls, "options": options});
        let mut child = node_command()
            .arg(js_dir().join("test/driver.mjs"))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start node: {e}"));
        let stdin = child.stdin.take().expect("stdin is piped");
        let lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut errors = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let keep = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut client = JsClient {
            name: name.to_owned(),
            _child: child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        };
        client.wait_for("started").await;
        client
    }

    /// Sends one command to the driver.
    async fn command(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: the driver is gone ({e})", self.name));
    }

    /// The next event, within `timeout`.
    async fn next_within(&mut self, timeout: Duration, waiting_for: &str) -> Value {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!(
                        "{}: not a JSON line from the driver ({e}): {line}",
                        self.name
                    )
                });
                self.seen.push(event.clone());
                event
            }
            Ok(Ok(None)) => panic!(
                "{}: the driver exited while waiting for {waiting_for}",
                self.name
            ),
            Ok(Err(e)) => panic!("{}: reading the driver: {e}", self.name),
            Err(_) => panic!(
                "{}: no {waiting_for} within {timeout:?}; saw {:?}",
                self.name,
                self.seen.iter().map(Value::to_string).collect::<Vec<_>>()
            ),
        }
    }

    /// Reads events until one named `ev`, and returns it.
    async fn wait_for(&mut self, ev: &str) -> Value {
        self.wait_for_within(ev, EVENT_TIMEOUT).await
    }

    async fn wait_for_within(&mut self, ev: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_within(left, &format!("event {ev:?}")).await;
            if event["ev"] == ev {
                return event;
            }
        }
    }

    /// The first event, seen before or read now, for which `test` holds.
    async fn wait_seen(&mut self, what: &str, test: impl Fn(&Value) -> bool) -> Value {
        if let Some(event) = self.seen.iter().find(|e| test(e)) {
            return event.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_within(left, what).await;
            if test(&event) {
                return event;
            }
        }
    }

    /// The first `ready`, seen before or read now (the second joiner's
    /// comes before its join() resolves).
    async fn wait_ready(&mut self) -> Value {
        self.wait_seen("ready", |e| e["ev"] == "ready").await
    }

    /// The `message` events received so far.
    fn messages(&self) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["ev"] == "message").collect()
    }

    /// The `n` of the numbered game messages (`{"type":"n","n":i}`) received
    /// so far, in order.
    fn numbers(&self) -> Vec<u64> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == "n")
            .map(|m| {
                let text = m["text"].as_str().expect("a text message");
                let value: Value = serde_json::from_str(text).expect("JSON");
                value["n"].as_u64().expect("a number")
            })
            .collect()
    }

    /// Reads events until a game message of type `kind` arrives.
    async fn wait_for_message(&mut self, kind: &str) -> Value {
        loop {
            let event = self.wait_for("message").await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// The names of the events seen so far, in order.
    fn names(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| e["ev"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Joins and returns the relay's `joined` (or `resumed`).
    async fn join(&mut self, passphrase: &str) -> Value {
        self.command(json!({"op": "join", "passphrase": passphrase}))
            .await;
        let ok = self.next_until_any(&["joinOk", "joinFailed"]).await;
        assert_eq!(ok["ev"], "joinOk", "{}: join failed: {ok}", self.name);
        ok["message"].clone()
    }

    /// Reads events until one named in `names`.
    async fn next_until_any(&mut self, names: &[&str]) -> Value {
        loop {
            let event = self
                .next_within(EVENT_TIMEOUT, &format!("any of {names:?}"))
                .await;
            if names.iter().any(|n| event["ev"] == *n) {
                return event;
            }
        }
    }
}

impl Drop for JsClient {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- JS client {}: events seen ----", self.name);
            for event in &self.seen {
                eprintln!("{event}");
            }
            eprintln!("---- JS client {}: standard error ----", self.name);
            for line in self.stderr.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                eprintln!("{line}");
            }
        }
    }
}

/// Two clients on `url_a` and `url_b` in lobby `pass`, both past `ready`.
async fn js_pair(url_a: &str, url_b: &str, pass: &str, options: Value) -> (JsClient, JsClient) {
    let mut a = JsClient::start("A", &[url_a.to_owned()], options.clone()).await;
    let mut b = JsClient::start("B", &[url_b.to_owned()], options).await;
    a.join(pass).await;
    b.join(pass).await;
    a.wait_ready().await;
    b.wait_ready().await;
    (a, b)
}

// ---------------------------------------------------------------------------
// The game's flow
// ---------------------------------------------------------------------------

both_flavours!(two_players_join_exchange_ping_and_leave => js_flow_redis, js_flow_memory);

/// Joined then ready on both sides; text (as written), JSON objects and
/// binary frames both ways, each exactly once; ping's round trip and node;
/// leave → playerLeft.
async fn two_players_join_exchange_ping_and_leave(relays: Relays) {
    let pass = format!("js-flow-{}", unique());
    let mut a = JsClient::start("A", &[relays.url_a()], json!({})).await;
    let mut b = JsClient::start("B", &[relays.url_b()], json!({})).await;
    let joined = a.join(&pass).await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["seat"], 1);
    assert!(
        joined["resumeToken"].is_string(),
        "resume is on by default: {joined}"
    );
    assert_eq!(a.names(), ["started", "joined", "joinOk"]);
    let joined = b.join(&pass).await;
    assert_eq!(
        (joined["seat"].clone(), joined["players"].clone()),
        (json!(2), json!(2))
    );
    for c in [&mut a, &mut b] {
        let ready = c.wait_ready().await;
        assert_eq!(ready["players"], 2, "{}", c.name);
    }

    // Text as written (spacing, escapes, non-ASCII), an object, bytes.
    let text = r#"{"type":"chat", "say" : "h\u00e9 ✓", "n":[1, 2.50]}"#;
    a.command(json!({"op": "send", "text": text})).await;
    a.command(json!({"op": "send", "json": {"type": "move", "x": 3, "y": -4}}))
        .await;
    b.command(json!({"op": "send", "hex": "00ff10807f"})).await;
    b.command(json!({"op": "send", "json": {"type": "shoot", "dir": "left"}}))
        .await;
    let chat = b.wait_for_message("chat").await;
    assert_eq!(chat["kind"], "json");
    assert_eq!(chat["text"], text, "relayed byte for byte");
    let moved = b.wait_for_message("move").await;
    assert_eq!(moved["text"], r#"{"type":"move","x":3,"y":-4}"#);
    let binary = a.wait_for("message").await;
    assert_eq!(
        binary,
        json!({"ev": "message", "kind": "binary", "hex": "00ff10807f"})
    );
    let shot = a.wait_for_message("shoot").await;
    // (serde_json writes the command's keys sorted; JSON.stringify keeps
    // the order it was given.)
    assert_eq!(shot["text"], r#"{"dir":"left","type":"shoot"}"#);

    // ping: a round trip in ms, and the node of the connection.
    for (c, node) in [
        (&mut a, "a"),
        (&mut b, if relays.is_redis() { "b" } else { "a" }),
    ] {
        c.command(json!({"op": "ping"})).await;
        let pong = c.wait_for("pingOk").await;
        let rtt = pong["rtt"].as_f64().expect("rtt is a number");
        assert!((0.0..5000.0).contains(&rtt), "{}: rtt {rtt}", c.name);
        assert_eq!(pong["node"], node, "{}", c.name);
    }

    a.command(json!({"op": "leave"})).await;
    let left = b.wait_for("playerLeft").await;
    assert_eq!(
        (left["seat"].clone(), left["players"].clone()),
        (json!(1), json!(1))
    );
    // Each message arrived once: A got two, B two.
    b.command(json!({"op": "state"})).await;
    let state = b.wait_for("state").await;
    assert_eq!(state["inLobby"], true);
    assert_eq!(a.messages().len(), 2, "A's messages");
    assert_eq!(b.messages().len(), 2, "B's messages");
    // B's deliveries: ready, chat, move, playerLeft (what a resume counts).
    assert_eq!(state["received"], 4, "{state}");
}

// ---------------------------------------------------------------------------
// Quick match and host
// ---------------------------------------------------------------------------

redis_only!(two_clients_quick_match_across_two_nodes => js_quick_match_redis);

/// A (node a) and B (node b) call joinQueue on one queue at once: both are
/// seated in one lobby (seats 1 and 2, `queue` in `joined`), both get
/// `ready`, and a game message crosses. A third client queueing next opens
/// a new lobby (seat 1). An invalid queue name is refused with its code.
async fn two_clients_quick_match_across_two_nodes(relays: Relays) {
    let queue = format!("js-duel-{}", unique());
    let mut a = JsClient::start("A", &[relays.url_a()], json!({})).await;
    let mut b = JsClient::start("B", &[relays.url_b()], json!({})).await;
    // Both commands go out before either answer is read.
    a.command(json!({"op": "joinQueue", "queue": queue})).await;
    b.command(json!({"op": "joinQueue", "queue": queue})).await;
    let mut seats = Vec::new();
    for c in [&mut a, &mut b] {
        let ok = c.next_until_any(&["joinOk", "joinFailed"]).await;
        assert_eq!(ok["ev"], "joinOk", "{}: {ok}", c.name);
        let joined = &ok["message"];
        assert_eq!(joined["type"], "joined", "{}: {joined}", c.name);
        assert_eq!(joined["queue"], queue.as_str(), "{}: {joined}", c.name);
        assert_eq!(joined["capacity"], 2, "{}: {joined}", c.name);
        // The client asks for the host by default; the first seated is host.
        assert_eq!(joined["host"], 1, "{}: {joined}", c.name);
        assert_eq!(joined["epoch"], 1, "{}: {joined}", c.name);
        seats.push(joined["seat"].as_u64().expect("a seat"));
    }
    seats.sort_unstable();
    assert_eq!(seats, [1, 2], "one lobby, both seats");
    for c in [&mut a, &mut b] {
        let ready = c.wait_ready().await;
        assert_eq!(ready["players"], 2, "{}: {ready}", c.name);
        assert_eq!(ready["host"], 1, "{}: {ready}", c.name);
    }
    a.command(json!({"op": "send", "json": {"type": "hello", "from": "a"}}))
        .await;
    let hello = b.wait_for_message("hello").await;
    assert_eq!(hello["text"], r#"{"from":"a","type":"hello"}"#);
    b.command(json!({"op": "send", "json": {"type": "hi", "from": "b"}}))
        .await;
    let hi = a.wait_for_message("hi").await;
    assert_eq!(hi["text"], r#"{"from":"b","type":"hi"}"#);

    // The queue's lobby is full: the next player gets a new one.
    let mut c = JsClient::start("C", &[relays.url_b()], json!({})).await;
    c.command(json!({"op": "joinQueue", "queue": queue})).await;
    let ok = c.next_until_any(&["joinOk", "joinFailed"]).await;
    assert_eq!(ok["message"]["seat"], 1, "a new lobby: {ok}");
    assert_eq!(ok["message"]["players"], 1, "a new lobby: {ok}");
    assert!(
        !a.names().iter().any(|n| n == "playerJoined") && a.messages().len() == 1,
        "A's lobby saw nothing of C: {:?}",
        a.names()
    );

    // Refused: the promise rejects with the relay's code; the connection
    // serves the next join.
    let mut d = JsClient::start("D", &[relays.url_a()], json!({})).await;
    d.command(json!({"op": "joinQueue", "queue": "x"})).await;
    let failed = d.next_until_any(&["joinOk", "joinFailed"]).await;
    assert_eq!(failed["ev"], "joinFailed", "{failed}");
    assert_eq!(failed["code"], "invalid_queue", "{failed}");
    d.command(json!({"op": "joinQueue", "queue": queue})).await;
    let ok = d.next_until_any(&["joinOk", "joinFailed"]).await;
    assert_eq!(
        (ok["ev"].clone(), ok["message"]["seat"].clone()),
        (json!("joinOk"), json!(2)),
        "D joins C's lobby: {ok}"
    );
    c.wait_ready().await;
}

both_flavours!(the_host_leaves_and_the_other_is_told_without_a_delivery => js_host_redis, js_host_memory);

/// A (seat 1) is host, epoch 1, as both clients say. A leaves: B gets
/// `playerLeft`, then `hostChanged` (host 2, epoch 2), and `client.host`
/// follows; B's delivery count grows by the `playerLeft` only. The count is
/// the one B's resume presents: B's connection is cut, and its resume is
/// taken (a count off by one would be refused), with the host as it is now.
async fn the_host_leaves_and_the_other_is_told_without_a_delivery(relays: Relays) {
    let proxy = TcpProxy::start(relays.addr_b()).await;
    let proxied = format!("ws://127.0.0.1:{}/", proxy.port());
    let pass = format!("js-host-{}", unique());
    let (mut a, mut b) = js_pair(&relays.url_a(), &proxied, &pass, json!({})).await;
    for c in [&mut a, &mut b] {
        c.command(json!({"op": "state"})).await;
        let state = c.wait_for("state").await;
        assert_eq!(
            (state["host"].clone(), state["epoch"].clone()),
            (json!(1), json!(1)),
            "{}: {state}",
            c.name
        );
    }
    b.command(json!({"op": "state"})).await;
    let before = b.wait_for("state").await["received"]
        .as_u64()
        .expect("a count");
    assert_eq!(before, 1, "B's deliveries: ready");

    a.command(json!({"op": "leave"})).await;
    let left = b.wait_for("playerLeft").await;
    assert_eq!(left["seat"], 1);
    let changed = b.wait_for("hostChanged").await;
    assert_eq!(
        changed,
        json!({"ev": "hostChanged", "type": "hostChanged", "host": 2, "epoch": 2})
    );
    b.command(json!({"op": "state"})).await;
    let state = b.wait_for("state").await;
    assert_eq!(
        (state["host"].clone(), state["epoch"].clone()),
        (json!(2), json!(2)),
        "{state}"
    );
    assert_eq!(
        state["received"],
        before + 1,
        "playerLeft counts, hostChanged does not: {state}"
    );

    proxy.cut();
    b.wait_for("reconnecting").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();
    let resumed = b.next_until_any(&["resumed", "seatLost", "joined"]).await;
    assert_eq!(resumed["ev"], "resumed", "the count was right: {resumed}");
    assert_eq!(resumed["replayed"], 0, "{resumed}");
    assert_eq!(
        (resumed["host"].clone(), resumed["epoch"].clone()),
        (json!(2), json!(2)),
        "{resumed}"
    );
    assert_eq!(
        b.seen.iter().filter(|e| e["ev"] == "hostChanged").count(),
        1,
        "hostChanged is never replayed"
    );
}

// ---------------------------------------------------------------------------
// Spectators
// ---------------------------------------------------------------------------

redis_only!(a_spectator_on_another_node_watches_two_players => js_watch_redis);

/// A and B play on node a; S watches from node b (through a proxy the test
/// cuts). S's watch() resolves with `watching` (2 players, 1 spectator);
/// A and B (who ask for the count by default) get the `spectators` event
/// with count 1, which their delivery count leaves out. What A and B send
/// reaches S, each side's messages all, once, in order, as the other player
/// got them. S's send() is refused by the client (`spectating`) and nothing
/// reaches the players. S's connection cut: it watches again (no resume)
/// and sees what follows.
async fn a_spectator_on_another_node_watches_two_players(relays: Relays) {
    const N: u64 = 40;
    let proxy = TcpProxy::start(relays.addr_b()).await;
    let proxied = format!("ws://127.0.0.1:{}/", proxy.port());
    let pass = format!("js-watch-{}", unique());
    let (mut a, mut b) = js_pair(&relays.url_a(), &relays.url_a(), &pass, json!({})).await;
    let mut s = JsClient::start("S", &[proxied], json!({})).await;
    s.command(json!({"op": "watch", "passphrase": pass})).await;
    let ok = s.next_until_any(&["watchOk", "watchFailed"]).await;
    assert_eq!(ok["ev"], "watchOk", "{ok}");
    assert_eq!(ok["message"]["type"], "watching", "{ok}");
    assert_eq!(ok["message"]["players"], 2, "{ok}");
    assert_eq!(ok["message"]["spectators"], 1, "{ok}");
    for c in [&mut a, &mut b] {
        let told = c.wait_for("spectators").await;
        assert_eq!(
            told,
            json!({"ev": "spectators", "type": "spectators", "count": 1}),
            "{}",
            c.name
        );
        c.command(json!({"op": "state"})).await;
        let state = c.wait_for("state").await;
        assert_eq!(state["spectators"], 1, "{}: {state}", c.name);
        assert_eq!(state["received"], 1, "{}: ready only: {state}", c.name);
    }

    // Both play: A sends n 1..=N, B sends m 1..=N, at once.
    a.command(json!({"op": "sendNumbered", "from": 1, "to": N, "every": 5}))
        .await;
    for i in 1..=N {
        b.command(json!({"op": "send", "json": {"type": "m", "n": i}}))
            .await;
    }
    a.wait_seen("sentNumbered", |e| e["ev"] == "sentNumbered")
        .await;
    a.command(json!({"op": "send", "json": {"type": "end"}}))
        .await;
    b.wait_for_message("end").await;
    s.wait_seen("A's end", |e| e["ev"] == "message" && e["type"] == "end")
        .await;
    let of = |c: &JsClient, kind: &str| -> Vec<u64> {
        c.messages()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .map(|m| {
                let v: Value =
                    serde_json::from_str(m["text"].as_str().expect("text")).expect("JSON");
                v["n"].as_u64().expect("n")
            })
            .collect()
    };
    let want: Vec<u64> = (1..=N).collect();
    assert_eq!(of(&s, "n"), want, "S got A's messages once each, in order");
    assert_eq!(of(&s, "m"), want, "S got B's messages once each, in order");
    assert_eq!(of(&b, "n"), want, "B got A's messages");
    assert_eq!(of(&a, "m"), want, "A got B's messages");
    // (No message of S's own, no `spectators` as a message: A's, B's, end.)
    assert_eq!(
        s.messages().len() as u64,
        2 * N + 1,
        "nothing else reached S"
    );

    // The spectator's send() is refused by the client: nothing goes out.
    s.command(json!({"op": "send", "json": {"type": "cheat"}}))
        .await;
    let refused = s.next_until_any(&["sent", "sendFailed"]).await;
    assert_eq!(refused["ev"], "sendFailed", "{refused}");
    assert_eq!(refused["code"], "spectating", "{refused}");
    s.command(json!({"op": "state"})).await;
    let state = s.wait_for("state").await;
    assert_eq!(
        (
            state["spectating"].clone(),
            state["seat"].clone(),
            state["resumable"].clone()
        ),
        (json!(true), Value::Null, json!(false)),
        "{state}"
    );

    // A cut: S watches again (no resume), and sees what comes next.
    proxy.cut();
    s.wait_for("reconnecting").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    let again = s
        .next_until_any(&["watching", "seatLost", "resumed", "error"])
        .await;
    assert_eq!(again["ev"], "watching", "{again}");
    assert_eq!(again["players"], 2, "{again}");
    b.command(json!({"op": "send", "json": {"type": "after", "n": 1}}))
        .await;
    let after = s.wait_for_message("after").await;
    assert_eq!(after["text"], r#"{"n":1,"type":"after"}"#);
    assert!(
        !a.messages()
            .iter()
            .chain(b.messages().iter())
            .any(|m| m["type"] == "cheat"),
        "nothing of S reached the players"
    );
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

/// The relay's refusals reject join() with their code and emit `error`;
/// the client's own checks throw before anything is sent; a connection
/// refused a join serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_game_with_their_codes() {
    let relays = Relays::memory();
    let pass = format!("js-errors-{}", unique());
    let url = relays.url_a();
    let mut c = JsClient::start("C", std::slice::from_ref(&url), json!({})).await;

    c.command(json!({"op": "send", "json": {"type": "move"}}))
        .await;
    let failed = c.wait_for("sendFailed").await;
    assert_eq!(failed["code"], "not_in_lobby", "{failed}");

    c.command(json!({"op": "join", "passphrase": "x"})).await;
    let error = c.wait_for("error").await;
    assert_eq!(error["code"], "invalid_passphrase");
    assert_eq!(error["willRetry"], false);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    let failed = c.wait_for("joinFailed").await;
    assert_eq!(failed["code"], "invalid_passphrase");

    let (mut a, _b) = js_pair(&url, &url, &pass, json!({})).await;
    c.command(json!({"op": "join", "passphrase": pass})).await;
    let failed = c.next_until_any(&["joinFailed", "joinOk"]).await;
    assert_eq!(failed["code"], "lobby_full", "{failed}");
    // The same connection joins another lobby.
    let joined = c.join(&format!("{pass}-other")).await;
    assert_eq!(joined["seat"], 1);

    // What the relay would refuse is refused by the client first.
    for bad in [
        json!({"op": "send", "json": {"type": "ready"}}),
        json!({"op": "send", "json": {"x": 1}}),
        json!({"op": "send", "text": "not json"}),
        json!({"op": "send", "text": "[1,2]"}),
    ] {
        a.command(bad.clone()).await;
        let failed = a.wait_for("sendFailed").await;
        assert_eq!(failed["code"], "invalid_message", "{bad}: {failed}");
    }
    a.command(json!({"op": "join", "passphrase": "another-one"}))
        .await;
    let failed = a.wait_for("joinFailed").await;
    assert_eq!(failed["code"], "already_joined");
    assert!(
        !a.names().iter().any(|n| n == "error"),
        "nothing reached the relay: {:?}",
        a.names()
    );
}

/// With `--auth required`: a client without a token gets `token_required`
/// (join() rejects, a fatal `error`, then `closed`, no reconnecting); one
/// with a token is signed in before it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_tokens_are_presented_and_refusals_stop_the_client() {
    const SECRET: &str = "js-client-test-hs256-secret-of-32-bytes";
    let relays = Relays::memory_with(&["--auth", "required", "--auth-hs256-secret", SECRET]);
    let url = relays.url_a();
    let pass = format!("js-auth-{}", unique());
    let mut anonymous = JsClient::start("D", std::slice::from_ref(&url), json!({})).await;
    anonymous
        .command(json!({"op": "join", "passphrase": pass}))
        .await;
    let error = anonymous.wait_for("error").await;
    assert_eq!(
        (error["code"].clone(), error["fatal"].clone()),
        (json!("token_required"), json!(true))
    );
    let failed = anonymous.wait_for("joinFailed").await;
    assert_eq!(failed["code"], "token_required");
    let closed = anonymous.wait_for("closed").await;
    assert_eq!(closed["byClient"], false, "{closed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    anonymous.command(json!({"op": "state"})).await;
    let state = anonymous.wait_for("state").await;
    assert_eq!(state["state"], "closed");
    assert!(!anonymous.names().iter().any(|n| n == "reconnecting"));

    let token = support::hs256_token(SECRET, "eve");
    let mut eve = JsClient::start("E", &[url], json!({"authToken": token})).await;
    let joined = eve.join(&pass).await;
    assert_eq!(joined["users"], json!({"1": "eve"}));
    let names = eve.names();
    let signed_in = names.iter().position(|n| n == "authenticated");
    let joined_at = names.iter().position(|n| n == "joined");
    assert!(signed_in.is_some() && signed_in < joined_at, "{names:?}");
}

// ---------------------------------------------------------------------------
// Reconnection and resume
// ---------------------------------------------------------------------------

/// How many numbered messages each side sends across a cut.
const NUMBERED: u64 = 150;

/// Both clients send `NUMBERED` numbered messages, one every 10 ms, then
/// `{"type":"end"}`.
async fn start_numbered(a: &mut JsClient, b: &mut JsClient) {
    for c in [a, b] {
        c.command(json!({"op": "sendNumbered", "from": 1, "to": NUMBERED, "every": 10}))
            .await;
    }
}

/// Waits until both have sent everything and received each other's `end`;
/// then each must have received 1..=NUMBERED, once each, in order.
async fn assert_all_numbers_once_in_order(a: &mut JsClient, b: &mut JsClient) {
    for c in [&mut *a, &mut *b] {
        c.wait_seen("sentNumbered", |e| e["ev"] == "sentNumbered")
            .await;
        c.command(json!({"op": "send", "json": {"type": "end"}}))
            .await;
    }
    for c in [a, b] {
        c.wait_seen("the other's end", |e| {
            e["ev"] == "message" && e["type"] == "end"
        })
        .await;
        assert!(
            !c.names().iter().any(|n| n == "sendFailed"),
            "{}: every send was taken (sent or queued)",
            c.name
        );
        let numbers = c.numbers();
        let want: Vec<u64> = (1..=NUMBERED).collect();
        assert!(
            numbers == want,
            "{}: got {} messages, want 1..={NUMBERED} once each in order: {numbers:?}",
            c.name,
            numbers.len()
        );
    }
}

both_flavours!(a_cut_connection_is_resumed_with_nothing_lost_or_twice => js_cut_redis, js_cut_memory);

/// A's connection goes through a proxy the test cuts (every connection
/// closed, new ones refused) for half a second in mid-game, while both
/// send: A emits `reconnecting` (attempts failing meanwhile) then
/// `resumed`; B sees `playerAway` then `playerBack`; every message arrives
/// once, in order, both ways.
async fn a_cut_connection_is_resumed_with_nothing_lost_or_twice(relays: Relays) {
    let proxy = TcpProxy::start(relays.addr_a()).await;
    let proxied = format!("ws://127.0.0.1:{}/", proxy.port());
    let pass = format!("js-cut-{}", unique());
    let (mut a, mut b) = js_pair(&proxied, &relays.url_b(), &pass, json!({})).await;
    start_numbered(&mut a, &mut b).await;
    while a.numbers().len() < 30 {
        a.wait_for("message").await;
    }
    proxy.cut();
    let reconnecting = a.wait_for("reconnecting").await;
    assert_eq!(reconnecting["attempt"], 1, "{reconnecting}");
    b.wait_for("playerAway").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let resumed = a.wait_for("resumed").await;
    assert_eq!(resumed["seat"], 1, "{resumed}");
    assert!(
        resumed["replayed"].as_u64().is_some_and(|n| n > 0),
        "{resumed}"
    );
    b.wait_for("playerBack").await;
    assert_all_numbers_once_in_order(&mut a, &mut b).await;
    println!(
        "js cut ({}): {} reconnect attempts, {} replayed, {} resent",
        relays.flavour(),
        a.names().iter().filter(|n| *n == "reconnecting").count(),
        resumed["replayed"],
        resumed["resent"]
    );
}

/// kill -9 of the node A is on, with node b behind the same Redis: A's URL
/// list leads its next attempt to node b, where it resumes; every message
/// arrives once, in order, both ways (what A sent that node a never took
/// goes again: `resent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_left_for_the_other_with_nothing_lost_or_twice() {
    let mut relays = Relays::redis();
    let logs = relays.logs();
    let test = async {
        let pass = format!("js-kill-{}", unique());
        let urls = [relays.url_a(), relays.url_b()];
        let mut a = JsClient::start("A", &urls, json!({})).await;
        let mut b = JsClient::start("B", &[relays.url_b()], json!({})).await;
        a.join(&pass).await;
        b.join(&pass).await;
        a.wait_ready().await;
        b.wait_ready().await;
        start_numbered(&mut a, &mut b).await;
        while a.numbers().len() < 30 {
            a.wait_for("message").await;
        }
        relays.node_a().kill9();
        a.wait_for("reconnecting").await;
        let resumed = a.wait_for("resumed").await;
        a.command(json!({"op": "ping"})).await;
        assert_eq!(a.wait_for("pingOk").await["node"], "b", "resumed on node b");
        assert_all_numbers_once_in_order(&mut a, &mut b).await;
        println!(
            "js kill -9: {} replayed, {} resent",
            resumed["replayed"], resumed["resent"]
        );
    };
    if tokio::time::timeout(support::TEST_TIMEOUT, test)
        .await
        .is_err()
    {
        for log in &logs {
            log.print();
        }
        panic!("the test did not finish within {:?}", support::TEST_TIMEOUT);
    }
}

both_flavours!(the_seat_is_lost_after_the_grace_and_joined_again => js_seat_lost_redis, js_seat_lost_memory, args: ["--resume-grace", "1s"]);

/// A is cut off for longer than the relay's grace period (1 s here): B gets
/// `playerAway`, then `playerLeft`; when A gets through, its resume is
/// refused: `seatLost` (rejoining, with `rejoinOnSeatLost`), then a new
/// `joined`, and both get `ready` again.
async fn the_seat_is_lost_after_the_grace_and_joined_again(relays: Relays) {
    let proxy = TcpProxy::start(relays.addr_a()).await;
    let proxied = format!("ws://127.0.0.1:{}/", proxy.port());
    let pass = format!("js-grace-{}", unique());
    let (mut a, mut b) = js_pair(
        &proxied,
        &relays.url_b(),
        &pass,
        json!({"rejoinOnSeatLost": true}),
    )
    .await;
    proxy.cut();
    a.wait_for("reconnecting").await;
    b.wait_for("playerAway").await;
    let left = b
        .wait_for_within("playerLeft", Duration::from_secs(5))
        .await;
    assert_eq!(left["seat"], 1);
    proxy.restore();
    let lost = a.wait_for("seatLost").await;
    assert_eq!(lost["reason"], "invalid_resume_token", "{lost}");
    assert_eq!(lost["rejoining"], true, "{lost}");
    let joined = a.wait_for("joined").await;
    assert_eq!(joined["seat"], 1, "the seat was free again");
    a.wait_for("ready").await;
    b.wait_for("ready").await;
    assert!(!a.names().iter().any(|n| n == "resumed"), "{:?}", a.names());
}

/// Redis is down: the node answers the join `unavailable`, which the client
/// reports (`error`, willRetry) and tries again with backoff; once Redis is
/// back, the join succeeds without the game doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_retried_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let node = Node::start("a", &["--redis-url", &redis.url()]);
    let logs = [node.logs()];
    let test = async {
        redis.kill();
        let mut c = JsClient::start("C", &[node.url()], json!({})).await;
        c.command(json!({"op": "join", "passphrase": format!("js-down-{}", unique())}))
            .await;
        let error = c.wait_for("error").await;
        assert_eq!(error["code"], "unavailable", "{error}");
        assert_eq!(error["willRetry"], true, "{error}");
        assert!(
            error["retryIn"].as_u64().is_some_and(|ms| ms >= 1),
            "{error}"
        );
        // Another refusal or two while Redis stays down, then Redis is back.
        c.wait_for("error").await;
        let redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .expect("restart redis");
        let ok = c.wait_for_within("joinOk", Duration::from_secs(20)).await;
        assert_eq!(ok["message"]["seat"], 1, "{ok}");
        assert!(!c.names().iter().any(|n| n == "joinFailed"));
        let retries = c
            .seen
            .iter()
            .filter(|e| e["ev"] == "error" && e["code"] == "unavailable")
            .count();
        println!("js unavailable: joined after {retries} `unavailable` answers");
        redis
    };
    match tokio::time::timeout(support::TEST_TIMEOUT, test).await {
        Ok(_redis) => {}
        Err(_) => {
            for log in &logs {
                log.print();
            }
            panic!("the test did not finish within {:?}", support::TEST_TIMEOUT);
        }
    }
}

// ---------------------------------------------------------------------------
// Without a relay: unit tests and types
// ---------------------------------------------------------------------------

/// `node --test clients/js/test/unit.mjs`: the client against a scripted
/// fake WebSocket (what it sends in which order, the backoff's bounds, the
/// queue's bound, the resend after a resume, the kept resume state).
#[test]
fn the_client_passes_its_unit_tests() {
    let output = std::process::Command::new("node")
        .arg("--test")
        .arg(js_dir().join("test/unit.mjs"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node --test` (is node on PATH?): {e}"));
    assert!(
        output.status.success(),
        "node --test clients/js/test/unit.mjs failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `tsc -p clients/js`: the module type-checks (strict, JSDoc), and its
/// class matches the declarations in lobby-relay.d.ts that TypeScript games
/// compile against.
#[test]
fn the_module_and_its_declarations_type_check() {
    let output = match std::process::Command::new("tsc")
        .arg("-p")
        .arg(js_dir())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`tsc` is not on PATH: the JavaScript client's types are checked with it. Run \
             scripts/test.sh, which installs it, or `apt-get install -y node-typescript`."
        ),
        Err(e) => panic!("cannot run tsc: {e}"),
    };
    assert!(
        output.status.success(),
        "tsc -p clients/js failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
