//! Real `lobby-relay` nodes started from the built binary, their logs, and
//! [`Relays`]: the set of nodes over one store a behavioural test runs against.

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::http_status_blocking;
use super::{NODE_START_TIMEOUT, RedisCluster, RedisProbe, RedisServer, TEST_TIMEOUT, free_port};

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

/// `lobby-relay serve --listen 127.0.0.1:0`, to which the caller adds its
/// arguments. The relay's own settings come from the command line only:
/// nothing from the developer's environment (`LOBBY_RELAY_*`) may change
/// what a test runs.
pub fn serve_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lobby-relay"));
    command.arg("serve").args(["--listen", "127.0.0.1:0"]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LOBBY_RELAY") {
            command.env_remove(key);
        }
    }
    command
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
        let mut command = serve_command();
        command
            .args(["--node-id", node_id])
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
        self.signal("HUP");
    }

    /// Sends SIGTERM (as `kill -TERM PID` does) and returns at once.
    pub fn signal_term(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (as `kill -NAME PID` does) and returns at once.
    fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -{name} {pid}`: {e}"));
        assert!(status.success(), "`kill -{name} {pid}` failed: {status}");
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

/// The relay nodes over one store (one Redis, a Redis Cluster, or none) a
/// test runs against; "cluster" in these tests means a Redis Cluster only.
///
/// - [`Relays::redis`]: one private Redis and two nodes `a` and `b` sharing
///   it; `url_a` and `url_b` lead to different nodes. With
///   `LOBBY_RELAY_TEST_REDIS=cluster` in the environment, a private Redis
///   Cluster of three masters instead ([`Relays::redis_cluster_with`]), so
///   that the same tests run against both (`scripts/test.sh` does).
/// - [`Relays::redis_cluster_with`]: two nodes `a` and `b` sharing a private
///   Redis Cluster, whatever the environment says.
/// - [`Relays::memory`]: one node without Redis; `url_a` and `url_b` are the
///   same node.
pub struct Relays {
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
pub fn redis_cluster_requested() -> bool {
    match std::env::var(TEST_REDIS_ENV) {
        Ok(value) if value == "cluster" => true,
        Ok(value) if value.is_empty() || value == "single" => false,
        Ok(other) => panic!("{TEST_REDIS_ENV}={other:?}: expected `cluster` or `single`"),
        Err(_) => false,
    }
}

impl Relays {
    pub fn redis() -> Relays {
        Relays::redis_with(&[])
    }

    /// Two nodes on one Redis, both given `args` (e.g. `--lobby-capacity 3`);
    /// on a Redis Cluster of three masters with `LOBBY_RELAY_TEST_REDIS=cluster`.
    pub fn redis_with(args: &[&str]) -> Relays {
        if redis_cluster_requested() {
            return Relays::redis_cluster_with(3, 0, args);
        }
        let redis = RedisServer::start();
        let url = redis.url();
        let mut node_args = vec!["--redis-url", &url];
        node_args.extend_from_slice(args);
        let a = Node::start("a", &node_args);
        let b = Node::start("b", &node_args);
        Relays {
            flavour: "redis",
            a,
            b: Some(b),
            redis: Some(redis),
            redis_cluster: None,
        }
    }

    /// Two nodes on a private Redis Cluster of `masters` masters with
    /// `replicas` replicas each, both given the cluster's seed URL and `args`.
    pub fn redis_cluster_with(masters: usize, replicas: usize, args: &[&str]) -> Relays {
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
        Relays {
            flavour: "redis-cluster",
            a,
            b: Some(b),
            redis: None,
            redis_cluster: Some(redis_cluster),
        }
    }

    pub fn memory() -> Relays {
        Relays::memory_with(&[])
    }

    /// One node without Redis, given `args`.
    pub fn memory_with(args: &[&str]) -> Relays {
        Relays {
            flavour: "memory",
            a: Node::start("a", args),
            b: None,
            redis: None,
            redis_cluster: None,
        }
    }

    /// One node whose `--redis-url` points at a port where nothing listens.
    pub fn unreachable_redis() -> Relays {
        let url = format!("redis://127.0.0.1:{}", free_port());
        Relays {
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
    /// see [`Relays::redis_cluster`] and [`Relays::redis_url`]).
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
    /// (Named `redis_probe` because `Relays::redis` is the constructor.)
    pub async fn redis_probe(&self) -> Option<RedisProbe> {
        match self.redis_url() {
            Some(url) => Some(RedisProbe::connect(&url).await),
            None => None,
        }
    }

    /// Handles on every node's log, to print after the nodes are gone.
    pub fn logs(&self) -> Vec<NodeLogs> {
        std::iter::once(&self.a)
            .chain(self.b.as_ref())
            .map(Node::logs)
            .collect()
    }
}

/// Runs one test against a set of relays with the whole-test time limit; prints the
/// nodes' logs if it times out (a panic inside prints them on drop).
pub async fn run<F, Fut>(relays: Relays, test: F)
where
    F: FnOnce(Relays) -> Fut,
    Fut: Future<Output = ()>,
{
    let flavour = relays.flavour();
    let logs = relays.logs();
    if tokio::time::timeout(TEST_TIMEOUT, test(relays))
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

/// `VmRSS` of /proc/PID/status in KiB, if the process exists.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
