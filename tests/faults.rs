//! Fault injection against a real cluster: a node killed with SIGKILL, Redis
//! killed and restarted empty, a node drained with SIGTERM, a client that
//! stops reading, and a node cut off from Redis, for longer and for shorter
//! than the node timeout, through a TCP proxy that either closes every
//! connection at once (a cut) or stops every byte while keeping them open (a
//! blackhole).
//!
//! Each test builds its cluster by hand (its own `redis-server`, nodes `a`
//! and `b`), bounds every wait, and prints what it measured (run with
//! `--no-capture` to see the figures; `FAULTS_PRINT_LOGS=1` also prints the
//! nodes' logs of passing tests).

use crate::support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Client, Node, NodeLogs, RedisProbe, RedisServer, TcpProxy, assert_error, game_message,
    http_status, lobby_id, lobby_key, unique, wait_for_status,
};
use tokio_tungstenite::tungstenite::Message;

/// The relay's default `--node-timeout`.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The whole-test limit of every test here.
const TEST_LIMIT: Duration = Duration::from_secs(40);

fn joined(players: u64, seat: u64) -> Value {
    json!({"type": "joined", "players": players, "capacity": 2, "seat": seat})
}

fn ready() -> Value {
    json!({"type": "ready", "players": 2})
}

fn player_left(players: u64, seat: u64) -> Value {
    json!({"type": "playerLeft", "players": players, "seat": seat})
}

/// Runs a test body with the whole-test limit; prints the nodes' logs if it
/// runs out (a panic inside prints them when the nodes are dropped).
async fn bounded(logs: &[NodeLogs], test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
        for log in logs {
            log.print();
        }
        panic!("the test did not finish within {TEST_LIMIT:?}");
    }
    if std::env::var_os("FAULTS_PRINT_LOGS").is_some() {
        for log in logs {
            log.print();
        }
    }
}

/// Starts node `id` on Redis `url` with extra arguments.
fn node(id: &str, url: &str, args: &[&str]) -> Node {
    let mut all = vec!["--redis-url", url];
    all.extend_from_slice(args);
    Node::start(id, &all)
}

/// The key `<id>/<incarnation>` under which node `id` lists itself in
/// `lr:{nodes}` (waits for its first heartbeat).
async fn node_key(redis: &RedisProbe, id: &str) -> String {
    let prefix = format!("{id}/");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let nodes: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg("lr:{nodes}")).await;
        let mine: Vec<&String> = nodes.iter().filter(|n| n.starts_with(&prefix)).collect();
        match mine.as_slice() {
            [one] => return (*one).clone(),
            [] if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => panic!("expected one key of node {id} in lr:{{nodes}}, found {nodes:?}"),
        }
    }
}

async fn listed_nodes(redis: &RedisProbe) -> Vec<String> {
    let mut nodes: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg("lr:{nodes}")).await;
    nodes.sort();
    nodes
}

async fn exists(redis: &RedisProbe, key: &str) -> bool {
    redis.query::<i64>(redis::cmd("EXISTS").arg(key)).await == 1
}

/// Whether member id `member` was recorded by node key `key`.
fn is_member_of(member: &str, key: &str) -> bool {
    member
        .strip_prefix(key)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// A fresh capacity-2 lobby: `first` (seat 1) on `url_1`, `second` (seat 2)
/// on `url_2`, both past `ready`.
async fn pair_on(
    url_1: &str,
    url_2: &str,
    passphrase: &str,
    names: (&str, &str),
) -> (Client, Client) {
    let mut first = Client::connect(url_1, names.0).await;
    let mut second = Client::connect(url_2, names.1).await;
    first.send_join(passphrase).await;
    first.expect_json(joined(1, 1)).await;
    second.send_join(passphrase).await;
    second.expect_json(joined(2, 2)).await;
    first.expect_json(ready()).await;
    second.expect_json(ready()).await;
    (first, second)
}

/// A readable one-line account of a received message.
fn describe(message: &Message) -> String {
    match message {
        Message::Text(text) => text.as_str().to_owned(),
        Message::Binary(bytes) => format!("<binary, {} bytes>", bytes.len()),
        Message::Close(Some(frame)) => {
            format!(
                "<close {} {:?}>",
                u16::from(frame.code),
                frame.reason.as_str()
            )
        }
        Message::Close(None) => "<close without a code>".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Reads `client` until the text frame `expected` arrives (within
/// `timeout`) and returns everything that came before it.
async fn read_until_text(client: &mut Client, expected: &str, timeout: Duration) -> Vec<String> {
    let name = client.name().to_owned();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.try_recv_within(left).await {
            Ok(Some(Message::Text(text))) if text.as_str() == expected => return before,
            Ok(Some(other)) => before.push(describe(&other)),
            Ok(None) => panic!(
                "{name}: {expected} did not arrive within {timeout:?}; got before: {before:?}"
            ),
            Err(e) => panic!("{name}: {e} while waiting for {expected}; got before: {before:?}"),
        }
    }
}

/// A round trip of fresh messages, `x` to `y` and back, returning whatever
/// else either of them received first (which should be nothing).
async fn round_trip(x: &mut Client, y: &mut Client) -> Vec<String> {
    let there = game_message("probe");
    x.send_text(&there).await;
    let mut extra: Vec<String> = read_until_text(y, &there, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|m| format!("{} got {m}", y.name()))
        .collect();
    let back = game_message("probeReply");
    y.send_text(&back).await;
    extra.extend(
        read_until_text(x, &back, Duration::from_secs(5))
            .await
            .into_iter()
            .map(|m| format!("{} got {m}", x.name())),
    );
    extra
}

/// What [`resume_flow`] saw.
struct Flow {
    /// From the first send to the first delivery.
    first_delivery: Duration,
    /// When the first message arrived.
    delivered_at: Instant,
    sent: u64,
    /// Sequence numbers as received, in order.
    received: Vec<u64>,
    /// Anything else the receiver got meanwhile.
    other: Vec<String>,
}

/// Whether `text` is the relay telling a sender that some of its game
/// messages were not relayed (Redis away).
fn told_unavailable(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .is_ok_and(|v| v["type"] == "error" && v["code"] == "unavailable")
}

/// Sends numbered game messages from `from` every 50 ms until `to` receives
/// one (within `within`), then an end marker, and collects what `to` got up
/// to the marker. Checks that what arrived came in order (messages sent
/// during an outage may be lost: pub/sub is at most once).
async fn resume_flow(from: &mut Client, to: &mut Client, within: Duration) -> Flow {
    let kind = format!("seq{}", unique());
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0u64;
    let mut received = Vec::new();
    let mut other = Vec::new();
    let parse = |text: &str| -> Option<u64> {
        let value: Value = serde_json::from_str(text).ok()?;
        (value["type"] == kind.as_str()).then(|| value["n"].as_u64())?
    };
    let first_delivery = loop {
        tokio::select! {
            _ = tick.tick() => {
                assert!(
                    start.elapsed() < within,
                    "{} -> {}: nothing of {sent} messages arrived within {within:?}; \
                     other messages: {other:?}",
                    from.name(), to.name()
                );
                from.send_text(&format!(r#"{{"type":"{kind}","n":{sent}}}"#)).await;
                sent += 1;
            }
            got = to.try_recv_within(within) => match got {
                Ok(Some(Message::Text(text))) => match parse(text.as_str()) {
                    Some(n) => {
                        received.push(n);
                        break start.elapsed();
                    }
                    // Messages `to` itself sent during an outage were not
                    // relayed, and it is told so.
                    None if told_unavailable(text.as_str()) => {}
                    None => other.push(text.as_str().to_owned()),
                },
                Ok(Some(message)) => other.push(describe(&message)),
                Ok(None) => {}
                Err(e) => panic!("{}: {e}; other messages: {other:?}", to.name()),
            },
        }
    };
    let delivered_at = Instant::now();
    let end = format!(r#"{{"type":"{kind}End"}}"#);
    from.send_text(&end).await;
    for text in read_until_text(to, &end, Duration::from_secs(5)).await {
        match parse(&text) {
            Some(n) => received.push(n),
            None if told_unavailable(&text) => {}
            None => other.push(text),
        }
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "{} -> {}: messages arrived out of order: {received:?}",
        from.name(),
        to.name()
    );
    Flow {
        first_delivery,
        delivered_at,
        sent,
        received,
        other,
    }
}

/// Samples a value every `every` in the background until stopped.
struct Sampler<T> {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Duration, T)>>,
}

impl<T: Send + 'static> Sampler<T> {
    fn start<F, Fut>(every: Duration, mut sample: F) -> Sampler<T>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let at = start.elapsed();
                samples.push((at, sample().await));
                tokio::time::sleep(every).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Vec<(Duration, T)> {
        self.stop.store(true, Ordering::Relaxed);
        support::finish(self.task).await
    }
}

// ---------------------------------------------------------------------------
// 1. A node killed with SIGKILL
// ---------------------------------------------------------------------------

/// kill -9 of node b: its player is reaped (the other gets `playerLeft`
/// within node_timeout + node_timeout/3), the seat is free for a new player,
/// and nothing of node b remains in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_reaped() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = node("a", &url, &[]);
    let mut b = node("b", &url, &[]);
    let logs = [a.logs(), b.logs()];
    bounded(&logs, async {
        let probe = RedisProbe::connect(&url).await;
        let a_key = node_key(&probe, "a").await;
        let b_key = node_key(&probe, "b").await;
        let pass = format!("reaped-{}", unique());
        let key = lobby_key(&pass);
        let (mut pa, mut pb) = pair_on(&a.url(), &b.url(), &pass, ("A", "B")).await;
        assert!(round_trip(&mut pa, &mut pb).await.is_empty());
        let before = probe.hgetall(&key).await;
        assert_eq!(before.len(), 2, "{before:?}");
        assert!(is_member_of(&before["1"], &a_key), "{before:?} vs {a_key}");
        assert!(is_member_of(&before["2"], &b_key), "{before:?} vs {b_key}");
        let index: Vec<String> = probe
            .query(redis::cmd("SMEMBERS").arg(format!("lr:node-lobbies:{b_key}")))
            .await;
        assert_eq!(index, [lobby_id(&pass)], "node b's lobby index");

        let killed = Instant::now();
        b.kill9();
        let got = pa.recv_json_within(Duration::from_secs(6)).await;
        let delay = killed.elapsed();
        println!("killed_node_is_reaped: playerLeft {delay:?} after kill -9 (node timeout {NODE_TIMEOUT:?})");
        assert_eq!(got, player_left(1, 2), "A after node b was killed");
        drop(pb);

        // The freed seat goes to a newcomer, and the game goes on.
        let mut pc = Client::connect(&a.url(), "C").await;
        pc.send_join(&pass).await;
        pc.expect_json(joined(2, 2)).await;
        pa.expect_json(ready()).await;
        pc.expect_json(ready()).await;
        let extra = round_trip(&mut pa, &mut pc).await;
        assert!(extra.is_empty(), "unexpected messages: {extra:?}");

        // Nothing of node b remains (the index and the listing go right
        // after the members).
        let b_records = b_key.clone();
        probe
            .wait_until(Duration::from_secs(2), move |probe| {
                let b_key = b_records.clone();
                async move {
                    let nodes = listed_nodes(&probe).await;
                    let index = exists(&probe, &format!("lr:node-lobbies:{b_key}")).await;
                    let beat = exists(&probe, &format!("lr:{{nodes}}:node:{b_key}")).await;
                    if nodes.contains(&b_key) || index || beat {
                        Err(format!(
                            "lr:{{nodes}} {nodes:?}, node-lobbies exists {index}, heartbeat exists {beat}"
                        ))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert!(
            exists(&probe, &format!("lr:{{nodes}}:reaped:{b_key}")).await,
            "the reaper marks node b reaped"
        );
        let seats = probe.hgetall(&key).await;
        let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
        assert_eq!(fields, ["1", "2"], "{seats:?}");
        assert_eq!(seats["1"], before["1"], "A keeps its member id");
        assert!(
            is_member_of(&seats["2"], &a_key) && seats["2"] != seats["1"],
            "seat 2 is C's, on node a: {seats:?}"
        );
        for lobby in probe.keys("lr:lobby:*").await {
            let hash = probe.hgetall(&lobby).await;
            assert!(
                hash.values().all(|v| !v.starts_with(&b_key)),
                "{lobby} still holds a member of node b: {hash:?}"
            );
        }
        let nodes = listed_nodes(&probe).await;
        assert_eq!(nodes, [a_key], "only node a is listed");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Redis killed and restarted empty in the middle of a game
// ---------------------------------------------------------------------------

/// Redis dies mid-game for about a second: requests get `unavailable`,
/// players stay connected, `/readyz` fails; Redis comes back empty on the
/// same port: messages flow again, the seats are registered again, readiness
/// returns, and nobody is told anything spurious.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_game() {
    redis_restart(Duration::from_secs(1)).await;
}

/// The same with Redis away for longer than the node timeout: nobody can
/// reap anybody while Redis is down, and it comes back empty, so every seat
/// is registered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_after_long_outage() {
    redis_restart(NODE_TIMEOUT + Duration::from_secs(2)).await;
}

/// Kills Redis, keeps it down for `outage` (A sending to B all along), then
/// starts it again, empty, on the same port.
async fn redis_restart(outage: Duration) {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut a = node("a", &url, &[]);
    let mut b = node("b", &url, &[]);
    let logs = [a.logs(), b.logs()];
    bounded(&logs, async {
        let probe = RedisProbe::connect(&url).await;
        let a_key = node_key(&probe, "a").await;
        let b_key = node_key(&probe, "b").await;
        let pass = format!("restart-{}", unique());
        let key = lobby_key(&pass);
        let (mut pa, mut pb) = pair_on(&a.url(), &b.url(), &pass, ("A", "B")).await;
        assert!(round_trip(&mut pa, &mut pb).await.is_empty());
        let before = probe.hgetall(&key).await;
        assert!(is_member_of(&before["1"], &a_key), "{before:?}");
        assert!(is_member_of(&before["2"], &b_key), "{before:?}");
        drop(probe);

        let down = Instant::now();
        redis.kill();

        // A request that needs Redis is refused quickly ...
        let mut pd = Client::connect(&a.url(), "D").await;
        pd.send_join(&format!("restart-d-{}", unique())).await;
        let reply = pd.recv_json_within(Duration::from_secs(3)).await;
        println!(
            "redis_restart (outage {outage:?}): `unavailable` {:?} after Redis died",
            down.elapsed()
        );
        assert_error("D", &reply, "unavailable");
        // ... while the players stay connected,
        pa.assert_open().await;
        pb.assert_open().await;
        // and the node reports not ready.
        let took = wait_for_status(a.addr(), "/readyz", 503, Duration::from_secs(3)).await;
        println!("redis_restart (outage {outage:?}): node a /readyz 503 after {took:?} of polling");

        // Redis stays away for the rest of the outage while A keeps sending
        // (what is sent meanwhile may be lost: pub/sub is at most once).
        let rest = outage.saturating_sub(down.elapsed());
        let restart = tokio::task::spawn_blocking(move || {
            std::thread::sleep(rest);
            redis.restart();
            (redis, Instant::now())
        });
        let flow = resume_flow(&mut pa, &mut pb, outage + Duration::from_secs(5)).await;
        let (_redis, back) = support::finish(restart).await;
        println!(
            "redis_restart (outage {outage:?}): Redis was down for {:?}; A -> B delivers again {:?} \
             after the restart ({} sent from {:?} before the restart, {} received)",
            back - down,
            flow.delivered_at.saturating_duration_since(back),
            flow.sent,
            back - (flow.delivered_at - flow.first_delivery),
            flow.received.len()
        );
        assert!(flow.other.is_empty(), "B also got: {:?}", flow.other);
        let flow = resume_flow(&mut pb, &mut pa, Duration::from_secs(5)).await;
        assert!(flow.other.is_empty(), "A also got: {:?}", flow.other);
        println!(
            "redis_restart (outage {outage:?}): B -> A first delivery after {:?}",
            flow.first_delivery
        );

        // The seats are registered again, under the same member ids.
        let probe = RedisProbe::connect(&url).await;
        let (pass_key, expected) = (key.clone(), before.clone());
        let (ka, kb) = (a_key.clone(), b_key.clone());
        probe
            .wait_until(
                Duration::from_secs(5).saturating_sub(back.elapsed()),
                move |probe| {
                    let (key, expected) = (pass_key.clone(), expected.clone());
                    let (ka, kb) = (ka.clone(), kb.clone());
                    async move {
                        let seats = probe.hgetall(&key).await;
                        let nodes = listed_nodes(&probe).await;
                        let mut listed = vec![ka, kb];
                        listed.sort();
                        if seats == expected && nodes == listed {
                            Ok(())
                        } else {
                            Err(format!(
                                "seats {seats:?} (want {expected:?}), lr:{{nodes}} {nodes:?}"
                            ))
                        }
                    }
                },
            )
            .await;
        println!(
            "redis_restart (outage {outage:?}): seats back in Redis {:?} after the restart",
            back.elapsed()
        );
        for node_key in [&a_key, &b_key] {
            let index: Vec<String> = probe
                .query(redis::cmd("SMEMBERS").arg(format!("lr:node-lobbies:{node_key}")))
                .await;
            assert_eq!(index, [lobby_id(&pass)], "lobby index of {node_key}");
        }
        for (name, node) in [("a", &a), ("b", &b)] {
            let took = wait_for_status(
                node.addr(),
                "/readyz",
                200,
                Duration::from_secs(5).saturating_sub(back.elapsed()),
            )
            .await;
            println!("redis_restart (outage {outage:?}): node {name} ready again ({took:?} of polling)");
        }

        // New games start as before.
        let fresh = format!("restart-new-{}", unique());
        let (mut px, mut py) = pair_on(&a.url(), &b.url(), &fresh, ("X", "Y")).await;
        assert!(round_trip(&mut px, &mut py).await.is_empty());
        assert_eq!(a.exited(), None, "node a must survive the outage");
        assert_eq!(b.exited(), None, "node b must survive the outage");

        // After the nodes have compared their seats with Redis (node_timeout
        // after re-registering), A and B have been told nothing.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let extra = round_trip(&mut pa, &mut pb).await;
        assert!(
            extra.is_empty(),
            "spurious messages after the restart: {extra:?}"
        );
        assert_eq!(probe.hgetall(&key).await, before, "seats after reconciling");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. SIGTERM: a graceful drain
// ---------------------------------------------------------------------------

/// SIGTERM to node b: not ready at once, then after the drain delay its
/// players are closed with 1012 and leave (the others get `playerLeft`), and
/// the node removes its records and exits successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = node("a", &url, &[]);
    let mut b = node(
        "b",
        &url,
        &["--drain-delay", "500ms", "--shutdown-timeout", "5s"],
    );
    let logs = [a.logs(), b.logs()];
    bounded(&logs, async {
        let probe = RedisProbe::connect(&url).await;
        let b_key = node_key(&probe, "b").await;
        let pass = format!("drain-{}", unique());
        let (mut pa, pb) = pair_on(&a.url(), &b.url(), &pass, ("A", "B")).await;

        let origin = Instant::now();
        let b_addr = b.addr();
        let poller = Sampler::start(Duration::from_millis(20), move || async move {
            http_status(b_addr, "/readyz").await
        });
        // B reads in the background until its Close frame, which it
        // answers, as clients do.
        let (_b_tx, mut b_rx) = pb.split();
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                match b_rx.try_recv_within(Duration::from_secs(10)).await {
                    Ok(Some(Message::Close(frame))) => {
                        let closed_at = origin.elapsed();
                        b_rx.expect_end().await;
                        let code = frame.as_ref().map(|f| u16::from(f.code));
                        return (closed_at, code, seen);
                    }
                    Ok(Some(other)) => seen.push(describe(&other)),
                    Ok(None) => panic!("B: no Close frame within 10 s; got {seen:?}"),
                    Err(e) => panic!("B: {e} before a Close frame; got {seen:?}"),
                }
            }
        });
        // Let the poller see the node ready first.
        wait_for_status(b_addr, "/readyz", 200, Duration::from_secs(3)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        let signalled = origin.elapsed();
        b.signal_term();
        let left = pa.recv_json_within(Duration::from_secs(5)).await;
        let left_at = origin.elapsed();
        assert_eq!(left, player_left(1, 2), "A when node b drains");
        let status = b.wait_exit(Duration::from_secs(5)).await;
        let exited_at = origin.elapsed();
        let (closed_at, code, seen) = support::finish(reader).await;
        let samples = poller.finish().await;

        let status = status.expect("node b did not exit within 5 s of SIGTERM");
        println!(
            "sigterm_drains_the_node: SIGTERM at {signalled:?}; B closed ({code:?}) at \
             {closed_at:?}; A got playerLeft at {left_at:?}; node b exited ({status}) at \
             {exited_at:?}: drain took {:?}",
            exited_at - signalled
        );
        assert!(status.success(), "node b exited with {status}");
        assert_eq!(code, Some(1012), "B's close code; B got before: {seen:?}");
        assert!(seen.is_empty(), "B got before its Close: {seen:?}");

        let first_503 = samples
            .iter()
            .find(|(at, status)| *at >= signalled && *status == Ok(503))
            .map(|(at, _)| *at);
        let compact: Vec<String> = samples
            .iter()
            .filter(|(at, _)| *at + Duration::from_millis(100) >= signalled)
            .map(|(at, s)| match s {
                Ok(code) => format!("{}ms:{code}", at.as_millis()),
                Err(_) => format!("{}ms:err", at.as_millis()),
            })
            .collect();
        println!("sigterm_drains_the_node: /readyz of b around the signal: {compact:?}");
        let first_503 = first_503.expect("/readyz of node b never answered 503");
        println!(
            "sigterm_drains_the_node: first 503 {:?} after the signal, B's Close {:?} after it",
            first_503.saturating_sub(signalled),
            closed_at.saturating_sub(signalled)
        );
        assert!(
            first_503 < closed_at,
            "/readyz must fail before connections are closed: 503 at {first_503:?}, Close at {closed_at:?}"
        );
        assert!(
            samples
                .iter()
                .any(|(at, status)| *at < signalled && *status == Ok(200)),
            "the poller saw b ready before the signal"
        );

        // Goodbye: node b's records are gone, and so is its seat.
        assert!(!exists(&probe, &format!("lr:{{nodes}}:node:{b_key}")).await, "heartbeat key of b");
        assert!(
            !listed_nodes(&probe).await.contains(&b_key),
            "lr:{{nodes}} still lists b"
        );
        assert!(!exists(&probe, &format!("lr:node-lobbies:{b_key}")).await, "index of b");
        let seats = probe.hgetall(&lobby_key(&pass)).await;
        let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
        assert_eq!(fields, ["1"], "only A's seat remains: {seats:?}");
        pa.assert_open().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. A client that stops reading
// ---------------------------------------------------------------------------

/// B stops reading while A sends 32 KiB messages: node b gives B up once its
/// queue is full (A gets `playerLeft`), its memory stays bounded, and it
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_memory_is_bounded() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--max-message-bytes", "65536"];
    let a = node("a", &url, &args);
    let b = node("b", &url, &args);
    let logs = [a.logs(), b.logs()];
    bounded(&logs, async {
        let pass = format!("stall-{}", unique());
        let (pa, pb) = pair_on(&a.url(), &b.url(), &pass, ("A", "B")).await;
        let rss_before = b.rss_kib();

        // B reads nothing from here on.
        let b_pid = b.pid();
        let peak = Arc::new(AtomicU64::new(rss_before));
        let rss = Sampler::start(Duration::from_millis(20), {
            let peak = peak.clone();
            move || {
                let peak = peak.clone();
                async move {
                    if let Some(kib) = support::rss_kib(b_pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
            }
        });
        let (mut a_tx, mut a_rx) = pa.split();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let flood = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let body = "x".repeat(32 * 1024 - 40);
                // 2,048 x 32 KiB = 64 MiB at most.
                for i in 0..2048 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let text = format!(r#"{{"type":"flood","i":{i},"pad":"{body}"}}"#);
                    if a_tx.try_send_text(&text).await.is_err() {
                        break;
                    }
                    sent.fetch_add(text.len() as u64, Ordering::Relaxed);
                }
                a_tx
            }
        });
        let started = Instant::now();
        let left = a_rx.recv_within(Duration::from_secs(30)).await;
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let _a_tx = support::finish(flood).await;
        assert_eq!(
            left.into_text().expect("a text frame").as_str(),
            r#"{"type":"playerLeft","players":1,"seat":2}"#
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = rss.finish().await;
        let rss_after = b.rss_kib();
        let peak = peak.load(Ordering::Relaxed);
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "stalled_reader_memory_is_bounded: playerLeft after {took:?} and {:.1} MiB sent; \
             node b VmRSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB (growth {:.1} MiB)",
            mib(sent.load(Ordering::Relaxed) / 1024),
            mib(rss_before),
            mib(peak),
            mib(rss_after),
            mib(rss_after.saturating_sub(rss_before))
        );
        assert!(
            rss_after.saturating_sub(rss_before) < 48 * 1024,
            "node b grew by {:.1} MiB for a stalled reader",
            mib(rss_after.saturating_sub(rss_before))
        );
        drop(pb);

        // Node b still serves.
        let fresh = format!("stall-after-{}", unique());
        let (mut px, mut py) = pair_on(&b.url(), &b.url(), &fresh, ("X", "Y")).await;
        let extra = round_trip(&mut px, &mut py).await;
        assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5 and 6. A node cut off from Redis
// ---------------------------------------------------------------------------

/// Redis, node `a` reaching it through a proxy that can cut it off, node `b`
/// directly. Field order is drop order.
struct Partitionable {
    a: Node,
    b: Node,
    proxy: TcpProxy,
    redis: RedisServer,
}

impl Partitionable {
    async fn start() -> Partitionable {
        let redis = RedisServer::start();
        let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
        let a = node("a", &proxy.redis_url(), &[]);
        let b = node("b", &redis.url(), &[]);
        Partitionable { a, b, proxy, redis }
    }

    fn logs(&self) -> [NodeLogs; 2] {
        [self.a.logs(), self.b.logs()]
    }

    /// A probe of the Redis server (not through the proxy).
    async fn probe(&self) -> RedisProbe {
        RedisProbe::connect(&self.redis.url()).await
    }

    /// A lobby `<what>-<unique>` of A (node a) and B (node b): its
    /// passphrase and the two players.
    async fn pair(&self, what: &str) -> (String, Client, Client) {
        let pass = format!("{what}-{}", unique());
        let (pa, pb) = pair_on(&self.a.url(), &self.b.url(), &pass, ("A", "B")).await;
        (pass, pa, pb)
    }

    /// [`Partitionable::pair`], the players past one round trip.
    async fn playing(&self, what: &str) -> (String, Client, Client) {
        let (pass, mut pa, mut pb) = self.pair(what).await;
        assert!(round_trip(&mut pa, &mut pb).await.is_empty());
        (pass, pa, pb)
    }
}

/// How node a is cut off from Redis.
#[derive(Debug, Clone, Copy)]
enum Partition {
    /// Every connection closed, new ones refused.
    Cut,
    /// No byte moves, connections stay open.
    Blackhole,
}

impl Partition {
    fn begin(self, proxy: &TcpProxy) {
        match self {
            Partition::Cut => proxy.cut(),
            Partition::Blackhole => proxy.blackhole(),
        }
    }
}

/// Records the largest `HLEN` of a lobby hash, every 50 ms.
fn watch_hlen(probe: &RedisProbe, key: &str) -> (Sampler<i64>, Arc<Mutex<i64>>) {
    let max = Arc::new(Mutex::new(0i64));
    let (probe, key, seen) = (probe.clone(), key.to_owned(), max.clone());
    let sampler = Sampler::start(Duration::from_millis(50), move || {
        let (probe, key, seen) = (probe.clone(), key.clone(), seen.clone());
        async move {
            let len: i64 = probe.query(redis::cmd("HLEN").arg(&key)).await;
            let mut max = seen.lock().unwrap_or_else(|e| e.into_inner());
            *max = (*max).max(len);
            len
        }
    });
    (sampler, max)
}

/// Node a cut off from Redis for longer than the node timeout: B gets
/// `playerLeft` and the seat goes to C; when node a comes back, A gets
/// `seat_lost` and close 4001, never its seat back; the lobby never holds
/// more than its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_node_loses_its_seat_safely() {
    partition_loses_the_seat(Partition::Cut).await;
}

/// The same when the partition drops packets instead of closing
/// connections: node a notices only by its own timeouts, and when the
/// partition heals its old connections carry on where they stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_node_loses_its_seat_safely() {
    partition_loses_the_seat(Partition::Blackhole).await;
}

async fn partition_loses_the_seat(mode: Partition) {
    let c = Partitionable::start().await;
    bounded(&c.logs(), async {
        let probe = c.probe().await;
        let a_key = node_key(&probe, "a").await;
        let b_key = node_key(&probe, "b").await;
        let (pass, mut pa, mut pb) = c.playing("partition").await;
        let key = lobby_key(&pass);
        let before = probe.hgetall(&key).await;
        assert!(is_member_of(&before["1"], &a_key), "{before:?}");
        let (hlen, max_hlen) = watch_hlen(&probe, &key);

        let cut = Instant::now();
        mode.begin(&c.proxy);
        let got = pb.recv_json_within(Duration::from_secs(6)).await;
        let reaped = cut.elapsed();
        println!("partition ({mode:?}): B got playerLeft {reaped:?} after the cut");
        assert_eq!(got, player_left(1, 1), "B when node a is cut off");
        let readyz = http_status(c.a.addr(), "/readyz").await;
        assert_eq!(readyz, Ok(503), "node a /readyz while cut off");

        // The seat goes to a newcomer on node b.
        let mut pc = Client::connect(&c.b.url(), "C").await;
        pc.send_join(&pass).await;
        pc.expect_json(joined(2, 1)).await;
        pb.expect_json(ready()).await;
        pc.expect_json(ready()).await;
        let extra = round_trip(&mut pb, &mut pc).await;
        assert!(extra.is_empty(), "B and C got: {extra:?}");

        tokio::time::sleep(Duration::from_secs(2)).await;
        let outage = cut.elapsed();
        c.proxy.restore();
        let restored = Instant::now();

        // A learns that its seat is gone, and nothing else.
        let mut got = Vec::new();
        let close = loop {
            let left = Duration::from_secs(8).saturating_sub(restored.elapsed());
            match pa.try_recv_within(left).await {
                Ok(Some(Message::Close(frame))) => break frame,
                Ok(Some(other)) => got.push(other),
                Ok(None) => panic!(
                    "A: no Close within 8 s of the restore; got {:?}",
                    got.iter().map(describe).collect::<Vec<_>>()
                ),
                Err(e) => panic!(
                    "A: {e}; got {:?}",
                    got.iter().map(describe).collect::<Vec<_>>()
                ),
            }
        };
        let lost_after = restored.elapsed();
        let got_text: Vec<String> = got.iter().map(describe).collect();
        println!(
            "partition ({mode:?}): cut for {outage:?}; A was closed \
             ({:?}) {lost_after:?} after the restore, having received {got_text:?}",
            close.as_ref().map(|f| u16::from(f.code))
        );
        match got.as_slice() {
            [Message::Text(text)] => {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert_error("A", &value, "seat_lost");
            }
            _ => panic!(
                "A must get exactly one `seat_lost` error before its Close, got {got_text:?}"
            ),
        }
        assert_eq!(
            close.as_ref().map(|f| u16::from(f.code)),
            Some(4001),
            "A's close code"
        );

        // B and C play on, untroubled.
        let extra = round_trip(&mut pb, &mut pc).await;
        assert!(extra.is_empty(), "B and C got: {extra:?}");
        let seats = probe.hgetall(&key).await;
        let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
        assert_eq!(fields, ["1", "2"], "{seats:?}");
        assert_eq!(seats["2"], before["2"], "B keeps its seat");
        assert!(
            is_member_of(&seats["1"], &b_key),
            "seat 1 is C's: {seats:?}"
        );

        // Node a serves again, under a new incarnation.
        let took = wait_for_status(c.a.addr(), "/readyz", 200, Duration::from_secs(5)).await;
        println!("partition ({mode:?}): node a ready again ({took:?} of polling)");
        let fresh = format!("partition-after-{}", unique());
        let (mut px, mut py) = pair_on(&c.a.url(), &c.b.url(), &fresh, ("X", "Y")).await;
        let extra = round_trip(&mut px, &mut py).await;
        assert!(extra.is_empty(), "X and Y got: {extra:?}");
        let new_seats = probe.hgetall(&lobby_key(&fresh)).await;
        assert!(
            !is_member_of(&new_seats["1"], &a_key) && new_seats["1"].starts_with("a/"),
            "node a seats newcomers under a new key: {new_seats:?} (old key {a_key})"
        );
        let extra = round_trip(&mut pb, &mut pc).await;
        assert!(extra.is_empty(), "B and C got: {extra:?}");

        let samples = hlen.finish().await;
        let max = *max_hlen.lock().unwrap_or_else(|e| e.into_inner());
        println!(
            "partition ({mode:?}): {} HLEN samples, max {max}",
            samples.len()
        );
        assert!(max <= 2, "the lobby held {max} seats at once (capacity 2)");
        assert_eq!(
            probe.hgetall(&key).await,
            seats,
            "the seats stay B's and C's"
        );
    })
    .await;
}

/// A cut shorter than the node timeout: nobody loses a seat, and the game
/// goes on once node a reaches Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_redis_cut_keeps_the_game() {
    short_partition_keeps_the_game(Partition::Cut).await;
}

/// The same with a 1 s blackhole (packets dropped, connections kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_blackhole_keeps_the_game() {
    short_partition_keeps_the_game(Partition::Blackhole).await;
}

async fn short_partition_keeps_the_game(mode: Partition) {
    let c = Partitionable::start().await;
    bounded(&c.logs(), async {
        let probe = c.probe().await;
        let (pass, mut pa, mut pb) = c.playing("short-cut").await;
        let key = lobby_key(&pass);
        let before: BTreeMap<String, String> = probe.hgetall(&key).await;
        assert_eq!(before.len(), 2, "{before:?}");

        mode.begin(&c.proxy);
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.proxy.restore();
        let restored = Instant::now();

        let flow = resume_flow(&mut pa, &mut pb, Duration::from_secs(3)).await;
        println!(
            "short partition ({mode:?}): A -> B delivers again {:?} after the restore \
             ({} sent, {} received)",
            restored.elapsed(),
            flow.sent,
            flow.received.len()
        );
        assert!(flow.other.is_empty(), "B also got: {:?}", flow.other);
        let flow = resume_flow(&mut pb, &mut pa, Duration::from_secs(3)).await;
        assert!(flow.other.is_empty(), "A also got: {:?}", flow.other);
        assert_eq!(
            probe.hgetall(&key).await,
            before,
            "the same seats, the same members"
        );

        // Still so once node a has re-registered and reconciled (and node b
        // would have reaped it).
        tokio::time::sleep(NODE_TIMEOUT + Duration::from_secs(1)).await;
        let extra = round_trip(&mut pa, &mut pb).await;
        assert!(extra.is_empty(), "A and B got: {extra:?}");
        assert_eq!(
            probe.hgetall(&key).await,
            before,
            "the same seats, the same members"
        );
        let took = wait_for_status(c.a.addr(), "/readyz", 200, Duration::from_secs(2)).await;
        println!("short partition ({mode:?}): node a ready ({took:?} of polling)");
    })
    .await;
}

/// Sends `{"type":KIND,"n":i}` from `tx` every 50 ms until stopped or the
/// connection fails; returns the sender and how many were sent.
fn talker(
    mut tx: support::Sender,
    kind: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(support::Sender, u64)> {
    tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let text = format!(r#"{{"type":"{kind}","n":{sent}}}"#);
            if tx.try_send_text(&text).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (tx, sent)
    })
}

/// At most the first three and the last item of a long list.
fn abridged(items: &[String]) -> String {
    match items.len() {
        0..=4 => format!("{items:?}"),
        n => format!(
            "[{}, ... ({} more) ..., {}]",
            items[..3].join(", "),
            n - 4,
            items[n - 1]
        ),
    }
}

/// The `type` of a received text frame, if it is JSON with one.
fn type_of(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value["type"].as_str().map(str::to_owned)
}

/// A player who keeps talking while its node is cut off from Redis for
/// longer than the node timeout: once the others have been told it left
/// (`playerLeft`), nothing it sends may reach them, not even in the moments
/// after its node reaches Redis again and before it learns that its seat is
/// gone; and it receives nothing of the lobby it no longer belongs to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaped_player_is_not_heard_after_its_seat_is_lost() {
    reaped_player_is_not_heard(Partition::Cut).await;
}

/// The same with a blackhole: what node a wrote to its Redis connections
/// during the partition reaches Redis when the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_reaped_player_is_not_heard() {
    reaped_player_is_not_heard(Partition::Blackhole).await;
}

async fn reaped_player_is_not_heard(mode: Partition) {
    let c = Partitionable::start().await;
    bounded(&c.logs(), async {
        let probe = c.probe().await;
        let (pass, pa, mut pb) = c.pair("silenced").await;

        // A talks all along and records everything it receives.
        let (a_tx, mut a_rx) = pa.split();
        let stop = Arc::new(AtomicBool::new(false));
        let a_talks = talker(a_tx, "fromA", stop.clone());
        let origin = Instant::now();
        let a_hears = tokio::spawn(async move {
            let mut heard = Vec::new();
            loop {
                match a_rx.try_recv_within(Duration::from_secs(20)).await {
                    Ok(Some(Message::Close(frame))) => {
                        heard.push((origin.elapsed(), describe(&Message::Close(frame))));
                        return heard;
                    }
                    Ok(Some(other)) => heard.push((origin.elapsed(), describe(&other))),
                    Ok(None) => panic!("A: no Close within 20 s; heard {heard:?}"),
                    Err(e) => panic!("A: {e}; heard {heard:?}"),
                }
            }
        });
        // B hears A's messages until the cut.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut_at = origin.elapsed();
        mode.begin(&c.proxy);
        let mut b_before_left = 0;
        let left_at = loop {
            let got = pb.recv_json_within(Duration::from_secs(6)).await;
            if got["type"] == "fromA" {
                b_before_left += 1;
                continue;
            }
            assert_eq!(got, player_left(1, 1), "B when node a is cut off");
            break origin.elapsed();
        };
        assert!(b_before_left > 0, "B heard A before the cut");

        let mut pc = Client::connect(&c.b.url(), "C").await;
        pc.send_join(&pass).await;
        pc.expect_json(joined(2, 1)).await;
        pb.expect_json(ready()).await;
        pc.expect_json(ready()).await;

        // B talks from now on (A must not hear it: A is no longer in the
        // lobby), and both B and C listen.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (b_tx, mut b_rx) = pb.split();
        let b_talks = talker(b_tx, "fromB", stop.clone());
        let restore_at = origin.elapsed();
        c.proxy.restore();
        let mut b_heard = Vec::new();
        let mut c_heard = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                got = b_rx.try_recv_within(Duration::from_millis(100)) => {
                    if let Ok(Some(m)) = got { b_heard.push((origin.elapsed(), describe(&m))) }
                }
                got = pc.try_recv_within(Duration::from_millis(100)) => {
                    if let Ok(Some(m)) = got { c_heard.push((origin.elapsed(), describe(&m))) }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (_a_tx, a_sent) = support::finish(a_talks).await;
        let (_b_tx, b_sent) = support::finish(b_talks).await;
        let a_heard = support::finish(a_hears).await;
        let ms = |d: Duration| d.as_millis();
        println!(
            "reaped player ({mode:?}): cut at {}ms, B got playerLeft at {}ms, restore at \
             {}ms; A sent {a_sent}, B sent {b_sent}",
            ms(cut_at),
            ms(left_at),
            ms(restore_at)
        );
        let show = |heard: &[(Duration, String)]| -> Vec<String> {
            heard
                .iter()
                .map(|(at, m)| format!("{}ms {}", ms(*at), m.chars().take(60).collect::<String>()))
                .collect()
        };
        println!("reaped player ({mode:?}): A heard {:?}", show(&a_heard));
        println!(
            "reaped player ({mode:?}): B heard after ready {:?}",
            show(&b_heard)
        );
        println!(
            "reaped player ({mode:?}): C heard after ready {:?}",
            show(&c_heard)
        );

        // After `ready`, B should hear nothing (C is silent), C only B, and
        // A only that its seat is gone (and that its messages were not
        // relayed meanwhile).
        let from_a = |heard: &[(Duration, String)]| {
            heard
                .iter()
                .filter(|(_, m)| type_of(m).as_deref() == Some("fromA"))
                .count()
        };
        let b_wrong: Vec<String> = show(&b_heard);
        let c_wrong: Vec<String> = show(
            &c_heard
                .iter()
                .filter(|(_, m)| type_of(m).as_deref() != Some("fromB"))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let a_wrong: Vec<String> = show(
            &a_heard
                .iter()
                .filter(|(_, m)| {
                    // Besides its seat's loss, A may be told that its
                    // messages during the cut were not relayed.
                    !m.contains(r#""code":"seat_lost""#)
                        && !m.contains(r#""code":"unavailable""#)
                        && !m.starts_with("<close 4001")
                })
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(
            b_wrong.is_empty() && c_wrong.is_empty() && a_wrong.is_empty(),
            "after A's seat was given up (playerLeft at {}ms, restore at {}ms): B heard {} \
             messages of A: {}; C heard {} messages of A: {}; A heard {} other messages: {}",
            ms(left_at),
            ms(restore_at),
            from_a(&b_heard),
            abridged(&b_wrong),
            from_a(&c_heard),
            abridged(&c_wrong),
            a_wrong.len(),
            abridged(&a_wrong),
        );
        let seats = probe.hgetall(&lobby_key(&pass)).await;
        assert_eq!(seats.len(), 2, "{seats:?}");
    })
    .await;
}

/// A player who disconnects while its node cannot reach Redis (a cut
/// shorter than the node timeout) does not keep its seat: the node retries
/// the leave, and once Redis is reachable the other player gets
/// `playerLeft` and the seat is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_during_a_cut_is_retried() {
    let c = Partitionable::start().await;
    bounded(&c.logs(), async {
        let probe = c.probe().await;
        let (pass, pa, mut pb) = c.pair("leave-in-cut").await;
        let key = lobby_key(&pass);

        Partition::Cut.begin(&c.proxy);
        drop(pa); // A goes while node a cannot reach Redis
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.proxy.restore();
        let restored = Instant::now();

        let got = read_until_text(
            &mut pb,
            r#"{"type":"playerLeft","players":1,"seat":1}"#,
            Duration::from_secs(5),
        )
        .await;
        println!(
            "leave during a cut: B got playerLeft {:?} after the restore",
            restored.elapsed()
        );
        assert!(got.is_empty(), "B also got: {got:?}");
        let seats: BTreeMap<String, String> = probe.hgetall(&key).await;
        assert_eq!(
            seats.keys().collect::<Vec<_>>(),
            ["2"],
            "only B's seat: {seats:?}"
        );
    })
    .await;
}

/// Sends SIGSTOP to a process now and SIGCONT when dropped (a failing test
/// never leaves Redis frozen).
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Redis frozen (SIGSTOP) for 6 s while 20 players send 8 KiB messages at
/// 100 Hz: what waits for Redis stays bounded (each node's RSS grows by
/// less than 40 MiB; without the bounds it took every message, ~100 MiB
/// here), the senders are told (`unavailable`), and no message is delivered
/// more than the relay's 1 s bound (plus the way back) after it was sent:
/// what waited longer is dropped, never relayed late. After the thaw the
/// games go on, every player's messages in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_buffers_little_and_delivers_nothing_late() {
    const LOBBIES: usize = 10;
    const FREEZE: Duration = Duration::from_secs(6);
    let redis = RedisServer::start();
    let url = redis.url();
    let a = node("a", &url, &[]);
    let b = node("b", &url, &[]);
    let logs = [a.logs(), b.logs()];
    bounded(&logs, async {
        let epoch = Instant::now();
        let mut pairs = Vec::new();
        for i in 0..LOBBIES {
            let pass = format!("frozen-{}-{i}", unique());
            pairs.push(pair_on(&a.url(), &b.url(), &pass, ("A", "B")).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let unavailable = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for (i, (x, y)) in pairs.into_iter().enumerate() {
            for (side, client) in [(0, x), (1, y)] {
                let who = i * 2 + side;
                let (mut tx, mut rx) = client.split();
                let stopping = stop.clone();
                senders.push(tokio::spawn(async move {
                    let stop = stopping;
                    let pad = "x".repeat(8 * 1024);
                    let mut n = 0u64;
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        let t = epoch.elapsed().as_millis() as u64;
                        let text =
                            format!(r#"{{"type":"m","s":{who},"n":{n},"t":{t},"pad":"{pad}"}}"#);
                        if tx.try_send_text(&text).await.is_err() {
                            break;
                        }
                    }
                    tx
                }));
                let (stop, unavailable) = (stop.clone(), unavailable.clone());
                readers.push(tokio::spawn(async move {
                    // (greatest age in ms, messages, last sequence seen)
                    let (mut oldest, mut count, mut last) = (0u64, 0u64, 0u64);
                    loop {
                        let message = match rx.try_recv_within(Duration::from_secs(2)).await {
                            Ok(Some(message)) => message,
                            Ok(None) if stop.load(Ordering::Relaxed) => break,
                            Ok(None) => continue,
                            Err(e) => panic!("{}: {e}", rx.name()),
                        };
                        let value: Value =
                            serde_json::from_str(message.to_text().expect("a text frame"))
                                .expect("JSON");
                        match value["type"].as_str() {
                            Some("m") => {
                                let now = epoch.elapsed().as_millis() as u64;
                                oldest = oldest.max(now - value["t"].as_u64().unwrap());
                                let n = value["n"].as_u64().unwrap();
                                assert!(n > last, "{}: {n} after {last}: reordered", rx.name());
                                last = n;
                                count += 1;
                            }
                            Some("error") => {
                                assert_eq!(value["code"], "unavailable", "{value}");
                                unavailable.fetch_add(1, Ordering::Relaxed);
                            }
                            // The other player's connection closing at the end.
                            Some("playerLeft") if stop.load(Ordering::Relaxed) => break,
                            _ => panic!("{}: unexpected {value}", rx.name()),
                        }
                    }
                    (oldest, count, last)
                }));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = [a.rss_kib(), b.rss_kib()];
        let peak = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let pids = [a.pid(), b.pid()];
        let rss = Sampler::start(Duration::from_millis(50), {
            let peak = peak.clone();
            move || {
                let peak = peak.clone();
                async move {
                    for (i, pid) in pids.iter().enumerate() {
                        if let Some(kib) = support::rss_kib(*pid) {
                            peak[i].fetch_max(kib, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        let frozen = Frozen::freeze(redis.pid());
        tokio::time::sleep(FREEZE).await;
        drop(frozen);
        // The games go on after the thaw.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = rss.finish().await;
        for sender in senders {
            let _tx = support::finish(sender).await;
        }
        let mut oldest = 0;
        for reader in readers {
            let (age, count, last) = support::finish(reader).await;
            assert!(count > 0 && last > 0, "messages flowed");
            oldest = oldest.max(age);
        }
        let growth: Vec<f64> = (0..2)
            .map(|i| {
                peak[i]
                    .load(Ordering::Relaxed)
                    .saturating_sub(rss_before[i]) as f64
                    / 1024.0
            })
            .collect();
        println!(
            "frozen Redis for {FREEZE:?}: oldest delivery {oldest} ms after it was sent; \
             node RSS growth at peak {:.1} / {:.1} MiB; {} unavailable errors",
            growth[0],
            growth[1],
            unavailable.load(Ordering::Relaxed)
        );
        assert!(
            oldest <= 1500,
            "a message was delivered {oldest} ms after it was sent"
        );
        for (i, mib) in growth.iter().enumerate() {
            assert!(
                *mib < 40.0,
                "node {i} grew by {mib:.1} MiB while Redis was frozen"
            );
        }
        assert!(
            unavailable.load(Ordering::Relaxed) > 0,
            "the senders were told that their messages were not relayed"
        );
    })
    .await;
}
