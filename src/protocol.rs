//! The wire protocol (`docs/protocol.md`, version 1): parse what clients
//! send, build what the relay sends back.
//!
//! Pure functions, no I/O: this is the only module that knows the client
//! wire format (other modules build JSON of their own, for the admin view,
//! the heartbeat, `inspect` and test tokens, never a client frame). A game
//! message is never re-encoded: [`parse_text`] only finds out *what kind* of
//! frame it is, and the caller relays the original bytes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::lobby::event::Host;

/// Message types of the protocol's two tables, and those added by resume
/// (so that no member can forge them to a resuming peer). A game message may
/// not use them.
pub const RESERVED_TYPES: [&str; 16] = [
    "join",
    "leave",
    "ping",
    "joined",
    "ready",
    "playerJoined",
    "playerLeft",
    "pong",
    "error",
    "resume",
    "resumed",
    "playerAway",
    "playerBack",
    "hostChanged",
    "watching",
    "spectators",
];

/// Message types added with player authentication; reserved only where it
/// is on, so that protocol v1 is unchanged elsewhere.
pub const AUTH_TYPES: [&str; 2] = ["auth", "authenticated"];

/// A text frame from a client, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// `{"type":"join","passphrase":P}` or the short form `{"join":P}`.
    /// The passphrase is as sent: not yet normalised.
    /// What it asks for beyond protocol v1: see [`Asks`].
    Join {
        passphrase: Cow<'a, str>,
        asks: Asks,
    },
    /// `{"type":"join","queue":Q}` (an addition): quick match in queue `Q`
    /// (as sent: not yet normalised); `asks` as for `Join`.
    JoinQueue { queue: Cow<'a, str>, asks: Asks },
    /// `{"type":"resume","token":T,"received":N}` (an addition): take a held
    /// seat back; `received` counts the deliveries the client got. `host`:
    /// as in `join`.
    Resume {
        token: Cow<'a, str>,
        received: u64,
        host: bool,
    },
    /// `{"type":"leave"}`.
    Leave,
    /// `{"type":"ping","t":T}`; `t` is any JSON value, echoed verbatim.
    /// `node` (an addition to v1): the client sent `"node":true` and wants
    /// to know which node it is connected to.
    Ping { t: Option<&'a str>, node: bool },
    /// `{"type":"auth","token":JWT}`: only where player authentication is
    /// on (see [`parse_text_with`]); elsewhere `auth` is a game message as
    /// in protocol v1.
    Auth { token: Cow<'a, str> },
    /// Any other object with a string `type`: relayed byte for byte.
    Game,
}

/// Error codes of `docs/protocol.md`, with the human text the relay sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    InvalidPassphrase,
    LobbyFull,
    AlreadyJoined,
    NotInLobby,
    ReservedType,
    RateLimited,
    MessageTooLarge,
    Unavailable,
    /// Added to protocol v1: the member's seat was given up while its node
    /// was cut off from the lobby store; the connection closes with 4001.
    SeatLost,
    /// Added: authentication is required and no token was presented.
    TokenRequired,
    /// Added: the token is malformed, badly signed, of a refused algorithm,
    /// or for another issuer or audience.
    TokenInvalid,
    /// Added: the token's `exp` has passed.
    TokenExpired,
    /// Added: the token's `nbf` has not come yet.
    TokenNotYetValid,
    /// Added: the token's `lobbies` claim does not list this lobby.
    LobbyNotAllowed,
    /// Added: the token's user already holds a seat in this lobby.
    DuplicateUser,
    /// Added: a resume token that is wrong, used or expired, or whose seat
    /// is gone.
    InvalidResumeToken,
    /// Added (quick match): a queue name that is not valid.
    InvalidQueue,
    /// Added (quick match): the queue has `--max-queue-lobbies` lobbies.
    QueueFull,
    /// Added (spectators): nobody plays in the lobby to watch.
    NothingToWatch,
    /// Added (spectators): the lobby has `--max-spectators` spectators.
    SpectatorsFull,
    /// Added (spectators): a game message from a spectator.
    Spectating,
}

impl ErrorCode {
    /// The `code` field: stable, for programs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::InvalidPassphrase => "invalid_passphrase",
            Self::LobbyFull => "lobby_full",
            Self::AlreadyJoined => "already_joined",
            Self::NotInLobby => "not_in_lobby",
            Self::ReservedType => "reserved_type",
            Self::RateLimited => "rate_limited",
            Self::MessageTooLarge => "message_too_large",
            Self::Unavailable => "unavailable",
            Self::SeatLost => "seat_lost",
            Self::TokenRequired => "token_required",
            Self::TokenInvalid => "token_invalid",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::LobbyNotAllowed => "lobby_not_allowed",
            Self::DuplicateUser => "duplicate_user",
            Self::InvalidResumeToken => "invalid_resume_token",
            Self::InvalidQueue => "invalid_queue",
            Self::QueueFull => "queue_full",
            Self::NothingToWatch => "nothing_to_watch",
            Self::SpectatorsFull => "spectators_full",
            Self::Spectating => "spectating",
        }
    }

    /// Every code, for metrics.
    pub const ALL: [ErrorCode; 23] = [
        Self::InvalidJson,
        Self::InvalidMessage,
        Self::InvalidPassphrase,
        Self::LobbyFull,
        Self::AlreadyJoined,
        Self::NotInLobby,
        Self::ReservedType,
        Self::RateLimited,
        Self::MessageTooLarge,
        Self::Unavailable,
        Self::SeatLost,
        Self::TokenRequired,
        Self::TokenInvalid,
        Self::TokenExpired,
        Self::TokenNotYetValid,
        Self::LobbyNotAllowed,
        Self::DuplicateUser,
        Self::InvalidResumeToken,
        Self::InvalidQueue,
        Self::QueueFull,
        Self::NothingToWatch,
        Self::SpectatorsFull,
        Self::Spectating,
    ];
}

/// Why a text frame was refused: the error code and the text for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The fields the relay looks at; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    join: Option<&'a RawValue>,
    #[serde(borrow, default)]
    passphrase: Option<&'a RawValue>,
    #[serde(borrow, default)]
    t: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resume: Option<&'a RawValue>,
    #[serde(borrow, default)]
    received: Option<&'a RawValue>,
}

/// Reads a raw JSON value as a string, if it is one.
fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
}

/// Classifies one text frame from a client, as protocol v1 does (`auth` is
/// a game message).
pub fn parse_text(text: &str) -> Result<ClientMessage<'_>, Refusal> {
    parse_text_with(text, false)
}

/// Classifies one text frame from a client; with `auth`, `auth` is a
/// control message (player authentication is on).
pub fn parse_text_with(text: &str, auth: bool) -> Result<ClientMessage<'_>, Refusal> {
    let head: Head<'_> = match serde_json::from_str(text) {
        Ok(head) => head,
        // Valid JSON of the wrong shape (an array, a string, a duplicate
        // field), or not JSON at all? A shape error stops the parser early,
        // before it has seen the rest (found by fuzzing: `""ju":...`), and
        // its syntax errors disagree with serde's own about huge numbers: the
        // whole text's syntax decides, with one oracle.
        Err(_) => {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => not_an_object(),
                Err(syntax) => Refusal::new(
                    ErrorCode::InvalidJson,
                    format!("the frame is not valid JSON ({syntax})"),
                ),
            });
        }
    };
    if !text.trim_start().starts_with('{') {
        return Err(not_an_object());
    }
    match head.kind {
        Some(kind) => {
            let Some(kind) = as_str(kind) else {
                return Err(Refusal::new(
                    ErrorCode::InvalidMessage,
                    "the field \"type\" must be a string",
                ));
            };
            match &*kind {
                "join" => match (head.passphrase.map(as_str), queue_of(text)) {
                    (Some(Some(passphrase)), None) => Ok(ClientMessage::Join {
                        passphrase,
                        asks: Asks::read(text, head.resume),
                    }),
                    (None, Some(Some(queue))) => Ok(ClientMessage::JoinQueue {
                        queue,
                        asks: Asks::read(text, head.resume),
                    }),
                    (Some(_), Some(_)) => Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "a join names a \"passphrase\" or a \"queue\", not both",
                    )),
                    _ => Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "join needs a string field \"passphrase\" (or \"queue\", for quick match)",
                    )),
                },
                "leave" => Ok(ClientMessage::Leave),
                "resume" => match (
                    head.token.map(as_str),
                    head.received.map(|r| r.get().parse::<u64>()),
                ) {
                    (Some(Some(token)), Some(Ok(received))) => Ok(ClientMessage::Resume {
                        token,
                        received,
                        host: Asks::read(text, None).host,
                    }),
                    _ => Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "resume needs a string field \"token\" and a whole number \"received\"",
                    )),
                },
                "auth" if auth => match head.token.map(as_str) {
                    Some(Some(token)) => Ok(ClientMessage::Auth { token }),
                    _ => Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "auth needs a string field \"token\"",
                    )),
                },
                "ping" => Ok(ClientMessage::Ping {
                    t: head.t.map(RawValue::get),
                    node: asks_for_node(text),
                }),
                reserved
                    if RESERVED_TYPES.contains(&reserved)
                        || (auth && AUTH_TYPES.contains(&reserved)) =>
                {
                    Err(Refusal::new(
                        ErrorCode::ReservedType,
                        format!("\"{reserved}\" is a protocol message type and cannot be relayed"),
                    ))
                }
                _ => Ok(ClientMessage::Game),
            }
        }
        None => match head.join.map(as_str) {
            Some(Some(passphrase)) => Ok(ClientMessage::Join {
                passphrase,
                asks: Asks::read(text, head.resume),
            }),
            Some(None) => Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "the field \"join\" must be a string passphrase",
            )),
            None => Err(Refusal::new(
                ErrorCode::InvalidMessage,
                "a message needs a string field \"type\"",
            )),
        },
    }
}

/// What a join asks for beyond protocol v1 (each flag exactly the JSON
/// `true`; anything else asks for nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// `"resume":true`: a resume token, the seat held after a drop.
    pub resume: bool,
    /// `"host":true`: to be told who is host.
    pub host: bool,
    /// `"spectators":true`: to be told how many watch.
    pub spectators: bool,
    /// `"spectate":true`: to watch, without a seat.
    pub spectate: bool,
    /// `"delay":N` (with `spectate`): seconds to watch behind; `Err` if it
    /// is not a whole number.
    pub delay: Option<Result<u32, ()>>,
}

impl Asks {
    /// The flags of a join or resume (read apart from [`Head`], so that
    /// the fields of game messages stay unlooked at: a game message may
    /// have a `host` field of any shape, twice even).
    fn read(text: &str, resume: Option<&RawValue>) -> Asks {
        #[derive(Deserialize)]
        struct Flags<'a> {
            #[serde(borrow, default)]
            host: Option<&'a RawValue>,
            #[serde(borrow, default)]
            spectators: Option<&'a RawValue>,
            #[serde(borrow, default)]
            spectate: Option<&'a RawValue>,
            #[serde(borrow, default)]
            delay: Option<&'a RawValue>,
        }
        let flags = serde_json::from_str::<Flags<'_>>(text).ok();
        let flags = flags.as_ref();
        Asks {
            resume: is_true(resume),
            host: is_true(flags.and_then(|f| f.host)),
            spectators: is_true(flags.and_then(|f| f.spectators)),
            spectate: is_true(flags.and_then(|f| f.spectate)),
            delay: flags
                .and_then(|f| f.delay)
                .map(|d| d.get().parse::<u32>().map_err(|_| ())),
        }
    }
}

/// Whether a ping carries `"node":true` (read apart from [`Head`], so that
/// the fields of game messages stay unlooked at).
fn asks_for_node(text: &str) -> bool {
    #[derive(Deserialize)]
    struct PingHead<'a> {
        #[serde(borrow, default)]
        node: Option<&'a RawValue>,
    }
    serde_json::from_str::<PingHead<'_>>(text)
        .ok()
        .is_some_and(|head| is_true(head.node))
}

/// The `queue` field of a join: `None` without one, `Some(None)` if it is
/// not a string (read apart from [`Head`], like [`Asks::read`]).
fn queue_of(text: &str) -> Option<Option<Cow<'_, str>>> {
    #[derive(Deserialize)]
    struct QueueHead<'a> {
        #[serde(borrow, default)]
        queue: Option<&'a RawValue>,
    }
    let head = serde_json::from_str::<QueueHead<'_>>(text).ok()?;
    head.queue.map(as_str)
}

/// Exactly the JSON `true`.
fn is_true(value: Option<&RawValue>) -> bool {
    value.is_some_and(|r| r.get() == "true")
}

fn not_an_object() -> Refusal {
    Refusal::new(
        ErrorCode::InvalidMessage,
        "a message must be a JSON object with a string field \"type\"",
    )
}

/// The user ids of a lobby's authenticated members, by seat.
pub type Users = [(u8, std::sync::Arc<str>)];

/// `,"users":{"1":"alice",...}` when some members are authenticated;
/// nothing otherwise (protocol v1 exactly).
fn users_field(users: &Users) -> String {
    if users.is_empty() {
        return String::new();
    }
    let mut map = serde_json::Map::new();
    for (seat, user) in users {
        map.insert(seat.to_string(), serde_json::Value::from(&**user));
    }
    format!(r#","users":{}"#, serde_json::Value::Object(map))
}

/// `,"host":H,"epoch":E` for a member that asked for the host; nothing
/// otherwise.
fn host_fields(host: Option<Host>) -> String {
    match host {
        Some(Host { seat, epoch }) => format!(r#","host":{seat},"epoch":{epoch}"#),
        None => String::new(),
    }
}

/// What `joined` (to a joiner) or `watching` (to a spectator) says.
#[derive(Debug, Default)]
pub struct Arrival<'a> {
    pub players: u8,
    pub capacity: u8,
    /// The joiner's seat (`joined`), or none (`watching`).
    pub seat: Option<u8>,
    /// Quick match: the queue the lobby came from.
    pub queue: Option<&'a str>,
    pub users: &'a Users,
    /// For a member that asked for the host.
    pub host: Option<Host>,
    /// For a member that asked for the spectators, and always in
    /// `watching`.
    pub spectators: Option<u32>,
    /// A spectator's delay, in seconds.
    pub delay: Option<u32>,
    /// Resume (opt-in): the joiner's token.
    pub resume_token: Option<&'a str>,
}

/// `{"type":"joined",...}`: to the joiner; with its queue for a quick
/// match, the host and the spectators if it asked, and its resume token if
/// it opted in. Or `{"type":"watching",...}` to a spectator (no seat).
pub fn joined(arrival: &Arrival<'_>) -> String {
    let Arrival {
        players,
        capacity,
        seat,
        queue,
        users,
        host,
        spectators,
        delay,
        resume_token,
    } = arrival;
    let (kind, seat) = match seat {
        Some(seat) => ("joined", format!(r#","seat":{seat}"#)),
        None => ("watching", String::new()),
    };
    let token = resume_token
        .map(|t| format!(r#","resumeToken":{}"#, serde_json::Value::from(t)))
        .unwrap_or_default();
    let queue = queue
        .map(|q| format!(r#","queue":{}"#, serde_json::Value::from(q)))
        .unwrap_or_default();
    let spectators = spectators
        .map(|n| format!(r#","spectators":{n}"#))
        .unwrap_or_default();
    let delay = delay
        .map(|d| format!(r#","delay":{d}"#))
        .unwrap_or_default();
    format!(
        r#"{{"type":"{kind}","players":{players},"capacity":{capacity}{seat}{queue}{}{}{spectators}{delay}{token}}}"#,
        users_field(users),
        host_fields(*host)
    )
}

/// `{"type":"spectators","count":N}`: to the members that asked, when the
/// lobby's spectators change (at most once a second).
pub fn spectators(count: u32) -> String {
    format!(r#"{{"type":"spectators","count":{count}}}"#)
}

/// `{"type":"hostChanged","host":H,"epoch":E}`: the lobby's host from now
/// on (to the members that asked).
pub fn host_changed(host: Host) -> String {
    format!(
        r#"{{"type":"hostChanged","host":{},"epoch":{}}}"#,
        host.seat, host.epoch
    )
}

/// `{"type":"playerAway","seat":S,"grace":MS}`: the member in `seat` lost
/// its connection; its seat is held for `grace` ms (resume).
pub fn player_away(seat: u8, grace_ms: u32) -> String {
    format!(r#"{{"type":"playerAway","seat":{seat},"grace":{grace_ms}}}"#)
}

/// `{"type":"playerBack","seat":S}`: the member in `seat` resumed.
pub fn player_back(seat: u8) -> String {
    format!(r#"{{"type":"playerBack","seat":{seat}}}"#)
}

/// `{"type":"resumed",...}`: to a member that took its seat back.
pub fn resumed(
    seat: u8,
    players: u8,
    capacity: u8,
    replayed: usize,
    sent: u64,
    host: Option<Host>,
    resume_token: &str,
) -> String {
    format!(
        r#"{{"type":"resumed","seat":{seat},"players":{players},"capacity":{capacity},"replayed":{replayed},"sent":{sent}{},"resumeToken":{}}}"#,
        host_fields(host),
        serde_json::Value::from(resume_token)
    )
}

/// `{"type":"ready",...}`: to every member when a join fills the lobby;
/// naming the host to those that asked.
pub fn ready(players: u8, users: &Users, host: Option<Host>) -> String {
    format!(
        r#"{{"type":"ready","players":{players}{}{}}}"#,
        users_field(users),
        host_fields(host)
    )
}

/// `{"type":"playerJoined",...}`: to the others when a join does not fill the lobby.
pub fn player_joined(players: u8, seat: u8, users: &Users) -> String {
    format!(
        r#"{{"type":"playerJoined","players":{players},"seat":{seat}{}}}"#,
        users_field(users)
    )
}

/// `{"type":"authenticated","user":...}`: the answer to a good `auth`.
pub fn authenticated(user: &str) -> String {
    format!(
        r#"{{"type":"authenticated","user":{}}}"#,
        serde_json::Value::from(user)
    )
}

/// `{"type":"playerLeft",...}`: to the remaining members.
pub fn player_left(players: u8, seat: u8) -> String {
    format!(r#"{{"type":"playerLeft","players":{players},"seat":{seat}}}"#)
}

/// `{"type":"pong"}`, echoing `t` exactly as the client wrote it.
pub fn pong(t: Option<&str>) -> String {
    match t {
        Some(t) => format!(r#"{{"type":"pong","t":{t}}}"#),
        None => r#"{"type":"pong"}"#.to_owned(),
    }
}

/// `{"type":"pong","t":T,"node":"relay-1"}`: the answer to a ping with
/// `"node":true` (an addition to v1), naming the node that answered.
pub fn pong_with_node(t: Option<&str>, node_id: &str) -> String {
    let node = serde_json::to_string(node_id).unwrap_or_else(|_| "\"\"".to_owned());
    match t {
        Some(t) => format!(r#"{{"type":"pong","t":{t},"node":{node}}}"#),
        None => format!(r#"{{"type":"pong","node":{node}}}"#),
    }
}

/// `{"type":"error","code":...,"message":...}`.
pub fn error(code: ErrorCode, message: &str) -> String {
    // Field order as in docs/protocol.md; the message is escaped by serde_json.
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        r#"{{"type":"error","code":"{}","message":{message}}}"#,
        code.as_str()
    )
}

#[cfg(test)]
mod tests;
