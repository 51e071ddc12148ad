//! Who a node is in the lobby store's records.
//!
//! A node's *key* is `<node id>/<incarnation>`, and each member it seats is
//! `<node key>.<n>`, followed by `|<user id>` for a player who authenticated
//! with a token. The incarnation is random per process, so a restarted
//! node never reuses an old member id, and it changes when the other nodes
//! have presumed this one dead (its records are then reaped under the old
//! key while new members are recorded under the new one).
//!
//! [`MemberId`] is such a member record, cheap to clone; its methods read
//! its parts. The free functions read the same parts of a record as stored
//! in Redis (a plain string). This module is a leaf: it imports nothing of
//! the crate.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A member's identity in a lobby's records: `<node key>.<n>`, followed by
/// `|<user id>` for an authenticated player. Unique across the cluster;
/// never derived from the passphrase. Cloning it shares the string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberId(Arc<str>);

impl MemberId {
    /// The whole record, as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node key the member was recorded under.
    pub fn node_key(&self) -> &str {
        node_key_of(&self.0)
    }

    /// The user id of an authenticated member.
    pub fn user(&self) -> Option<&str> {
        user_of(&self.0)
    }

    /// Whether the member was recorded under node key `key`.
    pub fn is_member_of(&self, key: &str) -> bool {
        is_member_of(&self.0, key)
    }

    /// The record without its user id: `<node key>.<n>`.
    pub fn without_user(&self) -> &str {
        self.0.split_once('|').map_or(&self.0, |(base, _)| base)
    }

    /// Whether two records name the same member (the user id part may
    /// differ: a resumed seat keeps the user of its first member).
    pub fn same_member(&self, other: &MemberId) -> bool {
        self.without_user() == other.without_user()
    }

    /// This record, carrying the user id of `old` if it has none of its own
    /// (a resumed seat keeps the user of its first member).
    pub fn with_user_of(&self, old: &MemberId) -> MemberId {
        match (self.user(), old.user()) {
            (None, Some(user)) => format!("{self}|{user}").into(),
            _ => self.clone(),
        }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MemberId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for MemberId {
    fn from(record: &str) -> Self {
        MemberId(record.into())
    }
}

impl From<String> for MemberId {
    fn from(record: String) -> Self {
        MemberId(record.into())
    }
}

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

/// The node id of a node key (`<node id>/<incarnation>`).
pub fn node_id_of_key(key: &str) -> &str {
    key.split_once('/').map_or(key, |(node, _)| node)
}

/// The node key a member record (as stored) was recorded under.
pub fn node_key_of(member: &str) -> &str {
    let member = member.split_once('|').map_or(member, |(member, _)| member);
    member.rsplit_once('.').map_or(member, |(key, _)| key)
}

/// The user id of an authenticated member's record, as stored (what follows
/// the first `|`).
pub fn user_of(member: &str) -> Option<&str> {
    member.split_once('|').map(|(_, user)| user)
}

/// Whether the member record `member` (as stored) was recorded under node
/// key `key`.
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
        assert!(is_member_of(m.as_str(), &key));
        assert_ne!(id.new_member(None), m);
        let renewed = id.renew();
        assert_ne!(renewed, key);
        assert!(!is_member_of(id.new_member(None).as_str(), &key));
        assert_eq!(id.renew_from(&key), renewed, "an old key renews nothing");
        assert_ne!(id.renew_from(&renewed), renewed);
        assert!(!is_member_of("relay-1/abc.1", "relay-1/ab"));
        assert_eq!(node_key_of(m.as_str()), &*key);
        assert_eq!(node_key_of("relay.eu-1/0a1b2c3d.17"), "relay.eu-1/0a1b2c3d");
        let authed = id.new_member(Some("alice.smith|x"));
        assert!(is_member_of(authed.as_str(), &id.key()));
        assert_eq!(node_key_of(authed.as_str()), &*id.key());
        assert_eq!(user_of(authed.as_str()), Some("alice.smith|x"));
        assert_eq!(user_of(m.as_str()), None);
        assert_eq!(authed.user(), Some("alice.smith|x"));
        assert_eq!(authed.node_key(), &*id.key());
        assert!(authed.is_member_of(&id.key()));
        let resumed = MemberId::from(format!("{}.99", id.key()));
        let with_user = resumed.with_user_of(&authed);
        assert_eq!(with_user.user(), Some("alice.smith|x"));
        assert!(with_user.same_member(&resumed));
        assert!(!with_user.same_member(&authed));
        assert_eq!(resumed.with_user_of(&m), resumed);
        assert_eq!(node_id_of_key("relay.eu-1/0a1b2c3d"), "relay.eu-1");
        assert_eq!(node_id_of_key("nokey"), "nokey");
    }
}
