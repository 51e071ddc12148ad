//! Optional player authentication: the relay verifies JSON Web Tokens that
//! the studio's own backend issues, and keeps no accounts of its own.
//!
//! - Modes ([`AuthMode`]): `off` (protocol v1 exactly, the default),
//!   `optional` (a token is used when a client gives one) and `required`
//!   (no valid token, no lobby).
//! - Keys: an HS256 secret, a PEM public key (RS256 or ES256) and/or a JWKS
//!   file. Key files are read again when they change (checked every second)
//!   and on SIGHUP; a file that does not parse keeps the keys in use.
//! - Claims: `sub` (the user id) and `exp` are required; `nbf` is checked
//!   when present; `iss` and `aud` when configured; a small leeway absorbs
//!   clock skew. An optional `lobbies` claim lists the lobby ids its holder
//!   may join.
//!
//! Tokens are never logged or stored; user ids are logged only when
//! configured, and then as a hash prefix (see [`UserIdLogging`]).
//!
//! Here: the settings ([`AuthConfig`], resolved from the `--auth` options by
//! `config.rs`), the player a token names ([`User`]) and why a token is
//! refused ([`AuthError`]). The parts, each of which uses only this module:
//! - [`verify`]: the [`verify::Verifier`] of tokens (signature, claims,
//!   user id).
//! - [`keys`]: the keys it verifies with, read from the configuration and
//!   the key files, and read again when they change or on SIGHUP.
//! - [`bearer`]: the token of an HTTP request (`Authorization: Bearer`, or
//!   the `token` query parameter).
//! - [`token`]: `lobby-relay token`, which mints test tokens.

pub mod bearer;
pub mod keys;
pub mod token;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use sha2::{Digest, Sha256};

use crate::passphrase::LobbyId;
use crate::secret::Secret;

/// Whether players must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AuthMode {
    /// No authentication: tokens are ignored, protocol v1 exactly.
    #[default]
    Off,
    /// A token is verified and used when a client presents one; clients
    /// without one play anonymously. A bad token is refused all the same.
    Optional,
    /// Only clients with a valid token may join a lobby.
    Required,
}

/// How user ids appear in log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum UserIdLogging {
    /// Never.
    #[default]
    Off,
    /// As the first 12 hex digits of SHA-256(user id): lines of one user can
    /// be found, the id itself is not written.
    Hash,
}

/// The settings of player authentication (resolved from `--auth` and the
/// `--auth-*` options by `config.rs`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The shared secret of HS256 tokens.
    pub hs256_secret: Option<Secret>,
    /// A PEM file with the public key of RS256 or ES256 tokens.
    pub public_key: Option<PathBuf>,
    /// A JWKS file with public keys, chosen by the token's `kid`.
    pub jwks: Option<PathBuf>,
    /// Accepted issuers (`iss`); any when empty.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`); any when empty.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub log_user_ids: UserIdLogging,
}

impl Default for AuthConfig {
    /// Authentication off (the defaults of the `--auth` options).
    fn default() -> Self {
        Self {
            mode: AuthMode::Off,
            hs256_secret: None,
            public_key: None,
            jwks: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(5),
            log_user_ids: UserIdLogging::Off,
        }
    }
}

/// Parses an HS256 secret (of `--auth-hs256-secret` and of `lobby-relay
/// token --hs256-secret`): at least 32 bytes.
pub fn parse_hs256_secret(s: &str) -> Result<Secret, String> {
    if s.len() < 32 {
        return Err("use at least 32 bytes (256 bits, RFC 7518)".into());
    }
    s.parse()
}

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest user id (`sub`) accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// An authenticated player, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The token's `sub`.
    pub id: Arc<str>,
    /// The lobbies the token allows (its `lobbies` claim), if it restricts
    /// them.
    pub lobbies: Option<Arc<[LobbyId]>>,
    /// The token's `exp`, in seconds since the epoch.
    pub expires: u64,
}

impl User {
    /// Whether the token lets its holder join `lobby`.
    pub fn may_join(&self, lobby: &LobbyId) -> bool {
        self.lobbies.as_ref().is_none_or(|l| l.contains(lobby))
    }

    /// Whether the token lets its holder use quick match: only a token
    /// without a `lobbies` claim does (a queue's lobbies are not known
    /// beforehand, so no claim can list them).
    pub fn may_join_queues(&self) -> bool {
        self.lobbies.is_none()
    }
}

/// Why a token was refused. Every refusal is answered with its error code
/// and closes the connection with 1008 (`refusal::Refusal::Auth`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this relay admits only players with a token: send one in the Authorization header, the `token` query parameter or an `auth` message before joining"
    )]
    Required,
    #[error("the token has expired; get a fresh one")]
    Expired,
    #[error("the token is not valid yet (nbf); check the clocks")]
    NotYetValid,
    #[error("the token was refused: {0}")]
    Invalid(&'static str),
}

/// The hex SHA-256 of a user id: the name of its join-rate key in Redis and,
/// prefixed, of its log lines.
pub fn user_hash(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}
