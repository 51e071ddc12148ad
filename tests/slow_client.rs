//! A client that stops reading is disconnected instead of being buffered
//! without limit, and the other players carry on.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Relays};
use tokio_tungstenite::tungstenite::Message;

/// Player B stops reading while player A floods it with large messages: the
/// relay closes B (its outbound queue is full), A gets `playerLeft`, and in
/// Redis only A's seat remains.
async fn reader_that_stops_is_disconnected(relays: Relays) {
    let mut a = Client::connect(&relays.url_a(), "A").await;
    let mut b = Client::connect(&relays.url_b(), "B").await;
    let pass = format!("slow-reader-{}", support::unique());
    a.join(&pass).await;
    b.join(&pass).await;
    a.expect_json(json!({"type":"ready","players":2})).await;
    b.expect_json(json!({"type":"ready","players":2})).await;

    // B reads nothing from here on. A sends 32 KiB messages until the relay
    // gives up on B (bounded: at most 2,000 messages, 64 MiB).
    let (mut a_tx, mut a_rx) = a.split();
    let flood = tokio::spawn(async move {
        let body = "x".repeat(32 * 1024 - 40);
        for i in 0..2000 {
            let text = format!(r#"{{"type":"flood","i":{i},"pad":"{body}"}}"#);
            a_tx.send_text(&text).await;
        }
        a_tx
    });
    let left = a_rx.recv_within(Duration::from_secs(30)).await;
    assert_eq!(
        left.into_text().expect("a text frame").as_str(),
        r#"{"type":"playerLeft","players":1,"seat":2}"#
    );
    let _ = flood.await;

    if let Some(redis) = relays.redis_probe().await {
        let seats = redis.hgetall(&support::lobby_key(&pass)).await;
        assert_eq!(seats.len(), 1, "only A's seat remains: {seats:?}");
        assert!(seats.contains_key("1"), "{seats:?}");
    }
    drop(b);
}

#[tokio::test]
async fn reader_that_stops_is_disconnected_redis() {
    let args = [
        "--outbound-queue-bytes",
        "65536",
        "--max-message-bytes",
        "65536",
    ];
    support::run(Relays::redis_with(&args), reader_that_stops_is_disconnected).await;
}

#[tokio::test]
async fn reader_that_stops_is_disconnected_memory() {
    let args = [
        "--outbound-queue-bytes",
        "65536",
        "--max-message-bytes",
        "65536",
    ];
    support::run(
        Relays::memory_with(&args),
        reader_that_stops_is_disconnected,
    )
    .await;
}

/// A client that goes silent (it does not even answer the relay's pings) is
/// closed after `--idle-timeout`, and its lobby gets `playerLeft`; a client
/// that is merely quiet but answers pings (every WebSocket library does, as
/// long as it reads) stays.
async fn silent_client_is_closed_after_the_idle_timeout(relays: Relays) {
    let mut a = Client::connect(&relays.url_a(), "A").await;
    let mut b = Client::connect(&relays.url_b(), "B").await;
    let pass = format!("idle-{}", support::unique());
    a.join(&pass).await;
    b.join(&pass).await;
    a.expect_json(json!({"type":"ready","players":2})).await;
    b.expect_json(json!({"type":"ready","players":2})).await;
    // From here B reads nothing: it never answers a ping again.
    let started = std::time::Instant::now();
    // A keeps reading (so it answers pings) but sends nothing.
    let left = a.recv_json_within(Duration::from_secs(5)).await;
    assert_eq!(left, json!({"type":"playerLeft","players":1,"seat":2}));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s idle timeout"
    );
    // A, quiet for as long but answering pings, is still there.
    a.assert_open().await;
    drop(b);
}

#[tokio::test]
async fn silent_client_is_closed_after_the_idle_timeout_redis() {
    support::run(
        Relays::redis_with(&["--idle-timeout", "1s"]),
        silent_client_is_closed_after_the_idle_timeout,
    )
    .await;
}

#[tokio::test]
async fn silent_client_is_closed_after_the_idle_timeout_memory() {
    support::run(
        Relays::memory_with(&["--idle-timeout", "1s"]),
        silent_client_is_closed_after_the_idle_timeout,
    )
    .await;
}

/// A client that reads nothing at all, with more queued for it than its
/// socket takes, but not enough to pass `--outbound-queue-bytes`: when its
/// session ends (here: the idle timeout), the node's writer is still stuck
/// in a write. It gives up a moment later and the connection is closed, so
/// its place under `--max-connections` is free again; before, the writer
/// waited for ever and held the place, the socket and the queue.
#[tokio::test]
async fn a_client_that_reads_nothing_is_let_go_after_its_session() {
    const MESSAGE: usize = 60 * 1024;
    let relays = Relays::memory_with(&[
        "--idle-timeout",
        "1s",
        "--max-connections",
        "2",
        "--max-message-bytes",
        "65536",
        "--outbound-queue-bytes",
        "67108864",
    ]);
    let mut a = Client::connect(&relays.url_a(), "A").await;
    let mut b = Client::connect(&relays.url_a(), "B").await;
    let pass = format!("reads-nothing-{}", support::unique());
    a.join(&pass).await;
    b.join(&pass).await;
    a.expect_json(json!({"type":"ready","players":2})).await;
    // From here B reads nothing. 16 MiB for it: far more than the socket
    // buffers between the node and B hold, a quarter of its queue.
    let body = "x".repeat(MESSAGE - 40);
    for i in 0..(16 * 1024 * 1024 / MESSAGE) {
        a.send_text(&format!(r#"{{"type":"bulk","i":{i},"pad":"{body}"}}"#))
            .await;
    }
    // B is silent: closed after the idle timeout (1 s), and A is told.
    let left = a.recv_json_within(Duration::from_secs(10)).await;
    assert_eq!(left, json!({"type":"playerLeft","players":1,"seat":2}));
    // A stays, reading (so it answers the node's pings): the place to free
    // is B's.
    let (_a_tx, mut a_rx) = a.split();
    let a_reads = tokio::spawn(async move {
        loop {
            match a_rx.try_recv_within(Duration::from_secs(60)).await {
                Ok(Some(other)) => panic!("A: unexpected {other:?}"),
                Ok(None) => {}
                Err(e) => panic!("A: {e}"),
            }
        }
    });
    // B's place is given again once its connection is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = Client::connect(&relays.url_a(), "C").await;
        c.send_json(json!({"type": "ping", "t": 1})).await;
        match c.recv().await {
            Message::Text(text) => {
                assert_eq!(text.as_str(), r#"{"type":"pong","t":1}"#);
                break;
            }
            Message::Close(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("B's place was never given again: {other:?}"),
        }
    }
    a_reads.abort();
    drop(b);
}
