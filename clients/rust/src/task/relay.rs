//! What the relay sends, as the task reads it: lobby events and game
//! messages to the game, answers to join and resume, errors, and the end of
//! a connection.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{NOT_DELIVERIES, Pending, RETRIED, TOKEN_ERRORS, Task};
use crate::{Event, Frame, GameMessage, RelayError, SeatLostReason, State, Users, lock};

impl Task {
    // ---------------------------------------------------------------------
    // What the relay sends
    // ---------------------------------------------------------------------

    pub(super) async fn incoming(&mut self, incoming: Option<Result<Message, String>>) {
        match incoming {
            Some(Ok(Message::Text(text))) => self.text(text.as_str()).await,
            Some(Ok(Message::Binary(bytes))) => {
                if self.in_seat {
                    self.count();
                }
                self.emit(Event::Message(GameMessage::Binary(bytes.to_vec())));
            }
            Some(Ok(Message::Close(frame))) => {
                // tungstenite answers it; the stream ends next.
                self.close = Some(match frame {
                    Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                    None => (1005, String::new()),
                });
            }
            Some(Ok(_)) => {} // pings are answered by tungstenite
            Some(Err(reason)) => self.ended(reason),
            None => self.ended("the connection ended".into()),
        }
    }

    /// The stream ended: with the relay's close frame if it sent one.
    fn ended(&mut self, reason: String) {
        let (code, reason) = match self.close.take() {
            Some((code, text)) => (Some(code), text),
            None => (Some(1006), reason),
        };
        self.dropped(code, reason);
    }

    async fn text(&mut self, text: &str) {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return; // the relay sends JSON objects only
        };
        let kind = message
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if self.in_seat && !NOT_DELIVERIES.contains(&kind.as_str()) {
            self.count();
        }
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0);
        let seat = number("seat") as u32;
        let players = number("players") as u32;
        match kind.as_str() {
            "joined" => self.joined(&message).await,
            "resumed" => self.resumed(&message).await,
            "watching" => self.watching(&message),
            "spectators" => {
                let count = message.get("count").and_then(Value::as_u64);
                if let (true, Some(count)) = (self.in_seat, count) {
                    let count = u32::try_from(count).unwrap_or(u32::MAX);
                    self.set_spectators(Some(count));
                    self.emit(Event::Spectators { count });
                }
            }
            "pong" => {
                if let Some(node) = message.get("node").and_then(Value::as_str) {
                    lock(&self.shared.status).node = Some(node.to_owned());
                }
                if let Some((start, reply)) = message
                    .get("t")
                    .and_then(Value::as_u64)
                    .and_then(|t| self.pings.remove(&t))
                {
                    let _ = reply.send(Ok(start.elapsed()));
                }
            }
            "error" => {
                let field = |name: &str| {
                    message
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                self.error(field("code"), field("message")).await;
            }
            "authenticated" => {
                self.authed = true;
                let user = message.get("user").and_then(Value::as_str).unwrap_or("");
                self.emit(Event::Authenticated { user: user.into() });
                if self.pending == Some(Pending::Auth) {
                    self.request().await;
                }
            }
            "ready" => {
                self.set_players(players);
                self.set_host(host(&message));
                self.emit(Event::Ready {
                    players,
                    users: users(&message),
                    host: host(&message).map(|(host, _)| host),
                    epoch: host(&message).map(|(_, epoch)| epoch),
                });
            }
            "hostChanged" => {
                if let (true, Some((host, epoch))) = (self.in_seat, host(&message)) {
                    self.set_host(Some((host, epoch)));
                    self.emit(Event::HostChanged { host, epoch });
                }
            }
            "playerJoined" => {
                self.set_players(players);
                self.emit(Event::PlayerJoined {
                    seat,
                    players,
                    users: users(&message),
                });
            }
            "playerLeft" => {
                self.set_players(players);
                self.emit(Event::PlayerLeft { seat, players });
            }
            "playerAway" => self.emit(Event::PlayerAway {
                seat,
                grace: Duration::from_millis(number("grace")),
            }),
            "playerBack" => self.emit(Event::PlayerBack { seat }),
            _ => self.emit(Event::Message(GameMessage::Json {
                kind,
                value: Value::Object(message),
                text: text.to_owned(),
            })),
        }
    }

    /// The host as a message names it, if it does.
    fn set_host(&mut self, host: Option<(u32, u64)>) {
        if host.is_some() {
            self.host = host;
            lock(&self.shared.status).host = host;
        }
    }

    fn count(&mut self) {
        self.received += 1;
        self.publish_resume_state();
    }

    /// The seat is this connection's now (a `joined` or a `resumed`).
    fn take_seat(&mut self, message: &serde_json::Map<String, Value>) {
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0) as u32;
        self.pending = None;
        self.attempt = 0;
        self.in_seat = true;
        self.seat = Some(number("seat"));
        self.players = number("players");
        self.host = host(message);
        self.token = message
            .get("resumeToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(lobby) = &mut self.lobby {
            lobby.joining = false;
        }
    }

    async fn joined(&mut self, message: &serde_json::Map<String, Value>) {
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0) as u32;
        self.take_seat(message);
        // (A resumed seat keeps the count it knew: resume does not ask again.)
        self.set_spectators(spectators(message));
        self.received = 0;
        self.sent = 0;
        self.unacked.clear();
        self.resendable = true;
        self.set_state(State::Open);
        self.publish_seat();
        // Open before the game hears of it: what it sends next is not held
        // to the reconnecting queue's bound.
        lock(&self.shared.out).seat_open = true;
        self.emit(Event::Joined {
            seat: number("seat"),
            players: number("players"),
            capacity: number("capacity"),
            resumable: self.token.is_some(),
            users: users(message),
            host: self.host.map(|(host, _)| host),
            epoch: self.host.map(|(_, epoch)| epoch),
            queue: message
                .get("queue")
                .and_then(Value::as_str)
                .map(str::to_owned),
            spectators: self.spectators,
        });
        self.seat_opened(Vec::new()).await;
    }

    /// Watching (the answer to a spectator's join): in the lobby, without
    /// a seat; nothing of ours ever goes out.
    fn watching(&mut self, message: &serde_json::Map<String, Value>) {
        if !self.lobby.as_ref().is_some_and(|lobby| lobby.spectate) {
            return; // called off by leave()
        }
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0) as u32;
        self.pending = None;
        self.attempt = 0;
        self.in_seat = true;
        self.seat = None;
        self.players = number("players");
        self.host = host(message);
        self.token = None;
        self.received = 0;
        self.set_spectators(spectators(message));
        self.set_state(State::Open);
        self.publish_seat();
        self.emit(Event::Watching {
            players: number("players"),
            capacity: number("capacity"),
            spectators: number("spectators"),
            host: self.host.map(|(host, _)| host),
            epoch: self.host.map(|(_, epoch)| epoch),
            queue: message
                .get("queue")
                .and_then(Value::as_str)
                .map(str::to_owned),
            delay: message
                .get("delay")
                .and_then(Value::as_u64)
                .map(|d| d as u32),
        });
    }

    async fn resumed(&mut self, message: &serde_json::Map<String, Value>) {
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0);
        self.take_seat(message);
        // What we sent that the relay never took (swallowed by the dropped
        // connection) goes again first. Unless the relay dropped some of the
        // seat's messages since the join: then which ones it took is
        // unknown, and none goes again rather than some twice.
        let taken = number("sent");
        let missing = if self.resendable {
            self.sent.saturating_sub(taken) as usize
        } else {
            0
        };
        self.resendable = true;
        let again_count = missing.min(self.unacked.len());
        let again: Vec<Frame> = self
            .unacked
            .drain(self.unacked.len() - again_count..)
            .collect();
        let lost = missing - again_count;
        self.sent = taken;
        self.set_state(State::Open);
        self.publish_seat();
        lock(&self.shared.out).seat_open = true;
        self.emit(Event::Resumed {
            seat: number("seat") as u32,
            players: number("players") as u32,
            replayed: number("replayed"),
            sent: taken,
            resent: again.len(),
            host: self.host.map(|(host, _)| host),
            epoch: self.host.map(|(_, epoch)| epoch),
        });
        if lost > 0 {
            self.emit(Event::Error(RelayError {
                code: "resend_incomplete".into(),
                message: format!(
                    "{lost} messages sent before the drop never reached the relay and were no longer kept (resend_limit)"
                ),
                fatal: false,
                will_retry: false,
            }));
        }
        self.seat_opened(again).await;
    }

    async fn error(&mut self, code: String, message: String) {
        let request = self.pending;
        if TOKEN_ERRORS.contains(&code.as_str()) {
            // The relay closes with 1008 next; the same token would be
            // refused again.
            self.forget_lobby();
            self.emit(Event::Error(RelayError {
                code: code.clone(),
                message,
                fatal: true,
                will_retry: false,
            }));
            self.closing = true;
            if let Some(mut ws) = self.ws.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            }
            self.stop(Some(1008), code, false);
            return;
        }
        let retried = RETRIED.contains(&code.as_str());
        if request == Some(Pending::Resume) && !retried {
            self.pending = None;
            self.emit(Event::Error(RelayError {
                code,
                message,
                fatal: false,
                will_retry: false,
            }));
            self.seat_lost(SeatLostReason::InvalidResumeToken);
            return;
        }
        if matches!(request, Some(Pending::Join | Pending::Resume)) && retried {
            self.pending = None;
            let delay = self.next_delay().max(Duration::from_millis(1));
            self.emit(Event::Error(RelayError {
                code,
                message,
                fatal: false,
                will_retry: true,
            }));
            self.retry_at = Some(Instant::now() + delay);
            return;
        }
        if matches!(request, Some(Pending::Join | Pending::Auth)) {
            // (The state changes before the game hears of it.) A join
            // again after a drop (a spectator's watch, a rejoin) refused:
            // the connection stays, outside a lobby.
            self.forget_lobby();
            if self.ws.is_some() && self.state() == State::Reconnecting {
                self.set_state(State::Open);
            }
            self.emit(Event::Error(RelayError {
                code,
                message,
                fatal: false,
                will_retry: false,
            }));
            return;
        }
        // About a game message (or a seat_lost, after which the relay
        // closes with 4001 and the close decides). A game message refused
        // as `rate_limited` or `unavailable` was dropped: the count of what
        // the relay took no longer says which of ours it has.
        if retried {
            self.resendable = false;
            self.unacked.clear();
        }
        self.emit(Event::Error(RelayError {
            code,
            message,
            fatal: false,
            will_retry: false,
        }));
    }

    pub(super) fn seat_lost(&mut self, reason: SeatLostReason) {
        let rejoin = self
            .lobby
            .as_ref()
            .is_some_and(|lobby| lobby.joining || self.options.rejoin_on_seat_lost);
        let dropped = {
            let mut out = lock(&self.shared.out);
            let dropped = out.queue.len();
            out.queue.clear();
            dropped
        };
        let seat = self.seat.take();
        self.host = None;
        self.token = None;
        self.in_seat = false;
        self.received = 0;
        self.sent = 0;
        self.unacked.clear();
        self.publish_seat();
        if !rejoin {
            self.forget_lobby();
        }
        self.emit(Event::SeatLost {
            reason,
            seat,
            dropped,
            rejoining: rejoin,
        });
        if let (true, Some(lobby)) = (rejoin, &mut self.lobby) {
            lobby.joining = false;
            // Join again on this connection (if open), or on the next one.
            if self.ws.is_some() {
                self.retry_at = Some(Instant::now());
            }
        }
    }
}

/// `host` and `epoch` of a `joined`, `ready`, `resumed` or `hostChanged`
/// (both, or none).
fn host(message: &serde_json::Map<String, Value>) -> Option<(u32, u64)> {
    let host = message.get("host").and_then(Value::as_u64)?;
    let epoch = message.get("epoch").and_then(Value::as_u64)?;
    Some((u32::try_from(host).ok()?, epoch))
}

/// `spectators` of a `joined` or `watching`.
fn spectators(message: &serde_json::Map<String, Value>) -> Option<u32> {
    let count = message.get("spectators").and_then(Value::as_u64)?;
    u32::try_from(count).ok()
}

/// Users of a `joined`/`ready`/`playerJoined`: seat (a string) to user id.
fn users(message: &serde_json::Map<String, Value>) -> Users {
    message
        .get("users")
        .and_then(Value::as_object)
        .map(|users| {
            users
                .iter()
                .filter_map(|(seat, user)| Some((seat.parse().ok()?, user.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
