//! Sharded pub/sub in a Redis Cluster, kept by the node itself.
//!
//! Each lobby's channel (`lr:chan:{H}`) is a sharded channel: only the
//! master that owns its slot delivers it. The node keeps one RESP3
//! connection per master it has lobbies on, and one task (the manager, here)
//! decides which channel is subscribed where:
//! - `subscribe`/`unsubscribe` of the store go through the manager, which
//!   sends `SSUBSCRIBE`/`SUNSUBSCRIBE` on the connection of the slot's owner
//!   (per `CLUSTER SHARDS`; a `MOVED` answer refreshes that map first);
//! - a master that gives a slot away (a migration, or a master demoted after
//!   a failover) unsubscribes the node from its channels itself: the node
//!   subscribes again at the new owner at once;
//! - a connection that ends (a master crashed) or stops answering pings is
//!   dropped, and its channels are subscribed again where the refreshed map
//!   says, as soon as a master serves their slots (the replica promoted);
//! - every `--node-timeout / 3` the map is read again and any channel whose
//!   slot has moved is moved too.
//!
//! Each time channels move, messages may have been missed meanwhile
//! (pub/sub is at-most-once), and a promoted replica may lack the last writes
//! of its master: the node re-registers its seats and makes up missed joins
//! and leaves (the resync of `liveness.rs`), as after a Redis restart.
//!
//! Why not the redis crate's cluster client for this: in a failover it
//! replaced its connections to the promoted master several times while the
//! topology settled, and subscriptions made on a replaced connection were
//! gone (measured here: 3 of 5 channels of the failed shard never came
//! back). Owning the connections makes the rule simple: a channel is
//! subscribed on the one connection the manager holds for its owner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, PushKind};
use tokio::sync::{mpsc, watch};

use super::connections::{Link, MAX_BACKOFF, redis_error, timed};
use super::keys::{channel, lobby_of_channel};
use super::pubsub::{Request, Subscriptions, pubsub_connection};
use super::topology::{Shard, from_cluster_shards, from_cluster_slots, node_info, slot_number};
use crate::lobby::{EventSink, StoreError};
use crate::metrics;
use crate::passphrase::LobbyId;

/// How soon lobbies that wait for a master are tried again.
const RETRY_SOON: Duration = Duration::from_millis(200);

/// What a shard connection's reader tells the manager.
enum Event {
    /// The connection of this generation ended or stopped answering.
    Lost { addr: String, generation: u64 },
    /// The shard unsubscribed the node from a lobby's channel.
    Unsubscribed(LobbyId),
}

/// The connection to one master and the lobbies subscribed on it.
struct ShardConn {
    conn: MultiplexedConnection,
    generation: u64,
    lobbies: HashSet<LobbyId>,
    reader: tokio::task::AbortHandle,
}

struct Manager {
    link: Arc<Link>,
    /// Where the shard connections' messages go.
    hub: Arc<dyn EventSink>,
    /// A seed's settings (credentials, TLS, options), RESP3.
    base: ConnectionInfo,
    ca_cert: Option<Vec<u8>>,
    tls: bool,
    /// The seed's host, for a master that does not know its own address.
    here: String,
    topology: Vec<Shard>,
    shards: HashMap<String, ShardConn>,
    /// Every lobby this node wants to hear (it has members there), with
    /// its channel's slot.
    wanted: HashMap<LobbyId, u16>,
    /// Where each wanted lobby is subscribed now.
    placed: HashMap<LobbyId, String>,
    events: mpsc::UnboundedSender<Event>,
    generations: u64,
}

/// Runs the manager: installs the store's [`Subscriptions`] once the cluster's
/// topology is known, then serves requests and follows the cluster.
pub async fn run(
    link: Arc<Link>,
    hub: Arc<dyn EventSink>,
    seeds: Vec<String>,
    slot: watch::Sender<Option<Subscriptions>>,
) {
    let base = match seeds[0].as_str().into_connection_info() {
        Ok(info) => {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            info.set_redis_settings(settings)
        }
        Err(e) => {
            tracing::error!(error = %e, "the Redis Cluster seed URL is unusable");
            return;
        }
    };
    let (here, tls) = match base.addr() {
        ConnectionAddr::TcpTls { host, .. } => (host.clone(), true),
        ConnectionAddr::Tcp(host, _) => (host.clone(), false),
        _ => (String::new(), false),
    };
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let mut manager = Manager {
        ca_cert: link.ca_cert.clone(),
        link,
        hub,
        base,
        tls,
        here,
        topology: Vec::new(),
        shards: HashMap::new(),
        wanted: HashMap::new(),
        placed: HashMap::new(),
        events,
        generations: 0,
    };
    let mut backoff = Duration::from_millis(50);
    while let Err(e) = manager.refresh().await {
        tracing::warn!(error = %e, "cannot read the Redis Cluster's shards; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let (requests, mut request_rx) = mpsc::channel(256);
    slot.send_replace(Some(Subscriptions::Cluster(requests)));
    manager.link.health.pubsub_ok.store(true, Ordering::Relaxed);
    tracing::info!(shards = manager.topology.len(), "sharded pub/sub ready");
    let mut tick = tokio::time::interval(manager.link.node_timeout / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While lobbies wait for a master (a failover under way), they are
    // tried again soon, not only on the next tick.
    let mut soon = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut waiting = false;
    loop {
        // Set when lobbies could not be placed: they are tried again soon.
        let mut pending = false;
        tokio::select! {
            _ = &mut soon, if waiting => {
                waiting = false;
                pending = manager.refresh().await.is_err() || manager.follow().await;
            }
            Some(request) = request_rx.recv() => match request {
                Request::Subscribe(lobby, reply) => {
                    manager.wanted.insert(lobby, slot_number(&channel(&lobby.to_string())));
                    let placed = manager.place(lobby).await;
                    if placed.is_err() {
                        // The node forgets the lobby (its joiner is told
                        // `unavailable`): so does the manager.
                        manager.wanted.remove(&lobby);
                    }
                    let _ = reply.send(placed);
                }
                Request::Unsubscribe(lobby, reply) => {
                    manager.wanted.remove(&lobby);
                    let _ = reply.send(manager.unplace(lobby).await);
                }
            },
            Some(event) = event_rx.recv() => match event {
                Event::Lost { addr, generation } => {
                    if manager.shards.get(&addr).is_some_and(|s| s.generation == generation) {
                        pending = manager.lost(&addr).await;
                    }
                }
                Event::Unsubscribed(lobby) => {
                    if manager.wanted.contains_key(&lobby) {
                        tracing::info!(lobby = lobby.short(), "a shard gave up a lobby's slot: subscribing again");
                        if let Some(addr) = manager.placed.remove(&lobby)
                            && let Some(shard) = manager.shards.get_mut(&addr)
                        {
                            shard.lobbies.remove(&lobby);
                        }
                        // The slot has a new owner: learn which.
                        let _ = manager.refresh().await;
                        pending = manager.follow().await;
                    }
                }
            },
            _ = tick.tick() => {
                if manager.refresh().await.is_ok() && manager.misplaced() > 0 {
                    pending = manager.follow().await;
                }
            }
        }
        if pending && !waiting {
            waiting = true;
            soon.as_mut()
                .reset(tokio::time::Instant::now() + RETRY_SOON);
        }
    }
}

impl Manager {
    /// Reads the masters and their slots.
    async fn refresh(&mut self) -> Result<(), StoreError> {
        let mut conn = self.link.conn()?;
        let shards = timed(
            redis::cmd("CLUSTER")
                .arg("SHARDS")
                .query_async::<Vec<HashMap<String, redis::Value>>>(&mut conn),
        )
        .await;
        let topology: Vec<Shard> = match shards {
            Ok(shards) => shards
                .iter()
                .filter_map(|shard| from_cluster_shards(shard, &self.here, self.tls))
                .collect(),
            Err(e)
                if redis_error(&e)
                    .is_some_and(|e| matches!(e.kind(), redis::ErrorKind::Server(_))) =>
            {
                let slots =
                    timed(redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn)).await?;
                from_cluster_slots(slots, &self.here)?
            }
            Err(e) => return Err(e),
        };
        if topology.is_empty() {
            return Err(StoreError::Unreachable("the Redis Cluster lists no master"));
        }
        self.topology = topology;
        Ok(())
    }

    /// The master that serves a wanted lobby's slot, per the last map read.
    fn owner(&self, lobby: &LobbyId) -> Option<String> {
        let slot = *self.wanted.get(lobby)?;
        self.topology
            .iter()
            .find(|shard| shard.serves(slot))
            .map(Shard::addr)
    }

    /// Wanted lobbies not subscribed where the map says.
    fn misplaced(&self) -> usize {
        self.wanted
            .keys()
            .filter(|lobby| {
                let owner = self.owner(lobby);
                owner.is_none()
                    || self.placed.get(*lobby) != owner.as_ref()
                    || !self
                        .shards
                        .contains_key(owner.as_deref().unwrap_or_default())
            })
            .count()
    }

    /// The connection to `addr`, opened if there is none.
    async fn shard(&mut self, addr: &str) -> Result<MultiplexedConnection, StoreError> {
        if let Some(shard) = self.shards.get(addr) {
            return Ok(shard.conn.clone());
        }
        let shard =
            self.topology
                .iter()
                .find(|s| s.addr() == addr)
                .ok_or(StoreError::Unreachable(
                    "no such master in the Redis Cluster",
                ))?;
        let info = node_info(&self.base, &shard.host, shard.port);
        let client = match (&self.ca_cert, self.tls) {
            (Some(root_cert), true) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                },
            )?,
            _ => redis::Client::open(info)?,
        };
        let (conn, push_rx) = timed(pubsub_connection(&client, &self.hub)).await?;
        self.generations += 1;
        let generation = self.generations;
        let reader = self
            .link
            .spawn_until_stopped(read_shard(
                self.link.clone(),
                addr.to_owned(),
                generation,
                conn.clone(),
                push_rx,
                self.events.clone(),
            ))
            .abort_handle();
        self.shards.insert(
            addr.to_owned(),
            ShardConn {
                conn: conn.clone(),
                generation,
                lobbies: HashSet::new(),
                reader,
            },
        );
        tracing::info!(shard = addr, "sharded pub/sub connection to a master");
        Ok(conn)
    }

    /// Subscribes a lobby's channel at its slot's owner (refreshing the map
    /// and trying once more if the shard answers `MOVED`).
    async fn place(&mut self, lobby: LobbyId) -> Result<(), StoreError> {
        let mut result = self.try_place(lobby).await;
        if let Err(e) = &result
            && redis_error(e).is_some_and(|e| {
                matches!(
                    e.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask
                    )
                )
            })
        {
            self.refresh().await?;
            result = self.try_place(lobby).await;
        }
        result
    }

    async fn try_place(&mut self, lobby: LobbyId) -> Result<(), StoreError> {
        let owner = self.owner(&lobby).ok_or(StoreError::Unreachable(
            "no master serves this lobby's slot",
        ))?;
        if self.placed.get(&lobby) == Some(&owner) && self.shards.contains_key(&owner) {
            return Ok(());
        }
        let mut conn = self.shard(&owner).await?;
        timed(
            redis::cmd("SSUBSCRIBE")
                .arg(channel(&lobby.to_string()))
                .query_async::<redis::Value>(&mut conn),
        )
        .await?;
        self.placed_at(lobby, owner);
        Ok(())
    }

    /// Records that `lobby` is subscribed at `owner` (and no longer where
    /// it was).
    fn placed_at(&mut self, lobby: LobbyId, owner: String) {
        if let Some(shard) = self.shards.get_mut(&owner) {
            shard.lobbies.insert(lobby);
        }
        if let Some(old) = self.placed.insert(lobby, owner.clone())
            && old != owner
            && let Some(shard) = self.shards.get_mut(&old)
        {
            shard.lobbies.remove(&lobby);
        }
    }

    /// Unsubscribes a lobby's channel wherever it is subscribed.
    async fn unplace(&mut self, lobby: LobbyId) -> Result<(), StoreError> {
        let Some(addr) = self.placed.remove(&lobby) else {
            return Ok(());
        };
        let Some(shard) = self.shards.get_mut(&addr) else {
            return Ok(());
        };
        shard.lobbies.remove(&lobby);
        let mut conn = shard.conn.clone();
        timed(
            redis::cmd("SUNSUBSCRIBE")
                .arg(channel(&lobby.to_string()))
                .query_async::<redis::Value>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    /// A shard connection is gone: its lobbies are subscribed again where
    /// the map says, once a master serves them. True if some still wait.
    async fn lost(&mut self, addr: &str) -> bool {
        if let Some(shard) = self.shards.remove(addr) {
            shard.reader.abort();
            for lobby in &shard.lobbies {
                self.placed.remove(lobby);
            }
            tracing::warn!(
                shard = addr,
                lobbies = shard.lobbies.len(),
                "a Redis Cluster master connection was lost: its lobbies follow their slots"
            );
            metrics::get().pubsub_reconnects.increment(1);
            metrics::get().redis_errors_pubsub.increment(1);
        }
        let _ = self.refresh().await;
        self.follow().await
    }

    /// Subscribes every misplaced wanted lobby where the map says, all at
    /// once (each shard pipelines its `SSUBSCRIBE`s), then asks for a resync
    /// of seats: messages may have been missed while a lobby was not
    /// subscribed. Returns true if some cannot be placed yet (no master
    /// serves the slot while a failover is under way, or a master did not
    /// answer): they are tried again soon.
    async fn follow(&mut self) -> bool {
        let mut by_owner: HashMap<String, Vec<LobbyId>> = HashMap::new();
        let mut homeless = 0;
        for lobby in self.wanted.keys() {
            match self.owner(lobby) {
                Some(owner)
                    if self.placed.get(lobby) == Some(&owner)
                        && self.shards.contains_key(&owner) => {}
                Some(owner) => by_owner.entry(owner).or_default().push(*lobby),
                None => homeless += 1,
            }
        }
        let mut moved = 0;
        let mut failed = 0;
        for (owner, lobbies) in by_owner {
            let conn = match self.shard(&owner).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(shard = owner, error = %e, "cannot reach a Redis Cluster master");
                    failed += lobbies.len();
                    continue;
                }
            };
            let results = join_all(lobbies.iter().map(|lobby| {
                let mut conn = conn.clone();
                async move {
                    timed(
                        redis::cmd("SSUBSCRIBE")
                            .arg(channel(&lobby.to_string()))
                            .query_async::<redis::Value>(&mut conn),
                    )
                    .await
                }
            }))
            .await;
            for (lobby, result) in lobbies.into_iter().zip(results) {
                match result {
                    Ok(_) => {
                        self.placed_at(lobby, owner.clone());
                        moved += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::debug!(lobby = lobby.short(), error = %e, "subscribing failed; retrying soon");
                    }
                }
            }
        }
        if moved > 0 {
            tracing::info!(
                lobbies = moved,
                "lobbies subscribed again where their slots are"
            );
            self.link.health.resync.notify_one();
        }
        if homeless > 0 {
            tracing::warn!(
                lobbies = homeless,
                "no master serves some lobbies' slots (a failover under way?)"
            );
        }
        homeless + failed > 0
    }
}

/// Watches one master connection (its messages go to the hub as they are
/// read, see [`Deliver`](super::pubsub::Deliver)): a `sunsubscribe` the node did not
/// ask for, and the end of the connection (or a ping it does not answer),
/// go to the manager. The pings run beside the watching, never in its way.
async fn read_shard(
    link: Arc<Link>,
    addr: String,
    generation: u64,
    conn: MultiplexedConnection,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    events: mpsc::UnboundedSender<Event>,
) {
    let every = link.node_timeout / 3;
    let pinger = {
        let addr = addr.clone();
        let mut conn = conn;
        async move {
            let mut ping = tokio::time::interval(every);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ping.tick().await;
                // Answered within the node timeout, or the master is gone.
                let answered = tokio::time::timeout(
                    every * 2,
                    redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                )
                .await;
                if !matches!(answered, Ok(Ok(_))) {
                    tracing::warn!(shard = addr, "a Redis Cluster master does not answer pings");
                    return;
                }
            }
        }
    };
    let mut pinger = std::pin::pin!(pinger);
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                None => break,
                Some(push) => match push.kind {
                    PushKind::SUnsubscribe => {
                        if let Some(redis::Value::BulkString(name)) = push.data.first()
                            && let Some(lobby) = std::str::from_utf8(name).ok().and_then(lobby_of_channel)
                        {
                            let _ = events.send(Event::Unsubscribed(lobby));
                        }
                    }
                    PushKind::Disconnection => break,
                    _ => {}
                },
            },
            () = &mut pinger => break,
        }
    }
    let _ = events.send(Event::Lost { addr, generation });
}
