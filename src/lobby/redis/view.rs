//! The cluster as the admin view shows it, read from Redis by any node:
//! the nodes of `lr:nodes` with the figures of their heartbeats, and their
//! lobbies (from each node's `lr:node-lobbies:*` index, not a `SCAN`) with
//! the node of each seat. Read-only; a handful of pipelined round trips.

use std::collections::{BTreeMap, BTreeSet};

use super::{NODES_KEY, Shared, lobby_key, node_key, node_lobbies_key, timed};
use crate::admin::{ClusterView, LOBBY_LIMIT, LobbyView, NodeView, SeatView, lobby_prefix};
use crate::identity::node_key_of;
use crate::lobby::StoreError;
use crate::metrics::Figures;

/// A heartbeat's value (see `liveness.rs`).
#[derive(serde::Deserialize)]
struct Heartbeat {
    node_id: Option<String>,
    version: Option<String>,
    stats: Option<Figures>,
}

/// The node id of a node key (`<node id>/<incarnation>`).
fn node_id_of_key(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

pub(super) async fn cluster_view(shared: &Shared) -> Result<ClusterView, StoreError> {
    let mut conn = shared.conn();
    let mut keys: Vec<String> =
        timed(redis::cmd("SMEMBERS").arg(NODES_KEY).query_async(&mut conn)).await?;
    keys.sort();

    let mut beats = redis::pipe();
    let mut ttls = redis::pipe();
    let mut indexed = redis::pipe();
    for key in &keys {
        beats.cmd("GET").arg(node_key(key));
        ttls.cmd("PTTL").arg(node_key(key));
        ttls.cmd("SCARD").arg(node_lobbies_key(key));
        // A sample when a node holds many lobbies: the page lists at most
        // LOBBY_LIMIT anyway.
        indexed
            .cmd("SRANDMEMBER")
            .arg(node_lobbies_key(key))
            .arg(LOBBY_LIMIT);
    }
    let (beats, ttls, indexed): (Vec<Option<String>>, Vec<i64>, Vec<Vec<String>>) =
        if keys.is_empty() {
            Default::default()
        } else {
            (
                timed(beats.query_async(&mut conn)).await?,
                timed(ttls.query_async(&mut conn)).await?,
                timed(indexed.query_async(&mut conn)).await?,
            )
        };

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
    if !hexes.is_empty() {
        let mut pipe = redis::pipe();
        for hex in &hexes {
            pipe.cmd("HGETALL").arg(lobby_key(hex));
        }
        let seats: Vec<BTreeMap<u32, String>> = timed(pipe.query_async(&mut conn)).await?;
        for (hex, seats) in hexes.iter().zip(seats) {
            if seats.is_empty() {
                continue; // emptied since it was indexed
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
            });
        }
    }
    Ok(ClusterView {
        store: "redis",
        served_by: shared.identity.node_id().to_owned(),
        nodes,
        lobbies,
        lobbies_truncated: truncated,
    })
}
