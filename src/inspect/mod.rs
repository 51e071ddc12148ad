//! `lobby-relay inspect`: what an operator asks of Redis, as tables for
//! people or JSON for scripts. Read-only.
//!
//! - `inspect nodes`: live nodes (heartbeat, time left) and their members.
//! - `inspect lobbies`: every lobby with its players (hash prefixes).
//! - `inspect lobby PASSPHRASE` (or `--hash HEX`): one lobby's key, channel,
//!   seats and the node of each seat.
//!
//! It reads one Redis or a Redis Cluster (a `redis+cluster://` URL, see
//! [`crate::lobby::redis::target`]): keyed commands go through a cluster
//! client, which routes each to the shard that owns its key; listings SCAN
//! every master with a connection of their own. In a cluster, lobbies also
//! say which shard (master address) holds them.

mod store;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::identity::node_key_of;
use crate::lobby::redis::{NODE_KEY_PREFIX, NODES_KEY, channel, lobby_key, node_key, resume_key};
use store::Found;
pub use store::{Cluster, Store};

/// A lobby as stored: its hash, its seats (seat → member id) and, in a
/// cluster, the master it is on.
struct Lobby {
    hex: String,
    seats: BTreeMap<u32, String>,
    shard: Option<String>,
}

fn lobbies(store: &mut Store) -> Result<Vec<Lobby>, String> {
    let found = store.scan("lr:lobby:*")?;
    let mut lobbies = Vec::with_capacity(found.len());
    for Found { key, shard } in found {
        let seats: BTreeMap<u32, String> = store.query(redis::cmd("HGETALL").arg(&key))?;
        let hex = key
            .trim_start_matches("lr:lobby:{")
            .trim_end_matches('}')
            .to_owned();
        lobbies.push(Lobby { hex, seats, shard });
    }
    Ok(lobbies)
}

/// `inspect nodes`.
pub fn nodes(store: &mut Store) -> Result<Value, String> {
    let mut listed: Vec<String> = store.query(redis::cmd("SMEMBERS").arg(NODES_KEY))?;
    for found in store.scan(&format!("{NODE_KEY_PREFIX}*"))? {
        listed.push(found.key.trim_start_matches(NODE_KEY_PREFIX).to_owned());
    }
    listed.sort();
    listed.dedup();
    let mut members: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for lobby in lobbies(store)? {
        let mut seen = Vec::new();
        for member in lobby.seats.values() {
            let node = node_key_of(member).to_owned();
            let entry = members.entry(node.clone()).or_default();
            entry.1 += 1;
            if !seen.contains(&node) {
                entry.0 += 1;
                seen.push(node);
            }
        }
    }
    let mut rows = Vec::new();
    for key in listed {
        let ttl: i64 = store.query(redis::cmd("PTTL").arg(node_key(&key)))?;
        let (lobbies, members) = members.get(&key).copied().unwrap_or_default();
        rows.push(json!({
            "node": key,
            "alive": ttl > 0,
            "ttl_ms": ttl.max(0),
            "lobbies": lobbies,
            "members": members,
        }));
    }
    Ok(Value::Array(rows))
}

/// `inspect lobbies`; in a cluster each row also names its `shard`.
pub fn all_lobbies(store: &mut Store) -> Result<Value, String> {
    let rows = lobbies(store)?
        .into_iter()
        .map(|lobby| {
            let mut nodes: Vec<&str> = lobby.seats.values().map(|m| node_key_of(m)).collect();
            nodes.sort_unstable();
            nodes.dedup();
            let mut row = json!({
                "lobby": lobby.hex,
                "players": lobby.seats.len(),
                "seats": lobby.seats.keys().collect::<Vec<_>>(),
                "nodes": nodes,
            });
            if let Some(shard) = lobby.shard {
                row["shard"] = json!(shard);
            }
            row
        })
        .collect();
    Ok(Value::Array(rows))
}

/// `inspect lobby`: one lobby by its hash (without Redis: its names only).
/// A seat whose player opted in to resume is `resumable`; one held for a
/// player whose connection is gone is `away`. In a cluster: also the
/// lobby's hash `slot` and the `shard` (master address) that serves it.
pub fn lobby(store: Option<&mut Store>, hex: &str) -> Result<Value, String> {
    let mut shard = None;
    let (seats, resumable, away): (BTreeMap<u32, String>, Vec<u8>, Vec<u8>) = match store {
        Some(store) => {
            shard = store.shard_of(&lobby_key(hex));
            let seats = store.query(redis::cmd("HGETALL").arg(lobby_key(hex)))?;
            let (resumable, away): (Option<Vec<u8>>, Option<Vec<u8>>) = store.query(
                redis::cmd("HMGET")
                    .arg(resume_key(hex))
                    .arg("seats")
                    .arg("away"),
            )?;
            (
                seats,
                resumable.unwrap_or_default(),
                away.unwrap_or_default(),
            )
        }
        None => Default::default(),
    };
    let seats: Vec<Value> = seats
        .iter()
        .map(|(seat, member)| {
            let held = |set: &[u8]| u8::try_from(*seat).is_ok_and(|s| set.contains(&s));
            json!({
                "seat": seat,
                "member": member,
                "node": node_key_of(member),
                "resumable": held(&resumable),
                "away": held(&away),
            })
        })
        .collect();
    let mut report = json!({
        "lobby": hex,
        "key": lobby_key(hex),
        "channel": channel(hex),
        "players": seats.len(),
        "seats": seats,
    });
    if let Some((slot, shard)) = shard {
        report["slot"] = json!(slot);
        report["shard"] = json!(shard);
    }
    Ok(report)
}

/// Renders rows of JSON objects as an aligned text table with these columns.
pub fn table(rows: &Value, columns: &[&str]) -> String {
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = rows
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| columns.iter().map(|c| cell(&row[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = json!([{"node": "relay-1/0a", "alive": true, "members": 2},
                          {"node": "r2", "alive": false, "members": 10}]);
        assert_eq!(
            table(&rows, &["node", "alive", "members"]),
            "NODE        ALIVE  MEMBERS\nrelay-1/0a  true   2\nr2          false  10"
        );
    }
}
