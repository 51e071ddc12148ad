//! A private Redis Cluster per test: `redis-server` processes in cluster mode
//! on free loopback ports, joined by `redis-cli --cluster create`, and the
//! faults a managed cluster goes through, for real: a master killed (its
//! replica takes over) and a slot moved to another master under live data.
//!
//! Like [`RedisServer`](super::RedisServer), it only ever kills the
//! processes it started, through their own `Child` handles, and keeps its
//! files in a temporary directory of its own, removed on drop.
//!
//! The administrative calls are blocking (a few loopback round trips each);
//! the ones that wait for the cluster to settle are `async`, so that the
//! test's clients keep running meanwhile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::redis::wait_for_ping;
use super::{free_port, unique};

/// The cluster's `cluster-node-timeout`: a master unreachable this long is
/// marked failed and its replica is elected in its place.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a new cluster may take to agree on its slots and connect its
/// replicas.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every live node may take to agree on a slot's new owner after a
/// migration.
const SLOT_MOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on one administrative command (`MIGRATE` included).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A private Redis Cluster: every process killed and every file removed on
/// drop.
pub struct RedisCluster {
    nodes: Vec<ClusterProcess>,
    /// The masters right after creation: the seeds of [`RedisCluster::url`].
    seeds: Vec<u16>,
    dir: PathBuf,
}

/// One `redis-server --cluster-enabled yes` of ours.
struct ClusterProcess {
    port: u16,
    /// Behind a lock so that [`RedisCluster::kill`] works through `&self`
    /// while clients borrow the test's cluster.
    child: Mutex<Child>,
}

impl ClusterProcess {
    fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
    }
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, creates the cluster
    /// (`redis-cli --cluster create ... --cluster-replicas R`), and waits until
    /// every node reports `cluster_state:ok` with all 16384 slots served, knows
    /// every other node, and every replica's link to its master is up.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters (redis-cli --cluster create refuses fewer)"
        );
        let dir = std::env::temp_dir().join(format!(
            "lobby-relay-redis-cluster-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // Built at once, so that a panic from here on still stops every
        // process started so far and removes the directory.
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            seeds: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas_per_master) {
            let node = spawn_node_with_retries(&cluster.dir);
            cluster.nodes.push(node);
        }
        cluster.create(replicas_per_master);
        cluster.wait_until_ready(masters, replicas_per_master);
        cluster.seeds = cluster.masters();
        cluster
    }

    fn create(&self, replicas_per_master: usize) {
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => panic!(
                    "`redis-cli` is not on PATH: the Redis Cluster tests need it. Run \
                     scripts/test.sh, which installs it, or install redis-tools yourself."
                ),
                _ => panic!("cannot run redis-cli --cluster create: {e}"),
            });
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("All 16384 slots covered") {
            panic!(
                "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn wait_until_ready(&self, masters: usize, replicas_per_master: usize) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let why = match self.readiness(masters, replicas_per_master) {
                Ok(()) => return,
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                panic!(
                    "the Redis Cluster on ports {:?} was not ready within \
                     {CLUSTER_READY_TIMEOUT:?}: {why}",
                    self.ports()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether every node sees a healthy cluster of the expected shape.
    fn readiness(&self, masters: usize, replicas_per_master: usize) -> Result<(), String> {
        let total = self.nodes.len();
        for node in &self.nodes {
            let port = node.port;
            let info: String = admin(port, redis::cmd("CLUSTER").arg("INFO"))?;
            for want in [
                "cluster_state:ok".to_owned(),
                format!("cluster_slots_ok:{SLOTS}"),
                format!("cluster_known_nodes:{total}"),
            ] {
                if !info.lines().any(|l| l.trim() == want) {
                    return Err(format!("node {port}: no `{want}` in CLUSTER INFO:\n{info}"));
                }
            }
            let view =
                parse_cluster_nodes(&admin::<String>(port, redis::cmd("CLUSTER").arg("NODES"))?);
            let serving = view
                .iter()
                .filter(|n| n.is_master() && !n.slots.is_empty())
                .count();
            let replicas = view.iter().filter(|n| n.is_replica()).count();
            if serving != masters || replicas != masters * replicas_per_master {
                return Err(format!(
                    "node {port} sees {serving} masters with slots and {replicas} replicas: \
                     {view:#?}"
                ));
            }
            if let Some(odd) = view.iter().find(|n| n.is_failed()) {
                return Err(format!("node {port} sees {odd:?}"));
            }
            let me = view.iter().find(|n| n.has("myself"));
            if me.is_some_and(NodeView::is_replica) {
                let replication: String = admin(port, redis::cmd("INFO").arg("replication"))?;
                if !replication
                    .lines()
                    .any(|l| l.trim() == "master_link_status:up")
                {
                    return Err(format!(
                        "replica {port}: its link to its master is not up:\n{replication}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`: the masters at
    /// creation as seeds, for a node's `--redis-url`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .seeds
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The ports of every node started, in start order (killed ones too).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes that are masters now, sorted: masters as a
    /// live node sees them, without those marked failed (or suspected) and
    /// those this harness killed.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .view()
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failed() && self.is_running(n.port))
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// `CLUSTER KEYSLOT key`: the hash slot of a key (or channel).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.any_running();
        admin(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// The port of the master that owns `key`'s slot, as a live node sees
    /// it (right after a kill, possibly the dead master, until the failover).
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        let view = self.view();
        view.iter()
            .find(|n| n.is_master() && n.owns(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master owns slot {slot} of {key}: {view:#?}"))
    }

    /// The replicas of a master (ports, sorted), without failed ones.
    pub fn replicas_of(&self, master: u16) -> Vec<u16> {
        let view = self.view();
        let id = view
            .iter()
            .find(|n| n.port == master)
            .map(|n| n.id.clone())
            .unwrap_or_else(|| panic!("no node on port {master}: {view:#?}"));
        let mut replicas: Vec<u16> = view
            .iter()
            .filter(|n| n.is_replica() && !n.is_failed() && n.master_id.as_deref() == Some(&id))
            .map(|n| n.port)
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// Kills one node with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&self, port: u16) {
        self.process(port).kill();
    }

    /// Waits until every live node agrees that a live node other than `not`
    /// is the master of `key`'s slot (and that node says so itself);
    /// returns its port.
    pub async fn wait_for_master_of(&self, key: &str, not: u16, timeout: Duration) -> u16 {
        let slot = self.slot_of(key);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let why = match self.agreed_owner(slot) {
                Ok(port) if port != not => return port,
                Ok(port) => format!("every live node still names {port}"),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no node other than {not} became the master of slot {slot} ({key}) \
                     within {timeout:?}: {why}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves `key`'s slot, with every key in it, from its master to the
    /// master on `to`, the way `redis-cli --cluster reshard` does it while
    /// clients keep using the slot: `CLUSTER SETSLOT IMPORTING` on the target,
    /// `MIGRATING` on the source, `MIGRATE` of the keys of
    /// `CLUSTER GETKEYSINSLOT` in batches until none is left, then `SETSLOT
    /// NODE` on the target, the source and every other master. Waits until
    /// every live node names the new owner; returns how many keys moved.
    pub async fn migrate_slot_of(&self, key: &str, to: u16) -> usize {
        let slot = self.slot_of(key);
        let from = self.master_of(key);
        assert_ne!(from, to, "slot {slot} of {key} is already on {to}");
        assert!(
            self.masters().contains(&to),
            "{to} is not a live master: {:?}",
            self.masters()
        );
        let from_id = self.node_id(from);
        let to_id = self.node_id(to);
        let setslot = |port: u16, state: &str, id: &str| {
            let _: () = admin(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(id),
            )
            .unwrap_or_else(|e| panic!("moving slot {slot}: {e}"));
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        let mut moved = 0;
        loop {
            let keys: Vec<String> = admin(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .unwrap_or_else(|e| panic!("moving slot {slot}: {e}"));
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = admin(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(ADMIN_TIMEOUT.as_millis() as u64)
                    .arg("REPLACE")
                    .arg("KEYS")
                    .arg(&keys),
            )
            .unwrap_or_else(|e| panic!("moving slot {slot}: {e}"));
            moved += keys.len();
        }
        setslot(to, "NODE", &to_id);
        setslot(from, "NODE", &to_id);
        for master in self.masters() {
            if master != from && master != to {
                setslot(master, "NODE", &to_id);
            }
        }
        let deadline = tokio::time::Instant::now() + SLOT_MOVE_TIMEOUT;
        loop {
            let why = match self.agreed_owner(slot) {
                Ok(port) if port == to => return moved,
                Ok(port) => format!("every live node names {port}"),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "slot {slot} ({key}) did not settle on {to} within {SLOT_MOVE_TIMEOUT:?}: {why}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A probe routed through the cluster (see [`super::RedisProbe`]).
    pub async fn probe(&self) -> super::RedisProbe {
        super::RedisProbe::connect(&self.url()).await
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        admin(port, redis::cmd("CLUSTER").arg("MYID"))
            .unwrap_or_else(|e| panic!("CLUSTER MYID: {e}"))
    }

    /// The node that every live node names as the (live, unfailed) master of
    /// `slot`, and that calls itself a master.
    fn agreed_owner(&self, slot: u16) -> Result<u16, String> {
        let mut owner = None;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let view = parse_cluster_nodes(&admin::<String>(
                node.port,
                redis::cmd("CLUSTER").arg("NODES"),
            )?);
            let named = view
                .iter()
                .find(|n| n.is_master() && n.owns(slot) && !n.is_failed())
                .map(|n| n.port);
            match (owner, named) {
                (_, None) => return Err(format!("node {} names no master: {view:#?}", node.port)),
                (Some(o), Some(n)) if o != n => {
                    return Err(format!("nodes disagree: {o} and {n}"));
                }
                _ => owner = named,
            }
            if named == Some(node.port) && !view.iter().any(|n| n.has("myself") && n.is_master()) {
                return Err(format!("{} is named but is no master yet", node.port));
            }
        }
        let owner = owner.ok_or("no live node")?;
        if !self.is_running(owner) {
            return Err(format!("{owner} is named but is dead"));
        }
        Ok(owner)
    }

    /// `CLUSTER NODES` of the first live node that answers.
    fn view(&self) -> Vec<NodeView> {
        let mut errors = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            match admin::<String>(node.port, redis::cmd("CLUSTER").arg("NODES")) {
                Ok(text) => return parse_cluster_nodes(&text),
                Err(e) => errors.push(e),
            }
        }
        panic!("no node of the cluster answered CLUSTER NODES: {errors:?}");
    }

    fn any_running(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(|n| n.port)
            .expect("every node of the cluster is dead")
    }

    fn is_running(&self, port: u16) -> bool {
        self.nodes.iter().any(|n| n.port == port && n.is_running())
    }

    fn process(&self, port: u16) -> &ClusterProcess {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("port {port} is no node of this cluster: {:?}", self.ports()))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                print_log_tail(&self.dir, node.port);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prints the last lines of a node's log (shown when the test fails).
fn print_log_tail(dir: &Path, port: u16) {
    let Ok(log) = std::fs::read_to_string(dir.join(format!("redis-{port}.log"))) else {
        return;
    };
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("---- last lines of the log of redis cluster node {port} ----");
    for line in &lines[lines.len().saturating_sub(10)..] {
        eprintln!("{line}");
    }
}

/// Starts one cluster node on free ports, retrying on port races as
/// [`RedisServer::start`](super::RedisServer::start) does.
fn spawn_node_with_retries(dir: &Path) -> ClusterProcess {
    require_redis_server();
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        let bus_port = free_port();
        if port == 6379 || bus_port == port {
            continue;
        }
        let mut child = spawn_cluster_node(dir, port, bus_port)
            .unwrap_or_else(|e| panic!("cannot spawn redis-server: {e}"));
        match wait_for_ping(&mut child, port) {
            Ok(()) => {
                return ClusterProcess {
                    port,
                    child: Mutex::new(child),
                };
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                last_error = e;
            }
        }
    }
    panic!("a redis-server cluster node did not start: {last_error}");
}

/// Starts a private `redis-server` in cluster mode: loopback only, nothing
/// saved, its node file and log in `dir`. The cluster bus gets a port of its
/// own (`--cluster-port`) rather than the default `port + 10000`, which may
/// be taken or out of range.
///
/// Where util-linux's `setpriv` is installed, the server is started through
/// `setpriv --pdeathsig KILL` (which then becomes `redis-server` itself), so
/// that it dies with the thread that started it even when the test process
/// is killed without unwinding (a test runner cancelling a run), instead of
/// being left behind with its six siblings. Clusters are started from the
/// test's own thread, which lives as long as the test.
fn spawn_cluster_node(dir: &Path, port: u16, bus_port: u16) -> std::io::Result<Child> {
    let nodes_file = dir.join(format!("nodes-{port}.conf"));
    let _ = std::fs::remove_file(&nodes_file);
    let mut command = if has_setpriv() {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", "redis-server"]);
        command
    } else {
        Command::new("redis-server")
    };
    command
        .args(["--port", &port.to_string()])
        .args(["--cluster-port", &bus_port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--protected-mode", "no"])
        .args(["--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(&nodes_file)
        .args([
            "--cluster-node-timeout",
            &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
        ])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        // As docs/operations.md recommends for lobby-relay: a shard that is
        // down (failing over) does not stop the others.
        .args(["--cluster-require-full-coverage", "no"])
        // A replica's first sync starts at once instead of after 5 s.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join(format!("redis-{port}.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Whether `setpriv` (util-linux) can be run.
fn has_setpriv() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("setpriv")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Panics with a clear message if `redis-server` is not on PATH (behind
/// `setpriv`, a missing server would only show as an early exit).
fn require_redis_server() {
    if let Err(e) = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        match e.kind() {
            std::io::ErrorKind::NotFound => panic!(
                "`redis-server` is not on PATH: the integration tests need a real Redis. \
                 Run scripts/test.sh, which installs it, or install redis-server yourself."
            ),
            _ => panic!("cannot run redis-server: {e}"),
        }
    }
}

/// Runs one command on one node, on a connection of its own, with timeouts.
fn admin<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(ADMIN_TIMEOUT)
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    conn.set_read_timeout(Some(ADMIN_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(ADMIN_TIMEOUT)))
        .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    cmd.query(&mut conn)
        .map_err(|e| format!("127.0.0.1:{port}: {cmd:?}: {e}"))
}

/// One line of `CLUSTER NODES`: a node as some node of the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`...
    pub flags: Vec<String>,
    /// A replica's master.
    pub master_id: Option<String>,
    /// Slot ranges served, inclusive (slots being imported or migrated,
    /// `[slot->-id]`, are left out).
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn is_master(&self) -> bool {
        self.has("master")
    }

    pub fn is_replica(&self) -> bool {
        self.has("slave")
    }

    /// Failed, suspected of failure, or not (yet) a full member.
    pub fn is_failed(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has(f))
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

/// Parses the text of `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 8, "odd CLUSTER NODES line: {line:?}");
            let address = fields[1].split(['@', ',']).next().unwrap_or_default();
            let port = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in CLUSTER NODES line: {line:?}"));
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                    let parse = |n: &str| {
                        n.parse::<u16>()
                            .unwrap_or_else(|_| panic!("odd slot range {s:?} in {line:?}"))
                    };
                    (parse(lo), parse(hi))
                })
                .collect();
            NodeView {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master_id: Some(fields[3]).filter(|m| *m != "-").map(str::to_owned),
                slots,
            }
        })
        .collect()
}

/// The seed ports of a `redis+cluster://host:port,host:port[/...]` URL, or
/// `None` for a URL of one Redis.
pub fn seed_ports(url: &str) -> Option<Vec<u16>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hosts = authority.rsplit('@').next().unwrap_or(authority);
    Some(
        hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| {
                h.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in seed {h:?} of {url}"))
            })
            .collect(),
    )
}
