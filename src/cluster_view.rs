//! The cluster as the admin view shows it (`GET /admin/api/cluster`): its
//! nodes, their figures and its lobbies by hash prefix. A leaf shared by
//! the admin view (`admin.rs`, which also builds the memory-mode view) and
//! the Redis store (`lobby/redis/view.rs`, which reads it from Redis).

use serde::Serialize;

use crate::metrics::Figures;

/// How many hex digits of a lobby id the admin view shows.
pub const LOBBY_PREFIX: usize = 8;
/// The most lobbies one answer of the admin API lists.
pub const LOBBY_LIMIT: usize = 100;

/// What `GET /admin/api/cluster` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// `redis` (every live node of the cluster) or `memory` (this node).
    pub store: &'static str,
    /// The node that answered.
    pub served_by: String,
    /// The nodes: with Redis, every node listed in `lr:{nodes}`.
    pub nodes: Vec<NodeView>,
    /// Lobbies, by hash prefix (at most [`LOBBY_LIMIT`]).
    pub lobbies: Vec<LobbyView>,
    /// Whether there were more lobbies than listed.
    pub lobbies_truncated: bool,
}

/// One node of [`ClusterView`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The node id (`--node-id`).
    pub node: String,
    /// The node key, `<node id>/<incarnation>`.
    pub key: String,
    /// Its heartbeat has not expired.
    pub alive: bool,
    /// Time left on its heartbeat (Redis only).
    pub ttl_ms: Option<u64>,
    pub version: Option<String>,
    /// Its figures as of its last heartbeat (now, in memory mode).
    pub stats: Option<Figures>,
}

/// One lobby of [`ClusterView`].
#[derive(Debug, Clone, Serialize)]
pub struct LobbyView {
    /// The first [`LOBBY_PREFIX`] hex digits of the lobby id.
    pub lobby: String,
    pub players: usize,
    pub seats: Vec<SeatView>,
}

/// A seat of a [`LobbyView`] and the node its player is connected to.
#[derive(Debug, Clone, Serialize)]
pub struct SeatView {
    pub seat: u32,
    pub node: String,
}

/// The first hex digits of a lobby id, all the admin view ever shows of it.
pub fn lobby_prefix(hex: &str) -> String {
    hex.chars().take(LOBBY_PREFIX).collect()
}
