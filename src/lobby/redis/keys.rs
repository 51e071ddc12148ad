//! The names of lobby-relay's Redis keys and channels.
//!
//! The `{...}` around a lobby's hash is a Redis Cluster hash tag: every key
//! and the channel of a lobby live in the same slot. The liveness keys
//! (`lr:{nodes}`, `lr:{nodes}:node:*`, `lr:{nodes}:reaped:*`) share the tag
//! `{nodes}` and so one shard; the others (`lr:node-lobbies:*`, `lr:away`,
//! `lr:rate:*`) live where their names hash.

use std::net::IpAddr;

use crate::passphrase::LobbyId;

/// Prefix of every Redis key and channel of lobby-relay.
pub const PREFIX: &str = "lr:";
const CHANNEL_PREFIX: &str = "lr:chan:{";

/// The membership hash of a lobby.
pub fn lobby_key(hex: &str) -> String {
    format!("lr:lobby:{{{hex}}}")
}

/// The pub/sub channel of a lobby.
pub fn channel(hex: &str) -> String {
    format!("{CHANNEL_PREFIX}{hex}}}")
}

/// The pub/sub channel of lobby `id`, as [`channel`] of its hex form, in
/// one allocation (the hex digits written straight into it: this runs for
/// every game message).
pub fn channel_of(id: &LobbyId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = id.as_bytes();
    let mut name = String::with_capacity(CHANNEL_PREFIX.len() + 2 * bytes.len() + 1);
    name.push_str(CHANNEL_PREFIX);
    for &b in bytes {
        name.push(char::from(HEX[usize::from(b >> 4)]));
        name.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    name.push('}');
    name
}

/// A live node's heartbeat key; it expires when the node stops renewing it.
///
/// The liveness keys (heartbeats, [`NODES_KEY`], reaped marks) share the hash
/// tag `{nodes}`: in a Redis Cluster they sit on one shard, so that a shard
/// failing over stops every heartbeat and every reaper at once, never the
/// heartbeats of some nodes while others go on judging them dead.
pub fn node_key(node: &str) -> String {
    format!("lr:{{nodes}}:node:{node}")
}

/// The set of every node key that has announced itself (live or not yet
/// reaped).
pub const NODES_KEY: &str = "lr:{nodes}";

/// The start of every heartbeat key, for scans.
pub const NODE_KEY_PREFIX: &str = "lr:{nodes}:node:";

/// The lobbies a node has (or recently had) members in: where to look for
/// them if the node dies.
pub fn node_lobbies_key(node: &str) -> String {
    format!("lr:node-lobbies:{node}")
}

/// Set by the node that reaped `node`: tells it, should it come back, that
/// its seats are gone.
pub fn reaped_key(node: &str) -> String {
    format!("lr:{{nodes}}:reaped:{node}")
}

/// The join limit's state for one client address (expires by itself).
pub fn join_rate_key(client: IpAddr) -> String {
    format!("lr:rate:join:{client}")
}

/// The join limit's state for one authenticated user, named by the SHA-256
/// of its id (expires by itself).
pub fn user_join_rate_key(user: &str) -> String {
    format!("lr:rate:join-user:{}", crate::auth::user_hash(user))
}

/// The lobby of a channel name, if it is one of ours.
pub fn lobby_of_channel(name: &str) -> Option<LobbyId> {
    LobbyId::from_hex(name.strip_prefix(CHANNEL_PREFIX)?.strip_suffix('}')?)
}

/// The membership hash of a lobby channel's lobby.
pub fn lobby_key_of_channel(channel: &str) -> String {
    format!(
        "lr:lobby:{}",
        channel.strip_prefix("lr:chan:").unwrap_or(channel)
    )
}

/// A quick-match queue's hash (its open lobby, its count of lobbies). The
/// hash tag is `q:<name>`: the queue's lobbies are given ids whose keys hash
/// to the same slot.
pub fn queue_key(name: &str) -> String {
    format!("lr:queue:{{q:{name}}}")
}

/// What is known of a lobby besides its seats: its host, and for a queue's
/// lobby its queue and reservations.
pub fn meta_key(hex: &str) -> String {
    format!("lr:meta:{{{hex}}}")
}

/// The sorted set of held seats by the end of their grace period.
pub const AWAY_KEY: &str = "lr:away";

/// What is held for a lobby's resumable seats.
pub fn resume_key(hex: &str) -> String {
    format!("lr:resume:{{{hex}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lobby::redis::target;

    #[test]
    fn names_carry_the_hash_as_a_cluster_hash_tag() {
        let hex = "ab".repeat(32);
        assert_eq!(lobby_key(&hex), format!("lr:lobby:{{{hex}}}"));
        assert_eq!(channel(&hex), format!("lr:chan:{{{hex}}}"));
        assert_eq!(lobby_of_channel(&channel(&hex)).unwrap().to_string(), hex);
        assert!(lobby_of_channel("lr:chan:{nope}").is_none());
        assert!(lobby_of_channel("other").is_none());
        assert!(node_key("relay-1/0a").starts_with(NODE_KEY_PREFIX));
        assert!(NODE_KEY_PREFIX.starts_with(PREFIX));
        for key in [node_key("a/1"), NODES_KEY.into(), reaped_key("a/1")] {
            assert_eq!(
                target::slot(key.as_bytes()),
                target::slot(NODES_KEY.as_bytes())
            );
        }
        let id = LobbyId::from_passphrase("channel-names").unwrap();
        assert_eq!(channel_of(&id), channel(&id.to_string()));
        assert_eq!(lobby_key_of_channel(&channel(&hex)), lobby_key(&hex));
    }
}
