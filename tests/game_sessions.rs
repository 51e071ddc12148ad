//! Game sessions beyond two friends (docs/protocol.md, "Host"): the host
//! seat, through real processes, on memory, one Redis and (with
//! `LOBBY_RELAY_TEST_REDIS=cluster`, as `scripts/test.sh` runs this module a
//! second time) a Redis Cluster.
//!
//! Every test checks what a client that did not ask sees too: protocol v1
//! exactly.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, Node, RedisServer, Relays, assert_quiet_pair, lobby_id, unique};

/// `{"type":"hostChanged",...}`.
fn host_changed(host: u64, epoch: u64) -> Value {
    json!({"type": "hostChanged", "host": host, "epoch": epoch})
}

/// Joins `passphrase`, asking to be told who is host; returns `joined`.
async fn join_hosted(client: &mut Client, passphrase: &str, extra: Value) -> Value {
    let mut join = json!({"type": "join", "passphrase": passphrase, "host": true});
    if let (Some(join), Some(extra)) = (join.as_object_mut(), extra.as_object()) {
        join.extend(extra.clone());
    }
    client.send_json(join).await;
    let joined = client.recv_json().await;
    assert_eq!(joined["type"], "joined", "{}: {joined}", client.name());
    joined
}

/// The host record of a lobby in Redis (`lr:meta:{hash}`).
fn meta_key(passphrase: &str) -> String {
    format!("lr:meta:{{{}}}", lobby_id(passphrase))
}

both_flavours!(the_host_passes_to_the_lowest_seat_with_a_growing_epoch
    => the_host_passes_to_the_lowest_seat_with_a_growing_epoch_redis,
       the_host_passes_to_the_lowest_seat_with_a_growing_epoch_memory,
    args: ["--lobby-capacity", "3"]);
/// The first joiner is host (epoch 1). Members that asked (`"host":true`)
/// see the host in `joined` and `ready`, and get `hostChanged` right after
/// the host's `playerLeft`, naming the lowest occupied seat with an epoch
/// one higher; a later joiner in a lower seat does not take the host over.
/// A member that did not ask sees protocol v1 exactly. Redis holds the host
/// record while the lobby exists, and nothing once it is empty.
async fn the_host_passes_to_the_lowest_seat_with_a_growing_epoch(c: Relays) {
    let redis = c.redis_probe().await;
    let pass = format!("host-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B (v1)").await;
    let mut cc = Client::connect(&c.url_a(), "C").await;
    assert_eq!(
        join_hosted(&mut a, &pass, json!({})).await,
        json!({"type": "joined", "players": 1, "capacity": 3, "seat": 1, "host": 1, "epoch": 1})
    );
    assert_eq!(
        b.join(&pass).await,
        json!({"type": "joined", "players": 2, "capacity": 3, "seat": 2})
    );
    a.expect_json(json!({"type": "playerJoined", "players": 2, "seat": 2}))
        .await;
    assert_eq!(
        join_hosted(&mut cc, &pass, json!({})).await,
        json!({"type": "joined", "players": 3, "capacity": 3, "seat": 3, "host": 1, "epoch": 1})
    );
    let ready_hosted = json!({"type": "ready", "players": 3, "host": 1, "epoch": 1});
    a.expect_json(ready_hosted.clone()).await;
    b.expect_json(json!({"type": "ready", "players": 3})).await;
    cc.expect_json(ready_hosted).await;
    if let Some(redis) = &redis {
        let meta = redis.hgetall(&meta_key(&pass)).await;
        assert_eq!(meta.get("host").map(String::as_str), Some("1"), "{meta:?}");
        assert_eq!(meta.get("epoch").map(String::as_str), Some("1"), "{meta:?}");
    }

    // The host leaves: seat 2 is host, epoch 2.
    a.leave().await;
    let left = json!({"type": "playerLeft", "players": 2, "seat": 1});
    b.expect_json(left.clone()).await;
    cc.expect_json(left).await;
    cc.expect_json(host_changed(2, 2)).await;
    assert_quiet_pair(&mut b, &mut cc).await; // B (v1) got no hostChanged

    // A joins again, into seat 1: the host stays seat 2.
    assert_eq!(
        join_hosted(&mut a, &pass, json!({})).await,
        json!({"type": "joined", "players": 3, "capacity": 3, "seat": 1, "host": 2, "epoch": 2})
    );
    cc.expect_json(json!({"type": "ready", "players": 3, "host": 2, "epoch": 2}))
        .await;
    b.expect_json(json!({"type": "ready", "players": 3})).await;
    a.expect_json(json!({"type": "ready", "players": 3, "host": 2, "epoch": 2}))
        .await;
    if let Some(redis) = &redis {
        let meta = redis.hgetall(&meta_key(&pass)).await;
        assert_eq!(meta.get("host").map(String::as_str), Some("2"), "{meta:?}");
        assert_eq!(meta.get("epoch").map(String::as_str), Some("2"), "{meta:?}");
    }

    // A member that is not host leaves: nobody is told of a host.
    cc.leave().await;
    let left = json!({"type": "playerLeft", "players": 2, "seat": 3});
    a.expect_json(left.clone()).await;
    b.expect_json(left).await;
    assert_quiet_pair(&mut a, &mut b).await;

    // The host (B, who never asked) leaves: A, in seat 1, is host, epoch 3.
    b.leave().await;
    a.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 2}))
        .await;
    a.expect_json(host_changed(1, 3)).await;
    a.leave().await;
    if let Some(redis) = &redis {
        let pattern = format!("*{}*", lobby_id(&pass));
        redis
            .wait_until(Duration::from_secs(5), |redis| {
                let pattern = pattern.clone();
                async move {
                    match redis.keys(&pattern).await {
                        keys if keys.is_empty() => Ok(()),
                        keys => Err(format!("an empty lobby left {keys:?}")),
                    }
                }
            })
            .await;
    }
}

both_flavours!(a_held_host_stays_host_until_its_grace_runs_out
    => a_held_host_stays_host_until_its_grace_runs_out_redis,
       a_held_host_stays_host_until_its_grace_runs_out_memory,
    args: ["--resume-grace", "1s"]);
/// A host whose connection drops (resume) stays host while its seat is
/// held: the others get `playerAway`, no `hostChanged`. Resumed with
/// `"host":true`, `resumed` names the host. When the grace runs out, the
/// others get `playerLeft`, then `hostChanged`.
async fn a_held_host_stays_host_until_its_grace_runs_out(c: Relays) {
    let pass = format!("held-host-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    let joined = join_hosted(&mut a, &pass, json!({"resume": true})).await;
    let token = joined["resumeToken"].as_str().unwrap().to_owned();
    join_hosted(&mut b, &pass, json!({})).await;
    let ready = json!({"type": "ready", "players": 2, "host": 1, "epoch": 1});
    a.expect_json(ready.clone()).await;
    b.expect_json(ready).await;

    drop(a); // the connection ends without a leave
    assert_eq!(b.recv_json().await["type"], "playerAway");
    b.expect_silence(Duration::from_millis(300)).await;

    let mut a = Client::connect(&c.url_b(), "A again").await;
    a.send_json(json!({"type": "resume", "token": token, "received": 1, "host": true}))
        .await;
    let resumed = a.recv_json().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(
        (resumed["host"].clone(), resumed["epoch"].clone()),
        (json!(1), json!(1)),
        "{resumed}"
    );
    b.expect_json(json!({"type": "playerBack", "seat": 1}))
        .await;

    drop(a);
    assert_eq!(b.recv_json().await["type"], "playerAway");
    // The grace (1 s) runs out.
    let left = b.recv_json_within(Duration::from_secs(10)).await;
    assert_eq!(left, json!({"type": "playerLeft", "players": 1, "seat": 1}));
    b.expect_json(host_changed(2, 2)).await;
}

/// The host's node is killed (SIGKILL) in a lobby of three players on three
/// nodes: once the node is reaped, the two others (on two other nodes) get
/// `playerLeft`, then the same `hostChanged` (the lowest seat left, epoch
/// 2), and Redis holds that host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_node_killed_every_node_announces_the_same_new_host() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--lobby-capacity",
        "3",
        "--node-timeout",
        "2s",
    ];
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|id| Node::start(id, &args))
        .collect();
    let pass = format!("killed-host-{}", unique());
    let mut a = Client::connect(&nodes[0].url(), "A").await;
    let mut b = Client::connect(&nodes[1].url(), "B").await;
    let mut cc = Client::connect(&nodes[2].url(), "C").await;
    join_hosted(&mut a, &pass, json!({})).await;
    join_hosted(&mut b, &pass, json!({})).await;
    join_hosted(&mut cc, &pass, json!({})).await;
    for client in [&mut a, &mut b, &mut cc] {
        if client.name() == "A" {
            client
                .expect_json(json!({"type": "playerJoined", "players": 2, "seat": 2}))
                .await;
        }
        client
            .expect_json(json!({"type": "ready", "players": 3, "host": 1, "epoch": 1}))
            .await;
    }
    nodes[0].kill9();
    let killed = tokio::time::Instant::now();
    for client in [&mut b, &mut cc] {
        let left = client.recv_json_within(Duration::from_secs(10)).await;
        assert_eq!(left, json!({"type": "playerLeft", "players": 2, "seat": 1}));
        client.expect_json(host_changed(2, 2)).await;
    }
    println!(
        "kill -9 of the host's node: new host after {:?}",
        killed.elapsed()
    );
    let probe = support::RedisProbe::connect(&url).await;
    let meta = probe.hgetall(&meta_key(&pass)).await;
    assert_eq!(meta.get("host").map(String::as_str), Some("2"), "{meta:?}");
    assert_eq!(meta.get("epoch").map(String::as_str), Some("2"), "{meta:?}");
    assert_quiet_pair(&mut b, &mut cc).await;
}

// ---------------------------------------------------------------------------
// Quick match
// ---------------------------------------------------------------------------

/// Queues with `{"type":"join","queue":queue,"resume":true}` (the token
/// names the lobby); returns `joined`.
async fn queue_up(client: &mut Client, queue: &str) -> Value {
    client
        .send_json(json!({"type": "join", "queue": queue, "resume": true}))
        .await;
    let joined = client.recv_json().await;
    assert_eq!(joined["type"], "joined", "{}: {joined}", client.name());
    joined
}

/// The lobby hash a `joined` with a resume token names.
fn lobby_of(joined: &Value) -> String {
    let token = joined["resumeToken"].as_str().expect("a resume token");
    token.split('.').next().unwrap().to_owned()
}

/// A `joined` without its token (which is random).
fn without_token(joined: &Value) -> Value {
    let mut joined = joined.clone();
    joined.as_object_mut().unwrap().remove("resumeToken");
    joined
}

/// A ping answered: every request this client sent before was handled
/// (answers come in the order of the requests).
async fn round_trip(client: &mut Client) {
    client.send_json(json!({"type": "ping", "t": "sync"})).await;
    client
        .expect_json(json!({"type": "pong", "t": "sync"}))
        .await;
}

/// The Redis hash of a queue.
fn queue_key(queue: &str) -> String {
    format!("lr:queue:{{q:{queue}}}")
}

both_flavours!(quick_match_pairs_strangers_in_lobbies_no_passphrase_reaches
    => quick_match_pairs_strangers_in_lobbies_no_passphrase_reaches_redis,
       quick_match_pairs_strangers_in_lobbies_no_passphrase_reaches_memory);
/// Two players who queue (on two nodes) are seated together: `joined` says
/// the seat and the queue, both get `ready`, and their messages are
/// relayed. A third opens a new lobby. The lobbies' ids are random: a
/// passphrase join of the queue's name lands elsewhere. Redis holds the
/// queue's open lobby and its count of lobbies, with every key of a queue's
/// lobby in the queue's slot; once everybody has left, nothing of the queue
/// remains.
async fn quick_match_pairs_strangers_in_lobbies_no_passphrase_reaches(c: Relays) {
    let redis = c.redis_probe().await;
    let queue = format!("duel-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    let joined_a = queue_up(&mut a, &queue).await;
    assert_eq!(
        without_token(&joined_a),
        json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1, "queue": queue})
    );
    if let Some(redis) = &redis {
        let state = redis.hgetall(&queue_key(&queue)).await;
        assert_eq!(state.get("open"), Some(&lobby_of(&joined_a)), "{state:?}");
        assert_eq!(
            state.get("lobbies").map(String::as_str),
            Some("1"),
            "{state:?}"
        );
    }
    let joined_b = queue_up(&mut b, &queue).await;
    assert_eq!(
        without_token(&joined_b),
        json!({"type": "joined", "players": 2, "capacity": 2, "seat": 2, "queue": queue})
    );
    assert_eq!(lobby_of(&joined_a), lobby_of(&joined_b));
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
    assert_quiet_pair(&mut a, &mut b).await;

    // A third player opens a new lobby; a passphrase join of the queue's
    // name is a lobby of its own.
    let mut cc = Client::connect(&c.url_a(), "C").await;
    let joined_c = queue_up(&mut cc, &queue).await;
    assert_eq!(joined_c["seat"], 1);
    assert_ne!(lobby_of(&joined_c), lobby_of(&joined_a));
    let mut d = Client::connect(&c.url_b(), "D").await;
    assert_eq!(
        d.join(&queue).await,
        json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1})
    );
    assert_ne!(lobby_id(&queue), lobby_of(&joined_c));
    cc.expect_silence(Duration::from_millis(200)).await;
    if let Some(redis) = &redis {
        let state = redis.hgetall(&queue_key(&queue)).await;
        assert_eq!(state.get("open"), Some(&lobby_of(&joined_c)), "{state:?}");
        assert_eq!(
            state.get("lobbies").map(String::as_str),
            Some("2"),
            "{state:?}"
        );
        if redis.is_cluster() {
            let slot = |key: String| {
                let redis = redis.clone();
                async move {
                    redis
                        .query::<i64>(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
                        .await
                }
            };
            let queue_slot = slot(queue_key(&queue)).await;
            for hex in [lobby_of(&joined_a), lobby_of(&joined_c)] {
                for key in [format!("lr:lobby:{{{hex}}}"), format!("lr:meta:{{{hex}}}")] {
                    assert_eq!(slot(key.clone()).await, queue_slot, "{key}");
                }
            }
        }
    }

    // C leaves its waiting lobby: the lobby goes, out of the queue. Then A
    // and B leave theirs: nothing of the queue remains.
    cc.leave().await;
    round_trip(&mut cc).await;
    a.leave().await;
    b.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 1}))
        .await;
    b.leave().await;
    if let Some(redis) = &redis {
        let pattern = format!("*q:{queue}*");
        let lobbies = [lobby_of(&joined_a), lobby_of(&joined_c)];
        redis
            .wait_until(Duration::from_secs(5), |redis| {
                let (pattern, lobbies) = (pattern.clone(), lobbies.clone());
                async move {
                    let mut left = redis.keys(&pattern).await;
                    for hex in &lobbies {
                        left.extend(redis.keys(&format!("*{hex}*")).await);
                    }
                    if left.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("left behind: {left:?}"))
                    }
                }
            })
            .await;
    }
}

both_flavours!(four_hundred_players_queue_at_once_into_two_hundred_full_lobbies
    => four_hundred_players_queue_at_once_into_two_hundred_full_lobbies_redis,
       four_hundred_players_queue_at_once_into_two_hundred_full_lobbies_memory);
/// 400 players join one queue at the same moment, half on each node:
/// exactly 200 lobbies, each with seats 1 and 2 and `ready` for both, none
/// overfilled, nobody left waiting; Redis knows 200 lobbies of the queue
/// and no open one.
async fn four_hundred_players_queue_at_once_into_two_hundred_full_lobbies(c: Relays) {
    const PLAYERS: usize = 400;
    let redis = c.redis_probe().await;
    let queue = format!("rush-{}", unique());
    let mut clients = Vec::with_capacity(PLAYERS);
    for i in 0..PLAYERS {
        clients.push(Client::connect(&c.url(i), &format!("P{i}")).await);
    }
    // Every join is sent before any answer is read.
    for client in &mut clients {
        client
            .send_json(json!({"type": "join", "queue": queue, "resume": true}))
            .await;
    }
    let answers = futures_util::future::join_all(clients.iter_mut().map(|client| async move {
        let joined = client.recv_json_within(Duration::from_secs(20)).await;
        let ready = client.recv_json_within(Duration::from_secs(20)).await;
        (joined, ready)
    }))
    .await;
    let mut lobbies: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (i, (joined, ready)) in answers.iter().enumerate() {
        assert_eq!(joined["type"], "joined", "P{i}: {joined}");
        assert_eq!(joined["queue"], json!(queue), "P{i}: {joined}");
        assert_eq!(ready, &json!({"type": "ready", "players": 2}), "P{i}");
        lobbies
            .entry(lobby_of(joined))
            .or_default()
            .push(joined["seat"].as_u64().unwrap());
    }
    assert_eq!(lobbies.len(), PLAYERS / 2, "exactly 200 lobbies");
    for (lobby, seats) in &mut lobbies {
        seats.sort_unstable();
        assert_eq!(seats, &[1, 2], "lobby {lobby}");
    }
    if let Some(redis) = &redis {
        let state = redis.hgetall(&queue_key(&queue)).await;
        assert_eq!(
            state.get("lobbies").map(String::as_str),
            Some("200"),
            "{state:?}"
        );
        assert_eq!(state.get("open"), None, "no lobby waits: {state:?}");
    }
    // Nothing was sent twice: one more player opens lobby 201, alone.
    let mut last = Client::connect(&c.url_a(), "last").await;
    let joined = queue_up(&mut last, &queue).await;
    assert_eq!(joined["seat"], 1);
    assert!(!lobbies.contains_key(&lobby_of(&joined)));
}

both_flavours!(a_leaver_takes_its_waiting_lobby_out_of_the_queue_a_held_seat_keeps_it
    => a_leaver_takes_its_waiting_lobby_out_of_the_queue_a_held_seat_keeps_it_redis,
       a_leaver_takes_its_waiting_lobby_out_of_the_queue_a_held_seat_keeps_it_memory);
/// A player who leaves while waiting takes its lobby out of the queue: the
/// next player gets a new lobby. A player whose connection drops while
/// waiting (resume: its seat is held) keeps its lobby in the queue: the
/// next player is seated with it (and `ready` comes; the held player is
/// away).
async fn a_leaver_takes_its_waiting_lobby_out_of_the_queue_a_held_seat_keeps_it(c: Relays) {
    let queue = format!("wait-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let first = queue_up(&mut a, &queue).await;
    a.leave().await;
    round_trip(&mut a).await; // the leave is done
    let mut b = Client::connect(&c.url_b(), "B").await;
    let second = queue_up(&mut b, &queue).await;
    assert_eq!(second["seat"], 1, "{second}");
    assert_ne!(lobby_of(&first), lobby_of(&second));

    drop(b); // B's connection drops: its seat is held
    let held = |text: &str| {
        text.lines()
            .any(|l| l.starts_with("lobby_relay_seats_held_total ") && !l.ends_with(" 0"))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !held(&support::scrape_metrics(c.addr_b())) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's seat was never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut cc = Client::connect(&c.url_a(), "C").await;
    let third = queue_up(&mut cc, &queue).await;
    assert_eq!(lobby_of(&third), lobby_of(&second));
    assert_eq!(third["seat"], 2, "{third}");
    cc.expect_json(json!({"type": "ready", "players": 2})).await;
}

both_flavours!(queue_refusals_say_why_and_change_nothing
    => queue_refusals_say_why_and_change_nothing_redis,
       queue_refusals_say_why_and_change_nothing_memory,
    args: ["--max-queue-lobbies", "1"]);
/// A queue name that is not one gets `invalid_queue`; a join naming a
/// passphrase and a queue gets `invalid_message`; a queue with
/// `--max-queue-lobbies` lobbies gets `queue_full`. The connection stays
/// open and can join otherwise.
async fn queue_refusals_say_why_and_change_nothing(c: Relays) {
    let queue = format!("full-{}", unique());
    let mut x = Client::connect(&c.url_a(), "X").await;
    x.send_json(json!({"type": "join", "queue": "no way"}))
        .await;
    x.expect_error("invalid_queue").await;
    x.send_json(json!({"type": "join", "queue": 7})).await;
    x.expect_error("invalid_message").await;
    x.send_json(json!({"type": "join", "queue": queue, "passphrase": "jump-rocket"}))
        .await;
    x.expect_error("invalid_message").await;

    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    queue_up(&mut a, &queue).await;
    queue_up(&mut b, &queue).await;
    x.send_json(json!({"type": "join", "queue": queue})).await;
    let refused = x.expect_error("queue_full").await;
    assert!(
        refused["message"].as_str().unwrap().contains("1 games"),
        "{refused}"
    );
    x.assert_open().await;
    let pass = format!("after-{}", unique());
    assert_eq!(x.join(&pass).await["seat"], 1);
    // A and B are undisturbed.
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
    assert_quiet_pair(&mut a, &mut b).await;
}

// ---------------------------------------------------------------------------
// Spectators
// ---------------------------------------------------------------------------

/// Sends a watch request for `passphrase` (with `extra` fields).
async fn send_watch(client: &mut Client, passphrase: &str, extra: Value) {
    let mut watch = json!({"type": "join", "passphrase": passphrase, "spectate": true});
    if let (Some(watch), Some(extra)) = (watch.as_object_mut(), extra.as_object()) {
        watch.extend(extra.clone());
    }
    client.send_json(watch).await;
}

both_flavours!(a_spectator_sees_everything_in_order_and_cannot_play
    => a_spectator_sees_everything_in_order_and_cannot_play_redis,
       a_spectator_sees_everything_in_order_and_cannot_play_memory);
/// A spectator (on a node where no player of the lobby is, with Redis)
/// gets `watching`, then every game message and lobby event of the lobby in
/// the players' order; a game message of its own gets `spectating` and
/// changes nothing. A player that asked (`"spectators":true`) is told the
/// count; one that did not sees protocol v1 exactly. Redis counts the
/// spectator under its node; when it leaves, the count goes back to 0.
async fn a_spectator_sees_everything_in_order_and_cannot_play(c: Relays) {
    let redis = c.redis_probe().await;
    let pass = format!("watched-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_a(), "B (v1)").await;
    a.send_json(json!({"type": "join", "passphrase": pass, "spectators": true}))
        .await;
    assert_eq!(
        a.recv_json().await,
        json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1, "spectators": 0})
    );
    b.join(&pass).await;
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;

    let mut s = Client::connect(&c.url_b(), "S").await;
    send_watch(&mut s, &pass, json!({})).await;
    s.expect_json(json!({"type": "watching", "players": 2, "capacity": 2, "spectators": 1}))
        .await;
    a.expect_json(json!({"type": "spectators", "count": 1}))
        .await;
    if let Some(redis) = &redis {
        let meta = redis.hgetall(&meta_key(&pass)).await;
        let counted: Vec<(&String, &String)> =
            meta.iter().filter(|(k, _)| k.starts_with("sp:")).collect();
        assert_eq!(counted.len(), 1, "{meta:?}");
        assert_eq!(counted[0].1, "1", "{meta:?}");
    }

    // The game: both players send; the spectator sees all, in order.
    for i in 0..20 {
        a.send_json(json!({"type": "move", "from": 1, "i": i}))
            .await;
        b.send_binary(vec![2, i]).await;
    }
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        match s.recv().await {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                from_a.push(v["i"].as_u64().unwrap());
            }
            tokio_tungstenite::tungstenite::Message::Binary(b) => from_b.push(u64::from(b[1])),
            other => panic!("S got {other:?}"),
        }
    }
    assert_eq!(from_a, (0..20).collect::<Vec<_>>());
    assert_eq!(from_b, (0..20).collect::<Vec<_>>());
    for _ in 0..20 {
        assert_eq!(a.recv_binary().await[0], 2);
        assert_eq!(b.recv_json().await["from"], 1);
    }

    // A spectator may not play; nothing reaches the players.
    s.send_json(json!({"type": "move", "from": 0})).await;
    s.expect_error("spectating").await;
    s.assert_open().await;
    let after = json!({"type": "after", "from": 1});
    a.send_json(after.clone()).await;
    b.expect_json(after.clone()).await; // and not the spectator's move
    s.expect_json(after).await;
    a.expect_silence(Duration::from_millis(100)).await;

    // Lobby events reach the spectator too; then it leaves.
    b.leave().await;
    s.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 2}))
        .await;
    a.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 2}))
        .await;
    s.leave().await;
    let count = a.recv_json_within(Duration::from_secs(3)).await;
    assert_eq!(count, json!({"type": "spectators", "count": 0}));
    if let Some(redis) = &redis {
        let meta = redis.hgetall(&meta_key(&pass)).await;
        assert!(!meta.keys().any(|k| k.starts_with("sp:")), "{meta:?}");
    }
}

both_flavours!(players_are_told_the_count_at_most_once_a_second
    => players_are_told_the_count_at_most_once_a_second_redis,
       players_are_told_the_count_at_most_once_a_second_memory);
/// Ten spectators come at once: a player that asked is told at most one
/// count a second, the last one being 10; when they all go, 0. Spectators
/// do not count towards capacity or `ready`.
async fn players_are_told_the_count_at_most_once_a_second(c: Relays) {
    let pass = format!("crowd-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    a.send_json(json!({"type": "join", "passphrase": pass, "spectators": true}))
        .await;
    assert_eq!(a.recv_json().await["type"], "joined");
    let started = tokio::time::Instant::now();
    let mut watchers = Vec::new();
    for i in 0..10 {
        let mut s = Client::connect(&c.url(i), &format!("S{i}")).await;
        send_watch(&mut s, &pass, json!({})).await;
        assert_eq!(s.recv_json().await["type"], "watching");
        watchers.push(s);
    }
    let mut counts = Vec::new();
    while counts.last() != Some(&10) {
        let notice = a.recv_json_within(Duration::from_secs(3)).await;
        assert_eq!(notice["type"], "spectators", "{notice}");
        counts.push(notice["count"].as_u64().unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (counts.len() as f64) <= elapsed.ceil() + 1.0,
        "{} notices in {elapsed:.2} s: {counts:?}",
        counts.len()
    );
    // Still one player of two: a third connection joins as a player.
    let mut b = Client::connect(&c.url_b(), "B").await;
    assert_eq!(b.join(&pass).await["seat"], 2);
    for s in &mut watchers {
        s.leave().await;
    }
    loop {
        let notice = a.recv_json_within(Duration::from_secs(3)).await;
        if notice["type"] == "spectators" && notice["count"] == 0 {
            break;
        }
    }
}

both_flavours!(watching_is_refused_where_it_should_be
    => watching_is_refused_where_it_should_be_redis,
       watching_is_refused_where_it_should_be_memory,
    args: ["--max-spectators", "1", "--max-spectator-delay", "5"]);
/// Nothing to watch in an empty lobby (`nothing_to_watch`); a lobby with
/// `--max-spectators` spectators refuses one more (`spectators_full`); a
/// delay over `--max-spectator-delay` or not a whole number is
/// `invalid_message`; a queue with no game under way has nothing to watch.
/// The connection stays open each time.
async fn watching_is_refused_where_it_should_be(c: Relays) {
    let pass = format!("refused-{}", unique());
    let mut x = Client::connect(&c.url_a(), "X").await;
    send_watch(&mut x, &pass, json!({})).await;
    x.expect_error("nothing_to_watch").await;
    x.send_json(json!({"type": "join", "queue": format!("q-{}", unique()), "spectate": true}))
        .await;
    x.expect_error("nothing_to_watch").await;
    let mut a = Client::connect(&c.url_a(), "A").await;
    a.join(&pass).await;
    for bad in [json!(6), json!(1.5), json!("2"), json!(-1)] {
        send_watch(&mut x, &pass, json!({ "delay": bad })).await;
        x.expect_error("invalid_message").await;
    }
    let mut s = Client::connect(&c.url_b(), "S").await;
    send_watch(&mut s, &pass, json!({})).await;
    assert_eq!(s.recv_json().await["type"], "watching");
    send_watch(&mut x, &pass, json!({})).await;
    x.expect_error("spectators_full").await;
    x.assert_open().await;
    // Still a player may join.
    assert_eq!(x.join(&pass).await["seat"], 2);
}

both_flavours!(a_delayed_spectator_sees_the_game_that_much_later
    => a_delayed_spectator_sees_the_game_that_much_later_redis,
       a_delayed_spectator_sees_the_game_that_much_later_memory,
    args: ["--max-spectator-delay", "5"]);
/// A spectator that asks for a delay of 1 s gets `watching` at once (with
/// the delay), and every delivery one second after the players do, in
/// order.
async fn a_delayed_spectator_sees_the_game_that_much_later(c: Relays) {
    let pass = format!("delayed-{}", unique());
    let (mut a, mut b) = support::pair(&c, &pass).await;
    let mut s = Client::connect(&c.url_b(), "S").await;
    send_watch(&mut s, &pass, json!({"delay": 1})).await;
    assert_eq!(
        s.recv_json_within(Duration::from_millis(500)).await,
        json!({"type": "watching", "players": 2, "capacity": 2, "spectators": 1, "delay": 1})
    );
    let sent = tokio::time::Instant::now();
    for i in 0..5 {
        a.send_json(json!({"type": "move", "i": i})).await;
    }
    for i in 0..5 {
        assert_eq!(b.recv_json().await["i"], i);
    }
    for i in 0..5 {
        assert_eq!(s.recv_json_within(Duration::from_secs(3)).await["i"], i);
        let late = sent.elapsed();
        assert!(
            late >= Duration::from_millis(950),
            "message {i} after {late:?}"
        );
    }
}

both_flavours!(a_queue_can_be_watched
    => a_queue_can_be_watched_redis, a_queue_can_be_watched_memory);
/// A spectator of a queue watches the queue's game that filled last: its
/// `watching` names the queue, and it sees the players' messages.
async fn a_queue_can_be_watched(c: Relays) {
    let queue = format!("arena-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    queue_up(&mut a, &queue).await;
    queue_up(&mut b, &queue).await;
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
    let mut s = Client::connect(&c.url_b(), "S").await;
    s.send_json(json!({"type": "join", "queue": queue, "spectate": true, "host": true}))
        .await;
    assert_eq!(
        s.recv_json().await,
        json!({"type": "watching", "players": 2, "capacity": 2, "queue": queue,
               "host": 1, "epoch": 1, "spectators": 1})
    );
    a.send_json(json!({"type": "move", "x": 1})).await;
    assert_eq!(s.recv_json().await["x"], 1);
    assert_eq!(b.recv_json().await["x"], 1);
}

/// The node of a spectator is killed (SIGKILL): once it is reaped, the
/// players that asked are told the count without it, and Redis no longer
/// counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_spectators_are_taken_off_the_count() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--node-timeout", "2s"];
    let a_node = Node::start("a", &args);
    let mut b_node = Node::start("b", &args);
    let pass = format!("dead-watcher-{}", unique());
    let mut a = Client::connect(&a_node.url(), "A").await;
    a.send_json(json!({"type": "join", "passphrase": pass, "spectators": true}))
        .await;
    assert_eq!(a.recv_json().await["type"], "joined");
    let mut s = Client::connect(&b_node.url(), "S").await;
    send_watch(&mut s, &pass, json!({})).await;
    assert_eq!(s.recv_json().await["type"], "watching");
    a.expect_json(json!({"type": "spectators", "count": 1}))
        .await;
    b_node.kill9();
    let notice = a.recv_json_within(Duration::from_secs(10)).await;
    assert_eq!(notice, json!({"type": "spectators", "count": 0}));
    let probe = support::RedisProbe::connect(&url).await;
    let meta = probe.hgetall(&meta_key(&pass)).await;
    assert!(!meta.keys().any(|k| k.starts_with("sp:")), "{meta:?}");
}

/// Queue joins and watches count against the join rate limit like
/// passphrase joins: past it, `rate_limited`, and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_joins_and_watches_count_against_the_join_limit() {
    let relays = Relays::memory_with(&["--join-rate", "1", "--join-burst", "2"]);
    let pass = format!("limited-{}", unique());
    let mut a = Client::connect(&relays.url_a(), "A").await;
    a.join(&pass).await; // 1
    let mut s = Client::connect(&relays.url_a(), "S").await;
    send_watch(&mut s, &pass, json!({})).await; // 2
    assert_eq!(s.recv_json().await["type"], "watching");
    let mut t = Client::connect(&relays.url_a(), "T").await;
    send_watch(&mut t, &pass, json!({})).await;
    t.expect_error("rate_limited").await;
    t.send_json(json!({"type": "join", "queue": "limited"}))
        .await;
    t.expect_error("rate_limited").await;
    t.assert_open().await;
}

both_flavours!(spectators_see_the_last_player_leave_and_the_next_ones_come
    => spectators_see_the_last_player_leave_and_the_next_ones_come_redis,
       spectators_see_the_last_player_leave_and_the_next_ones_come_memory);
/// A spectator sees every `playerLeft`, the last player's too, and stays:
/// the next players' `joined` events reach it (`playerJoined`, `ready`).
async fn spectators_see_the_last_player_leave_and_the_next_ones_come(c: Relays) {
    let pass = format!("emptied-{}", unique());
    let (mut a, mut b) = support::pair(&c, &pass).await;
    let mut s = Client::connect(&c.url_b(), "S").await;
    send_watch(&mut s, &pass, json!({})).await;
    assert_eq!(s.recv_json().await["type"], "watching");
    a.leave().await;
    s.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 1}))
        .await;
    b.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 1}))
        .await;
    b.leave().await;
    s.expect_json(json!({"type": "playerLeft", "players": 0, "seat": 2}))
        .await;
    let mut c1 = Client::connect(&c.url_a(), "C1").await;
    c1.join(&pass).await;
    s.expect_json(json!({"type": "playerJoined", "players": 1, "seat": 1}))
        .await;
}

redis_only!(spectators_see_the_last_player_go_from_a_node_with_no_player_left
    => spectators_see_the_last_player_go_from_a_node_with_no_player_left_redis);
/// Both players on node a, the spectator on node b: the players'
/// connections end (no `leave`); the spectator sees both `playerLeft`.
async fn spectators_see_the_last_player_go_from_a_node_with_no_player_left(c: Relays) {
    let pass = format!("gone-{}", unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_a(), "B").await;
    a.join(&pass).await;
    b.join(&pass).await;
    let mut s = Client::connect(&c.url_b(), "S").await;
    send_watch(&mut s, &pass, json!({})).await;
    assert_eq!(s.recv_json().await["type"], "watching");
    drop(a);
    s.expect_json(json!({"type": "playerLeft", "players": 1, "seat": 1}))
        .await;
    drop(b);
    s.expect_json(json!({"type": "playerLeft", "players": 0, "seat": 2}))
        .await;
}

/// Redis restarts and loses everything: the node registers its spectators
/// again with its seats (its `sp:` count of the lobby), so the lobby's
/// count and `--max-spectators` hold after the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spectators_are_registered_again_after_redis_lost_everything() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = Node::start("a", &["--redis-url", url.as_str()]);
    let pass = format!("relost-{}", unique());
    let mut a = Client::connect(&node.url(), "A").await;
    a.join(&pass).await;
    let mut s = Client::connect(&node.url(), "S").await;
    send_watch(&mut s, &pass, json!({})).await;
    assert_eq!(s.recv_json().await["type"], "watching");
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    let probe = support::RedisProbe::connect(&url).await;
    let key = meta_key(&pass);
    probe
        .wait_until(Duration::from_secs(10), move |probe| {
            let key = key.clone();
            async move {
                let meta = probe.hgetall(&key).await;
                let counted: Vec<&String> = meta
                    .iter()
                    .filter(|(k, _)| k.starts_with("sp:"))
                    .map(|(_, v)| v)
                    .collect();
                if counted == ["1"] {
                    Ok(())
                } else {
                    Err(format!("lr:meta after the restart: {meta:?}"))
                }
            }
        })
        .await;
    s.assert_open().await;
}
