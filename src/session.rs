//! One client connection: reads its frames in order, answers control
//! messages, and relays game messages through its lobby.
//!
//! The path of a game message: [`Session::run`] reads a frame →
//! [`protocol::parse_text`] classifies it (no re-encoding) →
//! [`Node::relay`] hands it to the lobby store → the store delivers it to
//! the hub of every node with members in the lobby → the hub queues it in
//! each receiver's [`Outbox`] → the receiver's writer (in the same task as
//! the receiver's session) sends it.
//!
//! A session handles its frames one after the other, so a sender's messages
//! keep their order from here on.
//!
//! A request it refuses is answered as [`Refusal`] says for its kind (error
//! code, text, log line, metric, close).

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, AuthMode, User};
use crate::closing::Violation;
use crate::limits::{MessageLimiter, Verdict};
use crate::lobby::{LobbyStore, RateKey};
use crate::metrics;
use crate::node::{JoinError, JoinOptions, Membership, Node, ResumeError};
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::protocol::{self, Asks, ClientMessage};
use crate::queue::QueueName;
use crate::refusal::{Joining, Refusal, Tally};

/// Why a session ended (for the disconnect log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ClientClosed,
    MessageTooLarge,
    IdleTimeout,
    Shutdown,
    Aborted,
    ReadError,
    /// The client's frames broke RFC 6455: closed with 1002 or 1007.
    ProtocolError,
    Flooding,
    /// A token was refused (or none given where one is required).
    AuthFailed,
}

/// The state of one connection.
pub struct Session<S> {
    node: Arc<Node<S>>,
    outbox: Outbox,
    /// The client's address (behind a trusted proxy: the real one).
    client: IpAddr,
    limiter: MessageLimiter,
    membership: Option<Membership>,
    /// The player, once a token has named it.
    user: Option<User>,
    /// The token of the upgrade request, verified: checked before the first
    /// frame is read.
    upgrade_auth: Option<Result<User, AuthError>>,
    /// Set by a handler that ends the session.
    ending: Option<EndReason>,
    /// Requests refused so far, for the one line that sums them up.
    refusals: Tally,
}

/// What a text frame asks for, once parsed (owning nothing of the frame).
enum Request {
    Join(Result<Joining, Refusal<'static>>, Asks),
    Resume(String, u64, bool),
    Leave,
    Auth(Result<User, AuthError>),
    Reply(String),
    Game,
    Refuse(Refusal<'static>),
}

impl<S: LobbyStore> Session<S> {
    /// A session for a client at `client`; `token` is the one its upgrade
    /// request carried (Authorization header or query), if any.
    pub fn new(node: Arc<Node<S>>, outbox: Outbox, client: IpAddr, token: Option<&str>) -> Self {
        let limiter = MessageLimiter::new(
            node.config().limits.message_rate,
            node.config().limits.message_burst,
        );
        let upgrade_auth = match token {
            Some(token) if node.auth().enabled() => Some(node.auth().verify(token)),
            _ => None,
        };
        Self {
            node,
            outbox,
            client,
            limiter,
            membership: None,
            user: None,
            upgrade_auth,
            ending: None,
            refusals: Tally::default(),
        }
    }

    /// Reads frames until the client goes, the node shuts down, or the
    /// connection is aborted; then leaves the lobby, if any. Gives the
    /// frames back, for the close that follows (`closing::linger`).
    pub async fn run<R>(mut self, mut frames: R, shutdown: CancellationToken) -> (EndReason, R)
    where
        R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    {
        let half_idle = self.node.config().limits.idle_timeout / 2;
        let mut pinged = false;
        match self.upgrade_auth.take() {
            Some(Ok(user)) => self.authenticated(user, false),
            Some(Err(e)) => {
                self.auth_failed(e);
                return (EndReason::AuthFailed, frames);
            }
            None => {}
        }
        let reason = loop {
            let next = tokio::select! {
                biased;
                _ = self.outbox.aborted() => break EndReason::Aborted,
                _ = shutdown.cancelled() => {
                    self.outbox.close(CloseCode::Restart, "service restart: reconnect");
                    break EndReason::Shutdown;
                }
                next = tokio::time::timeout(half_idle, frames.next()) => next,
            };
            let frame = match next {
                Err(_silent) if !pinged => {
                    pinged = true;
                    self.outbox.send(Message::Ping(Default::default()));
                    continue;
                }
                Err(_silent) => {
                    self.outbox.close(CloseCode::Away, "idle timeout");
                    break EndReason::IdleTimeout;
                }
                Ok(None) => break EndReason::ClientClosed,
                Ok(Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size,
                    max_size,
                })))) => {
                    self.refuse(Refusal::MessageTooLarge {
                        size,
                        max: max_size,
                    });
                    break EndReason::MessageTooLarge;
                }
                Ok(Some(Err(e))) => {
                    let Some(violation) = Violation::of(&e) else {
                        tracing::debug!(error = %e, "read failed");
                        break EndReason::ReadError;
                    };
                    tracing::debug!(error = %e, "read failed");
                    tracing::info!(
                        event = "protocol_error",
                        code = u16::from(violation.code),
                        reason = violation.reason,
                        "closing a connection that broke the WebSocket protocol"
                    );
                    self.outbox.close(violation.code, violation.reason);
                    break EndReason::ProtocolError;
                }
                Ok(Some(Ok(frame))) => frame,
            };
            pinged = false;
            let metrics = metrics::get();
            match &frame {
                Message::Text(text) => {
                    metrics.messages_in_text.increment(1);
                    metrics.bytes_in.increment(text.len() as u64);
                }
                Message::Binary(data) => {
                    metrics.messages_in_binary.increment(1);
                    metrics.bytes_in.increment(data.len() as u64);
                }
                _ => {}
            }
            if matches!(frame, Message::Text(_) | Message::Binary(_)) {
                match self.limiter.check() {
                    Verdict::Allow => {}
                    Verdict::Drop => continue,
                    Verdict::DropAndTell => {
                        self.refuse(Refusal::TooManyMessages {
                            per_second: self.node.config().limits.message_rate,
                        });
                        continue;
                    }
                    Verdict::Close => {
                        tracing::info!(event = "flood", "closing a connection that keeps flooding");
                        metrics.floods_closed.increment(1);
                        self.outbox.close(CloseCode::Policy, "rate limit exceeded");
                        break EndReason::Flooding;
                    }
                }
            }
            match frame {
                Message::Text(text) => self.on_text(text).await,
                Message::Binary(_) => self.on_game_message(frame).await,
                Message::Close(_) => break EndReason::ClientClosed,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            if let Some(reason) = self.ending.take() {
                break reason;
            }
        };
        // Boxed, like the join: an `async fn`'s state machine is as large as
        // its largest state, and every connection holds this one while idle;
        // the join and leave paths (Redis round trips) are rare and large.
        Box::pin(self.leave_lobby(false)).await;
        self.refusals.log();
        (reason, frames)
    }

    async fn on_text(&mut self, text: Utf8Bytes) {
        let request = match protocol::parse_text_with(&text, self.node.auth().enabled()) {
            Ok(ClientMessage::Join { passphrase, asks }) => {
                let secret = self.node.config().lobby_secret.as_ref().map(|s| s.bytes());
                Request::Join(
                    LobbyId::from_passphrase_keyed(&passphrase, secret)
                        .map(Joining::Lobby)
                        .map_err(Refusal::InvalidPassphrase),
                    asks,
                )
            }
            Ok(ClientMessage::JoinQueue { queue, asks }) => Request::Join(
                QueueName::parse(&queue)
                    .map(Joining::Queue)
                    .map_err(Refusal::InvalidQueue),
                asks,
            ),
            Ok(ClientMessage::Resume {
                token,
                received,
                host,
            }) => Request::Resume(token.into_owned(), received, host),
            Ok(ClientMessage::Leave) => Request::Leave,
            Ok(ClientMessage::Auth { .. }) if self.membership.is_some() => {
                Request::Refuse(Refusal::AuthWhileJoined)
            }
            Ok(ClientMessage::Auth { token }) => Request::Auth(self.node.auth().verify(&token)),
            Ok(ClientMessage::Ping { t, node: false }) => Request::Reply(protocol::pong(t)),
            Ok(ClientMessage::Ping { t, node: true }) => {
                Request::Reply(protocol::pong_with_node(t, &self.node.config().node_id))
            }
            Ok(ClientMessage::Game) => Request::Game,
            Err(refusal) => Request::Refuse(Refusal::Malformed(refusal)),
        };
        match request {
            Request::Join(Ok(target), asks) => Box::pin(self.join(target, asks)).await,
            Request::Resume(token, received, host) => {
                Box::pin(self.resume(&token, received, host)).await
            }
            Request::Join(Err(refusal), _) => self.refuse(refusal),
            Request::Leave => self.leave().await,
            Request::Auth(Ok(user)) => self.authenticated(user, true),
            Request::Auth(Err(e)) => self.auth_failed(e),
            Request::Reply(reply) => self.outbox.send(Message::text(reply)),
            Request::Game => self.on_game_message(Message::Text(text)).await,
            Request::Refuse(refusal) => self.refuse(refusal),
        }
    }

    /// Refuses a join or resume on a connection that is in a lobby already.
    fn refuse_if_joined(&mut self) -> bool {
        if self.membership.is_none() {
            return false;
        }
        self.refuse(Refusal::AlreadyJoined);
        true
    }

    /// Joins a passphrase's lobby, or a queue's (quick match); or watches
    /// one (`"spectate":true`).
    async fn join(&mut self, lobby: Joining, asks: Asks) {
        if self.refuse_if_joined() {
            return;
        }
        let options = JoinOptions {
            resume: asks.resume && !asks.spectate,
            host: asks.host,
            spectators: asks.spectators,
        };
        let max_delay = self.node.config().limits.max_spectator_delay;
        let delay = match asks.delay {
            _ if !asks.spectate => 0, // unused: ignored
            None => 0,
            Some(Ok(delay)) if delay <= max_delay => delay,
            Some(_) => {
                return self.refuse(Refusal::BadDelay { max: max_delay });
            }
        };
        if self.node.auth().enabled() {
            match &self.user {
                None if self.node.auth().mode() == AuthMode::Required => {
                    return self.auth_failed(AuthError::Required);
                }
                None => {}
                Some(user) => {
                    if let Err(e) = self.node.auth().check_expiry(user) {
                        return self.auth_failed(e);
                    }
                    let allowed = match &lobby {
                        Joining::Lobby(id) => user.may_join(id),
                        Joining::Queue(_) => user.may_join_queues(),
                    };
                    if !allowed {
                        let user = self.node.auth().log_user(Some(user));
                        return self.refuse(Refusal::LobbyNotAllowed { lobby, user });
                    }
                }
            }
        }
        let mut admitted = self.node.admit_join(RateKey::Address(self.client)).await;
        if let (Ok(true), Some(user)) = (&admitted, &self.user) {
            admitted = self.node.admit_join(RateKey::User(user.id.clone())).await;
        }
        match admitted {
            Ok(true) => {}
            Ok(false) => {
                return self.refuse(Refusal::TooManyJoins {
                    lobby: lobby.clone(),
                    per_minute: self.node.config().limits.join_limit.per_minute,
                });
            }
            Err(error) => {
                return self.refuse(Refusal::JoinUnavailable {
                    lobby: lobby.clone(),
                    error: &error,
                });
            }
        }
        let user = self.user.as_ref().map(|u| u.id.clone());
        let (user, outbox) = (user.as_deref(), &self.outbox);
        let node = &self.node;
        let joined = match (&lobby, asks.spectate) {
            (Joining::Lobby(id), false) => node.join(*id, user, options, outbox).await,
            (Joining::Queue(queue), false) => node.join_queue(queue, user, options, outbox).await,
            (Joining::Lobby(id), true) => node.watch(*id, None, user, options, delay, outbox).await,
            (Joining::Queue(queue), true) => {
                node.watch_queue(queue, user, options, delay, outbox).await
            }
        };
        match joined {
            Ok(membership) => {
                metrics::get().joins_joined.increment(1);
                let queue = match &lobby {
                    Joining::Queue(queue) => Some(queue.as_str()),
                    Joining::Lobby(_) => None,
                };
                tracing::info!(
                    event = if membership.spectator {
                        "watch"
                    } else {
                        "join"
                    },
                    lobby = membership.lobby.id.short(),
                    queue,
                    seat = membership.seat,
                    user = self.node.auth().log_user(self.user.as_ref()),
                    "{}",
                    if membership.spectator {
                        "watching lobby"
                    } else {
                        "joined lobby"
                    }
                );
                self.membership = Some(membership);
            }
            Err(JoinError::NothingToWatch) => self.refuse(Refusal::NothingToWatch { lobby }),
            Err(JoinError::SpectatorsFull) => self.refuse(Refusal::SpectatorsFull {
                lobby,
                max: self.node.config().limits.max_spectators,
            }),
            Err(JoinError::QueueFull) => {
                if let Joining::Queue(queue) = lobby {
                    self.refuse(Refusal::QueueFull {
                        queue,
                        max: self.node.config().limits.max_queue_lobbies,
                    });
                }
            }
            Err(JoinError::Full) => self.refuse(Refusal::LobbyFull {
                lobby,
                capacity: self.node.config().lobby_capacity,
            }),
            Err(JoinError::DuplicateUser) => self.refuse(Refusal::DuplicateUser {
                lobby,
                user: self.node.auth().log_user(self.user.as_ref()),
            }),
            Err(JoinError::Unavailable(error)) => self.refuse(Refusal::JoinUnavailable {
                lobby,
                error: &error,
            }),
        }
    }

    /// Takes a held seat back (resume), on this connection.
    async fn resume(&mut self, token: &str, received: u64, host: bool) {
        if self.refuse_if_joined() {
            return;
        }
        match self.node.admit_join(RateKey::Address(self.client)).await {
            Ok(true) => {}
            Ok(false) => {
                return self.refuse(Refusal::TooManyResumes {
                    per_minute: self.node.config().limits.join_limit.per_minute,
                });
            }
            Err(error) => return self.refuse(Refusal::ResumeUnavailable(&error)),
        }
        let user = self.user.as_ref().map(|u| u.id.clone());
        match self
            .node
            .resume(token, received, host, user.as_deref(), &self.outbox)
            .await
        {
            Ok(membership) => {
                metrics::get().resumes.increment(1);
                tracing::info!(
                    event = "resume",
                    lobby = membership.lobby.id.short(),
                    seat = membership.seat,
                    "took a held seat back"
                );
                self.membership = Some(membership);
            }
            Err(ResumeError::Refused(why)) => self.refuse(Refusal::ResumeRefused(why)),
            Err(ResumeError::Unavailable(error)) => self.refuse(Refusal::ResumeUnavailable(&error)),
        }
    }

    /// A token named the player: its next joins are as that user.
    fn authenticated(&mut self, user: User, answer: bool) {
        tracing::debug!(
            event = "authenticated",
            user = self.node.auth().log_user(Some(&user)),
            "token accepted"
        );
        if answer {
            self.outbox
                .send(Message::text(protocol::authenticated(&user.id)));
        }
        self.user = Some(user);
    }

    /// A token was refused (or none given where one is required): the
    /// client gets the error and the connection closes with 1008.
    fn auth_failed(&mut self, error: AuthError) {
        self.refuse(Refusal::Auth(error));
        self.ending = Some(EndReason::AuthFailed);
    }

    async fn leave(&mut self) {
        if self.membership.is_none() {
            return self.refuse(Refusal::NotInLobby);
        }
        Box::pin(self.leave_lobby(true)).await;
    }

    /// Gives the seat up (`explicit`: the client sent `leave`), or, when the
    /// connection ends without one, holds a resumable seat for its player.
    async fn leave_lobby(&mut self, explicit: bool) {
        if let Some(membership) = self.membership.take() {
            let lobby = membership.lobby.id.short();
            let seat = membership.seat;
            if !explicit && membership.resumable {
                match self.node.drop_member(membership).await {
                    Ok(()) => tracing::info!(
                        event = "away",
                        lobby,
                        seat,
                        "connection gone: seat held for a resume"
                    ),
                    Err(e) => {
                        tracing::warn!(event = "away", lobby, seat, error = %e, "holding the seat failed")
                    }
                }
                return;
            }
            match self.node.leave(membership).await {
                Ok(()) => tracing::info!(event = "leave", lobby, seat, "left lobby"),
                Err(e) => {
                    tracing::warn!(event = "leave", lobby, seat, error = %e, "leaving the lobby store failed")
                }
            }
        }
    }

    async fn on_game_message(&mut self, message: Message) {
        let Some(membership) = &self.membership else {
            return self.refuse(Refusal::GameBeforeJoin);
        };
        if membership.spectator {
            return self.refuse(Refusal::Spectating);
        }
        if let Err(error) = self.node.relay(membership, message, &self.outbox).await {
            self.refuse(Refusal::RelayFailed(&error));
        }
    }

    /// Answers a refused request as its kind says (see [`Refusal`]): its
    /// log line and metrics, the `error` frame, and the close if it ends the
    /// connection.
    fn refuse(&mut self, refusal: Refusal<'_>) {
        refusal.record();
        self.refusals.count(&refusal);
        self.outbox.send(Message::text(refusal.frame()));
        if let Some((code, reason)) = refusal.close() {
            self.outbox.close(code, reason);
        }
    }
}
