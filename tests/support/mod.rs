//! Test harness for the integration tests: a private `redis-server` (or Redis
//! Cluster, `redis_cluster.rs`) per test, real `lobby-relay` nodes started
//! from the built binary, and a WebSocket client that speaks the wire
//! protocol of `docs/protocol.md` with a timeout on every read.
//!
//! Nothing here knows how the relay is built inside: the tests see only its
//! command line, its JSON log lines, its WebSocket and its Redis keys.
//!
//! One file per kind of thing a test starts:
//! - `redis.rs`: a private `redis-server` ([`RedisServer`]), a probe of what
//!   the relay stored ([`RedisProbe`], [`Monitor`]);
//! - `redis_cluster.rs`: a private Redis Cluster ([`RedisCluster`]);
//! - `nodes.rs`: relay nodes ([`Node`], [`NodeLogs`]) and [`Relays`], the
//!   nodes over one store a behavioural test runs against;
//! - `clients.rs`: WebSocket clients ([`Client`], [`Sender`], [`Receiver`]),
//!   [`pair`] and the shared assertions;
//! - `network.rs`: network faults ([`TcpProxy`]);
//! - `http.rs`: plain HTTP requests ([`http_status`], [`wait_for_status`]);
//! - `raw.rs`: hand-built WebSocket frames.

#![allow(dead_code)] // not every test binary uses every helper

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::Digest;

/// How long any single read from a relay may take before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// The upper bound of a whole test, a backstop behind the per-read timeouts.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to log `listening`.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `redis-server` may take to answer PING.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the relay may take to clean Redis up after a lobby empties.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);

/// A number that is new on every call, for tokens that must not repeat.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The lobby id of a passphrase: lowercase hex SHA-256 of the normalised
/// passphrase (trimmed, ASCII lower-cased).
/// An HS256 player token for `sub`, valid for ten minutes, signed with
/// `secret` (a relay with `--auth-hs256-secret SECRET`).
#[allow(dead_code)]
pub fn hs256_token(secret: &str, sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
    )
    .expect("token")
}

pub fn lobby_id(passphrase: &str) -> String {
    let normalised = passphrase.trim().to_ascii_lowercase();
    format!("{:x}", sha2::Sha256::digest(normalised.as_bytes()))
}

/// The Redis hash holding a lobby's seats: `lr:lobby:{<hex>}`.
pub fn lobby_key(passphrase: &str) -> String {
    format!("lr:lobby:{{{}}}", lobby_id(passphrase))
}

/// The Redis pub/sub channel of a lobby: `lr:chan:{<hex>}`.
pub fn lobby_channel(passphrase: &str) -> String {
    format!("lr:chan:{{{}}}", lobby_id(passphrase))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

// The test modules use these through `#[macro_use] mod support;` in
// tests/integration.rs (declared before them).

/// Generates `#[tokio::test]` wrappers running `$test(relays)` against both
/// flavours, every node started with the extra arguments.
macro_rules! both_flavours {
    ($test:ident => $redis:ident, $memory:ident $(, args: [$($arg:expr),* $(,)?])?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $crate::support::run($crate::support::Relays::redis_with(&[$($($arg),*)?]), $test).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $memory() {
            $crate::support::run($crate::support::Relays::memory_with(&[$($($arg),*)?]), $test).await;
        }
    };
}

/// Generates a `#[tokio::test]` wrapper running `$test(relays)` against two
/// nodes sharing a private Redis.
macro_rules! redis_only {
    ($test:ident => $redis:ident $(, args: [$($arg:expr),* $(,)?])?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $crate::support::run($crate::support::Relays::redis_with(&[$($($arg),*)?]), $test).await;
        }
    };
}

pub mod clients;
pub mod http;
pub mod network;
pub mod nodes;
pub mod raw;
pub mod redis;
pub mod redis_cluster;

// What the tests import, wherever it lives (not all of it is used).
#[allow(unused_imports)]
pub use self::redis::{Monitor, RedisProbe, RedisServer};
#[allow(unused_imports)]
pub use clients::{
    Client, Receiver, Sender, assert_error, assert_quiet_pair, game_message, join_second, pair,
    pair_named, try_connect,
};
#[allow(unused_imports)]
pub use http::{http_status, scrape_metrics, wait_for_status};
#[allow(unused_imports)]
pub use network::TcpProxy;
#[allow(unused_imports)]
pub use nodes::{
    Node, NodeLogs, Relays, TEST_REDIS_ENV, finish, redis_cluster_requested, rss_kib, run,
};
#[allow(unused_imports)]
pub use redis_cluster::RedisCluster;
