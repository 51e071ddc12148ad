//! `lobby-relay inspect`: what it prints matches what the players did.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Client, Cluster, pair};

fn inspect(redis_url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_lobby-relay"))
        .arg("inspect")
        .args(args)
        .args(["--redis-url", redis_url])
        .env_remove("LOBBY_RELAY_LOBBY_SECRET")
        .output()
        .expect("inspect runs");
    assert!(output.status.success(), "inspect {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

fn json(redis_url: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&inspect(redis_url, &args)).expect("JSON")
}

/// Lobby L1 has A (node a) and B (node b), lobby L2 has C (node a) alone:
/// `inspect nodes`, `inspect lobbies` and `inspect lobby` say exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_matches_the_players() {
    let c = Cluster::redis();
    let url = c.redis_url().expect("redis");
    let l1 = format!("inspect-one-{}", support::unique());
    let l2 = format!("inspect-two-{}", support::unique());
    let (_a, _b) = pair(&c, &l1).await;
    let mut solo = Client::connect(&c.url_a(), "C").await;
    solo.join(&l2).await;

    let nodes = json(&url, &["nodes"]);
    let nodes = nodes.as_array().expect("rows");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
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
    assert_eq!(json(&url, &["lobby", &l1]), one, "by passphrase or by hash");

    let table = inspect(&url, &["nodes"]);
    assert!(table.starts_with("NODE"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    let table = inspect(&url, &["lobbies"]);
    assert!(table.contains(&support::lobby_id(&l2)), "{table}");
}

/// A seat held for a resume shows as such: resumable while its player
/// plays, away once its connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_held_seats() {
    let c = Cluster::redis();
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
