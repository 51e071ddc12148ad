//! The verifier of tokens: signature (HS256, RS256, ES256, by the keys of
//! [`super::keys`]), claims (`exp`, `nbf`, `iss`, `aud`, `lobbies`) and the
//! user id (`sub`), which other players see.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::keys::KeyRing;
use super::{
    AuthConfig, AuthError, AuthMode, MAX_TOKEN_BYTES, MAX_USER_ID_BYTES, User, UserIdLogging,
    user_hash,
};
use crate::passphrase::LobbyId;

/// The claims the relay reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    lobbies: Option<Vec<String>>,
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    mode: AuthMode,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    log_user_ids: UserIdLogging,
    keys: KeyRing,
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
        if config.mode != AuthMode::Off
            && config.hs256_secret.is_none()
            && config.public_key.is_none()
            && config.jwks.is_none()
        {
            return Err(format!(
                "--auth {} needs a key to verify tokens with: --auth-hs256-secret, --auth-public-key or --auth-jwks",
                if config.mode == AuthMode::Required {
                    "required"
                } else {
                    "optional"
                }
            ));
        }
        Ok(Self {
            mode: config.mode,
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway,
            log_user_ids: config.log_user_ids,
            keys: KeyRing::open(config)?,
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether tokens are looked at at all.
    pub fn enabled(&self) -> bool {
        self.mode != AuthMode::Off
    }

    /// Reads the key files again if they changed (or always, if `force`).
    /// Keeps the keys in use when a file does not parse.
    pub fn reload(&self, force: bool) {
        self.keys.reload(force);
    }

    /// Watches the key files (every second) and SIGHUP until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        self.keys.watch(stop).await;
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("the token is too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a signed JWT with an accepted algorithm"))?;
        let keys = self.keys.current();
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
