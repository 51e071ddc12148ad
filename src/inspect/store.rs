//! Where `inspect` reads: one Redis, or every master of a Redis Cluster
//! (keyed commands through a cluster client, listings by SCAN on each
//! master with a connection of its own).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Connection, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue};

use crate::lobby::redis::open_client;
use crate::lobby::redis::target::{Target, redacted};
use crate::lobby::redis::topology::{
    Shard, from_cluster_shards, from_cluster_slots, node_info, slot_number,
};

/// How long a connection attempt, or an answer, may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long finding Redis (or a cluster seed that answers) may take in all.
const OPEN_DEADLINE: Duration = Duration::from_secs(3);

/// Where `inspect` reads: one Redis, or a Redis Cluster.
pub enum Store {
    Single(Connection),
    Cluster(Box<Cluster>),
}

/// A Redis Cluster: a cluster connection for keyed commands and the masters
/// found when it was opened, for listings.
pub struct Cluster {
    conn: ClusterConnection,
    shards: Vec<Shard>,
    /// How to reach any node: a seed's credentials, TLS and options.
    node_info: ConnectionInfo,
}

/// A key found by a listing, and in a cluster the master it was found on.
pub(super) struct Found {
    pub(super) key: String,
    pub(super) shard: Option<String>,
}

impl Store {
    /// Connects to the Redis or Redis Cluster of `url` (a `--redis-url`),
    /// trusting `ca_cert` (PEM) for TLS when given. Fails within a few
    /// seconds when nothing answers, naming what was tried (without
    /// passwords).
    pub fn open(url: &str, ca_cert: Option<Vec<u8>>) -> Result<Store, String> {
        let target =
            Target::parse(url).map_err(|e| format!("--redis-url {}: {e}", redacted(url)))?;
        match target {
            Target::Single(url) => {
                let info = open_client(&url, ca_cert)
                    .map_err(|e| format!("--redis-url {}: {e}", redacted(&url)))?
                    .get_connection_info()
                    .clone();
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(connect(&info).map(|mut conn| {
                        // A node of a cluster would show its own keys only.
                        let info: String = redis::cmd("INFO")
                            .arg("cluster")
                            .query(&mut conn)
                            .unwrap_or_default();
                        (conn, info.contains("cluster_enabled:1"))
                    }));
                });
                match rx.recv_timeout(OPEN_DEADLINE) {
                    Ok(Ok((conn, false))) => Ok(Store::Single(conn)),
                    Ok(Ok((_, true))) => {
                        return Err(format!(
                            "{} is a node of a Redis Cluster: give the cluster as \
                             redis+cluster://HOST:PORT,... (rediss+cluster:// with TLS)",
                            redacted(&url)
                        ));
                    }
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err(no_answer()),
                }
                .map_err(|e| format!("cannot reach Redis at {}: {e}", redacted(&url)))
            }
            Target::Cluster(seeds) => {
                Cluster::open(&seeds, ca_cert).map(|c| Store::Cluster(c.into()))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Store::Cluster(_))
    }

    /// A command on one key (or none), sent where that key lives.
    pub(super) fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        match self {
            Store::Single(conn) => cmd
                .query(conn)
                .map_err(|e| format!("cannot read Redis: {e}")),
            Store::Cluster(cluster) => cmd
                .query(&mut cluster.conn)
                .map_err(|e| format!("cannot read the Redis Cluster: {e}")),
        }
    }

    /// Every key matching `pattern`, sorted; in a cluster, from every master.
    pub(super) fn scan(&mut self, pattern: &str) -> Result<Vec<Found>, String> {
        let mut found = Vec::new();
        match self {
            Store::Single(conn) => {
                let keys = scan(conn, pattern).map_err(|e| format!("cannot read Redis: {e}"))?;
                found.extend(keys.into_iter().map(|key| Found { key, shard: None }));
            }
            Store::Cluster(cluster) => {
                for shard in &cluster.shards {
                    let addr = shard.addr();
                    let keys = connect(&cluster.node_info_for(shard))
                        .and_then(|mut conn| scan(&mut conn, pattern))
                        .map_err(|e| format!("cannot read shard {addr}: {e}"))?;
                    found.extend(keys.into_iter().map(|key| Found {
                        key,
                        shard: Some(addr.clone()),
                    }));
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.dedup_by(|a, b| a.key == b.key);
        Ok(found)
    }

    /// In a cluster: the hash slot of `key` and the master that serves it
    /// (if one does).
    pub(super) fn shard_of(&self, key: &str) -> Option<(u16, Option<String>)> {
        let Store::Cluster(cluster) = self else {
            return None;
        };
        let slot = slot_number(key);
        let shard = cluster.shards.iter().find(|s| s.serves(slot));
        Some((slot, shard.map(Shard::addr)))
    }
}

impl Cluster {
    fn open(seeds: &[String], ca_cert: Option<Vec<u8>>) -> Result<Cluster, String> {
        let tried = || {
            seeds
                .iter()
                .map(|s| redacted(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut infos = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let client = open_client(seed, ca_cert.clone())
                .map_err(|e| format!("seed {}: {e}", redacted(seed)))?;
            infos.push(client.get_connection_info().clone());
        }
        // Ask every seed at once for the topology; the first answer wins,
        // so one dead seed costs nothing when another answers.
        let (tx, rx) = mpsc::channel();
        for (i, info) in infos.iter().enumerate() {
            let (tx, info) = (tx.clone(), info.clone());
            std::thread::spawn(move || {
                let _ = tx.send((i, connect(&info).and_then(|mut c| topology(&mut c, &info))));
            });
        }
        drop(tx);
        let deadline = std::time::Instant::now() + OPEN_DEADLINE;
        let mut errors = vec![no_answer(); seeds.len()];
        let (first, shards) = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, Ok(shards))) => break (i, shards),
                Ok((i, Err(e))) => errors[i] = describe(&e),
                Err(_) => {
                    let detail = seeds
                        .iter()
                        .zip(&errors)
                        .map(|(s, e)| format!("{}: {e}", redacted(s)))
                        .collect::<Vec<_>>()
                        .join("; ");
                    let hint = if errors
                        .iter()
                        .any(|e| e.contains("cluster support disabled"))
                    {
                        ": not a Redis Cluster? One Redis is given as redis:// (rediss://)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "cannot reach the Redis Cluster through any seed ({detail}){hint}"
                    ));
                }
            }
        };
        // The cluster client, starting with the seed that answered.
        let mut ordered: Vec<&str> = vec![seeds[first].as_str()];
        ordered.extend(
            seeds
                .iter()
                .map(String::as_str)
                .filter(|s| *s != seeds[first]),
        );
        let mut builder = ClusterClient::builder(ordered)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(2);
        if let (Some(root_cert), ConnectionAddr::TcpTls { .. }) = (ca_cert, infos[first].addr()) {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            });
        }
        let conn = builder
            .build()
            .and_then(|client| client.get_connection())
            .map_err(|e| format!("cannot reach the Redis Cluster (seeds {}): {e}", tried()))?;
        Ok(Cluster {
            conn,
            shards,
            node_info: infos.swap_remove(first),
        })
    }

    /// How to reach `shard`: the seed's settings at the shard's address.
    fn node_info_for(&self, shard: &Shard) -> ConnectionInfo {
        node_info(&self.node_info, &shard.host, shard.port)
    }
}

/// A Redis error for people: a timeout says so.
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        format!("no answer within {} s", TIMEOUT.as_secs())
    } else {
        e.to_string()
    }
}

fn no_answer() -> String {
    format!("no answer within {} s", OPEN_DEADLINE.as_secs())
}

/// A plain connection with timeouts.
fn connect(info: &ConnectionInfo) -> redis::RedisResult<Connection> {
    let conn = redis::Client::open(info.clone())?.get_connection_with_timeout(TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    Ok(conn)
}

/// The masters of the cluster and the slots they serve, as one node sees
/// them: `CLUSTER SHARDS` (Redis 7 and later, lists empty masters too), or
/// `CLUSTER SLOTS` where that command is unknown.
fn topology(conn: &mut Connection, info: &ConnectionInfo) -> redis::RedisResult<Vec<Shard>> {
    // Where a node does not know its own address, it is the one we asked.
    let (here, tls) = match info.addr() {
        ConnectionAddr::TcpTls { host, .. } => (host.as_str(), true),
        ConnectionAddr::Tcp(host, _) => (host.as_str(), false),
        _ => ("", false),
    };
    let shards = redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query::<Vec<HashMap<String, redis::Value>>>(conn);
    let mut shards = match shards {
        Ok(shards) => shards
            .iter()
            .filter_map(|shard| from_cluster_shards(shard, here, tls))
            .collect(),
        Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => {
            from_cluster_slots(redis::cmd("CLUSTER").arg("SLOTS").query(conn)?, here)?
        }
        Err(e) => return Err(e),
    };
    shards.sort_by(|a: &Shard, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    Ok(shards)
}

fn scan(conn: &mut Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(conn)?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use redis::Value::{Array, BulkString, Int, Nil};

    fn text(s: &str) -> redis::Value {
        BulkString(s.as_bytes().to_vec())
    }

    /// A node of `CLUSTER SHARDS` as RESP2 gives it (a flat list of pairs).
    fn node(fields: &[(&str, redis::Value)]) -> redis::Value {
        Array(
            fields
                .iter()
                .flat_map(|(k, v)| [text(k), v.clone()])
                .collect(),
        )
    }

    fn shards(value: redis::Value, here: &str, tls: bool) -> Vec<Shard> {
        let shards: Vec<HashMap<String, redis::Value>> =
            FromRedisValue::from_redis_value(value).expect("shards");
        shards
            .iter()
            .filter_map(|s| from_cluster_shards(s, here, tls))
            .collect()
    }

    #[test]
    fn cluster_shards_give_each_online_master_and_its_slots() {
        let reply = Array(vec![
            // After a failover: the old master is down, the new one online.
            node(&[
                ("slots", Array(vec![Int(0), Int(100), Int(200), Int(300)])),
                (
                    "nodes",
                    Array(vec![
                        node(&[
                            ("port", Int(7000)),
                            ("ip", text("10.0.0.1")),
                            ("endpoint", text("10.0.0.1")),
                            ("role", text("master")),
                            ("health", text("fail")),
                        ]),
                        node(&[
                            ("port", Int(7001)),
                            ("tls-port", Int(7101)),
                            ("ip", text("10.0.0.2")),
                            ("endpoint", text("?")),
                            ("role", text("master")),
                            ("health", text("online")),
                        ]),
                    ]),
                ),
            ]),
            // An empty master that is down holds nothing: not listed.
            node(&[
                ("slots", Array(vec![])),
                (
                    "nodes",
                    Array(vec![node(&[
                        ("port", Int(7002)),
                        ("ip", text("10.0.0.3")),
                        ("role", text("master")),
                        ("health", text("fail")),
                    ])]),
                ),
            ]),
            // A node that does not know its address is the one we asked.
            node(&[
                ("slots", Array(vec![Int(101), Int(199)])),
                (
                    "nodes",
                    Array(vec![node(&[
                        ("port", Int(7003)),
                        ("ip", text("")),
                        ("endpoint", text("")),
                        ("role", text("master")),
                        ("health", text("online")),
                    ])]),
                ),
            ]),
        ]);
        let plain = shards(reply.clone(), "seed.example", false);
        assert_eq!(
            plain,
            vec![
                Shard {
                    host: "10.0.0.2".into(),
                    port: 7001,
                    slots: vec![(0, 100), (200, 300)],
                },
                Shard {
                    host: "seed.example".into(),
                    port: 7003,
                    slots: vec![(101, 199)],
                },
            ]
        );
        assert_eq!(
            shards(reply, "seed.example", true)[0].port,
            7101,
            "TLS port"
        );
        assert!(plain[0].serves(250) && !plain[0].serves(150) && plain[1].serves(150));
    }

    #[test]
    fn cluster_slots_give_the_masters_before_redis_7() {
        let range = |start, end, host: redis::Value, port| {
            vec![
                Int(start),
                Int(end),
                Array(vec![host, Int(port), text("id")]),
                Array(vec![text("10.0.0.9"), Int(7009), text("replica")]),
            ]
        };
        let masters = from_cluster_slots(
            vec![
                range(0, 99, text("10.0.0.1"), 7000),
                range(100, 199, Nil, 7001),
                range(200, 299, text("10.0.0.1"), 7000),
            ],
            "seed.example",
        )
        .expect("parsed");
        assert_eq!(
            masters,
            vec![
                Shard {
                    host: "10.0.0.1".into(),
                    port: 7000,
                    slots: vec![(0, 99), (200, 299)],
                },
                Shard {
                    host: "seed.example".into(),
                    port: 7001,
                    slots: vec![(100, 199)],
                },
            ]
        );
    }

    #[test]
    fn slots_and_addresses_as_redis_cluster_has_them() {
        assert_eq!(slot_number("foo"), 12182);
        assert_eq!(
            slot_number("lr:lobby:{abc}"),
            slot_number("lr:resume:{abc}")
        );
        let v6 = Shard {
            host: "::1".into(),
            port: 7000,
            slots: vec![],
        };
        assert_eq!(v6.addr(), "[::1]:7000");
    }
}
