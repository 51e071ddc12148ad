//! [`Secret`]: a secret setting (the lobby secret, the admin token, the
//! HS256 key of player tokens) that never shows in logs or `Debug` output.
//! A leaf: it imports nothing of the crate.

use std::sync::Arc;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The empty secret (an option set to nothing, as if unset).
    pub fn empty() -> Self {
        Self(Arc::from(&b""[..]))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() < 16 {
            return Err("use at least 16 characters".into());
        }
        Ok(Self(s.as_bytes().into()))
    }
}
