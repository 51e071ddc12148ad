//! The keys that verify tokens: an HS256 secret, a PEM public key (RS256 or
//! ES256) and/or a JWKS file. Key files are read again when they change
//! (checked every second) and on SIGHUP; a file that does not parse keeps
//! the keys in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio_util::sync::CancellationToken;

use super::AuthConfig;
use crate::secret::Secret;

/// How often key files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The target of this module's log lines: they are authentication's, and
/// name it as they did before the module was split.
const TARGET: &str = "lobby_relay::auth";

/// The keys in use, from the configuration and the key files.
#[derive(Default)]
pub struct Keys {
    pub(super) hs256: Option<DecodingKey>,
    /// The key of --auth-public-key.
    pub(super) pem: Option<DecodingKey>,
    /// The keys of --auth-jwks, with their `kid`.
    pub(super) jwks: Vec<(Option<String>, DecodingKey)>,
    /// What the key files looked like when read.
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// Where the keys come from, and the keys last read from there.
pub struct KeyRing {
    hs256: Option<Secret>,
    public_key: Option<PathBuf>,
    jwks: Option<PathBuf>,
    keys: RwLock<Arc<Keys>>,
}

impl KeyRing {
    /// Reads the configured keys; an error says which option is wrong and
    /// why.
    pub fn open(config: &AuthConfig) -> Result<Self, String> {
        let ring = Self {
            hs256: config.hs256_secret.clone(),
            public_key: config.public_key.clone(),
            jwks: config.jwks.clone(),
            keys: RwLock::default(),
        };
        let keys = ring.load()?;
        *ring.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(ring)
    }

    /// The keys in use.
    pub fn current(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
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
        let current = self.current();
        if !force && current.stamps == self.stamps() {
            return;
        }
        match self.load() {
            Ok(keys) => {
                tracing::info!(
                    target: TARGET,
                    event = "auth_keys",
                    jwks_keys = keys.jwks.len(),
                    "token keys loaded"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => {
                tracing::error!(target: TARGET, event = "auth_keys", error = %e, "token keys not reloaded; the previous keys stay in use");
                // Keep the keys, but do not read the same broken file again
                // every second: wait for its next change.
                let mut keys = clone_keys(&current);
                keys.stamps = self.stamps();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
        }
    }

    /// Watches the key files (every second) and SIGHUP until `stop`.
    pub async fn watch(&self, stop: CancellationToken) {
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
                    tracing::info!(target: TARGET, event = "auth_keys", "SIGHUP: reading the token keys again");
                    self.reload(true);
                }
            }
        }
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
