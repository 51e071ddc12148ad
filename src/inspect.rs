//! `lobby-relay inspect`: what an operator asks of Redis, as tables for
//! people or JSON for scripts. Read-only.
//!
//! - `inspect nodes`: live nodes (heartbeat, time left) and their members.
//! - `inspect lobbies`: every lobby with its players (hash prefixes).
//! - `inspect lobby PASSPHRASE` (or `--hash HEX`): one lobby's key, channel,
//!   seats and the node of each seat.

use std::collections::BTreeMap;

use redis::Connection;
use serde_json::{Value, json};

use crate::identity::node_key_of;
use crate::lobby::redis::{NODE_KEY_PREFIX, NODES_KEY, channel, lobby_key, node_key, resume_key};

/// A lobby as stored: its hash and its seats (seat → member id).
struct Lobby {
    hex: String,
    seats: BTreeMap<u32, String>,
}

fn scan(conn: &mut Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(conn)?
        .collect::<redis::RedisResult<_>>()?;
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn lobbies(conn: &mut Connection) -> redis::RedisResult<Vec<Lobby>> {
    let keys = scan(conn, "lr:lobby:*")?;
    let mut lobbies = Vec::with_capacity(keys.len());
    for key in keys {
        let seats: BTreeMap<u32, String> = redis::cmd("HGETALL").arg(&key).query(conn)?;
        let hex = key
            .trim_start_matches("lr:lobby:{")
            .trim_end_matches('}')
            .to_owned();
        lobbies.push(Lobby { hex, seats });
    }
    Ok(lobbies)
}

/// `inspect nodes`.
pub fn nodes(conn: &mut Connection) -> redis::RedisResult<Value> {
    let mut listed: Vec<String> = redis::cmd("SMEMBERS").arg(NODES_KEY).query(conn)?;
    for key in scan(conn, &format!("{NODE_KEY_PREFIX}*"))? {
        listed.push(key.trim_start_matches(NODE_KEY_PREFIX).to_owned());
    }
    listed.sort();
    listed.dedup();
    let mut members: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for lobby in lobbies(conn)? {
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
        let ttl: i64 = redis::cmd("PTTL").arg(node_key(&key)).query(conn)?;
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

/// `inspect lobbies`.
pub fn all_lobbies(conn: &mut Connection) -> redis::RedisResult<Value> {
    let rows = lobbies(conn)?
        .into_iter()
        .map(|lobby| {
            let mut nodes: Vec<&str> = lobby.seats.values().map(|m| node_key_of(m)).collect();
            nodes.sort_unstable();
            nodes.dedup();
            json!({
                "lobby": lobby.hex,
                "players": lobby.seats.len(),
                "seats": lobby.seats.keys().collect::<Vec<_>>(),
                "nodes": nodes,
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

/// `inspect lobby`: one lobby by its hash (without Redis: its names only).
/// A seat whose player opted in to resume is `resumable`; one held for a
/// player whose connection is gone is `away`.
pub fn lobby(conn: Option<&mut Connection>, hex: &str) -> redis::RedisResult<Value> {
    let (seats, resumable, away): (BTreeMap<u32, String>, Vec<u8>, Vec<u8>) = match conn {
        Some(conn) => {
            let seats = redis::cmd("HGETALL").arg(lobby_key(hex)).query(conn)?;
            let (resumable, away): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(resume_key(hex))
                .arg("seats")
                .arg("away")
                .query(conn)?;
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
    Ok(json!({
        "lobby": hex,
        "key": lobby_key(hex),
        "channel": channel(hex),
        "players": seats.len(),
        "seats": seats,
    }))
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
