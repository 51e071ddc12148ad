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
