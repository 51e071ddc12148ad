//! `lobby-relay token`: mints a player token (a JWT) for local testing of
//! `--auth`, signed as a studio's backend would sign it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::Algorithm;

use super::parse_hs256_secret;
use crate::passphrase::LobbyId;
use crate::secret::Secret;

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
