//! Test harness for the integration tests: a private `redis-server` (or Redis
//! Cluster, `redis_cluster.rs`) per test, real `lobby-relay` nodes started from the built binary, and a WebSocket
//! client that speaks the wire protocol of `docs/protocol.md` with a timeout on
//! every read.
//!
//! Nothing here knows how the relay is built inside: the tests see only its
//! command line, its JSON log lines, its WebSocket and its Redis keys.

#![allow(dead_code)] // not every test binary uses every helper

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::net::TcpStream as TokioTcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

pub mod raw;

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

pub mod redis_cluster;
pub use redis_cluster::RedisCluster;

/// A private `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        // Another process may take the port between our probe and Redis's
        // bind; Redis then exits at once and we try another port.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            assert_ne!(port, 6379, "never use the default Redis port");
            let child = match spawn_redis(port) {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "`redis-server` is not on PATH: the integration tests need a real Redis. \
                     Run scripts/test.sh, which installs it, or install redis-server yourself."
                ),
                Err(e) => panic!("cannot spawn redis-server: {e}"),
            };
            let mut server = RedisServer { child, port };
            match server.wait_for_ping() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn wait_for_ping(&mut self) -> Result<(), String> {
        wait_for_ping(&mut self.child, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The redis-server process (to freeze it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Waits until the `redis-server` just spawned answers PING on `port`; an
/// error if it exits first (a port race) or stays silent too long.
fn wait_for_ping(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        if ping(port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server on port {port} did not answer PING within {REDIS_START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a Redis answers PING on this port (a blocking check, RESP inline).
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to a test's Redis, for checking what the relay stored: one
/// Redis, or a Redis Cluster (from a `redis+cluster://` URL).
///
/// With a cluster, [`RedisProbe::query`] is routed to the shard of its key by
/// the redis crate's cluster client, and the questions that are per server
/// (`KEYS`, channels, `MONITOR`) are asked of every current master directly
/// and their answers joined.
#[derive(Clone)]
pub struct RedisProbe {
    backend: ProbeBackend,
}

#[derive(Clone)]
enum ProbeBackend {
    Single {
        /// Boxed: a `Client` is several times the size of the other variant.
        client: Box<redis::Client>,
        conn: redis::aio::MultiplexedConnection,
    },
    Cluster {
        /// Where to ask for the topology (`CLUSTER NODES`).
        seeds: Vec<u16>,
        conn: redis::cluster_async::ClusterConnection,
        /// Direct connections to single nodes, by port.
        direct: Arc<Mutex<BTreeMap<u16, redis::aio::MultiplexedConnection>>>,
    },
}

impl RedisProbe {
    /// Connects to `redis://...` (one Redis) or `redis+cluster://...` (a
    /// cluster, by its seeds).
    pub async fn connect(url: &str) -> RedisProbe {
        let backend = match redis_cluster::seed_ports(url) {
            None => {
                let client = redis::Client::open(url).expect("redis url");
                let conn =
                    tokio::time::timeout(RECV_TIMEOUT, client.get_multiplexed_async_connection())
                        .await
                        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
                        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
                ProbeBackend::Single {
                    client: Box::new(client),
                    conn,
                }
            }
            Some(seeds) => {
                let client = redis::cluster::ClusterClient::new(
                    seeds.iter().map(|p| format!("redis://127.0.0.1:{p}/")),
                )
                .unwrap_or_else(|e| panic!("cluster client for {url}: {e}"));
                let conn = tokio::time::timeout(RECV_TIMEOUT, client.get_async_connection())
                    .await
                    .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
                    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
                ProbeBackend::Cluster {
                    seeds,
                    conn,
                    direct: Arc::default(),
                }
            }
        };
        RedisProbe { backend }
    }

    /// Whether this probes a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, ProbeBackend::Cluster { .. })
    }

    /// Runs one command and returns its reply converted to `T` (in a
    /// cluster, on the shard of the command's key).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let reply = match &self.backend {
            ProbeBackend::Single { conn, .. } => {
                let mut conn = conn.clone();
                tokio::time::timeout(RECV_TIMEOUT, cmd.query_async::<T>(&mut conn)).await
            }
            ProbeBackend::Cluster { conn, .. } => {
                let mut conn = conn.clone();
                tokio::time::timeout(RECV_TIMEOUT, cmd.query_async::<T>(&mut conn)).await
            }
        };
        reply
            .unwrap_or_else(|_| panic!("redis command timed out: {cmd:?}"))
            .unwrap_or_else(|e| panic!("redis command failed: {cmd:?}: {e}"))
    }

    /// `KEYS pattern`, sorted (in a cluster: of every master, joined).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let cmd = redis::cmd("KEYS").arg(pattern).clone();
        let mut keys: Vec<String> = match self.backend {
            ProbeBackend::Single { .. } => self.query(&cmd).await,
            ProbeBackend::Cluster { .. } => {
                self.on_every_master::<Vec<String>>(&cmd).await.concat()
            }
        };
        keys.sort();
        keys.dedup();
        keys
    }

    /// `HGETALL key` as field -> value.
    pub async fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        let flat: Vec<String> = self.query(redis::cmd("HGETALL").arg(key)).await;
        assert!(
            flat.len() % 2 == 0,
            "HGETALL {key} gave an odd list: {flat:?}"
        );
        flat.chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect()
    }

    /// The channels matching `pattern` that somebody subscribes to, sorted:
    /// `PUBSUB CHANNELS pattern` with one Redis; in a cluster, where lobby
    /// channels are sharded, `PUBSUB SHARDCHANNELS pattern` of every master,
    /// joined.
    pub async fn channels(&self, pattern: &str) -> Vec<String> {
        let mut channels: Vec<String> = match self.backend {
            ProbeBackend::Single { .. } => {
                self.query(redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern))
                    .await
            }
            ProbeBackend::Cluster { .. } => {
                let cmd = redis::cmd("PUBSUB")
                    .arg("SHARDCHANNELS")
                    .arg(pattern)
                    .clone();
                self.on_every_master::<Vec<String>>(&cmd).await.concat()
            }
        };
        channels.sort();
        channels.dedup();
        channels
    }

    /// Every key of the database with everything stored under it, one string
    /// per key name, hash field, member or value, for "appears nowhere" checks.
    pub async fn everything(&self) -> Vec<String> {
        let mut out = Vec::new();
        for key in self.keys("*").await {
            let kind: String = self.query(redis::cmd("TYPE").arg(&key)).await;
            let items: Vec<String> = match kind.as_str() {
                "string" => vec![self.query(redis::cmd("GET").arg(&key)).await],
                "hash" => self.query(redis::cmd("HGETALL").arg(&key)).await,
                "set" => self.query(redis::cmd("SMEMBERS").arg(&key)).await,
                "list" => {
                    self.query(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
                        .await
                }
                "zset" => {
                    self.query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
                        .await
                }
                "stream" => {
                    let v: redis::Value = self
                        .query(redis::cmd("XRANGE").arg(&key).arg("-").arg("+"))
                        .await;
                    vec![format!("{v:?}")]
                }
                other => vec![format!("<{other}>")],
            };
            out.push(key);
            out.extend(items);
        }
        out
    }

    /// Polls `check` until it returns `Ok`, failing with its last `Err` after
    /// `timeout`.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, mut check: F)
    where
        F: FnMut(RedisProbe) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match check(self.clone()).await {
                Ok(()) => return,
                Err(why) if tokio::time::Instant::now() >= deadline => {
                    panic!("still not true after {timeout:?}: {why}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Opens a `MONITOR` connection (in a cluster, one to every master):
    /// every command Redis runs from now on is recorded until
    /// [`Monitor::finish`].
    pub async fn monitor(&self) -> Monitor {
        let servers = match &self.backend {
            ProbeBackend::Single { client, .. } => vec![(None, (**client).clone())],
            ProbeBackend::Cluster { .. } => self
                .masters()
                .await
                .into_iter()
                .map(|port| {
                    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                        .expect("redis url");
                    (Some(port), client)
                })
                .collect(),
        };
        let mut streams = Vec::new();
        for (port, client) in servers {
            let monitor = tokio::time::timeout(RECV_TIMEOUT, client.get_async_monitor())
                .await
                .expect("MONITOR timed out")
                .expect("MONITOR");
            let stream: MonitorStream = Box::pin(monitor.into_on_message::<String>());
            streams.push((port, stream));
        }
        Monitor {
            streams,
            probe: self.clone(),
        }
    }

    // -- cluster only ------------------------------------------------------

    /// The ports of the cluster's current masters (those not marked failed),
    /// sorted, as the first seed that answers sees them.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .topology()
            .await
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failed())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// `CLUSTER NODES` of the first seed that answers.
    pub async fn topology(&self) -> Vec<redis_cluster::NodeView> {
        let ProbeBackend::Cluster { seeds, .. } = &self.backend else {
            panic!("the topology of a cluster, asked of a single Redis");
        };
        for &port in seeds {
            if let Some(text) = self
                .try_on_node::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
                .await
            {
                return redis_cluster::parse_cluster_nodes(&text);
            }
        }
        panic!("no seed of the cluster answers: {seeds:?}");
    }

    /// Runs one command on the cluster node on `port` itself (no routing).
    pub async fn query_node<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        self.try_on_node(port, cmd)
            .await
            .unwrap_or_else(|| panic!("node {port} is unreachable for {cmd:?}"))
    }

    /// `KEYS pattern` of one cluster node, sorted.
    pub async fn keys_on(&self, port: u16, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query_node(port, redis::cmd("KEYS").arg(pattern)).await;
        keys.sort();
        keys
    }

    /// `PUBSUB SHARDCHANNELS pattern` of one cluster node, sorted.
    pub async fn shard_channels_on(&self, port: u16, pattern: &str) -> Vec<String> {
        let mut channels: Vec<String> = self
            .query_node(port, redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg(pattern))
            .await;
        channels.sort();
        channels
    }

    /// Runs `cmd` on every current master and returns their replies; a
    /// master that cannot be reached (just killed) is left out.
    async fn on_every_master<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Vec<T> {
        let mut replies = Vec::new();
        for port in self.masters().await {
            if let Some(reply) = self.try_on_node(port, cmd).await {
                replies.push(reply);
            }
        }
        replies
    }

    /// Runs one command on one cluster node directly: `None` if the node
    /// cannot be reached; panics if it answers with an error.
    async fn try_on_node<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> Option<T> {
        let ProbeBackend::Cluster { direct, .. } = &self.backend else {
            panic!("a cluster node's command, asked of a single Redis: {cmd:?}");
        };
        let cached = direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&port)
            .cloned();
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let client =
                    redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("redis url");
                let conn =
                    tokio::time::timeout(RECV_TIMEOUT, client.get_multiplexed_async_connection())
                        .await
                        .ok()?
                        .ok()?;
                direct
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(port, conn.clone());
                conn
            }
        };
        let gone = |e: &redis::RedisError| {
            e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
        };
        match tokio::time::timeout(RECV_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(reply)) => Some(reply),
            Ok(Err(e)) if !gone(&e) => {
                panic!("redis command failed on node {port}: {cmd:?}: {e}")
            }
            Ok(Err(_)) | Err(_) => {
                // Gone (killed, or its connection broke): forget it.
                direct
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&port);
                None
            }
        }
    }
}

type MonitorStream = Pin<Box<dyn Stream<Item = String> + Send>>;

/// A running `MONITOR`: Redis (every master of a cluster) queues every
/// command it runs for us.
pub struct Monitor {
    /// One stream per monitored server, with the port to send its end marker
    /// to (`None`: the single Redis).
    streams: Vec<(Option<u16>, MonitorStream)>,
    probe: RedisProbe,
}

impl Monitor {
    /// Returns every command Redis ran since the monitor started, up to a
    /// marker command sent now (so nothing that came before is missed). In
    /// a cluster: each master's commands up to its own marker, one master
    /// after the other.
    pub async fn finish(self) -> Vec<String> {
        let mut lines = Vec::new();
        for (port, mut stream) in self.streams {
            let marker = format!("monitor-end-{}", unique());
            let echo = redis::cmd("ECHO").arg(&marker).clone();
            let _: String = match port {
                None => self.probe.query(&echo).await,
                Some(port) => self.probe.query_node(port, &echo).await,
            };
            loop {
                let line = tokio::time::timeout(RECV_TIMEOUT, stream.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("MONITOR never showed the end marker; saw {lines:#?}")
                    })
                    .unwrap_or_else(|| panic!("MONITOR stream ended; saw {lines:#?}"));
                if line.contains(&marker) {
                    break;
                }
                lines.push(line);
            }
        }
        lines
    }
}

// ---------------------------------------------------------------------------
// Relay nodes
// ---------------------------------------------------------------------------

/// The log lines of one node, shared with the thread that drains its output.
#[derive(Clone)]
pub struct NodeLogs {
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeLogs {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Prints the lines to the test's output (shown when the test fails).
    pub fn print(&self) {
        let lines = self.lines();
        eprintln!(
            "---- log of node {} ({} lines) ----",
            self.name,
            lines.len()
        );
        for line in lines {
            eprintln!("{line}");
        }
        eprintln!("---- end of log of node {} ----", self.name);
    }
}

/// A running `lobby-relay serve`, killed on drop. If the test is failing at
/// that moment, its log is printed.
pub struct Node {
    child: Child,
    addr: SocketAddr,
    logs: NodeLogs,
}

impl Node {
    /// Starts `lobby-relay serve --listen 127.0.0.1:0 --node-id NODE_ID
    /// --log-format json ARGS...` and waits for its `listening` log line.
    pub fn start(node_id: &str, args: &[&str]) -> Node {
        let bin = env!("CARGO_BIN_EXE_lobby-relay");
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--node-id", node_id])
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The relay's own settings come from the command line only: nothing
        // from the developer's environment may change what a test runs.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LOBBY_RELAY") {
                command.env_remove(key);
            }
        }
        // The behavioural tests send far faster than a game (1,000 messages
        // at once, 50 joins a second from one address): lift the abuse limits
        // unless a test sets them with a flag (a flag wins over these).
        for var in [
            "LOBBY_RELAY_MESSAGE_RATE",
            "LOBBY_RELAY_MESSAGE_BURST",
            "LOBBY_RELAY_JOIN_RATE",
            "LOBBY_RELAY_JOIN_BURST",
            "LOBBY_RELAY_MAX_CONNECTIONS_PER_ADDRESS",
        ] {
            command.env(var, "1000000");
        }
        // `info` shows the `listening` line; TEST_RUST_LOG asks for more.
        let filter = std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        command
            .env("RUST_LOG", &filter)
            .env("LOBBY_RELAY_LOG", &filter);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));

        let logs = NodeLogs {
            name: node_id.to_owned(),
            lines: Arc::new(Mutex::new(Vec::new())),
        };
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        drain(stdout, "", logs.clone(), Some(tx));
        drain(stderr, "stderr: ", logs.clone(), None);

        let mut node = Node {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            logs,
        };
        node.addr = node.wait_for_listening(&rx, args);
        node
    }

    fn wait_for_listening(&mut self, rx: &mpsc::Receiver<String>, args: &[&str]) -> SocketAddr {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        return addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.startup_failed(
                    &format!("no `listening` log line within {NODE_START_TIMEOUT:?}"),
                    args,
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_for_exit(Duration::from_secs(2));
                    self.startup_failed(
                        &format!("it closed stdout before logging `listening` (exit: {status:?})"),
                        args,
                    )
                }
            }
        }
    }

    fn startup_failed(&mut self, why: &str, args: &[&str]) -> ! {
        // Give the stderr thread a moment to collect a panic message.
        std::thread::sleep(Duration::from_millis(50));
        let lines = self.logs.lines();
        panic!(
            "node {} ({args:?}) did not start: {why}.\nExpected a JSON log line on stdout with \
             fields.message == \"listening\" and fields.addr. Lines seen:\n{}",
            self.logs.name,
            lines.join("\n")
        );
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address from the `listening` log line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/`
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn logs(&self) -> NodeLogs {
        self.logs.clone()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (blocking) until `GET /readyz` answers 200, for at most
    /// `timeout`.
    pub fn wait_until_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = http_status_blocking(self.addr, "/readyz");
            if status == Ok(200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {}: GET /readyz still {status:?} after {timeout:?}",
                    self.logs.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The status code of `GET PATH` (plain HTTP/1.1, blocking, 2 s at most).
fn http_status_blocking(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.logs.print();
        }
    }
}

/// The `fields.addr` of a `listening` JSON log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// Reads a child's output to the end on a thread of its own, so that the pipe
/// never fills, keeping every line.
fn drain(
    output: impl Read + Send + 'static,
    prefix: &'static str,
    logs: NodeLogs,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            logs.lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{prefix}{line}"));
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Clusters: the two flavours every behavioural test runs against
// ---------------------------------------------------------------------------

/// The relay deployment a test runs against.
///
/// - [`Cluster::redis`]: one private Redis and two nodes `a` and `b` sharing
///   it; `url_a` and `url_b` lead to different nodes. With
///   `LOBBY_RELAY_TEST_REDIS=cluster` in the environment, a private Redis
///   Cluster of three masters instead ([`Cluster::redis_cluster_with`]), so
///   that the same tests run against both (`scripts/test.sh` does).
/// - [`Cluster::redis_cluster_with`]: two nodes `a` and `b` sharing a private
///   Redis Cluster, whatever the environment says.
/// - [`Cluster::memory`]: one node without Redis; `url_a` and `url_b` are the
///   same node.
pub struct Cluster {
    flavour: &'static str,
    // Field order is drop order: the nodes go before their Redis.
    a: Node,
    b: Option<Node>,
    redis: Option<RedisServer>,
    redis_cluster: Option<RedisCluster>,
}

/// The environment variable that turns the Redis flavour into a Redis
/// Cluster: `cluster`; unset, empty or `single` for one Redis.
pub const TEST_REDIS_ENV: &str = "LOBBY_RELAY_TEST_REDIS";

/// Whether `LOBBY_RELAY_TEST_REDIS=cluster` asks for a Redis Cluster.
pub fn cluster_requested() -> bool {
    match std::env::var(TEST_REDIS_ENV) {
        Ok(value) if value == "cluster" => true,
        Ok(value) if value.is_empty() || value == "single" => false,
        Ok(other) => panic!("{TEST_REDIS_ENV}={other:?}: expected `cluster` or `single`"),
        Err(_) => false,
    }
}

impl Cluster {
    pub fn redis() -> Cluster {
        Cluster::redis_with(&[])
    }

    /// Two nodes on one Redis, both given `args` (e.g. `--lobby-capacity 3`);
    /// on a Redis Cluster of three masters with `LOBBY_RELAY_TEST_REDIS=cluster`.
    pub fn redis_with(args: &[&str]) -> Cluster {
        if cluster_requested() {
            return Cluster::redis_cluster_with(3, 0, args);
        }
        let redis = RedisServer::start();
        let url = redis.url();
        let mut node_args = vec!["--redis-url", &url];
        node_args.extend_from_slice(args);
        let a = Node::start("a", &node_args);
        let b = Node::start("b", &node_args);
        Cluster {
            flavour: "redis",
            a,
            b: Some(b),
            redis: Some(redis),
            redis_cluster: None,
        }
    }

    /// Two nodes on a private Redis Cluster of `masters` masters with
    /// `replicas` replicas each, both given the cluster's seed URL and `args`.
    pub fn redis_cluster_with(masters: usize, replicas: usize, args: &[&str]) -> Cluster {
        let redis_cluster = RedisCluster::start(masters, replicas);
        let url = redis_cluster.url();
        let mut node_args = vec!["--redis-url", &url];
        node_args.extend_from_slice(args);
        let a = Node::start("a", &node_args);
        let b = Node::start("b", &node_args);
        // A node listens before its cluster connection is up, and answers
        // joins `unavailable` until then: wait as a load balancer would.
        for node in [&a, &b] {
            node.wait_until_ready(NODE_START_TIMEOUT);
        }
        Cluster {
            flavour: "redis-cluster",
            a,
            b: Some(b),
            redis: None,
            redis_cluster: Some(redis_cluster),
        }
    }

    pub fn memory() -> Cluster {
        Cluster::memory_with(&[])
    }

    /// One node without Redis, given `args`.
    pub fn memory_with(args: &[&str]) -> Cluster {
        Cluster {
            flavour: "memory",
            a: Node::start("a", args),
            b: None,
            redis: None,
            redis_cluster: None,
        }
    }

    /// One node whose `--redis-url` points at a port where nothing listens.
    pub fn unreachable_redis() -> Cluster {
        let url = format!("redis://127.0.0.1:{}", free_port());
        Cluster {
            flavour: "unreachable-redis",
            a: Node::start("a", &["--redis-url", &url]),
            b: None,
            redis: None,
            redis_cluster: None,
        }
    }

    /// `"redis"`, `"redis-cluster"`, `"memory"` or `"unreachable-redis"`.
    pub fn flavour(&self) -> &'static str {
        self.flavour
    }

    /// Whether the nodes share a Redis (one server or a cluster).
    pub fn is_redis(&self) -> bool {
        self.redis.is_some() || self.redis_cluster.is_some()
    }

    /// The WebSocket URL of node `a`.
    pub fn url_a(&self) -> String {
        self.a.url()
    }

    /// The WebSocket URL of node `b` (node `a` in the memory flavour).
    pub fn url_b(&self) -> String {
        self.b.as_ref().unwrap_or(&self.a).url()
    }

    /// The URL of node `a` (i even) or `b` (i odd), to spread clients.
    pub fn url(&self, i: usize) -> String {
        if i % 2 == 0 {
            self.url_a()
        } else {
            self.url_b()
        }
    }

    /// The address of node `a`, for raw HTTP checks.
    pub fn addr_a(&self) -> SocketAddr {
        self.a.addr()
    }

    /// The address of node `b` (node `a` in the memory flavour).
    pub fn addr_b(&self) -> SocketAddr {
        self.b.as_ref().unwrap_or(&self.a).addr()
    }

    pub fn node_a(&mut self) -> &mut Node {
        &mut self.a
    }

    /// The Redis server, in the Redis flavour (`None` with a Redis Cluster:
    /// see [`Cluster::redis_cluster`] and [`Cluster::redis_url`]).
    pub fn redis_server(&self) -> Option<&RedisServer> {
        self.redis.as_ref()
    }

    /// The Redis Cluster, in the Redis Cluster flavour.
    pub fn redis_cluster(&self) -> Option<&RedisCluster> {
        self.redis_cluster.as_ref()
    }

    /// The nodes' `--redis-url`, with one Redis or a cluster.
    pub fn redis_url(&self) -> Option<String> {
        match (&self.redis, &self.redis_cluster) {
            (Some(server), _) => Some(server.url()),
            (None, Some(cluster)) => Some(cluster.url()),
            (None, None) => None,
        }
    }

    /// A connection for checking the stored state, in the Redis flavours
    /// (routed through the cluster with a Redis Cluster).
    /// (Named `redis_probe` because `Cluster::redis` is the constructor.)
    pub async fn redis_probe(&self) -> Option<RedisProbe> {
        match self.redis_url() {
            Some(url) => Some(RedisProbe::connect(&url).await),
            None => None,
        }
    }

    /// Handles on every node's log, to print after the cluster is gone.
    pub fn logs(&self) -> Vec<NodeLogs> {
        std::iter::once(&self.a)
            .chain(self.b.as_ref())
            .map(Node::logs)
            .collect()
    }
}

/// Runs one test against a cluster with the whole-test time limit; prints the
/// nodes' logs if it times out (a panic inside prints them on drop).
pub async fn run<F, Fut>(cluster: Cluster, test: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = ()>,
{
    let flavour = cluster.flavour();
    let logs = cluster.logs();
    if tokio::time::timeout(TEST_TIMEOUT, test(cluster))
        .await
        .is_err()
    {
        for log in &logs {
            log.print();
        }
        panic!("test ({flavour} flavour) did not finish within {TEST_TIMEOUT:?}");
    }
}

/// Awaits a spawned task, re-raising its panic in the test itself.
pub async fn finish<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// WebSocket clients
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TokioTcpStream>>;

/// Opens a WebSocket, returning the handshake error instead of panicking.
pub async fn try_connect(url: &str) -> Result<Ws, tungstenite::Error> {
    match tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(result) => result.map(|(ws, _response)| ws),
        Err(_) => panic!("connecting to {url} timed out after {RECV_TIMEOUT:?}"),
    }
}

/// One WebSocket client. Its `name` appears in every failure message.
pub struct Client {
    pub tx: Sender,
    pub rx: Receiver,
}

/// The sending half of a [`Client`].
pub struct Sender {
    name: String,
    sink: SplitSink<Ws, Message>,
}

/// The receiving half of a [`Client`].
pub struct Receiver {
    name: String,
    stream: SplitStream<Ws>,
}

impl Client {
    /// Connects to `url`; panics if the handshake fails.
    pub async fn connect(url: &str, name: &str) -> Client {
        let ws = try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: connecting to {url} failed: {e}"));
        Client::from_ws(ws, name)
    }

    fn from_ws(ws: Ws, name: &str) -> Client {
        let (sink, stream) = ws.split();
        Client {
            tx: Sender {
                name: name.to_owned(),
                sink,
            },
            rx: Receiver {
                name: name.to_owned(),
                stream,
            },
        }
    }

    /// Connects with a prepared handshake request (extra headers, a query
    /// string); returns the handshake error instead of panicking.
    pub async fn connect_request(
        request: tungstenite::handshake::client::Request,
        name: &str,
    ) -> Result<Client, tungstenite::Error> {
        let ws = match tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
        {
            Ok(result) => result?.0,
            Err(_) => panic!("{name}: connecting timed out after {RECV_TIMEOUT:?}"),
        };
        Ok(Client::from_ws(ws, name))
    }

    pub fn name(&self) -> &str {
        &self.tx.name
    }

    /// Splits the client so that it can send and receive at the same time.
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    pub async fn send_json(&mut self, value: Value) {
        self.tx.send_json(value).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.tx.send_text(text).await
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.tx.send_binary(bytes).await
    }

    /// The next data or Close message (Ping/Pong skipped), within 5 s.
    pub async fn recv(&mut self) -> Message {
        self.rx.recv().await
    }

    /// The next message, which must arrive within `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Message {
        self.rx.recv_within(timeout).await
    }

    /// The next message, which must be JSON in a text frame arriving within
    /// `timeout`.
    pub async fn recv_json_within(&mut self, timeout: Duration) -> Value {
        let name = self.name().to_owned();
        match self.recv_within(timeout).await {
            Message::Text(text) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("{name}: text frame is not JSON ({e}): {text:?}")),
            other => panic!("{name}: expected a JSON text frame, got {other:?}"),
        }
    }

    /// The next message, which must be a text frame.
    pub async fn recv_text(&mut self) -> String {
        self.rx.recv_text().await
    }

    /// The next message, which must be a text frame holding JSON.
    pub async fn recv_json(&mut self) -> Value {
        self.rx.recv_json().await
    }

    /// The next message, which must be a binary frame.
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        self.rx.recv_binary().await
    }

    /// Asserts that nothing (but Ping/Pong) arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        self.rx.expect_silence(duration).await
    }

    /// Reads until a Close frame (data messages before it are skipped) and
    /// asserts its code.
    pub async fn expect_close(&mut self, code: u16) {
        self.rx.expect_close(code).await
    }

    /// Asserts that the next message is exactly this JSON value.
    pub async fn expect_json(&mut self, expected: Value) {
        let got = self.recv_json().await;
        assert_eq!(got, expected, "{}: unexpected message", self.name());
    }

    /// Asserts that the next message is a text frame with exactly this text.
    pub async fn expect_text(&mut self, expected: &str) {
        let got = self.recv_text().await;
        assert_eq!(got, expected, "{}: unexpected text frame", self.name());
    }

    /// Asserts that the next message is
    /// `{"type":"error","code":CODE,"message":<non-empty string>}`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let got = self.recv_json().await;
        assert_error(self.name(), &got, code);
        got
    }

    /// Sends a `ping` with a fresh `t` and asserts that the next message is
    /// the matching `pong`: the connection is open and has nothing pending.
    pub async fn assert_open(&mut self) {
        let t = unique();
        self.send_json(json!({"type": "ping", "t": t})).await;
        let got = self.recv_json().await;
        assert_eq!(
            got,
            json!({"type": "pong", "t": t}),
            "{}: expected the pong of a liveness ping",
            self.name()
        );
    }

    /// Sends `{"type":"join","passphrase":P}` without waiting for the answer.
    pub async fn send_join(&mut self, passphrase: &str) {
        self.send_json(json!({"type": "join", "passphrase": passphrase}))
            .await
    }

    /// Joins and returns the `joined` reply (panics on anything else).
    pub async fn join(&mut self, passphrase: &str) -> Value {
        self.send_join(passphrase).await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply["type"],
            "joined",
            "{}: joining {passphrase:?} failed: {reply}",
            self.name()
        );
        reply
    }

    pub async fn leave(&mut self) {
        self.send_json(json!({"type": "leave"})).await
    }

    /// Closes with a Close frame (1000) and waits for the server's Close.
    pub async fn close(mut self) {
        let name = self.name().to_owned();
        self.tx
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            })))
            .await
            .unwrap_or_else(|e| panic!("{name}: sending Close failed: {e}"));
        // The close handshake completes when the server answers.
        let _ = tokio::time::timeout(RECV_TIMEOUT, async {
            while let Some(Ok(message)) = self.rx.stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Asserts `{"type":"error","code":CODE,"message":<non-empty string>}` exactly.
pub fn assert_error(name: &str, got: &Value, code: &str) {
    let object = got
        .as_object()
        .unwrap_or_else(|| panic!("{name}: expected error {code:?}, got {got}"));
    assert_eq!(
        got["type"], "error",
        "{name}: expected error {code:?}, got {got}"
    );
    assert_eq!(
        got["code"], code,
        "{name}: expected error {code:?}, got {got}"
    );
    let message = got["message"].as_str().unwrap_or("");
    assert!(
        !message.is_empty(),
        "{name}: error {code:?} needs a non-empty string `message`: {got}"
    );
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "type"],
        "{name}: an error has exactly type, code and message: {got}"
    );
}

impl Sender {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&mut self, message: Message) {
        let name = &self.name;
        tokio::time::timeout(RECV_TIMEOUT, self.sink.send(message))
            .await
            .unwrap_or_else(|_| panic!("{name}: send timed out after {RECV_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{name}: send failed: {e}"));
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::text(value.to_string())).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await
    }

    /// Sends a text frame, returning the error instead of panicking (for a
    /// client that expects to be cut off while it sends).
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        match tokio::time::timeout(RECV_TIMEOUT, self.sink.send(Message::text(text))).await {
            Ok(result) => result,
            Err(_) => Err(tungstenite::Error::ConnectionClosed),
        }
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await
    }
}

impl Receiver {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn recv(&mut self) -> Message {
        self.recv_within(RECV_TIMEOUT).await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Message {
        let Receiver { name, stream } = self;
        let next = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(message)) => return message,
                    Some(Err(e)) => panic!("{name}: reading failed: {e}"),
                    None => panic!("{name}: the connection ended without a Close frame"),
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .unwrap_or_else(|_| panic!("{name}: nothing arrived within {timeout:?}"))
    }

    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("{}: expected a text frame, got {other:?}", self.name),
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: text frame is not JSON ({e}): {text:?}", self.name))
    }

    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Message::Binary(bytes) => bytes.to_vec(),
            other => panic!("{}: expected a binary frame, got {other:?}", self.name),
        }
    }

    pub async fn expect_silence(&mut self, duration: Duration) {
        let Receiver { name, stream } = self;
        let next = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        };
        if let Ok(got) = tokio::time::timeout(duration, next).await {
            panic!("{name}: expected silence for {duration:?}, got {got:?}");
        }
    }

    pub async fn expect_close(&mut self, code: u16) {
        let Receiver { name, stream } = self;
        let mut skipped = Vec::new();
        let close = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(other)) => skipped.push(other),
                    Some(Err(e)) => {
                        panic!(
                            "{name}: reading failed before a Close frame: {e}; skipped {skipped:?}"
                        )
                    }
                    None => {
                        panic!(
                            "{name}: the connection ended without a Close frame; skipped {skipped:?}"
                        )
                    }
                }
            }
        };
        let frame = tokio::time::timeout(RECV_TIMEOUT, close)
            .await
            .unwrap_or_else(|_| panic!("{name}: no Close frame within {RECV_TIMEOUT:?}"));
        let got = frame.as_ref().map(|f| u16::from(f.code));
        assert_eq!(got, Some(code), "{name}: wrong close code; frame {frame:?}");
        self.expect_end().await;
    }

    /// After the relay's Close frame, does what a WebSocket client does:
    /// answers it (tungstenite sends the answer on the next read) and reads
    /// on until the relay ends the connection, which it must do at once and
    /// in good order (not with a reset).
    pub async fn expect_end(&mut self) {
        let Receiver { name, stream } = self;
        let end = tokio::time::timeout(RECV_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("{name}: the relay kept the connection open after its close")
            });
        if let Some(after) = end {
            panic!("{name}: after the Close frame, {after:?} instead of the end");
        }
    }
}

// ---------------------------------------------------------------------------
// Protocol steps shared by many tests
// ---------------------------------------------------------------------------

/// Two players in a fresh capacity-2 lobby, A (seat 1) through node `a` and B
/// (seat 2) through node `b`, both past `ready`.
pub async fn pair(cluster: &Cluster, passphrase: &str) -> (Client, Client) {
    pair_named(cluster, passphrase, "A", "B").await
}

/// [`pair`] with the clients' names for failure messages.
pub async fn pair_named(
    cluster: &Cluster,
    passphrase: &str,
    name_a: &str,
    name_b: &str,
) -> (Client, Client) {
    let mut a = Client::connect(&cluster.url_a(), name_a).await;
    let mut b = Client::connect(&cluster.url_b(), name_b).await;
    a.send_join(passphrase).await;
    a.expect_json(json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1}))
        .await;
    b.send_join(passphrase).await;
    b.expect_json(json!({"type": "joined", "players": 2, "capacity": 2, "seat": 2}))
        .await;
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
    (a, b)
}

/// A fresh game message, different on every call.
pub fn game_message(kind: &str) -> String {
    format!(r#"{{"type":"{kind}","n":{}}}"#, unique())
}

/// Proves that neither member has anything pending: a fresh message from
/// `a` is the next thing `b` receives, and `b`'s fresh answer is the next
/// thing `a` receives. Because one sender's messages keep their order, a
/// message that was wrongly relayed or echoed earlier would arrive first.
pub async fn assert_quiet_pair(a: &mut Client, b: &mut Client) {
    let there = game_message("probe");
    a.send_text(&there).await;
    b.expect_text(&there).await;
    let back = game_message("probeReply");
    b.send_text(&back).await;
    a.expect_text(&back).await;
}

// ---------------------------------------------------------------------------
// Fault injection: killing and signalling processes, restarting Redis,
// cutting connections, probing health endpoints (used by tests/faults.rs)
// ---------------------------------------------------------------------------

impl Node {
    /// The operating system's process id of the node.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the node with SIGKILL (no drain, no goodbye) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// Sends SIGHUP (as `kill -HUP PID` does) and returns at once.
    pub fn signal_hup(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -HUP {pid}`: {e}"));
        assert!(status.success(), "`kill -HUP {pid}` failed: {status}");
    }

    /// Sends SIGTERM (as `kill -TERM PID` does) and returns at once.
    pub fn signal_term(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -TERM {pid}`: {e}"));
        assert!(status.success(), "`kill -TERM {pid}` failed: {status}");
    }

    /// Waits (without blocking the runtime) until the node exits, for at
    /// most `timeout`; `None` if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The node's resident memory (`VmRSS` of /proc/PID/status) in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
            .unwrap_or_else(|| panic!("no VmRSS for node {} (pid {})", self.logs.name, self.pid()))
    }
}

/// `VmRSS` of /proc/PID/status in KiB, if the process exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl RedisServer {
    /// Kills `redis-server` with SIGKILL: everything it held is lost (it
    /// runs without persistence), every connection to it drops.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills `redis-server` (if it still runs) and starts a fresh, empty one
    /// on the same port; waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        // Binding the port again may fail for a moment; retry briefly.
        let mut last_error = String::new();
        for _ in 0..20 {
            self.child =
                spawn_redis(self.port).unwrap_or_else(|e| panic!("cannot spawn redis-server: {e}"));
            match self.wait_for_ping() {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server did not start again on port {}: {last_error}",
            self.port
        );
    }
}

/// Starts a private `redis-server` on `port`: loopback only, nothing saved.
fn spawn_redis(port: u16) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// A TCP forwarder between a node and its Redis, to cut the node off.
///
/// Listens on a free loopback port and forwards every connection to
/// `target`. Two kinds of partition:
/// - [`TcpProxy::cut`] closes every forwarded connection at once and makes
///   new ones close right after they are accepted (the node notices at
///   once);
/// - [`TcpProxy::blackhole`] stops forwarding bytes, both ways, on every
///   connection, old and new, while keeping them open (the node notices
///   only by its own timeouts; what was sent meanwhile waits and flows when
///   the partition heals, as TCP would retransmit it).
///
/// [`TcpProxy::restore`] ends either. Must be created inside a Tokio
/// runtime; stops on drop.
pub struct TcpProxy {
    port: u16,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    /// `false` while blackholed: no byte moves.
    flowing: tokio::sync::watch::Sender<bool>,
    /// The tasks of the forwarded connections; aborting one closes both of
    /// its sockets.
    links: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Connections accepted so far (forwarded or refused).
    accepted: AtomicU64,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(ProxyState {
            cut: std::sync::atomic::AtomicBool::new(false),
            flowing: tokio::sync::watch::Sender::new(true),
            links: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if shared.cut.load(Ordering::SeqCst) {
                    drop(inbound); // closed right after accept
                    continue;
                }
                let flowing = shared.flowing.subscribe();
                let link = tokio::spawn(async move {
                    let Ok(outbound) = TokioTcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, flowing.clone()),
                        pump(out_read, in_write, flowing),
                    );
                });
                let mut links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
                // A cut that came between the check above and now must not
                // miss this link.
                if shared.cut.load(Ordering::SeqCst) {
                    link.abort();
                }
            }
        });
        TcpProxy {
            port,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`, for a node's `--redis-url`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Closes every forwarded connection now; new ones are closed as soon as
    /// they are accepted.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        let links =
            std::mem::take(&mut *self.state.links.lock().unwrap_or_else(|e| e.into_inner()));
        for link in links {
            link.abort();
        }
    }

    /// Stops every byte, both ways, on every connection (old and new),
    /// keeping the connections open.
    pub fn blackhole(&self) {
        self.state.flowing.send_replace(false);
    }

    /// Ends a cut or a blackhole: new connections are forwarded, and held
    /// bytes flow again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.flowing.send_replace(true);
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }
}

/// Waits until the proxy's flow state is `want`; false if the proxy is gone.
async fn flowing_is(flowing: &mut tokio::sync::watch::Receiver<bool>, want: bool) -> bool {
    flowing.wait_for(|on| *on == want).await.is_ok()
}

/// Copies bytes from `from` to `to` while `flowing` is true; holds them (and
/// stops reading) while it is false.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !flowing_is(&mut flowing, true).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = flowing_is(&mut flowing, false) => continue,
        };
        // Bytes read just as the blackhole began wait for its end.
        if !flowing_is(&mut flowing, true).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The status code of `GET PATH` on a node's port (plain HTTP/1.1), or the
/// reason there was none (refused, closed, timed out, unparsable).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TokioTcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "closed before a status line: {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let line = text.lines().next().unwrap_or_default().to_owned();
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 2s".to_owned()),
    }
}

/// Polls `GET PATH` until it answers `status`; returns how long that took,
/// or panics with the last answer after `timeout`.
pub async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let got = http_status(addr, path).await;
        if got == Ok(status) {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!("GET {path} on {addr}: still {got:?} after {timeout:?}, expected {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Receiver {
    /// The next data or Close message (Ping/Pong skipped) if one arrives
    /// within `timeout`: `Ok(None)` if none did, `Err` if the connection
    /// failed or ended without a Close frame. Cancel-safe (for `select!`).
    pub async fn try_recv_within(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        let stream = &mut self.stream;
        let next = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(message)) => return Ok(message),
                    Some(Err(e)) => return Err(format!("reading failed: {e}")),
                    None => return Err("the connection ended without a Close frame".to_owned()),
                }
            }
        };
        match tokio::time::timeout(timeout, next).await {
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

impl Client {
    /// See [`Receiver::try_recv_within`].
    pub async fn try_recv_within(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        self.rx.try_recv_within(timeout).await
    }
}
