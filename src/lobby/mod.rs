//! Lobby membership and fan-out: the interface the node talks to, and its two
//! implementations.
//!
//! - [`memory::MemoryStore`]: one node alone, lobbies in this process (the
//!   embedded default).
//! - [`redis::RedisStore`]: stateless nodes sharing lobbies through Redis
//!   hashes (membership) and one pub/sub channel per lobby (fan-out).
//!
//! A store never sees a connection. It changes membership atomically and
//! hands every lobby event back to the node's [`Hub`](crate::hub::Hub) as a
//! [`LobbyEvent`], in one total order per lobby: joins, leaves and relayed
//! messages all travel the same path, so every node sees them in the same
//! order.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use crate::hub::LocalLobby;
use crate::limits::JoinLimit;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;

/// A member's identity in a lobby's records: `<node id>/<connection id>`.
/// Unique across the cluster; never derived from the passphrase.
pub type MemberId = Arc<str>;

/// Something that happened in a lobby, in the lobby's order.
#[derive(Debug, Clone)]
pub enum LobbyEvent {
    /// `member` took `seat`; the lobby now has `players` of `capacity`, in
    /// the seats `occupied`, whose authenticated members are `users`.
    Joined {
        seat: u8,
        players: u8,
        capacity: u8,
        occupied: Vec<u8>,
        member: MemberId,
        users: Vec<(u8, Arc<str>)>,
    },
    /// The member in `seat` left; `players` remain, in the seats `occupied`.
    Left {
        seat: u8,
        players: u8,
        occupied: Vec<u8>,
    },
    /// A game message from the member in `from_seat`, relayed byte for byte.
    Relay { from_seat: u8, message: Message },
    /// Resume: the connection of the member in `seat` is gone; its seat is
    /// held for `grace_ms`.
    Away { seat: u8, grace_ms: u32 },
    /// Resume: `member` took `seat` back with its resume token.
    Back { seat: u8, member: MemberId },
}

/// Resume (opt-in) settings of a seat, given at join.
#[derive(Debug, Clone)]
pub struct ResumeSetup {
    /// SHA-256 (hex) of the secret of the seat's resume token.
    pub secret_hash: String,
    /// The most deliveries held for the seat.
    pub max_messages: u32,
    /// The most bytes held for the seat.
    pub max_bytes: u32,
    /// How long the seat is held once its connection is gone.
    pub grace: std::time::Duration,
}

/// The answer to a resume.
#[derive(Debug)]
pub enum ResumeOutcome {
    /// The seat is the new member's: `players` in the lobby, `sent` game
    /// messages of the seat were relayed before the drop, and `missed` are
    /// the deliveries the player had not received, in order.
    /// `member` is the seat's member record (the new member id, with the
    /// user id of the old one if it had one).
    Resumed {
        players: u8,
        sent: u64,
        member: MemberId,
        missed: Vec<LobbyEvent>,
    },
    /// Nothing changed: the token is wrong, used or expired, the seat was
    /// released, or what the player missed is no longer held.
    Refused(&'static str),
}

/// The answer to a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The member holds `seat`; `players` counts it.
    Seated { seat: u8, players: u8 },
    /// The lobby already had `capacity` members; nothing changed.
    Full,
    /// The member's user already holds a seat in the lobby; nothing changed.
    DuplicateUser,
}

/// Whom a join limit counts: a client address, or an authenticated user
/// (by the SHA-256 of its id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Address(IpAddr),
    User(Arc<str>),
}

/// The lobby store could not do what was asked: clients get `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("the lobby store is shutting down")]
    Closed,
    #[error("the lobby store cannot be reached: {0}")]
    Unreachable(&'static str),
    #[error("the lobby store answered something unexpected: {0}")]
    Protocol(String),
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
pub trait LobbyStore: Send + Sync + 'static {
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
    fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
        resume: Option<&ResumeSetup>,
    ) -> impl Future<Output = Result<JoinOutcome, StoreError>> + Send;

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
    /// token, replaces the token by `new_secret_hash`, emits
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

    /// Counts a join attempt of `who` against the cluster-wide join limit;
    /// `false` if it is over the limit.
    fn admit_join(
        &self,
        who: RateKey,
        limit: JoinLimit,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the store can serve right now (for `/readyz`).
    fn is_healthy(&self) -> bool;

    /// The whole cluster as the admin view shows it (every node and lobby the
    /// store knows of); `None` when the store knows only this node (memory):
    /// the caller then shows the node itself.
    fn cluster_view(
        &self,
    ) -> impl Future<Output = Result<Option<crate::admin::ClusterView>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// The node is shutting down and its members have left: remove what the
    /// store holds about the node itself.
    fn goodbye(&self) -> impl Future<Output = ()> + Send;

    /// Relays a game message of `member` to the other members of `lobby`.
    /// `sender` is the member's connection: a store that queues the message
    /// counts it against the connection's bound while it waits, and tells the
    /// connection (`unavailable`) if it drops it on the way. An `Err` means
    /// the message was not taken (answered `unavailable` by the caller).
    fn publish(
        &self,
        lobby: &Arc<LocalLobby>,
        member: &MemberId,
        from_seat: u8,
        message: Message,
        sender: &Outbox,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
