//! What the client tells the game ([`Event`] and what it carries), where it
//! is ([`State`]), and what it refuses ([`ClientError`]).

use std::collections::BTreeMap;
use std::time::Duration;

/// Seat number to user id, for signed-in members (`--auth`).
pub type Users = BTreeMap<u32, String>;

/// A game message from another member.
#[derive(Debug, Clone, PartialEq)]
pub enum GameMessage {
    /// A text frame: a JSON object with a string `type`.
    Json {
        /// Its `type`.
        kind: String,
        /// The object.
        value: serde_json::Value,
        /// The frame as the relay delivered it (byte for byte what the
        /// sender sent).
        text: String,
    },
    /// A binary frame, as the sender sent it.
    Binary(Vec<u8>),
}

/// An error answer of the relay (its `code` is the protocol's), or one of
/// this client's (`resend_incomplete`).
#[derive(Debug, Clone, PartialEq)]
pub struct RelayError {
    /// Stable, for programs: `lobby_full`, `unavailable`, ...
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// The client stops (a refused player token).
    pub fatal: bool,
    /// The client tries the request again by itself (`unavailable`,
    /// `rate_limited` answers to a join or resume).
    pub will_retry: bool,
}

/// Why a seat was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatLostReason {
    /// The relay refused the resume (grace period over, seat released).
    InvalidResumeToken,
    /// The connection dropped and the seat was not resumable.
    Disconnected,
}

/// What the client tells the game, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Seated in a lobby (a join succeeded).
    Joined {
        /// This player's seat, from 1.
        seat: u32,
        /// Members now, this one included.
        players: u32,
        /// The lobby's capacity.
        capacity: u32,
        /// The relay gave a resume token: drops will be resumed.
        resumable: bool,
        /// Signed-in members.
        users: Users,
        /// The host's seat ([`Options::host`](crate::Options::host)).
        host: Option<u32>,
        /// The host's epoch: it only grows while the lobby exists.
        epoch: Option<u64>,
        /// The queue, for a quick match ([`Client::join_queue`](crate::Client::join_queue)).
        queue: Option<String>,
        /// The lobby's spectators ([`Options::spectators`](crate::Options::spectators)).
        spectators: Option<u32>,
    },
    /// Watching a game as a spectator ([`Client::watch`](crate::Client::watch)), and again
    /// after each reconnection (a spectator has no resume: what was sent
    /// meanwhile is not replayed).
    Watching {
        /// Players in the lobby.
        players: u32,
        /// The lobby's capacity.
        capacity: u32,
        /// The lobby's spectators, this one included.
        spectators: u32,
        /// The host's seat ([`WatchOptions::host`](crate::WatchOptions::host)).
        host: Option<u32>,
        /// The host's epoch.
        epoch: Option<u64>,
        /// The queue, for [`Client::watch_queue`](crate::Client::watch_queue).
        queue: Option<String>,
        /// The delay asked for, in seconds.
        delay: Option<u32>,
    },
    /// The lobby's count of spectators changed ([`Options::spectators`](crate::Options::spectators)).
    /// State, not a delivery: not counted for resume, never replayed.
    Spectators {
        /// Spectators now.
        count: u32,
    },
    /// The seat was taken back after a drop.
    Resumed {
        /// The seat (the same).
        seat: u32,
        /// Members now.
        players: u32,
        /// Deliveries missed, which follow now.
        replayed: u64,
        /// How many of this seat's game messages the relay had taken.
        sent: u64,
        /// How many of ours the client sent again (swallowed by the drop).
        resent: usize,
        /// The host's seat as it is now ([`Options::host`](crate::Options::host)).
        host: Option<u32>,
        /// The host's epoch as it is now.
        epoch: Option<u64>,
    },
    /// The lobby is full: start the game.
    Ready {
        /// Members.
        players: u32,
        /// Signed-in members.
        users: Users,
        /// The host's seat ([`Options::host`](crate::Options::host)).
        host: Option<u32>,
        /// The host's epoch.
        epoch: Option<u64>,
    },
    /// Another player joined (lobbies above capacity 2).
    PlayerJoined {
        /// Its seat.
        seat: u32,
        /// Members now.
        players: u32,
        /// Signed-in members.
        users: Users,
    },
    /// Another player left (or its seat was released).
    PlayerLeft {
        /// Its seat.
        seat: u32,
        /// Members now.
        players: u32,
    },
    /// Another player lost its connection; its seat is held for `grace`.
    PlayerAway {
        /// Its seat.
        seat: u32,
        /// How long the relay holds the seat.
        grace: Duration,
    },
    /// That player resumed.
    PlayerBack {
        /// Its seat.
        seat: u32,
    },
    /// The host's seat was freed: `host` is the new host
    /// ([`Options::host`](crate::Options::host)). State, not a delivery: not
    /// counted for resume, never replayed (a resume's [`Event::Resumed`]
    /// names the host as it is then).
    HostChanged {
        /// The new host's seat.
        host: u32,
        /// The host's epoch: one more than before.
        epoch: u64,
    },
    /// A game message from another member.
    Message(GameMessage),
    /// The relay refused something, or the client could not do something.
    Error(RelayError),
    /// The player token was accepted (`--auth`).
    Authenticated {
        /// The token's user id.
        user: String,
    },
    /// The connection dropped; the next attempt starts after `delay`.
    Reconnecting {
        /// Which attempt this is since the connection was last good (1: the
        /// first, at once), as in the JavaScript client.
        attempt: u32,
        /// Before the next attempt.
        delay: Duration,
        /// The close code, if the relay sent one.
        code: Option<u16>,
        /// The close reason, or what failed.
        reason: String,
    },
    /// The seat is gone; see `rejoining`.
    SeatLost {
        /// Why.
        reason: SeatLostReason,
        /// The seat that was lost.
        seat: Option<u32>,
        /// Queued game messages thrown away with it.
        dropped: usize,
        /// The client joins the same passphrase again
        /// ([`Options::rejoin_on_seat_lost`](crate::Options::rejoin_on_seat_lost)).
        rejoining: bool,
    },
    /// The client stopped: [`Client::close`](crate::Client::close), a refused token, or a seat
    /// taken over by another connection (4002). No event follows.
    Closed {
        /// The close code, if any.
        code: Option<u16>,
        /// The close reason.
        reason: String,
        /// [`Client::close`](crate::Client::close) (or dropping the client) ended it.
        by_client: bool,
    },
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Not connected, nothing to do.
    #[default]
    Idle,
    /// Opening a connection.
    Connecting,
    /// Connected.
    Open,
    /// After a drop, until the seat is back.
    Reconnecting,
    /// Stopped for good.
    Closed,
}

/// A seat's resume state, for a game that keeps it itself (e.g. across a
/// restart of the app): give it to [`Client::join_with`](crate::Client::join_with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    /// The lobby's passphrase; empty for a quick-match seat (see `queue`).
    pub passphrase: String,
    /// The queue of a quick-match seat: give the state to
    /// [`Client::join_queue_with`](crate::Client::join_queue_with).
    pub queue: Option<String>,
    /// The latest resume token.
    pub token: String,
    /// Deliveries received in the seat.
    pub received: u64,
}

/// A request the client could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Not in a lobby: join first.
    #[error("not in a lobby: join first")]
    NotInLobby,
    /// A spectator sends no game messages (the relay would refuse them with
    /// `spectating`): nothing was sent.
    #[error("spectating: a spectator sends no game messages")]
    Spectating,
    /// Too many game messages already wait for the connection.
    #[error("{0} messages already wait for the connection (queue_limit)")]
    QueueFull(usize),
    /// Not a game message the relay would relay.
    #[error("not a game message: {0}")]
    InvalidMessage(String),
    /// No open connection (for a ping).
    #[error("no open connection")]
    NotConnected,
    /// No pong within [`Options::ping_timeout`](crate::Options::ping_timeout).
    #[error("no pong in time")]
    PingTimeout,
    /// The client has stopped.
    #[error("the client is closed")]
    Closed,
    /// A URL that is not `ws://` or `wss://`.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// No runtime to run on.
    #[error("{0}")]
    Runtime(String),
}
