//! The Rust client (clients/rust, `lobby-relay-client`) against real relay
//! nodes and a real Redis: what a game sees through it. Connections are cut
//! from outside by a TCP proxy between the client and a node; Redis is
//! killed and restarted. Quick match (join_queue) across two nodes, and the
//! host: `HostChanged` with a growing epoch, not counted for resume.
//! Spectators: a client on node b watches two players on node a (all
//! their messages, in order), the players get `Spectators`, a cut
//! spectator watches again.

use crate::support;

use std::time::Duration;

use lobby_relay_client::{Client, ClientError, Event, GameMessage, Options, SeatLostReason, State};
use serde_json::json;
use support::{Node, RedisServer, Relays, TcpProxy, unique};

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn passphrase(what: &str) -> String {
    format!("rust-client-{what}-{}", unique())
}

/// Waits for the first event `want` accepts, failing with every event seen
/// on the way if none comes in time.
async fn wait_for(client: &mut Client, what: &str, want: impl Fn(&Event) -> bool) -> Event {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(event)) if want(&event) => return event,
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("{what}: the client stopped; events: {seen:#?}"),
            Err(_) => panic!("{what}: not within {EVENT_TIMEOUT:?}; events: {seen:#?}"),
        }
    }
}

/// Connects and joins; waits for `joined`.
async fn joined(url: &str, passphrase: &str, options: Options) -> Client {
    let mut client = Client::connect(url, options).expect("client");
    client.join(passphrase);
    wait_for(&mut client, "joined", |e| matches!(e, Event::Joined { .. })).await;
    client
}

/// The JSON game messages' `n` fields from `events`, and every other event.
fn numbers(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Message(GameMessage::Json { value, .. }) => value["n"].as_u64(),
            _ => None,
        })
        .collect()
}

/// Collects events until `count` numbered game messages arrived.
async fn collect_numbered(client: &mut Client, count: usize, what: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while numbers(&events).len() < count {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(event)) => events.push(event),
            other => panic!(
                "{what}: {} of {count} messages, then {other:?}; numbers: {:?}; other events: {:?}",
                numbers(&events).len(),
                numbers(&events),
                events
                    .iter()
                    .filter(|e| !matches!(e, Event::Message(_)))
                    .collect::<Vec<_>>()
            ),
        }
    }
    events
}

/// How many numbered messages each side sends across a fault: fewer than
/// the client keeps to send again (resend_limit, 256), since a cut is
/// noticed only when the socket fails and every message written into the
/// dead connection before that goes again.
const STREAM: u64 = 200;

/// `a` and `b` each send `STREAM` numbered messages, `fault` striking
/// half-way; then each must have received all of the other's, once and in
/// order. Returns what `a` saw.
async fn stream_across(a: &mut Client, b: &mut Client, fault: impl FnOnce()) -> Vec<Event> {
    let send = |a: &Client, b: &Client, n: u64| {
        a.send_json(&json!({"type": "move", "n": n})).unwrap();
        b.send_json(&json!({"type": "move", "n": n})).unwrap();
    };
    for n in 1..=STREAM / 2 {
        send(a, b, n);
    }
    fault();
    for n in STREAM / 2 + 1..=STREAM {
        send(a, b, n);
    }
    let at_a = collect_numbered(a, STREAM as usize, "a").await;
    let at_b = collect_numbered(b, STREAM as usize, "b").await;
    let expected: Vec<u64> = (1..=STREAM).collect();
    assert_eq!(numbers(&at_a), expected, "what a received");
    assert_eq!(numbers(&at_b), expected, "what b received");
    at_a
}

// Two players meet, get `ready`, and relay JSON objects, raw JSON text and
// binary both ways, exactly as sent; a ping measures the round trip and
// names the node.
both_flavours!(two_players_meet_and_relay_every_kind => two_players_meet_and_relay_every_kind_redis, two_players_meet_and_relay_every_kind_memory);
async fn two_players_meet_and_relay_every_kind(relays: Relays) {
    let lobby = passphrase("meet");
    let mut a = joined(&relays.url_a(), &lobby, Options::default()).await;
    let mut b = Client::connect(&relays.url_b(), Options::default()).unwrap();
    b.join(&lobby);
    let Event::Joined {
        seat,
        players,
        capacity,
        resumable,
        ..
    } = wait_for(&mut b, "b joined", |e| matches!(e, Event::Joined { .. })).await
    else {
        unreachable!()
    };
    assert_eq!((seat, players, capacity, resumable), (2, 2, 2, true));
    for client in [&mut a, &mut b] {
        let ready = wait_for(client, "ready", |e| matches!(e, Event::Ready { .. })).await;
        assert!(
            matches!(ready, Event::Ready { players: 2, .. }),
            "{ready:?}"
        );
    }
    assert_eq!((a.seat(), b.seat()), (Some(1), Some(2)));
    assert_eq!(a.state(), State::Open);

    a.send_json(&json!({"type": "playerMove", "x": 1.5, "y": [2, 3]}))
        .unwrap();
    a.send_text(r#"{"type":"chat",  "text":"spacing kept"}"#)
        .unwrap();
    a.send_binary(vec![0u8, 255, 7]).unwrap();
    let first = wait_for(&mut b, "json", |e| matches!(e, Event::Message(_))).await;
    let Event::Message(GameMessage::Json { kind, value, .. }) = first else {
        panic!("{first:?}")
    };
    assert_eq!(kind, "playerMove");
    assert_eq!(value, json!({"type": "playerMove", "x": 1.5, "y": [2, 3]}));
    let second = wait_for(&mut b, "text", |e| matches!(e, Event::Message(_))).await;
    let Event::Message(GameMessage::Json { text, .. }) = second else {
        panic!("{second:?}")
    };
    assert_eq!(text, r#"{"type":"chat",  "text":"spacing kept"}"#);
    let third = wait_for(&mut b, "binary", |e| matches!(e, Event::Message(_))).await;
    assert_eq!(third, Event::Message(GameMessage::Binary(vec![0, 255, 7])));

    b.send_binary(vec![42]).unwrap();
    let back = wait_for(&mut a, "back", |e| matches!(e, Event::Message(_))).await;
    assert_eq!(back, Event::Message(GameMessage::Binary(vec![42])));

    let rtt = a.ping().await.expect("ping");
    assert!(rtt < Duration::from_secs(5), "{rtt:?}");
    assert_eq!(a.node().as_deref(), Some("a"));
    // Two deliveries after `joined`, counted for resume: `ready` and b's
    // message (a's own messages and the pong are not).
    assert_eq!(a.resume_state().expect("resumable").received, 2);
}

// Errors reach the game with the protocol's code, and the client can go on:
// a bad passphrase, a full lobby, a game message of a reserved type refused
// before it is sent.
both_flavours!(errors_reach_the_game_with_their_code => errors_reach_the_game_with_their_code_redis, errors_reach_the_game_with_their_code_memory);
async fn errors_reach_the_game_with_their_code(relays: Relays) {
    let mut bad = Client::connect(&relays.url_a(), Options::default()).unwrap();
    bad.join("x");
    let error = wait_for(&mut bad, "invalid", |e| matches!(e, Event::Error(_))).await;
    let Event::Error(error) = error else {
        unreachable!()
    };
    assert_eq!(error.code, "invalid_passphrase");
    assert!(!error.fatal && !error.will_retry);
    assert_eq!(
        bad.send_binary(vec![1]),
        Err(ClientError::NotInLobby),
        "a refused join leaves no lobby"
    );

    let lobby = passphrase("full");
    let a = joined(&relays.url_a(), &lobby, Options::default()).await;
    let _b = joined(&relays.url_b(), &lobby, Options::default()).await;
    // The same connection joins again after its refusal.
    bad.join(&lobby);
    let error = wait_for(&mut bad, "full", |e| matches!(e, Event::Error(_))).await;
    assert!(
        matches!(&error, Event::Error(e) if e.code == "lobby_full" && !e.will_retry),
        "{error:?}"
    );
    assert!(matches!(
        a.send_json(&json!({"type": "ready"})),
        Err(ClientError::InvalidMessage(_))
    ));
    assert!(matches!(
        a.send_text("not json"),
        Err(ClientError::InvalidMessage(_))
    ));
}

// `leave` gives the seat up: the other player gets `playerLeft` at once
// (never `playerAway`), and the leaver's sends are refused.
both_flavours!(leave_tells_the_other_player => leave_tells_the_other_player_redis, leave_tells_the_other_player_memory);
async fn leave_tells_the_other_player(relays: Relays) {
    let lobby = passphrase("leave");
    let a = joined(&relays.url_a(), &lobby, Options::default()).await;
    let mut b = joined(&relays.url_b(), &lobby, Options::default()).await;
    a.send_json(&json!({"type": "bye", "n": 1})).unwrap();
    a.leave();
    assert_eq!(a.send_binary(vec![1]), Err(ClientError::NotInLobby));
    let bye = wait_for(&mut b, "bye", |e| matches!(e, Event::Message(_))).await;
    assert!(matches!(bye, Event::Message(GameMessage::Json { ref kind, .. }) if kind == "bye"));
    let next = wait_for(&mut b, "left", |e| {
        matches!(e, Event::PlayerLeft { .. } | Event::PlayerAway { .. })
    })
    .await;
    assert_eq!(
        next,
        Event::PlayerLeft {
            seat: 1,
            players: 1
        }
    );
}

// A connection cut from outside (the proxy in front of node a closes it and
// refuses new ones) in the middle of a stream both ways: the client
// reconnects to node b, resumes, and every message of both players arrives
// exactly once and in order; what the cut player sent while away waited
// and went after the resume.
// (Both players send faster than the default --message-rate allows, whose
// excess the relay drops by design: the nodes allow more here.)
redis_only!(a_cut_connection_resumes_on_another_node_with_nothing_lost => a_cut_connection_resumes_on_another_node_with_nothing_lost_redis, args: ["--message-rate", "2000", "--message-burst", "2000"]);
async fn a_cut_connection_resumes_on_another_node_with_nothing_lost(relays: Relays) {
    let proxy = TcpProxy::start(relays.addr_a()).await;
    let via_proxy = format!("ws://127.0.0.1:{}/", proxy.port());
    let lobby = passphrase("cut");
    let mut a = Client::connect_any(&[&via_proxy, &relays.url_b()], Options::default()).unwrap();
    a.join(&lobby);
    wait_for(&mut a, "a joined", |e| matches!(e, Event::Joined { .. })).await;
    let mut b = joined(&relays.url_b(), &lobby, Options::default()).await;

    let at_a = stream_across(&mut a, &mut b, || proxy.cut()).await;
    assert!(
        at_a.iter().any(|e| matches!(e, Event::Reconnecting { .. })),
        "a reconnected: {at_a:#?}"
    );
    assert!(
        at_a.iter()
            .any(|e| matches!(e, Event::Resumed { seat: 1, .. })),
        "a resumed: {at_a:#?}"
    );
    assert!(
        !at_a.iter().any(|e| matches!(
            e,
            Event::SeatLost { .. } | Event::Joined { .. } | Event::Error(_)
        )),
        "no new seat, no error: {at_a:#?}"
    );
    a.ping().await.unwrap();
    assert_eq!(a.node().as_deref(), Some("b"), "resumed on the other node");
    // Nothing more arrives at either side: no duplicate after the last.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for client in [&mut a, &mut b] {
        while let Some(event) = client.try_next_event() {
            assert!(
                !matches!(event, Event::Message(_)),
                "a duplicate: {event:?}"
            );
        }
    }
}

// The seat is gone when the player comes back after the grace period: the
// client says so (SeatLost), the other player saw playerAway then
// playerLeft; with `rejoin_on_seat_lost` it joins the same lobby again as a
// new player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seat_is_lost_after_the_grace_and_rejoined_when_asked() {
    let node = Node::start("a", &["--resume-grace", "1s"]);
    let proxy = TcpProxy::start(node.addr()).await;
    let via_proxy = format!("ws://127.0.0.1:{}/", proxy.port());
    for rejoin in [false, true] {
        let lobby = passphrase("grace");
        let options = Options {
            rejoin_on_seat_lost: rejoin,
            ..Options::default()
        };
        let mut a = joined(&via_proxy, &lobby, options).await;
        let mut b = joined(&node.url(), &lobby, Options::default()).await;
        proxy.cut();
        let away = wait_for(&mut b, "away", |e| matches!(e, Event::PlayerAway { .. })).await;
        assert_eq!(
            away,
            Event::PlayerAway {
                seat: 1,
                grace: Duration::from_secs(1)
            }
        );
        wait_for(&mut b, "left", |e| matches!(e, Event::PlayerLeft { .. })).await;
        proxy.restore();
        let lost = wait_for(&mut a, "seat lost", |e| matches!(e, Event::SeatLost { .. })).await;
        assert_eq!(
            lost,
            Event::SeatLost {
                reason: SeatLostReason::InvalidResumeToken,
                seat: Some(1),
                dropped: 0,
                rejoining: rejoin
            }
        );
        if rejoin {
            let again = wait_for(&mut a, "joined again", |e| {
                matches!(e, Event::Joined { .. })
            })
            .await;
            assert!(
                matches!(
                    again,
                    Event::Joined {
                        seat: 1,
                        players: 2,
                        ..
                    }
                ),
                "{again:?}"
            );
            wait_for(&mut b, "ready again", |e| matches!(e, Event::Ready { .. })).await;
        } else {
            assert_eq!(a.send_binary(vec![1]), Err(ClientError::NotInLobby));
            assert_eq!(a.seat(), None);
        }
    }
}

// `unavailable` while Redis is down is retried with backoff, not fatal: the
// join succeeds once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_until_redis_is_back() {
    let mut redis = RedisServer::start();
    let node = Node::start("a", &["--redis-url", &redis.url()]);
    node.wait_until_ready(Duration::from_secs(10));
    redis.kill();
    let mut client = Client::connect(&node.url(), Options::default()).unwrap();
    client.join(&passphrase("unavailable"));
    let error = wait_for(&mut client, "unavailable", |e| matches!(e, Event::Error(_))).await;
    assert!(
        matches!(&error, Event::Error(e) if e.code == "unavailable" && e.will_retry && !e.fatal),
        "{error:?}"
    );
    redis.restart();
    let joined = wait_for(&mut client, "joined", |e| {
        matches!(
            e,
            Event::Joined { .. }
                | Event::Error(lobby_relay_client::RelayError {
                    will_retry: false,
                    ..
                })
        )
    })
    .await;
    assert!(
        matches!(joined, Event::Joined { seat: 1, .. }),
        "{joined:?}"
    );
}

// A game loop that is not async: the client on its own thread, polled each
// "frame" without blocking.
#[test]
fn a_game_loop_polls_a_background_client() {
    let node = Node::start("a", &[]);
    let lobby = passphrase("loop");
    let mut a = Client::connect_in_background(&node.url(), Options::default()).unwrap();
    let mut b = Client::connect_in_background(&node.url(), Options::default()).unwrap();
    a.join(&lobby);
    b.join(&lobby);
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    let mut sent = false;
    loop {
        assert!(std::time::Instant::now() < deadline, "no message in time");
        while let Some(event) = a.try_next_event() {
            if matches!(event, Event::Ready { .. }) && !sent {
                a.send_json(&json!({"type": "hello", "n": 1})).unwrap();
                sent = true;
            }
        }
        if let Some(Event::Message(GameMessage::Json { kind, .. })) =
            std::iter::from_fn(|| b.try_next_event()).find(|e| matches!(e, Event::Message(_)))
        {
            assert_eq!(kind, "hello");
            break;
        }
        std::thread::sleep(Duration::from_millis(16)); // a frame
    }
    a.close();
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        assert!(std::time::Instant::now() < deadline, "no close in time");
        if let Some(Event::Closed { by_client, .. }) = a.try_next_event() {
            assert!(by_client);
            break;
        }
        std::thread::sleep(Duration::from_millis(16));
    }
    assert_eq!(a.state(), State::Closed);
}

// With `--auth required`: a client without a token gets `token_required`
// as a fatal error, then `Closed`, and does not reconnect; one with a token
// is signed in before it joins, and the lobby names its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_tokens_are_presented_and_a_refusal_stops_the_client() {
    const SECRET: &str = "rust-client-test-hs256-secret-32b";
    let relays = Relays::memory_with(&["--auth", "required", "--auth-hs256-secret", SECRET]);
    let lobby = passphrase("auth");
    let mut anonymous = Client::connect(&relays.url_a(), Options::default()).unwrap();
    anonymous.join(&lobby);
    let error = wait_for(&mut anonymous, "refused", |e| matches!(e, Event::Error(_))).await;
    assert!(
        matches!(&error, Event::Error(e) if e.code == "token_required" && e.fatal),
        "{error:?}"
    );
    let closed = wait_for(&mut anonymous, "closed", |e| {
        matches!(e, Event::Closed { .. })
    })
    .await;
    assert!(
        matches!(
            closed,
            Event::Closed {
                by_client: false,
                ..
            }
        ),
        "{closed:?}"
    );
    assert_eq!(anonymous.state(), State::Closed);
    assert_eq!(anonymous.next_event().await, None, "nothing after Closed");

    let token = support::hs256_token(SECRET, "eve");
    let options = Options {
        auth_token: Some(token),
        ..Options::default()
    };
    let mut eve = Client::connect(&relays.url_a(), options).unwrap();
    eve.join(&lobby);
    let first = wait_for(&mut eve, "authenticated", |e| {
        matches!(e, Event::Authenticated { .. } | Event::Joined { .. })
    })
    .await;
    assert_eq!(first, Event::Authenticated { user: "eve".into() });
    let joined = wait_for(&mut eve, "joined", |e| matches!(e, Event::Joined { .. })).await;
    let Event::Joined { users, .. } = joined else {
        unreachable!()
    };
    assert_eq!(users, [(1, "eve".to_owned())].into());
}

// kill -9 of the node the client is on, with node b behind the same Redis:
// the client's next attempt goes to node b (its URL list), where it
// resumes; every message arrives once and in order, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_left_for_the_other_with_nothing_lost_or_twice() {
    let mut relays = Relays::redis_with(&["--message-rate", "2000", "--message-burst", "2000"]);
    let lobby = passphrase("kill");
    let mut a =
        Client::connect_any(&[&relays.url_a(), &relays.url_b()], Options::default()).unwrap();
    a.join(&lobby);
    wait_for(&mut a, "a joined", |e| matches!(e, Event::Joined { .. })).await;
    let mut b = joined(&relays.url_b(), &lobby, Options::default()).await;
    let node_a = relays.node_a();
    let at_a = stream_across(&mut a, &mut b, || node_a.kill9()).await;
    assert!(
        at_a.iter()
            .any(|e| matches!(e, Event::Resumed { seat: 1, .. })),
        "a resumed: {at_a:#?}"
    );
    a.ping().await.unwrap();
    assert_eq!(a.node().as_deref(), Some("b"), "resumed on the other node");
}

// Quick match across two nodes: two clients call join_queue on one queue at
// once and meet in one lobby (seats 1 and 2, `queue` and the host in
// `Joined`), get `Ready`, and a game message crosses; a bad queue name is
// refused with its code.
redis_only!(two_clients_quick_match_and_exchange_a_message => two_clients_quick_match_and_exchange_a_message_redis);
async fn two_clients_quick_match_and_exchange_a_message(relays: Relays) {
    let queue = format!("rust-duel-{}", unique());
    let mut a = Client::connect(&relays.url_a(), Options::default()).unwrap();
    let mut b = Client::connect(&relays.url_b(), Options::default()).unwrap();
    a.join_queue(&queue);
    b.join_queue(&queue);
    let mut seats = Vec::new();
    for client in [&mut a, &mut b] {
        let joined = wait_for(client, "joined", |e| {
            matches!(e, Event::Joined { .. } | Event::Error(_))
        })
        .await;
        let Event::Joined {
            seat,
            capacity,
            host,
            epoch,
            queue: joined_queue,
            ..
        } = joined
        else {
            panic!("not joined: {joined:?}");
        };
        assert_eq!(joined_queue.as_deref(), Some(queue.as_str()));
        assert_eq!((capacity, host, epoch), (2, Some(1), Some(1)));
        seats.push(seat);
    }
    seats.sort_unstable();
    assert_eq!(seats, [1, 2], "one lobby, both seats");
    for client in [&mut a, &mut b] {
        let ready = wait_for(client, "ready", |e| matches!(e, Event::Ready { .. })).await;
        assert!(
            matches!(
                ready,
                Event::Ready {
                    players: 2,
                    host: Some(1),
                    epoch: Some(1),
                    ..
                }
            ),
            "{ready:?}"
        );
        assert_eq!((client.host(), client.epoch()), (Some(1), Some(1)));
    }
    let state = a.resume_state().expect("resumable");
    assert_eq!(state.queue.as_deref(), Some(queue.as_str()));
    a.send_json(&json!({"type": "hello", "from": "a"})).unwrap();
    let hello = wait_for(&mut b, "hello", |e| matches!(e, Event::Message(_))).await;
    let Event::Message(GameMessage::Json { kind, text, .. }) = hello else {
        panic!("{hello:?}");
    };
    assert_eq!(
        (kind.as_str(), text.as_str()),
        ("hello", r#"{"from":"a","type":"hello"}"#)
    );

    let mut c = Client::connect(&relays.url_a(), Options::default()).unwrap();
    c.join_queue("x");
    let refused = wait_for(&mut c, "refused", |e| {
        matches!(e, Event::Error(_) | Event::Joined { .. })
    })
    .await;
    assert!(
        matches!(&refused, Event::Error(error) if error.code == "invalid_queue" && !error.will_retry),
        "{refused:?}"
    );
    // The queue's lobby is full: the next player opens a new one.
    c.join_queue(&queue);
    let joined = wait_for(&mut c, "joined", |e| matches!(e, Event::Joined { .. })).await;
    assert!(
        matches!(
            joined,
            Event::Joined {
                seat: 1,
                players: 1,
                ..
            }
        ),
        "{joined:?}"
    );
}

// The host: A (seat 1) is host, epoch 1. A leaves: B gets `PlayerLeft`,
// then `HostChanged` (2, epoch 2), which is not counted for resume. A joins
// again (seat 1) and is told the host is B, epoch 2; B leaves: A gets
// `HostChanged` (1, epoch 3).
both_flavours!(the_host_changes_with_a_growing_epoch => the_host_changes_with_a_growing_epoch_redis, the_host_changes_with_a_growing_epoch_memory);
async fn the_host_changes_with_a_growing_epoch(relays: Relays) {
    let lobby = passphrase("host");
    let mut a = joined(&relays.url_a(), &lobby, Options::default()).await;
    let mut b = joined(&relays.url_b(), &lobby, Options::default()).await;
    for client in [&mut a, &mut b] {
        wait_for(client, "ready", |e| matches!(e, Event::Ready { .. })).await;
        assert_eq!((client.host(), client.epoch()), (Some(1), Some(1)));
    }
    assert_eq!(b.resume_state().expect("resumable").received, 1, "ready");

    a.leave();
    let left = wait_for(&mut b, "playerLeft", |e| {
        matches!(e, Event::PlayerLeft { .. })
    })
    .await;
    assert!(
        matches!(left, Event::PlayerLeft { seat: 1, .. }),
        "{left:?}"
    );
    // Right after the playerLeft.
    let changed = wait_for(&mut b, "the next event", |_| true).await;
    assert_eq!(changed, Event::HostChanged { host: 2, epoch: 2 });
    assert_eq!((b.host(), b.epoch()), (Some(2), Some(2)));
    assert_eq!(
        b.resume_state().expect("resumable").received,
        2,
        "playerLeft counts, hostChanged does not"
    );
    assert_eq!((a.host(), a.seat()), (None, None), "A left");

    a.join(&lobby);
    let again = wait_for(&mut a, "joined again", |e| {
        matches!(e, Event::Joined { .. })
    })
    .await;
    assert!(
        matches!(
            again,
            Event::Joined {
                seat: 1,
                host: Some(2),
                epoch: Some(2),
                ..
            }
        ),
        "a later joiner never takes the host over: {again:?}"
    );
    wait_for(&mut a, "ready", |e| matches!(e, Event::Ready { .. })).await;
    b.leave();
    let changed = wait_for(&mut a, "hostChanged", |e| {
        matches!(e, Event::HostChanged { .. })
    })
    .await;
    assert_eq!(changed, Event::HostChanged { host: 1, epoch: 3 });
    assert_eq!((a.host(), a.epoch()), (Some(1), Some(3)));
}

// Spectators: A and B play on node a; S watches from node b, through a
// proxy the test cuts. S gets `Watching` (2 players, 1 spectator); the
// players (who ask by default) get `Spectators { count: 1 }`, which their
// delivery count leaves out (a resume after it is taken). S receives each
// player's messages, all, once, in order; its sends are refused by the
// client (`Spectating`); cut, it watches again and sees what follows.
redis_only!(a_spectator_on_another_node_watches_both_players => a_spectator_on_another_node_watches_both_players_redis);
async fn a_spectator_on_another_node_watches_both_players(relays: Relays) {
    const N: u64 = 40;
    let lobby = passphrase("watch");
    let mut a = joined(&relays.url_a(), &lobby, Options::default()).await;
    let mut b = joined(&relays.url_a(), &lobby, Options::default()).await;
    for (client, name) in [(&mut a, "a"), (&mut b, "b")] {
        wait_for(client, name, |e| matches!(e, Event::Ready { .. })).await;
    }
    let proxy = TcpProxy::start(relays.addr_b()).await;
    let proxied = format!("ws://127.0.0.1:{}/", proxy.port());
    let mut s = Client::connect(&proxied, Options::default()).unwrap();
    s.watch(&lobby);
    let watching = wait_for(&mut s, "watching", |e| {
        matches!(e, Event::Watching { .. } | Event::Error(_))
    })
    .await;
    assert!(
        matches!(
            watching,
            Event::Watching {
                players: 2,
                capacity: 2,
                spectators: 1,
                host: Some(1),
                ..
            }
        ),
        "{watching:?}"
    );
    assert!(s.spectating());
    assert_eq!(
        (s.seat(), s.spectators(), s.resume_state()),
        (None, Some(1), None)
    );
    for (client, name) in [(&mut a, "a"), (&mut b, "b")] {
        let told = wait_for(client, name, |e| matches!(e, Event::Spectators { .. })).await;
        assert_eq!(told, Event::Spectators { count: 1 }, "{name}");
        assert_eq!(client.spectators(), Some(1), "{name}");
        assert_eq!(
            client.resume_state().map(|r| r.received),
            Some(1),
            "{name}: ready counts, spectators does not"
        );
    }
    assert_eq!(
        s.send_json(&json!({"type": "cheat"})),
        Err(ClientError::Spectating)
    );

    for n in 1..=N {
        a.send_json(&json!({"type": "a", "n": n})).unwrap();
        b.send_json(&json!({"type": "b", "n": n})).unwrap();
    }
    let events = collect_numbered(&mut s, 2 * N as usize, "s").await;
    let of = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Message(GameMessage::Json { kind: k, value, .. }) if k == kind => {
                    value["n"].as_u64()
                }
                _ => None,
            })
            .collect()
    };
    let want: Vec<u64> = (1..=N).collect();
    assert_eq!(of("a"), want, "S got A's messages once each, in order");
    assert_eq!(of("b"), want, "S got B's messages once each, in order");
    assert_eq!(
        numbers(&collect_numbered(&mut b, N as usize, "b").await),
        want
    );

    // A cut: S watches again (no resume) and sees what comes next.
    proxy.cut();
    wait_for(&mut s, "reconnecting", |e| {
        matches!(e, Event::Reconnecting { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    let again = wait_for(&mut s, "watching again", |e| {
        matches!(
            e,
            Event::Watching { .. }
                | Event::Resumed { .. }
                | Event::SeatLost { .. }
                | Event::Error(_)
        )
    })
    .await;
    assert!(
        matches!(again, Event::Watching { players: 2, .. }),
        "{again:?}"
    );
    assert_eq!(s.state(), State::Open);
    a.send_json(&json!({"type": "after", "n": 1})).unwrap();
    let after = wait_for(&mut s, "after", |e| matches!(e, Event::Message(_))).await;
    assert!(
        matches!(&after, Event::Message(GameMessage::Json { kind, .. }) if kind == "after"),
        "{after:?}"
    );

    // The game ends (both leave; S stays), then S is cut: its watch again
    // is refused (`nothing_to_watch`), which ends the watch, the
    // connection open. (S sees A's `playerLeft`; the last player's does
    // not reach a spectator as of this writing: not asserted here.)
    a.leave();
    wait_for(&mut s, "playerLeft of seat 1", |e| {
        matches!(e, Event::PlayerLeft { seat: 1, .. })
    })
    .await;
    b.leave();
    // The ping goes after the leave, on the same connection: answered, the
    // leave is done.
    b.ping().await.expect("b's ping after its leave");
    proxy.cut();
    wait_for(&mut s, "reconnecting", |e| {
        matches!(e, Event::Reconnecting { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    let refused = wait_for(&mut s, "the watch refused", |e| {
        matches!(e, Event::Error(_) | Event::Watching { .. })
    })
    .await;
    assert!(
        matches!(&refused, Event::Error(e) if e.code == "nothing_to_watch" && !e.will_retry),
        "{refused:?}"
    );
    assert!(!s.spectating());
    assert_eq!(s.state(), State::Open);
    assert_eq!(
        s.send_json(&json!({"type": "m"})),
        Err(ClientError::NotInLobby)
    );
}
