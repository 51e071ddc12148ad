//! Quick match: the names of queues, and the ids of the lobbies they open.
//!
//! A queue name is validated like a passphrase (trimmed, lower-cased, 3 to
//! 64 characters of `a-z`, `0-9` and `-`) but is not secret: it shows in
//! logs, Redis keys and the admin view. A queue's lobbies have random ids,
//! never derived from anything a client sent, so no passphrase reaches
//! them.

use std::fmt;
use std::sync::Arc;

use crate::passphrase::{self, LobbyId, PassphraseError};

/// A valid, normalised queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName(Arc<str>);

/// Why a queue name was refused (the text is shown to players).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a queue name must be 3 to 64 characters of a-z, 0-9 and '-', beginning and ending with a letter or digit ({0})"
)]
pub struct QueueNameError(pub PassphraseError);

impl QueueName {
    /// Normalises and validates a queue name as sent by a client.
    pub fn parse(raw: &str) -> Result<Self, QueueNameError> {
        passphrase::normalize(raw)
            .map(|name| Self(name.into()))
            .map_err(QueueNameError)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, shared (for the frames that carry it).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fresh random lobby id for a queue's new lobby: 256 random bits.
pub fn random_lobby() -> LobbyId {
    LobbyId::from_bytes(rand::random())
}

/// A fresh random lobby id whose hex form hashes to Redis Cluster slot
/// `slot` (CRC16/XMODEM of the 64 hex digits, modulo 16,384), so that a
/// queue's lobbies live on the queue's own shard and one Lua step can change
/// both. Random but for 14 bits: the last two bytes are searched (about
/// 16,000 CRC steps of 4 bytes on average, a fraction of a millisecond).
pub fn random_lobby_in_slot(slot: u16) -> LobbyId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    loop {
        let mut bytes: [u8; 32] = rand::random();
        let mut prefix = crc16::State::<crc16::XMODEM>::new();
        for &b in &bytes[..30] {
            prefix.update(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
        let start: u16 = rand::random();
        for step in 0..=u16::MAX {
            let tail = start.wrapping_add(step);
            let [hi, lo] = tail.to_be_bytes();
            let mut state = prefix;
            state.update(&[
                HEX[usize::from(hi >> 4)],
                HEX[usize::from(hi & 0xf)],
                HEX[usize::from(lo >> 4)],
                HEX[usize::from(lo & 0xf)],
            ]);
            if state.get() % 16384 == slot {
                bytes[30] = hi;
                bytes[31] = lo;
                return LobbyId::from_bytes(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lobby::redis::topology::slot_number;

    #[test]
    fn names_are_normalised_like_passphrases() {
        assert_eq!(QueueName::parse(" Duel ").unwrap().as_str(), "duel");
        for bad in ["", "ab", "-duel", "du el", "duël", &"x".repeat(65)] {
            assert!(QueueName::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The ids found are random and in the slot asked for, as Redis
    /// computes it for the lobby's keys.
    #[test]
    fn lobby_ids_land_in_the_slot_asked_for() {
        for queue in ["duel", "ranked-4v4", "x9z"] {
            let slot = slot_number(&format!("lr:queue:{{q:{queue}}}"));
            let a = random_lobby_in_slot(slot);
            let b = random_lobby_in_slot(slot);
            assert_ne!(a, b);
            for id in [a, b] {
                assert_eq!(slot_number(&format!("lr:lobby:{{{id}}}")), slot, "{queue}");
            }
        }
        assert_ne!(random_lobby(), random_lobby());
    }
}
