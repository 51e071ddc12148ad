//! Behavioural tests of the relay against `docs/protocol.md`, through real
//! processes: every test in the first part runs twice, against two nodes
//! sharing a private Redis (players on different nodes) and against one node
//! in memory. The Redis-only tests at the end look inside Redis.
//!
//! Many tests prove that "nothing else arrived" without sleeping, by a round
//! trip of fresh messages ([`support::assert_quiet_pair`]): one sender's
//! messages keep their order, so anything wrongly relayed, echoed or
//! announced before the round trip would arrive ahead of it.

use crate::support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use support::{
    Client, Receiver, Relays, Sender, assert_error, assert_quiet_pair, game_message, lobby_channel,
    lobby_id, lobby_key, pair, pair_named,
};
use tokio_tungstenite::tungstenite;

/// How long a test listens to prove that something did not happen, where no
/// round trip can prove it.
const QUIET: Duration = Duration::from_millis(200);

fn joined(players: u64, capacity: u64, seat: u64) -> Value {
    json!({"type": "joined", "players": players, "capacity": capacity, "seat": seat})
}

fn ready(players: u64) -> Value {
    json!({"type": "ready", "players": players})
}

fn player_joined(players: u64, seat: u64) -> Value {
    json!({"type": "playerJoined", "players": players, "seat": seat})
}

fn player_left(players: u64, seat: u64) -> Value {
    json!({"type": "playerLeft", "players": players, "seat": seat})
}

// ---------------------------------------------------------------------------
// Joining
// ---------------------------------------------------------------------------

both_flavours!(seed_flow => seed_flow_redis, seed_flow_memory);
/// join, short-form join, `ready` to both; a game message crosses byte for byte, unechoed.
async fn seed_flow(c: Relays) {
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;

    a.send_json(json!({"type": "join", "passphrase": "jump-rocket"}))
        .await;
    a.expect_json(joined(1, 2, 1)).await;
    b.send_json(json!({"join": "jump-rocket"})).await;
    b.expect_json(joined(2, 2, 2)).await;
    a.expect_json(ready(2)).await;
    b.expect_json(ready(2)).await;

    let exact = r#"{"type":"playerMove","x":1,"y":2}"#;
    a.send_text(exact).await;
    b.expect_text(exact).await;
    let odd_spacing = r#"{"type":"playerMove",  "x":1 }"#;
    a.send_text(odd_spacing).await;
    b.expect_text(odd_spacing).await;
    let unusual = "{ \"y\" : 2.50, \"type\" : \"playerMove\", \"name\":\"j\\u00fcmp 🚀\" }\n";
    a.send_text(unusual).await;
    b.expect_text(unusual).await;

    // B's answer is the next thing A gets: no echo of A's own moves came first.
    let answer = r#"{"type":"playerMove","x":-3,"y":0}"#;
    b.send_text(answer).await;
    a.expect_text(answer).await;
    a.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
}

both_flavours!(sending_right_after_ready_is_safe
    => sending_right_after_ready_is_safe_redis, sending_right_after_ready_is_safe_memory);
/// Messages sent the moment `ready` arrives are neither lost nor ahead of `joined`/`ready`.
async fn sending_right_after_ready_is_safe(c: Relays) {
    for round in 0..10 {
        let passphrase = format!("instant-{round}");
        let mut a = Client::connect(&c.url_a(), "A").await;
        let mut b = Client::connect(&c.url_b(), "B").await;
        a.send_join(&passphrase).await;
        a.expect_json(joined(1, 2, 1)).await;
        b.send_join(&passphrase).await;

        let from_a = game_message("fromA");
        let from_b = game_message("fromB");
        tokio::join!(
            async {
                a.expect_json(ready(2)).await;
                a.send_text(&from_a).await;
                a.expect_text(&from_b).await;
            },
            async {
                b.expect_json(joined(2, 2, 2)).await;
                b.expect_json(ready(2)).await;
                b.send_text(&from_b).await;
                b.expect_text(&from_a).await;
            },
        );
    }
}

both_flavours!(passphrases_are_normalised
    => passphrases_are_normalised_redis, passphrases_are_normalised_memory);
/// Passphrases are trimmed and ASCII lower-cased before they name a lobby.
async fn passphrases_are_normalised(c: Relays) {
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    a.send_join("  Jump-Rocket ").await;
    a.expect_json(joined(1, 2, 1)).await;
    b.send_join("jump-rocket").await;
    b.expect_json(joined(2, 2, 2)).await;
    a.expect_json(ready(2)).await;
    b.expect_json(ready(2)).await;
    assert_quiet_pair(&mut a, &mut b).await;

    let mut x = Client::connect(&c.url_a(), "X").await;
    let mut y = Client::connect(&c.url_b(), "Y").await;
    x.send_join("\tABC-123\n").await;
    x.expect_json(joined(1, 2, 1)).await;
    y.send_json(json!({"join": "abc-123"})).await;
    y.expect_json(joined(2, 2, 2)).await;
    x.expect_json(ready(2)).await;
    y.expect_json(ready(2)).await;
    assert_quiet_pair(&mut x, &mut y).await;
}

both_flavours!(invalid_passphrases_are_refused
    => invalid_passphrases_are_refused_redis, invalid_passphrases_are_refused_memory);
/// Bad passphrases get `invalid_passphrase`, malformed joins `invalid_message`; nothing changes.
async fn invalid_passphrases_are_refused(c: Relays) {
    let mut a = Client::connect(&c.url_a(), "A").await;
    let too_long = "a".repeat(65);
    let invalid = [
        "ab",
        too_long.as_str(),
        "jump_rocket",
        "-jump",
        "jump-",
        "",
        "   ",
        "jump rocket",
        "jümp-rocket",
    ];
    for passphrase in invalid {
        a.send_join(passphrase).await;
        a.expect_error("invalid_passphrase").await;
        a.assert_open().await;
    }
    a.send_json(json!({"join": "ab"})).await;
    a.expect_error("invalid_passphrase").await;
    a.assert_open().await;

    a.send_json(json!({"type": "join"})).await;
    a.expect_error("invalid_message").await;
    a.assert_open().await;
    a.send_json(json!({"type": "join", "passphrase": 5})).await;
    a.expect_error("invalid_message").await;
    a.assert_open().await;

    // Nothing changed: the connection is in no lobby ...
    a.send_text(&game_message("playerMove")).await;
    a.expect_error("not_in_lobby").await;
    if let Some(redis) = c.redis_probe().await {
        assert_eq!(redis.keys("lr:lobby:*").await, Vec::<String>::new());
    }

    // ... and the shortest and longest valid passphrases work.
    let longest = "a".repeat(64);
    for passphrase in ["a1b", "0-9", longest.as_str()] {
        a.send_join(passphrase).await;
        a.expect_json(joined(1, 2, 1)).await;
        a.leave().await;
        a.assert_open().await;
    }
}

both_flavours!(racing_joins_fill_the_lobby_exactly
    => racing_joins_fill_the_lobby_exactly_redis, racing_joins_fill_the_lobby_exactly_memory);
/// Ten simultaneous joins on both nodes: exactly two `joined`, eight `lobby_full`.
async fn racing_joins_fill_the_lobby_exactly(c: Relays) {
    let redis = c.redis_probe().await;
    for round in 0..5 {
        let passphrase = format!("race-{round}");
        let mut clients = Vec::new();
        for i in 0..10 {
            clients.push(Client::connect(&c.url(i), &format!("R{round}.{i}")).await);
        }
        join_all(
            clients
                .iter_mut()
                .map(|client| client.send_join(&passphrase)),
        )
        .await;
        let replies = join_all(clients.iter_mut().map(|client| client.recv_json())).await;

        let (winners, losers): (Vec<usize>, Vec<usize>) =
            (0..10).partition(|&i| replies[i]["type"] == "joined");
        assert_eq!(
            winners.len(),
            2,
            "round {round}: exactly two may join: {replies:#?}"
        );
        for &i in &losers {
            assert_error(clients[i].name(), &replies[i], "lobby_full");
        }
        let mut granted: Vec<String> = winners.iter().map(|&i| replies[i].to_string()).collect();
        granted.sort();
        let mut expected = vec![joined(1, 2, 1).to_string(), joined(2, 2, 2).to_string()];
        expected.sort();
        assert_eq!(granted, expected, "round {round}: seats handed out");

        for &i in &winners {
            clients[i].expect_json(ready(2)).await;
        }
        for &i in &losers {
            clients[i].assert_open().await;
        }
        let (first, second) = clients.split_at_mut(winners[1]);
        assert_quiet_pair(&mut first[winners[0]], &mut second[0]).await;
        if let Some(redis) = &redis {
            let seats = redis.hgetall(&lobby_key(&passphrase)).await;
            let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
            assert_eq!(fields, ["1", "2"], "round {round}: Redis seats {seats:?}");
        }
    }
}

both_flavours!(freed_seat_is_taken_again
    => freed_seat_is_taken_again_redis, freed_seat_is_taken_again_memory);
/// A freed seat 1 goes to the next joiner, and the lobby is `ready` again.
async fn freed_seat_is_taken_again(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    a.leave().await;
    b.expect_json(player_left(1, 1)).await;

    let mut newcomer = Client::connect(&c.url_a(), "C").await;
    newcomer.send_join("jump-rocket").await;
    newcomer.expect_json(joined(2, 2, 1)).await;
    b.expect_json(ready(2)).await;
    newcomer.expect_json(ready(2)).await;
    assert_quiet_pair(&mut b, &mut newcomer).await;
    assert_quiet_pair(&mut newcomer, &mut b).await;
    a.assert_open().await;
}

both_flavours!(capacity_three_lobby
    => capacity_three_lobby_redis, capacity_three_lobby_memory,
    args: ["--lobby-capacity", "3"]);
/// Capacity 3: `playerJoined`, then `ready` for all; fan-out to both others; seat reuse.
async fn capacity_three_lobby(c: Relays) {
    let mut p1 = Client::connect(&c.url_a(), "P1").await;
    let mut p2 = Client::connect(&c.url_b(), "P2").await;
    let mut p3 = Client::connect(&c.url_a(), "P3").await;

    p1.send_join("tri-lobby").await;
    p1.expect_json(joined(1, 3, 1)).await;
    p2.send_join("tri-lobby").await;
    p2.expect_json(joined(2, 3, 2)).await;
    p1.expect_json(player_joined(2, 2)).await;
    p3.send_join("tri-lobby").await;
    p3.expect_json(joined(3, 3, 3)).await;
    for p in [&mut p1, &mut p2, &mut p3] {
        p.expect_json(ready(3)).await;
    }

    // Each message reaches both others. Each sender's next message comes
    // after it has received another's, so an echo would show up first.
    for round in 0..4 {
        let message = game_message("fanOut");
        let (sender, others) = match round % 3 {
            0 => (&mut p1, [&mut p2, &mut p3]),
            1 => (&mut p2, [&mut p1, &mut p3]),
            _ => (&mut p3, [&mut p1, &mut p2]),
        };
        sender.send_text(&message).await;
        for other in others {
            other.expect_text(&message).await;
        }
    }

    // The middle seat is freed and taken again.
    p2.leave().await;
    p1.expect_json(player_left(2, 2)).await;
    p3.expect_json(player_left(2, 2)).await;
    let mut p4 = Client::connect(&c.url_b(), "P4").await;
    p4.send_join("tri-lobby").await;
    p4.expect_json(joined(3, 3, 2)).await;
    for p in [&mut p1, &mut p3, &mut p4] {
        p.expect_json(ready(3)).await;
    }
    p2.assert_open().await;
}

// ---------------------------------------------------------------------------
// Leaving
// ---------------------------------------------------------------------------

both_flavours!(leave_notifies_and_allows_joining_again
    => leave_notifies_and_allows_joining_again_redis,
       leave_notifies_and_allows_joining_again_memory);
/// `leave` is silent, tells the others `playerLeft`, and the connection may join again.
async fn leave_notifies_and_allows_joining_again(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;

    a.leave().await;
    b.expect_json(player_left(1, 1)).await;
    a.assert_open().await; // silent success: the pong comes first

    // Out of the lobby, game messages and `leave` are refused.
    a.send_text(&game_message("playerMove")).await;
    a.expect_error("not_in_lobby").await;
    a.send_binary(vec![1, 2, 3]).await;
    a.expect_error("not_in_lobby").await;
    a.leave().await;
    a.expect_error("not_in_lobby").await;
    b.expect_silence(QUIET).await;

    // The same lobby again: the lowest free seat is 1.
    a.send_join("jump-rocket").await;
    a.expect_json(joined(2, 2, 1)).await;
    a.expect_json(ready(2)).await;
    b.expect_json(ready(2)).await;
    assert_quiet_pair(&mut a, &mut b).await;

    // Another lobby.
    a.leave().await;
    b.expect_json(player_left(1, 1)).await;
    a.send_join("other-lobby").await;
    a.expect_json(joined(1, 2, 1)).await;
    let mut d = Client::connect(&c.url_b(), "D").await;
    d.send_join("other-lobby").await;
    d.expect_json(joined(2, 2, 2)).await;
    a.expect_json(ready(2)).await;
    d.expect_json(ready(2)).await;
    assert_quiet_pair(&mut a, &mut d).await;
    b.assert_open().await;
    b.expect_silence(QUIET).await;
}

both_flavours!(disconnect_notifies_the_others
    => disconnect_notifies_the_others_redis, disconnect_notifies_the_others_memory);
/// A Close handshake or a dropped TCP connection is announced as `playerLeft`.
async fn disconnect_notifies_the_others(c: Relays) {
    let (a, mut b) = pair(&c, "jump-rocket").await;
    a.close().await;
    b.expect_json(player_left(1, 1)).await;

    let mut e = Client::connect(&c.url_a(), "E").await;
    e.send_join("jump-rocket").await;
    e.expect_json(joined(2, 2, 1)).await;
    b.expect_json(ready(2)).await;
    e.expect_json(ready(2)).await;
    drop(e); // no Close frame: the TCP connection just ends
    b.expect_json(player_left(1, 1)).await;

    let mut f = Client::connect(&c.url_b(), "F").await;
    f.send_join("jump-rocket").await;
    f.expect_json(joined(2, 2, 1)).await;
    b.expect_json(ready(2)).await;
    f.expect_json(ready(2)).await;
    assert_quiet_pair(&mut b, &mut f).await;
}

// ---------------------------------------------------------------------------
// Relaying
// ---------------------------------------------------------------------------

both_flavours!(thousand_messages_each_way_arrive_in_order
    => thousand_messages_each_way_arrive_in_order_redis,
       thousand_messages_each_way_arrive_in_order_memory);
/// 1,000 messages each way, sent concurrently without waiting, arrive complete and in order.
async fn thousand_messages_each_way_arrive_in_order(c: Relays) {
    const COUNT: usize = 1000;
    fn numbered(from: &str, n: usize) -> String {
        format!(
            r#"{{"type":"seq","from":"{from}","n":{n},"pad":"{}"}}"#,
            "·".repeat(n % 40)
        )
    }
    async fn send_all(mut tx: Sender, from: &'static str) -> Sender {
        for n in 0..COUNT {
            tx.send_text(&numbered(from, n)).await;
        }
        tx
    }
    async fn receive_all(mut rx: Receiver, from: &'static str) -> Receiver {
        for n in 0..COUNT {
            let got = rx.recv_text().await;
            assert_eq!(
                got,
                numbered(from, n),
                "{}: message {n} from {from}",
                rx.name()
            );
        }
        rx
    }

    let (a, b) = pair(&c, "jump-rocket").await;
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();
    // Each half runs as a task of its own, so that the clients read as fast
    // as the relay writes, whatever the senders are doing.
    let a_sending = tokio::spawn(send_all(a_tx, "a"));
    let a_receiving = tokio::spawn(receive_all(a_rx, "b"));
    let b_sending = tokio::spawn(send_all(b_tx, "b"));
    let b_receiving = tokio::spawn(receive_all(b_rx, "a"));
    let (_a_tx, mut a_rx, _b_tx, mut b_rx) = (
        support::finish(a_sending).await,
        support::finish(a_receiving).await,
        support::finish(b_sending).await,
        support::finish(b_receiving).await,
    );
    a_rx.expect_silence(QUIET).await;
    b_rx.expect_silence(QUIET).await;
}

both_flavours!(binary_frames_are_relayed_byte_for_byte
    => binary_frames_are_relayed_byte_for_byte_redis,
       binary_frames_are_relayed_byte_for_byte_memory);
/// Binary frames are relayed byte for byte, in order with text frames, never echoed.
async fn binary_frames_are_relayed_byte_for_byte(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;

    let every_byte: Vec<u8> = (0..=255).collect();
    a.send_binary(every_byte.clone()).await;
    assert_eq!(b.recv_binary().await, every_byte);

    let not_utf8 = vec![0xff, 0xfe, 0x00, 0xc3, 0x28];
    b.send_binary(not_utf8.clone()).await;
    assert_eq!(
        a.recv_binary().await,
        not_utf8,
        "A: no echo of its frame came first"
    );

    let looks_like_json = br#"{"type":"ready","players":2}"#.to_vec();
    a.send_binary(looks_like_json.clone()).await;
    assert_eq!(b.recv_binary().await, looks_like_json);

    // Text and binary from one sender keep their order.
    let text = game_message("between");
    a.send_binary(vec![1]).await;
    a.send_text(&text).await;
    a.send_binary(vec![2]).await;
    assert_eq!(b.recv_binary().await, [1]);
    b.expect_text(&text).await;
    assert_eq!(b.recv_binary().await, [2]);

    assert_quiet_pair(&mut b, &mut a).await;
}

both_flavours!(lobbies_are_isolated => lobbies_are_isolated_redis, lobbies_are_isolated_memory);
/// Messages and events of one lobby never reach another.
async fn lobbies_are_isolated(c: Relays) {
    let (mut x1, mut x2) = pair_named(&c, "lobby-x", "X1", "X2").await;
    let (mut y1, mut y2) = pair_named(&c, "lobby-y", "Y1", "Y2").await;

    let in_x = game_message("inX");
    x1.send_text(&in_x).await;
    x2.expect_text(&in_x).await;
    x2.send_binary(vec![7, 7, 7]).await;
    assert_eq!(x1.recv_binary().await, [7, 7, 7]);
    assert_quiet_pair(&mut y1, &mut y2).await;

    let in_y = game_message("inY");
    y2.send_text(&in_y).await;
    y1.expect_text(&in_y).await;
    assert_quiet_pair(&mut x2, &mut x1).await;

    y1.leave().await;
    y2.expect_json(player_left(1, 1)).await;
    assert_quiet_pair(&mut x1, &mut x2).await;
    x1.expect_silence(QUIET).await;
    x2.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------
// Ping and errors
// ---------------------------------------------------------------------------

both_flavours!(ping_is_answered_with_pong
    => ping_is_answered_with_pong_redis, ping_is_answered_with_pong_memory);
/// `ping` gets `pong` echoing `t` as given (or no `t`), in a lobby or not, never relayed.
async fn ping_is_answered_with_pong(c: Relays) {
    async fn check(client: &mut Client) {
        client.send_json(json!({"type": "ping", "t": 123})).await;
        client.expect_json(json!({"type": "pong", "t": 123})).await;
        client.send_json(json!({"type": "ping"})).await;
        client.expect_json(json!({"type": "pong"})).await;
        client.send_json(json!({"type": "ping", "t": "abc"})).await;
        client
            .expect_json(json!({"type": "pong", "t": "abc"}))
            .await;
        client
            .send_json(json!({"type": "ping", "t": 1_732_460_000_123_u64}))
            .await;
        client
            .expect_json(json!({"type": "pong", "t": 1_732_460_000_123_u64}))
            .await;
        client
            .send_json(json!({"type": "ping", "t": {"a": [1, 2.5, null]}}))
            .await;
        client
            .expect_json(json!({"type": "pong", "t": {"a": [1, 2.5, null]}}))
            .await;
    }

    let mut lonely = Client::connect(&c.url_a(), "L").await;
    check(&mut lonely).await;

    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    check(&mut a).await;
    check(&mut b).await;
    assert_quiet_pair(&mut a, &mut b).await;
}

both_flavours!(ping_may_ask_for_the_node
    => ping_may_ask_for_the_node_redis, ping_may_ask_for_the_node_memory);
/// *(Addition to v1)* a ping with `"node":true` gets a pong naming the node
/// the connection is on; any other `node` value changes nothing.
async fn ping_may_ask_for_the_node(c: Relays) {
    let mut a = Client::connect(&c.url_a(), "A").await;
    a.send_json(json!({"type": "ping", "t": 7, "node": true}))
        .await;
    a.expect_json(json!({"type": "pong", "t": 7, "node": "a"}))
        .await;
    a.send_json(json!({"type": "ping", "node": true})).await;
    a.expect_json(json!({"type": "pong", "node": "a"})).await;
    a.send_json(json!({"type": "ping", "t": 8, "node": false}))
        .await;
    a.expect_json(json!({"type": "pong", "t": 8})).await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    b.send_json(json!({"type": "ping", "t": 9, "node": true}))
        .await;
    let node_b = if c.is_redis() { "b" } else { "a" };
    b.expect_json(json!({"type": "pong", "t": 9, "node": node_b}))
        .await;
}

both_flavours!(invalid_json_keeps_connection_open
    => invalid_json_keeps_connection_open_redis, invalid_json_keeps_connection_open_memory);
/// Non-JSON text gets `invalid_json`, is not relayed, and the connection stays open.
async fn invalid_json_keeps_connection_open(c: Relays) {
    let not_json = ["not json", r#"{"type":"#, "", "{'type':'x'}"];
    let mut lonely = Client::connect(&c.url_a(), "L").await;
    for text in not_json {
        lonely.send_text(text).await;
        lonely.expect_error("invalid_json").await;
        lonely.assert_open().await;
    }

    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    for text in not_json {
        a.send_text(text).await;
        a.expect_error("invalid_json").await;
        a.assert_open().await;
    }
    assert_quiet_pair(&mut a, &mut b).await;
}

both_flavours!(invalid_message_keeps_connection_open
    => invalid_message_keeps_connection_open_redis,
       invalid_message_keeps_connection_open_memory);
/// JSON without a string `type` gets `invalid_message`, is not relayed, stays open.
async fn invalid_message_keeps_connection_open(c: Relays) {
    let invalid = [
        "[1,2]",
        r#"{"x":1}"#,
        r#"{"type":5}"#,
        r#"{"type":null}"#,
        r#"{"type":["a"]}"#,
        r#""str""#,
        "42",
        "null",
    ];
    let mut lonely = Client::connect(&c.url_a(), "L").await;
    for text in invalid {
        lonely.send_text(text).await;
        lonely.expect_error("invalid_message").await;
        lonely.assert_open().await;
    }

    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    for text in invalid {
        a.send_text(text).await;
        a.expect_error("invalid_message").await;
        a.assert_open().await;
    }
    assert_quiet_pair(&mut a, &mut b).await;
}

both_flavours!(reserved_types_are_not_relayed
    => reserved_types_are_not_relayed_redis, reserved_types_are_not_relayed_memory);
/// Game messages using protocol type names get `reserved_type` and never reach the peer.
async fn reserved_types_are_not_relayed(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    let forged = [
        json!({"type": "ready"}),
        json!({"type": "joined"}),
        json!({"type": "pong"}),
        json!({"type": "error"}),
        json!({"type": "playerJoined"}),
        json!({"type": "playerLeft"}),
        json!({"type": "ready", "players": 2}),
        json!({"type": "playerLeft", "players": 1, "seat": 1}),
        json!({"type": "error", "code": "lobby_full", "message": "forged"}),
    ];
    for message in forged {
        a.send_json(message).await;
        a.expect_error("reserved_type").await;
        a.assert_open().await;
    }
    assert_quiet_pair(&mut a, &mut b).await;
}

both_flavours!(not_in_lobby_before_joining
    => not_in_lobby_before_joining_redis, not_in_lobby_before_joining_memory);
/// Game messages (text, binary) and `leave` before joining get `not_in_lobby`; stays open.
async fn not_in_lobby_before_joining(c: Relays) {
    let mut a = Client::connect(&c.url_a(), "A").await;
    a.send_text(r#"{"type":"playerMove","x":1,"y":2}"#).await;
    a.expect_error("not_in_lobby").await;
    a.assert_open().await;
    a.leave().await;
    a.expect_error("not_in_lobby").await;
    a.assert_open().await;
    a.send_binary(vec![1, 2, 3]).await;
    a.expect_error("not_in_lobby").await;
    a.assert_open().await;

    a.send_join("jump-rocket").await;
    a.expect_json(joined(1, 2, 1)).await;
}

both_flavours!(join_while_joined_is_refused
    => join_while_joined_is_refused_redis, join_while_joined_is_refused_memory);
/// `join` while joined gets `already_joined` and changes no lobby.
async fn join_while_joined_is_refused(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    a.send_join("jump-rocket").await;
    a.expect_error("already_joined").await;
    a.assert_open().await;
    a.send_join("other-lobby").await;
    a.expect_error("already_joined").await;
    a.assert_open().await;
    b.send_json(json!({"join": "other-lobby"})).await;
    b.expect_error("already_joined").await;
    b.assert_open().await;
    assert_quiet_pair(&mut a, &mut b).await;

    let mut newcomer = Client::connect(&c.url_a(), "C").await;
    newcomer.send_join("other-lobby").await;
    newcomer.expect_json(joined(1, 2, 1)).await;
    let mut late = Client::connect(&c.url_b(), "D").await;
    late.send_join("jump-rocket").await;
    late.expect_error("lobby_full").await;
}

both_flavours!(full_lobby_refuses_a_third
    => full_lobby_refuses_a_third_redis, full_lobby_refuses_a_third_memory);
/// A third joiner gets `lobby_full` on either node; the members notice nothing.
async fn full_lobby_refuses_a_third(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;

    for (i, url) in [c.url_a(), c.url_b()].into_iter().enumerate() {
        let mut third = Client::connect(&url, &format!("C{i}")).await;
        if i == 0 {
            third.send_join("jump-rocket").await;
        } else {
            third.send_json(json!({"join": " JUMP-ROCKET "})).await;
        }
        third.expect_error("lobby_full").await;
        third.assert_open().await;
        third.send_join(&format!("elsewhere-{i}")).await;
        third.expect_json(joined(1, 2, 1)).await;
    }

    assert_quiet_pair(&mut a, &mut b).await;
    a.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
    if let Some(redis) = c.redis_probe().await {
        let seats = redis.hgetall(&lobby_key("jump-rocket")).await;
        let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
        assert_eq!(fields, ["1", "2"], "Redis seats {seats:?}");
    }
}

both_flavours!(oversized_text_frame_closes_with_1009
    => oversized_text_frame_closes_with_1009_redis,
       oversized_text_frame_closes_with_1009_memory,
    args: ["--max-message-bytes", "1024"]);
/// A text frame over the limit gets `message_too_large`, close 1009, `playerLeft` to the peer.
async fn oversized_text_frame_closes_with_1009(c: Relays) {
    fn padded(len: usize) -> String {
        let head = r#"{"type":"big","pad":""#;
        let text = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
        assert_eq!(text.len(), len);
        text
    }

    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    let fits = padded(1000);
    a.send_text(&fits).await;
    b.expect_text(&fits).await;

    a.send_text(&padded(2000)).await;
    a.expect_error("message_too_large").await;
    a.expect_close(1009).await;
    b.expect_json(player_left(1, 1)).await;
    b.assert_open().await;

    // Outside a lobby too.
    let mut lonely = Client::connect(&c.url_b(), "L").await;
    lonely.send_text(&padded(2000)).await;
    lonely.expect_error("message_too_large").await;
    lonely.expect_close(1009).await;
}

both_flavours!(oversized_binary_frame_closes_with_1009
    => oversized_binary_frame_closes_with_1009_redis,
       oversized_binary_frame_closes_with_1009_memory,
    args: ["--max-message-bytes", "1024"]);
/// A binary frame over the limit gets `message_too_large`, close 1009, `playerLeft` to the peer.
async fn oversized_binary_frame_closes_with_1009(c: Relays) {
    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    b.send_binary(vec![0xab; 1000]).await;
    assert_eq!(a.recv_binary().await, vec![0xab; 1000]);

    b.send_binary(vec![0xcd; 2000]).await;
    b.expect_error("message_too_large").await;
    b.expect_close(1009).await;
    a.expect_json(player_left(1, 2)).await;
    a.assert_open().await;
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

both_flavours!(only_root_and_ws_paths_upgrade
    => only_root_and_ws_paths_upgrade_redis, only_root_and_ws_paths_upgrade_memory);
/// A WebSocket handshake on `/nope` gets HTTP 404; `/ws` works like `/`.
async fn only_root_and_ws_paths_upgrade(c: Relays) {
    let nope = format!("ws://{}/nope", c.addr_a());
    match support::try_connect(&nope).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404, "{nope}: {response:?}")
        }
        Err(other) => panic!("{nope}: expected HTTP 404, got {other}"),
        Ok(_) => panic!("{nope}: the WebSocket handshake succeeded"),
    }

    let mut w = Client::connect(&format!("ws://{}/ws", c.addr_a()), "W").await;
    w.send_join("jump-rocket").await;
    w.expect_json(joined(1, 2, 1)).await;
    let mut r = Client::connect(&c.url_b(), "R").await;
    r.send_join("jump-rocket").await;
    r.expect_json(joined(2, 2, 2)).await;
    w.expect_json(ready(2)).await;
    r.expect_json(ready(2)).await;
    assert_quiet_pair(&mut w, &mut r).await;
}

// ---------------------------------------------------------------------------
// Redis only
// ---------------------------------------------------------------------------

redis_only!(lobby_hash_holds_exactly_the_seats => lobby_hash_holds_exactly_the_seats_redis);
/// `lr:lobby:{<sha256>}` holds exactly the live seats; `lr:chan:{<sha256>}` is subscribed.
async fn lobby_hash_holds_exactly_the_seats(c: Relays) {
    let redis = c.redis_probe().await.expect("Redis flavour");
    let key = lobby_key("jump-rocket");
    // `printf jump-rocket | sha256sum`, to pin the layout independently.
    assert_eq!(
        key,
        "lr:lobby:{d41c1447c031126dec71611ad10ab450600668861d392ef958758d79cc7f7c62}"
    );

    let mut a = Client::connect(&c.url_a(), "A").await;
    a.send_join("jump-rocket").await;
    a.expect_json(joined(1, 2, 1)).await;
    let seats = redis.hgetall(&key).await;
    let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
    assert_eq!(fields, ["1"], "seats after one join: {seats:?}");
    let id_a = seats["1"].clone();

    let mut b = Client::connect(&c.url_b(), "B").await;
    b.send_join("jump-rocket").await;
    b.expect_json(joined(2, 2, 2)).await;
    a.expect_json(ready(2)).await;
    b.expect_json(ready(2)).await;
    let seats = redis.hgetall(&key).await;
    let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
    assert_eq!(fields, ["1", "2"], "seats after two joins: {seats:?}");
    assert_eq!(seats["1"], id_a, "seat 1 keeps its member");
    let id_b = seats["2"].clone();
    for id in [&id_a, &id_b] {
        assert!(!id.is_empty(), "member ids are non-empty: {seats:?}");
        assert!(
            !id.contains("jump-rocket"),
            "member ids are not passphrases: {seats:?}"
        );
    }
    assert_ne!(id_a, id_b, "member ids differ: {seats:?}");
    assert_eq!(redis.keys("lr:lobby:*").await, [key.as_str()]);
    assert_eq!(
        redis.channels("lr:chan:*").await,
        [lobby_channel("jump-rocket")]
    );

    a.leave().await;
    b.expect_json(player_left(1, 1)).await;
    let expected_key = key.clone();
    redis
        .wait_until(support::CLEANUP_TIMEOUT, move |redis| {
            let key = expected_key.clone();
            let id_b = id_b.clone();
            async move {
                let seats = redis.hgetall(&key).await;
                let fields: Vec<&str> = seats.keys().map(String::as_str).collect();
                if fields == ["2"] && seats["2"] == id_b {
                    Ok(())
                } else {
                    Err(format!("after seat 1 left, {key} holds {seats:?}"))
                }
            }
        })
        .await;
}

redis_only!(emptied_lobbies_leave_nothing_in_redis => emptied_lobbies_leave_nothing_in_redis_redis);
/// Emptied lobbies (leave, Close, dropped TCP) leave no lobby key, no entry in
/// a node's lobby index, and no `lr:chan:*` channel.
async fn emptied_lobbies_leave_nothing_in_redis(c: Relays) {
    let redis = c.redis_probe().await.expect("Redis flavour");
    let (mut a, mut b) = pair(&c, "jump-rocket").await;
    let (x, mut y) = pair_named(&c, "other-lobby", "X", "Y").await;
    let mut live_keys = vec![lobby_key("jump-rocket"), lobby_key("other-lobby")];
    live_keys.sort();
    let mut live_channels = vec![lobby_channel("jump-rocket"), lobby_channel("other-lobby")];
    live_channels.sort();
    assert_eq!(redis.keys("lr:lobby:*").await, live_keys);
    assert_eq!(redis.channels("lr:chan:*").await, live_channels);

    // Lobby one empties by two `leave`s; both connections stay open.
    a.leave().await;
    b.expect_json(player_left(1, 1)).await;
    b.leave().await;
    // Lobby two empties by a Close handshake and a dropped connection.
    x.close().await;
    y.expect_json(player_left(1, 1)).await;
    y.assert_open().await;
    drop(y);

    wait_for_empty_redis(&redis).await;
    a.assert_open().await;
    b.assert_open().await;
}

redis_only!(passphrase_never_reaches_redis => passphrase_never_reaches_redis_redis);
/// No command seen by `MONITOR` and nothing stored in Redis contains the passphrase.
async fn passphrase_never_reaches_redis(c: Relays) {
    const SPOKEN: &str = "  Zebra-Quokka-7731 ";
    const NORMALISED: &str = "zebra-quokka-7731";
    fn assert_absent(what: &str, items: &[String]) {
        for item in items {
            assert!(
                !item.to_ascii_lowercase().contains(NORMALISED),
                "the passphrase appears in {what}: {item}"
            );
        }
    }

    let redis = c.redis_probe().await.expect("Redis flavour");
    let joining = redis.monitor().await;

    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    a.send_join(SPOKEN).await;
    a.expect_json(joined(1, 2, 1)).await;
    b.send_json(json!({"join": NORMALISED.to_ascii_uppercase()}))
        .await;
    b.expect_json(joined(2, 2, 2)).await;
    a.expect_json(ready(2)).await;
    b.expect_json(ready(2)).await;
    assert_quiet_pair(&mut a, &mut b).await;
    b.send_binary(vec![0, 1, 2]).await;
    assert_eq!(a.recv_binary().await, [0, 1, 2]);

    // Hand over to a second monitor before reading the first, so that no
    // command falls between them; only the nodes have spoken to Redis so far.
    let leaving = redis.monitor().await;
    let commands = joining.finish().await;
    assert!(
        commands
            .iter()
            .any(|line| line.contains(&lobby_id(NORMALISED))),
        "MONITOR saw no command naming the lobby id; is it monitoring? {commands:#?}"
    );
    assert_absent("a command to Redis while joining", &commands);
    assert_absent("Redis while the lobby is live", &redis.everything().await);

    a.leave().await;
    b.expect_json(player_left(1, 1)).await;
    b.close().await;
    wait_for_empty_redis(&redis).await;
    assert_absent("Redis after the lobby emptied", &redis.everything().await);
    assert_absent("a command to Redis while leaving", &leaving.finish().await);
}

/// Waits until nothing of any lobby remains: no `lr:lobby:*` key, no node
/// lobby index (`lr:node-lobbies:*`), no `lr:chan:*` channel subscribed.
/// (What remains are the nodes' own heartbeats, `lr:{nodes}:node:*` and `lr:{nodes}`.)
async fn wait_for_empty_redis(redis: &support::RedisProbe) {
    redis
        .wait_until(support::CLEANUP_TIMEOUT, |redis| async move {
            let mut keys = redis.keys("lr:lobby:*").await;
            keys.extend(redis.keys("lr:node-lobbies:*").await);
            let channels = redis.channels("lr:chan:*").await;
            if keys.is_empty() && channels.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "keys left: {keys:?}; channels still subscribed: {channels:?}"
                ))
            }
        })
        .await;
}

/// With Redis unreachable the node runs, answers `unavailable` within 3 s, stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_answers_unavailable() {
    support::run(Relays::unreachable_redis(), |mut c: Relays| async move {
        let mut a = Client::connect(&c.url_a(), "A").await;
        for attempt in 0..2 {
            a.send_join("jump-rocket").await;
            let reply = a.recv_json_within(Duration::from_secs(3)).await;
            assert_error(&format!("A (attempt {attempt})"), &reply, "unavailable");
            a.assert_open().await;
        }
        let mut b = Client::connect(&c.url_a(), "B").await;
        b.assert_open().await;
        assert_eq!(
            c.node_a().exited(),
            None,
            "the node must keep running without Redis"
        );
    })
    .await;
}
