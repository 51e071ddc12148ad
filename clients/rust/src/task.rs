//! The client's task: owns the WebSocket and the seat's state, follows the
//! protocol, reconnects and resumes. The game talks to it through
//! [`crate::Client`] (commands and the shared outgoing queue) and hears from
//! it through events.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{
    ClientError, Command, Event, GameMessage, Options, RelayError, ResumeState, SeatLostReason,
    Shared, State, Users, lock,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, String>> + Send>>;

/// A game message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON object's text.
    Text(String),
    /// Bytes.
    Binary(Vec<u8>),
}

impl Frame {
    fn message(&self) -> Message {
        match self {
            Frame::Text(text) => Message::text(text.clone()),
            Frame::Binary(bytes) => Message::binary(bytes.clone()),
        }
    }
}

/// What the relay sends that is not a delivery (not counted for resume).
const NOT_DELIVERIES: &[&str] = &["joined", "resumed", "pong", "error", "authenticated"];
/// Answers to a join or resume that are tried again later.
const RETRIED: &[&str] = &["unavailable", "rate_limited"];
/// A refused player token: the relay closes with 1008.
const TOKEN_ERRORS: &[&str] = &[
    "token_required",
    "token_invalid",
    "token_expired",
    "token_not_yet_valid",
];
const CLOSE_TAKEN_OVER: u16 = 4002;
const CLOSE_NODE_FULL: u16 = 1013;
const NODE_FULL_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Auth,
    Join,
    Resume,
}

struct Lobby {
    passphrase: String,
    resume: bool,
    /// join() started from a kept token: a refused resume joins anew.
    joining: bool,
}

pub(crate) struct Task {
    urls: Vec<String>,
    url_index: usize,
    options: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,

    ws: Option<Ws>,
    connecting: Option<Connecting>,
    retry_at: Option<Instant>,
    attempt: u32,
    authed: bool,
    /// The close frame the relay sent on this connection.
    close: Option<(u16, String)>,
    closing: bool,
    stopped: bool,

    lobby: Option<Lobby>,
    pending: Option<Pending>,
    in_seat: bool,
    seat: Option<u32>,
    players: u32,
    token: Option<String>,
    received: u64,
    sent: u64,
    /// Whether `sent` and `unacked` still match what the relay took.
    resendable: bool,
    /// Game messages sent in this seat, the latest `resend_limit` of them.
    unacked: VecDeque<Frame>,

    ping_seq: u64,
    pings: HashMap<u64, (Instant, oneshot::Sender<Result<Duration, ClientError>>)>,
}

impl Task {
    pub(crate) fn new(
        urls: Vec<String>,
        options: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            urls,
            url_index: 0,
            options,
            commands,
            events,
            shared,
            ws: None,
            connecting: None,
            retry_at: None,
            attempt: 0,
            authed: false,
            close: None,
            closing: false,
            stopped: false,
            lobby: None,
            pending: None,
            in_seat: false,
            seat: None,
            players: 0,
            token: None,
            received: 0,
            sent: 0,
            resendable: true,
            unacked: VecDeque::new(),
            ping_seq: 0,
            pings: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        while !self.stopped {
            let shared = Arc::clone(&self.shared);
            let seat_open = self.in_seat && self.ws.is_some();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    // The Client was dropped.
                    None => self.command(Command::Close).await,
                },
                () = shared.wake.notified(), if seat_open => self.flush().await,
                incoming = next(&mut self.ws), if self.ws.is_some() => self.incoming(incoming).await,
                opened = poll_connecting(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
                    match opened {
                        Ok(ws) => {
                            self.ws = Some(ws);
                            self.close = None;
                            if self.state() != State::Reconnecting {
                                self.set_state(State::Open);
                            }
                            self.request().await;
                        }
                        Err(reason) => self.dropped(None, reason),
                    }
                }
                () = sleep_until(self.retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.request().await;
                }
            }
        }
    }

    // ---------------------------------------------------------------------
    // The game's requests
    // ---------------------------------------------------------------------

    async fn command(&mut self, command: Command) {
        match command {
            Command::Join {
                passphrase,
                resume,
                kept,
            } => {
                if self.lobby.is_some() {
                    self.emit_error("already_joined", "this client is in a lobby: leave first");
                    return;
                }
                let resume = resume.unwrap_or(self.options.resume);
                self.token = None;
                self.received = 0;
                let joining = resume && kept.is_some();
                if let (true, Some((token, received))) = (resume, kept) {
                    self.token = Some(token);
                    self.received = received;
                }
                self.lobby = Some(Lobby {
                    passphrase,
                    resume,
                    joining,
                });
                self.attempt = 0;
                self.request().await;
            }
            Command::Leave => self.leave().await,
            Command::Close => {
                self.leave().await;
                self.closing = true;
                self.retry_at = None;
                self.connecting = None;
                if let Some(mut ws) = self.ws.take() {
                    // A short wait for the relay's answer; it ends the
                    // connection either way.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        let _ = ws.close(None).await;
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                }
                self.stop(Some(1000), "client closed".into(), true);
            }
            Command::Ping(reply) => {
                if self.ws.is_none() {
                    let _ = reply.send(Err(ClientError::NotConnected));
                    return;
                }
                self.ping_seq += 1;
                let t = self.ping_seq;
                self.pings.insert(t, (Instant::now(), reply));
                self.control(json!({"type": "ping", "t": t, "node": true}))
                    .await;
            }
        }
    }

    async fn leave(&mut self) {
        if self.lobby.is_none() {
            return;
        }
        // What the game sent before leaving goes first.
        self.flush().await;
        if self.ws.is_some()
            && (self.in_seat || matches!(self.pending, Some(Pending::Join | Pending::Resume)))
        {
            self.control(json!({"type": "leave"})).await;
        }
        self.forget_lobby();
        self.retry_at = None;
        if self.ws.is_none() && self.connecting.is_none() {
            self.set_state(State::Idle);
        }
    }

    // ---------------------------------------------------------------------
    // The connection
    // ---------------------------------------------------------------------

    /// The next step towards a seat: connect, authenticate, resume or join.
    async fn request(&mut self) {
        let Some((passphrase, resume)) = self
            .lobby
            .as_ref()
            .map(|lobby| (lobby.passphrase.clone(), lobby.resume))
        else {
            return;
        };
        if self.ws.is_none() {
            if self.connecting.is_none() && self.retry_at.is_none() {
                self.open();
            }
            return;
        }
        if let (Some(token), false) = (&self.options.auth_token, self.authed) {
            self.pending = Some(Pending::Auth);
            let message = json!({"type": "auth", "token": token});
            self.control(message).await;
            return;
        }
        let message = if let Some(token) = &self.token {
            self.pending = Some(Pending::Resume);
            json!({"type": "resume", "token": token, "received": self.received})
        } else {
            self.pending = Some(Pending::Join);
            let mut join = json!({"type": "join", "passphrase": passphrase});
            if resume {
                join["resume"] = Value::Bool(true);
            }
            join
        };
        self.control(message).await;
    }

    fn open(&mut self) {
        let url = self.urls[self.url_index % self.urls.len()].clone();
        self.url_index += 1;
        if self.state() != State::Reconnecting {
            self.set_state(State::Connecting);
        }
        self.authed = false;
        let timeout = self.options.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url.as_str()))
                .await
            {
                Ok(Ok((ws, _response))) => Ok(ws),
                Ok(Err(e)) => Err(format!("cannot connect to {url}: {e}")),
                Err(_) => Err(format!("no connection to {url} within {timeout:?}")),
            }
        }));
    }

    /// The connection ended (or never opened).
    fn dropped(&mut self, code: Option<u16>, reason: String) {
        self.ws = None;
        self.authed = false;
        self.seat_closed();
        for (_, (_, reply)) in self.pings.drain() {
            let _ = reply.send(Err(ClientError::NotConnected));
        }
        if self.closing {
            self.stop(code, reason, true);
            return;
        }
        if code == Some(CLOSE_TAKEN_OVER) {
            // Our seat went on with another connection of ours: stop.
            self.forget_lobby();
            self.stop(code, reason, false);
            return;
        }
        let had_seat = self.in_seat;
        self.in_seat = false;
        self.pending = None;
        if self.lobby.is_none() {
            // Not in a lobby: nothing to come back to.
            self.set_state(State::Idle);
            return;
        }
        if had_seat && self.token.is_none() {
            // Not resumable: the relay gave the seat up with the connection.
            self.seat_lost(SeatLostReason::Disconnected);
            if self.lobby.is_none() {
                self.set_state(State::Idle);
                return;
            }
        }
        let mut delay = self.next_delay();
        if code == Some(CLOSE_NODE_FULL) {
            delay = delay.max(NODE_FULL_DELAY);
        }
        self.set_state(State::Reconnecting);
        self.retry_at = Some(Instant::now() + delay);
        self.emit(Event::Reconnecting {
            attempt: self.attempt.saturating_sub(1),
            delay,
            code,
            reason,
        });
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.options.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    fn stop(&mut self, code: Option<u16>, reason: String, by_client: bool) {
        self.retry_at = None;
        self.stopped = true;
        self.set_state(State::Closed);
        self.emit(Event::Closed {
            code,
            reason,
            by_client,
        });
    }

    // ---------------------------------------------------------------------
    // What the relay sends
    // ---------------------------------------------------------------------

    async fn incoming(&mut self, incoming: Option<Result<Message, String>>) {
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
                self.emit(Event::Ready {
                    players,
                    users: users(&message),
                });
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

    fn count(&mut self) {
        self.received += 1;
        self.publish_resume_state();
    }

    async fn joined(&mut self, message: &serde_json::Map<String, Value>) {
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0) as u32;
        self.pending = None;
        self.attempt = 0;
        self.in_seat = true;
        self.seat = Some(number("seat"));
        self.players = number("players");
        self.token = message
            .get("resumeToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.received = 0;
        self.sent = 0;
        self.unacked.clear();
        self.resendable = true;
        if let Some(lobby) = &mut self.lobby {
            lobby.joining = false;
        }
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
        });
        self.seat_opened(Vec::new()).await;
    }

    async fn resumed(&mut self, message: &serde_json::Map<String, Value>) {
        let number = |field: &str| message.get(field).and_then(Value::as_u64).unwrap_or(0);
        self.pending = None;
        self.attempt = 0;
        self.in_seat = true;
        self.seat = Some(number("seat") as u32);
        self.players = number("players") as u32;
        self.token = message
            .get("resumeToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(lobby) = &mut self.lobby {
            lobby.joining = false;
        }
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
            // (The state changes before the game hears of it.)
            self.forget_lobby();
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

    fn seat_lost(&mut self, reason: SeatLostReason) {
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

    // ---------------------------------------------------------------------
    // Game messages out
    // ---------------------------------------------------------------------

    /// The seat is open on this connection: `again` first, then what waited
    /// (and what the game sends meanwhile: the queue is the one way out).
    async fn seat_opened(&mut self, again: Vec<Frame>) {
        for frame in again {
            self.write(frame).await;
        }
        self.flush().await;
    }

    /// The seat is not open any more: what the game sends now waits.
    fn seat_closed(&mut self) {
        lock(&self.shared.out).seat_open = false;
    }

    /// Sends what the game queued, in order, while the seat is open.
    async fn flush(&mut self) {
        loop {
            if !(self.in_seat && self.ws.is_some()) {
                return;
            }
            let batch: Vec<Frame> = {
                let mut out = lock(&self.shared.out);
                if out.queue.is_empty() {
                    return;
                }
                out.queue.drain(..).collect()
            };
            for frame in batch {
                self.write(frame).await;
            }
        }
    }

    async fn write(&mut self, frame: Frame) {
        self.sent += 1;
        let message = frame.message();
        if self.token.is_some() {
            self.unacked.push_back(frame);
            if self.unacked.len() > self.options.resend_limit {
                self.unacked.pop_front();
            }
        }
        if let Some(ws) = &mut self.ws {
            // A failed write shows as the connection's end on the next read.
            let _ = ws.send(message).await;
        }
    }

    async fn control(&mut self, message: Value) {
        if let Some(ws) = &mut self.ws {
            let _ = ws.send(Message::text(message.to_string())).await;
        }
    }

    // ---------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------

    fn forget_lobby(&mut self) {
        self.lobby = None;
        self.pending = None;
        self.in_seat = false;
        self.seat = None;
        self.players = 0;
        self.token = None;
        self.received = 0;
        self.sent = 0;
        self.unacked.clear();
        {
            let mut out = lock(&self.shared.out);
            out.in_lobby = false;
            out.seat_open = false;
            out.queue.clear();
        }
        self.publish_seat();
    }

    fn emit(&self, event: Event) {
        // Nobody listening (the Client dropped): nothing to tell.
        let _ = self.events.send(event);
    }

    fn emit_error(&self, code: &str, message: &str) {
        self.emit(Event::Error(RelayError {
            code: code.into(),
            message: message.into(),
            fatal: false,
            will_retry: false,
        }));
    }

    fn state(&self) -> State {
        lock(&self.shared.status).state
    }

    fn set_state(&self, state: State) {
        lock(&self.shared.status).state = state;
    }

    fn set_players(&mut self, players: u32) {
        self.players = players;
        lock(&self.shared.status).players = players;
    }

    fn publish_seat(&self) {
        let mut status = lock(&self.shared.status);
        status.seat = if self.in_seat { self.seat } else { None };
        status.players = self.players;
        drop(status);
        self.publish_resume_state();
    }

    fn publish_resume_state(&self) {
        let resume = match (&self.lobby, &self.token) {
            (Some(lobby), Some(token)) => Some(ResumeState {
                passphrase: lobby.passphrase.clone(),
                token: token.clone(),
                received: self.received,
            }),
            _ => None,
        };
        lock(&self.shared.status).resume = resume;
    }
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

async fn next(ws: &mut Option<Ws>) -> Option<Result<Message, String>> {
    match ws {
        Some(ws) => ws.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn poll_connecting(connecting: &mut Option<Connecting>) -> Result<Ws, String> {
    match connecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
