//! A Redis Cluster's masters and the slots they serve, as `CLUSTER SHARDS`
//! (or `CLUSTER SLOTS` before Redis 7) tell them; used by `inspect` and by
//! the node's sharded pub/sub.

use std::collections::{BTreeMap, HashMap};

use redis::{ConnectionAddr, ConnectionInfo, FromRedisValue};

/// One master and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub host: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl Shard {
    /// `host:port` (`[host]:port` for IPv6).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of
/// its hash tag (the first non-empty `{...}`), or of the whole key, modulo
/// 16,384.
pub fn slot_number(key: &str) -> u16 {
    let key = key.as_bytes();
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// How to reach the node at `host:port`: the settings of `base` (a seed:
/// credentials, TLS, options) at that address.
pub fn node_info(base: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match base.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    base.clone().set_addr(addr)
}

fn field<T: FromRedisValue>(map: &HashMap<String, redis::Value>, name: &str) -> Option<T> {
    T::from_redis_value_ref(map.get(name)?).ok()
}

/// A known endpoint (`?` or empty: unknown).
fn known(host: Option<String>) -> Option<String> {
    host.filter(|h| !h.is_empty() && h != "?")
}

/// One entry of `CLUSTER SHARDS`: its master (the online one, after a
/// failover), with the port for our kind of connection.
pub fn from_cluster_shards(
    shard: &HashMap<String, redis::Value>,
    here: &str,
    tls: bool,
) -> Option<Shard> {
    let bounds: Vec<u16> = field(shard, "slots").unwrap_or_default();
    let slots: Vec<(u16, u16)> = bounds.chunks_exact(2).map(|b| (b[0], b[1])).collect();
    let nodes: Vec<HashMap<String, redis::Value>> = field(shard, "nodes").unwrap_or_default();
    let is = |node: &HashMap<String, redis::Value>, name: &str, value: &str| {
        field::<String>(node, name).as_deref() == Some(value)
    };
    let mut masters = nodes.iter().filter(|n| is(n, "role", "master"));
    let master = masters
        .clone()
        .find(|n| is(n, "health", "online"))
        .or_else(|| masters.next())?;
    // A master that is down and serves no slot holds nothing to list.
    if slots.is_empty() && !is(master, "health", "online") {
        return None;
    }
    let (first, second) = if tls {
        ("tls-port", "port")
    } else {
        ("port", "tls-port")
    };
    let port = field(master, first).or_else(|| field(master, second))?;
    let host = known(field(master, "endpoint"))
        .or_else(|| known(field(master, "ip")))
        .unwrap_or_else(|| here.to_owned());
    Some(Shard { host, port, slots })
}

/// `CLUSTER SLOTS`: slot ranges, each with its master first.
pub fn from_cluster_slots(
    ranges: Vec<Vec<redis::Value>>,
    here: &str,
) -> redis::RedisResult<Vec<Shard>> {
    let mut masters: BTreeMap<(String, u16), Vec<(u16, u16)>> = BTreeMap::new();
    for range in ranges {
        let [start, end, master, ..] = range.as_slice() else {
            continue;
        };
        let master = Vec::<redis::Value>::from_redis_value_ref(master)?;
        let [host, port, ..] = master.as_slice() else {
            continue;
        };
        let host =
            known(String::from_redis_value_ref(host).ok()).unwrap_or_else(|| here.to_owned());
        masters
            .entry((host, u16::from_redis_value_ref(port)?))
            .or_default()
            .push((
                u16::from_redis_value_ref(start)?,
                u16::from_redis_value_ref(end)?,
            ));
    }
    Ok(masters
        .into_iter()
        .map(|((host, port), slots)| Shard { host, port, slots })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lobby::redis::target;

    #[test]
    fn slot_numbers_are_the_redis_crate_s_slots() {
        for key in [
            "foo",
            "lr:lobby:{abc}",
            "{}x",
            "a{}{b}",
            "{b}",
            "x{y",
            "lr:{nodes}:node:a/1",
            "",
            "{lr-nodes}",
            "lr:chan:{0123456789abcdef}",
        ] {
            assert_eq!(
                target::Slot::new(slot_number(key)),
                Some(target::slot(key.as_bytes())),
                "{key:?}"
            );
        }
        assert_eq!(slot_number("foo"), 12182);
    }
}
