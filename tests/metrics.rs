//! `GET /metrics`: Prometheus counters that match what clients did, with no
//! passphrase in any label.

use crate::support;

use support::{Relays, pair};

/// The value of one sample line (`name{labels} value`), 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn counts_match_what_clients_did(c: Relays) {
    let passphrase = format!("metric-walrus-{}", support::unique());
    let (mut a, mut b) = pair(&c, &passphrase).await;
    for i in 0..5 {
        a.send_text(&format!(r#"{{"type":"m","i":{i}}}"#)).await;
        b.recv_text().await;
    }
    for _ in 0..2 {
        a.send_binary(vec![1, 2, 3]).await;
        b.recv_binary().await;
    }
    for i in 0..3 {
        b.send_text(&format!(r#"{{"type":"m","i":{i}}}"#)).await;
        a.recv_text().await;
    }
    a.send_text("not json").await;
    a.expect_error("invalid_json").await;

    let nodes = if c.is_redis() {
        vec![c.addr_a(), c.addr_b()]
    } else {
        vec![c.addr_a()]
    };
    let scrapes: Vec<String> = nodes
        .iter()
        .map(|addr| support::scrape_metrics(*addr))
        .collect();
    let total = |series: &str| scrapes.iter().map(|m| sample(m, series)).sum::<f64>();
    assert_eq!(total(r#"lobby_relay_joins_total{result="joined"}"#), 2.0);
    assert_eq!(total(r#"lobby_relay_messages_out_total{kind="text"}"#), 8.0);
    assert_eq!(
        total(r#"lobby_relay_messages_out_total{kind="binary"}"#),
        2.0
    );
    assert_eq!(
        total(r#"lobby_relay_messages_in_total{kind="binary"}"#),
        2.0
    );
    assert_eq!(
        total(r#"lobby_relay_errors_total{code="invalid_json"}"#),
        1.0
    );
    assert_eq!(total("lobby_relay_connections"), 2.0);
    assert_eq!(total("lobby_relay_members"), 2.0);
    for (addr, metrics) in nodes.iter().zip(&scrapes) {
        assert!(
            metrics.contains("lobby_relay_node_info{"),
            "{addr}: node info missing"
        );
        assert!(
            !metrics.contains(&passphrase),
            "{addr}: a passphrase in the metrics"
        );
        assert!(
            !metrics.contains(&support::lobby_id(&passphrase)[..8]),
            "{addr}: a lobby id in the metrics"
        );
    }
    if c.is_redis() {
        assert!(total(r#"lobby_relay_redis_command_seconds_count{op="join"}"#) >= 2.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_clients_did_redis() {
    support::run(Relays::redis(), counts_match_what_clients_did).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_what_clients_did_memory() {
    support::run(Relays::memory(), counts_match_what_clients_did).await;
}

/// Text logs written to a pipe (a file, `docker logs`) carry no ANSI colour
/// escapes: the node's first lines, read through a pipe, are plain text.
/// (Whether a terminal gets colour, and NO_COLOR, is a unit test of
/// src/main.rs.)
#[test]
fn text_logs_to_a_pipe_have_no_colour_escapes() {
    use std::io::BufRead;
    let mut child = support::nodes::serve_command()
        .args(["--log-format", "text"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn lobby-relay");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let listening = line.contains("listening");
            if tx.send(line).is_err() || listening {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("listening")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("no `listening` line ({e}); got {lines:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().all(|line| !line.contains('\u{1b}')),
        "ANSI escapes in piped logs: {lines:?}"
    );
    assert!(lines.iter().any(|line| line.contains("INFO")), "{lines:?}");
}
