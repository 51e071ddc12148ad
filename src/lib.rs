//! lobby-relay: a real-time WebSocket relay for multiplayer games.
//!
//! Players who type the same passphrase meet in a lobby; from then on every
//! game message one of them sends reaches the others, unchanged and in order.
//! A node runs alone with lobbies in memory, or as one of many stateless
//! nodes sharing lobbies through Redis. The wire contract is
//! `docs/protocol.md`; the bird's-eye view is `ARCHITECTURE.md`.
//!
//! # Layout
//! - [`admin`]: the browser playground and the admin view (pages and data).
//! - [`admission`]: the connection limits, counted from accept.
//! - [`auth`]: optional player authentication with the studio's JWTs.
//! - [`client_addr`]: the real client address behind trusted proxies.
//! - [`closing`]: how the node ends a WebSocket.
//! - [`config`]: every option, its environment variable and default, and
//!   the settings they resolve into, grouped by concern.
//! - [`secret`]: secret settings, never shown in logs.
//! - [`protocol`]: the wire messages; the only module that knows the client
//!   wire format.
//! - [`passphrase`]: normalise, validate and hash passphrases into a
//!   [`passphrase::LobbyId`]; nothing past it sees a passphrase.
//! - [`server`]: the accept loop, the WebSocket upgrade, graceful shutdown.
//! - [`http`]: what plain HTTP requests on the relay's port are answered:
//!   health, metrics, the pages, the admin API, and the request checks.
//! - [`session`]: one connection: read, answer, relay.
//! - [`refusal`]: what a client is told when a request is refused: the
//!   error code, the text, the log line and the metric of each kind.
//! - [`tls`]: `wss://` served directly (rustls).
//! - [`outbox`]: a connection's bounded outbound queue and batching writer.
//! - [`read_ahead`]: large socket reads without a large buffer per connection.
//! - [`node`]: join, leave and relay, the same for every lobby store.
//! - [`hub`]: this node's members of each lobby, and delivery to them.
//! - [`inspect`]: `lobby-relay inspect`, read-only views of Redis.
//! - [`identity`]: the node's key and member ids in lobby records.
//! - [`limits`]: message and join rate limits, and failures per address.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`).
//! - [`lobby`]: the lobby store interface, with [`lobby::memory`] and
//!   [`lobby::redis`].

pub mod admin;
pub mod admission;
pub mod auth;
mod both;
pub mod client_addr;
pub mod closing;
pub mod cluster_view;
pub mod config;
pub mod http;
pub mod hub;
pub mod identity;
pub mod inspect;
pub mod limits;
pub mod lobby;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod passphrase;
pub mod protocol;
pub mod queue;
pub mod read_ahead;
pub mod refusal;
pub mod secret;
pub mod server;
pub mod session;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Config;
use crate::hub::Hub;
use crate::identity::Identity;
use crate::lobby::StoreError;
use crate::lobby::memory::MemoryStore;
use crate::lobby::redis::{RedisSettings, RedisStore};
use crate::node::Node;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use the Redis URL: {0}")]
    Store(#[from] StoreError),
    #[error("cannot serve TLS: {0}")]
    Tls(String),
    #[error("cannot verify player tokens: {0}")]
    Auth(String),
}

/// Runs a relay node on `listener` until `shutdown` resolves: with lobbies in
/// Redis when `config.store` names one, in memory otherwise.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let tls = match &config.http.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key).map_err(StartError::Tls)?),
        None => None,
    };
    metrics::install(
        &config.node_id,
        if config.store.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        },
    );
    let auth = Arc::new(auth::verify::Verifier::new(&config.auth).map_err(StartError::Auth)?);
    let watching = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        auth.clone()
            .watch(watching.clone())
            .instrument(tracing::Span::current()),
    );
    let _stop_watching = watching.drop_guard();
    let hub = Arc::new(Hub::default());
    let identity = Arc::new(Identity::new(&config.node_id));
    tracing::info!(node_key = &*identity.key(), "node identity");
    match &config.store.redis_url {
        Some(url) => {
            let ca_cert = match &config.store.redis_ca_cert {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    StartError::Store(StoreError::Settings(format!(
                        "--redis-ca-cert {}: {e}",
                        path.display()
                    )))
                })?),
                None => None,
            };
            let settings = RedisSettings {
                url: url.clone(),
                ca_cert,
                node_timeout: config.store.node_timeout,
                lobby_capacity: config.lobby_capacity,
            };
            let store = RedisStore::start(settings, hub.clone(), identity.clone())?;
            let node = Node::new(config, hub, store, identity, auth);
            server::run(listener, Arc::new(node), tls, shutdown).await;
        }
        None => {
            let store = MemoryStore::new(hub.clone());
            let node = Node::new(config, hub, store, identity, auth);
            server::run(listener, Arc::new(node), tls, shutdown).await;
        }
    }
    Ok(())
}
