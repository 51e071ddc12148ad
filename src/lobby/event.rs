//! The vocabulary of lobbies, shared by the stores, the hub and the node:
//! what happens in a lobby ([`LobbyEvent`]), and the settings and answers of
//! joins and resumes. A leaf: it names nothing of the hub, the node or the
//! admin view.

use std::net::IpAddr;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;

use crate::identity::MemberId;

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
