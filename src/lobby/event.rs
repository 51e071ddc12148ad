//! The vocabulary of lobbies, shared by the stores, the hub and the node:
//! what happens in a lobby ([`LobbyEvent`]), and the settings and answers of
//! joins and resumes. A leaf: it names nothing of the hub, the node or the
//! admin view.

use std::net::IpAddr;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use crate::identity::MemberId;
use crate::passphrase::LobbyId;

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
        /// The lobby's host after the join (`None` from a node of an older
        /// version, whose join events do not say).
        host: Option<Host>,
        /// Spectators of the lobby (`None` where unknown: from a node of
        /// an older version, or made up after an outage).
        spectators: Option<u32>,
    },
    /// Spectators: `member` started watching the lobby, which has
    /// `players` of `capacity` in the seats `occupied` (authenticated ones:
    /// `users`), host `host`, and now `spectators` spectators.
    Watching {
        member: MemberId,
        players: u8,
        capacity: u8,
        occupied: Vec<u8>,
        users: Vec<(u8, Arc<str>)>,
        host: Option<Host>,
        spectators: u32,
    },
    /// Spectators: the lobby has `count` spectators now (one stopped
    /// watching, or its node was reaped). Not a delivery: players that
    /// asked are told the count, at most once a second.
    Spectators(u32),
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
    /// The host left (or its grace ran out): `host` is the lobby's host
    /// from now on. Follows the leave, in the same atomic step. Not a
    /// delivery that resume counts: `resumed` says who is host instead.
    HostChanged(Host),
}

/// A lobby's host: the member whose simulation is authoritative.
///
/// The first joiner of a lobby is its host; when the host's seat is freed
/// (a leave, a node reaped, a held seat's grace over), the lowest occupied
/// seat becomes host and `epoch` grows by one. A later joiner never takes
/// the host over, whatever its seat; a held seat stays host while it is
/// held. `epoch` only grows while the lobby exists, so that a game can
/// discard what an earlier host claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub seat: u8,
    pub epoch: u64,
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
        /// The lobby's host now (`None` where the store does not know it:
        /// Redis lost its data, or an older node made the lobby).
        host: Option<Host>,
        sent: u64,
        member: MemberId,
        missed: Vec<LobbyEvent>,
    },
    /// Nothing changed: see the reason.
    Refused(ResumeRefusal),
}

/// Why a store refused a resume (nothing changed). The texts are what the
/// player is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefusal {
    /// The token is wrong, used or expired, or the seat was released.
    WrongToken,
    /// The seat overflowed its buffer while away: it is being released.
    TooMuchMissed,
    /// `received` does not match the seat's deliveries, or what followed it
    /// is no longer held.
    NotHeld,
}

impl ResumeRefusal {
    /// What the player is told.
    pub fn text(self) -> &'static str {
        match self {
            Self::WrongToken => "the token is wrong, already used or expired",
            Self::TooMuchMissed => "too much was missed: the seat is being released",
            Self::NotHeld => {
                "`received` is not a count of this seat's deliveries, or what followed it is no longer held"
            }
        }
    }
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

/// The answer to a quick-match reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A seat of this lobby is the member's to take (by a join naming the
    /// queue) for the next few seconds.
    Reserved(LobbyId),
    /// The queue has as many lobbies as it may have; nothing changed.
    QueueFull,
}

/// The answer to a request to watch a lobby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOutcome {
    /// The spectator is counted; its `Watching` event follows.
    Watching,
    /// The lobby has no player: nothing to watch.
    NothingToWatch,
    /// The lobby has as many spectators as it may have.
    Full,
}

/// Whom a join limit counts: a client address, or an authenticated user
/// (by the SHA-256 of its id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Address(IpAddr),
    User(Arc<str>),
}
