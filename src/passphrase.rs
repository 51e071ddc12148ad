//! Passphrases: normalise, validate, and hash into a [`LobbyId`].
//!
//! This is the only place that sees a passphrase in clear. Everything after
//! [`LobbyId::from_passphrase`] works with the hash: the lobby store, the
//! logs and the metrics never receive the passphrase itself.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Shortest accepted passphrase, in characters, after normalisation.
pub const MIN_LEN: usize = 3;
/// Longest accepted passphrase, in characters, after normalisation.
pub const MAX_LEN: usize = 64;

/// Why a passphrase was refused. The text is shown to players.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassphraseError {
    #[error("a passphrase must be 3 to 64 characters long")]
    Length,
    #[error("a passphrase may only contain the letters a-z, the digits 0-9 and '-'")]
    Characters,
    #[error("a passphrase must begin and end with a letter or a digit")]
    Edges,
}

/// Normalises a passphrase as `docs/protocol.md` says: trim surrounding white
/// space, lower-case ASCII letters, then check length and alphabet.
pub fn normalize(raw: &str) -> Result<String, PassphraseError> {
    let trimmed = raw.trim();
    // Check the length in bytes first: any accepted passphrase is ASCII, so
    // its byte length is its character length, and a huge input is refused
    // without being copied.
    if trimmed.len() < MIN_LEN || trimmed.len() > MAX_LEN {
        // A short byte length cannot hide a valid passphrase; a long one made
        // of multi-byte characters is refused for its characters instead,
        // which is the more useful message.
        if trimmed.is_ascii() || trimmed.len() < MIN_LEN {
            return Err(PassphraseError::Length);
        }
        return Err(PassphraseError::Characters);
    }
    let normalized = trimmed.to_ascii_lowercase();
    let bytes = normalized.as_bytes();
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(PassphraseError::Characters);
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return Err(PassphraseError::Edges);
    }
    Ok(normalized)
}

/// A lobby's identity: the SHA-256 of its normalised passphrase.
///
/// `Display` gives the 64-character lowercase hex form used in Redis keys and
/// channels; [`LobbyId::short`] gives the prefix used in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LobbyId([u8; 32]);

impl LobbyId {
    /// Normalises, validates and hashes a passphrase as typed by a player:
    /// SHA-256 of the normalised passphrase.
    pub fn from_passphrase(raw: &str) -> Result<Self, PassphraseError> {
        Self::from_passphrase_keyed(raw, None)
    }

    /// Like [`LobbyId::from_passphrase`], but with a server-side secret the
    /// id is HMAC-SHA-256(secret, normalised passphrase): a copy of Redis
    /// then does not give passphrases away to a dictionary attack.
    pub fn from_passphrase_keyed(
        raw: &str,
        secret: Option<&[u8]>,
    ) -> Result<Self, PassphraseError> {
        let normalized = normalize(raw)?;
        Ok(Self(match secret {
            None => Sha256::digest(normalized.as_bytes()).into(),
            Some(secret) => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
                mac.update(normalized.as_bytes());
                mac.finalize().into_bytes().into()
            }
        }))
    }

    /// A lobby id of 32 given bytes (a queue's lobbies: random ones).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 64-character hex form (as found in a Redis key or channel).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(out))
    }

    /// The 32 bytes of the hash (for names built from its hex digits
    /// without a formatter).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits: enough to tell lobbies apart in a log, too
    /// little to run a dictionary attack against.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_owned()
    }
}

impl fmt::Display for LobbyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LobbyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LobbyId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_surrounding_space() {
        assert_eq!(normalize("  Jump-Rocket \t\n").unwrap(), "jump-rocket");
        assert_eq!(normalize("abc").unwrap(), "abc");
        assert_eq!(normalize("a-1").unwrap(), "a-1");
        assert_eq!(normalize(&"x".repeat(64)).unwrap(), "x".repeat(64));
    }

    #[test]
    fn refuses_bad_lengths() {
        assert_eq!(normalize(""), Err(PassphraseError::Length));
        assert_eq!(normalize("   "), Err(PassphraseError::Length));
        assert_eq!(normalize("ab"), Err(PassphraseError::Length));
        assert_eq!(normalize(" ab "), Err(PassphraseError::Length));
        assert_eq!(normalize(&"x".repeat(65)), Err(PassphraseError::Length));
    }

    #[test]
    fn refuses_bad_characters() {
        for bad in [
            "jump_rocket",
            "jump rocket",
            "jümp-rocket",
            "jump.rocket",
            "ab\u{0}c",
        ] {
            assert_eq!(normalize(bad), Err(PassphraseError::Characters), "{bad:?}");
        }
        // Long and non-ASCII: the alphabet is the problem, not the length.
        assert_eq!(normalize(&"ü".repeat(40)), Err(PassphraseError::Characters));
    }

    #[test]
    fn refuses_dashes_at_the_edges() {
        for bad in ["-jump", "jump-", "---", "-a-"] {
            assert_eq!(normalize(bad), Err(PassphraseError::Edges), "{bad:?}");
        }
    }

    #[test]
    fn lobby_id_is_sha256_of_the_normalised_passphrase() {
        // printf %s jump-rocket | sha256sum
        let id = LobbyId::from_passphrase(" JUMP-rocket ").unwrap();
        assert_eq!(
            id.to_string(),
            "d41c1447c031126dec71611ad10ab450600668861d392ef958758d79cc7f7c62"
        );
        assert_eq!(id.to_string().len(), 64);
        assert_eq!(LobbyId::from_hex(&id.to_string()), Some(id));
        assert_eq!(id.short(), id.to_string()[..8]);
    }

    #[test]
    fn a_secret_turns_the_id_into_an_hmac() {
        // printf %s jump-rocket | openssl dgst -sha256 -hmac s3cret
        let id = LobbyId::from_passphrase_keyed("Jump-Rocket", Some(b"s3cret")).unwrap();
        assert_eq!(
            id.to_string(),
            "dbdd3acb8ebf4597dc944c9f9cfea91601592c60ba05948a4054e1b49ca9a28e"
        );
        assert_ne!(id, LobbyId::from_passphrase("jump-rocket").unwrap());
    }

    #[test]
    fn from_hex_refuses_anything_else() {
        assert_eq!(LobbyId::from_hex("abc"), None);
        assert_eq!(LobbyId::from_hex(&"G".repeat(64)), None);
        assert_eq!(LobbyId::from_hex(&"A".repeat(64)), None);
    }
}
