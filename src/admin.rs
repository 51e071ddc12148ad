//! The two browser pages a node serves beside its WebSocket, and the data
//! behind the second:
//!
//! - the **playground** (`GET /` without an upgrade, `/playground`): a
//!   tiny tank game on the JavaScript client (`/client/v1.js`), showing
//!   every frame, on unless `--playground off`;
//! - the **admin view** (`/admin`, data at `/admin/api/cluster`): the
//!   cluster's live nodes, their figures and lobbies (by hash prefix), only
//!   with `--admin-token`, and the API only for requests that present it.
//!
//! Each page is one static HTML file (inline CSS and JavaScript; the
//! playground imports the client from its own origin) under `src/web/`,
//! compiled into the binary.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};

pub use crate::cluster_view::{
    ClusterView, LOBBY_LIMIT, LOBBY_PREFIX, LobbyView, LocalQueues, NodeView, QueueView, SeatView,
    lobby_prefix,
};
use crate::hub::Hub;
use crate::limits::FailureLimit;
use crate::metrics;
use crate::secret::Secret;

/// The playground page; `__NODE_ID__` is replaced by the serving node's id.
const PLAYGROUND_HTML: &str = include_str!("web/playground.html");
/// The admin page (static: it fetches everything with the token).
pub const ADMIN_HTML: &str = include_str!("web/admin.html");

/// The playground page as served by node `node_id` (letters, digits, `.`,
/// `_`, `-`: nothing to escape).
pub fn playground_page(node_id: &str) -> String {
    PLAYGROUND_HTML.replace("__NODE_ID__", node_id)
}

/// The opening tag of the playground's one script: an inline module that
/// imports the client.
const PLAYGROUND_SCRIPT_TAG: &str = "<script type=\"module\">";

/// The playground's `Content-Security-Policy`: scripts from this origin
/// (the client, `/client/v1.js`) and the page's own inline module, allowed
/// by its hash (no other inline script runs); inline style; connections to
/// this origin only; never framed.
pub static PLAYGROUND_CSP: LazyLock<String> = LazyLock::new(|| {
    let script = playground_script(PLAYGROUND_HTML);
    format!(
        "default-src 'none'; script-src 'self' '{}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        csp_hash(script)
    )
});

/// The text of the page's inline module (between its tags, as the browser
/// hashes it). The page has exactly one `<script>`, that one.
fn playground_script(html: &str) -> &str {
    let start = html
        .find(PLAYGROUND_SCRIPT_TAG)
        .expect("the playground has an inline module")
        + PLAYGROUND_SCRIPT_TAG.len();
    let end = start
        + html[start..]
            .find("</script>")
            .expect("the playground's module ends");
    &html[start..end]
}

/// A CSP source for an inline script: `sha256-` and its base64 digest.
fn csp_hash(script: &str) -> String {
    use base64::Engine;
    let digest = Sha256::digest(script.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The view of a node without Redis: itself and its own lobbies, each with
/// its host and spectators as the node last saw them and its queue as the
/// store has it (`queues`, from the store's
/// [`local_queues`](crate::lobby::StoreHealth::local_queues)).
pub fn local_view(node_id: &str, key: &str, hub: &Hub, mut queues: LocalQueues) -> ClusterView {
    let mut lobbies: Vec<_> = hub.lobbies();
    lobbies.sort_by(|a, b| a.hex.cmp(&b.hex));
    let truncated = lobbies.len() > LOBBY_LIMIT;
    let lobbies = lobbies
        .into_iter()
        .take(LOBBY_LIMIT)
        .map(|lobby| {
            let seats: Vec<SeatView> = lobby
                .occupied()
                .into_iter()
                .map(|seat| SeatView {
                    seat: u32::from(seat),
                    node: node_id.to_owned(),
                })
                .collect();
            let host = lobby.host();
            LobbyView {
                lobby: lobby_prefix(&lobby.hex),
                players: seats.len(),
                seats,
                host: host.map(|h| u32::from(h.seat)),
                epoch: host.map(|h| h.epoch),
                queue: queues.lobbies.remove(&*lobby.hex),
                spectators: u64::from(lobby.spectators()),
            }
        })
        // A lobby watched while it has no player is listed too.
        .filter(|lobby| lobby.players > 0 || lobby.spectators > 0)
        .collect();
    ClusterView {
        store: "memory",
        served_by: node_id.to_owned(),
        nodes: vec![NodeView {
            node: node_id.to_owned(),
            key: key.to_owned(),
            alive: true,
            ttl_ms: None,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            stats: Some(metrics::figures()),
        }],
        lobbies,
        lobbies_truncated: truncated,
        queues: queues.queues,
    }
}

/// The admin token, kept as its SHA-256 so that comparing takes the same
/// time whatever the presented token's length and content.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(secret: &Secret) -> Self {
        Self(Arc::new(Sha256::digest(secret.bytes()).into()))
    }

    /// Whether an `Authorization` header presents this token
    /// (`Bearer <token>`, the scheme in any case), compared in constant time.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization
            .map(HeaderValue::as_bytes)
            .and_then(crate::auth::bearer::bearer_credentials)
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented).into();
        bool::from(subtle::ConstantTimeEq::ct_eq(&presented[..], &self.0[..]))
    }
}

/// Wrong admin tokens a client address may present at once...
const WRONG_TOKEN_BURST: NonZeroU32 = NonZeroU32::new(10).expect("10 > 0");
/// ...and then one every this long (10 a minute).
const WRONG_TOKEN_INTERVAL: Duration = Duration::from_secs(6);

/// Why a request to the admin API was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// No token, another scheme or a wrong token: 401.
    #[error("the admin token is missing or wrong")]
    WrongToken,
    /// Too many wrong tokens from this client address lately: 429, and its
    /// token was not looked at.
    #[error("too many wrong admin tokens from your address: try again in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
}

/// Who may read the admin API: the token, and the throttle on wrong tokens
/// per client address that keeps it from being guessed.
#[derive(Debug)]
pub struct AdminAccess {
    token: AdminToken,
    wrong_tokens: FailureLimit,
}

impl AdminAccess {
    pub fn new(secret: &Secret) -> Self {
        Self {
            token: AdminToken::new(secret),
            wrong_tokens: FailureLimit::new(WRONG_TOKEN_BURST, WRONG_TOKEN_INTERVAL),
        }
    }

    /// Lets a request from `client` with this `Authorization` header in, or
    /// says why not. A throttled address is refused whatever its token (else
    /// a guesser would still learn of a right guess), the right one included;
    /// only wrong tokens spend its allowance.
    pub fn check(
        &self,
        client: IpAddr,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), AdminRefusal> {
        let now = Instant::now();
        if let Some(wait) = self.wrong_tokens.wait(client, now) {
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(AdminRefusal::Throttled { retry_after_secs });
        }
        if self.token.accepts(authorization) {
            return Ok(());
        }
        self.wrong_tokens.failed(client, now);
        Err(AdminRefusal::WrongToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        let token = AdminToken::new(&"correct-horse-battery".parse().expect("secret"));
        let header = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(token.accepts(Some(&header("Bearer correct-horse-battery"))));
        assert!(token.accepts(Some(&header("bearer correct-horse-battery"))));
        assert!(token.accepts(Some(&header("BEARER  correct-horse-battery"))));
        assert!(!token.accepts(Some(&header("Bearer correct-horse-batter"))));
        assert!(!token.accepts(Some(&header("Bearer correct-horse-battery2"))));
        assert!(!token.accepts(Some(&header("correct-horse-battery"))));
        assert!(!token.accepts(Some(&header("Basic correct-horse-battery"))));
        assert!(!token.accepts(None));
    }

    #[test]
    fn wrong_tokens_are_throttled_per_address_the_right_one_never_counts() {
        let access = AdminAccess::new(&"correct-horse-battery".parse().expect("secret"));
        let header = |v: &str| HeaderValue::from_str(v).expect("header");
        let (right, wrong) = (
            header("Bearer correct-horse-battery"),
            header("Bearer wrong"),
        );
        let (one, two): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        // An operator polling all day spends nothing.
        for _ in 0..100 {
            assert_eq!(access.check(one, Some(&right)), Ok(()));
        }
        for _ in 0..WRONG_TOKEN_BURST.get() {
            assert_eq!(
                access.check(one, Some(&wrong)),
                Err(AdminRefusal::WrongToken)
            );
        }
        for token in [&wrong, &right] {
            assert!(matches!(
                access.check(one, Some(token)),
                Err(AdminRefusal::Throttled {
                    retry_after_secs: 1..=6
                })
            ));
        }
        assert_eq!(access.check(two, Some(&right)), Ok(()));
        assert_eq!(access.check(two, None), Err(AdminRefusal::WrongToken));
    }

    #[test]
    fn pages_carry_the_node_id_and_no_placeholder() {
        let page = playground_page("relay-7");
        assert!(page.contains("relay-7"));
        assert!(!page.contains("__NODE_ID__"));
        assert!(ADMIN_HTML.contains("/admin/api/cluster"));
    }

    /// The CSP's hash is that of the served page's one script (the node id
    /// is never inside it), and the page loads the client from its origin.
    #[test]
    fn the_playground_csp_allows_its_own_module_only() {
        let page = playground_page("relay-7");
        assert_eq!(page.matches("<script").count(), 1, "one script");
        let script = playground_script(&page);
        assert_eq!(script, playground_script(PLAYGROUND_HTML));
        assert!(script.contains("from \"/client/v1.js\""));
        assert!(PLAYGROUND_CSP.contains(&format!("script-src 'self' '{}';", csp_hash(script))));
        let script_src = PLAYGROUND_CSP
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .expect("a script-src");
        assert!(!script_src.contains("unsafe"), "{script_src}");
        // The digest of a known text (`echo -n 'alert(1)' | sha256sum`).
        assert_eq!(
            csp_hash("alert(1)"),
            "sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI="
        );
    }

    #[test]
    fn lobbies_are_shown_by_prefix() {
        assert_eq!(lobby_prefix(&"ab".repeat(32)), "abababab");
    }
}
