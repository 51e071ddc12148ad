//! Lobby membership and fan-out: the interface the node talks to, and its two
//! implementations.
//!
//! - [`memory::MemoryStore`]: one node alone, lobbies in this process (the
//!   embedded default).
//! - [`redis::RedisStore`]: stateless nodes sharing lobbies through Redis
//!   hashes (membership) and one pub/sub channel per lobby (fan-out).
//!
//! A store never sees a connection. It changes membership atomically and
//! hands every lobby event back to the node through an [`EventSink`] (the
//! node's hub), as a [`LobbyEvent`], in one total order per lobby: joins,
//! leaves and relayed messages all travel the same path, so every node sees
//! them in the same order.
//!
//! The operations are split by concern: membership and fan-out
//! ([`LobbyMembership`]), the join limit ([`JoinLimiter`]), health and the
//! admin view ([`StoreHealth`]) and the node's goodbye ([`Goodbye`]), which
//! [`LobbyStore`] sums up. The lobby vocabulary is in [`event`]. This module
//! names neither the hub nor the node: they implement or call what is
//! declared here.

pub mod event;
pub mod memory;
pub mod redis;

use std::future::Future;

use tokio_tungstenite::tungstenite::Message;

use crate::cluster_view::{ClusterView, LocalQueues};
pub use crate::identity::MemberId;
use crate::limits::JoinLimit;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::queue::QueueName;
pub use event::{
    JoinOutcome, LobbyEvent, RateKey, Reservation, ResumeOutcome, ResumeRefusal, ResumeSetup,
    WatchOutcome,
};

/// Where a store hands the events of the lobbies this node has members in
/// (the node's hub), and what it may ask of those local members (to
/// re-register them after an outage, or take out the ones whose seats are
/// gone).
pub trait EventSink: Send + Sync + 'static {
    /// Delivers an event of `lobby` to this node's members of it (nothing
    /// if it has none).
    fn deliver(&self, lobby: &LobbyId, event: LobbyEvent);

    /// Every lobby with members on this node.
    fn lobby_ids(&self) -> Vec<LobbyId>;

    /// Whether this node has members in `lobby`.
    fn has_lobby(&self, lobby: &LobbyId) -> bool;

    /// The members of this node seated in `lobby`: `(member, seat)`.
    fn seated(&self, lobby: &LobbyId) -> Vec<(MemberId, u8)>;

    /// The occupied seats of `lobby` as of the last event this node saw.
    fn occupied(&self, lobby: &LobbyId) -> Vec<u8>;

    /// The host of `lobby` as of the last event this node saw that said.
    fn host(&self, lobby: &LobbyId) -> Option<event::Host>;

    /// How many spectators of `lobby` watch from this node.
    fn spectators_here(&self, lobby: &LobbyId) -> usize;

    /// Takes `member` out of `lobby`: its seat is no longer its own in the
    /// store (it is told, and disconnected).
    fn lose(&self, lobby: &LobbyId, member: &MemberId);
}

/// This node's members of one lobby (the hub's local lobby), to which a
/// store that fans out in process hands a game message directly.
pub trait LobbySink: Send + Sync {
    /// Delivers an event of the lobby to its members on this node.
    fn deliver(&self, event: LobbyEvent);
}

/// The lobby store could not do what was asked: clients get `unavailable`.
/// Store-neutral: a store's own errors ride in [`StoreError::Backend`] (the
/// Redis store converts its client's errors there).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's backend failed: `store` names it (`redis`), `source` is
    /// its own error.
    #[error("{store}: {source}")]
    Backend {
        store: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the lobby store is shutting down")]
    Closed,
    #[error("the lobby store cannot be reached: {0}")]
    Unreachable(&'static str),
    #[error("the lobby store answered something unexpected: {0}")]
    Protocol(String),
    /// The store cannot be set up with the settings given (its address, its
    /// CA certificate).
    #[error("{0}")]
    Settings(String),
    /// Too much already waits for the store (from this connection or this
    /// node): the message was not taken.
    #[error("too many messages wait for the lobby store")]
    Backlog,
}

/// Lobby membership and fan-out, as the node needs them.
///
/// Ordering contract: for one caller, `publish`es and the final `leave` take
/// effect in call order, and every node's hub receives the resulting events
/// in that order.
pub trait LobbyMembership: Send + Sync + 'static {
    /// Starts delivering `lobby`'s events to this node. Called (once) before
    /// this node's first member of the lobby joins, and resolved only when no
    /// later event can be missed.
    fn subscribe(&self, lobby: &LobbyId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stops delivering `lobby`'s events to this node: its last local member
    /// has gone.
    fn unsubscribe(&self, lobby: &LobbyId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically seats `member` in the lowest free seat unless the lobby is
    /// full (or, for an authenticated member, its user already holds a seat
    /// there), and emits [`LobbyEvent::Joined`] to every subscribed node.
    /// `queue`: the member reserved its seat in this queue's lobby
    /// ([`LobbyMembership::reserve`]); the join takes the reservation (and
    /// the others' count as taken seats).
    fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
        resume: Option<&ResumeSetup>,
        queue: Option<&QueueName>,
    ) -> impl Future<Output = Result<JoinOutcome, StoreError>> + Send;

    /// Quick match, first step: atomically reserves a seat for `member` in
    /// the oldest lobby of `queue` with a free seat, or in a new lobby of
    /// the queue (at most `max_lobbies` of them), and keeps the queue's open
    /// lobby (at most one) up to date in the same step. The member then
    /// subscribes to that lobby and joins it naming the queue. A reservation
    /// lapses by itself after a few seconds.
    fn reserve(
        &self,
        queue: &QueueName,
        member: &MemberId,
        capacity: u8,
        max_lobbies: u32,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;

    /// Gives a reservation up (the join did not happen): an unused new lobby
    /// goes, a lobby left with room is the queue's open one again if it has
    /// none.
    fn unreserve(
        &self,
        queue: &QueueName,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Resume: the connection of `member` (in `seat`) ended without leave.
    /// Holds the seat and emits [`LobbyEvent::Away`] if the seat is
    /// resumable (`true`); `false` if it is not (the caller leaves instead).
    fn away(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        seat: u8,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Resume: gives `seat` to `member` if `secret_hash` is the seat's
    /// token (or the one its last resume presented, whose answer may have
    /// died with its connection), replaces the token by `new_secret_hash`
    /// (keeping the presented one good until the new one is used), emits
    /// [`LobbyEvent::Back`], and returns what the player missed after its
    /// first `received` deliveries.
    fn resume(
        &self,
        lobby: &LobbyId,
        seat: u8,
        secret_hash: &str,
        new_secret_hash: &str,
        received: u64,
        member: &MemberId,
    ) -> impl Future<Output = Result<ResumeOutcome, StoreError>> + Send;

    /// Spectators: `member` starts watching `lobby` (this node subscribed
    /// to it first): refused if the lobby has no player, or has `max`
    /// spectators already; else counted (for its node, so that a reaper
    /// can take a dead node's spectators off) and [`LobbyEvent::Watching`]
    /// is emitted, in the lobby's order.
    fn watch(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        max: u32,
    ) -> impl Future<Output = Result<WatchOutcome, StoreError>> + Send;

    /// Spectators: `member` stops watching `lobby`; emits
    /// [`LobbyEvent::Spectators`] with the new count.
    fn unwatch(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Spectators: the lobby of `queue` that filled last (a game under
    /// way), if it still has players.
    fn latest_game(
        &self,
        queue: &QueueName,
    ) -> impl Future<Output = Result<Option<LobbyId>, StoreError>> + Send;

    /// Frees `seat` if `member` still holds it and emits [`LobbyEvent::Left`];
    /// when the lobby is empty afterwards, nothing of it remains. Seat 0
    /// means whichever seat `member` holds (after a join whose answer was
    /// lost).
    fn leave(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        seat: u8,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Relays a game message of `member` to the other members of `lobby`.
    /// `local` is this node's members of the lobby, for a store that fans
    /// out in process (memory); a store that fans out through Redis ignores
    /// it. `sender` is the member's connection: a store that queues the
    /// message counts it against the connection's bound while it waits, and
    /// tells the connection (`unavailable`) if it drops it on the way. An
    /// `Err` means the message was not taken (answered `unavailable` by the
    /// caller).
    fn publish(
        &self,
        lobby: &LobbyId,
        local: &dyn LobbySink,
        member: &MemberId,
        from_seat: u8,
        message: Message,
        sender: &Outbox,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The join limit, cluster-wide with Redis.
pub trait JoinLimiter: Send + Sync + 'static {
    /// Counts a join attempt of `who` against the cluster-wide join limit;
    /// `false` if it is over the limit.
    fn admit_join(
        &self,
        who: RateKey,
        limit: JoinLimit,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// What the node reports of its store: readiness and the admin view.
pub trait StoreHealth: Send + Sync + 'static {
    /// Whether the store can serve right now (for `/readyz`).
    fn is_healthy(&self) -> bool;

    /// The whole cluster as the admin view shows it (every node and lobby the
    /// store knows of); `None` when the store knows only this node (memory):
    /// the caller then shows the node itself.
    fn cluster_view(&self) -> impl Future<Output = Result<Option<ClusterView>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// For the admin view of a store that knows only this node (memory): its
    /// quick-match queues and the queue of each of its lobbies. Empty for a
    /// store whose [`cluster_view`](Self::cluster_view) says it all.
    fn local_queues(&self) -> LocalQueues {
        LocalQueues::default()
    }
}

/// The end of a node's life in the store.
pub trait Goodbye: Send + Sync + 'static {
    /// The node is shutting down and its members have left: remove what the
    /// store holds about the node itself.
    fn goodbye(&self) -> impl Future<Output = ()> + Send;
}

/// Everything a node needs of its lobby store (implemented for any store
/// with the four parts): what the server and the session name as the
/// store's type.
pub trait LobbyStore: LobbyMembership + JoinLimiter + StoreHealth + Goodbye {}

impl<S: LobbyMembership + JoinLimiter + StoreHealth + Goodbye> LobbyStore for S {}
