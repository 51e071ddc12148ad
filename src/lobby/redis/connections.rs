//! How the Redis store reaches Redis: the clients (one Redis, or a cluster's
//! seeds; TLS with an optional CA), the command connection every part of the
//! store shares ([`Link`]), the connection managers and the timeouts of
//! every command, and the one connection type of one Redis and a cluster
//! ([`Conn`]). The address forms themselves are in `target.rs`.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::target::Target;
use crate::lobby::StoreError;

/// Longest wait for a Redis command before answering `unavailable`.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest wait for a connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between two attempts to reconnect the pub/sub connection.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How the store reaches Redis (one per process: the variants' sizes do not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Clients {
    /// Commands and scripts, and pub/sub (RESP3: its messages come as
    /// pushes, see [`Deliver`](super::pubsub::Deliver)).
    Single {
        commands: redis::Client,
        pubsub: redis::Client,
    },
    /// Commands and scripts (the cluster client routes them); sharded
    /// pub/sub has connections of its own (`redis/sharded.rs`), opened from
    /// the seeds' settings.
    Cluster {
        commands: ClusterClient,
        seeds: Vec<String>,
    },
}

/// A connection for commands and scripts, to one Redis or to a cluster
/// (which routes each command to the shard that owns its keys, and follows
/// `MOVED`/`ASK` and failovers by itself).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What the store's parts know of the state of Redis.
#[derive(Default)]
pub struct Health {
    /// The last heartbeat was written.
    pub commands_ok: AtomicBool,
    /// The pub/sub connection is up and subscribed.
    pub pubsub_ok: AtomicBool,
    /// When the heartbeat last came back after failing: the other nodes'
    /// heartbeats may have expired meanwhile (a Redis failover takes longer
    /// than --node-timeout), so this node reaps nobody until they had the
    /// time to beat again.
    pub heartbeat_back_at: Mutex<Option<Instant>>,
    /// Wakes the heartbeat task to re-register this node's seats (the
    /// pub/sub connection came back: Redis may have restarted).
    pub resync: Notify,
}

/// The store's handle on Redis, shared by its parts and tasks: the clients,
/// the command connection, what is known of Redis's health, the settings of
/// the connections, and the token that stops every task of the store.
pub struct Link {
    clients: Clients,
    /// Commands and scripts; `None` until a cluster connection is up. The
    /// single-Redis one is replaced when it stops answering (a dead peer is
    /// otherwise only noticed after the OS's TCP timeout); a cluster
    /// connection repairs itself.
    conn: RwLock<Option<Conn>>,
    pub health: Health,
    /// A node whose heartbeat is older than this is presumed dead.
    pub node_timeout: Duration,
    /// PEM CA certificate(s) for `rediss://` (else the system's).
    pub ca_cert: Option<Vec<u8>>,
    pub stop: CancellationToken,
}

impl Link {
    /// Runs a background task of the store until the store stops (in the
    /// caller's span).
    pub fn spawn_until_stopped<F>(&self, task: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(
            self.stop
                .clone()
                .run_until_cancelled_owned(task)
                .in_current_span(),
        )
    }

    /// The clients for `target` (connecting lazily: nothing waits for
    /// Redis here). Returns the link and the command that publishes to a
    /// lobby's channel (`SPUBLISH` in a cluster).
    pub fn open(
        target: &Target,
        ca_cert: Option<Vec<u8>>,
        node_timeout: Duration,
    ) -> Result<(Link, &'static str), StoreError> {
        let (clients, conn, publish) = match target {
            Target::Single(url) => {
                let client = open_client(url, ca_cert.clone())?;
                let conn = Conn::Single(connection_manager(&client)?);
                let pubsub = open_resp3_client(url, ca_cert.clone())?;
                let clients = Clients::Single {
                    commands: client,
                    pubsub,
                };
                (clients, Some(conn), "PUBLISH")
            }
            Target::Cluster(seeds) => {
                let clients = Clients::Cluster {
                    commands: open_cluster_client(seeds, ca_cert.clone())?,
                    seeds: seeds.clone(),
                };
                (clients, None, "SPUBLISH")
            }
        };
        let link = Link {
            clients,
            conn: RwLock::new(conn),
            health: Health::default(),
            node_timeout,
            ca_cert,
            stop: CancellationToken::new(),
        };
        Ok((link, publish))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.clients, Clients::Cluster { .. })
    }

    /// The pub/sub client of one Redis (`None` in a cluster).
    pub fn pubsub_client(&self) -> Option<&redis::Client> {
        match &self.clients {
            Clients::Single { pubsub, .. } => Some(pubsub),
            Clients::Cluster { .. } => None,
        }
    }

    /// A cluster's seeds (`None` with one Redis).
    pub fn seeds(&self) -> Option<&[String]> {
        match &self.clients {
            Clients::Single { .. } => None,
            Clients::Cluster { seeds, .. } => Some(seeds),
        }
    }

    /// The command connection, waiting a moment for a cluster connection
    /// that is being set up (a node that just started).
    pub async fn conn_when_up(&self) -> Result<Conn, StoreError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.conn() {
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                result => return result,
            }
        }
    }

    pub fn conn(&self) -> Result<Conn, StoreError> {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Unreachable(
                "not connected to the Redis Cluster yet",
            ))
    }

    /// Runs commands that may touch keys in different slots: one pipeline
    /// with one Redis, concurrent commands (each routed to its shard) in a
    /// cluster.
    pub async fn exec_all(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<redis::Value>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn()?;
        if self.is_cluster() {
            let replies = join_all(cmds.iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { timed(cmd.query_async::<redis::Value>(&mut conn)).await }
            }))
            .await;
            replies.into_iter().collect()
        } else {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let mut conn = conn;
            timed(pipe.query_async(&mut conn)).await
        }
    }

    /// Drops the command connection to a single Redis and starts a fresh one
    /// (a cluster connection repairs itself).
    pub fn reconnect(&self) {
        if let Clients::Single {
            commands: client, ..
        } = &self.clients
        {
            match connection_manager(client) {
                Ok(fresh) => {
                    *self.conn.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(Conn::Single(fresh));
                }
                Err(e) => tracing::warn!(error = %e, "cannot create a Redis connection"),
            }
        }
    }

    /// Connects the command connection to the cluster, retrying until it
    /// answers.
    pub async fn connect_cluster(&self) {
        let Clients::Cluster { commands, .. } = &self.clients else {
            return;
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match tokio::time::timeout(CONNECT_TIMEOUT * 3, commands.get_async_connection()).await {
                Ok(Ok(conn)) => {
                    *self.conn.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(Conn::Cluster(conn));
                    tracing::info!("connected to the Redis Cluster");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to the Redis Cluster"),
                Err(_) => tracing::warn!("connecting to the Redis Cluster timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The Redis client's errors are the store's backend errors.
impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Backend {
            store: "redis",
            source: Box::new(e),
        }
    }
}

/// The Redis client's error inside a store error, if that is what it is.
pub fn redis_error(e: &StoreError) -> Option<&redis::RedisError> {
    match e {
        StoreError::Backend { source, .. } => source.downcast_ref(),
        _ => None,
    }
}

/// Whether Redis answered `NOSCRIPT` (it forgot a script: restarted, or a
/// promoted replica that never saw it).
pub fn is_no_script(e: &StoreError) -> bool {
    redis_error(e)
        .is_some_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// Runs a Redis command with the store's response timeout.
pub async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Unreachable("Redis did not answer in time")),
    }
}

/// A Redis Cluster client for `seeds`, trusting `ca_cert` (PEM) for
/// `rediss://` seeds when given.
pub fn open_cluster_client(
    seeds: &[String],
    ca_cert: Option<Vec<u8>>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        // A failover or slot move answers MOVED or refuses connections for a
        // while: retry briefly, the store's own timeouts bound the wait.
        .retries(4)
        .min_retry_wait(10)
        .max_retry_wait(250);
    if let Some(root_cert) = ca_cert
        && seeds.iter().any(|seed| seed.starts_with("rediss://"))
    {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    builder.build()
}

/// A Redis client for `url`, trusting `ca_cert` (PEM) for `rediss://` when
/// given.
pub fn open_client(url: &str, ca_cert: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
    match ca_cert {
        None => redis::Client::open(url),
        Some(root_cert) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
    }
}

/// As [`open_client`], speaking RESP3 (for pub/sub on a connection that
/// pushes its messages).
fn open_resp3_client(url: &str, ca_cert: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match ca_cert {
        None => redis::Client::open(info),
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
    }
}

fn connection_manager(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}
