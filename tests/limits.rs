//! Abuse limits, played by an attacker: a flooding connection, passphrase
//! guessing across nodes, too many connections, a handshake that trickles.

use crate::support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::raw::{self, Frame, RawSocket};
use support::{Client, Relays, assert_error, pair};
use tokio_tungstenite::tungstenite::Message;

fn numbered(n: u32) -> String {
    format!(r#"{{"type":"tick","n":{n}}}"#)
}

fn number_of(text: &str) -> u32 {
    let value: Value = serde_json::from_str(text).expect("JSON");
    value["n"].as_u64().expect("n") as u32
}

both_flavours!(flooding_is_limited_then_closed
    => flooding_is_limited_then_closed_redis, flooding_is_limited_then_closed_memory,
    args: ["--message-rate", "50", "--message-burst", "50"]);
/// At twice the rate, the peer keeps receiving at the limit and the sender
/// gets one `rate_limited` a second at most; a flood closes the sender with
/// 1008; another lobby notices nothing.
async fn flooding_is_limited_then_closed(c: Relays) {
    let (a, mut b) = pair(&c, &format!("flood-{}", support::unique())).await;
    let (mut c1, mut c2) = pair(&c, &format!("bystanders-{}", support::unique())).await;
    let (mut a_tx, mut a_rx) = a.split();

    // Two seconds at 100 messages a second, twice the limit.
    let started = Instant::now();
    for n in 0..200 {
        a_tx.send_text(&numbered(n)).await;
        tokio::time::sleep_until((started + Duration::from_millis(10 * (n as u64 + 1))).into())
            .await;
    }
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), b.recv()).await {
            Ok(Message::Text(text)) => received.push(number_of(text.as_str())),
            Ok(other) => panic!("B: unexpected {other:?}"),
            Err(_) => break,
        }
    }
    // Burst 50 + 50/s for ~2 s, with some slack for timing.
    assert!(
        (120..=165).contains(&received.len()),
        "B received {} of 200 messages at twice the limit",
        received.len()
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in order: {received:?}"
    );
    let mut errors = 0;
    while let Ok(message) = tokio::time::timeout(Duration::from_millis(200), a_rx.recv()).await {
        let value: Value = serde_json::from_str(message.to_text().expect("text")).expect("JSON");
        assert_error("A", &value, "rate_limited");
        errors += 1;
    }
    assert!(
        (1..=3).contains(&errors),
        "one rate_limited a second at most, got {errors}"
    );

    // A flood: closed with 1008 (policy violation); B sees A leave.
    let flood = tokio::spawn(async move {
        for n in 0..5000 {
            if a_tx.try_send_text(&numbered(1000 + n)).await.is_err() {
                break;
            }
        }
    });
    a_rx.expect_close(1008).await;
    let _ = flood.await;
    loop {
        let message = b.recv_json().await;
        if message["type"] == "playerLeft" {
            assert_eq!(message, json!({"type":"playerLeft","players":1,"seat":1}));
            break;
        }
        assert_eq!(message["type"], "tick", "B: {message}");
    }
    // The other lobby was never disturbed.
    c1.send_text(&numbered(1)).await;
    c2.expect_text(&numbered(1)).await;
    c2.send_text(&numbered(2)).await;
    c1.expect_text(&numbered(2)).await;
    b.assert_open().await;
}

both_flavours!(join_guessing_is_limited
    => join_guessing_is_limited_redis, join_guessing_is_limited_memory,
    args: ["--join-rate", "6", "--join-burst", "3"]);
/// Joins from one address, alternating between the two nodes: the burst
/// passes, then every join gets `rate_limited` and joins nothing, on either
/// node (with Redis the limit holds for the cluster, not per node).
async fn join_guessing_is_limited(c: Relays) {
    let mut clients = [
        Client::connect(&c.url_a(), "G-a").await,
        Client::connect(&c.url_b(), "G-b").await,
    ];
    for attempt in 0..3 {
        let guesser = &mut clients[attempt % 2];
        guesser
            .send_join(&format!("guess-{attempt}-{}", support::unique()))
            .await;
        let reply = guesser.recv_json().await;
        assert_eq!(reply["type"], "joined", "attempt {attempt}: {reply}");
        guesser.leave().await;
    }
    for attempt in 3..7 {
        let guesser = &mut clients[attempt % 2];
        guesser
            .send_join(&format!("guess-{attempt}-{}", support::unique()))
            .await;
        guesser.expect_error("rate_limited").await;
        guesser.assert_open().await;
    }
    if let Some(redis) = c.redis_probe().await {
        assert_eq!(redis.keys("lr:lobby:*").await, Vec::<String>::new());
        assert_eq!(
            redis.keys("lr:rate:join:*").await,
            ["lr:rate:join:127.0.0.1"]
        );
    }
}

both_flavours!(connections_above_the_node_cap_are_refused
    => connections_above_the_node_cap_are_refused_redis, connections_above_the_node_cap_are_refused_memory,
    args: ["--max-connections", "3"]);
/// The fourth connection to a node capped at 3 is closed with 1013; the
/// first three keep working, and a freed place can be taken again.
async fn connections_above_the_node_cap_are_refused(c: Relays) {
    let mut first = Client::connect(&c.url_a(), "1").await;
    let mut second = Client::connect(&c.url_a(), "2").await;
    let mut third = Client::connect(&c.url_a(), "3").await;
    let mut fourth = Client::connect(&c.url_a(), "4").await;
    fourth.expect_close(1013).await;
    for client in [&mut first, &mut second, &mut third] {
        client.assert_open().await;
    }
    third.close().await;
    // The node frees the place once the third session has ended, which may
    // be a moment after the client's close: retry for up to 2 s.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut again = Client::connect(&c.url_a(), "5").await;
        again.send_json(json!({"type": "ping", "t": 5})).await;
        match again.recv().await {
            Message::Text(text) => {
                assert_eq!(text.as_str(), r#"{"type":"pong","t":5}"#);
                break;
            }
            Message::Close(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a freed place was not given again: {other:?}"),
        }
    }
}

both_flavours!(connections_above_the_address_cap_are_refused
    => connections_above_the_address_cap_are_refused_redis, connections_above_the_address_cap_are_refused_memory,
    args: ["--max-connections-per-address", "2"]);
/// A third connection from one address is closed with 1013; the first two
/// keep working.
async fn connections_above_the_address_cap_are_refused(c: Relays) {
    let mut first = Client::connect(&c.url_a(), "1").await;
    let mut second = Client::connect(&c.url_a(), "2").await;
    let mut third = Client::connect(&c.url_a(), "3").await;
    third.expect_close(1013).await;
    first.assert_open().await;
    second.assert_open().await;
}

both_flavours!(trickled_handshake_is_cut_off
    => trickled_handshake_is_cut_off_redis, trickled_handshake_is_cut_off_memory,
    args: ["--handshake-timeout", "1s"]);
/// Slowloris: a request sent one byte every 100 ms, and a connection that
/// sends nothing, are both closed at the handshake timeout.
async fn trickled_handshake_is_cut_off(c: Relays) {
    let addr = c.addr_a();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut silent = std::net::TcpStream::connect(addr).expect("connect");
        let mut trickle = std::net::TcpStream::connect(addr).expect("connect");
        trickle
            .set_write_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let started = Instant::now();
        let request =
            b"GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        let mut cut_after = None;
        for byte in request.iter().cycle().take(60) {
            if trickle.write_all(&[*byte]).is_err() {
                cut_after = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        silent
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let silent_closed = matches!(silent.read(&mut buf), Ok(0) | Err(_));
        (cut_after, silent_closed, started.elapsed())
    })
    .await
    .expect("thread");
    let (cut_after, silent_closed, elapsed) = outcome;
    let cut_after = cut_after.expect("the trickling client was never cut off (6 s)");
    assert!(
        cut_after < Duration::from_secs(3),
        "cut off after {cut_after:?}, handshake timeout 1 s"
    );
    assert!(
        silent_closed,
        "a silent connection was still open after {elapsed:?}"
    );
    // The node still serves.
    let mut client = Client::connect(&c.url_a(), "after").await;
    client.assert_open().await;
}

/// Log volume is not the client's to drive: 200 refused requests on one
/// connection (malformed frames, a bad passphrase, a game message outside a
/// lobby) each get their error, and make one `info` line when the
/// connection ends, summing them up, instead of one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_make_one_log_line_per_connection() {
    let c = Relays::memory();
    let mut client = Client::connect(&c.url_a(), "bad").await;
    for i in 0..198 {
        client.send_text(&format!("not json {i}")).await;
    }
    client.send_join("x").await;
    client.send_json(json!({"type": "move"})).await;
    for _ in 0..198 {
        client.expect_error("invalid_json").await;
    }
    client.expect_error("invalid_passphrase").await;
    client.expect_error("not_in_lobby").await;
    client.close().await;
    let logs = c.logs();
    let log = &logs[0];
    let deadline = Instant::now() + Duration::from_secs(5);
    let summary = loop {
        let lines = log.lines();
        if let Some(line) = lines.iter().find(|l| l.contains(r#""event":"refused""#)) {
            break serde_json::from_str::<Value>(line).expect("a JSON log line");
        }
        assert!(Instant::now() < deadline, "no summary line: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(summary["level"], "INFO", "{summary}");
    assert_eq!(summary["fields"]["total"], 200, "{summary}");
    assert_eq!(
        summary["fields"]["codes"], "invalid_json:198,invalid_passphrase:1,not_in_lobby:1",
        "{summary}"
    );
    let of_the_connection: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains(r#""name":"conn""#))
        .collect();
    assert_eq!(
        of_the_connection.len(),
        1,
        "one line for the whole connection: {of_the_connection:#?}"
    );
}

/// A client that never stops sending: `prefix`, then `chunk` over and over
/// from a thread of its own, at full speed, while this thread reads. Once
/// the relay's close frame is read, the writer stops. Returns the close
/// frame and the frames before it, and asserts that the relay then ended the
/// connection in good order (FIN) and never reset it: a reset throws away
/// what was in flight, the close frame included (see
/// [`RawSocket::expect_no_reset`]).
fn refused_while_sending(
    mut socket: RawSocket,
    prefix: Vec<u8>,
    chunk: Vec<u8>,
) -> (Frame, Vec<Frame>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    /// A bound on the writer, far above what any refusal needs.
    const MOST_BYTES: usize = 256 * 1024 * 1024;
    let stop = Arc::new(AtomicBool::new(false));
    let mut out = socket.writer();
    out.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            out.write_all(&prefix)?;
            let mut written = 0;
            while !stop.load(Ordering::Relaxed) && written < MOST_BYTES {
                out.write_all(&chunk)?;
                written += chunk.len();
            }
            Ok::<(), std::io::Error>(())
        })
    };
    let (close, before) = socket.read_until_close();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("the writer");
    socket.expect_end();
    if let Err(e) = written {
        panic!("the relay cut the client off while it was sending: {e}");
    }
    socket.expect_no_reset();
    (close, before)
}

/// Many small game messages in one buffer, masked as a client sends them.
fn ticks(count: u32) -> Vec<u8> {
    (0..count).flat_map(|n| raw::text(&numbered(n))).collect()
}

/// A flooder that goes on sending at full speed after it was refused still
/// reads its `rate_limited` error and the 1008 close frame: the node closes
/// in good order (close frame, then it reads and discards what the client
/// still sends) instead of closing a socket with unread data, which makes
/// the kernel reset the connection and throw away both frames.
#[test]
fn a_flooder_reads_why_it_was_closed() {
    let c = Relays::memory_with(&["--message-rate", "10", "--message-burst", "10"]);
    let mut socket = RawSocket::upgrade(c.addr_a());
    socket.send(&raw::text(&format!(
        r#"{{"join":"flood-{}"}}"#,
        support::unique()
    )));
    let joined = socket.read_frame().expect("joined");
    assert!(
        joined
            .text()
            .is_some_and(|t| t.contains(r#""type":"joined""#)),
        "{joined:?}"
    );
    let (close, before) = refused_while_sending(socket, Vec::new(), ticks(1000));
    assert!(!before.is_empty(), "a rate_limited error before the close");
    for frame in &before {
        let error: Value = serde_json::from_str(frame.text().expect("text")).expect("JSON");
        assert_error("flooder", &error, "rate_limited");
    }
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
}

/// A message over `--max-message-bytes` from a client that goes on sending
/// (the rest of its 1 MiB frame, and more): it reads `message_too_large`
/// and the 1009 close frame, not a reset.
#[test]
fn an_oversized_message_is_answered_while_the_client_sends() {
    let c = Relays::memory();
    let socket = RawSocket::upgrade(c.addr_a());
    let header = raw::frame(raw::FIN | raw::BINARY, &vec![0; 1024 * 1024], true)[..14].to_vec();
    let (close, before) = refused_while_sending(socket, header, vec![b'x'; 64 * 1024]);
    assert_eq!(before.len(), 1, "{before:?}");
    let error: Value = serde_json::from_str(before[0].text().expect("text")).expect("JSON");
    assert_error("sender", &error, "message_too_large");
    assert_eq!(close.close_code(), Some(1009), "{close:?}");
}

/// A connection over `--max-connections` that starts sending at once still
/// reads its 1013.
#[test]
fn a_connection_over_the_limit_reads_1013_while_it_sends() {
    let c = Relays::memory_with(&["--max-connections", "1"]);
    let mut first = RawSocket::upgrade(c.addr_a());
    let second = RawSocket::upgrade(c.addr_a());
    let (close, before) = refused_while_sending(second, Vec::new(), ticks(1000));
    assert_eq!(before, [], "nothing but the close frame");
    assert_eq!(close.close_code(), Some(1013), "{close:?}");
    first.assert_open();
}

/// Other client addresses than the tests' 127.0.0.1, on the loopback.
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PLAYER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Opens `count` TCP connections to `addr` that send nothing: half-open
/// handshakes (slowloris).
fn silent(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect()
}

/// How many of `sockets` the node keeps open, once it has closed those it
/// closes (polled for up to 8 s, below the handshake timeout of 10 s; or
/// until at most `expected` remain).
fn still_open(sockets: &[TcpStream], expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let open = sockets.iter().filter(|s| !raw::is_closed(s)).count();
        if open <= expected || Instant::now() > deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Retries an upgrade from `local` until it is a session (a place was
/// freed), for up to 10 s.
fn eventually_a_session(addr: SocketAddr, local: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut socket = RawSocket::upgrade_from(addr, local);
        socket.send(&raw::text(r#"{"type":"ping","t":7}"#));
        let reply = socket.read_frame().expect("an answer");
        if reply.text() == Some(r#"{"type":"pong","t":7}"#) {
            return;
        }
        assert!(
            reply.close_code() == Some(1013) && Instant::now() < deadline,
            "no place was freed: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connections that never send a byte (half-open, slowloris) count toward
/// `--max-connections-per-address` from the moment they are accepted: the
/// node keeps as many of them open as the limit allows (each until the
/// handshake timeout) and closes the rest at once, or after a moment in the
/// small reserve for connections over a limit, instead of giving each a
/// socket for the whole handshake timeout. Other addresses are served
/// meanwhile, and the address gets its places back when they go.
#[test]
fn silent_connections_count_toward_the_address_limit() {
    let c = Relays::memory_with(&["--max-connections-per-address", "10"]);
    let sockets = silent(c.addr_a(), 100);
    assert_eq!(
        still_open(&sockets, 10),
        10,
        "silent connections from one address the node keeps open"
    );
    RawSocket::upgrade_from(c.addr_a(), PLAYER).assert_open();
    drop(sockets);
    eventually_a_session(c.addr_a(), Ipv4Addr::LOCALHOST.into());
}

/// A node whose `--max-connections` are taken by connections still in their
/// handshake: a health check is answered from the reserve (load balancers
/// and probes must not see a full node as a dead one), an upgrade reads
/// 1013, any other page gets 503. One address cannot take the whole
/// reserve. Once the silent connections go, players get in again.
#[test]
fn a_full_node_answers_health_checks_and_refuses_players_with_1013() {
    let c = Relays::memory_with(&["--max-connections", "20"]);
    let addr = c.addr_a();
    let sockets = silent(addr, 20);
    let get = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n");
        RawSocket::connect_from(addr, ELSEWHERE).exchange(&request)
    };
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = get(path);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    let page = get("/playground");
    assert_eq!(page.status, 503, "{}", page.head);
    assert!(page.body.contains("connection"), "{}", page.body);
    let mut refused = RawSocket::upgrade_from(addr, PLAYER);
    let (close, before) = refused.read_until_close();
    assert_eq!(before, [], "nothing but the close frame");
    assert_eq!(close.close_code(), Some(1013), "{close:?}");
    refused.expect_end();

    // More from the address that filled the node: it gets a few places of
    // the reserve at most, and a health check from elsewhere still does.
    let more = silent(addr, 20);
    let kept = still_open(&more, 4);
    assert!(kept <= 4, "{kept} of 20 more silent connections kept");
    assert_eq!(get("/healthz").status, 200);

    drop((sockets, more));
    eventually_a_session(addr, PLAYER);
}
