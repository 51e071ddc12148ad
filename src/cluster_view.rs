//! The cluster as the admin view shows it (`GET /admin/api/cluster`): its
//! nodes, their figures, its lobbies by hash prefix (with their host,
//! quick-match queue and spectators) and the queues of those lobbies. A leaf shared by
//! the admin view (`admin.rs`, which also builds the memory-mode view) and
//! the Redis store (`lobby/redis/view.rs`, which reads it from Redis).

use std::collections::HashMap;

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
    /// Quick-match queues: with Redis, those of the listed lobbies; in
    /// memory mode, every queue of the node. By name.
    pub queues: Vec<QueueView>,
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
    /// The host's seat, if known.
    pub host: Option<u32>,
    /// The host's epoch (grows by one whenever the host changes), if known.
    pub epoch: Option<u64>,
    /// The quick-match queue the lobby belongs to (`None`: a passphrase
    /// lobby).
    pub queue: Option<String>,
    /// How many spectators watch it (every node's). A lobby with no player
    /// but spectators is listed too (`players` 0, no seats).
    pub spectators: u64,
}

/// A quick-match queue of [`ClusterView`].
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// The queue's name (not secret).
    pub queue: String,
    /// How many lobbies the queue has, full ones included.
    pub lobbies: u64,
    /// The [`LOBBY_PREFIX`] hex digits of its lobby waiting for players, if
    /// any.
    pub open: Option<String>,
    /// The players seated in that lobby.
    pub open_players: Option<usize>,
}

/// A seat of a [`LobbyView`] and the node its player is connected to.
#[derive(Debug, Clone, Serialize)]
pub struct SeatView {
    pub seat: u32,
    pub node: String,
}

/// What a store that knows only this node (memory) says of its quick-match
/// queues, for the admin view of that node.
#[derive(Debug, Default)]
pub struct LocalQueues {
    /// The queue of each quick-match lobby, by the lobby's hex id.
    pub lobbies: HashMap<String, String>,
    /// Every queue, by name.
    pub queues: Vec<QueueView>,
}

/// The first hex digits of a lobby id, all the admin view ever shows of it.
pub fn lobby_prefix(hex: &str) -> String {
    hex.chars().take(LOBBY_PREFIX).collect()
}
