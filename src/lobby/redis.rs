//! Lobbies shared through Redis: stateless nodes, any number of them.
//!
//! - Membership: one hash per lobby, `lr:lobby:{<sha256 hex>}`, field = seat
//!   number, value = member id. Changed only by Lua scripts (`join.lua`,
//!   `leave.lua`, `reap.lua`, `claim.lua`), which are atomic, so a race of
//!   joiners never overfills a lobby, and which publish the join/leave event
//!   themselves.
//! - Fan-out: one pub/sub channel per lobby, `lr:chan:{<sha256 hex>}`. A
//!   node subscribes only to the lobbies it has members in.
//! - Order: every publish of this node goes through one publisher task and
//!   one multiplexed connection, in batches (one pipeline per batch), so a
//!   sender's messages keep their order; a leave waits until the member's
//!   earlier messages are out before it runs.
//! - Liveness (`redis/liveness.rs`): each node keeps a heartbeat key alive; the
//!   others reap the members of a node whose heartbeat expired. After an
//!   outage a node re-registers the seats it holds.
//!
//! The `{...}` around the hash is a Redis Cluster hash tag: a lobby's key and
//! channel live in the same slot.

mod envelope;
mod liveness;
pub mod target;
mod view;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{JoinOutcome, LobbyStore, MemberId, RateKey, ResumeOutcome, ResumeSetup, StoreError};
use crate::hub::{Hub, LocalLobby};
use crate::identity::{self, Identity};
use crate::limits::JoinLimit;
use crate::metrics;
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
pub fn node_key(node: &str) -> String {
    format!("lr:node:{node}")
}

/// The set of every node key that has announced itself (live or not yet
/// reaped).
pub const NODES_KEY: &str = "lr:nodes";

/// The lobbies a node has (or recently had) members in: where to look for
/// them if the node dies.
pub fn node_lobbies_key(node: &str) -> String {
    format!("lr:node-lobbies:{node}")
}

/// Set by the node that reaped `node`: tells it, should it come back, that
/// its seats are gone.
pub fn reaped_key(node: &str) -> String {
    format!("lr:reaped:{node}")
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

/// A script with the held-seat helpers in front.
fn held_script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{HELD_LUA}\n{body}"))
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
    sink: watch::Receiver<Option<PubSubSink>>,
    /// Stops the background tasks when the store is dropped.
    stop: CancellationToken,
}

/// What the store's background tasks share with it.
struct Shared {
    client: redis::Client,
    /// Commands and scripts. Replaced when it stops answering (a dead peer
    /// is otherwise only noticed after the OS's TCP timeout).
    conn: RwLock<ConnectionManager>,
    identity: Arc<Identity>,
    hub: Arc<Hub>,
    settings: RedisSettings,
    scripts: Scripts,
    /// The last heartbeat was written.
    commands_ok: AtomicBool,
    /// The pub/sub connection is up and subscribed.
    pubsub_ok: AtomicBool,
    /// Wakes the heartbeat task to re-register this node's seats (the
    /// pub/sub connection came back: Redis may have restarted).
    resync: Notify,
    /// Leaves that failed (Redis away) and are being retried, per lobby: the
    /// lobby stays in the node's index meanwhile, so that the seat is reaped
    /// should the node die before the retry succeeds.
    pending_leaves: Mutex<HashMap<LobbyId, usize>>,
    stop: CancellationToken,
}

struct Scripts {
    gcra: redis::Script,
    heartbeat: redis::Script,
    join: redis::Script,
    leave: redis::Script,
    reap: redis::Script,
    claim: redis::Script,
    /// Publishes a node's game messages unless the node has been reaped
    /// (run by hash from the publisher's pipelines).
    relay: redis::Script,
    away: redis::Script,
    resume: redis::Script,
    expire: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

enum PublishOp {
    Publish {
        /// The sender's node key: its messages go out only while that
        /// incarnation has not been reaped (`relay.lua`).
        node_key: Arc<str>,
        channel: String,
        payload: Vec<u8>,
    },
    /// Acknowledged once every publish queued before it has been sent.
    Barrier(oneshot::Sender<()>),
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

fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

impl Shared {
    fn conn(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `leave.lua` once.
    async fn leave_once(&self, hex: &str, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _remaining: i64 = timed(
            self.scripts
                .leave
                .key(lobby_key(hex))
                .arg(seat)
                .arg(&**member)
                .arg(channel(hex))
                .invoke_async(&mut conn),
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
        let mut conn = self.conn();
        let _ = timed(
            redis::cmd("SREM")
                .arg(index)
                .arg(hex)
                .query_async::<()>(&mut conn),
        )
        .await;
    }

    /// Drops the command connection and starts a fresh one.
    fn reconnect(&self) {
        match connection_manager(&self.client) {
            Ok(fresh) => *self.conn.write().unwrap_or_else(|e| e.into_inner()) = fresh,
            Err(e) => tracing::warn!(error = %e, "cannot create a Redis connection"),
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
        let client = open_client(&settings.url, settings.ca_cert.clone())?;
        let shared = Arc::new(Shared {
            conn: RwLock::new(connection_manager(&client)?),
            client,
            identity,
            hub,
            settings,
            scripts: Scripts {
                gcra: redis::Script::new(include_str!("gcra.lua")),
                heartbeat: redis::Script::new(include_str!("heartbeat.lua")),
                join: held_script(include_str!("join.lua")),
                leave: held_script(include_str!("leave.lua")),
                reap: held_script(include_str!("reap.lua")),
                claim: redis::Script::new(include_str!("claim.lua")),
                relay: held_script(include_str!("relay.lua")),
                away: held_script(include_str!("away.lua")),
                resume: held_script(include_str!("resume.lua")),
                expire: held_script(include_str!("expire.lua")),
            },
            commands_ok: AtomicBool::new(false),
            pubsub_ok: AtomicBool::new(false),
            resync: Notify::new(),
            pending_leaves: Mutex::default(),
            stop: CancellationToken::new(),
        });
        let stop = shared.stop.clone();
        let (publisher, queue) = mpsc::channel(PUBLISH_QUEUE);
        let (sink_slot, sink) = watch::channel(None);
        let tasks = [
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(run_publisher(shared.clone(), queue))
                    .in_current_span(),
            ),
            tokio::spawn(
                stop.clone()
                    .run_until_cancelled_owned(run_subscriber(shared.clone(), sink_slot))
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
    async fn sink(&self) -> Result<PubSubSink, StoreError> {
        let mut sink = self.sink.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, sink.wait_for(Option::is_some)).await {
            Ok(Ok(current)) => Ok(current.clone().expect("waited for Some")),
            _ => Err(StoreError::Protocol(
                "not connected to Redis pub/sub".into(),
            )),
        }
    }

    async fn enqueue(&self, op: PublishOp) -> Result<(), StoreError> {
        self.publisher
            .send(op)
            .await
            .map_err(|_| StoreError::Closed)
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
        let mut sink = self.sink().await?;
        timed(sink.subscribe(channel(&lobby.to_string()))).await
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
        let mut sink = self.sink().await?;
        timed(sink.unsubscribe(channel(&hex))).await
    }

    async fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
        resume: Option<&ResumeSetup>,
    ) -> Result<JoinOutcome, StoreError> {
        let hex = lobby.to_string();
        let mut conn = self.shared.conn();
        let started = Instant::now();
        let result: Result<(i64, i64), _> = timed(
            self.shared
                .scripts
                .join
                .key(lobby_key(&hex))
                .key(node_lobbies_key(&self.shared.identity.key()))
                .arg(&**member)
                .arg(capacity)
                .arg(channel(&hex))
                .arg(&hex)
                .arg(identity::user_of(member).unwrap_or(""))
                .arg(resume.map_or("", |r| r.secret_hash.as_str()))
                .arg(resume.map_or(0, |r| r.max_messages))
                .arg(resume.map_or(0, |r| r.max_bytes))
                .arg(resume.map_or(0, |r| r.grace.as_millis() as u64))
                .invoke_async(&mut conn),
        )
        .await;
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
        let (tx, rx) = oneshot::channel();
        self.enqueue(PublishOp::Barrier(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?;
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
        let mut conn = self.shared.conn();
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
        let (tx, rx) = oneshot::channel();
        self.enqueue(PublishOp::Barrier(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?;
        let hex = lobby.to_string();
        let mut conn = self.shared.conn();
        let held: i64 = timed(
            self.shared
                .scripts
                .away
                .key(lobby_key(&hex))
                .arg(seat)
                .arg(&**member)
                .arg(channel(&hex))
                .arg(now_ms())
                .invoke_async(&mut conn),
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
        let mut conn = self.shared.conn();
        let reply: Vec<redis::Value> = timed(
            self.shared
                .scripts
                .resume
                .key(lobby_key(&hex))
                .key(node_lobbies_key(&self.shared.identity.key()))
                .arg(seat)
                .arg(secret_hash)
                .arg(new_secret_hash)
                .arg(received)
                .arg(&**member)
                .arg(channel(&hex))
                .arg(&hex)
                .invoke_async(&mut conn),
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
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        // Queued at once, not when first polled (the caller awaits at once
        // anyway): the future returned is then a few bytes, not a copy of
        // the message and the channel's send state, and every session holds
        // room for it.
        let queued = match envelope::encode_relay(from_seat, &message) {
            None => Queued::Done(Ok(())),
            Some(payload) => {
                let op = PublishOp::Publish {
                    node_key: identity::node_key_of(member).into(),
                    channel: channel(&lobby.hex),
                    payload,
                };
                match self.publisher.try_send(op) {
                    Ok(()) => Queued::Done(Ok(())),
                    Err(mpsc::error::TrySendError::Full(op)) => {
                        Queued::Waiting(Box::pin(self.publisher.send(op)))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        Queued::Done(Err(StoreError::Closed))
                    }
                }
            }
        };
        async move {
            match queued {
                Queued::Done(result) => result,
                Queued::Waiting(send) => send.await.map_err(|_| StoreError::Closed),
            }
        }
    }
}

/// A publish handed to the publisher task, or waiting for room in its queue
/// (boxed: rare).
enum Queued<F> {
    Done(Result<(), StoreError>),
    Waiting(Pin<Box<F>>),
}

/// Sends queued publishes in pipelines: while one batch is on its way, the
/// next one accumulates. One task and one connection keep the order.
///
/// Each run of messages of one node key is one `EVAL relay.lua` (the script
/// is sent as text: Redis caches it, and a restarted Redis needs no reload),
/// which publishes them unless that node key has been reaped.
async fn run_publisher(shared: Arc<Shared>, mut queue: mpsc::Receiver<PublishOp>) {
    let mut ops = Vec::with_capacity(PUBLISH_BATCH);
    let mut barriers = Vec::new();
    let mut pipe = redis::pipe();
    while queue.recv_many(&mut ops, PUBLISH_BATCH).await > 0 {
        let mut publishes = 0usize;
        // The run of messages being gathered: its node key and its EVAL.
        let mut run: Option<(Arc<str>, redis::Cmd)> = None;
        let mut runs: Vec<(Arc<str>, usize)> = Vec::new();
        for op in ops.drain(..) {
            match op {
                PublishOp::Publish {
                    node_key,
                    channel,
                    payload,
                } => {
                    if run.as_ref().is_none_or(|(key, _)| *key != node_key) {
                        if let Some((_, eval)) = run.take() {
                            pipe.add_command(eval);
                        }
                        let mut eval = redis::cmd("EVALSHA");
                        eval.arg(shared.scripts.relay.get_hash())
                            .arg(1)
                            .arg(reaped_key(&node_key));
                        runs.push((node_key.clone(), 0));
                        run = Some((node_key, eval));
                    }
                    if let Some((_, eval)) = run.as_mut() {
                        eval.arg(channel).arg(payload);
                    }
                    if let Some(last) = runs.last_mut() {
                        last.1 += 1;
                    }
                    publishes += 1;
                }
                PublishOp::Barrier(ack) => barriers.push(ack),
            }
        }
        if let Some((_, eval)) = run.take() {
            pipe.add_command(eval);
        }
        if publishes > 0 {
            let mut conn = shared.conn();
            let started = Instant::now();
            let mut sent = timed(pipe.query_async::<Vec<i64>>(&mut conn)).await;
            if let Err(StoreError::Redis(e)) = &sent
                && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            {
                // A restarted Redis forgot the script; nothing of the batch
                // ran: load it and send the batch again.
                let loaded =
                    timed(shared.scripts.relay.prepare_invoke().load_async(&mut conn)).await;
                if loaded.is_ok() {
                    sent = timed(pipe.query_async::<Vec<i64>>(&mut conn)).await;
                }
            }
            let metrics = metrics::get();
            metrics::observe(&metrics.redis_publish, started.elapsed());
            match sent {
                Ok(published) => {
                    for ((node_key, count), result) in runs.iter().zip(published) {
                        if result < 0 {
                            tracing::warn!(
                                node_key = &**node_key,
                                dropped = count,
                                "messages of a reaped incarnation were not relayed"
                            );
                        }
                    }
                }
                Err(e) => {
                    metrics.redis_errors_publish.increment(1);
                    // Pub/sub is at-most-once: what could not be published
                    // is lost, as it would be for a subscriber that was away.
                    tracing::warn!(error = %e, lost = publishes, "publishing to Redis failed");
                }
            }
            pipe.clear();
        }
        for ack in barriers.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Keeps one pub/sub connection up and turns its messages into hub events.
/// Pings it to notice a dead connection; after a reconnect it subscribes
/// again to every lobby of this node and asks for a resync (what happened
/// while it was away was not delivered).
async fn run_subscriber(shared: Arc<Shared>, slot: watch::Sender<Option<PubSubSink>>) {
    let ping_every = shared.settings.node_timeout / 3;
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, shared.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => {
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
                let (mut sink, mut stream) = pubsub.split();
                let channels: Vec<String> = shared
                    .hub
                    .lobby_ids()
                    .iter()
                    .map(|id| channel(&id.to_string()))
                    .collect();
                let resubscribed =
                    channels.is_empty() || timed(sink.subscribe(&channels)).await.is_ok();
                if resubscribed {
                    slot.send_replace(Some(sink.clone()));
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
                            msg = stream.next() => match msg {
                                Some(msg) => dispatch(&shared.hub, msg.get_channel_name(), msg.get_payload_bytes()),
                                None => break,
                            },
                            _ = ping.tick() => {
                                // Subscribed, Redis answers a PING with an array, not "PONG".
                                if timed(sink.ping::<redis::Value>()).await.is_err() {
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
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to Redis pub/sub"),
            Err(_) => tracing::warn!("connecting to Redis pub/sub timed out"),
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
        assert!(node_key("relay-1/0a").starts_with(PREFIX));
    }
}
