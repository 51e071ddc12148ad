//! The local cluster of `scripts/cluster.sh` (one Redis, three nodes, HAProxy
//! with `deploy/haproxy.cfg`) survives the death of a node: the script is run
//! for real, every client goes through HAProxy, and a node is killed with
//! SIGKILL under a player.
//!
//! Needs `haproxy`, `redis-server` and `redis-cli` on PATH (scripts/test.sh
//! installs them). The script gets free ports and a fresh state directory,
//! and runs the binary cargo built for the tests (`LOBBY_RELAY_BIN`).

use crate::support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Client, RECV_TIMEOUT, RedisProbe, TEST_TIMEOUT, game_message, lobby_key};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long `cluster.sh up` may take (it needs about a second).
const UP_TIMEOUT: Duration = Duration::from_secs(25);
/// How long `cluster.sh status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `cluster.sh down` may take: SIGTERM, then SIGKILL after
/// `CLUSTER_STOP_TIMEOUT` (set to 3 s below), in two rounds.
const DOWN_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a player whose node died may keep trying to reconnect and join
/// through HAProxy, which may still route to the dead node until its health
/// check fails twice (`inter 1s fall 2`) and retries with redispatch meanwhile.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long HAProxy may take to mark the killed node DOWN (about 2 s).
const MARKED_DOWN_TIMEOUT: Duration = Duration::from_secs(6);

const NODES: [&str; 3] = ["relay-1", "relay-2", "relay-3"];
/// The nodes' `--admin-token` in the HAProxy test.
const ADMIN_TOKEN: &str = "cluster-lb-admin-token";
/// Every process the script starts, by the name of its pid file.
const PROCESSES: [&str; 5] = ["redis", "relay-1", "relay-2", "relay-3", "haproxy"];

// ---------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------

/// A cluster started by `scripts/cluster.sh up` in a private state directory.
/// Dropping it runs `scripts/cluster.sh down` (and prints the logs if the test
/// is failing), so that no process outlives a failed test.
struct ScriptCluster {
    /// Holds the script's outputs and `state/`, the `CLUSTER_DIR`.
    base: PathBuf,
    state: PathBuf,
    port: u16,
    node_ports: [u16; 3],
    redis_port: u16,
    stats_port: u16,
    /// Set once `down` has run successfully.
    down: bool,
    runs: u32,
    /// Extra environment for the script and the nodes.
    env: Vec<(String, String)>,
}

/// What one run of the script did.
struct ScriptRun {
    /// `None` when it was killed for taking too long.
    status: Option<ExitStatus>,
    output: String,
}

impl ScriptRun {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh")
}

/// Fails the test, with the way out, when a program the script needs is not
/// installed (the script itself would try to install it with apt-get).
fn require_programs() {
    for (program, arg) in [
        ("haproxy", "-v"),
        ("redis-server", "--version"),
        ("redis-cli", "--version"),
    ] {
        match Command::new(program)
            .env("PATH", search_path())
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{program}` is not on PATH: the cluster test runs HAProxy and Redis for real. \
                 Run scripts/test.sh, which installs haproxy, redis-server and redis-tools, \
                 or install them yourself (apt-get install haproxy redis-server redis-tools)."
            ),
            Err(e) => panic!("cannot run `{program}`: {e}"),
        }
    }
}

/// PATH with the sbin directories added, as the script does: Debian installs
/// haproxy in /usr/sbin, which is not on a user's PATH.
fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/sbin:/sbin")
}

/// `N` different ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let mut ports = Vec::with_capacity(N);
    while ports.len() < N {
        let port = support::free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports.try_into().expect("N ports")
}

impl ScriptCluster {
    /// Runs `cluster.sh up` on free ports, trying other ports if one was taken
    /// meanwhile; panics if the cluster does not come up.
    fn up() -> ScriptCluster {
        Self::up_with(&[])
    }

    /// Like [`ScriptCluster::up`], with extra environment variables for the
    /// script (and so for the nodes), e.g. `LOBBY_RELAY_JOIN_RATE`.
    fn up_with(env: &[(&str, &str)]) -> ScriptCluster {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cluster-lb-{}-{nanos}", std::process::id()));
        let state = base.join("state");
        std::fs::create_dir_all(&base).expect("create the test's directory");
        let mut cluster = ScriptCluster {
            base,
            state,
            port: 0,
            node_ports: [0; 3],
            redis_port: 0,
            stats_port: 0,
            down: false,
            runs: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut tries = Vec::new();
        for _ in 0..3 {
            let [port, n1, n2, n3, redis_port, stats_port] = free_ports::<6>();
            cluster.port = port;
            cluster.node_ports = [n1, n2, n3];
            cluster.redis_port = redis_port;
            cluster.stats_port = stats_port;
            let run = cluster.run("up", UP_TIMEOUT);
            if run.code() == Some(0) {
                return cluster;
            }
            tries.push(format!("exit {:?}, output:\n{}", run.status, run.output));
            // Another process may have taken one of the ports between our
            // probe and the bind (the script has stopped what it started):
            // try new ones. Anything else is a failure.
            if !run.output.contains("in use") {
                break;
            }
        }
        panic!(
            "`scripts/cluster.sh up` failed:\n{}",
            tries.join("\n---- next try ----\n")
        );
    }

    /// Runs `scripts/cluster.sh SUBCOMMAND` (its words: `restart relay-2`)
    /// with this cluster's settings, killing it after `timeout`.
    fn run(&mut self, subcommand: &str, timeout: Duration) -> ScriptRun {
        self.runs += 1;
        let out_path = self.base.join(format!(
            "script-{}-{}.out",
            self.runs,
            subcommand.replace(' ', "-")
        ));
        let out = std::fs::File::create(&out_path).expect("create the script's output file");
        let err = out.try_clone().expect("clone the output file");
        let mut command = Command::new("bash");
        command
            .arg(script())
            .args(subcommand.split_whitespace())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Only this test's settings: nothing from the developer's
        // environment may change what runs.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("LOBBY_RELAY") || key_text.starts_with("CLUSTER_") {
                command.env_remove(key);
            }
        }
        let node_ports = self.node_ports.map(|p| p.to_string()).join(" ");
        command
            .env("CLUSTER_DIR", &self.state)
            .env("CLUSTER_PORT", self.port.to_string())
            .env("CLUSTER_NODE_PORTS", node_ports)
            .env("CLUSTER_REDIS_PORT", self.redis_port.to_string())
            .env("CLUSTER_STATS_PORT", self.stats_port.to_string())
            .env("CLUSTER_STOP_TIMEOUT", "3")
            .env("LOBBY_RELAY_BIN", env!("CARGO_BIN_EXE_lobby-relay"))
            .env("LOBBY_RELAY_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait().expect("wait for the script") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        ScriptRun { status, output }
    }

    /// Runs `down` and asserts that it succeeded.
    fn down(&mut self) {
        let run = self.run("down", DOWN_TIMEOUT);
        assert_eq!(
            run.code(),
            Some(0),
            "`scripts/cluster.sh down` failed (exit {:?}):\n{}",
            run.status,
            run.output
        );
        self.down = true;
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    /// The pid the script recorded for one of [`PROCESSES`].
    fn pid(&self, name: &str) -> u32 {
        let path = self.state.join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{} holds {text:?}, not a pid: {e}", path.display()))
    }

    /// Prints the script's outputs and the tail of every log of the state
    /// directory (shown when the test fails).
    fn print_logs(&self) {
        let mut files: Vec<PathBuf> = [&self.base, &self.state]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "log" || ext == "out")
            })
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("---- {} (last {} lines) ----", path.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        if !self.down {
            let run = self.run("down", DOWN_TIMEOUT);
            if run.code() != Some(0) {
                eprintln!(
                    "cleanup: `scripts/cluster.sh down` failed (exit {:?}):\n{}",
                    run.status, run.output
                );
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        } else {
            eprintln!("the cluster's files stay in {}", self.base.display());
        }
    }
}

/// Whether a process is running (not exited, not a zombie) and its command
/// line contains `signature`, so that a reused pid is not mistaken for it.
fn process_running(pid: u32, signature: &str) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self").exists() {
        let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        // "pid (comm) STATE ...": the state follows the last parenthesis.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            return false;
        }
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(signature)
    } else {
        Command::new("sh")
            .arg("-c")
            .arg(format!("kill -0 {pid} 2>/dev/null"))
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// What the command line of a process started by the script contains (the
/// script checks the same before it signals a pid).
fn signature(name: &str) -> String {
    match name {
        "redis" => "redis-server".to_owned(),
        "haproxy" => "haproxy".to_owned(),
        node => format!("--node-id {node}"),
    }
}

fn kill_9(pid: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -9 {pid}"))
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed: {status}");
}

/// `GET path` on 127.0.0.1:port: the status code and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, "")
}

/// [`http_get`] with extra header lines (each ending in `\r\n`).
fn http_get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    // HAProxy's stats page is chunked, even to HTTP/1.0.
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n")?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// One row of HAProxy's stats (as CSV on the stats page) for a server or
/// `BACKEND` of the `relays` backend: column name -> value.
fn haproxy_stats(stats_port: u16, server: &str) -> Option<BTreeMap<String, String>> {
    let (_, csv) = http_get(stats_port, "/;csv")?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    lines.find_map(|line| {
        let fields: Vec<&str> = line.split(',').collect();
        (fields.first() == Some(&"relays") && fields.get(1) == Some(&server)).then(|| {
            header
                .iter()
                .zip(fields)
                .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                .collect()
        })
    })
}

/// A counter of [`haproxy_stats`] (0 when empty).
fn stat_number(stats: &BTreeMap<String, String>, column: &str) -> u64 {
    stats.get(column).and_then(|v| v.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// A bare client, for the player whose connection ends without a Close frame
// (the harness's `Client` treats that as a failure) and who must retry
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct BareClient {
    name: String,
    ws: Ws,
}

impl BareClient {
    /// One attempt to open a WebSocket through HAProxy.
    async fn connect(url: &str, name: &str) -> Result<BareClient, String> {
        // HAProxy's retries toward a dead node take about 3 s (1 s apart).
        match tokio::time::timeout(
            Duration::from_secs(8),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            Ok(Ok((ws, _response))) => Ok(BareClient {
                name: name.to_owned(),
                ws,
            }),
            Ok(Err(e)) => Err(format!("connecting to {url}: {e}")),
            Err(_) => Err(format!("connecting to {url} timed out")),
        }
    }

    async fn send_json(&mut self, value: Value) -> Result<(), String> {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(Message::text(value.to_string())))
            .await
            .map_err(|_| format!("{}: send timed out", self.name))?
            .map_err(|e| format!("{}: send failed: {e}", self.name))
    }

    async fn send_text(&mut self, text: &str) {
        let name = self.name.clone();
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(Message::text(text)))
            .await
            .unwrap_or_else(|_| panic!("{name}: send timed out"))
            .unwrap_or_else(|e| panic!("{name}: send failed: {e}"));
    }

    /// The next data message, as text, within [`RECV_TIMEOUT`].
    async fn recv_text(&mut self) -> Result<String, String> {
        let next = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                    Some(Ok(other)) => return Err(format!("expected a text frame, got {other:?}")),
                    Some(Err(e)) => return Err(format!("reading failed: {e}")),
                    None => return Err("the connection ended".to_owned()),
                }
            }
        };
        tokio::time::timeout(RECV_TIMEOUT, next)
            .await
            .unwrap_or_else(|_| Err(format!("nothing arrived within {RECV_TIMEOUT:?}")))
            .map_err(|e| format!("{}: {e}", self.name))
    }

    async fn recv_json(&mut self) -> Result<Value, String> {
        let text = self.recv_text().await?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON ({e}): {text:?}", self.name))
    }

    async fn expect_json(&mut self, expected: Value) {
        let got = self.recv_json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, expected, "{}: unexpected message", self.name);
    }

    /// Waits for the connection to end: a Close frame, an error or the end of
    /// the stream, within [`RECV_TIMEOUT`]. Any data message is a failure.
    async fn expect_end(&mut self) -> String {
        let name = self.name.clone();
        let end = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => return format!("Close frame {frame:?}"),
                    Some(Ok(other)) => {
                        panic!("{name}: expected the connection to end, got {other:?}")
                    }
                    Some(Err(e)) => return format!("error: {e}"),
                    None => return "end of stream".to_owned(),
                }
            }
        };
        tokio::time::timeout(RECV_TIMEOUT, end)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{name}: the connection did not end within {RECV_TIMEOUT:?} of its node's death"
                )
            })
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// The node holding a lobby seat: member ids are `<node id>/<incarnation>.<n>`.
async fn node_of_seat(redis: &RedisProbe, passphrase: &str, seat: &str) -> String {
    let seats = redis.hgetall(&lobby_key(passphrase)).await;
    let member = seats
        .get(seat)
        .unwrap_or_else(|| panic!("no seat {seat} in {} : {seats:?}", lobby_key(passphrase)));
    let node = member.split_once('/').map(|(node, _)| node).unwrap_or("");
    assert!(
        NODES.contains(&node),
        "member id {member:?} of seat {seat} does not start with relay-N/"
    );
    node.to_owned()
}

/// A passphrase no earlier run used (lobbies live only in this test's Redis,
/// but a unique name keeps failure messages unambiguous).
fn passphrase(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{what}-{}-{nanos}", support::unique())
}

/// A new player reaches a live node through HAProxy and joins `passphrase`
/// as the first member, retrying (new connection, same passphrase) while
/// HAProxy may still send it to the dead node.
async fn reconnect_and_join(url: &str, passphrase: &str) -> (BareClient, u32) {
    let deadline = tokio::time::Instant::now() + RECONNECT_TIMEOUT;
    let mut attempts = 0;
    let mut failures = Vec::new();
    loop {
        attempts += 1;
        let attempt = async {
            let mut client = BareClient::connect(url, "A (reconnected)").await?;
            client
                .send_json(json!({"type": "join", "passphrase": passphrase}))
                .await?;
            let reply = client.recv_json().await?;
            if reply == json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1}) {
                Ok(client)
            } else {
                Err(format!("joining answered {reply}"))
            }
        };
        match attempt.await {
            Ok(client) => {
                if !failures.is_empty() {
                    eprintln!("reconnection attempts that failed: {failures:#?}");
                }
                return (client, attempts);
            }
            Err(e) => failures.push(e),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "the player of the killed node could not reconnect and join through HAProxy \
                 within {RECONNECT_TIMEOUT:?} ({attempts} attempts): {failures:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn survive_node_death(cluster: &mut ScriptCluster) {
    let url = cluster.ws_url();
    let redis = RedisProbe::connect(&cluster.redis_url()).await;

    // Two players meet through HAProxy, and play.
    let first = passphrase("lb-first");
    let mut a = BareClient::connect(&url, "A")
        .await
        .unwrap_or_else(|e| panic!("A: {e}"));
    let mut b = Client::connect(&url, "B").await;
    a.send_json(json!({"type": "join", "passphrase": first}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.expect_json(json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1}))
        .await;
    b.send_join(&first).await;
    b.expect_json(json!({"type": "joined", "players": 2, "capacity": 2, "seat": 2}))
        .await;
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
    let there = game_message("playerMove");
    a.send_text(&there).await;
    b.expect_text(&there).await;
    let back = game_message("playerMove");
    b.send_text(&back).await;
    assert_eq!(a.recv_text().await.unwrap_or_else(|e| panic!("{e}")), back);

    // A third player, D, waits in a lobby of its own. HAProxy balances by
    // least connections, so A, B and D are on three different nodes; once
    // A's node is dead, it has the fewest connections and HAProxy tries it
    // first until its health check fails: the reconnection below goes
    // through HAProxy's retries and redispatch.
    let waiting = passphrase("lb-waiting");
    let mut d = Client::connect(&url, "D").await;
    d.join(&waiting).await;
    let victim = node_of_seat(&redis, &first, "1").await;
    let b_node = node_of_seat(&redis, &first, "2").await;
    let d_node = node_of_seat(&redis, &waiting, "1").await;
    eprintln!("A is on {victim}, B on {b_node}, D on {d_node}: killing {victim}");
    assert!(
        victim != b_node && victim != d_node && b_node != d_node,
        "HAProxy (leastconn) should have put A, B and D on three nodes: {victim}, {b_node}, {d_node}"
    );

    // Kill A's node.
    let victim_pid = cluster.pid(&victim);
    assert!(
        process_running(victim_pid, &signature(&victim)),
        "{victim} (pid {victim_pid}) should be running"
    );
    kill_9(victim_pid);
    let killed = Instant::now();
    let how = a.expect_end().await;
    eprintln!("A's connection ended: {how}");

    // A reconnects through HAProxy at once, lands on a live node and starts
    // a new game (its old seat is freed only once the other nodes presume
    // the dead one dead: not waited for here).
    let second = passphrase("lb-second");
    let reconnecting = Instant::now();
    let (mut a2, attempts) = reconnect_and_join(&url, &second).await;
    let reconnected = Instant::now();
    let a2_node = node_of_seat(&redis, &second, "1").await;
    eprintln!(
        "A reconnected to {a2_node} after {attempts} attempt(s), {:?}",
        reconnecting.elapsed()
    );
    assert_ne!(a2_node, victim, "A's new connection is on the dead node");

    // HAProxy's health check takes the dead node out.
    let deadline = Instant::now() + MARKED_DOWN_TIMEOUT;
    loop {
        let stats = haproxy_stats(cluster.stats_port, &victim);
        let status = stats.as_ref().and_then(|s| s.get("status").cloned());
        if status.as_deref().is_some_and(|s| s.starts_with("DOWN")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy did not mark {victim} DOWN within {MARKED_DOWN_TIMEOUT:?} (status {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backend =
        haproxy_stats(cluster.stats_port, "BACKEND").expect("HAProxy's stats of the backend");
    let (retries, redispatches) = (
        stat_number(&backend, "wretr"),
        stat_number(&backend, "wredis"),
    );
    eprintln!("HAProxy: {retries} retries, {redispatches} redispatches");
    // HAProxy cannot have marked the node down less than `inter` (1 s)
    // after its death: a reconnection before that was sent to it first.
    assert!(
        reconnected.duration_since(killed) > Duration::from_millis(900) || redispatches >= 1,
        "HAProxy should have sent A's reconnection to the dead node first (it had the fewest \
         connections and was not yet marked down), then redispatched it; stats: {backend:?}"
    );

    // `status` reports the dead node and fails.
    let run = cluster.run("status", STATUS_TIMEOUT);
    assert_eq!(
        run.code(),
        Some(1),
        "`cluster.sh status` with a dead node should exit 1:\n{}",
        run.output
    );
    assert!(
        run.output
            .lines()
            .any(|l| l.contains(&victim) && l.contains("STOPPED")),
        "`cluster.sh status` should report {victim} STOPPED:\n{}",
        run.output
    );

    // A fresh player joins A's new lobby, and they play.
    let mut c = Client::connect(&url, "C").await;
    c.send_join(&second).await;
    c.expect_json(json!({"type": "joined", "players": 2, "capacity": 2, "seat": 2}))
        .await;
    a2.expect_json(json!({"type": "ready", "players": 2})).await;
    c.expect_json(json!({"type": "ready", "players": 2})).await;
    let c_node = node_of_seat(&redis, &second, "2").await;
    assert_ne!(c_node, victim, "C is on the dead node");
    let there = game_message("playerMove");
    a2.send_text(&there).await;
    c.expect_text(&there).await;
    let back = game_message("playerMove");
    c.send_text(&back).await;
    assert_eq!(a2.recv_text().await.unwrap_or_else(|e| panic!("{e}")), back);

    c.close().await;
    d.close().await;
    drop(a2);
    drop(b);

    // `restart` brings the dead node back as `up` started it.
    let run = cluster.run(&format!("restart {victim}"), UP_TIMEOUT);
    assert_eq!(
        run.code(),
        Some(0),
        "`cluster.sh restart {victim}` should exit 0:\n{}",
        run.output
    );
    let run = cluster.run("status", STATUS_TIMEOUT);
    assert_eq!(
        run.code(),
        Some(0),
        "`cluster.sh status` after `restart {victim}` should exit 0:\n{}",
        run.output
    );
}

/// Brings the cluster up with the real script, kills the node under one of
/// two players, and checks that the player gets back into a game through
/// HAProxy; then `down` stops every process the script started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_a_killed_node() {
    let started = Instant::now();
    require_programs();
    let mut cluster = ScriptCluster::up();
    let pids: Vec<(&str, u32)> = PROCESSES
        .iter()
        .map(|&name| (name, cluster.pid(name)))
        .collect();

    let run = cluster.run("status", STATUS_TIMEOUT);
    assert_eq!(
        run.code(),
        Some(0),
        "`cluster.sh status` right after `up` should exit 0:\n{}",
        run.output
    );

    // The whole test stays under TEST_TIMEOUT, `down` included.
    let budget = TEST_TIMEOUT
        .saturating_sub(started.elapsed())
        .saturating_sub(DOWN_TIMEOUT);
    if tokio::time::timeout(budget, survive_node_death(&mut cluster))
        .await
        .is_err()
    {
        panic!("the test did not finish within {TEST_TIMEOUT:?}");
    }
    // The restarted node's pid among them.
    let restarted: Vec<(&str, u32)> = PROCESSES
        .iter()
        .map(|&name| (name, cluster.pid(name)))
        .collect();

    cluster.down();
    for (name, pid) in pids.into_iter().chain(restarted) {
        assert!(
            !process_running(pid, &signature(name)),
            "{name} (pid {pid}) still runs after `cluster.sh down`"
        );
        let pid_file = cluster.state.join(format!("{name}.pid"));
        assert!(
            !pid_file.exists(),
            "`down` should remove {}",
            pid_file.display()
        );
    }
    let run = cluster.run("status", STATUS_TIMEOUT);
    assert_eq!(
        run.code(),
        Some(5),
        "`cluster.sh status` after `down` should exit 5 (no cluster):\n{}",
        run.output
    );
}

/// A WebSocket through `url`'s host and port, from source address `source`,
/// after writing `preface` (e.g. a forged PROXY header) on the raw socket.
async fn ws_from(
    source: &str,
    port: u16,
    preface: &[u8],
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .map_err(|e| e.to_string())?;
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(preface).await.map_err(|e| e.to_string())?;
    let url = format!("ws://127.0.0.1:{port}/");
    tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::client_async(url, stream))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

async fn join_reply(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    passphrase: &str,
) -> Value {
    ws.send(Message::text(
        json!({"type": "join", "passphrase": passphrase}).to_string(),
    ))
    .await
    .expect("send join");
    loop {
        let message = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

/// Through HAProxy with the PROXY protocol the nodes see each player's own
/// address: the cluster-wide join limit counts players separately (not all
/// as HAProxy), the nodes log the player's address, and a client that
/// forges a PROXY header straight to a node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_the_players_address_through_haproxy() {
    require_programs();
    let mut cluster = ScriptCluster::up_with(&[
        ("LOBBY_RELAY_JOIN_RATE", "6"),
        ("LOBBY_RELAY_JOIN_BURST", "2"),
        ("LOBBY_RELAY_ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let test = async {
        // The browser pages come through HAProxy like any plain GET: the
        // playground, the admin page, and the admin data (every node of the
        // cluster, whichever node answers).
        for path in ["/", "/playground", "/admin"] {
            let (status, body) = http_get(cluster.port, path).expect("an answer through HAProxy");
            assert_eq!(status, 200, "GET {path} through HAProxy: {body}");
            assert!(body.contains("<html"), "GET {path}: {body}");
        }
        let (status, _) =
            http_get(cluster.port, "/admin/api/cluster").expect("an answer through HAProxy");
        assert_eq!(status, 401, "the admin data needs the token");
        let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
        let view = tokio::time::timeout(RECV_TIMEOUT, async {
            loop {
                if let Some((200, body)) =
                    http_get_with(cluster.port, "/admin/api/cluster", &bearer)
                {
                    let view: Value = serde_json::from_str(&body).expect("JSON");
                    let live = view["nodes"].as_array().map_or(0, |nodes| {
                        nodes.iter().filter(|n| n["alive"] == true).count()
                    });
                    if live == 3 {
                        return view;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the admin data lists the three nodes through HAProxy");
        assert_eq!(view["store"], "redis", "{view}");

        // Player X (127.0.0.5): two joins pass, the third is limited.
        let mut x = ws_from("127.0.0.5", cluster.port, b"")
            .await
            .expect("X connects");
        for attempt in 0..2 {
            let reply = join_reply(&mut x, &passphrase(&format!("x{attempt}"))).await;
            assert_eq!(reply["type"], "joined", "X attempt {attempt}: {reply}");
            x.send(Message::text(r#"{"type":"leave"}"#))
                .await
                .expect("leave");
        }
        let limited = join_reply(&mut x, &passphrase("x2")).await;
        assert_eq!(limited["code"], "rate_limited", "{limited}");
        // Player Y (127.0.0.6), through the same HAProxy: not limited.
        let mut y = ws_from("127.0.0.6", cluster.port, b"")
            .await
            .expect("Y connects");
        let y_passphrase = passphrase("y");
        let reply = join_reply(&mut y, &y_passphrase).await;
        assert_eq!(reply["type"], "joined", "Y: {reply}");
        // `inspect` finds Y's lobby and the node that holds its seat.
        let output = Command::new(env!("CARGO_BIN_EXE_lobby-relay"))
            .args([
                "inspect",
                &y_passphrase,
                "--redis-url",
                &cluster.redis_url(),
            ])
            .env_remove("LOBBY_RELAY_LOBBY_SECRET")
            .output()
            .expect("inspect runs");
        let shown = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            shown.lines().any(|l| l.starts_with("seat 1: relay-")),
            "inspect shows Y's seat on a relay node: {shown}"
        );
        // The nodes' metrics count what happened: three joins, one refused.
        let scrapes: Vec<String> = cluster
            .node_ports
            .iter()
            .map(|port| {
                http_get(*port, "/metrics")
                    .map(|(_, body)| body)
                    .unwrap_or_default()
            })
            .collect();
        let total = |series: &str| -> f64 {
            scrapes
                .iter()
                .flat_map(|m| m.lines())
                .filter_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .sum()
        };
        assert_eq!(total(r#"lobby_relay_joins_total{result="joined"}"#), 3.0);
        assert_eq!(
            total(r#"lobby_relay_joins_total{result="rate_limited"}"#),
            1.0
        );
        // A forged PROXY header straight to a node (not from HAProxy).
        let forged = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 8765\r\n";
        let direct = ws_from("127.0.0.1", cluster.node_ports[0], forged).await;
        assert!(direct.is_err(), "a forged PROXY header must be refused");
    };
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test finishes in time");
    let logs: String = (1..=3)
        .map(|n| {
            std::fs::read_to_string(cluster.state.join(format!("relay-{n}.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        logs.contains("\"peer\":\"127.0.0.5"),
        "the nodes log player X's address"
    );
    assert!(
        logs.contains("\"peer\":\"127.0.0.6"),
        "the nodes log player Y's address"
    );
    assert!(
        !logs.contains("\"peer\":\"127.0.0.2"),
        "no session is HAProxy's own address"
    );
    assert!(
        !logs.contains("198.51.100.9"),
        "the forged address was never used"
    );
    cluster.down();
}

// ---------------------------------------------------------------------------
// Resume through the load balancer
// ---------------------------------------------------------------------------

/// The node a connection landed on, from a ping with `"node":true`.
async fn node_of(client: &mut Client) -> String {
    client
        .send_json(json!({"type": "ping", "t": 0, "node": true}))
        .await;
    let pong = client.recv_json().await;
    pong["node"]
        .as_str()
        .unwrap_or_else(|| panic!("no node in {pong}"))
        .to_owned()
}

/// Player A (opted in to resume) and B play through HAProxy; A's TCP
/// connection ends without a close frame while B sends 100 numbered
/// messages; A reconnects through HAProxy, lands on a node other than its
/// first, resumes there and has all 100, in order, none twice; B saw A away
/// and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_resumes_through_haproxy_on_another_node() {
    let cluster = ScriptCluster::up();
    let url = cluster.ws_url();
    let pass = passphrase("lb-resume");
    let mut a = Client::connect(&url, "A").await;
    let first_node = node_of(&mut a).await;
    a.send_json(json!({"type": "join", "passphrase": pass, "resume": true}))
        .await;
    let joined = a.recv_json().await;
    let token = joined["resumeToken"]
        .as_str()
        .expect("a resume token")
        .to_owned();
    let mut b = Client::connect(&url, "B").await;
    b.join(&pass).await;
    // A counts its deliveries (ready, game messages, events).
    let mut received = 0u64;
    assert_eq!(a.recv_json().await["type"], "ready");
    received += 1;
    assert_eq!(b.recv_json().await["type"], "ready");
    let (mut tx, mut rx) = b.split();
    let sender = tokio::spawn(async move {
        for n in 1..=100u64 {
            tx.send_json(json!({"type": "move", "n": n})).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut numbers = Vec::new();
    while numbers.len() < 20 {
        let value = a.recv_json().await;
        received += 1;
        numbers.extend(value["n"].as_u64());
    }
    drop(a); // the TCP connection ends, no close frame
    let away = rx.recv_json().await;
    assert_eq!(away["type"], "playerAway", "B: {away}");
    // Through HAProxy again, until a node other than the first answers
    // (connections that land on the first one stay open, so that leastconn
    // sends the next one elsewhere).
    let mut parked = Vec::new();
    let mut resumed_on = None;
    for _ in 0..6 {
        let mut again = Client::connect(&url, "A again").await;
        let node = node_of(&mut again).await;
        if node == first_node {
            parked.push(again);
            continue;
        }
        again
            .send_json(json!({"type": "resume", "token": token, "received": received}))
            .await;
        let reply = again.recv_json().await;
        assert_eq!(reply["type"], "resumed", "{reply}");
        resumed_on = Some((again, node));
        break;
    }
    let (mut a, node) = resumed_on.expect("HAProxy never sent A to another node");
    println!("resume through HAProxy: first on {first_node}, resumed on {node}");
    while numbers.last() != Some(&100) {
        numbers.extend(a.recv_json().await["n"].as_u64());
    }
    assert_eq!(
        numbers,
        (1..=100).collect::<Vec<u64>>(),
        "in order, complete, once"
    );
    let back = rx.recv_json().await;
    assert_eq!(back, json!({"type": "playerBack", "seat": 1}));
    support::finish(sender).await;
    drop(parked);
}
