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

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

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
/// How often key files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

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

/// The claims the relay reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    lobbies: Option<Vec<String>>,
}

/// The keys in use, from the configuration and the key files.
#[derive(Default)]
struct Keys {
    hs256: Option<DecodingKey>,
    /// The key of --auth-public-key.
    pem: Option<DecodingKey>,
    /// The keys of --auth-jwks, with their `kid`.
    jwks: Vec<(Option<String>, DecodingKey)>,
    /// What the key files looked like when read.
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    mode: AuthMode,
    hs256: Option<Secret>,
    public_key: Option<PathBuf>,
    jwks: Option<PathBuf>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    log_user_ids: UserIdLogging,
    keys: RwLock<Arc<Keys>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads the keys; an error says which option is wrong and why.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let verifier = Self {
            mode: config.mode,
            hs256: config.hs256_secret.clone(),
            public_key: config.public_key.clone(),
            jwks: config.jwks.clone(),
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway,
            log_user_ids: config.log_user_ids,
            keys: RwLock::default(),
        };
        if verifier.mode != AuthMode::Off
            && verifier.hs256.is_none()
            && verifier.public_key.is_none()
            && verifier.jwks.is_none()
        {
            return Err(format!(
                "--auth {} needs a key to verify tokens with: --auth-hs256-secret, --auth-public-key or --auth-jwks",
                if verifier.mode == AuthMode::Required {
                    "required"
                } else {
                    "optional"
                }
            ));
        }
        let keys = verifier.load()?;
        *verifier.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(verifier)
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether tokens are looked at at all.
    pub fn enabled(&self) -> bool {
        self.mode != AuthMode::Off
    }

    /// Reads every configured key.
    fn load(&self) -> Result<Keys, String> {
        let mut keys = Keys::default();
        if let Some(secret) = &self.hs256 {
            keys.hs256 = Some(
                DecodingKey::from_secret(secret.bytes())
                    .map_err(|e| format!("--auth-hs256-secret: {e}"))?,
            );
        }
        if let Some(path) = &self.public_key {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--auth-public-key {}: {e}", path.display()))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .map_err(|_| {
                    format!(
                        "--auth-public-key {}: not a PEM RSA or EC (P-256) public key",
                        path.display()
                    )
                })?;
            keys.pem = Some(key);
        }
        if let Some(path) = &self.jwks {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--auth-jwks {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("--auth-jwks {}: not a JWKS ({e})", path.display()))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    format!(
                        "--auth-jwks {}: key {:?}: {e}",
                        path.display(),
                        jwk.common.key_id
                    )
                })?;
                keys.jwks.push((jwk.common.key_id.clone(), key));
            }
        }
        keys.stamps = self.stamps();
        Ok(keys)
    }

    /// The modification time and size of each key file.
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        [&self.public_key, &self.jwks]
            .into_iter()
            .flatten()
            .map(|path| stamp(path))
            .collect()
    }

    /// Reads the key files again if they changed (or always, if `force`).
    /// Keeps the keys in use when a file does not parse.
    pub fn reload(&self, force: bool) {
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !force && current.stamps == self.stamps() {
            return;
        }
        match self.load() {
            Ok(keys) => {
                tracing::info!(
                    event = "auth_keys",
                    jwks_keys = keys.jwks.len(),
                    "token keys loaded"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => {
                tracing::error!(event = "auth_keys", error = %e, "token keys not reloaded; the previous keys stay in use");
                // Keep the keys, but do not read the same broken file again
                // every second: wait for its next change.
                let mut keys = clone_keys(&current);
                keys.stamps = self.stamps();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
        }
    }

    /// Watches the key files (every second) and SIGHUP until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        if self.public_key.is_none() && self.jwks.is_none() {
            return;
        }
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.reload(false),
                _ = hup => {
                    tracing::info!(event = "auth_keys", "SIGHUP: reading the token keys again");
                    self.reload(true);
                }
            }
        }
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("the token is too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a signed JWT with an accepted algorithm"))?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let candidates: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => keys.hs256.iter().collect(),
            Algorithm::RS256 | Algorithm::ES256 => {
                let family = header.alg.family();
                let by_kid: Vec<&DecodingKey> = match &header.kid {
                    Some(kid) => keys
                        .jwks
                        .iter()
                        .filter(|(k, key)| k.as_deref() == Some(kid) && key.family() == family)
                        .map(|(_, key)| key)
                        .collect(),
                    None => Vec::new(),
                };
                if by_kid.is_empty() {
                    keys.pem
                        .iter()
                        .chain(keys.jwks.iter().map(|(_, key)| key))
                        .filter(|key| key.family() == family)
                        .collect()
                } else {
                    by_kid
                }
            }
            _ => {
                return Err(AuthError::Invalid(
                    "its algorithm is not accepted (HS256, RS256 and ES256 are)",
                ));
            }
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid(
                "this relay has no key for its algorithm or key id",
            ));
        }
        let validation = self.validation(header.alg);
        let mut last = AuthError::Invalid("bad signature");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return self.user(data.claims),
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => {
                    last = refusal(e.kind());
                    break;
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn user(&self, claims: Claims) -> Result<User, AuthError> {
        let sub = claims.sub;
        if sub.is_empty() || sub.len() > MAX_USER_ID_BYTES {
            return Err(AuthError::Invalid("its sub must be 1 to 128 bytes"));
        }
        if sub.chars().any(disguises_text) {
            return Err(AuthError::Invalid(
                "its sub has a control or bidirectional-formatting character \
                 (such as U+202E), which could make it read as another user id to other players",
            ));
        }
        let lobbies = match claims.lobbies {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|hex| LobbyId::from_hex(&hex.to_ascii_lowercase()))
                    .collect::<Option<Arc<[LobbyId]>>>()
                    .ok_or(AuthError::Invalid(
                        "its lobbies claim must list lobby ids (64 hex digits each)",
                    ))?,
            ),
        };
        Ok(User {
            id: sub.into(),
            lobbies,
            expires: claims.exp,
        })
    }

    /// Whether `user`'s token is still valid now (checked again at each
    /// join; a match in progress is never cut off by it).
    pub fn check_expiry(&self, user: &User) -> Result<(), AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if user.expires.saturating_add(self.leeway.as_secs()) < now {
            Err(AuthError::Expired)
        } else {
            Ok(())
        }
    }

    /// What a log line may say of `user`: nothing, or a hash prefix.
    pub fn log_user(&self, user: Option<&User>) -> Option<String> {
        match (self.log_user_ids, user) {
            (UserIdLogging::Hash, Some(user)) => Some(user_hash(&user.id)[..12].to_owned()),
            _ => None,
        }
    }
}

/// Whether `c` may not be part of a user id, which other players see: it
/// could make the id, or the text around it where a client shows it, read
/// as something else. Controls (C0, DEL, C1), the Unicode characters that
/// steer bidirectional text (its `Bidi_Control` property: the marks U+061C,
/// U+200E, U+200F, the embeddings and overrides U+202A..U+202E and the
/// isolates U+2066..U+2069), and the line and paragraph separators U+2028,
/// U+2029. Other invisible characters such as U+200D (ZERO WIDTH JOINER)
/// stay: emoji sequences and several scripts need them.
fn disguises_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
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

fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (aud)"),
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (iss)"),
        ErrorKind::MissingRequiredClaim(_) => {
            AuthError::Invalid("a required claim (sub, exp, or the configured aud/iss) is missing")
        }
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("its algorithm does not match the key"),
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
        _ => AuthError::Invalid("malformed token or claims"),
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A copy of the keys in use.
fn clone_keys(keys: &Keys) -> Keys {
    Keys {
        hs256: keys.hs256.clone(),
        pem: keys.pem.clone(),
        jwks: keys.jwks.clone(),
        stamps: keys.stamps.clone(),
    }
}

/// Options of `lobby-relay token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// How long the token is valid, e.g. `1h`, `10m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Not valid before this long from now (`nbf`), e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub not_before: Option<Duration>,
    /// The issuer (`iss`).
    #[arg(long)]
    pub iss: Option<String>,
    /// The audience (`aud`).
    #[arg(long)]
    pub aud: Option<String>,
    /// Restrict the token to the lobby of this passphrase (repeatable): its
    /// id goes into the `lobbies` claim.
    #[arg(long = "lobby")]
    pub lobbies: Vec<String>,
    /// The nodes' --lobby-secret, if they use one (lobby ids are then HMACs).
    #[arg(long, env = "LOBBY_RELAY_LOBBY_SECRET", hide_env_values = true)]
    pub lobby_secret: Option<Secret>,
    /// Sign with HS256 and this shared secret (the nodes'
    /// --auth-hs256-secret).
    #[arg(long, env = "LOBBY_RELAY_AUTH_HS256_SECRET", hide_env_values = true, value_parser = parse_hs256_secret)]
    pub hs256_secret: Option<Secret>,
    /// Sign with this PEM private key (PKCS#8) instead: RS256 for an RSA key,
    /// ES256 for a P-256 key. Wins over an HS256 secret in the environment.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// The key id (`kid` header) to name, for a JWKS with several keys.
    #[arg(long)]
    pub kid: Option<String>,
}

/// Signs a token as `args` say.
pub fn mint(args: &TokenArgs) -> Result<String, String> {
    use jsonwebtoken::{EncodingKey, Header};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": args.sub,
        "iat": now,
        "exp": now + args.ttl.as_secs(),
    });
    if let Some(nbf) = args.not_before {
        claims["nbf"] = (now + nbf.as_secs()).into();
    }
    if let Some(iss) = &args.iss {
        claims["iss"] = iss.clone().into();
    }
    if let Some(aud) = &args.aud {
        claims["aud"] = aud.clone().into();
    }
    if !args.lobbies.is_empty() {
        let secret = args.lobby_secret.as_ref().map(Secret::bytes);
        let ids = args
            .lobbies
            .iter()
            .map(|p| {
                LobbyId::from_passphrase_keyed(p, secret)
                    .map(|id| id.to_string())
                    .map_err(|e| format!("--lobby: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        claims["lobbies"] = ids.into();
    }
    let (alg, key) = match (&args.hs256_secret, &args.private_key) {
        (Some(secret), None) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.bytes()).map_err(|e| e.to_string())?,
        ),
        (_, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--private-key {}: {e}", path.display()))?;
            match EncodingKey::from_ec_pem(&pem) {
                Ok(key) => (Algorithm::ES256, key),
                Err(_) => (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_pem(&pem).map_err(|_| {
                        format!(
                            "--private-key {}: not a PEM (PKCS#8) P-256 or RSA private key",
                            path.display()
                        )
                    })?,
                ),
            }
        }
        (None, None) => {
            return Err(
                "give a key: --hs256-secret (or LOBBY_RELAY_AUTH_HS256_SECRET) or --private-key"
                    .into(),
            );
        }
    };
    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}

/// The credentials of an `Authorization` header value of the `Bearer`
/// scheme, in any case (RFC 9110, 11.1: the scheme is case-insensitive),
/// blanks around them trimmed; `None` for any other scheme.
pub fn bearer_credentials(authorization: &[u8]) -> Option<&[u8]> {
    let value = authorization.trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, credentials) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| credentials.trim_ascii())
}

/// The token of a WebSocket upgrade request: `Authorization: Bearer <jwt>`,
/// else the `token` query parameter.
pub fn token_of_request(headers: &hyper::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(hyper::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = bearer_credentials(value.as_bytes())?;
        return std::str::from_utf8(token).ok().map(str::to_owned);
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(extra: impl FnOnce(&mut AuthConfig)) -> Verifier {
        let mut args = AuthConfig {
            mode: AuthMode::Required,
            hs256_secret: Some(SECRET.parse().unwrap()),
            ..AuthConfig::default()
        };
        extra(&mut args);
        Verifier::new(&args).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_good_token_names_its_user() {
        let v = verifier(|_| {});
        let user = v
            .verify(&hs256(json!({"sub": "alice", "exp": now() + 60})))
            .unwrap();
        assert_eq!(&*user.id, "alice");
        assert!(user.lobbies.is_none());
    }

    #[test]
    fn refusals_have_their_codes() {
        let v = verifier(|a| {
            a.audiences = vec!["tanks".into()];
            a.issuers = vec!["https://studio.example".into()];
        });
        let good =
            json!({"sub": "a", "exp": now() + 60, "aud": "tanks", "iss": "https://studio.example"});
        assert!(v.verify(&hs256(good.clone())).is_ok());
        let with = |k: &str, val: serde_json::Value| {
            let mut c = good.clone();
            c[k] = val;
            v.verify(&hs256(c)).unwrap_err()
        };
        assert_eq!(with("exp", json!(now() - 60)), AuthError::Expired);
        assert_eq!(with("nbf", json!(now() + 60)), AuthError::NotYetValid);
        assert_eq!(
            with("aud", json!("other")),
            AuthError::Invalid("wrong audience (aud)")
        );
        assert_eq!(
            with("iss", json!("evil")),
            AuthError::Invalid("wrong issuer (iss)")
        );
        assert!(matches!(with("sub", json!("")), AuthError::Invalid(_)));
        assert!(matches!(
            with("lobbies", json!(["zz"])),
            AuthError::Invalid(_)
        ));
        // Within the leeway (5 s).
        assert!(
            v.verify(&hs256({
                let mut c = good.clone();
                c["exp"] = json!(now() - 2);
                c
            }))
            .is_ok()
        );
        assert!(v.verify("not a token").is_err());
    }

    #[test]
    fn user_ids_carry_no_control_or_bidi_characters() {
        for c in [
            '\0', '\t', '\u{1F}', '\u{7F}', '\u{85}', '\u{9F}', '\u{061C}', '\u{200E}', '\u{200F}',
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}',
        ] {
            assert!(disguises_text(c), "U+{:04X}", u32::from(c));
        }
        for c in [
            'a', ' ', 'é', 'א', 'ب', '\u{200D}', '👩', '\u{A0}', '\u{2070}', '\u{2065}',
        ] {
            assert!(!disguises_text(c), "U+{:04X}", u32::from(c));
        }
        let v = verifier(|_| {});
        let sub = |s: &str| v.verify(&hs256(json!({"sub": s, "exp": now() + 60})));
        assert!(matches!(
            sub("alice\u{202E}gnp.exe"),
            Err(AuthError::Invalid(why)) if why.contains("bidirectional")
        ));
        assert_eq!(&*sub("بوب 👩\u{200D}💻").unwrap().id, "بوب 👩\u{200D}💻");
    }

    #[test]
    fn alg_none_and_bad_signatures_are_refused() {
        let v = verifier(|_| {});
        let signed = hs256(json!({"sub": "a", "exp": now() + 60}));
        let claims = signed.split('.').nth(1).unwrap();
        // base64url of {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
        let mut forged = hs256(json!({"sub": "a", "exp": now() + 60}));
        // Another last character, one whose unused low bits are zero as in
        // the original (A = 0, E = 4): the signature's bytes change, its
        // encoding stays canonical. Always `A` left the token unchanged when
        // it already ended in `A` (about 1 run in 16).
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'E' } else { 'A' });
        assert_eq!(
            v.verify(&forged).unwrap_err(),
            AuthError::Invalid("bad signature")
        );
    }

    #[test]
    fn tokens_of_requests() {
        let mut headers = hyper::HeaderMap::new();
        assert_eq!(
            token_of_request(&headers, Some("a=1&token=xyz")),
            Some("xyz".into())
        );
        assert_eq!(token_of_request(&headers, None), None);
        headers.insert(hyper::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            token_of_request(&headers, Some("token=xyz")),
            Some("abc".into())
        );
        headers.insert(hyper::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(token_of_request(&headers, None), None);
        headers.insert(hyper::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(token_of_request(&headers, None), Some("abc".into()));
    }

    #[test]
    fn user_ids_are_logged_as_hash_prefixes_only_when_asked() {
        let user = User {
            id: "alice".into(),
            lobbies: None,
            expires: 0,
        };
        assert_eq!(verifier(|_| {}).log_user(Some(&user)), None);
        let logged = verifier(|a| a.log_user_ids = UserIdLogging::Hash)
            .log_user(Some(&user))
            .unwrap();
        assert_eq!(logged.len(), 12);
        assert!(!logged.contains("alice"));
    }
}
