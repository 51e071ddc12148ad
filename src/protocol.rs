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

/// Message types of the protocol's two tables, and those added by resume
/// (so that no member can forge them to a resuming peer). A game message may
/// not use them.
pub const RESERVED_TYPES: [&str; 13] = [
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
];

/// Message types added with player authentication; reserved only where it
/// is on, so that protocol v1 is unchanged elsewhere.
pub const AUTH_TYPES: [&str; 2] = ["auth", "authenticated"];

/// A text frame from a client, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// `{"type":"join","passphrase":P}` or the short form `{"join":P}`.
    /// The passphrase is as sent: not yet normalised.
    /// `resume` (an addition): `"resume":true` opts in to resume tokens.
    Join {
        passphrase: Cow<'a, str>,
        resume: bool,
    },
    /// `{"type":"resume","token":T,"received":N}` (an addition): take a held
    /// seat back; `received` counts the deliveries the client got.
    Resume { token: Cow<'a, str>, received: u64 },
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
        }
    }

    /// Every code, for metrics.
    pub const ALL: [ErrorCode; 18] = [
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
                "join" => match head.passphrase.map(as_str) {
                    Some(Some(passphrase)) => Ok(ClientMessage::Join {
                        passphrase,
                        resume: wants_resume(head.resume),
                    }),
                    _ => Err(Refusal::new(
                        ErrorCode::InvalidMessage,
                        "join needs a string field \"passphrase\"",
                    )),
                },
                "leave" => Ok(ClientMessage::Leave),
                "resume" => match (
                    head.token.map(as_str),
                    head.received.map(|r| r.get().parse::<u64>()),
                ) {
                    (Some(Some(token)), Some(Ok(received))) => {
                        Ok(ClientMessage::Resume { token, received })
                    }
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
                resume: wants_resume(head.resume),
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
        .and_then(|head| head.node)
        .is_some_and(|node| node.get() == "true")
}

/// `"resume":true` in a join.
fn wants_resume(resume: Option<&RawValue>) -> bool {
    resume.is_some_and(|r| r.get() == "true")
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

/// `{"type":"joined",...}`: to the joiner; with its resume token if it
/// opted in.
pub fn joined(
    players: u8,
    capacity: u8,
    seat: u8,
    users: &Users,
    resume_token: Option<&str>,
) -> String {
    let token = resume_token
        .map(|t| format!(r#","resumeToken":{}"#, serde_json::Value::from(t)))
        .unwrap_or_default();
    format!(
        r#"{{"type":"joined","players":{players},"capacity":{capacity},"seat":{seat}{}{token}}}"#,
        users_field(users)
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
    resume_token: &str,
) -> String {
    format!(
        r#"{{"type":"resumed","seat":{seat},"players":{players},"capacity":{capacity},"replayed":{replayed},"sent":{sent},"resumeToken":{}}}"#,
        serde_json::Value::from(resume_token)
    )
}

/// `{"type":"ready",...}`: to every member when a join fills the lobby.
pub fn ready(players: u8, users: &Users) -> String {
    format!(
        r#"{{"type":"ready","players":{players}{}}}"#,
        users_field(users)
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
mod tests {
    use super::*;

    fn refused(text: &str) -> ErrorCode {
        parse_text(text).expect_err(text).code
    }

    #[test]
    fn join_in_both_forms() {
        let long = parse_text(r#"{"type":"join","passphrase":"jump-rocket"}"#).unwrap();
        let short = parse_text(r#"{"join":"jump-rocket"}"#).unwrap();
        let want = ClientMessage::Join {
            passphrase: "jump-rocket".into(),
            resume: false,
        };
        assert_eq!(long, want);
        assert_eq!(short, want);
        // Escapes are decoded; extra fields are ignored.
        assert_eq!(
            parse_text(r#"{"type":"join","passphrase":"jump\u002drocket","v":2}"#).unwrap(),
            want
        );
    }

    #[test]
    fn join_with_missing_or_wrong_fields_is_invalid_message() {
        for text in [
            r#"{"type":"join"}"#,
            r#"{"type":"join","passphrase":5}"#,
            r#"{"type":"join","passphrase":null}"#,
            r#"{"type":"join","join":"jump-rocket"}"#,
            r#"{"join":5}"#,
            r#"{"join":["jump-rocket"]}"#,
        ] {
            assert_eq!(refused(text), ErrorCode::InvalidMessage, "{text}");
        }
    }

    #[test]
    fn type_wins_over_the_short_join_form() {
        assert_eq!(
            parse_text(r#"{"type":"playerMove","join":"jump-rocket"}"#).unwrap(),
            ClientMessage::Game
        );
    }

    #[test]
    fn leave_and_ping() {
        assert_eq!(
            parse_text(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave
        );
        assert_eq!(
            parse_text(r#"{"type":"ping","t":123}"#).unwrap(),
            ClientMessage::Ping {
                t: Some("123"),
                node: false
            }
        );
        assert_eq!(
            parse_text(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping {
                t: None,
                node: false
            }
        );
        assert_eq!(
            parse_text(r#"{"type":"ping","t":{"a":[1, 2]}}"#).unwrap(),
            ClientMessage::Ping {
                t: Some(r#"{"a":[1, 2]}"#),
                node: false
            }
        );
    }

    #[test]
    fn a_ping_may_ask_for_the_node() {
        assert_eq!(
            parse_text(r#"{"type":"ping","t":5,"node":true}"#).unwrap(),
            ClientMessage::Ping {
                t: Some("5"),
                node: true
            }
        );
        for text in [
            r#"{"type":"ping","node":false}"#,
            r#"{"type":"ping","node":"yes"}"#,
            r#"{"type":"ping","node":true,"node":true}"#,
        ] {
            assert!(
                matches!(
                    parse_text(text),
                    Ok(ClientMessage::Ping { node: false, .. })
                ),
                "{text}"
            );
        }
        assert_eq!(
            pong_with_node(Some("5"), "relay-1"),
            r#"{"type":"pong","t":5,"node":"relay-1"}"#
        );
        assert_eq!(pong_with_node(None, "a"), r#"{"type":"pong","node":"a"}"#);
    }

    #[test]
    fn game_messages() {
        for text in [
            r#"{"type":"playerMove","x":1,"y":2}"#,
            r#"  {"type":"playerShoot"}  "#,
            r#"{"type":"Join"}"#,
            r#"{"type":""}"#,
            r#"{"type":"chat","text":"h\u00e9llo"}"#,
        ] {
            assert_eq!(parse_text(text).unwrap(), ClientMessage::Game, "{text}");
        }
    }

    #[test]
    fn not_json_is_invalid_json() {
        for text in [
            "",
            "not json",
            "{",
            r#"{"type":"playerMove""#,
            "{'type':'x'}",
            r#"{"type":"a"} x"#,
        ] {
            assert_eq!(refused(text), ErrorCode::InvalidJson, "{text:?}");
        }
    }

    #[test]
    fn a_shape_error_early_in_invalid_json_is_still_invalid_json() {
        // Regression, found by fuzzing: a string first, then garbage.
        assert_eq!(
            refused(r#"""ju":"{""ju":"j"b:ket"}"#),
            ErrorCode::InvalidJson
        );
        assert_eq!(refused(r#"{"type":5, nonsense"#), ErrorCode::InvalidJson);
        assert_eq!(
            refused(r#"{"type":"a","type":"b",}"#),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn numbers_beyond_f64_are_still_json() {
        // Found by fuzzing: JSON allows any number syntax; such frames are
        // judged by their shape and relayed byte for byte.
        assert_eq!(refused("[\n80e7777777777777\n]"), ErrorCode::InvalidMessage);
        assert_eq!(refused("777e777777"), ErrorCode::InvalidMessage);
        assert_eq!(
            parse_text(r#"{"type":"big","n":1e999}"#).unwrap(),
            ClientMessage::Game
        );
    }

    #[test]
    fn json_of_the_wrong_shape_is_invalid_message() {
        for text in [
            "[1,2]",
            r#"["playerMove"]"#,
            r#""playerMove""#,
            "5",
            "null",
            "{}",
            r#"{"x":1}"#,
            r#"{"type":5}"#,
            r#"{"type":null}"#,
            r#"{"type":{"a":1}}"#,
            r#"{"type":"a","type":"b"}"#,
        ] {
            assert_eq!(refused(text), ErrorCode::InvalidMessage, "{text}");
        }
    }

    #[test]
    fn relay_types_are_reserved() {
        for kind in [
            "joined",
            "ready",
            "playerJoined",
            "playerLeft",
            "pong",
            "error",
        ] {
            let text = format!(r#"{{"type":"{kind}"}}"#);
            assert_eq!(refused(&text), ErrorCode::ReservedType, "{text}");
        }
    }

    #[test]
    fn auth_is_a_control_message_only_where_authentication_is_on() {
        let text = r#"{"type":"auth","token":"a.b.c"}"#;
        assert_eq!(parse_text(text), Ok(ClientMessage::Game));
        assert_eq!(
            parse_text_with(text, true),
            Ok(ClientMessage::Auth {
                token: "a.b.c".into()
            })
        );
        assert_eq!(
            parse_text_with(r#"{"type":"auth"}"#, true)
                .unwrap_err()
                .code,
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            parse_text_with(r#"{"type":"authenticated"}"#, true)
                .unwrap_err()
                .code,
            ErrorCode::ReservedType
        );
        assert_eq!(
            parse_text(r#"{"type":"authenticated"}"#),
            Ok(ClientMessage::Game)
        );
    }

    #[test]
    fn events_have_the_documented_shape() {
        assert_eq!(
            joined(1, 2, 1, &[], None),
            r#"{"type":"joined","players":1,"capacity":2,"seat":1}"#
        );
        assert_eq!(ready(2, &[]), r#"{"type":"ready","players":2}"#);
        assert_eq!(
            player_joined(2, 2, &[]),
            r#"{"type":"playerJoined","players":2,"seat":2}"#
        );
        // With authenticated members: their user ids by seat, escaped.
        let users = [(1, "alice".into()), (2, "b\"ob".into())];
        assert_eq!(
            ready(2, &users),
            r#"{"type":"ready","players":2,"users":{"1":"alice","2":"b\"ob"}}"#
        );
        assert_eq!(
            authenticated("alice"),
            r#"{"type":"authenticated","user":"alice"}"#
        );
        assert_eq!(
            player_left(1, 2),
            r#"{"type":"playerLeft","players":1,"seat":2}"#
        );
        assert_eq!(pong(Some("123")), r#"{"type":"pong","t":123}"#);
        assert_eq!(pong(None), r#"{"type":"pong"}"#);
        let e: serde_json::Value =
            serde_json::from_str(&error(ErrorCode::LobbyFull, "the \"lobby\" is full")).unwrap();
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "lobby_full");
        assert_eq!(e["message"], "the \"lobby\" is full");
    }
}
