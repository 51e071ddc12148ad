//! Every option of a relay node, its environment variable and its default, in
//! one place. `lobby-relay serve --help` prints this.
//!
//! The options ([`ServeArgs`], with [`AuthArgs`]) resolve into the node's
//! [`Config`], grouped by concern: [`Limits`], [`ResumeConfig`],
//! [`HttpConfig`], [`StoreConfig`], [`DrainConfig`] and the
//! [`AuthConfig`] of player authentication (plain data: `auth` knows
//! nothing of clap's types here).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::auth::{AuthConfig, AuthMode, UserIdLogging};
use crate::client_addr::TrustedProxies;
use crate::limits::JoinLimit;
use crate::secret::Secret;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Options of `lobby-relay serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to accept WebSocket connections on (paths `/` and
    /// `/ws`).
    #[arg(long, env = "LOBBY_RELAY_LISTEN", default_value = "0.0.0.0:8765")]
    pub listen: SocketAddr,

    /// Serve `wss://` directly with this PEM certificate chain (needs
    /// --tls-key). Without it the relay speaks plain `ws://`, for a load
    /// balancer that terminates TLS.
    #[arg(long, env = "LOBBY_RELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LOBBY_RELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Redis (6.0 or later) to share lobbies with other nodes, e.g.
    /// `redis://127.0.0.1:6379/`
    /// (`rediss://` for TLS, verified against the system's trust store or
    /// --redis-ca-cert). A Redis Cluster: `redis+cluster://` (or
    /// `rediss+cluster://`) and comma-separated seed nodes, e.g.
    /// `redis+cluster://10.0.0.1:7000,10.0.0.2:7000/`. Without it the node
    /// runs alone, with lobbies in memory.
    #[arg(long, env = "LOBBY_RELAY_REDIS_URL", value_parser = parse_redis_url, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// With a `rediss://` URL: the PEM certificate(s) of the authority that
    /// signed Redis's certificate (a private CA), instead of the system's
    /// trust store.
    #[arg(long, env = "LOBBY_RELAY_REDIS_CA_CERT")]
    pub redis_ca_cert: Option<PathBuf>,

    /// This node's name in logs and in Redis records: letters, digits, `.`,
    /// `_`, `-` (at most 64). Each node of a cluster needs its own. Default: a
    /// random `node-xxxxxxxx`.
    #[arg(long, env = "LOBBY_RELAY_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Players per lobby (2 to 64). All nodes of a cluster must agree.
    #[arg(
        long,
        env = "LOBBY_RELAY_LOBBY_CAPACITY",
        default_value_t = 2,
        value_parser = clap::value_parser!(u8).range(2..=64)
    )]
    pub lobby_capacity: u8,

    /// Quick match: the most lobbies one queue may have at once (1 to
    /// 10000000; a queue has at most one lobby still waiting for players,
    /// the others are full). A join past it gets `queue_full`. All nodes of
    /// a cluster should agree.
    #[arg(
        long,
        env = "LOBBY_RELAY_MAX_QUEUE_LOBBIES",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    pub max_queue_lobbies: u32,

    /// Spectators: the most spectators one lobby may have (0 to 100000; 0
    /// turns watching off). A watch past it gets `spectators_full`. All
    /// nodes of a cluster should agree.
    #[arg(
        long,
        env = "LOBBY_RELAY_MAX_SPECTATORS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(0..=100_000)
    )]
    pub max_spectators: u32,

    /// Spectators: the longest delay a spectator may ask for, in seconds (0
    /// to 600), so that a competitive game cannot be ghosted live. A delayed
    /// spectator holds back at most four times --outbound-queue-bytes (4
    /// MiB by default); past that it is closed (1008).
    #[arg(
        long,
        env = "LOBBY_RELAY_MAX_SPECTATOR_DELAY",
        default_value_t = 120,
        value_parser = clap::value_parser!(u32).range(0..=600)
    )]
    pub max_spectator_delay: u32,

    /// Largest WebSocket message accepted from a client, in bytes (256 to
    /// 16777216). A larger one gets `message_too_large` and close 1009.
    #[arg(
        long,
        env = "LOBBY_RELAY_MAX_MESSAGE_BYTES",
        default_value_t = 16384,
        value_parser = clap::value_parser!(u32).range(256..=16 * 1024 * 1024)
    )]
    pub max_message_bytes: u32,

    /// Log line format.
    #[arg(long, env = "LOBBY_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Which log lines to write, in tracing's filter syntax: `info` (one line
    /// per join, leave and refusal), `debug` (also every connection and
    /// refused request), or per module, e.g. `info,lobby_relay::lobby=debug`.
    #[arg(long, env = "LOBBY_RELAY_LOG", default_value = "info")]
    pub log_filter: String,

    /// Bytes that may wait for one client that reads too slowly before it is
    /// disconnected (close 1008, "too slow"); 65536 to 1073741824. Bounds the
    /// memory a client that stops reading can hold, beyond its socket buffers.
    #[arg(
        long,
        env = "LOBBY_RELAY_OUTBOUND_QUEUE_BYTES",
        default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u32).range(65536..=1024 * 1024 * 1024)
    )]
    pub outbound_queue_bytes: u32,

    /// A connection silent for this long is closed (1001, "idle timeout");
    /// after half of it the relay sends a WebSocket ping, which a live client
    /// answers automatically. E.g. `30s`, `2m`.
    #[arg(long, env = "LOBBY_RELAY_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Messages (text or binary frames) a connection may send per second on
    /// average. Excess messages are dropped with one `rate_limited` error; a
    /// connection that keeps flooding (more than 5 seconds' worth of drops)
    /// is closed with 1008. A 60 Hz game sends 60.
    #[arg(long, env = "LOBBY_RELAY_MESSAGE_RATE", default_value_t = NonZeroU32::new(120).expect("120"))]
    pub message_rate: NonZeroU32,

    /// Messages a connection may send at once above --message-rate (a client
    /// catching up after a stall).
    #[arg(long, env = "LOBBY_RELAY_MESSAGE_BURST", default_value_t = NonZeroU32::new(240).expect("240"))]
    pub message_burst: NonZeroU32,

    /// Joins a client address may attempt per minute, across the whole
    /// cluster (against passphrase guessing). Excess joins get
    /// `rate_limited` and join nothing. Players behind one carrier NAT
    /// share an address: keep it well above what one player needs.
    #[arg(long, env = "LOBBY_RELAY_JOIN_RATE", default_value_t = NonZeroU32::new(30).expect("30"))]
    pub join_rate: NonZeroU32,

    /// Joins a client address may attempt at once above --join-rate.
    #[arg(long, env = "LOBBY_RELAY_JOIN_BURST", default_value_t = NonZeroU32::new(10).expect("10"))]
    pub join_burst: NonZeroU32,

    /// Most connections this node serves at once, counted from accept
    /// (handshakes and plain HTTP requests too); further ones are closed at
    /// once with 1013 ("try again later"), health checks still answered from
    /// a small reserve. Keep the file limit (ulimit -n) above it.
    #[arg(long, env = "LOBBY_RELAY_MAX_CONNECTIONS", default_value_t = 20000)]
    pub max_connections: u32,

    /// With Redis: a node whose heartbeat in Redis is older than this is
    /// presumed dead, and the other nodes remove its players from their
    /// lobbies (the remaining players get `playerLeft` within about 4/3 of
    /// it). A node cut off from Redis for longer loses its seats.
    #[arg(long, env = "LOBBY_RELAY_NODE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub node_timeout: Duration,

    /// Longest time a client may take to send its HTTP request (the
    /// WebSocket handshake); a client that trickles bytes is cut off.
    #[arg(long, env = "LOBBY_RELAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Load balancers (addresses or networks, comma-separated, e.g.
    /// `10.0.0.0/8,127.0.0.1`) whose word on the client's address is
    /// believed: their PROXY protocol header (with --proxy-protocol) or
    /// their `X-Forwarded-For`. The limits and logs then use the client's
    /// real address. From anyone else these are ignored. Default: nobody.
    #[arg(long, env = "LOBBY_RELAY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::client_addr::parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Trusted proxies open every connection with a PROXY protocol header
    /// (v1 or v2; HAProxy's `send-proxy-v2`). A trusted peer that does not
    /// is refused.
    #[arg(long, env = "LOBBY_RELAY_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// Browser origins allowed to connect, comma-separated, e.g.
    /// `https://play.example.com,https://example.com`. When set, a WebSocket
    /// upgrade with any other `Origin` header is refused with 403. Native
    /// clients send no `Origin` and are always let in. Default: any.
    #[arg(long, env = "LOBBY_RELAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// A server-side secret: lobby ids become HMAC-SHA-256(secret,
    /// passphrase) instead of SHA-256(passphrase), so that a copy of Redis
    /// does not give passphrases away to a dictionary attack. Every node of a
    /// cluster (and `inspect`) needs the same one; changing it moves every
    /// lobby. Prefer the environment variable to the flag (flags show in
    /// `ps`).
    #[arg(long, env = "LOBBY_RELAY_LOBBY_SECRET", hide_env_values = true)]
    pub lobby_secret: Option<Secret>,

    /// Most connections one client address may hold on this node, counted
    /// from accept (behind a trusted proxy: from when it names the client);
    /// further ones are closed at once with 1013. Players behind one carrier
    /// NAT share an address.
    #[arg(
        long,
        env = "LOBBY_RELAY_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 100
    )]
    pub max_connections_per_address: u32,

    /// On SIGTERM/SIGINT, how long the node reports not-ready (`/readyz`:
    /// 503) while still serving its connections, before it closes them with
    /// 1012, so that a load balancer stops sending players to it first. Set
    /// it to the load balancer's time to mark a server down (HAProxy's
    /// `inter` x `fall`); counts toward --shutdown-timeout. E.g. `2s`.
    #[arg(long, env = "LOBBY_RELAY_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// On SIGTERM/SIGINT, how long the whole drain may take (the drain delay,
    /// then connections closing with 1012 and leaving their lobbies) before
    /// the node exits anyway.
    #[arg(long, env = "LOBBY_RELAY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The browser playground: a page served at `GET /` (without a
    /// WebSocket upgrade) and `/playground` where people join a lobby and
    /// play a tiny tank game through the relay, and the JavaScript client
    /// at `/client.js` and `/client/v1.js`. `off` for locked-down
    /// deployments: those paths then answer as before (426 on `/`, 404 on
    /// the others). The WebSocket on `/` and `/ws` is the same either way.
    #[arg(long, env = "LOBBY_RELAY_PLAYGROUND", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set, value_name = "on|off")]
    pub playground: bool,

    /// Turns on the admin view (`/admin`, `/admin/api/cluster`): live nodes,
    /// their connections, lobbies (by hash prefix), message rates and Redis
    /// latency. Requests must present this token (`Authorization: Bearer`;
    /// the page asks for it). At least 16 characters. Without it both paths
    /// answer 404. Prefer the environment variable to the flag (flags show
    /// in `ps`). Wrong tokens are throttled per client address: 10 at once,
    /// then one every 6 s; past that its requests get 429 with Retry-After,
    /// the right token's too.
    /// An empty value (`LOBBY_RELAY_ADMIN_TOKEN=` in a compose file) means
    /// no admin view, as unset; a token of only whitespace, or with
    /// whitespace at its start or end, is refused (no request could
    /// present it).
    #[arg(long, env = "LOBBY_RELAY_ADMIN_TOKEN", hide_env_values = true, value_parser = AdminTokenParser)]
    pub admin_token: Option<Secret>,

    /// Resume (opt-in per client, `"resume":true` in `join`): how long the
    /// seat of a player whose connection dropped without `leave` is held
    /// for it to come back (on any node) before the others get
    /// `playerLeft`. Long enough for a cell handoff or an app switch.
    #[arg(long, env = "LOBBY_RELAY_RESUME_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub resume_grace: Duration,

    /// Resume: the most lobby deliveries (game messages and events) kept for
    /// one resumable seat, to replay on resume (16 to 65536). A player away
    /// for longer than that many deliveries loses its seat (`playerLeft`).
    #[arg(
        long,
        env = "LOBBY_RELAY_RESUME_BUFFER_MESSAGES",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(16..=65536)
    )]
    pub resume_buffer_messages: u32,

    /// Resume: the most bytes kept for one resumable seat (4096 to
    /// 16777216); past it, as past --resume-buffer-messages.
    #[arg(
        long,
        env = "LOBBY_RELAY_RESUME_BUFFER_BYTES",
        default_value_t = 256 * 1024,
        value_parser = clap::value_parser!(u32).range(4096..=16 * 1024 * 1024)
    )]
    pub resume_buffer_bytes: u32,

    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Authentication options of `lobby-relay serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Player authentication (docs/authentication.md)")]
pub struct AuthArgs {
    /// Player authentication with the studio's JWTs: `off` (default; casual
    /// play by passphrase), `optional` (a token is used when given) or
    /// `required` (no valid token, no lobby). `optional` and `required` need
    /// a key: --auth-hs256-secret, --auth-public-key or --auth-jwks.
    #[arg(long = "auth", env = "LOBBY_RELAY_AUTH", value_enum, default_value_t = AuthMode::Off)]
    pub mode: AuthMode,

    /// The shared secret of HS256 tokens (at least 32 bytes). Prefer the
    /// environment variable to the flag (flags show in `ps`).
    #[arg(long, env = "LOBBY_RELAY_AUTH_HS256_SECRET", hide_env_values = true, value_parser = crate::auth::parse_hs256_secret)]
    pub auth_hs256_secret: Option<Secret>,

    /// A PEM file with the public key of RS256 (RSA) or ES256 (P-256)
    /// tokens. Read again when it changes and on SIGHUP.
    #[arg(long, env = "LOBBY_RELAY_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<PathBuf>,

    /// A JWKS file (`{"keys":[...]}`, as identity providers publish) with the
    /// public keys of RS256/ES256 tokens, chosen by the token's `kid`. Read
    /// again when it changes and on SIGHUP: rotate keys by rewriting it.
    #[arg(long, env = "LOBBY_RELAY_AUTH_JWKS")]
    pub auth_jwks: Option<PathBuf>,

    /// Accepted token issuers (`iss`), comma-separated. When set, a token
    /// must carry one of them.
    #[arg(long, env = "LOBBY_RELAY_AUTH_ISSUER", value_delimiter = ',')]
    pub auth_issuer: Vec<String>,

    /// Accepted token audiences (`aud`), comma-separated. When set, a token
    /// must carry one of them.
    #[arg(long, env = "LOBBY_RELAY_AUTH_AUDIENCE", value_delimiter = ',')]
    pub auth_audience: Vec<String>,

    /// Clock skew tolerated on `exp` and `nbf`, e.g. `5s`.
    #[arg(long, env = "LOBBY_RELAY_AUTH_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub auth_leeway: Duration,

    /// User ids in log lines: `off` (default) or `hash` (a SHA-256 prefix).
    #[arg(long, env = "LOBBY_RELAY_LOG_USER_IDS", value_enum, default_value_t = UserIdLogging::Off)]
    pub log_user_ids: UserIdLogging,
}

impl AuthArgs {
    /// The settings of player authentication these arguments describe.
    pub fn config(&self) -> AuthConfig {
        AuthConfig {
            mode: self.mode,
            hs256_secret: self.auth_hs256_secret.clone(),
            public_key: self.auth_public_key.clone(),
            jwks: self.auth_jwks.clone(),
            issuers: self.auth_issuer.clone(),
            audiences: self.auth_audience.clone(),
            leeway: self.auth_leeway,
            log_user_ids: self.log_user_ids,
        }
    }
}

/// A node's settings once resolved (defaults filled in), by concern.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name in logs and in the store's records.
    pub node_id: String,
    /// Players per lobby.
    pub lobby_capacity: u8,
    /// The server-side secret of lobby ids (HMAC), if any.
    pub lobby_secret: Option<Secret>,
    /// What one connection (or client address) may use.
    pub limits: Limits,
    /// Resume: how long a seat is held, and how much is kept for it.
    pub resume: ResumeConfig,
    /// The relay's port: TLS, proxies, origins, the pages.
    pub http: HttpConfig,
    /// Where lobbies live: in memory, or in Redis.
    pub store: StoreConfig,
    /// Graceful shutdown.
    pub drain: DrainConfig,
    /// Player authentication.
    pub auth: AuthConfig,
}

/// What one connection, or one client address, may use.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: u32,
    /// Quick match: the most lobbies one queue may have.
    pub max_queue_lobbies: u32,
    /// Spectators: the most per lobby (0: watching is off).
    pub max_spectators: u32,
    /// Spectators: the longest delay, in seconds.
    pub max_spectator_delay: u32,
    pub message_rate: NonZeroU32,
    pub message_burst: NonZeroU32,
    pub join_limit: JoinLimit,
}

/// Resume: the grace period and buffer caps of a held seat.
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    pub grace: Duration,
    pub buffer_messages: u32,
    pub buffer_bytes: u32,
}

/// What the relay's port serves, and to whom.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Certificate chain and key files, when serving `wss://` directly.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub trusted_proxies: TrustedProxies,
    /// Browser origins allowed to connect (normalised); empty: any.
    pub allowed_origins: Vec<String>,
    /// Serve the browser playground (`--playground`).
    pub playground: bool,
    /// The admin view's token; no admin view without it.
    pub admin_token: Option<Secret>,
}

/// Where lobbies live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The Redis to share lobbies through; lobbies in memory without it.
    pub redis_url: Option<String>,
    /// The CA to verify a `rediss://` Redis with (else the system's).
    pub redis_ca_cert: Option<PathBuf>,
    /// With Redis: when a silent node is presumed dead.
    pub node_timeout: Duration,
}

/// Graceful shutdown (SIGTERM/SIGINT).
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// How long the node reports not-ready before it closes connections.
    pub delay: Duration,
    /// How long the whole drain may take.
    pub timeout: Duration,
}

impl ServeArgs {
    /// The settings of the node these arguments describe.
    pub fn config(&self) -> Config {
        Config {
            node_id: self
                .node_id
                .clone()
                .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>())),
            lobby_capacity: self.lobby_capacity,
            lobby_secret: self.lobby_secret.clone(),
            limits: Limits {
                max_message_bytes: self.max_message_bytes as usize,
                outbound_queue_bytes: self.outbound_queue_bytes as usize,
                idle_timeout: self.idle_timeout,
                handshake_timeout: self.handshake_timeout,
                max_connections: self.max_connections as usize,
                max_connections_per_address: self.max_connections_per_address,
                max_queue_lobbies: self.max_queue_lobbies,
                max_spectators: self.max_spectators,
                max_spectator_delay: self.max_spectator_delay,
                message_rate: self.message_rate,
                message_burst: self.message_burst,
                join_limit: JoinLimit {
                    per_minute: self.join_rate,
                    burst: self.join_burst,
                },
            },
            resume: ResumeConfig {
                grace: self.resume_grace,
                buffer_messages: self.resume_buffer_messages,
                buffer_bytes: self.resume_buffer_bytes,
            },
            http: HttpConfig {
                tls: self.tls_cert.clone().zip(self.tls_key.clone()),
                trusted_proxies: TrustedProxies {
                    nets: self.trusted_proxies.clone(),
                    proxy_protocol: self.proxy_protocol,
                },
                allowed_origins: self
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect(),
                playground: self.playground,
                admin_token: self
                    .admin_token
                    .clone()
                    .filter(|token| !token.bytes().is_empty()),
            },
            store: StoreConfig {
                redis_url: self.redis_url.clone(),
                redis_ca_cert: self.redis_ca_cert.clone(),
                node_timeout: self.node_timeout,
            },
            drain: DrainConfig {
                delay: self.drain_delay,
                timeout: self.shutdown_timeout,
            },
            auth: self.auth.config(),
        }
    }
}

impl Default for Config {
    /// The defaults of `lobby-relay serve`, with a generated node id.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Defaults::parse_from(["lobby-relay"]).serve.config()
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err("use on or off".into()),
    }
}

/// An admin token of 16+ characters, or empty for none. One that no request
/// could present is refused: blank, or with whitespace around it (header
/// values and the admin page's input are trimmed), or with a control
/// character (no header can carry one).
fn parse_admin_token(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Ok(Secret::empty());
    }
    if s.trim().is_empty() {
        return Err(
            "it is only whitespace, so no request could ever present it; \
                    leave it empty or unset for no admin view"
                .into(),
        );
    }
    if s.trim() != s {
        return Err(
            "it has whitespace at its start or end, which no request can present \
                    (header values are trimmed): remove it"
                .into(),
        );
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err("it has a control character, which no HTTP header can carry".into());
    }
    s.parse()
}

/// Parses `--admin-token` with [`parse_admin_token`], refusing a bad one
/// with a message that names the option and its variable and, unlike
/// clap's usual one, does not echo the value: it is a secret, and the
/// message may end up in a log.
#[derive(Clone)]
struct AdminTokenParser;

impl clap::builder::TypedValueParser for AdminTokenParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let token = value
            .to_str()
            .ok_or_else(|| "it is not valid UTF-8".to_owned());
        token.and_then(parse_admin_token).map_err(|why| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --admin-token (LOBBY_RELAY_ADMIN_TOKEN): {why}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

fn parse_node_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("use 1 to 64 letters, digits, '.', '_' or '-'".into())
    }
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    crate::lobby::redis::target::Target::parse(s).map(|_| s.to_owned())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(parse_node_id("relay-1.eu_west").is_ok());
        assert!(parse_node_id("").is_err());
        assert!(parse_node_id("a/b").is_err());
        assert!(parse_node_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn redis_urls() {
        assert!(parse_redis_url("redis://127.0.0.1:6379/").is_ok());
        assert!(parse_redis_url("localhost:6379").is_err());
        assert!(parse_redis_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").is_ok());
        assert!(parse_redis_url("redis+cluster://").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.lobby_capacity, 2);
        assert_eq!(c.limits.max_message_bytes, 16384);
        assert!(c.node_id.starts_with("node-"));
        assert!(c.http.playground);
        assert!(c.http.admin_token.is_none());
        assert_eq!(c.auth.mode, AuthMode::Off);
        assert_eq!(c.auth.leeway, Duration::from_secs(5));
        assert!(parse_admin_token("").is_ok_and(|t| t.bytes().is_empty()));
        assert!(parse_admin_token("short").is_err());
        assert!(parse_admin_token(&" ".repeat(20)).is_err());
        assert!(parse_admin_token("correct-horse-battery ").is_err());
        assert!(parse_admin_token("\u{a0}correct-horse-battery").is_err());
        assert!(parse_admin_token("correct-horse\nbattery").is_err());
        assert!(parse_admin_token("correct horse battery").is_ok());
    }

    #[test]
    fn on_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("OFF"), Ok(false));
        assert_eq!(parse_on_off("false"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }
}
