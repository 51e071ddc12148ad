//! Node liveness: heartbeats, reaping dead nodes, and re-registering this
//! node's seats after an outage.
//!
//! - Every `node_timeout / 3` a node renews `lr:{nodes}:node:<node key>` (expiring
//!   after `node_timeout`) and lists itself in `lr:{nodes}`. The value is a
//!   small JSON object: node id, version and the node's
//!   [`Figures`](crate::metrics::Figures) (`stats`), read by the admin view.
//! - Every `node_timeout / 3` each node looks for listed nodes whose
//!   heartbeat has expired, marks each one reaped (`lr:{nodes}:reaped:<node key>`),
//!   and removes its members from the lobbies of its index
//!   (`lr:node-lobbies:<node key>`) with `reap.lua`, which publishes a leave
//!   event for each: the other players get `playerLeft`. Reaping is
//!   idempotent, so several nodes may do it at once. Bound: a dead node's
//!   players are gone at most `node_timeout + node_timeout / 3` (plus a
//!   round trip) after its last heartbeat. A node whose own heartbeat just
//!   came back from failing judges nobody for `node_timeout`: after a Redis
//!   restart or failover every heartbeat may have expired, and the others
//!   need a beat to say they are alive.
//! - When this node finds itself marked reaped (it was cut off from Redis for
//!   longer than `node_timeout`), every seat it held is lost: its members get
//!   `seat_lost` and are disconnected, and it starts a new incarnation.
//!   Reaped members are never resurrected.
//! - When the lobby store comes back after an outage without this node
//!   having been reaped (a Redis restart, a short cut), the node re-registers
//!   each seat it holds with `claim.lua`: a seat still its own or free is
//!   kept, a seat taken by someone else is lost. Then, once every live node
//!   has had the time to do the same, it compares each lobby's seats with
//!   what its members were told and makes up the missed events.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::connections::timed;
use super::held::HeldSeats;
use super::keys::{
    NODES_KEY, channel, lobby_key, meta_key, node_key, node_lobbies_key, reaped_key,
};
use super::scripts::now_ms;
use crate::identity::{self, Identity};
use crate::lobby::EventSink;
use crate::lobby::{LobbyEvent, StoreError};
use crate::metrics;
use crate::passphrase::LobbyId;

/// What the liveness tasks work with: Redis (through the held-seat
/// scripts' runner), this node's identity and its local lobbies.
pub struct Liveness {
    pub held: Arc<HeldSeats>,
    pub identity: Arc<Identity>,
    /// This node's local lobbies (the hub).
    pub hub: Arc<dyn EventSink>,
    pub lobby_capacity: u8,
}

impl Liveness {
    /// Adds lobbies to this node's index, before it takes seats in them: so
    /// that its members are found should it die.
    pub async fn index_lobbies(&self, hexes: &[&str]) -> Result<(), StoreError> {
        if hexes.is_empty() {
            return Ok(());
        }
        let mut conn = self.held.link.conn()?;
        timed(
            redis::cmd("SADD")
                .arg(node_lobbies_key(&self.identity.key()))
                .arg(hexes)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Removes a lobby from this node's index (best effort: a stale entry
    /// only costs a reaper a look at an empty lobby).
    pub async fn drop_from_index(&self, hex: &str) {
        let index = node_lobbies_key(&self.identity.key());
        let Ok(mut conn) = self.held.link.conn() else {
            return;
        };
        let _ = timed(
            redis::cmd("SREM")
                .arg(index)
                .arg(hex)
                .query_async::<()>(&mut conn),
        )
        .await;
    }
}

/// How long a reaped mark stays: longer than any cut worth coming back from.
const REAPED_MARK_SECS: u64 = 3600;

/// Renews this node's heartbeat, notices outages and recoveries, and
/// re-registers after them.
pub async fn run_heartbeat(live: Arc<Liveness>) {
    let every = live.held.link.node_timeout / 3;
    let ttl_ms = live.held.link.node_timeout.as_millis() as u64;
    let mut failures = 0u32;
    let mut resync_due = false;
    // A cluster connection is being set up (and says so if it cannot be).
    while live.held.link.conn().is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    loop {
        let key = live.identity.key();
        // The node's figures ride along, so that any node can show the
        // whole cluster (the admin view); a few hundred bytes a second.
        let info = serde_json::json!({
            "node_id": live.identity.node_id(),
            "version": env!("CARGO_PKG_VERSION"),
            "stats": metrics::figures(),
        })
        .to_string();
        let started = std::time::Instant::now();
        let beat = beat(&live, &key, info, ttl_ms).await;
        let metrics = metrics::get();
        metrics::observe(&metrics.redis_heartbeat, started.elapsed());
        if beat.is_err() {
            metrics.redis_errors_heartbeat.increment(1);
        } else {
            metrics::record_redis_rtt(started.elapsed());
        }
        match beat {
            Ok(reaped) => {
                if failures > 0 {
                    tracing::info!(after_failures = failures, "lobby store reachable again");
                    resync_due = true;
                }
                if failures > 0 {
                    *live
                        .held
                        .link
                        .health
                        .heartbeat_back_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
                }
                failures = 0;
                live.held
                    .link
                    .health
                    .commands_ok
                    .store(true, Ordering::Relaxed);
                if reaped {
                    lose_everything(&live, &key);
                    continue; // announce the new incarnation at once
                }
                if resync_due {
                    match resync(&live).await {
                        Ok(()) => {
                            resync_due = false;
                            let later = live.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(later.held.link.node_timeout).await;
                                if let Err(e) = reconcile(&later).await {
                                    tracing::warn!(error = %e, "reconciling lobbies failed");
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-registering seats failed; will retry")
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                live.held
                    .link
                    .health
                    .commands_ok
                    .store(false, Ordering::Relaxed);
                if failures == 1 {
                    tracing::warn!(error = %e, "heartbeat failed: lobby store unreachable");
                }
                if failures % 2 == 0 {
                    // A connection that stops answering may be dead without
                    // the OS knowing: start a fresh one.
                    live.held.link.reconnect();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = live.held.link.health.resync.notified() => resync_due = true,
        }
    }
}

/// Renews this node's heartbeat unless the node has been reaped (a reaped
/// incarnation must not be listed as alive again). Returns whether it was.
async fn beat(live: &Liveness, key: &str, info: String, ttl_ms: u64) -> Result<bool, StoreError> {
    let mut conn = live.held.link.conn()?;
    let reaped: i64 = timed(
        live.held
            .scripts
            .heartbeat
            .key(node_key(key))
            .key(NODES_KEY)
            .key(reaped_key(key))
            .arg(info)
            .arg(ttl_ms)
            .arg(key)
            .invoke_async(&mut conn),
    )
    .await?;
    Ok(reaped == 1)
}

/// Whether the other nodes have reaped this node's current incarnation.
pub async fn is_reaped(live: &Liveness) -> Result<bool, StoreError> {
    let mut conn = live.held.link.conn()?;
    timed(
        redis::cmd("EXISTS")
            .arg(reaped_key(&live.identity.key()))
            .query_async(&mut conn),
    )
    .await
}

/// Another node presumed this one dead and reaped its members: give up every
/// seat of the old incarnation and start a new one.
pub fn lose_everything(live: &Liveness, key: &str) {
    let mut lost = 0;
    for lobby in live.hub.lobby_ids() {
        for (member, _seat) in live.hub.seated(&lobby) {
            if member.is_member_of(key) {
                live.hub.lose(&lobby, &member);
                lost += 1;
            }
        }
    }
    let fresh = live.identity.renew_from(key);
    tracing::warn!(
        old_key = key,
        new_key = &*fresh,
        seats_lost = lost,
        "this node was presumed dead by the others: its seats are gone"
    );
}

/// Re-registers every seat this node holds (Redis may have lost them), and
/// this node's count of each lobby's spectators.
async fn resync(live: &Liveness) -> Result<(), StoreError> {
    let key = live.identity.key();
    let mut conn = live.held.link.conn()?;
    let lobbies: Vec<(LobbyId, String)> = live
        .hub
        .lobby_ids()
        .into_iter()
        .map(|lobby| (lobby, lobby.to_string()))
        .collect();
    let hexes: Vec<&str> = lobbies.iter().map(|(_, hex)| hex.as_str()).collect();
    live.index_lobbies(&hexes).await?;
    let (mut kept, mut reclaimed, mut lost) = (0, 0, 0);
    for (lobby, hex) in &lobbies {
        let watching = live.hub.spectators_here(lobby);
        if watching > 0 {
            // Set, not added: the same whether Redis lost it or not.
            let _: i64 = timed(
                redis::cmd("HSET")
                    .arg(meta_key(hex))
                    .arg(format!("sp:{key}"))
                    .arg(watching)
                    .query_async(&mut conn),
            )
            .await?;
        }
        let host = live.hub.host(lobby);
        for (member, seat) in live.hub.seated(lobby) {
            if !member.is_member_of(&key) {
                live.hub.lose(lobby, &member);
                lost += 1;
                continue;
            }
            let outcome: i64 = timed(
                live.held
                    .scripts
                    .claim
                    .key(lobby_key(hex))
                    .arg(seat)
                    .arg(member.as_str())
                    .arg(live.lobby_capacity)
                    .arg(host.map_or(0, |h| h.seat))
                    .arg(host.map_or(0, |h| h.epoch))
                    .invoke_async(&mut conn),
            )
            .await?;
            match outcome {
                1 => kept += 1,
                2 => reclaimed += 1,
                _ => {
                    live.hub.lose(lobby, &member);
                    lost += 1;
                }
            }
        }
    }
    tracing::info!(kept, reclaimed, lost, "re-registered this node's seats");
    Ok(())
}

/// Compares each local lobby's seats in Redis with the last event its
/// members saw, and delivers the joins and leaves they missed.
async fn reconcile(live: &Liveness) -> Result<(), StoreError> {
    let mut conn = live.held.link.conn()?;
    for lobby in live.hub.lobby_ids() {
        let seats: std::collections::BTreeMap<u8, String> = timed(
            redis::cmd("HGETALL")
                .arg(lobby_key(&lobby.to_string()))
                .query_async(&mut conn),
        )
        .await?;
        let actual: Vec<u8> = seats.keys().copied().collect();
        let users: Vec<(u8, Arc<str>)> = seats
            .iter()
            .filter_map(|(&seat, member)| Some((seat, identity::user_of(member)?.into())))
            .collect();
        let known = live.hub.occupied(&lobby);
        if known == actual {
            continue;
        }
        let players = actual.len() as u8;
        for &seat in known.iter().filter(|s| !actual.contains(s)) {
            live.hub.deliver(
                &lobby,
                LobbyEvent::Left {
                    seat,
                    players,
                    occupied: actual.clone(),
                },
            );
        }
        for &seat in actual.iter().filter(|s| !known.contains(s)) {
            live.hub.deliver(
                &lobby,
                LobbyEvent::Joined {
                    seat,
                    players,
                    capacity: live.lobby_capacity,
                    occupied: actual.clone(),
                    member: "".into(),
                    users: users.clone(),
                    host: None,
                    spectators: None,
                },
            );
        }
        tracing::info!(
            lobby = lobby.short(),
            ?known,
            ?actual,
            "delivered missed joins and leaves"
        );
    }
    Ok(())
}

/// Looks for nodes whose heartbeat expired and reaps them.
pub async fn run_reaper(live: Arc<Liveness>) {
    let every = live.held.link.node_timeout / 3;
    loop {
        tokio::time::sleep(every).await;
        if !live.held.link.health.commands_ok.load(Ordering::Relaxed) {
            continue; // cut off ourselves: nobody to judge
        }
        let back = *live
            .held
            .link
            .health
            .heartbeat_back_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Just back: the others may be coming back too, and have not beaten
        // yet.
        let judging = back.is_none_or(|back| back.elapsed() >= live.held.link.node_timeout);
        if judging && let Err(e) = reap_dead_nodes(&live).await {
            tracing::warn!(error = %e, "looking for dead nodes failed");
        }
        live.held.retry_away().await;
    }
}

async fn reap_dead_nodes(live: &Liveness) -> Result<(), StoreError> {
    let me = live.identity.key();
    let mut conn = live.held.link.conn()?;
    let nodes: Vec<String> =
        timed(redis::cmd("SMEMBERS").arg(NODES_KEY).query_async(&mut conn)).await?;
    let others: Vec<&String> = nodes.iter().filter(|n| n.as_str() != &*me).collect();
    if others.is_empty() {
        return Ok(());
    }
    let exists = others
        .iter()
        .map(|node| {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(node_key(node));
            cmd
        })
        .collect();
    let alive = live.held.link.exec_all(exists).await?;
    for (node, alive) in others.into_iter().zip(alive) {
        if alive == redis::Value::Int(0) {
            reap(live, node).await?;
        }
    }
    Ok(())
}

/// Removes every member of a dead node from its lobbies.
async fn reap(live: &Liveness, node: &str) -> Result<(), StoreError> {
    let mut conn = live.held.link.conn()?;
    timed(
        redis::cmd("SET")
            .arg(reaped_key(node))
            .arg(live.identity.key().as_ref())
            .arg("EX")
            .arg(REAPED_MARK_SECS)
            .query_async::<()>(&mut conn),
    )
    .await?;
    let lobbies: Vec<String> = timed(
        redis::cmd("SMEMBERS")
            .arg(node_lobbies_key(node))
            .query_async(&mut conn),
    )
    .await?;
    let prefix = format!("{node}.");
    let mut removed = 0i64;
    for hex in &lobbies {
        removed += live
            .held
            .invoke::<i64>(
                live.held
                    .scripts
                    .reap
                    .key(lobby_key(hex))
                    .arg(&prefix)
                    .arg(channel(hex))
                    .arg(now_ms()),
            )
            .await?;
    }
    let mut del = redis::cmd("DEL");
    del.arg(node_lobbies_key(node));
    let mut srem = redis::cmd("SREM");
    srem.arg(NODES_KEY).arg(node);
    live.held.link.exec_all(vec![del, srem]).await?;
    metrics::get().nodes_reaped.increment(1);
    tracing::warn!(
        node,
        lobbies = lobbies.len(),
        members = removed,
        "reaped a dead node"
    );
    Ok(())
}

/// Removes this node's own records when it shuts down (its members have
/// left by then).
pub async fn goodbye(live: &Liveness) {
    let key = live.identity.key();
    let mut beat = redis::cmd("DEL");
    beat.arg(node_key(&key));
    let mut index = redis::cmd("DEL");
    index.arg(node_lobbies_key(&key));
    let mut srem = redis::cmd("SREM");
    srem.arg(NODES_KEY).arg(&*key);
    match live.held.link.exec_all(vec![beat, index, srem]).await {
        Ok(_) => tracing::info!("said goodbye to the lobby store"),
        Err(e) => tracing::warn!(error = %e, "could not say goodbye to the lobby store"),
    }
}
