//! Lobbies shared through Redis: stateless nodes, any number of them.
//!
//! - Membership: one hash per lobby, `lr:lobby:{<sha256 hex>}`, field = seat
//!   number, value = member id. Changed only by Lua scripts (`join.lua`,
//!   `leave.lua`, `reap.lua`, `claim.lua`), which are atomic, so a race of
//!   joiners never overfills a lobby, and which publish the join/leave event
//!   themselves.
//! - Fan-out: one pub/sub channel per lobby, `lr:chan:{<sha256 hex>}`. A
//!   node subscribes only to the lobbies it has members in. In a Redis
//!   Cluster it is a sharded channel (`SPUBLISH`/`SSUBSCRIBE`): its messages
//!   go through the one shard that owns the lobby's slot.
//! - Order: every publish of this node goes through one publisher task and
//!   one multiplexed connection, in batches (one pipeline per batch); in a
//!   cluster through the lane of its lobby's slot (one task per slot), so a
//!   sender's messages keep their order; a leave waits until the member's
//!   earlier messages are out before it runs.
//! - Liveness (`redis/liveness.rs`): each node keeps a heartbeat key alive; the
//!   others reap the members of a node whose heartbeat expired. After an
//!   outage a node re-registers the seats it holds.
//!
//! The `{...}` around the hash is a Redis Cluster hash tag: every key and the
//! channel of a lobby live in the same slot, and every script touches the
//! keys of one lobby only, so that in a cluster it runs on the one shard that
//! owns the lobby. The liveness keys (`lr:{nodes}`, `lr:{nodes}:node:*`,
//! `lr:{nodes}:reaped:*`) share the tag `{nodes}` and so one shard; the
//! others (`lr:node-lobbies:*`, `lr:away`, `lr:rate:*`) live where their
//! names hash; none is touched from inside a lobby's script (see
//! docs/operations.md, "Redis Cluster").

mod envelope;
mod expiry;
mod liveness;
mod sharded;
pub mod target;
pub mod topology;
mod view;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{IntoConnectionInfo, PushKind};
use target::{Conn, Target};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{JoinOutcome, LobbyStore, MemberId, RateKey, ResumeOutcome, ResumeSetup, StoreError};
use crate::hub::{Hub, LocalLobby};
use crate::identity::{self, Identity};
use crate::limits::JoinLimit;
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;

/// Prefix of every Redis key and channel of lobby-relay.
pub const PREFIX: &str = "lr:";
const CHANNEL_PREFIX: &str = "lr:chan:{";

/// The membership hash of a lobby.
pub fn lobby_key(hex: &str) -> String {
    format!("lr:lobby:{{{hex}}}")
}

/// The pub/sub channel of a lobby.
pub fn channel(hex: &str) -> String {
    format!("{CHANNEL_PREFIX}{hex}}}")
}

/// A live node's heartbeat key; it expires when the node stops renewing it.
///
/// The liveness keys (heartbeats, [`NODES_KEY`], reaped marks) share the hash
/// tag `{nodes}`: in a Redis Cluster they sit on one shard, so that a shard
/// failing over stops every heartbeat and every reaper at once, never the
/// heartbeats of some nodes while others go on judging them dead.
pub fn node_key(node: &str) -> String {
    format!("lr:{{nodes}}:node:{node}")
}

/// The set of every node key that has announced itself (live or not yet
/// reaped).
pub const NODES_KEY: &str = "lr:{nodes}";

/// The start of every heartbeat key, for scans.
pub const NODE_KEY_PREFIX: &str = "lr:{nodes}:node:";

/// The lobbies a node has (or recently had) members in: where to look for
/// them if the node dies.
pub fn node_lobbies_key(node: &str) -> String {
    format!("lr:node-lobbies:{node}")
}

/// Set by the node that reaped `node`: tells it, should it come back, that
/// its seats are gone.
pub fn reaped_key(node: &str) -> String {
    format!("lr:{{nodes}}:reaped:{node}")
}

/// The join limit's state for one client address (expires by itself).
pub fn join_rate_key(client: IpAddr) -> String {
    format!("lr:rate:join:{client}")
}

/// The join limit's state for one authenticated user, named by the SHA-256
/// of its id (expires by itself).
pub fn user_join_rate_key(user: &str) -> String {
    format!("lr:rate:join-user:{}", crate::auth::user_hash(user))
}

/// The lobby of a channel name, if it is one of ours.
fn lobby_of_channel(name: &str) -> Option<LobbyId> {
    LobbyId::from_hex(name.strip_prefix(CHANNEL_PREFIX)?.strip_suffix('}')?)
}

/// The helpers of held seats (resume), prepended to the scripts that change
/// a lobby or relay in it.
const HELD_LUA: &str = include_str!("held.lua");

/// A script with the held-seat helpers in front. `publish` is the command
/// that publishes to a lobby's channel (`SPUBLISH` in a cluster). The script
/// returns `{result, AWAY_ADD, AWAY_DEL}`: see [`HeldReply`].
fn held_script(body: &str, publish: &str) -> redis::Script {
    redis::Script::new(&format!(
        "local PUBLISH = '{publish}'\n{HELD_LUA}\nlocal function main()\n{body}\nend\n\
         local result = main()\nreturn {{result, AWAY_ADD, AWAY_DEL}}\n"
    ))
}

/// What a held script returns: its own result, and the changes to
/// `lr:away` (which lives outside the lobby's slot) for the node to apply.
struct HeldReply {
    result: redis::Value,
    away_add: Vec<(String, i64)>,
    away_del: Vec<String>,
}

impl redis::FromRedisValue for HeldReply {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (result, adds, away_del): (redis::Value, Vec<redis::Value>, Vec<String>) =
            redis::from_redis_value(v)?;
        let mut away_add = Vec::with_capacity(adds.len() / 2);
        let mut adds = adds.into_iter();
        while let (Some(entry), Some(score)) = (adds.next(), adds.next()) {
            away_add.push((
                redis::from_redis_value(entry)?,
                redis::from_redis_value(score)?,
            ));
        }
        Ok(HeldReply {
            result,
            away_add,
            away_del,
        })
    }
}

/// The sorted set of held seats by the end of their grace period.
pub const AWAY_KEY: &str = "lr:away";

/// What is held for a lobby's resumable seats.
pub fn resume_key(hex: &str) -> String {
    format!("lr:resume:{{{hex}}}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// How many queued publishes go into one pipeline at most.
const PUBLISH_BATCH: usize = 1024;
/// The most bytes of one connection's game messages that may wait for Redis
/// (queued, or sent and not answered yet); past it the connection's next
/// message is refused with `unavailable`. One message always goes.
const CONNECTION_WAITING_BYTES: usize = 256 * 1024;
/// The most bytes of all of this node's game messages that may wait for
/// Redis; past it every next message is refused with `unavailable`.
const NODE_WAITING_BYTES: usize = 16 * 1024 * 1024;
/// A game message that has not reached Redis this long after the relay took
/// it is dropped, and its sender told (`unavailable`): never delivered late.
/// Checked before it is sent, and by `relay.lua` when Redis runs it (on
/// Redis's clock, which each reply of `relay.lua` tells).
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// What a waiting message costs against the bounds beyond its bytes.
const WAITING_OVERHEAD: usize = 128;
/// Room in the publish queue; a full queue slows the senders down.
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Longest wait for a Redis command before answering `unavailable`.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest wait for a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between two attempts to reconnect the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, or a cluster's `redis+cluster://` seeds.
    pub url: String,
    /// PEM CA certificate(s) for a `rediss://` URL (else the system's).
    pub ca_cert: Option<Vec<u8>>,
    /// A node whose heartbeat is older than this is presumed dead.
    pub node_timeout: Duration,
    pub lobby_capacity: u8,
}

/// Lobbies in Redis.
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The ordered path of every publish of this node.
    publisher: mpsc::Sender<PublishOp>,
    /// Subscribe/unsubscribe handle of the current pub/sub connection; `None`
    /// while it is being (re-)established.
    sink: watch::Receiver<Option<Sink>>,
    /// Stops the background tasks when the store is dropped.
    stop: CancellationToken,
}

/// How the store reaches Redis (one per process: the variants' sizes do not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Clients {
    /// Commands and scripts, and pub/sub (RESP3: its messages come as
    /// pushes, see [`Deliver`]).
    Single {
        commands: redis::Client,
        pubsub: redis::Client,
    },
    /// Commands and scripts (the cluster client routes them); sharded
    /// pub/sub has connections of its own (`redis/sharded.rs`), opened from
    /// the seeds' settings.
    Cluster {
        commands: ClusterClient,
        seeds: Vec<String>,
    },
}

/// Entries of `lr:away` to add (with their scores) and to remove.
type AwayChanges = (Vec<(String, i64)>, Vec<String>);

/// What the store's background tasks share with it.
struct Shared {
    clients: Clients,
    /// Commands and scripts; `None` until a cluster connection is up. The
    /// single-Redis one is replaced when it stops answering (a dead peer is
    /// otherwise only noticed after the OS's TCP timeout); a cluster
    /// connection repairs itself.
    conn: RwLock<Option<Conn>>,
    identity: Arc<Identity>,
    hub: Arc<Hub>,
    settings: RedisSettings,
    scripts: Scripts,
    /// The last heartbeat was written.
    commands_ok: AtomicBool,
    /// When the heartbeat last came back after failing: the other nodes'
    /// heartbeats may have expired meanwhile (a Redis failover takes longer
    /// than --node-timeout), so this node reaps nobody until they had the
    /// time to beat again.
    heartbeat_back_at: Mutex<Option<Instant>>,
    started: Instant,
    /// The pub/sub connection is up and subscribed.
    pubsub_ok: AtomicBool,
    /// Wakes the heartbeat task to re-register this node's seats (the
    /// pub/sub connection came back: Redis may have restarted).
    resync: Notify,
    /// Leaves that failed (Redis away) and are being retried, per lobby: the
    /// lobby stays in the node's index meanwhile, so that the seat is reaped
    /// should the node die before the retry succeeds.
    pending_leaves: Mutex<HashMap<LobbyId, usize>>,
    /// Changes to `lr:away` that could not be applied yet (entries to add
    /// with their scores, entries to remove).
    pending_away: Mutex<AwayChanges>,
    /// In a cluster, the publisher's lanes (one per slot), to which the
    /// sessions hand their publishes themselves.
    lanes: Mutex<Lanes>,
    /// Bytes of game messages waiting for Redis (see [`Claim`]).
    waiting: Arc<AtomicUsize>,
    /// With one Redis: a batch of publishes went unanswered and Redis has
    /// not answered since. Game messages are then refused at once when
    /// their bounds are full, instead of waiting for room.
    stalled: AtomicBool,
    /// With one Redis: when the batch of publishes now on its way was sent
    /// (ms since the store started, plus one), 0 when none is.
    batch_out_since: std::sync::atomic::AtomicU64,
    /// Redis's clock, for the deadlines `relay.lua` checks.
    redis_clock: RedisClock,
    stop: CancellationToken,
}

impl Shared {
    /// Milliseconds since the store started (a clock for lanes' progress).
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_cluster(&self) -> bool {
        matches!(self.clients, Clients::Cluster { .. })
    }

    /// Whether Redis looks frozen or gone to the publisher: a batch went
    /// unanswered, or the one on its way has been for [`STALL_AFTER`].
    /// Senders then get `unavailable` at once rather than wait for room: a
    /// session that waits stops reading, and what its client sends
    /// meanwhile would be relayed late.
    fn is_stalled(&self) -> bool {
        if self.stalled.load(Ordering::Relaxed) {
            return true;
        }
        let out = self.batch_out_since.load(Ordering::Relaxed);
        out != 0 && self.elapsed_ms() + 1 >= out + STALL_AFTER.as_millis() as u64
    }
}

/// A batch of publishes unanswered this long means Redis is not keeping up
/// (a healthy one answers in a millisecond or two).
const STALL_AFTER: Duration = Duration::from_millis(250);

struct Scripts {
    gcra: redis::Script,
    heartbeat: redis::Script,
    join: redis::Script,
    leave: redis::Script,
    reap: redis::Script,
    claim: redis::Script,
    /// Publishes a node's game messages, each if its sender still holds its
    /// seat (run by hash from the publisher's pipelines).
    relay: redis::Script,
    away: redis::Script,
    resume: redis::Script,
    expire: redis::Script,
    /// Leases the held seats that are due to the node releasing them.
    due: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

enum PublishOp {
    Publish {
        /// The sender's node key: its messages go out only while its seat
        /// is still held by a member of that incarnation (`relay.lua`).
        node_key: Arc<str>,
        channel: String,
        payload: Vec<u8>,
        /// Its place in the bounds of what waits for Redis, and its sender.
        claim: Claim,
    },
    /// Acknowledged once every publish to `lobby` queued before it has been
    /// sent (with one Redis: every publish queued before it).
    Barrier {
        lobby: LobbyId,
        ack: oneshot::Sender<()>,
    },
}

/// A game message's share of the bytes that may wait for Redis (its
/// connection's and the node's), from when the relay took it until it is
/// sent and answered, or dropped: released when the claim is dropped.
struct Claim {
    connection: crate::outbox::Waiting,
    node: Arc<AtomicUsize>,
    bytes: usize,
    /// When the relay took the message.
    since: Instant,
}

impl Claim {
    /// Claims room for `payload_len` bytes of `sender`'s message, or `None`
    /// if its connection or the node has too much waiting already.
    fn take(node: &Arc<AtomicUsize>, sender: &Outbox, payload_len: usize) -> Option<Claim> {
        let bytes = payload_len + WAITING_OVERHEAD;
        node.fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
            (waiting == 0 || waiting + bytes <= NODE_WAITING_BYTES).then_some(waiting + bytes)
        })
        .ok()?;
        let Some(connection) = sender.reserve_waiting(bytes, CONNECTION_WAITING_BYTES) else {
            node.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        };
        Some(Claim {
            connection,
            node: node.clone(),
            bytes,
            since: Instant::now(),
        })
    }

    /// Whether the message waited too long to be sent at all.
    fn is_stale(&self) -> bool {
        self.since.elapsed() > MAX_WAIT
    }

    /// The message was dropped on its way: its sender is told (at most once
    /// a second).
    fn dropped(&self) {
        self.connection.tell_dropped(|| {
            Message::text(crate::protocol::error(
                crate::protocol::ErrorCode::Unavailable,
                "the lobby store did not take some of your messages in time: they were not relayed",
            ))
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.node.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Redis's clock as this node sees it: the difference between Redis's
/// `TIME` and the node's clock, measured from the replies of `relay.lua`
/// that came back quickly, so that a message's deadline can be checked in
/// Redis, when Redis runs it (a message may wait in socket buffers while
/// Redis is frozen, and must not be relayed late when it thaws).
struct RedisClock {
    /// Redis's ms minus the node's, or `i64::MIN` while unknown.
    offset_ms: std::sync::atomic::AtomicI64,
}

/// A reply this slow says little about the clocks.
const CLOCK_SAMPLE_MAX_RTT_MS: u64 = 20;

impl RedisClock {
    fn new() -> Self {
        Self {
            offset_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// A reply sent at `sent_ms` and back at `back_ms` (the node's clock)
    /// said Redis's time was `redis_ms`.
    fn sample(&self, sent_ms: u64, back_ms: u64, redis_ms: i64) {
        if redis_ms <= 0 || back_ms.saturating_sub(sent_ms) > CLOCK_SAMPLE_MAX_RTT_MS {
            return;
        }
        let middle = (sent_ms + back_ms) / 2;
        self.offset_ms
            .store(redis_ms - middle as i64, Ordering::Relaxed);
    }

    /// The deadline on Redis's clock of a message the relay took at
    /// `since`, or 0 (none) while Redis's clock is unknown.
    fn deadline(&self, since: Instant) -> u64 {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return 0;
        }
        let taken_ms = now_ms().saturating_sub(since.elapsed().as_millis() as u64);
        (taken_ms as i64 + MAX_WAIT.as_millis() as i64 + offset).max(1) as u64
    }
}

/// The subscribe/unsubscribe handle of pub/sub: the one connection to a
/// single Redis, or the manager of a cluster's sharded subscriptions.
#[derive(Clone)]
enum Sink {
    Single(MultiplexedConnection),
    Cluster(mpsc::Sender<sharded::Request>),
}

impl Sink {
    async fn subscribe(&mut self, lobby: &LobbyId) -> Result<(), StoreError> {
        match self {
            Sink::Single(conn) => timed(conn.subscribe(channel(&lobby.to_string()))).await,
            Sink::Cluster(manager) => {
                let (reply, answer) = oneshot::channel();
                ask(manager, sharded::Request::Subscribe(*lobby, reply), answer).await
            }
        }
    }

    async fn unsubscribe(&mut self, lobby: &LobbyId) -> Result<(), StoreError> {
        match self {
            Sink::Single(conn) => timed(conn.unsubscribe(channel(&lobby.to_string()))).await,
            Sink::Cluster(manager) => {
                let (reply, answer) = oneshot::channel();
                ask(
                    manager,
                    sharded::Request::Unsubscribe(*lobby, reply),
                    answer,
                )
                .await
            }
        }
    }
}

/// Asks the sharded pub/sub manager and waits for its answer (bounded: it
/// may be busy following a failover).
async fn ask(
    manager: &mpsc::Sender<sharded::Request>,
    request: sharded::Request,
    answer: oneshot::Receiver<Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let asked = async {
        manager
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    };
    match tokio::time::timeout(CONNECT_TIMEOUT + 2 * RESPONSE_TIMEOUT, asked).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unreachable(
            "Redis pub/sub did not answer in time",
        )),
    }
}

/// A Redis Cluster client for `seeds`, trusting `ca_cert` (PEM) for
/// `rediss://` seeds when given.
pub fn open_cluster_client(
    seeds: &[String],
    ca_cert: Option<Vec<u8>>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        // A failover or slot move answers MOVED or refuses connections for a
        // while: retry briefly, the store's own timeouts bound the wait.
        .retries(4)
        .min_retry_wait(10)
        .max_retry_wait(250);
    if let Some(root_cert) = ca_cert
        && seeds.iter().any(|seed| seed.starts_with("rediss://"))
    {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    builder.build()
}

/// A Redis client for `url`, trusting `ca_cert` (PEM) for `rediss://` when
/// given.
pub fn open_client(url: &str, ca_cert: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
    match ca_cert {
        None => redis::Client::open(url),
        Some(root_cert) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
    }
}

/// As [`open_client`], speaking RESP3 (for pub/sub on a connection that
/// pushes its messages).
fn open_resp3_client(url: &str, ca_cert: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match ca_cert {
        None => redis::Client::open(info),
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
    }
}

fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

impl Shared {
    /// The command connection, waiting a moment for a cluster connection
    /// that is being set up (a node that just started).
    async fn conn_when_up(&self) -> Result<Conn, StoreError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.conn() {
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                result => return result,
            }
        }
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Unreachable(
                "not connected to the Redis Cluster yet",
            ))
    }

    /// Runs commands that may touch keys in different slots: one pipeline
    /// with one Redis, concurrent commands (each routed to its shard) in a
    /// cluster.
    async fn exec_all(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<redis::Value>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn()?;
        if self.is_cluster() {
            let replies = join_all(cmds.iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { timed(cmd.query_async::<redis::Value>(&mut conn)).await }
            }))
            .await;
            replies.into_iter().collect()
        } else {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let mut conn = conn;
            timed(pipe.query_async(&mut conn)).await
        }
    }

    /// Runs a held script (see [`held_script`]) and applies the changes to
    /// `lr:away` it asks for (best effort: see below).
    async fn invoke_held<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let reply: HeldReply = timed(invocation.invoke_async(&mut conn)).await?;
        // The script's change stands whatever happens here: failing the call
        // now would report a join or leave that happened as failed. What
        // could not be applied is retried by the reaper's loop (and should
        // this node die first, a reaper lists its held seats again).
        self.apply_away_or_later(reply.away_add, reply.away_del)
            .await;
        redis::from_redis_value(reply.result)
            .map_err(|e| StoreError::Protocol(format!("a lobby script answered {e}")))
    }

    /// [`Shared::apply_away`], keeping what fails for [`Shared::retry_away`].
    async fn apply_away_or_later(&self, add: Vec<(String, i64)>, del: Vec<String>) {
        if add.is_empty() && del.is_empty() {
            return;
        }
        if let Err(e) = self.apply_away(add.clone(), del.clone()).await {
            tracing::warn!(error = %e, "cannot update the index of held seats (lr:away); will retry");
            let mut pending = self.pending_away.lock().unwrap_or_else(|e| e.into_inner());
            pending.0.extend(add);
            pending.1.extend(del);
        }
    }

    /// Applies the `lr:away` changes that failed before.
    async fn retry_away(&self) {
        let (add, del) =
            std::mem::take(&mut *self.pending_away.lock().unwrap_or_else(|e| e.into_inner()));
        self.apply_away_or_later(add, del).await;
    }

    /// Adds and removes entries of `lr:away`, the held seats by due time.
    async fn apply_away(
        &self,
        add: Vec<(String, i64)>,
        del: Vec<String>,
    ) -> Result<(), StoreError> {
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !del.is_empty() {
            pipe.cmd("ZREM").arg(AWAY_KEY).arg(&del).ignore();
        }
        if !add.is_empty() {
            let cmd = pipe.cmd("ZADD").arg(AWAY_KEY);
            for (entry, score) in &add {
                cmd.arg(*score).arg(entry);
            }
            cmd.ignore();
        }
        let mut conn = self.conn()?;
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Adds lobbies to this node's index, before it takes seats in them: so
    /// that its members are found should it die.
    async fn index_lobbies(&self, hexes: &[&str]) -> Result<(), StoreError> {
        if hexes.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        timed(
            redis::cmd("SADD")
                .arg(node_lobbies_key(&self.identity.key()))
                .arg(hexes)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Runs `leave.lua` once.
    async fn leave_once(&self, hex: &str, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        let _remaining: i64 = self
            .invoke_held(
                self.scripts
                    .leave
                    .key(lobby_key(hex))
                    .arg(seat)
                    .arg(&**member)
                    .arg(channel(hex)),
            )
            .await?;
        Ok(())
    }

    /// Retries a failed leave in the background until it goes through (or
    /// ten minutes have passed: by then the seat has been reaped or
    /// re-registered by someone else). A seat must not stay taken by a
    /// player who is gone.
    fn retry_leave(self: &Arc<Self>, lobby: LobbyId, member: MemberId, seat: u8) {
        *self
            .pending_leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(lobby)
            .or_default() += 1;
        let shared = self.clone();
        let retry = async move {
            let hex = lobby.to_string();
            let mut backoff = Duration::from_millis(250);
            let give_up = tokio::time::Instant::now() + Duration::from_secs(600);
            while tokio::time::Instant::now() < give_up {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if shared.leave_once(&hex, &member, seat).await.is_ok() {
                    tracing::info!(lobby = &hex[..8], seat, "delayed leave went through");
                    break;
                }
            }
            let forget = {
                let mut pending = shared
                    .pending_leaves
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(count) = pending.get_mut(&lobby) {
                    *count -= 1;
                    if *count == 0 {
                        pending.remove(&lobby);
                    }
                }
                !pending.contains_key(&lobby) && shared.hub.get(&lobby).is_none()
            };
            if forget {
                shared.drop_from_index(&hex).await;
            }
        };
        tokio::spawn(
            self.stop
                .clone()
                .run_until_cancelled_owned(retry)
                .in_current_span(),
        );
    }

    /// Removes a lobby from this node's index (best effort: a stale entry
    /// only costs a reaper a look at an empty lobby).
    async fn drop_from_index(&self, hex: &str) {
        let index = node_lobbies_key(&self.identity.key());
        let Ok(mut conn) = self.conn() else { return };
        let _ = timed(
            redis::cmd("SREM")
                .arg(index)
                .arg(hex)
                .query_async::<()>(&mut conn),
        )
        .await;
    }

    /// Drops the command connection to a single Redis and starts a fresh one
    /// (a cluster connection repairs itself).
    fn reconnect(&self) {
        if let Clients::Single {
            commands: client, ..
        } = &self.clients
        {
            match connection_manager(client) {
                Ok(fresh) => {
                    *self.conn.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(Conn::Single(fresh));
                }
                Err(e) => tracing::warn!(error = %e, "cannot create a Redis connection"),
            }
        }
    }
}

impl RedisStore {
    /// Starts the store's connections and background tasks. Does not wait
    /// for Redis: a node whose Redis is down starts anyway, reports not
    /// ready, and answers `unavailable` until Redis is back.
    pub fn start(
        settings: RedisSettings,
        hub: Arc<Hub>,
        identity: Arc<Identity>,
    ) -> Result<Self, StoreError> {
        let target = Target::parse(&settings.url).map_err(StoreError::Protocol)?;
        let (sink_slot, sink) = watch::channel(None);
        let (clients, conn, publish) = match &target {
            Target::Single(url) => {
                let client = open_client(url, settings.ca_cert.clone())?;
                let conn = Conn::Single(connection_manager(&client)?);
                let pubsub = open_resp3_client(url, settings.ca_cert.clone())?;
                let clients = Clients::Single {
                    commands: client,
                    pubsub,
                };
                (clients, Some(conn), "PUBLISH")
            }
            Target::Cluster(seeds) => {
                let clients = Clients::Cluster {
                    commands: open_cluster_client(seeds, settings.ca_cert.clone())?,
                    seeds: seeds.clone(),
                };
                (clients, None, "SPUBLISH")
            }
        };
        let shared = Arc::new(Shared {
            conn: RwLock::new(conn),
            clients,
            identity,
            hub,
            settings,
            scripts: Scripts {
                gcra: redis::Script::new(include_str!("gcra.lua")),
                heartbeat: redis::Script::new(include_str!("heartbeat.lua")),
                join: held_script(include_str!("join.lua"), publish),
                leave: held_script(include_str!("leave.lua"), publish),
                reap: held_script(include_str!("reap.lua"), publish),
                claim: redis::Script::new(include_str!("claim.lua")),
                relay: held_script(include_str!("relay.lua"), publish),
                away: held_script(include_str!("away.lua"), publish),
                resume: held_script(include_str!("resume.lua"), publish),
                expire: held_script(include_str!("expire.lua"), publish),
                due: redis::Script::new(include_str!("due.lua")),
            },
            commands_ok: AtomicBool::new(false),
            heartbeat_back_at: Mutex::new(None),
            started: Instant::now(),
            pubsub_ok: AtomicBool::new(false),
            resync: Notify::new(),
            pending_leaves: Mutex::default(),
            pending_away: Mutex::default(),
            lanes: Mutex::default(),
            waiting: Arc::new(AtomicUsize::new(0)),
            stalled: AtomicBool::new(false),
            batch_out_since: std::sync::atomic::AtomicU64::new(0),
            redis_clock: RedisClock::new(),
            stop: CancellationToken::new(),
        });
        let stop = shared.stop.clone();
        let (publisher, queue) = mpsc::channel(PUBLISH_QUEUE);
        let subscriber = if let Clients::Cluster { seeds, .. } = &shared.clients {
            let cluster = {
                let shared = shared.clone();
                let seeds = seeds.clone();
                async move {
                    connect_cluster(&shared).await;
                    sharded::run(shared, seeds, sink_slot).await;
                }
            };
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(cluster)
                    .in_current_span(),
            )
        } else {
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(run_subscriber(shared.clone(), sink_slot))
                    .in_current_span(),
            )
        };
        let tasks = [
            subscriber,
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(run_publisher(shared.clone(), queue))
                    .in_current_span(),
            ),
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(liveness::run_heartbeat(shared.clone()))
                    .in_current_span(),
            ),
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(liveness::run_reaper(shared.clone()))
                    .in_current_span(),
            ),
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(expiry::run_expirer(shared.clone()))
                    .in_current_span(),
            ),
        ];
        drop(tasks);
        Ok(Self {
            shared,
            publisher,
            sink,
            stop,
        })
    }

    /// The current pub/sub connection, waiting a moment for it if it is
    /// being (re-)established.
    async fn sink(&self) -> Result<Sink, StoreError> {
        let mut sink = self.sink.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, sink.wait_for(Option::is_some)).await {
            Ok(Ok(current)) => Ok(current.clone().expect("waited for Some")),
            _ => Err(StoreError::Protocol(
                "not connected to Redis pub/sub".into(),
            )),
        }
    }

    async fn enqueue(&self, op: PublishOp) -> Result<(), StoreError> {
        let (queue, op) = if self.shared.is_cluster() {
            match Lanes::route(&self.shared, op) {
                Routed::Done => return Ok(()),
                Routed::Wait(queue, op) => (queue, op),
            }
        } else {
            (self.publisher.clone(), op)
        };
        queue.send(op).await.map_err(|_| StoreError::Closed)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs a Redis command with the store's response timeout.
async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Unreachable("Redis did not answer in time")),
    }
}

impl LobbyStore for RedisStore {
    async fn subscribe(&self, lobby: &LobbyId) -> Result<(), StoreError> {
        self.sink().await?.subscribe(lobby).await
    }

    async fn unsubscribe(&self, lobby: &LobbyId) -> Result<(), StoreError> {
        let hex = lobby.to_string();
        // A leave still being retried keeps the lobby in the index, so that
        // the seat is reaped should this node die first.
        let leave_pending = self
            .shared
            .pending_leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(lobby);
        if !leave_pending {
            self.shared.drop_from_index(&hex).await;
        }
        self.sink().await?.unsubscribe(lobby).await
    }

    async fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
        resume: Option<&ResumeSetup>,
    ) -> Result<JoinOutcome, StoreError> {
        let hex = lobby.to_string();
        let started = Instant::now();
        let joined = async {
            self.shared.index_lobbies(&[&hex]).await?;
            self.shared
                .invoke_held::<(i64, i64)>(
                    self.shared
                        .scripts
                        .join
                        .key(lobby_key(&hex))
                        .arg(&**member)
                        .arg(capacity)
                        .arg(channel(&hex))
                        .arg(&hex)
                        .arg(identity::user_of(member).unwrap_or(""))
                        .arg(resume.map_or("", |r| r.secret_hash.as_str()))
                        .arg(resume.map_or(0, |r| r.max_messages))
                        .arg(resume.map_or(0, |r| r.max_bytes))
                        .arg(resume.map_or(0, |r| r.grace.as_millis() as u64)),
                )
                .await
        };
        let result = joined.await;
        let metrics = metrics::get();
        metrics::observe(&metrics.redis_join, started.elapsed());
        if result.is_err() {
            metrics.redis_errors_join.increment(1);
        }
        let (seat, players) = result?;
        match (u8::try_from(seat), u8::try_from(players)) {
            (Ok(0), _) => Ok(JoinOutcome::Full),
            _ if seat == -1 => Ok(JoinOutcome::DuplicateUser),
            (Ok(seat), Ok(players)) => Ok(JoinOutcome::Seated { seat, players }),
            _ => Err(StoreError::Protocol(format!(
                "join.lua returned seat {seat}, players {players}"
            ))),
        }
    }

    async fn leave(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        // The member's earlier messages must reach the others before its
        // `playerLeft` does: wait until the publisher has sent them.
        let (ack, done) = oneshot::channel();
        self.enqueue(PublishOp::Barrier { lobby: *lobby, ack })
            .await?;
        done.await.map_err(|_| StoreError::Closed)?;
        let result = self
            .shared
            .leave_once(&lobby.to_string(), member, seat)
            .await;
        if result.is_err() {
            self.shared.retry_leave(*lobby, member.clone(), seat);
        }
        result
    }

    async fn admit_join(&self, who: RateKey, limit: JoinLimit) -> Result<bool, StoreError> {
        let key = match who {
            RateKey::Address(client) => join_rate_key(client),
            RateKey::User(user) => user_join_rate_key(&user),
        };
        let mut conn = self.shared.conn_when_up().await?;
        let admitted: i64 = timed(
            self.shared
                .scripts
                .gcra
                .key(key)
                .arg(limit.interval().as_micros() as u64)
                .arg(limit.burst.get())
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(admitted == 1)
    }

    async fn cluster_view(&self) -> Result<Option<crate::admin::ClusterView>, StoreError> {
        view::cluster_view(&self.shared).await.map(Some)
    }

    async fn away(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<bool, StoreError> {
        // As for a leave: the member's earlier messages go out first.
        let (ack, done) = oneshot::channel();
        self.enqueue(PublishOp::Barrier { lobby: *lobby, ack })
            .await?;
        done.await.map_err(|_| StoreError::Closed)?;
        let hex = lobby.to_string();
        let held: i64 = self
            .shared
            .invoke_held(
                self.shared
                    .scripts
                    .away
                    .key(lobby_key(&hex))
                    .arg(seat)
                    .arg(&**member)
                    .arg(channel(&hex))
                    .arg(now_ms()),
            )
            .await?;
        Ok(held != 0)
    }

    async fn resume(
        &self,
        lobby: &LobbyId,
        seat: u8,
        secret_hash: &str,
        new_secret_hash: &str,
        received: u64,
        member: &MemberId,
    ) -> Result<ResumeOutcome, StoreError> {
        let hex = lobby.to_string();
        self.shared.index_lobbies(&[&hex]).await?;
        let reply: Vec<redis::Value> = self
            .shared
            .invoke_held(
                self.shared
                    .scripts
                    .resume
                    .key(lobby_key(&hex))
                    .arg(seat)
                    .arg(secret_hash)
                    .arg(new_secret_hash)
                    .arg(received)
                    .arg(&**member)
                    .arg(channel(&hex))
                    .arg(&hex)
                    .arg(now_ms()),
            )
            .await?;
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(i)) => Some(*i),
            _ => None,
        };
        match int(reply.first()) {
            Some(1) => {}
            Some(-2) => {
                return Ok(ResumeOutcome::Refused(
                    "too much was missed: the seat is being released",
                ));
            }
            Some(-3) => {
                return Ok(ResumeOutcome::Refused(
                    "`received` is not a count of this seat's deliveries, or what followed it is no longer held",
                ));
            }
            _ => {
                return Ok(ResumeOutcome::Refused(
                    "the token is wrong, already used or expired",
                ));
            }
        }
        let bad = || StoreError::Protocol("resume.lua answered something unexpected".into());
        let players = int(reply.get(1)).ok_or_else(bad)? as u8;
        let sent = int(reply.get(2)).ok_or_else(bad)?.max(0) as u64;
        let record: String = match reply.get(3) {
            Some(v) => redis::from_redis_value(v.clone()).map_err(|_| bad())?,
            None => return Err(bad()),
        };
        let mut missed = Vec::with_capacity(reply.len().saturating_sub(4));
        for entry in &reply[4..] {
            let bytes: Vec<u8> = redis::from_redis_value(entry.clone()).map_err(|_| bad())?;
            missed.push(envelope::decode(&bytes).ok_or_else(bad)?);
        }
        Ok(ResumeOutcome::Resumed {
            players,
            sent,
            member: record.into(),
            missed,
        })
    }

    fn is_healthy(&self) -> bool {
        self.shared.commands_ok.load(Ordering::Relaxed)
            && self.shared.pubsub_ok.load(Ordering::Relaxed)
    }

    async fn goodbye(&self) {
        liveness::goodbye(&self.shared).await;
    }

    fn publish(
        &self,
        lobby: &Arc<LocalLobby>,
        member: &MemberId,
        from_seat: u8,
        message: Message,
        sender: &Outbox,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        // Queued at once, not when first polled (the caller awaits at once
        // anyway): the future returned is then a few bytes, not a copy of
        // the message and the channel's send state, and every session holds
        // room for it.
        let queued = match envelope::encode_relay(from_seat, &message) {
            None => Queued::Done(Ok(())),
            Some(payload) => {
                let node_key: Arc<str> = identity::node_key_of(member).into();
                let channel = channel(&lobby.hex);
                match Claim::take(&self.shared.waiting, sender, payload.len()) {
                    Some(claim) => queue_op(
                        &self.shared,
                        &self.publisher,
                        PublishOp::Publish {
                            node_key,
                            channel,
                            payload,
                            claim,
                        },
                    ),
                    None if self.shared.is_stalled() => {
                        metrics::get().dropped_backlog.increment(1);
                        Queued::Done(Err(StoreError::Backlog))
                    }
                    // Redis is answering, only busy: the sender waits for
                    // room (and reads nothing meanwhile), as with a full
                    // queue, for at most MAX_WAIT.
                    None => Queued::Waiting(Box::pin(claim_later(
                        self.shared.clone(),
                        self.publisher.clone(),
                        sender.clone(),
                        (node_key, channel, payload),
                    ))),
                }
            }
        };
        async move {
            match queued {
                Queued::Done(result) => result,
                Queued::Waiting(send) => send.await,
            }
        }
    }
}

/// Hands a publish to the publisher (or its lane in a cluster).
fn queue_op(shared: &Arc<Shared>, publisher: &mpsc::Sender<PublishOp>, op: PublishOp) -> Queued {
    if shared.is_cluster() {
        // Straight to the lobby's lane (no router in between).
        return match Lanes::route(shared, op) {
            Routed::Done => Queued::Done(Ok(())),
            Routed::Wait(queue, op) => Queued::Waiting(Box::pin(async move {
                queue.send(op).await.map_err(|_| StoreError::Closed)
            })),
        };
    }
    match publisher.try_send(op) {
        Ok(()) => Queued::Done(Ok(())),
        Err(mpsc::error::TrySendError::Full(op)) => {
            let publisher = publisher.clone();
            Queued::Waiting(Box::pin(async move {
                publisher.send(op).await.map_err(|_| StoreError::Closed)
            }))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Queued::Done(Err(StoreError::Closed)),
    }
}

/// Waits for room among what may wait for Redis (see [`Claim`]), then
/// queues the publish; refuses it if there is none within [`MAX_WAIT`], or
/// as soon as Redis stops answering.
async fn claim_later(
    shared: Arc<Shared>,
    publisher: mpsc::Sender<PublishOp>,
    sender: Outbox,
    (node_key, channel, payload): (Arc<str>, String, Vec<u8>),
) -> Result<(), StoreError> {
    let deadline = Instant::now() + MAX_WAIT;
    let claim = loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Some(claim) = Claim::take(&shared.waiting, &sender, payload.len()) {
            break claim;
        }
        if Instant::now() >= deadline || shared.is_stalled() {
            metrics::get().dropped_backlog.increment(1);
            return Err(StoreError::Backlog);
        }
    };
    let op = PublishOp::Publish {
        node_key,
        channel,
        payload,
        claim,
    };
    match queue_op(&shared, &publisher, op) {
        Queued::Done(result) => result,
        Queued::Waiting(send) => send.await,
    }
}

/// A publish handed to the publisher task (or its lane), or waiting for room
/// in its queue (boxed: rare).
enum Queued {
    Done(Result<(), StoreError>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>),
}

/// The messages of one batch that go out in one `relay.lua` run: sent by
/// one node key (incarnation), and in a cluster to lobbies of one slot.
struct RelayRun {
    node_key: Arc<str>,
    /// A lobby key of the run, which routes it in a cluster.
    lobby_key: String,
    messages: Vec<(String, Vec<u8>)>,
    /// The messages' claims, in the same order: released once the run is
    /// answered (or dropped).
    claims: Vec<Claim>,
}

impl RelayRun {
    /// Adds a publish to the run of its node key (a batch has a handful).
    fn add(
        runs: &mut Vec<RelayRun>,
        node_key: Arc<str>,
        channel: String,
        payload: Vec<u8>,
        claim: Claim,
    ) {
        let run = match runs.iter().rposition(|run| run.node_key == node_key) {
            Some(i) => &mut runs[i],
            None => {
                runs.push(RelayRun {
                    node_key,
                    lobby_key: lobby_key_of_channel(&channel),
                    messages: Vec::new(),
                    claims: Vec::new(),
                });
                runs.last_mut().expect("just pushed")
            }
        };
        run.messages.push((channel, payload));
        run.claims.push(claim);
    }

    /// When the run's oldest message was taken by the relay.
    fn since(&self) -> Instant {
        self.claims
            .iter()
            .map(|claim| claim.since)
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// The run's messages were not relayed: their senders are told.
    fn dropped(&self) {
        for claim in &self.claims {
            claim.dropped();
        }
    }
}

/// Sends queued publishes in batches: while one batch is on its way, the
/// next one accumulates.
///
/// A batch is split into runs ([`RelayRun`]) of one node key; each run is
/// one `relay.lua`, which publishes every message whose sender still holds
/// its seat. With one Redis the runs of a batch go as one pipeline of
/// `EVALSHA`s (reloaded once if Redis forgot the script), and a batch is out
/// before the next one goes. In a cluster the sessions hand each publish to
/// its slot's lane ([`Lanes`]) themselves, and the lane batches the same way
/// for its slot alone (this task then has nothing to do). A lobby's messages
/// are always in one slot, so they keep their order either way.
async fn run_publisher(shared: Arc<Shared>, queue: mpsc::Receiver<PublishOp>) {
    if !shared.is_cluster() {
        run_batches(shared, queue, None).await;
    }
}

/// Sends what `queue` holds in batches, the next batch gathering while one
/// is out: the whole node's publishes with one Redis, one slot's in a
/// cluster (a lane, which reports its `progress`). Acknowledges the
/// barriers of a batch once its runs are sent.
///
/// What waits is bounded ([`Claim`]) and never sent late: a message that
/// waited longer than [`MAX_WAIT`] is dropped here, and `relay.lua` drops
/// one that reaches Redis past it. Once a batch went unanswered (Redis
/// frozen or gone), the next one goes only after a `PING` came back: until
/// then batches are dropped rather than piled up in the connection's
/// buffers.
async fn run_batches(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<PublishOp>,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
) {
    let mut ops = Vec::with_capacity(PUBLISH_BATCH);
    let mut runs: Vec<RelayRun> = Vec::new();
    let mut acks = Vec::new();
    let mut stalled = false;
    let mut report = DropReport::default();
    while queue.recv_many(&mut ops, PUBLISH_BATCH).await > 0 {
        for op in ops.drain(..) {
            match op {
                PublishOp::Publish { claim, .. } if claim.is_stale() => {
                    claim.dropped();
                    metrics::get().dropped_stale.increment(1);
                    report.stale += 1;
                }
                PublishOp::Publish {
                    node_key,
                    channel,
                    payload,
                    claim,
                } => RelayRun::add(&mut runs, node_key, channel, payload, claim),
                PublishOp::Barrier { ack, .. } => acks.push(ack),
            }
        }
        if stalled && !runs.is_empty() {
            stalled = !answers_ping(&shared).await;
            if stalled {
                for run in &runs {
                    run.dropped();
                    let unsent = run.messages.len() as u64;
                    metrics::get().dropped_stale.increment(unsent);
                    report.unsent += unsent;
                }
                runs.clear();
            }
        }
        if !runs.is_empty() {
            let started = Instant::now();
            if shared.is_cluster() {
                for run in &runs {
                    let sent = relay_run_cluster(&shared, run).await;
                    stalled |= is_timeout(&sent);
                    settle(&shared, std::iter::once((run, sent)), &mut report).await;
                }
            } else {
                shared
                    .batch_out_since
                    .store(shared.elapsed_ms() + 1, Ordering::Relaxed);
                let sent = relay_runs_single(&shared, &runs).await;
                shared.batch_out_since.store(0, Ordering::Relaxed);
                stalled |= sent.iter().any(is_timeout);
                settle(&shared, runs.iter().zip(sent), &mut report).await;
            }
            metrics::observe(&metrics::get().redis_publish, started.elapsed());
            runs.clear();
        }
        if !shared.is_cluster() {
            // (A cluster's lanes stall one slot at a time: see LANE_STUCK.)
            shared.stalled.store(stalled, Ordering::Relaxed);
        }
        report.log_now_and_then();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if let Some(progress) = &progress {
            progress.store(shared.elapsed_ms(), Ordering::Relaxed);
        }
    }
}

/// Whether a run went unanswered in time (Redis frozen, or the connection
/// dead).
fn is_timeout(sent: &Result<HeldReply, StoreError>) -> bool {
    matches!(sent, Err(StoreError::Unreachable(_)))
}

/// Whether Redis answers again after a run went unanswered (the `PING` goes
/// behind whatever the connection still holds).
async fn answers_ping(shared: &Shared) -> bool {
    let Ok(mut conn) = shared.conn() else {
        return false;
    };
    timed(redis::cmd("PING").query_async::<()>(&mut conn))
        .await
        .is_ok()
}

/// Game messages the publisher dropped, for a log line at most once a second
/// (the metric counts them as they go).
#[derive(Default)]
struct DropReport {
    /// Waited longer than [`MAX_WAIT`] before they could be sent.
    stale: u64,
    /// Not sent: Redis had not answered the previous batch.
    unsent: u64,
    /// Sent, but Redis did not answer, or ran them past their deadline.
    lost: u64,
    reported: Option<Instant>,
}

impl DropReport {
    fn log_now_and_then(&mut self) {
        let total = self.stale + self.unsent + self.lost;
        if total == 0
            || self
                .reported
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            waited_too_long = self.stale,
            not_sent = self.unsent,
            lost = self.lost,
            max_wait_ms = MAX_WAIT.as_millis() as u64,
            "Redis did not take game messages in time: they were dropped, and their senders told"
        );
        *self = DropReport {
            reported: Some(Instant::now()),
            ..DropReport::default()
        };
    }
}

/// Logs what the runs' replies say, tells the senders of what was not
/// relayed, and lists the held seats the runs overflowed.
async fn settle<'a>(
    shared: &Shared,
    results: impl Iterator<Item = (&'a RelayRun, Result<HeldReply, StoreError>)>,
    report: &mut DropReport,
) {
    let metrics = metrics::get();
    let mut away = Vec::new();
    for (run, result) in results {
        match result {
            Ok(reply) => {
                let (dropped, late) = relay_counts(reply.result);
                if dropped > 0 {
                    tracing::warn!(
                        node_key = &*run.node_key,
                        dropped,
                        "messages of members who no longer hold their seats were not relayed"
                    );
                }
                if late > 0 {
                    // Redis ran the run past its deadline (it was frozen
                    // meanwhile): nothing of it was relayed.
                    run.dropped();
                    report.lost += late as u64;
                    metrics.dropped_stale.increment(late as u64);
                }
                away.extend(reply.away_add);
            }
            Err(e) => {
                metrics.redis_errors_publish.increment(1);
                // Pub/sub is at-most-once: what could not be published
                // is lost, as it would be for a subscriber that was away.
                run.dropped();
                report.lost += run.messages.len() as u64;
                tracing::debug!(error = %e, lost = run.messages.len(), "publishing to Redis failed");
            }
        }
    }
    shared.apply_away_or_later(away, Vec::new()).await;
}

/// Redis's clock (ms since the epoch) when it ran a `relay.lua` run.
fn redis_time_of(reply: &HeldReply) -> i64 {
    match &reply.result {
        redis::Value::Array(counts) => match counts.get(2) {
            Some(redis::Value::Int(ms)) => *ms,
            _ => 0,
        },
        _ => 0,
    }
}

/// `relay.lua`'s answer: messages dropped for senders without their seat,
/// and messages dropped for arriving past their deadline.
fn relay_counts(result: redis::Value) -> (i64, i64) {
    let counts: Vec<i64> = redis::from_redis_value(result).unwrap_or_default();
    (
        counts.first().copied().unwrap_or_default(),
        counts.get(1).copied().unwrap_or_default(),
    )
}

/// Room in one slot's lane, in publishes.
const LANE_QUEUE: usize = 4096;

/// A lane that completed nothing for this long is stuck (its shard does not
/// answer: a master failing over, for seconds, up to its
/// cluster-node-timeout): new messages to its lobbies are dropped rather than
/// waited for, as pub/sub drops what a shard cannot take (a game message
/// seconds late is of no use anyway). A lane that is only busy makes its
/// senders wait, which slows them down, as with one Redis.
const LANE_STUCK: Duration = Duration::from_millis(500);

/// The publisher's lanes in a cluster: one task per slot with lobbies of
/// this node, each with its own queue, to which the sessions hand their
/// publishes. A lane sends what it has queued as
/// one `relay.lua` run (per node key), waits for the answer, and sends what
/// queued meanwhile, so a lobby's messages keep their order and batch up
/// when the shard is slow, whatever the other slots are doing: a shard that
/// is failing over delays only its own lobbies.
#[derive(Default)]
struct Lanes {
    lanes: HashMap<u16, Lane>,
    /// When dropped messages were last reported, and how many since.
    reported: Option<Instant>,
    dropped: usize,
}

struct Lane {
    queue: mpsc::Sender<PublishOp>,
    /// When the lane last finished a batch, in ms since the store started.
    progress: Arc<std::sync::atomic::AtomicU64>,
}

/// Where [`Lanes::route`] left a publish.
enum Routed {
    /// Queued, or dropped (its lane is stuck).
    Done,
    /// Its lane is full but moving: send it there, waiting for room.
    Wait(mpsc::Sender<PublishOp>, PublishOp),
}

impl Lanes {
    /// Queues `op` in the lane of its slot (started if there is none yet).
    fn route(shared: &Arc<Shared>, op: PublishOp) -> Routed {
        let mut lanes = shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.queue(shared, op)
    }

    fn queue(&mut self, shared: &Arc<Shared>, op: PublishOp) -> Routed {
        let slot = match &op {
            PublishOp::Publish { channel, .. } => topology::slot_number(channel),
            PublishOp::Barrier { lobby, .. } => topology::slot_number(&channel(&lobby.to_string())),
        };
        let lane = self.lanes.entry(slot).or_insert_with(|| {
            let (queue, ops) = mpsc::channel(LANE_QUEUE);
            let progress = Arc::new(std::sync::atomic::AtomicU64::new(shared.elapsed_ms()));
            tokio::spawn(
                shared
                    .stop
                    .clone()
                    .run_until_cancelled_owned(run_batches(
                        shared.clone(),
                        ops,
                        Some(progress.clone()),
                    ))
                    .in_current_span(),
            );
            Lane { queue, progress }
        });
        let op = match lane.queue.try_send(op) {
            Ok(()) => return Routed::Done,
            Err(mpsc::error::TrySendError::Closed(_)) => return Routed::Done,
            Err(mpsc::error::TrySendError::Full(op)) => op,
        };
        let stuck = shared
            .elapsed_ms()
            .saturating_sub(lane.progress.load(Ordering::Relaxed))
            >= LANE_STUCK.as_millis() as u64;
        match op {
            PublishOp::Barrier { .. } => {
                // Never dropped: acknowledged once the lane gets there.
                let queue = lane.queue.clone();
                tokio::spawn(async move {
                    let _ = queue.send(op).await;
                });
            }
            PublishOp::Publish { .. } if !stuck => return Routed::Wait(lane.queue.clone(), op),
            PublishOp::Publish { claim, .. } => {
                claim.dropped();
                metrics::get().redis_errors_publish.increment(1);
                self.dropped += 1;
                if self
                    .reported
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
                {
                    tracing::warn!(
                        lost = self.dropped,
                        "a Redis Cluster shard does not answer: messages to its lobbies were dropped"
                    );
                    self.reported = Some(Instant::now());
                    self.dropped = 0;
                }
            }
        }
        Routed::Done
    }
}

/// The `relay.lua` command of a run, by script hash.
fn relay_command(shared: &Shared, run: &RelayRun) -> redis::Cmd {
    let mut eval = redis::cmd("EVALSHA");
    eval.arg(shared.scripts.relay.get_hash())
        .arg(1)
        .arg(&run.lobby_key)
        .arg(format!("{}.", run.node_key))
        .arg(shared.redis_clock.deadline(run.since()));
    for (channel, payload) in &run.messages {
        eval.arg(channel).arg(payload);
    }
    eval
}

/// One Redis: every run of the batch in one pipeline.
async fn relay_runs_single(
    shared: &Shared,
    runs: &[RelayRun],
) -> Vec<Result<HeldReply, StoreError>> {
    let mut pipe = redis::pipe();
    for run in runs {
        pipe.add_command(relay_command(shared, run));
    }
    let sent_ms = now_ms();
    let sent = async {
        let mut conn = shared.conn()?;
        let mut sent = timed(pipe.query_async::<Vec<HeldReply>>(&mut conn)).await;
        if let Err(StoreError::Redis(e)) = &sent
            && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        {
            // A restarted Redis forgot the script; nothing of the batch
            // ran: load it and send the batch again.
            let loaded = timed(shared.scripts.relay.prepare_invoke().load_async(&mut conn)).await;
            if loaded.is_ok() {
                sent = timed(pipe.query_async::<Vec<HeldReply>>(&mut conn)).await;
            }
        }
        sent
    };
    match sent.await {
        Ok(replies) => {
            if let Some(first) = replies.first() {
                shared
                    .redis_clock
                    .sample(sent_ms, now_ms(), redis_time_of(first));
            }
            replies.into_iter().map(Ok).collect()
        }
        Err(e) => runs
            .iter()
            .map(|_| Err(StoreError::Protocol(e.to_string())))
            .collect(),
    }
}

/// A cluster: one run to the shard of its slot. A shard that forgot the
/// script (a promoted replica that never saw it) gets it loaded.
async fn relay_run_cluster(shared: &Shared, run: &RelayRun) -> Result<HeldReply, StoreError> {
    let mut conn = shared.conn()?;
    let cmd = relay_command(shared, run);
    let sent_ms = now_ms();
    let reply = timed(cmd.query_async::<HeldReply>(&mut conn)).await;
    if let Ok(reply) = &reply {
        shared
            .redis_clock
            .sample(sent_ms, now_ms(), redis_time_of(reply));
    }
    match reply {
        Err(StoreError::Redis(e))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            // SCRIPT LOAD goes to every master.
            timed(shared.scripts.relay.prepare_invoke().load_async(&mut conn)).await?;
            timed(cmd.query_async::<HeldReply>(&mut conn)).await
        }
        other => other,
    }
}

/// The membership hash of a lobby channel's lobby.
fn lobby_key_of_channel(channel: &str) -> String {
    format!(
        "lr:lobby:{}",
        channel.strip_prefix("lr:chan:").unwrap_or(channel)
    )
}

/// Where a pub/sub connection's pushes go. Messages are handed to the hub
/// right where the connection's reading task parses them: no queue and no
/// other task in between, so a relayed message wakes no task of this node
/// but its recipient's. Everything else the connection pushes (the end of a
/// subscription, its own end) goes to `others`, for the task that keeps the
/// connection.
pub(super) struct Deliver {
    pub hub: Arc<Hub>,
    pub others: mpsc::UnboundedSender<redis::PushInfo>,
}

impl redis::aio::AsyncPushSender for Deliver {
    fn send(&self, push: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let (
                    Some(redis::Value::BulkString(name)),
                    Some(redis::Value::BulkString(payload)),
                ) = (push.data.first(), push.data.get(1))
                    && let Ok(name) = std::str::from_utf8(name)
                {
                    dispatch(&self.hub, name, payload);
                }
                Ok(())
            }
            // Confirmations of what the node asked for.
            PushKind::Subscribe | PushKind::SSubscribe => Ok(()),
            _ => self.others.send(push).map_err(|_| redis::aio::SendError),
        }
    }
}

/// A pub/sub connection from `client` (RESP3) whose messages go to the hub,
/// and the receiver of its other pushes.
pub(super) async fn pubsub_connection(
    client: &redis::Client,
    hub: &Arc<Hub>,
) -> redis::RedisResult<(
    MultiplexedConnection,
    mpsc::UnboundedReceiver<redis::PushInfo>,
)> {
    let (others, pushes) = mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(Deliver {
            hub: hub.clone(),
            others,
        });
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok((conn, pushes))
}

/// Keeps one pub/sub connection up; its messages go to the hub as they are
/// read ([`Deliver`]). Pings it to notice a dead connection; after a
/// reconnect it subscribes again to every lobby of this node and asks for a
/// resync (what happened while it was away was not delivered).
async fn run_subscriber(shared: Arc<Shared>, slot: watch::Sender<Option<Sink>>) {
    let ping_every = shared.settings.node_timeout / 3;
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    let Clients::Single { pubsub: client, .. } = &shared.clients else {
        return;
    };
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, pubsub_connection(client, &shared.hub)).await {
            Ok(Ok((mut conn, mut pushes))) => {
                // Back after a cut: if the others reaped this node meanwhile,
                // its members are gone, and must not hear the lobby again
                // (the leave events that said so were missed).
                if !first {
                    match liveness::is_reaped(&shared).await {
                        Ok(true) => liveness::lose_everything(&shared, &shared.identity.key()),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check whether this node was reaped");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
                let channels: Vec<String> = shared
                    .hub
                    .lobby_ids()
                    .iter()
                    .map(|id| channel(&id.to_string()))
                    .collect();
                let resubscribed =
                    channels.is_empty() || timed(conn.subscribe(&channels)).await.is_ok();
                if resubscribed {
                    slot.send_replace(Some(Sink::Single(conn.clone())));
                    shared.pubsub_ok.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                    tracing::info!(lobbies = channels.len(), "pub/sub connected");
                    if !first {
                        metrics::get().pubsub_reconnects.increment(1);
                        shared.resync.notify_one();
                    }
                    first = false;
                    let mut ping = tokio::time::interval(ping_every);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            push = pushes.recv() => match push {
                                Some(push) if push.kind == PushKind::Disconnection => break,
                                Some(_) => {}
                                None => break,
                            },
                            _ = ping.tick() => {
                                if timed(redis::cmd("PING").query_async::<redis::Value>(&mut conn)).await.is_err() {
                                    tracing::warn!("pub/sub connection does not answer pings");
                                    break;
                                }
                            }
                        }
                    }
                    slot.send_replace(None);
                    shared.pubsub_ok.store(false, Ordering::Relaxed);
                    metrics::get().redis_errors_pubsub.increment(1);
                    tracing::warn!("pub/sub connection lost, reconnecting");
                }
            }
            Ok(Err(e)) if e.kind() == redis::ErrorKind::RESP3NotSupported => tracing::error!(
                error = %e,
                "this Redis is too old: lobby-relay needs Redis 6.0 or later (pub/sub over RESP3)"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to Redis pub/sub"),
            Err(_) => tracing::warn!("connecting to Redis pub/sub timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects the command connection to the cluster, retrying until it
/// answers.
async fn connect_cluster(shared: &Shared) {
    let Clients::Cluster { commands, .. } = &shared.clients else {
        return;
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT * 3, commands.get_async_connection()).await {
            Ok(Ok(conn)) => {
                *shared.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(Conn::Cluster(conn));
                tracing::info!("connected to the Redis Cluster");
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to the Redis Cluster"),
            Err(_) => tracing::warn!("connecting to the Redis Cluster timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Decodes one pub/sub message and hands it to the hub.
fn dispatch(hub: &Hub, channel_name: &str, payload: &[u8]) {
    let Some(lobby) = lobby_of_channel(channel_name) else {
        return;
    };
    let Some(event) = envelope::decode(payload) else {
        tracing::warn!(
            len = payload.len(),
            "undecodable message on a lobby channel"
        );
        return;
    };
    hub.dispatch(&lobby, event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_hash_as_a_cluster_hash_tag() {
        let hex = "ab".repeat(32);
        assert_eq!(lobby_key(&hex), format!("lr:lobby:{{{hex}}}"));
        assert_eq!(channel(&hex), format!("lr:chan:{{{hex}}}"));
        assert_eq!(lobby_of_channel(&channel(&hex)).unwrap().to_string(), hex);
        assert!(lobby_of_channel("lr:chan:{nope}").is_none());
        assert!(lobby_of_channel("other").is_none());
        assert!(node_key("relay-1/0a").starts_with(NODE_KEY_PREFIX));
        assert!(NODE_KEY_PREFIX.starts_with(PREFIX));
        for key in [node_key("a/1"), NODES_KEY.into(), reaped_key("a/1")] {
            assert_eq!(
                target::slot(key.as_bytes()),
                target::slot(NODES_KEY.as_bytes())
            );
        }
    }
}
