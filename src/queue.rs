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
/// both. Random but for its last two bytes, which are solved for.
///
/// CRC16/XMODEM (initial value 0, no final XOR) is linear over GF(2): for
/// messages of one length, CRC(a ^ b) = CRC(a) ^ CRC(b), and leading zero
/// bytes leave it 0. So CRC(prefix ‖ suffix) = CRC(prefix ‖ 0000) ^
/// CRC(suffix), and the suffix (four hex digits) whose CRC makes the sum
/// land in the slot is looked up in a table of the 65,536 suffixes, built
/// once. (Not every CRC value has a suffix of hex digits; a slot has four
/// CRC values, and a prefix whose four all miss, about one in fifty, is
/// drawn again.)
pub fn random_lobby_in_slot(slot: u16) -> LobbyId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let by_crc = suffixes_by_crc();
    loop {
        let mut bytes: [u8; 32] = rand::random();
        let mut text = [0u8; 64];
        for (i, &b) in bytes[..30].iter().enumerate() {
            text[2 * i] = HEX[usize::from(b >> 4)];
            text[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        // text[60..64] stays zero: CRC(prefix ‖ 0000).
        let base = crc16::State::<crc16::XMODEM>::calculate(&text);
        let start: u16 = rand::random();
        for k in 0..4u16 {
            let target = (slot & 0x3fff) | (((start.wrapping_add(k)) & 3) << 14);
            if let Some(suffix) = by_crc[usize::from(base ^ target)] {
                let [hi, lo] = suffix.to_be_bytes();
                bytes[30] = hi;
                bytes[31] = lo;
                return LobbyId::from_bytes(bytes);
            }
        }
    }
}

/// For each CRC16/XMODEM value, a two-byte value whose four hex digits
/// have that CRC, if any.
fn suffixes_by_crc() -> &'static [Option<u16>] {
    static TABLE: std::sync::OnceLock<Vec<Option<u16>>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut table = vec![None; 1 << 16];
        for value in 0..=u16::MAX {
            let [hi, lo] = value.to_be_bytes();
            let digits = [
                HEX[usize::from(hi >> 4)],
                HEX[usize::from(hi & 0xf)],
                HEX[usize::from(lo >> 4)],
                HEX[usize::from(lo & 0xf)],
            ];
            let crc = crc16::State::<crc16::XMODEM>::calculate(&digits);
            table[usize::from(crc)].get_or_insert(value);
        }
        table
    })
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
        // Every slot can be had (a sample of them, and the edges).
        for slot in (0..16384).step_by(97).chain([16383]) {
            let id = random_lobby_in_slot(slot);
            assert_eq!(slot_number(&format!("lr:lobby:{{{id}}}")), slot);
        }
    }
}
