//! The cluster as the admin view shows it, read from Redis by any node:
//! the nodes of `lr:{nodes}` with the figures of their heartbeats, and their
//! lobbies (from each node's `lr:node-lobbies:*` index, not a `SCAN`) with
//! the node of each seat, their host, queue and spectators (`lr:meta:*`;
//! a lobby watched while it has no player too), and the queues
//! of those lobbies (`lr:queue:*`). Read-only; a handful of pipelined round
//! trips (in a Redis Cluster, concurrent commands, each to its shard).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::connections::{Link, timed};
use super::keys::{NODES_KEY, lobby_key, meta_key, node_key, node_lobbies_key};
use crate::cluster_view::{
    ClusterView, LOBBY_LIMIT, LobbyView, NodeView, QueueView, SeatView, lobby_prefix,
};
use crate::identity::{node_id_of_key, node_key_of};
use crate::lobby::StoreError;
use crate::metrics::Figures;

/// A heartbeat's value (see `liveness.rs`).
#[derive(serde::Deserialize)]
struct Heartbeat {
    node_id: Option<String>,
    version: Option<String>,
    stats: Option<Figures>,
}

/// A command on one key.
fn command(name: &str, key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(key);
    cmd
}

/// Replies converted to `T`.
fn convert<T: redis::FromRedisValue>(values: Vec<redis::Value>) -> Result<Vec<T>, StoreError> {
    values
        .into_iter()
        .map(|v| {
            redis::from_redis_value(v)
                .map_err(|e| StoreError::Protocol(format!("unexpected reply from Redis: {e}")))
        })
        .collect()
}

/// The cluster as `served_by` (this node's id) reads it from Redis.
pub async fn cluster_view(link: &Link, served_by: &str) -> Result<ClusterView, StoreError> {
    let mut conn = link.conn()?;
    let mut keys: Vec<String> =
        timed(redis::cmd("SMEMBERS").arg(NODES_KEY).query_async(&mut conn)).await?;
    keys.sort();

    let mut beats = Vec::new();
    let mut ttls = Vec::new();
    let mut indexed = Vec::new();
    for key in &keys {
        beats.push(command("GET", &node_key(key)));
        ttls.push(command("PTTL", &node_key(key)));
        ttls.push(command("SCARD", &node_lobbies_key(key)));
        // A sample when a node holds many lobbies: the page lists at most
        // LOBBY_LIMIT anyway.
        let mut sample = command("SRANDMEMBER", &node_lobbies_key(key));
        sample.arg(LOBBY_LIMIT);
        indexed.push(sample);
    }
    let (beats, ttls, indexed): (Vec<Option<String>>, Vec<i64>, Vec<Vec<String>>) = (
        convert(link.exec_all(beats).await?)?,
        convert(link.exec_all(ttls).await?)?,
        convert(link.exec_all(indexed).await?)?,
    );

    let mut truncated = false;
    let mut nodes = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let beat: Option<Heartbeat> = beats
            .get(i)
            .and_then(Option::as_deref)
            .and_then(|v| serde_json::from_str(v).ok());
        let ttl = ttls.get(2 * i).copied().unwrap_or(-2);
        let count = ttls.get(2 * i + 1).copied().unwrap_or(0);
        truncated |= count > LOBBY_LIMIT as i64;
        let (node_id, version, stats) = match beat {
            Some(b) => (b.node_id, b.version, b.stats),
            None => (None, None, None),
        };
        nodes.push(NodeView {
            node: node_id.unwrap_or_else(|| node_id_of_key(key).to_owned()),
            key: key.clone(),
            alive: ttl > 0,
            ttl_ms: Some(ttl.max(0) as u64),
            version,
            stats,
        });
    }

    let hexes: BTreeSet<String> = indexed.into_iter().flatten().collect();
    truncated |= hexes.len() > LOBBY_LIMIT;
    let hexes: Vec<String> = hexes.into_iter().take(LOBBY_LIMIT).collect();
    let mut lobbies = Vec::new();
    // The queue key of each listed quick-match lobby.
    let mut queue_keys = BTreeSet::new();
    if !hexes.is_empty() {
        let reads = hexes
            .iter()
            .map(|hex| command("HGETALL", &lobby_key(hex)))
            .collect();
        let seats: Vec<BTreeMap<u32, String>> = convert(link.exec_all(reads).await?)?;
        // The whole meta: host, epoch, queue and the spectators of each
        // node (`sp:<node key>`); a handful of fields.
        let reads = hexes
            .iter()
            .map(|hex| command("HGETALL", &meta_key(hex)))
            .collect();
        let metas: Vec<HashMap<String, String>> = convert(link.exec_all(reads).await?)?;
        for ((hex, seats), meta) in hexes.iter().zip(seats).zip(metas) {
            let spectators = spectators(&meta);
            if seats.is_empty() && spectators == 0 {
                continue; // emptied since it was indexed
            }
            let queue = meta.get("queue");
            if let Some(key) = queue {
                queue_keys.insert(key.clone());
            }
            lobbies.push(LobbyView {
                lobby: lobby_prefix(hex),
                players: seats.len(),
                seats: seats
                    .into_iter()
                    .map(|(seat, member)| SeatView {
                        seat,
                        node: node_id_of_key(node_key_of(&member)).to_owned(),
                    })
                    .collect(),
                host: meta.get("host").and_then(|v| v.parse().ok()),
                epoch: meta.get("epoch").and_then(|v| v.parse().ok()),
                queue: queue.map(|key| queue_name(key)),
                spectators,
            });
        }
    }
    let queues = queues(link, queue_keys).await?;
    Ok(ClusterView {
        store: if link.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        },
        served_by: served_by.to_owned(),
        nodes,
        lobbies,
        lobbies_truncated: truncated,
        queues,
    })
}

/// The queues of these keys (`lr:queue:{q:NAME}`): each one's count of
/// lobbies and its open lobby with the players in it. A queue gone since
/// its lobby was read is left out.
async fn queues(link: &Link, keys: BTreeSet<String>) -> Result<Vec<QueueView>, StoreError> {
    let reads = keys
        .iter()
        .map(|key| {
            let mut cmd = command("HMGET", key);
            cmd.arg("open").arg("lobbies");
            cmd
        })
        .collect();
    let states: Vec<(Option<String>, Option<u64>)> = convert(link.exec_all(reads).await?)?;
    let reads = states
        .iter()
        .filter_map(|(open, _)| open.as_deref())
        .map(|hex| command("HLEN", &lobby_key(hex)))
        .collect();
    let mut open_players = convert::<usize>(link.exec_all(reads).await?)?.into_iter();
    let mut queues = Vec::new();
    for (key, (open, lobbies)) in keys.iter().zip(states) {
        let players = open.as_ref().and_then(|_| open_players.next());
        let Some(lobbies) = lobbies else {
            continue;
        };
        queues.push(QueueView {
            queue: queue_name(key),
            lobbies,
            open: open.as_deref().map(lobby_prefix),
            open_players: players,
        });
    }
    Ok(queues)
}

/// How many spectators a lobby's meta counts: the sum of its
/// `sp:<node key>` fields (see `lua/held.lua`).
fn spectators(meta: &HashMap<String, String>) -> u64 {
    meta.iter()
        .filter(|(field, _)| field.starts_with("sp:"))
        .filter_map(|(_, count)| count.parse::<u64>().ok())
        .sum()
}

/// A queue's name from its key (`lr:queue:{q:NAME}`, see
/// [`super::keys::queue_key`]).
fn queue_name(key: &str) -> String {
    key.strip_prefix("lr:queue:{q:")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(key)
        .to_owned()
}
