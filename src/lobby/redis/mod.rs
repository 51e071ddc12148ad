//! Lobbies shared through Redis: stateless nodes, any number of them.
//!
//! - Membership: one hash per lobby, `lr:lobby:{<sha256 hex>}`, field = seat
//!   number, value = member id. Changed only by Lua scripts (`lua/join.lua`,
//!   `leave.lua`, `reap.lua`, `claim.lua`: `scripts.rs`), which are atomic, so
//!   a race of joiners never overfills a lobby, and which publish the
//!   join/leave event themselves.
//! - Fan-out: one pub/sub channel per lobby, `lr:chan:{<sha256 hex>}`. A
//!   node subscribes only to the lobbies it has members in (`pubsub.rs`). In
//!   a Redis Cluster it is a sharded channel (`SPUBLISH`/`SSUBSCRIBE`,
//!   `sharded.rs`): its messages go through the one shard that owns the
//!   lobby's slot.
//! - Order: every publish of this node goes through the publisher
//!   (`publisher.rs`), so a sender's messages keep their order; a leave
//!   waits until the member's earlier messages are out before it runs.
//! - Liveness (`liveness.rs`): each node keeps a heartbeat key alive; the
//!   others reap the members of a node whose heartbeat expired. After an
//!   outage a node re-registers the seats it holds.
//! - Held seats (`held.rs`, `expiry.rs`): resume.
//!
//! The `{...}` around the hash is a Redis Cluster hash tag: every key and the
//! channel of a lobby live in the same slot, and every script touches the
//! keys of one lobby only, so that in a cluster it runs on the one shard that
//! owns the lobby. The liveness keys (`lr:{nodes}`, `lr:{nodes}:node:*`,
//! `lr:{nodes}:reaped:*`) share the tag `{nodes}` and so one shard; the
//! others (`lr:node-lobbies:*`, `lr:away`, `lr:rate:*`) live where their
//! names hash; none is touched from inside a lobby's script (see
//! docs/operations.md, "Redis Cluster"). The names are in [`keys`].
//!
//! This module keeps the store itself ([`RedisStore`]): it starts the parts
//! and their tasks, each given the handles it needs (the connection
//! `Link` of `connections.rs`, the held-seat runner, the liveness context), and
//! implements the lobby store's operations with them.

mod connections;
mod envelope;
mod expiry;
mod held;
pub mod keys;
mod liveness;
mod publisher;
mod pubsub;
mod scripts;
mod sharded;
pub mod target;
pub mod topology;
mod view;
mod waiting;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use connections::{CONNECT_TIMEOUT, Link, timed};
pub use connections::{open_client, open_cluster_client};
use held::HeldSeats;
pub use keys::{
    AWAY_KEY, NODE_KEY_PREFIX, NODES_KEY, PREFIX, channel, join_rate_key, lobby_key, meta_key,
    node_key, node_lobbies_key, queue_key, reaped_key, resume_key, user_join_rate_key,
};
use liveness::Liveness;
use publisher::Publisher;
use pubsub::Subscriptions;
use scripts::{Scripts, now_ms};
use target::Target;
pub use waiting::MAX_WAIT;

/// How long a quick-match reservation keeps its seat (the reserving node
/// subscribes and joins within it).
const RESERVATION: Duration = Duration::from_secs(10);

use super::{
    EventSink, Goodbye, JoinLimiter, JoinOutcome, LobbyMembership, LobbySink, MemberId, RateKey,
    Reservation, ResumeOutcome, ResumeRefusal, ResumeSetup, StoreError, StoreHealth, WatchOutcome,
};
use crate::cluster_view::ClusterView;
use crate::identity::Identity;
use crate::limits::JoinLimit;
use crate::lobby::event::Host;
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::queue::QueueName;

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
    link: Arc<Link>,
    held: Arc<HeldSeats>,
    liveness: Arc<Liveness>,
    /// The ordered path of every publish of this node.
    publisher: Arc<Publisher>,
    /// Subscribe/unsubscribe handle of the current pub/sub connection; `None`
    /// while it is being (re-)established.
    subscriptions: watch::Receiver<Option<Subscriptions>>,
    /// Leaves that failed (Redis away) and are being retried, per lobby: the
    /// lobby stays in the node's index meanwhile, so that the seat is reaped
    /// should the node die before the retry succeeds.
    pending_leaves: Arc<Mutex<HashMap<LobbyId, usize>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Starts the store's connections and background tasks. Does not wait
    /// for Redis: a node whose Redis is down starts anyway, reports not
    /// ready, and answers `unavailable` until Redis is back.
    pub fn start(
        settings: RedisSettings,
        hub: Arc<dyn EventSink>,
        identity: Arc<Identity>,
    ) -> Result<Self, StoreError> {
        let target = Target::parse(&settings.url).map_err(StoreError::Settings)?;
        let (link, publish) = Link::open(&target, settings.ca_cert.clone(), settings.node_timeout)?;
        let link = Arc::new(link);
        let held = Arc::new(HeldSeats::new(
            link.clone(),
            Arc::new(Scripts::new(publish)),
        ));
        let liveness = Arc::new(Liveness {
            held: held.clone(),
            identity,
            hub: hub.clone(),
            lobby_capacity: settings.lobby_capacity,
        });
        let (subscriptions_slot, subscriptions) = watch::channel(None);
        let publisher = Publisher::start(held.clone());
        if let Some(seeds) = link.seeds() {
            let (cluster, seeds) = (link.clone(), seeds.to_vec());
            link.spawn_until_stopped(async move {
                cluster.connect_cluster().await;
                sharded::run(cluster, hub, seeds, subscriptions_slot).await;
            });
        } else {
            link.spawn_until_stopped(pubsub::run_subscriber(liveness.clone(), subscriptions_slot));
        }
        link.spawn_until_stopped(liveness::run_heartbeat(liveness.clone()));
        link.spawn_until_stopped(liveness::run_reaper(liveness.clone()));
        link.spawn_until_stopped(expiry::run_expirer(held.clone()));
        Ok(Self {
            link,
            held,
            liveness,
            publisher,
            subscriptions,
            pending_leaves: Arc::default(),
        })
    }

    /// The current pub/sub connection, waiting a moment for it if it is
    /// being (re-)established.
    async fn subscriptions(&self) -> Result<Subscriptions, StoreError> {
        let mut current = self.subscriptions.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, current.wait_for(Option::is_some)).await {
            Ok(Ok(current)) => Ok(current.clone().expect("waited for Some")),
            _ => Err(StoreError::Unreachable("not connected to Redis pub/sub")),
        }
    }

    /// Retries a failed leave in the background until it goes through (or
    /// ten minutes have passed: by then the seat has been reaped or
    /// re-registered by someone else). A seat must not stay taken by a
    /// player who is gone.
    fn retry_leave(&self, lobby: LobbyId, member: MemberId, seat: u8) {
        *self
            .pending_leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(lobby)
            .or_default() += 1;
        let (held, liveness, pending_leaves) = (
            self.held.clone(),
            self.liveness.clone(),
            self.pending_leaves.clone(),
        );
        let retry = async move {
            let hex = lobby.to_string();
            let mut backoff = Duration::from_millis(250);
            let give_up = tokio::time::Instant::now() + Duration::from_secs(600);
            while tokio::time::Instant::now() < give_up {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if leave_once(&held, &hex, &member, seat).await.is_ok() {
                    tracing::info!(lobby = &hex[..8], seat, "delayed leave went through");
                    break;
                }
            }
            let forget = {
                let mut pending = pending_leaves.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(count) = pending.get_mut(&lobby) {
                    *count -= 1;
                    if *count == 0 {
                        pending.remove(&lobby);
                    }
                }
                !pending.contains_key(&lobby) && !liveness.hub.has_lobby(&lobby)
            };
            if forget {
                liveness.drop_from_index(&hex).await;
            }
        };
        self.link.spawn_until_stopped(retry);
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.link.stop.cancel();
    }
}

/// Runs `leave.lua` once.
async fn leave_once(
    held: &HeldSeats,
    hex: &str,
    member: &MemberId,
    seat: u8,
) -> Result<(), StoreError> {
    let _remaining: i64 = held
        .invoke(
            held.scripts
                .leave
                .key(lobby_key(hex))
                .arg(seat)
                .arg(member.as_str())
                .arg(channel(hex)),
        )
        .await?;
    Ok(())
}

impl LobbyMembership for RedisStore {
    async fn subscribe(&self, lobby: &LobbyId) -> Result<(), StoreError> {
        self.subscriptions().await?.subscribe(lobby).await
    }

    async fn unsubscribe(&self, lobby: &LobbyId) -> Result<(), StoreError> {
        let hex = lobby.to_string();
        // A leave still being retried keeps the lobby in the index, so that
        // the seat is reaped should this node die first.
        let leave_pending = self
            .pending_leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(lobby);
        if !leave_pending {
            self.liveness.drop_from_index(&hex).await;
        }
        self.subscriptions().await?.unsubscribe(lobby).await
    }

    async fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
        resume: Option<&ResumeSetup>,
        queue: Option<&QueueName>,
    ) -> Result<JoinOutcome, StoreError> {
        let hex = lobby.to_string();
        let queue = queue.map(|q| queue_key(q.as_str())).unwrap_or_default();
        let started = Instant::now();
        let joined = async {
            self.liveness.index_lobbies(&[&hex]).await?;
            self.held
                .invoke::<(i64, i64)>(
                    self.held
                        .scripts
                        .join
                        .key(lobby_key(&hex))
                        .arg(member.as_str())
                        .arg(capacity)
                        .arg(channel(&hex))
                        .arg(&hex)
                        .arg(member.user().unwrap_or(""))
                        .arg(resume.map_or("", |r| r.secret_hash.as_str()))
                        .arg(resume.map_or(0, |r| r.max_messages))
                        .arg(resume.map_or(0, |r| r.max_bytes))
                        .arg(resume.map_or(0, |r| r.grace.as_millis() as u64))
                        .arg(&queue)
                        .arg(now_ms()),
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

    async fn watch(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        max: u32,
    ) -> Result<WatchOutcome, StoreError> {
        let hex = lobby.to_string();
        // Indexed first, like a seat: a reaper of this node takes its
        // spectators off the lobby's count.
        self.liveness.index_lobbies(&[&hex]).await?;
        let watching: i64 = self
            .held
            .invoke(
                self.held
                    .scripts
                    .watch
                    .key(lobby_key(&hex))
                    .arg(member.as_str())
                    .arg(&*self.liveness.identity.key())
                    .arg(max)
                    .arg(channel(&hex))
                    .arg(self.liveness.lobby_capacity),
            )
            .await?;
        Ok(match watching {
            1 => WatchOutcome::Watching,
            -1 => WatchOutcome::Full,
            _ => WatchOutcome::NothingToWatch,
        })
    }

    async fn unwatch(&self, lobby: &LobbyId, _member: &MemberId) -> Result<(), StoreError> {
        let hex = lobby.to_string();
        let _: i64 = self
            .held
            .invoke(
                self.held
                    .scripts
                    .unwatch
                    .key(lobby_key(&hex))
                    .arg(&*self.liveness.identity.key())
                    .arg(channel(&hex)),
            )
            .await?;
        Ok(())
    }

    async fn latest_game(&self, queue: &QueueName) -> Result<Option<LobbyId>, StoreError> {
        let mut conn = self.link.conn_when_up().await?;
        let latest: Option<String> = timed(
            redis::cmd("HGET")
                .arg(queue_key(queue.as_str()))
                .arg("latest")
                .query_async(&mut conn),
        )
        .await?;
        let Some(id) = latest.as_deref().and_then(LobbyId::from_hex) else {
            return Ok(None);
        };
        let players: i64 = timed(
            redis::cmd("HLEN")
                .arg(lobby_key(&id.to_string()))
                .query_async(&mut conn),
        )
        .await?;
        Ok((players > 0).then_some(id))
    }

    async fn reserve(
        &self,
        queue: &QueueName,
        member: &MemberId,
        capacity: u8,
        max_lobbies: u32,
    ) -> Result<Reservation, StoreError> {
        let key = queue_key(queue.as_str());
        // First without a new lobby's id (usually the open one has room);
        // asked for one, with an id in the queue's slot.
        let mut candidate = String::new();
        for _ in 0..3 {
            let reply: Vec<redis::Value> = self
                .held
                .invoke(
                    self.held
                        .scripts
                        .reserve
                        .key(&key)
                        .arg(member.as_str())
                        .arg(capacity)
                        .arg(&candidate)
                        .arg(max_lobbies)
                        .arg(now_ms())
                        .arg(RESERVATION.as_millis() as u64),
                )
                .await?;
            match reply.first() {
                Some(redis::Value::Int(1)) => {
                    let hex: String = reply
                        .get(1)
                        .and_then(|v| redis::from_redis_value(v.clone()).ok())
                        .unwrap_or_default();
                    return LobbyId::from_hex(&hex)
                        .map(Reservation::Reserved)
                        .ok_or_else(|| {
                            StoreError::Protocol(format!("reserve.lua answered lobby {hex:?}"))
                        });
                }
                Some(redis::Value::Int(-1)) => return Ok(Reservation::QueueFull),
                _ => {
                    candidate =
                        crate::queue::random_lobby_in_slot(topology::slot_number(&key)).to_string();
                }
            }
        }
        Err(StoreError::Protocol(
            "reserve.lua asked for a new lobby three times".into(),
        ))
    }

    async fn unreserve(
        &self,
        queue: &QueueName,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .held
            .invoke(
                self.held
                    .scripts
                    .unreserve
                    .key(queue_key(queue.as_str()))
                    .arg(member.as_str())
                    .arg(lobby.to_string())
                    .arg(capacity)
                    .arg(now_ms()),
            )
            .await?;
        Ok(())
    }

    async fn leave(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        // The member's earlier messages must reach the others before its
        // `playerLeft` does: wait until the publisher has sent them.
        self.publisher.barrier(*lobby).await?;
        let result = leave_once(&self.held, &lobby.to_string(), member, seat).await;
        if result.is_err() {
            self.retry_leave(*lobby, member.clone(), seat);
        }
        result
    }

    async fn away(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<bool, StoreError> {
        // As for a leave: the member's earlier messages go out first.
        self.publisher.barrier(*lobby).await?;
        let hex = lobby.to_string();
        let held: i64 = self
            .held
            .invoke(
                self.held
                    .scripts
                    .away
                    .key(lobby_key(&hex))
                    .arg(seat)
                    .arg(member.as_str())
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
        self.liveness.index_lobbies(&[&hex]).await?;
        let reply: Vec<redis::Value> = self
            .held
            .invoke(
                self.held
                    .scripts
                    .resume
                    .key(lobby_key(&hex))
                    .arg(seat)
                    .arg(secret_hash)
                    .arg(new_secret_hash)
                    .arg(received)
                    .arg(member.as_str())
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
            Some(-2) => return Ok(ResumeOutcome::Refused(ResumeRefusal::TooMuchMissed)),
            Some(-3) => return Ok(ResumeOutcome::Refused(ResumeRefusal::NotHeld)),
            _ => return Ok(ResumeOutcome::Refused(ResumeRefusal::WrongToken)),
        }
        let bad = || StoreError::Protocol("resume.lua answered something unexpected".into());
        let players = int(reply.get(1)).ok_or_else(bad)? as u8;
        let sent = int(reply.get(2)).ok_or_else(bad)?.max(0) as u64;
        let record: String = match reply.get(3) {
            Some(v) => redis::from_redis_value(v.clone()).map_err(|_| bad())?,
            None => return Err(bad()),
        };
        let host = match (int(reply.get(4)), int(reply.get(5))) {
            (Some(seat @ 1..=255), Some(epoch @ 1..)) => Some(Host {
                seat: seat as u8,
                epoch: epoch as u64,
            }),
            (Some(_), Some(_)) => None,
            _ => return Err(bad()),
        };
        let mut missed = Vec::with_capacity(reply.len().saturating_sub(6));
        for entry in &reply[6..] {
            let bytes: Vec<u8> = redis::from_redis_value(entry.clone()).map_err(|_| bad())?;
            missed.push(envelope::decode(&bytes).ok_or_else(bad)?);
        }
        Ok(ResumeOutcome::Resumed {
            players,
            host,
            sent,
            member: record.into(),
            missed,
        })
    }

    fn publish(
        &self,
        lobby: &LobbyId,
        _local: &dyn LobbySink,
        member: &MemberId,
        from_seat: u8,
        message: Message,
        sender: &Outbox,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.publisher
            .publish(lobby, member, from_seat, &message, sender)
    }
}

impl JoinLimiter for RedisStore {
    async fn admit_join(&self, who: RateKey, limit: JoinLimit) -> Result<bool, StoreError> {
        let key = match who {
            RateKey::Address(client) => join_rate_key(client),
            RateKey::User(user) => user_join_rate_key(&user),
        };
        let mut conn = self.link.conn_when_up().await?;
        let admitted: i64 = timed(
            self.held
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
}

impl StoreHealth for RedisStore {
    fn is_healthy(&self) -> bool {
        let health = &self.link.health;
        health.commands_ok.load(Ordering::Relaxed) && health.pubsub_ok.load(Ordering::Relaxed)
    }

    async fn cluster_view(&self) -> Result<Option<ClusterView>, StoreError> {
        view::cluster_view(&self.link, self.liveness.identity.node_id())
            .await
            .map(Some)
    }
}

impl Goodbye for RedisStore {
    async fn goodbye(&self) {
        liveness::goodbye(&self.liveness).await;
    }
}
