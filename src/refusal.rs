//! What a client is told when the relay refuses one of its requests, in one
//! place.
//!
//! Every failure that a session answers with an `error` message is a
//! [`Refusal`]. Each kind knows its error code ([`Refusal::code`]), the text
//! its client reads ([`Refusal::text`]), its log line and metrics
//! ([`Refusal::record`]), and the close that follows it, if any
//! ([`Refusal::close`]). The session only picks the kind and sends what it
//! says. [`Tally`] sums up the refusals of one connection in one log line.
//!
//! A lobby store error is looked into in one function only,
//! `unavailable_text`: whatever the store's failure, the client gets
//! `unavailable`.

use std::borrow::Cow;
use std::num::NonZeroU32;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::AuthError;
use crate::lobby::StoreError;
use crate::metrics;
use crate::passphrase::{LobbyId, PassphraseError};
use crate::protocol::{self, ErrorCode};
use crate::queue::{QueueName, QueueNameError};

/// What a refused join was for: a passphrase's lobby, or a quick-match
/// queue (whose name is not secret: logs show it).
#[derive(Debug, Clone)]
pub enum Joining {
    Lobby(LobbyId),
    Queue(QueueName),
}

impl Joining {
    /// As log lines name it: the lobby's first 8 hex digits, or
    /// `queue:<name>`.
    pub fn short(&self) -> String {
        match self {
            Self::Lobby(id) => id.short(),
            Self::Queue(name) => format!("queue:{name}"),
        }
    }
}

impl From<LobbyId> for Joining {
    fn from(id: LobbyId) -> Self {
        Self::Lobby(id)
    }
}

/// The target of the log lines of refusals: they are a session's lines, and
/// name it as they did before this module existed (so that
/// `--log-filter lobby_relay::session=debug` still shows them).
const TARGET: &str = "lobby_relay::session";

/// The `debug` line of a refused join: its lobby and reason, then what else
/// the line has (the user, the message).
macro_rules! join_refused {
    ($lobby:expr, $reason:literal, $($rest:tt)+) => {
        tracing::debug!(
            target: TARGET,
            event = "join_refused",
            lobby = $lobby.short(),
            reason = $reason,
            $($rest)+
        )
    };
}

/// The text of every `unavailable` answer to a join or resume.
const LOBBIES_UNAVAILABLE: &str = "lobbies are unavailable right now; try again";

/// A request of a client that the relay refuses, and why.
#[derive(Debug)]
pub enum Refusal<'a> {
    /// A message over `--max-message-bytes`: the connection closes (1009).
    MessageTooLarge { size: usize, max: usize },
    /// Messages over `--message-rate`: they are dropped until the client
    /// slows down.
    TooManyMessages { per_second: NonZeroU32 },
    /// A text frame the protocol does not accept.
    Malformed(protocol::Refusal),
    /// `auth` on a connection that is in a lobby.
    AuthWhileJoined,
    /// `join` or `resume` on a connection that is in a lobby.
    AlreadyJoined,
    /// A passphrase that is not one.
    InvalidPassphrase(PassphraseError),
    /// A queue name that is not one.
    InvalidQueue(QueueNameError),
    /// The queue has `--max-queue-lobbies` lobbies already.
    QueueFull { queue: QueueName, max: u32 },
    /// A spectator's `delay` that is not a whole number of seconds up to
    /// `--max-spectator-delay`.
    BadDelay { max: u32 },
    /// Nobody plays in the lobby (or no game of the queue is under way).
    NothingToWatch { lobby: Joining },
    /// The lobby has `--max-spectators` spectators (0: watching is off).
    SpectatorsFull { lobby: Joining, max: u32 },
    /// A game message from a spectator.
    Spectating,
    /// The player's token does not list this lobby (`user`: the user as log
    /// lines may show it).
    LobbyNotAllowed {
        lobby: Joining,
        user: Option<String>,
    },
    /// A join over `--join-rate`.
    TooManyJoins {
        lobby: Joining,
        per_minute: NonZeroU32,
    },
    /// A resume over `--join-rate`.
    TooManyResumes { per_minute: NonZeroU32 },
    /// The lobby has `capacity` players already.
    LobbyFull { lobby: Joining, capacity: u8 },
    /// The player's user holds a seat in the lobby already.
    DuplicateUser {
        lobby: Joining,
        user: Option<String>,
    },
    /// The lobby store could not serve a join.
    JoinUnavailable {
        lobby: Joining,
        error: &'a StoreError,
    },
    /// A resume token that gives no seat back, and why.
    ResumeRefused(&'static str),
    /// The lobby store could not serve a resume.
    ResumeUnavailable(&'a StoreError),
    /// `leave` on a connection in no lobby.
    NotInLobby,
    /// A game message on a connection in no lobby.
    GameBeforeJoin,
    /// The lobby store did not take a game message.
    RelayFailed(&'a StoreError),
    /// A token was refused (or none given where one is required): the
    /// connection closes (1008).
    Auth(AuthError),
}

impl Refusal<'_> {
    /// The error code the client gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            Self::TooManyMessages { .. }
            | Self::TooManyJoins { .. }
            | Self::TooManyResumes { .. } => ErrorCode::RateLimited,
            Self::Malformed(refusal) => refusal.code,
            Self::AuthWhileJoined | Self::AlreadyJoined => ErrorCode::AlreadyJoined,
            Self::InvalidPassphrase(_) => ErrorCode::InvalidPassphrase,
            Self::InvalidQueue(_) => ErrorCode::InvalidQueue,
            Self::QueueFull { .. } => ErrorCode::QueueFull,
            Self::BadDelay { .. } => ErrorCode::InvalidMessage,
            Self::NothingToWatch { .. } => ErrorCode::NothingToWatch,
            Self::SpectatorsFull { .. } => ErrorCode::SpectatorsFull,
            Self::Spectating => ErrorCode::Spectating,
            Self::LobbyNotAllowed { .. } => ErrorCode::LobbyNotAllowed,
            Self::LobbyFull { .. } => ErrorCode::LobbyFull,
            Self::DuplicateUser { .. } => ErrorCode::DuplicateUser,
            Self::ResumeRefused(_) => ErrorCode::InvalidResumeToken,
            Self::JoinUnavailable { .. } | Self::ResumeUnavailable(_) | Self::RelayFailed(_) => {
                ErrorCode::Unavailable
            }
            Self::NotInLobby | Self::GameBeforeJoin => ErrorCode::NotInLobby,
            Self::Auth(AuthError::Required) => ErrorCode::TokenRequired,
            Self::Auth(AuthError::Expired) => ErrorCode::TokenExpired,
            Self::Auth(AuthError::NotYetValid) => ErrorCode::TokenNotYetValid,
            Self::Auth(AuthError::Invalid(_)) => ErrorCode::TokenInvalid,
        }
    }

    /// The text the client gets, for people.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Self::MessageTooLarge { size, max } => {
                format!("a message of {size} bytes is over this relay's maximum of {max}").into()
            }
            Self::TooManyMessages { per_second } => format!(
                "more than {per_second} messages a second: messages are dropped until you slow down"
            )
            .into(),
            Self::Malformed(refusal) => Cow::Borrowed(&refusal.message),
            Self::AuthWhileJoined => "authenticate before joining, or leave the lobby first".into(),
            Self::AlreadyJoined => "this connection is already in a lobby; leave it first".into(),
            Self::InvalidPassphrase(e) => e.to_string().into(),
            Self::InvalidQueue(e) => e.to_string().into(),
            Self::BadDelay { max } => format!(
                "\"delay\" must be a whole number of seconds, at most {max}"
            )
            .into(),
            Self::NothingToWatch { lobby: Joining::Lobby(_) } => {
                "nobody plays in this lobby right now: nothing to watch".into()
            }
            Self::NothingToWatch { lobby: Joining::Queue(_) } => {
                "no game of this queue is under way: nothing to watch".into()
            }
            Self::SpectatorsFull { max: 0, .. } => "this relay does not allow spectators".into(),
            Self::SpectatorsFull { max, .. } => {
                format!("this lobby already has {max} spectators").into()
            }
            Self::Spectating => "spectators cannot send game messages".into(),
            Self::QueueFull { max, .. } => format!(
                "this queue already has {max} games; try again in a while, or another queue"
            )
            .into(),
            Self::LobbyNotAllowed { .. } => "your token does not allow this lobby".into(),
            Self::TooManyJoins { per_minute, .. } => format!(
                "too many joins from your address or account (at most {per_minute} a minute); wait a little"
            )
            .into(),
            Self::TooManyResumes { per_minute } => format!(
                "too many joins or resumes from your address (at most {per_minute} a minute); wait a little"
            )
            .into(),
            Self::LobbyFull { capacity, .. } => {
                format!("this lobby already has {capacity} players").into()
            }
            Self::DuplicateUser { .. } => "your account already holds a seat in this lobby (on another connection); leave it there first".into(),
            Self::ResumeRefused(why) => (*why).into(),
            Self::JoinUnavailable { error, .. } | Self::ResumeUnavailable(error) => {
                unavailable_text(error, false).into()
            }
            Self::RelayFailed(error) => unavailable_text(error, true).into(),
            Self::NotInLobby => "this connection is in no lobby".into(),
            Self::GameBeforeJoin => "join a lobby before sending game messages".into(),
            Self::Auth(e) => e.to_string().into(),
        }
    }

    /// The `error` frame the client gets.
    pub fn frame(&self) -> String {
        protocol::error(self.code(), &self.text())
    }

    /// The close that follows the `error` frame, if the connection ends.
    pub fn close(&self) -> Option<(CloseCode, &'static str)> {
        match self {
            Self::MessageTooLarge { .. } => Some((CloseCode::Size, "message too large")),
            Self::Auth(_) => Some((CloseCode::Policy, "authentication failed")),
            _ => None,
        }
    }

    /// Whether the connection's [`Tally`] counts it (a refused token is
    /// logged on its own line instead: it ends the connection).
    pub fn is_tallied(&self) -> bool {
        !matches!(self, Self::Auth(_))
    }

    /// Writes the refusal's log lines and counts its metrics: its own line,
    /// if its kind has one, then the `error` metric of its code and (when
    /// tallied) the `debug` line every refused request gets.
    pub fn record(&self) {
        let metrics = metrics::get();
        match self {
            Self::LobbyNotAllowed { lobby, user } => join_refused!(
                lobby,
                "lobby_not_allowed",
                user,
                "the token does not allow this lobby"
            ),
            Self::TooManyJoins { lobby, .. } => {
                metrics.joins_rate_limited.increment(1);
                join_refused!(lobby, "rate_limited", "too many joins from this address");
            }
            Self::TooManyResumes { .. } => metrics.joins_rate_limited.increment(1),
            Self::LobbyFull { lobby, .. } => {
                metrics.joins_full.increment(1);
                join_refused!(lobby, "full", "lobby full");
            }
            Self::DuplicateUser { lobby, user } => join_refused!(
                lobby,
                "duplicate_user",
                user,
                "the user already holds a seat in this lobby"
            ),
            Self::NothingToWatch { lobby } => {
                join_refused!(lobby, "nothing_to_watch", "nobody plays there")
            }
            Self::SpectatorsFull { lobby, .. } => {
                join_refused!(lobby, "spectators_full", "too many spectators")
            }
            Self::QueueFull { queue, .. } => {
                tracing::warn!(target: TARGET, event = "join_refused", queue = queue.as_str(), reason = "queue_full", "the queue has --max-queue-lobbies lobbies");
            }
            Self::JoinUnavailable { lobby, error } => {
                metrics.joins_unavailable.increment(1);
                tracing::warn!(target: TARGET, event = "join_refused", lobby = lobby.short(), error = %error, "lobby store unavailable");
            }
            Self::ResumeRefused(why) => {
                tracing::debug!(
                    target: TARGET,
                    event = "resume_refused",
                    reason = why,
                    "resume refused"
                );
            }
            Self::ResumeUnavailable(error) => {
                tracing::warn!(target: TARGET, event = "resume_refused", error = %error, "lobby store unavailable");
            }
            Self::RelayFailed(error) => {
                tracing::debug!(target: TARGET, error = %error, "relaying failed");
            }
            Self::MessageTooLarge { .. }
            | Self::TooManyMessages { .. }
            | Self::Malformed(_)
            | Self::AuthWhileJoined
            | Self::AlreadyJoined
            | Self::InvalidPassphrase(_)
            | Self::InvalidQueue(_)
            | Self::BadDelay { .. }
            | Self::Spectating
            | Self::NotInLobby
            | Self::GameBeforeJoin
            | Self::Auth(_) => {}
        }
        let code = self.code();
        metrics.error(code);
        if let Self::Auth(_) = self {
            tracing::info!(
                target: TARGET,
                event = "auth_refused",
                code = code.as_str(),
                "token refused"
            );
        } else {
            tracing::debug!(
                target: TARGET,
                event = "error",
                code = code.as_str(),
                "request refused"
            );
        }
    }
}

/// What a client is told when the lobby store failed it (`relaying`: a game
/// message, else a join or resume). The one place that looks into a
/// [`StoreError`].
fn unavailable_text(error: &StoreError, relaying: bool) -> &'static str {
    match error {
        StoreError::Backlog if relaying => {
            "the lobby store is not keeping up: the message was not relayed; send less, or try again"
        }
        _ if relaying => "the message could not be relayed; try again",
        _ => LOBBIES_UNAVAILABLE,
    }
}

/// The requests a connection had refused, by error code. Each refusal is
/// logged at `debug` only; the connection's end logs one `info` line that
/// sums them up (see [`Tally::log`]), so a client that keeps sending bad
/// requests makes one line, not one per request.
#[derive(Debug, Default)]
pub struct Tally(Vec<(ErrorCode, u32)>);

impl Tally {
    /// Counts a refusal (if its kind is tallied).
    pub fn count(&mut self, refusal: &Refusal<'_>) {
        if !refusal.is_tallied() {
            return;
        }
        let code = refusal.code();
        match self.0.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.0.push((code, 1)),
        }
    }

    /// `lobby_full:2,rate_limited:40`, and the total; `None` if nothing was
    /// refused.
    fn summary(&self) -> Option<(u32, String)> {
        if self.0.is_empty() {
            return None;
        }
        let total = self
            .0
            .iter()
            .map(|(_, n)| n)
            .fold(0u32, |a, n| a.saturating_add(*n));
        let codes = self
            .0
            .iter()
            .map(|(code, n)| format!("{}:{n}", code.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        Some((total, codes))
    }

    /// The one line for the whole connection, if anything was refused.
    pub fn log(&self) {
        if let Some((total, codes)) = self.summary() {
            tracing::info!(
                target: TARGET,
                event = "refused",
                total,
                codes = codes.as_str(),
                "requests refused on this connection"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_are_unavailable() {
        let backlog = StoreError::Backlog;
        let closed = StoreError::Closed;
        assert_eq!(
            Refusal::RelayFailed(&backlog).text(),
            "the lobby store is not keeping up: the message was not relayed; send less, or try again"
        );
        assert_eq!(
            Refusal::RelayFailed(&closed).text(),
            "the message could not be relayed; try again"
        );
        assert_eq!(
            Refusal::ResumeUnavailable(&backlog).text(),
            LOBBIES_UNAVAILABLE
        );
        assert_eq!(Refusal::RelayFailed(&closed).code(), ErrorCode::Unavailable);
    }

    #[test]
    fn token_refusals_have_their_codes_and_close() {
        let expired = Refusal::Auth(AuthError::Expired);
        assert_eq!(expired.code(), ErrorCode::TokenExpired);
        assert_eq!(
            Refusal::Auth(AuthError::Invalid("bad signature")).code(),
            ErrorCode::TokenInvalid
        );
        assert_eq!(
            expired.close(),
            Some((CloseCode::Policy, "authentication failed"))
        );
        assert!(!expired.is_tallied());
    }

    /// Every kind's code and text, as clients have always read them.
    #[test]
    fn codes_and_texts() {
        let lobby = LobbyId::from_passphrase_keyed("purple-monkey-dishwasher", None).unwrap();
        let per = NonZeroU32::new(30).unwrap();
        let closed = StoreError::Closed;
        let cases: Vec<(Refusal<'_>, &str, &str)> = vec![
            (
                Refusal::MessageTooLarge {
                    size: 20000,
                    max: 16384,
                },
                "message_too_large",
                "a message of 20000 bytes is over this relay's maximum of 16384",
            ),
            (
                Refusal::TooManyMessages {
                    per_second: NonZeroU32::new(120).unwrap(),
                },
                "rate_limited",
                "more than 120 messages a second: messages are dropped until you slow down",
            ),
            (
                Refusal::AuthWhileJoined,
                "already_joined",
                "authenticate before joining, or leave the lobby first",
            ),
            (
                Refusal::AlreadyJoined,
                "already_joined",
                "this connection is already in a lobby; leave it first",
            ),
            (
                Refusal::LobbyNotAllowed {
                    lobby: lobby.into(),
                    user: None,
                },
                "lobby_not_allowed",
                "your token does not allow this lobby",
            ),
            (
                Refusal::TooManyJoins {
                    lobby: lobby.into(),
                    per_minute: per,
                },
                "rate_limited",
                "too many joins from your address or account (at most 30 a minute); wait a little",
            ),
            (
                Refusal::TooManyResumes { per_minute: per },
                "rate_limited",
                "too many joins or resumes from your address (at most 30 a minute); wait a little",
            ),
            (
                Refusal::QueueFull {
                    queue: QueueName::parse("duel").unwrap(),
                    max: 10,
                },
                "queue_full",
                "this queue already has 10 games; try again in a while, or another queue",
            ),
            (
                Refusal::LobbyFull {
                    lobby: lobby.into(),
                    capacity: 2,
                },
                "lobby_full",
                "this lobby already has 2 players",
            ),
            (
                Refusal::DuplicateUser {
                    lobby: lobby.into(),
                    user: None,
                },
                "duplicate_user",
                "your account already holds a seat in this lobby (on another connection); leave it there first",
            ),
            (
                Refusal::JoinUnavailable {
                    lobby: lobby.into(),
                    error: &closed,
                },
                "unavailable",
                "lobbies are unavailable right now; try again",
            ),
            (
                Refusal::ResumeRefused("this is not a resume token"),
                "invalid_resume_token",
                "this is not a resume token",
            ),
            (
                Refusal::NotInLobby,
                "not_in_lobby",
                "this connection is in no lobby",
            ),
            (
                Refusal::GameBeforeJoin,
                "not_in_lobby",
                "join a lobby before sending game messages",
            ),
            (
                Refusal::Auth(AuthError::Expired),
                "token_expired",
                "the token has expired; get a fresh one",
            ),
        ];
        for (refusal, code, text) in cases {
            assert_eq!(refusal.code().as_str(), code, "{refusal:?}");
            assert_eq!(refusal.text(), text, "{refusal:?}");
        }
    }

    #[test]
    fn the_tally_sums_up_by_code() {
        let mut tally = Tally::default();
        assert_eq!(tally.summary(), None);
        tally.count(&Refusal::NotInLobby);
        tally.count(&Refusal::GameBeforeJoin);
        tally.count(&Refusal::AlreadyJoined);
        tally.count(&Refusal::Auth(AuthError::Required));
        assert_eq!(
            tally.summary(),
            Some((3, "not_in_lobby:2,already_joined:1".to_owned()))
        );
    }
}
