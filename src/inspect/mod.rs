//! `lobby-relay inspect`: what an operator asks of Redis, as tables for
//! people or JSON for scripts. Read-only.
//!
//! - `inspect nodes`: live nodes (heartbeat, time left) and their members.
//! - `inspect lobbies`: every lobby with its players, host seat and epoch,
//!   the queue of a quick-match lobby and its spectators (a lobby watched
//!   while it has no player too).
//! - `inspect lobby PASSPHRASE` (or `--hash HEX`): one lobby's key, channel,
//!   host, queue, seats and the node of each seat, and its spectators by
//!   node.
//! - `inspect queues`: every quick-match queue, its count of lobbies and its
//!   open lobby (the one waiting for players) with the players in it.
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
use crate::lobby::redis::{
    NODE_KEY_PREFIX, NODES_KEY, channel, lobby_key, meta_key, node_key, resume_key,
};
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

/// What a lobby's `lr:meta:{hex}` says: its host seat and epoch, and the
/// name of its queue (quick match), each `None` when absent; and how many
/// spectators watch it from each node (its `sp:<node key>` fields).
struct Meta {
    host: Option<u32>,
    epoch: Option<u64>,
    queue: Option<String>,
    spectators: BTreeMap<String, u64>,
}

impl Meta {
    /// The lobby's spectators: the sum of every node's.
    fn spectators(&self) -> u64 {
        self.spectators.values().sum()
    }
}

fn meta(store: &mut Store, hex: &str) -> Result<Meta, String> {
    // A handful of fields: host, epoch, queue, reservations, spectators.
    let fields: BTreeMap<String, String> = store.query(redis::cmd("HGETALL").arg(meta_key(hex)))?;
    let number = |name: &str| fields.get(name).and_then(|v| v.parse().ok());
    Ok(Meta {
        host: number("host").and_then(|h: u64| u32::try_from(h).ok()),
        epoch: number("epoch"),
        queue: fields.get("queue").map(|key| queue_name(key)),
        spectators: fields
            .iter()
            .filter_map(|(field, count)| {
                let node = field.strip_prefix(SPECTATORS_PREFIX)?;
                Some((node.to_owned(), count.parse().ok()?))
            })
            .filter(|(_, count)| *count > 0)
            .collect(),
    })
}

/// The start of a meta field counting one node's spectators
/// (`sp:<node key>`, see `lobby/redis/lua/held.lua`).
const SPECTATORS_PREFIX: &str = "sp:";

/// A queue's name from its key (`lr:queue:{q:NAME}`).
fn queue_name(key: &str) -> String {
    key.strip_prefix(QUEUE_KEY_PREFIX)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(key)
        .to_owned()
}

/// The start of every queue's key (see [`crate::lobby::redis::queue_key`]).
const QUEUE_KEY_PREFIX: &str = "lr:queue:{q:";

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

/// `inspect lobbies`: each lobby with its `host` seat, `epoch` and `queue`
/// (null when absent) and its count of `spectators`; in a cluster each row
/// also names its `shard`. A lobby watched while it has no player (its
/// `lr:meta` counts spectators, it has no `lr:lobby` hash) is listed too,
/// with 0 players; a meta with no spectators and no lobby (a quick-match
/// lobby reserved but not yet taken) is not.
pub fn all_lobbies(store: &mut Store) -> Result<Value, String> {
    let mut rows = Vec::new();
    let mut found = lobbies(store)?;
    let seated: std::collections::BTreeSet<String> = found.iter().map(|l| l.hex.clone()).collect();
    let mut metas = BTreeMap::new();
    for Found { key, shard } in store.scan("lr:meta:*")? {
        let hex = key
            .trim_start_matches("lr:meta:{")
            .trim_end_matches('}')
            .to_owned();
        if seated.contains(&hex) {
            continue;
        }
        let meta = meta(store, &hex)?;
        if meta.spectators() > 0 {
            metas.insert(hex.clone(), meta);
            found.push(Lobby {
                hex,
                seats: BTreeMap::new(),
                shard,
            });
        }
    }
    found.sort_by(|a, b| a.hex.cmp(&b.hex));
    for lobby in found {
        let meta = match metas.remove(&lobby.hex) {
            Some(meta) => meta,
            None => meta(store, &lobby.hex)?,
        };
        let mut nodes: Vec<&str> = lobby.seats.values().map(|m| node_key_of(m)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut row = json!({
            "lobby": lobby.hex,
            "players": lobby.seats.len(),
            "seats": lobby.seats.keys().collect::<Vec<_>>(),
            "host": meta.host,
            "epoch": meta.epoch,
            "queue": meta.queue,
            "spectators": meta.spectators(),
            "nodes": nodes,
        });
        if let Some(shard) = lobby.shard {
            row["shard"] = json!(shard);
        }
        rows.push(row);
    }
    Ok(Value::Array(rows))
}

/// `inspect queues`: every quick-match queue (SCAN `lr:queue:*`, on every
/// master of a cluster) with its name, its count of `lobbies`, its `open`
/// lobby (the hash of the one waiting for players, null if none) and the
/// players seated in it (`open_players`); in a cluster also its `shard`.
pub fn queues(store: &mut Store) -> Result<Value, String> {
    let mut rows = Vec::new();
    for Found { key, shard } in store.scan("lr:queue:*")? {
        let (open, lobbies): (Option<String>, Option<u64>) =
            store.query(redis::cmd("HMGET").arg(&key).arg("open").arg("lobbies"))?;
        let open_players: Option<u64> = match &open {
            Some(hex) => Some(store.query(redis::cmd("HLEN").arg(lobby_key(hex)))?),
            None => None,
        };
        let mut row = json!({
            "queue": queue_name(&key),
            "lobbies": lobbies.unwrap_or(0),
            "open": open,
            "open_players": open_players,
        });
        if let Some(shard) = shard {
            row["shard"] = json!(shard);
        }
        rows.push(row);
    }
    Ok(Value::Array(rows))
}

/// `inspect lobby`: one lobby by its hash (without Redis: its names only).
/// A seat whose player opted in to resume is `resumable`; one held for a
/// player whose connection is gone is `away`; the host's seat is `host`.
/// The lobby's `host` seat, `epoch` and `queue` (quick match) come from its
/// `lr:meta:{hex}`, null when absent, and so do its `spectators` (the
/// total) and `spectators_by_node` (node key → count, from the meta's
/// `sp:<node key>` fields). In a cluster: also the lobby's hash
/// `slot` and the `shard` (master address) that serves it.
pub fn lobby(store: Option<&mut Store>, hex: &str) -> Result<Value, String> {
    let mut shard = None;
    let mut found_meta = None;
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
            found_meta = Some(meta(store, hex)?);
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
                "host": found_meta.as_ref().is_some_and(|m| m.host == Some(*seat)),
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
    if let Some(meta) = found_meta {
        report["host"] = json!(meta.host);
        report["epoch"] = json!(meta.epoch);
        report["queue"] = json!(meta.queue);
        report["spectators"] = json!(meta.spectators());
        report["spectators_by_node"] = json!(meta.spectators);
    }
    if let Some((slot, shard)) = shard {
        report["slot"] = json!(slot);
        report["shard"] = json!(shard);
    }
    Ok(report)
}

/// Renders rows of JSON objects as an aligned text table with these columns
/// (`-` where a value is null or missing).
pub fn table(rows: &Value, columns: &[&str]) -> String {
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
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
                          {"node": "r2", "alive": false, "members": 10, "queue": "duel"}]);
        assert_eq!(
            table(&rows, &["node", "alive", "members", "queue"]),
            "NODE        ALIVE  MEMBERS  QUEUE\nrelay-1/0a  true   2        -\nr2          false  10       duel"
        );
    }

    #[test]
    fn queue_names_come_from_their_keys() {
        let key = crate::lobby::redis::queue_key("duel-2");
        assert!(key.starts_with(QUEUE_KEY_PREFIX), "{key}");
        assert_eq!(queue_name(&key), "duel-2");
        assert_eq!(queue_name("odd"), "odd");
    }
}
