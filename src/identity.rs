//! Who a node is in the lobby store's records.
//!
//! A node's *key* is `<node id>/<incarnation>`, and each member it seats is
//! `<node key>.<n>`, followed by `|<user id>` for a player who authenticated
//! with a token. The incarnation is random per process, so a restarted
//! node never reuses an old member id, and it changes when the other nodes
//! have presumed this one dead (its records are then reaped under the old
//! key while new members are recorded under the new one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::lobby::MemberId;

#[derive(Debug)]
pub struct Identity {
    node_id: String,
    key: Mutex<Arc<str>>,
    next_member: AtomicU64,
}

impl Identity {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            key: Mutex::new(Self::fresh_key(node_id)),
            next_member: AtomicU64::new(1),
        }
    }

    fn fresh_key(node_id: &str) -> Arc<str> {
        format!("{node_id}/{:08x}", rand::random::<u32>()).into()
    }

    /// The node id as configured.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The current node key, `<node id>/<incarnation>`.
    pub fn key(&self) -> Arc<str> {
        self.key.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts a new incarnation; returns the new key.
    pub fn renew(&self) -> Arc<str> {
        let fresh = Self::fresh_key(&self.node_id);
        *self.key.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        fresh
    }

    /// Starts a new incarnation if the current one is still `expected`
    /// (two tasks may learn of the same reaping); returns the current key.
    pub fn renew_from(&self, expected: &str) -> Arc<str> {
        let mut key = self.key.lock().unwrap_or_else(|e| e.into_inner());
        if **key == *expected {
            *key = Self::fresh_key(&self.node_id);
        }
        key.clone()
    }

    /// A member id for a new seat: `<node key>.<n>`, or
    /// `<node key>.<n>|<user id>` for an authenticated player.
    pub fn new_member(&self, user: Option<&str>) -> MemberId {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        match user {
            None => format!("{}.{n}", self.key()).into(),
            Some(user) => format!("{}.{n}|{user}", self.key()).into(),
        }
    }
}

/// The node key a member id was recorded under.
pub fn node_key_of(member: &str) -> &str {
    let member = member.split_once('|').map_or(member, |(member, _)| member);
    member.rsplit_once('.').map_or(member, |(key, _)| key)
}

/// The user id of an authenticated member (what follows the first `|`).
pub fn user_of(member: &str) -> Option<&str> {
    member.split_once('|').map(|(_, user)| user)
}

/// Whether `member` was recorded under node key `key`.
pub fn is_member_of(member: &str, key: &str) -> bool {
    member
        .strip_prefix(key)
        .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_carry_the_node_key() {
        let id = Identity::new("relay-1");
        let key = id.key();
        assert!(key.starts_with("relay-1/"));
        let m = id.new_member(None);
        assert!(is_member_of(&m, &key));
        assert_ne!(id.new_member(None), m);
        let renewed = id.renew();
        assert_ne!(renewed, key);
        assert!(!is_member_of(&id.new_member(None), &key));
        assert_eq!(id.renew_from(&key), renewed, "an old key renews nothing");
        assert_ne!(id.renew_from(&renewed), renewed);
        assert!(!is_member_of("relay-1/abc.1", "relay-1/ab"));
        assert_eq!(node_key_of(&m), &*key);
        assert_eq!(node_key_of("relay.eu-1/0a1b2c3d.17"), "relay.eu-1/0a1b2c3d");
        let authed = id.new_member(Some("alice.smith|x"));
        assert!(is_member_of(&authed, &id.key()));
        assert_eq!(node_key_of(&authed), &*id.key());
        assert_eq!(user_of(&authed), Some("alice.smith|x"));
        assert_eq!(user_of(&m), None);
    }
}
