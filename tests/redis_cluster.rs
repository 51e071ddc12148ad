//! The relay on a Redis Cluster (`--redis-url redis+cluster://...`), through
//! real processes: `redis-server` nodes in cluster mode (with replicas where a
//! test needs a failover), two relay nodes, real clients.
//!
//! A lobby's keys and channel share the hash tag `{<lobby id>}`, so each
//! lobby lives on one shard and lobbies spread over all of them; a shard's
//! master may die (its replica takes over) or a slot may move to another
//! master, and games must go on through both.
//!
//! The first test checks the harness itself, without the relay.

use crate::support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Client, Receiver, RedisCluster, Relays, Sender, assert_quiet_pair, join_second, lobby_channel,
    lobby_id, lobby_key, pair_named, unique,
};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// The Lua resume state of a lobby: `lr:resume:{<lobby id>}`.
fn resume_key(passphrase: &str) -> String {
    format!("lr:resume:{{{}}}", lobby_id(passphrase))
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// The harness alone: a cluster of 3 masters with a replica each starts; the
/// probe routes commands, joins `KEYS`, sharded channels and `MONITOR` over
/// the masters; a killed master's replica is promoted and keeps the data; a
/// slot moves to another master with its keys; everything stops on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_runs_fails_over_and_reshards_a_cluster() {
    let run = async {
        let cluster = RedisCluster::start(3, 1);
        let ports = cluster.ports();
        assert_eq!(ports.len(), 6);
        let masters = cluster.masters();
        assert_eq!(masters.len(), 3, "{masters:?}");
        for &master in &masters {
            assert_eq!(cluster.replicas_of(master).len(), 1, "replicas of {master}");
        }
        let seeds: Vec<String> = masters.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(
            cluster.url(),
            format!("redis+cluster://{}", seeds.join(","))
        );

        // Routed writes land on every shard; KEYS joins them.
        let probe = cluster.probe().await;
        assert!(probe.is_cluster());
        let keys: Vec<String> = (0..30).map(|i| format!("lr:probe:{{k{i}}}")).collect();
        for key in &keys {
            let _: () = probe
                .query(redis::cmd("HSET").arg(key).arg("f").arg(key))
                .await;
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(probe.keys("lr:probe:*").await, sorted);
        for &master in &masters {
            assert!(
                !probe.keys_on(master, "lr:probe:*").await.is_empty(),
                "master {master} holds none of 30 keys"
            );
        }
        assert_eq!(probe.hgetall(&keys[0]).await["f"], keys[0]);
        assert!(probe.everything().await.contains(&keys[7]));

        // MONITOR sees the commands of every master.
        let monitor = probe.monitor().await;
        for key in &keys {
            let _: String = probe.query(redis::cmd("HGET").arg(key).arg("f")).await;
        }
        let seen = monitor.finish().await;
        for key in &keys {
            assert!(
                seen.iter().any(|l| l.contains("HGET") && l.contains(key)),
                "MONITOR missed HGET {key}: {seen:#?}"
            );
        }

        // A sharded subscriber is seen by `channels`; SPUBLISH is routed to it.
        let channel = "lr:chan:{probe}";
        let owner = cluster.master_of(channel);
        let mut subscriber = RawConnection::open(owner).await;
        subscriber.send(&["SSUBSCRIBE", channel]).await;
        subscriber.read_until("ssubscribe").await;
        assert_eq!(probe.channels("lr:chan:*").await, [channel]);
        assert_eq!(probe.shard_channels_on(owner, "lr:chan:*").await, [channel]);
        let receivers: u64 = probe
            .query(redis::cmd("SPUBLISH").arg(channel).arg("hello-shard"))
            .await;
        assert_eq!(receivers, 1);
        subscriber.read_until("hello-shard").await;

        // A master dies: its replica takes its slots, with the data.
        let key = &keys[0];
        let old = cluster.master_of(key);
        let replica = cluster.replicas_of(old)[0];
        let acked: u64 = probe
            .query_node(old, redis::cmd("WAIT").arg(1).arg(2000))
            .await;
        assert_eq!(acked, 1, "the replica of {old} acknowledged the writes");
        let killed_at = Instant::now();
        cluster.kill(old);
        let new = cluster
            .wait_for_master_of(key, old, Duration::from_secs(20))
            .await;
        println!(
            "failover of {old} to {new}: {:?} after SIGKILL",
            killed_at.elapsed()
        );
        assert_eq!(new, replica, "the replica of {old} took over");
        assert!(!cluster.masters().contains(&old));
        assert!(cluster.masters().contains(&new));
        assert_eq!(cluster.master_of(key), new);
        probe
            .wait_until(Duration::from_secs(10), |probe| {
                let sorted = sorted.clone();
                async move {
                    let now = probe.keys("lr:probe:*").await;
                    if now == sorted {
                        Ok(())
                    } else {
                        Err(format!("keys after the failover: {now:?}"))
                    }
                }
            })
            .await;
        assert_eq!(probe.hgetall(key).await["f"], *key);

        // A slot moves to another master with its keys, while data is live.
        let moving = keys
            .iter()
            .find(|k| cluster.master_of(k) != new)
            .expect("a key on another shard");
        let from = cluster.master_of(moving);
        let to = new;
        let moved = cluster.migrate_slot_of(moving, to).await;
        assert!(moved >= 1, "{moved} keys moved");
        assert_eq!(cluster.master_of(moving), to);
        assert!(probe.keys_on(to, moving).await.contains(moving));
        assert!(probe.keys_on(from, moving).await.is_empty());
        assert_eq!(probe.hgetall(moving).await["f"], *moving);
        cluster
    };
    let cluster = tokio::time::timeout(support::TEST_TIMEOUT, run)
        .await
        .expect("the harness test timed out");

    // Dropping the cluster stops every one of its processes.
    let ports = cluster.ports();
    drop(cluster);
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a cluster node still listens on {port} after drop"
        );
    }
}

/// `CLUSTER NODES` lines and cluster URLs are read right.
#[test]
fn cluster_nodes_and_seed_urls_are_parsed() {
    let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host master - 0 1426238316232 2 connected 5461-10922 [7000->-e7d1]
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 10923
292f 127.0.0.1:30003@31003 master,fail? - 1426238316232 0 3 disconnected
";
    let view = support::redis_cluster::parse_cluster_nodes(text);
    assert_eq!(view.len(), 4);
    assert_eq!(view[0].port, 30004);
    assert!(view[0].is_replica() && view[0].master_id.as_deref() == Some("e7d1"));
    assert_eq!(view[1].slots, [(5461, 10922)]);
    assert!(view[2].has("myself") && view[2].owns(10923) && !view[2].owns(10924));
    assert!(view[3].is_master() && view[3].is_failed());
    assert_eq!(
        support::redis_cluster::seed_ports("redis+cluster://127.0.0.1:1,127.0.0.1:2/"),
        Some(vec![1, 2])
    );
    assert_eq!(
        support::redis_cluster::seed_ports("redis://127.0.0.1:1/"),
        None
    );
}

// ---------------------------------------------------------------------------
// The relay on a cluster
// ---------------------------------------------------------------------------

/// 48 lobbies across two nodes on 3 masters: every lobby relays both ways,
/// in order; every master holds some lobbies and some of their sharded
/// channels; and for each lobby, its hash, its channel and (with resume) its
/// resume state hash to one slot and sit on that slot's master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lobbies_spread_over_the_shards_and_each_lobby_keeps_one_slot() {
    let relays = Relays::redis_cluster_with(3, 0, &[]);
    support::run(relays, |c: Relays| async move {
        const LOBBIES: usize = 48;
        let run = unique();
        let mut games = Vec::new();
        for i in 0..LOBBIES {
            let passphrase = format!("spread-{run}-{i}");
            let resumable = i % 2 == 0;
            let (mut a, mut b) = if resumable {
                pair_resumable(&c, &passphrase, i).await
            } else {
                pair_named(&c, &passphrase, &format!("A{i}"), &format!("B{i}")).await
            };
            for n in 0..3 {
                a.send_text(&mv(n)).await;
            }
            for n in 0..3 {
                b.expect_text(&mv(n)).await;
            }
            for n in 0..3 {
                b.send_text(&mv(n)).await;
            }
            for n in 0..3 {
                a.expect_text(&mv(n)).await;
            }
            games.push((passphrase, resumable, a, b));
        }

        let rc = c.redis_cluster().expect("a Redis Cluster");
        let redis = c.redis_probe().await.expect("a Redis Cluster");
        let masters = redis.masters().await;
        assert_eq!(masters.len(), 3, "{masters:?}");
        for &master in &masters {
            let keys = redis.keys_on(master, "lr:lobby:*").await;
            let channels = redis.shard_channels_on(master, "lr:chan:*").await;
            println!(
                "master {master}: {} lobbies, {} shard channels",
                keys.len(),
                channels.len()
            );
            assert!(!keys.is_empty(), "master {master} holds no lobby");
            assert!(
                !channels.is_empty(),
                "master {master} has no lobby channel subscribed (SSUBSCRIBE)"
            );
        }
        assert_eq!(redis.keys("lr:lobby:*").await.len(), LOBBIES);
        assert_eq!(redis.channels("lr:chan:*").await.len(), LOBBIES);

        for (passphrase, resumable, _, _) in &games {
            let key = lobby_key(passphrase);
            let channel = lobby_channel(passphrase);
            let slot = rc.slot_of(&key);
            assert_eq!(rc.slot_of(&channel), slot, "{channel} and {key}");
            let master = rc.master_of(&key);
            assert!(
                redis.keys_on(master, &key).await.contains(&key),
                "{key} is not on {master}, the master of its slot {slot}"
            );
            assert!(
                redis
                    .shard_channels_on(master, &channel)
                    .await
                    .contains(&channel),
                "{channel} is not subscribed on {master}, the master of its slot {slot}"
            );
            if *resumable {
                let resume = resume_key(passphrase);
                assert_eq!(rc.slot_of(&resume), slot, "{resume} and {key}");
                assert!(
                    redis.keys_on(master, &resume).await.contains(&resume),
                    "{resume} is not on {master}, the master of its slot {slot}"
                );
                let per_seat = format!("{resume}:*");
                for seat_key in redis.keys(&per_seat).await {
                    assert_eq!(rc.slot_of(&seat_key), slot, "{seat_key} and {key}");
                }
            }
        }
        for (_, _, mut a, mut b) in games {
            assert_quiet_pair(&mut a, &mut b).await;
        }
    })
    .await;
}

/// 3 masters with a replica each; 30 lobbies across two nodes, each pair
/// sending numbered moves both ways every 25 ms; the master that also holds
/// node `a`'s heartbeat (so that node liveness is tested as well as
/// lobbies) is killed with SIGKILL and its replica takes over. No player
/// gets `playerLeft`, an error or a close; every receiver sees strictly
/// increasing numbers; lobbies on the other shards lose nothing; lobbies on
/// the failed shard flow again (their last moves arrive), and the pause and
/// the moves lost there are printed. A new lobby on the failed-over slots
/// then forms and plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failing_over_does_not_end_games() {
    let relays = Relays::redis_cluster_with(3, 1, &["--node-timeout", "3s"]);
    support::run(relays, |c: Relays| async move {
        const LOBBIES: usize = 30;
        const PERIOD: Duration = Duration::from_millis(25);
        let rc = c.redis_cluster().expect("a Redis Cluster");
        let redis = c.redis_probe().await.expect("a Redis Cluster");
        let run = unique();
        let mut passphrases = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..LOBBIES {
            let passphrase = format!("failover-{run}-{i}");
            pairs.push(pair_named(&c, &passphrase, &format!("A{i}"), &format!("B{i}")).await);
            passphrases.push(passphrase);
        }

        let heartbeats = redis.keys("lr:{nodes}:node:a/*").await;
        let [heartbeat] = heartbeats.as_slice() else {
            panic!("one heartbeat of node a expected: {heartbeats:?}");
        };
        let victim = rc.master_of(heartbeat);
        let affected: Vec<bool> = passphrases
            .iter()
            .map(|p| rc.master_of(&lobby_key(p)) == victim)
            .collect();
        let hit = affected.iter().filter(|&&a| a).count();
        println!("killing master {victim}: it holds {heartbeat} and {hit} of {LOBBIES} lobbies");
        assert!(
            hit > 0 && hit < LOBBIES,
            "the victim must hold some lobbies, not all: {hit}"
        );

        let (stop, stopped) = watch::channel(false);
        let games: Vec<Game> = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (a, b))| Game::start(i, a, b, PERIOD, &stopped))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;

        let killed_at = Instant::now();
        rc.kill(victim);
        let promoted = rc
            .wait_for_master_of(heartbeat, victim, Duration::from_secs(15))
            .await;
        let promoted_at = Instant::now();
        println!(
            "master {victim} killed; {promoted} promoted after {:?}",
            promoted_at - killed_at
        );
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(killed_at.elapsed())).await;
        let _ = stop.send(true);
        let mut results = Vec::new();
        for game in games {
            results.push(game.finish().await);
        }

        let mut trouble = Vec::new();
        for (i, result) in results.iter().enumerate() {
            for flow in [&result.a_to_b, &result.b_to_a] {
                trouble.extend(flow.trouble.iter().map(|t| format!("lobby {i}: {t}")));
                let lost = flow.lost();
                if !affected[i] {
                    if !lost.is_empty() {
                        trouble.push(format!(
                            "lobby {i} ({}, unaffected shard) lost {} of {} moves: {}",
                            flow.name,
                            lost.len(),
                            flow.sent.len(),
                            ranges(&lost)
                        ));
                    }
                    continue;
                }
                let pause = flow.pause_after(killed_at);
                let lost_after_promotion = lost
                    .iter()
                    .filter(|&&n| flow.sent[n as usize - 1] > promoted_at)
                    .count();
                println!(
                    "lobby {i} ({}, failed-over shard): pause {}, {} of {} moves lost \
                     ({lost_after_promotion} of them sent after the promotion)",
                    flow.name,
                    flow.describe_pause(killed_at),
                    lost.len(),
                    flow.sent.len()
                );
                if pause >= Duration::from_secs(10) {
                    trouble.push(format!(
                        "lobby {i} ({}): paused {pause:?}, 10 s allowed",
                        flow.name
                    ));
                }
                if let Some(missing) = flow.missing_last() {
                    trouble.push(format!("lobby {i} ({}): {missing}", flow.name));
                }
            }
        }
        // Where the failed-over lobbies' channels are subscribed now.
        let subscribed = redis.shard_channels_on(promoted, "lr:chan:*").await;
        println!(
            "{} of the {hit} failed-over lobbies have their channel subscribed on {promoted}",
            passphrases
                .iter()
                .filter(|p| subscribed.contains(&lobby_channel(p)))
                .count()
        );
        // The failures so far are printed now; the checks below still run.
        if !trouble.is_empty() {
            eprintln!("{}", trouble.join("\n"));
        }

        // Every player of an untroubled game is still connected, with
        // nothing pending.
        for (i, result) in results.into_iter().enumerate() {
            let (colon, paren) = (format!("lobby {i}:"), format!("lobby {i} ("));
            if trouble
                .iter()
                .any(|t| t.starts_with(&colon) || t.starts_with(&paren))
            {
                continue;
            }
            let (mut a, mut b) = result.clients;
            assert_quiet_pair(&mut a, &mut b).await;
        }

        // A new lobby whose slot was failed over forms and plays.
        let passphrase = (0..1000)
            .map(|i| format!("after-failover-{run}-{i}"))
            .find(|p| rc.master_of(&lobby_key(p)) == promoted)
            .expect("a passphrase on the promoted master");
        let (mut a, mut b) = pair_named(&c, &passphrase, "New A", "New B").await;
        assert_quiet_pair(&mut a, &mut b).await;
        let key = lobby_key(&passphrase);
        assert!(
            redis.keys_on(promoted, &key).await.contains(&key),
            "{key} is not on the promoted master {promoted}"
        );
        assert!(trouble.is_empty(), "{}", trouble.join("\n"));
    })
    .await;
}

/// 3 masters; one lobby (its first player opted in to resume, so that it
/// has resume state too) across two nodes, numbered moves both ways every
/// 10 ms; its slot is moved to another master mid-game (keys migrated,
/// ownership handed over). Moves keep flowing after the move, in order, with
/// no `playerLeft`, error or close; the lobby's hash and resume state now
/// live on the new master and its channel is subscribed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrating_under_a_live_game_does_not_end_it() {
    let relays = Relays::redis_cluster_with(3, 0, &[]);
    support::run(relays, |c: Relays| async move {
        let rc = c.redis_cluster().expect("a Redis Cluster");
        let redis = c.redis_probe().await.expect("a Redis Cluster");
        let passphrase = format!("migrating-{}", unique());
        let (a, b) = pair_resumable(&c, &passphrase, 0).await;
        let key = lobby_key(&passphrase);
        let channel = lobby_channel(&passphrase);
        let resume = resume_key(&passphrase);
        let from = rc.master_of(&key);
        let to = *rc
            .masters()
            .iter()
            .find(|&&m| m != from)
            .expect("another master");

        let (stop, stopped) = watch::channel(false);
        let game = Game::start(0, a, b, Duration::from_millis(10), &stopped);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let moved = rc.migrate_slot_of(&key, to).await;
        let moved_at = Instant::now();
        println!(
            "slot {} of the lobby moved from {from} to {to} with {moved} keys in {:?}",
            rc.slot_of(&key),
            moved_at - started
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop.send(true);
        let result = game.finish().await;

        let mut trouble = Vec::new();
        for flow in [&result.a_to_b, &result.b_to_a] {
            trouble.extend(flow.trouble.iter().cloned());
            let lost = flow.lost();
            println!(
                "{}: pause {} from the start of the move, {} of {} moves lost: {}",
                flow.name,
                flow.describe_pause(started),
                lost.len(),
                flow.sent.len(),
                ranges(&lost)
            );
            let after_move = flow
                .received
                .iter()
                .filter(|(n, _)| flow.sent[*n as usize - 1] > moved_at)
                .count();
            if after_move == 0 {
                trouble.push(format!(
                    "{}: no move sent after the move arrived",
                    flow.name
                ));
            }
            if let Some(missing) = flow.missing_last() {
                trouble.push(format!("{}: {missing}", flow.name));
            }
        }
        assert!(trouble.is_empty(), "{}", trouble.join("\n"));
        let (mut a, mut b) = result.clients;
        assert_quiet_pair(&mut a, &mut b).await;

        assert_eq!(rc.master_of(&key), to);
        for k in [&key, &resume] {
            assert!(
                redis.keys_on(to, k).await.contains(k),
                "{k} is not on the new master {to}"
            );
            assert!(
                redis.keys_on(from, k).await.is_empty(),
                "{k} is still on the old master {from}"
            );
        }
        redis
            .wait_until(Duration::from_secs(5), |redis| {
                let channel = channel.clone();
                async move {
                    let there = redis.shard_channels_on(to, &channel).await;
                    let old = redis.shard_channels_on(from, &channel).await;
                    if there == [channel.clone()] && old.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("{channel}: on {to}: {there:?}, on {from}: {old:?}"))
                    }
                }
            })
            .await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Sorted numbers as ranges: `3-7, 9, 12-15`.
fn ranges(numbers: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            numbers[i].to_string()
        } else {
            format!("{}-{}", numbers[i], numbers[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// A numbered game message.
fn mv(n: u64) -> String {
    format!(r#"{{"type":"move","n":{n}}}"#)
}

/// Like [`support::pair`], the first player joining with `"resume":true`
/// (so that the lobby has resume state in Redis).
async fn pair_resumable(c: &Relays, passphrase: &str, i: usize) -> (Client, Client) {
    let mut a = Client::connect(&c.url_a(), &format!("A{i}")).await;
    let mut b = Client::connect(&c.url_b(), &format!("B{i}")).await;
    a.send_json(json!({"type": "join", "passphrase": passphrase, "resume": true}))
        .await;
    let joined = a.recv_json().await;
    assert_eq!(
        (&joined["type"], &joined["seat"]),
        (&json!("joined"), &json!(1)),
        "{joined}"
    );
    assert!(joined["resumeToken"].is_string(), "{joined}");
    join_second(&mut a, &mut b, passphrase).await;
    (a, b)
}

/// A pair of players sending numbered moves to each other from four tasks
/// (a sender and a receiver per player) until told to stop.
struct Game {
    a_to_b: Direction,
    b_to_a: Direction,
}

/// The sending and the receiving task of one direction of a game.
type Direction = (
    tokio::task::JoinHandle<Sent>,
    tokio::task::JoinHandle<(Receiver, Flow)>,
);

/// What a sending task did: its sender back, when move `n` was sent (at
/// index `n - 1`), and a failed send.
struct Sent {
    tx: Sender,
    at: Vec<Instant>,
    trouble: Vec<String>,
}

/// What one direction of a game did.
struct Flow {
    name: String,
    /// When move `n` was sent, at index `n - 1`.
    sent: Vec<Instant>,
    /// Moves received, in arrival order, with their arrival.
    received: Vec<(u64, Instant)>,
    /// Anything that must not happen: another message, an error, a close, a
    /// number out of order, a failed send.
    trouble: Vec<String>,
}

struct GameResult {
    a_to_b: Flow,
    b_to_a: Flow,
    clients: (Client, Client),
}

impl Game {
    fn start(
        i: usize,
        a: Client,
        b: Client,
        period: Duration,
        stop: &watch::Receiver<bool>,
    ) -> Game {
        let (a_tx, a_rx) = a.split();
        let (b_tx, b_rx) = b.split();
        Game {
            a_to_b: (
                tokio::spawn(send_moves(a_tx, period, stop.clone())),
                tokio::spawn(receive_moves(b_rx, format!("A{i}->B{i}"), stop.clone())),
            ),
            b_to_a: (
                tokio::spawn(send_moves(b_tx, period, stop.clone())),
                tokio::spawn(receive_moves(a_rx, format!("B{i}->A{i}"), stop.clone())),
            ),
        }
    }

    async fn finish(self) -> GameResult {
        async fn direction((sending, receiving): Direction) -> (Sender, Receiver, Flow) {
            let sent = support::finish(sending).await;
            let (rx, mut flow) = support::finish(receiving).await;
            flow.sent = sent.at;
            flow.trouble.extend(sent.trouble);
            (sent.tx, rx, flow)
        }
        let (a_tx, b_rx, a_to_b) = direction(self.a_to_b).await;
        let (b_tx, a_rx, b_to_a) = direction(self.b_to_a).await;
        GameResult {
            a_to_b,
            b_to_a,
            clients: (Client { tx: a_tx, rx: a_rx }, Client { tx: b_tx, rx: b_rx }),
        }
    }
}

impl Flow {
    /// Moves sent and never received.
    fn lost(&self) -> Vec<u64> {
        let got: BTreeSet<u64> = self.received.iter().map(|(n, _)| *n).collect();
        (1..=self.sent.len() as u64)
            .filter(|n| !got.contains(n))
            .collect()
    }

    fn last_received(&self) -> u64 {
        self.received.last().map_or(0, |(n, _)| *n)
    }

    /// Whether the last move sent arrived.
    fn complete(&self) -> bool {
        self.last_received() == self.sent.len() as u64
    }

    /// If the last move sent never arrived, that trouble in words.
    fn missing_last(&self) -> Option<String> {
        (!self.complete()).then(|| {
            format!(
                "the last move sent ({}) never arrived (last: {})",
                self.sent.len(),
                self.last_received()
            )
        })
    }

    /// The longest pause in arrivals from `since` on: between the last
    /// arrival before `since` (or `since`) and the next, between any two
    /// arrivals after it, and, if the last move sent never arrived, from the
    /// last arrival to the moment that move was sent.
    fn pause_after(&self, since: Instant) -> Duration {
        let mut times: Vec<Instant> = self.received.iter().map(|(_, t)| *t).collect();
        let first_after = times.iter().position(|&t| t > since).unwrap_or(times.len());
        let mut times = match first_after {
            0 => std::iter::once(since).chain(times).collect(),
            i => times.split_off(i - 1),
        };
        if !self.complete() {
            if let Some(&last_sent) = self.sent.last() {
                times.push(last_sent.max(*times.last().unwrap_or(&since)));
            }
        }
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// `pause_after` for printing, saying whether the flow came back.
    fn describe_pause(&self, since: Instant) -> String {
        let pause = self.pause_after(since);
        if self.complete() {
            format!("{pause:?}")
        } else {
            format!("{pause:?} and counting (the last move never arrived)")
        }
    }
}

/// Sends `{"type":"move","n":1}`, `2`, ... every `period` until `stop`.
async fn send_moves(mut tx: Sender, period: Duration, stop: watch::Receiver<bool>) -> Sent {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::new();
    let mut trouble = Vec::new();
    loop {
        ticks.tick().await;
        if *stop.borrow() {
            break;
        }
        let n = sent.len() as u64 + 1;
        let at = Instant::now();
        if let Err(e) = tx.try_send_text(&mv(n)).await {
            trouble.push(format!("{}: sending move {n} failed: {e}", tx.name()));
            break;
        }
        sent.push(at);
    }
    Sent {
        tx,
        at: sent,
        trouble,
    }
}

/// Receives moves until `stop` and then a second of silence; anything but a
/// move with a higher number than the last is trouble.
async fn receive_moves(
    mut rx: Receiver,
    name: String,
    stop: watch::Receiver<bool>,
) -> (Receiver, Flow) {
    let mut flow = Flow {
        name,
        sent: Vec::new(),
        received: Vec::new(),
        trouble: Vec::new(),
    };
    let mut quiet = Duration::ZERO;
    let step = Duration::from_millis(100);
    loop {
        match rx.try_recv_within(step).await {
            Ok(Some(Message::Text(text))) => {
                quiet = Duration::ZERO;
                let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                match (value["type"].as_str(), value["n"].as_u64()) {
                    (Some("move"), Some(n)) => {
                        let last = flow.last_received();
                        if n <= last {
                            flow.trouble
                                .push(format!("{}: move {n} arrived after move {last}", flow.name));
                        }
                        flow.received.push((n, Instant::now()));
                    }
                    // The player's own moves that the failing shard did not
                    // take were not relayed, and it is told so (at most once
                    // a second).
                    (Some("error"), _) if value["code"] == "unavailable" => {}
                    _ => flow
                        .trouble
                        .push(format!("{}: unexpected message {text}", flow.name)),
                }
            }
            Ok(Some(other)) => {
                let closed = matches!(other, Message::Close(_));
                flow.trouble
                    .push(format!("{}: unexpected frame {other:?}", flow.name));
                if closed {
                    break;
                }
            }
            Ok(None) => {
                if *stop.borrow() {
                    quiet += step;
                    if quiet >= Duration::from_secs(1) {
                        break;
                    }
                }
            }
            Err(e) => {
                flow.trouble.push(format!("{}: {e}", flow.name));
                break;
            }
        }
    }
    (rx, flow)
}

/// A plain RESP connection to one node, for a sharded subscriber that the
/// harness test controls byte by byte.
struct RawConnection {
    stream: tokio::net::TcpStream,
    seen: Vec<u8>,
}

impl RawConnection {
    async fn open(port: u16) -> RawConnection {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connecting to {port}: {e}"));
        RawConnection {
            stream,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, args: &[&str]) {
        use tokio::io::AsyncWriteExt;
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.stream
            .write_all(command.as_bytes())
            .await
            .expect("write");
    }

    /// Reads until `needle` has arrived (since the last call).
    async fn read_until(&mut self, needle: &str) {
        use tokio::io::AsyncReadExt;
        let wait = async {
            let mut buf = [0u8; 1024];
            loop {
                if let Some(at) = self
                    .seen
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                {
                    self.seen.drain(..at + needle.len());
                    return;
                }
                let n = self.stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "connection closed before {needle:?}");
                self.seen.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(support::RECV_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("{needle:?} never arrived"));
    }
}
