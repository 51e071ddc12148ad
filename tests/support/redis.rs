//! A private `redis-server` per test, and probes of what the relay stored in it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};

use super::{RECV_TIMEOUT, REDIS_START_TIMEOUT, free_port, unique};

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

/// Waits until the `redis-server` just spawned answers PING on `port`; an
/// error if it exits first (a port race) or stays silent too long.
pub(super) fn wait_for_ping(child: &mut Child, port: u16) -> Result<(), String> {
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
        let backend = match super::redis_cluster::seed_ports(url) {
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
    pub async fn topology(&self) -> Vec<super::redis_cluster::NodeView> {
        let ProbeBackend::Cluster { seeds, .. } = &self.backend else {
            panic!("the topology of a cluster, asked of a single Redis");
        };
        for &port in seeds {
            if let Some(text) = self
                .try_on_node::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
                .await
            {
                return super::redis_cluster::parse_cluster_nodes(&text);
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
