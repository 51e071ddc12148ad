//! `lobby-relay inspect`: what it prints matches what the players did.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, RedisCluster, Relays, pair};

fn run(redis_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lobby-relay"))
        .arg("inspect")
        .args(args)
        .args(["--redis-url", redis_url])
        .env_remove("LOBBY_RELAY_LOBBY_SECRET")
        .env_remove("LOBBY_RELAY_REDIS_CA_CERT")
        .output()
        .expect("inspect runs")
}

fn inspect(redis_url: &str, args: &[&str]) -> String {
    let output = run(redis_url, args);
    assert!(output.status.success(), "inspect {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

fn json(redis_url: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&inspect(redis_url, &args)).expect("JSON")
}

/// The rows of `inspect nodes --json`, `count` of them.
fn node_rows(redis_url: &str, count: usize) -> Vec<Value> {
    let Value::Array(nodes) = json(redis_url, &["nodes"]) else {
        panic!("no rows");
    };
    assert_eq!(nodes.len(), count, "{nodes:?}");
    nodes
}

/// Lobby L1 has A (node a) and B (node b), lobby L2 has C (node a) alone:
/// `inspect nodes`, `inspect lobbies` and `inspect lobby` say exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_matches_the_players() {
    let c = Relays::redis();
    let url = c.redis_url().expect("redis");
    let l1 = format!("inspect-one-{}", support::unique());
    let l2 = format!("inspect-two-{}", support::unique());
    let (_a, _b) = pair(&c, &l1).await;
    let mut solo = Client::connect(&c.url_a(), "C").await;
    solo.join(&l2).await;

    let nodes = node_rows(&url, 2);
    let row = |prefix: &str| {
        nodes
            .iter()
            .find(|n| n["node"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no node {prefix}: {nodes:?}"))
    };
    assert_eq!(row("a/")["alive"], true);
    assert_eq!(row("a/")["lobbies"], 2);
    assert_eq!(row("a/")["members"], 2);
    assert_eq!(row("b/")["lobbies"], 1);
    assert_eq!(row("b/")["members"], 1);

    let lobbies = json(&url, &["lobbies"]);
    let lobbies = lobbies.as_array().expect("rows");
    assert_eq!(lobbies.len(), 2, "{lobbies:?}");
    let find = |passphrase: &str| {
        let hex = support::lobby_id(passphrase);
        lobbies
            .iter()
            .find(|l| l["lobby"] == hex.as_str())
            .unwrap_or_else(|| panic!("no lobby {hex}: {lobbies:?}"))
            .clone()
    };
    assert_eq!(find(&l1)["players"], 2);
    assert_eq!(find(&l1)["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(find(&l2)["players"], 1);
    // A passphrase lobby has a host (its first joiner) and no queue.
    assert_eq!(find(&l1)["host"], 1);
    assert_eq!(find(&l1)["epoch"], 1);
    assert_eq!(find(&l1)["queue"], Value::Null);

    let hex = support::lobby_id(&l1);
    let one = json(&url, &["lobby", "--hash", &hex]);
    assert_eq!(one["players"], 2);
    assert_eq!(one["key"], format!("lr:lobby:{{{hex}}}"));
    let seats = one["seats"].as_array().unwrap();
    assert!(
        seats[0]["node"].as_str().unwrap().starts_with("a/"),
        "{one}"
    );
    assert!(
        seats[1]["node"].as_str().unwrap().starts_with("b/"),
        "{one}"
    );
    assert_eq!(one["host"], 1, "{one}");
    assert_eq!(one["epoch"], 1, "{one}");
    assert_eq!(one["queue"], Value::Null, "{one}");
    assert_eq!(seats[0]["host"], true, "{one}");
    assert_eq!(seats[1]["host"], false, "{one}");
    assert_eq!(json(&url, &["lobby", &l1]), one, "by passphrase or by hash");
    // Shards are for a Redis Cluster only.
    assert_eq!(one.get("shard"), None, "{one}");
    assert_eq!(one.get("slot"), None, "{one}");
    assert!(
        lobbies.iter().all(|l| l.get("shard").is_none()),
        "{lobbies:?}"
    );

    let table = inspect(&url, &["nodes"]);
    assert!(table.starts_with("NODE"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    let table = inspect(&url, &["lobbies"]);
    assert!(table.contains(&support::lobby_id(&l2)), "{table}");
    assert!(table.lines().next().unwrap().ends_with("NODES"), "{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LOBBY",
            "PLAYERS",
            "SEATS",
            "HOST",
            "EPOCH",
            "QUEUE",
            "SPECTATORS",
            "NODES"
        ],
        "{table}"
    );
    let text = inspect(&url, &["lobby", &l1]);
    assert!(!text.contains("shard:"), "{text}");
    assert!(text.contains("\nhost:    seat 1 (epoch 1)\n"), "{text}");
    assert!(!text.contains("queue:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("seat 1: a/") && l.ends_with(" (host)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("seat 2: b/") && !l.contains("(host)")),
        "{text}"
    );
}

/// A seat held for a resume shows as such: resumable while its player
/// plays, away once its connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_held_seats() {
    let c = Relays::redis();
    let url = c.redis_url().expect("redis");
    let pass = format!("inspect-held-{}", support::unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    a.send_json(serde_json::json!({"type": "join", "passphrase": pass, "resume": true}))
        .await;
    assert_eq!(a.recv_json().await["type"], "joined");
    let mut b = Client::connect(&c.url_b(), "B").await;
    b.join(&pass).await;
    let one = json(&url, &["lobby", &pass]);
    assert_eq!(one["seats"][0]["resumable"], true, "{one}");
    assert_eq!(one["seats"][0]["away"], false, "{one}");
    assert_eq!(one["seats"][1]["resumable"], false, "{one}");
    drop(a);
    b.recv_json().await; // ready
    assert_eq!(b.recv_json().await["type"], "playerAway");
    let one = json(&url, &["lobby", &pass]);
    assert_eq!(one["players"], 2, "a held seat still counts: {one}");
    assert_eq!(one["seats"][0]["away"], true, "{one}");
    let text = inspect(&url, &["lobby", &pass]);
    assert!(text.contains("(away: held for a resume)"), "{text}");
}

/// Against a Redis Cluster, `inspect` finds what every shard holds and says
/// which master holds each lobby. The keys are written as the relay lays
/// them out, straight through a cluster client: lobbies until every master
/// has some, node records wherever their names hash to.
#[test]
fn inspect_reads_every_shard_of_a_redis_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let url = cluster.url();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let seeds: Vec<String> = masters
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let mut conn = redis::cluster::ClusterClient::new(seeds)
        .and_then(|client| client.get_connection())
        .expect("cluster connection");
    let mut run_cmd = |cmd: &mut redis::Cmd| {
        cmd.query::<redis::Value>(&mut conn)
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    };

    let (a, b) = ("relay-a/0a0a0a0a", "relay-b/0b0b0b0b");
    // (hash, master port, players): two players (a and b) in every other
    // lobby, one (a) in the rest.
    let mut lobbies: Vec<(String, u16, usize)> = Vec::new();
    for i in 0..200 {
        let covered = masters
            .iter()
            .all(|m| lobbies.iter().any(|(_, on, _)| on == m));
        if covered && lobbies.len() >= 4 {
            break;
        }
        let hex = support::lobby_id(&format!("inspect-cluster-{}-{i}", support::unique()));
        let key = format!("lr:lobby:{{{hex}}}");
        let master = cluster.master_of(&key);
        let players = 1 + i % 2;
        let mut hset = redis::cmd("HSET");
        hset.arg(&key).arg(1).arg(format!("{a}.{i}"));
        if players == 2 {
            hset.arg(2).arg(format!("{b}.{i}"));
        }
        run_cmd(&mut hset);
        run_cmd(
            redis::cmd("SADD")
                .arg(format!("lr:node-lobbies:{a}"))
                .arg(&hex),
        );
        lobbies.push((hex, master, players));
    }
    assert!(
        masters
            .iter()
            .all(|m| lobbies.iter().any(|(_, on, _)| on == m)),
        "lobbies on every master: {lobbies:?}"
    );
    for node in [a, b] {
        run_cmd(redis::cmd("SADD").arg("lr:{nodes}").arg(node));
        run_cmd(
            redis::cmd("SET")
                .arg(format!("lr:{{nodes}}:node:{node}"))
                .arg(r#"{"node_id":"test"}"#)
                .arg("PX")
                .arg(60_000),
        );
    }
    // A node that announced itself and is gone (no heartbeat).
    run_cmd(redis::cmd("SADD").arg("lr:{nodes}").arg("relay-c/0c0c0c0c"));
    // The first lobby's seat 1 is held for a resume.
    let (held, held_on, _) = lobbies[0].clone();
    run_cmd(
        redis::cmd("HSET")
            .arg(format!("lr:resume:{{{held}}}"))
            .arg("seats")
            .arg(&[1u8][..])
            .arg("away")
            .arg(&[1u8][..]),
    );

    let two = lobbies.iter().filter(|l| l.2 == 2).count();
    let nodes = node_rows(&url, 3);
    let row = |key: &str| {
        nodes
            .iter()
            .find(|n| n["node"] == key)
            .unwrap_or_else(|| panic!("no node {key}: {nodes:?}"))
    };
    assert_eq!(row(a)["alive"], true, "{nodes:?}");
    assert_eq!(row(a)["lobbies"], lobbies.len(), "{nodes:?}");
    assert_eq!(row(a)["members"], lobbies.len(), "{nodes:?}");
    assert_eq!(row(b)["lobbies"], two, "{nodes:?}");
    assert_eq!(row(b)["members"], two, "{nodes:?}");
    assert_eq!(row("relay-c/0c0c0c0c")["alive"], false, "{nodes:?}");
    let table = inspect(&url, &["nodes"]);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        !table.contains("SHARD"),
        "inspect nodes is unchanged: {table}"
    );

    let listed = json(&url, &["lobbies"]);
    let listed = listed.as_array().expect("rows");
    assert_eq!(listed.len(), lobbies.len(), "{listed:?}");
    for (hex, master, players) in &lobbies {
        let row = listed
            .iter()
            .find(|l| l["lobby"] == hex.as_str())
            .unwrap_or_else(|| panic!("no lobby {hex}: {listed:?}"));
        assert_eq!(row["players"], *players, "{row}");
        assert_eq!(row["shard"], format!("127.0.0.1:{master}"), "{row}");
    }
    let table = inspect(&url, &["lobbies"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LOBBY",
            "PLAYERS",
            "SEATS",
            "HOST",
            "EPOCH",
            "QUEUE",
            "SPECTATORS",
            "NODES",
            "SHARD"
        ],
        "{table}"
    );
    assert_eq!(table.lines().count(), lobbies.len() + 1, "{table}");

    let one = json(&url, &["lobby", "--hash", &held]);
    assert_eq!(one["key"], format!("lr:lobby:{{{held}}}"), "{one}");
    assert_eq!(one["shard"], format!("127.0.0.1:{held_on}"), "{one}");
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("lr:lobby:{{{held}}}"))
        .query(&mut conn)
        .expect("CLUSTER KEYSLOT");
    assert_eq!(one["slot"], slot, "{one}");
    assert_eq!(one["seats"][0]["away"], true, "{one}");
    assert_eq!(one["seats"][0]["node"], a, "{one}");
    let text = inspect(&url, &["lobby", "--hash", &held]);
    assert!(
        text.contains(&format!("shard:   127.0.0.1:{held_on} (slot {slot})")),
        "{text}"
    );
    assert!(text.contains("(away: held for a resume)"), "{text}");

    // One reachable seed is enough.
    let partial = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        support::free_port(),
        masters[1]
    );
    assert_eq!(
        json(&partial, &["lobbies"]).as_array().map(Vec::len),
        Some(lobbies.len())
    );
}

/// A cluster none of whose seeds answers: a prompt failure that names the
/// seeds tried, without their password.
#[test]
fn inspect_names_the_cluster_seeds_it_could_not_reach() {
    let (p1, p2) = (support::free_port(), support::free_port());
    // A seed that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let p3 = silent.local_addr().expect("addr").port();
    let url = format!("redis+cluster://:hunter2@127.0.0.1:{p1},127.0.0.1:{p2},127.0.0.1:{p3}/");
    let started = Instant::now();
    let output = run(&url, &["lobbies"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        elapsed < Duration::from_secs(6),
        "took {elapsed:?}: {stderr}"
    );
    for port in [p1, p2, p3] {
        assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    }
    assert!(stderr.contains("Redis Cluster"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Quick match and the host, as `inspect` and the admin view show them
// ---------------------------------------------------------------------------

/// The admin token of these tests.
const ADMIN_TOKEN: &str = "inspect-test-admin-token";

/// `GET /admin/api/cluster` of the node at `addr`, with the token: the JSON.
fn admin_view(addr: SocketAddr) -> Value {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "GET /admin/api/cluster HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Queues with `{"type":"join","queue":queue,"resume":true}`; returns the
/// lobby's hash (from the resume token) and `joined`.
async fn queue_up(client: &mut Client, queue: &str) -> (String, Value) {
    client
        .send_json(json!({"type": "join", "queue": queue, "resume": true}))
        .await;
    let joined = client.recv_json().await;
    assert_eq!(joined["type"], "joined", "{}: {joined}", client.name());
    assert_eq!(joined["queue"], queue, "{joined}");
    let token = joined["resumeToken"].as_str().expect("a resume token");
    (token.split('.').next().unwrap().to_owned(), joined)
}

/// Receives until a message of type `kind` (what comes before is checked
/// by the protocol tests, not here).
async fn recv_until(client: &mut Client, kind: &str) -> Value {
    for _ in 0..10 {
        let message = client.recv_json().await;
        if message["type"] == kind {
            return message;
        }
    }
    panic!("{}: no {kind}", client.name());
}

/// The row of `rows` whose `field` is `value`.
fn row_of<'a>(rows: &'a Value, field: &str, value: &str) -> &'a Value {
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r[field] == value))
        .unwrap_or_else(|| panic!("no {field} {value}: {rows}"))
}

/// The admin view's lobby of hash `hex` (by its prefix).
fn admin_lobby<'a>(view: &'a Value, hex: &str) -> &'a Value {
    row_of(&view["lobbies"], "lobby", &hex[..8])
}

/// A and B (nodes a and b) quick-match into lobby L1, C (node a) waits in
/// L2: `inspect queues` shows the queue with two lobbies and L2 open with
/// one player; `inspect lobby` and `inspect lobbies` show L1's host (seat 1,
/// epoch 1) and queue, and so does the admin view. A, the host, leaves: L1
/// shows seat 2 as host with epoch 2, and the queue is unchanged (a full
/// lobby never comes back to it).
async fn quick_match_shows_queues_and_hosts(c: Relays) {
    let url = c.redis_url().expect("redis");
    let cluster = c.flavour() == "redis-cluster";
    let queue = format!("q-{}", support::unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    let mut cc = Client::connect(&c.url_a(), "C").await;
    let (l1, _) = queue_up(&mut a, &queue).await;
    let (l1_b, _) = queue_up(&mut b, &queue).await;
    assert_eq!(l1, l1_b, "A and B are matched");
    recv_until(&mut a, "ready").await;
    recv_until(&mut b, "ready").await;
    let (l2, _) = queue_up(&mut cc, &queue).await;
    assert_ne!(l1, l2);

    // inspect queues
    let queues = json(&url, &["queues"]);
    let row = row_of(&queues, "queue", &queue);
    assert_eq!(row["lobbies"], 2, "{row}");
    assert_eq!(row["open"], l2.as_str(), "{row}");
    assert_eq!(row["open_players"], 1, "{row}");
    assert_eq!(row.get("shard").is_some(), cluster, "{row}");
    let table = inspect(&url, &["queues"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let mut expected = vec!["QUEUE", "LOBBIES", "OPEN", "OPEN_PLAYERS"];
    if cluster {
        expected.push("SHARD");
    }
    assert_eq!(header, expected, "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{queue} ")))
        .unwrap_or_else(|| panic!("no {queue}: {table}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1..4], ["2", l2.as_str(), "1"], "{table}");

    // inspect lobby and inspect lobbies: host, epoch, queue
    let one = json(&url, &["lobby", "--hash", &l1]);
    assert_eq!(one["host"], 1, "{one}");
    assert_eq!(one["epoch"], 1, "{one}");
    assert_eq!(one["queue"], queue.as_str(), "{one}");
    assert_eq!(one["seats"][0]["host"], true, "{one}");
    assert_eq!(one["seats"][1]["host"], false, "{one}");
    let text = inspect(&url, &["lobby", "--hash", &l1]);
    assert!(text.contains("\nhost:    seat 1 (epoch 1)\n"), "{text}");
    assert!(text.contains(&format!("\nqueue:   {queue}\n")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("seat 1: a/") && l.contains(" (host)")),
        "{text}"
    );
    let lobbies = json(&url, &["lobbies"]);
    for (hex, players) in [(&l1, 2), (&l2, 1)] {
        let row = row_of(&lobbies, "lobby", hex);
        assert_eq!(row["players"], players, "{row}");
        assert_eq!(row["host"], 1, "{row}");
        assert_eq!(row["epoch"], 1, "{row}");
        assert_eq!(row["queue"], queue.as_str(), "{row}");
    }
    let table = inspect(&url, &["lobbies"]);
    let line = table.lines().find(|l| l.starts_with(&l1)).expect("L1");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..6],
        ["2", "1,2", "1", "1", queue.as_str()],
        "{table}"
    );

    // The admin view (node b's: it reads the same Redis).
    let view = admin_view(c.addr_b());
    let lobby = admin_lobby(&view, &l1);
    assert_eq!(lobby["host"], 1, "{lobby}");
    assert_eq!(lobby["epoch"], 1, "{lobby}");
    assert_eq!(lobby["queue"], queue.as_str(), "{lobby}");
    let summary = row_of(&view["queues"], "queue", &queue);
    assert_eq!(
        summary,
        &json!({"queue": queue, "lobbies": 2, "open": &l2[..8], "open_players": 1}),
        "{view}"
    );

    // The host leaves: seat 2 is host, epoch 2.
    a.leave().await;
    recv_until(&mut b, "playerLeft").await;
    let one = json(&url, &["lobby", "--hash", &l1]);
    assert_eq!(one["host"], 2, "{one}");
    assert_eq!(one["epoch"], 2, "{one}");
    assert_eq!(one["players"], 1, "{one}");
    assert_eq!(one["seats"][0]["seat"], 2, "{one}");
    assert_eq!(one["seats"][0]["host"], true, "{one}");
    let text = inspect(&url, &["lobby", "--hash", &l1]);
    assert!(text.contains("\nhost:    seat 2 (epoch 2)\n"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("seat 2: b/") && l.contains(" (host)")),
        "{text}"
    );
    let row = row_of(&json(&url, &["lobbies"]), "lobby", &l1).clone();
    assert_eq!(
        (&row["host"], &row["epoch"]),
        (&json!(2), &json!(2)),
        "{row}"
    );
    let queues = json(&url, &["queues"]);
    let row = row_of(&queues, "queue", &queue);
    assert_eq!(row["lobbies"], 2, "{row}");
    assert_eq!(row["open"], l2.as_str(), "{row}");
    let view = admin_view(c.addr_a());
    let lobby = admin_lobby(&view, &l1);
    assert_eq!(
        (&lobby["host"], &lobby["epoch"]),
        (&json!(2), &json!(2)),
        "{lobby}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_queues_and_hosts_redis() {
    quick_match_shows_queues_and_hosts(Relays::redis_with(&["--admin-token", ADMIN_TOKEN])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_queues_and_hosts_redis_cluster() {
    quick_match_shows_queues_and_hosts(Relays::redis_cluster_with(
        3,
        0,
        &["--admin-token", ADMIN_TOKEN],
    ))
    .await;
}

/// Without Redis, the admin view shows what the node knows: each lobby's
/// host and queue, and the node's queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_of_a_memory_node_shows_hosts_and_queues() {
    let c = Relays::memory_with(&["--admin-token", ADMIN_TOKEN]);
    let queue = format!("q-{}", support::unique());
    let pass = format!("admin-host-{}", support::unique());
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_a(), "B").await;
    let mut cc = Client::connect(&c.url_a(), "C").await;
    let mut d = Client::connect(&c.url_a(), "D").await;
    let (l1, _) = queue_up(&mut a, &queue).await;
    queue_up(&mut b, &queue).await;
    recv_until(&mut b, "ready").await;
    let (l2, _) = queue_up(&mut cc, &queue).await;
    d.join(&pass).await;

    let view = admin_view(c.addr_a());
    let lobby = admin_lobby(&view, &l1);
    assert_eq!(lobby["host"], 1, "{lobby}");
    assert_eq!(lobby["epoch"], 1, "{lobby}");
    assert_eq!(lobby["queue"], queue.as_str(), "{lobby}");
    let plain = admin_lobby(&view, &support::lobby_id(&pass));
    assert_eq!(plain["host"], 1, "{plain}");
    assert_eq!(plain["queue"], Value::Null, "{plain}");
    assert_eq!(
        view["queues"],
        json!([{"queue": queue, "lobbies": 2, "open": &l2[..8], "open_players": 1}]),
        "{view}"
    );

    a.leave().await;
    recv_until(&mut b, "playerLeft").await;
    let view = admin_view(c.addr_a());
    let lobby = admin_lobby(&view, &l1);
    assert_eq!(
        (&lobby["host"], &lobby["epoch"]),
        (&json!(2), &json!(2)),
        "{lobby}"
    );
    assert_eq!(lobby["queue"], queue.as_str(), "{lobby}");
}

// ---------------------------------------------------------------------------
// Spectators, as `inspect`, the admin view and /metrics show them
// ---------------------------------------------------------------------------

/// Watches `passphrase` with `{"type":"join","passphrase":P,"spectate":true}`;
/// returns `watching`.
async fn watch(client: &mut Client, passphrase: &str) -> Value {
    client
        .send_json(json!({"type": "join", "passphrase": passphrase, "spectate": true}))
        .await;
    let watching = client.recv_json().await;
    assert_eq!(
        watching["type"],
        "watching",
        "{}: {watching}",
        client.name()
    );
    watching
}

/// Retries `check` (which says what it saw when it fails) for a few
/// seconds: a `leave` has no answer, so what it changes is seen a little
/// later.
async fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match check() {
            Ok(()) => return,
            Err(seen) if Instant::now() > deadline => panic!("{what}: {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The value of the un-labelled metric `name` in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// A (node a) and B (node b) play; S1 watches from node a, S2 from node b:
/// `inspect lobby` counts 2 spectators, one by each node, `inspect
/// lobbies` and the admin view 2, and each node's `/metrics` 1. S2 leaves:
/// 1 (node a's) everywhere. Then A and B leave: the lobby, watched while it
/// has no player, is still listed with 0 players and 1 spectator.
async fn spectators_show_by_node(c: Relays) {
    let url = c.redis_url().expect("redis");
    let pass = format!("inspect-watched-{}", support::unique());
    let hex = support::lobby_id(&pass);
    let (mut a, mut b) = pair(&c, &pass).await;
    let mut s1 = Client::connect(&c.url_a(), "S1").await;
    let mut s2 = Client::connect(&c.url_b(), "S2").await;
    assert_eq!(watch(&mut s1, &pass).await["spectators"], 1);
    assert_eq!(watch(&mut s2, &pass).await["spectators"], 2);

    // inspect lobby: the total and each node's.
    let one = json(&url, &["lobby", "--hash", &hex]);
    assert_eq!(one["spectators"], 2, "{one}");
    let by_node = one["spectators_by_node"].as_object().expect("by node");
    assert_eq!(by_node.len(), 2, "{one}");
    for node in ["a/", "b/"] {
        let (_, count) = by_node
            .iter()
            .find(|(key, _)| key.starts_with(node))
            .unwrap_or_else(|| panic!("no {node}: {one}"));
        assert_eq!(count, 1, "{one}");
    }
    let text = inspect(&url, &["lobby", "--hash", &hex]);
    assert!(text.contains("\nwatched: 2 spectator(s) (a/"), "{text}");
    assert!(text.contains(" 1, b/"), "{text}");

    // inspect lobbies: a column of its own, after the queue.
    let row = row_of(&json(&url, &["lobbies"]), "lobby", &hex).clone();
    assert_eq!(
        (&row["players"], &row["spectators"]),
        (&json!(2), &json!(2))
    );
    let table = inspect(&url, &["lobbies"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[5..8], ["QUEUE", "SPECTATORS", "NODES"], "{table}");
    let line = table.lines().find(|l| l.starts_with(&hex)).expect("L");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1..7], ["2", "1,2", "1", "1", "-", "2"], "{table}");

    // The admin view (either node: it reads Redis) and each node's gauge.
    let lobby = admin_lobby(&admin_view(c.addr_b()), &hex).clone();
    assert_eq!(lobby["spectators"], 2, "{lobby}");
    for addr in [c.addr_a(), c.addr_b()] {
        let text = support::scrape_metrics(addr);
        assert_eq!(metric(&text, "lobby_relay_spectators"), Some(1.0), "{text}");
    }

    // S2 stops watching.
    s2.leave().await;
    eventually("S2's leave counted", || {
        let one = json(&url, &["lobby", "--hash", &hex]);
        let by_node = one["spectators_by_node"].as_object().cloned();
        match by_node
            .map(|n| n.into_iter().collect::<Vec<_>>())
            .as_deref()
        {
            Some([(node, count)]) if node.starts_with("a/") && *count == 1 => (one["spectators"]
                == 1)
                .then_some(())
                .ok_or(one.to_string()),
            _ => Err(one.to_string()),
        }
    })
    .await;
    let row = row_of(&json(&url, &["lobbies"]), "lobby", &hex).clone();
    assert_eq!(row["spectators"], 1, "{row}");
    let lobby = admin_lobby(&admin_view(c.addr_a()), &hex).clone();
    assert_eq!(lobby["spectators"], 1, "{lobby}");
    let text = support::scrape_metrics(c.addr_b());
    assert_eq!(metric(&text, "lobby_relay_spectators"), Some(0.0), "{text}");
    let text = support::scrape_metrics(c.addr_a());
    assert_eq!(metric(&text, "lobby_relay_spectators"), Some(1.0), "{text}");

    // The players leave; S1 keeps watching the empty lobby.
    a.leave().await;
    b.leave().await;
    eventually("the players' leaves", || {
        let row = row_of(&json(&url, &["lobbies"]), "lobby", &hex).clone();
        (row["players"] == 0).then_some(()).ok_or(row.to_string())
    })
    .await;
    let row = row_of(&json(&url, &["lobbies"]), "lobby", &hex).clone();
    assert_eq!(row["spectators"], 1, "{row}");
    let text = inspect(&url, &["lobby", "--hash", &hex]);
    assert!(
        text.contains("no players: only spectators watch it"),
        "{text}"
    );
    let lobby = admin_lobby(&admin_view(c.addr_b()), &hex).clone();
    assert_eq!(
        (&lobby["players"], &lobby["spectators"]),
        (&json!(0), &json!(1))
    );
    drop(s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_spectators_by_node_redis() {
    spectators_show_by_node(Relays::redis_with(&["--admin-token", ADMIN_TOKEN])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_spectators_by_node_redis_cluster() {
    spectators_show_by_node(Relays::redis_cluster_with(
        3,
        0,
        &["--admin-token", ADMIN_TOKEN],
    ))
    .await;
}

/// Without Redis, the admin view counts each lobby's spectators and the
/// node's figures count them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_of_a_memory_node_shows_spectators() {
    let c = Relays::memory_with(&["--admin-token", ADMIN_TOKEN]);
    let pass = format!("admin-watched-{}", support::unique());
    let hex = support::lobby_id(&pass);
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_a(), "B").await;
    a.join(&pass).await;
    b.join(&pass).await;
    let mut s1 = Client::connect(&c.url_a(), "S1").await;
    let mut s2 = Client::connect(&c.url_a(), "S2").await;
    watch(&mut s1, &pass).await;
    assert_eq!(watch(&mut s2, &pass).await["spectators"], 2);

    let view = admin_view(c.addr_a());
    assert_eq!(admin_lobby(&view, &hex)["spectators"], 2, "{view}");
    assert_eq!(view["nodes"][0]["stats"]["spectators"], 2, "{view}");

    s2.leave().await;
    eventually("S2's leave counted", || {
        let view = admin_view(c.addr_a());
        let seen = (
            &admin_lobby(&view, &hex)["spectators"],
            &view["nodes"][0]["stats"]["spectators"],
        );
        (seen == (&json!(1), &json!(1)))
            .then_some(())
            .ok_or(view.to_string())
    })
    .await;
}
